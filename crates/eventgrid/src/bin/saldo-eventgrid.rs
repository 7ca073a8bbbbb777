//! `saldo-eventgrid`: the local Event Grid topic (see the library for what it does).

use std::path::PathBuf;

use clap::Parser;
use saldo_eventgrid::{Config, InputSchema, Topic, app};

#[derive(Parser, Debug)]
#[command(version, about = "Local Azure Event Grid custom topic")]
struct Args {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// 0 picks a free port; the `listening on` line tells which.
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Topic access key (base64, like Azure's, so SAS tokens can be signed with it).
    #[arg(long, env = "SALDO_TOPIC_KEY", hide_env_values = true)]
    key: String,
    /// Where accepted events, pending deliveries and subscriptions are kept.
    #[arg(long)]
    data_dir: PathBuf,
    /// Root of the dead-letter "blob containers".
    #[arg(long)]
    deadletter_dir: PathBuf,
    /// JSON file of subscriptions to create at start: `[{"name", "properties"}]` or `{"value": [...]}`.
    #[arg(long)]
    subscriptions: Option<PathBuf>,
    /// Divides every duration (retry delays, probation, TTL, timeouts) by this factor.
    #[arg(long, default_value_t = 1.0)]
    time_scale: f64,
    #[arg(long, default_value = "saldo-local")]
    topic_name: String,
    /// The topic's input schema (ARM `inputSchema`); events are delivered in the same schema.
    #[arg(long, value_enum, default_value = "EventGridSchema")]
    input_schema: InputSchema,
    /// Events each subscription keeps in memory; the rest of its backlog waits on disk
    /// (`--max-pending` is the old name). A slow subscriber never makes publishing fail.
    #[arg(long, alias = "max-pending", default_value_t = 10_000)]
    max_in_memory: usize,
    /// The topic's publish rate limit in events per second (Azure: 5,000); beyond it
    /// publishing answers 429. 0: unlimited.
    #[arg(long, default_value_t = saldo_eventgrid::rate::AZURE_EVENTS_PER_SECOND)]
    max_events_per_second: u64,
    /// The topic's publish rate limit in bytes per second (Azure: 5 MB); 0: unlimited.
    #[arg(long, default_value_t = saldo_eventgrid::rate::AZURE_BYTES_PER_SECOND)]
    max_bytes_per_second: u64,
    /// Accept Microsoft Entra (Bearer) tokens signed by the identity stand-in (`saldo-identity`)
    /// whose public key is in this file.
    #[arg(long)]
    entra_public_key_file: Option<PathBuf>,
    /// Azure's `disableLocalAuth`: refuse keys and SAS tokens for publishing (needs
    /// --entra-public-key-file).
    #[arg(long)]
    disable_local_auth: bool,
    /// Concurrent in-flight deliveries per subscription.
    #[arg(long, default_value_t = 8)]
    max_in_flight: usize,
    /// Compact the event log once it is larger than this many bytes.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    compact_bytes: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _telemetry = saldo_telemetry::init("saldo-eventgrid", &args.topic_name);
    let entra_public_key = match &args.entra_public_key_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()))?,
        ),
        None => None,
    };
    let config = Config {
        entra_public_key,
        disable_local_auth: args.disable_local_auth,
        subscriptions_file: args.subscriptions,
        time_scale: args.time_scale,
        topic_name: args.topic_name,
        input_schema: args.input_schema,
        max_in_memory: args.max_in_memory,
        max_events_per_second: args.max_events_per_second,
        max_bytes_per_second: args.max_bytes_per_second,
        max_in_flight: args.max_in_flight,
        compact_bytes: args.compact_bytes,
        ..Config::new(args.key, args.data_dir, args.deadletter_dir)
    };
    let topic = Topic::open(config).await?;
    let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port)).await?;
    let addr = listener.local_addr()?;
    // The one line tests and `saldo up` wait for; it carries the real port when --port is 0.
    println!("listening on http://{}:{}", args.host, addr.port());
    use std::io::Write;
    std::io::stdout().flush()?;
    axum::serve(listener, app(topic))
        // Ctrl-C or SIGTERM (how `saldo up` stops it). Nothing needs flushing: every accepted
        // event is already on disk.
        .with_graceful_shutdown(saldo_process::terminated())
        .await?;
    Ok(())
}
