//! The plugin side of the agent protocol: connect, send the request (and the netns), read the reply.
//!
//! Synchronous on purpose: the plugin is a short-lived process that makes exactly one call, so
//! it needs no runtime. Every blocking step is bounded by one deadline (socket send/receive
//! timeouts, recomputed before each system call), so a hung agent cannot hang the runtime.

use std::fmt;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::net::sockopt::{self, Timeout};
use rustix::net::{
    self, AddressFamily, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, Shutdown,
    SocketAddrUnix, SocketFlags, SocketType,
};

use crate::proto::{MAX_REQUEST_BYTES, Request, Response};

/// Largest reply the plugin reads: a response is one result or one error, a few KiB at most.
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// What the plugin was doing when a call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Connecting to the agent's socket.
    Connecting,
    /// Sending the request.
    Sending,
    /// Waiting for (or reading) the reply.
    WaitingForReply,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Connecting => "connecting",
            Self::Sending => "sending the request",
            Self::WaitingForReply => "waiting for the reply",
        })
    }
}

/// Why a call to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nobody listens on the socket: it does not exist (`ENOENT`) or refuses connections
    /// (`ECONNREFUSED`). The agent is down or restarting; it has seen nothing of the request.
    #[error("the Ferrite agent is not reachable at {}: {source}", socket.display())]
    Unreachable {
        /// The socket the plugin tried.
        socket: PathBuf,
        /// The connect error.
        source: io::Error,
    },
    /// The agent did not finish the exchange before the deadline. It may have acted on the
    /// request.
    #[error(
        "the Ferrite agent at {} did not answer within {timeout:?} (stuck {phase})",
        socket.display()
    )]
    Timeout {
        /// The socket the plugin used.
        socket: PathBuf,
        /// The whole call's time limit.
        timeout: Duration,
        /// Where the call was when time ran out.
        phase: Phase,
    },
    /// The exchange failed for another reason.
    #[error("talking to the Ferrite agent at {} failed while {phase}: {source}", socket.display())]
    Io {
        /// The socket the plugin used.
        socket: PathBuf,
        /// Where the call failed.
        phase: Phase,
        /// The underlying error.
        source: io::Error,
    },
    /// The agent answered with something that is not a [`Response`].
    #[error("the Ferrite agent at {} sent an invalid reply: {reason}", socket.display())]
    BadReply {
        /// The socket the plugin used.
        socket: PathBuf,
        /// What is wrong with the reply.
        reason: String,
    },
    /// The request is larger than the agent accepts ([`MAX_REQUEST_BYTES`]).
    #[error("the request is {size} bytes; the agent accepts at most {MAX_REQUEST_BYTES}")]
    TooLarge {
        /// The encoded request's size.
        size: usize,
    },
    /// The request contradicts itself (a bug in the caller, not in the agent).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

impl ClientError {
    /// Whether the agent is not there at all (as opposed to failing or hanging): the only case
    /// where the request certainly had no effect, so a DEL may be queued for later.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Unreachable { .. })
    }
}

/// Sends `request` to the agent listening on `socket`, with the pod's network namespace
/// attached when given, and returns the agent's reply.
///
/// `request.has_netns` must say whether `netns` is given. The whole exchange (connect, send,
/// reply) must finish within `timeout`.
pub fn call(
    socket: &Path,
    request: &Request,
    netns: Option<BorrowedFd<'_>>,
    timeout: Duration,
) -> Result<Response, ClientError> {
    if request.has_netns != netns.is_some() {
        return Err(ClientError::InvalidRequest(format!(
            "has_netns is {} but a namespace descriptor was {}given",
            request.has_netns,
            if netns.is_some() { "" } else { "not " }
        )));
    }
    let bytes = encode_request(request)?;
    let deadline = Deadline::after(timeout);
    let fail = |phase, fault| classify(socket, timeout, phase, fault);

    let sock = connect(socket, &deadline).map_err(|f| fail(Phase::Connecting, f))?;
    let fds: Vec<BorrowedFd<'_>> = netns.into_iter().collect();
    if let Err(fault) = send_all(&sock, &bytes, &fds, &deadline) {
        // An agent that refuses a request may answer and close without reading all of it:
        // the reply it left says why, which is better than "broken pipe".
        if matches!(fault, Fault::Os(Errno::PIPE | Errno::CONNRESET))
            && let Ok(reply) = read_reply(&sock, &deadline)
            && let Ok(response) = decode_response(&reply)
        {
            return Ok(response);
        }
        return Err(fail(Phase::Sending, fault));
    }
    net::shutdown(&sock, Shutdown::Write).map_err(|e| fail(Phase::Sending, Fault::Os(e)))?;
    let reply = read_reply(&sock, &deadline).map_err(|f| fail(Phase::WaitingForReply, f))?;
    decode_response(&reply).map_err(|reason| ClientError::BadReply {
        socket: socket.to_owned(),
        reason,
    })
}

/// The request as sent, refused when the agent would refuse it.
fn encode_request(request: &Request) -> Result<Vec<u8>, ClientError> {
    let bytes = serde_json::to_vec(request)
        .map_err(|e| ClientError::InvalidRequest(format!("cannot encode the request: {e}")))?;
    if bytes.len() > MAX_REQUEST_BYTES {
        return Err(ClientError::TooLarge { size: bytes.len() });
    }
    Ok(bytes)
}

/// The agent's reply, or what is wrong with it.
fn decode_response(reply: &[u8]) -> Result<Response, String> {
    if reply.is_empty() {
        return Err(
            "the agent closed the connection without answering; check the ferrite-agent log on this node"
                .into(),
        );
    }
    serde_json::from_slice(reply).map_err(|e| {
        format!(
            "{e}; the plugin in the CNI bin directory and the agent may be different versions \
             (the agent installs its own plugin when it starts)"
        )
    })
}

/// Why one step of the exchange stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// A system call failed.
    Os(Errno),
    /// The deadline passed between system calls.
    Deadline,
    /// The reply exceeded [`MAX_RESPONSE_BYTES`].
    ReplyTooLarge,
}

impl From<Errno> for Fault {
    fn from(e: Errno) -> Self {
        Self::Os(e)
    }
}

/// Turns a failed step into the error the caller acts on.
fn classify(socket: &Path, timeout: Duration, phase: Phase, fault: Fault) -> ClientError {
    let socket = socket.to_owned();
    match fault {
        Fault::Os(e @ (Errno::NOENT | Errno::CONNREFUSED)) if phase == Phase::Connecting => {
            ClientError::Unreachable {
                socket,
                source: e.into(),
            }
        }
        // Socket timeouts surface as EAGAIN (also a full listen backlog on connect).
        Fault::Os(Errno::AGAIN) | Fault::Deadline => ClientError::Timeout {
            socket,
            timeout,
            phase,
        },
        Fault::ReplyTooLarge => ClientError::BadReply {
            socket,
            reason: format!("the reply is larger than {MAX_RESPONSE_BYTES} bytes"),
        },
        Fault::Os(e) => ClientError::Io {
            socket,
            phase,
            source: e.into(),
        },
    }
}

/// When the whole call must be over.
pub(crate) struct Deadline(Option<Instant>);

impl Deadline {
    pub(crate) fn after(timeout: Duration) -> Self {
        // None: so far in the future that `Instant` cannot represent it.
        Self(Instant::now().checked_add(timeout))
    }

    /// Time left, never zero (a zero socket timeout would mean "wait forever").
    fn remaining(&self) -> Result<Duration, Fault> {
        match self.0 {
            None => Ok(Duration::from_secs(u64::from(u32::MAX))),
            Some(at) => at
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
                .ok_or(Fault::Deadline),
        }
    }
}

/// A connected stream socket, with close-on-exec.
fn connect(socket: &Path, deadline: &Deadline) -> Result<OwnedFd, Fault> {
    let addr = SocketAddrUnix::new(socket)?;
    let sock = net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    // Linux bounds a unix-socket connect (a full listen backlog) by the send timeout.
    sockopt::set_socket_timeout(&sock, Timeout::Send, Some(deadline.remaining()?))?;
    net::connect(&sock, &addr)?;
    Ok(sock)
}

/// Writes all of `bytes`, with `fds` attached to the first chunk. `sendmsg` may write part of
/// a large request; the descriptors travel with whatever the first successful call wrote.
pub(crate) fn send_all(
    sock: &OwnedFd,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
    deadline: &Deadline,
) -> Result<(), Fault> {
    let mut sent = 0;
    while sent < bytes.len() {
        sockopt::set_socket_timeout(sock, Timeout::Send, Some(deadline.remaining()?))?;
        let rest = &bytes[sent..];
        let written = if sent == 0 && !fds.is_empty() {
            let message = SendAncillaryMessage::ScmRights(fds);
            let mut space = vec![MaybeUninit::uninit(); message.size()];
            let mut control = SendAncillaryBuffer::new(&mut space);
            if !control.push(message) {
                return Err(Fault::Os(Errno::NOBUFS));
            }
            net::sendmsg(
                sock,
                &[IoSlice::new(rest)],
                &mut control,
                SendFlags::NOSIGNAL,
            )
        } else {
            net::send(sock, rest, SendFlags::NOSIGNAL)
        };
        match written {
            Ok(0) => return Err(Fault::Os(Errno::PIPE)),
            Ok(n) => sent += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Reads the reply to EOF.
fn read_reply(sock: &OwnedFd, deadline: &Deadline) -> Result<Vec<u8>, Fault> {
    let mut reply = Vec::new();
    let mut chunk = vec![0_u8; 64 * 1024];
    loop {
        sockopt::set_socket_timeout(sock, Timeout::Recv, Some(deadline.remaining()?))?;
        match net::recv(sock, &mut chunk[..], RecvFlags::empty()) {
            Ok((0, _)) => return Ok(reply),
            Ok((n, _)) => {
                if reply.len() + n > MAX_RESPONSE_BYTES {
                    return Err(Fault::ReplyTooLarge);
                }
                reply.extend_from_slice(&chunk[..n]);
            }
            Err(Errno::INTR) => {}
            // An agent that closes without reading all of a request resets the connection
            // after its reply: the reply is complete.
            Err(Errno::CONNRESET) if !reply.is_empty() => return Ok(reply),
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixListener;
    use std::thread;

    use super::*;
    use crate::spec::{Attachment, CniError, Command, ErrorCode, PodRef};

    /// A DEL request without a namespace.
    pub(crate) fn del_request() -> Request {
        Request {
            command: Command::Del,
            container_id: "c1".into(),
            ifname: "eth0".into(),
            netns_path: String::new(),
            has_netns: false,
            pod: PodRef::default(),
            network: "ferrite".into(),
            cni_version: "1.0.0".into(),
            prev_result: None,
            valid_attachments: None,
            replayed: false,
        }
    }

    /// A GC request listing `n` attachments.
    pub(crate) fn gc_request(n: usize) -> Request {
        Request {
            command: Command::Gc,
            container_id: String::new(),
            ifname: String::new(),
            valid_attachments: Some(
                (0..n)
                    .map(|i| Attachment {
                        container_id: format!("{i:064x}"),
                        ifname: "eth0".into(),
                    })
                    .collect(),
            ),
            ..del_request()
        }
    }

    /// Reads everything from `stream` (std, blocking) to EOF.
    fn read_all(stream: &std::os::unix::net::UnixStream) -> Vec<u8> {
        use std::io::Read;
        let mut buf = Vec::new();
        (&*stream).read_to_end(&mut buf).unwrap();
        buf
    }

    fn tempdir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn a_missing_socket_is_unreachable() {
        let dir = tempdir();
        let err = call(
            &dir.path().join("nope.sock"),
            &del_request(),
            None,
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(err.is_unreachable(), "{err:?}");
        assert!(err.to_string().contains("nope.sock"), "{err}");
    }

    #[test]
    fn a_socket_nobody_listens_on_is_unreachable() {
        let dir = tempdir();
        let path = dir.path().join("stale.sock");
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists(), "the stale socket file stays behind");
        let err = call(&path, &del_request(), None, Duration::from_secs(1)).unwrap_err();
        assert!(err.is_unreachable(), "{err:?}");
    }

    #[test]
    fn an_agent_that_never_answers_times_out_while_waiting_for_the_reply() {
        let dir = tempdir();
        let path = dir.path().join("hung.sock");
        // Listening but never accepting: the kernel completes the connect from the backlog.
        let _listener = UnixListener::bind(&path).unwrap();
        let started = Instant::now();
        let err = call(&path, &del_request(), None, Duration::from_millis(300)).unwrap_err();
        let took = started.elapsed();
        assert!(
            matches!(
                err,
                ClientError::Timeout {
                    phase: Phase::WaitingForReply,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(!err.is_unreachable());
        assert!(took >= Duration::from_millis(300), "{took:?}");
        assert!(took < Duration::from_secs(3), "{took:?}");
        assert!(err.to_string().contains("300ms"), "{err}");
    }

    #[test]
    fn the_request_arrives_whole_and_the_reply_is_returned() {
        let dir = tempdir();
        let path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let agent = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let got: Request = serde_json::from_slice(&read_all(&stream)).unwrap();
            use std::io::Write;
            (&stream)
                .write_all(&serde_json::to_vec(&Response::Done).unwrap())
                .unwrap();
            got
        });
        let request = gc_request(20_000);
        let reply = call(&path, &request, None, Duration::from_secs(10)).unwrap();
        assert_eq!(reply, Response::Done);
        assert_eq!(agent.join().unwrap(), request);
    }

    #[test]
    fn garbage_and_empty_replies_are_bad_replies() {
        for (reply, expect) in [(&b"{\"added\":"[..], "EOF"), (b"", "without answering")] {
            let dir = tempdir();
            let path = dir.path().join("agent.sock");
            let listener = UnixListener::bind(&path).unwrap();
            let agent = thread::spawn(move || {
                let (stream, _) = listener.accept().unwrap();
                read_all(&stream);
                use std::io::Write;
                (&stream).write_all(reply).unwrap();
            });
            let err = call(&path, &del_request(), None, Duration::from_secs(5)).unwrap_err();
            agent.join().unwrap();
            assert!(matches!(err, ClientError::BadReply { .. }), "{err:?}");
            assert!(err.to_string().contains(expect), "{err}");
        }
    }

    #[test]
    fn an_agent_that_refuses_without_reading_still_gets_its_reply_through() {
        let dir = tempdir();
        let path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let refusal = Response::Error(CniError::new(ErrorCode::Decode, "too large"));
        let sent = refusal.clone();
        let agent = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            use std::io::Write;
            (&stream)
                .write_all(&serde_json::to_vec(&sent).unwrap())
                .unwrap();
            // Closing with the request unread: the plugin's send fails with EPIPE.
        });
        // ~3 MiB: more than the socket buffers hold, so the send is still going on when the
        // agent closes.
        let reply = call(&path, &gc_request(30_000), None, Duration::from_secs(10)).unwrap();
        agent.join().unwrap();
        assert_eq!(reply, refusal);
    }

    #[test]
    fn requests_over_the_limit_are_refused_before_connecting() {
        let err = call(
            Path::new("/nonexistent/agent.sock"),
            &gc_request(80_000),
            None,
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(matches!(err, ClientError::TooLarge { size } if size > MAX_REQUEST_BYTES));
    }

    #[test]
    fn has_netns_must_match_the_descriptor() {
        let file = tempfile::tempfile().unwrap();
        let path = Path::new("/nonexistent/agent.sock");
        let mut with = del_request();
        with.has_netns = true;
        for (request, fd) in [(&with, None), (&del_request(), Some(file.as_fd()))] {
            let err = call(path, request, fd, Duration::from_secs(1)).unwrap_err();
            assert!(matches!(err, ClientError::InvalidRequest(_)), "{err:?}");
        }
    }

    #[test]
    fn classify_maps_errnos_to_what_the_plugin_acts_on() {
        let p = Path::new("/run/x.sock");
        let t = Duration::from_secs(1);
        assert!(classify(p, t, Phase::Connecting, Fault::Os(Errno::NOENT)).is_unreachable());
        assert!(classify(p, t, Phase::Connecting, Fault::Os(Errno::CONNREFUSED)).is_unreachable());
        // Only a failed connect means the agent saw nothing.
        assert!(!classify(p, t, Phase::Sending, Fault::Os(Errno::CONNREFUSED)).is_unreachable());
        assert!(matches!(
            classify(p, t, Phase::Connecting, Fault::Os(Errno::AGAIN)),
            ClientError::Timeout {
                phase: Phase::Connecting,
                ..
            }
        ));
        assert!(matches!(
            classify(p, t, Phase::Sending, Fault::Deadline),
            ClientError::Timeout { .. }
        ));
        assert!(matches!(
            classify(p, t, Phase::Connecting, Fault::Os(Errno::ACCESS)),
            ClientError::Io { .. }
        ));
        assert!(matches!(
            classify(p, t, Phase::WaitingForReply, Fault::ReplyTooLarge),
            ClientError::BadReply { .. }
        ));
    }

    #[test]
    fn a_spent_deadline_has_no_time_left_and_a_huge_one_does_not_overflow() {
        assert_eq!(
            Deadline::after(Duration::ZERO).remaining(),
            Err(Fault::Deadline)
        );
        assert!(Deadline::after(Duration::MAX).remaining().is_ok());
    }
}
