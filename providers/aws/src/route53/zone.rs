//! `aws:route53:Zone`: a public hosted zone, the DNS records of one domain.
//!
//! The domain name forces a replacement (a new zone, with new name servers); the comment
//! and tags change in place. Route 53 makes each zone's SOA and NS records itself; the
//! zone's `name_servers` are what the domain's registrar must delegate to.

use async_trait::async_trait;
use aws_sdk_route53::types::{HostedZone, HostedZoneConfig, Tag, TagResourceType};
use cairn_sdk::provider::{DiffRequest, DiffResult};
use cairn_sdk::{CheckFailure, Decl, Observed, Props, ProviderError, Tags, Urn};
use serde_json::Value;

use super::{bare_zone_id, caller_mark, caller_reference, canonical_name, check_dns_name, normal_name, normalized_diff};
use crate::error::{aws_error, missing, no_hint, or_missing};
use crate::kind::{finish, paginate, Clients, Kind};
use crate::tags::{self, Retag};

cairn_sdk::resource! {
    /// A public hosted zone: `Zone::new("shop").name("example.com")`. Its `zone_id()`
    /// is what a [`Record`](super::Record) goes in.
    pub struct Zone {
        token: "aws:route53:Zone",
        schema: ZONE,
        inputs: ZoneInputs,
        /// A declared hosted zone's outputs.
        handle: ZoneRef,
        validate: validate,
    }
    inputs {
        /// The domain, such as `example.com`; a trailing dot and letter case make no
        /// difference (forces replacement).
        name: String = required().forces_replacement(),
        /// What the zone is for, up to 256 characters. Changed in place.
        comment: String,
        /// Tags of your own (Cairn adds `Name`, `cairn:stack` and `cairn:urn`).
        tags: Tags,
    }
    outputs {
        /// The hosted zone id, such as `Z0123456789ABCDEFGHIJ`, without the
        /// `/hostedzone/` prefix: a record's `zone_id`.
        zone_id: String,
        /// The name servers to delegate the domain to at its registrar.
        name_servers: Vec<String>,
    }
    echoes {
        /// The domain.
        name: String,
    }
}

fn validate(decl: &Decl, out: &mut Vec<CheckFailure>) {
    check_dns_name(decl, "name", false, out);
    if let Some(v) = decl.value("comment") {
        if !v.as_str().is_some_and(|c| (1..=256).contains(&c.chars().count())) {
            out.push(CheckFailure::new("comment", Some(v), "be 1 to 256 characters (leave it unset for no comment)"));
        }
    }
}

/// The hosted zone's operations.
#[derive(Debug)]
pub(crate) struct ZoneKind;

const MISSING: &[&str] = &["NoSuchHostedZone"];

fn hint(code: &str, want: &ZoneInputs) -> Option<String> {
    let name = want.name.as_deref().unwrap_or("the domain");
    match code {
        "HostedZoneNotEmpty" => Some(
            "the hosted zone still has record sets besides its own SOA and NS records; Cairn deletes the aws:route53:Record resources \
             it manages before their zone, so these were made outside this stack: delete them (or declare them as Records), then run again"
                .to_owned(),
        ),
        "InvalidDomainName" => Some(format!("{name} is not a domain Route 53 accepts for a hosted zone; check name")),
        "TooManyHostedZones" => {
            Some("the account's quota of hosted zones is used up; delete unused zones or ask AWS for a higher quota".to_owned())
        }
        "DelegationSetNotAvailable" => Some(format!(
            "Route 53 has no name servers left to give a new zone for {name} (too many zones of this name were made and deleted); \
             wait, or ask AWS support"
        )),
        _ => None,
    }
}

/// Changes the zone's tags: `add` to set, `remove` to delete. Route 53 takes at most 10
/// of each per call.
async fn change_tags(aws: &Clients, id: &str, add: Vec<(String, String)>, remove: Vec<String>) -> Result<(), ProviderError> {
    let add: Vec<Tag> = add.into_iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect();
    let (mut add, mut remove) = (add.chunks(10), remove.chunks(10));
    loop {
        let (a, r) = (add.next(), remove.next());
        if a.is_none() && r.is_none() {
            return Ok(());
        }
        aws.route53
            .change_tags_for_resource()
            .resource_type(TagResourceType::Hostedzone)
            .resource_id(id)
            .set_add_tags(a.map(<[Tag]>::to_vec))
            .set_remove_tag_keys(r.map(<[String]>::to_vec))
            .send()
            .await
            .map_err(|e| aws_error("tagging the hosted zone", e, no_hint))?;
    }
}

/// The zone's tags as pairs; `None` when the zone is gone.
async fn tags_of(aws: &Clients, id: &str) -> Result<Option<Vec<(String, String)>>, ProviderError> {
    let got = aws.route53.list_tags_for_resource().resource_type(TagResourceType::Hostedzone).resource_id(id).send().await;
    let Some(out) = or_missing(got, MISSING, "reading the hosted zone's tags", no_hint)? else { return Ok(None) };
    let tags = out.resource_tag_set().map(|s| s.tags()).unwrap_or_default();
    Ok(Some(tags.iter().filter_map(|t| Some((t.key()?.to_owned(), t.value().unwrap_or_default().to_owned()))).collect()))
}

#[async_trait]
impl Kind for ZoneKind {
    fn diff(&self, req: &DiffRequest<'_>) -> DiffResult {
        normalized_diff(req, |name, v| if name == "name" { normal_name(v) } else { v.cloned() })
    }

    async fn create(&self, aws: &Clients, urn: &Urn, inputs: &Props) -> Result<Observed, ProviderError> {
        let want = ZoneInputs::from_props(inputs)?;
        let config = want.comment.as_ref().map(|c| HostedZoneConfig::builder().comment(c).build());
        let out = aws
            .once
            .route53
            .create_hosted_zone()
            .name(want.name.as_deref().unwrap_or_default())
            .caller_reference(caller_reference(urn))
            .set_hosted_zone_config(config)
            .send()
            .await
            .map_err(|e| aws_error("creating the hosted zone", e, |c| hint(c, &want)))?;
        let id = out.hosted_zone().map(|z| bare_zone_id(z.id())).unwrap_or_default().to_owned();
        finish(&id, async {
            // CreateHostedZone takes no tags: they follow at once.
            let tags: Vec<(String, String)> = tags::wanted(urn, want.tags.as_ref()).into_iter().collect();
            change_tags(aws, &id, tags.clone(), Vec::new()).await?;
            // Its answer holds the zone and its name servers, and the tags are the ones
            // just set: nothing to read back (on the way to the zone's records).
            let zone = out.hosted_zone().ok_or_else(|| ProviderError::uncertain("the create's answer had no zone"))?;
            let name_servers = out.delegation_set().map(|d| d.name_servers().to_vec()).unwrap_or_default();
            Ok(observe(urn, zone, &tags, name_servers, inputs))
        })
        .await
    }

    async fn read(&self, aws: &Clients, urn: &Urn, id: &str, recorded: &Props) -> Result<Option<Observed>, ProviderError> {
        let got = aws.route53.get_hosted_zone().id(id).send().await;
        let Some(out) = or_missing(got, MISSING, "reading the hosted zone", no_hint)? else { return Ok(None) };
        let Some(zone) = out.hosted_zone() else { return Ok(None) };
        let Some(tags) = tags_of(aws, id).await? else { return Ok(None) };
        let name_servers = out.delegation_set().map(|d| d.name_servers().to_vec()).unwrap_or_default();
        Ok(Some(observe(urn, zone, &tags, name_servers, recorded)))
    }

    async fn update(&self, aws: &Clients, urn: &Urn, id: &str, old: &Props, new: &Props) -> Result<Observed, ProviderError> {
        let (old, want) = (ZoneInputs::from_props(old)?, ZoneInputs::from_props(new)?);
        if old.comment != want.comment {
            // No comment in the request removes the zone's comment.
            aws.route53
                .update_hosted_zone_comment()
                .id(id)
                .set_comment(want.comment.clone())
                .send()
                .await
                .map_err(|e| aws_error("changing the hosted zone's comment", e, |c| hint(c, &want)))?;
        }
        let Retag { remove, set } = Retag::new(urn, old.tags.as_ref(), want.tags.as_ref());
        change_tags(aws, id, set, remove).await?;
        self.read_updated(aws, urn, id, new).await
    }

    async fn delete(&self, aws: &Clients, _urn: &Urn, id: &str) -> Result<(), ProviderError> {
        let unknown = ZoneInputs::default();
        let deleted = aws.route53.delete_hosted_zone().id(id).send().await;
        or_missing(deleted, MISSING, "deleting the hosted zone", |c| hint(c, &unknown))?;
        Ok(())
    }

    async fn lookup(&self, aws: &Clients, urn: &Urn, created_with: &Props) -> Result<Vec<Observed>, ProviderError> {
        let name = ZoneInputs::from_props(created_with).ok().and_then(|w| w.name).map(|n| canonical_name(&n));
        let mark = caller_mark(urn);
        let zones = paginate(|marker| async move {
            let page = aws
                .route53
                .list_hosted_zones()
                .set_marker(marker)
                .send()
                .await
                .map_err(|e| aws_error("looking up hosted zones", e, no_hint))?;
            Ok((page.hosted_zones().to_vec(), page.next_marker().filter(|_| page.is_truncated()).map(str::to_owned)))
        })
        .await?;
        let mut found = Vec::new();
        for zone in &zones {
            if name.as_ref().is_some_and(|n| *n != canonical_name(zone.name())) {
                continue;
            }
            let id = bare_zone_id(zone.id());
            // The caller reference finds a zone whose create stopped before its tags.
            let ours = zone.caller_reference().starts_with(&mark)
                || match aws.route53.list_tags_for_resource().resource_type(TagResourceType::Hostedzone).resource_id(id).send().await {
                    Ok(out) => {
                        let tags = out.resource_tag_set().map(|s| s.tags()).unwrap_or_default();
                        tags::is_tagged(urn, tags.iter().filter_map(|t| Some((t.key()?, t.value().unwrap_or_default()))))
                    }
                    Err(e) if missing(&e, MISSING) => false,
                    Err(e) => return Err(aws_error("reading a hosted zone's tags", e, no_hint)),
                };
            if ours {
                found.extend(self.read(aws, urn, id, created_with).await?);
            }
        }
        Ok(found)
    }
}

/// The zone as the inputs and outputs Cairn records. The name keeps the form `recorded`
/// gives it (`example.com` or `example.com.`) when it is the same name.
fn observe(urn: &Urn, zone: &HostedZone, tags: &[(String, String)], name_servers: Vec<String>, recorded: &Props) -> Observed {
    let recorded = ZoneInputs::from_props(recorded).unwrap_or_default();
    let id = bare_zone_id(zone.id());
    let name = match recorded.name {
        Some(n) if canonical_name(&n) == canonical_name(zone.name()) => n,
        _ => canonical_name(zone.name()),
    };
    let inputs = ZoneInputs {
        name: Some(name),
        comment: zone.config().and_then(|c| c.comment()).filter(|c| !c.is_empty()).map(str::to_owned),
        tags: tags::observed(urn, tags.iter().map(|(k, v)| (k, v))),
    };
    let servers = Value::from(name_servers);
    Observed::new(id, inputs.to_props(), [("zone_id", Value::from(id)), ("name_servers", servers)])
}
