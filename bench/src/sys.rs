//! The machinery the benchmarks stand on: commands, long-running processes, network
//! namespaces and a scratch directory — each owned by a guard that removes it on drop, so a
//! run that fails or is interrupted (Ctrl-C, SIGTERM) leaves nothing behind.
//!
//! Everything the benchmarks create lives in network namespaces named `feb-<pid>-...`; the
//! host's own namespace is never changed (links are created with `ip -n <ns>`, so they are
//! born inside a benchmark namespace).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Set once SIGINT, SIGTERM or SIGHUP arrived: the run stops at the next check and unwinds.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Catches SIGINT, SIGTERM and SIGHUP on a thread of its own: the first sets [`INTERRUPTED`]
/// (the run stops at its next check and the guards clean up), a second one ends the process
/// at once, for a clean-up that hangs.
pub fn catch_interrupts() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the signal-handling runtime")?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            runtime.block_on(async move {
                let streams = (|| {
                    Ok::<_, std::io::Error>((
                        signal(SignalKind::interrupt())?,
                        signal(SignalKind::terminate())?,
                        signal(SignalKind::hangup())?,
                    ))
                })();
                let (mut int, mut term, mut hup) = match streams {
                    Ok(s) => {
                        let _ = ready_tx.send(Ok(()));
                        s
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let mut first: Option<Instant> = None;
                loop {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                        _ = hup.recv() => {}
                    }
                    INTERRUPTED.store(true, Ordering::SeqCst);
                    // A signal often comes twice at once (`timeout` signals the child and then its
                    // group): only a second one a moment later means "stop cleaning up".
                    if first.is_some_and(|t| t.elapsed() > Duration::from_secs(1)) {
                        println!("ferrite-bench: second interrupt, exiting without cleaning up");
                        #[allow(clippy::exit, reason = "the user asked twice; the guards may hang")]
                        std::process::exit(130);
                    }
                    if first.is_none() {
                        first = Some(Instant::now());
                        println!(
                            "ferrite-bench: interrupted, removing what the run created (interrupt again to skip)"
                        );
                    }
                }
            });
        })
        .context("starting the signal-handling thread")?;
    ready_rx
        .recv()
        .context("the signal-handling thread ended early")?
        .context("installing the SIGINT/SIGTERM/SIGHUP handlers")
}

/// Fails once the run was interrupted, so that `?` unwinds through the guards.
pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps `d`, or less if the run is interrupted meanwhile (then fails).
pub fn sleep(d: Duration) -> Result<()> {
    let until = Instant::now() + d;
    loop {
        check_interrupted()?;
        let now = Instant::now();
        if now >= until {
            return Ok(());
        }
        std::thread::sleep((until - now).min(Duration::from_millis(50)));
    }
}

/// A command as a person would type it (for error messages).
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion and returns its standard output; a failure names the command and
/// carries its standard error.
pub fn run(cmd: &mut Command) -> Result<String> {
    run_with_input(cmd, &[])
}

/// [`run`] with `input` on standard input.
pub fn run_with_input(cmd: &mut Command, input: &[u8]) -> Result<String> {
    let what = describe(cmd);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting `{what}`"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input)
            .with_context(|| format!("writing the input of `{what}`"))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for `{what}`"))?;
    if !out.status.success() {
        bail!(
            "`{what}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip <args>`.
pub fn ip(args: &[&str]) -> Result<String> {
    run(Command::new("ip").args(args))
}

/// Runs `cmd` (own process group, so a terminal's Ctrl-C reaches only the benchmark, which
/// then stops it) with a time limit; returns its standard output and exit status. The child
/// is killed on timeout and on interruption.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Result<(ExitStatus, String, String)> {
    let what = describe(cmd);
    let dir = std::env::temp_dir();
    static CAPTURES: AtomicU64 = AtomicU64::new(0);
    let nonce = format!(
        "feb-{}-capture{}",
        std::process::id(),
        CAPTURES.fetch_add(1, Ordering::Relaxed)
    );
    // Files, not pipes: a chatty child never blocks on a full pipe while we poll it.
    let out_path = dir.join(format!("{nonce}.out"));
    let err_path = dir.join(format!("{nonce}.err"));
    let _files = RemoveOnDrop(vec![out_path.clone(), err_path.clone()]);
    let out = std::fs::File::create(&out_path).context("creating a capture file")?;
    let err = std::fs::File::create(&err_path).context("creating a capture file")?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting `{what}`"))?;
    let mut child = Daemon::adopt(what.clone(), child, None);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        check_interrupted()?;
        if started.elapsed() > limit {
            bail!("`{what}` did not finish within {limit:?}; stopped it");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    Ok((status, stdout, stderr))
}

/// Removes files when dropped.
struct RemoveOnDrop(Vec<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A long-running child process (an agent, an iperf3 server), killed and reaped on drop.
pub struct Daemon {
    what: String,
    child: Child,
    log: Option<PathBuf>,
    done: bool,
}

impl Daemon {
    /// Starts `cmd` in its own process group with its output appended to `log`.
    pub fn spawn(cmd: &mut Command, log: &Path) -> Result<Self> {
        let what = describe(cmd);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening the log {}", log.display()))?;
        let err = file.try_clone().context("duplicating a log descriptor")?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting `{what}`"))?;
        Ok(Self::adopt(what, child, Some(log.to_owned())))
    }

    fn adopt(what: String, child: Child, log: Option<PathBuf>) -> Self {
        Self {
            what,
            child,
            log,
            done: false,
        }
    }

    /// Its exit status, if it has ended.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        let status = self
            .child
            .try_wait()
            .with_context(|| format!("checking on `{}`", self.what))?;
        if status.is_some() {
            self.done = true;
        }
        Ok(status)
    }

    /// Fails, with the end of its log, if the process has ended.
    pub fn ensure_running(&mut self) -> Result<()> {
        if let Some(status) = self.try_wait()? {
            bail!(
                "`{}` exited ({status}); last lines of its log:\n{}",
                self.what,
                self.log_tail(20)
            );
        }
        Ok(())
    }

    /// The last `n` lines of its log (empty without one).
    pub fn log_tail(&self, n: usize) -> String {
        let Some(log) = &self.log else {
            return String::new();
        };
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if !self.done {
            // SIGKILL: what it leaves behind lives in namespaces that are removed next.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A network namespace created by the benchmark (`/run/netns/<name>`), deleted on drop.
pub struct Netns {
    name: String,
    fd: OwnedFd,
    deleted: bool,
}

impl Netns {
    /// `feb-<pid>-<suffix>`: the prefix every namespace of this run has.
    pub fn name_for(suffix: &str) -> String {
        format!("feb-{}-{suffix}", std::process::id())
    }

    /// Creates `feb-<pid>-<suffix>` with its loopback up.
    pub fn create(suffix: &str) -> Result<Self> {
        let name = Self::name_for(suffix);
        ip(&["netns", "add", &name])?;
        let ns = Self::open_created(name)?;
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Creates many at once (one `ip -batch`), loopback left down: pod sandboxes before the
    /// plugin runs, as a runtime hands them over.
    pub fn create_many(suffixes: &[String]) -> Result<NetnsSet> {
        let names: Vec<String> = suffixes.iter().map(|s| Self::name_for(s)).collect();
        let script: String = names.iter().fold(String::new(), |mut s, n| {
            let _ = writeln!(s, "netns add {n}");
            s
        });
        let created = run_with_input(
            Command::new("ip").args(["-force", "-batch", "-"]),
            script.as_bytes(),
        );
        // Guard whatever exists, also when the batch failed half-way.
        let mut set = NetnsSet { items: Vec::new() };
        let mut missing = Vec::new();
        for name in names {
            if Path::new("/run/netns").join(&name).exists() {
                set.items.push(Self::open_created(name)?);
            } else {
                missing.push(name);
            }
        }
        created?;
        if !missing.is_empty() {
            bail!("`ip netns add` did not create {}", missing.join(", "));
        }
        Ok(set)
    }

    fn open_created(name: String) -> Result<Self> {
        let path = Path::new("/run/netns").join(&name);
        match ferrite_agent::netns::open(&path) {
            Ok(fd) => Ok(Self {
                name,
                fd,
                deleted: false,
            }),
            Err(e) => {
                let _ = ip(&["netns", "del", &name]);
                Err(e).with_context(|| format!("opening the new namespace {name}"))
            }
        }
    }

    /// Another handle on the same namespace, which does not delete it when dropped.
    pub fn share(&self) -> Result<Netns> {
        Ok(Netns {
            name: self.name.clone(),
            fd: self
                .fd
                .try_clone()
                .context("duplicating a namespace descriptor")?,
            deleted: true,
        })
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, what a runtime passes as `CNI_NETNS`.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// Runs `f` on a thread inside this namespace (processes it starts are born there too).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        ferrite_agent::netns::run_in(self.fd.as_fd(), f)
            .with_context(|| format!("entering the namespace {}", self.name))
    }

    /// `ip -n <name> <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// A command run inside the namespace with `ip netns exec` (for iperf3 and the agent).
    pub fn exec(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// The namespace's interfaces with their byte counters (`/proc/net/dev` seen from inside).
    pub fn interfaces(&self) -> Result<BTreeMap<String, Counters>> {
        let text = self
            .run(|| std::fs::read_to_string("/proc/thread-self/net/dev"))?
            .context("reading /proc/net/dev")?;
        Ok(parse_net_dev(&text))
    }

    /// Whether a TCP socket listens on `port` (IPv4 or IPv6) inside the namespace.
    pub fn listening(&self, port: u16) -> Result<bool> {
        let (v4, v6) = self.run(|| {
            (
                std::fs::read_to_string("/proc/thread-self/net/tcp"),
                std::fs::read_to_string("/proc/thread-self/net/tcp6"),
            )
        })?;
        let v4 = v4.context("reading /proc/net/tcp")?;
        Ok(is_listening(&v4, port) || v6.is_ok_and(|t| is_listening(&t, port)))
    }

    /// One HTTP GET to `addr` from inside the namespace: status and body.
    pub fn http_get(&self, addr: SocketAddr, path: &str) -> Result<(u16, String)> {
        let raw = self
            .run(|| -> std::io::Result<Vec<u8>> {
                let timeout = Duration::from_secs(2);
                let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
                stream.set_read_timeout(Some(timeout))?;
                stream.set_write_timeout(Some(timeout))?;
                // HTTP/1.0: the server closes after the response and never chunks it.
                write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
                let mut buf = Vec::new();
                stream.read_to_end(&mut buf)?;
                Ok(buf)
            })?
            .with_context(|| format!("GET http://{addr}{path} in {}", self.name))?;
        parse_http_response(&raw).with_context(|| format!("GET http://{addr}{path}"))
    }

    fn delete(&mut self) {
        if !self.deleted {
            self.deleted = true;
            let _ = ip(&["netns", "del", &self.name]);
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.delete();
    }
}

/// Many namespaces, deleted together (one `ip -batch`) on drop.
pub struct NetnsSet {
    items: Vec<Netns>,
}

impl NetnsSet {
    /// The namespaces, in the order they were asked for.
    pub fn items(&self) -> &[Netns] {
        &self.items
    }
}

impl Drop for NetnsSet {
    fn drop(&mut self) {
        let script: String = self.items.iter().fold(String::new(), |mut s, n| {
            let _ = writeln!(s, "netns del {}", n.name);
            s
        });
        let _ = run_with_input(
            Command::new("ip").args(["-force", "-batch", "-"]),
            script.as_bytes(),
        );
        for n in &mut self.items {
            // Whatever the batch missed is deleted one by one.
            n.deleted = !n.path().exists();
        }
    }
}

/// Removes what benchmark runs that were killed outright left behind: `feb-<pid>-...`
/// namespaces whose benchmark process is gone (with the processes still inside them), and
/// their scratch directories and capture files. Returns what it removed.
pub fn remove_leftovers() -> Result<Vec<String>> {
    let dead = |name: &str| {
        owner_pid(name).is_some_and(|pid| !Path::new("/proc").join(pid.to_string()).exists())
    };
    let mut removed = Vec::new();
    let namespaces: Vec<String> = match std::fs::read_dir("/run/netns") {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).context("listing /run/netns"),
    };
    for name in namespaces.into_iter().filter(|n| dead(n)) {
        if let Ok(pids) = ip(&["netns", "pids", &name]) {
            for p in pids.split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", p]).status();
            }
        }
        ip(&["netns", "del", &name])?;
        removed.push(name);
    }
    for tmp in [std::env::temp_dir(), PathBuf::from(RAM_DIR)] {
        let Ok(entries) = std::fs::read_dir(&tmp) else {
            continue;
        };
        let files: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| dead(n))
            .collect();
        for name in files {
            let path = tmp.join(&name);
            let gone = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            if gone.is_ok() {
                removed.push(path.display().to_string());
            }
        }
    }
    Ok(removed)
}

/// The type of the file system `path` is on (`ext4`, `tmpfs`, ...): the last mount in
/// `/proc/self/mounts` whose mount point is the longest prefix of `path`.
pub fn fs_type(path: &Path) -> Result<String> {
    let path = path
        .canonicalize()
        .with_context(|| format!("resolving {}", path.display()))?;
    let mut best: Option<(PathBuf, String)> = None;
    for (at, kind) in mounts()? {
        let longer = best
            .as_ref()
            .is_none_or(|(b, _)| at.as_os_str().len() >= b.as_os_str().len());
        if path.starts_with(&at) && longer {
            best = Some((at, kind));
        }
    }
    best.map(|(_, kind)| kind)
        .with_context(|| format!("no mount holds {}", path.display()))
}

/// `(mount point, file system type)` of every mount, in mount order.
fn mounts() -> Result<Vec<(PathBuf, String)>> {
    let mounts =
        std::fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    Ok(mounts
        .lines()
        .filter_map(|l| {
            let mut fields = l.split_whitespace();
            let (_, at, kind) = (fields.next()?, fields.next()?, fields.next()?);
            Some((PathBuf::from(at), kind.to_owned()))
        })
        .collect())
}

/// The benchmark pid in a `feb-<pid>` or `feb-<pid>-...` name.
pub fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("feb-")?;
    let pid = rest.split_once('-').map_or(rest, |(pid, _)| pid);
    pid.parse().ok()
}

/// Where the benchmark keeps what a node keeps in RAM (a tmpfs: `/dev/shm`).
const RAM_DIR: &str = "/dev/shm";

/// A scratch directory, removed on drop unless kept, with a twin on a tmpfs for what a node
/// keeps in RAM ([`ScratchDir::ram_sub`]).
pub struct ScratchDir {
    path: PathBuf,
    ram: PathBuf,
    keep: bool,
}

impl ScratchDir {
    /// Creates `$TMPDIR/feb-<pid>`.
    pub fn create(keep: bool) -> Result<Self> {
        let path = std::env::temp_dir().join(format!("feb-{}", std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("removing a stale {}", path.display()))?;
        }
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        let ram = Path::new(RAM_DIR).join(format!("feb-{}", std::process::id()));
        Ok(Self { path, ram, keep })
    }

    /// A subdirectory on a tmpfs, created: for state the agent keeps under `/run`, which is a
    /// tmpfs on a standard node (the scratch directory itself may be on a disk).
    pub fn ram_sub(&self, name: &str) -> Result<PathBuf> {
        if fs_type(Path::new(RAM_DIR))? != "tmpfs" {
            bail!(
                "{RAM_DIR} is not a tmpfs here; the benchmark keeps the agent's state there, as a node keeps it in /run (a tmpfs)"
            );
        }
        let p = self.ram.join(name);
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(p)
    }

    /// A subdirectory, created.
    pub fn sub(&self, name: &str) -> Result<PathBuf> {
        let p = self.path.join(name);
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(p)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if self.keep {
            println!("kept the scratch directory {}", self.path.display());
            if self.ram.exists() {
                println!("kept its tmpfs part {}", self.ram.display());
            }
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
            let _ = std::fs::remove_dir_all(&self.ram);
        }
    }
}

/// Writes `bytes` to `path` atomically (a reader never sees a partial file).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

/// Byte counters of one interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
}

/// Parses `/proc/net/dev`: interface name → counters.
pub fn parse_net_dev(text: &str) -> BTreeMap<String, Counters> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let fields: Vec<u64> = rest
                .split_whitespace()
                .map(|f| f.parse().unwrap_or(0))
                .collect();
            Some((
                name.trim().to_owned(),
                Counters {
                    rx_bytes: *fields.first()?,
                    tx_bytes: *fields.get(8)?,
                },
            ))
        })
        .collect()
}

/// Whether `/proc/net/tcp` (or `tcp6`) text has a socket listening on `port`.
pub fn is_listening(text: &str, port: u16) -> bool {
    let want = format!("{port:04X}");
    text.lines().skip(1).any(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        f.len() > 3
            && f[3] == "0A"
            && f[1]
                .rsplit_once(':')
                .is_some_and(|(_, p)| p.eq_ignore_ascii_case(&want))
    })
}

/// Splits an HTTP response into its status code and body.
pub fn parse_http_response(raw: &[u8]) -> Result<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("the response has no end of headers")?;
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no status line in {head:?}"))?;
    Ok((status, body.to_owned()))
}

/// Waits until `ready` holds, checking every `every`; fails after `limit` with `what`.
pub fn wait_for(
    what: &str,
    limit: Duration,
    every: Duration,
    mut ready: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let started = Instant::now();
    loop {
        if ready()? {
            return Ok(());
        }
        if started.elapsed() > limit {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        sleep(every)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_dev_counters() {
        let text = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     120       2    0    0    0     0          0         0      120       2    0    0    0     0       0          0
ferrite.vxlan: 5000 10 0 0 0 0 0 0 7000 12 0 0 0 0 0 0
";
        let m = parse_net_dev(text);
        assert_eq!(m.len(), 2);
        assert_eq!(
            m["ferrite.vxlan"],
            Counters {
                rx_bytes: 5000,
                tx_bytes: 7000
            }
        );
        assert_eq!(m["lo"].tx_bytes, 120);
    }

    #[test]
    fn listening_sockets() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0202D20A:1451 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:4D65 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0
";
        assert!(is_listening(tcp, 5201));
        // Established, not listening.
        assert!(!is_listening(tcp, 19813));
        assert!(!is_listening(tcp, 80));
        assert!(!is_listening("", 5201));
    }

    #[test]
    fn http_responses() {
        let (code, body) =
            parse_http_response(b"HTTP/1.0 200 OK\r\ncontent-length: 6\r\n\r\nready\n").unwrap();
        assert_eq!((code, body.as_str()), (200, "ready\n"));
        let (code, _) = parse_http_response(b"HTTP/1.1 503 Service Unavailable\r\n\r\n").unwrap();
        assert_eq!(code, 503);
        assert!(parse_http_response(b"garbage").is_err());
    }

    #[test]
    fn leftover_names() {
        assert_eq!(owner_pid("feb-1234-lnf"), Some(1234));
        assert_eq!(owner_pid("feb-1234"), Some(1234));
        assert_eq!(owner_pid("feb-1234-capture7.out"), Some(1234));
        assert_eq!(owner_pid("feb-x-lnf"), None);
        assert_eq!(owner_pid("feb-"), None);
        assert_eq!(owner_pid("cni-1234-x"), None);
        assert_eq!(owner_pid("feb-test.md"), None);
    }
}
