//! A NETLINK_ROUTE socket with request/ack and dump helpers.
//!
//! A netlink socket stays bound to the namespace it was created in, whatever
//! thread later uses it. [`Handle::in_netns`] therefore creates the socket on a
//! thread inside the target namespace and hands it back; all object modules
//! (`link`, `addr`, `route`, ...) then work through a `&Handle` from any thread.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NlasIterator, NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_DUMP,
    NLM_F_DUMP_INTR, NLM_F_MULTIPART, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::netns::Netns;
use crate::{guard, Error, Result};

/// How often a dump is retried when the kernel flags it as interrupted
/// (`NLM_F_DUMP_INTR`: the object list changed mid-dump), as CNI's netlinksafe does.
const DUMP_RETRIES: usize = 5;

/// `NLMSGERR_ATTR_MSG`: the extended-ack TLV carrying a human-readable reason.
const NLMSGERR_ATTR_MSG: u16 = 1;

/// A NETLINK_ROUTE socket bound to one network namespace.
///
/// Requests are serialised internally, so a `Handle` can be shared between threads.
#[derive(Debug)]
pub struct Handle {
    socket: Socket,
    seq: AtomicU32,
    // One request at a time: replies are matched by sequence number, and
    // interleaved requests would steal each other's replies.
    io: Mutex<()>,
}

impl Handle {
    /// Opens a socket in the calling thread's namespace.
    ///
    /// Refused when the root-namespace guard is on and the thread is in the root namespace.
    pub fn new() -> Result<Handle> {
        guard::check("open netlink socket")?;
        let op = "open netlink socket";
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(|e| Error::io(op, e))?;
        socket.bind_auto().map_err(|e| Error::io(op, e))?;
        // Extended acks give messages like "Unknown device type"; capped acks
        // keep error replies small (no copy of our request).
        let _ = socket.set_ext_ack(true);
        let _ = socket.set_cap_ack(true);
        Ok(Handle { socket, seq: AtomicU32::new(1), io: Mutex::new(()) })
    }

    /// Opens a socket inside `ns` (on a dedicated thread); the handle can be used from any thread.
    pub fn in_netns(ns: &Netns) -> Result<Handle> {
        ns.try_run(Handle::new)
    }

    fn next_seq(&self) -> u32 {
        // Skip 0 so a reply with seq 0 (kernel notifications) never matches.
        let s = self.seq.fetch_add(1, Ordering::Relaxed);
        if s == 0 {
            self.seq.fetch_add(1, Ordering::Relaxed)
        } else {
            s
        }
    }

    fn send(&self, msg: RouteNetlinkMessage, flags: u16, op: &dyn Fn() -> String) -> Result<u32> {
        let seq = self.next_seq();
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = seq;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        nl.finalize();
        let mut buf = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut buf);
        let kernel = SocketAddr::new(0, 0);
        self.socket.send_to(&buf, &kernel, 0).map_err(|e| Error::io(format!("{}: send", op()), e))?;
        Ok(seq)
    }

    /// Receives one datagram (which may hold several netlink messages).
    fn recv_datagram(&self, buf: &mut Vec<u8>, op: &dyn Fn() -> String) -> Result<()> {
        recv_datagram(&self.socket, buf, op)
    }

    /// Sends `msg` with `NLM_F_REQUEST | NLM_F_ACK | flags` and waits for the ack.
    ///
    /// Returns any messages the kernel sent before the ack (e.g. the reply to
    /// a non-dump `RTM_GET*`). A negative ack becomes [`Error::Netlink`] with
    /// its errno and extended-ack text, prefixed by `op()`.
    pub fn request(
        &self,
        msg: RouteNetlinkMessage,
        flags: u16,
        op: impl Fn() -> String,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        let _io = self.io.lock().unwrap_or_else(|p| p.into_inner());
        let seq = self.send(msg, NLM_F_REQUEST | NLM_F_ACK | flags, &op)?;
        let mut out = Vec::new();
        let mut buf = Vec::new();
        loop {
            self.recv_datagram(&mut buf, &op)?;
            for m in parse_datagram(&buf, &op)? {
                if m.header.sequence_number != seq {
                    continue; // a late reply to an earlier, abandoned request
                }
                match m.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(code) => Err(Error::Netlink {
                                op: op(),
                                errno: code.get().abs(),
                                ext_ack: ext_ack_message(m.header.flags, &e.header),
                            }),
                        }
                    }
                    NetlinkPayload::InnerMessage(inner) => out.push(inner),
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Overrun(_) => {
                        return Err(Error::Decode { op: op(), msg: "netlink overrun".into() })
                    }
                    _ => {}
                }
            }
        }
    }

    /// Dumps objects (`NLM_F_DUMP`), retrying up to 5 times if the dump was interrupted.
    pub fn dump(&self, msg: RouteNetlinkMessage, op: impl Fn() -> String) -> Result<Vec<RouteNetlinkMessage>> {
        let _io = self.io.lock().unwrap_or_else(|p| p.into_inner());
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (out, interrupted) = self.dump_once(msg.clone(), &op)?;
            if !interrupted {
                return Ok(out);
            }
            if attempt >= DUMP_RETRIES {
                return Err(Error::Netlink {
                    op: op(),
                    errno: libc::EINTR,
                    ext_ack: Some(format!("dump interrupted {DUMP_RETRIES} times")),
                });
            }
            tracing::debug!(attempt, "netlink dump interrupted, retrying");
        }
    }

    fn dump_once(&self, msg: RouteNetlinkMessage, op: &dyn Fn() -> String) -> Result<(Vec<RouteNetlinkMessage>, bool)> {
        let seq = self.send(msg, NLM_F_REQUEST | NLM_F_DUMP, op)?;
        let mut out = Vec::new();
        let mut interrupted = false;
        let mut buf = Vec::new();
        loop {
            self.recv_datagram(&mut buf, op)?;
            for m in parse_datagram(&buf, op)? {
                if m.header.sequence_number != seq {
                    continue;
                }
                if m.header.flags & NLM_F_DUMP_INTR != 0 {
                    interrupted = true;
                }
                match m.payload {
                    NetlinkPayload::InnerMessage(inner) => out.push(inner),
                    NetlinkPayload::Done(d) => {
                        if d.code < 0 {
                            return Err(Error::Netlink { op: op(), errno: -d.code, ext_ack: None });
                        }
                        return Ok((out, interrupted));
                    }
                    NetlinkPayload::Error(e) => match e.code {
                        None => return Ok((out, interrupted)),
                        Some(code) => {
                            return Err(Error::Netlink {
                                op: op(),
                                errno: code.get().abs(),
                                ext_ack: ext_ack_message(m.header.flags, &e.header),
                            })
                        }
                    },
                    NetlinkPayload::Overrun(_) => {
                        return Err(Error::Decode { op: op(), msg: "netlink overrun".into() })
                    }
                    _ => {}
                }
                // A non-multipart reply to a dump is complete on its own.
                if m.header.flags & NLM_F_MULTIPART == 0 {
                    return Ok((out, interrupted));
                }
            }
        }
    }
}

/// Receives one whole datagram from any netlink socket (NETLINK_ROUTE here, NETLINK_NETFILTER
/// in [`crate::nft`]) into `buf`, retrying on EINTR.
pub(crate) fn recv_datagram(socket: &Socket, buf: &mut Vec<u8>, op: &dyn Fn() -> String) -> Result<()> {
    loop {
        // Peek with MSG_TRUNC to learn the full size, then read it whole.
        buf.clear();
        buf.reserve(64);
        let len = match socket.recv(buf, libc::MSG_PEEK | libc::MSG_TRUNC) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io(format!("{}: recv", op()), e)),
        };
        buf.clear();
        buf.reserve(len.max(64));
        match socket.recv(buf, 0) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io(format!("{}: recv", op()), e)),
        }
    }
}

/// Splits a datagram into netlink messages.
fn parse_datagram(buf: &[u8], op: &dyn Fn() -> String) -> Result<Vec<NetlinkMessage<RouteNetlinkMessage>>> {
    let mut out = Vec::new();
    let mut off = 0usize;
    while off + 16 <= buf.len() {
        let len = u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]) as usize;
        if len < 16 || off + len > buf.len() {
            return Err(Error::Decode { op: op(), msg: format!("bad netlink message length {len}") });
        }
        let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[off..off + len])
            .map_err(|e| Error::Decode { op: op(), msg: e.to_string() })?;
        out.push(msg);
        off += (len + 3) & !3;
    }
    Ok(out)
}

/// Extracts the extended-ack text from an error reply's payload (original
/// header, possibly capped, followed by TLVs when `NLM_F_ACK_TLVS` is set).
pub(crate) fn ext_ack_message(outer_flags: u16, payload: &[u8]) -> Option<String> {
    if outer_flags & NLM_F_ACK_TLVS == 0 || payload.len() < 16 {
        return None;
    }
    let orig_len = u32::from_ne_bytes([payload[0], payload[1], payload[2], payload[3]]) as usize;
    let skip = if outer_flags & NLM_F_CAPPED != 0 { 16 } else { (orig_len + 3) & !3 };
    let tlvs = payload.get(skip..)?;
    for nla in NlasIterator::new(tlvs) {
        let nla = nla.ok()?;
        if nla.kind() == NLMSGERR_ATTR_MSG {
            let v = nla.value();
            let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
            return Some(String::from_utf8_lossy(&v[..end]).into_owned());
        }
    }
    None
}
