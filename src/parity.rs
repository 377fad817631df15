//! Comparison of our logits / per-layer states with reference outputs (Python MLX or any tool writing the same tensor names).
