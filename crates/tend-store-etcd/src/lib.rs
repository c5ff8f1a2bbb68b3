//! The `StateStore` on etcd, through the `etcd-client` crate: what lets several `tend server`
//! processes share one replicated store (and elect a leader on it).
//!
//! - Keys live under a configurable prefix (`<prefix>k/<key>`; the store's own meta key is
//!   `<prefix>meta/format_version`), so several tend clusters can share one etcd.
//! - Revisions are etcd's minus the revision at which this store was created: a fresh store
//!   starts at 0 like every backend, and revisions only grow (writes of other prefixes to the same
//!   etcd make them jump, which tend never relies on not happening).
//! - Leases are etcd's (they expire by etcd's clock; `expire_leases` has nothing to do).
//! - Watches resume after a lost connection from the next revision; when that revision was
//!   compacted they deliver a [`Change::Resync`] of the watched keys instead. A watch of every
//!   key reports progress ([`Change::Progress`]) on request ([`SyncHandle`]) so that a follower
//!   knows it is current even when the etcd revision moved for keys it does not watch: it writes
//!   a marker (`<prefix>meta/sync`) and reports its revision once the marker's event arrives, as
//!   events come in revision order. (etcd 3.4's own progress requests answer with the current
//!   revision before undelivered events, so they cannot serve.)

mod convert;
mod watch;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client as ec;
use tend_store::*;

pub use convert::Frame;

/// Client TLS for a secured etcd (PEM files).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EtcdTls {
    /// CA that signed etcd's server certificates.
    pub ca: Option<PathBuf>,
    /// Client certificate and key, when etcd asks for one.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// Where the store is: endpoints, key prefix, TLS, request timeout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    /// Ends with `/`.
    pub prefix: String,
    pub tls: Option<EtcdTls>,
    pub timeout: Duration,
}

/// The prefix when the URL names none.
pub const DEFAULT_PREFIX: &str = "tend/";

impl EtcdConfig {
    /// Parses `etcd://HOST:PORT[,HOST:PORT…][/prefix]`.
    pub fn parse(url: &str) -> Result<EtcdConfig, String> {
        let rest = url
            .strip_prefix("etcd://")
            .ok_or_else(|| format!("`{url}`: an etcd store is etcd://HOST:PORT[,HOST:PORT…][/prefix]"))?;
        let (hosts, prefix) = match rest.split_once('/') {
            Some((h, p)) => (h, p.trim_matches('/')),
            None => (rest, ""),
        };
        let mut endpoints = Vec::new();
        for h in hosts.split(',') {
            let (host, port) =
                h.rsplit_once(':').ok_or_else(|| format!("`{h}` in `{url}`: expected HOST:PORT"))?;
            let ok_port = port.parse::<u16>().is_ok_and(|p| p > 0);
            if host.is_empty() || !ok_port || h.contains(char::is_whitespace) {
                return Err(format!("`{h}` in `{url}`: expected HOST:PORT with a port 1–65535"));
            }
            endpoints.push(h.to_string());
        }
        if prefix.contains("//") || prefix.contains(char::is_whitespace) || prefix.len() > 200 {
            return Err(format!("prefix `{prefix}` in `{url}`: use up to 200 characters, no spaces or `//`"));
        }
        let prefix = if prefix.is_empty() { DEFAULT_PREFIX.to_string() } else { format!("{prefix}/") };
        Ok(EtcdConfig { endpoints, prefix, tls: None, timeout: Duration::from_secs(5) })
    }
}

/// A tend store inside etcd.
pub struct EtcdStore {
    client: ec::Client,
    frame: Frame,
    meta_key: Vec<u8>,
}

fn io(e: ec::Error) -> StoreError {
    convert::error(e, None)
}

/// Whether etcd was not reached at all (nothing was sent): safe to send again, to another
/// member — the client's balancer may still pick one that just died.
fn unsent(e: &ec::Error) -> bool {
    let m = e.to_string();
    m.contains("tcp connect error")
        || m.contains("Connection refused")
        || m.contains("error trying to connect")
}

/// Runs `f`, again while etcd cannot be reached (up to ~3 s).
async fn retry<T, F, Fut>(mut f: F) -> Result<T, ec::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ec::Error>>,
{
    let mut wait = Duration::from_millis(25);
    for _ in 0..12 {
        match f().await {
            Err(e) if unsent(&e) => {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_millis(400));
            }
            r => return r,
        }
    }
    f().await
}

impl EtcdStore {
    /// Connects, and creates the store (its format key) when the prefix holds none yet.
    pub async fn connect(cfg: &EtcdConfig) -> Result<Arc<EtcdStore>, StoreError> {
        let mut opts = ec::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(cfg.timeout)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(true);
        let scheme = if cfg.tls.is_some() { "https" } else { "http" };
        if let Some(t) = &cfg.tls {
            opts = opts.with_tls(tls_options(t)?);
        }
        let endpoints: Vec<String> = cfg.endpoints.iter().map(|e| format!("{scheme}://{e}")).collect();
        let client = ec::Client::connect(endpoints, Some(opts)).await.map_err(io)?;
        let meta_key = format!("{}meta/{FORMAT_VERSION_KEY}", cfg.prefix).into_bytes();
        let frame = Frame::new(&cfg.prefix, 0);
        let mut store = EtcdStore { client, frame, meta_key };
        store.frame.base = store.init(cfg).await?;
        Ok(Arc::new(store))
    }

    /// Writes the format key if absent; returns the etcd revision the store was created at.
    async fn init(&self, cfg: &EtcdConfig) -> Result<i64, StoreError> {
        let k = self.meta_key.clone();
        let txn = ec::Txn::new()
            .when([ec::Compare::version(k.clone(), ec::CompareOp::Equal, 0)])
            .and_then([ec::TxnOp::put(k.clone(), FORMAT_VERSION.to_string(), None)])
            .or_else([ec::TxnOp::get(k, None)]);
        let r = retry(|| {
            let (mut c, t) = (self.client.kv_client(), txn.clone());
            async move { c.txn(t).await }
        })
        .await
        .map_err(io)?;
        if r.succeeded() {
            return Ok(r.header().map_or(0, |h| h.revision()));
        }
        let kv = r.op_responses().into_iter().find_map(|o| match o {
            ec::TxnOpResponse::Get(g) => g.kvs().first().cloned(),
            _ => None,
        });
        let kv = kv.ok_or_else(|| StoreError::Io("etcd: the format key vanished".into()))?;
        let found = String::from_utf8_lossy(kv.value()).to_string();
        if found != FORMAT_VERSION.to_string() {
            return Err(StoreError::UnsupportedFormat {
                path: format!("etcd {} prefix {}", cfg.endpoints.join(","), cfg.prefix),
                found,
                supported: FORMAT_VERSION,
            });
        }
        Ok(kv.create_revision())
    }

    /// etcd's current revision (not relative to this store).
    async fn etcd_revision(&self) -> Result<i64, StoreError> {
        let opts = ec::GetOptions::new().with_count_only();
        let r = retry(|| {
            let (mut c, k, o) = (self.client.kv_client(), self.meta_key.clone(), opts.clone());
            async move { c.get(k, Some(o)).await }
        })
        .await
        .map_err(io)?;
        Ok(r.header().map_or(0, |h| h.revision()))
    }

    /// The frame (prefix and base revision) this store maps keys and revisions with.
    pub fn frame(&self) -> &Frame {
        &self.frame
    }

    /// Health of the etcd member this client reaches: (its version, the cluster's leader id).
    pub async fn status(&self) -> Result<(String, u64), StoreError> {
        let r = retry(|| {
            let mut c = self.client.maintenance_client();
            async move { c.status().await }
        })
        .await
        .map_err(io)?;
        Ok((r.version().to_string(), r.leader()))
    }
}

fn tls_options(t: &EtcdTls) -> Result<ec::TlsOptions, StoreError> {
    let read = |p: &PathBuf| {
        std::fs::read(p).map_err(|e| StoreError::Io(format!("cannot read {}: {e}", p.display())))
    };
    let mut o = ec::TlsOptions::new();
    if let Some(ca) = &t.ca {
        o = o.ca_certificate(ec::Certificate::from_pem(read(ca)?));
    }
    match (&t.cert, &t.key) {
        (Some(c), Some(k)) => o = o.identity(ec::Identity::from_pem(read(c)?, read(k)?)),
        (None, None) => {}
        _ => return Err(StoreError::InvalidRequest("etcd TLS: give both a client cert and its key".into())),
    }
    Ok(o)
}

#[async_trait]
impl StateStore for EtcdStore {
    async fn range(&self, prefix: &str) -> Result<RangeResponse, StoreError> {
        let opts = ec::GetOptions::new().with_prefix();
        let r = retry(|| {
            let (mut c, k, o) = (self.client.kv_client(), self.frame.key(prefix), opts.clone());
            async move { c.get(k, Some(o)).await }
        })
        .await
        .map_err(io)?;
        let kvs = r.kvs().iter().filter_map(|kv| self.frame.kv(kv)).collect();
        Ok(RangeResponse { kvs, revision: self.frame.from_etcd(r.header().map_or(0, |h| h.revision())) })
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        let lease = txn.success.iter().chain(&txn.failure).find_map(|op| match op {
            TxnOp::Put { lease: Some(l), .. } => Some(*l),
            _ => None,
        });
        let f = &self.frame;
        let t = ec::Txn::new()
            .when(txn.compare.iter().map(|c| f.compare(c)).collect::<Vec<_>>())
            .and_then(txn.success.iter().map(|o| f.op(o)).collect::<Vec<_>>())
            .or_else(txn.failure.iter().map(|o| f.op(o)).collect::<Vec<_>>());
        let r = retry(|| {
            let (mut c, t) = (self.client.kv_client(), t.clone());
            async move { c.txn(t).await }
        })
        .await
        .map_err(|e| convert::error(e, lease))?;
        let ops = if r.succeeded() { &txn.success } else { &txn.failure };
        let responses =
            ops.iter().zip(r.op_responses().iter()).map(|(op, resp)| f.response(op, resp)).collect();
        Ok(TxnResponse {
            succeeded: r.succeeded(),
            revision: f.from_etcd(r.header().map_or(0, |h| h.revision())),
            responses,
        })
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        Ok(self.frame.from_etcd(self.etcd_revision().await?))
    }

    async fn grant_lease(&self, ttl_seconds: i64) -> Result<LeaseGrant, StoreError> {
        if ttl_seconds < 1 {
            return Err(StoreError::InvalidRequest(format!("lease TTL must be ≥ 1 s, not {ttl_seconds}")));
        }
        let r = retry(|| {
            let mut c = self.client.lease_client();
            async move { c.grant(ttl_seconds, None).await }
        })
        .await
        .map_err(io)?;
        Ok(LeaseGrant { id: r.id(), ttl_seconds: r.ttl() })
    }

    async fn keep_alive(&self, id: LeaseId) -> Result<i64, StoreError> {
        let (mut keeper, mut stream) = retry(|| {
            let mut c = self.client.lease_client();
            async move { c.keep_alive(id).await }
        })
        .await
        .map_err(|e| convert::error(e, Some(id)))?;
        keeper.keep_alive().await.map_err(|e| convert::error(e, Some(id)))?;
        let r = stream.message().await.map_err(|e| convert::error(e, Some(id)))?;
        match r {
            Some(r) if r.ttl() > 0 => Ok(r.ttl()),
            _ => Err(StoreError::LeaseNotFound(id)),
        }
    }

    async fn lease_time_to_live(&self, id: LeaseId) -> Result<i64, StoreError> {
        let r = retry(|| {
            let mut c = self.client.lease_client();
            async move { c.time_to_live(id, None).await }
        })
        .await
        .map_err(|e| convert::error(e, Some(id)))?;
        if r.ttl() < 0 {
            return Err(StoreError::LeaseNotFound(id));
        }
        Ok(r.ttl())
    }

    async fn revoke_lease(&self, id: LeaseId) -> Result<(), StoreError> {
        retry(|| {
            let mut c = self.client.lease_client();
            async move { c.revoke(id).await }
        })
        .await
        .map_err(|e| convert::error(e, Some(id)))?;
        Ok(())
    }

    async fn expire_leases(&self) -> Result<(), StoreError> {
        Ok(()) // etcd expires leases by its own clock.
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<Watcher, StoreError> {
        if from > 0 {
            // A compacted start fails now, as on every backend (not later in the stream).
            let opts =
                ec::GetOptions::new().with_prefix().with_count_only().with_revision(self.frame.to_etcd(from));
            match self.client.kv_client().get(self.frame.key(prefix), Some(opts)).await {
                Err(e) if e.to_string().contains("compacted") => {
                    return Err(StoreError::Compacted { requested: from, compacted: 0 })
                }
                _ => {} // Fine, or a future revision: the watch waits for it.
            }
        }
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (sync_tx, sync_rx) = tokio::sync::mpsc::unbounded_channel();
        let w = watch::Follow {
            client: self.client.clone(),
            frame: self.frame.clone(),
            prefix: prefix.to_string(),
        };
        // "From now" is fixed here, not when the stream is set up in the background: a change
        // made right after this call returns is seen.
        let start = if from > 0 { self.frame.to_etcd(from) } else { self.etcd_revision().await? + 1 };
        tokio::spawn(w.run(start, tx, sync_rx));
        // Only a watch of every key also sees the sync marker.
        Ok(if prefix.is_empty() {
            Watcher::with_sync(rx, SyncHandle::new(sync_tx))
        } else {
            Watcher::new(rx)
        })
    }

    async fn compact(&self, rev: Revision) -> Result<(), StoreError> {
        let current = self.revision().await?;
        if rev > current {
            return Err(StoreError::InvalidRequest(format!(
                "cannot compact to {rev}: beyond the current revision {current}"
            )));
        }
        match retry(|| {
            let (mut c, r) = (self.client.clone(), self.frame.to_etcd(rev));
            async move { c.compact(r, None).await }
        })
        .await
        {
            Err(e) if e.to_string().contains("compacted") => {
                Err(StoreError::Compacted { requested: rev, compacted: 0 })
            }
            Err(e) => Err(io(e)),
            Ok(_) => Ok(()),
        }
    }
}
