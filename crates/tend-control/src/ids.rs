//! Identifiers the control plane makes: the cluster id and epochs, random (from the operating
//! system's generator) or, in a simulation, derived from a seed.

use crate::ControlConfig;

/// A fresh identifier: random, or derived from the configured seed, a purpose and a salt.
pub(crate) fn fresh_id(
    cfg: &ControlConfig,
    purpose: &str,
    salt: u64,
    bytes: usize,
) -> anyhow::Result<String> {
    match cfg.id_seed {
        Some(seed) => {
            use sha2::Digest;
            let d = sha2::Sha256::digest(format!("{seed}/{purpose}/{salt}").as_bytes());
            Ok(hex::encode(&d[..bytes.min(32)]))
        }
        None => random_hex(bytes),
    }
}

/// `bytes` random bytes from the operating system, in hex.
pub fn random_hex(bytes: usize) -> anyhow::Result<String> {
    let mut b = vec![0u8; bytes];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no randomness from the system: {e}"))?;
    Ok(hex::encode(b))
}
