//! Speculative decoding without a draft model (prompt lookup): draft tokens come from the most
//! recent earlier occurrence of the sequence's last n tokens (n from [`DraftParams::max_ngram`]
//! down to [`DraftParams::min_ngram`]) in the prompt and the generated text; the model verifies
//! them in one forward chunk ([`crate::model::ZayaModel::forward_recorded`]) and the cache keeps
//! exactly the accepted prefix ([`crate::model::cache::ModelCache::keep_recorded`]): the KV length is cut
//! and the CCA conv state and `prev_hs` are taken at the accepted position, so the state equals the
//! one plain decoding reaches.
//!
//! Acceptance: greedy decoding accepts a draft when it is the argmax (the output is plain greedy
//! decoding's); sampling uses the standard rule for a deterministic draft (accept `d` with
//! probability `p(d)`, else sample from `p` with `d` removed, renormalised), which leaves the
//! output distribution unchanged ([`accept_draft`]).
use crate::error::{Result, ZayaError};

/// Settings of n-gram drafting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DraftParams {
    /// Most draft tokens verified per step (K ≥ 1).
    pub num_draft_tokens: usize,
    /// Longest n-gram looked up (tried first).
    pub max_ngram: usize,
    /// Shortest n-gram looked up.
    pub min_ngram: usize,
}

impl Default for DraftParams {
    fn default() -> Self {
        DraftParams {
            num_draft_tokens: 4,
            max_ngram: 3,
            min_ngram: 1,
        }
    }
}

impl DraftParams {
    /// Largest K accepted (a verify chunk is K+1 positions).
    pub const MAX_DRAFT_TOKENS: usize = 64;

    /// Checks the settings (errors name the flag).
    pub fn validate(&self) -> Result<()> {
        if self.num_draft_tokens == 0 || self.num_draft_tokens > Self::MAX_DRAFT_TOKENS {
            return Err(ZayaError::InvalidArgument(format!(
                "--num-draft-tokens must be in 1..={}, got {}",
                Self::MAX_DRAFT_TOKENS,
                self.num_draft_tokens
            )));
        }
        if self.min_ngram == 0 || self.min_ngram > self.max_ngram || self.max_ngram > 16 {
            return Err(ZayaError::InvalidArgument(format!(
                "n-gram sizes must satisfy 1 <= min ({}) <= max ({}) <= 16",
                self.min_ngram, self.max_ngram
            )));
        }
        Ok(())
    }
}

/// Up to `k` draft tokens for the continuation of `history`: for n from `max_ngram` down to
/// `min_ngram`, the tokens that followed the most recent earlier occurrence of the last n tokens
/// (continued periodically when that occurrence overlaps the end). Empty when nothing matches.
pub fn ngram_draft(history: &[u32], k: usize, max_ngram: usize, min_ngram: usize) -> Vec<u32> {
    let len = history.len();
    if k == 0 {
        return Vec::new();
    }
    for n in (min_ngram.max(1)..=max_ngram).rev() {
        if len < n + 1 {
            continue;
        }
        let pattern = &history[len - n..];
        // most recent occurrence that ends before the last token
        for start in (0..len - n).rev() {
            if &history[start..start + n] == pattern {
                // copy what followed, LZ77-style: a copy that runs into the end continues with
                // its own first tokens, so periodic text yields k tokens
                let from = start + n;
                let mut ext = history.to_vec();
                for j in 0..k {
                    let t = ext[from + j];
                    ext.push(t);
                }
                return ext[len..].to_vec();
            }
        }
    }
    Vec::new()
}

/// The speculative acceptance rule for a deterministic draft `draft` against the target
/// distribution `p` (probabilities, summing to 1): with `u_accept` < `p[draft]` the draft is
/// accepted; otherwise the token is drawn (inverse CDF in id order with `u_resample` in [0, 1))
/// from `p` with the draft removed and renormalised. Returns `(token, accepted)`. The token's
/// distribution is `p` exactly: `P(d) = p(d)`, and for `x ≠ d`,
/// `P(x) = (1 − p(d)) · p(x) / (1 − p(d)) = p(x)`.
pub fn accept_draft(p: &[f32], draft: u32, u_accept: f64, u_resample: f64) -> (u32, bool) {
    let pd = p.get(draft as usize).copied().unwrap_or(0.0) as f64;
    if u_accept < pd {
        return (draft, true);
    }
    let rest: f64 = p
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != draft as usize)
        .map(|(_, &x)| x as f64)
        .sum();
    let target = u_resample * rest;
    let mut c = 0f64;
    let mut last = None;
    for (i, &x) in p.iter().enumerate() {
        if i == draft as usize || x <= 0.0 {
            continue;
        }
        c += x as f64;
        last = Some(i as u32);
        if c > target {
            return (i as u32, false);
        }
    }
    (last.unwrap_or(draft), false)
}

/// Counters of one generation's drafting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DraftStats {
    /// Verify steps run (forward chunks with drafts).
    pub steps: usize,
    /// Draft tokens proposed.
    pub drafted: usize,
    /// Draft tokens accepted.
    pub accepted: usize,
}

impl DraftStats {
    /// Accepted / drafted (0 when nothing was drafted).
    pub fn acceptance_rate(&self) -> f64 {
        if self.drafted == 0 {
            0.0
        } else {
            self.accepted as f64 / self.drafted as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drafts_follow_the_most_recent_match() {
        // ... 1 2 3 [9] ... 1 2 3 [7 8] ... 1 2 3 → the latest match continues with 7 8
        let h = [1, 2, 3, 9, 5, 1, 2, 3, 7, 8, 6, 1, 2, 3];
        assert_eq!(ngram_draft(&h, 2, 3, 1), vec![7, 8]);
        assert_eq!(ngram_draft(&h, 5, 3, 1), vec![7, 8, 6, 1, 2]);
        // no trigram or bigram match → the unigram 5 at index 4, followed by 0 5
        let h = [4, 5, 6, 4, 5, 0, 5];
        assert_eq!(ngram_draft(&h, 2, 3, 1), vec![0, 5]);
        assert_eq!(ngram_draft(&h, 2, 3, 2), Vec::<u32>::new());
        assert!(ngram_draft(&[1], 4, 3, 1).is_empty());
        // periodic text: the overlapping match continues with the period
        assert_eq!(ngram_draft(&[5, 1, 2, 1, 2], 3, 2, 1), vec![1, 2, 1]);
        assert_eq!(ngram_draft(&[7, 7, 7], 4, 3, 1), vec![7, 7, 7, 7]);
        assert!(ngram_draft(&[1, 2, 3], 0, 3, 1).is_empty());
    }

    #[test]
    fn acceptance_rule_cases() {
        let p = [0.5f32, 0.25, 0.25, 0.0];
        assert_eq!(accept_draft(&p, 0, 0.49, 0.0), (0, true));
        // rejected: resample over {1, 2} (each 0.5 after removing 0)
        assert_eq!(accept_draft(&p, 0, 0.5, 0.1), (1, false));
        assert_eq!(accept_draft(&p, 0, 0.9, 0.6), (2, false));
        // a draft of probability 0 is never accepted and never returned
        assert!(!accept_draft(&p, 3, 0.0, 0.99).1);
        assert_ne!(accept_draft(&p, 3, 0.0, 0.99).0, 3);
    }

    #[test]
    fn params_validation() {
        assert!(DraftParams::default().validate().is_ok());
        let bad = DraftParams {
            num_draft_tokens: 0,
            ..DraftParams::default()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("--num-draft-tokens"));
    }
}
