//! The HTTP server: OpenAI-compatible routes, health, readiness and
//! Prometheus metrics, on warp.
//!
//! Start-up: the registry is validated, the port opens (so `/healthz` answers
//! and `/readyz` says 503 while loading), the engine loads on a blocking
//! thread, and `/readyz` turns 200. A registry or model that cannot be used
//! stops the process with the reason.

pub mod auth;
pub mod error;
pub mod listener;
pub mod metrics;
pub mod openai;
pub mod routes;
pub mod service;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::config::RegistryConfig;
use crate::engine::{Engine, EngineConfig};

use listener::HttpLimits;
use service::{Service, ServiceConfig};

/// Everything `serve` needs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The registry file's content.
    pub registry: RegistryConfig,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Name the model is served under.
    pub model_name: String,
    /// Sequences generated concurrently.
    pub slots: usize,
    /// How passes serving several slots are bounded.
    pub batching: crate::engine::Batching,
    /// Requests that may wait for a slot.
    pub max_waiting: usize,
    /// Longest a request may take.
    pub request_timeout: Duration,
    /// CPU threads per evaluation.
    pub threads: u32,
    /// What a client may cost before it is cut off.
    pub http: HttpLimits,
    /// Keys `/v1/*` requires; empty: none.
    pub api_keys: auth::ApiKeys,
}

/// Run the server until SIGTERM or SIGINT; in-flight requests finish first.
pub async fn serve(config: ServerConfig) -> anyhow::Result<()> {
    let service = Arc::new(Service::new(
        ServiceConfig {
            model_name: config.model_name.clone(),
            slots: config.slots,
            max_waiting: config.max_waiting,
            request_timeout: config.request_timeout,
        },
        &config.registry,
    ));
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    tracing::info!(address = %config.listen, "listening; loading models");

    let mut engine_config = EngineConfig::from_registry(&config.registry);
    engine_config.threads = config.threads;
    engine_config.slots = config.slots;
    engine_config.batching = config.batching;
    let (load_failed_tx, load_failed) = tokio::sync::oneshot::channel::<String>();
    {
        let service = Arc::clone(&service);
        tokio::task::spawn_blocking(move || match Engine::start(engine_config) {
            Ok(engine) => {
                service.metrics.observe_engine(engine.info());
                tracing::info!("models loaded; ready");
                service.set_ready(Arc::new(engine));
            }
            Err(e) => {
                let reason = e.to_string();
                service.set_not_ready(format!("loading failed: {reason}"));
                let _ = load_failed_tx.send(reason);
            }
        });
    }

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    // In-flight requests get their whole timeout to finish, and then the
    // stream of an answer a little longer to be written.
    let grace = config.request_timeout + Duration::from_secs(5);
    let server = tokio::spawn(listener::serve(
        listener,
        routes::routes(Arc::clone(&service), config.http, config.api_keys.clone()),
        config.http,
        async {
            let _ = stop_rx.await;
        },
        grace,
    ));

    let outcome = tokio::select! {
        signal = shutdown_signal() => {
            tracing::info!(signal, "shutting down; finishing in-flight requests");
            Ok(())
        }
        Ok(reason) = load_failed => Err(anyhow::anyhow!("cannot load the models: {reason}")),
    };
    // The port stays open while the requests in flight finish: what arrives
    // meanwhile gets a 503 with the error object (and /readyz fails), not a
    // refused connection.
    service.begin_shutdown();
    let drained = async {
        while service.in_flight() > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    if tokio::time::timeout(config.request_timeout, drained)
        .await
        .is_err()
    {
        tracing::warn!(
            in_flight = service.in_flight(),
            "requests still running at the end of the drain"
        );
    }
    let _ = stop_tx.send(());
    let _ = server.await;
    outcome
}

async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "SIGINT",
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}
