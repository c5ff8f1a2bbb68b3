//! Extracting an archive artifact (.tar.gz, .tgz, .zip) into a sandbox, as root, safely against
//! hostile archives:
//! - every entry is checked before anything is written: no absolute path, no `..`, no device or
//!   fifo, link targets that stay inside, at most `max_entries` entries, declared sizes within
//!   the budget;
//! - nothing is ever written through a link: every directory on the way to an entry is checked
//!   on the real filesystem (a link there — made by this archive, an earlier one, or a volume —
//!   refuses the entry), files are opened with `O_NOFOLLOW`, and links are made last;
//! - a link may not point to a directory, and a hard link becomes a copy of a file this archive
//!   wrote;
//! - the bytes written are counted while they are written (`max_bytes`, and at most `max_ratio`
//!   times the archive's own size), whatever the headers claim;
//! - setuid, setgid and sticky bits are dropped.

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::artifacts::ArtifactError;
use tend_api::ArtifactRef;

/// Bounds on one extraction.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_entries: usize,
    pub max_bytes: u64,
    /// Uncompressed bytes per byte of archive (below 64 MiB the ratio is not applied).
    pub max_ratio: u64,
}

pub const LIMITS: Limits = Limits { max_entries: 100_000, max_bytes: 4 << 30, max_ratio: 1_000 };

enum Kind {
    Dir,
    File,
    Symlink(PathBuf),
    HardLink(PathBuf),
}

struct Entry {
    raw: PathBuf,
    path: PathBuf,
    kind: Kind,
    mode: u32,
}

/// Which archive format an artifact is, by its name or its URI.
fn format(a: &ArtifactRef) -> Option<&'static str> {
    [a.name.to_ascii_lowercase(), a.uri.to_ascii_lowercase()].iter().find_map(|n| {
        if n.ends_with(".zip") {
            Some("zip")
        } else if n.ends_with(".tar.gz") || n.ends_with(".tgz") {
            Some("tgz")
        } else {
            None
        }
    })
}

pub fn extract(a: &ArtifactRef, archive: &Path, dest: &Path) -> Result<(), ArtifactError> {
    extract_with(a, archive, dest, LIMITS)
}

pub fn extract_with(
    a: &ArtifactRef,
    archive: &Path,
    dest: &Path,
    limits: Limits,
) -> Result<(), ArtifactError> {
    let mut x = Extraction::new(a, archive, dest, limits)?;
    match format(a) {
        Some("zip") => x.zip(),
        Some(_) => x.tgz(),
        None => Err(x.fail("only .zip, .tar.gz and .tgz can be extracted")),
    }
}

struct Extraction<'a> {
    a: &'a ArtifactRef,
    archive: &'a Path,
    dest: &'a Path,
    limits: Limits,
    budget: u64,
    written: u64,
    files: HashSet<PathBuf>,
}

impl<'a> Extraction<'a> {
    fn new(
        a: &'a ArtifactRef,
        archive: &'a Path,
        dest: &'a Path,
        limits: Limits,
    ) -> Result<Self, ArtifactError> {
        let size = std::fs::metadata(archive).map_err(|e| ArtifactError::Io(e.to_string()))?.len();
        let budget = limits.max_bytes.min(size.saturating_mul(limits.max_ratio).max(64 << 20));
        Ok(Extraction { a, archive, dest, limits, budget, written: 0, files: HashSet::new() })
    }

    fn fail(&self, error: impl Into<String>) -> ArtifactError {
        ArtifactError::Extract { uri: self.a.uri.clone(), error: error.into() }
    }
    fn escape(&self, entry: &Path, why: &'static str) -> ArtifactError {
        ArtifactError::Escape { uri: self.a.uri.clone(), entry: entry.display().to_string(), why }
    }

    /// Checks one entry (before anything is written).
    fn check(&self, raw: PathBuf, kind: Kind, mode: u32, n: usize) -> Result<Entry, ArtifactError> {
        if n >= self.limits.max_entries {
            return Err(self.fail(format!("more than {} entries", self.limits.max_entries)));
        }
        let path = safe_join(self.dest, &raw).map_err(|why| self.escape(&raw, why))?;
        match &kind {
            Kind::Symlink(t) if !link_stays_inside(self.dest, &path, t) => {
                return Err(self.escape(&raw, "a link pointing outside the sandbox"))
            }
            Kind::HardLink(t) if safe_join(self.dest, t).is_err() => {
                return Err(self.escape(&raw, "a link pointing outside the sandbox"))
            }
            _ => {}
        }
        Ok(Entry { raw, path, kind, mode })
    }

    fn tgz(&mut self) -> Result<(), ArtifactError> {
        let open = || -> Result<tar::Archive<flate2::read::GzDecoder<std::fs::File>>, ArtifactError> {
            let f = std::fs::File::open(self.archive).map_err(|e| ArtifactError::Io(e.to_string()))?;
            Ok(tar::Archive::new(flate2::read::GzDecoder::new(f)))
        };
        let mut checked = Vec::new();
        let mut declared = 0u64;
        let mut t = open()?;
        for (n, e) in t.entries().map_err(|e| self.fail(e.to_string()))?.enumerate() {
            let e = e.map_err(|e| self.fail(e.to_string()))?;
            let raw = e.path().map_err(|e| self.fail(e.to_string()))?.into_owned();
            let link = || e.link_name().ok().flatten().map(|l| l.into_owned()).unwrap_or_default();
            let ty = e.header().entry_type();
            let kind = match ty {
                tar::EntryType::Directory => Kind::Dir,
                tar::EntryType::Regular | tar::EntryType::Continuous => Kind::File,
                tar::EntryType::Symlink => Kind::Symlink(link()),
                tar::EntryType::Link => Kind::HardLink(link()),
                _ => return Err(self.escape(&raw, "a device, fifo or other special file")),
            };
            declared = declared.saturating_add(e.size());
            if declared > self.budget {
                return Err(self.fail(format!("more than {} bytes once extracted", self.budget)));
            }
            checked.push(self.check(raw, kind, e.header().mode().unwrap_or(0o644), n)?);
        }
        let mut t = open()?;
        let mut links = Vec::new();
        for (entry, e) in checked.into_iter().zip(t.entries().map_err(|e| self.fail(e.to_string()))?) {
            let mut e = e.map_err(|e| self.fail(e.to_string()))?;
            self.write(entry, &mut e, &mut links)?;
        }
        self.links(links)
    }

    fn zip(&mut self) -> Result<(), ArtifactError> {
        let f = std::fs::File::open(self.archive).map_err(|e| ArtifactError::Io(e.to_string()))?;
        let mut z = zip::ZipArchive::new(f).map_err(|e| self.fail(e.to_string()))?;
        if z.len() > self.limits.max_entries {
            return Err(self.fail(format!("more than {} entries", self.limits.max_entries)));
        }
        let mut checked = Vec::new();
        let mut declared = 0u64;
        for i in 0..z.len() {
            let mut e = z.by_index(i).map_err(|e| self.fail(e.to_string()))?;
            let raw = PathBuf::from(e.name());
            let kind = if e.is_symlink() {
                let mut target = String::new();
                (&mut e).take(4096).read_to_string(&mut target).map_err(|e| self.fail(e.to_string()))?;
                Kind::Symlink(PathBuf::from(target))
            } else if e.is_dir() {
                Kind::Dir
            } else {
                Kind::File
            };
            declared = declared.saturating_add(e.size());
            if declared > self.budget {
                return Err(self.fail(format!("more than {} bytes once extracted", self.budget)));
            }
            let mode = e.unix_mode().unwrap_or(0o644);
            checked.push(self.check(raw, kind, mode, i)?);
        }
        let mut links = Vec::new();
        for (i, entry) in checked.into_iter().enumerate() {
            let mut e = z.by_index(i).map_err(|e| self.fail(e.to_string()))?;
            self.write(entry, &mut e, &mut links)?;
        }
        self.links(links)
    }

    /// Writes one checked entry (links are collected, made last).
    fn write(
        &mut self,
        entry: Entry,
        data: &mut dyn Read,
        links: &mut Vec<Entry>,
    ) -> Result<(), ArtifactError> {
        match &entry.kind {
            Kind::Dir => self.mkdirs(&entry.raw, &entry.path),
            Kind::File => {
                let parent = entry.path.parent().unwrap_or(self.dest).to_path_buf();
                self.mkdirs(&entry.raw, &parent)?;
                self.copy_into(&entry, data)?;
                self.files.insert(entry.path.clone());
                Ok(())
            }
            Kind::HardLink(target) => {
                let source = safe_join(self.dest, target).map_err(|why| self.escape(&entry.raw, why))?;
                if !self.files.contains(&source) {
                    return Err(self.escape(&entry.raw, "a hard link to a file this archive did not write"));
                }
                let parent = entry.path.parent().unwrap_or(self.dest).to_path_buf();
                self.mkdirs(&entry.raw, &parent)?;
                let mut f = OpenOptions::new()
                    .read(true)
                    .custom_flags(nix::libc::O_NOFOLLOW)
                    .open(&source)
                    .map_err(|e| self.fail(format!("{}: {e}", entry.raw.display())))?;
                self.copy_into(&entry, &mut f)?;
                self.files.insert(entry.path.clone());
                Ok(())
            }
            Kind::Symlink(_) => {
                links.push(entry);
                Ok(())
            }
        }
    }

    /// Creates `path` with `O_NOFOLLOW` and copies `data` into it, counting bytes.
    fn copy_into(&mut self, entry: &Entry, data: &mut dyn Read) -> Result<(), ArtifactError> {
        let mut out = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .mode(0o600)
            .open(&entry.path)
            .map_err(|_| self.escape(&entry.raw, "a link or special file where a file goes"))?;
        let left = self.budget - self.written.min(self.budget);
        let n = std::io::copy(&mut data.take(left + 1), &mut out).map_err(|e| self.fail(e.to_string()))?;
        self.written += n;
        if n > left {
            return Err(self.fail(format!("more than {} bytes once extracted", self.budget)));
        }
        // Permission bits only: setuid, setgid and sticky dropped.
        std::fs::set_permissions(&entry.path, std::fs::Permissions::from_mode(entry.mode & 0o777))
            .map_err(|e| ArtifactError::Io(e.to_string()))
    }

    /// Creates the directories down to `dir`, refusing any link or non-directory on the way.
    fn mkdirs(&self, raw: &Path, dir: &Path) -> Result<(), ArtifactError> {
        let rel = dir.strip_prefix(self.dest).map_err(|_| self.escape(raw, "absolute path"))?;
        let mut at = self.dest.to_path_buf();
        for c in rel.components() {
            at.push(c);
            match std::fs::symlink_metadata(&at) {
                Ok(m) if m.file_type().is_symlink() => return Err(self.escape(raw, "a link in its path")),
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(self.escape(raw, "a file in its path")),
                Err(_) => std::fs::create_dir(&at).map_err(|e| ArtifactError::Io(e.to_string()))?,
            }
        }
        Ok(())
    }

    /// Makes the links, last: never to a directory, never where something already is.
    fn links(&self, links: Vec<Entry>) -> Result<(), ArtifactError> {
        for l in links {
            let Kind::Symlink(target) = &l.kind else { continue };
            let parent = l.path.parent().unwrap_or(self.dest).to_path_buf();
            self.mkdirs(&l.raw, &parent)?;
            let resolved = lexical(&parent.join(target));
            if std::fs::symlink_metadata(&resolved).is_ok_and(|m| m.is_dir() || m.file_type().is_symlink()) {
                return Err(self.escape(&l.raw, "a link to a directory or another link"));
            }
            std::os::unix::fs::symlink(target, &l.path)
                .map_err(|_| self.escape(&l.raw, "a link where something already is"))?;
        }
        Ok(())
    }
}

/// The path of an archive entry inside `dest`, or why it would escape.
pub fn safe_join(dest: &Path, entry: &Path) -> Result<PathBuf, &'static str> {
    let mut out = dest.to_path_buf();
    for c in entry.components() {
        match c {
            Component::Normal(x) => out.push(x),
            Component::CurDir => {}
            Component::ParentDir => return Err("`..` in its path"),
            Component::RootDir | Component::Prefix(_) => return Err("absolute path"),
        }
    }
    Ok(out)
}

/// `..` and `.` resolved by text (the links on the way are refused elsewhere).
fn lexical(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

/// Checks a link target stays inside the sandbox once resolved from the link's directory.
fn link_stays_inside(dest: &Path, link_path: &Path, target: &Path) -> bool {
    if target.is_absolute() || target.as_os_str().is_empty() {
        return false;
    }
    let base = link_path.parent().unwrap_or(dest);
    let Ok(rel) = base.strip_prefix(dest) else { return false };
    let mut depth = rel.components().count() as i64;
    for c in target.components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            _ => return false,
        }
        if depth < 0 {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn art(name: &str) -> ArtifactRef {
        ArtifactRef {
            uri: format!("tend://artifacts/{name}"),
            sha256: None,
            extract: true,
            name: name.into(),
        }
    }

    /// One tar entry as an attacker writes it: raw name, type, mode, link target, data.
    struct T<'a>(&'a str, tar::EntryType, u32, &'a str, &'a [u8]);

    fn tgz(entries: &[T]) -> Vec<u8> {
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
        for T(name, ty, mode, link, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*ty);
            h.set_size(data.len() as u64);
            h.set_mode(*mode);
            h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
            if !link.is_empty() {
                h.as_gnu_mut().unwrap().linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap()
    }

    fn zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut buf = std::io::Cursor::new(Vec::new());
        let mut w = zip::ZipWriter::new(&mut buf);
        for (name, data) in entries {
            w.start_file(*name, zip::write::SimpleFileOptions::default()).unwrap();
            std::io::Write::write_all(&mut w, data).unwrap();
        }
        w.finish().unwrap();
        buf.into_inner()
    }

    /// Every path under `root` (what a test finds around the sandbox).
    fn scan(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                out.push(p.strip_prefix(root).unwrap().display().to_string());
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(p);
                }
            }
        }
        out.sort();
        out
    }

    const REG: tar::EntryType = tar::EntryType::Regular;
    const SYM: tar::EntryType = tar::EntryType::Symlink;
    const DIR: tar::EntryType = tar::EntryType::Directory;

    /// (case, archive, Ok(files that must exist) or Err(fragment)); nothing is ever written
    /// outside the sandbox.
    #[test]
    fn a_hostile_tar_corpus_is_refused_and_writes_nothing_outside() {
        let small = Limits { max_entries: 10, max_bytes: 1 << 20, max_ratio: 1_000 };
        let zeros = vec![0u8; 2 << 20];
        let many: Vec<String> = (0..11).map(|i| format!("f{i}")).collect();
        type Case<'a> = (&'a str, Vec<T<'a>>, Result<Vec<&'a str>, &'a str>);
        let cases: Vec<Case> = vec![
            ("plain", vec![T("bin/server", REG, 0o755, "", b"#!/bin/sh\n")], Ok(vec!["bin/server"])),
            ("dot-dot", vec![T("../evil", REG, 0o644, "", b"x")], Err("`..` in its path")),
            ("absolute", vec![T("/tmp/evil", REG, 0o644, "", b"x")], Err("absolute path")),
            ("link out", vec![T("ln", SYM, 0o777, "../../etc/passwd", b"")], Err("pointing outside")),
            ("absolute link", vec![T("ln", SYM, 0o777, "/etc/passwd", b"")], Err("pointing outside")),
            (
                "link to a directory",
                vec![T("d", DIR, 0o755, "", b""), T("l", SYM, 0o777, "d", b"")],
                Err("a link to a directory"),
            ),
            (
                "link chain climbing through a link",
                vec![T("x/y", SYM, 0o777, "..", b""), T("x/y/z", SYM, 0o777, "../..", b"")],
                Err("a link"),
            ),
            (
                "link then a file through it",
                vec![
                    T("a/f", REG, 0o644, "", b"x"),
                    T("l", SYM, 0o777, "a", b""),
                    T("l/g", REG, 0o644, "", b"x"),
                ],
                Err("a link"),
            ),
            (
                "hard link out",
                vec![T("h", tar::EntryType::Link, 0o644, "/etc/passwd", b"")],
                Err("pointing outside"),
            ),
            (
                "hard link to a file not written",
                vec![T("h", tar::EntryType::Link, 0o644, "nothing", b"")],
                Err("did not write"),
            ),
            ("device", vec![T("dev", tar::EntryType::Char, 0o644, "", b"")], Err("special file")),
            ("fifo", vec![T("p", tar::EntryType::Fifo, 0o644, "", b"")], Err("special file")),
            ("bomb", vec![T("zeros", REG, 0o644, "", &zeros)], Err("bytes once extracted")),
            (
                "too many entries",
                many.iter().map(|n| T(n, REG, 0o644, "", b"x")).collect(),
                Err("more than 10 entries"),
            ),
            (
                "link inside to a file",
                vec![T("a/b", REG, 0o644, "", b"x"), T("a/c", SYM, 0o777, "b", b"")],
                Ok(vec!["a/b", "a/c"]),
            ),
            (
                "hard link inside",
                vec![T("a", REG, 0o644, "", b"x"), T("b", tar::EntryType::Link, 0o644, "a", b"")],
                Ok(vec!["a", "b"]),
            ),
        ];
        for (what, entries, want) in cases {
            let dir = tempfile::tempdir().unwrap();
            let archive = dir.path().join("a.tar.gz");
            std::fs::write(&archive, tgz(&entries)).unwrap();
            let dest = dir.path().join("sandbox");
            std::fs::create_dir(&dest).unwrap();
            let r = extract_with(&art("a.tar.gz"), &archive, &dest, small);
            match want {
                Ok(files) => {
                    assert!(r.is_ok(), "{what}: {r:?}");
                    for f in files {
                        assert!(std::fs::symlink_metadata(dest.join(f)).is_ok(), "{what}: {f} missing");
                    }
                }
                Err(frag) => {
                    let e = r.expect_err(what).to_string();
                    assert!(e.contains(frag), "{what}: {e}");
                }
            }
            let outside: Vec<String> =
                scan(dir.path()).into_iter().filter(|p| !p.starts_with("sandbox")).collect();
            assert_eq!(outside, vec!["a.tar.gz"], "{what}: something was written outside the sandbox");
            assert!(!Path::new("/tmp/evil").exists());
        }
    }

    #[test]
    fn nothing_is_written_through_a_link_already_in_the_sandbox() {
        // A link an earlier archive (or anything) left: a later zip must not write through it.
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let dest = dir.path().join("sandbox");
        std::fs::create_dir(&dest).unwrap();
        std::os::unix::fs::symlink(&outside, dest.join("l")).unwrap();
        let archive = dir.path().join("b.zip");
        std::fs::write(&archive, zip(&[("l/evil.txt", b"x")])).unwrap();
        let e = extract(&art("b.zip"), &archive, &dest).unwrap_err().to_string();
        assert!(e.contains("a link in its path"), "{e}");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "nothing written through the link");
        // The same at the last component: a link where the file goes is not followed.
        std::os::unix::fs::symlink(outside.join("target"), dest.join("file")).unwrap();
        std::fs::write(&archive, zip(&[("file", b"x")])).unwrap();
        let e = extract(&art("b.zip"), &archive, &dest).unwrap_err().to_string();
        assert!(e.contains("a link or special file"), "{e}");
        assert!(!outside.join("target").exists());
    }

    #[test]
    fn setuid_bits_are_dropped_and_zip_paths_checked() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("s.tgz");
        std::fs::write(&archive, tgz(&[T("su", REG, 0o6755, "", b"x")])).unwrap();
        let dest = dir.path().join("sandbox");
        std::fs::create_dir(&dest).unwrap();
        extract(&art("s.tgz"), &archive, &dest).unwrap();
        assert_eq!(std::fs::metadata(dest.join("su")).unwrap().permissions().mode() & 0o7777, 0o755);
        let z = dir.path().join("z.zip");
        for (name, frag) in [("../../escape.txt", "`..` in its path"), ("/abs.txt", "absolute path")] {
            std::fs::write(&z, zip(&[(name, b"x")])).unwrap();
            let e = extract(&art("z.zip"), &z, &dest).unwrap_err().to_string();
            assert!(e.contains(frag), "{name}: {e}");
        }
        // The format comes from the artifact's name when its URI is a digest.
        let e = extract(&art("plain.bin"), &z, &dest).unwrap_err().to_string();
        assert!(e.contains("only .zip, .tar.gz and .tgz"), "{e}");
    }
}
