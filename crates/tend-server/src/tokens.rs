//! The token files in the data directory (mode 0600): the API token and the cluster token.

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
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(path)?;
    std::io::Write::write_all(&mut f, t.as_bytes())?;
    Ok(t)
}
