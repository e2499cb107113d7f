//! `pyxis`: the Pyxis operator CLI.

use clap::Parser;

fn main() {
    let cli = pyxis_coordinator::cli::Cli::parse();
    std::process::exit(pyxis_coordinator::cli::run(cli));
}
