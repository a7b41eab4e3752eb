//! Firewall writers: `iptables-restore`, `iptables-save` and `nft -f -`.
//!
//! Rules always travel on stdin to a directly executed program — never
//! through a shell — so no rule text can be interpreted as a command. With a
//! namespace, the program is spawned from a thread inside it and so inherits it.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use crate::netns::Netns;
use crate::types::Family;
use crate::{guard, Error, Result};

fn restore_program(family: Family) -> &'static str {
    match family {
        Family::V4 => "iptables-restore",
        Family::V6 => "ip6tables-restore",
    }
}

fn save_program(family: Family) -> &'static str {
    match family {
        Family::V4 => "iptables-save",
        Family::V6 => "ip6tables-save",
    }
}

/// Runs `cmd` with `input` on stdin and captures its output.
fn run_with_stdin(cmd: &mut Command, input: &[u8], op: &str) -> Result<Output> {
    let prog = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::io(format!("{op}: spawn {prog}"), e))?;
    let stdin = child.stdin.take();
    // Feed stdin from another thread so a chatty child can't deadlock us on a full pipe.
    std::thread::scope(|s| {
        let writer = s.spawn(move || -> std::io::Result<()> {
            if let Some(mut w) = stdin {
                w.write_all(input)?;
            }
            Ok(())
        });
        let out = child.wait_with_output().map_err(|e| Error::io(format!("{op}: wait for {prog}"), e))?;
        match writer.join() {
            Ok(Ok(())) => {}
            // EPIPE: the child exited early; its stderr says why.
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            Ok(Err(e)) => return Err(Error::io(format!("{op}: write to {prog}"), e)),
            Err(p) => std::panic::resume_unwind(p),
        }
        Ok(out)
    })
}

fn check_status(out: &Output, op: &str, prog: &str) -> Result<()> {
    if out.status.success() {
        return Ok(());
    }
    Err(Error::Command {
        op: op.to_string(),
        program: prog.to_string(),
        status: out.status.code(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Runs `f` inside `ns`, or (when `None`) in the caller's namespace after the root guard check.
fn in_ns<T: Send>(ns: Option<&Netns>, op: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    match ns {
        Some(ns) => ns.try_run(f),
        None => {
            guard::check(op)?;
            f()
        }
    }
}

/// Loads `text` (iptables-save format) with `iptables-restore -w` (or
/// `ip6tables-restore`); with `noflush`, tables named in the text are not flushed first.
pub fn iptables_restore(ns: Option<&Netns>, family: Family, text: &str, noflush: bool) -> Result<()> {
    let prog = restore_program(family);
    let op = match ns {
        Some(n) => format!("{prog} in {}", n.describe()),
        None => prog.to_string(),
    };
    in_ns(ns, &op, || {
        let mut cmd = Command::new(prog);
        cmd.arg("-w").env("LC_ALL", "C");
        if noflush {
            cmd.arg("--noflush");
        }
        let out = run_with_stdin(&mut cmd, text.as_bytes(), &op)?;
        check_status(&out, &op, prog)
    })
}

/// Dumps rules with `iptables-save` (or `ip6tables-save`), optionally one table only.
pub fn iptables_save(ns: Option<&Netns>, family: Family, table: Option<&str>) -> Result<String> {
    let prog = save_program(family);
    let op = match ns {
        Some(n) => format!("{prog} in {}", n.describe()),
        None => prog.to_string(),
    };
    if let Some(t) = table {
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(Error::invalid(op, format!("bad table name {t:?}")));
        }
    }
    in_ns(ns, &op, || {
        let mut cmd = Command::new(prog);
        cmd.env("LC_ALL", "C");
        if let Some(t) = table {
            cmd.arg("-t").arg(t);
        }
        let out = run_with_stdin(&mut cmd, b"", &op)?;
        check_status(&out, &op, prog)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    })
}

/// Applies an nftables script with `nft -f -`.
pub fn nft_apply(ns: Option<&Netns>, text: &str) -> Result<()> {
    let op = match ns {
        Some(n) => format!("nft -f - in {}", n.describe()),
        None => "nft -f -".to_string(),
    };
    in_ns(ns, &op, || {
        let mut cmd = Command::new("nft");
        cmd.args(["-f", "-"]).env("LC_ALL", "C");
        let out = run_with_stdin(&mut cmd, text.as_bytes(), &op)?;
        check_status(&out, &op, "nft")
    })
}

/// Dumps the nftables ruleset (`nft list ruleset`).
pub fn nft_list(ns: Option<&Netns>) -> Result<String> {
    let op = match ns {
        Some(n) => format!("nft list ruleset in {}", n.describe()),
        None => "nft list ruleset".to_string(),
    };
    in_ns(ns, &op, || {
        let mut cmd = Command::new("nft");
        cmd.args(["list", "ruleset"]).env("LC_ALL", "C");
        let out = run_with_stdin(&mut cmd, b"", &op)?;
        check_status(&out, &op, "nft")?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    })
}
