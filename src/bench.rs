//! End-to-end benchmark support (`zaya bench`): the memory-bandwidth bound of one decode token
//! (bytes it must read, from the bundle, over a copy bandwidth measured on the same machine in the
//! same run), process and MLX memory figures.
use std::time::Instant;

use crate::bundle::CanonicalWeights;
use crate::config::ZayaConfig;

/// Bytes one decode token must read, by category.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct DecodeBytes {
    /// Attention weights of every attention half-layer (projections, conv, temp).
    pub attention: u64,
    /// Router weights of every MoE half-layer.
    pub router: u64,
    /// The routed experts actually used: top-k experts' gate/up/down per MoE layer.
    pub experts: u64,
    /// The LM head (the tied embedding matrix read in full) plus one embedding row.
    pub lm_head_and_embedding: u64,
    /// Norms and residual-scale vectors.
    pub norms: u64,
    /// KV cache and CCA state (conv_state, prev_hs) at the given context length.
    pub state: u64,
}

impl DecodeBytes {
    pub fn total(&self) -> u64 {
        self.attention + self.router + self.experts + self.lm_head_and_embedding + self.norms + self.state
    }
}

/// Counts the bytes one decode token reads at context length `ctx` (tokens already in the cache):
/// every non-expert tensor in full, `top_k / num_experts` of each stacked expert tensor, the tied
/// embedding matrix in full for the LM head plus one embedding row for the lookup, and the K/V
/// (`kv_bytes_per_elem` each, f32 = 4) and CCA state of every attention layer.
pub fn decode_bytes(w: &CanonicalWeights, cfg: &ZayaConfig, ctx: usize, kv_bytes_per_elem: u64) -> DecodeBytes {
    let mut b = DecodeBytes::default();
    let vocab = cfg.vocab_size as u64;
    let tied = !w.tensors.keys().any(|k| k.starts_with("lm_head."));
    for (name, arr) in &w.tensors {
        let n = arr.nbytes() as u64;
        if name.contains(".zaya_block.experts.") {
            b.experts += n * cfg.top_k as u64 / cfg.num_experts as u64;
        } else if name.starts_with("model.embed_tokens.") {
            // the lookup reads one row; a tied LM head reads the whole matrix
            let row = n / vocab;
            b.lm_head_and_embedding += row + if tied { n } else { 0 };
        } else if name.starts_with("lm_head.") {
            b.lm_head_and_embedding += n;
        } else if name.contains(".zaya_block.router.") {
            b.router += n;
        } else if name.contains(".self_attn.") {
            b.attention += n;
        } else {
            b.norms += n;
        }
    }
    let attn_layers = cfg.num_attention_layers() as u64;
    let kv = 2 * cfg.num_kv_heads as u64 * ctx as u64 * cfg.head_dim as u64 * kv_bytes_per_elem;
    let cca = (cfg.conv_channels() * cfg.conv_state_len() + cfg.hidden_size) as u64 * 4;
    b.state = attn_layers * (kv + cca);
    b
}

/// Measures memory copy bandwidth in GB/s (10⁹ bytes/s), counting bytes read plus bytes written,
/// as the median of `reps` copies of a `bytes`-sized buffer (after one warm-up copy).
pub fn copy_bandwidth_gbs(bytes: usize, reps: usize) -> f64 {
    let n = bytes / 8;
    let src: Vec<u64> = (0..n as u64).collect();
    let mut dst = vec![0u64; n];
    dst.copy_from_slice(&src);
    let mut rates: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            let t = Instant::now();
            dst.copy_from_slice(std::hint::black_box(&src));
            std::hint::black_box(&dst);
            (2 * n * 8) as f64 / t.elapsed().as_secs_f64() / 1e9
        })
        .collect();
    rates.sort_by(|a, b| a.partial_cmp(b).unwrap());
    rates[rates.len() / 2]
}

/// Process memory from /proc/self/status: (current RSS, peak RSS) in bytes. None where unavailable.
pub fn process_rss() -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |k: &str| -> Option<u64> {
        let line = s.lines().find(|l| l.starts_with(k))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// MLX allocator figures in bytes: (active, peak).
pub fn mlx_memory() -> (u64, u64) {
    let mut active = 0usize;
    let mut peak = 0usize;
    // SAFETY: plain queries of MLX's allocator.
    unsafe {
        mlx_sys::mlx_get_active_memory(&mut active);
        mlx_sys::mlx_get_peak_memory(&mut peak);
    }
    (active as u64, peak as u64)
}

/// Resets MLX's peak-memory counter.
pub fn reset_mlx_peak() {
    // SAFETY: plain call into MLX's allocator.
    unsafe {
        mlx_sys::mlx_reset_peak_memory();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_bandwidth_is_positive_and_finite() {
        let bw = copy_bandwidth_gbs(8 << 20, 3);
        assert!(bw.is_finite() && bw > 0.0);
    }

    #[test]
    fn rss_is_read() {
        let (cur, peak) = process_rss().unwrap();
        assert!(cur > 0 && peak >= cur);
    }
}
