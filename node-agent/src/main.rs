//! `ferrite-agent`: thin entry point; the logic lives in the library.

use clap::Parser;

/// Ferrite's node agent.
#[derive(Parser)]
#[command(version = ferrite_agent::VERSION)]
struct Args {}

fn main() -> anyhow::Result<()> {
    Args::parse();
    anyhow::bail!("ferrite-agent is not implemented yet (issue 4 and later)")
}
