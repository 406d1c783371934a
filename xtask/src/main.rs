//! Developer tasks: `cargo xtask setup|build|prebuilt|run|go-build|test|demo|bench|fuzz`.

mod bench;
mod build;
mod demo;
#[allow(
    dead_code,
    reason = "shared with agent/build.rs, which uses the parts xtask does not"
)]
mod ebpf_object;
mod exec;
mod fuzz;
mod go;
mod prebuilt;
mod run;
mod setup;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "tracegap developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what is missing for a task (apt packages, bpf-linker, Python test fixtures).
    /// Idempotent.
    Setup {
        /// What to install for: running the agent, the benchmark, or the tests (everything).
        #[arg(long, value_enum, default_value_t = setup::Scope::Test)]
        scope: setup::Scope,
    },
    /// Build the agent, with the eBPF object built from source when the BPF toolchain is
    /// installed, else the committed one (agent-ebpf/prebuilt/) if it matches the sources.
    Build(build::Options),
    /// Rebuild the committed eBPF object (agent-ebpf/prebuilt/tracegap.bpf.o) and its manifest
    /// from source; installs the BPF toolchain if missing. Commit the result.
    Prebuilt,
    /// Set up what the agent needs, build it, and run it as root. Arguments after `--` go to
    /// the agent; its exit status is this command's.
    Run(run::Options),
    /// CI mode: set up what the agent needs, build it, and run `tracegap check` as root, e.g.
    /// `cargo xtask check -- --junit report.xml -- ./integration-tests.sh`. Its exit status is
    /// this command's.
    Check(run::Options),
    /// Build the Go programs of the tests and the demo (tests/go) into target/go/.
    GoBuild,
    /// Set up if needed, build, and run all tests, including the root end-to-end tests; fails if
    /// the committed eBPF object differs from a rebuild from source.
    Test(test::Options),
    /// Jaeger (UI on 127.0.0.1:16686), the Go shop and the agent: a fixed load with the seed's
    /// faults, then fixed; tracegap's coverage beside Jaeger's complete share per service.
    /// Writes target/demo/results.json. Needs root.
    Demo(demo::Options),
    /// Measure what the agent costs (nginx/wrk load, syscall loops, capacity, churn) against an
    /// interleaved baseline; writes target/bench/results.{json,md}. Needs root.
    Bench(bench::Options),
    /// Run each cargo-fuzz target (fuzz/) for `--seconds` (nightly; installs cargo-fuzz).
    Fuzz(fuzz::Options),
}

fn main() -> ExitCode {
    let outcome = match Cli::parse().command {
        Command::Setup { scope } => setup::run(scope, setup::Mode::Verbose).map(|()| 0),
        Command::Build(opts) => build::run(&opts).map(|_| 0),
        Command::Prebuilt => prebuilt::run().map(|()| 0),
        Command::Run(opts) => run::run(opts, &[]),
        Command::Check(opts) => run::run(opts, &["check"]),
        Command::GoBuild => go::build().map(|_| 0),
        Command::Test(opts) => test::run(&opts).map(|()| 0),
        Command::Demo(opts) => demo::run(&opts).map(|()| 0),
        Command::Bench(opts) => bench::run(&opts).map(|()| 0),
        Command::Fuzz(opts) => fuzz::run(&opts).map(|()| 0),
    };
    match outcome {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            // Once, plainly: the chain of causes on one line, no backtrace.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{error::ErrorKind, CommandFactory as _, Parser as _};

    use super::Cli;

    /// clap checks a command's definition only when it is used, and only in debug builds: this
    /// checks every subcommand at once (a duplicate group id once made `cargo xtask run` panic).
    #[test]
    fn every_subcommand_definition_is_valid() {
        Cli::command().debug_assert();
    }

    /// `--help` of every subcommand renders (what a newcomer types first).
    #[test]
    fn every_subcommand_has_help() {
        let names: Vec<String> = Cli::command()
            .get_subcommands()
            .map(|c| c.get_name().to_owned())
            .collect();
        assert!(names.len() >= 7, "{names:?}");
        for name in names {
            let err = match Cli::try_parse_from(["xtask", &name, "--help"]) {
                Ok(_) => panic!("`{name} --help` parsed as a command"),
                Err(e) => e,
            };
            assert_eq!(err.kind(), ErrorKind::DisplayHelp, "{name}: {err}");
            assert!(err.to_string().contains("Usage:"), "{name}: {err}");
        }
    }
}
