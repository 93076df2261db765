//! What every AWS resource kind implements, and the service clients they share.

use async_trait::async_trait;
use cairn_sdk::provider::{schema_diff, DiffRequest, DiffResult};
use cairn_sdk::{Observed, Props, ProviderError, Urn};
use serde_json::Value;

/// The service clients, twice: `aws.ec2` and the like, which the SDK retries as its
/// configuration says (reads, changes, deletes: a repeat finds the work done or answers
/// with an error that the next run's read-back settles), and `aws.once.ec2`, which it
/// never retries, for creates that would make a second resource. A create whose answer
/// was lost and that is sent again makes a second resource unless the service
/// deduplicates it, which only a few AWS creates do by client token, and the local AWS
/// does for none. Cairn settles such a create itself, by looking the resource up through
/// the `cairn:urn` tag the create call sets. The creates that set a resource by its name
/// or key, and so answer a repeat with the same resource on AWS and the local AWS alike
/// (an alarm, a rule, a target, a queue, a topic, a subscription, a queue policy), use
/// the retried clients.
#[derive(Debug, Clone)]
pub(crate) struct Clients {
    retried: Services,
    /// The same services with the SDK's retries off: for creates that would make a
    /// second resource if sent again.
    pub(crate) once: Services,
}

/// One client per enabled service.
#[derive(Debug, Clone)]
pub(crate) struct Services {
    #[cfg(feature = "ec2")]
    pub(crate) ec2: aws_sdk_ec2::Client,
    #[cfg(feature = "sqs")]
    pub(crate) sqs: aws_sdk_sqs::Client,
    #[cfg(feature = "autoscaling")]
    pub(crate) autoscaling: aws_sdk_autoscaling::Client,
    #[cfg(feature = "elasticache")]
    pub(crate) elasticache: aws_sdk_elasticache::Client,
    #[cfg(feature = "elbv2")]
    pub(crate) elbv2: aws_sdk_elasticloadbalancingv2::Client,
    #[cfg(feature = "acm")]
    pub(crate) acm: aws_sdk_acm::Client,
    #[cfg(feature = "route53")]
    pub(crate) route53: aws_sdk_route53::Client,
    #[cfg(feature = "cloudwatch")]
    pub(crate) cloudwatch: aws_sdk_cloudwatch::Client,
    #[cfg(feature = "logs")]
    pub(crate) logs: aws_sdk_cloudwatchlogs::Client,
    #[cfg(feature = "sns")]
    pub(crate) sns: aws_sdk_sns::Client,
    #[cfg(feature = "eventbridge")]
    pub(crate) eventbridge: aws_sdk_eventbridge::Client,
}

impl Services {
    fn new(config: &aws_config::SdkConfig) -> Self {
        let _ = config;
        Services {
            #[cfg(feature = "ec2")]
            ec2: aws_sdk_ec2::Client::new(config),
            #[cfg(feature = "sqs")]
            sqs: aws_sdk_sqs::Client::new(config),
            #[cfg(feature = "autoscaling")]
            autoscaling: aws_sdk_autoscaling::Client::new(config),
            #[cfg(feature = "elasticache")]
            elasticache: aws_sdk_elasticache::Client::new(config),
            #[cfg(feature = "elbv2")]
            elbv2: aws_sdk_elasticloadbalancingv2::Client::new(config),
            #[cfg(feature = "acm")]
            acm: aws_sdk_acm::Client::new(config),
            #[cfg(feature = "route53")]
            route53: aws_sdk_route53::Client::new(config),
            #[cfg(feature = "cloudwatch")]
            cloudwatch: aws_sdk_cloudwatch::Client::new(config),
            #[cfg(feature = "logs")]
            logs: aws_sdk_cloudwatchlogs::Client::new(config),
            #[cfg(feature = "sns")]
            sns: aws_sdk_sns::Client::new(config),
            #[cfg(feature = "eventbridge")]
            eventbridge: aws_sdk_eventbridge::Client::new(config),
        }
    }
}

impl Clients {
    pub(crate) fn new(config: &aws_config::SdkConfig) -> Self {
        let once = config.to_builder().retry_config(aws_config::retry::RetryConfig::disabled()).build();
        Clients { retried: Services::new(config), once: Services::new(&once) }
    }
}

impl std::ops::Deref for Clients {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.retried
    }
}

/// The kinds a provider serves, by type token.
pub(crate) type Kinds = std::collections::HashMap<&'static str, &'static dyn Kind>;

/// One AWS resource kind's operations. Each lives in `src/<service>/<resource>.rs`, next
/// to its builder, schema and checks.
#[async_trait]
pub(crate) trait Kind: Send + Sync + std::fmt::Debug {
    /// The diff; the schema's unless the kind knows better.
    fn diff(&self, req: &DiffRequest<'_>) -> DiffResult {
        schema_diff(req)
    }
    async fn create(&self, aws: &Clients, urn: &Urn, inputs: &Props) -> Result<Observed, ProviderError>;
    /// Reads the resource as it is. `recorded` are the inputs state holds for it (or it
    /// was just created or updated with; empty for a look-up): a kind keeps from them
    /// the inputs AWS never returns or the endpoint did not report, so that refresh
    /// neither drops them nor calls their absence drift.
    async fn read(&self, aws: &Clients, urn: &Urn, id: &str, recorded: &Props) -> Result<Option<Observed>, ProviderError>;
    async fn update(&self, aws: &Clients, urn: &Urn, id: &str, old: &Props, new: &Props) -> Result<Observed, ProviderError>;
    async fn delete(&self, aws: &Clients, urn: &Urn, id: &str) -> Result<(), ProviderError>;
    /// Finds the resources that are `urn` (by the `cairn:urn` tag the create set; a kind
    /// without tags, by its parent and key in `created_with`, the inputs its create was
    /// sent with, empty when unknown).
    async fn lookup(&self, aws: &Clients, urn: &Urn, created_with: &Props) -> Result<Vec<Observed>, ProviderError>;
    /// The look-up when settling an interrupted create under the lock
    /// ([`cairn_sdk::Provider::lookup_created`]). The default: [`Kind::lookup`].
    async fn lookup_created(&self, aws: &Clients, urn: &Urn, created_with: &Props) -> Result<Vec<Observed>, ProviderError> {
        self.lookup(aws, urn, created_with).await
    }

    /// Reads back what a create made. It exists: a failure here is
    /// [`ProviderError::Incomplete`], so the resource is recorded and read again later.
    async fn read_created(&self, aws: &Clients, urn: &Urn, id: &str, inputs: &Props) -> Result<Observed, ProviderError> {
        finish(id, async { found_after_create(self.read(aws, urn, id, inputs).await?) }).await
    }

    /// Reads back what an update changed; gone means someone deleted it meanwhile.
    async fn read_updated(&self, aws: &Clients, urn: &Urn, id: &str, inputs: &Props) -> Result<Observed, ProviderError> {
        self.read(aws, urn, id, inputs)
            .await?
            .ok_or_else(|| ProviderError::not_found(format!("{id} is gone")))
    }
}

/// What a read right after a create found: not finding it is uncertain (AWS may not
/// have caught up), so the resource is looked up again later.
pub(crate) fn found_after_create<T>(found: Option<T>) -> Result<T, ProviderError> {
    found.ok_or_else(|| ProviderError::uncertain("created, but not found right after"))
}

/// A token for one create call, for the services that take one (EC2's client token,
/// ACM's idempotency token, part of Route 53's caller reference): AWS answers a repeat
/// of the call with the same token with what the first one made, instead of making
/// another. Unique per call, so a later, deliberate create of the same resource is
/// never answered with an old one. 29 letters and digits: within every service's limit
/// (ACM's is 32 word characters).
pub(crate) fn client_token(urn: &Urn) -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static CALLS: AtomicU64 = AtomicU64::new(0);
    // RandomState is seeded from the OS once per process; the counter tells calls apart.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write(urn.as_str().as_bytes());
    h.write_u64(CALLS.fetch_add(1, Ordering::Relaxed));
    format!("cairn{:016x}{:08x}", h.finish(), std::process::id())
}

/// Reads each resource a look-up found, by id, as it is now.
pub(crate) async fn read_each(kind: &dyn Kind, aws: &Clients, urn: &Urn, ids: Vec<String>) -> Result<Vec<Observed>, ProviderError> {
    let mut found = Vec::new();
    for id in ids {
        found.extend(kind.read(aws, urn, &id, &Props::new()).await?);
    }
    Ok(found)
}

/// Every item of a listing AWS answers a page at a time. `page` fetches the page after
/// `token` (`None` for the first) and answers its items and the next token; no token, or
/// an empty one (some services answer that), ends the listing.
pub(crate) async fn paginate<T, F>(mut page: impl FnMut(Option<String>) -> F) -> Result<Vec<T>, ProviderError>
where
    F: std::future::Future<Output = Result<(Vec<T>, Option<String>), ProviderError>>,
{
    let mut items = Vec::new();
    let mut token = None;
    loop {
        let (more, next) = page(token).await?;
        items.extend(more);
        match next {
            Some(t) if !t.is_empty() => token = Some(t),
            _ => return Ok(items),
        }
    }
}

/// Runs the rest of a create once AWS has given the resource `id` (attributes,
/// attachments, rules, waits, the read-back): whatever fails from here on, the resource
/// exists, so the error carries its id ([`ProviderError::Incomplete`]) and the engine
/// records it instead of forgetting it.
pub(crate) async fn finish<T>(id: &str, rest: impl std::future::Future<Output = Result<T, ProviderError>>) -> Result<T, ProviderError> {
    if id.is_empty() {
        // An answer without the id: the create may have worked; the look-up settles it.
        return Err(ProviderError::uncertain("the create's answer did not say the new resource's id".to_owned()));
    }
    rest.await.map_err(|e| e.after_create(id))
}

// ---------------------------------------------------------------------------------------
// Set-valued properties

/// The items of a set-valued property in canonical order: sorted, without repeats.
/// Absent (or not a list) is the empty set. What `read` returns and what diffs compare.
pub(crate) fn canonical_set(value: Option<&Value>) -> Vec<Value> {
    let mut items: Vec<Value> = match value {
        Some(Value::Array(items)) => items.clone(),
        _ => Vec::new(),
    };
    // Object keys are sorted in serde_json's maps, so equal items print equally.
    items.sort_by_cached_key(Value::to_string);
    items.dedup();
    items
}

/// Typed set items in [`canonical_set`] order: sorted as their JSON, without repeats.
pub(crate) fn canonical<T: serde::Serialize + serde::de::DeserializeOwned>(items: Option<&[T]>) -> Vec<T> {
    let value = serde_json::to_value(items).expect("set items serialize to JSON");
    canonical_set(Some(&value)).into_iter().filter_map(|v| serde_json::from_value(v).ok()).collect()
}

/// The schema's diff, except that the properties in `sets` compare as sets: a reordered
/// or repeated item is no change, and an absent list equals an empty one.
pub(crate) fn set_diff(req: &DiffRequest<'_>, sets: &[&str]) -> DiffResult {
    let mut diff = schema_diff(req);
    diff.changes.retain(|c| !(c.known && sets.contains(&c.name.as_str()) && canonical_set(c.old.as_ref()) == canonical_set(c.new.as_ref())));
    diff
}

/// A failure unless input `key`, where set, is one of `allowed`.
pub(crate) fn one_of(decl: &cairn_sdk::Decl, key: &str, allowed: &[&str], out: &mut Vec<cairn_sdk::CheckFailure>) {
    if let Some(v) = decl.value(key) {
        if !v.as_str().is_some_and(|s| allowed.contains(&s)) {
            let list = allowed.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(", ");
            out.push(cairn_sdk::CheckFailure::new(key, Some(v), format!("be one of {list}")));
        }
    }
}
