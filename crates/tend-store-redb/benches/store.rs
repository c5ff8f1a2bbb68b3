//! Store benchmark: durable puts/s on redb (single writer, concurrent writers with group commit,
//! batched transactions), printed beside the raw fdatasync rate of the same disk in the same run.

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use tend_model::SystemClock;
use tend_store::{StateStore, Txn, TxnOp};
use tend_store_redb::RedbStore;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let scale = if quick { 1 } else { 4 };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sync_rate = tend_testkit::fdatasync_rate(dir.path(), 500 * scale);
    println!("reference: raw 4 KiB write+fdatasync       {:>9.0} /s", sync_rate);
    rt.block_on(async {
        let store = RedbStore::open(dir.path().join("bench.redb"), Arc::new(SystemClock)).unwrap();
        // 1. One writer, one put at a time: every put is its own commit.
        let n = 500 * scale;
        let t = Instant::now();
        for i in 0..n {
            store.put(&format!("single/{i:08}"), b"value-of-about-thirty-two-bytes!").await.unwrap();
        }
        let single = n as f64 / t.elapsed().as_secs_f64();
        println!(
            "redb single writer durable puts           {:>9.0} /s  ({:.2}x fdatasync)",
            single,
            single / sync_rate
        );
        // 2. Concurrent writers: group commit folds queued puts into one fsync.
        for writers in [16usize, 64, 256] {
            let per = (4000 * scale) / writers;
            let t = Instant::now();
            let mut hs = Vec::new();
            for w in 0..writers {
                let s = store.clone();
                hs.push(tokio::spawn(async move {
                    for i in 0..per {
                        s.put(&format!("conc{writers}/{w:04}/{i:06}"), b"value-of-about-thirty-two-bytes!")
                            .await
                            .unwrap();
                    }
                }));
            }
            for h in hs {
                h.await.unwrap();
            }
            let rate = (per * writers) as f64 / t.elapsed().as_secs_f64();
            println!(
                "redb {writers:>3} concurrent writers, acked puts  {:>9.0} /s  ({:.2}x fdatasync)",
                rate,
                rate / sync_rate
            );
        }
        // 3. Batched: 100 puts in one transaction.
        let txns = 50 * scale;
        let t = Instant::now();
        for b in 0..txns {
            let mut txn = Txn::new();
            for i in 0..100 {
                txn = txn.then(TxnOp::put(
                    format!("batch/{b:06}/{i:03}"),
                    b"value-of-about-thirty-two-bytes!".to_vec(),
                ));
            }
            store.txn(txn).await.unwrap();
        }
        let batched = (txns * 100) as f64 / t.elapsed().as_secs_f64();
        println!(
            "redb batched puts (100 per txn)           {:>9.0} /s  ({:.2}x fdatasync)",
            batched,
            batched / sync_rate
        );
        std::io::stdout().flush().unwrap();
    });
}
