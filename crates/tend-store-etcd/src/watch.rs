//! One watch on etcd, followed for as long as its receiver lives: events in order; progress
//! marks on request (a marker key written, its event awaited); a lost stream resumed from the
//! next revision; a compacted one answered with a resync of the watched keys.

use std::time::Duration;

use etcd_client as ec;
use tend_store::{Change, EventKind, RangeResponse, WatchEvent};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use crate::convert::Frame;

pub struct Follow {
    pub client: ec::Client,
    pub frame: Frame,
    pub prefix: String,
}

/// Why a stream ended.
enum End {
    /// The receiver is gone: stop.
    Closed,
    /// Reconnect from the next revision.
    Lost,
    /// The next revision was compacted: resync.
    Compacted,
}

impl Follow {
    /// Follows from etcd revision `next` (0: from now) until the receiver is dropped.
    pub async fn run(self, mut next: i64, tx: UnboundedSender<Change>, mut sync: UnboundedReceiver<()>) {
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.stream(&mut next, &tx, &mut sync).await {
                End::Closed => return,
                End::Compacted => match self.resync(&tx).await {
                    Some(rev) => next = rev + 1,
                    None if tx.is_closed() => return,
                    None => {}
                },
                End::Lost => {}
            }
            if tx.is_closed() {
                return;
            }
            tracing::debug!(prefix = %self.prefix, next, "etcd watch lost; resuming");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    async fn stream(
        &self,
        next: &mut i64,
        tx: &UnboundedSender<Change>,
        sync: &mut UnboundedReceiver<()>,
    ) -> End {
        let mut opts = ec::WatchOptions::new().with_prefix();
        if *next > 0 {
            opts = opts.with_start_revision(*next);
        }
        // A watch of every key covers the whole root, so that it sees the sync marker too.
        let key = if self.prefix.is_empty() {
            self.frame.root.clone().into_bytes()
        } else {
            self.frame.key(&self.prefix)
        };
        let Ok(stream) = self.client.watch_client().watch(key, Some(opts)).await else {
            return End::Lost;
        };
        let (_requests, mut responses) = stream.split();
        let sync_key = self.frame.sync_key();
        let mut kv_client = self.client.kv_client();
        loop {
            tokio::select! {
                msg = responses.message() => {
                    let Ok(Some(r)) = msg else { return End::Lost };
                    let header = r.header().map_or(0, |h| h.revision());
                    if r.canceled() {
                        return if r.compact_revision() > 0 { End::Compacted } else { End::Lost };
                    }
                    if r.created() {
                        if *next == 0 {
                            *next = header + 1;
                        }
                        continue;
                    }
                    for ev in r.events() {
                        let Some(raw) = ev.kv() else { continue };
                        *next = (*next).max(raw.mod_revision() + 1);
                        if raw.key() == sync_key.as_slice() {
                            // Every event before the marker was delivered.
                            let p = Change::Progress(self.frame.from_etcd(raw.mod_revision()));
                            if tx.send(p).is_err() {
                                return End::Closed;
                            }
                            continue;
                        }
                        let Some(kv) = self.frame.kv(raw) else { continue };
                        let kind = match ev.event_type() {
                            ec::EventType::Put => EventKind::Put,
                            ec::EventType::Delete => EventKind::Delete,
                        };
                        if tx.send(Change::Event(WatchEvent { kind, kv })).is_err() {
                            return End::Closed;
                        }
                    }
                }
                Some(()) = sync.recv() => {
                    while sync.try_recv().is_ok() {} // Requests made together: one marker.
                    if kv_client.put(sync_key.clone(), Vec::new(), None).await.is_err() {
                        return End::Lost;
                    }
                }
                _ = tx.closed() => return End::Closed,
            }
        }
    }

    /// The watched keys as they are now, delivered as a resync; returns its etcd revision.
    async fn resync(&self, tx: &UnboundedSender<Change>) -> Option<i64> {
        let opts = ec::GetOptions::new().with_prefix();
        let r = self.client.kv_client().get(self.frame.key(&self.prefix), Some(opts)).await.ok()?;
        let rev = r.header().map_or(0, |h| h.revision());
        let kvs = r.kvs().iter().filter_map(|kv| self.frame.kv(kv)).collect();
        tracing::warn!(prefix = %self.prefix, revision = rev, "etcd watch history compacted; resyncing");
        tx.send(Change::Resync(RangeResponse { kvs, revision: self.frame.from_etcd(rev) })).ok()?;
        Some(rev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tend_store::StateStore;

    /// A watch that resumes at a compacted revision (its stream was lost meanwhile) delivers the
    /// watched keys as they are, then goes on with new events.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_watch_resuming_at_a_compacted_revision_resyncs() {
        let dir = tempfile::tempdir().unwrap();
        let Some(c) = tokio::task::block_in_place(|| tend_testkit::etcd::EtcdCluster::start(dir.path(), 1))
        else {
            eprintln!("SKIPPED: no etcd binary (install Debian's etcd-server, or set TEND_ETCD)");
            return;
        };
        let cfg = crate::EtcdConfig::parse(&format!("etcd://{}/t", c.endpoints())).unwrap();
        let s = crate::EtcdStore::connect(&cfg).await.unwrap();
        for i in 0..5 {
            s.put(&format!("k{i}"), b"x").await.unwrap();
        }
        s.delete("k0").await.unwrap();
        s.compact(5).await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (_sync, sync_rx) = tokio::sync::mpsc::unbounded_channel();
        let f = Follow { client: s.client.clone(), frame: s.frame.clone(), prefix: String::new() };
        tokio::spawn(f.run(s.frame.to_etcd(2), tx, sync_rx));
        let first = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap();
        let Some(Change::Resync(r)) = first else { panic!("expected a resync, got {first:?}") };
        let keys: Vec<&str> = r.kvs.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(keys, vec!["k1", "k2", "k3", "k4"]);
        assert_eq!(r.revision, 6);
        s.put("k9", b"y").await.unwrap();
        loop {
            match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap() {
                Some(Change::Event(e)) => break assert_eq!((e.kv.key.as_str(), e.revision()), ("k9", 7)),
                Some(Change::Progress(_)) => continue,
                other => panic!("{other:?}"),
            }
        }
    }
}
