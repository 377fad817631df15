//! The ZAYA model: embedding, 80 half-layers with residual scaling, final norm and tied lm_head.
