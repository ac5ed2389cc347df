//! The answers a limiter gave since it started, by reason and by kind of
//! failure: the same events as the `tollgate_decisions_total` and
//! `tollgate_decision_errors_total` metrics, counted in the same place
//! ([`super::Limiter`]'s `answered`), kept in the process for `GET /v1/stats`
//! (the web console's overview). Relaxed atomics: each count is exact, the
//! counts are not a snapshot of one instant together.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{AuthorizeError, Decision, Reason};

/// The kinds of failure, as [`AuthorizeError::kind`] names them.
pub const ERROR_KINDS: [&str; 3] = ["invalid", "unavailable", "internal"];

/// Counts of answers since the limiter started.
#[derive(Debug, Default)]
pub struct DecisionCounts {
    by_reason: [AtomicU64; Reason::ALL.len()],
    errors: [AtomicU64; ERROR_KINDS.len()],
}

impl DecisionCounts {
    /// Counts one answer.
    pub fn record(&self, result: &Result<Decision, AuthorizeError>) {
        let slot = match result {
            Ok(d) => &self.by_reason[d.reason.index()],
            Err(e) => {
                let i = ERROR_KINDS.iter().position(|k| *k == e.kind()).unwrap_or(ERROR_KINDS.len() - 1);
                &self.errors[i]
            }
        };
        slot.fetch_add(1, Ordering::Relaxed);
    }

    /// Decisions answered, by reason (`OK`, `THROTTLED`, ...): every reason,
    /// 0 when it never happened.
    pub fn decisions(&self) -> BTreeMap<String, u64> {
        Reason::ALL
            .iter()
            .map(|r| (r.as_str().to_string(), self.by_reason[r.index()].load(Ordering::Relaxed)))
            .collect()
    }

    /// Questions that got no decision, by kind (`invalid`, `unavailable`,
    /// `internal`): every kind, 0 when it never happened.
    pub fn errors(&self) -> BTreeMap<String, u64> {
        ERROR_KINDS.iter().zip(&self.errors).map(|(k, n)| (k.to_string(), n.load(Ordering::Relaxed))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Invalid;

    #[test]
    fn every_reason_and_kind_is_counted_under_its_name() {
        let counts = DecisionCounts::default();
        for r in Reason::ALL {
            assert_eq!(Reason::ALL[r.index()], r, "Reason::index must follow Reason::ALL");
        }
        counts.record(&Err(AuthorizeError::Invalid(Invalid::new("stage", "bad"))));
        let d = counts.decisions();
        assert_eq!(d.len(), Reason::ALL.len());
        assert!(d.values().all(|n| *n == 0));
        assert_eq!(counts.errors()["invalid"], 1);
        assert_eq!(counts.errors().values().sum::<u64>(), 1);
    }
}
