//! Route 53: hosted zones and DNS records.
//!
//! Route 53 spells a domain name with a trailing dot, lowercase, and `*` as `\052`;
//! Cairn takes names with or without the dot, in any case, and compares them as DNS
//! does: `example.com` and `Example.COM.` are the same name and no change.

pub mod record;
pub mod zone;

pub use record::{Alias, Record, RecordRef, RECORD};
pub use zone::{Zone, ZoneRef, ZONE};

use cairn_sdk::provider::{schema_diff, DiffRequest, DiffResult};
use cairn_sdk::{CheckFailure, Decl, Urn};
use serde_json::Value;

use crate::kind::Kinds;

pub(crate) fn register(kinds: &mut Kinds) {
    kinds.insert(ZONE.token, &zone::ZoneKind);
    kinds.insert(RECORD.token, &record::RecordKind);
}

/// A domain name as DNS compares it: lowercase, without the trailing dot, with Route 53's
/// octal escapes (`\052` for `*`) decoded.
pub(crate) fn canonical_name(name: &str) -> String {
    let name = name.strip_suffix('.').unwrap_or(name);
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::with_capacity(name.len());
    let mut i = 0;
    while i < chars.len() {
        let escape: Option<String> = (chars[i] == '\\').then(|| chars.iter().skip(i + 1).take(3).collect());
        match escape.filter(|d| d.len() == 3 && d.chars().all(|c| ('0'..='7').contains(&c))).and_then(|d| u8::from_str_radix(&d, 8).ok()) {
            Some(code) => {
                out.push(char::from(code));
                i += 4;
            }
            None => {
                out.push(chars[i]);
                i += 1;
            }
        }
    }
    out.to_ascii_lowercase()
}

/// A domain name as Route 53 is sent it: canonical, with the trailing dot.
pub(crate) fn fqdn(name: &str) -> String {
    format!("{}.", canonical_name(name))
}

/// A hosted zone id without the `/hostedzone/` prefix Route 53 answers with.
pub(crate) fn bare_zone_id(id: &str) -> &str {
    id.strip_prefix("/hostedzone/").unwrap_or(id)
}

/// What is wrong with `name` as a DNS name, if anything: at most 253 characters without
/// the trailing dot, labels of 1 to 63 letters, digits, `-` or `_` not starting or
/// ending with `-`; a record's name may start with the wildcard label `*`.
pub(crate) fn dns_name_problem(name: &str, wildcard: bool) -> Option<&'static str> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > 253 {
        return Some("be a domain name of 1 to 253 characters, such as example.com");
    }
    for (i, label) in name.split('.').enumerate() {
        if wildcard && i == 0 && label == "*" {
            continue;
        }
        let chars_ok = label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if label.is_empty() || label.len() > 63 || !chars_ok || label.starts_with('-') || label.ends_with('-') {
            return Some(if wildcard {
                "be a domain name such as www.example.com: labels of 1 to 63 letters, digits, '-' or '_' separated by dots, the first of which may be the wildcard *"
            } else {
                "be a domain name such as example.com: labels of 1 to 63 letters, digits, '-' or '_' separated by dots"
            });
        }
    }
    None
}

/// Checks the literal DNS name in input `key`.
pub(crate) fn check_dns_name(decl: &Decl, key: &str, wildcard: bool, out: &mut Vec<CheckFailure>) {
    if let Some(v) = decl.value(key) {
        match v.as_str().map(|s| dns_name_problem(s, wildcard)) {
            Some(None) => {}
            Some(Some(expected)) => out.push(CheckFailure::new(key, Some(v), expected)),
            None => out.push(CheckFailure::new(key, Some(v), "be a domain name (a string)")),
        }
    }
}

/// Whether `id` looks like a hosted zone id (`Z...`, uppercase letters and digits),
/// with or without the `/hostedzone/` prefix.
pub(crate) fn is_zone_id(id: &str) -> bool {
    let id = bare_zone_id(id);
    (1..=32).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

/// The schema's diff, less the changes that `normal` says are none: it maps a property's
/// value (absent: `None`) to the form in which equal values are equal.
pub(crate) fn normalized_diff(req: &DiffRequest<'_>, normal: fn(&str, Option<&Value>) -> Option<Value>) -> DiffResult {
    let mut diff = schema_diff(req);
    diff.changes.retain(|c| !(c.known && normal(&c.name, c.old.as_ref()) == normal(&c.name, c.new.as_ref())));
    diff
}

/// A string value's canonical domain name; anything else as it is.
pub(crate) fn normal_name(v: Option<&Value>) -> Option<Value> {
    v.map(|v| v.as_str().map_or_else(|| v.clone(), |s| Value::from(canonical_name(s))))
}

/// The start of every `CallerReference` Cairn sends for `urn`: a stable hash of the URN,
/// so that a zone whose create answer was lost, and which never got its tags, is still
/// found by its look-up.
pub(crate) fn caller_mark(urn: &Urn) -> String {
    // FNV-1a: stable across processes and versions, unlike the standard library's hasher.
    let hash = urn.as_str().bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    format!("cairn-{hash:016x}-")
}

/// A `CallerReference` for one `CreateHostedZone` call: [`caller_mark`] plus a part
/// unique to the call, as Route 53 requires (a repeat with the same reference is refused
/// rather than making a second zone).
pub(crate) fn caller_reference(urn: &Urn) -> String {
    format!("{}{}", caller_mark(urn), crate::kind::client_token(urn))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_compare_as_dns_does() {
        assert_eq!(canonical_name("Example.COM."), "example.com");
        assert_eq!(canonical_name("\\052.example.com."), "*.example.com");
        assert_eq!(canonical_name("a\\05"), "a\\05");
        assert_eq!(fqdn("www.example.com"), "www.example.com.");
        assert_eq!(bare_zone_id("/hostedzone/Z123"), "Z123");
    }

    #[test]
    fn dns_names_are_checked_label_by_label() {
        assert_eq!(dns_name_problem("example.com.", false), None);
        assert_eq!(dns_name_problem("_acme-challenge.example.com", true), None);
        assert_eq!(dns_name_problem("*.example.com", true), None);
        assert!(dns_name_problem("*.example.com", false).is_some());
        assert!(dns_name_problem("bad name.com", false).is_some());
        assert!(dns_name_problem("-a.com", false).is_some());
        assert!(dns_name_problem("a..com", false).is_some());
        assert!(dns_name_problem(&"a".repeat(64), false).is_some());
    }

    #[test]
    fn caller_references_are_unique_and_carry_the_urn_mark() {
        let urn = Urn::new("dev", "aws:route53:Zone", "shop");
        let (a, b) = (caller_reference(&urn), caller_reference(&urn));
        assert_ne!(a, b);
        assert!(a.starts_with(&caller_mark(&urn)) && a.len() <= 128, "{a}");
        assert_ne!(caller_mark(&urn), caller_mark(&Urn::new("dev", "aws:route53:Zone", "blog")));
    }
}
