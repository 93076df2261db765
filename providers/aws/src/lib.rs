//! Cairn's AWS provider: AWS resources as typed builders, managed through the official
//! `aws-sdk-*` crates.
//!
//! ```no_run
//! # async fn run() {
//! use cairn_sdk::Stack;
//! use cairn_aws::sqs::Queue;
//!
//! let aws = cairn_aws::Provider::from_env().await;
//! let stack = Stack::<()>::new("dev").provider(aws).program(|cx, _| {
//!     cx.add(Queue::new("orders").visibility_timeout(60));
//!     Ok(())
//! });
//! # }
//! ```
//!
//! Region and credentials come from the standard AWS chain (environment, profile, IMDS).
//! `AWS_ENDPOINT_URL` is honoured: tests and the demo point it at a local AWS (the moto
//! server). Every resource is tagged `cairn:stack` and `cairn:urn`, which is how an
//! interrupted create is found again instead of being created twice.
//!
//! Each AWS service is a cargo feature (`ec2`, `sqs`, ...), so a program that needs only
//! SQS compiles only the SQS SDK.
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
// The skeleton (error.rs, kind.rs, tags.rs, wait.rs) serves the kinds of every service: a
// build with only some services leaves parts of it unused, which is no defect. The full
// build (the default features, as CI runs) still reports dead code.
#![cfg_attr(
    not(all(
        feature = "ec2",
        feature = "sqs",
        feature = "autoscaling",
        feature = "elasticache",
        feature = "elbv2",
        feature = "acm",
        feature = "route53",
        feature = "cloudwatch",
        feature = "logs",
        feature = "sns",
        feature = "eventbridge"
    )),
    allow(dead_code)
)]

mod error;
mod kind;
mod tags;
mod wait;

#[cfg(feature = "autoscaling")]
pub mod autoscaling;
#[cfg(feature = "ec2")]
pub mod ec2;
#[cfg(feature = "elasticache")]
pub mod elasticache;
#[cfg(feature = "sqs")]
pub mod events;
#[cfg(feature = "sqs")]
pub mod sqs;
#[cfg(feature = "ec2")]
pub mod network;
#[cfg(feature = "elbv2")]
pub mod elbv2;
#[cfg(feature = "acm")]
pub mod acm;
#[cfg(feature = "route53")]
pub mod route53;
#[cfg(feature = "cloudwatch")]
pub mod cloudwatch;
#[cfg(feature = "logs")]
pub mod logs;
#[cfg(feature = "sns")]
pub mod sns;
#[cfg(feature = "eventbridge")]
pub mod eventbridge;

#[cfg(feature = "ec2")]
pub use network::{Nat, Network, NetworkRef};

use std::sync::Arc;

use async_trait::async_trait;
use cairn_sdk::provider::{DiffRequest, DiffResult};
use cairn_sdk::{ErrorKind, Observed, Props, ProviderError, Urn};

use crate::kind::{Clients, Kind, Kinds};

/// The AWS provider: serves every `aws:*` resource type. Cheap to clone: clones share
/// the SDK clients and their connection pools.
#[derive(Debug, Clone)]
pub struct Provider {
    clients: Clients,
    kinds: Kinds,
    region: Option<aws_config::Region>,
    credentials: Option<aws_credential_types::provider::SharedCredentialsProvider>,
    /// Whether the region and credentials are there, found out once per provider.
    ready: Arc<tokio::sync::OnceCell<Result<(), String>>>,
    landing_window: std::time::Duration,
}

/// How long an AWS call can still take effect after the process that sent it died
/// ([`Provider::with_landing_window`]). AWS answers control-plane calls in tens to
/// hundreds of milliseconds, and a call has taken effect by the time it is answered.
pub const LANDING_WINDOW: std::time::Duration = std::time::Duration::from_secs(5);

impl Provider {
    /// A provider configured from the standard AWS chain, with the SDK's standard
    /// retries: at most 3 attempts a call, with jittered exponential backoff, for every
    /// call but creates (see [`Provider::new`]).
    pub async fn from_env() -> Self {
        let retries = aws_config::retry::RetryConfig::standard().with_max_attempts(3);
        Self::new(&aws_config::defaults(aws_config::BehaviorVersion::latest()).retry_config(retries).load().await)
    }

    /// A provider using `config` for every service.
    ///
    /// The SDK retries calls as `config` says, except creates, which it sends exactly
    /// once: a create whose answer was lost and that is sent again makes a second
    /// resource unless the service deduplicates it, which few AWS creates do (by client
    /// token, passed where AWS takes one) and the local AWS never does. A create whose
    /// outcome is unknown is settled by Cairn instead, by looking the resource up through
    /// the `cairn:urn` tag the create call itself set.
    pub fn new(config: &aws_config::SdkConfig) -> Self {
        let mut kinds = Kinds::new();
        #[cfg(feature = "autoscaling")]
        autoscaling::register(&mut kinds);
        #[cfg(feature = "ec2")]
        ec2::register(&mut kinds);
        #[cfg(feature = "elasticache")]
        elasticache::register(&mut kinds);
        #[cfg(feature = "sqs")]
        sqs::register(&mut kinds);
        #[cfg(feature = "elbv2")]
        elbv2::register(&mut kinds);
        #[cfg(feature = "acm")]
        acm::register(&mut kinds);
        #[cfg(feature = "route53")]
        route53::register(&mut kinds);
        #[cfg(feature = "cloudwatch")]
        cloudwatch::register(&mut kinds);
        #[cfg(feature = "logs")]
        logs::register(&mut kinds);
        #[cfg(feature = "sns")]
        sns::register(&mut kinds);
        #[cfg(feature = "eventbridge")]
        eventbridge::register(&mut kinds);
        Provider {
            clients: Clients::new(config),
            kinds,
            region: config.region().cloned(),
            credentials: config.credentials_provider(),
            ready: Arc::default(),
            landing_window: LANDING_WINDOW,
        }
    }

    /// How long a call this provider sent can still take effect after its process died
    /// ([`cairn_sdk::Provider::landing_window`]); [`LANDING_WINDOW`] unless set. Settling
    /// a crash's interrupted operations waits this long where a look-up does not find a
    /// call done. Longer for an endpoint that can sit on a call for longer.
    pub fn with_landing_window(mut self, window: std::time::Duration) -> Self {
        self.landing_window = window;
        self
    }

    /// What [`cairn_sdk::Provider::ready`] finds: a region, and credentials the
    /// standard chain resolves (within 10 s: off EC2, the instance metadata service
    /// answers nothing).
    async fn check_ready(&self) -> Result<(), String> {
        if self.region.is_none() {
            return Err("no AWS region is configured: set AWS_REGION (e.g. AWS_REGION=us-east-1), or `region` in the profile of ~/.aws/config".to_owned());
        }
        let how = "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE with ~/.aws/credentials, or run where an instance or task role provides them (for the local AWS, any values do, e.g. `test`)";
        let Some(credentials) = &self.credentials else {
            return Err(format!("no AWS credentials provider is configured: {how}"));
        };
        use aws_credential_types::provider::ProvideCredentials;
        match tokio::time::timeout(std::time::Duration::from_secs(10), credentials.provide_credentials()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("no AWS credentials were found ({}): {how}", aws_smithy_types::error::display::DisplayErrorContext(&e))),
            Err(_) => Err(format!("no AWS credentials were found within 10 s: {how}")),
        }
    }

    fn kind(&self, urn: &Urn) -> Result<&'static dyn Kind, ProviderError> {
        self.kinds.get(urn.ty()).copied().ok_or_else(|| {
            ProviderError::unsupported(format!(
                "this build of cairn-aws does not manage {}; enable its service's cargo feature",
                urn.ty()
            ))
        })
    }
}

#[async_trait]
impl cairn_sdk::Provider for Provider {
    fn package(&self) -> &str {
        "aws"
    }

    async fn ready(&self) -> Result<(), ProviderError> {
        self.ready.get_or_init(|| self.check_ready()).await.clone().map_err(ProviderError::unconfigured)
    }

    fn landing_window(&self) -> std::time::Duration {
        self.landing_window
    }

    /// Checks what every kind shares: no user tag in Cairn's own `cairn:` namespace,
    /// which a read-back would drop and show as drift for ever.
    fn check(&self, _urn: &Urn, decl: &cairn_sdk::Decl) -> Vec<cairn_sdk::CheckFailure> {
        let Some(tags) = decl.value("tags").and_then(serde_json::Value::as_object) else { return Vec::new() };
        match tags.keys().find(|k| k.starts_with("cairn:")) {
            Some(key) => vec![cairn_sdk::CheckFailure::new(
                "tags",
                decl.value("tags"),
                format!("not use the key '{key}': keys starting with `cairn:` are Cairn's own (cairn:stack, cairn:urn); rename it"),
            )],
            None => Vec::new(),
        }
    }

    fn diff(&self, req: &DiffRequest<'_>) -> DiffResult {
        match self.kinds.get(req.ty.token) {
            Some(kind) => kind.diff(req),
            None => cairn_sdk::provider::schema_diff(req),
        }
    }

    async fn create(&self, urn: &Urn, inputs: &Props) -> Result<Observed, ProviderError> {
        self.kind(urn)?.create(&self.clients, urn, inputs).await.map_err(|e| match e.kind() {
            // An HTML 500 is how the local AWS says it lacks an operation, but something
            // in front of AWS may answer so after passing the create on: it may exist.
            ErrorKind::Unsupported => e.with_kind(ErrorKind::Uncertain),
            _ => e,
        })
    }

    async fn read(&self, urn: &Urn, id: &str, inputs: &Props, _outputs: &Props) -> Result<Option<Observed>, ProviderError> {
        self.kind(urn)?.read(&self.clients, urn, id, inputs).await
    }

    async fn update(&self, urn: &Urn, id: &str, old: &Props, new: &Props) -> Result<Observed, ProviderError> {
        // An update takes several calls (attributes, rules, routes, tags): a refusal may
        // come after calls that took effect. Planning the next run from the old inputs
        // would repeat those and fail on them ("rule already exists") forever, so the
        // resource is read back instead.
        // An endpoint lacking an operation stays a refusal: the local AWS lacks several
        // ElastiCache changes, and says so before any of the update's calls.
        self.kind(urn)?.update(&self.clients, urn, id, old, new).await.map_err(|e| match e.kind() {
            ErrorKind::Failed => e.with_kind(ErrorKind::Uncertain),
            _ => e,
        })
    }

    async fn delete(&self, urn: &Urn, id: &str, _inputs: &Props, _outputs: &Props) -> Result<(), ProviderError> {
        self.kind(urn)?.delete(&self.clients, urn, id).await
    }

    async fn lookup(&self, urn: &Urn, created_with: &Props) -> Result<Vec<Observed>, ProviderError> {
        self.kind(urn)?.lookup(&self.clients, urn, created_with).await
    }

    async fn lookup_created(&self, urn: &Urn, created_with: &Props) -> Result<Vec<Observed>, ProviderError> {
        self.kind(urn)?.lookup_created(&self.clients, urn, created_with).await
    }
}

#[cfg(test)]
mod tests {
    use aws_config::{BehaviorVersion, Region, SdkConfig};
    use cairn_sdk::Provider as _;

    use super::Provider;

    /// A user tag in Cairn's own namespace is refused when planning, naming the
    /// resource, the property and the key.
    #[cfg(feature = "sqs")]
    #[test]
    fn a_tag_key_in_cairns_namespace_is_refused_before_any_call() {
        let config = SdkConfig::builder().behavior_version(BehaviorVersion::latest()).build();
        let stack = cairn_sdk::Stack::<()>::new("dev").provider(Provider::new(&config)).program(|cx, _| {
            cx.add(crate::sqs::Queue::new("orders").tags([("cairn:team", "shop")]));
            Ok(())
        });
        let err = stack.preview(&(), &stack.new_state()).unwrap_err().to_string();
        assert!(err.contains("aws:sqs:Queue 'orders': property 'tags'"), "{err}");
        assert!(err.contains("it must not use the key 'cairn:team'"), "{err}");
    }

    /// Without a region, or without credentials, the provider says which is missing
    /// and how to set it, before any call.
    #[tokio::test]
    async fn without_a_region_or_credentials_the_provider_says_which_is_missing() {
        let no_region = SdkConfig::builder().behavior_version(BehaviorVersion::latest()).build();
        let err = Provider::new(&no_region).ready().await.unwrap_err().to_string();
        assert!(err.starts_with("no AWS region is configured: set AWS_REGION"), "{err}");

        let no_credentials = SdkConfig::builder().behavior_version(BehaviorVersion::latest()).region(Region::new("us-east-1")).build();
        let err = Provider::new(&no_credentials).ready().await.unwrap_err().to_string();
        assert!(err.starts_with("no AWS credentials provider is configured: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"), "{err}");

        let credentials = aws_credential_types::Credentials::new("test", "test", None, None, "test");
        let ready = SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(aws_credential_types::provider::SharedCredentialsProvider::new(credentials))
            .build();
        assert!(Provider::new(&ready).ready().await.is_ok());
    }
}
