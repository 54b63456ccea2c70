//! `ferrite`: thin entry point; the logic lives in the library.

use clap::Parser;

/// Ferrite's CNI plugin and the agent-CNI protocol.
#[derive(Parser)]
#[command(version = ferrite_cni::VERSION)]
struct Args {}

fn main() -> anyhow::Result<()> {
    Args::parse();
    anyhow::bail!("ferrite is not implemented yet (issue 4)")
}
