//! Accepting connections: HTTP/1.1 around the routes, with the limits a
//! hostile or broken client must not get past. A client gets a deadline for
//! each request head (a connection that sends nothing, or half a head, is
//! closed), the number of open connections is bounded, and a connection that
//! ends badly is logged as what it almost always is: a client that went
//! away, not a server error.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use warp::Filter;

/// What a client may cost the server before it is cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Longest a client may take to send a request head (also how long an
    /// idle keep-alive connection stays open), and then its body.
    pub read_timeout: Duration,
    /// Most connections open at once; more wait in the listen backlog.
    pub max_connections: usize,
}

/// Largest request head (request line and headers) read: larger ones get
/// 431 (a URI over it, 414). Also the largest piece a body is read in.
pub const MAX_HEAD_BYTES: usize = 64 << 10;

/// Default of [`HttpLimits::read_timeout`], in seconds.
pub const DEFAULT_READ_TIMEOUT_SECS: u64 = 30;
/// Default of [`HttpLimits::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            read_timeout: Duration::from_secs(DEFAULT_READ_TIMEOUT_SECS),
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// Serve `filter` on `listener` until `stop` completes, then close idle
/// connections and let those with a request in flight finish it, for at
/// most `grace`.
pub async fn serve<F>(
    listener: TcpListener,
    filter: F,
    limits: HttpLimits,
    stop: impl Future<Output = ()>,
    grace: Duration,
) where
    F: Filter<Extract = (warp::reply::Response,), Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
{
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    tokio::pin!(stop);
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&connections).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut stop => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: wait instead of spinning.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let routed = Arc::new(AtomicUsize::new(0));
        let service = {
            let routed = Arc::clone(&routed);
            let service = warp::service(filter.clone());
            hyper::service::service_fn(move |request| {
                routed.fetch_add(1, Ordering::SeqCst);
                let mut service = service.clone();
                tower_service::Service::call(&mut service, request)
            })
        };
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.read_timeout)
            .max_buf_size(MAX_HEAD_BYTES)
            .serve_connection(TokioIo::new(ErrorBodies::new(stream, routed)), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                log_connection_error(&e, peer);
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            seconds = grace.as_secs(),
            "connections still open after the grace period; closing them"
        );
    }
}

/// A connection that ended in an error. Hang-ups, timeouts and requests
/// that are not HTTP are the client's doing: logged for debugging only.
fn log_connection_error(error: &hyper::Error, peer: std::net::SocketAddr) {
    if error.is_user() {
        tracing::warn!(%peer, %error, "connection failed");
    } else {
        tracing::debug!(%peer, %error, "connection ended by the client or its timeout");
    }
}

/// A connection that gives the responses hyper writes by itself (to a
/// request it cannot parse: a broken request line, headers too large, a bad
/// `Content-Length`) OpenAI's error object instead of an empty body.
///
/// Such a response is one that no request reaching the routes asked for:
/// every response head written while as many heads as routed requests were
/// already written. It is replaced whole, and the connection then closes as
/// hyper closes it.
struct ErrorBodies {
    inner: TcpStream,
    /// Requests that reached the routes on this connection.
    routed: Arc<AtomicUsize>,
    /// Response heads written for them.
    answered: usize,
    /// A replacement response not yet written.
    pending: Vec<u8>,
}

impl ErrorBodies {
    fn new(inner: TcpStream, routed: Arc<AtomicUsize>) -> Self {
        Self {
            inner,
            routed,
            answered: 0,
            pending: Vec::new(),
        }
    }

    /// Write what is pending; ready once nothing is.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.pending.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.pending.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

/// Whether `head` is an informational (1xx) response.
fn is_interim(head: &[u8]) -> bool {
    head.get(9) == Some(&b'1')
}

/// The response that replaces hyper's bare `head`, or `None` when `head` is
/// not a status line.
fn with_error_object(head: &[u8]) -> Option<Vec<u8>> {
    let status: u16 = std::str::from_utf8(head.get(9..12)?).ok()?.parse().ok()?;
    let (reason, message) = match status {
        408 => ("Request Timeout", "the request did not arrive in time"),
        413 => ("Payload Too Large", "the request is too large"),
        414 => ("URI Too Long", "the request URI is too long"),
        431 => (
            "Request Header Fields Too Large",
            "the request headers are too many or too large",
        ),
        505 => (
            "HTTP Version Not Supported",
            "the HTTP version is not supported: use HTTP/1.1",
        ),
        _ => (
            "Bad Request",
            "the request is not valid HTTP/1.1 (request line, headers, or body framing)",
        ),
    };
    let body = serde_json::json!({"error": {
        "message": message,
        "type": "invalid_request_error",
        "param": null,
        "code": null,
    }})
    .to_string();
    Some(
        format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

impl AsyncRead for ErrorBodies {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ErrorBodies {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        // No body the routes send starts like a status line (they are JSON,
        // server-sent events or text), so this is the start of a response.
        // An interim `100 Continue` precedes the response of a routed
        // request: it is neither that response nor one of hyper's own.
        if buf.starts_with(b"HTTP/1.") && !is_interim(buf) {
            if self.routed.load(Ordering::SeqCst) > self.answered {
                self.answered += 1;
            } else if let Some(replacement) = with_error_object(buf) {
                self.pending = replacement;
                // What is pending is written before anything else, and on
                // flush and shutdown.
                let _ = self.poll_pending(cx)?;
                return Poll::Ready(Ok(buf.len()));
            }
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_status_gets_the_error_object() {
        let bare = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n";
        let text = String::from_utf8(with_error_object(bare).unwrap()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 "), "{head}");
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let error: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(error["error"]["type"], "invalid_request_error");
        assert!(error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("headers"));
        assert!(is_interim(b"HTTP/1.1 100 Continue\r\n\r\n"));
        assert!(!is_interim(bare));
        assert!(with_error_object(b"HTTP/1.1 abc").is_none());
        assert!(with_error_object(b"HTTP").is_none());
    }
}
