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
use cairn::{Cli, CliError, VerbContext};
use cairn_aws::events::SqsSource;

#[tokio::main]
async fn main() -> ExitCode {
    let aws = cairn_aws::Provider::from_env().await;
    let peak_hours = match Schedule::cron("0 8 * * MON-FRI", "traffic.peak_hours") {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    // Each stack's sizes and zones come from its Cairn.<stack>.toml next to this file.
    Cli::configured(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/ecommerce"), move |name, config| shop::stack(name, aws.clone(), config))
        .schedule(peak_hours)
        .source(SqsSource::output(shop::EVENTS_QUEUE_URL))
        .verb("web-capacity", "Print the web group's capacity as AWS reports it", web_capacity)
        .run()
        .await
}

/// The desired capacity and instance count of the stack's web group (its `web_group`
/// output), read from AWS.
async fn web_capacity(cx: VerbContext) -> Result<ExitCode, CliError> {
    let group = cx.output_str("web_group")?;
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let client = aws_sdk_autoscaling::Client::new(&config);
    let out = client
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(group)
        .send()
        .await
        .map_err(|e| CliError::Verb(format!("describing the web group {group}: {}", aws_sdk_autoscaling::error::DisplayErrorContext(e)).into()))?;
    let g = out.auto_scaling_groups().first().ok_or_else(|| CliError::Verb(format!("AWS has no group {group}").into()))?;
    println!("web group {group}: desired capacity {} ({} instances) as AWS reports it", g.desired_capacity().unwrap_or(0), g.instances().len());
    Ok(ExitCode::SUCCESS)
}
