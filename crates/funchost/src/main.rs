//! `saldo-funchost`: the local stand-in for the Azure Functions host. See the library docs.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

/// Serve a Function App folder (functions-host/<app>) with its custom handler, like Azure would.
#[derive(Parser, Debug)]
#[command(name = "saldo-funchost", version, args_override_self = true)]
struct Args {
    /// The app folder holding host.json and one folder per function.
    #[arg(long)]
    app_dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// 0 picks a free port; the real one is printed as `listening on http://H:P`.
    #[arg(long)]
    port: u16,
    /// The handler binary (default: host.json's defaultExecutablePath, looked up in the app
    /// folder, then beside this executable).
    #[arg(long)]
    handler: Option<PathBuf>,
    /// Accepted for every authLevel and for /admin/host/*.
    #[arg(long)]
    master_key: String,
    /// Accepted for authLevel "function".
    #[arg(long)]
    function_key: String,
    /// How long the handler has to open its port at each (re)start.
    #[arg(long, default_value_t = 30_000)]
    startup_timeout_ms: u64,
    /// First wait before restarting a crashed handler; doubles up to --restart-backoff-max-ms.
    #[arg(long, default_value_t = 250)]
    restart_backoff_ms: u64,
    #[arg(long, default_value_t = 10_000)]
    restart_backoff_max_ms: u64,
    /// Handler processes serving HTTP (requests spread round-robin, one request to one
    /// instance). With 2 or more, timer functions run on one more instance of their own that
    /// gets no HTTP traffic, as on Flex Consumption.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16))]
    instances: u16,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let instance = args
        .app_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let _telemetry = saldo_telemetry::init("saldo-funchost", &instance);
    let opts = saldo_funchost::Options {
        app_dir: args.app_dir,
        host: args.host.clone(),
        port: args.port,
        handler: args.handler,
        keys: saldo_funchost::server::Keys {
            master: args.master_key,
            function: args.function_key,
        },
        startup_timeout: Duration::from_millis(args.startup_timeout_ms),
        backoff_min: Duration::from_millis(args.restart_backoff_ms.max(1)),
        backoff_max: Duration::from_millis(
            args.restart_backoff_max_ms.max(args.restart_backoff_ms),
        ),
        instances: usize::from(args.instances),
    };
    let host = args.host;
    let result = saldo_funchost::run(opts, |addr| {
        // The one line launchers wait for; printed only once the handler is ready.
        println!("listening on http://{host}:{}", addr.port());
        let _ = std::io::stdout().flush();
    })
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("saldo-funchost: {e:#}");
            ExitCode::FAILURE
        }
    }
}
