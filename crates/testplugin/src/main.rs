//! knit-testplugin: a tiny CNI plugin for conformance tests.
//!
//! - ADD returns `prevResult` (re-encoded in the config's version) when present, else a result
//!   built from the config: interface `CNI_IFNAME` in `CNI_NETNS`, plus the address in `"ip"`
//!   (and `"gateway"`) if given. `"appendRoute": "<cidr>"` appends a route, so chains show
//!   every plugin's contribution.
//! - `"fail": "<verb>"` (e.g. `"add"`) makes that verb fail with code 100.
//! - With `KNIT_TESTPLUGIN_LOG` set (or the config key `"testLog"`, which wins, so parallel
//!   tests need not share the process environment), every invocation appends one JSON line:
//!   `{command, type, containerID, netns, ifname, args, unknownKeys, stdin}`.
//! - DEL, CHECK, STATUS and GC succeed (GC's valid attachments appear in the logged stdin).

use std::io::Write;

use knit_cni::skel::{self, CmdArgs, Plugin};
use knit_cni::{CniError, CniResult, Interface, IpConfig, Route};
use serde_json::{json, Value};

/// Code of the errors this plugin is asked to produce.
const FAIL_CODE: u32 = 100;

struct TestPlugin;

impl TestPlugin {
    fn record(&self, args: &CmdArgs) -> Result<(), CniError> {
        let path = match args.conf.extra.get("testLog").and_then(Value::as_str) {
            Some(p) => std::ffi::OsString::from(p),
            None => match std::env::var_os("KNIT_TESTPLUGIN_LOG") {
                Some(p) => p,
                None => return Ok(()),
            },
        };
        let stdin: Value = serde_json::from_slice(&args.stdin).unwrap_or(Value::Null);
        let line = json!({
            "command": args.command.as_str(),
            "type": args.conf.plugin_type,
            "containerID": args.container_id,
            "netns": args.netns,
            "ifname": args.ifname,
            "args": args.args,
            "unknownKeys": args.conf.extra.keys().collect::<Vec<_>>(),
            "stdin": stdin,
        });
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| CniError::io("opening KNIT_TESTPLUGIN_LOG", e))?;
        writeln!(f, "{line}").map_err(|e| CniError::io("writing KNIT_TESTPLUGIN_LOG", e))
    }

    /// Logs the call and fails it if the config says so.
    fn enter(&self, args: &CmdArgs) -> Result<(), CniError> {
        self.record(args)?;
        let verb = args.command.as_str().to_ascii_lowercase();
        match args.conf.extra.get("fail").and_then(Value::as_str) {
            Some(f) if f.eq_ignore_ascii_case(&verb) => {
                Err(CniError::new(FAIL_CODE, format!("knit-testplugin: asked to fail {}", args.command))
                    .with_details(format!("type {:?}", args.conf.plugin_type)))
            }
            _ => Ok(()),
        }
    }

    fn str_key<'a>(&self, args: &'a CmdArgs, key: &str) -> Result<Option<&'a str>, CniError> {
        match args.conf.extra.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(CniError::invalid_config(format!("field {key:?} must be a string, got {other}"))),
        }
    }

    fn parse<T: std::str::FromStr>(&self, key: &str, s: &str) -> Result<T, CniError>
    where
        T::Err: std::fmt::Display,
    {
        s.parse().map_err(|e| CniError::invalid_config(format!("field {key:?}: {e}")))
    }

    fn fresh_result(&self, args: &CmdArgs) -> Result<CniResult, CniError> {
        let mut result = CniResult {
            interfaces: vec![Interface {
                name: args.ifname.clone(),
                mac: "02:42:00:00:00:01".into(),
                sandbox: args.netns.clone(),
                ..Interface::default()
            }],
            dns: Some(Default::default()),
            ..CniResult::default()
        };
        if let Some(ip) = self.str_key(args, "ip")? {
            let gateway = match self.str_key(args, "gateway")? {
                Some(g) => Some(self.parse("gateway", g)?),
                None => None,
            };
            result.ips.push(IpConfig { interface: Some(0), address: self.parse("ip", ip)?, gateway });
        }
        Ok(result)
    }
}

impl Plugin for TestPlugin {
    fn add(&self, args: &CmdArgs) -> Result<CniResult, CniError> {
        self.enter(args)?;
        let mut result = match args.prev_result()? {
            Some(prev) => prev,
            None => self.fresh_result(args)?,
        };
        if let Some(dst) = self.str_key(args, "appendRoute")? {
            result.routes.push(Route::new(self.parse("appendRoute", dst)?, None));
        }
        Ok(result)
    }

    fn del(&self, args: &CmdArgs) -> Result<(), CniError> {
        self.enter(args)
    }

    fn check(&self, args: &CmdArgs) -> Result<(), CniError> {
        self.enter(args)?;
        if args.conf.prev_result.is_none() {
            return Err(CniError::invalid_config("Required prevResult missing"));
        }
        Ok(())
    }

    fn status(&self, args: &CmdArgs) -> Result<(), CniError> {
        self.enter(args)
    }

    fn gc(&self, args: &CmdArgs) -> Result<(), CniError> {
        self.enter(args)?;
        args.conf.valid_attachments().map(drop)
    }
}

fn main() {
    skel::run(&TestPlugin, "knit-testplugin: CNI conformance test plugin")
}
