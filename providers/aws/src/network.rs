//! The `Network` component: a VPC with public and private subnets across zones, an
//! internet gateway, NAT and route tables, declared in one call.
//!
//! Components are how users share modules: a function (or builder) that declares
//! resources through `cx.component(..)` and hands back their outputs. The engine knows
//! the component (`aws:Network`) only to group its resources in plans and the graph and
//! to name it in errors; the resources keep URNs of their own, named after it.

use cairn_sdk::{BoxError, Cx, Output, ResourceExt};

use crate::ec2::{ElasticIp, InternetGateway, InternetGatewayRef, NatGateway, NatGatewayRef, Route, RouteTable, Subnet, SubnetRef, Vpc, VpcRef};

/// How many NAT gateways private subnets route through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nat {
    /// One, in the first zone: cheapest; the private subnets of every zone lose their
    /// way out if that zone fails.
    Single,
    /// One per zone: each zone's private subnet uses its own.
    PerZone,
    /// None: private subnets reach nothing outside the VPC.
    None,
}

/// A VPC with, in each zone, a public subnet (routed to an internet gateway) and a
/// private subnet (routed through NAT).
///
/// ```no_run
/// # fn program(cx: &mut cairn_sdk::Cx) -> cairn_sdk::ProgramResult {
/// let net = cairn_aws::Network::new("shop").zones(["us-east-1a", "us-east-1b"]).declare(cx)?;
/// let private = net.private_subnet_ids();
/// # let _ = private; Ok(()) }
/// ```
///
/// Resources are named after the component: `shop` (VPC and internet gateway),
/// `shop-public-us-east-1a`, `shop-private-us-east-1a`, `shop-nat-us-east-1a` (NAT
/// gateway and its Elastic IP), `shop-public` and `shop-private-us-east-1a` (route
/// tables). Subnets get consecutive /24 ranges of the VPC's block: public ones from
/// the first, private ones from the 129th (`10.0.0.0/24`, `10.0.128.0/24`, ...).
#[derive(Clone, Debug)]
pub struct Network {
    name: String,
    cidr: String,
    zones: Vec<String>,
    nat: Nat,
    tags: Vec<(String, String)>,
}

/// The outputs of a declared [`Network`].
#[derive(Clone, Debug)]
pub struct NetworkRef {
    /// The VPC.
    pub vpc: VpcRef,
    /// The zones, in the order given.
    pub zones: Vec<String>,
    /// One public subnet per zone, in zone order.
    pub public_subnets: Vec<SubnetRef>,
    /// One private subnet per zone, in zone order.
    pub private_subnets: Vec<SubnetRef>,
    /// The internet gateway.
    pub internet_gateway: InternetGatewayRef,
    /// The NAT gateways (none, one, or one per zone).
    pub nat_gateways: Vec<NatGatewayRef>,
}

impl NetworkRef {
    /// The public subnets' ids, in zone order.
    pub fn public_subnet_ids(&self) -> Vec<Output<String>> {
        self.public_subnets.iter().map(SubnetRef::id).collect()
    }

    /// The private subnets' ids, in zone order.
    pub fn private_subnet_ids(&self) -> Vec<Output<String>> {
        self.private_subnets.iter().map(SubnetRef::id).collect()
    }

    /// The private subnets' ids of the zones `keep` accepts, e.g. all but a degraded one.
    pub fn private_subnet_ids_where(&self, keep: impl Fn(&str) -> bool) -> Vec<Output<String>> {
        self.zones.iter().zip(&self.private_subnets).filter(|(z, _)| keep(z)).map(|(_, s)| s.id()).collect()
    }
}

impl Network {
    /// A network named `name`: `10.0.0.0/16` over `us-east-1a` and `us-east-1b`, with a
    /// single NAT gateway.
    pub fn new(name: &str) -> Self {
        Network {
            name: name.to_owned(),
            cidr: "10.0.0.0/16".to_owned(),
            zones: vec!["us-east-1a".to_owned(), "us-east-1b".to_owned()],
            nat: Nat::Single,
            tags: Vec::new(),
        }
    }

    /// The VPC's IPv4 block, /16 to /20 (each zone takes two /24s of it).
    #[must_use]
    pub fn cidr_block(mut self, cidr: &str) -> Self {
        self.cidr = cidr.to_owned();
        self
    }

    /// The availability zones, one public and one private subnet in each.
    #[must_use]
    pub fn zones<Z: Into<String>>(mut self, zones: impl IntoIterator<Item = Z>) -> Self {
        self.zones = zones.into_iter().map(Into::into).collect();
        self
    }

    /// How private subnets reach the internet.
    #[must_use]
    pub fn nat(mut self, nat: Nat) -> Self {
        self.nat = nat;
        self
    }

    /// Tags for every resource of the network.
    #[must_use]
    pub fn tags<K: Into<String>, V: Into<String>>(mut self, tags: impl IntoIterator<Item = (K, V)>) -> Self {
        self.tags = tags.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        self
    }

    /// The `n`th /24 of the VPC's block.
    fn slice(&self, vpc: ipnet::Ipv4Net, n: usize) -> Result<String, BoxError> {
        vpc.subnets(24)
            .map_err(|e| e.to_string())?
            .nth(n)
            .map(|s| s.to_string())
            .ok_or_else(|| format!("its block {vpc} has no room for subnet {n}; use a /16 to /20 block").into())
    }

    /// Declares the network in `cx`, a component (`aws:Network`) holding its resources,
    /// and returns their outputs. An unusable block or zone list fails the render with
    /// the program's other problems, naming the network and the fix.
    pub fn declare(self, cx: &mut Cx) -> Result<NetworkRef, BoxError> {
        let name = self.name.clone();
        Ok(cx.component("aws:Network", &name, |cx| self.declare_in(cx))?)
    }

    /// The component's body: its resources, declared inside it.
    fn declare_in(self, cx: &mut Cx) -> Result<NetworkRef, BoxError> {
        let block: ipnet::Ipv4Net = self.cidr.parse().map_err(|_| {
            format!("cidr_block '{}' is not an IPv4 block; use one such as 10.0.0.0/16", self.cidr)
        })?;
        if !(16..=20).contains(&block.prefix_len()) {
            return Err(format!("cidr_block {block} must be a /16 to /20, to hold two /24 subnets per zone").into());
        }
        if self.zones.is_empty() || self.zones.len() > 8 {
            return Err(format!("give 1 to 8 zones, not {}", self.zones.len()).into());
        }
        let half = 1usize << (24 - block.prefix_len() - 1);
        let tags = self.tags.clone();
        let vpc = cx.add(Vpc::new(&self.name).cidr_block(block.to_string()).enable_dns_hostnames(true).tags(tags.clone()));
        let igw = cx.add(InternetGateway::new(&self.name).vpc_id(vpc.id()).tags(tags.clone()));
        let mut public_subnets = Vec::new();
        let mut private_subnets = Vec::new();
        for (i, zone) in self.zones.iter().enumerate() {
            let public = Subnet::new(&format!("{}-public-{zone}", self.name))
                .vpc_id(vpc.id())
                .cidr_block(self.slice(block, i)?)
                .availability_zone(zone.as_str())
                .map_public_ip_on_launch(true)
                .tags(tags.clone());
            public_subnets.push(cx.add(public));
            let private = Subnet::new(&format!("{}-private-{zone}", self.name))
                .vpc_id(vpc.id())
                .cidr_block(self.slice(block, half + i)?)
                .availability_zone(zone.as_str())
                .tags(tags.clone());
            private_subnets.push(cx.add(private));
        }
        cx.add(
            RouteTable::new(&format!("{}-public", self.name))
                .vpc_id(vpc.id())
                .route(Route::to("0.0.0.0/0").via_gateway(igw.id()))
                .subnet_ids(public_subnets.iter().map(SubnetRef::id))
                .tags(tags.clone()),
        );
        let nat_zones = match self.nat {
            Nat::Single => 1,
            Nat::PerZone => self.zones.len(),
            Nat::None => 0,
        };
        let mut nat_gateways = Vec::new();
        for (zone, subnet) in self.zones.iter().zip(&public_subnets).take(nat_zones) {
            let name = format!("{}-nat-{zone}", self.name);
            // The gateway needs the internet gateway attached before it can route.
            let eip = cx.add(ElasticIp::new(&name).tags(tags.clone()).depends_on(&igw));
            nat_gateways.push(cx.add(NatGateway::new(&name).subnet_id(subnet.id()).allocation_id(eip.allocation_id()).tags(tags.clone())));
        }
        for (i, (zone, subnet)) in self.zones.iter().zip(&private_subnets).enumerate() {
            let mut table = RouteTable::new(&format!("{}-private-{zone}", self.name)).vpc_id(vpc.id()).subnet_id(subnet.id()).tags(tags.clone());
            if let Some(nat) = nat_gateways.get(i).or(nat_gateways.first()) {
                table = table.route(Route::to("0.0.0.0/0").via_nat_gateway(nat.id()));
            }
            cx.add(table);
        }
        Ok(NetworkRef { vpc, zones: self.zones, public_subnets, private_subnets, internet_gateway: igw, nat_gateways })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn declared(net: Network) -> Result<Vec<(String, String)>, String> {
        let stack = cairn_sdk::Stack::<()>::new("dev").program(move |cx, _| {
            net.clone().declare(cx)?;
            Ok(())
        });
        let graph = stack.render(&()).map_err(|e| e.to_string())?;
        Ok(graph.resources().map(|(urn, _)| (urn.ty().to_owned(), urn.name().to_owned())).collect())
    }

    #[test]
    fn two_zones_make_a_vpc_four_subnets_a_gateway_one_nat_and_three_route_tables() {
        let resources = declared(Network::new("shop")).unwrap();
        let count = |ty: &str| resources.iter().filter(|(t, _)| t == ty).count();
        assert_eq!(count("aws:ec2:Vpc"), 1);
        assert_eq!(count("aws:ec2:Subnet"), 4);
        assert_eq!(count("aws:ec2:InternetGateway"), 1);
        assert_eq!((count("aws:ec2:NatGateway"), count("aws:ec2:ElasticIp")), (1, 1));
        assert_eq!(count("aws:ec2:RouteTable"), 3);
        let per_zone = declared(Network::new("shop").nat(Nat::PerZone)).unwrap();
        assert_eq!(per_zone.iter().filter(|(t, _)| t == "aws:ec2:NatGateway").count(), 2);
    }

    #[test]
    fn subnets_take_consecutive_slices_of_the_block() {
        let net = Network::new("shop");
        let block: ipnet::Ipv4Net = "10.0.0.0/16".parse().unwrap();
        assert_eq!(net.slice(block, 0).unwrap(), "10.0.0.0/24");
        assert_eq!(net.slice(block, 129).unwrap(), "10.0.129.0/24");
    }

    #[test]
    fn an_unusable_block_or_zone_list_is_refused_with_the_fix() {
        let e = declared(Network::new("shop").cidr_block("10.0.0.0/8")).unwrap_err();
        assert!(e.contains("component aws:Network 'shop': cidr_block 10.0.0.0/8 must be a /16 to /20"), "{e}");
        let e = declared(Network::new("shop").cidr_block("ten")).unwrap_err();
        assert!(e.contains("is not an IPv4 block"), "{e}");
        let e = declared(Network::new("shop").zones(Vec::<String>::new())).unwrap_err();
        assert!(e.contains("give 1 to 8 zones"), "{e}");
    }
}
