//! AWS errors as messages a user can act on, and what each lets the engine conclude.

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use cairn_sdk::ProviderError;

/// The AWS error code of a service error, if that is what it is.
pub(crate) fn code<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> Option<&str> {
    match e {
        SdkError::ServiceError(s) => s.err().code(),
        _ => None,
    }
}

/// The hint of an error no kind explains better than AWS's own message.
pub(crate) fn no_hint(_code: &str) -> Option<String> {
    None
}

/// Whether `e` says the resource does not exist, by the kind's `codes`: each is an
/// error code, or `Code: words` for a service that says "not found" only in the
/// message of a general code (Auto Scaling's `ValidationError`). The one way every kind
/// tells "gone" from a failure.
pub(crate) fn missing<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>, codes: &[&str]) -> bool {
    let SdkError::ServiceError(s) = e else { return false };
    let (code, message) = (s.err().code().unwrap_or_default(), s.err().message().unwrap_or_default().to_ascii_lowercase());
    codes.iter().any(|c| match c.split_once(": ") {
        Some((c, words)) => c == code && message.contains(words),
        None => *c == code,
    })
}

/// The answer to a call on one resource, `None` when the error says it does not exist
/// ([`missing`] by `codes`): how reads and deletes treat "gone".
pub(crate) fn or_missing<T, E>(
    answer: Result<T, SdkError<E, HttpResponse>>,
    codes: &[&str],
    action: &str,
    hint: impl Fn(&str) -> Option<String>,
) -> Result<Option<T>, ProviderError>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match answer {
        Ok(out) => Ok(Some(out)),
        Err(e) if missing(&e, codes) => Ok(None),
        Err(e) => Err(aws_error(action, e, hint)),
    }
}

/// Whether an AWS error code says the request was throttled or timed out on AWS's side,
/// by the SDK's own lists, less `LimitExceededException`: a quota, which is a refusal.
fn throttled_or_timed_out(code: &str) -> bool {
    use aws_runtime::retries::classifiers::{THROTTLING_ERRORS, TRANSIENT_ERRORS};
    code != "LimitExceededException" && (THROTTLING_ERRORS.contains(&code) || TRANSIENT_ERRORS.contains(&code))
}

/// Turns an SDK error into a provider error that names the resource and the operation,
/// and says what the engine may conclude from it:
///
/// - an answer of HTTP 500 with an HTML page: the endpoint does not implement the
///   operation (the local AWS answers so), `Unsupported`. The local AWS also answers so
///   when it fails on an operation it has, which only its log tells apart: the message
///   says so;
/// - a service error of the 4xx kind, other than throttling: AWS refused the request
///   before acting on it, `Failed`;
/// - throttling or a timeout on AWS's side, a 5xx, an answer that could not be read, a request that could not be
///   sent or timed out: `Uncertain`. A throttled or 5xx answer to the last attempt says
///   nothing of an earlier attempt whose answer was lost, and a 5xx may come after the
///   work was done; settling costs one look-up, a wrong "nothing happened" an orphan.
///
/// The SDK's error is kept as the source.
pub(crate) fn aws_error<E>(action: &str, e: SdkError<E, HttpResponse>, hint: impl Fn(&str) -> Option<String>) -> ProviderError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    classify(action, &e, hint).with_source(e)
}

fn classify<E>(action: &str, e: &SdkError<E, HttpResponse>, hint: impl Fn(&str) -> Option<String>) -> ProviderError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let status = e.raw_response().map(|r| r.status().as_u16());
    let html = || {
        e.raw_response().is_some_and(|r| {
            r.body().bytes().is_some_and(|b| String::from_utf8_lossy(&b[..b.len().min(512)]).to_ascii_lowercase().contains("<html"))
        })
    };
    if status == Some(500) && html() {
        return ProviderError::unsupported(format!(
            "the AWS endpoint does not implement {action}: it answered HTTP 500 with an HTML page (a local AWS answers so too when it fails on an operation it has; its log tells which)"
        ));
    }
    match e {
        SdkError::ServiceError(service) => {
            let err = service.err();
            let code = err.code().unwrap_or("Unknown");
            let message = err.message().unwrap_or("no message");
            if throttled_or_timed_out(code) || status.is_some_and(|s| s >= 500) {
                return ProviderError::uncertain(format!("{action}: AWS answered {code} (HTTP {}): {message}", status.unwrap_or(0)));
            }
            match hint(code) {
                Some(h) => ProviderError::failed(h),
                None => ProviderError::failed(format!("{action} failed: {code}: {message}")),
            }
        }
        SdkError::ResponseError(_) => ProviderError::uncertain(format!("{action}: the answer could not be read: {e}")),
        SdkError::ConstructionFailure(_) => ProviderError::failed(format!("{action}: the request could not be built: {e}")),
        _ => ProviderError::uncertain(format!(
            "{action} did not complete ({}); check the network and credentials (AWS_ENDPOINT_URL, AWS_REGION)",
            std::error::Error::source(e).map_or_else(|| e.to_string(), |s| s.to_string())
        )),
    }
}
