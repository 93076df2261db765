//! `aws:route53:Zone` and `aws:route53:Record` against the local AWS, every effect
//! checked with the Route 53 API itself.
//!
//! moto 5.2.5 adds a second record set where AWS refuses a CREATE of a name and type that
//! exist (unless the very same change was sent before), so the refusal test checks what
//! Cairn does about it: it looks before it creates.

use std::collections::BTreeMap;

use aws_sdk_route53::types::{Change, ChangeAction, ChangeBatch, ResourceRecord, ResourceRecordSet, RrType, TagResourceType};
use cairn_aws::route53::{Record, Zone};
use cairn_sdk::{Action, Provider as _, Stack, StackState, StepOp, Urn};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

mod common;
use common::drift_of;

const ZONE: &str = "aws:route53:Zone";
const RECORD: &str = "aws:route53:Record";

/// The load balancer an alias points at: a DNS name and the canonical hosted zone of
/// us-east-1's application load balancers, as literals.
const LB_DNS: &str = "shop-lb-1234567890.us-east-1.elb.amazonaws.com";
const LB_ZONE: &str = "Z35SXDOTRQ7X7K";

async fn aws() -> (cairn_aws::Provider, aws_sdk_route53::Client) {
    cairn_testkit::moto().configure_env();
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    (cairn_aws::Provider::new(&config), aws_sdk_route53::Client::new(&config))
}

fn resource<'a>(state: &'a StackState, ty: &str, name: &str) -> &'a cairn_state::ResourceState {
    state.resource(&Urn::new(&state.stack, ty, name)).unwrap_or_else(|| panic!("{name} in state"))
}

fn id_of(state: &StackState, ty: &str, name: &str) -> String {
    resource(state, ty, name).id.clone()
}

fn outputs(state: &StackState, ty: &str, name: &str) -> Value {
    serde_json::to_value(&resource(state, ty, name).outputs).unwrap()
}

/// Whether hosted zone `id` exists, by GetHostedZone.
async fn zone_exists(r53: &aws_sdk_route53::Client, id: &str) -> bool {
    match r53.get_hosted_zone().id(id).send().await {
        Ok(_) => true,
        Err(e) => {
            assert_eq!(e.as_service_error().and_then(|e| e.meta().code()), Some("NoSuchHostedZone"), "{e:?}");
            false
        }
    }
}

async fn zone_tags(r53: &aws_sdk_route53::Client, id: &str) -> BTreeMap<String, String> {
    let out = r53.list_tags_for_resource().resource_type(TagResourceType::Hostedzone).resource_id(id).send().await.unwrap();
    out.resource_tag_set().unwrap().tags().iter().map(|t| (t.key().unwrap().to_owned(), t.value().unwrap_or_default().to_owned())).collect()
}

/// One record set as the Route 53 API lists it.
#[derive(Debug, Clone, PartialEq)]
struct Set {
    name: String,
    kind: String,
    ttl: Option<i64>,
    values: Vec<String>,
    /// The alias's DNS name, zone and health flag.
    alias: Option<(String, String, bool)>,
}

/// The record sets of zone `id` besides its SOA and NS, by ListResourceRecordSets.
async fn sets(r53: &aws_sdk_route53::Client, id: &str) -> Vec<Set> {
    let out = r53.list_resource_record_sets().hosted_zone_id(id).send().await.unwrap();
    out.resource_record_sets()
        .iter()
        .filter(|s| !matches!(s.r#type(), RrType::Soa | RrType::Ns))
        .map(|s| Set {
            name: s.name().to_owned(),
            kind: s.r#type().as_str().to_owned(),
            ttl: s.ttl(),
            values: s.resource_records().iter().map(|r| r.value().to_owned()).collect(),
            alias: s.alias_target().map(|a| (a.dns_name().to_owned(), a.hosted_zone_id().to_owned(), a.evaluate_target_health())),
        })
        .collect()
}

async fn set_of(r53: &aws_sdk_route53::Client, zone: &str, name: &str, kind: &str) -> Option<Set> {
    sets(r53, zone).await.into_iter().find(|s| s.name == name && s.kind == kind)
}

fn a_set(name: &str, ttl: i64, values: &[&str]) -> ResourceRecordSet {
    let records = values.iter().map(|v| ResourceRecord::builder().value(*v).build().unwrap());
    ResourceRecordSet::builder().name(name).r#type(RrType::A).ttl(ttl).set_resource_records(Some(records.collect())).build().unwrap()
}

/// Sends one change by hand, as someone outside Cairn would.
async fn by_hand(r53: &aws_sdk_route53::Client, zone: &str, action: ChangeAction, set: ResourceRecordSet) {
    let change = Change::builder().action(action).resource_record_set(set).build().unwrap();
    let batch = ChangeBatch::builder().changes(change).build().unwrap();
    r53.change_resource_record_sets().hosted_zone_id(zone).change_batch(batch).send().await.unwrap();
}

// ---------------------------------------------------------------------------------
// Hosted zones.

#[derive(Clone, Default, Serialize, Deserialize)]
struct Site {
    domain: String,
    comment: String,
    team: String,
}

fn site(stack: &str, provider: cairn_aws::Provider) -> Stack<Site> {
    Stack::<Site>::new(stack).provider(provider).program(|cx, s| {
        cx.add(Zone::new("site").name(s.domain.as_str()).comment(s.comment.as_str()).tags([("team", s.team.as_str())]));
        Ok(())
    })
}

#[tokio::test]
async fn a_zone_is_created_updated_in_place_replaced_and_destroyed() {
    let (provider, r53) = aws().await;
    let stack = site("r53-zone", provider);

    // Create: the zone, its comment, its tags and its name servers.
    let first = Site { domain: "life.cairn-r53.test".into(), comment: "v1".into(), team: "web".into() };
    let mut session = stack.in_memory_session().await.unwrap();
    let report = session.up(&first).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let state = report.state;
    let id = id_of(&state, ZONE, "site");
    assert!(!id.starts_with('/'), "the id is bare: {id}");
    let got = r53.get_hosted_zone().id(&id).send().await.unwrap();
    let zone = got.hosted_zone().unwrap();
    assert_eq!(zone.name(), "life.cairn-r53.test.");
    assert_eq!(zone.config().and_then(|c| c.comment()), Some("v1"));
    let servers = got.delegation_set().unwrap().name_servers().to_vec();
    assert!(!servers.is_empty());
    assert_eq!(outputs(&state, ZONE, "site"), json!({"zone_id": id, "name_servers": servers}));
    let tags = zone_tags(&r53, &id).await;
    assert_eq!(tags.get("team").map(String::as_str), Some("web"));
    assert_eq!(tags.get("cairn:urn").map(String::as_str), Some("urn:cairn:r53-zone::aws:route53:Zone::site"));

    // The same program changes nothing; nor does a trailing dot or other letter case.
    assert!(!stack.preview(&first, &state).unwrap().has_changes());
    let dotted = Site { domain: "Life.CAIRN-r53.test.".into(), ..first.clone() };
    assert!(!stack.preview(&dotted, &state).unwrap().has_changes());

    // The comment and tags change in place.
    let second = Site { comment: "v2".into(), team: "platform".into(), ..first.clone() };
    let plan = session.preview(&second).unwrap();
    assert_eq!(plan.changed().map(|c| (c.urn.name(), c.action)).collect::<Vec<_>>(), [("site", Action::Update)]);
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    assert_eq!(id_of(&report.state, ZONE, "site"), id, "the same zone");
    let got = r53.get_hosted_zone().id(&id).send().await.unwrap();
    assert_eq!(got.hosted_zone().unwrap().config().and_then(|c| c.comment()), Some("v2"));
    assert_eq!(zone_tags(&r53, &id).await.get("team").map(String::as_str), Some("platform"));

    // A comment changed outside Cairn is drift, and the next up puts it back.
    r53.update_hosted_zone_comment().id(&id).comment("by hand").send().await.unwrap();
    let refreshed = session.refresh().await.unwrap();
    assert_eq!(drift_of(&refreshed), [("site".to_owned(), "comment".to_owned(), json!("v2"), json!("by hand"))]);
    assert!(session.up(&second).await.unwrap().succeeded());
    let got = r53.get_hosted_zone().id(&id).send().await.unwrap();
    assert_eq!(got.hosted_zone().unwrap().config().and_then(|c| c.comment()), Some("v2"));

    // Another domain is another zone: replaced, the old one deleted.
    let moved = Site { domain: "life2.cairn-r53.test".into(), ..second.clone() };
    let plan = session.preview(&moved).unwrap();
    let change = plan.changes.iter().find(|c| c.urn.name() == "site").unwrap();
    assert_eq!((change.action, change.replace_reasons.clone()), (Action::Replace, vec!["name".to_owned()]));
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let new_id = id_of(&report.state, ZONE, "site");
    assert_ne!(new_id, id);
    assert_eq!(r53.get_hosted_zone().id(&new_id).send().await.unwrap().hosted_zone().unwrap().name(), "life2.cairn-r53.test.");
    assert!(!zone_exists(&r53, &id).await, "the old zone was deleted");

    // Read back, nothing drifted; the look-up finds exactly the live zone.
    let refreshed = session.refresh().await.unwrap();
    assert_eq!(drift_of(&refreshed), []);
    let provider = cairn_aws::Provider::from_env().await;
    let found = provider.lookup(&Urn::new("r53-zone", ZONE, "site"), &Default::default()).await.unwrap();
    assert_eq!(found.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(), [new_id.as_str()]);

    // Destroy leaves nothing.
    let report = session.destroy().await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    assert!(!zone_exists(&r53, &new_id).await);
}

#[tokio::test]
async fn a_zone_with_records_made_outside_cairn_is_not_deleted_and_says_why() {
    let (provider, r53) = aws().await;
    let s = Site { domain: "busy.cairn-r53.test".into(), comment: "busy".into(), team: "web".into() };
    let stack = site("r53-busy", provider);
    let mut session = stack.in_memory_session().await.unwrap();
    let state = session.up(&s).await.unwrap().state;
    let id = id_of(&state, ZONE, "site");
    by_hand(&r53, &id, ChangeAction::Create, a_set("stray.busy.cairn-r53.test.", 300, &["192.0.2.7"])).await;

    let report = session.destroy().await.unwrap();
    let failure = report.failures().next().expect("the delete is refused");
    let error = failure.status.error().unwrap().to_string();
    assert!(error.contains("aws:route53:Zone 'site'") && error.contains("still has record sets besides its own SOA and NS records"), "{error}");
    assert!(zone_exists(&r53, &id).await);

    by_hand(&r53, &id, ChangeAction::Delete, a_set("stray.busy.cairn-r53.test.", 300, &["192.0.2.7"])).await;
    assert!(session.destroy().await.unwrap().succeeded());
    assert!(!zone_exists(&r53, &id).await);
}

/// The `CallerReference` start Cairn gives the zones of `urn`: `cairn-`, the URN's 64-bit
/// FNV-1a hash in hex, `-`. Pinned here: zones made by earlier versions are found by it.
fn caller_mark(urn: &Urn) -> String {
    let hash = urn.as_str().bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    format!("cairn-{hash:016x}-")
}

#[tokio::test]
async fn a_zone_whose_create_stopped_before_its_tags_is_found_by_its_caller_reference() {
    let (_, r53) = aws().await;
    let urn = Urn::new("r53-lost", ZONE, "site");
    // What a create leaves when it stops between CreateHostedZone and the tags.
    let made = r53.create_hosted_zone().name("lost.cairn-r53.test").caller_reference(format!("{}1234", caller_mark(&urn))).send().await.unwrap();
    let id = made.hosted_zone().unwrap().id().trim_start_matches("/hostedzone/").to_owned();
    assert!(zone_tags(&r53, &id).await.is_empty());
    // An unrelated zone of the same name is not it.
    let other = r53.create_hosted_zone().name("lost.cairn-r53.test").caller_reference("someone-else").send().await.unwrap();
    let other = other.hosted_zone().unwrap().id().trim_start_matches("/hostedzone/").to_owned();

    let provider = cairn_aws::Provider::from_env().await;
    let created_with = cairn_state::Props::from_value(json!({"name": "lost.cairn-r53.test"})).unwrap();
    let found = provider.lookup(&urn, &created_with).await.unwrap();
    assert_eq!(found.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(), [id.as_str()]);
    assert_eq!(found[0].inputs.get("name"), Some(&json!("lost.cairn-r53.test")));
    for zone in [id, other] {
        r53.delete_hosted_zone().id(zone).send().await.unwrap();
    }
}

// ---------------------------------------------------------------------------------
// Record sets.

#[derive(Clone, Default, Serialize, Deserialize)]
struct Dns {
    ttl: u32,
    web: Vec<String>,
    www: String,
    lb: String,
}

fn dns(stack: &str, provider: cairn_aws::Provider) -> Stack<Dns> {
    Stack::<Dns>::new(stack).provider(provider).program(|cx, s| {
        let zone = cx.add(Zone::new("zone").name("shop.cairn-records.test"));
        // A plain A record set and a CNAME.
        cx.add(Record::new("web").zone_id(zone.zone_id()).name("web.shop.cairn-records.test").record_type("A").ttl(s.ttl).records(s.web.clone()));
        cx.add(Record::new("www").zone_id(zone.zone_id()).name(s.www.as_str()).record_type("CNAME").ttl(300).records(["web.shop.cairn-records.test"]));
        // The apex, an alias of a load balancer given as literals.
        cx.add(
            Record::new("apex")
                .zone_id(zone.zone_id())
                .name("shop.cairn-records.test")
                .record_type("A")
                .alias(s.lb.as_str(), LB_ZONE)
                .evaluate_target_health(true),
        );
        cx.add(Record::new("spf").zone_id(zone.zone_id()).name("shop.cairn-records.test").record_type("TXT").ttl(300).records(["\"v=spf1 -all\""]));
        Ok(())
    })
}

#[tokio::test]
async fn record_sets_are_created_updated_in_place_replaced_and_destroyed() {
    let (provider, r53) = aws().await;
    let stack = dns("r53-records", provider);

    // Create.
    let first = Dns {
        ttl: 300,
        web: vec!["192.0.2.10".into(), "192.0.2.11".into()],
        www: "www.shop.cairn-records.test".into(),
        lb: LB_DNS.into(),
    };
    let mut session = stack.in_memory_session().await.unwrap();
    let report = session.up(&first).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let state = report.state;
    let zone = id_of(&state, ZONE, "zone");
    let web = Set {
        name: "web.shop.cairn-records.test.".into(),
        kind: "A".into(),
        ttl: Some(300),
        values: vec!["192.0.2.10".into(), "192.0.2.11".into()],
        alias: None,
    };
    let www = Set {
        name: "www.shop.cairn-records.test.".into(),
        kind: "CNAME".into(),
        ttl: Some(300),
        values: vec!["web.shop.cairn-records.test".into()],
        alias: None,
    };
    assert_eq!(set_of(&r53, &zone, "web.shop.cairn-records.test.", "A").await, Some(web.clone()));
    assert_eq!(set_of(&r53, &zone, "www.shop.cairn-records.test.", "CNAME").await, Some(www.clone()));
    let apex = set_of(&r53, &zone, "shop.cairn-records.test.", "A").await.expect("the alias exists");
    let (dns_name, lb_zone, healthy) = apex.alias.clone().expect("an alias");
    assert_eq!((dns_name.trim_end_matches('.'), lb_zone.as_str(), healthy, apex.ttl), (LB_DNS, LB_ZONE, true, None));
    let spf = set_of(&r53, &zone, "shop.cairn-records.test.", "TXT").await.expect("the TXT set exists");
    assert_eq!(spf.values, ["\"v=spf1 -all\""]);
    assert_eq!(sets(&r53, &zone).await.len(), 4, "{:?}", sets(&r53, &zone).await);
    let web_id = id_of(&state, RECORD, "web");
    assert_eq!(web_id, format!("{zone}|web.shop.cairn-records.test|A"));
    assert_eq!(outputs(&state, RECORD, "web")["fqdn"], json!("web.shop.cairn-records.test"));

    // The same program changes nothing; nor do reordered values or a trailing dot.
    assert!(!stack.preview(&first, &state).unwrap().has_changes());
    let same = Dns { web: vec!["192.0.2.11".into(), "192.0.2.10".into()], www: "WWW.shop.cairn-records.test.".into(), ..first.clone() };
    assert!(!stack.preview(&same, &state).unwrap().has_changes());

    // The TTL, the values and the alias change in place.
    let second = Dns { ttl: 60, web: vec!["192.0.2.12".into()], lb: "dualstack.shop-lb-2.us-east-1.elb.amazonaws.com".into(), ..first.clone() };
    let plan = session.preview(&second).unwrap();
    let mut actions: Vec<_> = plan.changed().map(|c| (c.urn.name().to_owned(), c.action)).collect();
    actions.sort();
    assert_eq!(actions, [("apex".to_owned(), Action::Update), ("web".to_owned(), Action::Update)]);
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    assert_eq!(id_of(&report.state, RECORD, "web"), web_id);
    let now = set_of(&r53, &zone, "web.shop.cairn-records.test.", "A").await.unwrap();
    assert_eq!((now.ttl, now.values), (Some(60), vec!["192.0.2.12".to_owned()]));
    let apex = set_of(&r53, &zone, "shop.cairn-records.test.", "A").await.unwrap();
    assert_eq!(apex.alias.unwrap().0.trim_end_matches('.'), "dualstack.shop-lb-2.us-east-1.elb.amazonaws.com");
    assert_eq!(sets(&r53, &zone).await.len(), 4, "no set was added");

    // Values changed outside Cairn are drift, and the next up puts them back.
    by_hand(&r53, &zone, ChangeAction::Upsert, a_set("web.shop.cairn-records.test.", 60, &["203.0.113.9"])).await;
    let refreshed = session.refresh().await.unwrap();
    assert_eq!(drift_of(&refreshed), [("web".to_owned(), "records".to_owned(), json!(["192.0.2.12"]), json!(["203.0.113.9"]))]);
    assert!(session.up(&second).await.unwrap().succeeded());
    assert_eq!(set_of(&r53, &zone, "web.shop.cairn-records.test.", "A").await.unwrap().values, ["192.0.2.12"]);

    // Another name is another record set: replaced, the old one deleted.
    let renamed = Dns { www: "www2.shop.cairn-records.test".into(), ..second.clone() };
    let plan = session.preview(&renamed).unwrap();
    let change = plan.changes.iter().find(|c| c.urn.name() == "www").unwrap();
    assert_eq!((change.action, change.replace_reasons.clone()), (Action::Replace, vec!["name".to_owned()]));
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    assert_eq!(set_of(&r53, &zone, "www.shop.cairn-records.test.", "CNAME").await, None, "the old set was deleted");
    let www2 = Set { name: "www2.shop.cairn-records.test.".into(), ..www };
    assert_eq!(set_of(&r53, &zone, "www2.shop.cairn-records.test.", "CNAME").await, Some(www2));

    // Read back, nothing drifted; the look-up by zone, name and type finds the live set.
    let refreshed = session.refresh().await.unwrap();
    assert_eq!(drift_of(&refreshed), []);
    let state = refreshed.state;
    let provider = cairn_aws::Provider::from_env().await;
    let created_with = resource(&state, RECORD, "www").inputs.clone();
    let found = provider.lookup(&Urn::new("r53-records", RECORD, "www"), &created_with).await.unwrap();
    assert_eq!(found.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(), [format!("{zone}|www2.shop.cairn-records.test|CNAME")]);
    assert!(provider.lookup(&Urn::new("r53-records", RECORD, "www"), &Default::default()).await.unwrap().is_empty());

    // Destroy deletes the record sets, then the zone (which Route 53 refuses while it has any).
    let report = session.destroy().await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    assert!(!zone_exists(&r53, &zone).await);
}

#[derive(Clone, Default, Serialize, Deserialize)]
struct Taken {
    zone: String,
    values: Vec<String>,
}

#[tokio::test]
async fn an_existing_record_set_is_adopted_when_identical_and_otherwise_left_alone() {
    let (provider, r53) = aws().await;
    // A zone and a record set made outside Cairn.
    let zone = r53.create_hosted_zone().name("adopt.cairn-r53.test").caller_reference("r53-adopt-test").send().await.unwrap();
    let zone = zone.hosted_zone().unwrap().id().trim_start_matches("/hostedzone/").to_owned();
    by_hand(&r53, &zone, ChangeAction::Create, a_set("taken.adopt.cairn-r53.test.", 300, &["192.0.2.1"])).await;
    let stack = Stack::<Taken>::new("r53-adopt").provider(provider).program(|cx, t| {
        cx.add(Record::new("taken").zone_id(t.zone.as_str()).name("taken.adopt.cairn-r53.test").record_type("A").ttl(300).records(t.values.clone()));
        Ok(())
    });
    let mut session = stack.in_memory_session().await.unwrap();

    // Other values: refused, and the set is as it was.
    let other = Taken { zone: zone.clone(), values: vec!["192.0.2.99".into()] };
    let report = session.up(&other).await.unwrap();
    let failure = report.failures().next().expect("the create is refused");
    assert_eq!(failure.op, StepOp::Create);
    let error = failure.status.error().unwrap().to_string();
    assert!(error.contains("aws:route53:Record 'taken'"), "{error}");
    assert!(error.contains(&format!("the A record set taken.adopt.cairn-r53.test in hosted zone {zone} already exists with other values")), "{error}");
    assert!(error.contains("records = [\"192.0.2.1\"]") && error.contains("Cairn does not overwrite"), "{error}");
    assert_eq!(sets(&r53, &zone).await.iter().map(|s| s.values.clone()).collect::<Vec<_>>(), [vec!["192.0.2.1".to_owned()]]);

    // The same values: adopted, still one set.
    let same = Taken { values: vec!["192.0.2.1".into()], ..other };
    let report = session.up(&same).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    assert_eq!(id_of(&report.state, RECORD, "taken"), format!("{zone}|taken.adopt.cairn-r53.test|A"));
    assert_eq!(sets(&r53, &zone).await.len(), 1);

    // Once adopted, it is Cairn's: destroy deletes it.
    assert!(session.destroy().await.unwrap().succeeded());
    assert!(sets(&r53, &zone).await.is_empty());
    r53.delete_hosted_zone().id(&zone).send().await.unwrap();
}

#[tokio::test]
async fn a_renamed_record_set_is_made_again_once_the_old_name_has_deleted_it() {
    const STACK: &str = "r53-renamed";
    let (provider, r53) = aws().await;
    // S: the record's logical name, and its domain name as written.
    let stack = Stack::<(String, String)>::new(STACK).provider(provider).program(|cx, (name, domain)| {
        let zone = cx.add(Zone::new("zone").name("renamed.cairn-r53.test"));
        cx.add(Record::new(name.as_str()).zone_id(zone.zone_id()).name(domain.as_str()).record_type("A").ttl(300).records(["192.0.2.7"]));
        Ok(())
    });
    let mut session = stack.in_memory_session().await.unwrap();
    let report = session.up(&("www".to_owned(), "www.renamed.cairn-r53.test".to_owned())).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let zone = id_of(&report.state, ZONE, "zone");

    // The renamed declaration is the same record set, its name written otherwise as DNS
    // reads it alike. Made alongside, it would adopt the set the old name then deletes,
    // leaving the name without an address.
    let plan = session.preview(&("website".to_owned(), "WWW.renamed.cairn-r53.test.".to_owned())).unwrap();
    let create = plan.changes.iter().find(|c| c.action == Action::Create).unwrap();
    assert_eq!(create.after_delete, Some(Urn::new(STACK, RECORD, "www")));
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let set = set_of(&r53, &zone, "www.renamed.cairn-r53.test.", "A").await.expect("the record set exists");
    assert_eq!(set.values, ["192.0.2.7"]);
    assert_eq!(sets(&r53, &zone).await.len(), 1);
    assert_eq!(id_of(&report.state, RECORD, "website"), format!("{zone}|www.renamed.cairn-r53.test|A"));
    assert!(session.destroy().await.unwrap().succeeded());
    assert!(!zone_exists(&r53, &zone).await);
}

#[test]
fn bad_zones_and_record_sets_are_refused_before_any_call() {
    let stack = Stack::<()>::new("r53-checks").program(|cx, _| {
        cx.add(Zone::new("z").name("bad domain.com").comment(""));
        cx.add(Record::new("kind").zone_id("Z1").name("a.example.com").record_type("SPF").ttl(300).records(["x"]));
        cx.add(Record::new("both").zone_id("/hostedzone/Z1").name("b.example.com").record_type("A").ttl(300).records(["192.0.2.1"]).alias(LB_DNS, LB_ZONE));
        cx.add(Record::new("none").zone_id("Z1").name("c.example.com").record_type("A"));
        cx.add(Record::new("no-ttl").zone_id("Z1").name("d.example.com").record_type("A").records(["192.0.2.1"]));
        cx.add(Record::new("address").zone_id("Z1").name("e.example.com").record_type("A").ttl(60).records(["shop.example.com"]));
        cx.add(Record::new("txt").zone_id("zone-1").name("f.example.com").record_type("TXT").ttl(60).records(["v=spf1 -all"]));
        cx.add(Record::new("cname").zone_id("Z1").name("*.g.example.com").record_type("CNAME").ttl(60).records(["a.example.com", "b.example.com"]));
        cx.add(Record::new("lb").zone_id("Z1").name("h.example.com").record_type("A").alias("not a name", "Z35SXDOTRQ7X7K"));
        Ok(())
    });
    let err = stack.preview(&(), &stack.new_state()).unwrap_err().to_string();
    let problems = [
        "aws:route53:Zone 'z': property 'name' = \"bad domain.com\" is invalid: it must be a domain name such as example.com: labels of 1 to 63 letters, digits, '-' or '_' separated by dots",
        "aws:route53:Zone 'z': property 'comment' = \"\" is invalid: it must be 1 to 256 characters (leave it unset for no comment)",
        "aws:route53:Record 'kind': property 'record_type' = \"SPF\" is invalid: it must be one of A, AAAA, CNAME, TXT, MX, NS, SRV, CAA, PTR (in capitals)",
        "aws:route53:Record 'both': property 'alias' = {\"dns_name\":\"shop-lb-1234567890.us-east-1.elb.amazonaws.com\",\"evaluate_target_health\":false,\"zone_id\":\"Z35SXDOTRQ7X7K\"} is invalid: it must not be set along with records: a record set has either records (with a ttl) or an alias",
        "aws:route53:Record 'none': property 'records' = (unset) is invalid: it must be set (with a ttl), or else an alias: a record set needs one of the two",
        "aws:route53:Record 'no-ttl': property 'ttl' = (unset) is invalid: it must be set (seconds, such as 300) for a record set with records",
        "aws:route53:Record 'address': property 'records' = \"shop.example.com\" is invalid: it must be IPv4 addresses, such as 192.0.2.10, for an A record",
        "aws:route53:Record 'txt': property 'zone_id' = \"zone-1\" is invalid: it must be a hosted zone id such as Z0123456789ABCDEFGHIJ, such as a Zone's zone_id()",
        "aws:route53:Record 'txt': property 'records' = \"v=spf1 -all\" is invalid: it must be enclosed in double quotes, as Route 53 requires of TXT values: \"\\\"v=spf1 -all\\\"\"",
        "aws:route53:Record 'cname': property 'records' = [\"a.example.com\",\"b.example.com\"] is invalid: it must hold exactly one value for a CNAME: the domain name it stands for",
        "aws:route53:Record 'lb': property 'alias' = {\"dns_name\":\"not a name\",\"evaluate_target_health\":false,\"zone_id\":\"Z35SXDOTRQ7X7K\"} is invalid: it must have a domain name as its dns_name, such as a load balancer's dns_name()",
    ];
    for p in problems {
        assert!(err.contains(p), "missing:\n{p}\nin:\n{err}");
    }
    assert!(err.starts_with(&format!("the program declares an invalid graph ({} problems); nothing was changed", problems.len())), "{err}");
}
