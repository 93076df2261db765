"""The ecommerce example's `up` for stack dev, written by hand: one boto3 call after another.

    .venv/bin/python benches/sequential_up.py --endpoint http://127.0.0.1:PORT [--region us-east-1] [--prefix NAME]

The baseline of `benches/e2e.rs`'s ratio "Cairn's parallel up / this script". It makes the
35 resources of `examples/ecommerce/shop.rs` with `Cairn.dev.toml`'s values (two zones,
t3.small, web group 2..12 at 2, the session cache with its AUTH token) and the parameters
Cairn's AWS provider sends, tags included where the create call takes them (`Name`,
`cairn:stack`, `cairn:urn`, the program's own). The mutating calls are those of Cairn's
first up in `tests/snapshots/faults__calls_per_verb.snap`, one each (51); nothing is read
back after a create. The one read: DescribeCertificate, as ACM gives the DNS validation
record (a later call's input) only there; it is polled until present (once on moto).

Decided against waiting (Cairn waits, so this script's figure is the lower, stricter
baseline; on moto each wait would be one Describe call): the NAT gateway (the routes
need only its id, which the create answers with), the load balancer (the listener and
the alias record need only its ARN, DNS name and zone, which the create answers with)
and the replication group (no later call needs it). Queue ARNs are built from the queue URLs (`.../<account>/<name>`) rather
than read with GetQueueAttributes.

`--prefix` starts every name, so runs against one moto do not collide; it is also the
stack in the `cairn:*` tags, so Cairn never takes these resources for its own. Prints one
line on stdout: `SEQUENTIAL <ms> ms <calls> calls`, the wall time from before the first
call to after the last (clients are made before) and the HTTP requests sent.
"""

import argparse
import base64
import json
import os
import secrets
import sys
import time

import boto3
from botocore.config import Config

ZONES = ["us-east-1a", "us-east-1b"]
AUTH_TOKEN = "dev-sessions-token-2f6c1a9e"  # Cairn.dev.toml's redis_auth_token, unsealed
DOMAIN, SITE = "example.com", "shop.example.com"
SERVICES = ["ec2", "elbv2", "acm", "route53", "autoscaling", "elasticache", "sqs", "sns", "logs", "cloudwatch", "events"]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--endpoint", required=True, help="the local AWS, e.g. http://127.0.0.1:5000")
    p.add_argument("--region", default="us-east-1")
    p.add_argument("--prefix", default="seq-" + secrets.token_hex(3), help="starts every name (lowercase, a letter first)")
    args = p.parse_args()
    args.prefix = args.prefix.lower()
    if not (args.prefix[:1].isalpha() and len(args.prefix) <= 20 and all(c.isalnum() or c == "-" for c in args.prefix)):
        p.error("--prefix: up to 20 letters, digits and '-', a letter first (ElastiCache and ELB names are strict)")
    return args


def main():
    args = parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    config = Config(region_name=args.region, retries={"mode": "standard"})
    calls = 0

    def count(**_):
        nonlocal calls
        calls += 1

    # Every client first, outside the clock; each request sent (retries too) is counted.
    aws = {}
    for service in SERVICES:
        aws[service] = boto3.client(service, endpoint_url=args.endpoint, config=config)
        aws[service].meta.events.register("before-send", count)
    started = time.perf_counter()
    up(args.prefix, args.region, **aws)
    elapsed_ms = (time.perf_counter() - started) * 1e3
    print(f"SEQUENTIAL {elapsed_ms:.0f} ms {calls} calls")


def up(prefix, region, ec2, elbv2, acm, route53, autoscaling, elasticache, sqs, sns, logs, cloudwatch, events):
    stack = prefix

    def tag_map(ty, name, **own):
        """Cairn's tags for resource `name` of type `ty`: the program's, Name, and its own two."""
        return {**own, "Name": own.get("Name", name), "cairn:stack": stack, "cairn:urn": f"urn:cairn:{stack}::{ty}::{name}"}

    def tag_list(ty, name, **own):
        return [{"Key": k, "Value": v} for k, v in tag_map(ty, name, **own).items()]

    def spec(ec2_type, ty, name, **own):
        """EC2's TagSpecifications, tagging at creation."""
        return [{"ResourceType": ec2_type, "Tags": tag_list(ty, name, **own)}]

    shop = {"app": "shop"}  # the network's own tags

    # --- The network: VPC, gateway, a public and a private subnet per zone, one NAT, routes.
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16", TagSpecifications=spec("vpc", "aws:ec2:Vpc", "shop", **shop))["Vpc"]["VpcId"]
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})  # DNS support is on by default
    igw = ec2.create_internet_gateway(TagSpecifications=spec("internet-gateway", "aws:ec2:InternetGateway", "shop", **shop))
    igw = igw["InternetGateway"]["InternetGatewayId"]
    ec2.attach_internet_gateway(InternetGatewayId=igw, VpcId=vpc)
    public, private = [], []
    for i, zone in enumerate(ZONES):
        name = f"shop-public-{zone}"
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=zone,
                                   TagSpecifications=spec("subnet", "aws:ec2:Subnet", name, **shop))["Subnet"]["SubnetId"]
        ec2.modify_subnet_attribute(SubnetId=subnet, MapPublicIpOnLaunch={"Value": True})
        public.append(subnet)
        name = f"shop-private-{zone}"
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{128 + i}.0/24", AvailabilityZone=zone,
                                   TagSpecifications=spec("subnet", "aws:ec2:Subnet", name, **shop))["Subnet"]["SubnetId"]
        private.append(subnet)
    table = ec2.create_route_table(VpcId=vpc, TagSpecifications=spec("route-table", "aws:ec2:RouteTable", "shop-public", **shop))
    table = table["RouteTable"]["RouteTableId"]
    ec2.create_route(RouteTableId=table, DestinationCidrBlock="0.0.0.0/0", GatewayId=igw)
    for subnet in public:
        ec2.associate_route_table(RouteTableId=table, SubnetId=subnet)
    nat_name = f"shop-nat-{ZONES[0]}"
    eip = ec2.allocate_address(Domain="vpc", TagSpecifications=spec("elastic-ip", "aws:ec2:ElasticIp", nat_name, **shop))["AllocationId"]
    nat = ec2.create_nat_gateway(SubnetId=public[0], AllocationId=eip, ClientToken=f"{prefix}-nat",
                                 TagSpecifications=spec("natgateway", "aws:ec2:NatGateway", nat_name, **shop))
    nat = nat["NatGateway"]["NatGatewayId"]  # not waited for: see the docstring
    for zone, subnet in zip(ZONES, private):
        name = f"shop-private-{zone}"
        table = ec2.create_route_table(VpcId=vpc, TagSpecifications=spec("route-table", "aws:ec2:RouteTable", name, **shop))
        table = table["RouteTable"]["RouteTableId"]
        ec2.create_route(RouteTableId=table, DestinationCidrBlock="0.0.0.0/0", NatGatewayId=nat)
        ec2.associate_route_table(RouteTableId=table, SubnetId=subnet)

    # --- Security groups: HTTPS to the load balancer, 80 from it to the web servers, 6379
    # from them to the cache. Allow-all egress is what AWS gives a new group.
    def security_group(name, description, port, peer):
        group = ec2.create_security_group(GroupName=f"{prefix}-{name}", Description=description, VpcId=vpc,
                                          TagSpecifications=spec("security-group", "aws:ec2:SecurityGroup", name))["GroupId"]
        rule = {"IpProtocol": "tcp", "FromPort": port, "ToPort": port, **peer}
        ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=[rule])
        return group

    lb_sg = security_group("lb", "shop load balancer", 443, {"IpRanges": [{"CidrIp": "0.0.0.0/0"}]})
    web_sg = security_group("web", "shop web servers", 80, {"UserIdGroupPairs": [{"GroupId": lb_sg}]})
    cache_sg = security_group("sessions", "shop session cache", 6379, {"UserIdGroupPairs": [{"GroupId": web_sg}]})

    # --- Ingress: target group, load balancer, certificate, DNS, the HTTPS listener.
    targets = elbv2.create_target_group(Name=f"{prefix}-web", Port=80, Protocol="HTTP", VpcId=vpc, TargetType="instance",
                                        HealthCheckPath="/health", Tags=tag_list("aws:elbv2:TargetGroup", "web"))
    targets = targets["TargetGroups"][0]["TargetGroupArn"]
    lb = elbv2.create_load_balancer(Name=f"{prefix}-web", Type="application", Scheme="internet-facing", Subnets=public,
                                    SecurityGroups=[lb_sg], IpAddressType="ipv4",
                                    Tags=tag_list("aws:elbv2:LoadBalancer", "web"))["LoadBalancers"][0]
    cert = acm.request_certificate(DomainName=SITE, ValidationMethod="DNS", IdempotencyToken=prefix.replace("-", ""),
                                   Tags=tag_list("aws:acm:Certificate", "shop"))["CertificateArn"]
    while True:  # the one read: ACM names the validation record a moment after the request
        options = acm.describe_certificate(CertificateArn=cert)["Certificate"].get("DomainValidationOptions", [])
        record = next((o["ResourceRecord"] for o in options if "ResourceRecord" in o), None)
        if record:
            break
        time.sleep(1)
    zone = route53.create_hosted_zone(Name=DOMAIN, CallerReference=f"{prefix}-{time.time_ns()}",
                                      HostedZoneConfig={"Comment": "the shop's public zone"})
    zone = zone["HostedZone"]["Id"].split("/")[-1]
    route53.change_tags_for_resource(ResourceType="hostedzone", ResourceId=zone, AddTags=tag_list("aws:route53:Zone", "shop"))

    def create_record(record_set):
        route53.change_resource_record_sets(HostedZoneId=zone, ChangeBatch={"Changes": [{"Action": "CREATE", "ResourceRecordSet": record_set}]})

    create_record({"Name": record["Name"], "Type": record["Type"], "TTL": 300, "ResourceRecords": [{"Value": record["Value"]}]})
    create_record({"Name": SITE + ".", "Type": "A", "AliasTarget": {
        "DNSName": lb["DNSName"], "HostedZoneId": lb["CanonicalHostedZoneId"], "EvaluateTargetHealth": False}})
    elbv2.create_listener(LoadBalancerArn=lb["LoadBalancerArn"], Port=443, Protocol="HTTPS", Certificates=[{"CertificateArn": cert}],
                          DefaultActions=[{"Type": "forward", "TargetGroupArn": targets}], Tags=tag_list("aws:elbv2:Listener", "https"))

    # --- The application: the web servers' launch template and Auto Scaling group.
    template = ec2.create_launch_template(
        LaunchTemplateName=f"{prefix}-web", ClientToken=f"{prefix}-web",
        LaunchTemplateData={"ImageId": "ami-0abcdef1234567890", "InstanceType": "t3.small", "SecurityGroupIds": [web_sg],
                            "UserData": base64.b64encode(b"#!/bin/sh\nexec /opt/shop/web --port 80\n").decode()},
        TagSpecifications=spec("launch-template", "aws:ec2:LaunchTemplate", "web"))["LaunchTemplate"]["LaunchTemplateId"]
    group = f"{prefix}-web"
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName=group, LaunchTemplate={"LaunchTemplateId": template, "Version": "$Latest"},
        MinSize=2, MaxSize=12, DesiredCapacity=2, VPCZoneIdentifier=",".join(private), HealthCheckType="EC2",
        HealthCheckGracePeriod=300, TargetGroupARNs=[targets],
        Tags=[{"ResourceId": group, "ResourceType": "auto-scaling-group", "Key": k, "Value": v, "PropagateAtLaunch": True}
              for k, v in tag_map("aws:autoscaling:Group", "web", role="web").items()])

    # --- Data: the session cache, Redis with TLS, encryption at rest and an AUTH token.
    subnet_group = f"{prefix}-sessions"
    elasticache.create_cache_subnet_group(CacheSubnetGroupName=subnet_group, CacheSubnetGroupDescription="shop session cache",
                                          SubnetIds=private, Tags=tag_list("aws:elasticache:SubnetGroup", "sessions"))
    elasticache.create_replication_group(  # not waited for: see the docstring
        ReplicationGroupId=f"{prefix}-sessions", ReplicationGroupDescription="shop sessions", Engine="redis",
        CacheNodeType="cache.t3.micro", NumCacheClusters=1, AutomaticFailoverEnabled=False, Port=6379,
        CacheSubnetGroupName=subnet_group, SecurityGroupIds=[cache_sg], AuthToken=AUTH_TOKEN,
        TransitEncryptionEnabled=True, AtRestEncryptionEnabled=True, Tags=tag_list("aws:elasticache:ReplicationGroup", "sessions"))

    # --- Messaging: the order queues (with their dead-letter queue), the events queue, alerts.
    def queue(name, visibility, retention=345600, **more):
        url = sqs.create_queue(QueueName=f"{prefix}-{name}", tags=tag_map("aws:sqs:Queue", name), Attributes={
            "VisibilityTimeout": str(visibility), "MessageRetentionPeriod": str(retention), "DelaySeconds": "0", **more})["QueueUrl"]
        account, queue_name = url.rstrip("/").split("/")[-2:]
        return url, f"arn:aws:sqs:{region}:{account}:{queue_name}"

    _, dlq_arn = queue("orders-dlq", 30, retention=1209600)
    queue("orders", 60, RedrivePolicy=json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 5}))
    events_url, events_arn = queue("shop-events", 120)
    alerts = sns.create_topic(Name=f"{prefix}-alerts", Attributes={"DisplayName": "shop alerts"},
                              Tags=tag_list("aws:sns:Topic", "alerts"))["TopicArn"]

    # --- Observability: the web log group, and alarms that notify the alerts topic.
    log_group = f"{prefix}-web"
    logs.create_log_group(logGroupName=log_group, tags=tag_map("aws:logs:LogGroup", "web"))
    logs.put_retention_policy(logGroupName=log_group, retentionInDays=14)
    cpu_alarm, depth_alarm = f"{prefix}-web-cpu-high", f"{prefix}-orders-depth"
    for name, alarm, description, namespace, metric, dimension, periods, threshold in [
        ("web-cpu-high", cpu_alarm, "the web servers are busy: add some", "AWS/EC2", "CPUUtilization",
         {"Name": "AutoScalingGroupName", "Value": group}, 3, 70.0),
        ("orders-depth", depth_alarm, "orders are waiting", "AWS/SQS", "ApproximateNumberOfMessagesVisible",
         {"Name": "QueueName", "Value": f"{prefix}-orders"}, 5, 1000.0),
    ]:
        cloudwatch.put_metric_alarm(
            AlarmName=alarm, AlarmDescription=description, Namespace=namespace, MetricName=metric, Dimensions=[dimension],
            Statistic="Average", Period=60, EvaluationPeriods=periods, Threshold=threshold,
            ComparisonOperator="GreaterThanThreshold", TreatMissingData="missing", AlarmActions=[alerts], ActionsEnabled=True,
            Tags=tag_list("aws:cloudwatch:MetricAlarm", name))

    # --- The loop back: alarm state changes, through EventBridge, into the events queue.
    pattern = {"source": ["aws.cloudwatch"], "detail-type": ["CloudWatch Alarm State Change"],
               "detail": {"alarmName": [cpu_alarm, depth_alarm]}}
    rule = f"{prefix}-alarms"
    rule_arn = events.put_rule(Name=rule, EventBusName="default", Description="the shop's alarm state changes, for its events queue",
                               EventPattern=json.dumps(pattern), State="ENABLED",
                               Tags=tag_list("aws:eventbridge:Rule", "alarms"))["RuleArn"]
    events.put_targets(Rule=rule, EventBusName="default", Targets=[{"Id": "alarms-to-events", "Arn": events_arn}])
    policy = {"Version": "2012-10-17", "Statement": [{
        "Sid": "AllowSendMessage1", "Effect": "Allow", "Principal": {"Service": "events.amazonaws.com"},
        "Action": "sqs:SendMessage", "Resource": events_arn, "Condition": {"ArnEquals": {"aws:SourceArn": rule_arn}}}]}
    sqs.set_queue_attributes(QueueUrl=events_url, Attributes={"Policy": json.dumps(policy)})


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # a failure goes to stderr only, and fails the run
        print(f"sequential_up: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
