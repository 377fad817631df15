//! Per-sequence inference state: per attention half-layer K/V (post-RoPE keys) grown in chunks, plus the CCA recurrent `conv_state` and `prev_hs` (fp32).
