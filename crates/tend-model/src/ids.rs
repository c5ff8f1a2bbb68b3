//! Typed identifiers, parsed once at the edge: a pod instance id is `pod-index` and nothing else.

use std::fmt;

/// A pod instance: the pod's name and its index, written `pod-index` (e.g. `db-backup-2`).
///
/// Parsing splits at the *last* `-` and requires a decimal index without leading zeros, so
/// `db-backup-0` is pod `db-backup`, never pod `db`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstanceId {
    pub pod: String,
    pub index: u32,
}

impl InstanceId {
    pub fn new(pod: impl Into<String>, index: u32) -> Self {
        Self { pod: pod.into(), index }
    }

    /// Parses `pod-index`; None for anything else.
    pub fn parse(s: &str) -> Option<InstanceId> {
        let (pod, idx) = s.rsplit_once('-')?;
        if pod.is_empty() || idx.is_empty() || (idx.len() > 1 && idx.starts_with('0')) {
            return None;
        }
        if !idx.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(InstanceId { pod: pod.to_string(), index: idx.parse().ok()? })
    }

    /// Whether this is an instance of `pod`.
    pub fn of_pod(&self, pod: &str) -> bool {
        self.pod == pod
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.pod, self.index)
    }
}

/// A set of persistent volumes of one pod instance on one agent. Ids are allocated from a
/// counter in the store and never reused, so a new instance or service never sees another's data.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VolumeId(pub String);

impl VolumeId {
    /// The id for counter value `n` (`v000042`): sortable, and a safe path component.
    pub fn from_seq(n: u64) -> VolumeId {
        VolumeId(format!("v{n:06}"))
    }

    /// Parses an id given by a user or a peer: `v` followed by digits only.
    pub fn parse(s: &str) -> Option<VolumeId> {
        let digits = s.strip_prefix('v')?;
        (!digits.is_empty() && digits.len() <= 20 && digits.bytes().all(|b| b.is_ascii_digit()))
            .then(|| VolumeId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for VolumeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: Option<(&str, u32)>) {
        let got = InstanceId::parse(input);
        assert_eq!(got.as_ref().map(|i| (i.pod.as_str(), i.index)), expected, "{input}");
        if let Some(i) = got {
            assert_eq!(i.to_string(), input);
        }
    }

    #[test]
    fn instance_ids_parse_once_and_strictly() {
        check("db-0", Some(("db", 0)));
        check("db-backup-12", Some(("db-backup", 12)));
        check("db-backup", None);
        check("db-", None);
        check("-3", None);
        check("db-03", None);
        check("db-+3", None);
        check("db-99999999999", None);
        check("db", None);
    }

    #[test]
    fn volume_ids_are_safe_path_components() {
        assert_eq!(VolumeId::from_seq(42).as_str(), "v000042");
        assert!(VolumeId::parse("v000042").is_some());
        assert!(VolumeId::parse("v1234567").is_some());
        for bad in ["", "v", "x1", "v1/..", "v-1", "../v1"] {
            assert!(VolumeId::parse(bad).is_none(), "{bad}");
        }
    }
}
