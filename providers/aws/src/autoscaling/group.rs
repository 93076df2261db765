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
//! Target groups (`target_group_arns`, a set) are attached at creation and attached or
//! detached in place later; the group registers its instances with each.
//!
//! Tags are propagated to the instances at launch. Cairn adds `Name` (the logical name,
//! unless you set one), `cairn:stack` and `cairn:urn`.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_autoscaling::types::{AutoScalingGroup, Filter, LaunchTemplateSpecification, Tag};
use cairn_sdk::provider::{DiffRequest, DiffResult};
use cairn_sdk::schema::Default;
use cairn_sdk::{CheckFailure, Decl, Observed, Props, ProviderError, Tags, Urn};
use serde_json::Value;

use crate::error::{aws_error, missing, no_hint};
use crate::kind::{canonical, paginate, set_diff, Clients, Kind};
use crate::tags::{self, Retag};
use crate::wait;

cairn_sdk::resource! {
    /// An Auto Scaling group:
    /// `Group::new("web").launch_template_id(lt.id()).subnet_ids([a.id(), b.id()]).min_size(1).max_size(4)`.
    pub struct Group {
        token: "aws:autoscaling:Group",
        schema: GROUP,
        inputs: GroupInputs,
        /// A declared group's outputs.
        handle: GroupRef,
        validate: validate,
    }
    inputs {
        /// The physical name, 1 to 255 characters; by default `<logical name>-<suffix>`, new
        /// on each replacement (forces replacement).
        name: String = auto_name().forces_replacement(),
        /// The launch template its instances are launched from, `lt-...`: usually a launch
        /// template's `id()` output.
        launch_template_id: String = required(),
        /// Which version of the launch template: a number such as `"3"`, `"$Latest"` or
        /// `"$Default"` (the default).
        launch_template_version: String = default(Default::Str("$Default")),
        /// The subnets to launch instances into (its VPC zone identifier); literals or
        /// subnets' `id()` outputs. Changed in place.
        subnet_ids: Vec<String> = required(),
        /// The fewest instances the group may have.
        min_size: u32 = required(),
        /// The most instances the group may have.
        max_size: u32 = required(),
        /// How many instances it should run now, from `min_size` to `max_size`. Changed in
        /// place. Unset, AWS starts at `min_size` and Cairn leaves the number to scaling
        /// policies.
        desired_capacity: u32 = computed(),
        /// How instance health is judged: `"EC2"` (the default) or `"ELB"` (the load
        /// balancer's checks as well).
        health_check_type: String = default(Default::Str("EC2")),
        /// Seconds a new instance is given before its health counts (default 300).
        health_check_grace_period: u32 = default(Default::Int(300)),
        /// The load balancer target groups its instances are registered with, by ARN
        /// (target groups' `arn()` outputs). A set, attached and detached in place.
        target_group_arns: Vec<String>,
        /// Tags of your own, propagated to the instances at launch (Cairn adds `Name`,
        /// `cairn:stack` and `cairn:urn`).
        tags: Tags,
    }
    outputs {
        /// The group ARN, for scaling policies and alarms.
        arn: String,
    }
    echoes {
        /// The group name (its id).
        name: String,
    }
}

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
/// The most target groups one attach or detach call takes.
const TARGET_GROUPS_PER_CALL: usize = 10;

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
    if let Some(v) = decl.value("target_group_arns") {
        if !v.as_array().is_some_and(|arns| arns.iter().all(|a| a.as_str().is_some_and(|a| a.starts_with("arn:")))) {
            out.push(CheckFailure::new("target_group_arns", Some(v), "be a list of target group ARNs (arn:...), usually target groups' arn() outputs"));
        }
    }
}

/// The group's operations.
#[derive(Debug)]
pub(crate) struct GroupKind;

/// What AWS answers when the group does not exist: `ValidationError` with "... not found".
const MISSING: &[&str] = &["ValidationError: not found"];

/// A size as AWS takes it.
fn int(n: Option<u32>) -> Option<i32> {
    n.and_then(|n| i32::try_from(n).ok())
}

/// A size as AWS gives it.
fn size(n: Option<i32>) -> Option<u32> {
    n.and_then(|n| u32::try_from(n).ok())
}

/// Checks the sizes once every value is known, before any call.
fn check_sizes(want: &GroupInputs) -> Result<(), ProviderError> {
    let size = |n: Option<u32>| n.map_or(Size::Unset, |n| Size::Known(i64::from(n)));
    match size_problem(size(want.min_size), size(want.desired_capacity), size(want.max_size)) {
        Some((key, expected)) => Err(ProviderError::failed(format!("{key} must {expected}"))),
        None => Ok(()),
    }
}

fn launch_template(want: &GroupInputs) -> LaunchTemplateSpecification {
    LaunchTemplateSpecification::builder()
        .set_launch_template_id(want.launch_template_id.clone())
        .version(want.launch_template_version.as_deref().unwrap_or("$Default"))
        .build()
}

/// The subnets as AWS takes them: `subnet-a,subnet-b`.
fn zone_identifier(want: &GroupInputs) -> String {
    want.subnet_ids.as_deref().unwrap_or_default().join(",")
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

fn hint(code: &str, want: &GroupInputs) -> Option<String> {
    match code {
        "AlreadyExists" => Some(format!(
            "an Auto Scaling group named {} already exists; choose another name, or leave the name unset and Cairn will pick a unique one",
            want.name.as_deref().unwrap_or_default()
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
            want.launch_template_id.as_deref().unwrap_or_default()
        )),
        "InvalidSubnetID.NotFound" => Some(format!(
            "a subnet of {} does not exist (deleted outside Cairn? run refresh); check subnet_ids",
            zone_identifier(want)
        )),
        "TargetGroupNotFound" => Some(format!(
            "a target group of {:?} does not exist (deleted outside Cairn? run refresh); check target_group_arns",
            want.target_group_arns.as_deref().unwrap_or_default()
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
        .map_err(|e| aws_error("reading the group", e, no_hint))?;
    Ok(out.auto_scaling_groups().iter().find(|g| g.auto_scaling_group_name() == Some(name)).cloned())
}

/// Brings the group's tags from what the user's `old` tags ask for to what `new` ask for.
async fn retag(aws: &Clients, urn: &Urn, name: &str, old: Option<&Tags>, new: Option<&Tags>) -> Result<(), ProviderError> {
    let Retag { remove, set } = Retag::new(urn, old, new);
    if !remove.is_empty() {
        aws.autoscaling
            .delete_tags()
            .set_tags(Some(remove.iter().map(|k| tag(name, k, None)).collect()))
            .send()
            .await
            .map_err(|e| aws_error("removing tags", e, no_hint))?;
    }
    if !set.is_empty() {
        aws.autoscaling
            .create_or_update_tags()
            .set_tags(Some(set.iter().map(|(k, v)| tag(name, k, Some(v))).collect()))
            .send()
            .await
            .map_err(|e| aws_error("tagging the group", e, no_hint))?;
    }
    Ok(())
}

/// Attaches the target groups `want` names that the group lacks and detaches those it
/// has but `want` does not: from the group as it is, not as state last saw it.
async fn sync_target_groups(aws: &Clients, name: &str, want: &GroupInputs) -> Result<(), ProviderError> {
    let Some(current) = describe(aws, name).await? else {
        return Err(ProviderError::not_found(format!("group {name} is gone (deleted outside Cairn? run refresh)")));
    };
    let (has, wanted) = (canonical(Some(current.target_group_arns())), canonical(want.target_group_arns.as_deref()));
    let detach: Vec<String> = has.iter().filter(|a| !wanted.contains(a)).cloned().collect();
    let attach: Vec<String> = wanted.iter().filter(|a| !has.contains(a)).cloned().collect();
    for chunk in detach.chunks(TARGET_GROUPS_PER_CALL) {
        let call = aws.autoscaling.detach_load_balancer_target_groups().auto_scaling_group_name(name).set_target_group_arns(Some(chunk.to_vec()));
        call.send().await.map_err(|e| aws_error("detaching target groups", e, |c| hint(c, want)))?;
    }
    for chunk in attach.chunks(TARGET_GROUPS_PER_CALL) {
        let call = aws.autoscaling.attach_load_balancer_target_groups().auto_scaling_group_name(name).set_target_group_arns(Some(chunk.to_vec()));
        call.send().await.map_err(|e| aws_error("attaching target groups", e, |c| hint(c, want)))?;
    }
    Ok(())
}

#[async_trait]
impl Kind for GroupKind {
    /// The schema's diff, except that `target_group_arns` is a set: a reordered or
    /// repeated ARN is no change, and an absent list equals an empty one.
    fn diff(&self, req: &DiffRequest<'_>) -> DiffResult {
        set_diff(req, &["target_group_arns"])
    }

    async fn create(&self, aws: &Clients, urn: &Urn, inputs: &Props) -> Result<Observed, ProviderError> {
        let want = GroupInputs::from_props(inputs)?;
        check_sizes(&want)?;
        let name = want.name.as_deref().unwrap_or_default();
        // AWS refuses a taken name; some endpoints replace the other group instead.
        if describe(aws, name).await?.is_some() {
            return Err(ProviderError::failed(format!(
                "an Auto Scaling group named {name} already exists; choose another name, or leave the name unset and Cairn will pick a unique one"
                )));
        }
        let tags: Vec<Tag> = tags::wanted(urn, want.tags.as_ref()).iter().map(|(k, v)| tag(name, k, Some(v))).collect();
        aws.once
            .autoscaling
            .create_auto_scaling_group()
            .auto_scaling_group_name(name)
            .launch_template(launch_template(&want))
            .set_min_size(int(want.min_size))
            .set_max_size(int(want.max_size))
            .set_desired_capacity(int(want.desired_capacity))
            .vpc_zone_identifier(zone_identifier(&want))
            .set_health_check_type(want.health_check_type.clone())
            .set_health_check_grace_period(int(want.health_check_grace_period))
            .set_target_group_arns(Some(canonical(want.target_group_arns.as_deref())).filter(|arns| !arns.is_empty()))
            .set_tags(Some(tags))
            .send()
            .await
            .map_err(|e| aws_error("creating the group", e, |c| hint(c, &want)))?;
        self.read_created(aws, urn, name, inputs).await
    }

    async fn read(&self, aws: &Clients, urn: &Urn, id: &str, _recorded: &Props) -> Result<Option<Observed>, ProviderError> {
        Ok(describe(aws, id).await?.map(|g| observe(urn, &g)))
    }

    async fn update(&self, aws: &Clients, urn: &Urn, id: &str, old: &Props, new: &Props) -> Result<Observed, ProviderError> {
        let (old, want) = (GroupInputs::from_props(old)?, GroupInputs::from_props(new)?);
        check_sizes(&want)?;
        let mut call = aws.autoscaling.update_auto_scaling_group().auto_scaling_group_name(id);
        let mut any = false;
        if old.launch_template_id != want.launch_template_id || old.launch_template_version != want.launch_template_version {
            call = call.launch_template(launch_template(&want));
            any = true;
        }
        if old.subnet_ids != want.subnet_ids {
            call = call.vpc_zone_identifier(zone_identifier(&want));
            any = true;
        }
        if old.health_check_type != want.health_check_type {
            call = call.set_health_check_type(want.health_check_type.clone());
            any = true;
        }
        // A size no longer set is left as it is: an unset desired capacity is AWS's.
        let changed = |before: Option<u32>, after: Option<u32>| int(after).filter(|_| before != after);
        let sizes = [
            changed(old.min_size, want.min_size),
            changed(old.max_size, want.max_size),
            changed(old.desired_capacity, want.desired_capacity),
            changed(old.health_check_grace_period, want.health_check_grace_period),
        ];
        any |= sizes.iter().any(Option::is_some);
        let [min, max, desired, grace] = sizes;
        let call = call.set_min_size(min).set_max_size(max).set_desired_capacity(desired).set_health_check_grace_period(grace);
        if any {
            call.send().await.map_err(|e| {
                if missing(&e, MISSING) {
                    ProviderError::not_found(format!("group {id} is gone (deleted outside Cairn? run refresh)"))
                } else {
                    aws_error("updating the group", e, |c| hint(c, &want))
                }
            })?;
        }
        if canonical(old.target_group_arns.as_deref()) != canonical(want.target_group_arns.as_deref()) {
            sync_target_groups(aws, id, &want).await?;
        }
        retag(aws, urn, id, old.tags.as_ref(), want.tags.as_ref()).await?;
        self.read_updated(aws, urn, id, new).await
    }

    async fn delete(&self, aws: &Clients, _urn: &Urn, id: &str) -> Result<(), ProviderError> {
        let asked = aws.autoscaling.delete_auto_scaling_group().auto_scaling_group_name(id).force_delete(true).send().await;
        wait::deleted(asked, MISSING, "deleting the group", no_hint, DELETE_BOUND, DELETING, || async {
            Ok(describe(aws, id).await?.map(|g| g.status().unwrap_or("still listed").to_owned()))
        })
        .await
    }

    async fn lookup(&self, aws: &Clients, urn: &Urn, _created_with: &Props) -> Result<Vec<Observed>, ProviderError> {
        let groups = paginate(|token| async move {
            let page = aws
                .autoscaling
                .describe_auto_scaling_groups()
                .filters(Filter::builder().name(format!("tag:{}", tags::URN)).values(urn.as_str()).build())
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| aws_error("looking up groups", e, no_hint))?;
            Ok((page.auto_scaling_groups().to_vec(), page.next_token().map(str::to_owned)))
        })
        .await?;
        // A group being deleted is on its way out, not a copy to adopt.
        Ok(groups
            .iter()
            .filter(|g| g.status() != Some(DELETING) && tags::is_tagged(urn, g.tags().iter().filter_map(|t| Some((t.key()?, t.value()?)))))
            .map(|g| observe(urn, g))
            .collect())
    }
}

/// The group as the inputs and outputs Cairn records.
fn observe(urn: &Urn, g: &AutoScalingGroup) -> Observed {
    let name = g.auto_scaling_group_name().unwrap_or_default();
    let lt = g.launch_template();
    let subnets = g
        .vpc_zone_identifier()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let inputs = GroupInputs {
        name: Some(name.to_owned()),
        launch_template_id: lt.and_then(|lt| lt.launch_template_id()).map(str::to_owned),
        launch_template_version: lt.and_then(|lt| lt.version()).map(str::to_owned),
        subnet_ids: Some(subnets),
        min_size: size(g.min_size()),
        max_size: size(g.max_size()),
        desired_capacity: size(g.desired_capacity()),
        health_check_type: g.health_check_type().map(str::to_owned),
        health_check_grace_period: size(g.health_check_grace_period()),
        target_group_arns: Some(canonical(Some(g.target_group_arns()))).filter(|arns| !arns.is_empty()),
        tags: tags::observed(urn, g.tags().iter().filter_map(|t| Some((t.key()?, t.value().unwrap_or_default())))),
    };
    Observed::new(name, inputs.to_props(), [("arn", Value::from(g.auto_scaling_group_arn().unwrap_or_default()))])
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
