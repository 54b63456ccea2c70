//! `ferrite-operator`: thin entry point; the logic lives in the library.

use clap::Parser;

/// Ferrite's operator.
#[derive(Parser)]
#[command(version = ferrite_operator::VERSION)]
struct Args {}

fn main() -> anyhow::Result<()> {
    Args::parse();
    anyhow::bail!("ferrite-operator is not implemented yet (issue 5)")
}
