//! Training the garment mask head ([`crate::mask`]) on human-parsing masks and product shots:
//! the frozen backbone runs once over every photo that has a mask or is a product shot (and its
//! mirror image), its three feature maps are kept in memory as float16 (channels last), and the
//! head is trained with AdamW on the per-cell share of garment pixels (binary cross-entropy
//! with soft targets; a product shot's garment is its foreground, see
//! [`crate::mask::product_foreground`]). The finished head is kept in the cache, so a repeated
//! run reuses it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use half::f16;
use ndarray::Array4;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::hash::{fnv1a, START};
use crate::mask::{
    interp_matrix, parsing_crop, product_foreground, MaskWeights, MASK_INPUTS, MASK_SIDE,
};
use crate::preprocess::Preprocess;

/// Hyper-parameters of the garment mask head.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaskConfig {
    /// Train a mask head when the data has parsing masks.
    pub enabled: bool,
    pub hidden: usize,
    pub epochs: usize,
    pub batch: usize,
    pub learning_rate: f64,
    pub weight_decay: f64,
    /// Also train on mirrored photos.
    pub flip: bool,
    /// Use at most this many training photos with a parsing mask (0: all); each costs about
    /// 230 KB of memory.
    pub max_photos: usize,
    /// Also learn from at most this many product shots among the training photos without a
    /// parsing mask (a product alone on a plain background, its foreground as the target; see
    /// [`crate::mask::product_foreground`]), looking at no more than ten candidates per shot;
    /// 0: none.
    pub product_shots: usize,
}

impl Default for MaskConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            hidden: 32,
            epochs: 8,
            batch: 32,
            learning_rate: 2e-3,
            weight_decay: 1e-4,
            flip: true,
            max_photos: 0,
            product_shots: 3000,
        }
    }
}

/// What training the mask measured on the validation photos (on the 28x28 grid; `fashion eval`
/// measures at full resolution).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MaskSummary {
    pub hidden: usize,
    pub train_photos: usize,
    pub val_photos: usize,
    /// Training photos that are product shots (the rest have parsing masks).
    #[serde(default)]
    pub product_shots: usize,
    pub val_grid_iou: f64,
    pub seconds: f64,
}

/// A photo and its parsing mask; without one, a training photo that may be a product shot.
pub struct MaskSample {
    pub photo: PathBuf,
    pub mask: Option<PathBuf>,
    pub train: bool,
}

/// Floats of one photo's three feature maps.
const ROW: usize = 40 * 28 * 28 + 112 * 14 * 14 + 1280 * 7 * 7;
const GRID: usize = MASK_SIDE * MASK_SIDE;

fn cerr(e: candle_core::Error) -> Error {
    Error::Training(e.to_string())
}

/// Trains the mask head, or reads it back from the cache when an identical run finished before.
/// `engine` runs a graph whose outputs are the [`MASK_INPUTS`].
#[allow(clippy::too_many_arguments)]
pub fn train_mask(
    engine: &Engine,
    pre: &Preprocess,
    samples: &[MaskSample],
    cfg: &MaskConfig,
    seed: u64,
    cache_dir: &Path,
    model_key: u64,
    backbone_batch: usize,
) -> Result<(MaskWeights, MaskSummary)> {
    let mut key = fnv1a(START, &model_key.to_le_bytes());
    key = fnv1a(
        key,
        serde_json::to_string(cfg).unwrap_or_default().as_bytes(),
    );
    key = fnv1a(key, &seed.to_le_bytes());
    for s in samples {
        key = fnv1a(key, s.photo.to_string_lossy().as_bytes());
        key = fnv1a(key, &[u8::from(s.train), u8::from(s.mask.is_some())]);
    }
    let ckpt = cache_dir.join(format!("mask-{key:016x}.safetensors"));
    if let Ok(found) = load_checkpoint(&ckpt) {
        eprintln!(
            "mask: reusing the head trained earlier ({})",
            ckpt.display()
        );
        return Ok(found);
    }
    let start = std::time::Instant::now();
    let mut rng = StdRng::seed_from_u64(fnv1a(seed, b"mask"));
    let mut train: Vec<&MaskSample> = samples
        .iter()
        .filter(|s| s.train && s.mask.is_some())
        .collect();
    train.shuffle(&mut rng);
    if cfg.max_photos > 0 {
        train.truncate(cfg.max_photos);
    }
    let mut candidates: Vec<&MaskSample> = samples
        .iter()
        .filter(|s| s.train && s.mask.is_none())
        .collect();
    candidates.shuffle(&mut rng);
    let shots = product_shots(pre, &candidates, cfg.product_shots);
    let product_shots = shots.len();
    train.extend(shots);
    let val: Vec<&MaskSample> = samples
        .iter()
        .filter(|s| !s.train && s.mask.is_some())
        .collect();
    let mut tr = extract(engine, pre, &train, false, backbone_batch, "mask")?;
    if cfg.flip {
        let f = extract(engine, pre, &train, true, backbone_batch, "mask flipped")?;
        tr.append(f);
    }
    let va = extract(engine, pre, &val, false, backbone_batch, "mask val")?;
    if tr.n == 0 {
        return Err(Error::Training(
            "mask: no training photo could be read".into(),
        ));
    }
    let (mean, std) = tr.channel_stats();
    let dev = Device::Cpu;
    let h = cfg.hidden;
    let init = |rng: &mut StdRng, n: usize, fan_in: usize| -> Vec<f32> {
        let bound = (1.0 / fan_in as f32).sqrt();
        (0..n).map(|_| rng.random_range(-bound..bound)).collect()
    };
    let ws: Vec<Var> = MASK_INPUTS
        .iter()
        .map(|(_, c, _)| Var::from_vec(init(&mut rng, h * c, *c), (h, *c), &dev))
        .collect::<candle_core::Result<_>>()
        .map_err(cerr)?;
    let b = Var::from_vec(vec![0f32; h], h, &dev).map_err(cerr)?;
    let wo = Var::from_vec(init(&mut rng, h, h), (h, 1), &dev).map_err(cerr)?;
    let bo = Var::from_vec(vec![0f32], 1, &dev).map_err(cerr)?;
    let mut params: Vec<Var> = ws.clone();
    params.extend([b.clone(), wo.clone(), bo.clone()]);
    let mut opt = AdamW::new(
        params,
        ParamsAdamW {
            lr: cfg.learning_rate,
            weight_decay: cfg.weight_decay,
            ..Default::default()
        },
    )
    .map_err(cerr)?;
    let net = Net {
        ws: &ws,
        b: &b,
        wo: &wo,
        bo: &bo,
        hidden: h,
    };
    let batch = cfg.batch.max(1);
    let steps_per_epoch = tr.n.div_ceil(batch);
    let total = (steps_per_epoch * cfg.epochs).max(1);
    let mut order: Vec<usize> = (0..tr.n).collect();
    let mut step = 0;
    for epoch in 0..cfg.epochs {
        order.shuffle(&mut rng);
        let mut epoch_loss = 0.0;
        for chunk in order.chunks(batch) {
            opt.set_learning_rate(super::cosine_lr(cfg.learning_rate, step, total));
            let logits = net.forward(&tr, chunk, &mean, &std, &dev)?;
            let t = Tensor::from_vec(tr.targets_of(chunk), (chunk.len() * GRID, 1), &dev)
                .map_err(cerr)?;
            let loss = soft_bce(&logits, &t).map_err(cerr)?;
            opt.backward_step(&loss).map_err(cerr)?;
            epoch_loss += f64::from(loss.to_scalar::<f32>().map_err(cerr)?);
            step += 1;
        }
        eprintln!(
            "{:>14} epoch {:>3}/{}: loss {:.4}",
            "mask",
            epoch + 1,
            cfg.epochs,
            epoch_loss / steps_per_epoch as f64
        );
    }
    let weights = net.export(&mean, &std)?;
    let mut inter = 0u64;
    let mut union = 0u64;
    let idx: Vec<usize> = (0..va.n).collect();
    for chunk in idx.chunks(batch) {
        let logits: Vec<f32> = net
            .forward(&va, chunk, &mean, &std, &dev)?
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .map_err(cerr)?;
        for (l, t) in logits.iter().zip(va.targets_of(chunk)) {
            let (p, g) = (*l >= 0.0, t >= 0.5);
            inter += u64::from(p && g);
            union += u64::from(p || g);
        }
    }
    let summary = MaskSummary {
        hidden: h,
        train_photos: tr.n,
        val_photos: va.n,
        product_shots,
        val_grid_iou: if union == 0 {
            0.0
        } else {
            inter as f64 / union as f64
        },
        seconds: start.elapsed().as_secs_f64().round(),
    };
    eprintln!(
        "{:>14}: val IoU on the 28x28 grid {:.3} ({} photos)",
        "mask", summary.val_grid_iou, va.n
    );
    save_checkpoint(&ckpt, &weights, &summary)?;
    Ok((weights, summary))
}

/// Feature maps (float16, channels last: `feat_s8` `[28*28, 40]`, then `feat_s16`, `feat_s32`)
/// and 28x28 garment shares of the photos that could be read.
struct MaskData {
    n: usize,
    feats: Vec<f16>,
    targets: Vec<f32>,
}

impl MaskData {
    fn append(&mut self, other: MaskData) {
        self.n += other.n;
        self.feats.extend(other.feats);
        self.targets.extend(other.targets);
    }

    fn targets_of(&self, idx: &[usize]) -> Vec<f32> {
        idx.iter()
            .flat_map(|&i| self.targets[i * GRID..(i + 1) * GRID].iter().copied())
            .collect()
    }

    /// Per-channel mean and standard deviation of each feature map over all photos and cells.
    fn channel_stats(&self) -> ([Vec<f32>; 3], [Vec<f32>; 3]) {
        let mut means: [Vec<f32>; 3] = Default::default();
        let mut stds: [Vec<f32>; 3] = Default::default();
        let mut offset = 0;
        for (k, (_, c, s)) in MASK_INPUTS.iter().enumerate() {
            let cells = s * s;
            let mut sum = vec![0f64; *c];
            let mut sq = vec![0f64; *c];
            for i in 0..self.n {
                let part = &self.feats[i * ROW + offset..i * ROW + offset + cells * c];
                for cell in part.chunks_exact(*c) {
                    for (j, v) in cell.iter().enumerate() {
                        let v = f64::from(v.to_f32());
                        sum[j] += v;
                        sq[j] += v * v;
                    }
                }
            }
            let count = (self.n * cells).max(1) as f64;
            means[k] = sum.iter().map(|s| (s / count) as f32).collect();
            stds[k] = sq
                .iter()
                .zip(&sum)
                .map(|(q, s)| {
                    let m = s / count;
                    ((q / count - m * m).max(0.0).sqrt() as f32).max(1e-3)
                })
                .collect();
            offset += cells * c;
        }
        (means, stds)
    }
}

/// Runs the backbone over photos (mirrored when `flip`) and computes their targets.
fn extract(
    engine: &Engine,
    pre: &Preprocess,
    samples: &[&MaskSample],
    flip: bool,
    batch: usize,
    label: &str,
) -> Result<MaskData> {
    let bar = super::photo_bar(samples.len(), label);
    let mut data = MaskData {
        n: 0,
        feats: Vec::new(),
        targets: Vec::new(),
    };
    let n = pre.tensor_len();
    let s = pre.crop as usize;
    for chunk in samples.chunks(batch.max(1)) {
        let loaded: Vec<(Vec<f32>, Vec<f32>)> = chunk
            .par_iter()
            .filter_map(|m| match load_pair(pre, m, flip) {
                Ok(v) => Some(v),
                Err(e) => {
                    bar.suspend(|| eprintln!("skipping {e}"));
                    None
                }
            })
            .collect();
        bar.inc(chunk.len() as u64);
        if loaded.is_empty() {
            continue;
        }
        let mut input = Vec::with_capacity(loaded.len() * n);
        for (t, target) in &loaded {
            input.extend_from_slice(t);
            data.targets.extend_from_slice(target);
        }
        let arr = Array4::from_shape_vec((loaded.len(), 3, s, s), input)
            .map_err(|e| Error::Engine(e.to_string()))?;
        let names: Vec<&str> = MASK_INPUTS.iter().map(|(n, _, _)| *n).collect();
        let outs = engine.run(arr.view(), &names)?;
        for i in 0..loaded.len() {
            for (out, (_, c, side)) in outs.iter().zip(MASK_INPUTS) {
                let map = out.index_axis(ndarray::Axis(0), i);
                let map = map
                    .as_slice()
                    .ok_or_else(|| Error::Engine("non-contiguous feature map".into()))?;
                let cells = side * side;
                // Channels first -> channels last.
                for cell in 0..cells {
                    data.feats
                        .extend((0..c).map(|ch| f16::from_f32(map[ch * cells + cell])));
                }
            }
            data.n += 1;
        }
    }
    bar.finish_and_clear();
    Ok(data)
}

/// Most candidates looked at per product shot wanted: a catalogue of model shots is not decoded
/// whole in search of product shots it does not have.
const CANDIDATES_PER_SHOT: usize = 10;

/// The first `limit` photos of `candidates` that are product shots, found in parallel among the
/// first `limit * CANDIDATES_PER_SHOT`.
fn product_shots<'a>(
    pre: &Preprocess,
    candidates: &[&'a MaskSample],
    limit: usize,
) -> Vec<&'a MaskSample> {
    let candidates = &candidates[..candidates
        .len()
        .min(limit.saturating_mul(CANDIDATES_PER_SHOT))];
    if candidates.is_empty() {
        return Vec::new();
    }
    let bar = super::photo_bar(candidates.len(), "product shots");
    let mut found = Vec::new();
    for chunk in candidates.chunks(256) {
        let keep: Vec<bool> = chunk
            .par_iter()
            .map(|m| {
                load_crop(pre, m)
                    .map(|(crop, _)| product_foreground(&crop).is_some())
                    .unwrap_or(false)
            })
            .collect();
        found.extend(chunk.iter().zip(keep).filter_map(|(m, k)| k.then_some(*m)));
        bar.inc(chunk.len() as u64);
        if found.len() >= limit {
            break;
        }
    }
    bar.finish_and_clear();
    found.truncate(limit);
    eprintln!(
        "{:>14}: {} product shots among the training photos without a parsing mask",
        "mask",
        found.len()
    );
    found
}

/// A photo resized and cropped to the model's square, and the photo's width and height.
fn load_crop(pre: &Preprocess, m: &MaskSample) -> Result<(image::RgbImage, (u32, u32))> {
    let photo = crate::image::load(
        &m.photo,
        &crate::image::DecodeOptions {
            max_pixels: crate::image::DEFAULT_MAX_PIXELS,
            min_shorter_side: pre.resize_shorter,
        },
    )?;
    Ok((pre.resize_and_crop(&photo)?, photo.dimensions()))
}

/// A photo's input tensor and its 28x28 garment shares: from its parsing mask, or else from its
/// foreground as a product shot.
fn load_pair(pre: &Preprocess, m: &MaskSample, flip: bool) -> Result<(Vec<f32>, Vec<f32>)> {
    let (crop, size) = load_crop(pre, m)?;
    let planes = match &m.mask {
        Some(mask) => parsing_crop(pre, mask, size)?,
        None => {
            let fg = product_foreground(&crop).ok_or_else(|| {
                Error::bad_data(&m.photo, "not a product shot on a plain background")
            })?;
            let w = crop.width();
            image::RgbImage::from_fn(crop.width(), crop.height(), |x, y| {
                image::Rgb([if fg[(y * w + x) as usize] { 255 } else { 0 }, 0, 0])
            })
        }
    };
    let mut t = vec![0f32; pre.tensor_len()];
    pre.write_tensor(&crop, flip, &mut t);
    Ok((t, grid_shares(&planes, flip)))
}

/// Share of garment (the red plane) in each cell of a 28x28 grid over the crop.
fn grid_shares(planes: &image::RgbImage, flip: bool) -> Vec<f32> {
    let (w, h) = (planes.width() as usize, planes.height() as usize);
    let mut sum = vec![0f32; GRID];
    let mut count = vec![0f32; GRID];
    for (x, y, p) in planes.enumerate_pixels() {
        let (x, y) = (x as usize, y as usize);
        let x = if flip { w - 1 - x } else { x };
        let cell = (y * MASK_SIDE / h) * MASK_SIDE + x * MASK_SIDE / w;
        sum[cell] += f32::from(p.0[0]) / 255.0;
        count[cell] += 1.0;
    }
    sum.iter()
        .zip(&count)
        .map(|(s, c)| s / c.max(1.0))
        .collect()
}

struct Net<'a> {
    ws: &'a [Var],
    b: &'a Var,
    wo: &'a Var,
    bo: &'a Var,
    hidden: usize,
}

impl Net<'_> {
    /// Logits `[photos * 28 * 28, 1]` of the photos `idx` of `data`.
    fn forward(
        &self,
        data: &MaskData,
        idx: &[usize],
        mean: &[Vec<f32>; 3],
        std: &[Vec<f32>; 3],
        dev: &Device,
    ) -> Result<Tensor> {
        let bsz = idx.len();
        let h = self.hidden;
        let mut sum: Option<Tensor> = None;
        let mut offset = 0;
        for (k, (_, c, side)) in MASK_INPUTS.iter().enumerate() {
            let cells = side * side;
            let mut x = Vec::with_capacity(bsz * cells * c);
            for &i in idx {
                let part = &data.feats[i * ROW + offset..i * ROW + offset + cells * c];
                for cell in part.chunks_exact(*c) {
                    x.extend(
                        cell.iter()
                            .zip(&mean[k])
                            .zip(&std[k])
                            .map(|((v, m), s)| (v.to_f32() - m) / s),
                    );
                }
            }
            offset += cells * c;
            let x = Tensor::from_vec(x, (bsz * cells, *c), dev).map_err(cerr)?;
            let mut a = x.matmul(&self.ws[k].t().map_err(cerr)?).map_err(cerr)?;
            if *side != MASK_SIDE {
                let u = Tensor::from_vec(interp_matrix(*side, MASK_SIDE), (MASK_SIDE, *side), dev)
                    .map_err(cerr)?;
                let up = |t: &Tensor, batch: usize| -> candle_core::Result<Tensor> {
                    u.unsqueeze(0)?
                        .broadcast_as((batch, MASK_SIDE, *side))?
                        .contiguous()?
                        .matmul(t)
                };
                // Along x: [B*s, s, h] -> [B*s, 28, h]; along y: [B, s, 28*h] -> [B, 28, 28*h].
                a = a
                    .reshape((bsz * side, *side, h))
                    .and_then(|t| up(&t, bsz * side))
                    .and_then(|t| t.reshape((bsz, *side, MASK_SIDE * h)))
                    .and_then(|t| up(&t, bsz))
                    .map_err(cerr)?;
            }
            let a = a.reshape((bsz * GRID, h)).map_err(cerr)?;
            sum = Some(match sum {
                None => a,
                Some(s) => (s + a).map_err(cerr)?,
            });
        }
        sum.expect("three inputs")
            .broadcast_add(self.b)
            .and_then(|z| z.relu())
            .and_then(|z| z.matmul(self.wo))
            .and_then(|z| z.broadcast_add(self.bo))
            .map_err(cerr)
    }

    /// The weights with the standardisation folded into the first layer (upsampling keeps
    /// constants, so every map's offset goes into the one bias).
    fn export(&self, mean: &[Vec<f32>; 3], std: &[Vec<f32>; 3]) -> Result<MaskWeights> {
        let h = self.hidden;
        let mut b: Vec<f32> = self.b.as_tensor().to_vec1().map_err(cerr)?;
        let mut w: [Vec<f32>; 3] = Default::default();
        for (k, (_, c, _)) in MASK_INPUTS.iter().enumerate() {
            let raw: Vec<f32> = self.ws[k]
                .as_tensor()
                .flatten_all()
                .and_then(|t| t.to_vec1())
                .map_err(cerr)?;
            w[k] = vec![0f32; h * c];
            for i in 0..h {
                for j in 0..*c {
                    let v = raw[i * c + j] / std[k][j];
                    w[k][i * c + j] = v;
                    b[i] -= v * mean[k][j];
                }
            }
        }
        Ok(MaskWeights {
            hidden: h,
            w,
            b,
            w_out: self
                .wo
                .as_tensor()
                .flatten_all()
                .and_then(|t| t.to_vec1())
                .map_err(cerr)?,
            b_out: self.bo.as_tensor().to_vec1::<f32>().map_err(cerr)?[0],
        })
    }
}

/// Mean binary cross-entropy of logits `l` against soft targets `t` in 0..1, in the stable form
/// `max(l, 0) - l t + ln(1 + e^-|l|)`.
fn soft_bce(l: &Tensor, t: &Tensor) -> candle_core::Result<Tensor> {
    let log1p = (l.abs()?.neg()?.exp()? + 1.0)?.log()?;
    (l.relu()? - (l * t)? + log1p)?.mean_all()
}

fn save_checkpoint(path: &Path, w: &MaskWeights, s: &MaskSummary) -> Result<()> {
    let h = w.hidden;
    let meta = HashMap::from([(
        "summary".to_string(),
        serde_json::to_string(s).unwrap_or_default(),
    )]);
    let b_out = [w.b_out];
    super::checkpoint::save(
        path,
        &[
            ("w_s8", vec![h, MASK_INPUTS[0].1], &w.w[0]),
            ("w_s16", vec![h, MASK_INPUTS[1].1], &w.w[1]),
            ("w_s32", vec![h, MASK_INPUTS[2].1], &w.w[2]),
            ("b", vec![h], &w.b),
            ("w_out", vec![h], &w.w_out),
            ("b_out", vec![1], &b_out),
        ],
        meta,
    )
}

fn load_checkpoint(path: &Path) -> std::result::Result<(MaskWeights, MaskSummary), String> {
    let (mut t, meta) = super::checkpoint::load(path)?;
    let summary: MaskSummary = serde_json::from_str(meta.get("summary").ok_or("no summary")?)
        .map_err(|e| e.to_string())?;
    let mut get = |n: &str| t.remove(n).ok_or_else(|| format!("no tensor {n}"));
    Ok((
        MaskWeights {
            hidden: summary.hidden,
            w: [get("w_s8")?, get("w_s16")?, get("w_s32")?],
            b: get("b")?,
            w_out: get("w_out")?,
            b_out: get("b_out")?.first().copied().ok_or("empty b_out")?,
        },
        summary,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soft_bce_matches_hand_computation() {
        let dev = Device::Cpu;
        let l = Tensor::from_vec(vec![2.0f32, -1.0], (2, 1), &dev).unwrap();
        let t = Tensor::from_vec(vec![0.25f32, 1.0], (2, 1), &dev).unwrap();
        let got = soft_bce(&l, &t).unwrap().to_scalar::<f32>().unwrap();
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        let bce = |x: f64, t: f64| -(t * sig(x).ln() + (1.0 - t) * (1.0 - sig(x)).ln());
        let want = (bce(2.0, 0.25) + bce(-1.0, 1.0)) / 2.0;
        assert!((f64::from(got) - want).abs() < 1e-5, "{got} vs {want}");
    }

    /// The candle network used in training and the exported weights (standardisation folded
    /// in) compute the same mask; the exported ones are applied here with plain loops and
    /// [`crate::mask::upsample`], as the ONNX graph applies them.
    #[test]
    fn exported_weights_compute_what_training_computed() {
        let dev = Device::Cpu;
        let mut rng = StdRng::seed_from_u64(3);
        let n = 2;
        let feats: Vec<f16> = (0..n * ROW)
            .map(|_| f16::from_f32(rng.random_range(-2.0..6.0)))
            .collect();
        let data = MaskData {
            n,
            feats,
            targets: vec![0.0; n * GRID],
        };
        let (mean, std) = data.channel_stats();
        let h = 4;
        let var = |rng: &mut StdRng, len: usize, shape: (usize, usize)| {
            let v: Vec<f32> = (0..len).map(|_| rng.random_range(-0.3..0.3)).collect();
            Var::from_vec(v, shape, &dev).unwrap()
        };
        let ws: Vec<Var> = MASK_INPUTS
            .iter()
            .map(|(_, c, _)| var(&mut rng, h * c, (h, *c)))
            .collect();
        let b = Var::from_vec(vec![0.1f32, -0.2, 0.3, 0.0], h, &dev).unwrap();
        let wo = var(&mut rng, h, (h, 1));
        let bo = Var::from_vec(vec![0.05f32], 1, &dev).unwrap();
        let net = Net {
            ws: &ws,
            b: &b,
            wo: &wo,
            bo: &bo,
            hidden: h,
        };
        let got: Vec<f32> = net
            .forward(&data, &[0, 1], &mean, &std, &dev)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let w = net.export(&mean, &std).unwrap();
        for photo in 0..n {
            let mut hidden = vec![vec![0f32; GRID]; h];
            let mut offset = photo * ROW;
            for (k, (_, c, side)) in MASK_INPUTS.iter().enumerate() {
                let cells = side * side;
                for (j, hid) in hidden.iter_mut().enumerate() {
                    let small: Vec<f32> = (0..cells)
                        .map(|cell| {
                            (0..*c)
                                .map(|ch| {
                                    w.w[k][j * c + ch] * data.feats[offset + cell * c + ch].to_f32()
                                })
                                .sum()
                        })
                        .collect();
                    let up = if *side == MASK_SIDE {
                        small
                    } else {
                        crate::mask::upsample(&small, *side, MASK_SIDE, MASK_SIDE)
                    };
                    for (a, u) in hid.iter_mut().zip(up) {
                        *a += u;
                    }
                }
                offset += cells * c;
            }
            for cell in 0..GRID {
                let logit: f32 = (0..h)
                    .map(|j| (hidden[j][cell] + w.b[j]).max(0.0) * w.w_out[j])
                    .sum::<f32>()
                    + w.b_out;
                let g = got[photo * GRID + cell];
                assert!((logit - g).abs() < 1e-3 * (1.0 + g.abs()), "{logit} vs {g}");
            }
        }
    }

    /// A training photo without a parsing mask is learned from as a product shot: its target is
    /// the product's outline on the grid (mirrored with the photo); a photo that is not a
    /// product shot is refused, and only product shots are picked as such.
    #[test]
    fn product_shots_are_learned_from_their_outline() {
        let dir = tempfile::tempdir().unwrap();
        let draw = |name: &str, bottom: u32| {
            let path = dir.path().join(name);
            // 256x256, centre crop 224 (offset 16): the block covers crop columns 48..112 and
            // rows 32..176, grid columns 6..14 and rows 4..22.
            image::RgbImage::from_fn(256, 256, |x, y| {
                let inside = (64..128).contains(&x) && (48..bottom).contains(&y);
                image::Rgb(if inside {
                    [30, 90, 40]
                } else {
                    [248, 248, 248]
                })
            })
            .save(&path)
            .unwrap();
            MaskSample {
                photo: path,
                mask: None,
                train: true,
            }
        };
        let shot = draw("shot.png", 192);
        let worn = draw("worn.png", 256);
        let pre = Preprocess::default();
        let inside = |x: usize, y: usize| (6..14).contains(&x) && (4..22).contains(&y);
        for flip in [false, true] {
            let (_, target) = load_pair(&pre, &shot, flip).unwrap();
            for (cell, t) in target.iter().enumerate() {
                let (x, y) = (cell % MASK_SIDE, cell / MASK_SIDE);
                let x = if flip { MASK_SIDE - 1 - x } else { x };
                assert_eq!(
                    *t,
                    f32::from(u8::from(inside(x, y))),
                    "cell {x},{y} flip {flip}"
                );
            }
        }
        assert!(load_pair(&pre, &worn, false).is_err());
        let found = product_shots(&pre, &[&worn, &shot], 5);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].photo, shot.photo);
        // At most CANDIDATES_PER_SHOT candidates are looked at per shot wanted.
        let many: Vec<&MaskSample> = std::iter::repeat_n(&worn, CANDIDATES_PER_SHOT)
            .chain([&shot])
            .collect();
        assert!(product_shots(&pre, &many, 1).is_empty());
        assert_eq!(product_shots(&pre, &many, 2).len(), 1);
        assert!(product_shots(&pre, &[&shot], 0).is_empty());
    }

    #[test]
    fn grid_shares_average_each_cell_and_mirror() {
        // Garment on the left quarter of a 56x56 crop: grid columns 0..7 are garment.
        let planes = image::RgbImage::from_fn(56, 56, |x, _| {
            image::Rgb(if x < 14 { [255, 0, 0] } else { [0, 255, 0] })
        });
        let g = grid_shares(&planes, false);
        assert_eq!(g[0], 1.0);
        assert_eq!(g[6], 1.0);
        assert_eq!(g[7], 0.0);
        let f = grid_shares(&planes, true);
        assert_eq!(f[27], 1.0);
        assert_eq!(f[20], 0.0);
        assert_eq!(f[21], 1.0);
    }
}
