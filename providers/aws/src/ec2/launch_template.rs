//! `aws:ec2:LaunchTemplate`: how to launch an instance (AMI, type, security groups,
//! user data), for Auto Scaling groups.
//!
//! The name forces a replacement. Any change to the launch data makes a new version of
//! the template carrying the full data, and makes it the default version, in place: the
//! template id stays, `latest_version` and `default_version` change. Old versions are
//! kept (AWS allows 10,000 per template). Tags change in place.

use async_trait::async_trait;
use aws_sdk_ec2::types::{InstanceType, LaunchTemplate as AwsLaunchTemplate, RequestLaunchTemplateData, ResourceType as Ec2Type};
use cairn_sdk::provider::{DiffRequest, DiffResult};
use cairn_sdk::{CheckFailure, Decl, Input, Observed, Prop, Props, ProviderError, Tags, Urn};
use serde_json::Value;

use super::{canonical, check_ids, client_token, declared_items, observed_tags, retag, set_diff, set_items, tag_spec, tagged_with, urn_filter};
use crate::error::{aws_error, no_hint, or_missing};
use crate::kind::{finish, read_each, Clients, Kind};

cairn_sdk::resource! {
    /// A launch template:
    /// `LaunchTemplate::new("web").image_id("ami-0abc1234").instance_type("t3.micro").security_group_ids([sg.id()])`.
    ///
    /// A change to the launch data makes a new version, set as the default, in place; an
    /// Auto Scaling group that uses `latest_version()` picks it up.
    pub struct LaunchTemplate {
        token: "aws:ec2:LaunchTemplate",
        schema: LAUNCH_TEMPLATE,
        inputs: LaunchTemplateInputs,
        /// A declared launch template's outputs.
        handle: LaunchTemplateRef,
        validate: validate,
    }
    inputs {
        /// The template name; by default `<logical name>-<suffix>`, new on each replacement
        /// (forces replacement).
        name: String = auto_name().forces_replacement(),
        /// The AMI to launch, `ami-...` (a change makes a new version).
        image_id: String = required(),
        /// The instance type, such as `t3.micro` (a change makes a new version).
        instance_type: String,
        /// A script or cloud-init config the instances run at boot, as plain text (Cairn
        /// base64-encodes it for AWS); at most 16 KB. A change makes a new version.
        user_data: String,
        /// Tags of your own on the template (Cairn adds `Name`, `cairn:stack` and
        /// `cairn:urn`).
        tags: Tags,
    }
    by_hand {
        /// Security groups for the instances, a set (a change makes a new version): see
        /// [`LaunchTemplate::security_group_id`].
        security_group_ids: Vec<String>,
    }
    outputs {
        /// The template id, `lt-...`.
        id: String,
        /// The number of its newest version (changes when the launch data does).
        latest_version: i64 = changes_on_update(),
        /// The number of its default version (the newest, as Cairn manages it).
        default_version: i64 = changes_on_update(),
    }
    echoes {
        /// Its name.
        name: String,
    }
}

/// The properties diffed as sets.
const SETS: &[&str] = &["security_group_ids"];

/// AWS's limit on user data, before base64.
const USER_DATA_MAX: usize = 16 * 1024;

fn validate(decl: &Decl, out: &mut Vec<CheckFailure>) {
    if let Some(v) = decl.value("name") {
        let allowed = |c: char| c.is_ascii_alphanumeric() || "().-/_".contains(c);
        if !v.as_str().is_some_and(|s| (3..=128).contains(&s.len()) && s.chars().all(allowed)) {
            out.push(CheckFailure::new("name", Some(v), "be 3 to 128 letters, digits or ().-/_, or be left unset for a generated name"));
        }
    }
    if let Some(v) = decl.value("image_id") {
        let ok =
            v.as_str().and_then(|s| s.strip_prefix("ami-")).is_some_and(|rest| !rest.is_empty() && rest.chars().all(|c| c.is_ascii_alphanumeric()));
        if !ok {
            out.push(CheckFailure::new("image_id", Some(v), "be an AMI id: ami- followed by letters and digits, such as ami-0abcdef1234567890"));
        }
    }
    if let Some(v) = decl.value("instance_type") {
        let part = |p: &str| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        let ok = v.as_str().and_then(|s| s.split_once('.')).is_some_and(|(family, size)| part(family) && part(size));
        if !ok {
            out.push(CheckFailure::new("instance_type", Some(v), "be an instance type: family.size in lower case, such as t3.micro or m5.large"));
        }
    }
    check_ids(decl, "security_group_ids", "sg-", "a security group id", out);
    if let Some(v) = decl.value("user_data") {
        if v.as_str().is_none_or(|s| s.len() > USER_DATA_MAX) {
            out.push(CheckFailure::new("user_data", Some(v), format!("be text of at most {USER_DATA_MAX} bytes (AWS's limit)")));
        }
    }
}

impl LaunchTemplate {
    /// Adds a security group for the instances, such as `sg.id()` (a change makes a
    /// new version; order does not matter).
    #[must_use]
    pub fn security_group_id(self, id: impl Into<Input<String>>) -> Self {
        self.security_group_ids([id])
    }

    /// Adds security groups for the instances (see
    /// [`security_group_id`](Self::security_group_id)).
    #[must_use]
    pub fn security_group_ids<I: Into<Input<String>>>(mut self, ids: impl IntoIterator<Item = I>) -> Self {
        let items: Vec<Prop> =
            declared_items(&self.0, "security_group_ids").into_iter().chain(ids.into_iter().map(|id| id.into().into_prop())).collect();
        if !items.is_empty() {
            set_items(&mut self.0, "security_group_ids", items);
        }
        self
    }
}

/// The launch template's operations.
#[derive(Debug)]
pub(crate) struct LaunchTemplateKind;

const MISSING: &[&str] = &["InvalidLaunchTemplateId.NotFound", "InvalidLaunchTemplateName.NotFoundException"];

fn hint(code: &str, want: &LaunchTemplateInputs) -> Option<String> {
    match code {
        "InvalidLaunchTemplateName.AlreadyExistsException" => Some(format!(
            "a launch template named {} already exists; choose another name, or leave the name unset and Cairn will pick a unique one",
            want.name.as_deref().unwrap_or_default()
        )),
        "InvalidAMIID.Malformed" | "InvalidAMIID.NotFound" | "InvalidAMIID.Unavailable" => Some(format!(
            "image {} is not an AMI this account can use in this region; check the AMI id and region",
            want.image_id.as_deref().unwrap_or_default()
        )),
        "InvalidGroup.NotFound" | "InvalidGroupId.NotFound" => {
            Some("a security group in security_group_ids does not exist (was it deleted outside Cairn? run refresh)".to_owned())
        }
        "InvalidUserData.Malformed" => Some(format!("user_data is more than AWS accepts ({USER_DATA_MAX} bytes); make it smaller")),
        "VersionLimitExceeded" => {
            Some("the template has 10,000 versions, AWS's limit; delete old versions in the console (Cairn keeps them), then run again".to_owned())
        }
        "LaunchTemplateLimitExceeded" => {
            Some("the account's launch template quota is used up; delete unused templates or ask AWS for more".to_owned())
        }
        _ => None,
    }
}

/// A template's outputs: its id and version numbers.
fn outputs(id: &str, t: &AwsLaunchTemplate) -> [(&'static str, Value); 3] {
    [
        ("id", Value::from(id)),
        ("latest_version", Value::from(t.latest_version_number().unwrap_or(1))),
        ("default_version", Value::from(t.default_version_number().unwrap_or(1))),
    ]
}

/// The launch data the inputs describe, in full: a new version does not inherit any.
fn data(want: &LaunchTemplateInputs) -> RequestLaunchTemplateData {
    let groups = canonical(want.security_group_ids.as_deref());
    RequestLaunchTemplateData::builder()
        .set_image_id(want.image_id.clone())
        .set_instance_type(want.instance_type.as_deref().map(InstanceType::from))
        .set_security_group_ids((!groups.is_empty()).then_some(groups))
        .set_user_data(want.user_data.as_deref().map(aws_smithy_types::base64::encode))
        .build()
}

/// Whether the launch data differs: the inputs that make it up (image, instance type,
/// security groups as a set, user data), a change to any of which makes a new version.
fn data_differs(a: &LaunchTemplateInputs, b: &LaunchTemplateInputs) -> bool {
    a.image_id != b.image_id
        || a.instance_type != b.instance_type
        || canonical(a.security_group_ids.as_deref()) != canonical(b.security_group_ids.as_deref())
        || a.user_data != b.user_data
}

async fn describe(aws: &Clients, id: &str) -> Result<Option<AwsLaunchTemplate>, ProviderError> {
    let out = or_missing(aws.ec2.describe_launch_templates().launch_template_ids(id).send().await, MISSING, "reading the launch template", no_hint)?;
    Ok(out.and_then(|out| out.launch_templates().first().cloned()))
}

#[async_trait]
impl Kind for LaunchTemplateKind {
    fn diff(&self, req: &DiffRequest<'_>) -> DiffResult {
        set_diff(req, SETS)
    }

    async fn create(&self, aws: &Clients, urn: &Urn, inputs: &Props) -> Result<Observed, ProviderError> {
        let want = LaunchTemplateInputs::from_props(inputs)?;
        let tags = tag_spec(Ec2Type::LaunchTemplate, urn, want.tags.as_ref());
        let out = aws
            .once
            .ec2
            .create_launch_template()
            .client_token(client_token(urn))
            .launch_template_name(want.name.as_deref().unwrap_or_default())
            .launch_template_data(data(&want))
            .tag_specifications(tags.clone())
            .send()
            .await
            .map_err(|e| aws_error("creating the launch template", e, |c| hint(c, &want)))?;
        let id = out.launch_template().and_then(|t| t.launch_template_id()).unwrap_or_default().to_owned();
        // Nothing to read back: the answer holds the template and its versions, its one
        // version holds the data just sent, and the tags are the ones just set. The
        // template is on the way to the Auto Scaling group.
        finish(&id, async {
            let t = out.launch_template().ok_or_else(|| ProviderError::uncertain("the create's answer had no template"))?;
            let groups = canonical(want.security_group_ids.as_deref());
            let inputs = LaunchTemplateInputs {
                name: Some(t.launch_template_name().map_or_else(|| want.name.clone().unwrap_or_default(), str::to_owned)),
                image_id: want.image_id.clone(),
                instance_type: want.instance_type.clone(),
                user_data: want.user_data.clone(),
                tags: observed_tags(urn, tags.tags()),
                security_group_ids: (!groups.is_empty()).then_some(groups),
            };
            Ok(Observed::new(&id, inputs.to_props(), outputs(&id, t)))
        })
        .await
    }

    async fn read(&self, aws: &Clients, urn: &Urn, id: &str, _recorded: &Props) -> Result<Option<Observed>, ProviderError> {
        // The template and its default version's data at once: two calls, one call's time.
        let (t, versions) = tokio::try_join!(describe(aws, id), async {
            let versions = aws.ec2.describe_launch_template_versions().launch_template_id(id).versions("$Default").send().await;
            or_missing(versions, MISSING, "reading the launch template's default version", no_hint)
        })?;
        let (Some(t), Some(versions)) = (t, versions) else { return Ok(None) };
        let d = versions.launch_template_versions().first().and_then(|v| v.launch_template_data());
        let groups = canonical(d.map(|d| d.security_group_ids()));
        let user_data = d
            .and_then(|d| d.user_data())
            .map(|encoded| {
                let decoded = aws_smithy_types::base64::decode(encoded).map_err(|e| {
                    ProviderError::failed(format!("its user data is not valid base64 ({e}); was it changed outside Cairn?"))
                })?;
                Ok::<_, ProviderError>(String::from_utf8_lossy(&decoded).into_owned())
            })
            .transpose()?;
        let inputs = LaunchTemplateInputs {
            name: Some(t.launch_template_name().unwrap_or_default().to_owned()),
            image_id: d.and_then(|d| d.image_id()).map(str::to_owned),
            instance_type: d.and_then(|d| d.instance_type()).map(|ty| ty.as_str().to_owned()),
            user_data,
            tags: observed_tags(urn, t.tags()),
            security_group_ids: (!groups.is_empty()).then_some(groups),
        };
        Ok(Some(Observed::new(id, inputs.to_props(), outputs(id, &t))))
    }

    async fn update(&self, aws: &Clients, urn: &Urn, id: &str, old: &Props, new: &Props) -> Result<Observed, ProviderError> {
        let (was, want) = (LaunchTemplateInputs::from_props(old)?, LaunchTemplateInputs::from_props(new)?);
        // Compare with the default version AWS has, so a version made outside Cairn (or a
        // failed half of an earlier update) is set right too.
        let current = self.read_updated(aws, urn, id, old).await?;
        if data_differs(&LaunchTemplateInputs::from_props(&current.inputs)?, &want) {
            let out = aws
                .ec2
                .create_launch_template_version()
                .client_token(client_token(urn))
                .launch_template_id(id)
                .launch_template_data(data(&want))
                .send()
                .await
                .map_err(|e| aws_error("creating a new version of the launch template", e, |c| hint(c, &want)))?;
            let version = out
                .launch_template_version()
                .and_then(|v| v.version_number())
                .ok_or_else(|| ProviderError::uncertain("a new version was created, but AWS did not say its number"))?;
            aws.ec2
                .modify_launch_template()
                .launch_template_id(id)
                .default_version(version.to_string())
                .send()
                .await
                .map_err(|e| aws_error(&format!("making version {version} the default"), e, |c| hint(c, &want)))?;
        }
        retag(&aws.ec2, urn, id, was.tags.as_ref(), want.tags.as_ref()).await?;
        self.read_updated(aws, urn, id, new).await
    }

    async fn delete(&self, aws: &Clients, _urn: &Urn, id: &str) -> Result<(), ProviderError> {
        or_missing(aws.ec2.delete_launch_template().launch_template_id(id).send().await, MISSING, "deleting the launch template", no_hint)?;
        Ok(())
    }

    async fn lookup(&self, aws: &Clients, urn: &Urn, _created_with: &Props) -> Result<Vec<Observed>, ProviderError> {
        let out = aws
            .ec2
            .describe_launch_templates()
            .filters(urn_filter(urn))
            .send()
            .await
            .map_err(|e| aws_error("looking up launch templates", e, no_hint))?;
        let found = out.launch_templates().iter().filter(|t| tagged_with(t.tags(), urn));
        let ids = found.filter_map(|t| t.launch_template_id().map(str::to_owned)).collect();
        read_each(self, aws, urn, ids).await
    }
}
