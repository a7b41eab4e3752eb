//! ARP on one interface of a namespace: the mechanism behind knit-ipam's address-conflict
//! probe (RFC 5227), gateway probe and gratuitous ARP.
//!
//! - [`Interface`]: an interface of a namespace, brought up for the probe if it was down and
//!   put back down by [`Interface::restore`] (or on drop), so probing leaves no trace;
//! - [`ArpSocket`]: an `AF_PACKET` socket bound to that interface, created on a short-lived
//!   thread inside the namespace and usable from any thread afterwards. Frames are built by
//!   hand (Ethernet II + ARP for IPv4 over Ethernet); no policy lives here (how many tries,
//!   what counts as a conflict: that is the caller's).
//!
//! IPv4 only: the IPv6 equivalent is NDP (neighbour solicitations), which this module does not
//! implement.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Instant;

use crate::netns::Netns;
use crate::types::Mac;
use crate::{guard, link, Error, Handle, Result};

/// ARP operation: request.
pub const OP_REQUEST: u16 = 1;
/// ARP operation: reply.
pub const OP_REPLY: u16 = 2;

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IP: u16 = 0x0800;
const HTYPE_ETHER: u16 = 1;
/// Ethernet header (14) + ARP for IPv4 over Ethernet (28).
const FRAME_LEN: usize = 42;
/// Minimum Ethernet frame without FCS; shorter frames are padded.
const MIN_FRAME: usize = 60;
const BROADCAST: Mac = Mac([0xff; 6]);

/// One ARP packet (IPv4 over Ethernet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpPacket {
    /// [`OP_REQUEST`] or [`OP_REPLY`].
    pub op: u16,
    /// Sender hardware address.
    pub sender_mac: Mac,
    /// Sender protocol address (`0.0.0.0` in an RFC 5227 probe).
    pub sender_ip: Ipv4Addr,
    /// Target hardware address (zero in requests).
    pub target_mac: Mac,
    /// Target protocol address.
    pub target_ip: Ipv4Addr,
}

impl ArpPacket {
    /// An RFC 5227 probe for `target` from `mac`: a request with sender IP `0.0.0.0`.
    pub fn probe(mac: Mac, target: Ipv4Addr) -> ArpPacket {
        ArpPacket::request(mac, Ipv4Addr::UNSPECIFIED, target)
    }

    /// A request "who has `target`? tell `sender_ip`".
    pub fn request(mac: Mac, sender_ip: Ipv4Addr, target: Ipv4Addr) -> ArpPacket {
        ArpPacket { op: OP_REQUEST, sender_mac: mac, sender_ip, target_mac: Mac([0; 6]), target_ip: target }
    }

    /// A gratuitous ARP (RFC 5227 announcement): a request with sender and target IP `ip`.
    pub fn announcement(mac: Mac, ip: Ipv4Addr) -> ArpPacket {
        ArpPacket::request(mac, ip, ip)
    }

    /// The Ethernet frame carrying this packet (broadcast for requests, unicast to
    /// `target_mac` for replies), padded to the 60-byte minimum.
    pub fn to_frame(&self) -> Vec<u8> {
        let dst = if self.op == OP_REQUEST { BROADCAST } else { self.target_mac };
        let mut f = Vec::with_capacity(MIN_FRAME);
        f.extend_from_slice(&dst.0);
        f.extend_from_slice(&self.sender_mac.0);
        f.extend_from_slice(&ETH_P_ARP.to_be_bytes());
        f.extend_from_slice(&HTYPE_ETHER.to_be_bytes());
        f.extend_from_slice(&ETH_P_IP.to_be_bytes());
        f.push(6);
        f.push(4);
        f.extend_from_slice(&self.op.to_be_bytes());
        f.extend_from_slice(&self.sender_mac.0);
        f.extend_from_slice(&self.sender_ip.octets());
        f.extend_from_slice(&self.target_mac.0);
        f.extend_from_slice(&self.target_ip.octets());
        f.resize(MIN_FRAME, 0);
        f
    }

    /// Parses an Ethernet frame; `None` unless it is ARP for IPv4 over Ethernet.
    pub fn from_frame(f: &[u8]) -> Option<ArpPacket> {
        if f.len() < FRAME_LEN || f[12..14] != ETH_P_ARP.to_be_bytes() {
            return None;
        }
        let a = &f[14..];
        if a[0..2] != HTYPE_ETHER.to_be_bytes() || a[2..4] != ETH_P_IP.to_be_bytes() || a[4] != 6 || a[5] != 4 {
            return None;
        }
        let ip = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
        Some(ArpPacket {
            op: u16::from_be_bytes([a[6], a[7]]),
            sender_mac: Mac::from_slice(&a[8..14])?,
            sender_ip: ip(&a[14..18]),
            target_mac: Mac::from_slice(&a[18..24])?,
            target_ip: ip(&a[24..28]),
        })
    }
}

/// An interface of a namespace, looked up for probing. If [`Interface::ensure_up`] raised it,
/// [`Interface::restore`] (or dropping it) sets it back down.
#[derive(Debug)]
pub struct Interface {
    handle: Handle,
    info: link::LinkInfo,
    raised: bool,
}

impl Interface {
    /// The link `name` in `ns`, or `None` if there is no such link (yet).
    pub fn open(ns: &Netns, name: &str) -> Result<Option<Interface>> {
        let handle = Handle::in_netns(ns)?;
        let Some(info) = link::get_by_name(&handle, name)? else {
            return Ok(None);
        };
        Ok(Some(Interface { handle, info, raised: false }))
    }

    /// Interface index.
    pub fn index(&self) -> u32 {
        self.info.index
    }

    /// Interface name.
    pub fn name(&self) -> &str {
        &self.info.name
    }

    /// What the kernel reported when the interface was opened.
    pub fn info(&self) -> &link::LinkInfo {
        &self.info
    }

    /// The interface's Ethernet address, or an error if it has none (not Ethernet).
    pub fn mac(&self) -> Result<Mac> {
        self.info.mac.ok_or_else(|| {
            Error::invalid(format!("ARP on {}", self.info.name), "the interface has no Ethernet address")
        })
    }

    /// Brings the interface up if it is administratively down (remembering to undo it).
    pub fn ensure_up(&mut self) -> Result<()> {
        if self.info.up || self.raised {
            return Ok(());
        }
        link::set_up(&self.handle, self.info.index)?;
        self.raised = true;
        Ok(())
    }

    /// Whether [`Interface::ensure_up`] brought the interface up.
    pub fn raised(&self) -> bool {
        self.raised
    }

    /// Puts the interface back down if [`Interface::ensure_up`] brought it up.
    pub fn restore(&mut self) -> Result<()> {
        if self.raised {
            link::set_down(&self.handle, self.info.index)?;
            self.raised = false;
        }
        Ok(())
    }
}

impl Drop for Interface {
    fn drop(&mut self) {
        if let Err(e) = self.restore() {
            tracing::warn!(link = %self.info.name, error = %e, "could not set the probed link back down");
        }
    }
}

/// An `AF_PACKET` socket receiving and sending ARP frames on one interface.
#[derive(Debug)]
pub struct ArpSocket {
    fd: OwnedFd,
    index: u32,
    name: String,
}

fn sockaddr_ll(index: u32, dst: Option<Mac>) -> Result<libc::sockaddr_ll> {
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sa.sll_family = libc::AF_PACKET as libc::c_ushort;
    sa.sll_protocol = ETH_P_ARP.to_be();
    sa.sll_ifindex = i32::try_from(index)
        .map_err(|_| Error::invalid("ARP socket", format!("interface index {index} out of range")))?;
    if let Some(m) = dst {
        sa.sll_halen = 6;
        sa.sll_addr[..6].copy_from_slice(&m.0);
    }
    Ok(sa)
}

impl ArpSocket {
    /// Opens a socket bound to `iface` (which lives in `ns`); the socket is created on a thread
    /// inside `ns` and can then be used from any thread. Bring the interface up first: a
    /// packet socket bound to a down interface fails its first send with `ENETDOWN`.
    pub fn open(ns: &Netns, iface: &Interface) -> Result<ArpSocket> {
        let index = iface.index();
        let name = iface.name().to_string();
        let op = format!("open ARP socket on {name} in {}", ns.describe());
        let fd = ns.try_run(|| -> Result<OwnedFd> {
            guard::check(&op)?;
            // SAFETY: plain socket(2) call; the result is checked before use.
            let raw = unsafe {
                libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::c_int::from(ETH_P_ARP.to_be()))
            };
            if raw < 0 {
                return Err(Error::io(op.clone(), std::io::Error::last_os_error()));
            }
            // SAFETY: raw is a fresh descriptor that nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            let sa = sockaddr_ll(index, None)?;
            // SAFETY: sa is a valid sockaddr_ll and the length matches it.
            let rc = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&sa as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            if rc < 0 {
                return Err(Error::io(format!("{op}: bind"), std::io::Error::last_os_error()));
            }
            Ok(fd)
        })?;
        Ok(ArpSocket { fd, index, name })
    }

    /// Sends one packet (see [`ArpPacket::to_frame`] for the Ethernet destination).
    pub fn send(&self, pkt: &ArpPacket) -> Result<()> {
        let frame = pkt.to_frame();
        let dst = if pkt.op == OP_REQUEST { BROADCAST } else { pkt.target_mac };
        let sa = sockaddr_ll(self.index, Some(dst))?;
        // SAFETY: frame and sa are valid for the lengths given.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&sa as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(Error::io(
                format!("send ARP {} for {} on {}", op_name(pkt.op), pkt.target_ip, self.name),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// The next ARP packet received on the interface (frames this host sent are skipped), or
    /// `None` once `deadline` has passed.
    pub fn recv(&self, deadline: Instant) -> Result<Option<ArpPacket>> {
        let mut buf = [0u8; 1514];
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let left = deadline - now;
            // Round up so a sub-millisecond remainder still waits.
            let ms = i32::try_from(left.as_millis().saturating_add(1)).unwrap_or(i32::MAX);
            let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: pfd is one valid pollfd.
            let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
            if rc < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(Error::io(format!("poll ARP socket on {}", self.name), e));
            }
            if rc == 0 {
                continue;
            }
            // SAFETY: sockaddr_ll is plain old data; all-zero is valid.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: buf, from and len are valid for the sizes given.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut len,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if matches!(e.kind(), std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock) {
                    continue;
                }
                return Err(Error::io(format!("receive on ARP socket on {}", self.name), e));
            }
            if from.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            let n = usize::try_from(n).unwrap_or(0).min(buf.len());
            if let Some(p) = ArpPacket::from_frame(&buf[..n]) {
                return Ok(Some(p));
            }
        }
    }

    /// Receives until `pred` accepts a packet (returned) or `deadline` passes (`None`).
    pub fn wait_for(&self, deadline: Instant, mut pred: impl FnMut(&ArpPacket) -> bool) -> Result<Option<ArpPacket>> {
        while let Some(p) = self.recv(deadline)? {
            if pred(&p) {
                return Ok(Some(p));
            }
        }
        Ok(None)
    }
}

fn op_name(op: u16) -> &'static str {
    match op {
        OP_REQUEST => "request",
        OP_REPLY => "reply",
        _ => "packet",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trip() {
        let mac = Mac([2, 0, 0, 0, 0, 1]);
        let p = ArpPacket::probe(mac, Ipv4Addr::new(10, 0, 0, 5));
        let f = p.to_frame();
        assert_eq!(f.len(), MIN_FRAME);
        assert_eq!(&f[..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &mac.0);
        assert_eq!(ArpPacket::from_frame(&f), Some(p));
        assert_eq!(p.sender_ip, Ipv4Addr::UNSPECIFIED);
        let a = ArpPacket::announcement(mac, Ipv4Addr::new(10, 0, 0, 7));
        assert_eq!((a.sender_ip, a.target_ip), (a.target_ip, Ipv4Addr::new(10, 0, 0, 7)));
        let reply = ArpPacket { op: OP_REPLY, target_mac: Mac([2, 0, 0, 0, 0, 9]), ..a };
        assert_eq!(&reply.to_frame()[..6], &[2, 0, 0, 0, 0, 9]);
        assert_eq!(ArpPacket::from_frame(&f[..20]), None);
        let mut ip_frame = f.clone();
        ip_frame[12..14].copy_from_slice(&[0x08, 0x00]);
        assert_eq!(ArpPacket::from_frame(&ip_frame), None);
    }
}
