//! `saldo up` (in the foreground or detached) and `saldo down`: the local stack's life.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use saldo_stack::config::{Ports, StackConfig};
use saldo_stack::{Manifest, Stack};

use crate::paths::Paths;

#[derive(clap::Args)]
pub struct UpArgs {
    /// Start in the background and return once everything is healthy.
    #[arg(long)]
    detach: bool,
    /// Regions to run a worker in (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = saldo_stack::config::DEFAULT_REGIONS.map(String::from))]
    regions: Vec<String>,
    /// Event Grid emulator time scale (every retry delay and TTL divided by it).
    #[arg(long, default_value_t = 1.0)]
    time_scale: f64,
    #[arg(long)]
    mongodb_port: Option<u16>,
    #[arg(long)]
    topic_port: Option<u16>,
    #[arg(long)]
    api_port: Option<u16>,
    #[arg(long)]
    spa_port: Option<u16>,
    /// Port of the first regional worker; the others take the next ones.
    #[arg(long)]
    node_port: Option<u16>,
    /// Do not publish the demo catalogue.
    #[arg(long)]
    no_seed: bool,
    /// HTTP instances (handler processes) per region; with 2 or more the timers run on one more
    /// instance of their own, as on Flex Consumption.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=16))]
    instances: u16,
    /// Run production's auth path: the topic refuses keys (local auth disabled) and every app
    /// publishes with a token from a local managed-identity endpoint (`saldo-identity`).
    #[arg(long)]
    keyless: bool,
}

pub async fn up(p: Paths, args: UpArgs) -> Result<ExitCode> {
    if let Some(pid) = saldo_stack::stack::running_pid(&p.root) {
        bail!(
            "a Saldo stack is already running (pid {pid}): see `saldo status`, or stop it with `saldo down`"
        );
    }
    if args.detach {
        return detach(&p).await;
    }
    let mut config = StackConfig::new(&p.repo, &p.bin_dir);
    config.root = p.root.clone();
    config.regions = args.regions;
    config.time_scale = args.time_scale;
    config.seed = !args.no_seed;
    config.instances = usize::from(args.instances);
    config.keyless = args.keyless;
    config.ports = Ports {
        mongodb: args.mongodb_port,
        topic: args.topic_port,
        api: args.api_port,
        spa: args.spa_port,
        first_node: args.node_port,
    };
    // Telemetry export is opt-in: pass the connection string on to every app when it is set.
    if let Ok(cs) = std::env::var("APPLICATIONINSIGHTS_CONNECTION_STRING") {
        config
            .env
            .insert("APPLICATIONINSIGHTS_CONNECTION_STRING".into(), cs);
    }
    if let Ok(level) = std::env::var("RUST_LOG") {
        config.env.insert("RUST_LOG".into(), level);
    }
    eprintln!(
        "saldo: starting the local stack in {} ...",
        p.root.display()
    );
    let mut stack = Stack::start(config).await?;
    print_table(&stack);
    println!();
    if let Some(spa) = &stack.manifest().spa {
        println!("Shop:     {}", spa.url);
    }
    println!("Manifest: {}", Manifest::path(&p.root).display());
    println!("Logs:     {}", p.root.join("logs").display());
    println!("Stop with Ctrl-C (or `saldo down` when detached).");
    stack.supervise().await?;
    eprintln!("saldo: stopping ...");
    stack.stop().await;
    eprintln!("saldo: stopped");
    Ok(ExitCode::SUCCESS)
}

fn print_table(stack: &Stack) {
    println!("{:<24} {:>8}  endpoint", "component", "pid");
    for (name, pid, endpoint) in stack.table() {
        println!("{name:<24} {pid:>8}  {endpoint}");
    }
}

/// Re-runs `saldo up` in the background (its own session, output to `<root>/logs/saldo.log`) and
/// returns once its manifest shows it healthy, or fails with the log's tail.
async fn detach(p: &Paths) -> Result<ExitCode> {
    use std::os::unix::process::CommandExt;
    let log_path = p.root.join("logs").join("saldo.log");
    std::fs::create_dir_all(p.root.join("logs"))?;
    let log = std::fs::File::create(&log_path)?;
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--detach")
        .collect();
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(&args)
        .env("SALDO_REPO", &p.repo)
        .env("SALDO_ROOT", &p.root)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting saldo up in the background")?;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "the background stack exited during start-up ({status}):\n{}",
                saldo_stack::component::tail(&log_path, 20)
            );
        }
        if let Ok(m) = Manifest::load(&p.root)
            && m.pid == child.id()
        {
            print!("{}", std::fs::read_to_string(&log_path).unwrap_or_default());
            println!(
                "saldo: running in the background (pid {}); stop it with `saldo down`",
                child.id()
            );
            return Ok(ExitCode::SUCCESS);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!(
                "the background stack did not come up within 5 minutes; see {}",
                log_path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn down(root: &std::path::Path) -> Result<ExitCode> {
    let Some(pid) = saldo_stack::stack::running_pid(root) else {
        eprintln!("saldo: no stack is running from {}", root.display());
        return Ok(ExitCode::FAILURE);
    };
    let target = nix::unistd::Pid::from_raw(pid as i32);
    nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGTERM)
        .context("signalling the stack")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while nix::sys::signal::kill(target, None).is_ok() {
        if Instant::now() > deadline {
            bail!("the stack (pid {pid}) did not stop within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("saldo: stopped the stack (pid {pid})");
    Ok(ExitCode::SUCCESS)
}
