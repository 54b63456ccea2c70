//! The end-to-end harness: talks to the local real cluster (`make up`) with kube-rs.
//!
//! - [`Cluster::connect`] uses `$KUBECONFIG`, else the repository's `.ferrite/kubeconfig`.
//! - [`TestNamespace`] is a throw-away namespace, deleted when the value is dropped (even when
//!   the test panics), so tests never see each other's objects.
//! - [`TestNamespace::pod`] builds pods pinned to chosen nodes (agnhost `netexec` by default),
//!   [`TestNamespace::exec`] runs commands in them, [`TestNamespace::connect`] wraps
//!   `agnhost connect`.
//! - [`wait_for`] polls with a timeout and says what it was waiting for, and what it last saw.
//! - [`tool`] runs the cluster's pinned `kubectl` or `helm` for what kube-rs does not do
//!   (rendering the chart, `kubectl diff`).
//!
//! The tests that need the cluster are `#[ignore]`d with the reason, so `cargo test` reports them
//! as ignored; `make e2e` runs them with `--ignored` against the running cluster.
//!
//! [`controlplane`] is the lighter alternative for what only needs an apiserver (the
//! operator): a private etcd + kube-apiserver started in seconds, no cluster needed.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Container, Namespace, Node, Pod, PodSpec, ServiceAccount};
use kube::api::{Api, AttachParams, DeleteParams, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use tokio::io::AsyncReadExt;

pub mod argo;
pub mod controlplane;

/// The agnhost image (the tag the pinned e2e.test uses; built locally by `e2e/scripts/images.sh`).
pub const AGNHOST: &str = "registry.k8s.io/e2e-test-images/agnhost:2.56";
/// The busybox image.
pub const BUSYBOX: &str = "registry.k8s.io/e2e-test-images/busybox:1.37.0-1";
/// The port agnhost `netexec` serves HTTP on in pods built by [`PodBuilder::netexec`].
pub const NETEXEC_PORT: u16 = 8080;
/// Default time to wait for a pod to become ready.
pub const POD_READY_TIMEOUT: Duration = Duration::from_secs(120);

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The kubeconfig the tests use: `$KUBECONFIG`, else the repository's `.ferrite/kubeconfig`.
pub fn kubeconfig_path() -> PathBuf {
    std::env::var_os("KUBECONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".ferrite/kubeconfig"))
}

/// What a command printed, and its exit code.
#[derive(Debug)]
pub struct ToolOutput {
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// The exit code (`None`: killed by a signal).
    pub code: Option<i32>,
}

/// Runs the local cluster's pinned `kubectl` or `helm` (through `e2e/scripts/tool.sh`, against
/// [`kubeconfig_path`]) with `args`, `stdin` fed to it. Returns whatever it printed, even when it
/// failed: the caller decides what an exit code means. Connect with [`Cluster::connect`]
/// first, which refuses a cluster that is not on this machine.
pub fn tool(tool: &str, args: &[&str], stdin: &str) -> Result<ToolOutput> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let script = repo_root().join("e2e/scripts/tool.sh");
    let mut child = Command::new(&script)
        .arg(tool)
        .args(args)
        .env("KUBECONFIG", kubeconfig_path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {} {tool}", script.display()))?;
    // NB: written from another thread: a large stdin and a large stdout would otherwise wait
    // on each other.
    let mut pipe = child.stdin.take().context("the child's stdin")?;
    let input = stdin.to_owned();
    let writer = std::thread::spawn(move || pipe.write_all(input.as_bytes()));
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for {tool} {args:?}"))?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("the thread writing {tool}'s stdin panicked"))?
        .with_context(|| format!("writing the stdin of {tool} {args:?}"))?;
    Ok(ToolOutput {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        code: out.status.code(),
    })
}

/// Like [`tool`], but fails (with what it printed) unless it exits 0; returns its stdout.
pub fn tool_ok(name: &str, args: &[&str], stdin: &str) -> Result<String> {
    let out = tool(name, args, stdin)?;
    if out.code != Some(0) {
        bail!(
            "{name} {} exited with {:?}:\n{}{}",
            args.join(" "),
            out.code,
            out.stdout,
            out.stderr
        );
    }
    Ok(out.stdout)
}

/// A connection to the local cluster.
#[derive(Clone)]
pub struct Cluster {
    /// The admin client.
    pub client: Client,
}

impl Cluster {
    /// Connects with `$KUBECONFIG`, else the repository's `.ferrite/kubeconfig`.
    pub async fn connect() -> Result<Self> {
        let path = kubeconfig_path();
        let kubeconfig = Kubeconfig::read_from(&path).with_context(|| {
            format!(
                "no kubeconfig at {}: start the cluster with `make up`",
                path.display()
            )
        })?;
        let config =
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        ensure_local(config.cluster_url.host().unwrap_or_default())?;
        Ok(Self {
            client: Client::try_from(config)?,
        })
    }

    /// The cluster's nodes, sorted by name.
    pub async fn nodes(&self) -> Result<Vec<Node>> {
        let api: Api<Node> = Api::all(self.client.clone());
        let mut nodes = api.list(&Default::default()).await?.items;
        nodes.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        Ok(nodes)
    }

    /// Names of the cluster's nodes, sorted.
    pub async fn node_names(&self) -> Result<Vec<String>> {
        Ok(self
            .nodes()
            .await?
            .into_iter()
            .filter_map(|n| n.metadata.name)
            .collect())
    }
}

/// Refuses a cluster address that is not on this machine: tests only ever talk to addresses
/// the local cluster owns. (A stale kubeconfig after `make down` points at an address that
/// would leave the machine by its default route.) Binding a socket to an IP succeeds only when
/// the IP is assigned to a local interface.
fn ensure_local(host: &str) -> Result<()> {
    let host = host.trim_matches(|c| c == '[' || c == ']');
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        std::net::UdpSocket::bind((ip, 0)).with_context(|| {
            format!("the cluster's address {ip} is not on this machine: start the cluster with `make up`")
        })?;
    }
    Ok(())
}

/// Polls `probe` every half second until it returns `Ok(Some(_))`, for at most `timeout`.
/// The error names `what` and the last thing the probe reported.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let start = Instant::now();
    loop {
        let last = match probe().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => String::from("not yet"),
            Err(e) => format!("{e:#}"),
        };
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}; last seen: {last}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What a command run in a pod printed, and whether it succeeded.
#[derive(Debug)]
pub struct ExecOutput {
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// Whether the command exited 0.
    pub success: bool,
}

/// A namespace that exists for one test and is deleted when dropped.
pub struct TestNamespace {
    /// The namespace's name.
    pub name: String,
    client: Client,
}

impl TestNamespace {
    /// Creates `ferrite-e2e-<prefix>-<random>`.
    pub async fn create(cluster: &Cluster, prefix: &str) -> Result<Self> {
        let ns = Namespace {
            metadata: ObjectMeta {
                generate_name: Some(format!("ferrite-e2e-{prefix}-")),
                labels: Some(BTreeMap::from([("ferrite.dev/e2e".into(), "true".into())])),
                ..Default::default()
            },
            ..Default::default()
        };
        let api: Api<Namespace> = Api::all(cluster.client.clone());
        let created = api
            .create(&PostParams::default(), &ns)
            .await
            .context("creating a test namespace")?;
        let name = created
            .metadata
            .name
            .context("the apiserver named the namespace")?;
        let this = Self {
            name,
            client: cluster.client.clone(),
        };
        // Pods are refused until the service account controller has made `default`.
        let sa: Api<ServiceAccount> = Api::namespaced(cluster.client.clone(), &this.name);
        wait_for(
            &format!("service account default in {}", this.name),
            Duration::from_secs(30),
            || async { Ok(sa.get_opt("default").await?) },
        )
        .await?;
        Ok(this)
    }

    /// The pods of this namespace.
    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// Starts building a pod called `name` (agnhost `netexec` unless told otherwise).
    pub fn pod(&self, name: &str) -> PodBuilder<'_> {
        PodBuilder {
            ns: self,
            name: name.to_owned(),
            node: None,
            image: AGNHOST.into(),
            args: vec![],
            labels: BTreeMap::new(),
            restart_never: false,
        }
        .netexec()
    }

    /// Runs `command` in the pod's first container.
    pub async fn exec(&self, pod: &str, command: &[&str]) -> Result<ExecOutput> {
        let params = AttachParams::default().stdout(true).stderr(true);
        let mut attached = self
            .pods()
            .exec(pod, command.iter().copied(), &params)
            .await
            .with_context(|| format!("exec {command:?} in {}/{pod}", self.name))?;
        let status = attached
            .take_status()
            .context("exec has no status channel")?;
        let (mut stdout, mut stderr) = (String::new(), String::new());
        if let Some(mut out) = attached.stdout() {
            out.read_to_string(&mut stdout).await?;
        }
        if let Some(mut err) = attached.stderr() {
            err.read_to_string(&mut stderr).await?;
        }
        let status = status.await;
        attached.join().await?;
        let success = status.as_ref().and_then(|s| s.status.as_deref()) == Some("Success");
        Ok(ExecOutput {
            stdout,
            stderr,
            success,
        })
    }

    /// `agnhost connect` from `pod` to `target:port` over TCP; Ok when a connection is made.
    pub async fn connect(&self, pod: &str, target: &str, port: u16) -> Result<()> {
        let dest = if target.contains(':') {
            format!("[{target}]:{port}")
        } else {
            format!("{target}:{port}")
        };
        let out = self
            .exec(pod, &["/agnhost", "connect", "--timeout=5s", &dest])
            .await?;
        if out.success {
            Ok(())
        } else {
            bail!(
                "{pod} cannot connect to {dest}: {}{}",
                out.stdout,
                out.stderr
            )
        }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        delete_from_drop::<Namespace>(&self.name, "test namespace");
    }
}

/// Deletes the cluster-scoped object `name` of kind `K` from a `Drop`, warning (as `what`)
/// when it cannot. NB: Drop cannot be async and may run while a test panics inside a runtime,
/// so the delete runs on its own thread with its own runtime — and its own client: a clone of
/// the test's would hand the request to a worker task on the test's runtime, which is blocked
/// right here in join().
pub fn delete_from_drop<K>(name: &str, what: &str)
where
    K: kube::Resource<DynamicType = (), Scope = kube::core::ClusterResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
{
    let owned = name.to_owned();
    let done = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let cluster = Cluster::connect().await?;
            let api: Api<K> = Api::all(cluster.client);
            api.delete(&owned, &DeleteParams::background()).await?;
            anyhow::Ok(())
        })
    });
    if let Ok(Err(e)) = done.join() {
        #[expect(clippy::print_stderr, reason = "Drop cannot return the error")]
        {
            eprintln!("warning: could not delete {what} {name}: {e:#}");
        }
    }
}

/// Builds a pod in a [`TestNamespace`].
pub struct PodBuilder<'a> {
    ns: &'a TestNamespace,
    name: String,
    node: Option<String>,
    image: String,
    args: Vec<String>,
    labels: BTreeMap<String, String>,
    restart_never: bool,
}

impl PodBuilder<'_> {
    /// Pins the pod to a node.
    pub fn on_node(mut self, node: &str) -> Self {
        self.node = Some(node.to_owned());
        self
    }

    /// Runs agnhost `netexec` (HTTP on [`NETEXEC_PORT`], UDP on 8081).
    pub fn netexec(mut self) -> Self {
        self.image = AGNHOST.into();
        self.args = vec![
            "netexec".into(),
            format!("--http-port={NETEXEC_PORT}"),
            "--udp-port=8081".into(),
        ];
        self
    }

    /// Uses another image and arguments.
    pub fn image(mut self, image: &str, args: &[&str]) -> Self {
        self.image = image.to_owned();
        self.args = args.iter().map(|a| (*a).to_owned()).collect();
        self
    }

    /// Adds a label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Runs the pod once (restartPolicy Never) and returns its logs once it succeeded; fails with
    /// the logs when it failed.
    pub async fn run_to_completion(mut self) -> Result<String> {
        self.restart_never = true;
        let (api, name, ns) = (self.ns.pods(), self.name.clone(), self.ns.name.clone());
        api.create(&PostParams::default(), &self.build())
            .await
            .with_context(|| format!("creating pod {name}"))?;
        let phase = wait_for(
            &format!("pod {ns}/{name} to finish"),
            POD_READY_TIMEOUT,
            || async {
                let phase = api.get(&name).await?.status.and_then(|s| s.phase);
                Ok(phase.filter(|p| p == "Succeeded" || p == "Failed"))
            },
        )
        .await?;
        let logs = api.logs(&name, &Default::default()).await?;
        if phase == "Succeeded" {
            Ok(logs)
        } else {
            bail!("pod {ns}/{name} failed: {logs}")
        }
    }

    fn build(&self) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                labels: Some(self.labels.clone()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: self.node.clone(),
                termination_grace_period_seconds: Some(1),
                restart_policy: self.restart_never.then(|| "Never".into()),
                containers: vec![Container {
                    name: "main".into(),
                    image: Some(self.image.clone()),
                    image_pull_policy: Some("Never".into()),
                    args: (!self.args.is_empty()).then(|| self.args.clone()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Creates the pod and waits until it is Ready; returns it (with its IP).
    pub async fn create(self) -> Result<Pod> {
        let api = self.ns.pods();
        api.create(&PostParams::default(), &self.build())
            .await
            .with_context(|| format!("creating pod {}", self.name))?;
        let what = format!("pod {}/{} to be Ready", self.ns.name, self.name);
        wait_for(&what, POD_READY_TIMEOUT, || async {
            let p = api.get(&self.name).await?;
            let status = p.status.as_ref();
            let ready = status
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            if ready {
                return Ok(Some(p));
            }
            let waiting = status
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|c| c.first())
                .and_then(|c| c.state.as_ref())
                .and_then(|s| s.waiting.as_ref())
                .map(|w| {
                    let reason = w.reason.clone().unwrap_or_default();
                    format!("{reason}: {}", w.message.clone().unwrap_or_default())
                });
            match waiting {
                Some(w) => bail!("phase {:?}, {w}", status.and_then(|s| s.phase.clone())),
                None => Ok(None),
            }
        })
        .await
    }
}

/// The addresses of the pods `api` lists with the label `selector` that are Running and have
/// one (pods still starting are left out).
pub async fn running_pod_ips(api: &Api<Pod>, selector: &str) -> Result<Vec<String>> {
    let pods = api
        .list(&kube::api::ListParams::default().labels(selector))
        .await
        .with_context(|| format!("listing the pods {selector}"))?;
    Ok(pods
        .items
        .iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .filter_map(|p| p.status.as_ref().and_then(|s| s.pod_ip.clone()))
        .collect())
}

/// The pod's IP (set once [`PodBuilder::create`] returned).
pub fn pod_ip(pod: &Pod) -> Result<String> {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .context("pod has no IP")
}

/// The network namespace of the local cluster's node `node` (`node1`...), or of the outside
/// host (`internet`), as `make up` names them.
pub fn netns_path(name: &str) -> PathBuf {
    PathBuf::from(format!("/run/netns/fe-{name}"))
}

/// Runs `f` on a thread inside the local cluster's namespace `name` (see [`netns_path`]): a
/// node's own network (what its host-network processes see) or the outside host's.
pub fn in_netns<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    let path = netns_path(name);
    let ns = ferrite_agent::netns::open(&path)
        .with_context(|| format!("{} is missing: is the cluster up?", path.display()))?;
    Ok(ferrite_agent::netns::run_in(
        std::os::fd::AsFd::as_fd(&ns),
        f,
    )?)
}

/// A plain HTTP/1.0 GET (no TLS, no redirects) with a 5 s timeout, returning the body.
/// Only for addresses of the local cluster (node IPs, pod IPs).
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    let (head, body) = reply
        .split_once("\r\n\r\n")
        .with_context(|| format!("no HTTP reply from {addr}{path}: {reply:?}"))?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        bail!(
            "GET {addr}{path}: {}",
            head.lines().next().unwrap_or_default()
        );
    }
    Ok(body.to_owned())
}

/// A TCP server on the outside host (`fe-internet`, outside the cluster), recording the source
/// address of every connection it accepts: what the outside world sees of a pod.
pub struct OutsideServer {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    peers: std::sync::mpsc::Receiver<std::net::IpAddr>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl OutsideServer {
    /// Listens on `ip:port` inside the outside host's namespace.
    pub fn start(ip: &str, port: u16) -> Result<Self> {
        let addr: std::net::SocketAddr = format!("{ip}:{port}").parse()?;
        let listener = in_netns("internet", || std::net::TcpListener::bind(addr))?
            .with_context(|| format!("listening on {addr} in the outside host"))?;
        listener.set_nonblocking(true)?;
        let (tx, peers) = std::sync::mpsc::channel();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        // The socket stays in the namespace it was opened in; accepting needs no setns.
        std::thread::spawn(move || {
            while !stopping.load(std::sync::atomic::Ordering::SeqCst) {
                match listener.accept() {
                    Ok((_, peer)) => {
                        if tx.send(peer.ip()).is_err() {
                            return;
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(Self { addr, peers, stop })
    }

    /// The source address of the next connection, waiting at most `timeout`.
    pub fn next_peer(&self, timeout: Duration) -> Result<std::net::IpAddr> {
        self.peers
            .recv_timeout(timeout)
            .with_context(|| format!("no connection reached {} within {timeout:?}", self.addr))
    }
}

impl Drop for OutsideServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
