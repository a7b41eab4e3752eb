//! The skeleton's testable core, `skel::run_with`, driven in-process with a mock plugin.

use std::cell::RefCell;
use std::collections::HashMap;

use knit_cni::skel::{run_with, CmdArgs, Command, Plugin};
use knit_cni::{code, CniError, CniResult, Interface};
use serde_json::Value;

type Seen = (Command, String, Vec<(String, String)>);

#[derive(Default)]
struct Mock {
    seen: RefCell<Vec<Seen>>,
}

impl Plugin for Mock {
    fn add(&self, a: &CmdArgs) -> Result<CniResult, CniError> {
        self.seen.borrow_mut().push((a.command, a.conf.name.clone(), a.args.clone()));
        Ok(CniResult {
            interfaces: vec![Interface { name: a.ifname.clone(), ..Interface::default() }],
            ..CniResult::default()
        })
    }
    fn del(&self, a: &CmdArgs) -> Result<(), CniError> {
        self.seen.borrow_mut().push((a.command, a.conf.name.clone(), a.args.clone()));
        Err(CniError::try_again_later("busy"))
    }
    fn check(&self, _a: &CmdArgs) -> Result<(), CniError> {
        Ok(())
    }
    fn supported_versions(&self) -> &[&str] {
        &["1.0.0"]
    }
}

fn run(p: &Mock, vars: &[(&str, &str)], stdin: &str) -> (i32, String) {
    let env: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let mut out = Vec::new();
    let rc = run_with(p, "", |k| env.get(k).cloned(), stdin.as_bytes(), &mut out);
    (rc, String::from_utf8(out).expect("utf8"))
}

const ENV: &[(&str, &str)] = &[
    ("CNI_COMMAND", "ADD"),
    ("CNI_CONTAINERID", "c1"),
    ("CNI_NETNS", "/proc/1/ns/net"),
    ("CNI_IFNAME", "net1"),
    ("CNI_PATH", "/opt/cni/bin"),
    ("CNI_ARGS", "A=1;B=2"),
];

#[test]
fn add_and_errors_in_process() {
    let p = Mock::default();
    let (rc, out) = run(&p, ENV, r#"{"cniVersion":"1.0.0","name":"n","type":"mock"}"#);
    assert_eq!(rc, 0);
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["interfaces"][0]["name"], "net1");
    assert_eq!(v["cniVersion"], "1.0.0");
    assert_eq!(p.seen.borrow()[0].2, [("A".to_string(), "1".to_string()), ("B".to_string(), "2".to_string())]);

    // The plugin's own version list is enforced.
    let (rc, out) = run(&p, ENV, r#"{"cniVersion":"1.1.0","name":"n","type":"mock"}"#);
    assert_eq!(rc, 1);
    let err: CniError = serde_json::from_str(&out).expect("err");
    assert_eq!(err.code, code::INCOMPATIBLE_VERSION);
    assert!(err.details.contains("1.0.0"));

    let mut del: Vec<(&str, &str)> = ENV.to_vec();
    del[0] = ("CNI_COMMAND", "DEL");
    let (rc, out) = run(&p, &del, r#"{"cniVersion":"1.0.0","name":"n","type":"mock"}"#);
    assert_eq!(rc, 1);
    let err: CniError = serde_json::from_str(&out).expect("err");
    assert_eq!((err.code, err.msg.as_str(), err.cni_version.as_str()), (code::TRY_AGAIN_LATER, "busy", "1.0.0"));

    // Without CNI_COMMAND and without an about text, it is a missing variable.
    let (rc, out) = run(&p, &[], "{}");
    assert_eq!(rc, 1);
    assert!(out.contains("CNI_COMMAND"));
}
