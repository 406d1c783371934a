//! At most one export per finding identity per interval: a finding goes out when raised, then
//! with its latest count once the interval since the last send has passed. Changes in between
//! are kept (latest wins) and sent by [`Limiter::due`].

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use crate::findings::{Finding, FindingKey, MAX_FINDINGS};

struct Entry {
    last_sent: Instant,
    /// The count last offered (sent or pending): an unchanged finding is not offered again.
    seen_count: u64,
    /// A change not sent yet, with the extra attributes it came with.
    pending: Option<(Finding, Vec<(&'static str, String)>)>,
}

pub struct Limiter {
    interval: Duration,
    entries: HashMap<FindingKey, Entry>,
}

pub type Due = (Finding, Vec<(&'static str, String)>);

impl Limiter {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            entries: HashMap::new(),
        }
    }

    /// Whether `f` should be sent now; if not, it is kept for [`Limiter::due`].
    pub fn offer(&mut self, f: &Finding, extra: &[(&'static str, String)], now: Instant) -> bool {
        if let Some(e) = self.entries.get_mut(&f.key) {
            if e.seen_count == f.count {
                return false;
            }
            e.seen_count = f.count;
            if now.duration_since(e.last_sent) >= self.interval {
                e.last_sent = now;
                e.pending = None;
                return true;
            }
            e.pending = Some((f.clone(), extra.to_vec()));
            return false;
        }
        if self.entries.len() >= 2 * MAX_FINDINGS {
            self.prune(now);
        }
        self.entries.insert(
            f.key.clone(),
            Entry {
                last_sent: now,
                seen_count: f.count,
                pending: None,
            },
        );
        true
    }

    /// Kept changes whose interval has passed (all of them when `flush`, e.g. at shutdown).
    pub fn due(&mut self, now: Instant, flush: bool) -> Vec<Due> {
        let mut out = Vec::new();
        for e in self.entries.values_mut() {
            if e.pending.is_some() && (flush || now.duration_since(e.last_sent) >= self.interval) {
                e.last_sent = now;
                out.extend(e.pending.take());
            }
        }
        out
    }

    /// Bounds memory: forgets identities with nothing pending and sent over an interval ago
    /// (a finding evicted from the store would otherwise stay here forever).
    fn prune(&mut self, now: Instant) {
        let interval = self.interval;
        self.entries
            .retain(|_, e| e.pending.is_some() || now.duration_since(e.last_sent) < interval);
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, time::SystemTime};

    use super::*;
    use crate::{
        findings::{FindingKind, Subject},
        model::Direction,
    };

    fn finding(count: u64) -> Finding {
        Finding {
            key: FindingKey {
                kind: FindingKind::MissingTraceparent,
                pid: 1,
                direction: Direction::Outbound,
                peer: None,
                method: "GET".into(),
                path: "/".into(),
                tls: false,
                protocol: Default::default(),
            },
            subject: Subject::default(),
            count,
            first_seen: SystemTime::UNIX_EPOCH,
            last_seen: SystemTime::UNIX_EPOCH,
            evidence: BTreeMap::new(),
        }
    }

    #[test]
    fn sent_when_raised_then_at_most_once_per_interval() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut l = Limiter::new(Duration::from_secs(60));
        assert!(l.offer(&finding(1), &[], t0));
        assert!(!l.offer(&finding(2), &[], t0 + s));
        assert!(!l.offer(&finding(3), &[], t0 + 2 * s));
        assert!(l.due(t0 + 59 * s, false).is_empty());
        let due = l.due(t0 + 60 * s, false);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].0.count, 3, "the latest count is sent");
        assert!(l.due(t0 + 200 * s, false).is_empty(), "sent once");
        assert!(l.offer(&finding(4), &[], t0 + 200 * s));
        assert!(!l.offer(&finding(4), &[], t0 + 400 * s), "unchanged");
    }

    #[test]
    fn flush_sends_everything_pending() {
        let t0 = Instant::now();
        let mut l = Limiter::new(Duration::from_secs(60));
        assert!(l.offer(&finding(1), &[], t0));
        assert!(!l.offer(&finding(2), &[("k8s.pod.name", "p".into())], t0));
        let due = l.due(t0, true);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].1, vec![("k8s.pod.name", "p".to_owned())]);
    }
}
