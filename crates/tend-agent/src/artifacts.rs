//! Artifacts: fetch into a checksum-keyed cache, verify sha256, copy or extract into the sandbox,
//! refusing archive entries that would escape it.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tend_api::ArtifactRef;

/// Why an artifact could not be provided.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("cannot fetch {uri}: {error}")]
    Fetch { uri: String, error: String },
    #[error("checksum mismatch for {uri}: expected sha256 {expected}, got {actual}")]
    Checksum { uri: String, expected: String, actual: String },
    #[error("archive {uri}: entry `{entry}` would escape the sandbox ({why}); refusing the whole archive")]
    Escape { uri: String, entry: String, why: &'static str },
    #[error("cannot extract {uri}: {error}")]
    Extract { uri: String, error: String },
    #[error("{0}")]
    Io(String),
}

/// Where artifacts come from: the control plane for uploaded ones, HTTP, or local files.
pub struct Fetcher {
    pub cache_dir: PathBuf,
    pub servers: std::sync::Arc<crate::servers::Servers>,
    pub token: String,
    /// The control plane's client (uploaded artifacts).
    pub http: reqwest::Client,
    /// Everyone else's: `http://` and `https://` (the system's roots and a given CA).
    pub web: reqwest::Client,
}

/// An error and its causes, `a: b: c` (a TLS refusal is only in the causes of reqwest's error).
fn causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(c) = next {
        let s = c.to_string();
        if !out.contains(&s) {
            out = format!("{out}: {s}");
        }
        next = c.source();
    }
    out
}

fn io(e: impl std::fmt::Display) -> ArtifactError {
    ArtifactError::Io(e.to_string())
}

/// Copies a single-file artifact into the sandbox under its name: never through a link there
/// (`O_NOFOLLOW`), and executable when it is a script (`#!`) or an ELF binary — an uploaded
/// file carries no mode of its own.
pub fn place_file(a: &ArtifactRef, cached: &Path, dest: &Path) -> Result<(), ArtifactError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let single =
        matches!(Path::new(&a.name).components().collect::<Vec<_>>()[..], [std::path::Component::Normal(_)]);
    if !single {
        return Err(ArtifactError::Escape {
            uri: a.uri.clone(),
            entry: a.name.clone(),
            why: "a name that is not a plain file name",
        });
    }
    let mut src = std::fs::File::open(cached).map_err(io)?;
    let mut head = [0u8; 4];
    let n = std::io::Read::read(&mut src, &mut head).map_err(io)?;
    let runnable = head[..n].starts_with(b"#!") || head[..n] == *b"\x7fELF";
    let target = dest.join(&a.name);
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .mode(0o644)
        .open(&target)
        .map_err(|_| ArtifactError::Escape {
            uri: a.uri.clone(),
            entry: a.name.clone(),
            why: "a link or special file where the artifact goes",
        })?;
    std::io::Write::write_all(&mut out, &head[..n]).map_err(io)?;
    std::io::copy(&mut src, &mut out).map_err(io)?;
    let mode = if runnable { 0o755 } else { 0o644 };
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode)).map_err(io)
}

impl Fetcher {
    /// Fetches `a` (from the cache when its checksum is known and present) and places it in
    /// `sandbox`: copied under its name, or extracted.
    pub async fn provide(&self, a: &ArtifactRef, sandbox: &Path) -> Result<(), ArtifactError> {
        let cached = self.fetch(a).await?;
        let dest = sandbox.to_path_buf();
        let a2 = a.clone();
        tokio::task::spawn_blocking(move || {
            if a2.extract {
                crate::extract::extract(&a2, &cached, &dest)
            } else {
                place_file(&a2, &cached, &dest)
            }
        })
        .await
        .map_err(io)?
    }

    async fn fetch(&self, a: &ArtifactRef) -> Result<PathBuf, ArtifactError> {
        std::fs::create_dir_all(&self.cache_dir).map_err(io)?;
        if let Some(sha) = &a.sha256 {
            let p = self.cache_dir.join(sha);
            if p.is_file() {
                return Ok(p);
            }
        }
        let fetch_err = |e: String| ArtifactError::Fetch { uri: a.uri.clone(), error: e };
        let bytes: Vec<u8> = if let Some(sha) = a.uri.strip_prefix("tend://artifacts/") {
            let base = self.servers.url();
            let url = format!("{base}/v1/artifacts/{sha}");
            let r = self.http.get(&url).bearer_auth(&self.token).send().await.map_err(|e| {
                self.servers.failed(&base);
                fetch_err(e.to_string())
            })?;
            if !r.status().is_success() {
                return Err(fetch_err(format!("control plane answered {}", r.status())));
            }
            r.bytes().await.map_err(|e| fetch_err(e.to_string()))?.to_vec()
        } else if a.uri.starts_with("http://") || a.uri.starts_with("https://") {
            let r = self.web.get(&a.uri).send().await.map_err(|e| fetch_err(causes(&e)))?;
            if !r.status().is_success() {
                return Err(fetch_err(format!("server answered {}", r.status())));
            }
            r.bytes().await.map_err(|e| fetch_err(e.to_string()))?.to_vec()
        } else if let Some(path) = a.uri.strip_prefix("file://") {
            tokio::fs::read(path).await.map_err(|e| fetch_err(e.to_string()))?
        } else {
            return Err(fetch_err(
                "unsupported URI (expected http://, https://, file:// or an uploaded artifact)".into(),
            ));
        };
        let actual = hex::encode(Sha256::digest(&bytes));
        if let Some(expected) = &a.sha256 {
            if &actual != expected {
                return Err(ArtifactError::Checksum {
                    uri: a.uri.clone(),
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        let p = self.cache_dir.join(&actual);
        let tmp = self.cache_dir.join(format!(".{actual}.part"));
        tokio::fs::write(&tmp, &bytes).await.map_err(io)?;
        tokio::fs::rename(&tmp, &p).await.map_err(io)?;
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::extract;

    fn art(uri: &str) -> ArtifactRef {
        ArtifactRef { uri: uri.into(), sha256: None, extract: true, name: "x".into() }
    }

    fn tgz(entries: &[(&str, &[u8])], links: &[(&str, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o755);
            // Write the raw name so that `..` and `/` reach the archive as an attacker would.
            h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        for (name, target) in links {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, name, target).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap()
    }

    /// (case, entries, links, Ok(file that must exist) or Err(fragment of the error))
    #[test]
    fn tar_extraction_refuses_escapes() {
        type Case<'a> =
            (&'a str, Vec<(&'a str, &'a [u8])>, Vec<(&'a str, &'a str)>, Result<&'a str, &'a str>);
        let cases: Vec<Case> = vec![
            ("plain", vec![("bin/server", b"#!/bin/sh\n")], vec![], Ok("bin/server")),
            ("dot-dot", vec![("../evil", b"x")], vec![], Err("`..` in its path")),
            ("absolute", vec![("/tmp/evil", b"x")], vec![], Err("absolute path")),
            ("link out", vec![], vec![("ln", "../../etc/passwd")], Err("link pointing outside")),
            ("absolute link", vec![], vec![("ln", "/etc/passwd")], Err("link pointing outside")),
            ("link inside", vec![("a/b", b"x")], vec![("a/c", "b")], Ok("a/c")),
        ];
        for (what, entries, links, want) in cases {
            let dir = tempfile::tempdir().unwrap();
            let archive = dir.path().join("a.tar.gz");
            std::fs::write(&archive, tgz(&entries, &links)).unwrap();
            let dest = dir.path().join("sandbox");
            std::fs::create_dir(&dest).unwrap();
            let r = extract(&art("x.tar.gz"), &archive, &dest);
            match want {
                Ok(f) => {
                    assert!(r.is_ok(), "{what}: {r:?}");
                    assert!(dest.join(f).exists(), "{what}: {f} missing");
                }
                Err(frag) => {
                    let e = r.expect_err(what).to_string();
                    assert!(e.contains(frag), "{what}: {e}");
                    assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 0, "{what}: nothing written");
                }
            }
        }
    }

    #[test]
    fn zip_extraction_and_escape() {
        let dir = tempfile::tempdir().unwrap();
        let make = |name: &str| {
            let mut buf = std::io::Cursor::new(Vec::new());
            let mut w = zip::ZipWriter::new(&mut buf);
            w.start_file(name, zip::write::SimpleFileOptions::default()).unwrap();
            std::io::Write::write_all(&mut w, b"hello").unwrap();
            w.finish().unwrap();
            buf.into_inner()
        };
        let ok = dir.path().join("ok.zip");
        std::fs::write(&ok, make("app/hello.txt")).unwrap();
        let dest = dir.path().join("s1");
        std::fs::create_dir(&dest).unwrap();
        extract(&art("ok.zip"), &ok, &dest).unwrap();
        assert_eq!(std::fs::read(dest.join("app/hello.txt")).unwrap(), b"hello");
        let bad = dir.path().join("bad.zip");
        std::fs::write(&bad, make("../../escape.txt")).unwrap();
        let dest = dir.path().join("s2");
        std::fs::create_dir(&dest).unwrap();
        let e = extract(&art("bad.zip"), &bad, &dest).unwrap_err().to_string();
        assert!(e.contains("escape the sandbox"), "{e}");
        assert!(!dir.path().join("escape.txt").exists());
    }

    #[test]
    fn single_files_keep_runnable_and_never_go_through_a_link() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (cache, dest) = (dir.path().join("cache"), dir.path().join("sandbox"));
        std::fs::create_dir_all(&cache).unwrap();
        std::fs::create_dir_all(&dest).unwrap();
        let file = |name: &str, body: &[u8]| {
            let p = cache.join(name);
            std::fs::write(&p, body).unwrap();
            (
                ArtifactRef {
                    uri: format!("tend://artifacts/{name}"),
                    sha256: None,
                    extract: false,
                    name: name.into(),
                },
                p,
            )
        };
        let mode = |n: &str| std::fs::metadata(dest.join(n)).unwrap().permissions().mode() & 0o777;
        for (name, body, want) in [
            ("run.sh", &b"#!/bin/sh\necho hi\n"[..], 0o755),
            ("elf", b"\x7fELF\x02", 0o755),
            ("conf", b"a=1\n", 0o644),
        ] {
            let (a, p) = file(name, body);
            place_file(&a, &p, &dest).unwrap();
            assert_eq!(
                (std::fs::read(dest.join(name)).unwrap().as_slice(), mode(name)),
                (body, want),
                "{name}"
            );
        }
        // A link where the artifact goes (a volume, an earlier archive): refused, nothing written through it.
        std::os::unix::fs::symlink(dir.path().join("outside"), dest.join("linked")).unwrap();
        let (a, p) = file("linked", b"x");
        assert!(place_file(&a, &p, &dest).unwrap_err().to_string().contains("a link"));
        assert!(!dir.path().join("outside").exists());
    }
}
