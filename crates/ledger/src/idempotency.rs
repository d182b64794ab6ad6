//! Idempotency decisions: a key names one logical attempt; its first outcome is final.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::Outcome;

/// SHA-256 over the canonical request (method, path, canonical body, bound subject).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// Hashes the parts with length prefixes, so that part boundaries cannot be shifted.
    pub fn of(parts: &[&[u8]]) -> Self {
        let mut h = Sha256::new();
        for part in parts {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        Fingerprint(h.finalize().into())
    }
}

/// The outcome stored under an idempotency key, with the request it answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredOutcome {
    pub fingerprint: Fingerprint,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyDecision {
    /// First use of the key: decide the command.
    Fresh,
    /// Same key, same request: answer with the stored outcome, whatever it was.
    Replay(Outcome),
    /// Same key, different request: refuse, change nothing.
    KeyReusedWithDifferentRequest,
}

pub fn decide_idempotency(stored: Option<&StoredOutcome>, fingerprint: &Fingerprint) -> IdempotencyDecision {
    match stored {
        None => IdempotencyDecision::Fresh,
        Some(s) if s.fingerprint == *fingerprint => IdempotencyDecision::Replay(s.outcome.clone()),
        Some(_) => IdempotencyDecision::KeyReusedWithDifferentRequest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Refusal, RefusalCode};

    #[test]
    fn same_request_replays_and_a_different_one_is_refused() {
        let fp = Fingerprint::of(&[b"POST", b"/v1/debits", b"{\"amount\":1}"]);
        let other = Fingerprint::of(&[b"POST", b"/v1/debits", b"{\"amount\":2}"]);
        let outcome = Outcome::Refused(Refusal {
            code: RefusalCode::InsufficientCredits,
            detail: "x".into(),
            available: Some(0),
            correlation_id: "c".into(),
        });
        let stored = StoredOutcome { fingerprint: fp, outcome: outcome.clone() };
        assert_eq!(decide_idempotency(None, &fp), IdempotencyDecision::Fresh);
        assert_eq!(decide_idempotency(Some(&stored), &fp), IdempotencyDecision::Replay(outcome));
        assert_eq!(decide_idempotency(Some(&stored), &other), IdempotencyDecision::KeyReusedWithDifferentRequest);
    }

    #[test]
    fn part_boundaries_matter() {
        assert_ne!(Fingerprint::of(&[b"ab", b"c"]), Fingerprint::of(&[b"a", b"bc"]));
    }
}
