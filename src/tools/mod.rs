//! Tooling around the runtime, not needed to run the model: `zaya synth`'s exact-format synthetic
//! bundles ([`synth`]) and the encoders they use ([`encode`]), comparison with reference outputs
//! ([`parity`]), and the benchmark's measurements and bandwidth bound ([`bench`](mod@bench)).
pub mod bench;
pub mod encode;
pub mod parity;
pub mod synth;
