//! The shop that survives flash sales: its state, the resources it renders to, and the
//! events that change it. `main.rs` hands it to the CLI; the plan snapshot tests in
//! `tests/ecommerce_plans.rs` include this file too.

use std::collections::BTreeSet;

use cairn::events::{Event, EventPolicy};
use cairn::{Cx, ProgramResult, ResourceExt, Stack};
use cairn_aws::autoscaling::Group;
use cairn_aws::ec2::{LaunchTemplate, Rule, SecurityGroup};
use cairn_aws::elasticache::{ReplicationGroup, SubnetGroup};
use cairn_aws::sqs::Queue;
use cairn_aws::Network;
use serde::{Deserialize, Serialize};

/// The availability zones the shop runs in.
pub const ZONES: [&str; 2] = ["us-east-1a", "us-east-1b"];
/// The web group's bounds.
pub const MIN_WEB: u32 = 2;
/// The web group's bounds.
pub const MAX_WEB: u32 = 12;
/// Requests per second one web server handles.
pub const RPS_PER_SERVER: u32 = 500;
/// Capacity the peak-hours schedule scales up to ahead of time.
pub const PEAK_HOURS_WEB: u32 = 4;
/// The queue the stack itself consumes events from.
pub const EVENTS_QUEUE: &str = "shop-events";

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

/// Renders the shop into resources.
pub fn infra(cx: &mut Cx, shop: &Shop) -> ProgramResult {
    let net = Network::new("shop").cidr_block("10.0.0.0/16").zones(ZONES).tags([("app", "shop")]).declare(cx)?;

    let web_sg = cx.add(
        SecurityGroup::new("web")
            .vpc_id(net.vpc.id())
            .description("shop web servers")
            .ingress(Rule::tcp(80).from_cidr("0.0.0.0/0"))
            .ingress(Rule::tcp(443).from_cidr("0.0.0.0/0"))
            .allow_all_egress(),
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
            .instance_type("t3.small")
            .security_group_id(web_sg.id())
            .user_data("#!/bin/sh\nexec /opt/shop/web --port 80\n"),
    );
    let healthy = net.private_subnet_ids_where(|zone| !shop.degraded_zones.contains(zone));
    cx.add(
        Group::new("web")
            .launch_template_id(template.id())
            .launch_template_version("$Latest")
            .subnet_ids(healthy)
            .min_size(MIN_WEB)
            .max_size(MAX_WEB)
            .desired_capacity(shop.web_capacity)
            .health_check_type("EC2")
            .tags([("role", "web")]),
    );

    let cache_subnets = cx.add(SubnetGroup::new("sessions").description("shop session cache").subnet_ids(net.private_subnet_ids()));
    cx.add(
        ReplicationGroup::new("sessions")
            .description("shop sessions")
            .node_type("cache.t3.micro")
            .num_cache_clusters(1)
            .subnet_group_name(cache_subnets.name())
            .security_group_ids([cache_sg.id()]),
    );

    let orders_dlq = cx.add(Queue::new("orders-dlq").message_retention(1_209_600));
    cx.add(Queue::new("orders").visibility_timeout(60).dead_letter(orders_dlq.arn(), 5));
    cx.add(Queue::new(EVENTS_QUEUE).visibility_timeout(120));

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

fn traffic_spike(event: &Event, shop: &mut Shop) -> cairn::events::HandlerResult {
    let rps: u32 = event.field("requests_per_second")?;
    shop.web_capacity = rps.div_ceil(RPS_PER_SERVER).clamp(MIN_WEB, MAX_WEB);
    Ok(())
}

fn zone_of(event: &Event) -> Result<String, cairn::BoxError> {
    let zone: String = event.field("zone")?;
    if !ZONES.contains(&zone.as_str()) {
        return Err(format!("zone {zone} is not one of the shop's zones ({})", ZONES.join(", ")).into());
    }
    Ok(zone)
}

/// The shop's stack named `name`, with its program, handlers, guards and event policy.
/// `aws` is `cairn_aws::Provider` in production; tests may pass a test provider.
pub fn stack(name: &str, aws: impl cairn::Provider) -> Stack<Shop> {
    Stack::<Shop>::new(name)
        .provider(aws)
        .program(infra)
        .on_event("traffic.spike", traffic_spike)
        .on_event("traffic.normal", |_: &Event, shop: &mut Shop| {
            shop.web_capacity = MIN_WEB;
            Ok(())
        })
        .on_event("traffic.peak_hours", |_: &Event, shop: &mut Shop| {
            shop.web_capacity = shop.web_capacity.max(PEAK_HOURS_WEB);
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
        .on_event("az.degraded", |event: &Event, shop: &mut Shop| {
            shop.degraded_zones.insert(zone_of(event)?);
            Ok(())
        })
        .on_event("az.recovered", |event: &Event, shop: &mut Shop| {
            shop.degraded_zones.remove(&zone_of(event)?);
            Ok(())
        })
        .guard("web capacity within bounds", |shop: &Shop| {
            if (MIN_WEB..=MAX_WEB).contains(&shop.web_capacity) {
                Ok(())
            } else {
                Err(format!("web capacity {} is outside {MIN_WEB}..={MAX_WEB}", shop.web_capacity).into())
            }
        })
        .guard("a healthy zone remains", |shop: &Shop| {
            if ZONES.iter().any(|z| !shop.degraded_zones.contains(*z)) {
                Ok(())
            } else {
                Err("every zone would be degraded; the web group needs at least one".into())
            }
        })
        .event_policy(EventPolicy::default().deny_replace_or_delete("aws:ec2:Vpc").deny_replace_or_delete("aws:elasticache:*"))
}
