//! What every AWS resource kind implements, and the service clients they share.

use async_trait::async_trait;
use cairn_sdk::provider::{schema_diff, DiffRequest, DiffResult};
use cairn_sdk::{Observed, Props, ProviderError, Urn};

/// The service clients, one per enabled feature.
#[derive(Debug, Clone)]
pub(crate) struct Clients {
    #[cfg(feature = "ec2")]
    pub(crate) ec2: aws_sdk_ec2::Client,
    #[cfg(feature = "sqs")]
    pub(crate) sqs: aws_sdk_sqs::Client,
}

impl Clients {
    pub(crate) fn new(config: &aws_config::SdkConfig) -> Self {
        let _ = config;
        Clients {
            #[cfg(feature = "ec2")]
            ec2: aws_sdk_ec2::Client::new(config),
            #[cfg(feature = "sqs")]
            sqs: aws_sdk_sqs::Client::new(config),
        }
    }
}

/// One AWS resource kind's operations. Each lives in `src/<service>/<resource>.rs`, next
/// to its builder, schema and checks.
#[async_trait]
pub(crate) trait Kind: Send + Sync + std::fmt::Debug {
    /// The diff; the schema's unless the kind knows better.
    fn diff(&self, req: &DiffRequest<'_>) -> DiffResult {
        schema_diff(req)
    }
    async fn create(&self, aws: &Clients, urn: &Urn, inputs: &Props) -> Result<Observed, ProviderError>;
    async fn read(&self, aws: &Clients, urn: &Urn, id: &str) -> Result<Option<Observed>, ProviderError>;
    async fn update(&self, aws: &Clients, urn: &Urn, id: &str, old: &Props, new: &Props) -> Result<Observed, ProviderError>;
    async fn delete(&self, aws: &Clients, urn: &Urn, id: &str) -> Result<(), ProviderError>;
    async fn lookup(&self, aws: &Clients, urn: &Urn) -> Result<Vec<Observed>, ProviderError>;
}
