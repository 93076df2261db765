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
use cairn_sdk::schema::{Property, ResourceType};
use cairn_sdk::{typed_handle, CheckFailure, Decl, Input, Observed, Prop, Props, ProviderError, Urn};
use serde_json::Value;

use super::{canonical_set, check_ids, client_token, declared_items, observed_tags, retag, set_diff, set_items, tag_spec, tagged_with, urn_filter};
use crate::error::{aws_error, code};
use crate::kind::{Clients, Kind};

/// The schema of `aws:ec2:LaunchTemplate`.
pub static LAUNCH_TEMPLATE: ResourceType = ResourceType::new(
    "aws:ec2:LaunchTemplate",
    &[
        Property::input("name").auto_name().forces_replacement(),
        Property::input("image_id").required(),
        Property::input("instance_type"),
        Property::input("security_group_ids"),
        Property::input("user_data"),
        Property::input("tags"),
        Property::output("id"),
        Property::output("latest_version").changes_on_update(),
        Property::output("default_version").changes_on_update(),
    ],
)
.with_validation(validate);

/// The properties diffed as sets.
const SETS: &[&str] = &["security_group_ids"];

/// The inputs that make up the launch data: a change to any makes a new version.
const DATA: &[&str] = &["image_id", "instance_type", "security_group_ids", "user_data"];

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

/// A launch template:
/// `LaunchTemplate::new("web").image_id("ami-0abc1234").instance_type("t3.micro").security_group_ids([sg.id()])`.
///
/// A change to the launch data makes a new version, set as the default, in place; an
/// Auto Scaling group that uses `latest_version()` picks it up.
#[derive(Debug, Clone)]
pub struct LaunchTemplate(Decl);

typed_handle! {
    /// A declared launch template's outputs.
    pub struct LaunchTemplateRef {
        /// The template id, `lt-...`.
        id: String,
        /// Its name.
        name: String,
        /// The number of its newest version (changes when the launch data does).
        latest_version: i64,
        /// The number of its default version (the newest, as Cairn manages it).
        default_version: i64,
    }
}

impl LaunchTemplate {
    /// A launch template with logical name `name`.
    pub fn new(name: &str) -> Self {
        LaunchTemplate(Decl::new(&LAUNCH_TEMPLATE, name))
    }

    /// The template name; by default `<logical name>-<suffix>`, new on each replacement
    /// (forces replacement).
    #[must_use]
    pub fn name(mut self, name: impl Into<Input<String>>) -> Self {
        self.0.set("name", name);
        self
    }

    /// The AMI to launch, `ami-...` (a change makes a new version).
    #[must_use]
    pub fn image_id(mut self, id: impl Into<Input<String>>) -> Self {
        self.0.set("image_id", id);
        self
    }

    /// The instance type, such as `t3.micro` (a change makes a new version).
    #[must_use]
    pub fn instance_type(mut self, instance_type: impl Into<Input<String>>) -> Self {
        self.0.set("instance_type", instance_type);
        self
    }

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

    /// A script or cloud-init config the instances run at boot, as plain text (Cairn
    /// base64-encodes it for AWS); at most 16 KB. A change makes a new version.
    #[must_use]
    pub fn user_data(mut self, text: impl Into<Input<String>>) -> Self {
        self.0.set("user_data", text);
        self
    }

    /// Tags of your own on the template (Cairn adds `Name`, `cairn:stack` and
    /// `cairn:urn`).
    #[must_use]
    pub fn tags<K: Into<String>, V: Into<String>>(mut self, tags: impl IntoIterator<Item = (K, V)>) -> Self {
        self.0.set("tags", crate::tags::to_value(tags));
        self
    }
}

cairn_sdk::impl_resource!(LaunchTemplate => LaunchTemplateRef);

/// The launch template's operations.
#[derive(Debug)]
pub(crate) struct LaunchTemplateKind;

fn text<'a>(inputs: &'a Props, key: &str) -> Option<&'a str> {
    inputs.get(key).and_then(Value::as_str)
}

fn is_missing(code: Option<&str>) -> bool {
    matches!(code, Some("InvalidLaunchTemplateId.NotFound" | "InvalidLaunchTemplateName.NotFoundException"))
}

fn hint(inputs: &Props) -> impl Fn(&str) -> Option<String> + '_ {
    move |code| match code {
        "InvalidLaunchTemplateName.AlreadyExistsException" => Some(format!(
            "a launch template named {} already exists; choose another name, or leave the name unset and Cairn will pick a unique one",
            text(inputs, "name").unwrap_or_default()
        )),
        "InvalidAMIID.Malformed" | "InvalidAMIID.NotFound" | "InvalidAMIID.Unavailable" => Some(format!(
            "image {} is not an AMI this account can use in this region; check the AMI id and region",
            text(inputs, "image_id").unwrap_or_default()
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

/// The launch data the inputs describe, in full: a new version does not inherit any.
fn data(inputs: &Props) -> RequestLaunchTemplateData {
    let groups: Vec<String> = canonical_set(inputs.get("security_group_ids")).iter().filter_map(|v| v.as_str().map(str::to_owned)).collect();
    RequestLaunchTemplateData::builder()
        .set_image_id(text(inputs, "image_id").map(str::to_owned))
        .set_instance_type(text(inputs, "instance_type").map(InstanceType::from))
        .set_security_group_ids((!groups.is_empty()).then_some(groups))
        .set_user_data(text(inputs, "user_data").map(aws_smithy_types::base64::encode))
        .build()
}

/// Whether the launch data differs (security groups as a set).
fn data_differs(a: &Props, b: &Props) -> bool {
    DATA.iter().any(|k| if SETS.contains(k) { canonical_set(a.get(k)) != canonical_set(b.get(k)) } else { a.get(k) != b.get(k) })
}

async fn describe(aws: &Clients, id: &str) -> Result<Option<AwsLaunchTemplate>, ProviderError> {
    match aws.ec2.describe_launch_templates().launch_template_ids(id).send().await {
        Ok(out) => Ok(out.launch_templates().first().cloned()),
        Err(e) if is_missing(code(&e)) => Ok(None),
        Err(e) => Err(aws_error("reading the launch template", e, |_| None)),
    }
}

#[async_trait]
impl Kind for LaunchTemplateKind {
    fn diff(&self, req: &DiffRequest<'_>) -> DiffResult {
        set_diff(req, SETS)
    }

    async fn create(&self, aws: &Clients, urn: &Urn, inputs: &Props) -> Result<Observed, ProviderError> {
        let out = aws
            .once
            .ec2
            .create_launch_template()
            .client_token(client_token(urn))
            .launch_template_name(text(inputs, "name").unwrap_or_default())
            .launch_template_data(data(inputs))
            .tag_specifications(tag_spec(Ec2Type::LaunchTemplate, urn, inputs))
            .send()
            .await
            .map_err(|e| aws_error("creating the launch template", e, hint(inputs)))?;
        let id = out.launch_template().and_then(|t| t.launch_template_id()).unwrap_or_default().to_owned();
        self.read_created(aws, urn, &id, inputs).await
    }

    async fn read(&self, aws: &Clients, urn: &Urn, id: &str, _recorded: &Props) -> Result<Option<Observed>, ProviderError> {
        let Some(t) = describe(aws, id).await? else { return Ok(None) };
        let versions = match aws.ec2.describe_launch_template_versions().launch_template_id(id).versions("$Default").send().await {
            Ok(out) => out,
            Err(e) if is_missing(code(&e)) => return Ok(None),
            Err(e) => return Err(aws_error("reading the launch template's default version", e, |_| None)),
        };
        let mut inputs = Props::new();
        inputs.insert("name", Value::from(t.launch_template_name().unwrap_or_default()));
        if let Some(d) = versions.launch_template_versions().first().and_then(|v| v.launch_template_data()) {
            if let Some(image) = d.image_id() {
                inputs.insert("image_id", Value::from(image));
            }
            if let Some(ty) = d.instance_type() {
                inputs.insert("instance_type", Value::from(ty.as_str()));
            }
            let groups: Vec<Value> = d.security_group_ids().iter().map(|g| Value::from(g.as_str())).collect();
            if !groups.is_empty() {
                inputs.insert("security_group_ids", Value::Array(canonical_set(Some(&Value::Array(groups)))));
            }
            if let Some(encoded) = d.user_data() {
                let decoded = aws_smithy_types::base64::decode(encoded).map_err(|e| {
                    ProviderError::failed(format!("its user data is not valid base64 ({e}); was it changed outside Cairn?"))
                })?;
                inputs.insert("user_data", Value::from(String::from_utf8_lossy(&decoded).into_owned()));
            }
        }
        if let Some(tags) = observed_tags(urn, t.tags()) {
            inputs.insert("tags", tags);
        }
        let mut outputs = Props::new();
        outputs.insert("id", Value::from(id));
        outputs.insert("latest_version", Value::from(t.latest_version_number().unwrap_or(1)));
        outputs.insert("default_version", Value::from(t.default_version_number().unwrap_or(1)));
        Ok(Some(Observed { id: id.to_owned(), inputs, outputs }))
    }

    async fn update(&self, aws: &Clients, urn: &Urn, id: &str, old: &Props, new: &Props) -> Result<Observed, ProviderError> {
        // Compare with the default version AWS has, so a version made outside Cairn (or a
        // failed half of an earlier update) is set right too.
        let current = self.read_updated(aws, urn, id, old).await?;
        if data_differs(&current.inputs, new) {
            let out = aws
                .ec2
                .create_launch_template_version()
                .client_token(client_token(urn))
                .launch_template_id(id)
                .launch_template_data(data(new))
                .send()
                .await
                .map_err(|e| aws_error("creating a new version of the launch template", e, hint(new)))?;
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
                .map_err(|e| aws_error(&format!("making version {version} the default"), e, hint(new)))?;
        }
        retag(&aws.ec2, id, old, new).await?;
        self.read_updated(aws, urn, id, new).await
    }

    async fn delete(&self, aws: &Clients, _urn: &Urn, id: &str) -> Result<(), ProviderError> {
        match aws.ec2.delete_launch_template().launch_template_id(id).send().await {
            Ok(_) => Ok(()),
            Err(e) if is_missing(code(&e)) => Ok(()),
            Err(e) => Err(aws_error("deleting the launch template", e, |_| None)),
        }
    }

    async fn lookup(&self, aws: &Clients, urn: &Urn) -> Result<Vec<Observed>, ProviderError> {
        let out = aws
            .ec2
            .describe_launch_templates()
            .filters(urn_filter(urn))
            .send()
            .await
            .map_err(|e| aws_error("looking up launch templates", e, |_| None))?;
        let mut found = Vec::new();
        for t in out.launch_templates().iter().filter(|t| tagged_with(t.tags(), urn)) {
            if let Some(id) = t.launch_template_id() {
                found.extend(self.read(aws, urn, id, &Props::new()).await?);
            }
        }
        Ok(found)
    }
}
