//! `parity::compare` on the hand-built models: passes on the true reference, fails (and says where)
//! on a perturbed one, honours the route/argmax agreement threshold, and rejects shape mismatches.
mod model_support;

use mlx_rs::Array;
use model_support::*;
use zaya_mlx::model::ModelOptions;
use zaya_mlx::tools::parity::{compare, ParityOptions};
use zaya_mlx::ZayaError;

#[test]
fn parity_passes_on_the_reference_and_reports_every_tensor() {
    let dir = model_ref("tiny", "tq", 7);
    let r = load_st(&dir.join("reference.safetensors"));
    let model = build(&dir, ModelOptions::default());
    let rep = compare(&model, &r, None, Some(4), ParityOptions::default()).unwrap();
    print!("{}", rep.table());
    assert!(rep.ok());
    let l = rep.get("logits").unwrap();
    assert_eq!(l.agreement, Some((13, 13)));
    assert!(l.rel < 5e-4 && l.max_ref > 1.0);
    // logits + 6 hidden + 6 residual + 3 routes
    assert_eq!(rep.tensors.len(), 1 + 6 + 6 + 3);
    assert_eq!(rep.get("route.3").unwrap().agreement, Some((13, 13)));
}

#[test]
fn parity_fails_where_the_reference_was_perturbed() {
    let dir = model_ref("tiny", "tq", 7);
    let mut r = load_st(&dir.join("reference.safetensors"));
    let model = build(&dir, ModelOptions::default());
    // perturb hidden.2 by 1% of its scale at one element
    let h = to_vec_f32(&r["hidden.2"]);
    let m = h.iter().fold(0f32, |a, x| a.max(x.abs()));
    let mut h2 = h.clone();
    h2[17] += 0.01 * m;
    r.insert("hidden.2".into(), Array::from_slice(&h2, r["hidden.2"].shape()));
    // flip one route
    let mut route = to_vec_i32(&r["route.1"]);
    route[0] = (route[0] + 1) % 5;
    r.insert("route.1".into(), Array::from_slice(&route, &[route.len() as i32]));
    let rep = compare(&model, &r, None, None, ParityOptions::default()).unwrap();
    print!("{}", rep.table());
    assert!(!rep.ok());
    let failed: Vec<&str> = rep.tensors.iter().filter(|t| !t.ok).map(|t| t.name.as_str()).collect();
    assert_eq!(failed, vec!["route.1", "hidden.2"]);
    // a looser agreement threshold accepts the single flipped route, not the hidden state
    let rep = compare(
        &model,
        &r,
        None,
        None,
        ParityOptions {
            rtol: 5e-4,
            min_agreement: 0.9,
        },
    )
    .unwrap();
    let failed: Vec<&str> = rep.tensors.iter().filter(|t| !t.ok).map(|t| t.name.as_str()).collect();
    assert_eq!(failed, vec!["hidden.2"]);
}

#[test]
fn parity_with_explicit_tokens_and_logits_only() {
    let dir = model_ref("tiny", "float", 7);
    let r = load_st(&dir.join("reference.safetensors"));
    let model = build(&dir, ModelOptions::default());
    let ids = ref_tokens(&r);
    let only: std::collections::HashMap<String, Array> = [
        ("logits".to_string(), r["logits"].clone()),
        ("greedy_ids".to_string(), Array::from_slice(&[1i32], &[1])),
    ]
    .into();
    let rep = compare(&model, &only, Some(&ids), None, ParityOptions::default()).unwrap();
    assert!(rep.ok());
    assert_eq!(rep.tensors.len(), 1);
    assert_eq!(rep.ignored, vec!["greedy_ids".to_string()]);
    // other tokens than the reference's → a shape error (the reference does not fit the run: bad
    // input, exit 2) or a value failure, never a silent pass
    let rep = compare(&model, &only, Some(&ids[..12]), None, ParityOptions::default());
    assert!(matches!(rep, Err(ZayaError::InvalidArgument(_))), "{rep:?}");
    let mut other = ids.clone();
    other[5] = (other[5] + 1) % 256;
    let rep = compare(&model, &only, Some(&other), None, ParityOptions::default()).unwrap();
    assert!(!rep.ok());
}
