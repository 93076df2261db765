//! `aws:autoscaling:Group`: an Auto Scaling group that launches instances from a launch
//! template into subnets.
//!
//! Only the name forces a replacement. Sizes, the launch template and its version, the
//! subnets, health checks and tags change in place, on the same group: a new desired
//! capacity (what an event handler typically sets) is one `UpdateAutoScalingGroup` call.
//! Left unset, the desired capacity is AWS's to manage (it starts at `min_size`, scaling
//! policies move it) and Cairn never changes it back.
//!
//! Cairn checks `min_size <= desired_capacity <= max_size` itself, before any call and
//! again at apply time once values from other resources are known, because some
//! endpoints accept anything. It also refuses to create a group whose name is taken,
//! even where the endpoint would silently replace the other group (moto does).
//!
//! Delete force-deletes the group, terminating its instances, and waits until it is
//! gone: 10 minutes at most by default (see `CAIRN_AWS_WAIT_TIMEOUT`).
//!
//! Tags are propagated to the instances at launch. Cairn adds `Name` (the logical name,
//! unless you set one), `cairn:stack` and `cairn:urn`.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_autoscaling::types::{AutoScalingGroup, Filter, LaunchTemplateSpecification, Tag, TagDescription};
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use cairn_sdk::schema::{Default, Property, ResourceType};
use cairn_sdk::{typed_handle, CheckFailure, Decl, Input, Observed, Props, ProviderError, Urn};
use serde_json::Value;

use crate::error::{aws_error, code};
use crate::kind::{Clients, Kind};
use crate::tags;
use crate::wait::{self, Poll};

/// The schema of `aws:autoscaling:Group`.
pub static GROUP: ResourceType = ResourceType::new(
    "aws:autoscaling:Group",
    &[
        Property::input("name").auto_name().forces_replacement(),
        Property::input("launch_template_id").required(),
        Property::input("launch_template_version").default(Default::Str("$Default")),
        Property::input("subnet_ids").required(),
        Property::input("min_size").required(),
        Property::input("max_size").required(),
        Property::optional_computed("desired_capacity"),
        Property::input("health_check_type").default(Default::Str("EC2")),
        Property::input("health_check_grace_period").default(Default::Int(300)),
        Property::input("tags"),
        Property::output("arn"),
    ],
)
.with_validation(validate);

/// How long a delete waits for the group to be gone, unless `CAIRN_AWS_WAIT_TIMEOUT`
/// says otherwise.
const DELETE_BOUND: Duration = Duration::from_secs(10 * 60);
/// The health check types AWS knows; a group may combine them, comma-separated.
const HEALTH_CHECKS: [&str; 4] = ["EC2", "ELB", "EBS", "VPC_LATTICE"];
/// The longest group name AWS accepts.
const NAME_MAX: usize = 255;
/// What the engine appends to a logical name to make a physical one: `-` and 7 hex digits.
const AUTO_SUFFIX: usize = 8;
/// A group's status while AWS deletes it.
const DELETING: &str = "Delete in progress";

/// A size as far as it is known.
#[derive(Clone, Copy, Debug)]
enum Size {
    Known(i64),
    Unset,
    Later,
}

impl Size {
    fn known(self) -> Option<i64> {
        match self {
            Size::Known(n) => Some(n),
            _ => None,
        }
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Size::Known(n) => write!(f, "{n}"),
            Size::Unset => f.write_str("unset"),
            Size::Later => f.write_str("known after apply"),
        }
    }
}

/// The property at fault and what it must be, when `min <= desired <= max` fails for the
/// values known.
fn size_problem(min: Size, desired: Size, max: Size) -> Option<(&'static str, String)> {
    let values = format!("min_size {min}, desired_capacity {desired}, max_size {max}");
    if let (Some(lo), Some(hi)) = (min.known(), max.known()) {
        if lo > hi {
            return Some(("min_size", format!("be at most max_size ({values}); lower min_size or raise max_size")));
        }
    }
    let d = desired.known()?;
    if max.known().is_some_and(|hi| d > hi) {
        return Some((
            "desired_capacity",
            format!("be at most max_size ({values}); raise max_size to at least {d} or lower desired_capacity"),
        ));
    }
    if min.known().is_some_and(|lo| d < lo) {
        return Some((
            "desired_capacity",
            format!("be at least min_size ({values}); lower min_size to at most {d} or raise desired_capacity"),
        ));
    }
    None
}

fn valid_version(v: &Value) -> bool {
    match v {
        Value::String(s) => s == "$Latest" || s == "$Default" || s.parse::<u64>().is_ok_and(|n| n >= 1),
        Value::Number(n) => n.as_u64().is_some_and(|n| n >= 1),
        _ => false,
    }
}

fn validate(decl: &Decl, out: &mut Vec<CheckFailure>) {
    match decl.value("name") {
        Some(v) if !v.as_str().is_some_and(|s| (1..=NAME_MAX).contains(&s.chars().count())) => {
            out.push(CheckFailure::new("name", Some(v), "be a string of 1 to 255 characters"));
        }
        None if decl.get("name").is_none() && decl.name().chars().count() + AUTO_SUFFIX > NAME_MAX => {
            out.push(CheckFailure::new(
                "name",
                None,
                "be set, as the generated '<logical name>-<7 hex digits>' would be longer than 255 characters; or use a logical name of at most 247"
            ));
        }
        _ => {}
    }
    let mut size = |key: &str| -> Size {
        match (decl.get(key), decl.value(key)) {
            (None, _) => Size::Unset,
            (Some(_), None) => Size::Later,
            (Some(_), Some(v)) => match v.as_i64().filter(|n| *n >= 0) {
                Some(n) => Size::Known(n),
                None => {
                    out.push(CheckFailure::new(key, Some(v), "be a whole number, 0 or more"));
                    Size::Later
                }
            },
        }
    };
    let (min, desired, max) = (size("min_size"), size("desired_capacity"), size("max_size"));
    if let Some((key, expected)) = size_problem(min, desired, max) {
        out.push(CheckFailure::new(key, decl.value(key), expected));
    }
    if let Some(v) = decl.value("launch_template_version") {
        if !valid_version(v) {
            out.push(CheckFailure::new("launch_template_version", Some(v), "be a version number such as \"3\", \"$Latest\" or \"$Default\""));
        }
    }
    if let Some(v) = decl.value("health_check_type") {
        let ok = v.as_str().is_some_and(|s| s.split(',').all(|t| HEALTH_CHECKS.contains(&t.trim())));
        if !ok {
            out.push(CheckFailure::new("health_check_type", Some(v), "be \"EC2\" or \"ELB\" (or \"EBS\", \"VPC_LATTICE\"; several comma-separated)"));
        }
    }
    if let Some(v) = decl.value("health_check_grace_period") {
        if v.as_i64().is_none_or(|n| n < 0) {
            out.push(CheckFailure::new("health_check_grace_period", Some(v), "be a whole number of seconds, 0 or more"));
        }
    }
    if let Some(v) = decl.value("subnet_ids") {
        if !v.as_array().is_some_and(|ids| !ids.is_empty() && ids.iter().all(Value::is_string)) {
            out.push(CheckFailure::new("subnet_ids", Some(v), "be a non-empty list of subnet ids"));
        }
    }
}

/// An Auto Scaling group:
/// `Group::new("web").launch_template_id(lt.id()).subnet_ids([a.id(), b.id()]).min_size(1).max_size(4)`.
#[derive(Debug, Clone)]
pub struct Group(Decl);

typed_handle! {
    /// A declared group's outputs.
    pub struct GroupRef {
        /// The group name (its id).
        name: String,
        /// The group ARN, for scaling policies and alarms.
        arn: String,
    }
}

impl Group {
    /// A group with logical name `name`.
    pub fn new(name: &str) -> Self {
        Group(Decl::new(&GROUP, name))
    }

    /// The physical name, 1 to 255 characters; by default `<logical name>-<suffix>`, new
    /// on each replacement (forces replacement).
    #[must_use]
    pub fn name(mut self, name: impl Into<Input<String>>) -> Self {
        self.0.set("name", name);
        self
    }

    /// The launch template its instances are launched from, `lt-...`: usually a launch
    /// template's `id()` output.
    #[must_use]
    pub fn launch_template_id(mut self, id: impl Into<Input<String>>) -> Self {
        self.0.set("launch_template_id", id);
        self
    }

    /// Which version of the launch template: a number such as `"3"`, `"$Latest"` or
    /// `"$Default"` (the default).
    #[must_use]
    pub fn launch_template_version(mut self, version: impl Into<Input<String>>) -> Self {
        self.0.set("launch_template_version", version);
        self
    }

    /// The subnets to launch instances into (its VPC zone identifier); literals or
    /// subnets' `id()` outputs. Changed in place.
    #[must_use]
    pub fn subnet_ids(mut self, ids: impl Into<Input<Vec<String>>>) -> Self {
        self.0.set("subnet_ids", ids);
        self
    }

    /// The fewest instances the group may have.
    #[must_use]
    pub fn min_size(mut self, size: impl Into<Input<u32>>) -> Self {
        self.0.set("min_size", size);
        self
    }

    /// The most instances the group may have.
    #[must_use]
    pub fn max_size(mut self, size: impl Into<Input<u32>>) -> Self {
        self.0.set("max_size", size);
        self
    }

    /// How many instances it should run now, from `min_size` to `max_size`. Changed in
    /// place. Unset, AWS starts at `min_size` and Cairn leaves the number to scaling
    /// policies.
    #[must_use]
    pub fn desired_capacity(mut self, capacity: impl Into<Input<u32>>) -> Self {
        self.0.set("desired_capacity", capacity);
        self
    }

    /// How instance health is judged: `"EC2"` (the default) or `"ELB"` (the load
    /// balancer's checks as well).
    #[must_use]
    pub fn health_check_type(mut self, kind: impl Into<Input<String>>) -> Self {
        self.0.set("health_check_type", kind);
        self
    }

    /// Seconds a new instance is given before its health counts (default 300).
    #[must_use]
    pub fn health_check_grace_period(mut self, seconds: impl Into<Input<u32>>) -> Self {
        self.0.set("health_check_grace_period", seconds);
        self
    }

    /// Tags of your own, propagated to the instances at launch (Cairn adds `Name`,
    /// `cairn:stack` and `cairn:urn`).
    #[must_use]
    pub fn tags<K: Into<String>, V: Into<String>>(mut self, tags: impl IntoIterator<Item = (K, V)>) -> Self {
        self.0.set("tags", tags::to_value(tags));
        self
    }
}

cairn_sdk::impl_resource!(Group => GroupRef);

/// The group's operations.
#[derive(Debug)]
pub(crate) struct GroupKind;

fn text<'a>(inputs: &'a Props, key: &str) -> Option<&'a str> {
    inputs.get(key).and_then(Value::as_str)
}

fn int(inputs: &Props, key: &str) -> Option<i32> {
    inputs.get(key).and_then(Value::as_i64).and_then(|n| i32::try_from(n).ok())
}

/// Checks the sizes once every value is known, before any call.
fn check_sizes(inputs: &Props) -> Result<(), ProviderError> {
    let size = |key| inputs.get(key).and_then(Value::as_i64).map_or(Size::Unset, Size::Known);
    match size_problem(size("min_size"), size("desired_capacity"), size("max_size")) {
        Some((key, expected)) => Err(ProviderError::failed(format!("{key} must {expected}"))),
        None => Ok(()),
    }
}

fn launch_template(inputs: &Props) -> LaunchTemplateSpecification {
    let version = match inputs.get("launch_template_version") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => "$Default".to_owned(),
    };
    LaunchTemplateSpecification::builder()
        .set_launch_template_id(text(inputs, "launch_template_id").map(str::to_owned))
        .version(version)
        .build()
}

/// The subnets as AWS takes them: `subnet-a,subnet-b`.
fn zone_identifier(inputs: &Props) -> String {
    let ids = inputs.get("subnet_ids").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    ids.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(",")
}

/// The tags the group should carry: the user's, `Name` (the logical name unless set) and
/// Cairn's.
fn wanted_tags(urn: &Urn, inputs: &Props) -> std::collections::HashMap<String, String> {
    let mut all = tags::with_cairn_tags(urn, inputs);
    all.entry("Name".to_owned()).or_insert_with(|| urn.name().to_owned());
    all
}

fn tag(group: &str, key: &str, value: Option<&str>) -> Tag {
    Tag::builder()
        .resource_id(group)
        .resource_type("auto-scaling-group")
        .key(key)
        .set_value(value.map(str::to_owned))
        .propagate_at_launch(true)
        .build()
}

/// Whether an error means the group does not exist: AWS answers `ValidationError` with
/// "... not found".
fn is_missing<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> bool {
    code(e) == Some("ValidationError") && e.message().is_some_and(|m| m.to_ascii_lowercase().contains("not found"))
}

fn hint(inputs: &Props) -> impl Fn(&str) -> Option<String> + '_ {
    move |code| match code {
        "AlreadyExists" => Some(format!(
            "an Auto Scaling group named {} already exists; choose another name, or leave the name unset and Cairn will pick a unique one",
            text(inputs, "name").unwrap_or_default()
        )),
        "LimitExceeded" => Some(
            "the account's quota of Auto Scaling groups (or of instances) is used up; delete groups you no longer need or ask AWS for a higher quota"
                .to_owned(),
        ),
        "ResourceInUse" | "ScalingActivityInProgress" => {
            Some("the group is busy with a scaling activity; wait for it to finish, then run again".to_owned())
        }
        "InvalidLaunchTemplateId.NotFound" | "InvalidLaunchTemplateId.Malformed" => Some(format!(
            "launch template {} does not exist (deleted outside Cairn? run refresh); check launch_template_id",
            text(inputs, "launch_template_id").unwrap_or_default()
        )),
        "InvalidSubnetID.NotFound" => Some(format!(
            "a subnet of {} does not exist (deleted outside Cairn? run refresh); check subnet_ids",
            zone_identifier(inputs)
        )),
        _ => None,
    }
}

/// The group named `name`, if it exists.
async fn describe(aws: &Clients, name: &str) -> Result<Option<AutoScalingGroup>, ProviderError> {
    let out = aws
        .autoscaling
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(name)
        .send()
        .await
        .map_err(|e| aws_error("reading the group", e, |_| None))?;
    Ok(out.auto_scaling_groups().iter().find(|g| g.auto_scaling_group_name() == Some(name)).cloned())
}

/// Brings the group's tags from what `old` asks for to what `new` asks for.
async fn retag(aws: &Clients, urn: &Urn, name: &str, old: &Props, new: &Props) -> Result<(), ProviderError> {
    let (before, after) = (wanted_tags(urn, old), wanted_tags(urn, new));
    let gone: Vec<Tag> = before.keys().filter(|k| !after.contains_key(*k)).map(|k| tag(name, k, None)).collect();
    if !gone.is_empty() {
        aws.autoscaling
            .delete_tags()
            .set_tags(Some(gone))
            .send()
            .await
            .map_err(|e| aws_error("removing tags", e, |_| None))?;
    }
    let changed: Vec<Tag> =
        after.iter().filter(|(k, v)| before.get(*k) != Some(*v)).map(|(k, v)| tag(name, k, Some(v))).collect();
    if !changed.is_empty() {
        aws.autoscaling
            .create_or_update_tags()
            .set_tags(Some(changed))
            .send()
            .await
            .map_err(|e| aws_error("tagging the group", e, |_| None))?;
    }
    Ok(())
}

#[async_trait]
impl Kind for GroupKind {
    async fn create(&self, aws: &Clients, urn: &Urn, inputs: &Props) -> Result<Observed, ProviderError> {
        check_sizes(inputs)?;
        let name = text(inputs, "name").unwrap_or_default();
        // AWS refuses a taken name; some endpoints replace the other group instead.
        if describe(aws, name).await?.is_some() {
            return Err(ProviderError::failed(format!(
                "an Auto Scaling group named {name} already exists; choose another name, or leave the name unset and Cairn will pick a unique one"
                )));
        }
        let tags: Vec<Tag> = wanted_tags(urn, inputs).iter().map(|(k, v)| tag(name, k, Some(v))).collect();
        aws.once
            .autoscaling
            .create_auto_scaling_group()
            .auto_scaling_group_name(name)
            .launch_template(launch_template(inputs))
            .set_min_size(int(inputs, "min_size"))
            .set_max_size(int(inputs, "max_size"))
            .set_desired_capacity(int(inputs, "desired_capacity"))
            .vpc_zone_identifier(zone_identifier(inputs))
            .set_health_check_type(text(inputs, "health_check_type").map(str::to_owned))
            .set_health_check_grace_period(int(inputs, "health_check_grace_period"))
            .set_tags(Some(tags))
            .send()
            .await
            .map_err(|e| aws_error("creating the group", e, hint(inputs)))?;
        self.read_created(aws, urn, name, inputs).await
    }

    async fn read(&self, aws: &Clients, urn: &Urn, id: &str, _recorded: &Props) -> Result<Option<Observed>, ProviderError> {
        Ok(describe(aws, id).await?.map(|g| observe(urn, &g)))
    }

    async fn update(&self, aws: &Clients, urn: &Urn, id: &str, old: &Props, new: &Props) -> Result<Observed, ProviderError> {
        check_sizes(new)?;
        let changed = |key: &str| old.get(key) != new.get(key);
        let mut call = aws.autoscaling.update_auto_scaling_group().auto_scaling_group_name(id);
        let mut any = false;
        if changed("launch_template_id") || changed("launch_template_version") {
            call = call.launch_template(launch_template(new));
            any = true;
        }
        if changed("subnet_ids") {
            call = call.vpc_zone_identifier(zone_identifier(new));
            any = true;
        }
        if changed("health_check_type") {
            call = call.set_health_check_type(text(new, "health_check_type").map(str::to_owned));
            any = true;
        }
        // A size no longer set is left as it is: an unset desired capacity is AWS's.
        for key in ["min_size", "max_size", "desired_capacity", "health_check_grace_period"] {
            if let Some(n) = int(new, key).filter(|_| changed(key)) {
                call = match key {
                    "min_size" => call.min_size(n),
                    "max_size" => call.max_size(n),
                    "desired_capacity" => call.desired_capacity(n),
                    _ => call.health_check_grace_period(n),
                };
                any = true;
            }
        }
        if any {
            call.send().await.map_err(|e| {
                if is_missing(&e) {
                    ProviderError::not_found(format!("group {id} is gone (deleted outside Cairn? run refresh)"))
                } else {
                    aws_error("updating the group", e, hint(new))
                }
            })?;
        }
        retag(aws, urn, id, old, new).await?;
        self.read_updated(aws, urn, id, new).await
    }

    async fn delete(&self, aws: &Clients, _urn: &Urn, id: &str) -> Result<(), ProviderError> {
        let asked = aws.autoscaling.delete_auto_scaling_group().auto_scaling_group_name(id).force_delete(true).send().await;
        match asked {
            Ok(_) => {}
            Err(e) if is_missing(&e) => return Ok(()),
            Err(e) => {
                // Already being deleted (an earlier run that gave up waiting): wait again.
                let deleting = describe(aws, id).await.ok().flatten().is_some_and(|g| g.status() == Some(DELETING));
                if !deleting {
                    return Err(aws_error("deleting the group", e, |_| None));
                }
            }
        }
        wait::until("deleted", DELETE_BOUND, || async {
            Ok(match describe(aws, id).await? {
                None => Poll::Done(()),
                Some(g) => Poll::Waiting(g.status().unwrap_or("still listed").to_owned()),
            })
        })
        .await
    }

    async fn lookup(&self, aws: &Clients, urn: &Urn) -> Result<Vec<Observed>, ProviderError> {
        let mut found = Vec::new();
        let mut token = None;
        loop {
            let page = aws
                .autoscaling
                .describe_auto_scaling_groups()
                .filters(Filter::builder().name(format!("tag:{}", tags::URN)).values(urn.as_str()).build())
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| aws_error("looking up groups", e, |_| None))?;
            // A group being deleted is on its way out, not a copy to adopt.
            found.extend(
                page.auto_scaling_groups()
                    .iter()
                    .filter(|g| g.status() != Some(DELETING) && is_tagged(urn, g.tags()))
                    .map(|g| observe(urn, g)),
            );
            match page.next_token() {
                Some(t) => token = Some(t.to_owned()),
                None => break,
            }
        }
        Ok(found)
    }
}

fn is_tagged(urn: &Urn, found: &[TagDescription]) -> bool {
    found.iter().any(|t| t.key() == Some(tags::URN) && t.value() == Some(urn.as_str()))
}

/// The group as the inputs and outputs Cairn records.
fn observe(urn: &Urn, g: &AutoScalingGroup) -> Observed {
    let name = g.auto_scaling_group_name().unwrap_or_default();
    let mut inputs = Props::new();
    inputs.insert("name", Value::from(name));
    if let Some(lt) = g.launch_template() {
        if let Some(id) = lt.launch_template_id() {
            inputs.insert("launch_template_id", Value::from(id));
        }
        if let Some(v) = lt.version() {
            inputs.insert("launch_template_version", Value::from(v));
        }
    }
    let subnets: Vec<Value> = g
        .vpc_zone_identifier()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(Value::from)
        .collect();
    inputs.insert("subnet_ids", Value::Array(subnets));
    for (key, n) in [
        ("min_size", g.min_size()),
        ("max_size", g.max_size()),
        ("desired_capacity", g.desired_capacity()),
        ("health_check_grace_period", g.health_check_grace_period()),
    ] {
        if let Some(n) = n {
            inputs.insert(key, Value::from(n));
        }
    }
    if let Some(t) = g.health_check_type() {
        inputs.insert("health_check_type", Value::from(t));
    }
    let pairs: Vec<(String, String)> = g
        .tags()
        .iter()
        .filter_map(|t| Some((t.key()?.to_owned(), t.value().unwrap_or_default().to_owned())))
        .filter(|(k, v)| !(k == "Name" && v == urn.name()))
        .collect();
    if let Some(t) = tags::observed_user_tags(pairs.iter().map(|(k, v)| (k, v))) {
        inputs.insert("tags", t);
    }
    let mut outputs = Props::new();
    outputs.insert("arn", Value::from(g.auto_scaling_group_arn().unwrap_or_default()));
    Observed { id: name.to_owned(), inputs, outputs }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_out_of_order_name_all_three_values_and_the_fix() {
        let (k, m) = size_problem(Size::Known(1), Size::Known(5), Size::Known(4)).unwrap_or_default();
        assert_eq!(k, "desired_capacity");
        assert_eq!(m, "be at most max_size (min_size 1, desired_capacity 5, max_size 4); raise max_size to at least 5 or lower desired_capacity");
        let (k, m) = size_problem(Size::Known(3), Size::Unset, Size::Known(2)).unwrap_or_default();
        assert_eq!((k, m.as_str()), ("min_size", "be at most max_size (min_size 3, desired_capacity unset, max_size 2); lower min_size or raise max_size"));
        let (k, m) = size_problem(Size::Known(2), Size::Known(1), Size::Later).unwrap_or_default();
        assert_eq!((k, m.as_str()), ("desired_capacity", "be at least min_size (min_size 2, desired_capacity 1, max_size known after apply); lower min_size to at most 1 or raise desired_capacity"));
        assert!(size_problem(Size::Known(0), Size::Known(0), Size::Known(0)).is_none());
        assert!(size_problem(Size::Known(1), Size::Later, Size::Known(3)).is_none());
    }
}
