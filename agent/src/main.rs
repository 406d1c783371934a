use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = agent::cli::Args::parse();
    agent::run(args, agent::shutdown_signal()).await
}
