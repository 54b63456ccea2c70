//! Network namespaces: run code in another one, and open netlink sockets inside it.
//!
//! `setns(CLONE_NEWNET)` changes the namespace of the calling *thread* only, so it never runs on
//! a tokio worker (the next task scheduled there would find itself in a pod's namespace). Code
//! that must run in another namespace runs on a short-lived thread of its own, which enters the
//! namespace and ends with it ([`run_in`]), or, on the ADD path, on the one long-lived
//! [`worker`] thread, which runs nothing else and goes back to the agent's namespace after
//! every job. A netlink socket keeps the namespace it was opened in, so [`handle_in`] opens one
//! there and hands it back to async code in the agent's namespace.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};

use crate::datapath::batch::Batch;

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
                enter(ns)?;
                Ok(f())
            })
            .join()
            .map_err(|_| panicked())?
    })
}

/// Moves the calling thread into the network namespace `ns`. Only for threads of our own that
/// end afterwards.
fn enter(ns: BorrowedFd<'_>) -> io::Result<()> {
    move_into_link_name_space(ns, Some(LinkNameSpaceType::Network))
        .map_err(|e| io::Error::other(format!("setns into the network namespace: {e}")))
}

fn panicked() -> io::Error {
    io::Error::other("a thread working in another network namespace panicked")
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

/// Sockets in one network namespace (the node's, or a pod's for async code in the agent's).
/// The route-netlink connection is an rtnetlink [`Handle`](rtnetlink::Handle), or for a pod's
/// namespace a [`Batch`], which sends the pod's settings in one datagram.
pub struct Sockets<N = rtnetlink::Handle> {
    /// Route netlink.
    pub netlink: N,
    /// A datagram socket for the namespace's interface ioctls ([`index_of`]).
    pub device: OwnedFd,
}

/// A [`Batch`] connection and a [`Sockets::device`] socket in the namespace `ns`, opened by
/// the [`worker`] thread; the calling task does not block on it, so it can have other work done
/// meanwhile (the pod's veth is created while its namespace's sockets are being opened). Must
/// be polled within a tokio runtime.
pub async fn sockets_in_background(ns: BorrowedFd<'_>) -> io::Result<Sockets<Batch>> {
    let runtime = tokio::runtime::Handle::current();
    let (connection, netlink, device) = worker::run_in(ns, move || {
        let device = device_socket()?;
        // The socket registers with the runtime's reactor when it is created.
        let _entered = runtime.enter();
        Batch::open().map(|(batch, connection)| (connection, batch, device))
    })
    .await?;
    tokio::spawn(connection);
    Ok(Sockets { netlink, device })
}

/// One long-lived thread that runs short jobs in other network namespaces, for the ADD path:
/// starting a thread per job cost about as much as the kernel's veth creation it runs beside.
///
/// The thread enters a job's namespace, runs the job, and goes back to the namespace it
/// started in before it takes the next one, so it never keeps a pod's namespace alive. Only
/// these jobs ever run on it. If it cannot go back, or a job panics, it ends, and the next job
/// starts a fresh one.
pub mod worker {
    use std::io;
    use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
    use std::sync::mpsc::{self, SendError};
    use std::sync::{Mutex, PoisonError};

    use super::{current, enter, panicked};

    /// A job: runs in the thread, is given the thread's home namespace to go back to, and
    /// says whether the thread got back there.
    type Job = Box<dyn FnOnce(BorrowedFd<'_>) -> io::Result<()> + Send>;

    static WORKER: Mutex<Option<mpsc::Sender<Job>>> = Mutex::new(None);

    /// Runs `f` on the worker thread inside the namespace `ns` and returns its result.
    pub async fn run_in<T, F>(ns: BorrowedFd<'_>, f: F) -> io::Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> io::Result<T> + Send + 'static,
    {
        let ns: OwnedFd = ns.try_clone_to_owned()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        submit(Box::new(move |home| {
            let result = enter(ns.as_fd()).and_then(|()| f());
            let back = enter(home);
            // The receiver is gone only if the caller gave up; what `f` made is then dropped.
            let _ = tx.send(result);
            back
        }))?;
        rx.await.map_err(|_| panicked())?
    }

    /// Hands `job` to the worker, starting one if there is none (or it ended).
    fn submit(job: Job) -> io::Result<()> {
        let mut worker = WORKER.lock().unwrap_or_else(PoisonError::into_inner);
        let job = match worker.as_ref() {
            Some(tx) => match tx.send(job) {
                Ok(()) => return Ok(()),
                // The thread ended; the job comes back.
                Err(SendError(job)) => job,
            },
            None => job,
        };
        let tx = start()?;
        tx.send(job).map_err(|_| panicked())?;
        *worker = Some(tx);
        Ok(())
    }

    /// Starts the thread. Its home is the namespace of the calling thread (the agent's own).
    fn start() -> io::Result<mpsc::Sender<Job>> {
        let home = current()?;
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("ferrite-netns".into())
            .spawn(move || {
                for job in rx {
                    if let Err(e) = job(home.as_fd()) {
                        tracing::error!(
                            "the namespace worker cannot return to the agent's namespace ({e}); \
                             it ends and the next job starts a new one"
                        );
                        return;
                    }
                }
            })?;
        Ok(tx)
    }
}

/// [`Sockets`] in the agent's own namespace. Must be called from within a tokio runtime.
pub fn sockets() -> io::Result<Sockets> {
    Ok(Sockets {
        netlink: handle()?,
        device: device_socket()?,
    })
}

/// [`Sockets`] in the namespace `ns` (opened on a short-lived thread, like [`handle_in`]).
/// Must be called from within a tokio runtime.
pub fn sockets_in(ns: BorrowedFd<'_>) -> io::Result<Sockets> {
    let device = run_in(ns, device_socket)??;
    Ok(Sockets {
        netlink: handle_in(ns)?,
        device,
    })
}

/// A datagram socket in the calling thread's namespace, for [`index_of`].
pub fn device_socket() -> io::Result<OwnedFd> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType, socket_with};
    Ok(socket_with(
        AddressFamily::INET,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// The index of the interface `name` in the namespace of `socket` (`SIOCGIFINDEX`: one system
/// call, no netlink round trip); `None` if there is no such interface.
pub fn index_of(socket: BorrowedFd<'_>, name: &str) -> io::Result<Option<u32>> {
    match rustix::net::netdevice::name_to_index(socket, name) {
        Ok(index) => Ok(Some(index)),
        Err(rustix::io::Errno::NODEV) => Ok(None),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// A route-netlink handle in the agent's own namespace.
pub fn handle() -> io::Result<rtnetlink::Handle> {
    let (connection, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(connection);
    Ok(handle)
}
