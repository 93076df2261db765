//! `aws:acm:Certificate` against the local AWS, every effect checked with the ACM API
//! itself (and Route 53's, for the validation record).
//!
//! moto 5.2.5 fills in the DNS validation records at once, ignores the validation method
//! (every option says DNS), never refuses to delete a certificate in use, and issues a
//! pending certificate by itself 60 s after the request (ACM_VALIDATION_WAIT), whatever
//! DNS says. The tests use what it shows, and nothing of that timing.

use std::collections::BTreeMap;

use aws_sdk_acm::types::{CertificateDetail, Tag};
use cairn_aws::acm::Certificate;
use cairn_aws::route53::{Record, Zone};
use cairn_sdk::{Action, Provider as _, Stack, StackState, Urn};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

const CERTIFICATE: &str = "aws:acm:Certificate";

async fn aws() -> (cairn_aws::Provider, aws_sdk_acm::Client, aws_sdk_route53::Client) {
    cairn_testkit::moto().configure_env();
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    (cairn_aws::Provider::new(&config), aws_sdk_acm::Client::new(&config), aws_sdk_route53::Client::new(&config))
}

fn resource<'a>(state: &'a StackState, ty: &str, name: &str) -> &'a cairn_state::ResourceState {
    state.resource(&Urn::new(&state.stack, ty, name)).unwrap_or_else(|| panic!("{name} in state"))
}

fn outputs(state: &StackState, ty: &str, name: &str) -> Value {
    serde_json::to_value(&resource(state, ty, name).outputs).unwrap()
}

/// The certificate `arn` by DescribeCertificate; `None` when ACM says it does not exist.
async fn describe(acm: &aws_sdk_acm::Client, arn: &str) -> Option<CertificateDetail> {
    match acm.describe_certificate().certificate_arn(arn).send().await {
        Ok(out) => out.certificate().cloned(),
        Err(e) => {
            assert_eq!(e.as_service_error().and_then(|e| e.meta().code()), Some("ResourceNotFoundException"), "{e:?}");
            None
        }
    }
}

async fn tags(acm: &aws_sdk_acm::Client, arn: &str) -> BTreeMap<String, String> {
    let out = acm.list_tags_for_certificate().certificate_arn(arn).send().await.unwrap();
    out.tags().iter().map(|t| (t.key().to_owned(), t.value().unwrap_or_default().to_owned())).collect()
}

/// The DNS record ACM wants for `domain`, as (name, type, value).
fn wanted_record(cert: &CertificateDetail, domain: &str) -> (String, String, String) {
    let option = cert.domain_validation_options().iter().find(|o| o.domain_name() == domain).expect("an option for the domain");
    let r = option.resource_record().expect("a DNS record");
    (r.name().to_owned(), r.r#type().as_str().to_owned(), r.value().to_owned())
}

/// The drift a refresh found, as `(resource, property)`.
fn drifted(report: &cairn_sdk::RefreshReport) -> Vec<(String, String)> {
    let drift = serde_json::to_value(&report.drift).unwrap();
    let mut out = Vec::new();
    for d in drift.as_array().unwrap() {
        let urn = Urn::parse(d["urn"].as_str().unwrap()).unwrap();
        for p in d["diffs"].as_array().unwrap() {
            out.push((urn.name().to_owned(), p["name"].as_str().unwrap().to_owned()));
        }
    }
    out
}

#[derive(Clone, Default, Serialize, Deserialize)]
struct Shop {
    names: Vec<String>,
    team: String,
}

const DOMAIN: &str = "shop.cairn-acm.test";

fn shop(stack: &str, provider: cairn_aws::Provider) -> Stack<Shop> {
    Stack::<Shop>::new(stack).provider(provider).program(|cx, s| {
        cx.add(Certificate::new("shop").domain_name(DOMAIN).subject_alternative_names(s.names.clone()).tags([("team", s.team.as_str())]));
        Ok(())
    })
}

#[tokio::test]
async fn a_certificate_is_requested_retagged_replaced_and_deleted() {
    let (provider, acm, _) = aws().await;
    let stack = shop("acm-lifecycle", provider);

    // Create: requested, pending, and its validation record reported.
    let first = Shop { names: vec!["www.shop.cairn-acm.test".into(), "api.shop.cairn-acm.test".into()], team: "web".into() };
    let mut session = stack.in_memory_session().await.unwrap();
    let report = session.up(&first).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let state = report.state;
    let arn = resource(&state, CERTIFICATE, "shop").id.clone();
    let cert = describe(&acm, &arn).await.expect("the certificate exists");
    assert_eq!(cert.domain_name(), Some(DOMAIN));
    let mut names = cert.subject_alternative_names().to_vec();
    names.sort();
    assert_eq!(names, ["api.shop.cairn-acm.test", "shop.cairn-acm.test", "www.shop.cairn-acm.test"]);
    let status = cert.status().unwrap().as_str();
    assert!(["PENDING_VALIDATION", "ISSUED"].contains(&status), "not waited for: {status}");
    let (name, kind, value) = wanted_record(&cert, DOMAIN);
    assert_eq!(
        outputs(&state, CERTIFICATE, "shop"),
        json!({"arn": arn, "status": status, "validation_record_name": name, "validation_record_type": kind, "validation_record_value": value})
    );
    assert_eq!(kind, "CNAME");
    let found = tags(&acm, &arn).await;
    assert_eq!(found.get("team").map(String::as_str), Some("web"));
    assert_eq!(found.get("cairn:urn").map(String::as_str), Some("urn:cairn:acm-lifecycle::aws:acm:Certificate::shop"));

    // The same program changes nothing, nor do the alternative names in another order.
    assert!(!stack.preview(&first, &state).unwrap().has_changes());
    let reordered = Shop { names: first.names.iter().rev().cloned().collect(), ..first.clone() };
    assert!(!stack.preview(&reordered, &state).unwrap().has_changes());

    // Tags change in place.
    let retagged = Shop { team: "platform".into(), ..first.clone() };
    let plan = session.preview(&retagged).unwrap();
    assert_eq!(plan.changed().map(|c| (c.urn.name(), c.action)).collect::<Vec<_>>(), [("shop", Action::Update)]);
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    assert_eq!(resource(&report.state, CERTIFICATE, "shop").id, arn, "the same certificate");
    assert_eq!(tags(&acm, &arn).await.get("team").map(String::as_str), Some("platform"));

    // A tag removed outside Cairn is drift, and the next up puts it back.
    let team = Tag::builder().key("team").build().unwrap();
    acm.remove_tags_from_certificate().certificate_arn(&arn).tags(team).send().await.unwrap();
    let refreshed = session.refresh().await.unwrap();
    assert_eq!(drifted(&refreshed), [("shop".to_owned(), "tags".to_owned())]);
    assert!(session.up(&retagged).await.unwrap().succeeded());
    assert_eq!(tags(&acm, &arn).await.get("team").map(String::as_str), Some("platform"));

    // Other names need another certificate: replaced, the old one deleted.
    let fewer = Shop { names: vec!["www.shop.cairn-acm.test".into()], ..retagged.clone() };
    let plan = session.preview(&fewer).unwrap();
    let change = plan.changes.iter().find(|c| c.urn.name() == "shop").unwrap();
    assert_eq!((change.action, change.replace_reasons.clone()), (Action::Replace, vec!["subject_alternative_names".to_owned()]));
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let new_arn = resource(&report.state, CERTIFICATE, "shop").id.clone();
    assert_ne!(new_arn, arn);
    let mut names = describe(&acm, &new_arn).await.unwrap().subject_alternative_names().to_vec();
    names.sort();
    assert_eq!(names, ["shop.cairn-acm.test", "www.shop.cairn-acm.test"]);
    assert!(describe(&acm, &arn).await.is_none(), "the old certificate was deleted");

    // Read back, nothing drifted; the look-up by tags finds exactly the live certificate.
    let refreshed = session.refresh().await.unwrap();
    assert_eq!(drifted(&refreshed), []);
    let provider = cairn_aws::Provider::from_env().await;
    let found = provider.lookup(&Urn::new("acm-lifecycle", CERTIFICATE, "shop"), &Default::default()).await.unwrap();
    assert_eq!(found.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(), [new_arn.as_str()]);

    // Destroy leaves nothing.
    let report = session.destroy().await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    assert!(describe(&acm, &new_arn).await.is_none());
}

#[tokio::test]
async fn the_validation_record_is_made_from_the_certificates_outputs() {
    let (provider, acm, r53) = aws().await;
    let stack = Stack::<()>::new("acm-dns").provider(provider).program(|cx, _| {
        let zone = cx.add(Zone::new("zone").name("cairn-acm-dns.test"));
        let cert = cx.add(Certificate::new("app").domain_name("app.cairn-acm-dns.test"));
        cx.add(
            Record::new("validation")
                .zone_id(zone.zone_id())
                .name(cert.validation_record_name())
                .record_type(cert.validation_record_type())
                .ttl(300)
                .records([cert.validation_record_value()]),
        );
        Ok(())
    });
    let mut session = stack.in_memory_session().await.unwrap();
    let report = session.up(&()).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let state = report.state;
    let arn = resource(&state, CERTIFICATE, "app").id.clone();
    let zone = resource(&state, "aws:route53:Zone", "zone").id.clone();
    let (name, kind, value) = wanted_record(&describe(&acm, &arn).await.unwrap(), "app.cairn-acm-dns.test");

    let out = r53.list_resource_record_sets().hosted_zone_id(&zone).send().await.unwrap();
    let set = out.resource_record_sets().iter().find(|s| s.name() == name).expect("the validation record exists");
    assert_eq!(set.r#type().as_str(), kind);
    assert_eq!(set.resource_records().iter().map(|r| r.value()).collect::<Vec<_>>(), [value.as_str()]);
    assert!(!stack.preview(&(), &state).unwrap().has_changes());

    assert!(session.destroy().await.unwrap().succeeded());
    assert!(describe(&acm, &arn).await.is_none());
    assert!(r53.get_hosted_zone().id(&zone).send().await.is_err(), "the zone, emptied of its record, was deleted");
}

#[test]
fn bad_certificates_are_refused_before_any_call() {
    let stack = Stack::<()>::new("acm-checks").program(|cx, _| {
        cx.add(Certificate::new("a").domain_name("localhost"));
        cx.add(Certificate::new("b").domain_name("shop.example.com").subject_alternative_names(["www.example.com", "bad name.example.com"]));
        cx.add(Certificate::new("c").domain_name("*.example.com").validation_method("PHONE"));
        Ok(())
    });
    let err = stack.preview(&(), &stack.new_state()).unwrap_err().to_string();
    let rule = "labels of 1 to 63 letters, digits or '-', separated by dots, the first of which may be the wildcard *, and no trailing dot";
    assert_eq!(
        err,
        format!(
            "the program declares an invalid graph (3 problems); nothing was changed:\n  \
             - aws:acm:Certificate 'a': property 'domain_name' = \"localhost\" is invalid: it must be a fully qualified domain name such as shop.example.com or *.example.com: {rule}\n  \
             - aws:acm:Certificate 'b': property 'subject_alternative_names' = \"bad name.example.com\" is invalid: it must be a fully qualified domain name such as shop.example.com or *.example.com: {rule}\n  \
             - aws:acm:Certificate 'c': property 'validation_method' = \"PHONE\" is invalid: it must be DNS or EMAIL"
        )
    );
}
