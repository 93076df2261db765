//! A first slice of the flagship shop: its network and order queues, converged from the
//! shop's state as it changes. Run it against the local AWS with `scripts/demo`.
//!
//! The full ecommerce example (Auto Scaling, Redis, events, the CLI) grows from this one
//! as the AWS provider gains those resources.

use cairn::{Cx, ProgramResult, RenderOptions, Stack};
use cairn_aws::ec2::{Subnet, Vpc};
use cairn_aws::sqs::Queue;
use serde::{Deserialize, Serialize};

/// The shop's state: the program renders it into resources.
#[derive(Clone, Default, Serialize, Deserialize)]
struct Shop {
    flash_sale: bool,
}

fn infra(cx: &mut Cx, shop: &Shop) -> ProgramResult {
    let vpc = cx.add(Vpc::new("shop").cidr_block("10.0.0.0/16").enable_dns_hostnames(true));
    for (i, zone) in ["us-east-1a", "us-east-1b"].into_iter().enumerate() {
        let cidr = format!("10.0.{}.0/24", i + 1);
        cx.add(Subnet::new(&format!("web-{zone}")).vpc_id(vpc.id()).cidr_block(cidr.as_str()).availability_zone(zone));
    }
    let dlq = cx.add(Queue::new("orders-dlq"));
    cx.add(Queue::new("orders").visibility_timeout(60).dead_letter(dlq.arn(), 5));
    if shop.flash_sale {
        let sale_dlq = cx.add(Queue::new("flash-orders-dlq"));
        cx.add(Queue::new("flash-orders").visibility_timeout(30).dead_letter(sale_dlq.arn(), 3));
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let aws = cairn_aws::Provider::from_env().await;
    let stack = Stack::<Shop>::new("shop-demo").provider(aws).program(infra);
    let store = cairn::state::open(&cairn::state::location(None)).await?;
    println!("state: {}\n", store.location());
    let mut session = stack.lock(store, "demo").await?;
    let result = run(&mut session).await;
    session.close().await?;
    result
}

async fn run(session: &mut cairn::Session<Shop>) -> Result<(), Box<dyn std::error::Error>> {
    for (title, shop) in [
        ("up: the shop's network and order queues", Shop { flash_sale: false }),
        ("sale.started: a flash-sale queue with its own dead-letter queue", Shop { flash_sale: true }),
        ("sale.ended: the flash-sale queues go", Shop { flash_sale: false }),
    ] {
        println!("== {title}");
        let plan = session.preview(&shop)?;
        print!("{}", plan.render(RenderOptions::diff()));
        let report = session.apply(&plan).await?;
        if !report.succeeded() {
            return Err(format!("apply failed: {:?}", report.failures().collect::<Vec<_>>()).into());
        }
        println!("applied in {:.2} s\n", report.elapsed.as_secs_f64());
    }
    let queues: Vec<String> = session.state().resources.iter().filter(|r| r.ty == "aws:sqs:Queue").map(|r| r.id.clone()).collect();
    println!("queues now: {queues:?}");
    let refreshed = session.refresh().await?;
    println!("refresh: {} resources read back, {} drifted\n", refreshed.state.resources.len(), refreshed.drift.len());

    println!("== destroy");
    let report = session.destroy().await?;
    println!("{} deleted in {:.2} s", report.summary.delete, report.elapsed.as_secs_f64());
    Ok(())
}
