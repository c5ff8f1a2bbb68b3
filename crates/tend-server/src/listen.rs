//! Serving the API with bounds: at most `max_connections` open connections (one more is closed
//! at once), a deadline on each request's headers (slow-header clients are dropped, and so are
//! keep-alive connections idle that long), and a graceful stop that waits a few seconds for
//! requests in flight.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

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

/// Serves `app` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    bounds: Bounds,
    shutdown: impl std::future::Future<Output = ()>,
) {
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
        let svc = TowerToHyperService::new(app.clone());
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc).into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(slot);
        });
    }
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
    }
}
