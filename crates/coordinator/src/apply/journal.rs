//! What a failing ADD has done so far, undone in reverse order when it fails: every kernel
//! object it created, and the routes it moved out of main put back. The pod's reply-steering
//! tables are the pod thread's to undo ([`super::pod_thread`]).

use knit_host::route::Route;
use knit_host::rule::Rule;
use knit_host::{link, route, rule, Handle};

use crate::error::Teardown;

pub enum Undo {
    /// A veth pair (deleting the host end deletes both).
    HostLink {
        index: u32,
        name: String,
    },
    HostRoute(Route),
    PodRoute(Route),
    /// A route moved out of main: add it back.
    PodRouteMoved(Route),
    PodRule(Rule),
}

pub struct Journal<'a> {
    host: &'a Handle,
    pod: &'a Handle,
    steps: Vec<Undo>,
    committed: bool,
}

impl<'a> Journal<'a> {
    pub fn new(host: &'a Handle, pod: &'a Handle) -> Journal<'a> {
        Journal { host, pod, steps: Vec::new(), committed: false }
    }

    pub fn push(&mut self, u: Undo) {
        self.steps.push(u);
    }

    /// The ADD succeeded: nothing is undone.
    pub fn commit(mut self) {
        self.committed = true;
    }
}

impl Drop for Journal<'_> {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        // Every step runs whatever the others did; failures are logged (Teardown) and the ADD's
        // own error is what the runtime sees.
        let mut t = Teardown::default();
        for step in self.steps.drain(..).rev() {
            match &step {
                Undo::HostLink { index, name } => {
                    t.step(format!("rollback: deleting {name}"), link::delete(self.host, *index))
                }
                Undo::HostRoute(r) => t.step(format!("rollback: deleting host route {r}"), route::del(self.host, r)),
                Undo::PodRoute(r) => t.step(format!("rollback: deleting pod route {r}"), route::del(self.pod, r)),
                Undo::PodRouteMoved(r) => {
                    let res = match route::add(self.pod, r) {
                        Err(e) if e.is_exists() => Ok(()),
                        other => other,
                    };
                    t.step(format!("rollback: restoring pod route {r}"), res)
                }
                Undo::PodRule(r) => t.step(format!("rollback: deleting pod rule {r}"), rule::del(self.pod, r)),
            }
        }
    }
}
