//! A small "cloud" of typed resources for the engine's tests, written only against the
//! public API, the way a provider crate writes its resources.
#![allow(dead_code)]

use cairn_sdk::schema::Default;
use cairn_sdk::{CheckFailure, Decl, Props, ResourceExt, Stack, StackState};
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

cairn_sdk::resource! {
    pub struct Network {
        token: "test:net:Network",
        schema: NETWORK,
        inputs: NetworkInputs,
        handle: NetworkRef,
        validate: check_cidr,
    }
    inputs {
        cidr_block: String = required().forces_replacement(),
        dns: bool = default(Default::Bool(true)),
        name: String = auto_name().forces_replacement(),
    }
    outputs {
        id: String,
        arn: String,
    }
    echoes {
        cidr_block: String,
    }
}

// --- Subnet --------------------------------------------------------------------------

cairn_sdk::resource! {
    pub struct Subnet {
        token: "test:net:Subnet",
        schema: SUBNET,
        inputs: SubnetInputs,
        handle: SubnetRef,
        validate: check_cidr,
    }
    inputs {
        network_id: String = required().forces_replacement(),
        cidr_block: String = required().forces_replacement(),
        zone: String = computed().forces_replacement(),
        public_ips: bool,
    }
    outputs {
        id: String,
    }
    echoes {
        zone: String,
    }
}

// --- Group (an autoscaling group) ---------------------------------------------------

cairn_sdk::resource! {
    pub struct Group {
        token: "test:compute:Group",
        schema: GROUP,
        inputs: GroupInputs,
        handle: GroupRef,
        validate: check_group,
    }
    inputs {
        subnets: Vec<String> = required(),
        image: String = required(),
    }
    by_hand {
        min: u32 = default(Default::Int(1)),
        max: u32 = default(Default::Int(1)),
        desired: u32 = default(Default::Int(1)),
    }
    outputs {
        id: String,
        version: u64 = changes_on_update(),
    }
}

fn check_group(decl: &Decl, out: &mut Vec<CheckFailure>) {
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
}

impl Group {
    pub fn capacity(mut self, min: u32, desired: u32, max: u32) -> Self {
        self.0.set("min", min);
        self.0.set("desired", desired);
        self.0.set("max", max);
        self
    }
}

// --- Queue ---------------------------------------------------------------------------

cairn_sdk::resource! {
    pub struct Queue {
        token: "test:queue:Queue",
        schema: QUEUE,
        inputs: QueueInputs,
        handle: QueueRef,
    }
    inputs {
        name: String = auto_name().forces_replacement(),
        fifo: bool = default(Default::Bool(false)).forces_replacement(),
        visibility_timeout: u32 = default(Default::Int(30)),
        dead_letter_arn: String,
        auth_token: String = secret(),
    }
    outputs {
        id: String,
        arn: String,
    }
    echoes {
        name: String,
    }
}

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
    Stack::<Shop>::new("dev").program(shop_program).provider(provider.clone()).secrets(keyring())
}

/// The key the tests' stacks seal their secrets with (the orders queue's `auth_token`).
pub fn keyring() -> std::sync::Arc<cairn_sdk::Keyring> {
    cairn_sdk::Keyring::from_key(&[42; 64]).unwrap()
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

/// The cloud holds exactly what `state` says: one resource per entry, none twice.
pub fn assert_cloud_is(provider: &TestProvider, state: &StackState, n: usize) {
    assert_eq!(state.resources.len(), n, "{:?}", state.resources);
    let mut ids: Vec<_> = provider.resources().into_iter().map(|r| r.id).collect();
    ids.sort();
    let mut recorded: Vec<_> = state.resources.iter().map(|r| r.id.clone()).collect();
    recorded.sort();
    assert_eq!(ids, recorded, "the cloud holds what state does not say, or the reverse");
}
