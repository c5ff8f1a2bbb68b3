//! The token files in the data directory (mode 0600): the API token and the cluster token, and
//! their copy in the store that every member of a control plane shares.

use std::path::Path;

/// Shortest token accepted from a file (generated ones are 64 hex digits: 32 random bytes).
pub(crate) const MIN_TOKEN_CHARS: usize = 32;

/// Reads a token file, or creates it (mode 0600) with a fresh random token. A file others can
/// read is made private (with a warning); a token too short to be a secret is refused.
pub(crate) fn token_file(path: &Path) -> anyhow::Result<String> {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(t) = std::fs::read_to_string(path) {
        let t = t.trim().to_string();
        if !t.is_empty() {
            anyhow::ensure!(
                t.len() >= MIN_TOKEN_CHARS,
                "{} holds a token of {} characters; tend needs at least {MIN_TOKEN_CHARS} (delete the file to have a random one made)",
                path.display(),
                t.len()
            );
            let mode = std::fs::metadata(path)?.permissions().mode();
            if mode & 0o077 != 0 {
                tracing::warn!(file = %path.display(), mode = format!("{:o}", mode & 0o777), "token file readable by others; made private (0600)");
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
            }
            return Ok(t);
        }
    }
    let t = tend_control::ids::random_hex(32)?;
    write_private(path, &t)?;
    Ok(t)
}

/// The two tokens must differ: an agent's token must not open the user API.
pub(crate) fn check_pair(api: &str, cluster: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        api != cluster,
        "the API token and the cluster token are the same: give each its own (delete one token file to have a new one made)"
    );
    Ok(())
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
        check_pair(&local.0, &local.1)?;
        return Ok(local);
    }
    let stored: (String, String) = match r.responses.first() {
        Some(tend_store::OpResponse::Get(Some(kv))) => serde_json::from_slice(&kv.value)?,
        _ => anyhow::bail!("the cluster's tokens vanished from the store"),
    };
    check_pair(&stored.0, &stored.1)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn token_files_are_private_long_and_distinct() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = token_file(&dir.path().join("new")).unwrap();
        assert_eq!(fresh.len(), 64, "32 random bytes");
        let mode = std::fs::metadata(dir.path().join("new")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A readable file is made private; its token is kept.
        let open = dir.path().join("open");
        std::fs::write(&open, "a".repeat(40)).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(token_file(&open).unwrap(), "a".repeat(40));
        assert_eq!(std::fs::metadata(&open).unwrap().permissions().mode() & 0o777, 0o600);
        // A token too short to be a secret is refused, and the file left as it is.
        let short = dir.path().join("short");
        std::fs::write(&short, "x").unwrap();
        let e = token_file(&short).unwrap_err().to_string();
        assert!(e.contains("at least 32"), "{e}");
        assert_eq!(std::fs::read_to_string(&short).unwrap(), "x");
        assert!(check_pair(&fresh, &fresh).unwrap_err().to_string().contains("the same"));
        check_pair(&fresh, &"a".repeat(40)).unwrap();
    }
}
