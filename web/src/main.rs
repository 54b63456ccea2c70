//! `ferrite-web`: thin entry point; the logic lives in the library.

use clap::Parser;

/// Ferrite's dashboard and flow API.
#[derive(Parser)]
#[command(version = ferrite_web::VERSION)]
struct Args {}

fn main() -> anyhow::Result<()> {
    Args::parse();
    anyhow::bail!("ferrite-web is not implemented yet (a later issue)")
}
