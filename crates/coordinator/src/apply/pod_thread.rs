//! The pod-side work of an ADD that needs a thread inside the pod's namespace: the
//! reply-steering nf_tables tables and the pod's sysctls.
//!
//! The thread starts as soon as the pod's namespace is open and writes the tables beside the
//! netlink work of the main thread (an underlay ADD's largest single cost otherwise). It then
//! stays inside the pod until the ADD ends: [`PodThread::commit`] keeps the tables (dropping
//! those of families the plan has no use for); anything else (an error anywhere, a dropped
//! [`PodThread`]) makes it remove every table it wrote before it exits. Either way it is
//! joined, so no thread outlives the plugin.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::thread::JoinHandle;

use knit_cni::CniError;
use knit_host::nft::Nft;
use knit_host::{sysctl, Family, Handle, Netns};

use crate::error;
use crate::plan;

enum Msg {
    /// Set these sysctls; report the outcome on the channel if one is given (else at commit).
    Sysctls(Vec<(String, String)>, Option<Sender<Result<(), CniError>>>),
    /// The ADD succeeded: keep the tables of these families, remove the others.
    Commit(Vec<Family>),
}

pub struct PodThread {
    tx: Option<Sender<Msg>>,
    handle: Option<JoinHandle<Result<(), CniError>>>,
}

pub fn set_sysctls(kv: &[(String, String)]) -> knit_host::Result<()> {
    for (k, v) in kv {
        sysctl::set(k, v)?;
    }
    Ok(())
}

impl PodThread {
    /// Starts the thread, which writes the reply-steering tables of `families`. With
    /// `want_handle` it also opens a netlink socket in the pod (it is inside the pod anyway) and
    /// hands it back, sparing the caller a thread of its own.
    pub fn start(
        families: Vec<Family>,
        pod_ns: &Netns,
        want_handle: bool,
    ) -> Result<(PodThread, Option<Handle>), CniError> {
        let ns = pod_ns.try_clone().map_err(error::kernel("opening the pod netns"))?;
        let (tx, rx) = channel::<Msg>();
        let (htx, hrx) = channel::<knit_host::Result<Handle>>();
        let handle = std::thread::Builder::new()
            .name("knit-coordinator-pod".into())
            .spawn(move || {
                ns.run(move || -> Result<(), CniError> {
                    // The netlink socket first: the caller waits for it, while nobody waits for
                    // the tables until the end of the ADD.
                    if want_handle {
                        let h = Handle::new();
                        let failed = h.is_err();
                        // A caller that is gone (it failed) no longer needs the socket.
                        if htx.send(h).is_err() || failed {
                            return Ok(()); // the caller reports the socket's error
                        }
                    }
                    drop(htx);
                    serve(&families, rx)
                })
                .map_err(error::kernel("entering the pod netns"))
                .and_then(|r| r)
            })
            .map_err(|e| error::internal(format!("starting the pod thread: {e}")))?;
        let mut thread = PodThread { tx: Some(tx), handle: Some(handle) };
        let pod = if want_handle {
            match hrx.recv() {
                Ok(Ok(h)) => Some(h),
                Ok(Err(e)) => return Err(error::kernel("opening netlink in the pod netns")(e)),
                // The thread could not enter the pod: its error comes with the join.
                Err(_) => {
                    thread.join()?;
                    return Err(error::internal("the pod thread ended early"));
                }
            }
        } else {
            None
        };
        Ok((thread, pod))
    }

    /// Sets the pod sysctls `kv` from inside the pod; with `wait`, returns once they are set
    /// (e.g. `arp_notify` before a MAC change), else their outcome comes with [`Self::commit`].
    pub fn set_sysctls(&mut self, kv: Vec<(String, String)>, wait: bool) -> Result<(), CniError> {
        let Some(tx) = &self.tx else { return Err(error::internal("the pod thread is gone")) };
        let (ack, done) = if wait {
            let (a, d) = channel();
            (Some(a), Some(d))
        } else {
            (None, None)
        };
        if tx.send(Msg::Sysctls(kv, ack)).is_err() {
            return self.join().and(Err(error::internal("the pod thread ended early")));
        }
        match done.map(|d| d.recv()) {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(e),
            Some(Err(_)) => self.join().and(Err(error::internal("the pod thread ended early"))),
        }
    }

    /// The ADD succeeded: keeps the tables of `keep` and waits for the thread. An error (a
    /// table that could not be written, a sysctl) means the thread removed its tables.
    pub fn commit(mut self, keep: &[Family]) -> Result<(), CniError> {
        if let Some(tx) = self.tx.take() {
            // A send error means the thread has ended; the join says why.
            let _ = tx.send(Msg::Commit(keep.to_vec()));
        }
        self.join()
    }

    /// Waits for the thread; without a commit sent, it removes its tables first.
    fn join(&mut self) -> Result<(), CniError> {
        self.tx = None;
        match self.handle.take().map(|h| h.join()) {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(e),
            Some(Err(_)) => Err(error::internal("the pod thread panicked")),
        }
    }
}

impl Drop for PodThread {
    fn drop(&mut self) {
        if let Err(e) = self.join() {
            tracing::warn!("rollback: pod thread: {}", e.msg);
        }
    }
}

/// Inside the pod: writes the tables, then serves the main thread until commit or abort.
fn serve(families: &[Family], rx: Receiver<Msg>) -> Result<(), CniError> {
    let mut nft = Nft::new().map_err(error::kernel("opening nf_tables in the pod netns"))?;
    let mut written: Vec<Family> = Vec::new();
    for f in families {
        if let Err(e) = nft.apply(&plan::steering_table(*f)) {
            remove(&mut nft, &written);
            return Err(error::kernel("writing the pod's reply-steering rules")(e));
        }
        written.push(*f);
    }
    let mut failed: Option<CniError> = None;
    loop {
        match rx.recv() {
            Ok(Msg::Sysctls(kv, ack)) => {
                let r = set_sysctls(&kv).map_err(error::kernel("setting pod sysctls"));
                match ack {
                    Some(a) => {
                        // A caller that stopped waiting has failed and will abort.
                        let _ = a.send(r);
                    }
                    None => {
                        if let Err(e) = r {
                            failed.get_or_insert(e);
                        }
                    }
                }
            }
            Ok(Msg::Commit(keep)) => {
                if let Some(e) = failed {
                    remove(&mut nft, &written);
                    return Err(e);
                }
                let extra: Vec<Family> = written.iter().copied().filter(|f| !keep.contains(f)).collect();
                return match remove(&mut nft, &extra) {
                    true => Ok(()),
                    false => {
                        remove(&mut nft, &written);
                        Err(error::internal("removing an unplanned reply-steering table failed (see the log)"))
                    }
                };
            }
            // The ADD failed (the sender is gone without a commit): roll back.
            Err(_) => {
                remove(&mut nft, &written);
                return Ok(());
            }
        }
    }
}

/// Deletes the tables of `families`; logs each failure, and returns whether all went.
fn remove(nft: &mut Nft, families: &[Family]) -> bool {
    let mut ok = true;
    for f in families {
        if let Err(e) = nft.delete_table((*f).into(), plan::STEERING_TABLE) {
            tracing::warn!("rollback: removing the pod's reply-steering table ({}): {e}", f.name());
            ok = false;
        }
    }
    ok
}
