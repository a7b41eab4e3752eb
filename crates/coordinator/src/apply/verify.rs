//! CHECK: the pod and the node are as ADD's [`Plan`] left them.
//!
//! The pod's routes and rules are read once per family (a pod has few); the node's routes are
//! not listed at all (a node with many pods has thousands): the kernel is asked which route it
//! uses for each of the pod's IPs, which also proves the host rule sends them to that table.

use knit_cni::CniError;
use knit_host::nft::Nft;
use knit_host::route::{Route, RouteQuery};
use knit_host::rule::Rule;
use knit_host::{link, route, rule, Family, Handle};

use super::indexes::Indexes;
use super::owner;
use crate::error;
use crate::plan::{self, Plan};

/// Routes or rules of one namespace, dumped once per family on first use.
struct Dumps<'a, T> {
    h: &'a Handle,
    by_family: Vec<(Family, Vec<T>)>,
}

impl<'a, T> Dumps<'a, T> {
    fn new(h: &'a Handle) -> Self {
        Dumps { h, by_family: Vec::new() }
    }

    fn get(
        &mut self,
        f: Family,
        read: impl Fn(&Handle, Family) -> knit_host::Result<Vec<T>>,
    ) -> Result<&[T], CniError> {
        if !self.by_family.iter().any(|(g, _)| *g == f) {
            let v = read(self.h, f).map_err(error::kernel("reading the pod's routes and rules"))?;
            self.by_family.push((f, v));
        }
        Ok(self.by_family.iter().find(|(g, _)| *g == f).map(|(_, v)| v.as_slice()).unwrap_or(&[]))
    }
}

fn same_route(have: &Route, want: &Route) -> bool {
    have.dst == want.dst
        && have.table == want.table
        && have.gateway == want.gateway
        && (want.oif.is_none() || have.oif == want.oif)
}

fn same_rule(have: &Rule, want: &Rule) -> bool {
    have.table == want.table
        && have.from == want.from
        && have.fwmark == want.fwmark
        && (want.priority.is_none() || have.priority == want.priority)
}

pub fn verify(plan: &Plan, host: &Handle, pod: &Handle, nft: Option<&mut Nft>) -> Result<(), CniError> {
    if let Some(v) = &plan.veth {
        let host_end = owner::find(host, &v.host).map_err(error::kernel("reading host links"))?;
        match host_end {
            None => return Err(error::check_failed(format!("host veth {} is missing", v.host))),
            Some(m) if m.mark.as_deref() != Some(v.owner.as_str()) => {
                return Err(error::check_failed(format!("host veth {} is not this container's", v.host)))
            }
            Some(_) => {}
        }
        link::get_by_name(pod, &v.pod)
            .map_err(error::kernel("reading pod links"))?
            .ok_or_else(|| error::check_failed(format!("pod {} is missing", v.pod)))?;
    }
    let mut idx = Indexes::new(pod);
    let mut routes = Dumps::new(pod);
    for r in &plan.pod_routes {
        let want = idx.resolve(r)?;
        if !routes.get(want.family(), |h, f| route::list(h, f, None))?.iter().any(|h| same_route(h, &want)) {
            return Err(error::check_failed(format!("pod route {r} is missing")));
        }
    }
    let mut rules = Dumps::new(pod);
    for r in &plan.pod_rules {
        if !rules.get(r.family, rule::list)?.iter().any(|h| same_rule(h, r)) {
            return Err(error::check_failed(format!("pod rule {r} is missing")));
        }
    }
    let mut host_idx = Indexes::new(host);
    for r in &plan.host_routes {
        let want = host_idx.resolve(r)?;
        let q = RouteQuery { fib_match: true, ..RouteQuery::to(want.dst.addr()) };
        let used = route::get(host, &q).ok();
        if !used.as_ref().is_some_and(|u| same_route(u, &want)) {
            let seen = used.map(|u| u.to_string()).unwrap_or_else(|| "no route".into());
            return Err(error::check_failed(format!(
                "host route {r} is missing or not in effect (the node uses: {seen})"
            )));
        }
    }
    let mut host_rules = Dumps::new(host);
    for r in &plan.host_rules {
        if !host_rules.get(r.family, rule::list)?.iter().any(|h| same_rule(h, r)) {
            return Err(error::check_failed(format!("host rule {r} is missing")));
        }
    }
    if let Some(nft) = nft {
        for f in &plan.pod_steering {
            let want = plan::steering_table(*f);
            let have = nft
                .read_table(want.family, &want.name)
                .map_err(error::kernel("reading the pod's reply-steering rules"))?;
            if have.as_ref() != Some(&want) {
                return Err(error::check_failed(format!(
                    "the pod's reply-steering table {} {} is missing or changed",
                    want.family.name(),
                    want.name
                )));
            }
        }
    }
    Ok(())
}
