//! What an agent remembers of the cluster it obeys: the cluster id and the highest store
//! revision it acted on. With it an agent refuses to stop its tasks on the word of a control
//! plane that lost its memory (another cluster id: a new, empty store) or runs on an older copy
//! of the store (a lower revision).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ClusterMemory {
    pub cluster_id: Option<String>,
    pub revision: u64,
    /// The highest leadership epoch obeyed: a deposed leader (a lower epoch) is refused.
    #[serde(default)]
    pub epoch: u64,
}

/// Why a desired state must not be obeyed.
pub fn refuse(mem: &ClusterMemory, d: &tend_api::DesiredState) -> Option<String> {
    if d.epoch < mem.epoch {
        return Some(format!(
            "desired state from a deposed leader (epoch {}; this agent follows epoch {}): refusing it; tasks keep running",
            d.epoch, mem.epoch
        ));
    }
    refuse_store(mem, &d.cluster_id, d.revision)
}

/// Why a desired state of this cluster and store revision must not be obeyed.
pub fn refuse_store(mem: &ClusterMemory, cluster_id: &str, revision: u64) -> Option<String> {
    if let Some(mine) = &mem.cluster_id {
        if !cluster_id.is_empty() && cluster_id != mine {
            return Some(format!(
                "desired state from cluster {cluster_id}, but this agent belongs to cluster {mine}: refusing it; tasks keep running"
            ));
        }
    }
    if revision < mem.revision {
        return Some(format!(
            "desired state read at store revision {revision}, older than revision {} this agent already obeyed (a store restored from an older copy?): refusing it; tasks keep running",
            mem.revision
        ));
    }
    None
}

/// The file the memory lives in.
pub struct ClusterFile {
    path: PathBuf,
}

impl ClusterFile {
    pub fn new(data_dir: &Path) -> ClusterFile {
        ClusterFile { path: data_dir.join("cluster.json") }
    }

    /// The memory on disk (a fresh agent: none). An unreadable file is an error: guessing could
    /// hand the agent to the wrong control plane.
    pub fn load(&self) -> anyhow::Result<ClusterMemory> {
        if std::fs::metadata(&self.path).is_ok_and(|m| m.len() > 64 * 1024) {
            anyhow::bail!(
                "{} is larger than 64 KiB: not a cluster memory; fix or remove it",
                self.path.display()
            );
        }
        match std::fs::read(&self.path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                anyhow::anyhow!("{} is unreadable ({e}); fix or remove it", self.path.display())
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ClusterMemory::default()),
            Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", self.path.display())),
        }
    }

    /// Writes it atomically (temporary file, fsync, rename).
    pub fn save(&self, mem: &ClusterMemory) -> std::io::Result<()> {
        use std::io::Write;
        let tmp = self.path.with_extension("json.part");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(mem).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_memory_file_is_a_clear_error_and_a_missing_one_a_fresh_agent() {
        let dir = tempfile::tempdir().unwrap();
        let f = ClusterFile::new(dir.path());
        assert_eq!(f.load().unwrap(), ClusterMemory::default());
        std::fs::write(dir.path().join("cluster.json"), b"{not json").unwrap();
        assert!(f.load().unwrap_err().to_string().contains("unreadable"));
        std::fs::write(dir.path().join("cluster.json"), vec![b' '; 100_000]).unwrap();
        assert!(f.load().unwrap_err().to_string().contains("larger than 64 KiB"));
        let mem = ClusterMemory { cluster_id: Some("c-1".into()), revision: 7, epoch: 3 };
        f.save(&mem).unwrap();
        assert_eq!(f.load().unwrap(), mem);
    }

    #[test]
    fn refuses_another_cluster_and_an_older_store() {
        let d = |cluster: &str, revision: u64, epoch: u64| tend_api::DesiredState {
            index: 0,
            cluster_id: cluster.into(),
            revision,
            epoch,
            ..Default::default()
        };
        let fresh = ClusterMemory::default();
        assert_eq!(refuse(&fresh, &d("c-1", 0, 0)), None);
        let mem = ClusterMemory { cluster_id: Some("c-1".into()), revision: 100, epoch: 90 };
        assert_eq!(refuse(&mem, &d("c-1", 100, 90)), None);
        assert_eq!(refuse(&mem, &d("c-1", 250, 200)), None);
        assert!(refuse(&mem, &d("c-2", 500, 90)).unwrap().contains("belongs to cluster c-1"));
        assert!(refuse(&mem, &d("c-1", 99, 90)).unwrap().contains("older than revision 100"));
        assert!(refuse(&mem, &d("c-1", 300, 89)).unwrap().contains("deposed leader (epoch 89"));
    }
}
