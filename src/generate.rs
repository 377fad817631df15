//! Generation: sessions that keep the model cache across turns, streaming tokens and text, stop conditions and stats.
