//! `ferrite-bench`: side-by-side benchmarks (`make bench`), written to `docs/benchmarks.md`.

fn main() -> anyhow::Result<()> {
    anyhow::bail!("no benchmarks yet")
}
