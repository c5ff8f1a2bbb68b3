//! Durability of the redb backend: reopen, crash (SIGKILL) with concurrent writers, format version.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tend_model::{ManualClock, SystemClock};
use tend_store::{StateStore, StoreError, Txn, TxnOp};
use tend_store_redb::RedbStore;

#[tokio::test]
async fn reopen_keeps_data_revision_and_leases() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let clock = ManualClock::new(1_000_000);
    let lease;
    {
        let s = RedbStore::open(&path, Arc::new(clock.clone())).unwrap();
        s.put("a", b"1").await.unwrap();
        lease = s.grant_lease(30).await.unwrap().id;
        s.txn(Txn::new().then(TxnOp::put_with_lease("held", b"x".to_vec(), lease))).await.unwrap();
        s.close();
    }
    // A restart re-arms leases with their full TTL, as etcd does.
    clock.advance_ms(25_000);
    let s = RedbStore::open(&path, Arc::new(clock.clone())).unwrap();
    assert_eq!(s.revision().await.unwrap(), 2);
    assert_eq!(s.get("a").await.unwrap().unwrap().value, b"1");
    assert_eq!(s.lease_time_to_live(lease).await.unwrap(), 30);
    let next = s.grant_lease(5).await.unwrap().id;
    assert!(next > lease, "lease ids are not reused after a restart");
    clock.advance_ms(30_000);
    assert!(s.get("held").await.unwrap().is_none(), "lease expired after the restart");
    let mut w = s.watch("", 1).await.unwrap();
    let mut revs = Vec::new();
    while let Some(e) = w.try_next() {
        revs.push(e.revision());
    }
    assert_eq!(revs, vec![1, 2, 3], "history survives the restart");
}

#[tokio::test]
async fn unknown_format_version_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    {
        let s = RedbStore::open(&path, Arc::new(SystemClock)).unwrap();
        s.put("a", b"1").await.unwrap();
        s.close();
    }
    {
        let db = redb::Database::create(&path).unwrap();
        let w = db.begin_write().unwrap();
        {
            let mut meta = w.open_table(redb::TableDefinition::<&str, &[u8]>::new("meta")).unwrap();
            meta.insert(tend_store::FORMAT_VERSION_KEY, b"99".as_slice()).unwrap();
        }
        w.commit().unwrap();
    }
    match RedbStore::open(&path, Arc::new(SystemClock)) {
        Err(e @ StoreError::UnsupportedFormat { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("format version 99") && msg.contains("understands 1"), "{msg}");
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a store of format 99 was opened"),
    }
    // A file that is not a redb database at all.
    let junk = dir.path().join("junk.redb");
    std::fs::write(&junk, b"this is not a database, just text").unwrap();
    assert!(matches!(RedbStore::open(&junk, Arc::new(SystemClock)), Err(StoreError::Io(_))));
}

const CHILD_ENV: &str = "TEND_STORE_CRASH_CHILD";

/// The writer half of `sigkill_keeps_every_acknowledged_write`: run only as a child process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child_writer() {
    let Ok(path) = std::env::var(CHILD_ENV) else { return };
    let s = RedbStore::open(&path, Arc::new(SystemClock)).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    for w in 0..8 {
        let s = s.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            for i in 0.. {
                let key = format!("w{w}/{i:06}");
                s.put(&key, key.as_bytes()).await.unwrap();
                if tx.send(key).is_err() {
                    return;
                }
            }
        });
    }
    let mut out = std::io::stdout().lock();
    while let Some(k) = rx.recv().await {
        writeln!(out, "ACK {k}").unwrap();
        out.flush().unwrap();
    }
}

#[tokio::test]
async fn sigkill_keeps_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child_writer", "--nocapture"])
        .env(CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let stdout = child.stdout.take().unwrap();
    let mut acked = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if let Some(k) = line.strip_prefix("ACK ") {
            acked.push(k.to_string());
        }
        if acked.len() >= 400 || Instant::now() > deadline {
            break;
        }
    }
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    child.wait().unwrap();
    assert!(acked.len() >= 400, "child acknowledged only {} writes", acked.len());
    let s = RedbStore::open(&path, Arc::new(SystemClock)).unwrap();
    for k in &acked {
        let kv = s.get(k).await.unwrap();
        assert_eq!(kv.map(|kv| kv.value), Some(k.as_bytes().to_vec()), "acknowledged write {k} lost");
    }
    let total = s.range("").await.unwrap().kvs.len();
    assert!(total >= acked.len());
    assert_eq!(s.revision().await.unwrap() as usize, total, "one revision per put, none torn");
}
