//! Helpers more than one test binary needs. Each binary includes this module with
//! `mod common;` and uses only some of it.
#![allow(dead_code)]

use aws_sdk_ec2::types::IpPermission;
use cairn_sdk::Urn;
use serde_json::Value;

/// A security group's rules as AWS lists them, one line per peer, sorted:
/// `tcp 443-443 0.0.0.0/0`.
pub fn rule_lines(perms: &[IpPermission]) -> Vec<String> {
    let mut out = Vec::new();
    for p in perms {
        let ports = match (p.from_port(), p.to_port()) {
            (Some(f), Some(t)) => format!("{f}-{t}"),
            _ => "all".to_owned(),
        };
        let proto = p.ip_protocol().unwrap_or_default();
        out.extend(p.ip_ranges().iter().map(|r| format!("{proto} {ports} {}", r.cidr_ip().unwrap_or_default())));
        out.extend(p.user_id_group_pairs().iter().map(|g| format!("{proto} {ports} {}", g.group_id().unwrap_or_default())));
    }
    out.sort();
    out
}

/// The drift a refresh found, as `(resource, property, recorded, found)`.
pub fn drift_of(report: &cairn_sdk::RefreshReport) -> Vec<(String, String, Value, Value)> {
    let drift = serde_json::to_value(&report.drift).unwrap();
    let mut out = Vec::new();
    for d in drift.as_array().unwrap() {
        let urn = Urn::parse(d["urn"].as_str().unwrap()).unwrap();
        for p in d["diffs"].as_array().unwrap() {
            out.push((urn.name().to_owned(), p["name"].as_str().unwrap().to_owned(), p["old"].clone(), p["new"].clone()));
        }
    }
    out
}

/// The URLs of the queues tagged `cairn:stack` = `stack`, sorted. A queue deleted
/// between the listing and the reading of its tags (by a test running beside this
/// one) is not one of them.
pub async fn queues_tagged(sqs: &aws_sdk_sqs::Client, stack: &str) -> Vec<String> {
    use aws_sdk_sqs::error::ProvideErrorMetadata as _;
    let mut urls = Vec::new();
    for url in sqs.list_queues().max_results(1000).send().await.unwrap().queue_urls() {
        let tags = match sqs.list_queue_tags().queue_url(url).send().await {
            Ok(out) => out,
            Err(e) if matches!(e.code(), Some("AWS.SimpleQueueService.NonExistentQueue" | "QueueDoesNotExist")) => continue,
            Err(e) => panic!("reading the tags of queue {url}: {e:?}"),
        };
        if tags.tags().is_some_and(|t| t.get("cairn:stack").map(String::as_str) == Some(stack)) {
            urls.push(url.clone());
        }
    }
    urls.sort();
    urls
}
