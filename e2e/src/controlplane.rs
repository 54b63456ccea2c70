//! A private Kubernetes control plane: etcd and kube-apiserver only (optionally
//! kube-controller-manager running nothing but its garbage collector), no nodes, no kubelets.
//! For tests and benchmarks of the operator, which only talks to the apiserver: seconds to
//! start, nothing on the host changed.
//!
//! - [`ControlPlane::start`] runs the binaries `make up` builds (`e2e/scripts/build-k8s.sh`,
//!   cached under `~/.cache/ferrite/k8s/<key>/bin`, the path `e2e/scripts/env.sh` computes)
//!   on free loopback ports, from a scratch directory (`$TMPDIR/ferrite-cp-<pid>-<n>`; etcd's
//!   data in `/dev/shm`, without fsync). The apiserver makes its own serving certificate
//!   (`--cert-dir`), authenticates static tokens and authorizes with RBAC, so a process can
//!   run with exactly the permissions a manifest grants. Ferrite's CRDs (`crds/yaml/`) are
//!   applied and Established before it returns.
//! - Two identities, each with a kubeconfig for child processes: the admin
//!   (`system:masters`; [`ControlPlane::client`] uses it) and the operator's service account
//!   `system:serviceaccount:ferrite-system:ferrite-operator`, which can do nothing until its
//!   RBAC is applied ([`ControlPlane::apply_operator_rbac`]).
//! - [`ControlPlane::spawn`] runs a child process (the operator: [`operator_binary`]) against
//!   it; the [`Process`] is killable by PID and killed when dropped.
//! - Dropping the control plane kills every process and removes every file it made. A run
//!   that was itself killed leaves them behind; the next start removes those.
//! - One control plane at a time per machine: [`ControlPlane::start`] waits for a lock
//!   (`$TMPDIR/ferrite-controlplane.lock`) held until the drop, so tests that run in parallel
//!   (`--test-threads=3`) or a benchmark never share the CPUs with another one, which would
//!   skew their timing (leases, the benchmark's clock).
//!
//! `FERRITE_K8S_BIN` overrides where the binaries are; `FERRITE_KEEP_CONTROLPLANE=1` keeps
//! the scratch directory (logs, kubeconfigs) after the drop, for debugging.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::Read as _;
use std::net::{IpAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use ferrite_crds::{ClusterNetwork, IPPool, NodeNetwork};
use futures::stream::BoxStream;
use futures::{StreamExt as _, TryStreamExt as _};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeStatus};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, GetParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Client, Config};
use rustix::fs::FlockOperation;
use rustix::process::{Pid, Signal, kill_process};

use crate::{repo_root, wait_for};

/// The operator's service account, as its token authenticates.
pub const OPERATOR_USER: &str = "system:serviceaccount:ferrite-system:ferrite-operator";
/// The field manager of what the harness applies.
const MANAGER: &str = "ferrite-e2e";
/// Ports the local cluster (`make up`) uses; never handed out here.
const RESERVED_PORTS: [u16; 3] = [2379, 2380, 6443];
/// How long the apiserver may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// The name prefix of every scratch directory.
const PREFIX: &str = "ferrite-cp-";

/// What to run besides etcd and the apiserver.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Run kube-controller-manager with only its garbage collector, so objects whose owner
    /// is deleted (a NodeNetwork of a deleted Node) are deleted as in a real cluster.
    pub garbage_collector: bool,
}

/// Who a child process authenticates as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Identity {
    /// `system:masters`: everything.
    Admin,
    /// The operator's service account: what its RBAC grants.
    Operator,
}

/// A running etcd + kube-apiserver (+ garbage collector); see the module docs.
pub struct ControlPlane {
    /// A client authenticated as the admin.
    pub client: Client,
    scratch: Scratch,
    // NB: declared last, so it is released after the scratch is gone.
    _turn: File,
}

impl ControlPlane {
    /// Starts a control plane and applies Ferrite's CRDs; see the module docs.
    pub async fn start(options: Options) -> Result<Self> {
        let bin = k8s_bin_dir()?;
        let mut needed = vec!["etcd", "kube-apiserver", "kubectl"];
        if options.garbage_collector {
            needed.push("kube-controller-manager");
        }
        for b in needed {
            ensure!(
                bin.join(b).is_file(),
                "{} is missing: build the Kubernetes binaries with `e2e/scripts/build-k8s.sh` (or `make up`, which runs it)",
                bin.join(b).display()
            );
        }
        let turn = wait_for_turn().await?;
        remove_leftovers();

        static SEQ: AtomicU32 = AtomicU32::new(0);
        let tag = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(&tag);
        let shm = Path::new("/dev/shm");
        let etcd_dir = if shm.is_dir() {
            shm.join(&tag)
        } else {
            dir.join("etcd")
        };
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // From here on, dropping `scratch` removes whatever was made, also on an error.
        let mut scratch = Scratch {
            dir,
            etcd_dir,
            bin,
            processes: Vec::new(),
            keep: std::env::var_os("FERRITE_KEEP_CONTROLPLANE").is_some_and(|v| v == "1"),
        };
        match scratch.boot(options).await {
            Ok(client) => Ok(Self {
                client,
                scratch,
                _turn: turn,
            }),
            Err(e) => Err(e.context(format!(
                "starting the control plane in {} (FERRITE_KEEP_CONTROLPLANE=1 keeps its logs there)",
                scratch.dir.display()
            ))),
        }
    }

    /// The scratch directory: logs (`<name>.log`), kubeconfigs, certificates.
    pub fn dir(&self) -> &Path {
        &self.scratch.dir
    }

    /// The kubeconfig a child process authenticates with as `identity`.
    pub fn kubeconfig(&self, identity: Identity) -> PathBuf {
        self.scratch.kubeconfig(identity)
    }

    /// A client authenticated as `identity`.
    pub async fn client_as(&self, identity: Identity) -> Result<Client> {
        client_for(&self.kubeconfig(identity)).await
    }

    /// One of the control plane's own processes: `etcd`, `kube-apiserver`,
    /// `kube-controller-manager`.
    pub fn process(&self, name: &str) -> Option<&Process> {
        self.scratch.processes.iter().find(|p| p.name == name)
    }

    /// The last `lines` lines of `name`'s log (a process of this control plane, or one
    /// started with [`ControlPlane::spawn`]).
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        self.scratch.log_tail(name, lines)
    }

    /// Applies the operator's RBAC from `manifest` (a multi-document YAML such as
    /// [`chart_manifest`]'s): its Namespace, ServiceAccount, (Cluster)Role and
    /// (Cluster)RoleBinding documents, with `kubectl apply --server-side`. Other documents
    /// (workloads, custom resources) are left out.
    pub fn apply_operator_rbac(&self, manifest: &Path) -> Result<()> {
        let text = fs::read_to_string(manifest)
            .with_context(|| format!("reading {}", manifest.display()))?;
        let rbac = rbac_documents(&text);
        ensure!(
            rbac.contains("ferrite-operator"),
            "{} holds no RBAC for ferrite-operator",
            manifest.display()
        );
        let path = self.dir().join("operator-rbac.yaml");
        fs::write(&path, rbac)?;
        let out = Command::new(self.scratch.bin.join("kubectl"))
            .arg(format!(
                "--kubeconfig={}",
                self.kubeconfig(Identity::Admin).display()
            ))
            .args(["apply", "--server-side", "--field-manager", MANAGER, "-f"])
            .arg(&path)
            .output()
            .context("running kubectl")?;
        ensure!(
            out.status.success(),
            "kubectl apply of the RBAC in {} failed: {}",
            manifest.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// Starts `program args` as `identity` (`KUBECONFIG` set), logging to `<name>.log` in
    /// the scratch directory. `name` must be unique among this control plane's processes.
    pub fn spawn(
        &self,
        name: &str,
        program: &Path,
        args: &[&str],
        identity: Identity,
    ) -> Result<Process> {
        let mut command = Command::new(program);
        command
            .args(args)
            .env("KUBECONFIG", self.kubeconfig(identity))
            .env("FERRITE_CONTROLPLANE", self.dir())
            // Plain logs, so tests can search them.
            .env("NO_COLOR", "1");
        self.scratch.spawn_logged(name, command)
    }
}

/// The processes and files of one control plane; dropping it removes them.
struct Scratch {
    dir: PathBuf,
    etcd_dir: PathBuf,
    bin: PathBuf,
    processes: Vec<Process>,
    keep: bool,
}

impl Scratch {
    async fn boot(&mut self, options: Options) -> Result<Client> {
        fs::create_dir_all(&self.etcd_dir)
            .with_context(|| format!("creating {}", self.etcd_dir.display()))?;
        let [etcd_client, etcd_peer, apiserver, kcm] = free_ports::<4>()?;
        let dir = self.dir.clone();
        openssl(&["genrsa", "-out", "sa.key", "2048"], &dir)?;
        openssl(&["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"], &dir)?;
        let admin_token = random_token()?;
        let operator_token = random_token()?;
        fs::write(
            dir.join("tokens.csv"),
            format!(
                "{admin_token},ferrite-e2e-admin,ferrite-e2e-admin,\"system:masters\"\n\
                 {operator_token},{OPERATOR_USER},ferrite-operator-uid,\"system:serviceaccounts,system:serviceaccounts:ferrite-system\"\n"
            ),
        )?;

        let etcd_url = |port: u16| format!("http://127.0.0.1:{port}");
        let mut etcd = Command::new(self.bin.join("etcd"));
        etcd.arg("--name=ferrite-cp")
            .arg(format!("--data-dir={}", self.etcd_dir.display()))
            .arg("--unsafe-no-fsync")
            .arg(format!("--listen-client-urls={}", etcd_url(etcd_client)))
            .arg(format!("--advertise-client-urls={}", etcd_url(etcd_client)))
            .arg(format!("--listen-peer-urls={}", etcd_url(etcd_peer)))
            .arg(format!(
                "--initial-advertise-peer-urls={}",
                etcd_url(etcd_peer)
            ))
            .arg(format!(
                "--initial-cluster=ferrite-cp={}",
                etcd_url(etcd_peer)
            ))
            .arg("--log-level=warn");
        let etcd = self.spawn_logged("etcd", etcd)?;
        self.processes.push(etcd);

        let cert_dir = dir.join("certs");
        let mut apiserver_cmd = Command::new(self.bin.join("kube-apiserver"));
        apiserver_cmd
            .arg(format!("--etcd-servers={}", etcd_url(etcd_client)))
            .args(["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1"])
            .arg(format!("--secure-port={apiserver}"))
            .arg(format!("--cert-dir={}", cert_dir.display()))
            .arg(format!(
                "--token-auth-file={}",
                dir.join("tokens.csv").display()
            ))
            .arg("--authorization-mode=RBAC")
            // Checks blockOwnerDeletion against the `finalizers` subresource, as a real
            // cluster that enables it does: the operator's RBAC must allow it.
            .arg("--enable-admission-plugins=OwnerReferencesPermissionEnforcement")
            .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
            .arg(format!(
                "--service-account-key-file={}",
                dir.join("sa.pub").display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                dir.join("sa.key").display()
            ))
            .args([
                "--service-cluster-ip-range=10.96.0.0/12",
                "--profiling=false",
            ]);
        let apiserver_process = self.spawn_logged("kube-apiserver", apiserver_cmd)?;
        self.processes.push(apiserver_process);

        // The apiserver writes its self-signed certificate (and the CA that signed it) first
        // thing; the kubeconfigs trust that file.
        let ca = cert_dir.join("apiserver.crt");
        let start = Instant::now();
        while !ca.is_file() {
            self.ensure_running()?;
            ensure!(
                start.elapsed() < READY_TIMEOUT,
                "kube-apiserver wrote no {} within {READY_TIMEOUT:?}",
                ca.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let server = format!("https://127.0.0.1:{apiserver}");
        for (identity, token) in [
            (Identity::Admin, &admin_token),
            (Identity::Operator, &operator_token),
        ] {
            fs::write(
                self.kubeconfig(identity),
                kubeconfig_yaml(&server, &ca, token),
            )?;
        }
        let client = client_for(&self.kubeconfig(Identity::Admin)).await?;

        let ready = Instant::now();
        loop {
            let request = kube::core::Request::new("").get("readyz", &GetParams::default())?;
            let last = match client.request_text(request).await {
                Ok(_) => break,
                Err(e) => e.to_string(),
            };
            self.ensure_running()?;
            ensure!(
                ready.elapsed() < READY_TIMEOUT,
                "kube-apiserver is not ready after {READY_TIMEOUT:?}: {last}; its log ends:\n{}",
                self.log_tail("kube-apiserver", 30)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        apply_crds(&client).await?;

        if options.garbage_collector {
            let kubeconfig = self.kubeconfig(Identity::Admin);
            let mut kcm_cmd = Command::new(self.bin.join("kube-controller-manager"));
            kcm_cmd
                .arg(format!("--kubeconfig={}", kubeconfig.display()))
                .args(["--bind-address=127.0.0.1", "--leader-elect=false"])
                .arg(format!("--secure-port={kcm}"))
                .arg("--controllers=garbagecollector");
            let kcm_process = self.spawn_logged("kube-controller-manager", kcm_cmd)?;
            self.processes.push(kcm_process);
        }
        Ok(client)
    }

    fn kubeconfig(&self, identity: Identity) -> PathBuf {
        self.dir.join(match identity {
            Identity::Admin => "admin.kubeconfig",
            Identity::Operator => "operator.kubeconfig",
        })
    }

    fn log_tail(&self, name: &str, lines: usize) -> String {
        tail(&self.dir.join(format!("{name}.log")), lines)
    }

    fn spawn_logged(&self, name: &str, mut command: Command) -> Result<Process> {
        let log_path = self.dir.join(format!("{name}.log"));
        let log =
            File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", command.get_program()))?;
        // Recorded so that a later run can clean up after one that was killed.
        let pids = self.dir.join("pids");
        let mut recorded = fs::read_to_string(&pids).unwrap_or_default();
        recorded.push_str(&format!("{}\n", child.id()));
        fs::write(&pids, recorded)?;
        Ok(Process {
            name: name.to_owned(),
            child,
            log: log_path,
        })
    }

    /// Fails, with its log, if a process of the control plane has exited.
    fn ensure_running(&mut self) -> Result<()> {
        for p in &mut self.processes {
            if let Some(status) = p.child.try_wait()? {
                bail!(
                    "{} exited ({status}); its log ends:\n{}",
                    p.name,
                    tail(&p.log, 30)
                );
            }
        }
        Ok(())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // The garbage collector and the apiserver before etcd, so none of them logs a
        // storm of connection errors on its way out.
        while let Some(p) = self.processes.pop() {
            drop(p);
        }
        let _ = fs::remove_dir_all(&self.etcd_dir);
        if !self.keep {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Applies Ferrite's CRDs from `crds/yaml/` and waits until each is Established.
async fn apply_crds(client: &Client) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let dir = repo_root().join("crds/yaml");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        // all.yaml is these files, concatenated.
        .filter(|p| p.extension().is_some_and(|e| e == "yaml") && !p.ends_with("all.yaml"))
        .collect();
    files.sort();
    ensure!(!files.is_empty(), "no CRDs in {}", dir.display());
    let mut names = Vec::new();
    for file in files {
        let (_, crd) = ferrite_crds::catalog::load(&file)?;
        let name = crd["metadata"]["name"]
            .as_str()
            .with_context(|| format!("{} has no metadata.name", file.display()))?
            .to_owned();
        api.patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await
        .with_context(|| format!("applying {}", file.display()))?;
        names.push(name);
    }
    for name in names {
        wait_for(
            &format!("CRD {name} to be Established"),
            Duration::from_secs(30),
            || async {
                let crd = api.get(&name).await?;
                let established = crd
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                Ok(established.then_some(()))
            },
        )
        .await?;
    }
    Ok(())
}

/// A child process, killed (SIGKILL) when dropped if it still runs.
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Its name (and its log's, `<name>.log`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. [`Signal::TERM`], [`Signal::KILL`]).
    pub fn signal(&self, signal: Signal) -> Result<()> {
        let pid = i32::try_from(self.pid())
            .ok()
            .and_then(Pid::from_raw)
            .context("a child's PID is a positive i32")?;
        kill_process(pid, signal).with_context(|| format!("signalling {}", self.name))?;
        Ok(())
    }

    /// Asks it to stop (SIGTERM).
    pub fn terminate(&self) -> Result<()> {
        self.signal(Signal::TERM)
    }

    /// Its exit status, if it has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// Waits up to `timeout` for it to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            ensure!(
                start.elapsed() < timeout,
                "{} still runs {timeout:?} later; its log ends:\n{}",
                self.name,
                self.log_tail(20)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills it with SIGKILL and reaps it.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        self.child.kill()?;
        Ok(self.child.wait()?)
    }

    /// The last `lines` lines of its output.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// Its whole output so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its peak resident memory so far (`VmHWM` in `/proc/<pid>/status`), in bytes. Only
    /// while it runs.
    pub fn peak_rss_bytes(&self) -> Result<u64> {
        let path = format!("/proc/{}/status", self.pid());
        let status = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        parse_vm_hwm(&status).with_context(|| format!("no VmHWM in {path}"))
    }

    /// The CPU time it has used so far (user + system), from `/proc/<pid>/stat`.
    pub fn cpu_time(&self) -> Result<Duration> {
        let path = format!("/proc/{}/stat", self.pid());
        let stat = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        parse_cpu_ticks(&stat)
            // NB: USER_HZ is 100 on every Linux architecture this runs on.
            .map(|ticks| Duration::from_millis(ticks * 10))
            .with_context(|| format!("cannot parse {path}"))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// Where the Kubernetes binaries are: `$FERRITE_K8S_BIN`, else the cache path
/// `e2e/scripts/env.sh` computes (`$BIN`), so both always agree.
pub fn k8s_bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("FERRITE_K8S_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let env_sh = repo_root().join("e2e/scripts/env.sh");
    let out = Command::new("bash")
        .args([
            "-c",
            r#"source "$1" >/dev/null && printf %s "$BIN""#,
            "bash",
        ])
        .arg(&env_sh)
        .output()
        .context("running bash to read the binaries' path from e2e/scripts/env.sh")?;
    let dir = String::from_utf8(out.stdout).context("env.sh's $BIN is not UTF-8")?;
    ensure!(
        out.status.success() && !dir.is_empty(),
        "cannot compute the binaries' path from {}: {}",
        env_sh.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(PathBuf::from(dir))
}

/// Renders the Helm chart (`helm template`, the Helm `make up` builds) into `dir` with a
/// Namespace document for the release namespace first (`helm install --create-namespace`
/// makes it; `helm template` does not print it), for [`ControlPlane::apply_operator_rbac`]:
/// the tests grant the operator exactly what the chart grants it.
pub fn chart_manifest(dir: &Path) -> Result<PathBuf> {
    let env_sh = repo_root().join("e2e/scripts/env.sh");
    let chart = repo_root().join("charts/ferrite");
    let out = Command::new("bash")
        .args([
            "-c",
            r#"source "$1" >/dev/null || exit 1
[ -x "$HELM" ] || { echo "missing $HELM: run e2e/scripts/build-helm.sh" >&2; exit 1; }
"$HELM" template ferrite "$2" --namespace ferrite-system"#,
            "bash",
        ])
        .arg(&env_sh)
        .arg(&chart)
        .output()
        .context("running helm template")?;
    ensure!(
        out.status.success(),
        "helm template {} failed: {}",
        chart.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let namespace = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: ferrite-system\n";
    let path = dir.join("chart.yaml");
    fs::write(
        &path,
        format!("{namespace}---\n{}", String::from_utf8_lossy(&out.stdout)),
    )?;
    Ok(path)
}

/// Builds `ferrite-operator` (`cargo build --locked`, `--release` if asked; a no-op when it
/// is fresh) and returns the binary's path, so a test never runs a stale operator.
pub fn operator_binary(release: bool) -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args(["build", "--locked", "-p", "ferrite-operator"])
        .args(["--bin", "ferrite-operator"])
        .arg("--message-format=json-render-diagnostics")
        .arg("--manifest-path")
        .arg(repo_root().join("Cargo.toml"))
        .stderr(Stdio::inherit());
    if release {
        command.arg("--release");
    }
    // NB: cargo test sets these for the test process. Build scripts (ring's) rerun when they
    // change, and cargo compares them in its own environment: inherited, they would
    // rebuild half the dependency tree on every alternation between `cargo test` and this.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let set_by_cargo_test = [
            "CARGO_MANIFEST_",
            "CARGO_PKG_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
            "CARGO_PRIMARY_PACKAGE",
            "CARGO_TARGET_TMPDIR",
            "CARGO_RUSTC_CURRENT_DIR",
            "CARGO_CFG_",
            "OUT_DIR",
        ]
        .iter()
        .any(|p| key.starts_with(p));
        if set_by_cargo_test {
            command.env_remove(key.as_ref());
        }
    }
    let out = command.output().context("running cargo build")?;
    ensure!(
        out.status.success(),
        "cargo build -p ferrite-operator failed (its errors are above)"
    );
    executable_from_cargo(&String::from_utf8_lossy(&out.stdout), "ferrite-operator")
        .context("cargo build reported no ferrite-operator executable")
}

/// A Node as a kubelet registers it, reduced to what Ferrite reads: the hostname label and
/// its addresses (InternalIP, Hostname).
pub fn node(name: &str, internal_ip: IpAddr) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some([("kubernetes.io/hostname".to_owned(), name.to_owned())].into()),
            ..ObjectMeta::default()
        },
        spec: None,
        status: Some(NodeStatus {
            addresses: Some(vec![
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: internal_ip.to_string(),
                },
                NodeAddress {
                    type_: "Hostname".into(),
                    address: name.to_owned(),
                },
            ]),
            ..NodeStatus::default()
        }),
    }
}

/// The pool `make up` installs (the chart's default IPPool): 10.244.0.0/16 in /26 blocks, 1,024
/// blocks.
pub const DEFAULT_POOL: &str = "10.244.0.0/16";
/// Its block size.
pub const DEFAULT_BLOCK_SIZE: u8 = 26;

/// Applies the IPPool `default` (`cidr`, `block_size`) and the ClusterNetwork `default`, as
/// `make up` does (server-side apply, as the admin).
pub async fn apply_default_network(client: &Client, cidr: &str, block_size: u8) -> Result<()> {
    let params = PatchParams::apply(MANAGER).force();
    let pools: Api<IPPool> = Api::all(client.clone());
    let pool = serde_json::json!({
        "apiVersion": "ferrite.dev/v1alpha1",
        "kind": "IPPool",
        "metadata": {"name": "default"},
        "spec": {"cidr": cidr, "blockSize": block_size, "natOutgoing": true},
    });
    pools
        .patch("default", &params, &Patch::Apply(&pool))
        .await
        .context("applying IPPool default")?;
    let networks: Api<ClusterNetwork> = Api::all(client.clone());
    let network = serde_json::json!({
        "apiVersion": "ferrite.dev/v1alpha1",
        "kind": "ClusterNetwork",
        "metadata": {"name": "default"},
        "spec": {"serviceCIDR": "10.96.0.0/12", "routingMode": "VXLAN"},
    });
    networks
        .patch("default", &params, &Patch::Apply(&network))
        .await
        .context("applying ClusterNetwork default")?;
    Ok(())
}

/// The blocks of every NodeNetwork, by name; fails unless every block parses, lies inside
/// `pool`, and no two blocks (of one node or of two) overlap.
pub fn distinct_blocks_in(
    pool: IpNet,
    node_networks: &[NodeNetwork],
) -> Result<BTreeMap<String, Vec<IpNet>>> {
    let mut by_node = BTreeMap::new();
    let mut all: Vec<(IpNet, String)> = Vec::new();
    for nn in node_networks {
        let name = nn.metadata.name.clone().unwrap_or_default();
        let mut blocks = Vec::new();
        for cidr in &nn.spec.blocks {
            let block = cidr.net().with_context(|| format!("NodeNetwork {name}"))?;
            ensure!(
                pool.contains(&block),
                "NodeNetwork {name} holds {block}, outside the pool {pool}"
            );
            blocks.push(block);
            all.push((block, name.clone()));
        }
        by_node.insert(name, blocks);
    }
    all.sort();
    for pair in all.windows(2) {
        let [(a, na), (b, nb)] = pair else { continue };
        ensure!(
            !(a.contains(&b.network()) || b.contains(&a.network())),
            "NodeNetworks {na} and {nb} hold overlapping blocks {a} and {b}"
        );
    }
    Ok(by_node)
}

/// Creates `nodes`, `concurrency` requests at a time.
pub async fn create_nodes(client: &Client, nodes: Vec<Node>, concurrency: usize) -> Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    futures::stream::iter(nodes)
        .map(|node| {
            let api = api.clone();
            async move {
                let name = node.metadata.name.clone().unwrap_or_default();
                api.create(&PostParams::default(), &node)
                    .await
                    .with_context(|| format!("creating Node {name}"))
            }
        })
        .buffer_unordered(concurrency.max(1))
        .try_for_each(|_| async { Ok(()) })
        .await
}

/// A watch on NodeNetworks that reports each one the first time it is seen with a block.
pub struct BlockWatch {
    events: BoxStream<'static, Result<Event<NodeNetwork>, watcher::Error>>,
    seen: BTreeSet<String>,
}

impl BlockWatch {
    /// Starts watching; returns once the initial list is done, so no later change can be
    /// missed. NodeNetworks that already have a block count as seen.
    pub async fn start(client: &Client) -> Result<Self> {
        let api: Api<NodeNetwork> = Api::all(client.clone());
        let mut this = Self {
            events: watcher(api, watcher::Config::default()).boxed(),
            seen: BTreeSet::new(),
        };
        loop {
            match this
                .events
                .try_next()
                .await
                .context("watching NodeNetworks")?
            {
                Some(Event::InitDone) => return Ok(this),
                Some(Event::InitApply(nn)) => {
                    if !nn.spec.blocks.is_empty() {
                        this.seen.insert(nn.metadata.name.unwrap_or_default());
                    }
                }
                Some(_) => {}
                None => bail!("the NodeNetwork watch ended"),
            }
        }
    }

    /// How many NodeNetworks have been seen with a block.
    pub fn count(&self) -> usize {
        self.seen.len()
    }

    /// Waits at most `timeout` for a NodeNetwork to be seen with a block for the first time:
    /// its name, or `None` when the time ran out.
    pub async fn next(&mut self, timeout: Duration) -> Result<Option<String>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let event = match tokio::time::timeout_at(deadline, self.events.try_next()).await {
                Err(_) => return Ok(None),
                Ok(event) => event.context("watching NodeNetworks")?,
            };
            match event {
                Some(Event::Apply(nn) | Event::InitApply(nn)) if !nn.spec.blocks.is_empty() => {
                    let name = nn.metadata.name.unwrap_or_default();
                    if self.seen.insert(name.clone()) {
                        return Ok(Some(name));
                    }
                }
                Some(_) => {}
                None => bail!("the NodeNetwork watch ended"),
            }
        }
    }
}

/// The documents of `manifest` that are RBAC (and the namespace and service account it
/// names), joined again.
pub fn rbac_documents(manifest: &str) -> String {
    const KINDS: [&str; 6] = [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
    ];
    let mut out = String::new();
    let mut doc = String::new();
    let mut flush = |doc: &mut String| {
        let kind = doc
            .lines()
            .find_map(|l| l.strip_prefix("kind:"))
            .map(str::trim);
        if kind.is_some_and(|k| KINDS.contains(&k)) {
            out.push_str("---\n");
            out.push_str(doc);
        }
        doc.clear();
    };
    for line in manifest.lines() {
        if line.trim_end() == "---" {
            flush(&mut doc);
        } else {
            doc.push_str(line);
            doc.push('\n');
        }
    }
    flush(&mut doc);
    out
}

/// `VmHWM` of a `/proc/<pid>/status`, in bytes.
pub fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
    let mut parts = line.split_whitespace();
    let kib: u64 = parts.next()?.parse().ok()?;
    (parts.next()? == "kB").then_some(kib * 1024)
}

/// utime + stime (clock ticks) of a `/proc/<pid>/stat`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces; the fields after its ')' are fixed.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The path of the executable `name` in cargo's JSON messages.
fn executable_from_cargo(messages: &str, name: &str) -> Option<PathBuf> {
    messages
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == name)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
}

fn kubeconfig_yaml(server: &str, ca: &Path, token: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: ferrite-cp\n  cluster: {{server: \"{server}\", certificate-authority: \"{}\"}}\nusers:\n- name: user\n  user: {{token: \"{token}\"}}\ncontexts:\n- name: ferrite-cp\n  context: {{cluster: ferrite-cp, user: user}}\ncurrent-context: ferrite-cp\n",
        ca.display()
    )
}

async fn client_for(kubeconfig: &Path) -> Result<Client> {
    let config = Config::from_custom_kubeconfig(
        Kubeconfig::read_from(kubeconfig)?,
        &KubeConfigOptions::default(),
    )
    .await?;
    Ok(Client::try_from(config)?)
}

/// `n` distinct free loopback ports (none of the local cluster's).
fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let mut listeners = Vec::new();
    let mut ports = BTreeSet::new();
    while ports.len() < N {
        let l = TcpListener::bind("127.0.0.1:0").context("binding a loopback port")?;
        let port = l.local_addr()?.port();
        if !RESERVED_PORTS.contains(&port) {
            ports.insert(port);
        }
        listeners.push(l);
    }
    let ports: Vec<u16> = ports.into_iter().collect();
    ports
        .try_into()
        .map_err(|_| anyhow::anyhow!("wrong number of ports"))
}

fn random_token() -> Result<String> {
    let mut bytes = [0u8; 16];
    File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn openssl(args: &[&str], dir: &Path) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("openssl is needed for the service-account key (e2e/scripts/install-deps.sh installs it)")?;
    ensure!(
        out.status.success(),
        "openssl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Takes the machine-wide lock of control planes (see the module docs), waiting while
/// another holds it. Released when the file is closed, also when the process dies.
async fn wait_for_turn() -> Result<File> {
    let path = std::env::temp_dir().join("ferrite-controlplane.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    loop {
        match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(file),
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("locking {}", path.display())),
        }
    }
}

/// Kills what control planes of dead test processes left running and removes their files.
/// A process is only killed when its command line or environment names the scratch
/// directory, so a reused PID is never hit.
fn remove_leftovers() {
    let mut dirs = Vec::new();
    for parent in [std::env::temp_dir(), PathBuf::from("/dev/shm")] {
        let Ok(entries) = fs::read_dir(&parent) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(owner) = name
                .strip_prefix(PREFIX)
                .and_then(|r| r.split('-').next())
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if owner != std::process::id() && !Path::new(&format!("/proc/{owner}")).exists() {
                dirs.push((name, e.path()));
            }
        }
    }
    for (tag, path) in &dirs {
        let pids = fs::read_to_string(path.join("pids")).unwrap_or_default();
        for pid in pids.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
            let names_it = ["cmdline", "environ"].iter().any(|f| {
                fs::read(format!("/proc/{pid}/{f}"))
                    .is_ok_and(|b| String::from_utf8_lossy(&b).contains(tag.as_str()))
            });
            if let Some(pid) = Pid::from_raw(pid).filter(|_| names_it) {
                let _ = kill_process(pid, Signal::KILL);
            }
        }
    }
    for (_, path) in dirs {
        let _ = fs::remove_dir_all(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_rbac_documents_of_a_manifest_are_kept() {
        let manifest = "# header\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: ferrite-system\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: x\nspec:\n  image: @IMAGE@\n---\n# a comment\nkind: Role\nmetadata: {name: r}\n---\nkind: RoleBinding\n";
        let rbac = rbac_documents(manifest);
        assert_eq!(
            rbac,
            "---\n# header\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: ferrite-system\n---\n# a comment\nkind: Role\nmetadata: {name: r}\n---\nkind: RoleBinding\n"
        );
    }

    #[test]
    #[ignore = "needs Helm (built by e2e/scripts/build-helm.sh, as make up and make chart-check do)"]
    fn the_chart_grants_the_operator_leases() {
        let dir = std::env::temp_dir().join(format!("ferrite-chart-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let text = fs::read_to_string(chart_manifest(&dir).unwrap()).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        let rbac = rbac_documents(&text);
        assert!(rbac.contains("coordination.k8s.io"), "{rbac}");
        assert!(rbac.contains("kind: Namespace"), "{rbac}");
    }

    fn nn(name: &str, blocks: &[&str]) -> NodeNetwork {
        NodeNetwork::new(
            name,
            ferrite_crds::NodeNetworkSpec {
                blocks: blocks
                    .iter()
                    .map(|b| ferrite_crds::Cidr((*b).into()))
                    .collect(),
                node_ip: ferrite_crds::IpAddress("198.18.0.1".into()),
                tunnel_endpoint: None,
            },
        )
    }

    #[test]
    fn blocks_must_be_distinct_and_inside_the_pool() {
        let pool: IpNet = DEFAULT_POOL.parse().unwrap();
        let ok = [nn("a", &["10.244.0.0/26"]), nn("b", &["10.244.0.64/26"])];
        assert_eq!(distinct_blocks_in(pool, &ok).unwrap().len(), 2);
        let twice = [nn("a", &["10.244.0.0/26"]), nn("b", &["10.244.0.0/26"])];
        let err = distinct_blocks_in(pool, &twice).unwrap_err().to_string();
        assert!(err.contains("a and b hold overlapping"), "{err}");
        let nested = [nn("a", &["10.244.0.0/24"]), nn("b", &["10.244.0.64/26"])];
        assert!(distinct_blocks_in(pool, &nested).is_err());
        let outside = [nn("a", &["10.9.0.0/26"])];
        let err = distinct_blocks_in(pool, &outside).unwrap_err().to_string();
        assert!(err.contains("outside the pool"), "{err}");
    }

    #[test]
    fn peak_memory_is_read_from_vm_hwm_in_bytes() {
        let status =
            "Name:\tferrite-operator\nVmPeak:\t  100 kB\nVmHWM:\t   20480 kB\nVmRSS:\t 1 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(20 * 1024 * 1024));
        assert_eq!(parse_vm_hwm("VmRSS: 1 kB\n"), None);
    }

    #[test]
    fn cpu_time_is_user_plus_system_even_with_spaces_in_the_name() {
        let stat = "42 (tokio rt) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0 1 2 3";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
    }

    #[test]
    fn cargo_reports_where_the_binary_is() {
        let messages = r#"{"reason":"compiler-artifact","target":{"name":"ferrite_operator","kind":["lib"]},"executable":null}
{"reason":"compiler-artifact","target":{"name":"ferrite-operator","kind":["bin"]},"executable":"/t/debug/ferrite-operator"}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            executable_from_cargo(messages, "ferrite-operator"),
            Some(PathBuf::from("/t/debug/ferrite-operator"))
        );
    }
}
