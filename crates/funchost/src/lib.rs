//! A local stand-in for the Azure Functions host, for Saldo's custom handlers.
//!
//! It reads a Function App folder (`host.json` + one `function.json` per function, see
//! [`config`]), starts the custom handler on a free port and keeps it running ([`supervisor`]),
//! routes HTTP requests by `function.json` and checks `authLevel` keys ([`server`]), forwards them
//! unchanged or wraps them in invocation payloads ([`invoke`]), fires timer triggers on their
//! NCRONTAB schedules ([`timer`], [`schedule`]), and can be stopped and started like an Azure app.
//!
//! The same configuration files are deployed to Azure, so [`config::load_app`] and
//! [`config::App::route`] double as a check that the configuration and the binaries agree.

pub mod config;
pub mod invoke;
pub mod route;
pub mod schedule;
pub mod server;
pub mod supervisor;
pub mod timer;

use std::future::IntoFuture;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

/// How long requests in flight may take to finish after SIGINT/SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Upper bound on `--instances`.
pub const MAX_INSTANCES: usize = 16;

/// Everything `saldo-funchost` takes on its command line.
#[derive(Debug, Clone)]
pub struct Options {
    pub app_dir: PathBuf,
    pub host: String,
    pub port: u16,
    pub handler: Option<PathBuf>,
    pub keys: server::Keys,
    pub startup_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// HTTP instances (handler processes requests are spread over). With 2 or more, and an app
    /// that has timer functions, the timers get one more instance of their own.
    pub instances: usize,
}

/// Finds the handler binary: `--handler` if given; otherwise `defaultExecutablePath`, absolute,
/// or relative to the app folder (where a deployment puts it), or else beside this executable
/// (where `cargo build` puts both binaries).
pub fn resolve_handler(app: &config::App, explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        anyhow::ensure!(p.is_file(), "--handler {} is not a file", p.display());
        return Ok(p.to_path_buf());
    }
    let exe = Path::new(&app.executable);
    if exe.is_absolute() {
        anyhow::ensure!(
            exe.is_file(),
            "defaultExecutablePath {} is not a file",
            exe.display()
        );
        return Ok(exe.to_path_buf());
    }
    let in_app = app.dir.join(exe);
    if in_app.is_file() {
        return Ok(in_app);
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|me| me.parent().map(|d| d.join(exe)))
        .filter(|p| p.is_file());
    beside.with_context(|| {
        format!(
            "handler `{}` not found in {} nor beside saldo-funchost (use --handler PATH)",
            app.executable,
            app.dir.display()
        )
    })
}

/// Starts the app and serves it until SIGINT/SIGTERM. `on_listening` receives the real address
/// (useful with port 0) once the handler is ready and the listener is bound.
pub async fn run(
    opts: Options,
    on_listening: impl FnOnce(std::net::SocketAddr),
) -> anyhow::Result<()> {
    anyhow::ensure!(
        !opts.keys.master.is_empty(),
        "--master-key must not be empty"
    );
    anyhow::ensure!(
        !opts.keys.function.is_empty(),
        "--function-key must not be empty"
    );
    let app = config::load_app(&opts.app_dir)?.resolve_settings(|k| std::env::var(k).ok())?;
    let program = resolve_handler(&app, opts.handler.as_deref())?;
    // Bind before starting the handler so a taken port fails fast.
    let listener = tokio::net::TcpListener::bind((opts.host.as_str(), opts.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", opts.host, opts.port))?;
    let spec = handler_spec(&app, program, &opts);
    let instances = start_instances(&app, spec, opts.instances).await?;
    let host = server::Host::new(app, opts.keys, instances);
    let timers = timer::spawn_timers(&host);
    let host_for_shutdown = host.clone();
    on_listening(listener.local_addr()?);
    let served = serve_until_signalled(listener, host).await;
    for t in timers {
        t.abort();
    }
    host_for_shutdown.shutdown_all().await;
    served.context("server failed")
}

/// How every instance's handler process is started and restarted.
fn handler_spec(app: &config::App, program: PathBuf, opts: &Options) -> supervisor::HandlerSpec {
    let working_dir = match &app.working_directory {
        Some(w) => app.dir.join(w),
        None => app.dir.clone(),
    };
    supervisor::HandlerSpec {
        program,
        args: app.arguments.clone(),
        working_dir,
        startup_timeout: opts.startup_timeout,
        backoff_min: opts.backoff_min,
        backoff_max: opts.backoff_max,
        stop_grace: Duration::from_secs(5),
    }
}

/// Starts `instances` HTTP instances (bounded by [`MAX_INSTANCES`]), and one for the timers
/// with two or more of them when the app has timer functions, all at once. If any fails to
/// start, those that did are shut down again.
async fn start_instances(
    app: &config::App,
    spec: supervisor::HandlerSpec,
    instances: usize,
) -> anyhow::Result<Vec<server::Instance>> {
    let n = instances.clamp(1, MAX_INSTANCES);
    let has_timers = app
        .functions
        .iter()
        .any(|f| matches!(f.trigger, config::Trigger::Timer(_)));
    let mut roles = vec![server::Role::Http; n];
    if n >= 2 && has_timers {
        roles.push(server::Role::Timers);
    }
    let started = futures::future::join_all(
        roles
            .iter()
            .map(|_| supervisor::Supervisor::start(spec.clone())),
    )
    .await;
    let mut instances = Vec::new();
    let mut failure = None;
    for (role, sup) in roles.into_iter().zip(started) {
        match sup {
            Ok(supervisor) => instances.push(server::Instance { role, supervisor }),
            Err(e) => failure = Some(e),
        }
    }
    if let Some(e) = failure {
        for i in &instances {
            i.supervisor.shutdown().await;
        }
        anyhow::bail!("the app did not start: {e}");
    }
    Ok(instances)
}

/// Serves until SIGINT/SIGTERM, then stops accepting and lets requests in flight finish, but
/// not forever: a stuck or streaming request must not keep the host (and its handler) alive.
async fn serve_until_signalled(
    listener: tokio::net::TcpListener,
    host: std::sync::Arc<server::Host>,
) -> std::io::Result<()> {
    let (signalled_tx, mut signalled) = tokio::sync::watch::channel(false);
    let serve = axum::serve(listener, server::router(host)).with_graceful_shutdown(async move {
        shutdown_signal().await;
        let _ = signalled_tx.send(true);
    });
    tokio::select! {
        r = serve.into_future() => r,
        _ = async {
            let _ = signalled.wait_for(|s| *s).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            tracing::warn!("requests still open after {SHUTDOWN_GRACE:?}; shutting down anyway");
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    saldo_process::terminated().await;
    tracing::info!("shutting down");
}
