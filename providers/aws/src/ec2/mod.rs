//! EC2 networking: VPCs, subnets and internet gateways.

pub mod internet_gateway;
pub mod subnet;
pub mod vpc;

pub use internet_gateway::{InternetGateway, InternetGatewayRef, INTERNET_GATEWAY};
pub use subnet::{Subnet, SubnetRef, SUBNET};
pub use vpc::{Vpc, VpcRef, VPC};

use aws_sdk_ec2::types::{Filter, ResourceType as Ec2Type, Tag, TagSpecification};
use cairn_sdk::{CheckFailure, Props, Urn};
use serde_json::Value;

use crate::kind::Kinds;
use crate::tags;

pub(crate) fn register(kinds: &mut Kinds) {
    kinds.insert(VPC.token, &vpc::VpcKind);
    kinds.insert(SUBNET.token, &subnet::SubnetKind);
    kinds.insert(INTERNET_GATEWAY.token, &internet_gateway::InternetGatewayKind);
}

/// The tags to create a resource with: the user's, Cairn's, and `Name` (the logical
/// name, unless the user set one).
pub(crate) fn tag_spec(kind: Ec2Type, urn: &Urn, inputs: &Props) -> TagSpecification {
    let mut all = tags::with_cairn_tags(urn, inputs);
    all.entry("Name".to_owned()).or_insert_with(|| urn.name().to_owned());
    let tags = all.into_iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect();
    TagSpecification::builder().resource_type(kind).set_tags(Some(tags)).build()
}

/// Tags as the `tags` input holds them: without Cairn's, and without a `Name` that is
/// just the logical name Cairn put there.
pub(crate) fn observed_tags(urn: &Urn, found: &[Tag]) -> Option<Value> {
    let pairs: Vec<(String, String)> = found
        .iter()
        .filter_map(|t| Some((t.key()?.to_owned(), t.value().unwrap_or_default().to_owned())))
        .filter(|(k, v)| !(k == "Name" && v == urn.name()))
        .collect();
    tags::observed_user_tags(pairs.iter().map(|(k, v)| (k, v)))
}

/// Brings the user's tags from `old` to `new` on resource `id`.
pub(crate) async fn retag(
    ec2: &aws_sdk_ec2::Client,
    urn: &Urn,
    id: &str,
    old: &Props,
    new: &Props,
) -> Result<(), cairn_sdk::ProviderError> {
    let (before, after) = (tags::user_tags(old), tags::user_tags(new));
    let gone: Vec<Tag> = before.keys().filter(|k| !after.contains_key(*k)).map(|k| Tag::builder().key(k).build()).collect();
    if !gone.is_empty() {
        ec2.delete_tags()
            .resources(id)
            .set_tags(Some(gone))
            .send()
            .await
            .map_err(|e| crate::error::aws_error(urn, "removing tags", e, |_| None))?;
    }
    let changed: Vec<Tag> = after
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(*v))
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect();
    if !changed.is_empty() {
        ec2.create_tags()
            .resources(id)
            .set_tags(Some(changed))
            .send()
            .await
            .map_err(|e| crate::error::aws_error(urn, "tagging", e, |_| None))?;
    }
    Ok(())
}

/// The filter that finds resources tagged with `urn`.
pub(crate) fn urn_filter(urn: &Urn) -> Filter {
    Filter::builder().name(format!("tag:{}", tags::URN)).values(urn.as_str()).build()
}

/// Checks an IPv4 CIDR input with a prefix from `min` to `max` bits.
pub(crate) fn check_cidr(decl: &cairn_sdk::Decl, key: &str, min: u8, max: u8, out: &mut Vec<CheckFailure>) {
    if let Some(v) = decl.value(key) {
        let ok = v.as_str().and_then(|s| s.parse::<ipnet::Ipv4Net>().ok()).is_some_and(|n| (min..=max).contains(&n.prefix_len()) && n.trunc() == n);
        if !ok {
            out.push(CheckFailure::new(key, Some(v), format!("be an IPv4 network in CIDR form with a /{min} to /{max} prefix and no host bits, such as 10.0.0.0/{min}")));
        }
    }
}
