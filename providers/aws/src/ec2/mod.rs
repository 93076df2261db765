//! EC2: networks (VPCs, subnets, gateways, route tables), security groups, Elastic IPs
//! and launch templates.
//!
//! Lists that AWS treats as sets (security group rules, routes, route table
//! associations, a launch template's security groups) are diffed as sets: reordering
//! them or repeating an item changes nothing.

pub mod elastic_ip;
pub mod internet_gateway;
pub mod launch_template;
pub mod nat_gateway;
pub mod route_table;
pub mod security_group;
pub mod subnet;
pub mod vpc;

pub use elastic_ip::{ElasticIp, ElasticIpRef, ELASTIC_IP};
pub use internet_gateway::{InternetGateway, InternetGatewayRef, INTERNET_GATEWAY};
pub use launch_template::{LaunchTemplate, LaunchTemplateRef, LAUNCH_TEMPLATE};
pub use nat_gateway::{NatGateway, NatGatewayRef, NAT_GATEWAY};
pub use route_table::{Route, RouteDestination, RouteTable, RouteTableRef, ROUTE_TABLE};
pub use security_group::{Rule, RulePorts, SecurityGroup, SecurityGroupRef, SECURITY_GROUP};
pub use subnet::{Subnet, SubnetRef, SUBNET};
pub use vpc::{Vpc, VpcRef, VPC};

use aws_sdk_ec2::types::{Filter, ResourceType as Ec2Type, Tag, TagSpecification};
use cairn_sdk::{CheckFailure, Decl, Prop, ProviderError, Tags, Urn};
use serde_json::Value;

use crate::error::{aws_error, no_hint};
pub(crate) use crate::kind::{canonical, canonical_set, client_token, set_diff};
use crate::kind::Kinds;
use crate::tags;

pub(crate) fn register(kinds: &mut Kinds) {
    kinds.insert(VPC.token, &vpc::VpcKind);
    kinds.insert(SUBNET.token, &subnet::SubnetKind);
    kinds.insert(INTERNET_GATEWAY.token, &internet_gateway::InternetGatewayKind);
    kinds.insert(SECURITY_GROUP.token, &security_group::SecurityGroupKind);
    kinds.insert(ROUTE_TABLE.token, &route_table::RouteTableKind);
    kinds.insert(ELASTIC_IP.token, &elastic_ip::ElasticIpKind);
    kinds.insert(NAT_GATEWAY.token, &nat_gateway::NatGatewayKind);
    kinds.insert(LAUNCH_TEMPLATE.token, &launch_template::LaunchTemplateKind);
}

/// The tags to create a resource with ([`tags::wanted`]).
pub(crate) fn tag_spec(kind: Ec2Type, urn: &Urn, user: Option<&Tags>) -> TagSpecification {
    let tags = tags::wanted(urn, user).into_iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect();
    TagSpecification::builder().resource_type(kind).set_tags(Some(tags)).build()
}

/// The user's tags among an EC2 resource's ([`tags::observed`]).
pub(crate) fn observed_tags(urn: &Urn, found: &[Tag]) -> Option<Tags> {
    tags::observed(urn, pairs(found))
}

fn pairs(found: &[Tag]) -> impl Iterator<Item = (&str, &str)> {
    found.iter().filter_map(|t| Some((t.key()?, t.value().unwrap_or_default())))
}

/// Brings the tags of resource `id` from the user's `old` to `new`.
pub(crate) async fn retag(ec2: &aws_sdk_ec2::Client, urn: &Urn, id: &str, old: Option<&Tags>, new: Option<&Tags>) -> Result<(), ProviderError> {
    let change = tags::Retag::new(urn, old, new);
    if !change.remove.is_empty() {
        let gone = change.remove.into_iter().map(|k| Tag::builder().key(k).build()).collect();
        ec2.delete_tags().resources(id).set_tags(Some(gone)).send().await.map_err(|e| aws_error("removing tags", e, no_hint))?;
    }
    if !change.set.is_empty() {
        let set = change.set.into_iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect();
        ec2.create_tags().resources(id).set_tags(Some(set)).send().await.map_err(|e| aws_error("tagging", e, no_hint))?;
    }
    Ok(())
}

/// The filter that finds resources tagged with `urn`.
pub(crate) fn urn_filter(urn: &Urn) -> Filter {
    Filter::builder().name(format!("tag:{}", tags::URN)).values(urn.as_str()).build()
}

/// Whether `found` carries the `cairn:urn` tag of `urn`. A look-up checks what
/// [`urn_filter`] returned: an endpoint that ignores the filter (the local AWS does for
/// NAT gateways) would otherwise hand back every resource of the kind.
pub(crate) fn tagged_with(found: &[Tag], urn: &Urn) -> bool {
    tags::is_tagged(urn, pairs(found))
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

/// Whether `s` is an IPv4 network in CIDR form (any prefix) without host bits.
pub(crate) fn is_ipv4_network(s: &str) -> bool {
    s.parse::<ipnet::Ipv4Net>().is_ok_and(|n| n.trunc() == n)
}

// ---------------------------------------------------------------------------------------
// Set-valued properties

/// Sets a set-valued input to `items`, in canonical order when every item is a literal
/// (so the state matches what `read` returns), as declared otherwise.
pub(crate) fn set_items(decl: &mut Decl, key: &str, mut items: Vec<Prop>) {
    if items.iter().all(|p| matches!(p, Prop::Value(_))) {
        let values: Vec<Value> = items.into_iter().filter_map(|p| p.as_value().cloned()).collect();
        items = canonical_set(Some(&Value::Array(values))).into_iter().map(Prop::Value).collect();
    }
    decl.set_prop(key, Prop::list(items));
}

/// The items declared so far for a list input, to add to.
pub(crate) fn declared_items(decl: &Decl, key: &str) -> Vec<Prop> {
    match decl.get(key) {
        Some(Prop::Value(Value::Array(items))) => items.iter().cloned().map(Prop::Value).collect(),
        Some(Prop::List(items)) => items.clone(),
        Some(other) => vec![other.clone()],
        None => Vec::new(),
    }
}

/// One object of a declared list, as validation sees it: each field's literal value,
/// or `None` for a field that refers to another resource (known only at apply).
#[derive(Debug)]
pub(crate) struct Item<'a> {
    fields: Vec<(&'a str, Option<&'a Value>)>,
    /// The item for messages, references shown as `<id of aws:ec2:Vpc 'shop'>`.
    pub(crate) shown: Value,
}

impl<'a> Item<'a> {
    /// Whether field `key` is set (to a literal or a reference).
    pub(crate) fn has(&self, key: &str) -> bool {
        self.fields.iter().any(|(k, _)| *k == key)
    }

    /// The literal value of field `key`; `None` when unset or a reference.
    pub(crate) fn value(&self, key: &str) -> Option<&'a Value> {
        self.fields.iter().find(|(k, _)| *k == key).and_then(|(_, v)| *v)
    }

    /// The names of its fields.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.fields.iter().map(|(k, _)| *k)
    }
}

/// The items of list input `key`, for validation: `Err` with a failure when the input
/// is not a list of objects (`what` names them: "rules").
pub(crate) fn list_of_objects<'a>(decl: &'a Decl, key: &str, what: &str) -> Result<Vec<Item<'a>>, CheckFailure> {
    let shown = |p: &Prop| {
        p.resolve(&mut |r| Some(Value::from(format!("<{} of {} '{}'>", r.property, r.urn.ty(), r.urn.name())))).unwrap_or(Value::Null)
    };
    let Some(prop) = decl.get(key) else { return Ok(Vec::new()) };
    let not_a_list = || CheckFailure::new(key, Some(&shown(prop)), format!("be a list of {what}"));
    let mut out = Vec::new();
    match prop {
        Prop::Value(Value::Array(values)) => {
            for v in values {
                let Value::Object(map) = v else { return Err(not_a_list()) };
                out.push(Item { fields: map.iter().map(|(k, v)| (k.as_str(), Some(v))).collect(), shown: v.clone() });
            }
        }
        Prop::List(items) => {
            for item in items {
                let fields = match item {
                    Prop::Value(Value::Object(map)) => map.iter().map(|(k, v)| (k.as_str(), Some(v))).collect(),
                    Prop::Object(fields) => fields.iter().map(|(k, p)| (k.as_str(), p.as_value())).collect(),
                    _ => return Err(not_a_list()),
                };
                out.push(Item { fields, shown: shown(item) });
            }
        }
        _ => return Err(not_a_list()),
    }
    Ok(out)
}

/// Checks a list input of ids: each literal must start with `prefix` (`what` names one:
/// "a subnet id"). References are checked by AWS once known.
pub(crate) fn check_ids(decl: &Decl, key: &str, prefix: &str, what: &str, out: &mut Vec<CheckFailure>) {
    let bad = |v: &Value| !v.as_str().is_some_and(|s| s.starts_with(prefix) && s.len() > prefix.len());
    let expected = format!("be a list of ids, each {what} ({prefix}...), such as another resource's .id()");
    match decl.get(key) {
        None => {}
        Some(Prop::Value(Value::Array(items))) => {
            if let Some(v) = items.iter().find(|v| bad(v)) {
                out.push(CheckFailure::new(key, Some(v), expected));
            }
        }
        Some(Prop::List(items)) => {
            if let Some(v) = items.iter().filter_map(Prop::as_value).find(|v| bad(v)) {
                out.push(CheckFailure::new(key, Some(v), expected));
            }
        }
        Some(Prop::Value(v)) => out.push(CheckFailure::new(key, Some(v), expected)),
        Some(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_sdk::provider::{DiffRequest, Planned};
    use cairn_sdk::Props;
    use serde_json::json;
    use std::borrow::Cow;

    static T: cairn_sdk::ResourceType =
        cairn_sdk::ResourceType::new("aws:test:Sets", &[cairn_sdk::Property::input("rules"), cairn_sdk::Property::input("name")]);

    #[test]
    fn sets_ignore_order_and_repeats_but_not_content() {
        let urn = Urn::new("dev", T.token, "x");
        let old = Props::from_value(json!({"rules": [{"a": 1}, {"b": 2}], "name": "n"})).unwrap();
        let diff = |rules: Value| {
            let new = [("name", Planned::Known(Cow::Owned(json!("n")))), ("rules", Planned::Known(Cow::Owned(rules)))];
            set_diff(&DiffRequest { urn: &urn, ty: &T, old: &old, new: &new }, &["rules"]).changes
        };
        assert!(diff(json!([{"b": 2}, {"a": 1}, {"a": 1}])).is_empty());
        assert_eq!(diff(json!([{"b": 2}])).len(), 1);
        let gone = [("name", Planned::Known(Cow::Owned(json!("n"))))];
        let empty = Props::from_value(json!({"rules": [], "name": "n"})).unwrap();
        assert!(set_diff(&DiffRequest { urn: &urn, ty: &T, old: &empty, new: &gone }, &["rules"]).changes.is_empty(), "absent is empty");
    }
}
