//! End to end against the local AWS, behind a proxy that adds a latency to every call
//! (50 ms unless `CAIRN_BENCH_LATENCY_MS` says otherwise), as a real control plane
//! answers in tens to hundreds of milliseconds:
//!
//! - `e2e_up_ecommerce_ms`: the ecommerce stack's first `up` on the file store, from
//!   locking the stack to the report; `e2e_up_calls`: the calls it made.
//! - `e2e_sequential_up_ms`: the same resources created by `benches/sequential_up.py`, a
//!   hand-written boto3 script that makes one call after another and reads nothing back
//!   it does not need; `e2e_up_vs_sequential`: the ratio of the two.
//! - `e2e_event_to_converged_ms`: a signed `traffic.spike` webhook request to a running
//!   reconciler, until the web group's new capacity is readable from the cloud;
//!   `e2e_update_call_ms`: the floor, the same change made by one hand-made
//!   `UpdateAutoScalingGroup` call through the proxy, timed the same way.
//!
//! Each figure is the median of `CAIRN_BENCH_RUNS` runs (3 unless set); every run is
//! printed to stderr. Needs the local AWS (`scripts/local-aws install`), whose Python
//! also runs the script. The calls dominate, so the dev profile is enough and reuses the
//! tests' build:
//!
//! ```sh
//! cargo bench --profile dev --all-features --bench e2e
//! ```

#[path = "../examples/ecommerce/shop.rs"]
#[allow(dead_code)]
mod shop;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use cairn::serve::{router, sign, WebhookConfig};
use cairn_sdk::events::{Reconciler, ReconcilerOptions};
use cairn_testkit::{FaultPlan, FaultProxy};
use tower::ServiceExt;

const SECRET: &str = "bench-webhook-secret";

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn bench(name: &str, value: f64, unit: &str) {
    println!("BENCH {name} {value:.2} {unit}");
}

async fn sdk_config(endpoint: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(aws_sdk_ec2::config::Credentials::new("test", "test", None, None, "bench"))
        .load()
        .await
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a runtime");
    runtime.block_on(run());
}

async fn run() {
    let moto = cairn_testkit::moto();
    moto.configure_env();
    let latency = Duration::from_millis(env_number("CAIRN_BENCH_LATENCY_MS", 50));
    let runs = env_number("CAIRN_BENCH_RUNS", 3).max(1) as usize;
    let proxy = FaultProxy::start(moto.endpoint());
    proxy.set_plan(FaultPlan::none().with_latency(latency));
    eprintln!("e2e: moto at {}, {} ms added to every call, {runs} runs", moto.endpoint(), latency.as_millis());

    // moto starts each service on its first call (about 1.5 s in all): warm it first,
    // directly, so no timed run pays for that.
    sequential_up(&moto.endpoint(), &format!("warm-{}", std::process::id()));

    // Cairn's up, each run a new stack (moto keeps what earlier runs made).
    let mut ups = Vec::new();
    let mut calls = Vec::new();
    let mut deployed = None;
    for run in 0..runs {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = cairn::state::open(&format!("file://{}", dir.path().display())).await.expect("the file store");
        let aws = cairn_aws::Provider::new(&sdk_config(&proxy.endpoint()).await);
        // Cairn.dev.toml's shop, its cache's AUTH token included, as the script makes it.
        let keyring = cairn::Keyring::from_key(&[7; 64]).expect("a key");
        let token = cairn::Secret::seal(&keyring, &"dev-sessions-token-2f6c1a9e".to_owned());
        let config = shop::ShopConfig { redis_auth_token: Some(token), ..shop::ShopConfig::default() };
        let stack = shop::stack(&format!("e2e{run}"), aws, config).secrets(keyring);
        proxy.reset_stats();
        let started = Instant::now();
        let mut session = stack.lock(store, "bench").await.expect("the stack locks");
        let report = session.up(&shop::Shop::default()).await.expect("the up runs");
        let elapsed = started.elapsed();
        assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
        let made = proxy.stats().calls;
        eprintln!("e2e: up {run}: {} ms, {made} calls, {} resources", elapsed.as_millis(), report.state.resources.len());
        if run == runs - 1 {
            eprintln!("e2e: its critical path (each step's calls, after the dependency that ended last): {}", critical_path(&report));
        }
        ups.push(elapsed.as_secs_f64() * 1e3);
        calls.push(made as f64);
        deployed = Some((session, dir));
    }

    // The same resources, one call after another.
    let mut sequential = Vec::new();
    for run in 0..runs {
        let (ms, made) = sequential_up(&proxy.endpoint(), &format!("seq{run}-{}", std::process::id()));
        eprintln!("e2e: sequential script {run}: {ms:.0} ms, {made} calls");
        sequential.push(ms);
    }

    let (session, _dir) = deployed.expect("at least one run");
    let (events, floor) = event_to_converged(session, &proxy, runs.max(5)).await;

    let (up, seq) = (median(ups), median(sequential));
    bench("e2e_up_ecommerce_ms", up, "ms");
    bench("e2e_up_calls", median(calls), "calls");
    bench("e2e_sequential_up_ms", seq, "ms");
    bench("e2e_up_vs_sequential", up / seq, "ratio");
    bench("e2e_event_to_converged_ms", median(events), "ms");
    bench("e2e_update_call_ms", median(floor), "ms");
    bench("e2e_call_latency_ms", latency.as_secs_f64() * 1e3, "ms");
}

/// Runs `benches/sequential_up.py` through the proxy: its wall time and call count.
fn sequential_up(endpoint: &str, prefix: &str) -> (f64, u64) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(root.join(".venv/bin/python"))
        .arg(root.join("benches/sequential_up.py"))
        .args(["--endpoint", endpoint, "--prefix", prefix])
        .output()
        .expect("the local AWS's Python runs (scripts/local-aws install)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the sequential script failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    // `SEQUENTIAL <ms> ms <calls> calls`
    let words: Vec<&str> = stdout.split_whitespace().collect();
    match words[..] {
        ["SEQUENTIAL", ms, "ms", calls, "calls"] => (ms.parse().expect("milliseconds"), calls.parse().expect("a count")),
        _ => panic!("the sequential script printed {stdout:?}"),
    }
}

/// Times `n` signed `traffic.spike` requests to a reconciler watching the deployed
/// stack, each from the request until the web group's new desired capacity is read
/// from the cloud (directly, not through the proxy). Then the floor: the same change
/// made by one `UpdateAutoScalingGroup` call through the proxy, timed the same way.
async fn event_to_converged(session: cairn::Session<shop::Shop>, proxy: &FaultProxy, n: usize) -> (Vec<f64>, Vec<f64>) {
    let group = session
        .state()
        .resources
        .iter()
        .find(|r| r.ty == "aws:autoscaling:Group")
        .map(|r| r.id.clone())
        .expect("the web group is deployed");
    let (reconciler, events) = Reconciler::new(session, ReconcilerOptions::default()).expect("a reconciler");
    let app = router(events, reconciler.status(), Some(WebhookConfig::new(SECRET)));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(reconciler.run(async {
        let _ = stopped.await;
    }));
    let autoscaling = aws_sdk_autoscaling::Client::new(&sdk_config(&cairn_testkit::moto().endpoint()).await);
    let capacity = |group: String| {
        let autoscaling = autoscaling.clone();
        async move {
            let answer = autoscaling.describe_auto_scaling_groups().auto_scaling_group_names(group).send().await;
            answer.ok().and_then(|a| a.auto_scaling_groups().first().and_then(|g| g.desired_capacity()))
        }
    };

    let mut times = Vec::new();
    for i in 0..n {
        // 3, 5, 3, 5, ... servers (500 requests per second each).
        let want = if i % 2 == 0 { 3 } else { 5 };
        let body = serde_json::to_vec(&serde_json::json!({
            "kind": "traffic.spike",
            // Its own id: two requests of one body in one second would be one event.
            "id": format!("bench-spike-{i}-{}", std::process::id()),
            "payload": { "requests_per_second": want * shop::RPS_PER_SERVER },
        }))
        .expect("JSON");
        let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs();
        let request = Request::post("/events")
            .header("content-type", "application/json")
            .header("X-Cairn-Timestamp", now.to_string())
            .header("X-Cairn-Signature", sign(SECRET.as_bytes(), now, &body))
            .body(Body::from(body))
            .expect("a request");
        let started = Instant::now();
        let answer = app.clone().oneshot(request).await.expect("the router answers");
        assert_eq!(answer.status(), StatusCode::OK, "the webhook takes the event");
        loop {
            if capacity(group.clone()).await == Some(want as i32) {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "the group never reached {want}");
        }
        let elapsed = started.elapsed();
        eprintln!("e2e: event {i}: capacity {want} readable after {:.1} ms", elapsed.as_secs_f64() * 1e3);
        times.push(elapsed.as_secs_f64() * 1e3);
        // The apply's last records are written after the call: let it finish.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = stop.send(());
    let session = task.await.expect("the reconciler task").expect("the reconciler stops");
    session.close().await.expect("the session closes");

    let through_proxy = aws_sdk_autoscaling::Client::new(&sdk_config(&proxy.endpoint()).await);
    let mut floor = Vec::new();
    for i in 0..n {
        let want = if i % 2 == 0 { 5 } else { 3 };
        let started = Instant::now();
        through_proxy
            .update_auto_scaling_group()
            .auto_scaling_group_name(&group)
            .desired_capacity(want)
            .send()
            .await
            .expect("the update is taken");
        while capacity(group.clone()).await != Some(want) {
            assert!(started.elapsed() < Duration::from_secs(30), "the group never reached {want}");
        }
        let elapsed = started.elapsed();
        eprintln!("e2e: one UpdateAutoScalingGroup to {want}: readable after {:.1} ms", elapsed.as_secs_f64() * 1e3);
        floor.push(elapsed.as_secs_f64() * 1e3);
    }
    (times, floor)
}

/// The chain of steps that decided the up's time, from the steps' own times and the
/// dependencies state records: each step starts when its last dependency ends.
fn critical_path(report: &cairn::ApplyReport) -> String {
    use std::collections::HashMap;
    let took: HashMap<&cairn::Urn, f64> = report.steps.iter().map(|s| (&s.urn, s.elapsed.as_secs_f64() * 1e3)).collect();
    let deps: HashMap<&cairn::Urn, &[cairn::Urn]> = report.state.resources.iter().map(|r| (&r.urn, r.dependencies.as_slice())).collect();
    // Steps in the order they were reported come after their dependencies' steps.
    let mut ends: HashMap<&cairn::Urn, (f64, Option<&cairn::Urn>)> = HashMap::new();
    for step in &report.steps {
        let last = deps.get(&step.urn).into_iter().flat_map(|d| d.iter()).filter_map(|d| ends.get(d).map(|e| (e.0, d))).max_by(|a, b| a.0.total_cmp(&b.0));
        let start = last.map_or(0.0, |(t, _)| t);
        ends.insert(&step.urn, (start + took[&step.urn], last.map(|(_, d)| d)));
    }
    let Some((mut at, _)) = ends.iter().max_by(|a, b| a.1 .0.total_cmp(&b.1 .0)).map(|(u, e)| (*u, e.0)) else { return String::new() };
    let mut chain = Vec::new();
    loop {
        let ty = at.ty().rsplit(':').next().unwrap_or_default();
        chain.push(format!("{ty} {} {:.0} ms", at.name(), took[at]));
        match ends[at].1 {
            Some(d) => at = d,
            None => break,
        }
    }
    chain.reverse();
    chain.join(" -> ")
}
