//! The ecommerce example end to end against the local AWS, through its CLI verbs: the
//! same stack, handlers and `Cli` its binary runs, driven in-process.

#[path = "../examples/ecommerce/shop.rs"]
#[allow(dead_code)]
mod shop;

use std::process::ExitCode;

use aws_sdk_autoscaling::Client as Autoscaling;
use cairn::{Cli, StackState};

struct Shop {
    state_dir: tempfile::TempDir,
    config: aws_config::SdkConfig,
}

impl Shop {
    async fn new() -> Self {
        cairn_testkit::moto().configure_env();
        // The local AWS never finishes an ElastiCache delete: wait 3 s for it, not 30 min.
        // (One test in this binary, so no other thread reads the environment meanwhile.)
        std::env::set_var("CAIRN_AWS_WAIT_TIMEOUT", "3");
        let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        Shop { state_dir: tempfile::tempdir().unwrap(), config }
    }

    fn location(&self) -> String {
        format!("file://{}", self.state_dir.path().display())
    }

    /// Runs `ecommerce --stack e2e --state <dir> <args>`.
    async fn run(&self, args: &[&str]) -> ExitCode {
        let provider = cairn_aws::Provider::new(&self.config);
        let location = self.location();
        let mut argv = vec!["ecommerce", "--stack", "e2e", "--state", location.as_str()];
        argv.extend_from_slice(args);
        Cli::new(move |name| shop::stack(name, provider)).run_with(argv).await
    }

    async fn ok(&self, args: &[&str]) {
        assert_eq!(self.run(args).await, ExitCode::SUCCESS, "ecommerce {}", args.join(" "));
    }

    async fn state(&self) -> StackState {
        let store = cairn::state::open(&self.location()).await.unwrap();
        store.load("e2e").await.unwrap().unwrap()
    }

    async fn history(&self) -> Vec<serde_json::Value> {
        cairn::state::open(&self.location()).await.unwrap().history("e2e").await.unwrap()
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
    assert_eq!(shop.run(&["up"]).await, ExitCode::from(1));
    assert!(shop.state().await.resources.is_empty());

    shop.ok(&["up", "--yes"]).await;
    assert_eq!(shop.web_capacity().await, 2);
    assert_eq!(shop.run(&["preview", "--expect-no-changes"]).await, ExitCode::SUCCESS, "a second up has nothing to do");

    shop.ok(&["emit", "traffic.spike", "--payload", r#"{"requests_per_second": 2600}"#, "--yes"]).await;
    assert_eq!(shop.web_capacity().await, 6, "ceil(2600 / 500) servers");

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
    assert_eq!(shop.run(&["emit", "az.degraded", "--payload", r#"{"zone": "mars-1a"}"#, "--yes"]).await, ExitCode::from(1));
    let history = shop.history().await;
    let kinds: Vec<&str> = history.iter().filter_map(|e| e["event"]["kind"].as_str()).collect();
    assert_eq!(kinds, ["traffic.spike", "sale.started", "sale.ended", "traffic.normal"]);
    assert!(history.iter().all(|e| e["outcome"] == "accepted" && e["apply"]["result"] == "succeeded"), "{history:#?}");

    shop.ok(&["state", "list"]).await;
    shop.ok(&["graph", "--format", "dot"]).await;
    shop.ok(&["history"]).await;
    shop.ok(&["refresh"]).await;
    assert_eq!(shop.run(&["preview", "--expect-no-changes"]).await, ExitCode::SUCCESS);

    // Destroy. The local AWS never finishes deleting an ElastiCache replication group
    // (it stays `deleting`) and does not implement DeleteCacheSubnetGroup, so there the
    // cache and what it stands on (its subnet group, security groups, private subnets
    // and the VPC) must stay, and destroy says so and exits 1. Everything else goes.
    let before = shop.state().await;
    assert_eq!(shop.run(&["destroy", "--yes"]).await, ExitCode::from(1));
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
