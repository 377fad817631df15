//! The bandwidth bound's byte count (`bench::decode_bytes`) against a hand count for the `tiny`
//! synth preset: every category computed here from the preset's dimensions and the JANGTQ4 storage
//! formats of docs/bundle-format.md §1.3 (8-bit affine with f16 scales/biases per group of 32 for the
//! attention projections and the embedding; TurboQuant 4-bit codes + f16 row norms for the
//! experts; f16 passthrough for norms, convs, temp and the whole router), never from the function
//! under test.
use zaya_mlx::bundle::Bundle;
use zaya_mlx::tools::bench::{self, DecodeBytes};
use zaya_mlx::tools::synth::{self, SynthOptions, SynthSpec};

/// Bytes of an 8-bit affine matrix [out, in] with group size `g`: one byte per weight (U32 words of
/// four codes) plus f16 scales and biases per group.
fn affine8(out: u64, inp: u64, g: u64) -> u64 {
    out * inp + 2 * (out * (inp / g) * 2)
}

/// Bytes of one expert's TurboQuant matrix [out, in] at `bits`: packed codes plus one f16 norm per row.
fn tq(out: u64, inp: u64, bits: u64) -> u64 {
    out * inp * bits / 8 + out * 2
}

const F16: u64 = 2;

#[test]
fn tiny_preset_bytes_per_decode_token_match_a_hand_count() {
    let dir = tempfile::tempdir().unwrap();
    let spec = SynthSpec::preset("tiny").unwrap();
    synth::write_bundle(&spec, dir.path(), &SynthOptions::default()).unwrap();
    let bundle = Bundle::open(dir.path()).unwrap();
    let cfg = &bundle.config;

    // the preset, spelled out (so a change of the preset fails loudly here)
    let (h, layers, hq, hk, d) = (128u64, 6u64, 4u64, 2u64, 32u64);
    let (experts, inter, r, vocab, g, bits, top_k) = (4u64, 128u64, 64u64, 1024u64, 32u64, 4u64, 1u64);
    assert_eq!(
        (
            spec.hidden_size,
            spec.num_hidden_layers,
            spec.num_q_heads,
            spec.num_kv_heads,
            spec.head_dim
        ),
        (h as usize, layers as usize, hq as usize, hk as usize, d as usize)
    );
    assert_eq!(
        (
            spec.num_experts,
            spec.expert_intermediate_size,
            spec.router_hidden_size,
            spec.vocab_size,
            spec.group_size
        ),
        (experts as usize, inter as usize, r as usize, vocab as usize, g as usize)
    );
    assert_eq!(
        (spec.expert_bits, cfg.top_k, spec.use_mod),
        (bits as u32, top_k as usize, true)
    );
    assert!(cfg.tie_word_embeddings);

    let attn_layers = layers.div_ceil(2); // 0, 2, 4
    let moe_layers = layers / 2; // 1, 3, 5
    let (qd, kd) = (hq * d, hk * d);
    let c = qd + kd; // conv channels

    // attention half-layer: q, k, val_proj1/2 (kd/2 rows each), o_proj; conv0 [C,1,2]+[C],
    // conv1 [C, D, 2]+[C] (in/groups = D), temp [Hk]
    let attn_one = affine8(qd, h, g)
        + affine8(kd, h, g)
        + 2 * affine8(kd / 2, h, g)
        + affine8(h, qd, g)
        + (c * 2 + c) * F16
        + (c * d * 2 + c) * F16
        + hk * F16;
    let attention = attn_layers * attn_one;

    // router: down_proj [R,H]+[R], rmsnorm_eda [R], mlp.0/.2 [R,R]+[R], mlp.4 [E+1,R],
    // balancing_biases [E+1], router_states_scale [R] (absent in the first MoE layer)
    let router_one = (r * h + r) + r + 2 * (r * r + r) + (experts + 1) * r + (experts + 1);
    let router = (moe_layers * router_one + (moe_layers - 1) * r) * F16;

    // top-1 expert: gate [I,H], up [I,H], down [H,I]
    let experts_b = moe_layers * top_k * (2 * tq(inter, h, bits) + tq(h, inter, bits));

    // tied lm_head: the whole 8-bit embedding matrix, plus one row for the lookup
    let lm = affine8(vocab, h, g) + affine8(1, h, g);

    // input_norm per half-layer; res_scale: 2 vectors in layer 0, 4 elsewhere; final_norm;
    // model.res_scale (4 vectors)
    let norms = (layers * h + (2 + 4 * (layers - 1)) * h + h + 4 * h) * F16;

    for ctx in [0usize, 1, 37, 1000] {
        // K and V f32 [Hk, ctx, D] plus conv_state f32 [C, 2] and prev_hs f32 [H], per attention layer
        let state = attn_layers * (2 * hk * ctx as u64 * d * 4 + (c * 2 + h) * 4);
        let expected = DecodeBytes {
            attention,
            router,
            experts: experts_b,
            lm_head_and_embedding: lm,
            norms,
            state,
        };
        let got = bench::decode_bytes(&bundle.weights, cfg, ctx, 4);
        assert_eq!(got, expected, "ctx {ctx}");
        assert_eq!(got.total(), attention + router + experts_b + lm + norms + state);
        assert_eq!(bench::state_bytes(cfg, ctx, 4), state);
    }

    // the bound divides the per-token bytes at the context into the bandwidth
    let w0 = bench::decode_bytes(&bundle.weights, cfg, 0, 4);
    let b = bench::bound(w0, cfg, 100, 10.0);
    let total = bench::decode_bytes(&bundle.weights, cfg, 100, 4).total();
    assert_eq!(b.bytes_per_token, total);
    assert!((b.tok_per_s - 10e9 / total as f64).abs() < 1e-9 * b.tok_per_s);
}
