//! numpy's random bit generation, reproduced bit for bit: `SeedSequence` (integer entropy, no spawn
//! key) → `PCG64` with its buffered 32-bit draws → the Lemire bounded-integer draw, and from them the
//! TurboQuant Hadamard sign vector of `default_rng(seed).choice([-1.0, 1.0], size=dim)`.

const SS_INIT_A: u32 = 0x43b0_d7e5;
const SS_MULT_A: u32 = 0x931e_8875;
const SS_INIT_B: u32 = 0x8b51_f9dd;
const SS_MULT_B: u32 = 0x58f3_8ded;
const SS_MIX_MULT_L: u32 = 0xca01_f9dd;
const SS_MIX_MULT_R: u32 = 0x4973_f715;
const SS_XSHIFT: u32 = 16;
const SS_POOL_SIZE: usize = 4;

/// numpy's `SeedSequence(entropy)` for an integer entropy and no spawn key: the 4-word pool.
fn seed_sequence_pool(entropy: u64) -> [u32; SS_POOL_SIZE] {
    // The integer is split into little-endian 32-bit words (at least one word).
    let mut words = Vec::new();
    let mut v = entropy;
    loop {
        words.push((v & 0xffff_ffff) as u32);
        v >>= 32;
        if v == 0 {
            break;
        }
    }
    let mut hash_const = SS_INIT_A;
    let mut hashmix = |value: u32| -> u32 {
        let mut v = value ^ hash_const;
        hash_const = hash_const.wrapping_mul(SS_MULT_A);
        v = v.wrapping_mul(hash_const);
        v ^ (v >> SS_XSHIFT)
    };
    let mix = |x: u32, y: u32| -> u32 {
        let r = SS_MIX_MULT_L
            .wrapping_mul(x)
            .wrapping_sub(SS_MIX_MULT_R.wrapping_mul(y));
        r ^ (r >> SS_XSHIFT)
    };
    let mut pool = [0u32; SS_POOL_SIZE];
    for (i, p) in pool.iter_mut().enumerate() {
        *p = hashmix(words.get(i).copied().unwrap_or(0));
    }
    for src in 0..SS_POOL_SIZE {
        for dst in 0..SS_POOL_SIZE {
            if src != dst {
                let h = hashmix(pool[src]);
                pool[dst] = mix(pool[dst], h);
            }
        }
    }
    for &w in words.iter().skip(SS_POOL_SIZE) {
        for p in pool.iter_mut() {
            let h = hashmix(w);
            *p = mix(*p, h);
        }
    }
    pool
}

/// numpy's `SeedSequence.generate_state(n_words)` as u32 words.
fn seed_sequence_state(pool: &[u32; SS_POOL_SIZE], n_words: usize) -> Vec<u32> {
    let mut hash_const = SS_INIT_B;
    (0..n_words)
        .map(|i| {
            let mut v = pool[i % SS_POOL_SIZE] ^ hash_const;
            hash_const = hash_const.wrapping_mul(SS_MULT_B);
            v = v.wrapping_mul(hash_const);
            v ^ (v >> SS_XSHIFT)
        })
        .collect()
}

const PCG_MULT: u128 = 0x2360_ed05_1fc6_5da4_4385_df64_9fcc_f645;

/// numpy's `PCG64` bit generator (128-bit LCG, XSL-RR output), including its buffered 32-bit
/// draws (the low half of a 64-bit output first, then the high half).
#[derive(Debug, Clone)]
pub struct Pcg64 {
    state: u128,
    inc: u128,
    pending_u32: Option<u32>,
}

impl Pcg64 {
    /// The generator of `np.random.default_rng(seed)` (= `PCG64(SeedSequence(seed))`).
    pub fn from_numpy_seed(seed: u64) -> Self {
        let w = seed_sequence_state(&seed_sequence_pool(seed), 8);
        let s: Vec<u64> = (0..4)
            .map(|i| u64::from(w[2 * i]) | (u64::from(w[2 * i + 1]) << 32))
            .collect();
        let initstate = (u128::from(s[0]) << 64) | u128::from(s[1]);
        let initseq = (u128::from(s[2]) << 64) | u128::from(s[3]);
        let mut g = Pcg64 {
            state: 0,
            inc: (initseq << 1) | 1,
            pending_u32: None,
        };
        g.step();
        g.state = g.state.wrapping_add(initstate);
        g.step();
        g
    }

    fn step(&mut self) {
        self.state = self.state.wrapping_mul(PCG_MULT).wrapping_add(self.inc);
    }

    /// Next 64-bit output (`bit_generator.random_raw()`).
    pub fn next_u64(&mut self) -> u64 {
        self.step();
        let hi = (self.state >> 64) as u64;
        let lo = self.state as u64;
        let rot = (self.state >> 122) as u32;
        (hi ^ lo).rotate_right(rot)
    }

    /// Next 32-bit output, buffered the way numpy's PCG64 does it.
    pub fn next_u32(&mut self) -> u32 {
        if let Some(v) = self.pending_u32.take() {
            return v;
        }
        let v = self.next_u64();
        self.pending_u32 = Some((v >> 32) as u32);
        v as u32
    }

    /// numpy's Lemire bounded draw in [0, range] (inclusive) for range < 2^32 - 1, the path
    /// `Generator.integers` takes for small populations.
    pub fn bounded_u32(&mut self, range: u32) -> u32 {
        debug_assert!(range != u32::MAX);
        let excl = u64::from(range) + 1;
        let mut m = u64::from(self.next_u32()) * excl;
        let mut leftover = m as u32;
        if u64::from(leftover) < excl {
            let threshold = ((u64::from(u32::MAX) - u64::from(range)) % excl) as u32;
            while leftover < threshold {
                m = u64::from(self.next_u32()) * excl;
                leftover = m as u32;
            }
        }
        (m >> 32) as u32
    }
}

/// The Hadamard sign vector `signs.{dim}.{seed}`: numpy's
/// `default_rng(seed).choice([-1.0, 1.0], size=dim)` as f32 (docs/bundle-format.md §3.4).
pub fn random_signs(dim: usize, seed: u64) -> Vec<f32> {
    let mut g = Pcg64::from_numpy_seed(seed);
    (0..dim)
        .map(|_| if g.bounded_u32(1) == 0 { -1.0 } else { 1.0 })
        .collect()
}
