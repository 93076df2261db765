//! AWS errors as messages a user can act on.

use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use aws_smithy_runtime_api::client::result::SdkError;
use cairn_sdk::{ProviderError, Urn};

/// `aws:sqs:Queue 'orders'`.
pub(crate) fn who(urn: &Urn) -> String {
    format!("{} '{}'", urn.ty(), urn.name())
}

/// The AWS error code of a service error, if that is what it is.
pub(crate) fn code<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> Option<&str> {
    match e {
        SdkError::ServiceError(s) => s.err().code(),
        _ => None,
    }
}

/// Turns an SDK error into a provider error that names the resource and the operation.
///
/// A service error is a refusal: nothing changed. A request that could not be sent or
/// whose answer was lost MAY have taken effect, so it is `Uncertain`. An endpoint that
/// answers 500 with an HTML page does not implement the operation (moto does this).
pub(crate) fn aws_error<E, R>(urn: &Urn, action: &str, e: SdkError<E, R>, hint: impl Fn(&str) -> Option<String>) -> ProviderError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let who = who(urn);
    match &e {
        SdkError::ServiceError(service) => {
            let err = service.err();
            let code = err.code().unwrap_or("Unknown");
            let message = err.message().unwrap_or("no message");
            match hint(code) {
                Some(h) => ProviderError::Failed(format!("{who}: {h}")),
                None => ProviderError::Failed(format!("{who}: {action} failed: {code}: {message}")),
            }
        }
        SdkError::ResponseError(r) => {
            let raw = format!("{:?}", r.raw());
            if raw.contains("500") && raw.to_ascii_lowercase().contains("html") {
                ProviderError::Unsupported(format!("{who}: the AWS endpoint does not implement {action}"))
            } else {
                ProviderError::Uncertain(format!("{who}: {action}: the answer could not be read: {e}"))
            }
        }
        SdkError::ConstructionFailure(_) => ProviderError::Failed(format!("{who}: {action}: the request could not be built: {e}")),
        _ => ProviderError::Uncertain(format!(
            "{who}: {action} did not complete ({}); check the network and credentials (AWS_ENDPOINT_URL, AWS_REGION)",
            std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string())
        )),
    }
}
