//! `aws:acm:Certificate`: a public TLS certificate that ACM issues and renews, for load
//! balancer listeners and CloudFront.
//!
//! The domain names and the validation method force a replacement; tags change in place.
//!
//! ACM issues the certificate only once it has seen the validation DNS record the
//! outputs `validation_record_name`, `validation_record_type` and
//! `validation_record_value` describe (for `DNS` validation). Cairn does not wait for
//! that: the record usually comes after the certificate, from a Route 53 record set of
//! the same program, so the create returns as soon as ACM has said which record it
//! wants, with `status` `PENDING_VALIDATION`. A refresh reads the status again. A
//! request ACM refuses outright (`FAILED`: a CAA record that excludes Amazon, a domain
//! it does not certify) is deleted, and the create fails saying why.

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_acm::types::{CertificateDetail, CertificateStatus, DomainValidation, Tag, ValidationMethod};
use aws_smithy_types::error::operation::BuildError;
use cairn_sdk::provider::{schema_diff, DiffRequest, DiffResult};
use cairn_sdk::schema::Default;
use cairn_sdk::{CheckFailure, Decl, Observed, Prop, Props, ProviderError, Tags, Urn};
use serde_json::Value;

use crate::error::{aws_error, code, missing, no_hint, or_missing};
use crate::kind::{client_token, finish, paginate, Clients, Kind};
use crate::tags::{self, Retag};
use crate::wait::{self, Poll};

cairn_sdk::resource! {
    /// A certificate for a domain and its alternative names:
    /// `Certificate::new("shop").domain_name("shop.example.com").subject_alternative_names(["www.shop.example.com"])`.
    /// ACM issues it once the DNS record its `validation_record_*` outputs describe
    /// exists, such as a [`Record`](crate::route53::Record) built from them.
    pub struct Certificate {
        token: "aws:acm:Certificate",
        schema: CERTIFICATE,
        inputs: CertificateInputs,
        /// A declared certificate's outputs.
        handle: CertificateRef,
        validate: validate,
    }
    inputs {
        /// The domain the certificate is for, such as `shop.example.com` or
        /// `*.example.com` (forces replacement).
        domain_name: String = required().forces_replacement(),
        /// More domains the certificate covers, a set (forces replacement).
        subject_alternative_names: Vec<String> = forces_replacement(),
        /// How ACM checks that the domains are yours: `DNS` (a record in each domain, the
        /// default) or `EMAIL` (forces replacement).
        validation_method: String = default(Default::Str("DNS")).forces_replacement(),
        /// Tags of your own (Cairn adds `Name`, `cairn:stack` and `cairn:urn`).
        tags: Tags,
    }
    outputs {
        /// The certificate ARN, for a listener.
        arn: String,
        /// `PENDING_VALIDATION` until ACM has seen the validation record, then `ISSUED`
        /// (or `FAILED`, `VALIDATION_TIMED_OUT` after 72 hours without it, `EXPIRED`, ...).
        status: String = changes_on_update(),
        /// The name of the DNS record that validates `domain_name` (empty for `EMAIL`).
        validation_record_name: String,
        /// Its type, `CNAME` (empty for `EMAIL`).
        validation_record_type: String,
        /// Its value (empty for `EMAIL`).
        validation_record_value: String,
    }
    echoes {
        /// The domain.
        domain_name: String,
    }
}

/// What is wrong with `name` as a domain ACM can certify, if anything.
fn domain_problem(name: &str) -> Option<&'static str> {
    let labels_ok = name.split('.').enumerate().all(|(i, label)| {
        (i == 0 && label == "*")
            || (!label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-'))
    });
    let ok = (1..=253).contains(&name.len()) && name.contains('.') && labels_ok;
    (!ok).then_some(
        "be a fully qualified domain name such as shop.example.com or *.example.com: labels of 1 to 63 letters, digits or '-', \
         separated by dots, the first of which may be the wildcard *, and no trailing dot",
    )
}

fn validate(decl: &Decl, out: &mut Vec<CheckFailure>) {
    if let Some(v) = decl.value("domain_name") {
        if let Some(expected) = v.as_str().map_or(Some("be a domain name (a string)"), domain_problem) {
            out.push(CheckFailure::new("domain_name", Some(v), expected));
        }
    }
    let names: Vec<&Value> = match decl.get("subject_alternative_names") {
        Some(Prop::Value(Value::Array(items))) => items.iter().collect(),
        Some(Prop::List(items)) => items.iter().filter_map(Prop::as_value).collect(),
        _ => Vec::new(),
    };
    if let Some((v, expected)) = names.into_iter().find_map(|v| Some((v, v.as_str().map_or(Some("be domain names"), domain_problem)?))) {
        out.push(CheckFailure::new("subject_alternative_names", Some(v), expected));
    }
    if let Some(v) = decl.value("validation_method") {
        if !v.as_str().is_some_and(|m| m == "DNS" || m == "EMAIL") {
            out.push(CheckFailure::new("validation_method", Some(v), "be DNS or EMAIL"));
        }
    }
}

/// The certificate's operations.
#[derive(Debug)]
pub(crate) struct CertificateKind;

const MISSING: &[&str] = &["ResourceNotFoundException"];

/// How long a new certificate may take to say which validation record it wants
/// (seconds on AWS).
const VALIDATION_RECORD_WAIT: Duration = Duration::from_secs(120);

/// How long a delete waits for ACM to see that the certificate is no longer in use:
/// AWS takes a few minutes to notice a deleted listener.
const IN_USE_WAIT: Duration = Duration::from_secs(300);

fn hint(code: &str, want: &CertificateInputs) -> Option<String> {
    match code {
        "LimitExceededException" => Some(format!(
            "ACM refused the request for {} because of a quota: at most 10 subject_alternative_names by default, and a yearly number of \
             certificates per account; name fewer domains, or ask AWS for a higher quota",
            want.domain_name.as_deref().unwrap_or("the domain")
        )),
        "InvalidDomainValidationOptionsException" => {
            Some("ACM cannot validate one of the domains this way; check domain_name and subject_alternative_names".to_owned())
        }
        "InvalidTagException" => Some("a tag in tags is not allowed (keys must not start with aws:); check tags".to_owned()),
        "TooManyTagsException" => Some("too many tags: a certificate takes 50, of which Cairn uses 3; check tags".to_owned()),
        "ResourceInUseException" => Some(
            "the certificate is still used by a load balancer listener or another AWS resource; Cairn deletes the listeners it \
             manages before their certificate, so the user is outside this stack: take the certificate off it, then run again"
                .to_owned(),
        ),
        _ => None,
    }
}

fn built(e: BuildError) -> ProviderError {
    ProviderError::failed(format!("a tag could not be put in a request: {e}"))
}

fn acm_tags(pairs: impl IntoIterator<Item = (String, Option<String>)>) -> Result<Vec<Tag>, ProviderError> {
    pairs.into_iter().map(|(k, v)| Tag::builder().key(k).set_value(v).build().map_err(built)).collect()
}

/// The validation of `domain`, or the first one there is.
fn validation_of<'a>(cert: &'a CertificateDetail, domain: &str) -> Option<&'a DomainValidation> {
    let options = cert.domain_validation_options();
    options.iter().find(|o| o.domain_name().eq_ignore_ascii_case(domain)).or_else(|| options.first())
}

/// The certificate `arn`; `None` when it is gone.
async fn describe(aws: &Clients, arn: &str) -> Result<Option<CertificateDetail>, ProviderError> {
    let got = aws.acm.describe_certificate().certificate_arn(arn).send().await;
    Ok(or_missing(got, MISSING, "reading the certificate", no_hint)?.and_then(|out| out.certificate().cloned()))
}

/// Waits until ACM says which DNS record validates `domain` (it fills that in a few
/// seconds after the request), or the request is no longer pending. A request ACM
/// refused outright (`FAILED`) ends the wait with what to do about it.
async fn validation_record(aws: &Clients, arn: &str, domain: &str) -> Result<Option<String>, ProviderError> {
    wait::until("given its DNS validation record", VALIDATION_RECORD_WAIT, move || async move {
        let Some(cert) = describe(aws, arn).await? else { return Ok(Poll::Waiting("not visible yet".to_owned())) };
        let status = cert.status().cloned().unwrap_or(CertificateStatus::PendingValidation);
        if status == CertificateStatus::Failed {
            let reason = cert.failure_reason().map_or("no reason given", |r| r.as_str());
            let advice = match reason {
                "CAA_ERROR" => "a CAA record of the domain does not allow Amazon to issue certificates: add one with `0 issue \"amazon.com\"`",
                "INVALID_PUBLIC_DOMAIN" => "ACM issues public certificates only for domains under a public suffix: check domain_name",
                "DOMAIN_NOT_ALLOWED" => "AWS does not issue certificates for this domain: check domain_name",
                _ => "the ACM documentation on failure reasons says what to change",
            };
            return Ok(Poll::Done(Some(format!("ACM refused to issue the certificate for {domain} ({reason}): {advice}"))));
        }
        let has_record = validation_of(&cert, domain).is_some_and(|v| v.resource_record().is_some());
        Ok(if has_record || status != CertificateStatus::PendingValidation {
            Poll::Done(None)
        } else {
            Poll::Waiting("PENDING_VALIDATION, without its DNS validation record yet".to_owned())
        })
    })
    .await
}

/// The certificate as the inputs and outputs Cairn records.
fn observe(urn: &Urn, cert: &CertificateDetail, tags: &[Tag], recorded: &Props) -> Observed {
    let recorded = CertificateInputs::from_props(recorded).unwrap_or_default();
    let arn = cert.certificate_arn().unwrap_or_default();
    let domain = cert.domain_name().unwrap_or_default();
    let validation = validation_of(cert, domain);
    // ACM lists the domain among the alternative names: the input holds the others.
    let mut names: Vec<String> = cert.subject_alternative_names().iter().filter(|n| !n.eq_ignore_ascii_case(domain)).cloned().collect();
    names.sort();
    names.dedup();
    // The names as declared when they are the same set: a declaration may list the domain too.
    let with_domain = |names: &[String]| normal_names(Some(&Value::from([names, &[domain.to_owned()]].concat())));
    let declared = recorded.subject_alternative_names.filter(|r| with_domain(r) == with_domain(&names));
    let inputs = CertificateInputs {
        domain_name: Some(domain.to_owned()),
        subject_alternative_names: declared.or_else(|| (!names.is_empty()).then_some(names)),
        validation_method: validation.and_then(|v| v.validation_method()).map(|m| m.as_str().to_owned()).or(recorded.validation_method),
        tags: tags::observed(urn, tags.iter().map(|t| (t.key(), t.value().unwrap_or_default()))),
    };
    let record = validation.and_then(DomainValidation::resource_record);
    let status = cert.status().map(CertificateStatus::as_str).unwrap_or_default();
    Observed::new(
        arn,
        inputs.to_props(),
        [
            ("arn", Value::from(arn)),
            ("status", Value::from(status)),
            ("validation_record_name", Value::from(record.map(|r| r.name()).unwrap_or_default())),
            ("validation_record_type", Value::from(record.map(|r| r.r#type().as_str()).unwrap_or_default())),
            ("validation_record_value", Value::from(record.map(|r| r.value()).unwrap_or_default())),
        ],
    )
}

/// Alternative names as a set: lowercase, sorted, without repeats; none is an empty set.
fn normal_names(v: Option<&Value>) -> Option<Value> {
    let Some(Value::Array(items)) = v else { return v.filter(|v| !v.is_null()).cloned() };
    let mut names: Vec<Value> = items.iter().map(|n| n.as_str().map_or_else(|| n.clone(), |s| Value::from(s.to_ascii_lowercase()))).collect();
    names.sort_by_cached_key(Value::to_string);
    names.dedup();
    (!names.is_empty()).then_some(Value::Array(names))
}

#[async_trait]
impl Kind for CertificateKind {
    fn diff(&self, req: &DiffRequest<'_>) -> DiffResult {
        const SANS: &str = "subject_alternative_names";
        let mut diff = schema_diff(req);
        diff.changes.retain(|c| !(c.known && c.name == SANS && normal_names(c.old.as_ref()) == normal_names(c.new.as_ref())));
        diff
    }

    async fn create(&self, aws: &Clients, urn: &Urn, inputs: &Props) -> Result<Observed, ProviderError> {
        let want = CertificateInputs::from_props(inputs)?;
        let domain = want.domain_name.as_deref().unwrap_or_default();
        let method = want.validation_method.as_deref().unwrap_or("DNS");
        let tags = acm_tags(tags::wanted(urn, want.tags.as_ref()).into_iter().map(|(k, v)| (k, Some(v))))?;
        let out = aws
            .once
            .acm
            .request_certificate()
            .domain_name(domain)
            .set_subject_alternative_names(want.subject_alternative_names.clone().filter(|n| !n.is_empty()))
            .validation_method(ValidationMethod::from(method))
            .idempotency_token(client_token(urn))
            .set_tags(Some(tags))
            .send()
            .await
            .map_err(|e| aws_error("requesting the certificate", e, |c| hint(c, &want)))?;
        let arn = out.certificate_arn().unwrap_or_default().to_owned();
        let refused = finish(&arn, async {
            match method {
                "DNS" => validation_record(aws, &arn, domain).await,
                _ => Ok(None),
            }
        })
        .await?;
        if let Some(refused) = refused {
            // A refused request is of no use and cannot be validated again: deleted, so
            // that the next run requests a new certificate.
            finish(&arn, async {
                let deleted = aws.acm.delete_certificate().certificate_arn(&arn).send().await;
                or_missing(deleted, MISSING, "deleting the refused certificate request", no_hint).map(|_| ())
            })
            .await?;
            return Err(ProviderError::failed(format!("{refused}; then run again (Cairn deleted the refused request)")));
        }
        self.read_created(aws, urn, &arn, inputs).await
    }

    async fn read(&self, aws: &Clients, urn: &Urn, id: &str, recorded: &Props) -> Result<Option<Observed>, ProviderError> {
        let Some(cert) = describe(aws, id).await? else { return Ok(None) };
        let got = aws.acm.list_tags_for_certificate().certificate_arn(id).send().await;
        let Some(tags) = or_missing(got, MISSING, "reading the certificate's tags", no_hint)? else { return Ok(None) };
        Ok(Some(observe(urn, &cert, tags.tags(), recorded)))
    }

    async fn update(&self, aws: &Clients, urn: &Urn, id: &str, old: &Props, new: &Props) -> Result<Observed, ProviderError> {
        let (old, want) = (CertificateInputs::from_props(old)?, CertificateInputs::from_props(new)?);
        let Retag { remove, set } = Retag::new(urn, old.tags.as_ref(), want.tags.as_ref());
        if !remove.is_empty() {
            aws.acm
                .remove_tags_from_certificate()
                .certificate_arn(id)
                .set_tags(Some(acm_tags(remove.into_iter().map(|k| (k, None)))?))
                .send()
                .await
                .map_err(|e| aws_error("removing the certificate's tags", e, |c| hint(c, &want)))?;
        }
        if !set.is_empty() {
            aws.acm
                .add_tags_to_certificate()
                .certificate_arn(id)
                .set_tags(Some(acm_tags(set.into_iter().map(|(k, v)| (k, Some(v))))?))
                .send()
                .await
                .map_err(|e| aws_error("tagging the certificate", e, |c| hint(c, &want)))?;
        }
        self.read_updated(aws, urn, id, new).await
    }

    async fn delete(&self, aws: &Clients, _urn: &Urn, id: &str) -> Result<(), ProviderError> {
        // ACM refuses to delete a certificate in use, and notices a deleted listener only
        // minutes later: a refusal is retried for a while, then explained.
        let users = &Mutex::new(None::<String>);
        let waited = wait::until("deleted", IN_USE_WAIT, move || async move {
            match aws.acm.delete_certificate().certificate_arn(id).send().await {
                Ok(_) => Ok(Poll::Done(())),
                Err(e) if missing(&e, MISSING) => Ok(Poll::Done(())),
                Err(e) if code(&e) == Some("ResourceInUseException") => {
                    let by = describe(aws, id).await.ok().flatten().map(|c| c.in_use_by().join(", ")).filter(|s| !s.is_empty());
                    let state = format!("in use by {}", by.as_deref().unwrap_or("another resource"));
                    if let Ok(mut users) = users.lock() {
                        *users = Some(state.clone());
                    }
                    Ok(Poll::Waiting(state))
                }
                Err(e) => Err(aws_error("deleting the certificate", e, |c| hint(c, &CertificateInputs::default()))),
            }
        })
        .await;
        let in_use = users.lock().ok().and_then(|u| u.clone());
        match (waited, in_use) {
            (Err(e), Some(state)) if e.is_uncertain() => Err(ProviderError::failed(format!(
                "the certificate is still {state}; Cairn deletes the listeners it manages before their certificate, so that user is \
                 outside this stack (or AWS has not yet noticed its deletion): take the certificate off it, then run again"
            ))),
            (waited, _) => waited,
        }
    }

    async fn lookup(&self, aws: &Clients, urn: &Urn, created_with: &Props) -> Result<Vec<Observed>, ProviderError> {
        let domain = CertificateInputs::from_props(created_with).ok().and_then(|w| w.domain_name);
        let statuses: &Vec<CertificateStatus> = &CertificateStatus::values().iter().map(|s| CertificateStatus::from(*s)).collect();
        let summaries = paginate(|token| async move {
            let page = aws
                .acm
                .list_certificates()
                .set_certificate_statuses(Some(statuses.clone()))
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| aws_error("looking up certificates", e, no_hint))?;
            Ok((page.certificate_summary_list().to_vec(), page.next_token().map(str::to_owned)))
        })
        .await?;
        let mut found = Vec::new();
        for summary in &summaries {
            let Some(arn) = summary.certificate_arn() else { continue };
            if domain.as_deref().zip(summary.domain_name()).is_some_and(|(want, has)| !want.eq_ignore_ascii_case(has)) {
                continue;
            }
            let tags = match aws.acm.list_tags_for_certificate().certificate_arn(arn).send().await {
                Ok(out) => out.tags().to_vec(),
                Err(e) if missing(&e, MISSING) => continue,
                Err(e) => return Err(aws_error("reading a certificate's tags", e, no_hint)),
            };
            if tags::is_tagged(urn, tags.iter().map(|t| (t.key(), t.value().unwrap_or_default()))) {
                found.extend(self.read(aws, urn, arn, created_with).await?);
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tokens_fit_acm_and_differ_per_call() {
        let urn = Urn::new("dev", "aws:acm:Certificate", "shop");
        let (a, b) = (client_token(&urn), client_token(&urn));
        assert_ne!(a, b);
        assert!(a.len() <= 32 && a.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{a}");
    }

    #[test]
    fn alternative_names_are_a_set() {
        assert_eq!(normal_names(Some(&json!(["B.example.com", "a.example.com"]))), normal_names(Some(&json!(["a.example.com", "b.example.com"]))));
        assert_eq!(normal_names(Some(&json!([]))), normal_names(None));
        assert_ne!(normal_names(Some(&json!(["a.example.com"]))), normal_names(None));
    }

    #[test]
    fn domains_are_checked() {
        assert_eq!(domain_problem("shop.example.com"), None);
        assert_eq!(domain_problem("*.example.com"), None);
        for bad in ["example", "shop.example.com.", "a b.com", "*.*.com", "-a.com"] {
            assert!(domain_problem(bad).is_some(), "{bad}");
        }
    }
}
