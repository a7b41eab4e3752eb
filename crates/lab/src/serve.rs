//! The pods' echo server (`knit lab serve`) and the probes the matrix runs
//! against it.
//!
//! Wire format, the same for TCP and UDP: the probe sends one line
//! `knit-probe <nonce>`; the server answers `<that line> <pod name>\n`. The
//! echoed nonce ties a UDP reply to its request, and the pod name tells the
//! matrix which endpoint a Service picked.
//!
//! The UDP side answers from the address the request was sent to
//! (`IP_PKTINFO` / `IPV6_PKTINFO`): a multi-homed pod (multi-NIC, or an
//! underlay pod with `veth0`) would otherwise answer from whatever address
//! its route to the client prefers, and the client would drop the reply.
//!
//! Sockets are made by [`EchoServer::bind`] in the caller's network namespace
//! (the `serve` process runs inside the pod; a test binds inside
//! `Netns::run`) and keep it wherever they are served from. The probes never
//! switch namespaces themselves: the matrix calls them on a thread that is
//! already in the source namespace.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags};
use nix::sys::socket::{self as sock, sockopt, ControlMessage, ControlMessageOwned, MsgFlags, SockaddrStorage};

/// First word of every probe request.
pub const REQUEST_TAG: &str = "knit-probe";
/// Probe timeout the matrix uses: long enough for a first ARP round, short
/// enough that a few hundred failing cells stay fast.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest request line the server reads.
const MAX_LINE: usize = 512;
/// How often the server loop checks whether it was asked to stop.
const POLL_TICK_MS: u16 = 100;
/// A TCP connection that says nothing for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// The reply to `request` from pod `pod`.
pub fn reply_for(request: &str, pod: &str) -> String {
    format!("{} {pod}\n", request.trim_end())
}

/// TCP and UDP echo sockets of one pod, bound but not yet served.
#[derive(Debug)]
pub struct EchoServer {
    pod: Arc<str>,
    tcp: Vec<TcpListener>,
    udp: Vec<UdpSocket>,
}

impl EchoServer {
    /// Binds TCP and UDP `port` on all IPv4 addresses and, where the namespace
    /// has IPv6, on all IPv6 addresses (v6-only sockets, so the two never clash).
    /// Call it inside the pod's namespace.
    pub fn bind(pod: &str, port: u16) -> io::Result<EchoServer> {
        if port == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "echo port must not be 0"));
        }
        let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
        let v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port);
        let mut tcp = vec![TcpListener::from(bind_socket(v4, sock::SockType::Stream)?)];
        let mut udp = vec![UdpSocket::from(bind_socket(v4, sock::SockType::Datagram)?)];
        // IPv6 is best effort: a namespace with IPv6 disabled still serves IPv4.
        if let (Ok(t), Ok(u)) = (bind_socket(v6, sock::SockType::Stream), bind_socket(v6, sock::SockType::Datagram)) {
            tcp.push(TcpListener::from(t));
            udp.push(UdpSocket::from(u));
        }
        for u in &udp {
            enable_pktinfo(u)?;
        }
        Ok(EchoServer { pod: Arc::from(pod), tcp, udp })
    }

    /// The pod name put into replies.
    pub fn pod(&self) -> &str {
        &self.pod
    }

    /// Serves on background threads until [`ServerHandle::stop`] or drop.
    pub fn spawn(self) -> io::Result<ServerHandle> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new().name(format!("echo-{}", self.pod)).spawn(move || self.serve(&flag))?;
        Ok(ServerHandle { stop, thread: Some(thread) })
    }

    /// Serves on the calling thread until the process ends (`knit lab serve`).
    pub fn run(self) -> io::Result<()> {
        self.serve(&AtomicBool::new(false))
    }

    fn serve(self, stop: &AtomicBool) -> io::Result<()> {
        // One poll loop for every socket; each TCP connection gets a thread so
        // a slow client cannot hold up the others.
        while !stop.load(Ordering::Relaxed) {
            let mut fds: Vec<PollFd> = self
                .tcp
                .iter()
                .map(|l| PollFd::new(l.as_fd(), PollFlags::POLLIN))
                .chain(self.udp.iter().map(|u| PollFd::new(u.as_fd(), PollFlags::POLLIN)))
                .collect();
            match nix::poll::poll(&mut fds, POLL_TICK_MS) {
                Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
                Ok(_) => {}
                Err(e) => return Err(io::Error::from(e)),
            }
            let ready: Vec<bool> =
                fds.iter().map(|f| f.revents().is_some_and(|r| r.intersects(PollFlags::POLLIN))).collect();
            drop(fds);
            for (i, l) in self.tcp.iter().enumerate() {
                if ready[i] {
                    if let Ok((conn, _)) = l.accept() {
                        let pod = self.pod.clone();
                        // A failed spawn only loses this one connection.
                        let _ =
                            std::thread::Builder::new().name("echo-conn".into()).spawn(move || tcp_session(conn, &pod));
                    }
                }
            }
            for (i, u) in self.udp.iter().enumerate() {
                if ready[self.tcp.len() + i] {
                    // One bad datagram (or an ICMP error queued on the socket) must not stop the server.
                    let _ = udp_answer(u, &self.pod);
                }
            }
        }
        Ok(())
    }
}

/// A running [`EchoServer`]; stops it when dropped.
#[derive(Debug)]
pub struct ServerHandle {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl ServerHandle {
    /// Stops serving (within one poll tick) and closes the listening sockets.
    pub fn stop(mut self) -> io::Result<()> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> io::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(io::Error::other("echo server thread panicked")),
            None => Ok(()),
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}

/// A socket bound to `addr` (listening, for streams), with `SO_REUSEADDR` so a
/// restarted server can rebind at once, and `IPV6_V6ONLY` on IPv6.
fn bind_socket(addr: SocketAddr, ty: sock::SockType) -> io::Result<OwnedFd> {
    let family = if addr.is_ipv4() { sock::AddressFamily::Inet } else { sock::AddressFamily::Inet6 };
    let fd = sock::socket(family, ty, sock::SockFlag::SOCK_CLOEXEC, None)?;
    sock::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    if addr.is_ipv6() {
        sock::setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    }
    sock::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    if ty == sock::SockType::Stream {
        sock::listen(&fd, sock::Backlog::new(128)?)?;
    }
    Ok(fd)
}

fn enable_pktinfo(u: &UdpSocket) -> io::Result<()> {
    if u.local_addr()?.is_ipv4() {
        sock::setsockopt(u, sockopt::Ipv4PacketInfo, &true)?;
    } else {
        sock::setsockopt(u, sockopt::Ipv6RecvPacketInfo, &true)?;
    }
    Ok(())
}

/// Answers every line of one TCP connection until EOF or idleness.
fn tcp_session(mut conn: TcpStream, pod: &str) {
    if conn.set_read_timeout(Some(IDLE_TIMEOUT)).is_err() {
        return;
    }
    let mut pending = Vec::new();
    let mut buf = [0u8; MAX_LINE];
    loop {
        let n = match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let reply = reply_for(&String::from_utf8_lossy(&line), pod);
            if conn.write_all(reply.as_bytes()).is_err() {
                return;
            }
        }
        if pending.len() > MAX_LINE {
            return;
        }
    }
}

/// Receives one datagram and answers it from the address it was sent to.
fn udp_answer(u: &UdpSocket, pod: &str) -> io::Result<()> {
    let mut buf = [0u8; MAX_LINE];
    let mut cmsg = nix::cmsg_space!(libc::in_pktinfo, libc::in6_pktinfo);
    let (n, peer, v4_info, v6_info) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = sock::recvmsg::<SockaddrStorage>(u.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_DONTWAIT)?;
        let (mut v4, mut v6) = (None, None);
        for c in msg.cmsgs()? {
            match c {
                ControlMessageOwned::Ipv4PacketInfo(pi) => v4 = Some(pi),
                ControlMessageOwned::Ipv6PacketInfo(pi) => v6 = Some(pi),
                _ => {}
            }
        }
        let peer = msg.address.ok_or_else(|| io::Error::other("datagram without a source address"))?;
        (msg.bytes, peer, v4, v6)
    };
    let reply = reply_for(&String::from_utf8_lossy(&buf[..n]), pod);
    let iov = [IoSlice::new(reply.as_bytes())];
    if let Some(pi) = v4_info {
        // ipi_spec_dst is the local address the request was for (for unicast,
        // the header's destination): sending from it keeps the reply's source
        // equal to the address the client asked.
        let out =
            libc::in_pktinfo { ipi_ifindex: 0, ipi_spec_dst: pi.ipi_spec_dst, ipi_addr: libc::in_addr { s_addr: 0 } };
        sock::sendmsg(u.as_raw_fd(), &iov, &[ControlMessage::Ipv4PacketInfo(&out)], MsgFlags::empty(), Some(&peer))?;
    } else if let Some(pi) = v6_info {
        // The interface matters for link-local sources, so keep it.
        let out = libc::in6_pktinfo { ipi6_addr: pi.ipi6_addr, ipi6_ifindex: pi.ipi6_ifindex };
        sock::sendmsg(u.as_raw_fd(), &iov, &[ControlMessage::Ipv6PacketInfo(&out)], MsgFlags::empty(), Some(&peer))?;
    } else {
        sock::sendmsg(u.as_raw_fd(), &iov, &[], MsgFlags::empty(), Some(&peer))?;
    }
    Ok(())
}

/// Why a probe failed; the matrix reports it next to the cell.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// No connection or no answer within the timeout (a silent drop).
    #[error("{what}: no answer within {after:?}")]
    Timeout {
        /// What was waited for.
        what: String,
        /// The timeout.
        after: Duration,
    },
    /// Actively refused (TCP RST, or REJECT with port-unreachable).
    #[error("{dst}: connection refused")]
    Refused {
        /// The destination.
        dst: SocketAddr,
    },
    /// A host or network unreachable error came back, or there is no route.
    #[error("{dst}: unreachable: {source}")]
    Unreachable {
        /// The destination.
        dst: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A UDP reply came from another address than the one asked: the server
    /// side (or NAT) broke source-address symmetry.
    #[error("reply from {from}, expected {expected}")]
    WrongSource {
        /// Where the reply came from.
        from: SocketAddr,
        /// Where the request went.
        expected: SocketAddr,
    },
    /// Something answered, but not the echo protocol.
    #[error("{dst}: unexpected reply {reply:?}")]
    BadReply {
        /// The destination.
        dst: SocketAddr,
        /// What came back.
        reply: String,
    },
    /// `ping` got no echo reply.
    #[error("ping {dst}: {detail}")]
    NoEcho {
        /// The destination.
        dst: IpAddr,
        /// ping's summary line.
        detail: String,
    },
    /// Any other local error.
    #[error("{op}: {source}")]
    Io {
        /// What was being done.
        op: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

fn io_err(op: impl Into<String>) -> impl FnOnce(io::Error) -> ProbeError {
    let op = op.into();
    move |source| ProbeError::Io { op, source }
}

/// Maps a socket error to what it says about the path.
fn classify(dst: SocketAddr, what: &str, timeout: Duration, e: io::Error) -> ProbeError {
    match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
            ProbeError::Timeout { what: format!("{what} {dst}"), after: timeout }
        }
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset => ProbeError::Refused { dst },
        io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
            ProbeError::Unreachable { dst, source: e }
        }
        _ => ProbeError::Io { op: format!("{what} {dst}"), source: e },
    }
}

/// A request line unique within this process.
fn request_line() -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{REQUEST_TAG} {}-{n}", std::process::id())
}

/// The pod name in `reply`, if it answers `request`.
fn pod_from_reply(request: &str, reply: &str) -> Option<String> {
    let rest = reply.strip_prefix(request)?.strip_prefix(' ')?;
    let pod = rest.trim_end();
    (!pod.is_empty() && !pod.contains(char::is_whitespace)).then(|| pod.to_string())
}

fn remaining(deadline: Instant) -> Option<Duration> {
    deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero())
}

/// Connects to `dst`, sends one request and returns the answering pod's name.
/// The whole exchange is bounded by `timeout`.
pub fn probe_tcp(dst: SocketAddr, timeout: Duration) -> Result<String, ProbeError> {
    let deadline = Instant::now() + timeout;
    let mut conn = TcpStream::connect_timeout(&dst, timeout).map_err(|e| classify(dst, "connect", timeout, e))?;
    let request = request_line();
    let left =
        remaining(deadline).ok_or_else(|| ProbeError::Timeout { what: format!("reply from {dst}"), after: timeout })?;
    conn.set_write_timeout(Some(left)).map_err(io_err("set write timeout"))?;
    conn.write_all(format!("{request}\n").as_bytes()).map_err(|e| classify(dst, "send to", timeout, e))?;
    let mut got = Vec::new();
    let mut buf = [0u8; MAX_LINE];
    while !got.contains(&b'\n') {
        let left = remaining(deadline)
            .ok_or_else(|| ProbeError::Timeout { what: format!("reply from {dst}"), after: timeout })?;
        conn.set_read_timeout(Some(left)).map_err(io_err("set read timeout"))?;
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            // A signal to the process is no answer: wait out the deadline.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(classify(dst, "reply from", timeout, e)),
        }
        if got.len() > MAX_LINE {
            break;
        }
    }
    let reply = String::from_utf8_lossy(&got).into_owned();
    pod_from_reply(&request, &reply).ok_or(ProbeError::BadReply { dst, reply })
}

/// Sends one datagram to `dst` and returns the answering pod's name. The reply
/// must come from `dst` itself, as a client's connected socket would require.
pub fn probe_udp(dst: SocketAddr, timeout: Duration) -> Result<String, ProbeError> {
    let deadline = Instant::now() + timeout;
    let any =
        SocketAddr::new(if dst.is_ipv4() { Ipv4Addr::UNSPECIFIED.into() } else { Ipv6Addr::UNSPECIFIED.into() }, 0);
    // Unconnected on purpose: a connected socket would silently discard a
    // reply from the wrong address, and we want to report it.
    let s = UdpSocket::bind(any).map_err(io_err("bind udp probe socket"))?;
    let request = request_line();
    s.send_to(format!("{request}\n").as_bytes(), dst).map_err(|e| classify(dst, "send to", timeout, e))?;
    let mut buf = [0u8; MAX_LINE];
    loop {
        let left = remaining(deadline)
            .ok_or_else(|| ProbeError::Timeout { what: format!("reply from {dst}"), after: timeout })?;
        s.set_read_timeout(Some(left)).map_err(io_err("set read timeout"))?;
        let (n, from) = match s.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(classify(dst, "reply from", timeout, e)),
        };
        let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
        // Datagrams that do not carry our request line are strays: ignored until the deadline.
        if !reply.starts_with(&request) {
            continue;
        }
        if from != dst {
            return Err(ProbeError::WrongSource { from, expected: dst });
        }
        return pod_from_reply(&request, &reply).ok_or(ProbeError::BadReply { dst, reply });
    }
}

/// One ICMP echo to `dst` with `ping -c 1 -W <s>`, run in the caller's
/// namespace (spawn it from a thread inside the source namespace).
pub fn probe_icmp(dst: IpAddr, timeout: Duration) -> Result<(), ProbeError> {
    // ping's -W takes whole seconds (fractions only in newer iputils); round up.
    let secs = timeout.as_millis().div_ceil(1000).max(1).to_string();
    let out = Command::new("ping")
        .args(["-n", "-q", "-c", "1", "-W", &secs, &dst.to_string()])
        .env("LC_ALL", "C")
        .output()
        .map_err(io_err("run ping"))?;
    if out.status.success() {
        return Ok(());
    }
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let detail = text
        .lines()
        .find(|l| l.contains("packets transmitted") || l.contains("ping:"))
        .unwrap_or("no reply")
        .trim()
        .to_string();
    Err(ProbeError::NoEcho { dst, detail })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_names_the_pod() {
        let req = "knit-probe 1-2";
        let reply = reply_for(req, "overlay1");
        assert_eq!(reply, "knit-probe 1-2 overlay1\n");
        assert_eq!(pod_from_reply(req, &reply).as_deref(), Some("overlay1"));
        assert_eq!(pod_from_reply("knit-probe 1-3", &reply), None);
        assert_eq!(pod_from_reply(req, "knit-probe 1-2\n"), None);
    }

    #[test]
    fn request_lines_are_unique() {
        assert_ne!(request_line(), request_line());
    }
}
