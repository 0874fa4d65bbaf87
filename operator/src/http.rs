//! The operator's HTTP endpoints: `/metrics` and `/healthz`.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use warp::reply::Reply;
use warp::Filter;

use crate::metrics::Metrics;

/// Serve on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let metrics_route = warp::path!("metrics").and(warp::get()).map(move || {
        warp::reply::with_header(
            metrics.render(),
            "content-type",
            "text/plain; version=0.0.4",
        )
        .into_response()
    });
    let health = warp::path!("healthz")
        .and(warp::get())
        .map(|| String::from("ok").into_response());
    let routes = metrics_route.or(health).unify();
    warp::serve(routes)
        .incoming(listener)
        .graceful(shutdown)
        .run()
        .await;
}
