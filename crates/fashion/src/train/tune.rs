//! Fine-tuning the backbone's tail for the heads that frozen ImageNet features serve worst
//! (In-shop category and view): the head convolution and the last `[tune] blocks`
//! inverted-residual blocks before it ([`model::Tail`]) are trained together with those heads
//! (the same two-layer classifiers as the others, on the tail's pooled output) on the cached
//! input of the tail (float16). The heads are exported as trained, then calibrated on the
//! validation split. The tuned copy of the tail runs beside the original in the model, so the
//! heads that stay on the frozen features (article type, colour, the garment mask) are
//! unchanged.
//!
//! Only the tail is trained because everything before it can then be cached: one backbone pass
//! per photo and mirror image, as for the heads, instead of one per epoch. The tail stops at the
//! first block of stride 2 (EfficientNet-Lite0: four blocks on the 7x7 maps), so its input is
//! as small as the 7x7 maps it works on.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use half::f16;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::depthwise::depthwise;
use super::features::Input;
use super::heads::{
    class_weights, export_head, log_prior, uniform, weighted_ce, HeadConfig, HeadData, HeadSummary,
    Trained,
};
use crate::data::{Sample, Split};
use crate::engine::{Engine, Threads};
use crate::error::{Error, Result};
use crate::hash::fnv1a;
use crate::model::{self, HeadWeights, TunedLayers, FEATURE_DIM};
use crate::preprocess::Preprocess;

/// Hyper-parameters of the fine-tuning.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TuneConfig {
    /// The heads that read the tuned features (none: no fine-tuning).
    pub heads: Vec<String>,
    /// How many of the backbone's last inverted-residual blocks (of stride 1, on the 7x7 maps)
    /// are fine-tuned with its head convolution; 0 tunes the head convolution alone.
    pub blocks: usize,
    pub epochs: usize,
    pub batch: usize,
    /// Learning rate of the tail's layers (the heads use `[heads]`'s).
    pub learning_rate: f64,
    pub weight_decay: f64,
    /// Dropout on the pooled features before the heads (the heads' own dropout is `[heads]`'s).
    pub dropout: f32,
}

impl Default for TuneConfig {
    fn default() -> Self {
        Self {
            heads: vec![crate::data::CATEGORY.into(), crate::data::VIEW.into()],
            blocks: 4,
            epochs: 6,
            batch: 64,
            learning_rate: 5e-4,
            weight_decay: 1e-4,
            dropout: 0.2,
        }
    }
}

/// What fine-tuning measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TuneSummary {
    pub heads: Vec<String>,
    pub photos: usize,
    /// Validation accuracy of each head (unflipped photos) after its warm-up epoch on the frozen
    /// tail, and at the end.
    pub val_accuracy_frozen: Vec<f64>,
    pub val_accuracy_tuned: Vec<f64>,
    pub seconds: f64,
}

/// The tuned layers and the heads trained with them.
pub struct Tuned {
    pub layers: TunedLayers,
    pub heads: Vec<(HeadWeights, HeadSummary)>,
    pub summary: TuneSummary,
}

/// Everything [`tune`] reads.
pub struct TuneJob<'a> {
    pub backbone: &'a [u8],
    pub backbone_path: &'a Path,
    pub pre: &'a Preprocess,
    pub samples: &'a [&'a Sample],
    /// For each tuned head, its label list (class index = position).
    pub labels: &'a [(String, Vec<String>)],
    pub flip: bool,
    pub seed: u64,
    pub threads: usize,
    pub backbone_batch: usize,
    pub cache_dir: &'a Path,
    pub model_key: u64,
    /// Heads whose answers follow the training frequencies of their classes
    /// ([`super::heads::log_prior`]).
    pub prior_heads: &'a [String],
}

/// How many of `rows` have each of head `k`'s `c` classes.
fn class_counts(rows: &[usize], classes: &[Vec<i64>], k: usize, c: usize) -> Vec<f64> {
    let mut counts = vec![0f64; c];
    for &r in rows {
        if let Ok(y) = usize::try_from(classes[r][k]) {
            counts[y] += 1.0;
        }
    }
    counts
}

fn cerr(e: candle_core::Error) -> Error {
    Error::Training(e.to_string())
}

/// One convolution of the tail as trainable variables: the weight laid out for `x @ w` on
/// channels-last rows (`[in, out]`), or for [`depthwise`] (`[k * k, channels]`).
struct ConvVar {
    w: Var,
    b: Var,
    depthwise: bool,
}

/// The tail ([`model::Tail`]) as trainable variables.
struct TailVars {
    convs: Vec<ConvVar>,
    /// Per block, whether it adds its input.
    residual: Vec<bool>,
    c_in: usize,
}

/// `relu6(x)` as `relu(x) - relu(x - 6)`: candle's clamp is far slower to differentiate.
fn relu6(x: &Tensor) -> candle_core::Result<Tensor> {
    x.relu()? - (x - 6.0)?.relu()?
}

impl TailVars {
    fn new(tail: &model::Tail, t: &TunedLayers, dev: &Device) -> candle_core::Result<TailVars> {
        let convs = tail
            .convs()
            .iter()
            .zip(&t.convs)
            .map(|(c, (w, b))| {
                // ONNX's `[out, in, 1, 1]` or `[C, 1, k, k]`, transposed.
                let rest = w.len() / c.out_channels;
                let w = Tensor::from_slice(w, (c.out_channels, rest), dev)?
                    .t()?
                    .contiguous()?;
                Ok(ConvVar {
                    w: Var::from_tensor(&w)?,
                    b: Var::from_slice(b, c.out_channels, dev)?,
                    depthwise: c.depthwise(),
                })
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(TailVars {
            convs,
            residual: tail.blocks.iter().map(|b| b.residual).collect(),
            c_in: tail.input_channels,
        })
    }

    fn vars(&self) -> Vec<Var> {
        self.convs
            .iter()
            .flat_map(|c| [c.w.clone(), c.b.clone()])
            .collect()
    }

    /// `x`: `[B, C, 7, 7]` maps as stored -> `[B, FEATURE_DIM]` (average and max pooled).
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let b = x.dim(0)?;
        let cells = x.elem_count() / (b * self.c_in);
        let side = (cells as f64).sqrt().round() as usize;
        let mut rows = x
            .reshape((b, self.c_in, cells))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b * cells, self.c_in))?;
        let conv = |c: &ConvVar, x: &Tensor| -> candle_core::Result<Tensor> {
            let y = if c.depthwise {
                let ch = x.dim(1)?;
                depthwise(&x.reshape((b, side, side, ch))?, c.w.as_tensor())?
                    .reshape((b * cells, ch))?
            } else {
                x.matmul(c.w.as_tensor())?
            };
            y.broadcast_add(c.b.as_tensor())
        };
        for (block, &residual) in self.convs.chunks(3).zip(&self.residual) {
            let e = relu6(&conv(&block[0], &rows)?)?;
            let d = relu6(&conv(&block[1], &e)?)?;
            let p = conv(&block[2], &d)?;
            rows = if residual { (rows + p)? } else { p };
        }
        let head = self
            .convs
            .last()
            .expect("the tail ends in its head convolution");
        let h = relu6(&conv(head, &rows)?)?.reshape((b, cells, ()))?;
        Tensor::cat(&[h.mean(1)?, h.max(1)?], 1)
    }

    fn layers(&self) -> candle_core::Result<TunedLayers> {
        let convs = self
            .convs
            .iter()
            .map(|c| {
                Ok((
                    c.w.as_tensor()
                        .t()?
                        .contiguous()?
                        .flatten_all()?
                        .to_vec1()?,
                    c.b.as_tensor().to_vec1()?,
                ))
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(TunedLayers {
            blocks: self.residual.len(),
            convs,
        })
    }
}

/// A batch of cached maps (float16) as a float32 tensor.
fn gather(maps: &[f16], dim: usize, rows: &[usize], dev: &Device) -> candle_core::Result<Tensor> {
    let mut v = Vec::with_capacity(rows.len() * dim);
    for &r in rows {
        v.extend(maps[r * dim..(r + 1) * dim].iter().map(|x| x.to_f32()));
    }
    Tensor::from_vec(v, (rows.len(), dim), dev)
}

/// Fine-tunes the tail together with the heads in `cfg.heads` (see the module docs); `None`
/// when no photo has a label of those heads.
pub fn tune(job: &TuneJob, cfg: &TuneConfig, heads: &HeadConfig) -> Result<Option<Tuned>> {
    let start = std::time::Instant::now();
    // The photos with a label of a tuned head, and their class per head (-1: none).
    let mut subset = Vec::new();
    let mut classes: Vec<Vec<i64>> = Vec::new();
    for (i, s) in job.samples.iter().enumerate() {
        let ys: Vec<i64> = job
            .labels
            .iter()
            .map(|(head, labels)| {
                s.labels
                    .get(head)
                    .and_then(|l| labels.iter().position(|x| x == l))
                    .map_or(-1, |c| c as i64)
            })
            .collect();
        if ys.iter().any(|&y| y >= 0) {
            subset.push(i);
            classes.push(ys);
        }
    }
    if subset.is_empty() {
        return Ok(None);
    }
    let (graph, tail, initial) = model::tail_graph(job.backbone, job.backbone_path, cfg.blocks)?;
    let dim = tail.input_channels * 49;
    let engine = Engine::from_bytes(&graph, job.backbone_path, Threads::single(job.threads))?;
    let paths: Vec<PathBuf> = subset
        .iter()
        .map(|&i| job.samples[i].path.clone())
        .collect();
    let maps = |input: Input, label: &str| {
        super::features::cached_rows::<f16>(
            &engine,
            job.pre,
            &paths,
            input,
            job.cache_dir,
            job.model_key,
            job.backbone_batch,
            label,
            &tail.input,
            dim,
        )
    };
    let plain = maps(Input::Crop, "tail maps")?;
    let flipped = if job.flip {
        Some(maps(Input::Mirrored, "tail flipped")?)
    } else {
        None
    };
    let good = |r: usize| plain[r * dim].is_finite();
    let split_rows = |split: Split| -> Vec<usize> {
        (0..subset.len())
            .filter(|&r| job.samples[subset[r]].split == split && good(r))
            .collect()
    };
    let (train, val) = (split_rows(Split::Train), split_rows(Split::Val));

    let mut key = fnv1a(job.model_key, b"tune");
    for part in [
        serde_json::to_string(cfg).unwrap_or_default(),
        serde_json::to_string(heads).unwrap_or_default(),
    ] {
        key = fnv1a(key, part.as_bytes());
    }
    key = fnv1a(key, &job.seed.to_le_bytes());
    key = fnv1a(key, &[u8::from(job.flip)]);
    for (head, labels) in job.labels {
        key = fnv1a(key, head.as_bytes());
        key = fnv1a(key, labels.join("\n").as_bytes());
    }
    for (r, ys) in classes.iter().enumerate() {
        key = fnv1a(
            key,
            job.samples[subset[r]].path.to_string_lossy().as_bytes(),
        );
        for y in ys {
            key = fnv1a(key, &y.to_le_bytes());
        }
    }
    let ckpt = job.cache_dir.join(format!("tuned-{key:016x}.safetensors"));
    let dev = Device::Cpu;
    let data = Data {
        plain: &plain,
        flipped: flipped.as_deref(),
        dim,
        classes: &classes,
        train: &train,
        val: &val,
    };
    let (layers, state, summary) = match load_checkpoint(&ckpt, &initial, job.labels) {
        Ok(found) => {
            eprintln!(
                "fine-tuning: reusing the layers tuned earlier ({})",
                ckpt.display()
            );
            found
        }
        Err(_) => {
            let vars = TailVars::new(&tail, &initial, &dev).map_err(cerr)?;
            let (state, frozen, tuned) =
                train_tail(&vars, &data, job.labels, cfg, heads, job.seed).map_err(cerr)?;
            let summary = TuneSummary {
                heads: job.labels.iter().map(|(h, _)| h.clone()).collect(),
                photos: train.len(),
                val_accuracy_frozen: frozen,
                val_accuracy_tuned: tuned,
                seconds: start.elapsed().as_secs_f64().round(),
            };
            let layers = vars.layers().map_err(cerr)?;
            save_checkpoint(&ckpt, &layers, &state, &summary)?;
            (layers, state, summary)
        }
    };

    // Each head as exported: measured and calibrated on the tuned features of its val photos,
    // computed with the layers as the model stores them.
    let layers = layers.rounded();
    let vars = TailVars::new(&tail, &layers, &dev).map_err(cerr)?;
    let mut val_features = Vec::with_capacity(val.len() * FEATURE_DIM);
    for chunk in val.chunks(128) {
        let x = gather(&plain, dim, chunk, &dev).map_err(cerr)?;
        let f: Vec<f32> = vars
            .forward(&x)
            .and_then(|f| f.detach().flatten_all())
            .and_then(|f| f.to_vec1())
            .map_err(cerr)?;
        val_features.extend(f);
    }
    let mut exported = Vec::new();
    for (k, ((name, labels), w)) in job.labels.iter().zip(&state.heads).enumerate() {
        let mut set = HeadData::new(name, labels.clone(), FEATURE_DIM).tuned();
        if job.prior_heads.contains(name) {
            let counts = class_counts(&train, &classes, k, labels.len());
            set = set.following_prior(log_prior(&counts, heads.class_balance));
        }
        for (j, &r) in val.iter().enumerate() {
            if let Ok(class) = usize::try_from(classes[r][k]) {
                set.push_val(
                    val_features[j * FEATURE_DIM..(j + 1) * FEATURE_DIM].to_vec(),
                    class,
                );
            }
        }
        let trained = Trained {
            mean: &state.mean,
            std: &state.std,
            w1: w[0].clone(),
            b1: w[1].clone(),
            w2: w[2].clone(),
            b2: w[3].clone(),
        };
        let train_rows = train.iter().filter(|&&r| classes[r][k] >= 0).count();
        exported.push(export_head(&set, &trained, train_rows, summary.seconds));
    }
    Ok(Some(Tuned {
        layers,
        heads: exported,
        summary,
    }))
}

struct Data<'a> {
    plain: &'a [f16],
    flipped: Option<&'a [f16]>,
    dim: usize,
    classes: &'a [Vec<i64>],
    train: &'a [usize],
    val: &'a [usize],
}

/// The heads as trained: the standardisation of the pooled features (statistics of the
/// untuned tail) and each head's `[w1, b1, w2, b2]`.
struct HeadState {
    mean: Vec<f32>,
    std: Vec<f32>,
    heads: Vec<[Vec<f32>; 4]>,
}

/// One head being trained: Linear - ReLU - dropout - Linear, and its class weights.
struct HeadVars {
    w1: Var,
    b1: Var,
    w2: Var,
    b2: Var,
    class_w: Vec<f32>,
}

impl HeadVars {
    fn logits(&self, f: &Tensor, dropout: f32) -> candle_core::Result<Tensor> {
        let a = f
            .matmul(&self.w1.as_tensor().t()?)?
            .broadcast_add(self.b1.as_tensor())?
            .relu()?;
        let a = if dropout > 0.0 {
            candle_nn::ops::dropout(&a, dropout)?
        } else {
            a
        };
        a.matmul(&self.w2.as_tensor().t()?)?
            .broadcast_add(self.b2.as_tensor())
    }
}

/// Trains the tail and the heads together: one warm-up epoch trains the heads alone (the tail
/// frozen), then `cfg.epochs` train both. Returns the heads and their validation accuracy after
/// the warm-up and at the end.
fn train_tail(
    vars: &TailVars,
    data: &Data,
    labels: &[(String, Vec<String>)],
    cfg: &TuneConfig,
    head_cfg: &HeadConfig,
    seed: u64,
) -> candle_core::Result<(HeadState, Vec<f64>, Vec<f64>)> {
    let dev = Device::Cpu;
    let mut rng = StdRng::seed_from_u64(fnv1a(seed, b"tune"));
    // Standardise the pooled features with the statistics of the untuned tail.
    let sample: Vec<usize> = data.train.iter().copied().take(512).collect();
    let f0 = vars
        .forward(&gather(data.plain, data.dim, &sample, &dev)?)?
        .detach();
    let mean = f0.mean_keepdim(0)?;
    let std = f0
        .broadcast_sub(&mean)?
        .sqr()?
        .mean_keepdim(0)?
        .sqrt()?
        .clamp(1e-3f32, f32::MAX)?;
    let h = head_cfg.hidden.max(1);
    let heads: Vec<HeadVars> = labels
        .iter()
        .enumerate()
        .map(|(k, (_, l))| {
            let c = l.len();
            let counts = class_counts(data.train, data.classes, k, c);
            let bound = |fan_in: usize| (1.0 / fan_in as f32).sqrt();
            Ok(HeadVars {
                w1: Var::from_vec(
                    uniform(&mut rng, h * FEATURE_DIM, bound(FEATURE_DIM)),
                    (h, FEATURE_DIM),
                    &dev,
                )?,
                b1: Var::zeros(h, DType::F32, &dev)?,
                w2: Var::from_vec(uniform(&mut rng, c * h, bound(h)), (c, h), &dev)?,
                b2: Var::zeros(c, DType::F32, &dev)?,
                class_w: class_weights(&counts, head_cfg.class_balance),
            })
        })
        .collect::<candle_core::Result<_>>()?;
    let features = |x: &Tensor| -> candle_core::Result<Tensor> {
        vars.forward(x)?.broadcast_sub(&mean)?.broadcast_div(&std)
    };
    let evaluate = || -> candle_core::Result<Vec<f64>> {
        let mut right = vec![0usize; labels.len()];
        let mut total = vec![0usize; labels.len()];
        for chunk in data.val.chunks(128) {
            let f = features(&gather(data.plain, data.dim, chunk, &dev)?)?.detach();
            for (k, head) in heads.iter().enumerate() {
                let pred: Vec<u32> = head.logits(&f, 0.0)?.argmax(1)?.to_vec1()?;
                for (&r, p) in chunk.iter().zip(pred) {
                    let y = data.classes[r][k];
                    if y >= 0 {
                        total[k] += 1;
                        right[k] += usize::from(i64::from(p) == y);
                    }
                }
            }
        }
        Ok(right
            .iter()
            .zip(&total)
            .map(|(&r, &t)| r as f64 / t.max(1) as f64)
            .collect())
    };
    let mut opt_tail = AdamW::new(
        vars.vars(),
        ParamsAdamW {
            lr: cfg.learning_rate,
            weight_decay: cfg.weight_decay,
            ..Default::default()
        },
    )?;
    let mut opt_heads = AdamW::new(
        heads
            .iter()
            .flat_map(|v| [v.w1.clone(), v.b1.clone(), v.w2.clone(), v.b2.clone()])
            .collect(),
        ParamsAdamW {
            lr: head_cfg.learning_rate,
            weight_decay: head_cfg.weight_decay,
            ..Default::default()
        },
    )?;
    let batch = cfg.batch.max(2);
    let mut order = data.train.to_vec();
    let total = (order.len().div_ceil(batch) * cfg.epochs).max(1);
    let mut step = 0;
    let mut frozen = Vec::new();
    let bar = super::photo_bar(order.len() * (cfg.epochs + 1), "fine-tuning");
    for epoch in 0..=cfg.epochs {
        order.shuffle(&mut rng);
        for chunk in order.chunks(batch) {
            // Each photo is seen as itself or as its mirror image, at random.
            let maps = match data.flipped {
                Some(f) if rng.random::<bool>() => f,
                _ => data.plain,
            };
            let x = gather(maps, data.dim, chunk, &dev)?;
            let f = candle_nn::ops::dropout(&features(&x)?, cfg.dropout)?;
            let mut loss: Option<Tensor> = None;
            for (k, head) in heads.iter().enumerate() {
                let ys: Vec<i64> = chunk.iter().map(|&r| data.classes[r][k]).collect();
                let y: Vec<u32> = ys.iter().map(|&y| y.max(0) as u32).collect();
                let w: Vec<f32> = ys
                    .iter()
                    .map(|&y| usize::try_from(y).map_or(0.0, |y| head.class_w[y]))
                    .collect();
                let l = weighted_ce(
                    &head.logits(&f, head_cfg.dropout)?,
                    &Tensor::from_vec(y, chunk.len(), &dev)?,
                    &Tensor::from_vec(w, chunk.len(), &dev)?,
                )?;
                loss = Some(match loss {
                    None => l,
                    Some(a) => (a + l)?,
                });
            }
            let Some(loss) = loss else { continue };
            let grads = loss.backward()?;
            if epoch == 0 {
                opt_heads.step(&grads)?;
            } else {
                let lr = super::cosine_lr(1.0, step, total);
                step += 1;
                opt_tail.set_learning_rate(cfg.learning_rate * lr);
                opt_heads.set_learning_rate(head_cfg.learning_rate * lr);
                opt_tail.step(&grads)?;
                opt_heads.step(&grads)?;
            }
            bar.inc(chunk.len() as u64);
        }
        let acc = evaluate()?;
        bar.suspend(|| {
            let shown: Vec<String> = labels
                .iter()
                .zip(&acc)
                .map(|((h, _), a)| format!("{h} {:.1}%", 100.0 * a))
                .collect();
            if data.val.is_empty() {
                eprintln!("fine-tuning epoch {epoch}: no validation photos to measure on");
            } else {
                eprintln!("fine-tuning epoch {epoch}: val {}", shown.join(", "));
            }
        });
        if epoch == 0 {
            frozen = acc.clone();
        }
        if epoch == cfg.epochs {
            bar.finish_and_clear();
            let flat = |v: &Var| v.as_tensor().flatten_all()?.to_vec1::<f32>();
            let state = HeadState {
                mean: mean.flatten_all()?.to_vec1()?,
                std: std.flatten_all()?.to_vec1()?,
                heads: heads
                    .iter()
                    .map(|v| Ok([flat(&v.w1)?, flat(&v.b1)?, flat(&v.w2)?, flat(&v.b2)?]))
                    .collect::<candle_core::Result<_>>()?,
            };
            return Ok((state, frozen, acc));
        }
    }
    unreachable!("the loop returns after its last epoch")
}

const HEAD_PARTS: [&str; 4] = ["w1", "b1", "w2", "b2"];

fn save_checkpoint(
    path: &Path,
    t: &TunedLayers,
    s: &HeadState,
    summary: &TuneSummary,
) -> Result<()> {
    let meta = HashMap::from([(
        "summary".to_string(),
        serde_json::to_string(summary).map_err(|e| Error::Training(e.to_string()))?,
    )]);
    let mut named: Vec<(String, &Vec<f32>)> = Vec::new();
    for (i, (w, b)) in t.convs.iter().enumerate() {
        named.push((format!("conv{i}.w"), w));
        named.push((format!("conv{i}.b"), b));
    }
    named.push(("mean".to_string(), &s.mean));
    named.push(("std".to_string(), &s.std));
    for (k, head) in s.heads.iter().enumerate() {
        for (part, v) in HEAD_PARTS.iter().zip(head) {
            named.push((format!("head{k}.{part}"), v));
        }
    }
    let tensors: Vec<(&str, Vec<usize>, &[f32])> = named
        .iter()
        .map(|(n, v)| (n.as_str(), vec![v.len()], v.as_slice()))
        .collect();
    super::checkpoint::save(path, &tensors, meta)
}

fn load_checkpoint(
    path: &Path,
    like: &TunedLayers,
    labels: &[(String, Vec<String>)],
) -> std::result::Result<(TunedLayers, HeadState, TuneSummary), String> {
    let (mut t, meta) = super::checkpoint::load(path)?;
    let summary = serde_json::from_str(meta.get("summary").ok_or("no summary")?)
        .map_err(|e| e.to_string())?;
    let mut get = |n: &str| t.remove(n).ok_or_else(|| format!("no tensor {n}"));
    let mut convs = Vec::new();
    for (i, (w0, b0)) in like.convs.iter().enumerate() {
        let (w, b) = (get(&format!("conv{i}.w"))?, get(&format!("conv{i}.b"))?);
        if w.len() != w0.len() || b.len() != b0.len() {
            return Err("the tail's sizes differ".into());
        }
        convs.push((w, b));
    }
    let layers = TunedLayers {
        blocks: like.blocks,
        convs,
    };
    let mean = get("mean")?;
    let std = get("std")?;
    let heads = (0..labels.len())
        .map(|k| {
            let part = |p: &str| format!("head{k}.{p}");
            Ok([
                get(&part("w1"))?,
                get(&part("b1"))?,
                get(&part("w2"))?,
                get(&part("b2"))?,
            ])
        })
        .collect::<std::result::Result<_, String>>()?;
    Ok((layers, HeadState { mean, std, heads }, summary))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{TUNED_FEATURES, TUNED_S32};
    use ndarray::Array4;

    fn built_in() -> Vec<u8> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        std::fs::read(root.join("models/default.onnx")).unwrap()
    }

    /// The tuned copy in the ONNX graph computes what the trainer's candle code computes, and
    /// with the backbone's own weights it reproduces the backbone's pooled features; for the
    /// head convolution alone and for EfficientNet-Lite0's last four blocks.
    #[test]
    fn tuned_layers_in_the_model_match_the_trainer() {
        let bytes = built_in();
        let name = Path::new("default.onnx");
        let mut rng = StdRng::seed_from_u64(7);
        let mut input = Array4::<f32>::zeros((2, 3, 224, 224));
        input.mapv_inplace(|_| rng.random_range(-1f32..1.0));
        // EfficientNet-Lite0 ends in three 5x5 blocks of 192 channels with a residual
        // connection, one 3x3 block from 192 to 320, and the head convolution to 1280.
        for (blocks, c_in) in [(0, 320), (4, 192)] {
            let (tail_graph, tail, initial) = model::tail_graph(&bytes, name, blocks).unwrap();
            assert_eq!(tail.input_channels, c_in);
            let shape: Vec<(usize, bool)> = tail
                .blocks
                .iter()
                .map(|b| (b.depthwise.kernel, b.residual))
                .collect();
            let want = [(5, true), (5, true), (5, true), (3, false)];
            assert_eq!(shape, want[..blocks].to_vec());
            assert_eq!(initial.convs.len(), 3 * blocks + 1);
            // The model stores the weights as float16.
            let initial = initial.rounded();
            let mut changed = initial.clone();
            for (w, b) in changed.convs.iter_mut() {
                for v in w.iter_mut() {
                    *v *= rng.random_range(0.5f32..1.5);
                }
                for v in b.iter_mut() {
                    *v += rng.random_range(-0.5f32..0.5);
                }
            }
            let changed = changed.rounded();
            let tail_engine = Engine::from_bytes(&tail_graph, name, Threads::single(1)).unwrap();
            let maps = tail_engine.run(input.view(), &[&tail.input]).unwrap();
            let maps = maps[0].as_slice().unwrap();
            let dev = Device::Cpu;
            let x = Tensor::from_slice(maps, (2, c_in, 7, 7), &dev).unwrap();

            for layers in [&initial, &changed] {
                let info = model::ModelInfo {
                    name: "t".into(),
                    preprocess: Preprocess::default(),
                    heads: Vec::new(),
                    training: serde_json::Value::Null,
                    pixel_colour: None,
                    test_time_flip: false,
                    second_look: Default::default(),
                };
                let built = model::build(&bytes, name, &[], Some(layers), None, &info).unwrap();
                let engine = Engine::from_bytes(&built, name, Threads::single(1)).unwrap();
                let out = engine
                    .run(input.view(), &[TUNED_FEATURES, model::FEATURES, TUNED_S32])
                    .unwrap();
                let onnx = out[0].as_slice().unwrap();
                let vars = TailVars::new(&tail, layers, &dev).unwrap();
                let candle: Vec<f32> = vars
                    .forward(&x)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                assert_eq!(onnx.len(), 2 * FEATURE_DIM);
                let worst = onnx
                    .iter()
                    .zip(&candle)
                    .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
                    .fold(0f32, f32::max);
                assert!(
                    worst < 1e-4,
                    "ONNX and candle differ by {worst} ({blocks} blocks)"
                );
                let frozen = out[1].as_slice().unwrap();
                // (Within float16's rounding of the weights.)
                let same = onnx
                    .iter()
                    .zip(frozen)
                    .all(|(a, b)| (a - b).abs() <= 1e-2 * b.abs().max(1.0));
                // Only the backbone's own weights give the backbone's own features.
                assert_eq!(same, std::ptr::eq(layers, &initial), "{blocks} blocks");
                // The trainer's layers round-trip to what it was given.
                let back = vars.layers().unwrap();
                assert_eq!(back.convs, layers.convs);
            }
        }
    }

    /// A tail of more blocks than the backbone has at stride 1 is refused with a clear error.
    #[test]
    fn too_many_blocks_is_an_error() {
        let Err(err) = model::tail_graph(&built_in(), Path::new("default.onnx"), 5) else {
            panic!("block 11 has stride 2, so a tail of 5 blocks must be refused");
        };
        assert!(
            err.to_string().contains("5 inverted-residual blocks"),
            "{err}"
        );
    }
}
