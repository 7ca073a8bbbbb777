//! `saldo-api`: the shop's API as an Azure Functions custom handler. Thin: settings, telemetry,
//! listen, serve [`saldo_api::app`].

use anyhow::Context;
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "saldo-api",
    about = "Saldo's shop API (Azure Functions custom handler)"
)]
struct Cli {
    /// Port to listen on (127.0.0.1); the Functions host passes FUNCTIONS_CUSTOMHANDLER_PORT.
    #[arg(long, env = "FUNCTIONS_CUSTOMHANDLER_PORT")]
    port: u16,
    #[command(flatten)]
    settings: saldo_api::Settings,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = saldo_telemetry::init("saldo-api", "api");
    let cli = Cli::parse();
    let publisher = saldo_publish::Publisher::from_env().context("topic settings")?;
    let state = saldo_api::AppState::new(&cli.settings, publisher).await?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", cli.port))
        .await
        .with_context(|| format!("listen on 127.0.0.1:{}", cli.port))?;
    let addr = listener.local_addr()?;
    // The host (and `saldo up`) wait for this line.
    println!("listening on http://{addr}");
    axum::serve(listener, saldo_api::app(state))
        // Ctrl-C or SIGTERM (what the Functions host sends to stop a handler).
        .with_graceful_shutdown(saldo_process::terminated())
        .await
        .context("serve")
}
