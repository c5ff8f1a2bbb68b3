//! Serving HTTP, over TLS or not, with bounds: at most `max_connections` open connections (one
//! more is closed at once), a deadline on the TLS handshake and on each request's headers
//! (slow-header clients are dropped, and so are keep-alive connections idle that long), and a
//! graceful stop that waits a few seconds for requests in flight. Over TLS, each request carries
//! its connection's verified client certificate as a [`Peer`] extension.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::PeerCert;

/// The client certificate of a request's connection (`None`: plain HTTP, or none presented).
#[derive(Clone, Debug, Default)]
pub struct Peer(pub Option<PeerCert>);

/// Bounds on the connections a control plane serves.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    pub max_connections: usize,
    pub header_timeout: Duration,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds { max_connections: 4_096, header_timeout: Duration::from_secs(10) }
    }
}

impl Bounds {
    /// The cap, below this process's open-file limit (each connection is a descriptor, and the
    /// store, logs and agents need some): three quarters of the soft limit at most.
    pub fn effective_max(&self) -> usize {
        let soft = std::fs::read_to_string("/proc/self/limits").ok().and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse::<usize>().ok())
        });
        match soft {
            Some(n) => self.max_connections.min(n * 3 / 4).max(16),
            None => self.max_connections,
        }
    }
}

/// Serves `app` on `listener` until `shutdown` resolves; over TLS with `tls`.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    bounds: Bounds,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let acceptor = tls.map(TlsAcceptor::from);
    let max = bounds.effective_max();
    let slots = Arc::new(Semaphore::new(max));
    let graceful = GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(bounds.header_timeout);
    tokio::pin!(shutdown);
    let mut refused = 0u64;
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of descriptors, most likely: wait for some to be freed.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(max, refused, "connection cap reached; closing new connections");
            }
            continue; // Dropped: closed at once.
        };
        let (app, builder, watcher, acceptor) =
            (app.clone(), builder.clone(), graceful.watcher(), acceptor.clone());
        let deadline = bounds.header_timeout;
        tokio::spawn(async move {
            let Some(acceptor) = acceptor else {
                let conn =
                    builder.serve_connection_with_upgrades(TokioIo::new(stream), with_peer(app, Peer(None)));
                let _ = watcher.watch(conn.into_owned()).await;
                drop(slot);
                return;
            };
            // A handshake is bounded like headers are: a client that stalls in it is dropped.
            let Ok(Ok(tls)) = tokio::time::timeout(deadline, acceptor.accept(stream)).await else { return };
            let peer =
                tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|c| PeerCert::parse(c));
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), with_peer(app, Peer(peer)));
            let _ = watcher.watch(conn.into_owned()).await;
            drop(slot);
        });
    }
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
    }
}

/// `app` with `peer` added to each request's extensions.
fn with_peer(
    app: axum::Router,
    peer: Peer,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future = impl std::future::Future<Output = Result<axum::response::Response, std::convert::Infallible>>
                 + Send
                 + 'static,
> + Clone {
    use tower::ServiceExt;
    let f = move |mut r: hyper::Request<hyper::body::Incoming>| {
        r.extensions_mut().insert(peer.clone());
        app.clone().oneshot(r.map(axum::body::Body::new))
    };
    ServiceFn(f)
}

/// A cloneable hyper service from a closure (hyper's `service_fn` is not `Clone`).
#[derive(Clone)]
struct ServiceFn<F>(F);

impl<F, Fut> hyper::service::Service<hyper::Request<hyper::body::Incoming>> for ServiceFn<F>
where
    F: Fn(hyper::Request<hyper::body::Incoming>) -> Fut,
    Fut: std::future::Future<Output = Result<axum::response::Response, std::convert::Infallible>>,
{
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = Fut;
    fn call(&self, req: hyper::Request<hyper::body::Incoming>) -> Fut {
        (self.0)(req)
    }
}
