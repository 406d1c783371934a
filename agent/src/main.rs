use std::process::ExitCode;

use clap::Parser as _;

#[tokio::main]
async fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = agent::cli::Args::parse();
    match agent::run(args, agent::shutdown_signal()).await {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            // Once, plainly: the chain of causes on one line.
            log::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
