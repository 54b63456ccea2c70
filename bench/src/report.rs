//! The results, the goals they are held against, and their rendering: `docs/benchmarks.md`
//! (the whole file, method notes included, so a re-run regenerates it consistently) and the
//! summary printed to stdout. Pure: no I/O here.

use std::fmt::Write as _;
use std::time::Duration;

use crate::stats::{self, Latency};

/// Goal: Ferrite's ADD p50 at most this fraction of the reference's.
pub const GOAL_ADD_P50: f64 = 0.2;
/// Goal: Ferrite's ADD p99 at most this fraction of the reference's.
pub const GOAL_ADD_P99: f64 = 0.3;
/// Goal: Native pod-to-pod throughput at least this fraction of raw veth.
pub const GOAL_NATIVE: f64 = 0.95;
/// Goal: the operator gives every Node a block, from a cold start, within this long.
pub const GOAL_OPERATOR_SECONDS: f64 = 10.0;
/// Goal: the operator's peak resident memory doing it, in MB (10^6 bytes).
pub const GOAL_OPERATOR_PEAK_MB: f64 = 50.0;

/// The machine the numbers were taken on.
#[derive(Clone, Debug, Default)]
pub struct Machine {
    /// `nproc`.
    pub cpus: String,
    /// `uname -r`.
    pub kernel: String,
    /// When the run started (UTC).
    pub date: String,
    /// CPU model.
    pub cpu_model: String,
    /// `/proc/loadavg` at the start (1, 5, 15 min).
    pub load: String,
    /// The Ferrite commit measured.
    pub commit: String,
    /// The reference plugins' package version.
    pub reference_version: String,
    /// iperf3's version.
    pub iperf3_version: String,
}

/// The 100-concurrent-ADDs check.
#[derive(Clone, Debug, Default)]
pub struct Concurrent {
    /// Plugin processes started at once.
    pub n: usize,
    /// ADDs that failed.
    pub add_failures: usize,
    /// Their distinct messages (a few).
    pub add_errors: Vec<String>,
    /// From the first fork to the last exit.
    pub add_wall: Duration,
    /// Addresses handed to more than one pod.
    pub duplicate_addresses: usize,
    /// DELs that failed.
    pub del_failures: usize,
    /// Their distinct messages (a few).
    pub del_errors: Vec<String>,
    /// From the first fork to the last exit.
    pub del_wall: Duration,
    /// Allocations `/ipam` still lists afterwards.
    pub allocations_after: usize,
    /// Ferrite host veths left in the node namespace afterwards.
    pub leftover_interfaces: usize,
}

/// CNI ADD/DEL latency, Ferrite and the reference.
#[derive(Clone, Debug)]
pub struct LatencyReport {
    /// Counted cycles per plugin.
    pub cycles: usize,
    /// Uncounted cycles per plugin before them.
    pub warmup: usize,
    /// Ferrite ADD.
    pub ferrite_add: Latency,
    /// Ferrite DEL.
    pub ferrite_del: Latency,
    /// Reference ADD.
    pub reference_add: Latency,
    /// Reference DEL.
    pub reference_del: Latency,
    /// Ferrite's plugin answering VERSION (no agent call): the exec floor.
    pub ferrite_version: Latency,
    /// The reference `bridge` answering VERSION.
    pub reference_version: Latency,
    /// Mean time the agent spent serving an ADD in the counted cycles (its own histogram).
    pub agent_add_mean: Option<Duration>,
    /// The same for DEL.
    pub agent_del_mean: Option<Duration>,
    /// Allocations `/ipam` listed after the sequential cycles (should be none).
    pub allocations_after_cycles: usize,
    /// The file system type of the agent's state directory (`tmpfs`).
    pub agent_state_fs: String,
    /// The file system type of host-local's `dataDir` (the scratch directory's).
    pub reference_data_fs: String,
    /// The concurrent check.
    pub concurrent: Concurrent,
    /// The kernel's cost of a veth pair, by queue count.
    pub veth_creation: VethCreation,
}

impl VethCreation {
    /// The medians per pair: (default queues, one transmit queue).
    pub fn medians(&self) -> Option<(Duration, Duration)> {
        Some((
            Latency::of(&self.default_queues)?.p50,
            Latency::of(&self.one_tx_queue)?.p50,
        ))
    }
}

/// The markdown of the veth-creation measurement.
fn veth_creation_section(out: &mut String, v: &VethCreation) {
    let Some((default, one)) = v.medians() else {
        return;
    };
    let runs = |d: &[Duration]| {
        d.iter()
            .map(|d| format!("{:.0}", d.as_secs_f64() * 1e6))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(
        out,
        "### The veth pair\n\n\
         The largest kernel step of an ADD. {} pairs per round made by one `ip -batch` in a fresh \
         namespace, each peer created in a second one (as the agent creates it in the pod's), \
         `up` on the node side; the two kinds alternate for {} rounds. By default the kernel \
         gives each veth end one transmit queue per possible CPU and then, the device already \
         registered, cuts the count used to one, which waits for an RCU grace period; the agent \
         asks for the one transmit queue (`numtxqueues 1` in `ip` terms).\n\n\
         | veth pair, per pair | runs (µs) | median |\n|---|---|---|\n\
         | default queues | {} | {:.0} µs |\n\
         | one transmit queue (Ferrite) | {} | {:.0} µs |\n\n\
         One transmit queue: {:.2}× the default's time.\n",
        v.pairs,
        v.default_queues.len(),
        runs(&v.default_queues),
        default.as_secs_f64() * 1e6,
        runs(&v.one_tx_queue),
        one.as_secs_f64() * 1e6,
        stats::ratio(one, default),
    );
}

/// Veth pairs made with `ip -batch`: per pair, one number per round.
#[derive(Clone, Debug, Default)]
pub struct VethCreation {
    /// Pairs per round.
    pub pairs: usize,
    /// The kernel's default queue counts (one per possible CPU, then cut down to one).
    pub default_queues: Vec<Duration>,
    /// One transmit queue per end, as the agent makes them.
    pub one_tx_queue: Vec<Duration>,
}

/// Pod-to-pod throughput.
#[derive(Clone, Debug, Default)]
pub struct ThroughputReport {
    /// Seconds per iperf3 run.
    pub seconds: u32,
    /// Rounds per mode.
    pub repeats: usize,
    /// MTU of the veth between the nodes.
    pub underlay_mtu: u32,
    /// The pods' MTU in Native mode.
    pub native_pod_mtu: u32,
    /// The pods' MTU in VXLAN mode.
    pub vxlan_pod_mtu: u32,
    /// Native runs, bit/s.
    pub native: Vec<f64>,
    /// The raw veth runs of the same rounds, bit/s.
    pub native_raw: Vec<f64>,
    /// The same rounds through Native's topology built by hand (no CNI), bit/s.
    pub hand_routed: Vec<f64>,
    /// VXLAN runs, bit/s.
    pub vxlan: Vec<f64>,
    /// The raw veth runs of the same rounds, bit/s.
    pub vxlan_raw: Vec<f64>,
    /// Bytes node 1 sent through `ferrite.vxlan` during the VXLAN runs.
    pub vxlan_tunnel_bytes: u64,
}

/// When the operator had given `nodes` Nodes their blocks.
#[derive(Clone, Debug, PartialEq)]
pub struct Milestone {
    /// How many Nodes had a block.
    pub nodes: usize,
    /// Since the operator process was started.
    pub after: Duration,
}

/// The operator at scale.
#[derive(Clone, Debug, Default)]
pub struct OperatorReport {
    /// Nodes.
    pub nodes: usize,
    /// The IPPool's CIDR.
    pub pool: String,
    /// Its block size.
    pub block_size: u8,
    /// The operator's `--concurrency`, when set (`None`: its default).
    pub concurrency: Option<u16>,
    /// The apiserver's version.
    pub kubernetes: String,
    /// Creating the Nodes (set-up, not timed against the goal).
    pub create_nodes: Duration,
    /// From the start to the operator logging that it leads (from its log).
    pub to_leader: Option<Duration>,
    /// From the start to its caches being filled (from its log).
    pub to_caches: Option<Duration>,
    /// The first block, each quarter of the Nodes, the last.
    pub milestones: Vec<Milestone>,
    /// From the start until every Node had a NodeNetwork with a block.
    pub to_all_blocks: Duration,
    /// `VmHWM` once every Node had its block, bytes.
    pub peak_rss_bytes: u64,
    /// The operator's CPU time (user + system) until then.
    pub cpu: Duration,
    /// kube-apiserver's CPU time over the same span.
    pub apiserver_cpu: Duration,
    /// etcd's CPU time over the same span.
    pub etcd_cpu: Duration,
    /// CPUs the machine has.
    pub cpus: usize,
    /// Distinct blocks checked afterwards.
    pub distinct_blocks: usize,
}

impl OperatorReport {
    /// Peak RSS in MB (10^6 bytes).
    pub fn peak_mb(&self) -> f64 {
        self.peak_rss_bytes as f64 / 1e6
    }

    /// The goals.
    pub fn goals(&self) -> Vec<Goal> {
        let secs = self.to_all_blocks.as_secs_f64();
        vec![
            Goal {
                what: format!(
                    "{} Nodes get their blocks within {GOAL_OPERATOR_SECONDS} s",
                    self.nodes
                ),
                measured: format!("{secs:.2} s"),
                met: secs <= GOAL_OPERATOR_SECONDS,
            },
            Goal {
                what: format!("operator peak memory ≤ {GOAL_OPERATOR_PEAK_MB} MB"),
                measured: format!("{:.1} MB", self.peak_mb()),
                met: self.peak_mb() <= GOAL_OPERATOR_PEAK_MB,
            },
            Goal {
                what: "every block distinct and inside the pool".into(),
                measured: format!("{} of {}", self.distinct_blocks, self.nodes),
                met: self.distinct_blocks == self.nodes,
            },
        ]
    }
}

/// Seconds with two decimals.
pub fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// A goal and whether the run met it.
#[derive(Clone, Debug, PartialEq)]
pub struct Goal {
    /// The goal.
    pub what: String,
    /// What was measured.
    pub measured: String,
    /// Met?
    pub met: bool,
}

/// One benchmark's outcome: skipped (`None`), failed (the error) or its numbers.
pub type Section<T> = Option<Result<T, String>>;

/// Everything one run produced.
#[derive(Clone, Debug)]
pub struct Report {
    /// The machine.
    pub machine: Machine,
    /// Benchmark 1.
    pub latency: Section<LatencyReport>,
    /// Benchmark 2.
    pub throughput: Section<ThroughputReport>,
    /// Benchmark 3.
    pub operator: Section<OperatorReport>,
}

/// Milliseconds with two decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// A ratio such as `0.12×`.
pub fn times(r: f64) -> String {
    format!("{r:.2}×")
}

/// Gbit/s with two decimals.
pub fn gbit(bps: f64) -> String {
    format!("{:.2}", bps / 1e9)
}

/// A ratio judged against a goal: three decimals, so that the rounding never hides why a
/// goal was (not) met.
fn exact(r: f64) -> String {
    format!("{r:.3}×")
}

fn met(m: bool) -> &'static str {
    if m { "**met**" } else { "**not met**" }
}

impl LatencyReport {
    /// Ferrite / reference, ADD p50.
    pub fn add_p50_ratio(&self) -> f64 {
        stats::ratio(self.ferrite_add.p50, self.reference_add.p50)
    }

    /// Ferrite / reference, ADD p99.
    pub fn add_p99_ratio(&self) -> f64 {
        stats::ratio(self.ferrite_add.p99, self.reference_add.p99)
    }

    /// The goals.
    pub fn goals(&self) -> Vec<Goal> {
        let c = &self.concurrent;
        vec![
            Goal {
                what: format!("ADD p50 ≤ {GOAL_ADD_P50}× reference"),
                measured: exact(self.add_p50_ratio()),
                met: self.add_p50_ratio() <= GOAL_ADD_P50,
            },
            Goal {
                what: format!("ADD p99 ≤ {GOAL_ADD_P99}× reference"),
                measured: exact(self.add_p99_ratio()),
                met: self.add_p99_ratio() <= GOAL_ADD_P99,
            },
            Goal {
                what: format!("{} concurrent ADDs: 0 failures", c.n),
                measured: format!("{} failed", c.add_failures),
                met: c.add_failures == 0,
            },
            Goal {
                what: "after all DELs: `/ipam` empty".into(),
                measured: format!("{} allocations", c.allocations_after),
                met: c.allocations_after == 0,
            },
        ]
    }
}

impl ThroughputReport {
    /// Per mode: name, its runs, the raw runs of the same rounds.
    pub fn modes(&self) -> [(&'static str, &[f64], &[f64]); 2] {
        [
            ("Native", &self.native, &self.native_raw),
            ("VXLAN", &self.vxlan, &self.vxlan_raw),
        ]
    }

    /// Median of the Native runs over the median of the hand-routed runs of the same rounds.
    pub fn native_vs_hand_routed(&self) -> f64 {
        ratio_of_medians(&self.native, &self.hand_routed)
    }

    /// Median of the Native runs over the median of the raw runs of the same rounds.
    pub fn native_ratio(&self) -> f64 {
        ratio_of_medians(&self.native, &self.native_raw)
    }

    /// The goals.
    pub fn goals(&self) -> Vec<Goal> {
        let r = self.native_ratio();
        vec![Goal {
            what: format!("Native ≥ {GOAL_NATIVE}× raw"),
            measured: exact(r),
            met: r >= GOAL_NATIVE,
        }]
    }
}

/// `median(a) / median(b)`; NaN when either is empty.
pub fn ratio_of_medians(a: &[f64], b: &[f64]) -> f64 {
    match (stats::median(a), stats::median(b)) {
        (Some(a), Some(b)) => a / b,
        _ => f64::NAN,
    }
}

/// The summary's goal lines, the goal's name padded to `width`.
fn goal_lines(out: &mut String, goals: &[Goal], width: usize) {
    for g in goals {
        let _ = writeln!(
            out,
            "  goal {:<width$} {:>10}  {}",
            g.what,
            g.measured,
            met(g.met).trim_matches('*')
        );
    }
}

fn goals_table(out: &mut String, goals: &[Goal]) {
    out.push_str("| goal | measured | |\n|---|---|---|\n");
    for g in goals {
        let _ = writeln!(out, "| {} | {} | {} |", g.what, g.measured, met(g.met));
    }
}

/// `docs/benchmarks.md`.
pub fn markdown(r: &Report) -> String {
    let m = &r.machine;
    let mut out = String::new();
    out.push_str("# Benchmarks\n\n");
    out.push_str(
        "<!-- Generated by `make bench` (bench/, crate ferrite-bench). Do not edit by hand: the text \
         lives in bench/src/report.rs, the numbers come from the run. -->\n\n",
    );
    out.push_str(
        "Ferrite side by side with the reference CNI plugins (`bridge` + `host-local`) and with raw \
         veth, on one machine, in one run. Everything runs in network namespaces the benchmark \
         creates (`feb-<pid>-...`) and removes; the host's own network namespace is not touched. \
         Real binaries throughout: the release builds of `ferrite-agent` and of the `ferrite` \
         plugin (linked statically, as the agent image ships it), \
         Debian's reference plugins, iperf3. Benchmark 3 times the release build of \
         `ferrite-operator` against a private etcd and kube-apiserver on loopback.\n\n",
    );
    out.push_str("Reproduce (as root): `make bench`, which runs\n\n```sh\n");
    out.push_str(
        "cargo build --release --locked -p ferrite-agent -p ferrite-operator\n\
         scripts/build-plugin.sh   # the plugin, static, as the agent image ships it\n",
    );
    out.push_str(
        "cargo run --release --locked -p ferrite-bench -- --out docs/benchmarks.md\n```\n\n",
    );
    out.push_str(
        "Prerequisites: iproute2, iperf3 (`e2e/scripts/install-deps.sh` installs it), the reference \
         plugins in `/usr/lib/cni` (Debian `containernetworking-plugins`); for benchmark 3 the \
         Kubernetes binaries `make up` builds (`e2e/scripts/build-k8s.sh`). \
         `cargo run -p ferrite-bench -- --help` lists the knobs (cycles, concurrency, run length, \
         `--only`).\n\n",
    );
    out.push_str("## Machine\n\n| | |\n|---|---|\n");
    for (k, v) in [
        ("date (UTC)", &m.date),
        ("CPUs (`nproc`)", &m.cpus),
        ("CPU", &m.cpu_model),
        ("kernel (`uname -r`)", &m.kernel),
        ("load average at the start (1/5/15 min)", &m.load),
        ("Ferrite commit", &m.commit),
        ("reference plugins", &m.reference_version),
        ("iperf3", &m.iperf3_version),
    ] {
        let _ = writeln!(out, "| {k} | {v} |");
    }
    out.push_str(
        "\nA small shared VM: numbers move by ±20–30 % between runs (more when other work runs at \
         the same time; see the load average). Compare the two sides of one run, not runs.\n\n",
    );
    latency_section(&mut out, &r.latency);
    throughput_section(&mut out, &r.throughput);
    operator_section(&mut out, &r.operator);
    out
}

fn latency_section(out: &mut String, section: &Section<LatencyReport>) {
    out.push_str("## 1. CNI ADD and DEL latency\n\n");
    out.push_str(
        "**Method.** Both plugins are run the way a runtime runs them, and identically: the \
         benchmark forks/execs the plugin binary itself, from a thread that has entered the \
         node's network namespace (`setns`), as containerd on a node does — no wrapper process \
         (`ip netns exec` would add the same milliseconds of mount-namespace set-up to both and \
         blur the comparison). The environment is cleared and set alike for both: `PATH`, \
         `CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS=/run/netns/<sandbox>`, `CNI_IFNAME=eth0`, \
         `CNI_PATH=<ferrite bin dir>:/usr/lib/cni`, `CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=…;K8S_POD_NAME=…`; \
         the network configuration comes on stdin. A sample is the time from just before the \
         fork to the plugin's exit with its output read — what the runtime waits for.\n\n",
    );
    out.push_str(
        "* **Ferrite**: `ferrite-agent` runs in its node namespace (`ip netns exec`, static \
         `--config`: Native routing, one /24 block, no peers, no masquerading) and is ready \
         (`/readyz` 200) before the first sample. Its IPAM state (`--state-dir`) is on a tmpfs \
         (`/dev/shm/feb-<pid>/…`), as on a node, where the agent keeps it in `/run/ferrite` \
         (a tmpfs on a standard node; `docs/pod-networking.md` says why the state need not \
         outlive the boot). The plugin gets \
         `{\"cniVersion\":\"1.0.0\",\"name\":\"ferrite\",\"type\":\"ferrite\",\"agentSocket\":…,\"spoolDir\":…}`.\n\
         * **Reference**: `/usr/lib/cni/bridge` with `host-local` IPAM, `isGateway: true`, \
         `ipMasq: false`, its own bridge in its own node namespace, host-local's `dataDir` in the \
         run's scratch directory (its default, `/var/lib/cni/networks`, is on disk) (the \"direct \
         exec\" reference of the project's research notes).\n\
         * Pod sandboxes (network namespaces) are created before the timed loop, one per cycle and \
         plugin, as a runtime creates them before calling CNI. Each cycle is ADD then DEL with a \
         fresh container ID, for Ferrite and for the reference, alternating which goes first. \
         The first cycles (warm-up, counted below) are not counted. Percentiles by nearest rank.\n\n",
    );
    let l = match section {
        None => {
            out.push_str("_Not run this time (`--only`)._\n\n");
            return;
        }
        Some(Err(e)) => {
            let _ = writeln!(out, "**The benchmark failed:** {}\n", one_line(e));
            return;
        }
        Some(Ok(l)) => l,
    };
    let _ = writeln!(
        out,
        "{} counted cycles per plugin after {} warm-up cycles. File systems: the agent's \
         state on {}, host-local's `dataDir` on {}.\n",
        l.cycles, l.warmup, l.agent_state_fs, l.reference_data_fs
    );
    out.push_str("| | ADD p50 | ADD p99 | DEL p50 | DEL p99 |\n|---|---|---|---|---|\n");
    for (name, add, del) in [
        ("Ferrite", &l.ferrite_add, &l.ferrite_del),
        (
            "reference (bridge + host-local)",
            &l.reference_add,
            &l.reference_del,
        ),
    ] {
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} | {} |",
            ms(add.p50),
            ms(add.p99),
            ms(del.p50),
            ms(del.p99)
        );
    }
    let _ = writeln!(
        out,
        "| Ferrite / reference | {} | {} | {} | {} |\n",
        times(l.add_p50_ratio()),
        times(l.add_p99_ratio()),
        times(stats::ratio(l.ferrite_del.p50, l.reference_del.p50)),
        times(stats::ratio(l.ferrite_del.p99, l.reference_del.p99)),
    );
    let _ = writeln!(
        out,
        "Range (min–max): Ferrite ADD {}–{}, DEL {}–{}; reference ADD {}–{}, DEL {}–{}. \
         `/ipam` after the cycles: {} allocations.\n",
        ms(l.ferrite_add.min),
        ms(l.ferrite_add.max),
        ms(l.ferrite_del.min),
        ms(l.ferrite_del.max),
        ms(l.reference_add.min),
        ms(l.reference_add.max),
        ms(l.reference_del.min),
        ms(l.reference_del.max),
        l.allocations_after_cycles,
    );
    out.push_str(
        "Where the time goes: the exec floor is each binary answering `VERSION` (fork, exec, \
         start-up, reading stdin, printing — no work); the agent's own time is what its \
         `ferrite_agent_cni_request_duration_seconds` histogram (`/metrics`) recorded for the \
         counted cycles, from reading the request to having the answer.\n\n",
    );
    out.push_str("| | Ferrite | reference |\n|---|---|---|\n");
    let _ = writeln!(
        out,
        "| exec floor: VERSION p50 | {} | {} |",
        ms(l.ferrite_version.p50),
        ms(l.reference_version.p50)
    );
    let opt = |d: Option<Duration>| d.map_or_else(|| "—".to_owned(), ms);
    let _ = writeln!(
        out,
        "| ADD p50 / agent's own time per ADD (mean) | {} / {} | {} / — |",
        ms(l.ferrite_add.p50),
        opt(l.agent_add_mean),
        ms(l.reference_add.p50)
    );
    let _ = writeln!(
        out,
        "| DEL p50 / agent's own time per DEL (mean) | {} / {} | {} / — |\n",
        ms(l.ferrite_del.p50),
        opt(l.agent_del_mean),
        ms(l.reference_del.p50)
    );
    veth_creation_section(out, &l.veth_creation);
    let c = &l.concurrent;
    let _ = writeln!(out, "### {} concurrent ADDs\n", c.n);
    let _ = writeln!(
        out,
        "{} sandboxes; {} Ferrite plugin processes forked back to back (the wall time includes \
         forking them) and all waited for; then {} DELs the same way. Afterwards the agent's \
         `/ipam` (on its health address) must list no allocation, and no Ferrite host veth may \
         remain in the node namespace.\n",
        c.n, c.n, c.n
    );
    out.push_str("| | |\n|---|---|\n");
    let _ = writeln!(out, "| ADD wall time | {} |", ms(c.add_wall));
    let _ = writeln!(
        out,
        "| ADD failures | {}{} |",
        c.add_failures,
        errors(&c.add_errors)
    );
    let _ = writeln!(
        out,
        "| addresses handed out twice | {} |",
        c.duplicate_addresses
    );
    let _ = writeln!(out, "| DEL wall time | {} |", ms(c.del_wall));
    let _ = writeln!(
        out,
        "| DEL failures | {}{} |",
        c.del_failures,
        errors(&c.del_errors)
    );
    let _ = writeln!(
        out,
        "| allocations in `/ipam` afterwards | {} |",
        c.allocations_after
    );
    let _ = writeln!(
        out,
        "| Ferrite host veths left | {} |\n",
        c.leftover_interfaces
    );
    out.push_str("### Goals\n\n");
    goals_table(out, &l.goals());
    let budget = l.reference_add.p50.mul_f64(GOAL_ADD_P50);
    let _ = writeln!(
        out,
        "\nThe ADD p50 goal allows Ferrite {} in this run ({GOAL_ADD_P50}× the reference's {}); \
         the plugin's exec floor alone takes {} of it, leaving {} for the round trip to the \
         agent and the agent's work.\n",
        ms(budget),
        ms(l.reference_add.p50),
        ms(l.ferrite_version.p50),
        ms(budget.saturating_sub(l.ferrite_version.p50)),
    );
}

fn errors(list: &[String]) -> String {
    if list.is_empty() {
        String::new()
    } else {
        let quoted: Vec<String> = list.iter().map(|e| format!("`{}`", one_line(e))).collect();
        format!(" ({})", quoted.join("; "))
    }
}

/// A message fit for a table cell: one line, no pipes.
fn one_line(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
        .replace('`', "'")
}

fn throughput_section(out: &mut String, section: &Section<ThroughputReport>) {
    out.push_str("## 2. Cross-node pod-to-pod TCP throughput\n\n");
    out.push_str(
        "**Method.** Two node namespaces joined by a veth pair (MTU below; the common Ethernet \
         MTU — the machine's own uplink is not involved). iperf3, one TCP stream, `-J`; the \
         number is the receiver's rate (`end.sum_received.bits_per_second`). Client and server \
         are started with `ip netns exec`.\n\n\
         * **raw**: node to node over the veth, in a second pair of node namespaces without \
         agents (so nothing Ferrite installs — routes, its nftables table — touches the baseline).\n\
         * **Native**: one `ferrite-agent` per node (static configurations listing each other as \
         peers, blocks 10.210.1.0/26 and 10.210.2.0/26, routing Native), one pod per node \
         created through the `ferrite` plugin; client in pod 1, server in pod 2. The path crosses \
         three veth pairs (pod 1 → node 1 → node 2 → pod 2) and is routed in both nodes, where \
         raw crosses one veth pair.\n\
         * **VXLAN**: the same agents after both configuration files were rewritten to \
         `{\"mode\":\"VXLAN\",\"vni\":1,\"port\":8472}`; the run waits until `ferrite.vxlan` \
         exists in both nodes, then re-creates the pods (so they get the tunnel's MTU) and checks \
         afterwards that the traffic went through the tunnel.\n\
         * **hand-routed**: Native's topology made by hand, without Ferrite (below the table).\n\
         * The runs alternate: each round is one raw run and one run of the mode under test \
         (for Native also one hand-routed run), in an order that rotates from round to round, so \
         drift of a shared machine hits both alike, and each mode is compared with the raw runs \
         of its own rounds: ratio = median of the mode's runs / median of those raw runs. \
         iperf3's client and server each keep a CPU busy: on a 2-CPU machine the numbers are \
         CPU-bound.\n\n",
    );
    let t = match section {
        None => {
            out.push_str("_Not run this time (`--only`)._\n\n");
            return;
        }
        Some(Err(e)) => {
            let _ = writeln!(out, "**The benchmark failed:** {}\n", one_line(e));
            return;
        }
        Some(Ok(t)) => t,
    };
    let _ = writeln!(
        out,
        "{} s per run, {} rounds per mode. Veth MTU {}; pod MTU {} (Native), {} (VXLAN). \
         Node 1 sent {:.1} GB through `ferrite.vxlan` during the VXLAN runs.\n",
        t.seconds,
        t.repeats,
        t.underlay_mtu,
        t.native_pod_mtu,
        t.vxlan_pod_mtu,
        t.vxlan_tunnel_bytes as f64 / 1e9
    );
    out.push_str(
        "| pod ↔ pod | runs (Gbit/s) | median | raw veth runs, same rounds | raw median | ratio |\n\
         |---|---|---|---|---|---|\n",
    );
    let list = |runs: &[f64]| runs.iter().map(|b| gbit(*b)).collect::<Vec<_>>().join(", ");
    let med = |runs: &[f64]| stats::median(runs).map_or_else(|| "—".to_owned(), gbit);
    for (name, runs, raw) in t.modes() {
        let _ = writeln!(
            out,
            "| Ferrite {name} | {} | {} | {} | {} | {} |",
            list(runs),
            med(runs),
            list(raw),
            med(raw),
            times(ratio_of_medians(runs, raw))
        );
    }
    let _ = writeln!(
        out,
        "| hand-routed veth, no CNI (Native's rounds) | {} | {} | {} | {} | {} |",
        list(&t.hand_routed),
        med(&t.hand_routed),
        list(&t.native_raw),
        med(&t.native_raw),
        times(ratio_of_medians(&t.hand_routed, &t.native_raw))
    );
    let _ = writeln!(
        out,
        "\nThe hand-routed row is Native's topology made with `ip` alone, in a third pair of \
         node namespaces: the same three veth pairs (one transmit queue per end), `/32` routes, \
         forwarding in both nodes and the pods' permanent gateway neighbour, but no agent, no \
         CNI and no nftables table (so no connection tracking). It shows what the topology \
         itself costs against raw veth, apart from anything Ferrite adds: Ferrite Native / \
         hand-routed = {}.",
        times(t.native_vs_hand_routed())
    );
    out.push_str("\n### Goals\n\n");
    goals_table(out, &t.goals());
    out.push_str("\nVXLAN has no goal here; its ratio is for information.\n\n");
}

fn operator_section(out: &mut String, section: &Section<OperatorReport>) {
    out.push_str("## 3. The operator: 1,000 Nodes from a cold start\n\n");
    out.push_str(
        "**Method.** A private etcd (data in `/dev/shm`, no fsync) and kube-apiserver on \
         loopback, from the binaries `make up` builds (`ferrite_e2e::controlplane`): no \
         kubelets, the Nodes are API objects shaped like what a kubelet registers (labels, \
         InternalIP and Hostname addresses, capacity, four conditions, node info, ten images: \
         about 4 kB each as JSON), so the operator caches what it would cache in a real \
         cluster. First the IPPool `default` and the ClusterNetwork `default` of \
         the Helm chart and all the Nodes are created, and one NodeNetwork is written \
         and deleted the way the operator writes them (a warm-up: a freshly started apiserver \
         stalled its first such create by 2 s, which a long-running one does not); then a \
         watch on NodeNetworks is established, and the release build of `ferrite-operator` is \
         started cold (leader \
         election on, as its service account with the RBAC of the Helm chart). The \
         clock runs from starting the process until the watch has seen every Node's \
         NodeNetwork with a block; it includes taking the Lease and filling the caches. Peak \
         memory is the process's `VmHWM` (`/proc/<pid>/status`) at that moment, CPU time its \
         user + system time. Afterwards every NodeNetwork is listed and every block checked to \
         be distinct and inside the pool. The apiserver and etcd run on the same two CPUs.\n\n",
    );
    out.push_str(
        "Reproduce this section alone (no root needed; prints the summary, writes nothing): \
         `cargo build --release --locked -p ferrite-operator && cargo run --release --locked \
         -p ferrite-bench -- --only operator`.\n\n",
    );
    let o = match section {
        None => {
            out.push_str("_Not run this time (`--only`)._\n");
            return;
        }
        Some(Err(e)) => {
            let _ = writeln!(out, "**The benchmark failed:** {}", one_line(e));
            return;
        }
        Some(Ok(o)) => o,
    };
    let concurrency = o
        .concurrency
        .map_or_else(|| "its default".to_owned(), |c| c.to_string());
    let _ = writeln!(
        out,
        "{} Nodes, IPPool {} in /{} blocks, Kubernetes {}, the operator's `--concurrency` {}. \
         Creating the Nodes took {} (set-up, not counted).\n",
        o.nodes,
        o.pool,
        o.block_size,
        o.kubernetes,
        concurrency,
        secs(o.create_nodes)
    );
    out.push_str("| since the operator started | |\n|---|---|\n");
    let opt = |d: Option<Duration>| d.map_or_else(|| "—".to_owned(), secs);
    let _ = writeln!(out, "| it leads (took the Lease) | {} |", opt(o.to_leader));
    let _ = writeln!(
        out,
        "| its caches are filled, reconciling starts | {} |",
        opt(o.to_caches)
    );
    for m in &o.milestones {
        let nodes = if m.nodes == 1 {
            "the first Node has".to_owned()
        } else {
            format!("{} Nodes have", m.nodes)
        };
        let _ = writeln!(out, "| {nodes} a block | {} |", secs(m.after));
    }
    let _ = writeln!(
        out,
        "| the operator's peak memory (VmHWM) | {:.1} MB |\n",
        o.peak_mb()
    );
    let _ = writeln!(
        out,
        "Where the time goes: CPU time (user + system) over the {} the operator took — the \
         operator {}, kube-apiserver {}, etcd {}, out of {:.2} s that {} CPUs offer, which \
         other work on the machine shares (see the load average).\n",
        secs(o.to_all_blocks),
        secs(o.cpu),
        secs(o.apiserver_cpu),
        secs(o.etcd_cpu),
        o.cpus as f64 * o.to_all_blocks.as_secs_f64(),
        o.cpus,
    );
    out.push_str("### Goals\n\n");
    goals_table(out, &o.goals());
}

/// The summary printed at the end of a run.
pub fn summary(r: &Report) -> String {
    let mut out = String::new();
    out.push_str("\n== ferrite-bench summary ==\n");
    let _ = writeln!(
        out,
        "machine: {} CPUs, kernel {}, load {} — {}",
        r.machine.cpus, r.machine.kernel, r.machine.load, r.machine.date
    );
    match &r.latency {
        None => out.push_str("\nCNI latency: skipped\n"),
        Some(Err(e)) => {
            let _ = writeln!(out, "\nCNI latency: FAILED: {e}");
        }
        Some(Ok(l)) => {
            let _ = writeln!(
                out,
                "\nCNI latency ({} cycles)      ADD p50     ADD p99     DEL p50     DEL p99",
                l.cycles
            );
            for (name, add, del) in [
                ("Ferrite", &l.ferrite_add, &l.ferrite_del),
                ("reference", &l.reference_add, &l.reference_del),
            ] {
                let _ = writeln!(
                    out,
                    "  {name:<24} {:>11} {:>11} {:>11} {:>11}",
                    ms(add.p50),
                    ms(add.p99),
                    ms(del.p50),
                    ms(del.p99)
                );
            }
            let _ = writeln!(
                out,
                "  {:<24} {:>11} {:>11} {:>11} {:>11}",
                "Ferrite / reference",
                times(l.add_p50_ratio()),
                times(l.add_p99_ratio()),
                times(stats::ratio(l.ferrite_del.p50, l.reference_del.p50)),
                times(stats::ratio(l.ferrite_del.p99, l.reference_del.p99)),
            );
            let opt = |d: Option<Duration>| d.map_or_else(|| "—".to_owned(), ms);
            let _ = writeln!(
                out,
                "  exec floor (VERSION p50): Ferrite {}, reference {}; agent's own time per ADD {}, per DEL {} (mean)",
                ms(l.ferrite_version.p50),
                ms(l.reference_version.p50),
                opt(l.agent_add_mean),
                opt(l.agent_del_mean)
            );
            let c = &l.concurrent;
            let _ = writeln!(
                out,
                "  {} concurrent ADDs: {} failed, {}; DELs: {} failed, {}; /ipam afterwards: {} allocations, {} veths left",
                c.n,
                c.add_failures,
                ms(c.add_wall),
                c.del_failures,
                ms(c.del_wall),
                c.allocations_after,
                c.leftover_interfaces
            );
            if let Some((default, one)) = l.veth_creation.medians() {
                let _ = writeln!(
                    out,
                    "  veth pair, kernel only (ip -batch, median per pair): default queues {:.0} µs, one transmit queue {:.0} µs",
                    default.as_secs_f64() * 1e6,
                    one.as_secs_f64() * 1e6,
                );
            }
            goal_lines(&mut out, &l.goals(), 36);
        }
    }
    match &r.throughput {
        None => out.push_str("\nthroughput: skipped\n"),
        Some(Err(e)) => {
            let _ = writeln!(out, "\nthroughput: FAILED: {e}");
        }
        Some(Ok(t)) => {
            let _ = writeln!(
                out,
                "\nthroughput ({} s, median of {})   Gbit/s   raw, same rounds   ratio",
                t.seconds, t.repeats
            );
            for (name, runs, raw) in t.modes() {
                let med = |r: &[f64]| stats::median(r).unwrap_or(f64::NAN);
                let _ = writeln!(
                    out,
                    "  Ferrite {name:<20} {:>8} {:>18} {:>7}",
                    gbit(med(runs)),
                    gbit(med(raw)),
                    times(ratio_of_medians(runs, raw))
                );
            }
            let _ = writeln!(
                out,
                "  hand-routed, no CNI {:>17} {:>18} {:>7}   (Native / hand-routed {})",
                gbit(stats::median(&t.hand_routed).unwrap_or(f64::NAN)),
                gbit(stats::median(&t.native_raw).unwrap_or(f64::NAN)),
                times(ratio_of_medians(&t.hand_routed, &t.native_raw)),
                times(t.native_vs_hand_routed())
            );
            goal_lines(&mut out, &t.goals(), 36);
        }
    }
    match &r.operator {
        None => out.push_str("\noperator: skipped\n"),
        Some(Err(e)) => {
            let _ = writeln!(out, "\noperator: FAILED: {e}");
        }
        Some(Ok(o)) => {
            let _ = writeln!(
                out,
                "\noperator ({} Nodes, cold start): all blocks after {}, peak {:.1} MB, CPU {}",
                o.nodes,
                secs(o.to_all_blocks),
                o.peak_mb(),
                secs(o.cpu)
            );
            goal_lines(&mut out, &o.goals(), 44);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lat(p50_ms: u64, p99_ms: u64) -> Latency {
        let ms = Duration::from_millis;
        Latency {
            n: 100,
            p50: ms(p50_ms),
            p99: ms(p99_ms),
            min: ms(p50_ms / 2),
            max: ms(p99_ms + 1),
        }
    }

    fn report() -> Report {
        Report {
            machine: Machine {
                cpus: "2".into(),
                kernel: "6.18.44".into(),
                date: "2026-11-22 17:00".into(),
                cpu_model: "AMD EPYC".into(),
                load: "0.10 0.20 0.30".into(),
                commit: "abc1234".into(),
                reference_version: "containernetworking-plugins 1.1.1".into(),
                iperf3_version: "3.12".into(),
            },
            latency: Some(Ok(LatencyReport {
                cycles: 100,
                warmup: 3,
                ferrite_add: lat(1, 2),
                ferrite_del: lat(1, 3),
                reference_add: lat(8, 10),
                reference_del: lat(18, 24),
                ferrite_version: lat(1, 1),
                reference_version: lat(4, 5),
                agent_add_mean: Some(Duration::from_micros(600)),
                agent_del_mean: None,
                allocations_after_cycles: 0,
                agent_state_fs: "tmpfs".into(),
                reference_data_fs: "ext4".into(),
                concurrent: Concurrent {
                    n: 100,
                    add_failures: 2,
                    add_errors: vec!["CNI error 11: try | again".into()],
                    add_wall: Duration::from_millis(900),
                    del_wall: Duration::from_millis(700),
                    ..Concurrent::default()
                },
                veth_creation: VethCreation {
                    pairs: 100,
                    default_queues: [500, 450, 520].map(Duration::from_micros).to_vec(),
                    one_tx_queue: [360, 400, 350].map(Duration::from_micros).to_vec(),
                },
            })),
            throughput: Some(Ok(ThroughputReport {
                seconds: 5,
                repeats: 3,
                underlay_mtu: 1500,
                native_pod_mtu: 1500,
                vxlan_pod_mtu: 1450,
                native: vec![19e9, 20e9, 21e9],
                native_raw: vec![20e9, 22e9, 21e9],
                hand_routed: vec![19e9, 21e9, 22e9],
                vxlan: vec![14e9, 13e9, 15e9],
                vxlan_raw: vec![10e9, 30e9, 20e9],
                vxlan_tunnel_bytes: 5_000_000_000,
            })),
            operator: Some(Ok(OperatorReport {
                nodes: 1000,
                pool: "10.244.0.0/16".into(),
                block_size: 26,
                concurrency: None,
                kubernetes: "v1.34.10".into(),
                create_nodes: Duration::from_secs(4),
                to_leader: Some(Duration::from_millis(40)),
                to_caches: Some(Duration::from_millis(300)),
                milestones: vec![
                    Milestone {
                        nodes: 1,
                        after: Duration::from_millis(350),
                    },
                    Milestone {
                        nodes: 1000,
                        after: Duration::from_millis(10_200),
                    },
                ],
                to_all_blocks: Duration::from_millis(10_200),
                peak_rss_bytes: 21_300_000,
                cpu: Duration::from_millis(2500),
                apiserver_cpu: Duration::from_millis(9000),
                etcd_cpu: Duration::from_millis(1500),
                cpus: 2,
                distinct_blocks: 1000,
            })),
        }
    }

    #[test]
    fn operator_goals_are_the_time_the_memory_and_distinct_blocks() {
        let r = report();
        let Some(Ok(o)) = &r.operator else { panic!() };
        let goals = o.goals();
        assert_eq!(
            goals.iter().map(|g| g.met).collect::<Vec<_>>(),
            [false, true, true]
        );
        assert_eq!(goals[0].measured, "10.20 s");
        assert_eq!(goals[1].measured, "21.3 MB");
        let md = markdown(&r);
        assert!(
            md.contains("## 3. The operator: 1,000 Nodes from a cold start"),
            "{md}"
        );
        assert!(
            md.contains("| 1000 Nodes get their blocks within 10 s | 10.20 s | **not met** |"),
            "{md}"
        );
        assert!(
            md.contains("| it leads (took the Lease) | 0.04 s |"),
            "{md}"
        );
        assert!(md.contains("| 1000 Nodes have a block | 10.20 s |"), "{md}");
        assert!(
            md.contains("| the first Node has a block | 0.35 s |"),
            "{md}"
        );
        assert!(
            md.contains("the operator 2.50 s, kube-apiserver 9.00 s, etcd 1.50 s, out of 20.40 s that 2 CPUs"),
            "{md}"
        );
        assert!(md.contains("--only operator"), "{md}");
        let s = summary(&r);
        assert!(s.contains("all blocks after 10.20 s, peak 21.3 MB"), "{s}");
    }

    #[test]
    fn goals_are_judged_on_the_ratios() {
        let r = report();
        let Some(Ok(l)) = &r.latency else { panic!() };
        let goals = l.goals();
        // 1/8 = 0.125 ≤ 0.2; 2/10 = 0.2 ≤ 0.3; 2 failures; 0 allocations.
        assert_eq!(
            goals.iter().map(|g| g.met).collect::<Vec<_>>(),
            [true, true, false, true]
        );
        assert_eq!(goals[0].measured, "0.125×");
        let Some(Ok(t)) = &r.throughput else { panic!() };
        // 20 / 21 = 0.952 ≥ 0.95.
        assert!(t.goals()[0].met);
        assert_eq!(t.goals()[0].measured, "0.952×");
    }

    #[test]
    fn markdown_has_every_table_and_verdict() {
        let md = markdown(&report());
        assert!(md.starts_with("# Benchmarks\n"));
        assert!(md.contains("make bench"));
        assert!(md.contains("| CPUs (`nproc`) | 2 |"));
        assert!(md.contains("| kernel (`uname -r`) | 6.18.44 |"));
        assert!(
            md.contains("| Ferrite | 1.00 ms | 2.00 ms | 1.00 ms | 3.00 ms |"),
            "{md}"
        );
        assert!(
            md.contains("| Ferrite / reference | 0.12× | 0.20× | 0.06× | 0.12× |"),
            "{md}"
        );
        assert!(
            md.contains("| ADD p50 ≤ 0.2× reference | 0.125× | **met** |"),
            "{md}"
        );
        assert!(
            md.contains("| 100 concurrent ADDs: 0 failures | 2 failed | **not met** |"),
            "{md}"
        );
        assert!(
            md.contains("| exec floor: VERSION p50 | 1.00 ms | 4.00 ms |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| ADD p50 / agent's own time per ADD (mean) | 1.00 ms / 0.60 ms | 8.00 ms / — |"
            ),
            "{md}"
        );
        assert!(
            md.contains("allows Ferrite 1.60 ms in this run (0.2× the reference's 8.00 ms); the plugin's exec floor alone takes 1.00 ms of it, leaving 0.60 ms"),
            "{md}"
        );
        assert!(
            md.contains("| default queues | 500, 450, 520 | 500 µs |")
                && md.contains("| one transmit queue (Ferrite) | 360, 400, 350 | 360 µs |")
                && md.contains("One transmit queue: 0.72× the default's time."),
            "{md}"
        );
        // An error message cannot break the table.
        assert!(md.contains("`CNI error 11: try \\| again`"), "{md}");
        assert!(
            md.contains(
                "| Ferrite Native | 19.00, 20.00, 21.00 | 20.00 | 20.00, 22.00, 21.00 | 21.00 | 0.95× |"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "| Ferrite VXLAN | 14.00, 13.00, 15.00 | 14.00 | 10.00, 30.00, 20.00 | 20.00 | 0.70× |"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "| hand-routed veth, no CNI (Native's rounds) | 19.00, 21.00, 22.00 | 21.00 | 20.00, 22.00, 21.00 | 21.00 | 1.00× |"
            ) && md.contains("Ferrite Native / hand-routed = 0.95×."),
            "{md}"
        );
        assert!(
            md.contains("| Native ≥ 0.95× raw | 0.952× | **met** |"),
            "{md}"
        );
        // Every table row has the same number of cells as its header.
        let mut cols = None;
        for line in md.lines() {
            if line.starts_with('|') {
                let n = line.replace("\\|", "").matches('|').count();
                if line.starts_with("|---") || cols.is_none() {
                    cols.get_or_insert(n);
                }
                assert_eq!(Some(n), cols, "{line}");
            } else {
                cols = None;
            }
        }
    }

    #[test]
    fn skipped_and_failed_sections_say_so() {
        let mut r = report();
        r.latency = None;
        r.throughput = Some(Err("iperf3: unable to connect\nto server".into()));
        r.operator = None;
        let md = markdown(&r);
        assert!(md.contains("_Not run this time (`--only`)._"));
        assert!(md.contains("**The benchmark failed:** iperf3: unable to connect to server"));
        let s = summary(&r);
        assert!(s.contains("CNI latency: skipped"));
        assert!(s.contains("throughput: FAILED"));
        assert!(s.contains("operator: skipped"));
    }

    #[test]
    fn summary_lists_ratios_and_goals() {
        let s = summary(&report());
        assert!(s.contains("Ferrite / reference"), "{s}");
        assert!(s.contains("0.12×"), "{s}");
        assert!(s.contains("goal Native ≥ 0.95× raw"), "{s}");
        assert!(
            s.contains("hand-routed, no CNI") && s.contains("(Native / hand-routed 0.95×)"),
            "{s}"
        );
        assert!(
            s.contains("default queues 500 µs, one transmit queue 360 µs"),
            "{s}"
        );
        assert!(s.contains("not met"), "{s}");
    }
}
