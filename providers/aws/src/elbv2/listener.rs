//! `aws:elbv2:Listener`: a port a load balancer listens on, forwarding to a target
//! group.
//!
//! The load balancer forces a replacement; the port, the protocol, the certificate, the
//! SSL policy, the target group and tags change in place (`ModifyListener`). An HTTPS
//! listener needs a certificate (an ACM certificate's ARN); an HTTP listener takes none.

use async_trait::async_trait;
use aws_sdk_elasticloadbalancingv2::types::{Action, ActionTypeEnum, Certificate, Listener as Lst, ProtocolEnum};
use cairn_sdk::schema::Default;
use cairn_sdk::{CheckFailure, Decl, Observed, Props, ProviderError, Tags, Urn};
use serde_json::Value;

use super::{change_error, check_arn, check_one_of, check_port, create_tags, observed_tags, retag, tagged_with};
use crate::error::{aws_error, no_hint, or_missing};
use crate::kind::{paginate, read_each, Clients, Kind};

cairn_sdk::resource! {
    /// A listener that forwards to one target group:
    /// `Listener::new("http").load_balancer_arn(lb.arn()).port(80).default_target_group_arn(tg.arn())`.
    pub struct Listener {
        token: "aws:elbv2:Listener",
        schema: LISTENER,
        inputs: ListenerInputs,
        /// A declared listener's outputs.
        handle: ListenerRef,
        validate: validate,
    }
    inputs {
        /// The load balancer, by ARN: usually a load balancer's `arn()` output (forces
        /// replacement).
        load_balancer_arn: String = required().forces_replacement().identity(),
        /// The port it listens on, unique on its load balancer. Changed in place.
        port: u16 = required().identity(),
        /// `"HTTP"` (the default) or `"HTTPS"`. Changed in place.
        protocol: String = default(Default::Str(HTTP)),
        /// The certificate of an HTTPS listener, by ARN: usually an ACM certificate's
        /// `arn()` output. Required for HTTPS, refused for HTTP. Changed in place.
        certificate_arn: String,
        /// The SSL policy of an HTTPS listener (`ELBSecurityPolicy-...`); AWS's default
        /// when unset. Refused for HTTP. Changed in place.
        ssl_policy: String = computed(),
        /// The target group it forwards to, by ARN: usually a target group's `arn()`
        /// output. Changed in place.
        default_target_group_arn: String = required(),
        /// Tags of your own (Cairn adds `Name`, `cairn:stack` and `cairn:urn`).
        tags: Tags,
    }
    outputs {
        /// The listener ARN (its id).
        arn: String,
    }
}

const HTTP: &str = "HTTP";
const HTTPS: &str = "HTTPS";

fn validate(decl: &Decl, out: &mut Vec<CheckFailure>) {
    check_arn(decl, "load_balancer_arn", "a load balancer", out);
    check_arn(decl, "default_target_group_arn", "a target group", out);
    check_arn(decl, "certificate_arn", "a certificate", out);
    check_port(decl, out);
    check_one_of(decl, "protocol", &[HTTP, HTTPS], out);
    // The protocol as declared: unset is HTTP; from another resource, not known yet.
    let protocol = match decl.get("protocol") {
        None => Some(HTTP),
        Some(_) => decl.value("protocol").and_then(Value::as_str),
    };
    match protocol {
        Some(HTTPS) if decl.get("certificate_arn").is_none() => {
            out.push(CheckFailure::new("certificate_arn", None, NEEDS_CERTIFICATE));
        }
        Some(HTTP) => {
            for key in ["certificate_arn", "ssl_policy"] {
                if decl.get(key).is_some() {
                    out.push(CheckFailure::new(key, decl.value(key), only_https(key)));
                }
            }
        }
        _ => {}
    }
}

const NEEDS_CERTIFICATE: &str = "be set for an HTTPS listener: the ARN of a certificate for its domain, usually an ACM certificate's arn()";

fn only_https(key: &str) -> String {
    format!("be unset for an HTTP listener (only HTTPS listeners take one); set protocol to \"HTTPS\" or drop {key}")
}

/// Checks the protocol against the certificate and SSL policy once every value is
/// known, before any call.
fn check(want: &ListenerInputs) -> Result<(), ProviderError> {
    if is_https(want) {
        if want.certificate_arn.is_none() {
            return Err(ProviderError::failed(format!("certificate_arn must {NEEDS_CERTIFICATE}")));
        }
    } else {
        for (key, set) in [("certificate_arn", want.certificate_arn.is_some()), ("ssl_policy", want.ssl_policy.is_some())] {
            if set {
                return Err(ProviderError::failed(format!("{key} must {}", only_https(key))));
            }
        }
    }
    Ok(())
}

/// The listener's operations.
#[derive(Debug)]
pub(crate) struct ListenerKind;

/// What AWS answers when the listener does not exist (or its load balancer does not).
const MISSING: &[&str] = &["ListenerNotFound", "LoadBalancerNotFound"];

fn is_https(want: &ListenerInputs) -> bool {
    want.protocol.as_deref() == Some(HTTPS)
}

fn hint(code: &str, want: &ListenerInputs) -> Option<String> {
    let show = |v: &Option<String>| v.clone().unwrap_or_default();
    match code {
        "DuplicateListener" => Some(format!(
            "the load balancer already has a listener on port {}; choose another port",
            want.port.unwrap_or_default()
        )),
        "LoadBalancerNotFound" => Some(format!(
            "load balancer {} does not exist (deleted outside Cairn? run refresh); check load_balancer_arn",
            show(&want.load_balancer_arn)
        )),
        "TargetGroupNotFound" => Some(format!(
            "target group {} does not exist (deleted outside Cairn? run refresh); check default_target_group_arn",
            show(&want.default_target_group_arn)
        )),
        "CertificateNotFound" | "CertificateNotFoundException" => Some(format!(
            "certificate {} does not exist in this account and region; check certificate_arn",
            show(&want.certificate_arn)
        )),
        "SSLPolicyNotFound" => Some(format!(
            "SSL policy {} does not exist; check ssl_policy (for instance ELBSecurityPolicy-TLS13-1-2-2021-06), or leave it unset for AWS's default",
            show(&want.ssl_policy)
        )),
        "TargetGroupAssociationLimit" => Some(format!(
            "target group {} already forwards for another load balancer, and a target group serves one; use another target group in default_target_group_arn",
            show(&want.default_target_group_arn)
        )),
        "IncompatibleProtocols" | "UnsupportedProtocol" => Some(format!(
            "protocol {} does not fit the load balancer or the target group; an application load balancer listens on HTTP or HTTPS",
            show(&want.protocol)
        )),
        "TooManyListeners" => Some("the load balancer has as many listeners as AWS allows; remove one or ask AWS for a higher quota".to_owned()),
        "TooManyCertificates" => Some("the load balancer has as many certificates as AWS allows; remove some".to_owned()),
        _ => None,
    }
}

/// The default action: forward everything to the target group.
fn forward(want: &ListenerInputs) -> Action {
    Action::builder().r#type(ActionTypeEnum::Forward).set_target_group_arn(want.default_target_group_arn.clone()).build()
}

fn certificate(arn: &str) -> Certificate {
    Certificate::builder().certificate_arn(arn).build()
}

/// The listener with ARN `arn`, if it exists.
async fn describe(aws: &Clients, arn: &str) -> Result<Option<Lst>, ProviderError> {
    let got = aws.elbv2.describe_listeners().listener_arns(arn).send().await;
    let out = or_missing(got, MISSING, "reading the listener", no_hint)?;
    Ok(out.and_then(|o| o.listeners().iter().find(|l| l.listener_arn() == Some(arn)).cloned()))
}

/// The target group a default action forwards everything to; `None` when the default
/// action is anything else (a redirect, a fixed response, weights over several groups).
fn forwards_to(l: &Lst) -> Option<String> {
    let [action] = l.default_actions() else { return None };
    if action.r#type() != Some(&ActionTypeEnum::Forward) {
        return None;
    }
    if let Some(arn) = action.target_group_arn() {
        return Some(arn.to_owned());
    }
    match action.forward_config().map(|f| f.target_groups()) {
        Some([one]) => one.target_group_arn().map(str::to_owned),
        _ => None,
    }
}

/// The listener as the inputs and outputs Cairn records.
fn observe(l: &Lst, tags: Option<Tags>) -> Observed {
    let arn = l.listener_arn().unwrap_or_default();
    let protocol = l.protocol().map(|p| p.as_str().to_owned());
    let https = protocol.as_deref() == Some(HTTPS);
    let default_certificate = l.certificates().iter().find(|c| c.is_default() == Some(true)).or_else(|| l.certificates().first());
    let inputs = ListenerInputs {
        load_balancer_arn: l.load_balancer_arn().map(str::to_owned),
        port: l.port().and_then(|p| u16::try_from(p).ok()),
        // Some endpoints report a policy and certificates for HTTP listeners too.
        certificate_arn: default_certificate.and_then(|c| c.certificate_arn()).filter(|_| https).map(str::to_owned),
        ssl_policy: l.ssl_policy().filter(|_| https).map(str::to_owned),
        protocol,
        default_target_group_arn: forwards_to(l),
        tags,
    };
    Observed::new(arn, inputs.to_props(), [("arn", Value::from(arn))])
}

#[async_trait]
impl Kind for ListenerKind {
    async fn create(&self, aws: &Clients, urn: &Urn, inputs: &Props) -> Result<Observed, ProviderError> {
        let want = ListenerInputs::from_props(inputs)?;
        check(&want)?;
        let out = aws
            .once
            .elbv2
            .create_listener()
            .set_load_balancer_arn(want.load_balancer_arn.clone())
            .set_port(want.port.map(i32::from))
            .protocol(ProtocolEnum::from(want.protocol.as_deref().unwrap_or(HTTP)))
            .set_certificates(want.certificate_arn.as_deref().map(|c| vec![certificate(c)]))
            .set_ssl_policy(want.ssl_policy.clone())
            .default_actions(forward(&want))
            .set_tags(Some(create_tags(urn, want.tags.as_ref())))
            .send()
            .await
            .map_err(|e| aws_error("creating the listener", e, |c| hint(c, &want)))?;
        let arn = out.listeners().first().and_then(|l| l.listener_arn()).unwrap_or_default().to_owned();
        self.read_created(aws, urn, &arn, inputs).await
    }

    async fn read(&self, aws: &Clients, urn: &Urn, id: &str, _recorded: &Props) -> Result<Option<Observed>, ProviderError> {
        let Some(l) = describe(aws, id).await? else { return Ok(None) };
        let Some(tags) = observed_tags(aws, urn, id).await? else { return Ok(None) };
        Ok(Some(observe(&l, tags)))
    }

    async fn update(&self, aws: &Clients, urn: &Urn, id: &str, old: &Props, new: &Props) -> Result<Observed, ProviderError> {
        let (old, want) = (ListenerInputs::from_props(old)?, ListenerInputs::from_props(new)?);
        check(&want)?;
        let mut call = aws.elbv2.modify_listener().listener_arn(id);
        let mut any = false;
        if old.port != want.port {
            call = call.set_port(want.port.map(i32::from));
            any = true;
        }
        let new_protocol = old.protocol != want.protocol;
        if new_protocol {
            call = call.protocol(ProtocolEnum::from(want.protocol.as_deref().unwrap_or(HTTP)));
            any = true;
        }
        // Becoming HTTPS takes the certificate (and the policy) along; an unset policy
        // is AWS's to choose and left as it is.
        if let Some(cert) = want.certificate_arn.as_deref().filter(|_| new_protocol || old.certificate_arn != want.certificate_arn) {
            call = call.certificates(certificate(cert));
            any = true;
        }
        if let Some(policy) = want.ssl_policy.as_deref().filter(|_| new_protocol || old.ssl_policy != want.ssl_policy) {
            call = call.ssl_policy(policy);
            any = true;
        }
        if old.default_target_group_arn != want.default_target_group_arn {
            call = call.default_actions(forward(&want));
            any = true;
        }
        if any {
            call.send()
                .await
                .map_err(|e| change_error(e, MISSING, &format!("listener {id}"), "changing the listener (ModifyListener)", |c| hint(c, &want)))?;
        }
        retag(aws, urn, id, old.tags.as_ref(), want.tags.as_ref()).await?;
        self.read_updated(aws, urn, id, new).await
    }

    async fn delete(&self, aws: &Clients, _urn: &Urn, id: &str) -> Result<(), ProviderError> {
        or_missing(aws.elbv2.delete_listener().listener_arn(id).send().await, MISSING, "deleting the listener", no_hint)?;
        Ok(())
    }

    /// A listener carries Cairn's tags, but is listed only per load balancer: the one its
    /// create was sent for.
    async fn lookup(&self, aws: &Clients, urn: &Urn, created_with: &Props) -> Result<Vec<Observed>, ProviderError> {
        let Some(balancer) = &ListenerInputs::from_props(created_with)?.load_balancer_arn else { return Ok(Vec::new()) };
        let arns = paginate(|marker| async move {
            let got = aws.elbv2.describe_listeners().load_balancer_arn(balancer).set_marker(marker).send().await;
            // With its load balancer gone, so are its listeners.
            let Some(page) = or_missing(got, &["LoadBalancerNotFound"], "looking up listeners", no_hint)? else { return Ok((Vec::new(), None)) };
            Ok((page.listeners().iter().filter_map(|l| l.listener_arn()).map(str::to_owned).collect(), page.next_marker().map(str::to_owned)))
        })
        .await?;
        let ids = tagged_with(aws, urn, &arns).await?;
        read_each(self, aws, urn, ids).await
    }
}
