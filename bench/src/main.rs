//! `ferrite-bench`: side-by-side benchmarks (`make bench`), written to `docs/benchmarks.md`.
//!
//! 1. CNI ADD/DEL latency of the `ferrite` plugin (with a real `ferrite-agent`) against the
//!    reference `bridge` + `host-local` plugins, and a burst of concurrent Ferrite ADDs.
//! 2. Cross-node pod-to-pod TCP throughput with iperf3: raw veth, Ferrite Native, Ferrite VXLAN.
//! 3. The operator: time to give 1,000 Nodes their blocks from a cold start, and its peak
//!    memory, against a private etcd + kube-apiserver.
//!
//! Benchmarks 1 and 2 happen in network namespaces the run creates (`feb-<pid>-...`) and
//! removes again — also on errors and on Ctrl-C — and need root; benchmark 3 runs on loopback
//! and needs no root. The method notes are in [`report`], which renders the whole Markdown
//! file.

mod agent;
mod cni;
mod iperf;
mod latency;
mod operator;
mod report;
mod stats;
mod sys;
mod throughput;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};

use crate::report::{Machine, Report};

/// Ferrite's benchmarks: CNI latency against the reference plugins, pod-to-pod throughput
/// against raw veth, and the operator at 1,000 Nodes. Run as root; `make bench` builds what
/// it needs.
#[derive(Parser)]
#[command(version = ferrite_agent::VERSION)]
struct Args {
    /// Also write the results as Markdown to this file (`make bench`: docs/benchmarks.md).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Where the release builds of `ferrite`, `ferrite-agent` and `ferrite-operator` are
    /// (default: the `release` directory of the workspace's target directory, from `cargo
    /// metadata`).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The `ferrite` plugin to measure (default: the static build `scripts/build-plugin.sh`
    /// makes, as the agent image ships it: `<target dir>/<arch>-unknown-linux-gnu/release/ferrite`).
    #[arg(long)]
    plugin: Option<PathBuf>,
    /// Where the reference plugins (`bridge`, `host-local`) are.
    #[arg(long, default_value = "/usr/lib/cni")]
    reference_dir: PathBuf,
    /// Counted ADD+DEL cycles per plugin.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(50..=1000))]
    cycles: u16,
    /// Uncounted cycles per plugin before them.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(0..=100))]
    warmup: u16,
    /// Ferrite ADDs started at once.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=250))]
    concurrent: u16,
    /// Seconds per iperf3 run.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=60))]
    seconds: u32,
    /// iperf3 runs per mode (each with a raw run beside it). Five: single runs on the shared
    /// 2-CPU VM moved the Native ratio between 0.81 and 1.00 within minutes.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=20))]
    repeats: u16,
    /// Nodes for the operator benchmark.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u16).range(1..=1024))]
    nodes: u16,
    /// The operator's `--concurrency` in its benchmark (default: the operator's default).
    #[arg(long)]
    operator_concurrency: Option<u16>,
    /// Run one benchmark only.
    #[arg(long, value_enum)]
    only: Option<Only>,
    /// Keep the scratch directory (agent logs and configurations) after the run.
    #[arg(long)]
    keep_scratch: bool,
}

/// One benchmark.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Only {
    /// CNI ADD/DEL latency and the concurrent ADDs.
    Latency,
    /// Pod-to-pod throughput.
    Throughput,
    /// The operator: 1,000 Nodes from a cold start.
    Operator,
}

/// The binaries under test.
pub struct Binaries {
    /// Their directory.
    pub dir: PathBuf,
    /// `ferrite-agent`.
    pub agent: PathBuf,
    /// `ferrite`, the plugin.
    pub plugin: PathBuf,
    /// `ferrite-operator`.
    pub operator: PathBuf,
    /// The reference plugins' directory.
    pub reference_dir: PathBuf,
}

/// A progress line.
pub fn progress(msg: &str) {
    println!("[ferrite-bench] {msg}");
}

fn main() -> Result<()> {
    let args = Args::parse();
    let run = |b: Only| args.only.is_none_or(|only| only == b);
    let (run_latency, run_throughput, run_operator) = (
        run(Only::Latency),
        run(Only::Throughput),
        run(Only::Operator),
    );
    let bins = binaries(&args, run_latency || run_throughput, run_operator)?;
    preflight(&bins, run_latency, run_throughput)?;
    sys::catch_interrupts()?;
    for left in sys::remove_leftovers()? {
        progress(&format!(
            "removed {left}, left by a benchmark run that was killed"
        ));
    }
    let machine = machine();
    let scratch = sys::ScratchDir::create(args.keep_scratch)?;

    let latency = run_latency.then(|| {
        latency::run(
            &bins,
            &scratch,
            &latency::Settings {
                cycles: usize::from(args.cycles),
                warmup: usize::from(args.warmup),
                concurrent: usize::from(args.concurrent),
            },
        )
        .map_err(|e| format!("{e:#}"))
    });
    sys::check_interrupted()?;
    let throughput = run_throughput.then(|| {
        throughput::run(
            &bins,
            &scratch,
            &throughput::Settings {
                seconds: args.seconds,
                repeats: usize::from(args.repeats),
            },
        )
        .map_err(|e| format!("{e:#}"))
    });
    sys::check_interrupted()?;
    let operator = run_operator.then(|| {
        operator::run(
            &bins,
            &operator::Settings {
                nodes: usize::from(args.nodes),
                concurrency: args.operator_concurrency,
            },
        )
        .map_err(|e| format!("{e:#}"))
    });
    sys::check_interrupted()?;

    let report = Report {
        machine,
        latency,
        throughput,
        operator,
    };
    print!("{}", report::summary(&report));
    if let Some(out) = &args.out {
        sys::write_atomic(out, report::markdown(&report).as_bytes())?;
        progress(&format!("wrote {}", out.display()));
    }
    let mut failed = Vec::new();
    if matches!(report.latency, Some(Err(_))) {
        failed.push("latency");
    }
    if matches!(report.throughput, Some(Err(_))) {
        failed.push("throughput");
    }
    if matches!(report.operator, Some(Err(_))) {
        failed.push("operator");
    }
    if !failed.is_empty() {
        bail!("benchmark failed: {} (see above)", failed.join(", "));
    }
    Ok(())
}

/// The binaries: `--bin-dir`, or `<target dir>/release` from `cargo metadata`; checks that
/// those of the chosen benchmarks exist.
fn binaries(args: &Args, datapath: bool, operator: bool) -> Result<Binaries> {
    let dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => target_dir()?.join("release"),
    };
    let plugin = match &args.plugin {
        Some(p) => p.clone(),
        None => target_dir()?
            .join(format!("{}-unknown-linux-gnu", std::env::consts::ARCH))
            .join("release/ferrite"),
    };
    let bins = Binaries {
        agent: dir.join("ferrite-agent"),
        plugin,
        operator: dir.join("ferrite-operator"),
        dir,
        reference_dir: args.reference_dir.clone(),
    };
    let mut needed = Vec::new();
    if datapath {
        needed.extend([&bins.agent, &bins.plugin]);
    }
    if operator {
        needed.push(&bins.operator);
    }
    for b in needed {
        if !b.is_file() {
            bail!(
                "{} does not exist: build it with `cargo build --release --locked -p ferrite-agent -p ferrite-operator && scripts/build-plugin.sh` (`make bench` does), or point --bin-dir/--plugin at it",
                b.display()
            );
        }
    }
    Ok(bins)
}

/// The workspace's target directory.
fn target_dir() -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let out = sys::run(
        Command::new(cargo)
            .args([
                "metadata",
                "--format-version",
                "1",
                "--no-deps",
                "--manifest-path",
            ])
            .arg(&manifest),
    )
    .context("finding the target directory (or pass --bin-dir)")?;
    let v: serde_json::Value = serde_json::from_str(&out).context("cargo metadata's output")?;
    v["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .context("cargo metadata names no target_directory")
}

/// Fails early, saying what is missing, before anything is created.
fn preflight(bins: &Binaries, latency: bool, throughput: bool) -> Result<()> {
    if !(latency || throughput) {
        // The operator benchmark needs neither root nor network namespaces.
        return Ok(());
    }
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?");
    if euid != "0" {
        bail!("ferrite-bench creates network namespaces and runs the agent: run it as root");
    }
    sys::run(Command::new("ip").arg("-V")).context("iproute2's `ip` is needed")?;
    if latency {
        for p in ["bridge", "host-local"] {
            let path = bins.reference_dir.join(p);
            if !path.is_file() {
                bail!(
                    "the reference plugin {} is missing (Debian: apt-get install containernetworking-plugins, or --reference-dir)",
                    path.display()
                );
            }
        }
    }
    if throughput {
        sys::run(Command::new("iperf3").arg("--version"))
            .context("iperf3 is needed for the throughput benchmark (e2e/scripts/install-deps.sh installs it)")?;
    }
    Ok(())
}

/// Facts about the machine and what is measured (best effort: "unknown" when unavailable).
fn machine() -> Machine {
    let cmd = |program: &str, args: &[&str]| -> String {
        sys::run(Command::new(program).args(args))
            .ok()
            .and_then(|s| s.lines().next().map(|l| l.trim().to_owned()))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "unknown".into())
    };
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let ws = workspace.to_string_lossy().into_owned();
    let mut commit = cmd("git", &["-C", &ws, "rev-parse", "--short", "HEAD"]);
    let dirty = sys::run(Command::new("git").args([
        "-C",
        &ws,
        "status",
        "--porcelain",
        "--untracked-files=no",
        "--",
        ".",
        ":!docs/benchmarks.md",
    ]))
    .is_ok_and(|s| !s.trim().is_empty());
    if dirty {
        commit.push_str(" (with uncommitted changes)");
    }
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into());
    let reference = cmd(
        "dpkg-query",
        &["-W", "-f", "${Version}", "containernetworking-plugins"],
    );
    Machine {
        cpus: cmd("nproc", &[]),
        kernel: cmd("uname", &["-r"]),
        date: cmd("date", &["-u", "+%Y-%m-%d %H:%M"]),
        cpu_model,
        load,
        commit,
        reference_version: format!("containernetworking-plugins {reference}"),
        iperf3_version: cmd("iperf3", &["--version"]),
    }
}
