//! A member of a highly available control plane (`tend server`): it campaigns for leadership on
//! the store; the leader runs the control plane on a store fenced by its leadership (every
//! write guarded by the leadership key) and serves the API; followers forward every request to
//! the leader. A leader whose keep-alive fails steps down at once — writes refused, every loop
//! stopped — well before its lease can have expired; another member is elected and resumes every
//! plan from the store, under a higher epoch that agents then require.

mod dispatch;

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use tend_control::leader::{self, Leadership, MemberRecord};
use tend_model::SharedClock;
use tend_store::fenced::Fenced;
use tend_store::StateStore;

use crate::{Server, ServerConfig};

/// How a member is set up.
#[derive(Clone)]
pub struct MemberConfig {
    pub server: ServerConfig,
    /// Unique among the members.
    pub id: String,
    /// The URL other members forward requests to (`http://HOST:PORT`).
    pub advertise: String,
    /// TTL of the leadership lease; keep-alives every third of it.
    pub ttl_seconds: i64,
    /// The store is this process's alone (redb holds a file lock): a leadership key left by a
    /// previous process is stale and removed at once, instead of waiting out its lease.
    pub exclusive_store: bool,
    /// What `tend status` shows of the store.
    pub store_info: tend_api::StoreInfo,
}

/// Checks the store's health for `tend status` (etcd: the member's version and its leader).
pub type HealthCheck =
    Arc<dyn Fn() -> futures::future::BoxFuture<'static, Result<String, String>> + Send + Sync>;

/// A member's role now.
#[derive(Clone)]
pub enum Role {
    Campaigning,
    Leader { server: Server, router: axum::Router, epoch: i64 },
    Follower { leader: MemberRecord, epoch: i64 },
}

/// One `tend server` process of a control plane.
pub struct Member {
    pub cfg: MemberConfig,
    store: Arc<dyn StateStore>,
    clock: SharedClock,
    tokens: (String, String),
    pki: Option<Arc<crate::pki::Pki>>,
    role: RwLock<Role>,
    /// Counts role changes: a request the leader's API began, and the stream it answers, end
    /// when this member stops leading (see `dispatch`), instead of waiting on a control plane
    /// that no longer runs.
    terms: tokio::sync::watch::Sender<u64>,
    health: HealthCheck,
    http: reqwest::Client,
    started_ms: u64,
}

impl Member {
    /// Joins the control plane on `store` (tokens shared through it).
    pub async fn new(
        cfg: MemberConfig,
        store: Arc<dyn StateStore>,
        clock: SharedClock,
        health: HealthCheck,
    ) -> anyhow::Result<Arc<Member>> {
        anyhow::ensure!(cfg.ttl_seconds >= 2, "the leadership TTL must be at least 2 s");
        crate::private_dir(&cfg.server.data_dir)?;
        let tokens = crate::tokens::shared(&*store, &cfg.server.data_dir).await?;
        let pki = match cfg.server.plain_http {
            true => None,
            false => {
                let mut hosts = cfg.server.tls_hosts.clone();
                hosts.extend(advertised_host(&cfg.advertise));
                Some(crate::pki::Pki::shared(&*store, &cfg.server.data_dir, &hosts).await?)
            }
        };
        let http = crate::member_client(pki.as_deref(), Duration::from_secs(90))?;
        let started_ms = clock.now_ms();
        Ok(Arc::new(Member {
            cfg,
            store,
            clock,
            tokens,
            pki,
            role: RwLock::new(Role::Campaigning),
            terms: tokio::sync::watch::Sender::new(0),
            health,
            http,
            started_ms,
        }))
    }

    pub fn role(&self) -> Role {
        self.role.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
    fn set_role(&self, r: Role) {
        *self.role.write().unwrap_or_else(|e| e.into_inner()) = r;
        self.terms.send_modify(|t| *t += 1);
    }

    /// A receiver that sees the next role change (subscribe before reading the role).
    pub(crate) fn term_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.terms.subscribe()
    }
    fn me(&self) -> MemberRecord {
        MemberRecord { id: self.cfg.id.clone(), url: self.cfg.advertise.clone(), since_ms: self.started_ms }
    }
    fn ttl(&self) -> Duration {
        Duration::from_secs(self.cfg.ttl_seconds as u64)
    }

    /// Serves the API and takes part in elections until `shutdown` resolves; a leader then
    /// resigns (its successor need not wait for the lease).
    pub async fn run(
        self: Arc<Self>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let listen = self.cfg.server.listen;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener.local_addr()?;
        let data_dir = self.cfg.server.data_dir.clone();
        let scheme = if self.pki.is_some() { "https" } else { "http" };
        std::fs::write(data_dir.join("address"), format!("{scheme}://{addr}\n"))?;
        tracing::info!(%addr, id = %self.cfg.id, "control plane member listening");
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let app = dispatch::router(self.clone());
        let mut serve_stop = stop_rx.clone();
        let bounds = self.cfg.server.bounds;
        let tls = self.pki.as_ref().map(|p| p.server_tls.clone());
        let serve = tokio::spawn(crate::listen::serve(listener, app, bounds, tls, async move {
            let _ = serve_stop.wait_for(|s| *s).await;
        }));
        let user_api = match &self.cfg.server.user_api {
            Some(u) => {
                let l = tokio::net::TcpListener::bind(u.listen)
                    .await
                    .with_context(|| format!("cannot listen on {} (--api-listen)", u.listen))?;
                tracing::info!(addr = %l.local_addr()?, "user API listening with the given certificate");
                let mut stop = stop_rx.clone();
                let app = dispatch::router(self.clone());
                Some(tokio::spawn(crate::listen::serve(l, app, bounds, Some(u.tls.clone()), async move {
                    let _ = stop.wait_for(|s| *s).await;
                })))
            }
            None => None,
        };
        let announce = tokio::spawn(self.clone().announce_loop());
        let elect = tokio::spawn(self.clone().election_loop(stop_rx));
        shutdown.await;
        let _ = stop_tx.send(true);
        let _ = elect.await;
        announce.abort();
        let _ = serve.await;
        if let Some(u) = user_api {
            let _ = u.await;
        }
        Ok(())
    }

    /// Keeps this member listed under `meta/members/` (for `tend status`).
    async fn announce_loop(self: Arc<Self>) {
        loop {
            if let Ok(lease) = self.store.grant_lease(self.cfg.ttl_seconds).await {
                if leader::announce(&*self.store, &self.me(), lease.id).await.is_ok() {
                    while tokio::time::timeout(self.ttl() / 3, self.store.keep_alive(lease.id))
                        .await
                        .is_ok_and(|r| r.is_ok())
                    {
                        tokio::time::sleep(self.ttl() / 3).await;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn election_loop(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        if self.cfg.exclusive_store {
            // Only this process opens the store: any leadership on it is a dead process's.
            if let Ok(Some(kv)) = self.store.get(leader::LEADER_KEY).await {
                if let Some(l) = kv.lease {
                    let _ = self.store.revoke_lease(l).await;
                }
                let _ = self.store.delete(leader::LEADER_KEY).await;
            }
        }
        while !*stop.borrow() {
            match self.campaign().await {
                Ok(Some(l)) => self.lead(l, &mut stop).await,
                Ok(None) => self.follow(&mut stop).await,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot campaign for leadership; retrying");
                    self.set_role(Role::Campaigning);
                    let _ = tokio::time::timeout(Duration::from_millis(500), stop.changed()).await;
                }
            }
        }
    }

    async fn campaign(&self) -> anyhow::Result<Option<Leadership>> {
        let lease = self.store.grant_lease(self.cfg.ttl_seconds).await?;
        let won = leader::try_acquire(&*self.store, &self.me(), lease.id).await?;
        if won.is_none() {
            let _ = self.store.revoke_lease(lease.id).await;
        }
        Ok(won)
    }

    /// While another leads: forward to it, until its key is gone (then campaign again).
    async fn follow(&self, stop: &mut tokio::sync::watch::Receiver<bool>) {
        // A dead leader's key goes when its lease expires: notice within a fifth of a second.
        let poll = (self.ttl() / 25).max(Duration::from_millis(100));
        loop {
            match leader::current(&*self.store).await {
                Ok(Some((rec, epoch))) if rec.id != self.cfg.id => {
                    self.set_role(Role::Follower { leader: rec, epoch });
                }
                Ok(_) => return,
                Err(e) => tracing::warn!(error = %e, "cannot read the leadership"),
            }
            if tokio::time::timeout(poll, stop.changed()).await.is_ok() {
                return;
            }
        }
    }

    /// Leads until the leadership is lost (or the member stops): runs the control plane on the
    /// fenced store, keeps the lease alive, steps down at once when that fails.
    async fn lead(&self, l: Leadership, stop: &mut tokio::sync::watch::Receiver<bool>) {
        let elected = Instant::now();
        let fenced = Fenced::new(self.store.clone(), leader::LEADER_KEY, l.epoch);
        let mut cfg = self.cfg.server.clone();
        cfg.control.leader_epoch = l.epoch.max(0) as u64;
        let store: Arc<dyn StateStore> = fenced.clone();
        let server =
            match Server::with_tokens(cfg, store, self.clock.clone(), self.tokens.clone(), self.pki.clone())
                .await
            {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "elected, but cannot start the control plane; resigning");
                    fenced.fence();
                    let _ = leader::resign(&*self.store, l).await;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    return;
                }
            };
        tracing::info!(
            epoch = l.epoch,
            load_ms = elected.elapsed().as_millis() as u64,
            "leading the control plane"
        );
        let router = crate::api::router(server.clone());
        self.set_role(Role::Leader { server: server.clone(), router, epoch: l.epoch });
        let why = self.keep_leading(l, stop).await;
        // Step down: no write from here on, every loop stopped.
        fenced.fence();
        server.control.stop();
        self.set_role(Role::Campaigning);
        tracing::warn!(epoch = l.epoch, "{why}");
        if *stop.borrow() {
            let _ = leader::resign(&*self.store, l).await;
        }
    }

    /// Keeps the lease alive every third of its TTL; returns why leadership ended. A keep-alive
    /// that fails or does not answer within a third of the TTL ends it: with the previous one at
    /// most a third of the TTL old, this member stops at two thirds of the TTL at the latest,
    /// before the lease can have expired in the store.
    async fn keep_leading(&self, l: Leadership, stop: &mut tokio::sync::watch::Receiver<bool>) -> String {
        let third = self.ttl() / 3;
        loop {
            if tokio::time::timeout(third, stop.changed()).await.is_ok() {
                return "stopping: leadership given up".into();
            }
            match tokio::time::timeout(third, self.store.keep_alive(l.lease)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    return format!("stepped down: the leadership lease could not be renewed ({e})")
                }
                Err(_) => return format!("stepped down: no answer to the lease keep-alive within {third:?}"),
            }
        }
    }
}

/// The host of an advertised URL (`https://10.0.0.1:7070` → `10.0.0.1`), for the certificate.
fn advertised_host(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let hostport = rest.split('/').next()?;
    let host = match hostport.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => hostport.rsplit_once(':').map_or(hostport, |(h, _)| h),
    };
    (!host.is_empty()).then(|| host.to_string())
}
