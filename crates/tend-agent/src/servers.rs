//! The control-plane members an agent may talk to (`--server URL,URL,URL`): it uses one until
//! that one cannot be reached or has no leader to forward to, then the next. Any member serves
//! an agent (followers forward to the leader), so this is only about members that are down.

use std::sync::atomic::{AtomicUsize, Ordering};

pub struct Servers {
    urls: Vec<String>,
    current: AtomicUsize,
}

impl Servers {
    /// From a comma-separated list of base URLs (trailing `/` dropped, empty entries skipped).
    pub fn parse(list: &str) -> Servers {
        let urls: Vec<String> = list
            .split(',')
            .map(|u| u.trim().trim_end_matches('/').to_string())
            .filter(|u| !u.is_empty())
            .collect();
        Servers { urls, current: AtomicUsize::new(0) }
    }
    /// The member to use now.
    pub fn url(&self) -> String {
        if self.urls.is_empty() {
            return String::new();
        }
        self.urls[self.current.load(Ordering::SeqCst) % self.urls.len()].clone()
    }
    /// `url` failed: move on to the next member (unless someone already did).
    pub fn failed(&self, url: &str) {
        let n = self.urls.len().max(1);
        let i = self.current.load(Ordering::SeqCst);
        if self.urls.get(i % n).is_some_and(|u| u == url) {
            if n > 1 {
                tracing::info!(from = %url, to = %self.urls[(i + 1) % n], "switching control-plane member");
            }
            let _ = self.current.compare_exchange(i, i + 1, Ordering::SeqCst, Ordering::SeqCst);
        }
    }
    pub fn all(&self) -> &[String] {
        &self.urls
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_past_failed_members_only() {
        let s = Servers::parse("http://a:1/, http://b:2,,http://c:3");
        assert_eq!(s.all(), ["http://a:1", "http://b:2", "http://c:3"]);
        assert_eq!(s.url(), "http://a:1");
        s.failed("http://b:2"); // Not the current one: nothing moves.
        assert_eq!(s.url(), "http://a:1");
        s.failed("http://a:1");
        assert_eq!(s.url(), "http://b:2");
        s.failed("http://b:2");
        s.failed("http://c:3");
        assert_eq!(s.url(), "http://a:1", "round and round");
    }
}
