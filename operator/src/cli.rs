//! The `specdec-operator` command line: `run` (the operator) and `crd`
//! (print the CustomResourceDefinition). Configuration is read here, once.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use kube::CustomResourceExt;

use crate::controller::{self, Context, Settings};
use crate::crd::SpeculativeDeployment;
use crate::leader::{LeaderElector, Leadership, LeaseSettings};
use crate::metrics::Metrics;

/// The model-server image of this version for CPUs, as `scripts/images`
/// tags it: what a SpeculativeDeployment that names no image runs.
pub const DEFAULT_SERVER_IMAGE: &str =
    concat!("ghcr.io/specdec/specdec:", env!("CARGO_PKG_VERSION"));
/// The CUDA build of the same, for a SpeculativeDeployment with `gpus`.
pub const DEFAULT_CUDA_SERVER_IMAGE: &str = concat!(
    "ghcr.io/specdec/specdec:",
    env!("CARGO_PKG_VERSION"),
    "-cuda"
);

/// Kubernetes operator for SpeculativeDeployment resources.
#[derive(Debug, Parser)]
#[command(name = "specdec-operator", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the SpeculativeDeployment CustomResourceDefinition as YAML.
    Crd,
    /// Run the operator (leader-elected; reconciles while it holds the Lease).
    Run(Box<RunArgs>),
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Watch only this namespace (default: all).
    #[arg(long, env = "SPECDEC_WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Address of `/metrics` and `/healthz`.
    #[arg(
        long,
        env = "SPECDEC_OPERATOR_LISTEN",
        default_value = "127.0.0.1:9090"
    )]
    listen: SocketAddr,
    /// Name of the leader-election Lease.
    #[arg(long, env = "SPECDEC_LEASE_NAME", default_value = "specdec-operator")]
    lease_name: String,
    /// Namespace of the Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// This replica's identity in the Lease (default: host name and process id).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Seconds a Lease stays valid without renewal.
    #[arg(long, env = "SPECDEC_LEASE_DURATION", default_value_t = 15)]
    lease_duration: u64,
    /// Seconds between renewals (and between tries of a follower).
    #[arg(long, env = "SPECDEC_LEASE_RETRY", default_value_t = 3)]
    lease_retry: u64,
    /// Seconds between status refreshes of a healthy deployment.
    #[arg(long, env = "SPECDEC_STATUS_INTERVAL", default_value_t = 30)]
    status_interval: u64,
    /// Seconds after which children are applied again even if nothing shows
    /// a change (unchanged children are otherwise left alone).
    #[arg(long, env = "SPECDEC_RESYNC_INTERVAL", default_value_t = 300)]
    resync_interval: u64,
    /// Image of the server when a spec names none.
    #[arg(long, env = "SPECDEC_DEFAULT_IMAGE", default_value = DEFAULT_SERVER_IMAGE)]
    default_image: String,
    /// Image of the server when a spec names none and asks for GPUs.
    #[arg(long, env = "SPECDEC_DEFAULT_CUDA_IMAGE", default_value = DEFAULT_CUDA_SERVER_IMAGE)]
    default_cuda_image: String,
    /// Seconds to wait for one pod's `/metrics`.
    #[arg(long, env = "SPECDEC_SCRAPE_TIMEOUT", default_value_t = 2)]
    scrape_timeout: u64,
    /// Log as JSON lines.
    #[arg(long, env = "SPECDEC_OPERATOR_LOG_JSON")]
    log_json: bool,
}

/// Run the command line; errors are printed, never panicked.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crd => print_crd(),
        Command::Run(args) => run(*args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The CRD as YAML, exactly as `crds/` holds it.
pub fn crd_yaml() -> anyhow::Result<String> {
    Ok(serde_yaml::to_string(&SpeculativeDeployment::crd())?)
}

fn print_crd() -> anyhow::Result<()> {
    print!("{}", crd_yaml()?);
    Ok(())
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "operator".into());
    format!("{host}-{}", std::process::id())
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    crate::telemetry::init(args.log_json);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run_async(args))
}

async fn shutdown_signal() {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

async fn run_async(args: RunArgs) -> anyhow::Result<()> {
    let identity = args.identity.unwrap_or_else(default_identity);
    let metrics = Arc::new(Metrics::new()?);
    let client = kube::Client::try_default()
        .await
        .map_err(|e| anyhow::anyhow!("no Kubernetes client configuration: {e}"))?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let http = tokio::spawn(crate::http::serve(
        listener,
        metrics.clone(),
        stopped(stop_rx.clone()),
    ));
    tracing::info!(identity, listen = %args.listen, "operator started");
    let settings = Settings {
        namespace: args.namespace,
        status_interval: Duration::from_secs(args.status_interval),
        resync_interval: Duration::from_secs(args.resync_interval),
        scrape_timeout: Duration::from_secs(args.scrape_timeout),
        default_image: args.default_image,
        default_cuda_image: args.default_cuda_image,
    };
    let ctx = Arc::new(Context::new(
        client.clone(),
        metrics.clone(),
        identity.clone(),
        settings,
    )?);
    let elector = LeaderElector::new(
        client,
        LeaseSettings {
            name: args.lease_name,
            namespace: args.lease_namespace,
            identity,
            duration: Duration::from_secs(args.lease_duration),
            retry_period: Duration::from_secs(args.lease_retry),
        },
    );
    let signal = shutdown_signal();
    let leading = lead(&elector, ctx, metrics.clone(), stop_rx.clone());
    tokio::pin!(leading);
    // On a signal the controller stops first, then the Lease is released:
    // the next leader must not reconcile while this one still does.
    let outcome = tokio::select! {
        outcome = &mut leading => outcome,
        () = signal => {
            tracing::info!("shutting down");
            let _ = stop_tx.send(true);
            leading.await
        }
    };
    let _ = stop_tx.send(true);
    metrics.leader.set(0);
    match tokio::time::timeout(elector.settings().retry_period, elector.release()).await {
        Ok(Ok(())) => tracing::info!("released the Lease"),
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot release the Lease"),
        Err(_) => tracing::warn!("cannot release the Lease in time"),
    }
    let _ = http.await;
    outcome?;
    tracing::info!("operator stopped");
    Ok(())
}

/// Why a replica stopped leading.
enum SteppedDown {
    /// It lost the Lease or could not renew it in time: it competes again.
    LostLease,
    /// The process is stopping.
    Stopping,
    /// The controller ended on its own (a bug): the process exits, so that
    /// it is restarted instead of renewing a Lease it does nothing with.
    ControllerEnded,
}

/// Acquire the Lease, reconcile while holding it, and go back to waiting
/// when it is lost (or cannot be renewed in time, say while the API server
/// is down), so that two replicas never reconcile at once. Returns once
/// `stop` is set and the controller has stopped, or with an error when the
/// controller ended by itself.
async fn lead(
    elector: &LeaderElector,
    ctx: Arc<Context>,
    metrics: Arc<Metrics>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let retry = elector.settings().retry_period;
    let duration = elector.settings().duration;
    // Stop reconciling before the Lease could expire for the others.
    let renew_deadline = duration.saturating_sub(retry).max(retry);
    let stopping = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        // A call that hangs must not outlive the Lease it is about.
        let tried = tokio::time::timeout(duration, elector.try_acquire_or_renew()).await;
        match tried {
            Ok(Ok(Leadership::Leading)) => {}
            outcome => {
                match outcome {
                    Ok(Err(e)) => tracing::warn!(error = %e, "cannot reach the Lease"),
                    Err(_) => tracing::warn!("the Lease did not answer in time"),
                    Ok(Ok(_)) => {}
                }
                tokio::select! {
                    () = tokio::time::sleep(retry) => {}
                    () = stopping(stop.clone()) => return Ok(()),
                }
                continue;
            }
        }
        tracing::info!("acquired the Lease; reconciling");
        metrics.leader.set(1);
        let (lost_tx, lost_rx) = tokio::sync::watch::channel(false);
        let controller_stop = stopping(lost_rx);
        let mut controller = tokio::spawn(controller::run(ctx.clone(), controller_stop));
        let mut last_renewal = tokio::time::Instant::now();
        let why = loop {
            tokio::select! {
                () = tokio::time::sleep(retry) => {}
                () = stopping(stop.clone()) => break SteppedDown::Stopping,
                _ = &mut controller => break SteppedDown::ControllerEnded,
            }
            let left = renew_deadline.saturating_sub(last_renewal.elapsed());
            match tokio::time::timeout(left, elector.try_acquire_or_renew()).await {
                Ok(Ok(Leadership::Leading)) => last_renewal = tokio::time::Instant::now(),
                Ok(Ok(Leadership::Following)) => {
                    tracing::warn!("lost the Lease to another replica");
                    break SteppedDown::LostLease;
                }
                Ok(Err(e)) if last_renewal.elapsed() <= renew_deadline => {
                    tracing::warn!(error = %e, "cannot renew the Lease; retrying")
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot renew the Lease in time; stepping down");
                    break SteppedDown::LostLease;
                }
                Err(_) => {
                    tracing::warn!("the renewal did not answer in time; stepping down");
                    break SteppedDown::LostLease;
                }
            }
        };
        metrics.leader.set(0);
        let _ = lost_tx.send(true);
        if !matches!(why, SteppedDown::ControllerEnded) {
            // The controller stops gracefully; do not wait forever for it.
            let abort = controller.abort_handle();
            if tokio::time::timeout(Duration::from_secs(10), controller)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        // What this replica published is another leader's to publish now.
        metrics.forget_all();
        tracing::info!("controller stopped");
        match why {
            SteppedDown::LostLease => {}
            SteppedDown::Stopping => return Ok(()),
            SteppedDown::ControllerEnded => {
                anyhow::bail!("the controller ended while leading")
            }
        }
    }
}
