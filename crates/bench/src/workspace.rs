//! A run's throwaway state: a node namespace (plus pod namespaces) whose names carry the run's
//! pid, and a scratch directory for plugin data; all removed on drop, which also happens on
//! errors and after Ctrl-C (see [`crate::signals`]).

use std::path::PathBuf;

use knit_host::testing::{cleanup_stale, TestNet};

use crate::{Error, Result};

/// Namespace name prefix of every bench run: `knit-bench-<pid hex>-<n>[-<pod>]`.
pub const NS_PREFIX: &str = "knit-bench";

pub struct Workspace {
    /// The node namespace (`tn.host()`) and the pods.
    pub tn: TestNet,
    pub dir: PathBuf,
}

impl Workspace {
    pub fn new(tag: &str) -> Result<Workspace> {
        // Leftovers of a run that was killed outright (SIGKILL) carry a dead pid.
        let _ = cleanup_stale(NS_PREFIX);
        let tn = TestNet::new(NS_PREFIX)?;
        let dir = std::env::temp_dir().join(format!("{}-{tag}", tn.name()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| Error::Setup(format!("creating {}: {e}", dir.display())))?;
        Ok(Workspace { tn, dir })
    }

    /// A path under the scratch directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
