//! Network namespaces: run code in another one, and open netlink sockets inside it.
//!
//! `setns(CLONE_NEWNET)` changes the namespace of the calling *thread* only, so it never runs on
//! a tokio worker (the next task scheduled there would find itself in a pod's namespace). Code
//! that must run in another namespace runs on a short-lived thread of its own, which enters the
//! namespace and ends with it. A netlink socket keeps the namespace it was opened in, so
//! [`handle_in`] opens one there and hands it back to async code in the agent's namespace.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};

/// Opens the calling thread's own network namespace (`/proc/1/ns/net` is not readable here,
/// and the process's main thread may be somewhere else; the thread's own handle always is).
pub fn current() -> io::Result<OwnedFd> {
    open(Path::new("/proc/thread-self/ns/net"))
}

/// Opens a network namespace by path (`/run/netns/x`, `/proc/<pid>/ns/net`, ...).
pub fn open(path: &Path) -> io::Result<OwnedFd> {
    let file = std::fs::File::open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("open netns {}: {e}", path.display())))?;
    Ok(OwnedFd::from(file))
}

/// Runs `f` on a fresh thread inside the network namespace `ns` and returns its result.
/// The thread ends afterwards, so no other code ever runs in the wrong namespace.
pub fn run_in<T, F>(ns: BorrowedFd<'_>, f: F) -> io::Result<T>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                move_into_link_name_space(ns, Some(LinkNameSpaceType::Network)).map_err(|e| {
                    io::Error::other(format!("setns into the network namespace: {e}"))
                })?;
                Ok(f())
            })
            .join()
            .map_err(|_| {
                io::Error::other("a thread working in another network namespace panicked")
            })?
    })
}

/// A route-netlink handle whose socket lives in the namespace `ns`. The connection is driven
/// by a task on the current tokio runtime and ends when every clone of the handle is dropped.
/// Must be called from within a tokio runtime.
pub fn handle_in(ns: BorrowedFd<'_>) -> io::Result<rtnetlink::Handle> {
    let runtime = tokio::runtime::Handle::current();
    let (connection, handle) = run_in(ns, || {
        // The socket registers with the runtime's reactor when it is created.
        let _entered = runtime.enter();
        rtnetlink::new_connection().map(|(connection, handle, _)| (connection, handle))
    })??;
    tokio::spawn(connection);
    Ok(handle)
}

/// A route-netlink handle in the agent's own namespace.
pub fn handle() -> io::Result<rtnetlink::Handle> {
    let (connection, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(connection);
    Ok(handle)
}
