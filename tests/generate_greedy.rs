//! Greedy generation through the library path ([`Session::generate_from_tokens`]: prefill, the
//! decode loop, the sampler) on the jang-converted fixtures equals the Python reference's greedy
//! continuation (`greedy_ids`: 32 tokens from `token_ids`, argmax, no EOS stop).
mod common;

use zaya_mlx::model::ModelOptions;
use zaya_mlx::runtime::{FinishReason, GenParams, Zaya};

fn ids(t: &common::Tensor) -> Vec<u32> {
    t.to_i64()
        .into_iter()
        .map(|v| u32::try_from(v).expect("token id"))
        .collect()
}

fn check(name: &str, chunk: Option<usize>) {
    let fx = common::fixture(name);
    let r = common::read_all(&fx.reference);
    let prompt = ids(&r["token_ids"]);
    let want = ids(&r["greedy_ids"]);
    assert_eq!(want.len(), 32);
    let zaya = Zaya::load(&fx.bundle, ModelOptions::default()).unwrap();
    // the converter's bundles carry no tokenizer: token-level generation still works
    assert!(zaya.tokenizer().is_none());
    let mut session = zaya.session();
    let params = GenParams {
        max_tokens: Some(want.len()),
        ignore_eos: true,
        prefill_chunk: chunk,
        ..GenParams::default()
    };
    let mut gen = session.generate_from_tokens(&prompt, &params).unwrap();
    let steps: Vec<_> = gen.by_ref().map(|s| s.unwrap()).collect();
    let got: Vec<u32> = steps.iter().map(|s| s.id).collect();
    assert_eq!(got, want, "{name}: greedy continuation differs from the reference");
    // only the last token carries the finish reason
    assert!(steps[..steps.len() - 1].iter().all(|s| s.finish.is_none()));
    assert_eq!(steps.last().unwrap().finish, Some(FinishReason::MaxTokens));
    let stats = gen.stats();
    assert_eq!(stats.prompt_tokens, prompt.len());
    assert_eq!(stats.generation_tokens, 32);
    drop(gen);
    // every token but the last was fed back; the last one waits as the pending token
    assert_eq!(session.offset(), prompt.len() + 31);
    assert_eq!(session.pending_token(), Some(want[31]));
    assert_eq!(&session.tokens()[prompt.len()..], &want[..31]);
}

#[test]
fn tiny_greedy_equals_reference() {
    check("tiny", None);
}

#[test]
fn wide_greedy_equals_reference_chunked_prefill() {
    check("wide", Some(5));
}

#[test]
fn skip_greedy_equals_reference() {
    check("skip", None);
}

#[test]
fn continuing_a_raw_generation_feeds_the_pending_token() {
    // 32 greedy tokens in one call equal 12 + 20 in two calls on the same session
    let fx = common::fixture("tiny");
    let r = common::read_all(&fx.reference);
    let prompt = ids(&r["token_ids"]);
    let want = ids(&r["greedy_ids"]);
    let zaya = Zaya::load(&fx.bundle, ModelOptions::default()).unwrap();
    let mut s = zaya.session();
    let p = |n| GenParams {
        max_tokens: Some(n),
        ignore_eos: true,
        ..GenParams::default()
    };
    let a: Vec<u32> = s
        .generate_from_tokens(&prompt, &p(12))
        .unwrap()
        .map(|t| t.unwrap().id)
        .collect();
    let b: Vec<u32> = s
        .generate_from_tokens(&[], &p(20))
        .unwrap()
        .map(|t| t.unwrap().id)
        .collect();
    assert_eq!([a, b].concat(), want);
}
