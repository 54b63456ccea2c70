//! The agent side of the protocol (tokio): read a request and its netns descriptor, write the reply.
//!
//! One request per connection: [`read_request`], act on it, [`write_response`], drop the
//! stream. A request that cannot be read is answered with [`error_response`], so the plugin
//! prints why instead of "connection reset".
//!
//! [`read_request`] reads until it holds a whole JSON value or the plugin shuts its write side;
//! a peer that does neither would keep it waiting, so the agent should bound it
//! (`tokio::time::timeout`). The received
//! descriptor is whatever the plugin opened as `CNI_NETNS`: the agent's `setns` checks that it
//! is a network namespace.

use std::io::{self, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;

use rustix::io::Errno;
use rustix::net::{
    self, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendFlags, Shutdown,
};
use tokio::io::Interest;
use tokio::net::UnixStream;

use crate::proto::{MAX_REQUEST_BYTES, Request, Response};
use crate::spec::{CniError, ErrorCode};

/// Descriptors one `recvmsg` makes room for. The plugin sends at most one; room for more lets
/// the agent see (and close) a misbehaving peer's extras instead of the kernel truncating.
const FD_ROOM: usize = 4;

/// Why a request could not be read (or a reply not written).
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Reading from the connection failed.
    #[error("cannot read the plugin's request: {0}")]
    Read(#[source] io::Error),
    /// The peer closed the connection without sending anything.
    #[error("the plugin closed the connection without sending a request")]
    Empty,
    /// The request exceeds [`MAX_REQUEST_BYTES`].
    #[error("the plugin's request is larger than {MAX_REQUEST_BYTES} bytes")]
    TooLarge,
    /// The request is not a JSON [`Request`]; the serde message names the field and position.
    #[error(
        "the plugin's request is not a valid Ferrite request ({0}); the plugin in the CNI bin \
         directory may be from another Ferrite version: restart the ferrite-agent pod to reinstall it"
    )]
    Malformed(#[source] serde_json::Error),
    /// `has_netns` is true but no descriptor came with the request.
    #[error("the request says a network namespace is attached, but no descriptor arrived")]
    MissingNetns,
    /// A descriptor came with a request whose `has_netns` is false (it has been closed).
    #[error(
        "a descriptor arrived with a request that says no network namespace is attached; it was closed"
    )]
    UnexpectedNetns,
    /// More than one descriptor arrived (all have been closed).
    #[error(
        "{0} descriptors arrived with the request, at most one (the netns) is allowed; all were closed"
    )]
    TooManyDescriptors(usize),
    /// The kernel dropped descriptors that did not fit the control buffer.
    #[error("the request carried more control data than a netns descriptor; it was discarded")]
    ControlTruncated,
    /// The reply could not be encoded.
    #[error("cannot encode the reply: {0}")]
    Encode(#[source] serde_json::Error),
    /// Writing the reply failed (the plugin may have timed out and gone).
    #[error("cannot write the reply to the plugin: {0}")]
    Write(#[source] io::Error),
}

impl ServerError {
    /// The CNI error code the plugin reports for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Empty | Self::TooLarge | Self::Malformed(_) => ErrorCode::Decode,
            Self::MissingNetns
            | Self::UnexpectedNetns
            | Self::TooManyDescriptors(_)
            | Self::ControlTruncated => ErrorCode::InvalidEnvironment,
            Self::Read(_) | Self::Encode(_) | Self::Write(_) => ErrorCode::Io,
        }
    }

    /// The CNI error the plugin prints for this failure.
    pub fn to_cni_error(&self) -> CniError {
        CniError::new(self.code(), self.to_string())
    }
}

/// The reply to a request that could not be read.
pub fn error_response(err: &ServerError) -> Response {
    Response::Error(err.to_cni_error())
}

/// Reads one request, with the pod's network namespace when the request says one is attached.
///
/// Reads until the bytes are a whole JSON value or the plugin shuts its write side. Unexpected
/// descriptors are closed.
pub async fn read_request(stream: &UnixStream) -> Result<(Request, Option<OwnedFd>), ServerError> {
    let (bytes, fds) = read_whole_value(stream).await?;
    decode_request(&bytes, fds)
}

/// Whether `bytes` hold a whole JSON object (or something that can never become one), so
/// reading can stop before the plugin's EOF. Only tried when the last non-blank byte is `}`,
/// the only way an object ends: a multi-megabyte GC request is not re-parsed per chunk.
fn holds_whole_value(bytes: &[u8]) -> bool {
    let ends_an_object = bytes
        .iter()
        .rev()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'}');
    ends_an_object
        && match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
            Ok(_) => true,
            Err(e) => !e.is_eof(),
        }
}

/// The request, checked against the descriptors that came with it.
fn decode_request(
    bytes: &[u8],
    mut fds: Vec<OwnedFd>,
) -> Result<(Request, Option<OwnedFd>), ServerError> {
    if bytes.is_empty() {
        return Err(ServerError::Empty);
    }
    let request: Request = serde_json::from_slice(bytes).map_err(ServerError::Malformed)?;
    if fds.len() > 1 {
        return Err(ServerError::TooManyDescriptors(fds.len()));
    }
    let netns = fds.pop();
    match (request.has_netns, netns) {
        (true, None) => Err(ServerError::MissingNetns),
        (false, Some(_)) => Err(ServerError::UnexpectedNetns),
        (_, netns) => Ok((request, netns)),
    }
}

/// What the peer sends until it is a whole JSON value ([`holds_whole_value`]) or until EOF,
/// and every descriptor that came with it. Not waiting for the EOF the plugin sends after its
/// request saves the agent a wake-up per request.
async fn read_whole_value(stream: &UnixStream) -> Result<(Vec<u8>, Vec<OwnedFd>), ServerError> {
    let mut bytes = Vec::new();
    let mut fds = Vec::new();
    let mut chunk = vec![0_u8; 64 * 1024];
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(FD_ROOM))];
    loop {
        let (n, truncated) = stream
            .async_io(Interest::READABLE, || {
                let mut control = RecvAncillaryBuffer::new(&mut space);
                let got = net::recvmsg(
                    stream,
                    &mut [IoSliceMut::new(&mut chunk)],
                    &mut control,
                    RecvFlags::CMSG_CLOEXEC,
                )?;
                for message in control.drain() {
                    if let RecvAncillaryMessage::ScmRights(received) = message {
                        fds.extend(received);
                    }
                }
                Ok((got.bytes, got.flags.contains(ReturnFlags::CTRUNC)))
            })
            .await
            .map_err(ServerError::Read)?;
        if truncated {
            return Err(ServerError::ControlTruncated);
        }
        if n == 0 {
            return Ok((bytes, fds));
        }
        if bytes.len() + n > MAX_REQUEST_BYTES {
            return Err(ServerError::TooLarge);
        }
        bytes.extend_from_slice(&chunk[..n]);
        if holds_whole_value(&bytes) {
            return Ok((bytes, fds));
        }
    }
}

/// Writes the reply and shuts the write side, so the plugin sees the end of it.
pub async fn write_response(stream: &UnixStream, response: &Response) -> Result<(), ServerError> {
    let bytes = serde_json::to_vec(response).map_err(ServerError::Encode)?;
    let mut written = 0;
    while written < bytes.len() {
        let rest = &bytes[written..];
        // MSG_NOSIGNAL: a plugin that gave up must not kill the agent with SIGPIPE.
        written += stream
            .async_io(Interest::WRITABLE, || {
                match net::send(stream, rest, SendFlags::NOSIGNAL) {
                    Ok(0) => Err(Errno::PIPE.into()),
                    Ok(n) => Ok(n),
                    Err(e) => Err(e.into()),
                }
            })
            .await
            .map_err(ServerError::Write)?;
    }
    net::shutdown(stream, Shutdown::Write).map_err(|e| ServerError::Write(e.into()))
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsFd, BorrowedFd};
    use std::path::{Path, PathBuf};
    use std::thread;
    use std::time::Duration;

    use rustix::fs::fstat;
    use tokio::net::UnixListener;

    use super::*;
    use crate::client::tests::{del_request, gc_request};
    use crate::client::{self, Deadline};
    use crate::spec::Command;

    fn same_file(a: BorrowedFd<'_>, b: BorrowedFd<'_>) -> bool {
        let (a, b) = (fstat(a).unwrap(), fstat(b).unwrap());
        (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
    }

    /// A listener in a fresh directory (kept alive by the returned guard).
    fn listener() -> (tempfile::TempDir, PathBuf, UnixListener) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        (dir, path, listener)
    }

    /// Connects and sends raw bytes with raw descriptors, as a misbehaving plugin would.
    fn send_raw(path: &Path, bytes: Vec<u8>, fds: Vec<OwnedFd>) -> thread::JoinHandle<Vec<u8>> {
        let path = path.to_owned();
        thread::spawn(move || {
            use std::io::Read;
            let stream = std::os::unix::net::UnixStream::connect(&path).unwrap();
            let sock = OwnedFd::from(stream);
            let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
            let deadline = Deadline::after(Duration::from_secs(10));
            client::send_all(&sock, &bytes, &borrowed, &deadline).unwrap();
            net::shutdown(&sock, Shutdown::Write).unwrap();
            let mut reply = Vec::new();
            std::os::unix::net::UnixStream::from(sock)
                .read_to_end(&mut reply)
                .unwrap();
            reply
        })
    }

    #[tokio::test]
    async fn the_netns_descriptor_arrives_with_the_request_and_the_reply_goes_back() {
        let (_dir, path, listener) = listener();
        let netns = tempfile::tempfile().unwrap();
        let netns_copy = netns.try_clone().unwrap();
        let mut request = del_request();
        request.command = Command::Add;
        request.has_netns = true;
        request.netns_path = "/run/netns/test".into();
        let sent = request.clone();
        let plugin = thread::spawn(move || {
            client::call(
                &path,
                &sent,
                Some(netns_copy.as_fd()),
                Duration::from_secs(10),
            )
        });
        let (stream, _) = listener.accept().await.unwrap();
        let (got, fd) = read_request(&stream).await.unwrap();
        assert_eq!(got, request);
        let fd = fd.expect("the netns descriptor");
        assert!(same_file(fd.as_fd(), netns.as_fd()));
        write_response(&stream, &Response::Done).await.unwrap();
        assert_eq!(plugin.join().unwrap().unwrap(), Response::Done);
    }

    #[test]
    fn a_whole_value_is_recognised_without_waiting_for_eof() {
        let whole = br#"{"command":"DEL","containerId":"a}b","nested":{"x":[1,2]}}"#;
        assert!(holds_whole_value(whole));
        assert!(holds_whole_value(b"{\"a\":1}\n  "), "trailing blanks");
        // Cut anywhere before the end, it is not whole (an inner `}` included).
        for cut in 1..whole.len() {
            assert!(!holds_whole_value(&whole[..cut]), "{cut}");
        }
        assert!(!holds_whole_value(b""));
        // Something that can never become a request stops the reading at once, to be refused.
        assert!(holds_whole_value(b"{\"a\":1}}"));
    }

    #[tokio::test]
    async fn a_request_is_read_before_the_plugin_shuts_its_side() {
        let (_dir, path, listener) = listener();
        let request = del_request();
        let bytes = serde_json::to_vec(&request).unwrap();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let plugin = thread::spawn(move || {
            let stream = std::os::unix::net::UnixStream::connect(&path).unwrap();
            let sock = OwnedFd::from(stream);
            let deadline = Deadline::after(Duration::from_secs(10));
            client::send_all(&sock, &bytes, &[], &deadline).unwrap();
            // No shutdown until the agent has read the request.
            done_rx.recv().unwrap();
        });
        let (stream, _) = listener.accept().await.unwrap();
        let (got, fd) = tokio::time::timeout(Duration::from_secs(10), read_request(&stream))
            .await
            .expect("read without the plugin's EOF")
            .unwrap();
        assert!(fd.is_none());
        assert_eq!(got, request);
        done_tx.send(()).unwrap();
        plugin.join().unwrap();
    }

    #[tokio::test]
    async fn a_large_gc_request_arrives_whole() {
        let (_dir, path, listener) = listener();
        let request = gc_request(35_000);
        assert!(serde_json::to_vec(&request).unwrap().len() > 3 << 20);
        let sent = request.clone();
        let plugin =
            thread::spawn(move || client::call(&path, &sent, None, Duration::from_secs(20)));
        let (stream, _) = listener.accept().await.unwrap();
        let (got, fd) = read_request(&stream).await.unwrap();
        assert!(fd.is_none());
        assert_eq!(got, request);
        write_response(&stream, &Response::Done).await.unwrap();
        assert_eq!(plugin.join().unwrap().unwrap(), Response::Done);
    }

    #[tokio::test]
    async fn a_request_over_the_limit_is_refused_and_told_why() {
        let (_dir, path, listener) = listener();
        let plugin = send_raw(&path, vec![b' '; MAX_REQUEST_BYTES + 1], vec![]);
        let (stream, _) = listener.accept().await.unwrap();
        let err = read_request(&stream).await.unwrap_err();
        assert!(matches!(err, ServerError::TooLarge), "{err:?}");
        write_response(&stream, &error_response(&err))
            .await
            .unwrap();
        drop(stream);
        let reply: Response = serde_json::from_slice(&plugin.join().unwrap()).unwrap();
        let Response::Error(e) = reply else {
            panic!("{reply:?}")
        };
        assert_eq!(e.code, 6);
        assert!(e.msg.contains("larger than"), "{}", e.msg);
    }

    #[tokio::test]
    async fn malformed_json_is_a_decoding_failure_that_names_the_problem() {
        let (_dir, path, listener) = listener();
        let plugin = send_raw(
            &path,
            br#"{"command":"ADD","cniVersion":"1.0.0"}"#.to_vec(),
            vec![],
        );
        let (stream, _) = listener.accept().await.unwrap();
        let err = read_request(&stream).await.unwrap_err();
        drop(stream);
        plugin.join().unwrap();
        assert!(matches!(err, ServerError::Malformed(_)), "{err:?}");
        let cni = err.to_cni_error();
        assert_eq!(cni.code, 6);
        assert!(cni.msg.contains("missing field `network`"), "{}", cni.msg);
    }

    #[tokio::test]
    async fn has_netns_without_a_descriptor_is_refused() {
        let (_dir, path, listener) = listener();
        let mut request = del_request();
        request.has_netns = true;
        let plugin = send_raw(&path, serde_json::to_vec(&request).unwrap(), vec![]);
        let (stream, _) = listener.accept().await.unwrap();
        let err = read_request(&stream).await.unwrap_err();
        drop(stream);
        plugin.join().unwrap();
        assert!(matches!(err, ServerError::MissingNetns), "{err:?}");
        assert_eq!(err.to_cni_error().code, 4);
    }

    /// Whether `fd` is still open in this process: the agent must close what it refuses.
    fn open_fds_to(target: &std::fs::File) -> usize {
        let want = fstat(target.as_fd()).unwrap();
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| e.ok())
            .filter_map(|e| std::fs::metadata(e.path()).ok())
            .filter(|m| {
                use std::os::unix::fs::MetadataExt;
                m.dev() == want.st_dev && m.ino() == want.st_ino
            })
            .count()
    }

    #[tokio::test]
    async fn unexpected_descriptors_are_refused_and_closed() {
        // A named file, so its descriptors can be told apart from every other in the process.
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::File::create(dir.path().join("ns")).unwrap();
        for (count, expect_unexpected) in [(1, true), (3, false)] {
            let (_dir, path, listener) = listener();
            let fds: Vec<OwnedFd> = (0..count)
                .map(|_| OwnedFd::from(file.try_clone().unwrap()))
                .collect();
            let plugin = send_raw(&path, serde_json::to_vec(&del_request()).unwrap(), fds);
            let (stream, _) = listener.accept().await.unwrap();
            let err = read_request(&stream).await.unwrap_err();
            drop(stream);
            plugin.join().unwrap();
            if expect_unexpected {
                assert!(matches!(err, ServerError::UnexpectedNetns), "{err:?}");
            } else {
                assert!(matches!(err, ServerError::TooManyDescriptors(3)), "{err:?}");
            }
            assert_eq!(err.code(), ErrorCode::InvalidEnvironment);
            // Only `file` itself is left: the sender's copies went with its thread, the
            // received ones were closed by the refusal.
            assert_eq!(open_fds_to(&file), 1);
        }
    }

    #[tokio::test]
    async fn a_peer_that_sends_nothing_is_refused() {
        let (_dir, path, listener) = listener();
        let plugin = send_raw(&path, Vec::new(), vec![]);
        let (stream, _) = listener.accept().await.unwrap();
        let err = read_request(&stream).await.unwrap_err();
        drop(stream);
        plugin.join().unwrap();
        assert!(matches!(err, ServerError::Empty), "{err:?}");
        assert_eq!(err.to_cni_error().code, 6);
    }

    #[test]
    fn error_codes_follow_the_spec() {
        assert_eq!(ServerError::TooLarge.code().code(), 6);
        assert_eq!(ServerError::MissingNetns.code().code(), 4);
        assert_eq!(ServerError::Read(io::Error::other("x")).code().code(), 5);
        assert!(matches!(
            error_response(&ServerError::Empty),
            Response::Error(CniError { code: 6, .. })
        ));
    }
}
