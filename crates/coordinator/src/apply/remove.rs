//! DEL: removes what a [`DelPlan`] lists. Every step runs whatever the earlier ones did;
//! "not found" is success; every other failure is reported, all of them together.

use knit_host::nft::Nft;
use knit_host::{link, route, rule, Handle};

use super::indexes::Indexes;
use super::owner;
use crate::error::Teardown;
use crate::plan::{self, DelPlan};

use knit_cni::phase_mark as mark;

/// The device group [`delete_together`] puts links in ("knit").
const DEL_GROUP: u32 = 0x6b6e_6974;

/// The pod's side of a DEL: its netlink socket, and its nf_tables socket (`None` where
/// nf_tables is unavailable: then no table of ours can exist either).
pub struct PodSockets {
    pub handle: Handle,
    pub nft: Option<Nft>,
}

pub fn remove(plan: &DelPlan, host: &Handle, pod: Option<&mut PodSockets>, t: &mut Teardown) {
    if let Some(pod) = pod {
        remove_pod_side(plan, pod, t);
    }
    let mut host_idx = Indexes::new(host);
    for r in &plan.host_routes {
        let what = format!("deleting host route {r}");
        // A device that is gone took its routes with it.
        t.step(&what, host_idx.try_resolve(r).and_then(|route| route::del(host, &route)));
    }
    if let Some(v) = &plan.host_veth {
        match owner::find(host, &v.name) {
            Ok(None) => {}
            Ok(Some(m)) if m.mark.as_deref() == Some(v.owner.as_str()) => {
                t.step(format!("deleting the host veth {}", v.name), link::delete(host, m.index))
            }
            Ok(Some(m)) => tracing::warn!(
                "DEL: leaving {}: it is not this container's (its mark: {:?})",
                v.name,
                m.mark.unwrap_or_default()
            ),
            Err(e) => t.step(format!("reading the host veth {}", v.name), Err(e)),
        }
    }
    mark!("del: host side");
}

fn remove_pod_side(plan: &DelPlan, pod: &mut PodSockets, t: &mut Teardown) {
    let h = &pod.handle;
    for r in &plan.pod_rules {
        t.step(format!("deleting pod rule {r}"), rule::del(h, r));
    }
    let mut idx = Indexes::new(h);
    for r in &plan.pod_routes {
        t.step(format!("deleting pod route {r}"), idx.try_resolve(r).and_then(|route| route::del(h, &route)));
    }
    for r in &plan.pod_routes_restore {
        let res = idx.try_resolve(r).and_then(|route| match route::add(h, &route) {
            Err(e) if e.is_exists() => Ok(()),
            other => other,
        });
        t.step(format!("restoring pod route {r}"), res);
    }
    mark!("del pod: rules, routes");
    if let Some(nft) = pod.nft.as_mut() {
        // Deleting a table with base chains waits for the kernel to drain their hooks (about
        // 15 ms here; running it beside the device deletion below saved nothing measurable:
        // the two waits do not overlap).
        for f in &plan.pod_steering {
            t.step(
                format!("deleting the pod's reply-steering table ({})", f.name()),
                nft.delete_table((*f).into(), plan::STEERING_TABLE),
            );
        }
    }
    mark!("del pod: reply-steering tables");
    delete_together(h, &plan.pod_links, t);
    mark!("del pod: links");
}

/// Deletes `names` in one kernel batch ([`link::delete_group`]); when the batch fails, one by
/// one. Each device deletion on its own waits about 20 ms for the kernel.
fn delete_together(h: &Handle, names: &[String], t: &mut Teardown) {
    let mut links = Vec::new();
    for n in names {
        match link::get_by_name(h, n) {
            Ok(Some(l)) => links.push((n, l.index)),
            Ok(None) => {}
            Err(e) => t.step(format!("reading pod link {n}"), Err(e)),
        }
    }
    if links.len() > 1 {
        let grouped = links.iter().try_for_each(|(_, i)| link::set_group(h, *i, DEL_GROUP));
        match grouped.and_then(|_| link::delete_group(h, DEL_GROUP)) {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!("DEL: deleting {names:?} together: {e}; deleting them one by one");
                for (n, i) in &links {
                    if let Err(e) = link::set_group(h, *i, 0) {
                        tracing::debug!("DEL: ungrouping {n}: {e}");
                    }
                }
            }
        }
    }
    for (n, i) in links {
        t.step(format!("deleting pod link {n}"), link::delete(h, i));
    }
}
