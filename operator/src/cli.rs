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
    Run(RunArgs),
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
        Command::Run(args) => run(args),
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
        scrape_timeout: Duration::from_secs(args.scrape_timeout),
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
    tokio::pin!(signal);
    tokio::select! {
        () = lead(&elector, ctx, metrics.clone(), stop_rx.clone()) => {}
        () = &mut signal => tracing::info!("shutting down"),
    }
    let _ = stop_tx.send(true);
    metrics.leader.set(0);
    if let Err(e) = elector.release().await {
        tracing::warn!(error = %e, "cannot release the Lease");
    }
    let _ = http.await;
    tracing::info!("operator stopped");
    Ok(())
}

/// Acquire the Lease, reconcile while holding it, and go back to waiting
/// when it is lost (or cannot be renewed in time, say while the API server
/// is down), so that two replicas never reconcile at once.
async fn lead(
    elector: &LeaderElector,
    ctx: Arc<Context>,
    metrics: Arc<Metrics>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let retry = elector.settings().retry_period;
    // Stop reconciling before the Lease could expire for the others.
    let renew_deadline = elector.settings().duration.saturating_sub(retry).max(retry);
    loop {
        match elector.try_acquire_or_renew().await {
            Ok(Leadership::Leading) => {}
            Ok(Leadership::Following) => {
                tokio::time::sleep(retry).await;
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot reach the Lease");
                tokio::time::sleep(retry).await;
                continue;
            }
        }
        tracing::info!("acquired the Lease; reconciling");
        metrics.leader.set(1);
        let (lost_tx, lost_rx) = tokio::sync::watch::channel(false);
        let mut stop = stop.clone();
        let controller_stop = async move {
            let mut lost = lost_rx;
            tokio::select! {
                _ = lost.wait_for(|l| *l) => {}
                _ = stop.wait_for(|s| *s) => {}
            }
        };
        let controller = tokio::spawn(controller::run(ctx.clone(), controller_stop));
        let mut last_renewal = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(retry).await;
            match elector.try_acquire_or_renew().await {
                Ok(Leadership::Leading) => last_renewal = tokio::time::Instant::now(),
                Ok(Leadership::Following) => {
                    tracing::warn!("lost the Lease to another replica");
                    break;
                }
                Err(e) if last_renewal.elapsed() > renew_deadline => {
                    tracing::warn!(error = %e, "cannot renew the Lease in time; stepping down");
                    break;
                }
                Err(e) => tracing::warn!(error = %e, "cannot renew the Lease; retrying"),
            }
        }
        metrics.leader.set(0);
        let _ = lost_tx.send(true);
        // The controller stops gracefully; do not wait forever for it.
        let abort = controller.abort_handle();
        if tokio::time::timeout(Duration::from_secs(10), controller)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
}
