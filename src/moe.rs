//! MoE half-layer: the router (depth-carried EDA state, 17 logits incl. the MOD skip route) and the top-1 SwiGLU experts in every weight format.
