//! The shop that survives flash sales: its state, the resources it renders to, and the
//! events that change it. `main.rs` hands it to the CLI; the plan snapshot tests in
//! `tests/ecommerce_plans.rs` include this file too.
//!
//! Six layers: the network; ingress (an internet-facing load balancer in the public
//! subnets, HTTPS on 443 with its certificate, a DNS name); the application (the web
//! Auto Scaling group behind the load balancer); data (the session cache); messaging
//! (the order queues, the stack's own events queue, an alerts topic); observability (a
//! log group, alarms on the web group's CPU and the orders queue's depth). The alarms'
//! state changes come back as events: an EventBridge rule sends them to the events
//! queue, which `watch` consumes, and the handlers below scale the web group.

use std::collections::BTreeSet;

use cairn::events::{Event, EventPolicy};
use cairn::{interpolate, Cx, ProgramResult, ResourceExt, Secret, Stack};
use cairn_aws::acm::Certificate;
use cairn_aws::autoscaling::Group;
use cairn_aws::cloudwatch::MetricAlarm;
use cairn_aws::ec2::{LaunchTemplate, Rule, SecurityGroup};
use cairn_aws::elasticache::{ReplicationGroup, SubnetGroup};
use cairn_aws::elbv2::{Listener, LoadBalancer, TargetGroup};
use cairn_aws::eventbridge::{Rule as EventRule, Target};
use cairn_aws::logs::LogGroup;
use cairn_aws::route53::{Record, Zone};
use cairn_aws::sns::Topic;
use cairn_aws::sqs::{Queue, QueuePolicy};
use cairn_aws::Network;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// The availability zones of a stack without its own (`dev`'s).
pub const ZONES: [&str; 2] = ["us-east-1a", "us-east-1b"];
/// The web group's bounds in a stack without its own.
pub const MIN_WEB: u32 = 2;
/// The web group's bounds in a stack without its own.
pub const MAX_WEB: u32 = 12;
/// Requests per second one web server handles.
pub const RPS_PER_SERVER: u32 = 500;
/// Capacity the peak-hours schedule scales up to ahead of time.
pub const PEAK_HOURS_WEB: u32 = 4;
/// The queue the stack itself consumes events from.
pub const EVENTS_QUEUE: &str = "shop-events";
/// The stack output holding the events queue's URL, which `watch` reads events from.
pub const EVENTS_QUEUE_URL: &str = "events_queue_url";
/// The shop's DNS zone, and the name it serves on.
pub const DOMAIN: &str = "example.com";
/// The name the shop serves on, in [`DOMAIN`].
pub const SITE: &str = "shop.example.com";

/// The name of the stack's alarm on the web group's CPU: its state changes arrive as
/// `alarm.<this>.alarm` and `alarm.<this>.ok` events.
pub fn web_cpu_alarm(stack: &str) -> String {
    format!("{stack}-web-cpu-high")
}

/// The name of the stack's alarm on the orders queue's depth.
pub fn orders_depth_alarm(stack: &str) -> String {
    format!("{stack}-orders-depth")
}

/// What differs between the shop's stacks, from `Cairn.<stack>.toml` next to this file
/// (`Cairn.dev.toml`, `Cairn.prod.toml`); a key left out keeps dev's value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShopConfig {
    /// The availability zones: a public and a private subnet in each.
    pub zones: Vec<String>,
    /// The web servers' EC2 instance type.
    pub instance_type: String,
    /// The web group's bounds: handlers scale within them.
    pub web: WebBounds,
    /// The session cache's Redis AUTH token, set with `config set --secret
    /// redis_auth_token VALUE`: sealed in the file, in plans and in state.
    pub redis_auth_token: Option<Secret<String>>,
}

/// The web group's bounds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebBounds {
    /// Servers at least.
    pub min: u32,
    /// Servers at most.
    pub max: u32,
}

impl Default for ShopConfig {
    fn default() -> Self {
        ShopConfig {
            zones: ZONES.map(str::to_owned).to_vec(),
            instance_type: "t3.small".to_owned(),
            web: WebBounds::default(),
            redis_auth_token: None,
        }
    }
}

impl Default for WebBounds {
    fn default() -> Self {
        WebBounds { min: MIN_WEB, max: MAX_WEB }
    }
}

impl WebBounds {
    /// `n` servers, kept within the bounds.
    pub fn clamp(self, n: u32) -> u32 {
        n.clamp(self.min, self.max.max(self.min))
    }
}

/// The shop's state: events change it, the program renders it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Shop {
    /// Web servers wanted.
    pub web_capacity: u32,
    /// A flash sale is on: its own order queue and workers exist.
    pub flash_sale: bool,
    /// Zones the web group keeps out of.
    pub degraded_zones: BTreeSet<String>,
}

impl Default for Shop {
    fn default() -> Self {
        Shop { web_capacity: MIN_WEB, flash_sale: false, degraded_zones: BTreeSet::new() }
    }
}

/// Renders the shop into resources, sized by the stack's `config`.
pub fn infra(cx: &mut Cx, shop: &Shop, config: &ShopConfig) -> ProgramResult {
    let net = Network::new("shop").cidr_block("10.0.0.0/16").zones(&config.zones).tags([("app", "shop")]).declare(cx)?;

    // Ingress: HTTPS from anywhere to the load balancer, and from it to the web servers.
    let lb_sg = cx.add(
        SecurityGroup::new("lb")
            .vpc_id(net.vpc.id())
            .description("shop load balancer")
            .ingress(Rule::tcp(443).from_cidr("0.0.0.0/0"))
            .allow_all_egress(),
    );
    let web_sg = cx.add(
        SecurityGroup::new("web")
            .vpc_id(net.vpc.id())
            .description("shop web servers")
            .ingress(Rule::tcp(80).from_group(lb_sg.id()))
            .allow_all_egress(),
    );
    let lb = cx.add(LoadBalancer::new("web").subnet_ids(net.public_subnet_ids()).security_group_ids([lb_sg.id()]));
    let web_targets = cx.add(TargetGroup::new("web").port(80).vpc_id(net.vpc.id()).health_check_path("/health"));
    let zone = cx.add(Zone::new("shop").name(DOMAIN).comment("the shop's public zone"));
    let cert = cx.add(Certificate::new("shop").domain_name(SITE));
    // The record ACM checks before it issues the certificate.
    cx.add(
        Record::new("shop-cert-validation")
            .zone_id(zone.zone_id())
            .name(cert.validation_record_name())
            .record_type(cert.validation_record_type())
            .ttl(300)
            .records([cert.validation_record_value()]),
    );
    cx.add(Record::new("shop").zone_id(zone.zone_id()).name(SITE).record_type("A").alias(lb.dns_name(), lb.zone_id()));
    cx.add(
        Listener::new("https")
            .load_balancer_arn(lb.arn())
            .port(443)
            .protocol("HTTPS")
            .certificate_arn(cert.arn())
            .default_target_group_arn(web_targets.arn()),
    );
    let cache_sg = cx.add(
        SecurityGroup::new("sessions")
            .vpc_id(net.vpc.id())
            .description("shop session cache")
            .ingress(Rule::tcp(6379).from_group(web_sg.id()))
            .allow_all_egress(),
    );
    let template = cx.add(
        LaunchTemplate::new("web")
            .image_id("ami-0abcdef1234567890")
            .instance_type(config.instance_type.as_str())
            .security_group_id(web_sg.id())
            .user_data("#!/bin/sh\nexec /opt/shop/web --port 80\n"),
    );
    let healthy = net.private_subnet_ids_where(|zone| !shop.degraded_zones.contains(zone));
    let web = cx.add(
        Group::new("web")
            .launch_template_id(template.id())
            .launch_template_version("$Latest")
            .subnet_ids(healthy)
            .min_size(config.web.min)
            .max_size(config.web.max)
            .desired_capacity(config.web.clamp(shop.web_capacity))
            .health_check_type("EC2")
            .target_group_arns([web_targets.arn()])
            .tags([("role", "web")]),
    );

    let cache_subnets = cx.add(SubnetGroup::new("sessions").description("shop session cache").subnet_ids(net.private_subnet_ids()));
    let mut sessions = ReplicationGroup::new("sessions")
        .description("shop sessions")
        .node_type("cache.t3.micro")
        .num_cache_clusters(1)
        .subnet_group_name(cache_subnets.name())
        .security_group_ids([cache_sg.id()])
        .transit_encryption(true)
        .at_rest_encryption(true);
    if let Some(token) = &config.redis_auth_token {
        sessions = sessions.auth_token(token);
    }
    let sessions = cx.add(sessions);

    let orders_dlq = cx.add(Queue::new("orders-dlq").message_retention(1_209_600));
    let orders = cx.add(Queue::new("orders").visibility_timeout(60).dead_letter(orders_dlq.arn(), 5));
    let events = cx.add(Queue::new(EVENTS_QUEUE).visibility_timeout(120));
    let alerts = cx.add(Topic::new("alerts").display_name("shop alerts"));

    // Observability: the web servers' logs, and alarms that notify the alerts topic.
    cx.add(LogGroup::new("web").retention_in_days(14));
    let (cpu_alarm, depth_alarm) = (web_cpu_alarm(cx.stack()), orders_depth_alarm(cx.stack()));
    cx.add(
        MetricAlarm::new("web-cpu-high")
            .name(cpu_alarm.as_str())
            .description("the web servers are busy: add some")
            .namespace("AWS/EC2")
            .metric_name("CPUUtilization")
            .dimension("AutoScalingGroupName", web.name())
            .period(60)
            .evaluation_periods(3)
            .threshold(70.0)
            .comparison_operator("GreaterThanThreshold")
            .alarm_actions([alerts.arn()]),
    );
    cx.add(
        MetricAlarm::new("orders-depth")
            .name(depth_alarm.as_str())
            .description("orders are waiting")
            .namespace("AWS/SQS")
            .metric_name("ApproximateNumberOfMessagesVisible")
            .dimension("QueueName", orders.name())
            .evaluation_periods(5)
            .threshold(1000.0)
            .comparison_operator("GreaterThanThreshold")
            .alarm_actions([alerts.arn()]),
    );

    // The loop back: the alarms' state changes, through EventBridge, into the events queue.
    let alarm_changes = cx.add(
        EventRule::new("alarms")
            .description("the shop's alarm state changes, for its events queue")
            .event_pattern(json!({
                "source": ["aws.cloudwatch"],
                "detail-type": [cairn_aws::events::ALARM_STATE_CHANGE],
                "detail": {"alarmName": [cpu_alarm, depth_alarm]},
            })),
    );
    cx.add(Target::new("alarms-to-events").rule(alarm_changes.name()).arn(events.arn()));
    cx.add(QueuePolicy::new("events").queue_url(events.url()).allow_service(events.arn(), "events.amazonaws.com", alarm_changes.arn()));

    // What `outputs` prints, and the `web-capacity` verb reads.
    cx.export("web_group", web.name());
    cx.export("orders_queue_url", orders.url());
    cx.export(EVENTS_QUEUE_URL, events.url());
    cx.export("load_balancer", interpolate!("{} ({} in zone {})", SITE, lb.dns_name(), lb.zone_id()));
    // Computed from a secret, so a secret too: `outputs` shows it as [secret].
    if let Some(token) = &config.redis_auth_token {
        cx.export("redis_url", interpolate!("rediss://:{}@{}:6379", token, sessions.primary_endpoint_address()));
    }

    if shop.flash_sale {
        let sale_dlq = cx.add(Queue::new("sale-orders-dlq").message_retention(1_209_600));
        let sale = cx.add(Queue::new("sale-orders").visibility_timeout(30).dead_letter(sale_dlq.arn(), 3));
        cx.add(
            Group::new("sale-workers")
                .launch_template_id(template.id())
                .launch_template_version("$Latest")
                .subnet_ids(net.private_subnet_ids())
                .min_size(1)
                .max_size(6)
                .desired_capacity(2)
                .tags([("role", "sale-worker")])
                .depends_on(&sale),
        );
    }
    Ok(())
}

fn zone_of(event: &Event, zones: &[String]) -> Result<String, cairn::BoxError> {
    let zone: String = event.field("zone")?;
    if !zones.contains(&zone) {
        return Err(format!("zone {zone} is not one of the shop's zones ({})", zones.join(", ")).into());
    }
    Ok(zone)
}

/// The shop's stack named `name`, with its program, handlers, guards and event policy,
/// sized by `config` (the stack's `Cairn.<name>.toml`). `aws` is `cairn_aws::Provider`
/// in production; tests may pass a test provider.
pub fn stack(name: &str, aws: impl cairn::Provider, config: ShopConfig) -> Stack<Shop> {
    let web = config.web;
    let (zones, healthy_zones) = (config.zones.clone(), config.zones.clone());
    Stack::<Shop>::new(name)
        .provider(aws)
        .program(move |cx, shop| infra(cx, shop, &config))
        .on_event("traffic.spike", move |event: &Event, shop: &mut Shop| {
            let rps: u32 = event.field("requests_per_second")?;
            shop.web_capacity = web.clamp(rps.div_ceil(RPS_PER_SERVER));
            Ok(())
        })
        .on_event("traffic.normal", move |_: &Event, shop: &mut Shop| {
            shop.web_capacity = web.min;
            Ok(())
        })
        .on_event("traffic.peak_hours", move |_: &Event, shop: &mut Shop| {
            shop.web_capacity = web.clamp(shop.web_capacity.max(PEAK_HOURS_WEB));
            Ok(())
        })
        .on_event("sale.started", |_: &Event, shop: &mut Shop| {
            shop.flash_sale = true;
            Ok(())
        })
        .on_event("sale.ended", |_: &Event, shop: &mut Shop| {
            shop.flash_sale = false;
            Ok(())
        })
        .on_event("az.degraded", {
            let zones = zones.clone();
            move |event: &Event, shop: &mut Shop| {
                shop.degraded_zones.insert(zone_of(event, &zones)?);
                Ok(())
            }
        })
        .on_event("az.recovered", move |event: &Event, shop: &mut Shop| {
            shop.degraded_zones.remove(&zone_of(event, &zones)?);
            Ok(())
        })
        // The CPU alarm, through EventBridge and the events queue: scale out fast, in slowly.
        .on_event(format!("alarm.{}.alarm", web_cpu_alarm(name)), move |_: &Event, shop: &mut Shop| {
            shop.web_capacity = web.clamp(shop.web_capacity + 2);
            Ok(())
        })
        .on_event(format!("alarm.{}.ok", web_cpu_alarm(name)), move |_: &Event, shop: &mut Shop| {
            shop.web_capacity = web.clamp(shop.web_capacity.saturating_sub(1));
            Ok(())
        })
        // The program raises a capacity below the stack's minimum (a new stack starts at
        // dev's); none may pass the maximum.
        .guard("web capacity within bounds", move |shop: &Shop| {
            if shop.web_capacity <= web.max {
                Ok(())
            } else {
                Err(format!("web capacity {} is above the maximum {}", shop.web_capacity, web.max).into())
            }
        })
        .guard("a healthy zone remains", move |shop: &Shop| {
            if healthy_zones.iter().any(|z| !shop.degraded_zones.contains(z)) {
                Ok(())
            } else {
                Err("every zone would be degraded; the web group needs at least one".into())
            }
        })
        .event_policy(EventPolicy::default().deny_replace_or_delete("aws:ec2:Vpc").deny_replace_or_delete("aws:elasticache:*"))
}
