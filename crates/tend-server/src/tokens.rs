//! The token files in the data directory (mode 0600): the API token and the cluster token, and
//! their copy in the store that every member of a control plane shares.

use std::path::Path;

/// Reads a token file, or creates it (mode 0600) with a fresh random token.
pub(crate) fn token_file(path: &Path) -> anyhow::Result<String> {
    if let Ok(t) = std::fs::read_to_string(path) {
        let t = t.trim().to_string();
        if !t.is_empty() {
            return Ok(t);
        }
    }
    let t = tend_control::ids::random_hex(24)?;
    write_private(path, &t)?;
    Ok(t)
}

/// The cluster's tokens, shared by every member of the control plane through the store: the
/// first member to start offers its token files' values; the others adopt the stored ones and
/// rewrite their files, so one API token and one cluster token work against any member.
pub(crate) async fn shared(
    store: &dyn tend_store::StateStore,
    data_dir: &Path,
) -> anyhow::Result<(String, String)> {
    use tend_store::{Compare, Txn, TxnOp};
    const KEY: &str = "meta/tokens";
    let api_file = data_dir.join("token");
    let cluster_file = data_dir.join("cluster-token");
    let local = (token_file(&api_file)?, token_file(&cluster_file)?);
    let offer = serde_json::to_vec(&local)?;
    let r = store
        .txn(Txn::new().when(Compare::absent(KEY)).then(TxnOp::put(KEY, offer)).or_else(TxnOp::get(KEY)))
        .await?;
    if r.succeeded {
        return Ok(local);
    }
    let stored: (String, String) = match r.responses.first() {
        Some(tend_store::OpResponse::Get(Some(kv))) => serde_json::from_slice(&kv.value)?,
        _ => anyhow::bail!("the cluster's tokens vanished from the store"),
    };
    for (path, t) in [(&api_file, &stored.0), (&cluster_file, &stored.1)] {
        if std::fs::read_to_string(path).map(|s| s.trim().to_string()).ok().as_deref() != Some(t.as_str()) {
            write_private(path, t)?;
        }
    }
    Ok(stored)
}

fn write_private(path: &Path, t: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(path)?;
    std::io::Write::write_all(&mut f, t.as_bytes())?;
    Ok(())
}
