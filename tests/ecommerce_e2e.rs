//! The ecommerce example end to end against the local AWS, through its CLI verbs: the
//! example's own binary (cargo builds examples before integration tests), run as a user
//! runs it, with its state in a temporary directory.

use std::path::PathBuf;
use std::process::{Command, Output};

use aws_sdk_autoscaling::Client as Autoscaling;
use cairn::StackState;

/// `target/<profile>/examples/ecommerce`, next to this test's own `deps/` directory.
fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(|deps| deps.parent()).unwrap().join("examples").join("ecommerce");
    assert!(bin.exists(), "{} is missing: `cargo test` builds the examples first, but not when one `--test` is named; run `cargo build --example ecommerce`", bin.display());
    bin
}

/// The stack the test deploys: the example's `dev`, with its configuration and its
/// secret, the session cache's AUTH token in `Cairn.dev.toml`.
const STACK: &str = "dev";

/// The example's public passphrase (see `scripts/demo`), and the token it opens.
const PASSPHRASE: &str = "cairn-demo-only";
const AUTH_TOKEN: &str = "dev-sessions-token-2f6c1a9e";

struct Shop {
    state_dir: tempfile::TempDir,
    config: aws_config::SdkConfig,
    /// Everything every command printed, to search for the secret.
    transcript: std::sync::Mutex<String>,
}

impl Shop {
    async fn new() -> Self {
        cairn_testkit::moto().configure_env();
        // The local AWS never finishes an ElastiCache delete: the example waits 3 s for it,
        // not 30 min. (The binaries inherit this; one test in this binary reads it.)
        std::env::set_var("CAIRN_AWS_WAIT_TIMEOUT", "3");
        std::env::set_var("CAIRN_PASSPHRASE", PASSPHRASE);
        let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        Shop { state_dir: tempfile::tempdir().unwrap(), config, transcript: Default::default() }
    }

    fn location(&self) -> String {
        format!("file://{}", self.state_dir.path().display())
    }

    /// Runs `ecommerce --stack dev --state <dir> <args>` without a terminal, and returns
    /// its exit code and output.
    async fn run_output(&self, args: &[&str]) -> (i32, String) {
        let out = self.output(args);
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.code().unwrap_or(-1), text)
    }

    fn output(&self, args: &[&str]) -> Output {
        let location = self.location();
        let mut argv = vec!["--stack", STACK, "--state", location.as_str()];
        argv.extend_from_slice(args);
        let out = Command::new(example_binary()).args(&argv).stdin(std::process::Stdio::null()).output().unwrap();
        self.record(&out.stdout);
        self.record(&out.stderr);
        out
    }

    fn record(&self, printed: &[u8]) {
        self.transcript.lock().unwrap().push_str(&String::from_utf8_lossy(printed));
    }

    async fn run(&self, args: &[&str]) -> i32 {
        self.run_output(args).await.0
    }

    async fn ok(&self, args: &[&str]) -> String {
        let (code, text) = self.run_output(args).await;
        assert_eq!(code, 0, "ecommerce {}:\n{text}", args.join(" "));
        text
    }

    async fn state(&self) -> StackState {
        let store = cairn::state::open(&self.location()).await.unwrap();
        store.load(STACK).await.unwrap().unwrap()
    }

    async fn history(&self) -> Vec<serde_json::Value> {
        cairn::state::open(&self.location()).await.unwrap().history(STACK).await.unwrap()
    }

    fn id_of(state: &StackState, ty: &str, name: &str) -> Option<String> {
        state.resources.iter().find(|r| r.ty == ty && r.urn.name() == name).map(|r| r.id.clone())
    }

    /// The web group's desired capacity as AWS reports it.
    async fn web_capacity(&self) -> i32 {
        let id = Self::id_of(&self.state().await, "aws:autoscaling:Group", "web").expect("the web group is in state");
        let out = Autoscaling::new(&self.config).describe_auto_scaling_groups().auto_scaling_group_names(id).send().await.unwrap();
        out.auto_scaling_groups()[0].desired_capacity().unwrap()
    }

    async fn group_exists(&self, name: &str) -> bool {
        let out = Autoscaling::new(&self.config).describe_auto_scaling_groups().auto_scaling_group_names(name).send().await.unwrap();
        !out.auto_scaling_groups().is_empty()
    }
}

#[tokio::test]
async fn the_shop_deploys_scales_runs_a_sale_and_settles_through_its_cli() {
    let shop = Shop::new().await;

    // Without a terminal, a change needs --yes; nothing is created.
    let (code, text) = shop.run_output(&["up"]).await;
    assert_eq!(code, 1);
    assert!(text.contains("refusing to perform these changes without --yes"), "{text}");
    assert!(shop.state().await.resources.is_empty());
    let (code, text) = shop.run_output(&["preview", "--expect-no-changes"]).await;
    assert_eq!(code, 2, "changes pending: {text}");

    let text = shop.ok(&["up", "--yes"]).await;
    assert!(text.contains("35 created in"), "a closing summary: {text}");
    assert!(text.contains("ok  create aws:autoscaling:Group web ("), "a line per resource: {text}");
    assert_eq!(shop.web_capacity().await, 2);
    assert_eq!(shop.run(&["preview", "--expect-no-changes"]).await, 0, "a second up has nothing to do");

    // The stack's outputs, and the example's own verb built on one.
    let group = Shop::id_of(&shop.state().await, "aws:autoscaling:Group", "web").unwrap();
    assert_eq!(shop.ok(&["outputs", "web_group"]).await.trim(), group);
    let outputs: serde_json::Value = serde_json::from_str(&shop.ok(&["outputs", "--json"]).await).unwrap();
    assert!(outputs["events_queue_url"].as_str().is_some_and(|u| u.contains("/shop-events")), "{outputs}");
    assert!(outputs["load_balancer"].as_str().is_some_and(|s| s.starts_with("shop.example.com (")), "{outputs}");
    let text = shop.ok(&["web-capacity"]).await;
    assert!(text.contains(&format!("web group {group}: desired capacity 2")), "{text}");

    // A saved plan is what `up --plan` applies, exactly.
    let plan = shop.state_dir.path().join("spike.json");
    let dry = shop.ok(&["emit", "traffic.spike", "--payload", r#"{"requests_per_second": 2600}"#, "--dry-run"]).await;
    assert!(dry.contains("desired_capacity: 2 => 6") && dry.contains("Dry run"), "{dry}");
    assert_eq!(shop.web_capacity().await, 2, "a dry run changes nothing");
    shop.ok(&["preview", "--json", "--out", plan.to_str().unwrap()]).await;
    assert!(std::fs::read_to_string(&plan).unwrap().contains("\"changes\""));

    shop.ok(&["emit", "traffic.spike", "--payload", r#"{"requests_per_second": 2600}"#, "--yes"]).await;
    assert_eq!(shop.web_capacity().await, 6, "ceil(2600 / 500) servers");
    // The saved plan was made against older state: refused, nothing applied.
    let (code, text) = shop.run_output(&["up", "--plan", plan.to_str().unwrap()]).await;
    assert_eq!(code, 1, "{text}");

    shop.ok(&["emit", "sale.started", "--yes"]).await;
    let state = shop.state().await;
    let workers = Shop::id_of(&state, "aws:autoscaling:Group", "sale-workers").expect("sale workers in state");
    assert!(shop.group_exists(&workers).await);
    assert!(Shop::id_of(&state, "aws:sqs:Queue", "sale-orders").is_some());

    shop.ok(&["emit", "sale.ended", "--yes"]).await;
    assert!(!shop.group_exists(&workers).await, "the sale's workers are gone");
    shop.ok(&["emit", "traffic.normal", "--yes"]).await;
    assert_eq!(shop.web_capacity().await, 2);

    // A guard refuses a bad event: exit 1, nothing recorded.
    let (code, text) = shop.run_output(&["emit", "az.degraded", "--payload", r#"{"zone": "mars-1a"}"#, "--yes"]).await;
    assert_eq!(code, 1);
    assert!(text.contains("zone mars-1a is not one of the shop's zones"), "{text}");
    let history = shop.history().await;
    let kinds: Vec<&str> = history.iter().filter_map(|e| e["event"]["kind"].as_str()).collect();
    assert_eq!(kinds, ["traffic.spike", "sale.started", "sale.ended", "traffic.normal"]);
    assert!(history.iter().all(|e| e["outcome"] == "accepted" && e["apply"]["result"] == "succeeded"), "{history:#?}");

    assert!(shop.ok(&["state", "list"]).await.contains("35 resources"));
    assert!(shop.ok(&["graph", "--format", "dot"]).await.starts_with("digraph cairn {"));
    assert!(shop.ok(&["history"]).await.contains("traffic.spike"));
    let refresh = shop.ok(&["refresh"]).await;
    assert!(refresh.contains("No drift"), "{refresh}");
    assert_eq!(shop.run(&["preview", "--expect-no-changes"]).await, 0);
    // Export, then import the same state back: a round trip.
    let exported = shop.output(&["state", "export"]).stdout;
    let file = shop.state_dir.path().join("export.json");
    std::fs::write(&file, &exported).unwrap();
    shop.ok(&["state", "import", file.to_str().unwrap()]).await;
    assert_eq!(shop.state().await.resources.len(), 35);
    assert_eq!(shop.run(&["preview", "--expect-no-changes"]).await, 0);

    watch_serves_a_signed_event_and_stops_cleanly(&shop).await;
    the_auth_token_reaches_aws_and_nothing_else(&shop).await;

    // Destroy. The local AWS never finishes deleting an ElastiCache replication group
    // (it stays `deleting`) and does not implement DeleteCacheSubnetGroup, so there the
    // cache and what it stands on (its subnet group, security groups, private subnets
    // and the VPC) must stay, and destroy says so and exits 1. Everything else goes.
    let before = shop.state().await;
    assert_eq!(shop.run(&["destroy", "--yes"]).await, 1);
    let after = shop.state().await;
    let cache = before.resources.iter().find(|r| r.ty == "aws:elasticache:ReplicationGroup").unwrap();
    let mut under_cache = vec![cache.urn.clone()];
    let mut i = 0;
    while i < under_cache.len() {
        let r = before.resource(&under_cache[i]).unwrap();
        for d in &r.dependencies {
            if !under_cache.contains(d) {
                under_cache.push(d.clone());
            }
        }
        i += 1;
    }
    let mut left: Vec<String> = after.resources.iter().map(|r| r.urn.to_string()).collect();
    let mut expected: Vec<String> = under_cache.iter().map(ToString::to_string).collect();
    left.sort();
    expected.sort();
    assert_eq!(left, expected, "only the cache and what it stands on remain");
    assert!(after.pending.iter().any(|p| p.urn == cache.urn), "the cache's delete is still pending, to be settled next time");
    let web = Shop::id_of(&before, "aws:autoscaling:Group", "web").unwrap();
    assert!(!shop.group_exists(&web).await, "the web group is gone from AWS");
}

/// The secret of `Cairn.dev.toml` is given to AWS (the group asks for AUTH over TLS),
/// and appears nowhere else: not in any file under the state directory (state, journal,
/// audit log, the saved plan and the export there), not in anything any command printed.
async fn the_auth_token_reaches_aws_and_nothing_else(shop: &Shop) {
    let id = Shop::id_of(&shop.state().await, "aws:elasticache:ReplicationGroup", "sessions").unwrap();
    let groups = aws_sdk_elasticache::Client::new(&shop.config).describe_replication_groups().replication_group_id(id).send().await.unwrap();
    let group = &groups.replication_groups()[0];
    assert_eq!((group.auth_token_enabled(), group.transit_encryption_enabled(), group.at_rest_encryption_enabled()), (Some(true), Some(true), Some(true)));

    // The search can find it: the key opens it on request.
    let location = shop.location();
    let shown = Command::new(example_binary()).args(["--stack", STACK, "--state", &location, "config", "get", "redis_auth_token", "--show-secrets"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&shown.stdout).trim(), AUTH_TOKEN);
    shop.ok(&["outputs"]).await;
    shop.ok(&["config", "list"]).await;
    shop.ok(&["preview", "--diff", "--json"]).await;
    shop.ok(&["history", "--json"]).await;
    let state = shop.state().await;
    let cache = state.resources.iter().find(|r| r.urn.name() == "sessions" && r.ty.ends_with("ReplicationGroup")).unwrap();
    shop.ok(&["state", "show", &cache.urn.to_string()]).await;
    assert_eq!(shop.ok(&["outputs", "redis_url"]).await.trim(), "[secret]");
    let url = Command::new(example_binary()).args(["--stack", STACK, "--state", &location, "outputs", "redis_url", "--show-secrets"]).output().unwrap();
    assert!(String::from_utf8_lossy(&url.stdout).starts_with(&format!("rediss://:{AUTH_TOKEN}@")), "{url:?}");

    let transcript = shop.transcript.lock().unwrap().clone();
    assert!(transcript.contains("[secret]"), "the secret is shown redacted");
    assert!(!transcript.contains(AUTH_TOKEN), "a command printed the secret");
    let mut files = vec![shop.state_dir.path().to_path_buf()];
    let mut searched = 0;
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        searched += 1;
        assert!(!String::from_utf8_lossy(&bytes).contains(AUTH_TOKEN), "{} holds the secret", path.display());
    }
    assert!(searched >= 4, "state, journal, audit log, saved plan and export: {searched} files");
}

/// `watch` as a process: it serves /healthz, takes a signed webhook event, applies it,
/// counts it in /metrics, and on SIGINT stops with its state recorded and its lock
/// released.
async fn watch_serves_a_signed_event_and_stops_cleanly(shop: &Shop) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let location = shop.location();
    let listen = format!("127.0.0.1:{port}");
    let watch = Command::new(example_binary())
        .args(["--stack", STACK, "--state", location.as_str(), "watch", "--listen", listen.as_str()])
        .env("CAIRN_WEBHOOK_SECRET", "s3cr3t")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let get = |path: &str| cairn_testkit::http_get(port, path);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while get("/healthz").is_none_or(|(status, _)| status != 200) {
        assert!(std::time::Instant::now() < deadline, "watch did not answer /healthz within 60 s");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let body = r#"{"kind":"traffic.spike","payload":{"requests_per_second":4100},"id":"e2e-webhook-1"}"#;
    let ts = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let signature = cairn::serve::sign(b"s3cr3t", ts, body.as_bytes());
    let post = format!(
        "POST /events HTTP/1.1\r\nHost: shop\r\nContent-Type: application/json\r\nX-Cairn-Timestamp: {ts}\r\nX-Cairn-Signature: {signature}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (status, answer) = cairn_testkit::http(port, &post).unwrap();
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("\"outcome\":\"accepted\""), "{answer}");
    // Answered once recorded; the apply follows at once.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while shop.web_capacity().await != 9 {
        assert!(std::time::Instant::now() < deadline, "the group never reached ceil(4100 / 500) = 9");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let bad = post.replace(&signature, "v1=00");
    assert_eq!(cairn_testkit::http(port, &bad).unwrap().0, 401);
    let (_, metrics) = get("/metrics").unwrap();
    assert!(metrics.contains("cairn_events_received_total{kind=\"traffic.spike\"} 1"), "{metrics}");
    assert!(metrics.contains("cairn_requests_refused_total{source=\"webhook\",reason=\"bad_signature\"} 1"), "{metrics}");
    let (_, status_json) = get("/status").unwrap();
    shop.record(status_json.as_bytes());
    shop.record(metrics.as_bytes());
    assert!(status_json.contains("\"web_capacity\":9"), "{status_json}");

    // The loop the program declares: an alarm's state change on the default bus (the
    // local AWS never fires alarms itself, so the test puts the event CloudWatch would),
    // through the shop's EventBridge rule into its events queue, which `watch` consumes;
    // the handler for `alarm.dev-web-cpu-high.alarm` adds two web servers.
    let detail = serde_json::json!({
        "alarmName": "dev-web-cpu-high",
        "state": {"value": "ALARM", "reason": "Threshold Crossed"},
        "previousState": {"value": "OK"},
    });
    let entry = aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
        .source("aws.cloudwatch")
        .detail_type("CloudWatch Alarm State Change")
        .detail(detail.to_string())
        .build();
    let put = aws_sdk_eventbridge::Client::new(&shop.config).put_events().entries(entry).send().await.unwrap();
    assert_eq!(put.failed_entry_count(), 0, "{put:?}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while shop.web_capacity().await != 11 {
        assert!(std::time::Instant::now() < deadline, "the alarm's event never reached the web group (9 + 2 = 11 servers)");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (_, metrics) = get("/metrics").unwrap();
    assert!(metrics.contains("cairn_events_received_total{kind=\"alarm.dev-web-cpu-high.alarm\"} 1"), "{metrics}");

    let interrupted = Command::new("kill").args(["-INT", &watch.id().to_string()]).status().unwrap();
    assert!(interrupted.success());
    let out = watch.wait_with_output().unwrap();
    shop.record(&out.stdout);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("Stopped; state recorded."), "{stdout}");
    // The lock is released: a change can run, and puts capacity back.
    shop.ok(&["emit", "traffic.normal", "--yes"]).await;
    assert_eq!(shop.web_capacity().await, 2);
}

/// A newcomer without AWS settings: `up` says the region is missing before any call,
/// exits 1, and writes no state at all (no lock, no snapshot).
#[test]
fn without_an_aws_region_up_says_so_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let state = format!("file://{}", dir.path().join("state").display());
    let out = Command::new(example_binary())
        .args(["--state", state.as_str(), "up", "--yes"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir.path())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("CAIRN_PASSPHRASE", PASSPHRASE)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("error: the aws provider cannot run: no AWS region is configured: set AWS_REGION") && stderr.contains("Nothing was called"),
        "{stderr}"
    );
    assert!(!dir.path().join("state").exists(), "no state was written");
}
