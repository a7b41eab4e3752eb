//! Namespaces: create/open/delete, run isolation, the root guard, harness cleanup.

use std::process::Command;

use knit_host::testing::TestNet;
use knit_host::{guard, link, Error, Handle, Netns, NsId};

#[test]
fn create_open_delete_named() {
    let tn = TestNet::new("kh").unwrap();
    let name = format!("{}-extra", tn.name());
    let ns = Netns::create_named(&name).unwrap();
    assert_eq!(ns.name(), Some(name.as_str()));
    assert!(Netns::list_named().unwrap().contains(&name));
    // Creating the same name again is EEXIST, not a stacked mount.
    let err = Netns::create_named(&name).unwrap_err();
    assert!(err.is_exists(), "{err}");

    let again = Netns::open_named(&name).unwrap();
    assert_eq!(again.id().unwrap(), ns.id().unwrap());
    assert_ne!(ns.id().unwrap(), tn.host().id().unwrap());
    assert_ne!(ns.inode().unwrap(), guard::root_id().unwrap().ino);

    Netns::delete_named(&name).unwrap();
    Netns::delete_named(&name).unwrap(); // idempotent
    assert!(!Netns::list_named().unwrap().contains(&name));
    // The fd keeps the namespace alive after deletion.
    let inside = ns.run(|| NsId::current().unwrap()).unwrap();
    assert_eq!(inside, ns.id().unwrap());
}

#[test]
fn run_never_switches_the_caller() {
    let tn = TestNet::new("kh").unwrap();
    let before = NsId::current().unwrap();
    let inside = tn.host().run(|| NsId::current().unwrap()).unwrap();
    assert_eq!(inside, tn.host().id().unwrap());
    assert_eq!(NsId::current().unwrap(), before);
    // Netns::current() on the worker thread is the namespace we entered.
    let cur = tn.host().try_run(Netns::current).unwrap();
    assert_eq!(cur.id().unwrap(), tn.host().id().unwrap());
    // Borrowing non-'static data works.
    let v = [1, 2, 3];
    assert_eq!(tn.run(|| v.iter().sum::<i32>()).unwrap(), 6);
}

#[test]
fn panics_inside_run_propagate() {
    let tn = TestNet::new("kh").unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = tn.run(|| panic!("boom"));
    }));
    assert!(r.is_err());
}

#[test]
fn open_by_pid_path() {
    let tn = TestNet::new("kh").unwrap();
    let pid = tn.spawn(tn.host(), Command::new("sleep").arg("60")).unwrap();
    let ns = Netns::open(format!("/proc/{pid}/ns/net")).unwrap();
    assert_eq!(ns.id().unwrap(), tn.host().id().unwrap());
    assert_eq!(ns.name(), None);
}

#[test]
fn output_runs_inside_namespace() {
    let tn = TestNet::new("kh").unwrap();
    let pod = tn.pod("p").unwrap();
    let h = tn.handle_in(&pod).unwrap();
    link::create_bridge(&h, "br-probe").unwrap();
    let out = tn.exec_ok(&pod, &["ip", "-o", "link", "show", "br-probe"]).unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("br-probe"));
    // ...and not in the host namespace of the harness.
    let out = tn.exec(tn.host(), &["ip", "link", "show", "br-probe"]).unwrap();
    assert!(!out.status.success());
}

#[test]
fn guard_refuses_root_namespace() {
    let _tn = TestNet::new("kh").unwrap(); // switches the guard on
    assert!(guard::root_forbidden());
    if guard::in_root_netns().unwrap() {
        // This test thread is in the host's namespace: opening a socket here must fail.
        match Handle::new() {
            Err(Error::RootNamespace { .. }) => {}
            other => panic!("expected RootNamespace, got {other:?}"),
        }
        match knit_host::sysctl::set("net.ipv4.ip_forward", "1") {
            Err(Error::RootNamespace { .. }) => {}
            other => panic!("expected RootNamespace, got {other:?}"),
        }
        let root = Netns::root().unwrap();
        assert!(matches!(Handle::in_netns(&root), Err(Error::RootNamespace { .. })));
    }
}

#[test]
fn namespaces_are_removed_on_drop_and_on_panic() {
    let names = {
        let tn = TestNet::new("kh").unwrap();
        tn.pod("a").unwrap();
        tn.pod("b").unwrap();
        tn.namespace_names()
    };
    assert_eq!(names.len(), 3);
    let listed = Netns::list_named().unwrap();
    for n in &names {
        assert!(!listed.contains(n), "{n} left behind");
    }

    let mut seen = Vec::new();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let tn = TestNet::new("kh").unwrap();
        tn.pod("x").unwrap();
        seen = tn.namespace_names();
        panic!("test failure");
    }));
    assert!(r.is_err());
    let listed = Netns::list_named().unwrap();
    assert_eq!(seen.len(), 2);
    for n in &seen {
        assert!(!listed.contains(n), "{n} left behind after panic");
    }
}

#[test]
fn processes_left_in_namespaces_are_killed() {
    let tn = TestNet::new("kh").unwrap();
    let pod = tn.pod("p").unwrap();
    // Started outside the harness's tracking.
    let mut child = pod.spawn(Command::new("sleep").arg("60")).unwrap();
    drop(tn);
    let status = child.wait().unwrap();
    assert!(!status.success(), "sleep should have been killed: {status:?}");
}
