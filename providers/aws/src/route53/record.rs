//! `aws:route53:Record`: one record set of a hosted zone, with plain values and a TTL,
//! or an alias to an AWS resource such as a load balancer.
//!
//! A record set is named by its zone, name and type, which force a replacement; its TTL,
//! values and alias change in place (`UPSERT`). Record sets carry no tags: an interrupted
//! create is settled by reading the set of that zone, name and type. A set that already
//! exists with the declared values is adopted; one with other values is left alone and
//! the create refused, as Cairn never overwrites what it did not make.
//!
//! A replacement makes the new set before it deletes the old one. A CNAME cannot share
//! its name with a set of another type, so turning a name's A set into a CNAME (or back)
//! needs the record declared with `.delete_before_replace()`.
//!
//! Route 53 takes a change at once and spreads it to its DNS servers within about a
//! minute; Cairn does not wait for that (`GetChange` reporting `INSYNC`).

use std::net::{Ipv4Addr, Ipv6Addr};

use async_trait::async_trait;
use aws_sdk_route53::types::{AliasTarget, Change, ChangeAction, ChangeBatch, ResourceRecord, ResourceRecordSet, RrType};
use aws_smithy_types::error::operation::BuildError;
use cairn_sdk::provider::{DiffRequest, DiffResult};
use cairn_sdk::{CheckFailure, Decl, Input, Observed, Prop, Props, ProviderError, Urn};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{bare_zone_id, canonical_name, check_dns_name, dns_name_problem, fqdn, is_zone_id, normal_name, normalized_diff};
use crate::error::{aws_error, missing, no_hint, or_missing};
use crate::kind::{Clients, Kind};

cairn_sdk::resource! {
    /// A DNS record set:
    /// `Record::new("www").zone_id(zone.zone_id()).name("www.example.com").record_type("A").ttl(300).records(["192.0.2.10"])`,
    /// or an alias, `.record_type("A").alias(lb.dns_name(), lb.zone_id())` with no TTL or records.
    pub struct Record {
        token: "aws:route53:Record",
        schema: RECORD,
        inputs: RecordInputs,
        /// A declared record set's outputs.
        handle: RecordRef,
        validate: validate,
    }
    inputs {
        /// The hosted zone it belongs to, such as a [`Zone`](super::Zone)'s `zone_id()`
        /// (forces replacement).
        zone_id: String = required().forces_replacement().identity(),
        /// The domain name, within the zone's domain, such as `www.example.com`; `*` as
        /// the first label makes a wildcard. A trailing dot and letter case make no
        /// difference (forces replacement).
        name: String = required().forces_replacement().identity(),
        /// The record type: A, AAAA, CNAME, TXT, MX, NS, SRV, CAA or PTR (forces
        /// replacement).
        record_type: String = required().forces_replacement().identity(),
        /// Seconds resolvers may cache the answer; required with `records`, not allowed
        /// with an alias. Changed in place.
        ttl: u32,
        /// The values, a set changed in place: addresses for A and AAAA, one domain name
        /// for CNAME, double-quoted strings for TXT (`"\"v=spf1 -all\""`), `"10 mail.example.com"`
        /// for MX. Required unless the set is an alias.
        records: Vec<String>,
    }
    by_hand {
        /// Where an alias points: see [`Record::alias`].
        alias: Alias,
    }
    outputs {
        /// The fully qualified name, lowercase, without the trailing dot.
        fqdn: String,
    }
    echoes {
        /// The name as declared.
        name: String,
    }
}

/// Where an alias record set points: an AWS resource's DNS name and that name's hosted
/// zone, such as a load balancer's `dns_name()` and `zone_id()`. Route 53 answers with the
/// resource's current addresses; the set has no TTL or values of its own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alias {
    /// The target's DNS name.
    pub dns_name: String,
    /// The hosted zone of the target's DNS name (a load balancer's canonical hosted zone,
    /// not the zone the record is in).
    pub zone_id: String,
    /// Whether Route 53 answers only while the target is healthy.
    #[serde(default)]
    pub evaluate_target_health: bool,
}

impl Alias {
    /// The form in which equal aliases are equal: the DNS name canonical, the zone id bare.
    fn normal(&self) -> Alias {
        Alias {
            dns_name: canonical_name(&self.dns_name),
            zone_id: bare_zone_id(&self.zone_id).to_owned(),
            evaluate_target_health: self.evaluate_target_health,
        }
    }
}

impl Record {
    /// Makes the record set an alias to the AWS resource whose DNS name is `dns_name` in
    /// hosted zone `zone_id`, such as `.alias(lb.dns_name(), lb.zone_id())` for a load
    /// balancer. An alias has no `ttl` or `records`. Changed in place.
    #[must_use]
    pub fn alias(mut self, dns_name: impl Into<Input<String>>, zone_id: impl Into<Input<String>>) -> Self {
        let health = alias_fields(&self.0).into_iter().find(|(k, _)| k == "evaluate_target_health").map(|(_, p)| p);
        let fields = vec![
            ("dns_name".to_owned(), dns_name.into().into_prop()),
            ("zone_id".to_owned(), zone_id.into().into_prop()),
            ("evaluate_target_health".to_owned(), health.unwrap_or(Prop::Value(Value::Bool(false)))),
        ];
        self.0.set_prop("alias", Prop::object(fields));
        self
    }

    /// Whether the alias answers only while its target is healthy (default false): for
    /// a load balancer, while it has healthy targets. Goes with [`alias`](Self::alias).
    #[must_use]
    pub fn evaluate_target_health(mut self, on: bool) -> Self {
        let mut fields: Vec<(String, Prop)> = alias_fields(&self.0).into_iter().filter(|(k, _)| k != "evaluate_target_health").collect();
        fields.push(("evaluate_target_health".to_owned(), Prop::Value(Value::Bool(on))));
        self.0.set_prop("alias", Prop::object(fields));
        self
    }
}

/// The fields of the alias declared so far.
fn alias_fields(decl: &Decl) -> Vec<(String, Prop)> {
    match decl.get("alias") {
        Some(Prop::Value(Value::Object(map))) => map.iter().map(|(k, v)| (k.clone(), Prop::Value(v.clone()))).collect(),
        Some(Prop::Object(fields)) => fields.clone(),
        _ => Vec::new(),
    }
}

/// The record types Cairn manages.
const TYPES: &[&str] = &["A", "AAAA", "CNAME", "TXT", "MX", "NS", "SRV", "CAA", "PTR"];

/// A declared value for messages: references shown as `<dns_name of aws:elbv2:LoadBalancer 'web'>`.
fn shown(p: &Prop) -> Value {
    p.resolve(&mut |r| Some(Value::from(format!("<{} of {} '{}'>", r.property, r.urn.ty(), r.urn.name())))).unwrap_or(Value::Null)
}

fn validate(decl: &Decl, out: &mut Vec<CheckFailure>) {
    check_dns_name(decl, "name", true, out);
    if let Some(v) = decl.value("zone_id") {
        if !v.as_str().is_some_and(is_zone_id) {
            out.push(CheckFailure::new("zone_id", Some(v), "be a hosted zone id such as Z0123456789ABCDEFGHIJ, such as a Zone's zone_id()"));
        }
    }
    let rtype = decl.value("record_type").and_then(Value::as_str).filter(|t| TYPES.contains(t));
    if let Some(v) = decl.value("record_type").filter(|_| rtype.is_none()) {
        out.push(CheckFailure::new("record_type", Some(v), format!("be one of {} (in capitals)", TYPES.join(", "))));
    }
    let (records, alias) = (decl.get("records"), decl.get("alias"));
    match (records, alias) {
        (Some(_), Some(a)) => out.push(CheckFailure::new(
            "alias",
            Some(&shown(a)),
            "not be set along with records: a record set has either records (with a ttl) or an alias",
        )),
        (None, None) => out.push(CheckFailure::new("records", None, "be set (with a ttl), or else an alias: a record set needs one of the two")),
        _ => {}
    }
    match (decl.get("ttl"), records.is_some(), alias.is_some()) {
        (None, true, _) => out.push(CheckFailure::new("ttl", None, "be set (seconds, such as 300) for a record set with records")),
        (Some(t), false, true) => {
            out.push(CheckFailure::new("ttl", Some(&shown(t)), "not be set for an alias: Route 53 answers with the target's own TTL"))
        }
        _ => {}
    }
    if let Some(v) = decl.value("ttl") {
        if v.as_u64().is_none_or(|n| n > i32::MAX as u64) {
            out.push(CheckFailure::new("ttl", Some(v), "be a whole number of seconds from 0 to 2147483647"));
        }
    }
    if let Some(records) = records {
        check_records(records, rtype, out);
    }
    if let Some(alias) = alias {
        check_alias(alias, out);
    }
}

fn check_records(records: &Prop, rtype: Option<&str>, out: &mut Vec<CheckFailure>) {
    let items: Vec<Option<&Value>> = match records {
        Prop::Value(Value::Array(items)) => items.iter().map(Some).collect(),
        Prop::List(items) => items.iter().map(Prop::as_value).collect(),
        Prop::Value(v) => return out.push(CheckFailure::new("records", Some(v), "be a list of values")),
        _ => return,
    };
    if items.is_empty() {
        return out.push(CheckFailure::new("records", Some(&shown(records)), "hold at least one value"));
    }
    if rtype == Some("CNAME") && items.len() > 1 {
        return out.push(CheckFailure::new("records", Some(&shown(records)), "hold exactly one value for a CNAME: the domain name it stands for"));
    }
    let Some(rtype) = rtype else { return };
    for v in items.into_iter().flatten() {
        let problem = match v.as_str() {
            Some(s) => value_problem(rtype, s),
            None => Some("be strings".to_owned()),
        };
        if let Some(expected) = problem {
            out.push(CheckFailure::new("records", Some(v), expected));
            return;
        }
    }
}

/// What is wrong with `value` as a value of a `rtype` record, if anything: the checks
/// catch the common mistakes (a name where an address belongs, a TXT value without its
/// quotes), Route 53 the rest.
fn value_problem(rtype: &str, value: &str) -> Option<String> {
    let words: Vec<&str> = value.split_whitespace().collect();
    let number = |w: &&str| w.parse::<u16>().is_ok();
    let ok = match rtype {
        "A" => value.parse::<Ipv4Addr>().is_ok(),
        "AAAA" => value.parse::<Ipv6Addr>().is_ok(),
        "CNAME" | "NS" | "PTR" => dns_name_problem(value, false).is_none(),
        "TXT" => value.len() >= 2 && value.starts_with('"') && value.ends_with('"'),
        "MX" => words.len() == 2 && number(&words[0]),
        "SRV" => words.len() == 4 && words[..3].iter().all(number),
        "CAA" => words.len() >= 3 && words[0].parse::<u8>().is_ok() && value.ends_with('"'),
        _ => true,
    };
    (!ok).then(|| match rtype {
        "A" => "be IPv4 addresses, such as 192.0.2.10, for an A record".to_owned(),
        "AAAA" => "be IPv6 addresses, such as 2001:db8::10, for an AAAA record".to_owned(),
        "TXT" => "be enclosed in double quotes, as Route 53 requires of TXT values: \"\\\"v=spf1 -all\\\"\"".to_owned(),
        "MX" => "be \"<priority> <mail server>\", such as \"10 mail.example.com\", for an MX record".to_owned(),
        "SRV" => "be \"<priority> <weight> <port> <target>\", such as \"10 5 5060 sip.example.com\", for an SRV record".to_owned(),
        "CAA" => "be \"<flags> <tag> \\\"<value>\\\"\", such as \"0 issue \\\"amazon.com\\\"\", for a CAA record".to_owned(),
        other => format!("be domain names, such as shop.example.com, for a {other} record"),
    })
}

fn check_alias(alias: &Prop, out: &mut Vec<CheckFailure>) {
    let shown = shown(alias);
    let fields: Vec<(&str, Option<&Value>)> = match alias {
        Prop::Value(Value::Object(map)) => map.iter().map(|(k, v)| (k.as_str(), Some(v))).collect(),
        Prop::Object(fields) => fields.iter().map(|(k, p)| (k.as_str(), p.as_value())).collect(),
        _ => return out.push(CheckFailure::new("alias", Some(&shown), "be an alias set with .alias(dns_name, zone_id)")),
    };
    let mut fail = |expected: &str| out.push(CheckFailure::new("alias", Some(&shown), expected));
    if let Some((extra, _)) = fields.iter().find(|(k, _)| !["dns_name", "zone_id", "evaluate_target_health"].contains(k)) {
        return fail(&format!("have only the fields dns_name, zone_id and evaluate_target_health (not {extra})"));
    }
    let field = |key: &str| fields.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    match field("dns_name") {
        None => fail("have a dns_name: set it with .alias(dns_name, zone_id)"),
        Some(Some(v)) if v.as_str().is_none_or(|s| dns_name_problem(s, false).is_some()) => {
            fail("have a domain name as its dns_name, such as a load balancer's dns_name()")
        }
        _ => {}
    }
    match field("zone_id") {
        None => fail("have a zone_id: set it with .alias(dns_name, zone_id)"),
        Some(Some(v)) if !v.as_str().is_some_and(is_zone_id) => {
            fail("have the target's hosted zone id as its zone_id, such as a load balancer's zone_id() (Z35SXDOTRQ7X7K)")
        }
        _ => {}
    }
    if field("evaluate_target_health").flatten().is_some_and(|v| !v.is_boolean()) {
        fail("have true or false as its evaluate_target_health");
    }
}

/// The form in which equal values of input `name` are equal: names canonical, zone ids
/// bare, the records a set (in any order), the alias normal.
fn normal(name: &str, v: Option<&Value>) -> Option<Value> {
    match name {
        "name" => normal_name(v),
        "zone_id" => v.map(|v| v.as_str().map_or_else(|| v.clone(), |s| Value::from(bare_zone_id(s)))),
        "records" => match v {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) => {
                let mut items = items.clone();
                items.sort_by_cached_key(Value::to_string);
                (!items.is_empty()).then_some(Value::Array(items))
            }
            Some(other) => Some(other.clone()),
        },
        "alias" => v.map(|v| match serde_json::from_value::<Alias>(v.clone()) {
            Ok(a) => serde_json::to_value(a.normal()).unwrap_or_else(|_| v.clone()),
            Err(_) => v.clone(),
        }),
        _ => v.cloned(),
    }
}

/// The record set's operations.
#[derive(Debug)]
pub(crate) struct RecordKind;

/// What Route 53 answers for a zone that is gone.
const ZONE_MISSING: &[&str] = &["NoSuchHostedZone"];
/// What it answers for a record set or zone that is gone, on a delete.
const DELETE_MISSING: &[&str] = &["NoSuchHostedZone", "InvalidChangeBatch: but it was not found"];

fn hint(code: &str, key: &Key) -> Option<String> {
    match code {
        "NoSuchHostedZone" => Some(format!(
            "hosted zone {} does not exist (deleted outside Cairn? run refresh); check zone_id, such as a Zone's zone_id()",
            key.zone
        )),
        _ => None,
    }
}

/// The zone, canonical name and type a record set is known by: its id is `zone|name|type`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Key {
    zone: String,
    name: String,
    rtype: String,
}

impl Key {
    fn of(want: &RecordInputs) -> Key {
        Key {
            zone: bare_zone_id(want.zone_id.as_deref().unwrap_or_default()).to_owned(),
            name: canonical_name(want.name.as_deref().unwrap_or_default()),
            rtype: want.record_type.clone().unwrap_or_default(),
        }
    }

    fn parse(id: &str) -> Result<Key, ProviderError> {
        match id.splitn(3, '|').collect::<Vec<_>>()[..] {
            [zone, name, rtype] => Ok(Key { zone: zone.to_owned(), name: name.to_owned(), rtype: rtype.to_owned() }),
            _ => Err(ProviderError::failed(format!(
                "'{id}' is not a record set id (zone|name|type); was the state edited by hand? Run `cairn refresh`"
            ))),
        }
    }

    fn id(&self) -> String {
        format!("{}|{}|{}", self.zone, self.name, self.rtype)
    }

    /// The set, for messages: `A record set www.example.com in hosted zone Z123`.
    fn shown(&self) -> String {
        format!("{} record set {} in hosted zone {}", self.rtype, self.name, self.zone)
    }
}

fn built(e: BuildError) -> ProviderError {
    ProviderError::failed(format!("the record set could not be put in a request: {e}"))
}

/// The record set the inputs describe, as Route 53 takes it.
fn record_set(key: &Key, want: &RecordInputs) -> Result<ResourceRecordSet, ProviderError> {
    let set = ResourceRecordSet::builder().name(fqdn(&key.name)).r#type(RrType::from(key.rtype.as_str()));
    let set = match &want.alias {
        Some(alias) => set.alias_target(
            AliasTarget::builder()
                .dns_name(&alias.dns_name)
                .hosted_zone_id(bare_zone_id(&alias.zone_id))
                .evaluate_target_health(alias.evaluate_target_health)
                .build()
                .map_err(built)?,
        ),
        None => {
            let values = want.records.iter().flatten().map(|v| ResourceRecord::builder().value(v).build()).collect::<Result<Vec<_>, _>>();
            set.set_ttl(want.ttl.map(i64::from)).set_resource_records(Some(values.map_err(built)?))
        }
    };
    set.build().map_err(built)
}

/// A batch of one change of one record set.
fn batch(action: ChangeAction, set: ResourceRecordSet) -> Result<ChangeBatch, ProviderError> {
    let change = Change::builder().action(action).resource_record_set(set).build().map_err(built)?;
    ChangeBatch::builder().changes(change).build().map_err(built)
}

/// The record set `key` names, as Route 53 has it; `None` if it or its zone is gone.
async fn find(aws: &Clients, key: &Key) -> Result<Option<ResourceRecordSet>, ProviderError> {
    // Sets are listed in name and type order from the start given: the first one is it,
    // or it does not exist. A set with a SetIdentifier (weighted, failover, ...) is not
    // one Cairn makes, and Route 53 lets no plain set share its name and type.
    let got = aws
        .route53
        .list_resource_record_sets()
        .hosted_zone_id(&key.zone)
        .start_record_name(fqdn(&key.name))
        .start_record_type(RrType::from(key.rtype.as_str()))
        .max_items(1)
        .send()
        .await;
    let Some(out) = or_missing(got, ZONE_MISSING, &format!("reading the {}", key.shown()), |c| hint(c, key))? else { return Ok(None) };
    Ok(out
        .resource_record_sets()
        .iter()
        .find(|s| canonical_name(s.name()) == key.name && s.r#type().as_str() == key.rtype && s.set_identifier().is_none())
        .cloned())
}

/// The set as the inputs Cairn records, each in the form `recorded` gives it when it is
/// the same value (`www.example.com.` for `www.example.com`, the records in their order).
fn observe(key: &Key, set: &ResourceRecordSet, recorded: &Props) -> Observed {
    let found = RecordInputs {
        zone_id: Some(key.zone.clone()),
        name: Some(key.name.clone()),
        record_type: Some(key.rtype.clone()),
        ttl: set.ttl().and_then(|t| u32::try_from(t).ok()),
        records: (!set.resource_records().is_empty()).then(|| set.resource_records().iter().map(|r| r.value().to_owned()).collect()),
        alias: set.alias_target().map(|a| Alias {
            dns_name: canonical_name(a.dns_name()),
            zone_id: a.hosted_zone_id().to_owned(),
            evaluate_target_health: a.evaluate_target_health(),
        }),
    };
    let mut inputs = found.to_props();
    for (k, v) in recorded.iter() {
        if inputs.get(k).is_some_and(|now| normal(k, Some(now)) == normal(k, Some(v))) {
            inputs.insert(k, v.clone());
        }
    }
    Observed::new(key.id(), inputs, [("fqdn", Value::from(key.name.as_str()))])
}

/// Whether `set` holds what `want` declares.
fn same(key: &Key, set: &ResourceRecordSet, want: &Props) -> bool {
    let found = observe(key, set, &Props::new()).inputs;
    ["ttl", "records", "alias"].iter().all(|k| normal(k, found.get(k)) == normal(k, want.get(k)))
}

impl RecordKind {
    /// A create that found the set already there: adopted if it holds the declared
    /// values, refused otherwise.
    fn adopt(&self, key: &Key, set: &ResourceRecordSet, inputs: &Props) -> Result<Observed, ProviderError> {
        if same(key, set, inputs) {
            return Ok(observe(key, set, inputs));
        }
        let found = observe(key, set, &Props::new()).inputs;
        let values: Vec<String> = ["ttl", "records", "alias"].iter().filter_map(|k| Some(format!("{k} = {}", found.get(k)?))).collect();
        Err(ProviderError::failed(format!(
            "the {} already exists with other values ({}); Cairn does not overwrite a record set it did not create: delete it, \
             or declare its ttl, records and alias as they are to adopt it, or choose another name",
            key.shown(),
            values.join(", ")
        )))
    }
}

#[async_trait]
impl Kind for RecordKind {
    fn diff(&self, req: &DiffRequest<'_>) -> DiffResult {
        normalized_diff(req, normal)
    }

    async fn create(&self, aws: &Clients, urn: &Urn, inputs: &Props) -> Result<Observed, ProviderError> {
        let want = RecordInputs::from_props(inputs)?;
        let key = Key::of(&want);
        // CREATE refuses an existing set on AWS; looking first also covers endpoints that
        // would add a second one.
        if let Some(existing) = find(aws, &key).await? {
            return self.adopt(&key, &existing, inputs);
        }
        let action = format!("creating the {}", key.shown());
        let batch = batch(ChangeAction::Create, record_set(&key, &want)?)?;
        match aws.once.route53.change_resource_record_sets().hosted_zone_id(&key.zone).change_batch(batch).send().await {
            Ok(_) => {}
            Err(e) if missing(&e, &["InvalidChangeBatch: already exists"]) => match find(aws, &key).await? {
                Some(existing) => return self.adopt(&key, &existing, inputs),
                None => return Err(aws_error(&action, e, |c| hint(c, &key))),
            },
            Err(e) => return Err(aws_error(&action, e, |c| hint(c, &key))),
        }
        self.read_created(aws, urn, &key.id(), inputs).await
    }

    async fn read(&self, aws: &Clients, _urn: &Urn, id: &str, recorded: &Props) -> Result<Option<Observed>, ProviderError> {
        let key = Key::parse(id)?;
        Ok(find(aws, &key).await?.map(|set| observe(&key, &set, recorded)))
    }

    async fn update(&self, aws: &Clients, urn: &Urn, id: &str, _old: &Props, new: &Props) -> Result<Observed, ProviderError> {
        let want = RecordInputs::from_props(new)?;
        let key = Key::parse(id)?;
        let batch = batch(ChangeAction::Upsert, record_set(&key, &want)?)?;
        aws.route53
            .change_resource_record_sets()
            .hosted_zone_id(&key.zone)
            .change_batch(batch)
            .send()
            .await
            .map_err(|e| aws_error(&format!("changing the {}", key.shown()), e, |c| hint(c, &key)))?;
        self.read_updated(aws, urn, id, new).await
    }

    async fn delete(&self, aws: &Clients, _urn: &Urn, id: &str) -> Result<(), ProviderError> {
        let key = Key::parse(id)?;
        // A DELETE must name the set's current values exactly: read them first.
        let Some(current) = find(aws, &key).await? else { return Ok(()) };
        let batch = batch(ChangeAction::Delete, current)?;
        let deleted = aws.route53.change_resource_record_sets().hosted_zone_id(&key.zone).change_batch(batch).send().await;
        or_missing(deleted, DELETE_MISSING, &format!("deleting the {}", key.shown()), no_hint)?;
        Ok(())
    }

    async fn lookup(&self, aws: &Clients, urn: &Urn, created_with: &Props) -> Result<Vec<Observed>, ProviderError> {
        let want = RecordInputs::from_props(created_with).unwrap_or_default();
        if want.zone_id.is_none() || want.name.is_none() || want.record_type.is_none() {
            return Ok(Vec::new());
        }
        Ok(self.read(aws, urn, &Key::of(&want).id(), created_with).await?.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_sdk::{Output, Resource};
    use serde_json::json;

    #[test]
    fn an_alias_of_outputs_keeps_its_references() {
        let lb = Urn::new("dev", "aws:elbv2:LoadBalancer", "web");
        let record = Record::new("www").alias(Output::<String>::new(lb.clone(), "dns_name"), Output::<String>::new(lb.clone(), "zone_id"));
        let Some(Prop::Object(fields)) = record.decl().get("alias") else { panic!("{:?}", record.decl().get("alias")) };
        let names: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["dns_name", "evaluate_target_health", "zone_id"]);
        let mut refs = Vec::new();
        record.decl().get("alias").unwrap().for_each_ref(&mut |r| refs.push(r.property.to_string()));
        assert_eq!(refs, ["dns_name", "zone_id"]);
    }

    #[test]
    fn a_literal_alias_is_the_typed_alias() {
        let record = Record::new("www").evaluate_target_health(true).alias("My-LB-1.us-east-1.elb.amazonaws.com", "Z35SXDOTRQ7X7K");
        let value = record.decl().value("alias").cloned().unwrap();
        let alias: Alias = serde_json::from_value(value.clone()).unwrap();
        assert_eq!(serde_json::to_value(&alias).unwrap(), value);
        assert!(alias.evaluate_target_health, "kept from before alias()");
        assert_eq!(alias.normal().dns_name, "my-lb-1.us-east-1.elb.amazonaws.com");
    }

    #[test]
    fn equal_names_records_and_aliases_are_no_change() {
        assert_eq!(normal("name", Some(&json!("WWW.example.com."))), normal("name", Some(&json!("www.example.com"))));
        assert_eq!(normal("records", Some(&json!(["b", "a"]))), normal("records", Some(&json!(["a", "b"]))));
        assert_eq!(normal("records", Some(&json!([]))), normal("records", None));
        assert_ne!(normal("records", Some(&json!(["a"]))), normal("records", Some(&json!(["a", "a"]))));
        let a = json!({"dns_name": "lb.example.com.", "zone_id": "/hostedzone/Z1", "evaluate_target_health": false});
        let b = json!({"dns_name": "LB.example.com", "zone_id": "Z1", "evaluate_target_health": false});
        assert_eq!(normal("alias", Some(&a)), normal("alias", Some(&b)));
    }

    #[test]
    fn ids_round_trip() {
        let key = Key { zone: "Z1".into(), name: "*.example.com".into(), rtype: "A".into() };
        assert_eq!(Key::parse(&key.id()).unwrap(), key);
        assert!(Key::parse("Z1|x").is_err());
    }
}
