//! Identifiers and secrets the control plane makes: the cluster id and epochs (random, or from a
//! seed in a simulation) and the token files in the data directory (mode 0600).

use std::path::Path;

use crate::ServerConfig;

/// A fresh identifier: random, or derived from the configured seed, a purpose and a salt.
pub(crate) fn fresh_id(cfg: &ServerConfig, purpose: &str, salt: u64, bytes: usize) -> anyhow::Result<String> {
    match cfg.id_seed {
        Some(seed) => {
            use sha2::Digest;
            let d = sha2::Sha256::digest(format!("{seed}/{purpose}/{salt}").as_bytes());
            Ok(hex::encode(&d[..bytes.min(32)]))
        }
        None => random_hex(bytes),
    }
}

pub(crate) fn random_hex(bytes: usize) -> anyhow::Result<String> {
    use std::io::Read;
    let mut b = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(hex::encode(b))
}

/// Reads a token file, or creates it (mode 0600) with a fresh random token.
pub(crate) fn token_file(path: &Path) -> anyhow::Result<String> {
    if let Ok(t) = std::fs::read_to_string(path) {
        let t = t.trim().to_string();
        if !t.is_empty() {
            return Ok(t);
        }
    }
    let t = random_hex(24)?;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(path)?;
    std::io::Write::write_all(&mut f, t.as_bytes())?;
    Ok(t)
}
