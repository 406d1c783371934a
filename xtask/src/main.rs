//! Developer tasks: `cargo xtask setup|build|run|test|bench|fuzz`.

mod bench;
mod build;
mod exec;
mod fuzz;
mod run;
mod setup;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "tracegap developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what is missing (apt packages, bpf-linker) and mount bpffs. Idempotent.
    Setup,
    /// Build the eBPF object and the agent that embeds it.
    Build(build::Options),
    /// Set up if needed, build, and run the agent as root. Arguments after `--` go to the agent.
    Run(run::Options),
    /// Set up if needed, build, and run all tests, including the root end-to-end tests.
    Test(test::Options),
    /// Measure what the agent costs (nginx/wrk load, syscall loops, capacity, churn) against an
    /// interleaved baseline; writes target/bench/results.{json,md}. Needs root.
    Bench(bench::Options),
    /// Run each cargo-fuzz target (fuzz/) for `--seconds` (nightly; installs cargo-fuzz).
    Fuzz(fuzz::Options),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::run(setup::Mode::Verbose),
        Command::Build(opts) => build::run(&opts).map(|_| ()),
        Command::Run(opts) => run::run(opts),
        Command::Test(opts) => test::run(&opts),
        Command::Bench(opts) => bench::run(&opts),
        Command::Fuzz(opts) => fuzz::run(&opts),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::Cli;

    /// clap checks a command's definition only when it is used, and only in debug builds: this
    /// checks every subcommand at once (a duplicate group id once made `cargo xtask run` panic).
    #[test]
    fn every_subcommand_definition_is_valid() {
        Cli::command().debug_assert();
    }
}
