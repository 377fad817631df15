//! Tokenizer (HF tokenizer.json through the `tokenizers` crate) and incremental UTF-8-safe detokenization.
