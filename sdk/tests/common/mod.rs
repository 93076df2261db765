//! A small "cloud" of typed resources for the engine's tests, written only against the
//! public API, the way a provider crate writes its resources.
#![allow(dead_code)]

use cairn_sdk::schema::{Default, Property, ResourceType};
use cairn_sdk::{typed_handle, CheckFailure, Decl, Input, Props, ResourceExt, Stack, StackState};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[allow(unused_imports)]
pub use cairn_sdk::testing::{Op, TestProvider};

fn cidr_ok(s: &str) -> bool {
    let Some((ip, bits)) = s.split_once('/') else { return false };
    let octets: Vec<&str> = ip.split('.').collect();
    octets.len() == 4 && octets.iter().all(|o| o.parse::<u8>().is_ok()) && bits.parse::<u8>().is_ok_and(|b| b <= 32)
}

fn check_cidr(decl: &Decl, out: &mut Vec<CheckFailure>) {
    if let Some(v) = decl.value("cidr_block") {
        if !v.as_str().is_some_and(cidr_ok) {
            out.push(CheckFailure::new("cidr_block", Some(v), "be an IPv4 CIDR block such as 10.0.0.0/16"));
        }
    }
}

// --- Network -------------------------------------------------------------------------

pub static NETWORK: ResourceType = ResourceType::new(
    "test:net:Network",
    &[
        Property::input("cidr_block").required().forces_replacement(),
        Property::input("dns").default(Default::Bool(true)),
        Property::input("name").auto_name().forces_replacement(),
        Property::output("id"),
        Property::output("arn"),
    ],
)
.with_validation(check_cidr);

pub struct Network(Decl);

typed_handle! {
    pub struct NetworkRef { id: String, arn: String, cidr_block: String }
}

impl Network {
    pub fn new(name: &str) -> Self {
        Network(Decl::new(&NETWORK, name))
    }
    pub fn cidr_block(mut self, v: impl Into<Input<String>>) -> Self {
        self.0.set("cidr_block", v);
        self
    }
    pub fn dns(mut self, v: impl Into<Input<bool>>) -> Self {
        self.0.set("dns", v);
        self
    }
    pub fn name(mut self, v: impl Into<Input<String>>) -> Self {
        self.0.set("name", v);
        self
    }
}

// --- Subnet --------------------------------------------------------------------------

pub static SUBNET: ResourceType = ResourceType::new(
    "test:net:Subnet",
    &[
        Property::input("network_id").required().forces_replacement(),
        Property::input("cidr_block").required().forces_replacement(),
        Property::optional_computed("zone").forces_replacement(),
        Property::input("public_ips"),
        Property::output("id"),
    ],
)
.with_validation(check_cidr);

pub struct Subnet(Decl);

typed_handle! {
    pub struct SubnetRef { id: String, zone: String }
}

impl Subnet {
    pub fn new(name: &str) -> Self {
        Subnet(Decl::new(&SUBNET, name))
    }
    pub fn network_id(mut self, v: impl Into<Input<String>>) -> Self {
        self.0.set("network_id", v);
        self
    }
    pub fn cidr_block(mut self, v: impl Into<Input<String>>) -> Self {
        self.0.set("cidr_block", v);
        self
    }
    pub fn zone(mut self, v: impl Into<Input<String>>) -> Self {
        self.0.set("zone", v);
        self
    }
    pub fn public_ips(mut self, v: impl Into<Input<bool>>) -> Self {
        self.0.set("public_ips", v);
        self
    }
}

// --- Group (an autoscaling group) ---------------------------------------------------

pub static GROUP: ResourceType = ResourceType::new(
    "test:compute:Group",
    &[
        Property::input("subnets").required(),
        Property::input("image").required(),
        Property::input("min").default(Default::Int(1)),
        Property::input("max").default(Default::Int(1)),
        Property::input("desired").default(Default::Int(1)),
        Property::output("id"),
        Property::output("version").changes_on_update(),
    ],
)
.with_validation(|decl, out| {
    let n = |k| decl.value(k).and_then(Value::as_i64);
    if let (Some(min), Some(max)) = (n("min"), n("max")) {
        if min > max {
            out.push(CheckFailure::new("min", decl.value("min"), format!("be at most max ({max})")));
        }
        if let Some(desired) = n("desired") {
            if desired < min || desired > max {
                out.push(CheckFailure::new("desired", decl.value("desired"), format!("be between min ({min}) and max ({max})")));
            }
        }
    }
});

pub struct Group(Decl);

typed_handle! {
    pub struct GroupRef { id: String, version: u64 }
}

impl Group {
    pub fn new(name: &str) -> Self {
        Group(Decl::new(&GROUP, name))
    }
    pub fn subnets(mut self, v: impl Into<Input<Vec<String>>>) -> Self {
        self.0.set("subnets", v);
        self
    }
    pub fn image(mut self, v: impl Into<Input<String>>) -> Self {
        self.0.set("image", v);
        self
    }
    pub fn capacity(mut self, min: u32, desired: u32, max: u32) -> Self {
        self.0.set("min", min);
        self.0.set("desired", desired);
        self.0.set("max", max);
        self
    }
}

// --- Queue ---------------------------------------------------------------------------

pub static QUEUE: ResourceType = ResourceType::new(
    "test:queue:Queue",
    &[
        Property::input("name").auto_name().forces_replacement(),
        Property::input("fifo").default(Default::Bool(false)).forces_replacement(),
        Property::input("visibility_timeout").default(Default::Int(30)),
        Property::input("dead_letter_arn"),
        Property::input("auth_token").secret(),
        Property::output("id"),
        Property::output("arn"),
    ],
);

pub struct Queue(Decl);

typed_handle! {
    pub struct QueueRef { id: String, arn: String, name: String }
}

impl Queue {
    pub fn new(name: &str) -> Self {
        Queue(Decl::new(&QUEUE, name))
    }
    pub fn name(mut self, v: impl Into<Input<String>>) -> Self {
        self.0.set("name", v);
        self
    }
    pub fn fifo(mut self, v: bool) -> Self {
        self.0.set("fifo", v);
        self
    }
    pub fn visibility_timeout(mut self, v: u32) -> Self {
        self.0.set("visibility_timeout", v);
        self
    }
    pub fn dead_letter_arn(mut self, v: impl Into<Input<String>>) -> Self {
        self.0.set("dead_letter_arn", v);
        self
    }
    pub fn auth_token(mut self, v: &str) -> Self {
        self.0.set("auth_token", v);
        self
    }
}

cairn_sdk::impl_resource!(Network => NetworkRef);
cairn_sdk::impl_resource!(Subnet => SubnetRef);
cairn_sdk::impl_resource!(Group => GroupRef);
cairn_sdk::impl_resource!(Queue => QueueRef);

// --- A shop, the shape of the flagship example ---------------------------------------

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Shop {
    pub capacity: u32,
    pub flash_sale: bool,
    pub network_cidr: String,
    pub image: String,
    pub protect_network: bool,
    pub dlq_timeout: u32,
}

impl Shop {
    pub fn new() -> Self {
        Shop { capacity: 2, flash_sale: false, network_cidr: "10.0.0.0/16".into(), image: "img-1".into(), protect_network: false, dlq_timeout: 30 }
    }
}

pub fn shop_program(cx: &mut cairn_sdk::Cx, shop: &Shop) -> cairn_sdk::ProgramResult {
    let mut net = Network::new("shop").cidr_block(shop.network_cidr.as_str());
    if shop.protect_network {
        net = net.protect();
    }
    let net = cx.add(net);
    let a = cx.add(Subnet::new("web-a").network_id(net.id()).cidr_block("10.0.1.0/24").zone("zone-a"));
    let b = cx.add(Subnet::new("web-b").network_id(net.id()).cidr_block("10.0.2.0/24").zone("zone-b"));
    cx.add(Group::new("web").subnets([a.id(), b.id()]).image(shop.image.as_str()).capacity(2, shop.capacity, 12));
    let dlq = cx.add(Queue::new("orders-dlq").visibility_timeout(shop.dlq_timeout));
    cx.add(Queue::new("orders").dead_letter_arn(dlq.arn()).auth_token("s3cr3t"));
    if shop.flash_sale {
        let sale_dlq = cx.add(Queue::new("sale-dlq"));
        let sale = cx.add(Queue::new("sale-orders").dead_letter_arn(sale_dlq.arn()));
        cx.add(Group::new("sale-workers").subnets([a.id()]).image(shop.image.as_str()).depends_on(&sale));
    }
    Ok(())
}

/// Outputs the fake cloud computes: an ARN for everything.
pub fn provider() -> TestProvider {
    TestProvider::new("test").with_outputs(|urn, _| {
        let mut p = Props::new();
        p.insert("arn", Value::from(format!("arn:test:{}", urn.name())));
        p.insert("version", Value::from(1));
        p
    })
}

pub fn shop_stack(provider: &TestProvider) -> Stack<Shop> {
    Stack::<Shop>::new("dev").program(shop_program).provider(provider.clone())
}

/// A session on an in-memory store holding `state` as it is.
pub async fn session_at<S>(stack: &Stack<S>, state: &StackState) -> cairn_sdk::Session<S>
where
    S: Serialize + serde::de::DeserializeOwned + std::default::Default + Send + Sync + 'static,
{
    let store = std::sync::Arc::new(cairn_state::MemoryStore::holding(state.clone()));
    stack.lock(store, "test").await.expect("the stack opens on its state")
}

/// Deploys `shop` from nothing and returns the state.
pub async fn deployed(stack: &Stack<Shop>, shop: &Shop) -> StackState {
    let mut session = stack.in_memory_session().await.expect("an in-memory session");
    let report = session.up(shop).await.expect("first up plans");
    assert!(report.succeeded(), "first up failed: {:?}", report.failures().collect::<Vec<_>>());
    report.state
}
