//! Trust under cloud faults: the ecommerce stack against the local AWS through the fault
//! proxy (`cairn_testkit::FaultProxy`), which fails mutating calls the way a real cloud
//! does: 500s before and after acting, throttling, reset connections, answers lost after
//! the call took effect. And `kill -9` of the example's binary while a call is in flight.
//!
//! After each run, an `up` without faults must converge, and the cloud must hold exactly
//! the resources state records: counted with each service's own API by the `cairn:stack`
//! tag, not through the provider under test.
//!
//! One moto and one proxy serve the whole binary. Calls are faulted in the order they
//! reach the proxy, so the tests that fault calls take turns (`TURN`), and each uses its
//! own stack names.

#[path = "../examples/ecommerce/shop.rs"]
#[allow(dead_code)]
mod shop;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use cairn::StackState;
use cairn_testkit::{is_mutating_action, Fault, FaultPlan, FaultProxy, Release};
use shop::Shop;

/// The proxy in front of this binary's moto.
fn proxy() -> &'static FaultProxy {
    static PROXY: OnceLock<FaultProxy> = OnceLock::new();
    PROXY.get_or_init(|| {
        let moto = cairn_testkit::moto();
        moto.configure_env();
        // The local AWS never finishes an ElastiCache delete: wait 3 s for it, not 30 min.
        std::env::set_var("CAIRN_AWS_WAIT_TIMEOUT", "3");
        FaultProxy::start(moto.endpoint())
    })
}

/// The tests that fault calls or hold them take turns at the proxy.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// An SDK configuration for `endpoint`, with the SDK's standard retries (short backoff,
/// to keep the test quick) or none.
async fn sdk_config(endpoint: &str, sdk_retries: bool) -> SdkConfig {
    let retries = if sdk_retries {
        RetryConfig::standard().with_max_attempts(3).with_initial_backoff(Duration::from_millis(20))
    } else {
        RetryConfig::disabled()
    };
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(aws_sdk_ec2::config::Credentials::new("test", "test", None, None, "faults"))
        .retry_config(retries)
        .load()
        .await
}

/// What the cloud holds for one stack, found by its `cairn:stack` tag with each
/// service's own API: `(cairn:urn tag, id)` pairs. Only the kinds Cairn manages: the
/// instances an Auto Scaling group launches carry its tags too, and are its business.
///
/// Record sets, rule targets and queue policies carry no tags: they are found through
/// their parents of the stack (its zones, rules and queues), and named by the URN `known`
/// gives their type and id (`?<type>` for one it does not know: an orphan).
async fn cloud_of(stack: &str, known: &Known) -> BTreeSet<(String, String)> {
    let config = sdk_config(&cairn_testkit::moto().endpoint(), true).await;
    let mut found = BTreeSet::new();

    let ec2 = aws_sdk_ec2::Client::new(&config);
    use aws_sdk_ec2::types::{Filter, ResourceType};
    let tagged = ec2
        .describe_tags()
        .filters(Filter::builder().name("key").values("cairn:stack").build())
        .filters(Filter::builder().name("value").values(stack).build())
        .send()
        .await
        .unwrap();
    // NAT gateways and Elastic IPs are counted below with their own describe calls.
    let managed = [
        ResourceType::Vpc,
        ResourceType::Subnet,
        ResourceType::InternetGateway,
        ResourceType::SecurityGroup,
        ResourceType::RouteTable,
        ResourceType::LaunchTemplate,
    ];
    let ids: Vec<String> = tagged
        .tags()
        .iter()
        .filter(|t| t.resource_type().is_some_and(|r| managed.contains(r)))
        .filter_map(|t| t.resource_id().map(str::to_owned))
        .collect();
    if !ids.is_empty() {
        let urns = ec2
            .describe_tags()
            .filters(Filter::builder().name("key").values("cairn:urn").build())
            .filters(Filter::builder().name("resource-id").set_values(Some(ids.clone())).build())
            .send()
            .await
            .unwrap();
        // The local AWS keeps the tags of some deleted resources: only live ones count.
        let mine = || Filter::builder().name("tag:cairn:stack").values(stack).build();
        let mut live: BTreeSet<String> = BTreeSet::new();
        let vpcs = ec2.describe_vpcs().filters(mine()).send().await.unwrap();
        live.extend(vpcs.vpcs().iter().filter_map(|v| v.vpc_id().map(str::to_owned)));
        let subnets = ec2.describe_subnets().filters(mine()).send().await.unwrap();
        live.extend(subnets.subnets().iter().filter_map(|v| v.subnet_id().map(str::to_owned)));
        let igws = ec2.describe_internet_gateways().filters(mine()).send().await.unwrap();
        live.extend(igws.internet_gateways().iter().filter_map(|v| v.internet_gateway_id().map(str::to_owned)));
        let groups = ec2.describe_security_groups().filters(mine()).send().await.unwrap();
        live.extend(groups.security_groups().iter().filter_map(|v| v.group_id().map(str::to_owned)));
        let tables = ec2.describe_route_tables().filters(mine()).send().await.unwrap();
        live.extend(tables.route_tables().iter().filter_map(|v| v.route_table_id().map(str::to_owned)));
        let templates = ec2.describe_launch_templates().filters(mine()).max_results(200).send().await.unwrap();
        live.extend(templates.launch_templates().iter().filter_map(|v| v.launch_template_id().map(str::to_owned)));
        for t in urns.tags() {
            if let (Some(id), Some(urn)) = (t.resource_id(), t.value()) {
                if live.contains(id) {
                    found.insert((urn.to_owned(), id.to_owned()));
                }
            }
        }
    }
    let ec2_tag = |tags: &[aws_sdk_ec2::types::Tag], key: &str| {
        tags.iter().find(|t| t.key() == Some(key)).and_then(|t| t.value()).map(str::to_owned)
    };
    let nats: Vec<_> = ec2.describe_nat_gateways().into_paginator().items().send().collect::<Result<_, _>>().await.unwrap();
    for n in &nats {
        // A deleted or failed NAT gateway stays visible for a while, tags and all.
        use aws_sdk_ec2::types::NatGatewayState::{Deleted, Failed};
        if ec2_tag(n.tags(), "cairn:stack").as_deref() == Some(stack) && !matches!(n.state(), Some(Deleted | Failed)) {
            found.insert((ec2_tag(n.tags(), "cairn:urn").unwrap_or_default(), n.nat_gateway_id().unwrap_or_default().to_owned()));
        }
    }
    for a in ec2.describe_addresses().send().await.unwrap().addresses() {
        if ec2_tag(a.tags(), "cairn:stack").as_deref() == Some(stack) {
            found.insert((ec2_tag(a.tags(), "cairn:urn").unwrap_or_default(), a.allocation_id().unwrap_or_default().to_owned()));
        }
    }

    let asg = aws_sdk_autoscaling::Client::new(&config);
    // Every list is paged: the local AWS pages Auto Scaling groups by 50, as AWS does.
    let groups: Vec<_> = asg.describe_auto_scaling_groups().into_paginator().items().send().collect::<Result<_, _>>().await.unwrap();
    for g in &groups {
        let tag = |k: &str| g.tags().iter().find(|t| t.key() == Some(k)).and_then(|t| t.value()).map(str::to_owned);
        if tag("cairn:stack").as_deref() == Some(stack) {
            found.insert((tag("cairn:urn").unwrap_or_default(), g.auto_scaling_group_name().unwrap_or_default().to_owned()));
        }
    }

    let cache = aws_sdk_elasticache::Client::new(&config);
    let tags_of = |arn: String| {
        let cache = cache.clone();
        async move {
            let out = cache.list_tags_for_resource().resource_name(arn).send().await.unwrap();
            out.tag_list().iter().filter_map(|t| Some((t.key()?.to_owned(), t.value()?.to_owned()))).collect::<BTreeMap<_, _>>()
        }
    };
    let replication_groups: Vec<_> = cache.describe_replication_groups().into_paginator().items().send().collect::<Result<_, _>>().await.unwrap();
    for g in &replication_groups {
        if g.status() == Some("deleting") {
            continue;
        }
        let tags = tags_of(g.arn().unwrap_or_default().to_owned()).await;
        if tags.get("cairn:stack").map(String::as_str) == Some(stack) {
            found.insert((tags["cairn:urn"].clone(), g.replication_group_id().unwrap_or_default().to_owned()));
        }
    }
    let subnet_groups: Vec<_> = cache.describe_cache_subnet_groups().into_paginator().items().send().collect::<Result<_, _>>().await.unwrap();
    for g in &subnet_groups {
        let tags = tags_of(g.arn().unwrap_or_default().to_owned()).await;
        if tags.get("cairn:stack").map(String::as_str) == Some(stack) {
            found.insert((tags["cairn:urn"].clone(), g.cache_subnet_group_name().unwrap_or_default().to_owned()));
        }
    }

    let sqs = aws_sdk_sqs::Client::new(&config);
    let urls: Vec<String> = sqs.list_queues().max_results(1000).into_paginator().items().send().collect::<Result<_, _>>().await.unwrap();
    for url in &urls {
        let tags = sqs.list_queue_tags().queue_url(url).send().await.unwrap().tags().cloned().unwrap_or_default();
        if tags.get("cairn:stack").map(String::as_str) == Some(stack) {
            found.insert((tags["cairn:urn"].clone(), queue_path(url)));
            // A queue policy is the queue's Policy attribute, which clearing leaves empty.
            use aws_sdk_sqs::types::QueueAttributeName::Policy;
            let attrs = sqs.get_queue_attributes().queue_url(url).attribute_names(Policy).send().await.unwrap();
            if attrs.attributes().and_then(|a| a.get(&Policy)).is_some_and(|p| !p.trim().is_empty()) {
                found.insert(known.urn("aws:sqs:QueuePolicy", &queue_path(url)));
            }
        }
    }

    // A load balancer or target group is listed with its ARN; ELBv2 gives tags for 20
    // ARNs a call.
    let elb = aws_sdk_elasticloadbalancingv2::Client::new(&config);
    let elb_tags = |arns: Vec<String>| {
        let elb = elb.clone();
        async move {
            let mut tags: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
            for chunk in arns.chunks(20) {
                let out = elb.describe_tags().set_resource_arns(Some(chunk.to_vec())).send().await.unwrap();
                for d in out.tag_descriptions() {
                    let pairs = d.tags().iter().filter_map(|t| Some((t.key()?.to_owned(), t.value().unwrap_or_default().to_owned())));
                    tags.insert(d.resource_arn().unwrap_or_default().to_owned(), pairs.collect());
                }
            }
            tags
        }
    };
    let balancers: Vec<_> = elb.describe_load_balancers().into_paginator().items().send().collect::<Result<_, _>>().await.unwrap();
    let target_groups: Vec<_> = elb.describe_target_groups().into_paginator().items().send().collect::<Result<_, _>>().await.unwrap();
    let balancer_arns: Vec<String> = balancers.iter().filter_map(|b| b.load_balancer_arn()).map(str::to_owned).collect();
    let group_arns: Vec<String> = target_groups.iter().filter_map(|g| g.target_group_arn()).map(str::to_owned).collect();
    let tags = elb_tags(balancer_arns.iter().chain(&group_arns).cloned().collect()).await;
    let mut my_balancers = Vec::new();
    for arn in balancer_arns.iter().chain(&group_arns) {
        if let Some(urn) = tags.get(arn).and_then(|t| urn_if_mine(stack, t.clone())) {
            found.insert((urn, arn.clone()));
            if balancer_arns.contains(arn) {
                my_balancers.push(arn.clone());
            }
        }
    }
    // Listeners are listed per load balancer; every one on the stack's is counted, one
    // without the stack's tags as an orphan.
    for balancer in &my_balancers {
        let listeners: Vec<_> =
            elb.describe_listeners().load_balancer_arn(balancer).into_paginator().items().send().collect::<Result<_, _>>().await.unwrap();
        let arns: Vec<String> = listeners.iter().filter_map(|l| l.listener_arn()).map(str::to_owned).collect();
        let tags = elb_tags(arns.clone()).await;
        for arn in arns {
            let urn = tags.get(&arn).and_then(|t| urn_if_mine(stack, t.clone()));
            found.insert((urn.unwrap_or_else(|| "?aws:elbv2:Listener".to_owned()), arn));
        }
    }

    let acm = aws_sdk_acm::Client::new(&config);
    // Every status: ListCertificates leaves some out unless asked.
    use aws_sdk_acm::types::CertificateStatus;
    let statuses: Vec<CertificateStatus> = CertificateStatus::values().iter().map(|s| CertificateStatus::from(*s)).collect();
    let certificates: Vec<_> =
        acm.list_certificates().set_certificate_statuses(Some(statuses)).into_paginator().items().send().collect::<Result<_, _>>().await.unwrap();
    for arn in certificates.iter().filter_map(|c| c.certificate_arn()) {
        let out = acm.list_tags_for_certificate().certificate_arn(arn).send().await.unwrap();
        if let Some(urn) = urn_if_mine(stack, out.tags().iter().map(|t| (t.key(), t.value().unwrap_or_default()))) {
            found.insert((urn, arn.to_owned()));
        }
    }

    let r53 = aws_sdk_route53::Client::new(&config);
    let zones: Vec<_> = r53.list_hosted_zones().into_paginator().items().send().collect::<Result<_, _>>().await.unwrap();
    for zone in &zones {
        let id = zone.id().strip_prefix("/hostedzone/").unwrap_or(zone.id());
        use aws_sdk_route53::types::{RrType, TagResourceType};
        let out = r53.list_tags_for_resource().resource_type(TagResourceType::Hostedzone).resource_id(id).send().await.unwrap();
        let tags = out.resource_tag_set().map(|s| s.tags()).unwrap_or_default();
        let Some(urn) = urn_if_mine(stack, tags.iter().filter_map(|t| Some((t.key()?, t.value().unwrap_or_default())))) else { continue };
        found.insert((urn, id.to_owned()));
        // Its record sets, but for the SOA and NS sets Route 53 makes at the apex.
        let apex = dns_name(zone.name());
        let mut start: Option<(String, RrType, Option<String>)> = None;
        loop {
            let mut call = r53.list_resource_record_sets().hosted_zone_id(id);
            if let Some((name, rtype, identifier)) = start.take() {
                call = call.start_record_name(name).start_record_type(rtype).set_start_record_identifier(identifier);
            }
            let page = call.send().await.unwrap();
            for set in page.resource_record_sets() {
                let name = dns_name(set.name());
                if name == apex && matches!(set.r#type(), RrType::Soa | RrType::Ns) {
                    continue;
                }
                found.insert(known.urn("aws:route53:Record", &format!("{id}|{name}|{}", set.r#type().as_str())));
            }
            match (page.is_truncated(), page.next_record_name(), page.next_record_type()) {
                (true, Some(name), Some(rtype)) => start = Some((name.to_owned(), rtype.clone(), page.next_record_identifier().map(str::to_owned))),
                _ => break,
            }
        }
    }

    let cloudwatch = aws_sdk_cloudwatch::Client::new(&config);
    let pages: Vec<_> = cloudwatch
        .describe_alarms()
        .alarm_types(aws_sdk_cloudwatch::types::AlarmType::MetricAlarm)
        .into_paginator()
        .send()
        .collect::<Result<_, _>>()
        .await
        .unwrap();
    for alarm in pages.iter().flat_map(|p| p.metric_alarms()) {
        let out = cloudwatch.list_tags_for_resource().resource_arn(alarm.alarm_arn().unwrap_or_default()).send().await.unwrap();
        if let Some(urn) = urn_if_mine(stack, out.tags().iter().filter_map(|t| Some((t.key()?, t.value().unwrap_or_default())))) {
            found.insert((urn, alarm.alarm_name().unwrap_or_default().to_owned()));
        }
    }

    let logs = aws_sdk_cloudwatchlogs::Client::new(&config);
    let groups: Vec<_> = logs.describe_log_groups().into_paginator().items().send().collect::<Result<_, _>>().await.unwrap();
    for g in &groups {
        // Tags are asked for by the ARN without its trailing `:*`.
        let arn = g.log_group_arn().map_or_else(|| g.arn().unwrap_or_default().trim_end_matches(":*").to_owned(), str::to_owned);
        let out = logs.list_tags_for_resource().resource_arn(arn).send().await.unwrap();
        if let Some(urn) = urn_if_mine(stack, out.tags().cloned().unwrap_or_default()) {
            found.insert((urn, g.log_group_name().unwrap_or_default().to_owned()));
        }
    }

    let sns = aws_sdk_sns::Client::new(&config);
    let topics: Vec<_> = sns.list_topics().into_paginator().items().send().collect::<Result<_, _>>().await.unwrap();
    for arn in topics.iter().filter_map(|t| t.topic_arn()) {
        let out = sns.list_tags_for_resource().resource_arn(arn).send().await.unwrap();
        if let Some(urn) = urn_if_mine(stack, out.tags().iter().map(|t| (t.key(), t.value()))) {
            found.insert((urn, arn.to_owned()));
        }
    }

    // EventBridge's lists have no paginator in the SDK: each is paged by its token.
    let events = aws_sdk_eventbridge::Client::new(&config);
    let mut buses = Vec::new();
    let mut token = None;
    loop {
        let page = events.list_event_buses().set_next_token(token).send().await.unwrap();
        buses.extend(page.event_buses().iter().filter_map(|b| b.name()).map(str::to_owned));
        match page.next_token() {
            Some(t) if !t.is_empty() => token = Some(t.to_owned()),
            _ => break,
        }
    }
    for bus in &buses {
        let mut rules = Vec::new();
        let mut token = None;
        loop {
            let page = events.list_rules().event_bus_name(bus).set_next_token(token).send().await.unwrap();
            rules.extend(page.rules().iter().cloned());
            match page.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_owned()),
                _ => break,
            }
        }
        for rule in &rules {
            let (Some(name), Some(arn)) = (rule.name(), rule.arn()) else { continue };
            let out = events.list_tags_for_resource().resource_arn(arn).send().await.unwrap();
            let Some(urn) = urn_if_mine(stack, out.tags().iter().map(|t| (t.key(), t.value()))) else { continue };
            found.insert((urn, format!("{bus}|{name}")));
            // Its targets.
            let mut token = None;
            loop {
                let page = events.list_targets_by_rule().rule(name).event_bus_name(bus).set_next_token(token).send().await.unwrap();
                for target in page.targets() {
                    found.insert(known.urn("aws:eventbridge:Target", &format!("{bus}|{name}|{}", target.id())));
                }
                match page.next_token() {
                    Some(t) if !t.is_empty() => token = Some(t.to_owned()),
                    _ => break,
                }
            }
        }
    }
    found
}

/// The `cairn:urn` among `tags` if their `cairn:stack` is `stack` (empty if it has none).
fn urn_if_mine<K: AsRef<str>, V: AsRef<str>>(stack: &str, tags: impl IntoIterator<Item = (K, V)>) -> Option<String> {
    let tags: BTreeMap<String, String> = tags.into_iter().map(|(k, v)| (k.as_ref().to_owned(), v.as_ref().to_owned())).collect();
    (tags.get("cairn:stack").map(String::as_str) == Some(stack)).then(|| tags.get("cairn:urn").cloned().unwrap_or_default())
}

/// A DNS name as a record set's id spells it: lowercase, without the trailing dot, with
/// Route 53's octal escapes (`\052` for `*`) decoded.
fn dns_name(name: &str) -> String {
    let name = name.strip_suffix('.').unwrap_or(name);
    let (bytes, mut out, mut i) = (name.as_bytes(), Vec::new(), 0);
    while i < bytes.len() {
        let escape = bytes.get(i + 1..i + 4).filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match escape.and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok()) {
            Some(code) => {
                out.push(code);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).to_ascii_lowercase()
}

/// A queue URL without its host: the local AWS writes into each URL the host the
/// request came to (the proxy, or moto itself).
fn queue_path(url: &str) -> String {
    url.splitn(4, '/').nth(3).unwrap_or(url).to_owned()
}

/// How the cloud compares with state: resources in the cloud that state does not
/// know, URNs with more than one live copy, and resources state records that are gone.
#[derive(Debug, Default, PartialEq)]
struct Comparison {
    orphans: Vec<(String, String)>,
    duplicates: Vec<String>,
    missing: Vec<(String, String)>,
}

/// The id of a resource of type `ty` as the cloud's listing spells it: a queue URL (a
/// queue's, or its policy's) without its host.
fn listed_id(ty: &str, id: &str) -> String {
    match ty {
        "aws:sqs:Queue" | "aws:sqs:QueuePolicy" => queue_path(id),
        _ => id.to_owned(),
    }
}

/// The URN state records for each type and id (as [`listed_id`] spells it): how
/// [`cloud_of`] names the tagless resources it finds. By type too, as a queue and its
/// policy share an id.
struct Known(BTreeMap<(String, String), String>);

impl Known {
    fn of(state: &StackState) -> Known {
        Known(state.resources.iter().map(|r| ((r.ty.clone(), listed_id(&r.ty, &r.id)), r.urn.to_string())).collect())
    }

    /// The `(urn, id)` pair of the resource of type `ty` found with `id`: `?<type>` for a
    /// URN state does not know.
    fn urn(&self, ty: &str, id: &str) -> (String, String) {
        let urn = self.0.get(&(ty.to_owned(), id.to_owned())).cloned().unwrap_or_else(|| format!("?{ty}"));
        (urn, id.to_owned())
    }
}

async fn compare(state: &StackState) -> Comparison {
    let cloud = cloud_of(&state.stack, &Known::of(state)).await;
    let recorded: BTreeSet<(String, String)> = state.resources.iter().map(|r| (r.urn.to_string(), listed_id(&r.ty, &r.id))).collect();
    let mut copies: BTreeMap<&str, usize> = BTreeMap::new();
    // Orphans with no URN (`?<type>`) are orphans, not copies of one another.
    for (urn, _) in cloud.iter().filter(|(urn, _)| !urn.starts_with('?')) {
        *copies.entry(urn).or_default() += 1;
    }
    Comparison {
        orphans: cloud.difference(&recorded).cloned().collect(),
        duplicates: copies.into_iter().filter(|(_, n)| *n > 1).map(|(u, _)| u.to_owned()).collect(),
        missing: recorded.difference(&cloud).cloned().collect(),
    }
}

/// The number of resources the shop declares for `shop`: what state holds once an `up`
/// of it converges.
fn declared(shop: &Shop) -> usize {
    shop::stack("count", cairn::testing::TestProvider::new("aws"), shop::ShopConfig::default()).render(shop).unwrap().len()
}

/// The number of resources of each type in state, for the summary.
fn types(state: &StackState) -> BTreeMap<String, usize> {
    let mut n = BTreeMap::new();
    for r in &state.resources {
        *n.entry(r.ty.clone()).or_default() += 1;
    }
    n
}

/// Prints a summary line past the test harness's capture, so CI's log shows it too.
fn summary(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn trials() -> u64 {
    std::env::var("CAIRN_CHAOS_TRIALS").ok().and_then(|v| v.parse().ok()).unwrap_or(24)
}

fn base_seed() -> u64 {
    std::env::var("CAIRN_CHAOS_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(20_261_204)
}

/// Many seeded runs of the shop's `up` at 25% faults on mutating calls, half with the
/// SDK's retries and half without; each followed by an `up` without faults, which must
/// converge, after which the cloud holds exactly what state says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_no_duplicate_no_orphan_every_stack_converges() {
    let proxy = proxy();
    let _turn = TURN.lock().await;
    let (mut faults, mut duplicates, mut orphans, mut unconverged) = (0u64, 0usize, 0usize, 0usize);
    let mut by_kind: BTreeMap<Fault, u64> = BTreeMap::new();
    let trials = trials();
    for trial in 0..trials {
        let seed = base_seed() + trial;
        let sdk_retries = trial % 2 == 0;
        let name = format!("chaos-{seed}-{}", if sdk_retries { "retries" } else { "once" });
        let dir = tempfile::tempdir().unwrap();
        let store = cairn::state::open(&format!("file://{}", dir.path().display())).await.unwrap();

        proxy.reset_stats();
        proxy.set_plan(FaultPlan::random(seed, 0.25, Fault::ALL.to_vec()));
        let faulty = shop::stack(&name, cairn_aws::Provider::new(&sdk_config(&proxy.endpoint(), sdk_retries).await), shop::ShopConfig::default());
        let mut errors = Vec::new();
        for _ in 0..3 {
            let mut session = faulty.lock(store.clone(), "up").await.unwrap();
            match session.up(&Shop::default()).await {
                Ok(report) => errors.extend(report.failures().map(|f| format!("{} {:?}: {:?}", f.urn, f.op, f.status))),
                Err(e) => errors.push(e.to_string()),
            }
            errors.extend(session.recovered().iter().map(|r| format!("recovered: {r}")));
            session.close().await.unwrap();
        }
        let stats = proxy.stats();
        proxy.set_plan(FaultPlan::none());
        faults += stats.total_faults();
        for (k, n) in &stats.faults {
            *by_kind.entry(*k).or_default() += n;
        }

        let clean = shop::stack(&name, cairn_aws::Provider::new(&sdk_config(&proxy.endpoint(), true).await), shop::ShopConfig::default());
        let mut session = clean.lock(store.clone(), "up").await.unwrap();
        // Converged: the up succeeds, nothing is left to do, and the whole shop is in
        // state.
        let converged = match session.up(&Shop::default()).await {
            Ok(report) if report.succeeded() => !session.preview(&Shop::default()).unwrap().has_changes(),
            Ok(report) => {
                eprintln!("trial {trial} (seed {seed}): the clean up failed: {:?}", report.failures().collect::<Vec<_>>());
                false
            }
            Err(e) => {
                eprintln!("trial {trial} (seed {seed}): the clean up failed: {e}");
                false
            }
        };
        let state = session.state().clone();
        session.close().await.unwrap();
        let converged = converged && state.resources.len() == declared(&Shop::default());
        let found = compare(&state).await;
        eprintln!(
            "trial {trial} seed {seed} sdk_retries={sdk_retries}: {} faults {:?}, {} step errors under faults, converged={converged}, state {:?}, cloud vs state {:?}",
            stats.total_faults(),
            stats.faults,
            errors.len(),
            types(&state),
            found
        );
        if !converged || found != Comparison::default() {
            eprintln!("trial {trial} under faults:\n  {}", errors.join("\n  "));
        }
        if !converged || !found.missing.is_empty() {
            unconverged += 1;
        }
        duplicates += found.duplicates.len();
        orphans += found.orphans.len();
    }
    summary(&format!("CHAOS trials={trials} faults={faults} duplicates={duplicates} orphans={orphans} unconverged={unconverged}"));
    summary(&format!("CHAOS faults by kind: {by_kind:?}"));
    assert!(faults >= trials * 5, "the proxy injected too few faults to mean anything: {faults}");
    assert_eq!((duplicates, orphans, unconverged), (0, 0, 0), "see the trial lines above");
}

/// A FIFO queue the program names, created while every mutating call's answer is lost
/// after the call took effect: the create is settled by looking the queue up, which
/// reads it back under the name as given (ending in `.fifo`). A clean `up` then has
/// nothing to do, and the cloud holds exactly the one queue state records.
#[tokio::test]
async fn a_named_fifo_queue_whose_create_answer_is_lost_is_found_under_its_own_name() {
    let proxy = proxy();
    let _turn = TURN.lock().await;
    const STACK: &str = "faults-fifo-named";
    const NAME: &str = "faults-fifo-named-audit.fifo";
    let stack = |provider| {
        cairn::Stack::<()>::new(STACK).provider(provider).program(|cx, _| {
            cx.add(cairn_aws::sqs::Queue::new("audit").name(NAME).fifo(true));
            Ok(())
        })
    };
    let dir = tempfile::tempdir().unwrap();
    let store = cairn::state::open(&format!("file://{}", dir.path().display())).await.unwrap();

    proxy.reset_stats();
    proxy.set_plan(FaultPlan::always(Fault::LostAnswer));
    let faulty = stack(cairn_aws::Provider::new(&sdk_config(&proxy.endpoint(), false).await));
    let mut session = faulty.lock(store.clone(), "up").await.unwrap();
    let under_faults = session.up(&()).await;
    session.close().await.unwrap();
    let lost = proxy.stats().faults_of(Fault::LostAnswer);
    proxy.set_plan(FaultPlan::none());
    assert!(lost >= 1, "the create's answer was not lost: {under_faults:?}");

    let clean = stack(cairn_aws::Provider::new(&sdk_config(&proxy.endpoint(), true).await));
    let mut session = clean.lock(store.clone(), "up").await.unwrap();
    let report = session.up(&()).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let plan = session.preview(&()).unwrap();
    let changed: Vec<_> = plan.changed().map(|c| (c.urn.to_string(), c.action, c.replace_reasons.clone())).collect();
    assert!(changed.is_empty(), "nothing left to do: {changed:?}");
    let state = session.state().clone();
    assert_eq!(state.resources.len(), 1);
    assert_eq!(state.resources[0].inputs.get("name"), Some(&serde_json::Value::from(NAME)));
    assert!(state.resources[0].id.ends_with(&format!("/{NAME}")), "{}", state.resources[0].id);
    assert_eq!(compare(&state).await, Comparison::default());
    assert!(session.destroy().await.unwrap().succeeded());
    session.close().await.unwrap();
}

/// A queue renamed with the name it was given kept, while every mutating call's answer
/// is lost after the call took effect: the old declaration's delete is uncertain, so the
/// new one, the same queue, is not created (it would be answered with the old queue,
/// which the delete may remove). The next `up` settles the delete, then creates it, and
/// the cloud holds exactly the one queue state records.
#[tokio::test]
async fn a_renamed_queue_whose_old_delete_loses_its_answer_is_created_only_after_it() {
    let proxy = proxy();
    let _turn = TURN.lock().await;
    const STACK: &str = "faults-renamed";
    const NAME: &str = "faults-renamed-orders";
    let stack = |provider| {
        cairn::Stack::<String>::new(STACK).provider(provider).program(|cx, logical: &String| {
            cx.add(cairn_aws::sqs::Queue::new(logical.as_str()).name(NAME));
            Ok(())
        })
    };
    let dir = tempfile::tempdir().unwrap();
    let store = cairn::state::open(&format!("file://{}", dir.path().display())).await.unwrap();
    let clean = stack(cairn_aws::Provider::new(&sdk_config(&proxy.endpoint(), true).await));
    let mut session = clean.lock(store.clone(), "up").await.unwrap();
    assert!(session.up(&"orders".to_owned()).await.unwrap().succeeded());
    session.close().await.unwrap();

    proxy.reset_stats();
    proxy.set_plan(FaultPlan::always(Fault::LostAnswer));
    let faulty = stack(cairn_aws::Provider::new(&sdk_config(&proxy.endpoint(), false).await));
    let mut session = faulty.lock(store.clone(), "up").await.unwrap();
    let under_faults = session.up(&"inbox".to_owned()).await;
    session.close().await.unwrap();
    let stats = proxy.stats();
    proxy.set_plan(FaultPlan::none());
    assert!(stats.faults_of(Fault::LostAnswer) >= 1, "the delete's answer was not lost: {under_faults:?}");
    let calls = stats.first_attempts_by_operation();
    assert!(calls.contains_key("DeleteQueue"), "{calls:?}");
    assert!(!calls.contains_key("CreateQueue"), "created while the old queue might still exist: {calls:?}, {under_faults:?}");

    let mut session = clean.lock(store.clone(), "up").await.unwrap();
    let report = session.up(&"inbox".to_owned()).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    assert!(!session.preview(&"inbox".to_owned()).unwrap().has_changes(), "nothing left to do");
    let state = session.state().clone();
    assert_eq!(state.resources.iter().map(|r| r.urn.name()).collect::<Vec<_>>(), ["inbox"]);
    assert!(state.resources[0].id.ends_with(&format!("/{NAME}")), "{}", state.resources[0].id);
    assert_eq!(compare(&state).await, Comparison::default());
    assert!(session.destroy().await.unwrap().succeeded());
    session.close().await.unwrap();
}

/// A create sent by a process that died reaches the cloud only after the next process
/// began settling it (a request still on its way, a service slow to act on it). The
/// settling does not find it at first; it looks again after the provider's landing
/// window and adopts it, so the next `up` makes no second copy. A certificate is the
/// case a kill -9 run once hit: ACM makes a new one for every request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_that_lands_after_its_process_died_is_adopted_not_made_twice() {
    let proxy = proxy();
    let _turn = TURN.lock().await;
    proxy.set_plan(FaultPlan::none());
    let provider = cairn_aws::Provider::new(&sdk_config(&proxy.endpoint(), true).await);
    let stack = cairn::Stack::<()>::new("faults-late").provider(provider).program(|cx, _| {
        cx.add(cairn_aws::acm::Certificate::new("site").domain_name("late.example.com"));
        Ok(())
    });
    let dir = tempfile::tempdir().unwrap();
    let store = cairn::state::open(&format!("file://{}", dir.path().display())).await.unwrap();

    // The process dies while its RequestCertificate is on its way.
    let mut holder = proxy.hold_nth_mutating(1);
    let dying = tokio::spawn({
        let (stack, store) = (stack.clone(), store.clone());
        async move {
            let mut session = stack.lock(store, "up").await.unwrap();
            let _ = session.up(&()).await;
        }
    });
    let (holder, held) = tokio::task::spawn_blocking(move || {
        let held = holder.wait(Duration::from_secs(60));
        (holder, held)
    })
    .await
    .unwrap();
    assert_eq!(held.as_deref(), Some("RequestCertificate"));
    dying.abort(); // no close, no unlock: as after a kill
    assert!(dying.await.unwrap_err().is_cancelled());
    store.force_unlock("faults-late").await.unwrap();

    // The next process settles the create; the request lands after its first look has
    // been answered.
    let looks = || proxy.stats().answered_by_operation.get("ListCertificates").copied().unwrap_or(0);
    let before = looks();
    let recovering = tokio::spawn({
        let (stack, store) = (stack.clone(), store.clone());
        async move { stack.lock(store, "up").await }
    });
    let waited = std::time::Instant::now();
    while looks() == before {
        assert!(waited.elapsed() < Duration::from_secs(60), "the settling never looked the certificate up");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let status = tokio::task::spawn_blocking(move || holder.release(Release::Forward)).await.unwrap();
    assert_eq!(status, Some(200), "the late request was made");
    let mut session = recovering.await.unwrap().unwrap();
    assert!(waited.elapsed() >= cairn_aws::LANDING_WINDOW, "it looked again after the window: {:?}", waited.elapsed());
    assert!(
        matches!(session.recovered(), [cairn::Recovery::Adopted { duplicates, .. }] if duplicates.is_empty()),
        "{:?}",
        session.recovered()
    );
    let report = session.up(&()).await.unwrap();
    assert!(report.succeeded() && report.steps.is_empty(), "{:?}", report.steps);
    assert_eq!(compare(session.state()).await, Comparison::default());
    assert!(session.destroy().await.unwrap().succeeded());
    session.close().await.unwrap();
}

// --- kill -9 -------------------------------------------------------------------------

/// `target/<profile>/examples/ecommerce`, next to this test's own `deps/` directory.
fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(|deps| deps.parent()).unwrap().join("examples").join("ecommerce");
    assert!(bin.exists(), "{} is missing: `cargo test` builds the examples first, but not when one `--test` is named; run `cargo build --example ecommerce`", bin.display());
    bin
}

/// The example's command line for stack `name` with its state in `dir`, reaching AWS
/// through the proxy.
fn ecommerce(name: &str, dir: &std::path::Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(example_binary());
    cmd.args(["--stack", name, "--state", &format!("file://{}", dir.display())])
        .args(args)
        .env("AWS_ENDPOINT_URL", proxy().endpoint())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn run(name: &str, dir: &std::path::Path, args: &[&str]) -> (i32, String) {
    let out = ecommerce(name, dir, args).output().unwrap();
    (out.status.code().unwrap_or(-1), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

async fn state_of(name: &str, dir: &std::path::Path) -> StackState {
    let store = cairn::state::open(&format!("file://{}", dir.display())).await.unwrap();
    store.load(name).await.unwrap().unwrap_or_else(|| StackState::new(name))
}

/// Starts `args` and kills it with SIGKILL while its `n`-th mutating call is held at the
/// proxy; then the held call is forwarded (it takes effect after the death: the answer
/// is lost with the process) or dropped. Returns the action that was in flight.
fn kill_at(name: &str, dir: &std::path::Path, args: &[&str], n: u32, release: Release) -> Option<String> {
    let mut holder = proxy().hold_nth_mutating(n);
    let mut child = ecommerce(name, dir, args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let held = holder.wait(Duration::from_secs(60));
    child.kill().unwrap(); // SIGKILL on Unix: no destructor, no unlock, no commit.
    child.wait().unwrap();
    holder.release(release);
    held
}

/// `up` killed at many points, the call in flight taking effect or not: the next `up`
/// (after `state unlock`, as a user would after a crash) converges, and the cloud holds
/// exactly what state says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_up_at_many_points_then_up_converges_exactly() {
    let _turn = TURN.lock().await;
    // The shop's first up makes its 35 resources (`declared`) in well over 42 mutating
    // calls (20 took about 50).
    let points: [(u32, Release); 8] = [
        (1, Release::Forward),
        (3, Release::Drop),
        (7, Release::Forward),
        (12, Release::Forward),
        (18, Release::Drop),
        (25, Release::Forward),
        (33, Release::Forward),
        (42, Release::Drop),
    ];
    let mut summary = Vec::new();
    for (n, release) in points {
        let name = format!("kill-up-{n}");
        let dir = tempfile::tempdir().unwrap();
        proxy().set_plan(FaultPlan::none());
        let held = kill_at(&name, dir.path(), &["up", "--yes"], n, release);
        let Some(action) = held else {
            // The up finished before its n-th mutating call: the point is past its end.
            summary.push(format!("{n}: past the end"));
            continue;
        };
        // The lock outlives the killed process; a person runs `state unlock`.
        let (code, text) = run(&name, dir.path(), &["state", "unlock"]);
        assert_eq!(code, 0, "state unlock after kill at {n} ({action}): {text}");
        let (code, text) = run(&name, dir.path(), &["up", "--yes"]);
        assert_eq!(code, 0, "up after kill at call {n} ({action}, {release:?}):\n{text}");
        let (code, text) = run(&name, dir.path(), &["preview", "--expect-no-changes"]);
        assert_eq!(code, 0, "converged after kill at {n} ({action}): {text}");
        let state = state_of(&name, dir.path()).await;
        assert_eq!(state.resources.len(), declared(&Shop::default()), "after kill at call {n} ({action})");
        assert_eq!(compare(&state).await, Comparison::default(), "kill at call {n} ({action}, {release:?})");
        summary.push(format!("{n}: {action} {release:?}"));
    }
    self::summary(&format!("KILL up points: {}", summary.join(", ")));
    assert!(summary.iter().filter(|s| !s.contains("past the end")).count() >= 6, "most kill points were reached: {summary:?}");
}

/// An event's apply killed while it creates (a sale starts: two queues and a group) and
/// while it deletes (the sale ends): the event was recorded before the first call, so
/// the next `up` converges to the state it produced, and the cloud matches state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_an_events_creates_and_deletes_then_up_converges_exactly() {
    let _turn = TURN.lock().await;
    let name = "kill-events";
    let dir = tempfile::tempdir().unwrap();
    proxy().set_plan(FaultPlan::none());
    let (code, text) = run(name, dir.path(), &["up", "--yes"]);
    assert_eq!(code, 0, "{text}");

    // The shop with and without its sale: the sale adds two queues and a group.
    let (sale, usual) = (declared(&Shop { flash_sale: true, ..Shop::default() }), declared(&Shop::default()));
    assert_eq!(sale, usual + 3);
    let points: [(&str, u32, Release, usize); 4] = [
        ("sale.started", 2, Release::Forward, sale),
        ("sale.ended", 1, Release::Forward, usual),
        ("sale.started", 3, Release::Drop, sale),
        ("sale.ended", 2, Release::Drop, usual),
    ];
    for (event, n, release, resources) in points {
        let held = kill_at(name, dir.path(), &["emit", event, "--yes"], n, release);
        let action = held.unwrap_or_else(|| panic!("emit {event} made fewer than {n} mutating calls"));
        let (code, text) = run(name, dir.path(), &["state", "unlock"]);
        assert_eq!(code, 0, "{text}");
        let (code, text) = run(name, dir.path(), &["up", "--yes"]);
        assert_eq!(code, 0, "up after emit {event} was killed at call {n} ({action}, {release:?}):\n{text}");
        let (code, text) = run(name, dir.path(), &["preview", "--expect-no-changes"]);
        assert_eq!(code, 0, "{text}");
        let state = state_of(name, dir.path()).await;
        assert_eq!(state.user_state["flash_sale"], serde_json::json!(event == "sale.started"), "the event was recorded before its apply");
        assert_eq!(state.resources.len(), resources, "after emit {event} killed at {n} ({action})");
        assert_eq!(compare(&state).await, Comparison::default(), "after emit {event} killed at {n} ({action}, {release:?})");
    }
}

/// `destroy` killed at several points, the call in flight taking effect or not: the next
/// `destroy` deletes everything the local AWS can delete, and nothing is left that state
/// does not know. (The local AWS never finishes deleting a replication group and lacks
/// `DeleteCacheSubnetGroup`, so the cache and what it stands on stay, as in
/// `tests/ecommerce_e2e.rs`; the group, `deleting` for ever there, is the one resource
/// state records that the count does not see.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_destroy_at_many_points_then_destroy_leaves_nothing_unknown() {
    let _turn = TURN.lock().await;
    let points: [(u32, Release); 4] = [(1, Release::Forward), (2, Release::Drop), (4, Release::Forward), (6, Release::Forward)];
    for (n, release) in points {
        let name = format!("kill-destroy-{n}");
        let dir = tempfile::tempdir().unwrap();
        proxy().set_plan(FaultPlan::none());
        let (code, text) = run(&name, dir.path(), &["up", "--yes"]);
        assert_eq!(code, 0, "{text}");
        let action = kill_at(&name, dir.path(), &["destroy", "--yes"], n, release).expect("destroy makes a few mutating calls");
        let (code, text) = run(&name, dir.path(), &["state", "unlock"]);
        assert_eq!(code, 0, "{text}");
        let (code, text) = run(&name, dir.path(), &["destroy", "--yes"]);
        assert_eq!(code, 1, "the cache cannot be deleted here:\n{text}");
        let state = state_of(&name, dir.path()).await;
        let found = compare(&state).await;
        assert!(found.orphans.is_empty() && found.duplicates.is_empty(), "destroy killed at {n} ({action}, {release:?}): {found:?}");
        assert!(
            found.missing.iter().all(|(urn, _)| urn.contains("aws:elasticache:ReplicationGroup")),
            "destroy killed at {n} ({action}): only the deleting cache is unseen: {found:?}"
        );
        let left: BTreeSet<&str> = state.resources.iter().map(|r| r.ty.as_str()).collect();
        assert!(!left.contains("aws:autoscaling:Group") && !left.contains("aws:sqs:Queue"), "what can be deleted is: {left:?}");
    }
}

/// `watch` killed while it takes in an event from its SQS queue: at its first or second
/// AWS change after receiving the message (deleting it once recorded, changing the web
/// group), the call in flight forwarded after the death or dropped.
/// The message comes back; a new `watch` applies the event, exactly once, and deletes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_watch_takes_in_an_sqs_event_then_it_is_applied_exactly_once() {
    let _turn = TURN.lock().await;
    let config = sdk_config(&cairn_testkit::moto().endpoint(), true).await;
    let (sqs, asg) = (aws_sdk_sqs::Client::new(&config), aws_sdk_autoscaling::Client::new(&config));
    // The message's deletion (once the event is recorded) and the group's change race:
    // either may be the first call, so the points are the first and the second.
    let points = [(1, Release::Forward, 2600, 6), (1, Release::Drop, 4100, 9), (2, Release::Forward, 1400, 3), (2, Release::Drop, 3100, 7)];
    for (round, (n, release, rps, capacity)) in points.into_iter().enumerate() {
        // A stack and queue of their own per point.
        let name = format!("kill-intake-{round}");
        let dir = tempfile::tempdir().unwrap();
        proxy().set_plan(FaultPlan::none());
        let (code, text) = run(&name, dir.path(), &["up", "--yes"]);
        assert_eq!(code, 0, "{text}");
        let state = state_of(&name, dir.path()).await;
        let queue = state.resources.iter().find(|r| r.urn.name() == shop::EVENTS_QUEUE).unwrap().id.clone();
        let group = state.resources.iter().find(|r| r.ty == "aws:autoscaling:Group").unwrap().id.clone();
        // Messages come back 2 s after a crash, not 60.
        let watch = || ecommerce(&name, dir.path(), &["watch", "--listen", "127.0.0.1:0"]).env("CAIRN_SQS_VISIBILITY", "2").spawn().unwrap();

        let id = format!("intake-{round}");
        let body = serde_json::json!({"kind": "traffic.spike", "id": id, "payload": {"requests_per_second": rps}});
        sqs.send_message().queue_url(&queue).message_body(body.to_string()).send().await.unwrap();
        let mut holder = proxy().hold_nth_mutating(n);
        let mut first = watch();
        let Some(action) = holder.wait(Duration::from_secs(60)) else {
            first.kill().unwrap();
            let out = first.wait_with_output().unwrap();
            let attrs = sqs.get_queue_attributes().queue_url(&queue).attribute_names(aws_sdk_sqs::types::QueueAttributeName::All).send().await.unwrap();
            panic!(
                "watch made fewer than {n} AWS changes ({:?}; queue {:?}):\n{}{}",
                proxy().stats(),
                attrs.attributes(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        first.kill().unwrap(); // SIGKILL
        first.wait().unwrap();
        holder.release(release);
        let (code, text) = run(&name, dir.path(), &["state", "unlock"]);
        assert_eq!(code, 0, "{text}");

        let second = watch();
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        loop {
            let state = state_of(&name, dir.path()).await;
            let attrs = sqs
                .get_queue_attributes()
                .queue_url(&queue)
                .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
                .send()
                .await
                .unwrap();
            let count = |a: &str| attrs.attributes().and_then(|m| m.iter().find(|(k, _)| k.as_str() == a)).map_or(0, |(_, v)| v.parse::<u32>().unwrap());
            let queued = count("ApproximateNumberOfMessages") + count("ApproximateNumberOfMessagesNotVisible");
            let group = asg.describe_auto_scaling_groups().auto_scaling_group_names(&group).send().await.unwrap();
            let desired = group.auto_scaling_groups()[0].desired_capacity();
            let recorded = state.user_state["web_capacity"] == serde_json::json!(capacity) && state.pending.is_empty();
            if recorded && desired == Some(capacity) && queued == 0 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "event {id} (watch killed at {action}) not applied and deleted within 90 s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Its work is checked; a clean stop is the e2e test's business.
        let mut second = second;
        second.kill().unwrap();
        second.wait().unwrap();
        let state = state_of(&name, dir.path()).await;
        assert_eq!(state.processed_events.iter().filter(|e| e.ends_with(&id)).count(), 1, "{id} recorded once: {:?}", state.processed_events);
        assert_eq!(compare(&state).await, Comparison::default());
    }
}

// --- replicas ------------------------------------------------------------------------

/// One `watch --standby` replica of the example: its process, HTTP port and output.
struct Replica {
    child: std::process::Child,
    port: u16,
    output: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Replica {
    /// Starts a replica of stack `name` whose state is in S3 (moto directly; the cloud
    /// through the proxy), with 2 s leases and SQS messages back 2 s after a crash.
    fn start(name: &str, state: &str) -> Replica {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut child = Command::new(example_binary())
            .args(["--stack", name, "--state", state, "watch", "--standby", "--listen", &format!("127.0.0.1:{port}")])
            .env("AWS_ENDPOINT_URL", proxy().endpoint())
            .env("AWS_ENDPOINT_URL_S3", cairn_testkit::moto().endpoint())
            .env("CAIRN_LEASE_SECS", "2")
            .env("CAIRN_SQS_VISIBILITY", "2")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let output = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        for stream in [Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>, Box::new(child.stderr.take().unwrap())] {
            let output = output.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut out = output.lock().unwrap();
                    out.push_str(&line);
                    out.push('\n');
                }
            });
        }
        Replica { child, port, output }
    }

    /// The body of its answer to `GET path`, once it answers.
    fn get(&self, path: &str) -> Option<String> {
        cairn_testkit::http_get(self.port, path).map(|(_, body)| body)
    }

    /// Its `/status` document, once it answers.
    fn status(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&self.get("/status")?).ok()
    }

    fn role(&self) -> Option<String> {
        Some(self.status()?["role"].as_str()?.to_owned())
    }

    fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }
}

/// Three `watch --standby` replicas of one stack, state in S3 and events from SQS: one
/// leads, the others stand by; the leader is killed with SIGKILL in the middle of an
/// event storm. A standby takes over within the lease (plus its poll), every event is
/// applied exactly once, and the cloud holds exactly what state says.
#[cfg(feature = "s3")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_fail_over_when_the_leader_is_killed_and_apply_every_event_once() {
    use cairn::state::Store;
    let _turn = TURN.lock().await;
    proxy().set_plan(FaultPlan::none());
    let config = sdk_config(&cairn_testkit::moto().endpoint(), true).await;
    let (sqs, asg) = (aws_sdk_sqs::Client::new(&config), aws_sdk_autoscaling::Client::new(&config));
    let s3 = aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(&config).force_path_style(true).build());
    s3.create_bucket().bucket("replicas").send().await.unwrap();
    let (name, location) = ("replicas", "s3://replicas/stacks");
    let store = cairn::state::S3Store::new(s3.clone(), "replicas", "stacks");
    let out = ecommerce(name, std::path::Path::new("."), &["up", "--yes"])
        .args(["--state", location])
        .env("AWS_ENDPOINT_URL_S3", cairn_testkit::moto().endpoint())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let state = store.load(name).await.unwrap().unwrap();
    let queue = state.resources.iter().find(|r| r.urn.name() == shop::EVENTS_QUEUE).unwrap().id.clone();
    let group = state.resources.iter().find(|r| r.ty == "aws:autoscaling:Group").unwrap().id.clone();

    let mut replicas: Vec<Replica> = (0..3).map(|_| Replica::start(name, location)).collect();
    let leader_of = |replicas: &[Replica]| {
        let roles: Vec<Option<String>> = replicas.iter().map(Replica::role).collect();
        let leaders: Vec<usize> = roles.iter().enumerate().filter(|(_, r)| r.as_deref() == Some("leader")).map(|(i, _)| i).collect();
        let standbys = roles.iter().filter(|r| r.as_deref() == Some("standby")).count();
        (leaders, standbys)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let first = loop {
        match leader_of(&replicas) {
            (leaders, 2) if leaders.len() == 1 => break leaders[0],
            _ => {}
        }
        let outputs: Vec<String> = replicas.iter().map(Replica::output).collect();
        assert!(std::time::Instant::now() < deadline, "no single leader with two standbys within 60 s:\n{}", outputs.join("\n---\n"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let generation = store.lock_holder(name).await.unwrap().unwrap().generation;

    // The storm: 30 events, 100 ms apart; the leader dies a second in.
    let ids: Vec<String> = (0..30).map(|i| format!("storm-{i}")).collect();
    let storm = {
        let (sqs, queue, ids) = (sqs.clone(), queue.clone(), ids.clone());
        tokio::spawn(async move {
            for (i, id) in ids.iter().enumerate() {
                let body = serde_json::json!({"kind": "traffic.spike", "id": id, "payload": {"requests_per_second": 1000 + 100 * i}});
                sqs.send_message().queue_url(&queue).message_body(body.to_string()).send().await.unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut dead = replicas.remove(first);
    dead.child.kill().unwrap(); // SIGKILL: no unlock, no commit
    let killed = std::time::Instant::now();
    dead.child.wait().unwrap();
    let failover = loop {
        let holder = store.lock_holder(name).await.unwrap();
        if holder.is_some_and(|h| h.generation > generation && replicas.iter().any(|r| r.child.id() == h.pid)) {
            break killed.elapsed();
        }
        assert!(killed.elapsed() < Duration::from_secs(30), "no standby took over within 30 s of the leader's death");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    storm.await.unwrap();
    // The new holder calls itself leader once its session is open (the dead leader's
    // steps settled through the proxy, a commit to S3): wait for that, and never see two.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let leaders = loop {
        let (leaders, standbys) = leader_of(&replicas);
        assert!(leaders.len() <= 1, "two leaders at once: {leaders:?}");
        if (leaders.len(), standbys) == (1, 1) {
            break leaders;
        }
        assert!(std::time::Instant::now() < deadline, "after the failover, not one leader and one standby within 30 s: {leaders:?}, {standbys} standing by");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The standby consumed nothing of the storm.
    let metrics = replicas[1 - leaders[0]].get("/metrics").unwrap();
    assert!(metrics.contains("cairn_leader 0") && metrics.contains("cairn_events_pending 0") && !metrics.contains("cairn_events_received_total{"), "{metrics}");

    // Every event is applied, the queue drains, the group has the capacity state says.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let state = loop {
        let state = store.load(name).await.unwrap().unwrap();
        let attrs = sqs.get_queue_attributes().queue_url(&queue).attribute_names(aws_sdk_sqs::types::QueueAttributeName::All).send().await.unwrap();
        let count = |a: &str| attrs.attributes().and_then(|m| m.iter().find(|(k, _)| k.as_str() == a)).map_or(0, |(_, v)| v.parse::<u32>().unwrap());
        let queued = count("ApproximateNumberOfMessages") + count("ApproximateNumberOfMessagesNotVisible");
        let desired = asg.describe_auto_scaling_groups().auto_scaling_group_names(&group).send().await.unwrap().auto_scaling_groups()[0].desired_capacity();
        let all_in = ids.iter().all(|id| state.processed_events.iter().any(|e| e.ends_with(id.as_str())));
        let capacity = state.user_state["web_capacity"].as_i64().map(|c| c as i32);
        if all_in && queued == 0 && state.pending.is_empty() && desired == capacity {
            break state;
        }
        let outputs: Vec<String> = replicas.iter().map(Replica::output).collect();
        assert!(std::time::Instant::now() < deadline, "the storm was not applied within 90 s (queued {queued}, desired {desired:?} vs {capacity:?}):\n{}", outputs.join("\n---\n"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for id in &ids {
        assert_eq!(state.processed_events.iter().filter(|e| e.ends_with(id.as_str())).count(), 1, "{id} recorded exactly once");
    }
    assert_eq!(compare(&state).await, Comparison::default());
    for mut r in replicas {
        r.child.kill().unwrap();
        r.child.wait().unwrap();
    }
    summary(&format!("REPLICAS failover_ms={} lease_ms=2000 events={} generation={}", failover.as_millis(), ids.len(), generation + 1));
    assert!(failover < Duration::from_millis(2000 + 2000), "failover took {failover:?}, more than the lease + 2 s");
}

/// The calls each verb makes, counted by operation by a proxy of its own, kept as a
/// snapshot: a change that makes more calls (or fewer) shows as a diff to review. The
/// ecommerce stack: the first `up`, an `up` with nothing to do, a refresh, and an event
/// that scales the web group. The SDK's own retries (after a 500 from moto) are not
/// Cairn's calls, and are left out.
#[tokio::test]
async fn the_calls_each_verb_makes_are_counted_by_operation() {
    let moto = cairn_testkit::moto();
    moto.configure_env();
    std::env::set_var("CAIRN_AWS_WAIT_TIMEOUT", "3");
    let counting = FaultProxy::start(moto.endpoint());
    let aws = cairn_aws::Provider::new(&sdk_config(&counting.endpoint(), true).await);
    let stack = shop::stack("counted", aws, shop::ShopConfig::default());
    let mut session = stack.in_memory_session().await.unwrap();
    let counts = |what: &str| {
        let stats = counting.stats();
        counting.reset_stats();
        let calls = stats.first_attempts_by_operation();
        let lines: Vec<String> = calls.iter().map(|(op, n)| format!("{n:>3}  {op}")).collect();
        format!("{what}: {} calls\n{}\n", calls.values().sum::<u64>(), lines.join("\n"))
    };

    let shop = Shop::default();
    let report = session.up(&shop).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let mut text = counts("up, first");
    assert_eq!(session.up(&shop).await.unwrap().summary.changes(), 0);
    text += &counts("up, nothing to do");
    session.refresh().await.unwrap();
    text += &counts("refresh");
    let spike = Shop { web_capacity: 6, ..shop.clone() };
    assert_eq!(session.up(&spike).await.unwrap().summary.update, 1);
    text += &counts("up, web capacity 2 -> 6");
    insta::assert_snapshot!("calls_per_verb", text);
}

/// The answer of each write the shop's first `up` makes is lost after it took effect,
/// one write at a time (the first call of each operation; a REST call is named by its
/// method and path prefix, so a zone's record changes, which share
/// `POST /2013-04-01/hostedzone` with its create, are not among them), with the SDK's
/// retries on, as by default. A write the SDK sends again must not fail its step:
/// adding a rule, a route, an attachment that the first attempt made already is done,
/// and so is a create the service answers twice with one resource (`RETRIED_CREATES`).
/// The one step a lost answer may fail is another create (sent once, never retried, so
/// that it cannot make a second resource), whose outcome is unknown: it fails as
/// uncertain, what depends on it waits, and the next `up` settles it. Then the cloud
/// holds exactly what state records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_to_any_one_write_of_an_up_fails_at_most_an_uncertain_create() {
    /// The creates sent with the SDK's retries (see `cairn_aws`'s `Clients`).
    const RETRIED_CREATES: [&str; 6] = ["CreateQueue", "CreateTopic", "PutMetricAlarm", "PutRule", "PutTargets", "SetQueueAttributes"];
    let proxy = proxy();
    let _turn = TURN.lock().await;
    proxy.set_plan(FaultPlan::none());
    let aws = cairn_aws::Provider::new(&sdk_config(&proxy.endpoint(), true).await);
    let stack = |name: &str| shop::stack(name, aws.clone(), shop::ShopConfig::default());
    // The writes an up makes, from one without faults.
    proxy.reset_stats();
    let mut session = stack("lost-one").in_memory_session().await.unwrap();
    assert!(session.up(&Shop::default()).await.unwrap().succeeded());
    let rest_write = |op: &str| ["POST ", "PUT ", "PATCH ", "DELETE "].iter().any(|m| op.starts_with(m));
    let writes: Vec<String> = proxy.stats().by_operation.into_keys().filter(|op| is_mutating_action(op) || rest_write(op)).collect();
    assert!(writes.len() >= 25, "the shop's writes: {writes:?}");
    assert!(RETRIED_CREATES.iter().all(|c| writes.iter().any(|w| w == c)), "the shop makes each retried create: {writes:?}");

    let mut wrong = Vec::new();
    for (i, op) in writes.iter().enumerate() {
        let name = format!("lost-one-{i}");
        let dir = tempfile::tempdir().unwrap();
        let store = cairn::state::open(&format!("file://{}", dir.path().display())).await.unwrap();
        proxy.reset_stats();
        proxy.fault_next(op, Fault::LostAnswer);
        let mut session = stack(&name).lock(store.clone(), "up").await.unwrap();
        let report = session.up(&Shop::default()).await;
        // Given, or left for the next test to trip on.
        assert_eq!(proxy.clear_answers(), 0, "{op} was not called");
        let report = report.unwrap();
        session.close().await.unwrap();
        assert_eq!(proxy.stats().faults_of(Fault::LostAnswer), 1, "{op}: its answer was lost");
        // Failed: one step (every step is a create here), uncertain, if its create is
        // sent once; the rest skipped.
        let failed: Vec<_> = report.failures().filter_map(|f| f.status.error()).collect();
        let most = if RETRIED_CREATES.contains(&op.as_str()) { 0 } else { 1 };
        if failed.len() > most || !failed.iter().all(|e| e.is_uncertain()) {
            wrong.push(format!("{op}: {:?}", failed.iter().map(ToString::to_string).collect::<Vec<_>>()));
        }

        let mut session = stack(&name).lock(store.clone(), "up").await.unwrap();
        let report = session.up(&Shop::default()).await.unwrap();
        assert!(report.succeeded(), "{op}, the next up: {:?}", report.failures().collect::<Vec<_>>());
        let state = session.state().clone();
        session.close().await.unwrap();
        assert_eq!(state.resources.len(), declared(&Shop::default()), "{op}");
        assert_eq!(compare(&state).await, Comparison::default(), "{op}");
    }
    assert!(wrong.is_empty(), "{} of {} writes failed a step they should not have:\n{}", wrong.len(), writes.len(), wrong.join("\n"));
}
