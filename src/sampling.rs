//! Sampling on MLX arrays: greedy, temperature, top-k, top-p, min-p, penalties, logit bias, seeded.
