//! `aws:ec2:RouteTable`: where a VPC's subnets send traffic, with the subnets it serves.
//!
//! The VPC forces a replacement. Routes and subnet associations are sets changed in
//! place: Cairn reads the table, then creates, replaces (a destination whose target
//! changed) and deletes routes, and associates and disassociates subnets, so that the
//! table has exactly what is declared. The VPC's implicit `local` route is not listed
//! and never touched. Deleting the table disassociates its subnets first.

use std::collections::BTreeMap;

use async_trait::async_trait;
use aws_sdk_ec2::types::{Filter, ResourceType as Ec2Type, RouteOrigin, RouteTable as AwsRouteTable, RouteTableAssociationStateCode};
use cairn_sdk::provider::{DiffRequest, DiffResult};
use cairn_sdk::{CheckFailure, Decl, Input, Observed, Prop, Props, ProviderError, Tags, Urn};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    canonical, check_ids, client_token, declared_items, is_ipv4_network, list_of_objects, observed_tags, retag, set_diff, set_items, tag_spec,
    tagged_with, urn_filter,
};
use crate::error::{aws_error, code, or_missing};
use crate::kind::{finish, Clients, Kind};

cairn_sdk::resource! {
    /// A route table: `RouteTable::new("public").vpc_id(vpc.id()).route(Route::to("0.0.0.0/0").via_gateway(igw.id())).subnet_id(web_a.id())`.
    /// Its logical name is its `Name` tag.
    ///
    /// Routes and associations are sets, changed in place; the VPC's `local` route is
    /// implicit. A subnet can be associated with one route table: moving it from another
    /// table of the same stack is done in place.
    pub struct RouteTable {
        token: "aws:ec2:RouteTable",
        schema: ROUTE_TABLE,
        inputs: RouteTableInputs,
        /// A declared route table's outputs.
        handle: RouteTableRef,
        validate: validate,
    }
    inputs {
        /// The VPC (forces replacement).
        vpc_id: String = required().forces_replacement(),
        /// Tags of your own (Cairn adds `Name`, `cairn:stack` and `cairn:urn`).
        tags: Tags,
    }
    by_hand {
        /// The routes, a set changed in place: see [`RouteTable::route`].
        routes: Vec<RouteEntry>,
        /// The associated subnets, a set changed in place: see [`RouteTable::subnet_id`].
        subnet_ids: Vec<String>,
    }
    outputs {
        /// The route table id, `rtb-...`.
        id: String,
    }
}

/// The properties diffed as sets.
const SETS: &[&str] = &["routes", "subnet_ids"];

fn validate(decl: &Decl, out: &mut Vec<CheckFailure>) {
    check_ids(decl, "subnet_ids", "subnet-", "a subnet id", out);
    let routes = match list_of_objects(decl, "routes", "routes (build them with Route::to(\"0.0.0.0/0\").via_gateway(..))") {
        Ok(routes) => routes,
        Err(failure) => {
            out.push(failure);
            return;
        }
    };
    let mut seen: Vec<&Value> = Vec::new();
    for route in &routes {
        let mut fail = |expected: String| out.push(CheckFailure::new("routes", Some(&route.shown), expected));
        if let Some(extra) = route.keys().find(|k| !["destination", "gateway_id", "nat_gateway_id"].contains(k)) {
            fail(format!("have only the fields destination and one of gateway_id or nat_gateway_id (not {extra})"));
        }
        match route.value("destination") {
            Some(d) if !d.as_str().is_some_and(is_ipv4_network) => {
                fail("have an IPv4 network in CIDR form without host bits as its destination, such as 0.0.0.0/0".to_owned())
            }
            Some(d) if seen.contains(&d) => fail(format!("be the only route to {d}: a route table has one route per destination")),
            Some(d) => seen.push(d),
            None if !route.has("destination") => fail("have a destination, such as 0.0.0.0/0".to_owned()),
            None => {}
        }
        let targets: Vec<&str> = ["gateway_id", "nat_gateway_id"].into_iter().filter(|k| route.has(k)).collect();
        if targets.len() != 1 {
            let found = if targets.is_empty() { "none".to_owned() } else { targets.join(" and ") };
            fail(format!("have exactly one target: gateway_id (an internet gateway) or nat_gateway_id (found {found})"));
        }
        if route.value("gateway_id").is_some_and(|v| !v.as_str().is_some_and(|s| s.starts_with("igw-") || s.starts_with("vgw-"))) {
            fail("have an internet gateway id (igw-...) or virtual private gateway id (vgw-...) as its gateway_id".to_owned());
        }
        if route.value("nat_gateway_id").is_some_and(|v| !v.as_str().is_some_and(|s| s.starts_with("nat-"))) {
            fail("have a NAT gateway id (nat-...) as its nat_gateway_id".to_owned());
        }
    }
}

impl RouteTable {
    /// Adds a route: `Route::to("0.0.0.0/0").via_gateway(igw.id())` or
    /// `.via_nat_gateway(nat.id())`. Changed in place; one route per destination.
    #[must_use]
    pub fn route(self, route: Route) -> Self {
        self.routes([route])
    }

    /// Adds routes (see [`route`](Self::route)).
    #[must_use]
    pub fn routes(mut self, routes: impl IntoIterator<Item = Route>) -> Self {
        let items: Vec<Prop> = declared_items(&self.0, "routes").into_iter().chain(routes.into_iter().map(Route::into_prop)).collect();
        if !items.is_empty() {
            set_items(&mut self.0, "routes", items);
        }
        self
    }

    /// Associates a subnet, such as `subnet.id()`, with the table (changed in place).
    #[must_use]
    pub fn subnet_id(self, id: impl Into<Input<String>>) -> Self {
        self.subnet_ids([id])
    }

    /// Associates subnets with the table (see [`subnet_id`](Self::subnet_id)).
    #[must_use]
    pub fn subnet_ids<I: Into<Input<String>>>(mut self, ids: impl IntoIterator<Item = I>) -> Self {
        let items: Vec<Prop> = declared_items(&self.0, "subnet_ids").into_iter().chain(ids.into_iter().map(|id| id.into().into_prop())).collect();
        if !items.is_empty() {
            set_items(&mut self.0, "subnet_ids", items);
        }
        self
    }
}

/// A route's destination, waiting for its target: finish it with
/// [`via_gateway`](Self::via_gateway) or [`via_nat_gateway`](Self::via_nat_gateway).
#[derive(Debug, Clone)]
pub struct RouteDestination {
    destination: Input<String>,
}

/// One route: an IPv4 destination and exactly one target.
///
/// ```
/// # fn f(igw: cairn_aws::ec2::InternetGatewayRef, nat: cairn_aws::ec2::NatGatewayRef) {
/// use cairn_aws::ec2::Route;
/// let public = Route::to("0.0.0.0/0").via_gateway(igw.id());
/// let private = Route::to("0.0.0.0/0").via_nat_gateway(nat.id());
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Route {
    destination: Input<String>,
    target: &'static str,
    id: Input<String>,
}

impl Route {
    /// A route for traffic to `destination`, an IPv4 network such as `0.0.0.0/0`.
    pub fn to(destination: impl Into<Input<String>>) -> RouteDestination {
        RouteDestination { destination: destination.into() }
    }

    fn into_prop(self) -> Prop {
        Prop::object(vec![("destination".to_owned(), self.destination.into_prop()), (self.target.to_owned(), self.id.into_prop())])
    }
}

impl RouteDestination {
    /// Through an internet gateway (`igw.id()`): a public subnet's default route.
    pub fn via_gateway(self, id: impl Into<Input<String>>) -> Route {
        Route { destination: self.destination, target: "gateway_id", id: id.into() }
    }

    /// Through a NAT gateway (`nat.id()`): a private subnet's default route.
    pub fn via_nat_gateway(self, id: impl Into<Input<String>>) -> Route {
        Route { destination: self.destination, target: "nat_gateway_id", id: id.into() }
    }
}

/// One route as the `routes` input holds it: a destination and its target, one of the
/// `..._id` fields. Cairn declares gateway and NAT gateway routes; the other targets are
/// read, so that routes added outside Cairn show as drift.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteEntry {
    /// The IPv4 network the route is for, such as `0.0.0.0/0`.
    pub destination: String,
    /// An internet gateway (`igw-...`) or virtual private gateway (`vgw-...`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway_id: Option<String>,
    /// A NAT gateway, `nat-...`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nat_gateway_id: Option<String>,
    /// A transit gateway (read only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transit_gateway_id: Option<String>,
    /// A VPC peering connection (read only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vpc_peering_connection_id: Option<String>,
    /// A network interface (read only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_interface_id: Option<String>,
    /// A local gateway (read only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_gateway_id: Option<String>,
    /// A carrier gateway (read only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub carrier_gateway_id: Option<String>,
}

/// The route table's operations.
#[derive(Debug)]
pub(crate) struct RouteTableKind;

fn hint(code: &str) -> Option<String> {
    match code {
        "InvalidVpcID.NotFound" => Some("its VPC does not exist (was it deleted outside Cairn? run refresh)".to_owned()),
        "InvalidGatewayID.NotFound" | "Gateway.NotAttached" => Some(
            "a route's gateway does not exist or is not attached to the route table's VPC; give the InternetGateway the same vpc_id as the table"
                .to_owned(),
        ),
        "InvalidNatGatewayID.NotFound" => {
            Some("a route's NAT gateway does not exist (was it deleted outside Cairn? run refresh)".to_owned())
        }
        "InvalidSubnetID.NotFound" => Some("a subnet to associate does not exist (was it deleted outside Cairn? run refresh)".to_owned()),
        "RouteLimitExceeded" => Some("the table has more routes than AWS allows (50 by default); remove some or ask AWS for more".to_owned()),
        "RouteTableLimitExceeded" => {
            Some("the VPC's route table quota (200 by default) is used up; delete unused tables or ask AWS for more".to_owned())
        }
        "DependencyViolation" => Some(
            "the route table is still associated with subnets or gateways outside this stack, or is its VPC's main table; disassociate them, then run again"
                .to_owned(),
        ),
        _ => None,
    }
}

const MISSING: &[&str] = &["InvalidRouteTableID.NotFound"];

/// The table as AWS has it; `None` when it is gone.
async fn describe(aws: &Clients, id: &str) -> Result<Option<AwsRouteTable>, ProviderError> {
    let out = or_missing(aws.ec2.describe_route_tables().route_table_ids(id).send().await, MISSING, "reading the route table", hint)?;
    Ok(out.and_then(|out| out.route_tables().first().cloned()))
}

/// The routes Cairn manages, by destination: IPv4 routes made with CreateRoute (not the
/// `local` route, nor routes propagated from a VPN gateway). Targets Cairn does not
/// declare (peering, transit gateways, ...) are read too, so that routes added outside
/// Cairn show as drift and are removed.
fn routes(rt: &AwsRouteTable) -> BTreeMap<String, RouteEntry> {
    let mut out = BTreeMap::new();
    for r in rt.routes() {
        let made = r.origin().is_none_or(|o| *o == RouteOrigin::CreateRoute);
        let (Some(dest), true) = (r.destination_cidr_block(), made && r.gateway_id() != Some("local")) else { continue };
        let mut route = RouteEntry { destination: dest.to_owned(), ..RouteEntry::default() };
        let targets = [
            (&mut route.gateway_id, r.gateway_id()),
            (&mut route.nat_gateway_id, r.nat_gateway_id()),
            (&mut route.transit_gateway_id, r.transit_gateway_id()),
            (&mut route.vpc_peering_connection_id, r.vpc_peering_connection_id()),
            (&mut route.network_interface_id, r.network_interface_id()),
            (&mut route.local_gateway_id, r.local_gateway_id()),
            (&mut route.carrier_gateway_id, r.carrier_gateway_id()),
        ];
        if let Some((field, target)) = targets.into_iter().find_map(|(field, v)| Some((field, v?))) {
            *field = Some(target.to_owned());
        }
        out.insert(dest.to_owned(), route);
    }
    out
}

/// The table's subnet associations: subnet id to association id.
fn associations(rt: &AwsRouteTable) -> BTreeMap<String, String> {
    rt.associations()
        .iter()
        .filter(|a| !a.main().unwrap_or(false))
        .filter(|a| {
            !a.association_state()
                .and_then(|s| s.state())
                .is_some_and(|s| matches!(s, RouteTableAssociationStateCode::Disassociated | RouteTableAssociationStateCode::Disassociating))
        })
        .filter_map(|a| Some((a.subnet_id()?.to_owned(), a.route_table_association_id()?.to_owned())))
        .collect()
}

fn observe(urn: &Urn, id: &str, rt: &AwsRouteTable) -> Observed {
    let routes = canonical(Some(&routes(rt).into_values().collect::<Vec<_>>()));
    let subnets: Vec<String> = associations(rt).into_keys().collect();
    let inputs = RouteTableInputs {
        vpc_id: Some(rt.vpc_id().unwrap_or_default().to_owned()),
        tags: observed_tags(urn, rt.tags()),
        routes: (!routes.is_empty()).then_some(routes),
        subnet_ids: (!subnets.is_empty()).then_some(subnets),
    };
    Observed::new(id, inputs.to_props(), [("id", Value::from(id))])
}

/// Sets a create or replace request's target from a route.
macro_rules! with_target {
    ($req:expr, $route:expr) => {{
        let route: &RouteEntry = $route;
        $req.set_gateway_id(route.gateway_id.clone())
            .set_nat_gateway_id(route.nat_gateway_id.clone())
            .set_transit_gateway_id(route.transit_gateway_id.clone())
            .set_vpc_peering_connection_id(route.vpc_peering_connection_id.clone())
            .set_network_interface_id(route.network_interface_id.clone())
            .set_local_gateway_id(route.local_gateway_id.clone())
            .set_carrier_gateway_id(route.carrier_gateway_id.clone())
    }};
}

/// Points the table's route to `dest` at `route`'s target.
async fn replace_route(aws: &Clients, id: &str, dest: &str, route: &RouteEntry) -> Result<(), ProviderError> {
    let req = aws.ec2.replace_route().route_table_id(id).destination_cidr_block(dest);
    with_target!(req, route).send().await.map_err(|e| aws_error(&format!("changing the route to {dest}"), e, hint))?;
    Ok(())
}

/// Brings the table's routes and associations to `desired`, from `current` (what AWS
/// just answered) or else from what AWS has now.
async fn sync(aws: &Clients, urn: &Urn, id: &str, desired: &RouteTableInputs, current: Option<AwsRouteTable>) -> Result<(), ProviderError> {
    let rt = match current {
        Some(rt) => rt,
        None => describe(aws, id).await?.ok_or_else(|| ProviderError::not_found(format!("{id} is gone")))?,
    };
    let have = routes(&rt);
    let want: BTreeMap<String, RouteEntry> = canonical(desired.routes.as_deref()).into_iter().map(|r| (r.destination.clone(), r)).collect();
    // New and changed routes first, so traffic that keeps a route is never dropped.
    for (dest, route) in &want {
        match have.get(dest) {
            None => {
                let req = aws.ec2.create_route().route_table_id(id).destination_cidr_block(dest);
                match with_target!(req, route).send().await {
                    Ok(_) => {}
                    // The table has a route there now: the SDK sent the create again after
                    // its answer was lost, or one was added meanwhile. Pointed at the
                    // declared target, whichever it was.
                    Err(e) if code(&e) == Some("RouteAlreadyExists") => replace_route(aws, id, dest, route).await?,
                    Err(e) => return Err(aws_error(&format!("adding the route to {dest}"), e, hint)),
                }
            }
            Some(current) if current != route => replace_route(aws, id, dest, route).await?,
            Some(_) => {}
        }
    }
    for dest in have.keys().filter(|d| !want.contains_key(*d)) {
        let answer = aws.ec2.delete_route().route_table_id(id).destination_cidr_block(dest).send().await;
        or_missing(answer, &["InvalidRoute.NotFound"], &format!("removing the route to {dest}"), hint)?;
    }

    let attached = associations(&rt);
    let wanted = canonical(desired.subnet_ids.as_deref());
    for subnet in wanted.iter().filter(|s| !attached.contains_key(*s)) {
        associate(aws, urn, id, subnet).await?;
    }
    for (subnet, association) in attached.iter().filter(|(s, _)| !wanted.contains(s)) {
        disassociate(aws, subnet, association).await?;
    }
    Ok(())
}

/// Associates `subnet`. A subnet has one route table: if another table of this stack
/// has it (a subnet moving between tables in one apply), it is moved from there; a
/// table outside the stack keeps it, and the step fails saying so. Cairn looks before
/// associating because moto, unlike AWS, answers a second association with the first.
async fn associate(aws: &Clients, urn: &Urn, id: &str, subnet: &str) -> Result<(), ProviderError> {
    let Some((other, association)) = table_of(aws, subnet).await? else {
        return match aws.ec2.associate_route_table().route_table_id(id).subnet_id(subnet).send().await {
            Ok(_) => Ok(()),
            // Associated already: with this table if the SDK sent the association again
            // after its answer was lost.
            Err(e) if code(&e) == Some("Resource.AlreadyAssociated") => match table_of(aws, subnet).await? {
                Some((table, _)) if table.route_table_id() == Some(id) => Ok(()),
                _ => Err(ProviderError::failed(format!(
                    "subnet {subnet} was associated with another route table meanwhile; a subnet has one route table: run again"
                ))),
            },
            Err(e) => Err(aws_error(&format!("associating subnet {subnet}"), e, hint)),
        };
    };
    let other_id = other.route_table_id().unwrap_or_default();
    if other_id == id {
        return Ok(());
    }
    if !other.tags().iter().any(|t| t.key() == Some(crate::tags::STACK) && t.value() == Some(urn.stack())) {
        let name = other.tags().iter().find(|t| t.key() == Some("Name")).and_then(|t| t.value()).map(|n| format!(" ({n})")).unwrap_or_default();
        return Err(ProviderError::failed(format!(
            "subnet {subnet} is associated with route table {other_id}{name}, which this stack does not manage; a subnet has one route table: disassociate it there first"
            )));
    }
    aws.ec2
        .replace_route_table_association()
        .association_id(association)
        .route_table_id(id)
        .send()
        .await
        .map_err(|e| aws_error(&format!("moving subnet {subnet} from route table {other_id}"), e, hint))?;
    Ok(())
}

/// The route table `subnet` is associated with, and the association's id.
async fn table_of(aws: &Clients, subnet: &str) -> Result<Option<(AwsRouteTable, String)>, ProviderError> {
    let filter = Filter::builder().name("association.subnet-id").values(subnet).build();
    let out = aws
        .ec2
        .describe_route_tables()
        .filters(filter)
        .send()
        .await
        .map_err(|e| aws_error(&format!("finding the route table of subnet {subnet}"), e, hint))?;
    Ok(out.route_tables().iter().find_map(|rt| Some((rt.clone(), associations(rt).remove(subnet)?))))
}

async fn disassociate(aws: &Clients, subnet: &str, association: &str) -> Result<(), ProviderError> {
    // Moved to another table meanwhile, or already gone: done.
    let answer = aws.ec2.disassociate_route_table().association_id(association).send().await;
    or_missing(answer, &["InvalidAssociationID.NotFound"], &format!("disassociating subnet {subnet}"), hint)?;
    Ok(())
}

#[async_trait]
impl Kind for RouteTableKind {
    fn diff(&self, req: &DiffRequest<'_>) -> DiffResult {
        set_diff(req, SETS)
    }

    async fn create(&self, aws: &Clients, urn: &Urn, inputs: &Props) -> Result<Observed, ProviderError> {
        let want = RouteTableInputs::from_props(inputs)?;
        let out = aws
            .once
            .ec2
            .create_route_table()
            .client_token(client_token(urn))
            .vpc_id(want.vpc_id.as_deref().unwrap_or_default())
            .tag_specifications(tag_spec(Ec2Type::RouteTable, urn, want.tags.as_ref()))
            .send()
            .await
            .map_err(|e| aws_error("creating the route table", e, hint))?;
        let id = out.route_table().and_then(|r| r.route_table_id()).unwrap_or_default().to_owned();
        // The answer is the new table, tags included: routes and associations start
        // from it, and once they are made the table is what was asked, with nothing left
        // to read back.
        let created = out.route_table().cloned();
        finish(&id, async {
            sync(aws, urn, &id, &want, created.clone()).await?;
            Ok(match created {
                Some(rt) => {
                    let mut observed = observe(urn, &id, &rt);
                    let routes = canonical(want.routes.as_deref());
                    let subnets = canonical(want.subnet_ids.as_deref());
                    let made = RouteTableInputs {
                        routes: (!routes.is_empty()).then_some(routes),
                        subnet_ids: (!subnets.is_empty()).then_some(subnets),
                        ..RouteTableInputs::from_props(&observed.inputs)?
                    };
                    observed.inputs = made.to_props();
                    observed
                }
                None => self.read_created(aws, urn, &id, inputs).await?,
            })
        })
        .await
    }

    async fn read(&self, aws: &Clients, urn: &Urn, id: &str, _recorded: &Props) -> Result<Option<Observed>, ProviderError> {
        Ok(describe(aws, id).await?.map(|rt| observe(urn, id, &rt)))
    }

    async fn update(&self, aws: &Clients, urn: &Urn, id: &str, old: &Props, new: &Props) -> Result<Observed, ProviderError> {
        let (old, want) = (RouteTableInputs::from_props(old)?, RouteTableInputs::from_props(new)?);
        sync(aws, urn, id, &want, None).await?;
        retag(&aws.ec2, urn, id, old.tags.as_ref(), want.tags.as_ref()).await?;
        self.read_updated(aws, urn, id, new).await
    }

    async fn delete(&self, aws: &Clients, _urn: &Urn, id: &str) -> Result<(), ProviderError> {
        // Disassociate whatever subnets AWS says, not only the ones in state.
        if let Some(rt) = describe(aws, id).await? {
            for (subnet, association) in associations(&rt) {
                disassociate(aws, &subnet, &association).await?;
            }
        }
        or_missing(aws.ec2.delete_route_table().route_table_id(id).send().await, MISSING, "deleting the route table", hint)?;
        Ok(())
    }

    async fn lookup(&self, aws: &Clients, urn: &Urn, _created_with: &Props) -> Result<Vec<Observed>, ProviderError> {
        let out =
            aws.ec2.describe_route_tables().filters(urn_filter(urn)).send().await.map_err(|e| aws_error("looking up route tables", e, hint))?;
        Ok(out.route_tables().iter().filter(|rt| tagged_with(rt.tags(), urn)).filter_map(|rt| Some(observe(urn, rt.route_table_id()?, rt))).collect())
    }
}
