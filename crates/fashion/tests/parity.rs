//! Golden parity: the engine reproduces PyTorch's backbone outputs on the reference input.
//! Needs the shared weights folder (`FASHION_WEIGHTS`, default `../shared/weights` beside the
//! checkout), so it is ignored by plain `cargo test` and run by `.ci/run` with `--ignored`.

use std::path::PathBuf;

use fashion::{Engine, Threads};
use ndarray::{Array4, ArrayD};

fn weights_dir() -> PathBuf {
    std::env::var_os("FASHION_WEIGHTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/weights")
        })
}

fn reference() -> (Array4<f32>, Vec<(String, ArrayD<f32>)>) {
    let path = weights_dir().join("reference.safetensors");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let load = |name: &str| -> ArrayD<f32> {
        let t = st.tensor(name).unwrap();
        assert_eq!(t.dtype(), safetensors::Dtype::F32);
        let data: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        ArrayD::from_shape_vec(t.shape().to_vec(), data).unwrap()
    };
    let input = load("input").into_dimensionality().unwrap();
    let outs = ["pooled", "feat_s32"]
        .iter()
        .map(|n| (n.to_string(), load(n)))
        .collect();
    (input, outs)
}

/// Checks one session on two threads, and two one-thread sessions sharing the batch (the
/// three photos are cut into parts of two and one).
fn check(model: PathBuf) {
    check_with(&model, Threads::single(2));
    check_with(
        &model,
        Threads {
            per_session: 1,
            sessions: 2,
        },
    );
}

fn check_with(model: &std::path::Path, threads: Threads) {
    let engine = Engine::load(model, threads).unwrap();
    let (mut input, expected) = reference();
    // A model that takes the whole square cuts its crop from the centre; its feature maps are
    // the crop's. The reference input goes in the middle of a square of noise.
    let bytes = std::fs::read(model).unwrap();
    if let Ok(info) = fashion::model::read_info(&bytes, model) {
        let (side, crop) = (info.input_side() as usize, input.dim().3);
        if side > crop {
            let at = (side - crop) / 2;
            let (n, c, _, _) = input.dim();
            let mut square = Array4::from_shape_fn((n, c, side, side), |(n, c, y, x)| {
                ((n * 5 + c * 3 + y * 7 + x * 11) % 13) as f32 / 6.0 - 1.0
            });
            square
                .slice_mut(ndarray::s![.., .., at..at + crop, at..at + crop])
                .assign(&input);
            input = square;
        }
    }
    let names: Vec<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
    let got = engine.run(input.view(), &names).unwrap();
    for ((name, want), got) in expected.iter().zip(&got) {
        assert_eq!(want.shape(), got.shape(), "{name}");
        let max = want
            .iter()
            .zip(got.iter())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        eprintln!(
            "{} ({threads:?}): {name} max abs diff {max:e}",
            model.display()
        );
        assert!(max <= 1e-4, "{name}: max abs diff {max} > 1e-4");
    }
}

#[test]
#[ignore = "needs the shared weights folder; run by .ci/run"]
fn backbone_matches_pytorch() {
    check(weights_dir().join("efficientnet_lite0_imagenet.onnx"));
}

#[test]
#[ignore = "needs the shared weights folder; run by .ci/run"]
fn default_model_matches_pytorch() {
    check(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/default.onnx"));
}
