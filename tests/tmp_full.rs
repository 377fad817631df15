use std::time::Instant;
use zaya_mlx::model::{ModelOptions, ZayaModel};
#[test]
#[ignore]
fn full() {
    let t0 = Instant::now();
    let model = ZayaModel::load("/tmp/zaya-full", ModelOptions::default()).unwrap();
    eprintln!("load {:?}", t0.elapsed());
    let mut c = model.new_cache();
    let t0 = Instant::now();
    let l = model.prefill(&[2, 1000, 2000, 3000, 4000, 5000, 6000, 7000], &mut c, None).unwrap();
    eprintln!("prefill 8 {:?}", t0.elapsed());
    let v = l.as_slice::<f32>();
    eprintln!("finite {} max {}", v.iter().all(|x| x.is_finite()), v.iter().fold(0f32, |a, b| a.max(b.abs())));
    for i in 0..3 {
        let t0 = Instant::now();
        model.decode_step(100 + i, &mut c).unwrap();
        eprintln!("decode {:?}", t0.elapsed());
    }
    eprintln!("skips {:?}", c.skip_counts().iter().sum::<u64>());
}
