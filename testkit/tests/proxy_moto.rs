//! The fault proxy in front of moto, seen through the official AWS SDK: the injected
//! errors parse into the codes the SDK (and Cairn's retry logic) expect, and a lost answer
//! leaves the call's effect behind.
//!
//! Each test has its own proxy and its own CIDR, since they share one moto.

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::Filter;
use cairn_testkit::{moto, Fault, FaultPlan, FaultProxy};

/// The SDK configured in code, not from the environment, which other tests may share.
async fn sdk_config(proxy: &FaultProxy) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(proxy.endpoint())
        .region(Region::new("us-east-1"))
        .credentials_provider(aws_sdk_ec2::config::Credentials::new("test", "test", None, None, "test"))
        // One attempt per call: the test sees each injected fault itself.
        .retry_config(RetryConfig::disabled())
        .load()
        .await
}

async fn ec2_client(proxy: &FaultProxy) -> aws_sdk_ec2::Client {
    aws_sdk_ec2::Client::new(&sdk_config(proxy).await)
}

/// The VPCs with this CIDR, read through the proxy (reads are never faulted).
async fn vpcs_with_cidr(ec2: &aws_sdk_ec2::Client, cidr: &str) -> usize {
    let filter = Filter::builder().name("cidr-block").values(cidr).build();
    let vpcs = ec2.describe_vpcs().filters(filter).send().await.expect("DescribeVpcs is never faulted");
    vpcs.vpcs().len()
}

#[tokio::test]
async fn ec2_throttling_is_request_limit_exceeded_and_makes_nothing() {
    let proxy = FaultProxy::start(moto().endpoint());
    let ec2 = ec2_client(&proxy).await;
    proxy.set_plan(FaultPlan::always(Fault::Throttle));

    let err = ec2.create_vpc().cidr_block("10.241.0.0/16").send().await.expect_err("throttled");
    let service_error = err.as_service_error().unwrap_or_else(|| panic!("a service error, not {err:?}"));
    assert_eq!(service_error.code(), Some("RequestLimitExceeded"));
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(503));
    assert_eq!(vpcs_with_cidr(&ec2, "10.241.0.0/16").await, 0);
    assert_eq!(proxy.stats().faults_of(Fault::Throttle), 1, "one attempt: retries are off");
}

#[tokio::test]
async fn ec2_status500_is_internal_error() {
    let proxy = FaultProxy::start(moto().endpoint());
    let ec2 = ec2_client(&proxy).await;
    proxy.set_plan(FaultPlan::always(Fault::Status500));

    let err = ec2.create_vpc().cidr_block("10.242.0.0/16").send().await.expect_err("a 500");
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(500));
    assert_eq!(err.code(), Some("InternalError"), "{err:?}");
    assert_eq!(vpcs_with_cidr(&ec2, "10.242.0.0/16").await, 0);
}

#[tokio::test]
async fn ec2_lost_answer_fails_the_call_but_the_vpc_exists() {
    let proxy = FaultProxy::start(moto().endpoint());
    let ec2 = ec2_client(&proxy).await;
    proxy.set_plan(FaultPlan::always(Fault::LostAnswer));

    let err = ec2.create_vpc().cidr_block("10.243.0.0/16").send().await.expect_err("no answer");
    // The SDK sees hyper's IncompleteMessage and classes it a TransientError: with retries
    // on, it would send CreateVpc again and make a second VPC.
    assert!(matches!(err, SdkError::DispatchFailure(_)), "a connection error, not {err:?}");
    assert_eq!(vpcs_with_cidr(&ec2, "10.243.0.0/16").await, 1);
}

#[tokio::test]
async fn ec2_status500_after_forward_fails_the_call_but_the_vpc_exists() {
    let proxy = FaultProxy::start(moto().endpoint());
    let ec2 = ec2_client(&proxy).await;
    proxy.set_plan(FaultPlan::always(Fault::Status500AfterForward));

    let err = ec2.create_vpc().cidr_block("10.244.0.0/16").send().await.expect_err("a 500");
    assert_eq!(err.code(), Some("InternalError"), "{err:?}");
    assert_eq!(vpcs_with_cidr(&ec2, "10.244.0.0/16").await, 1);
}

#[tokio::test]
async fn ec2_calls_pass_through_with_no_plan() {
    let proxy = FaultProxy::start(moto().endpoint());
    let ec2 = ec2_client(&proxy).await;
    let vpc = ec2.create_vpc().cidr_block("10.245.0.0/16").send().await.expect("CreateVpc through the proxy");
    assert!(vpc.vpc().and_then(|v| v.vpc_id()).is_some());
    assert_eq!(vpcs_with_cidr(&ec2, "10.245.0.0/16").await, 1);
    let stats = proxy.stats();
    assert_eq!((stats.calls, stats.mutating_calls, stats.total_faults()), (2, 1, 0));
}

#[tokio::test]
async fn sqs_json_errors_carry_their_codes() {
    let proxy = FaultProxy::start(moto().endpoint());
    let sqs = aws_sdk_sqs::Client::new(&sdk_config(&proxy).await);

    proxy.set_plan(FaultPlan::always(Fault::Throttle));
    let err = sqs.create_queue().queue_name("proxy-throttled").send().await.expect_err("throttled");
    assert_eq!(err.code(), Some("ThrottlingException"), "{err:?}");
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(400));

    proxy.set_plan(FaultPlan::always(Fault::Status500));
    let err = sqs.create_queue().queue_name("proxy-internal").send().await.expect_err("a 500");
    assert_eq!(err.code(), Some("InternalFailure"), "{err:?}");

    // Nothing was made; ListQueues is a read and passes.
    let queues = sqs.list_queues().queue_name_prefix("proxy-").send().await.expect("ListQueues is never faulted");
    assert!(queues.queue_urls().is_empty(), "{queues:?}");
}

#[tokio::test]
async fn autoscaling_query_errors_carry_their_codes() {
    let proxy = FaultProxy::start(moto().endpoint());
    let autoscaling = aws_sdk_autoscaling::Client::new(&sdk_config(&proxy).await);

    proxy.set_plan(FaultPlan::always(Fault::Throttle));
    let err = autoscaling.delete_auto_scaling_group().auto_scaling_group_name("g").send().await.expect_err("throttled");
    assert_eq!(err.code(), Some("Throttling"), "{err:?}");

    proxy.set_plan(FaultPlan::always(Fault::Status500));
    let err = autoscaling.delete_auto_scaling_group().auto_scaling_group_name("g").send().await.expect_err("a 500");
    assert_eq!(err.code(), Some("InternalFailure"), "{err:?}");
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(500));
}

/// CloudWatch speaks Smithy RPC v2 CBOR: the proxy tells its calls by path, faults only
/// the mutating ones, and answers in CBOR with the codes the SDK reads.
#[tokio::test]
async fn cloudwatch_cbor_errors_carry_their_codes() {
    let proxy = FaultProxy::start(moto().endpoint());
    let cloudwatch = aws_sdk_cloudwatch::Client::new(&sdk_config(&proxy).await);
    let put = || {
        cloudwatch
            .put_metric_alarm()
            .alarm_name("proxy-alarm")
            .namespace("AWS/SQS")
            .metric_name("ApproximateNumberOfMessagesVisible")
            .statistic(aws_sdk_cloudwatch::types::Statistic::Average)
            .period(60)
            .evaluation_periods(1)
            .threshold(1.0)
            .comparison_operator(aws_sdk_cloudwatch::types::ComparisonOperator::GreaterThanThreshold)
            .send()
    };

    proxy.set_plan(FaultPlan::always(Fault::Throttle));
    let err = put().await.expect_err("throttled");
    assert_eq!(err.code(), Some("Throttling"), "{err:?}");
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(400));

    proxy.set_plan(FaultPlan::always(Fault::Status500));
    let err = put().await.expect_err("a 500");
    assert_eq!(err.code(), Some("InternalFailure"), "{err:?}");

    // Nothing was made; DescribeAlarms is a read and passes.
    let alarms = cloudwatch.describe_alarms().alarm_names("proxy-alarm").send().await.expect("DescribeAlarms is never faulted");
    assert!(alarms.metric_alarms().is_empty(), "{alarms:?}");
    assert_eq!(proxy.stats().faults_of(Fault::Status500), 1);
}

/// The SDK's own retries are told apart from the calls the code made: a create that
/// fails with 500 three times, with the SDK retrying, counts as three requests of which
/// two are retries, and as one call.
#[tokio::test]
async fn an_sdks_retries_are_counted_apart_from_the_calls_made() {
    let proxy = FaultProxy::start(moto().endpoint());
    let config = sdk_config(&proxy).await.into_builder().retry_config(RetryConfig::standard().with_max_attempts(3).with_initial_backoff(std::time::Duration::from_millis(10))).build();
    let ec2 = aws_sdk_ec2::Client::new(&config);
    proxy.set_plan(FaultPlan::always(Fault::Status500));

    ec2.create_vpc().cidr_block("10.247.0.0/16").send().await.expect_err("a 500 each attempt");
    proxy.set_plan(FaultPlan::none());
    assert_eq!(vpcs_with_cidr(&ec2, "10.247.0.0/16").await, 0);
    let stats = proxy.stats();
    assert_eq!(stats.by_operation["CreateVpc"], 3);
    assert_eq!(stats.retries_by_operation["CreateVpc"], 2);
    let calls = stats.first_attempts_by_operation();
    assert_eq!((calls["CreateVpc"], calls["DescribeVpcs"]), (1, 1));
}
