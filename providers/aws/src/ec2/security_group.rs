//! `aws:ec2:SecurityGroup`: a stateful firewall for instances and other interfaces.
//!
//! The name, the description and the VPC force a replacement; rules and tags change in
//! place. Rules are sets: Cairn reads the group's rules, authorizes the declared ones it
//! lacks and revokes the ones not declared, so a reordering changes nothing and a change
//! touches only the rules that differ.
//!
//! Egress is managed exactly as declared, as Terraform's `aws_security_group` does: AWS
//! gives every new group an allow-all egress rule, and Cairn revokes it unless the
//! program declares it ([`SecurityGroup::allow_all_egress`]).

use async_trait::async_trait;
use aws_sdk_ec2::types::{IpPermission, IpRange, Ipv6Range, PrefixListId, ResourceType as Ec2Type, UserIdGroupPair};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use cairn_sdk::provider::{DiffRequest, DiffResult};
use cairn_sdk::schema::Default;
use cairn_sdk::{CheckFailure, Decl, Input, Observed, Prop, Props, ProviderError, Tags, Urn};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    canonical, declared_items, is_ipv4_network, list_of_objects, observed_tags, retag, set_diff, set_items, tag_spec, tagged_with, urn_filter,
};
use crate::error::{aws_error, code, no_hint, or_missing};
use crate::kind::{finish, read_each, Clients, Kind};

cairn_sdk::resource! {
    /// A security group: `SecurityGroup::new("web").vpc_id(vpc.id()).ingress(Rule::tcp(443).from_cidr("0.0.0.0/0"))`.
    /// Its logical name is its `Name` tag.
    ///
    /// Rules are sets, changed in place. **Egress is exactly what you declare**: a group
    /// with no egress rule allows no outbound traffic, because Cairn revokes the allow-all
    /// egress rule AWS adds to every new group. Declare it back with
    /// [`allow_all_egress`](Self::allow_all_egress), or declare the egress you need.
    ///
    /// A rule that names another group (`from_group(db.id())`) makes this group depend on
    /// that one, so two groups cannot name each other; use a rule on one side only, or a
    /// `from_self()` rule on a group both share.
    pub struct SecurityGroup {
        token: "aws:ec2:SecurityGroup",
        schema: SECURITY_GROUP,
        inputs: SecurityGroupInputs,
        /// A declared security group's outputs.
        handle: SecurityGroupRef,
        validate: validate,
    }
    inputs {
        /// The group name, unique in its VPC; by default `<logical name>-<suffix>`, new on
        /// each replacement (forces replacement).
        name: String = auto_name().forces_replacement(),
        /// What the group is for, up to 255 characters; default "Managed by Cairn" (forces
        /// replacement: AWS cannot change a group's description).
        description: String = default(Default::Str("Managed by Cairn")).forces_replacement(),
        /// The VPC; the region's default VPC when unset (forces replacement).
        vpc_id: String = computed().forces_replacement().identity(),
        /// Tags of your own (Cairn adds `Name`, `cairn:stack` and `cairn:urn`).
        tags: Tags,
    }
    by_hand {
        /// Inbound rules, a set changed in place: see [`SecurityGroup::ingress`].
        ingress: Vec<RuleEntry>,
        /// Outbound rules, a set changed in place: see [`SecurityGroup::egress`].
        egress: Vec<RuleEntry>,
    }
    outputs {
        /// The group id, `sg-...`, for instances, launch templates and other groups' rules.
        id: String,
    }
    echoes {
        /// Its name.
        name: String,
        /// Its VPC.
        vpc_id: String,
    }
}

/// The properties diffed as sets.
const SETS: &[&str] = &["ingress", "egress"];

fn validate(decl: &Decl, out: &mut Vec<CheckFailure>) {
    if let Some(v) = decl.value("name") {
        let ok = v.as_str().is_some_and(|s| {
            (1..=255).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic() || b == b' ') && !s.to_ascii_lowercase().starts_with("sg-")
        });
        if !ok {
            out.push(CheckFailure::new("name", Some(v), "be 1 to 255 ASCII characters not starting with sg-, or be left unset for a generated name"));
        }
    }
    if let Some(v) = decl.value("description") {
        let allowed = |c: char| c.is_ascii_alphanumeric() || " ._-:/()#,@[]+=&;{}!$*".contains(c);
        if !v.as_str().is_some_and(|s| s.len() <= 255 && s.chars().all(allowed)) {
            out.push(CheckFailure::new("description", Some(v), "be at most 255 characters: letters, digits, spaces and ._-:/()#,@[]+=&;{}!$*"));
        }
    }
    for (key, peer) in [("ingress", "source"), ("egress", "destination")] {
        match list_of_objects(decl, key, "rules (build them with Rule::tcp(443).from_cidr(..) and the like)") {
            Ok(rules) => rules.iter().for_each(|r| check_rule(key, peer, r, out)),
            Err(failure) => out.push(failure),
        }
    }
}

const PEERS: [&str; 3] = ["cidr", "group_id", "self"];

fn check_rule(key: &str, peer: &str, rule: &super::Item<'_>, out: &mut Vec<CheckFailure>) {
    let mut fail = |expected: String| out.push(CheckFailure::new(key, Some(&rule.shown), expected));
    if let Some(extra) = rule.keys().find(|k| !["protocol", "from_port", "to_port"].contains(k) && !PEERS.contains(k)) {
        fail(format!("have only the fields protocol, from_port, to_port and one of cidr, group_id or self (not {extra})"));
    }
    let peers: Vec<&str> = PEERS.iter().copied().filter(|k| rule.has(k)).collect();
    if peers.len() != 1 {
        let found = if peers.is_empty() { "none".to_owned() } else { peers.join(" and ") };
        fail(format!("have exactly one {peer}: cidr, group_id or self (found {found})"));
    }
    if let Some(v) = rule.value("cidr") {
        if !v.as_str().is_some_and(is_ipv4_network) {
            fail(format!("have an IPv4 network in CIDR form without host bits as its {peer}, such as 10.0.0.0/16 or 0.0.0.0/0"));
        }
    }
    if let Some(v) = rule.value("group_id") {
        if !v.as_str().is_some_and(|s| s.starts_with("sg-")) {
            fail("have a security group id (sg-...) as its group_id, such as another group's .id()".to_owned());
        }
    }
    if let Some(v) = rule.value("self") {
        if v != &Value::Bool(true) {
            fail("have self = true, or no self field".to_owned());
        }
    }
    // A field that refers to another resource is checked by AWS, once known.
    let known = |k: &str| !rule.has(k) || rule.value(k).is_some();
    let port = |k: &str| rule.value(k).and_then(Value::as_i64);
    let ports_in = |range: std::ops::RangeInclusive<i64>, ordered: bool| match (port("from_port"), port("to_port")) {
        (Some(f), Some(t)) => range.contains(&f) && range.contains(&t) && (!ordered || f <= t),
        _ => false,
    };
    let ports_known = known("from_port") && known("to_port");
    match rule.value("protocol").and_then(Value::as_str) {
        Some("tcp" | "udp") if ports_known && !ports_in(0..=65535, true) => {
            fail("have ports from 0 to 65535 with from_port no greater than to_port".to_owned())
        }
        Some("icmp") if ports_known && !ports_in(-1..=255, false) => {
            fail("have an ICMP type (from_port) and code (to_port), each from 0 to 255 or -1 for all".to_owned())
        }
        Some("-1") if rule.has("from_port") || rule.has("to_port") => {
            fail("have no from_port or to_port with protocol -1 (all traffic covers every port)".to_owned())
        }
        Some("tcp" | "udp" | "icmp" | "-1") => {}
        _ if !known("protocol") => {}
        _ => fail("have protocol \"tcp\", \"udp\", \"icmp\" or \"-1\" (all traffic)".to_owned()),
    }
}

impl SecurityGroup {
    /// Adds an inbound rule: `Rule::tcp(443).from_cidr("0.0.0.0/0")`,
    /// `Rule::tcp(5432).from_group(web.id())`. Changed in place; order does not matter.
    #[must_use]
    pub fn ingress(self, rule: Rule) -> Self {
        self.ingress_rules([rule])
    }

    /// Adds inbound rules (see [`ingress`](Self::ingress)).
    #[must_use]
    pub fn ingress_rules(mut self, rules: impl IntoIterator<Item = Rule>) -> Self {
        add_rules(&mut self.0, "ingress", rules);
        self
    }

    /// Adds an outbound rule: `Rule::tcp(443).to_cidr("0.0.0.0/0")`. Egress is exactly
    /// what is declared: with no egress rule, the group allows no outbound traffic.
    #[must_use]
    pub fn egress(self, rule: Rule) -> Self {
        self.egress_rules([rule])
    }

    /// Adds outbound rules (see [`egress`](Self::egress)).
    #[must_use]
    pub fn egress_rules(mut self, rules: impl IntoIterator<Item = Rule>) -> Self {
        add_rules(&mut self.0, "egress", rules);
        self
    }

    /// Allows all outbound traffic: the rule AWS gives new groups, which Cairn otherwise
    /// revokes. Same as `.egress(Rule::all_traffic().to_cidr("0.0.0.0/0"))`.
    #[must_use]
    pub fn allow_all_egress(self) -> Self {
        self.egress(Rule::all_traffic().to_cidr("0.0.0.0/0"))
    }
}

fn add_rules(decl: &mut Decl, key: &str, rules: impl IntoIterator<Item = Rule>) {
    let before = declared_items(decl, key);
    let added: Vec<Prop> = rules.into_iter().map(Rule::into_prop).collect();
    if before.is_empty() && added.is_empty() {
        return;
    }
    set_items(decl, key, before.into_iter().chain(added).collect());
}

/// The protocol and ports of a rule, waiting for its peer: finish it with
/// [`from_cidr`](Self::from_cidr), [`from_group`](Self::from_group) or
/// [`from_self`](Self::from_self) (or their `to_` twins, which read better in egress).
#[derive(Debug, Clone, Copy)]
pub struct RulePorts {
    protocol: &'static str,
    /// `None` for all traffic.
    ports: Option<(i32, i32)>,
}

/// One security group rule: a protocol, ports and exactly one peer (an IPv4 CIDR,
/// another group, or the group itself).
///
/// ```
/// use cairn_aws::ec2::Rule;
/// let https = Rule::tcp(443).from_cidr("0.0.0.0/0");
/// let ephemeral = Rule::tcp_range(1024, 65535).from_cidr("10.0.0.0/16");
/// let peers = Rule::all_traffic().from_self();
/// let out = Rule::all_traffic().to_cidr("0.0.0.0/0");
/// ```
#[derive(Debug, Clone)]
pub struct Rule {
    ports: RulePorts,
    peer: Peer,
}

#[derive(Debug, Clone)]
enum Peer {
    Cidr(Input<String>),
    Group(Input<String>),
    Own,
}

impl Rule {
    /// TCP on one port.
    pub fn tcp(port: u16) -> RulePorts {
        Self::tcp_range(port, port)
    }

    /// TCP on ports `from` to `to`, inclusive (`from` must not exceed `to`).
    pub fn tcp_range(from: u16, to: u16) -> RulePorts {
        RulePorts { protocol: "tcp", ports: Some((i32::from(from), i32::from(to))) }
    }

    /// UDP on one port.
    pub fn udp(port: u16) -> RulePorts {
        Self::udp_range(port, port)
    }

    /// UDP on ports `from` to `to`, inclusive (`from` must not exceed `to`).
    pub fn udp_range(from: u16, to: u16) -> RulePorts {
        RulePorts { protocol: "udp", ports: Some((i32::from(from), i32::from(to))) }
    }

    /// ICMP messages of type `icmp_type` and code `code`, each 0 to 255 or -1 for all
    /// (echo request is type 8, code -1).
    pub fn icmp(icmp_type: i16, code: i16) -> RulePorts {
        RulePorts { protocol: "icmp", ports: Some((i32::from(icmp_type), i32::from(code))) }
    }

    /// All ICMP messages.
    pub fn icmp_all() -> RulePorts {
        Self::icmp(-1, -1)
    }

    /// All traffic: every protocol and port (protocol `-1`).
    pub fn all_traffic() -> RulePorts {
        RulePorts { protocol: "-1", ports: None }
    }

    /// The rule as the declared value: an object `{protocol, from_port, to_port}` plus
    /// one of `cidr`, `group_id` (perhaps a reference) or `self: true`.
    fn into_prop(self) -> Prop {
        let mut fields = vec![("protocol".to_owned(), Prop::Value(Value::from(self.ports.protocol)))];
        if let Some((from, to)) = self.ports.ports {
            fields.push(("from_port".to_owned(), Prop::Value(Value::from(from))));
            fields.push(("to_port".to_owned(), Prop::Value(Value::from(to))));
        }
        fields.push(match self.peer {
            Peer::Cidr(cidr) => ("cidr".to_owned(), cidr.into_prop()),
            Peer::Group(id) => ("group_id".to_owned(), id.into_prop()),
            Peer::Own => ("self".to_owned(), Prop::Value(Value::Bool(true))),
        });
        Prop::object(fields)
    }
}

impl RulePorts {
    /// Traffic from (ingress) an IPv4 network, such as `0.0.0.0/0` or `vpc.cidr_block()`.
    pub fn from_cidr(self, cidr: impl Into<Input<String>>) -> Rule {
        Rule { ports: self, peer: Peer::Cidr(cidr.into()) }
    }

    /// Traffic to (egress) an IPv4 network; the same as [`from_cidr`](Self::from_cidr).
    pub fn to_cidr(self, cidr: impl Into<Input<String>>) -> Rule {
        self.from_cidr(cidr)
    }

    /// Traffic from (ingress) members of another security group, such as `web.id()`.
    pub fn from_group(self, group_id: impl Into<Input<String>>) -> Rule {
        Rule { ports: self, peer: Peer::Group(group_id.into()) }
    }

    /// Traffic to (egress) members of another security group; the same as
    /// [`from_group`](Self::from_group).
    pub fn to_group(self, group_id: impl Into<Input<String>>) -> Rule {
        self.from_group(group_id)
    }

    /// Traffic from (ingress) members of this same group.
    pub fn from_self(self) -> Rule {
        Rule { ports: self, peer: Peer::Own }
    }

    /// Traffic to (egress) members of this same group.
    pub fn to_self(self) -> Rule {
        self.from_self()
    }
}

/// One rule as the `ingress` and `egress` inputs hold it: a protocol, ports and exactly
/// one peer. Cairn declares IPv4 CIDR, group and `self` peers; IPv6 ranges and prefix
/// lists are read, so that rules added outside Cairn show as drift.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleEntry {
    /// `tcp`, `udp`, `icmp` or `-1` (all traffic).
    pub protocol: String,
    /// The first port (ICMP: the type); none for all traffic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_port: Option<i32>,
    /// The last port (ICMP: the code); none for all traffic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_port: Option<i32>,
    /// An IPv4 network.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    /// An IPv6 network (read only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cidr_ipv6: Option<String>,
    /// A managed prefix list (read only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix_list_id: Option<String>,
    /// Another security group, `sg-...`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// The group itself: `true` (`self` in the JSON).
    #[serde(rename = "self", skip_serializing_if = "Option::is_none")]
    pub own: Option<bool>,
}

/// The security group's operations.
#[derive(Debug)]
pub(crate) struct SecurityGroupKind;

const MISSING: &[&str] = &["InvalidGroup.NotFound", "InvalidGroupId.NotFound"];

fn hint(code: &str, want: &SecurityGroupInputs) -> Option<String> {
    match code {
        "InvalidGroup.Duplicate" => Some(format!(
            "a security group named {} already exists in the VPC; choose another name, or leave the name unset and Cairn will pick a unique one",
            want.name.as_deref().unwrap_or_default()
        )),
        "InvalidVpcID.NotFound" => Some("its VPC does not exist (was it deleted outside Cairn? run refresh)".to_owned()),
        "VPCIdNotSpecified" => Some("the region has no default VPC; set vpc_id".to_owned()),
        "InvalidGroup.NotFound" | "InvalidGroupId.NotFound" => Some(
            "a rule refers to a security group that does not exist or is in another VPC; check the group ids in its rules".to_owned(),
        ),
        "RulesPerSecurityGroupLimitExceeded" => Some(
            "it has more rules than AWS allows (60 inbound and 60 outbound by default, each CIDR and group counting as one); merge ranges, or ask AWS to raise the quota"
                .to_owned(),
        ),
        "SecurityGroupLimitExceeded" => {
            Some("the account's security group quota for this region is used up; delete unused groups or ask AWS for more".to_owned())
        }
        "DependencyViolation" => Some(
            "the group is still used by instances, network interfaces or other groups' rules; Cairn removes what it manages first, so something outside this stack uses it: remove that, then run again"
                .to_owned(),
        ),
        _ => None,
    }
}

/// A rule as the API's permission. `own` is the group's id, for `self` rules.
fn permission(rule: &RuleEntry, own: &str) -> IpPermission {
    let p = IpPermission::builder().ip_protocol(&rule.protocol).set_from_port(rule.from_port).set_to_port(rule.to_port);
    let p = if let Some(cidr) = &rule.cidr {
        p.ip_ranges(IpRange::builder().cidr_ip(cidr).build())
    } else if let Some(cidr) = &rule.cidr_ipv6 {
        p.ipv6_ranges(Ipv6Range::builder().cidr_ipv6(cidr).build())
    } else if let Some(list) = &rule.prefix_list_id {
        p.prefix_list_ids(PrefixListId::builder().prefix_list_id(list).build())
    } else {
        p.user_id_group_pairs(UserIdGroupPair::builder().group_id(rule.group_id.as_deref().unwrap_or(own)).build())
    };
    p.build()
}

/// The API's permissions as rules with one peer each, in canonical order. AWS merges
/// rules that share protocol and ports into one permission with several peers; IPv6
/// ranges and prefix lists (which Cairn does not declare) are read too, so that rules
/// added outside Cairn show as drift and are revoked.
fn rules(perms: &[IpPermission], own: &str) -> Vec<RuleEntry> {
    let mut out = Vec::new();
    for perm in perms {
        let protocol = perm.ip_protocol().unwrap_or("-1");
        let ports = perm.from_port().zip(perm.to_port()).filter(|_| protocol != "-1");
        let base = RuleEntry { protocol: protocol.to_owned(), from_port: ports.map(|p| p.0), to_port: ports.map(|p| p.1), ..RuleEntry::default() };
        out.extend(perm.ip_ranges().iter().filter_map(|r| r.cidr_ip()).map(|c| RuleEntry { cidr: Some(c.to_owned()), ..base.clone() }));
        out.extend(perm.ipv6_ranges().iter().filter_map(|r| r.cidr_ipv6()).map(|c| RuleEntry { cidr_ipv6: Some(c.to_owned()), ..base.clone() }));
        let lists = perm.prefix_list_ids().iter().filter_map(|p| p.prefix_list_id());
        out.extend(lists.map(|p| RuleEntry { prefix_list_id: Some(p.to_owned()), ..base.clone() }));
        out.extend(perm.user_id_group_pairs().iter().filter_map(|g| g.group_id()).map(|g| {
            if g == own {
                RuleEntry { own: Some(true), ..base.clone() }
            } else {
                RuleEntry { group_id: Some(g.to_owned()), ..base.clone() }
            }
        }));
    }
    canonical(Some(&out))
}

/// Whether AWS took away every rule a sync of the rules asked it to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
enum Revoked {
    All,
    /// A revoke answered that some rules were not there (`UnknownIpPermissions`, or
    /// `Return` false). In a VPC, AWS answers so for a rule it does not see yet, such as
    /// the one it gave the group a moment before: that rule may be there still.
    NotAll,
}

/// Brings the group's rules from `current` (read from AWS) to `desired`: authorizes
/// what is missing first, then revokes what is not declared, so traffic that stays
/// allowed is never interrupted.
async fn sync_rules(aws: &Clients, id: &str, current: &SecurityGroupInputs, desired: &SecurityGroupInputs) -> Result<Revoked, ProviderError> {
    let mut revoked = Revoked::All;
    for (key, have, want) in [("ingress", &current.ingress, &desired.ingress), ("egress", &current.egress, &desired.egress)] {
        let (have, want) = (canonical(have.as_deref()), canonical(want.as_deref()));
        let add: Vec<IpPermission> = want.iter().filter(|r| !have.contains(r)).map(|r| permission(r, id)).collect();
        let remove: Vec<IpPermission> = have.iter().filter(|r| !want.contains(r)).map(|r| permission(r, id)).collect();
        let ingress = key == "ingress";
        let hints = |c: &str| hint(c, desired);
        let action = format!("adding {key} rules");
        match add.len() {
            0 => {}
            1 => {
                authorize(aws, id, ingress, add, &action, hints).await?;
            }
            _ => {
                if !authorize(aws, id, ingress, add.clone(), &action, hints).await? {
                    // EC2 adds a batch whole or not at all, and refuses it whole if the
                    // group has one of its rules already: the SDK sent it again after its
                    // answer was lost, or a read lagging behind an earlier add left the
                    // rule out of `have`. One at a time, a rule the group has counts as
                    // added.
                    for rule in add {
                        authorize(aws, id, ingress, vec![rule], &action, hints).await?;
                    }
                }
            }
        }
        if !remove.is_empty() {
            let action = format!("removing {key} rules");
            let all = if ingress {
                let req = aws.ec2.revoke_security_group_ingress().group_id(id).set_ip_permissions(Some(remove));
                let out = req.send().await.map_err(|e| aws_error(&action, e, hints))?;
                out.r#return() != Some(false) && out.unknown_ip_permissions().is_empty()
            } else {
                let req = aws.ec2.revoke_security_group_egress().group_id(id).set_ip_permissions(Some(remove));
                let out = req.send().await.map_err(|e| aws_error(&action, e, hints))?;
                out.r#return() != Some(false) && out.unknown_ip_permissions().is_empty()
            };
            if !all {
                revoked = Revoked::NotAll;
            }
        }
    }
    Ok(revoked)
}

/// Adds `rules` to the group's ingress (or egress) in one call. `Ok(false)`: EC2 refused
/// them all as the group has one of them already (`InvalidPermission.Duplicate`).
async fn authorize(
    aws: &Clients,
    id: &str,
    ingress: bool,
    rules: Vec<IpPermission>,
    action: &str,
    hints: impl Fn(&str) -> Option<String>,
) -> Result<bool, ProviderError> {
    fn added<T, E>(answer: Result<T, SdkError<E, HttpResponse>>, action: &str, hints: impl Fn(&str) -> Option<String>) -> Result<bool, ProviderError>
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        match answer {
            Ok(_) => Ok(true),
            Err(e) if code(&e) == Some("InvalidPermission.Duplicate") => Ok(false),
            Err(e) => Err(aws_error(action, e, hints)),
        }
    }
    if ingress {
        added(aws.ec2.authorize_security_group_ingress().group_id(id).set_ip_permissions(Some(rules)).send().await, action, hints)
    } else {
        added(aws.ec2.authorize_security_group_egress().group_id(id).set_ip_permissions(Some(rules)).send().await, action, hints)
    }
}

#[async_trait]
impl Kind for SecurityGroupKind {
    fn diff(&self, req: &DiffRequest<'_>) -> DiffResult {
        set_diff(req, SETS)
    }

    async fn create(&self, aws: &Clients, urn: &Urn, inputs: &Props) -> Result<Observed, ProviderError> {
        let want = SecurityGroupInputs::from_props(inputs)?;
        let out = aws
            .once
            .ec2
            .create_security_group()
            .group_name(want.name.as_deref().unwrap_or_default())
            .description(want.description.as_deref().unwrap_or_default())
            .set_vpc_id(want.vpc_id.clone())
            .tag_specifications(tag_spec(Ec2Type::SecurityGroup, urn, want.tags.as_ref()))
            .send()
            .await
            .map_err(|e| aws_error("creating the security group", e, |c| hint(c, &want)))?;
        let id = out.group_id().unwrap_or_default().to_owned();
        finish(&id, async {
            // From the rule AWS gives every new group, all traffic out to 0.0.0.0/0, to the
            // declared ones, without reading it first. A VPC with IPv6 also gets one to
            // ::/0: the read shows it, and one more sync takes it away.
            let all_out = RuleEntry { protocol: "-1".to_owned(), cidr: Some("0.0.0.0/0".to_owned()), ..RuleEntry::default() };
            let fresh = SecurityGroupInputs { egress: Some(vec![all_out]), ..SecurityGroupInputs::default() };
            let same = |a: &Option<Vec<RuleEntry>>, b: &Option<Vec<RuleEntry>>| canonical(a.as_deref()) == canonical(b.as_deref());
            // The group is read while the sync runs, not after it: one call's time fewer
            // on the way to whatever references the group. The sync only adds declared
            // rules and takes away the one AWS gives, so if every rule the read found is
            // one of those (whenever it came, before, during or after the sync), the
            // group now has exactly the declared rules.
            let (synced, first) = tokio::join!(sync_rules(aws, &id, &fresh, &want), self.read(aws, urn, &id, inputs));
            // Unless a revoke found no rule to take away: the rule AWS gave may then be
            // there still, and a read that shows it proves nothing.
            let first = if synced? == Revoked::All { first? } else { None };
            if let Some(mut first) = first {
                let got = SecurityGroupInputs::from_props(&first.inputs)?;
                let within = |seen: &Option<Vec<RuleEntry>>, allowed: &[&Option<Vec<RuleEntry>>]| {
                    seen.iter().flatten().all(|rule| allowed.iter().any(|a| a.iter().flatten().any(|r| r == rule)))
                };
                if within(&got.ingress, &[&want.ingress]) && within(&got.egress, &[&want.egress, &fresh.egress]) {
                    let some = |rules: Vec<RuleEntry>| (!rules.is_empty()).then_some(rules);
                    let rules = SecurityGroupInputs { ingress: some(canonical(want.ingress.as_deref())), egress: some(canonical(want.egress.as_deref())), ..got };
                    first.inputs = rules.to_props();
                    return Ok(first);
                }
            }
            // Otherwise (a rule AWS added, such as ::/0 in an IPv6 VPC, or a revoke that
            // found nothing): read it again after the sync and set it right.
            let read = self.read_created(aws, urn, &id, inputs).await?;
            let got = SecurityGroupInputs::from_props(&read.inputs)?;
            if same(&got.ingress, &want.ingress) && same(&got.egress, &want.egress) {
                return Ok(read);
            }
            // A read after a sync is trusted whatever its revokes answered: the group
            // has the rules it shows.
            let _ = sync_rules(aws, &id, &got, &want).await?;
            let read = self.read_created(aws, urn, &id, inputs).await?;
            let got = SecurityGroupInputs::from_props(&read.inputs)?;
            if !same(&got.ingress, &want.ingress) || !same(&got.egress, &want.egress) {
                // Not the declared rules: the step fails with the group kept in state
                // (`finish`), rather than succeed with rules the program did not declare,
                // and the next run reads it and syncs again.
                return Err(ProviderError::failed(format!(
                    "its rules did not come to the declared ones after two syncs: AWS lists ingress {}, egress {}",
                    serde_json::to_string(&canonical(got.ingress.as_deref())).unwrap_or_default(),
                    serde_json::to_string(&canonical(got.egress.as_deref())).unwrap_or_default(),
                )));
            }
            Ok(read)
        })
        .await
    }

    async fn read(&self, aws: &Clients, urn: &Urn, id: &str, _recorded: &Props) -> Result<Option<Observed>, ProviderError> {
        let Some(out) = or_missing(aws.ec2.describe_security_groups().group_ids(id).send().await, MISSING, "reading the security group", no_hint)?
        else {
            return Ok(None);
        };
        let Some(g) = out.security_groups().first() else { return Ok(None) };
        let some = |rules: Vec<RuleEntry>| (!rules.is_empty()).then_some(rules);
        let inputs = SecurityGroupInputs {
            name: Some(g.group_name().unwrap_or_default().to_owned()),
            description: Some(g.description().unwrap_or_default().to_owned()),
            vpc_id: g.vpc_id().map(str::to_owned),
            tags: observed_tags(urn, g.tags()),
            ingress: some(rules(g.ip_permissions(), id)),
            egress: some(rules(g.ip_permissions_egress(), id)),
        };
        // `vpc_id` is also an output, so `vpc_id()` resolves when the program left it to AWS.
        Ok(Some(Observed::new(id, inputs.to_props(), [("id", Value::from(id)), ("vpc_id", Value::from(g.vpc_id().unwrap_or_default()))])))
    }

    async fn update(&self, aws: &Clients, urn: &Urn, id: &str, old: &Props, new: &Props) -> Result<Observed, ProviderError> {
        let (was, want) = (SecurityGroupInputs::from_props(old)?, SecurityGroupInputs::from_props(new)?);
        // Diff against the rules the group has now, not the ones in state: rules changed
        // outside Cairn are set right too, and nothing is authorized twice.
        let current = self.read_updated(aws, urn, id, old).await?;
        // The read at the end records what the group has, whatever the revokes said.
        let _ = sync_rules(aws, id, &SecurityGroupInputs::from_props(&current.inputs)?, &want).await?;
        retag(&aws.ec2, urn, id, was.tags.as_ref(), want.tags.as_ref()).await?;
        self.read_updated(aws, urn, id, new).await
    }

    async fn delete(&self, aws: &Clients, _urn: &Urn, id: &str) -> Result<(), ProviderError> {
        let answer = aws.ec2.delete_security_group().group_id(id).send().await;
        or_missing(answer, MISSING, "deleting the security group", |c| hint(c, &SecurityGroupInputs::default()))?;
        Ok(())
    }

    async fn lookup(&self, aws: &Clients, urn: &Urn, _created_with: &Props) -> Result<Vec<Observed>, ProviderError> {
        let out = aws
            .ec2
            .describe_security_groups()
            .filters(urn_filter(urn))
            .send()
            .await
            .map_err(|e| aws_error("looking up security groups", e, no_hint))?;
        let ids = out.security_groups().iter().filter(|g| tagged_with(g.tags(), urn)).filter_map(|g| g.group_id().map(str::to_owned)).collect();
        read_each(self, aws, urn, ids).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merged_permissions_split_into_one_rule_per_peer() {
        let perm = IpPermission::builder()
            .ip_protocol("tcp")
            .from_port(443)
            .to_port(443)
            .ip_ranges(IpRange::builder().cidr_ip("10.0.0.0/8").build())
            .ip_ranges(IpRange::builder().cidr_ip("0.0.0.0/0").build())
            .user_id_group_pairs(UserIdGroupPair::builder().group_id("sg-own").build())
            .user_id_group_pairs(UserIdGroupPair::builder().group_id("sg-other").build())
            .build();
        let all = IpPermission::builder().ip_protocol("-1").ip_ranges(IpRange::builder().cidr_ip("0.0.0.0/0").build()).build();
        assert_eq!(
            serde_json::to_value(rules(&[perm, all], "sg-own")).unwrap(),
            json!([
                {"protocol": "tcp", "from_port": 443, "to_port": 443, "cidr": "0.0.0.0/0"},
                {"protocol": "-1", "cidr": "0.0.0.0/0"},
                {"protocol": "tcp", "from_port": 443, "to_port": 443, "cidr": "10.0.0.0/8"},
                {"protocol": "tcp", "from_port": 443, "to_port": 443, "group_id": "sg-other"},
                {"protocol": "tcp", "from_port": 443, "to_port": 443, "self": true},
            ])
        );
    }

    #[test]
    fn a_rule_round_trips_through_the_api_form() {
        for rule in [Rule::tcp(22).from_self(), Rule::udp_range(53, 54).from_cidr("10.0.0.0/8"), Rule::all_traffic().to_group("sg-1")] {
            let value = rule.into_prop().as_value().cloned().unwrap();
            let rule: RuleEntry = serde_json::from_value(value.clone()).unwrap();
            assert_eq!(serde_json::to_value(&rule).unwrap(), value, "the typed rule is the declared JSON");
            assert_eq!(rules(&[permission(&rule, "sg-own")], "sg-own"), [rule]);
        }
    }
}
