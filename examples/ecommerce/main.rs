//! The ecommerce example: a shop on AWS that scales for traffic spikes, opens and closes
//! flash sales, and steps around a degraded zone, all from events.
//!
//! ```text
//! cargo run --example ecommerce -- up --yes
//! cargo run --example ecommerce -- emit traffic.spike --payload '{"requests_per_second": 2600}' --yes
//! cargo run --example ecommerce -- watch        # webhook, the events queue, peak-hours schedule
//! ```
//!
//! `scripts/demo` runs it end to end against the local AWS.

mod shop;

use std::process::ExitCode;

use cairn::events::Schedule;
use cairn::Cli;
use cairn_aws::events::SqsSource;

#[tokio::main]
async fn main() -> ExitCode {
    // One extra verb for the demo: the web group's capacity as AWS reports it.
    if std::env::args().nth(1).as_deref() == Some("web-capacity") {
        return web_capacity().await;
    }
    let aws = cairn_aws::Provider::from_env().await;
    let peak_hours = match Schedule::cron("0 8 * * MON-FRI", "traffic.peak_hours") {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    Cli::new(move |name| shop::stack(name, aws.clone()))
        .schedule(peak_hours)
        .source(SqsSource::queue(shop::EVENTS_QUEUE))
        .run()
        .await
}

/// Prints the desired capacity and instance count of the web group, read from AWS.
async fn web_capacity() -> ExitCode {
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let store = match cairn::state::open(&cairn::state::location(None)).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let stack = std::env::args().skip_while(|a| a != "--stack").nth(1).unwrap_or_else(|| "dev".to_owned());
    let state = match store.load(&stack).await {
        Ok(Some(state)) => state,
        Ok(None) => {
            eprintln!("error: stack '{stack}' has no state; run `up` first");
            return ExitCode::from(1);
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let Some(web) = state.resources.iter().find(|r| r.ty == "aws:autoscaling:Group" && r.urn.name() == "web") else {
        eprintln!("error: stack '{stack}' has no web group");
        return ExitCode::from(1);
    };
    let client = aws_sdk_autoscaling::Client::new(&config);
    match client.describe_auto_scaling_groups().auto_scaling_group_names(&web.id).send().await {
        Ok(out) => match out.auto_scaling_groups().first() {
            Some(g) => {
                println!("web group {}: desired capacity {} ({} instances) as AWS reports it", web.id, g.desired_capacity().unwrap_or(0), g.instances().len());
                ExitCode::SUCCESS
            }
            None => {
                eprintln!("error: AWS has no group {}", web.id);
                ExitCode::from(1)
            }
        },
        Err(e) => {
            eprintln!("error: describing {}: {e}", web.id);
            ExitCode::from(1)
        }
    }
}
