//! The exact prefix cache of `zaya serve`: complete single-sequence model states (every attention
//! layer's KV, `conv_state` and `prev_hs`; the router's depth state is not carried across
//! positions) keyed by the token ids they hold, least recently used first out, bounded in bytes. A
//! new request starts from the longest entry whose tokens are a proper prefix of its prompt: CCA
//! states cannot be trimmed, so only exact prefixes are reusable, and the state is the one the
//! prefix's own forward left, bit for bit.
use crate::model::cache::ModelCache;

struct Entry {
    tokens: Vec<u32>,
    state: ModelCache,
    bytes: usize,
    used: u64,
}

/// An LRU of model states by token prefix.
pub struct PrefixCache {
    entries: Vec<Entry>,
    budget: usize,
    bytes: usize,
    clock: u64,
}

impl PrefixCache {
    /// An empty cache holding at most `budget` bytes of states (0 disables it).
    pub fn new(budget: usize) -> Self {
        PrefixCache {
            entries: Vec::new(),
            budget,
            bytes: 0,
            clock: 0,
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Keeps `state` (holding exactly `tokens`), evicting the least recently used entries to stay
    /// within the budget. A state larger than the whole budget, or already cached, is not kept.
    pub fn insert(&mut self, tokens: Vec<u32>, state: ModelCache) {
        if tokens.is_empty() || state.offset() != tokens.len() || state.is_poisoned() {
            return;
        }
        let bytes = state.nbytes();
        if bytes > self.budget || self.entries.iter().any(|e| e.tokens == tokens) {
            return;
        }
        while self.bytes + bytes > self.budget {
            let Some(i) = (0..self.entries.len()).min_by_key(|&i| self.entries[i].used) else {
                break;
            };
            self.bytes -= self.entries.swap_remove(i).bytes;
        }
        self.clock += 1;
        self.bytes += bytes;
        self.entries.push(Entry {
            tokens,
            state,
            bytes,
            used: self.clock,
        });
    }

    /// The state of the longest cached proper prefix of `prompt` (a copy sharing arrays: the
    /// entry is not changed by what the copy goes on to compute), or `None`.
    pub fn lookup(&mut self, prompt: &[u32]) -> Option<ModelCache> {
        let best = self
            .entries
            .iter_mut()
            .filter(|e| e.tokens.len() < prompt.len() && prompt.starts_with(&e.tokens))
            .max_by_key(|e| e.tokens.len())?;
        self.clock += 1;
        best.used = self.clock;
        Some(best.state.snapshot())
    }
}
