//! A root filesystem for `podman run --rootfs` and `ctr run --rootfs`: Debian's busybox-static
//! and links to the applets the containers run (`nc -ll -e cat` is the echo server), so no image,
//! registry or network access is needed.

use std::path::{Path, PathBuf};

/// Where Debian's `busybox-static` (and `busybox`, which is dynamic) installs the binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// The applets linked into the rootfs.
const APPLETS: &[&str] = &["sh", "nc", "cat", "sleep", "ip", "ls", "echo"];

/// Checks that [`BUSYBOX`] is a static binary: a dynamic one (package `busybox`) cannot run in a
/// root filesystem that has no C library. Returns the problem, if any.
pub fn busybox_problem() -> Option<String> {
    let bytes = match std::fs::read(BUSYBOX) {
        Ok(b) => b,
        Err(e) => return Some(format!("{BUSYBOX}: {e} (Debian package busybox-static)")),
    };
    match has_interpreter(&bytes) {
        Some(false) => None,
        Some(true) => Some(format!("{BUSYBOX} is dynamically linked: install Debian's busybox-static")),
        None => Some(format!("{BUSYBOX} is not a 64-bit ELF executable")),
    }
}

/// Whether a 64-bit little-endian ELF file asks for a program interpreter (`PT_INTERP`), i.e.
/// is dynamically linked; `None` when it is not such a file.
fn has_interpreter(elf: &[u8]) -> Option<bool> {
    const PT_INTERP: u32 = 3;
    if elf.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let phoff = usize::try_from(u64::from_le_bytes(elf.get(0x20..0x28)?.try_into().ok()?)).ok()?;
    let (phentsize, phnum) = (u16_at(0x36)?, u16_at(0x38)?);
    for i in 0..phnum {
        let at = phoff.checked_add(i.checked_mul(phentsize)?)?;
        let p_type = u32::from_le_bytes(elf.get(at..at + 4)?.try_into().ok()?);
        if p_type == PT_INTERP {
            return Some(true);
        }
    }
    Some(false)
}

/// Builds the rootfs under `dir` and returns its path: `bin/busybox`, the applet links, and the
/// directories and files the runtimes mount over (so they need not create them).
pub fn build(dir: &Path) -> Result<PathBuf, String> {
    let root = dir.join("rootfs");
    let err = |what: &str, e: std::io::Error| format!("rootfs {}: {what}: {e}", root.display());
    for d in ["bin", "proc", "sys", "dev", "etc", "tmp", "run"] {
        std::fs::create_dir_all(root.join(d)).map_err(|e| err(d, e))?;
    }
    for f in ["etc/hosts", "etc/resolv.conf", "etc/hostname"] {
        std::fs::write(root.join(f), "").map_err(|e| err(f, e))?;
    }
    std::fs::copy(BUSYBOX, root.join("bin/busybox")).map_err(|e| err("copy busybox", e))?;
    for a in APPLETS {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).map_err(|e| err(a, e))?;
    }
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpreter_is_found_in_program_headers() {
        // A minimal ELF64 header with one program header of the given type at offset 64.
        let elf = |p_type: u32| {
            let mut b = vec![0u8; 64 + 56];
            b[..6].copy_from_slice(b"\x7fELF\x02\x01");
            b[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
            b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
            b[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
            b[64..68].copy_from_slice(&p_type.to_le_bytes());
            b
        };
        assert_eq!(has_interpreter(&elf(3)), Some(true));
        assert_eq!(has_interpreter(&elf(1)), Some(false));
        assert_eq!(has_interpreter(b"#!/bin/sh\n"), None);
        assert_eq!(has_interpreter(&elf(3)[..66]), None, "a truncated header is not an answer");
    }
}
