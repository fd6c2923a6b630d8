//! One classifier head: standardised features -> Linear -> ReLU -> dropout -> Linear, trained
//! with AdamW on a class-weighted cross-entropy (weights `count^-class_balance`, against the
//! severe class imbalance), cosine learning-rate decay, then temperature-scaled on the
//! validation split. Weights are initialised and dropout masks drawn from a seeded generator,
//! so a run is repeatable.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor, Var, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::hash::{fnv1a, START};
use crate::model::{HeadInfo, HeadWeights};

/// Hyper-parameters of the classifier heads.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeadConfig {
    pub hidden: usize,
    pub epochs: usize,
    pub batch: usize,
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub dropout: f32,
    /// Loss weight of a class is `count^-class_balance`: 0 ignores imbalance, 1 fully balances.
    pub class_balance: f64,
}

impl Default for HeadConfig {
    fn default() -> Self {
        Self {
            hidden: 256,
            epochs: 12,
            batch: 256,
            learning_rate: 1e-3,
            weight_decay: 1e-2,
            dropout: 0.5,
            class_balance: 0.5,
        }
    }
}

/// The cached features and labels of one head.
pub struct HeadData {
    pub(super) name: String,
    pub(super) labels: Vec<String>,
    /// Length of a feature row.
    pub(super) dim: usize,
    /// Whether the rows are [`crate::model::TUNED_FEATURES`].
    tuned: bool,
    /// [`HeadInfo::log_prior`] of the exported head (empty: none).
    log_prior: Vec<f32>,
    pub(super) train_x: Vec<f32>,
    pub(super) train_y: Vec<u32>,
    pub(super) val_x: Vec<f32>,
    pub(super) val_y: Vec<u32>,
}

impl HeadData {
    pub fn new(name: &str, labels: Vec<String>, dim: usize) -> Self {
        Self {
            name: name.to_string(),
            labels,
            dim,
            tuned: false,
            log_prior: Vec::new(),
            train_x: Vec::new(),
            train_y: Vec::new(),
            val_x: Vec::new(),
            val_y: Vec::new(),
        }
    }

    /// Marks the rows as [`crate::model::TUNED_FEATURES`].
    pub fn tuned(mut self) -> Self {
        self.tuned = true;
        self
    }

    /// Makes the exported head's answers follow the training frequencies of its classes
    /// ([`log_prior`]).
    pub fn following_prior(mut self, log_prior: Vec<f32>) -> Self {
        self.log_prior = log_prior;
        self
    }

    /// Adds a training row (rows of photos that failed to decode, all NaN, are skipped).
    pub fn push_train(&mut self, row: Vec<f32>, class: usize) {
        assert_eq!(row.len(), self.dim);
        if row.iter().all(|v| v.is_finite()) {
            self.train_x.extend(row);
            self.train_y.push(class as u32);
        }
    }

    /// Adds a validation row.
    pub fn push_val(&mut self, row: Vec<f32>, class: usize) {
        assert_eq!(row.len(), self.dim);
        if row.iter().all(|v| v.is_finite()) {
            self.val_x.extend(row);
            self.val_y.push(class as u32);
        }
    }
}

/// What training one head measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeadSummary {
    pub classes: usize,
    pub train_rows: usize,
    pub val_rows: usize,
    /// Validation accuracy and top-3 on cached features (unflipped photos), of the answers as
    /// exported (with the head's log prior, where it has one). These and the log-likelihoods
    /// are `None` (`null` in the summary) without validation photos: nothing was measured.
    pub val_accuracy: Option<f64>,
    pub val_top3: Option<f64>,
    pub temperature: f32,
    pub val_nll_before_calibration: Option<f64>,
    pub val_nll_after_calibration: Option<f64>,
    pub seconds: f64,
}

fn cerr(e: candle_core::Error) -> Error {
    Error::Training(e.to_string())
}

/// `n` draws from U(-bound, bound): the initial weights of a layer.
pub(super) fn uniform(rng: &mut StdRng, n: usize, bound: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-bound..bound)).collect()
}

/// Loss weight of each class, `count^-balance` (0 ignores the imbalance, 1 fully balances it),
/// scaled so that the photos' mean weight is 1.
pub(super) fn class_weights(counts: &[f64], balance: f64) -> Vec<f32> {
    let raw: Vec<f64> = counts.iter().map(|&k| k.max(1.0).powf(-balance)).collect();
    let n: f64 = counts.iter().sum();
    let norm = n / counts
        .iter()
        .zip(&raw)
        .map(|(k, w)| k * w)
        .sum::<f64>()
        .max(1e-9);
    raw.iter().map(|w| (w * norm) as f32).collect()
}

/// [`HeadInfo::log_prior`] for classes seen `counts` times in training by a head trained with
/// `balance` ([`class_weights`]): `balance × ln(count)`, centred on 0. Added to the logits, it
/// undoes the class weights' effect on the answer (logit adjustment): the weights keep rare
/// classes learnt, the answer again favours the classes that are common.
pub fn log_prior(counts: &[f64], balance: f64) -> Vec<f32> {
    let raw: Vec<f64> = counts.iter().map(|&k| balance * k.max(1.0).ln()).collect();
    let mean = raw.iter().sum::<f64>() / raw.len().max(1) as f64;
    raw.iter().map(|v| (v - mean) as f32).collect()
}

/// Trains one head, or reads it back from the cache when an identical run finished before.
pub fn train_head(
    data: HeadData,
    cfg: &HeadConfig,
    seed: u64,
    cache_dir: &Path,
    model_key: u64,
) -> Result<(HeadWeights, HeadSummary)> {
    let mut key = fnv1a(START, &model_key.to_le_bytes());
    key = fnv1a(
        key,
        serde_json::to_string(cfg).unwrap_or_default().as_bytes(),
    );
    key = fnv1a(key, &seed.to_le_bytes());
    key = fnv1a(key, data.labels.join("\n").as_bytes());
    for v in &data.log_prior {
        key = fnv1a(key, &v.to_le_bytes());
    }
    for v in data.train_y.iter().chain(&data.val_y) {
        key = fnv1a(key, &v.to_le_bytes());
    }
    let ckpt = cache_dir.join(format!("head-{}-{key:016x}.safetensors", data.name));
    if let Ok(found) = load_checkpoint(&ckpt, &data) {
        eprintln!(
            "{}: reusing the head trained earlier ({})",
            data.name,
            ckpt.display()
        );
        return Ok(found);
    }
    let start = std::time::Instant::now();
    let dev = Device::Cpu;
    let d = data.dim;
    let n = data.train_y.len();
    let c = data.labels.len();
    let h = cfg.hidden;
    if n == 0 {
        return Err(Error::Training(format!(
            "{}: no training photos",
            data.name
        )));
    }

    // Standardise features; the scaling is folded into the first layer when exporting.
    let mut mean = vec![0f64; d];
    let mut sq = vec![0f64; d];
    for row in data.train_x.chunks_exact(d) {
        for (j, &v) in row.iter().enumerate() {
            mean[j] += f64::from(v);
            sq[j] += f64::from(v) * f64::from(v);
        }
    }
    let mean: Vec<f32> = mean.iter().map(|m| (m / n as f64) as f32).collect();
    let std: Vec<f32> = sq
        .iter()
        .zip(&mean)
        .map(|(s, &m)| ((s / n as f64 - f64::from(m).powi(2)).max(0.0).sqrt() as f32).max(1e-3))
        .collect();
    let standardise = |x: &[f32]| -> Vec<f32> {
        x.chunks_exact(d)
            .flat_map(|row| {
                row.iter()
                    .zip(&mean)
                    .zip(&std)
                    .map(|((v, m), s)| (v - m) / s)
            })
            .collect()
    };
    let x = Tensor::from_vec(standardise(&data.train_x), (n, d), &dev).map_err(cerr)?;
    let y = Tensor::from_vec(data.train_y.clone(), n, &dev).map_err(cerr)?;

    let mut counts = vec![0f64; c];
    for &t in &data.train_y {
        counts[t as usize] += 1.0;
    }
    let class_w =
        Tensor::from_vec(class_weights(&counts, cfg.class_balance), c, &dev).map_err(cerr)?;

    let mut rng = StdRng::seed_from_u64(fnv1a(seed, data.name.as_bytes()));
    let w1 = Var::from_vec(
        uniform(&mut rng, h * d, (1.0 / d as f32).sqrt()),
        (h, d),
        &dev,
    )
    .map_err(cerr)?;
    let b1 = Var::from_vec(vec![0f32; h], h, &dev).map_err(cerr)?;
    let w2 = Var::from_vec(
        uniform(&mut rng, c * h, (1.0 / h as f32).sqrt()),
        (c, h),
        &dev,
    )
    .map_err(cerr)?;
    let b2 = Var::from_vec(vec![0f32; c], c, &dev).map_err(cerr)?;
    let mut opt = AdamW::new(
        vec![w1.clone(), b1.clone(), w2.clone(), b2.clone()],
        ParamsAdamW {
            lr: cfg.learning_rate,
            weight_decay: cfg.weight_decay,
            ..Default::default()
        },
    )
    .map_err(cerr)?;

    let batch = cfg.batch.max(1);
    let steps_per_epoch = n.div_ceil(batch);
    let total = (steps_per_epoch * cfg.epochs).max(1);
    let mut order: Vec<u32> = (0..n as u32).collect();
    let mut step = 0;
    for epoch in 0..cfg.epochs {
        order.shuffle(&mut rng);
        let mut epoch_loss = 0.0;
        for chunk in order.chunks(batch) {
            opt.set_learning_rate(super::cosine_lr(cfg.learning_rate, step, total));
            let idx = Tensor::from_vec(chunk.to_vec(), chunk.len(), &dev).map_err(cerr)?;
            let xb = x.index_select(&idx, 0).map_err(cerr)?;
            let yb = y.index_select(&idx, 0).map_err(cerr)?;
            let keep = 1.0 - cfg.dropout;
            let mask: Vec<f32> = (0..chunk.len() * h)
                .map(|_| {
                    if rng.random::<f32>() < keep {
                        1.0 / keep
                    } else {
                        0.0
                    }
                })
                .collect();
            let mask = Tensor::from_vec(mask, (chunk.len(), h), &dev).map_err(cerr)?;
            let a1 = xb
                .matmul(&w1.t().map_err(cerr)?)
                .and_then(|z| z.broadcast_add(&b1))
                .and_then(|z| z.relu())
                .and_then(|z| z.mul(&mask))
                .map_err(cerr)?;
            let logits = a1
                .matmul(&w2.t().map_err(cerr)?)
                .and_then(|z| z.broadcast_add(&b2))
                .map_err(cerr)?;
            let loss = class_w
                .index_select(&yb, 0)
                .and_then(|w| weighted_ce(&logits, &yb, &w))
                .map_err(cerr)?;
            opt.backward_step(&loss).map_err(cerr)?;
            epoch_loss += f64::from(loss.to_scalar::<f32>().map_err(cerr)?);
            step += 1;
        }
        eprintln!(
            "{:>14} epoch {:>3}/{}: loss {:.4}",
            data.name,
            epoch + 1,
            cfg.epochs,
            epoch_loss / steps_per_epoch as f64
        );
    }

    let tensor = |v: &Var| v.as_tensor().flatten_all().and_then(|t| t.to_vec1());
    let (weights, summary) = export_head(
        &data,
        &Trained {
            mean: &mean,
            std: &std,
            w1: tensor(&w1).map_err(cerr)?,
            b1: tensor(&b1).map_err(cerr)?,
            w2: tensor(&w2).map_err(cerr)?,
            b2: tensor(&b2).map_err(cerr)?,
        },
        n,
        start.elapsed().as_secs_f64(),
    );
    save_checkpoint(&ckpt, &weights, &summary)?;
    Ok((weights, summary))
}

/// A head's weights as trained, on features standardised with `mean` and `std`.
pub(super) struct Trained<'a> {
    pub mean: &'a [f32],
    pub std: &'a [f32],
    /// `[hidden, dim]`, `[hidden]`, `[classes, hidden]`, `[classes]`.
    pub w1: Vec<f32>,
    pub b1: Vec<f32>,
    pub w2: Vec<f32>,
    pub b2: Vec<f32>,
}

/// The head as exported: the standardisation folded into its first layer, measured on the
/// validation rows of `data` and calibrated there by temperature scaling.
pub(super) fn export_head(
    data: &HeadData,
    t: &Trained,
    train_rows: usize,
    seconds: f64,
) -> (HeadWeights, HeadSummary) {
    let d = data.dim;
    let h = t.b1.len();
    // Fold the standardisation into the first layer: W1 ((x - m) / s) + b1 = (W1 / s) x + (b1 - (W1 / s) m).
    let mut w1f = vec![0f32; h * d];
    let mut b1f = t.b1.clone();
    for i in 0..h {
        for j in 0..d {
            let w = t.w1[i * d + j] / t.std[j];
            w1f[i * d + j] = w;
            b1f[i] -= w * t.mean[j];
        }
    }
    let mut weights = HeadWeights {
        info: HeadInfo {
            name: data.name.clone(),
            labels: data.labels.clone(),
            hidden: h,
            temperature: 1.0,
            tuned: data.tuned,
            log_prior: Vec::new(),
        },
        w1: w1f,
        b1: b1f,
        w2: t.w2.clone(),
        b2: t.b2.clone(),
    };
    let logits = if data.val_y.is_empty() {
        Vec::new()
    } else {
        weights.logits(&data.val_x)
    };
    let summary = calibrate(data, &logits, &mut weights.info, train_rows, seconds);
    (weights, summary)
}

/// Sets the temperature of a head (`info`) whose logits on the validation rows of `data` are
/// `logits` (by least negative log-likelihood; 1 without validation rows) and its prior, and
/// measures its answers there.
pub(super) fn calibrate(
    data: &HeadData,
    logits: &[f32],
    info: &mut HeadInfo,
    train_rows: usize,
    seconds: f64,
) -> HeadSummary {
    let c = data.labels.len();
    let val_n = data.val_y.len();
    let nll1 = nll(logits, &data.val_y, c, 1.0);
    let temperature = if val_n > 0 {
        (0..=80)
            .map(|i| 0.5f32 * 10f32.powf(i as f32 / 80.0))
            .min_by(|a, b| {
                nll(logits, &data.val_y, c, *a).total_cmp(&nll(logits, &data.val_y, c, *b))
            })
            .unwrap_or(1.0)
    } else {
        1.0
    };
    info.temperature = temperature;
    if data.log_prior.len() == c {
        info.log_prior = data.log_prior.clone();
    }
    // Measured as the head answers: calibrated, with its prior.
    let answered: Vec<f32> = logits
        .chunks_exact(c)
        .flat_map(|row| info.calibrated(row))
        .collect();
    let (acc, top3) = accuracy(&answered, &data.val_y, c);
    let measured = |v: f64| (val_n > 0).then_some(v);
    let summary = HeadSummary {
        classes: c,
        train_rows,
        val_rows: val_n,
        val_accuracy: measured(acc),
        val_top3: measured(top3),
        temperature,
        val_nll_before_calibration: measured(nll1),
        val_nll_after_calibration: measured(nll(&answered, &data.val_y, c, 1.0)),
        seconds: seconds.round(),
    };
    if val_n == 0 {
        eprintln!(
            "{:>14}: no validation photos: accuracy not measured, confidences not calibrated",
            data.name
        );
    } else {
        eprintln!(
            "{:>14}: val accuracy {:.1}%, top-3 {:.1}%, temperature {:.2}",
            data.name,
            100.0 * acc,
            100.0 * top3,
            temperature
        );
    }
    summary
}

/// Cross-entropy with a weight per row (0 leaves a row out; all 0 gives a loss of 0).
pub(super) fn weighted_ce(
    logits: &Tensor,
    y: &Tensor,
    weights: &Tensor,
) -> candle_core::Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let picked = logp.gather(&y.unsqueeze(1)?, 1)?.squeeze(1)?;
    let total = weights.sum_all()?.to_scalar::<f32>()?;
    if total <= 0.0 {
        return picked.zeros_like()?.sum_all();
    }
    (picked * weights)?.sum_all()?.neg()? / f64::from(total)
}

/// Logits of the exported head (standardisation folded in) for rows of raw features.
fn accuracy(logits: &[f32], y: &[u32], c: usize) -> (f64, f64) {
    if y.is_empty() {
        return (0.0, 0.0);
    }
    let (mut top1, mut top3) = (0usize, 0usize);
    for (row, &t) in logits.chunks_exact(c).zip(y) {
        let better = row.iter().filter(|&&v| v > row[t as usize]).count();
        top1 += usize::from(better == 0);
        top3 += usize::from(better < 3);
    }
    (top1 as f64 / y.len() as f64, top3 as f64 / y.len() as f64)
}

fn nll(logits: &[f32], y: &[u32], c: usize, t: f32) -> f64 {
    if y.is_empty() {
        return 0.0;
    }
    let mut total = 0.0f64;
    for (row, &k) in logits.chunks_exact(c).zip(y) {
        let m = row.iter().fold(f32::MIN, |a, &b| a.max(b / t));
        let lse = m + row.iter().map(|v| (v / t - m).exp()).sum::<f32>().ln();
        total += f64::from(lse - row[k as usize] / t);
    }
    total / y.len() as f64
}

fn save_checkpoint(path: &Path, w: &HeadWeights, s: &HeadSummary) -> Result<()> {
    let (h, c) = (w.info.hidden, w.info.labels.len());
    let meta = HashMap::from([
        (
            "info".to_string(),
            serde_json::to_string(&w.info).unwrap_or_default(),
        ),
        (
            "summary".to_string(),
            serde_json::to_string(s).unwrap_or_default(),
        ),
    ]);
    super::checkpoint::save(
        path,
        &[
            ("w1", vec![h, w.w1.len() / h.max(1)], &w.w1),
            ("b1", vec![h], &w.b1),
            ("w2", vec![c, h], &w.w2),
            ("b2", vec![c], &w.b2),
        ],
        meta,
    )
}

fn load_checkpoint(
    path: &Path,
    data: &HeadData,
) -> std::result::Result<(HeadWeights, HeadSummary), String> {
    let (mut t, meta) = super::checkpoint::load(path)?;
    let info: HeadInfo =
        serde_json::from_str(meta.get("info").ok_or("no info")?).map_err(|e| e.to_string())?;
    let summary: HeadSummary = serde_json::from_str(meta.get("summary").ok_or("no summary")?)
        .map_err(|e| e.to_string())?;
    if info.labels != data.labels || info.tuned != data.tuned {
        return Err("labels differ".into());
    }
    let mut get = |n: &str| t.remove(n).ok_or_else(|| format!("no tensor {n}"));
    Ok((
        HeadWeights {
            w1: get("w1")?,
            b1: get("b1")?,
            w2: get("w2")?,
            b2: get("b2")?,
            info,
        },
        summary,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_cross_entropy_matches_a_hand_computation() {
        let dev = Device::Cpu;
        // Softmax of [0, ln 3] is [1/4, 3/4]. Row 0 (label 1, weight 2): -ln(3/4); row 1
        // (label 0, weight 1): -ln(1/4); row 2 has no label (weight 0).
        let logits =
            Tensor::new(&[[0f32, 3f32.ln()], [0.0, 3f32.ln()], [5.0, -5.0]], &dev).unwrap();
        let y = Tensor::new(&[1u32, 0, 1], &dev).unwrap();
        let w = Tensor::new(&[2f32, 1.0, 0.0], &dev).unwrap();
        let loss: f32 = weighted_ce(&logits, &y, &w).unwrap().to_scalar().unwrap();
        let want = (2.0 * (4f32 / 3.0).ln() + 4f32.ln()) / 3.0;
        assert!((loss - want).abs() < 1e-6, "{loss} against {want}");
        let none = Tensor::new(&[0f32, 0.0, 0.0], &dev).unwrap();
        let loss: f32 = weighted_ce(&logits, &y, &none)
            .unwrap()
            .to_scalar()
            .unwrap();
        assert_eq!(loss, 0.0);
    }

    #[test]
    fn log_prior_takes_the_class_weights_back_out_of_the_answer() {
        let counts = [400.0, 100.0, 4.0];
        let prior = log_prior(&counts, 0.5);
        // 0.5 ln 400, 0.5 ln 100, 0.5 ln 4 = 2.9957, 2.3026, 0.6931; their mean is 1.9971.
        let want = [0.9986f32, 0.3054, -1.3040];
        for (p, w) in prior.iter().zip(want) {
            assert!((p - w).abs() < 1e-3, "{prior:?}");
        }
        // Adding it undoes the loss weights up to a constant: ln w + prior is the same for all.
        let w = class_weights(&counts, 0.5);
        let sums: Vec<f32> = w.iter().zip(&prior).map(|(w, p)| w.ln() + p).collect();
        assert!(sums.iter().all(|s| (s - sums[0]).abs() < 1e-5), "{sums:?}");

        // A head that calls both validation photos the rare class 0 ...
        let trained = Trained {
            mean: &[0.0],
            std: &[1.0],
            w1: vec![1.0],
            b1: vec![0.0],
            w2: vec![1.0, 0.0],
            b2: vec![0.0, 0.0],
        };
        let head = |prior: Vec<f32>| {
            let mut data =
                HeadData::new("h", vec!["rare".into(), "common".into()], 1).following_prior(prior);
            data.push_val(vec![0.5], 1);
            data.push_val(vec![20.0], 0);
            export_head(&data, &trained, 101, 0.0)
        };
        let (plain, summary) = head(Vec::new());
        assert!(plain.info.log_prior.is_empty());
        assert_eq!(summary.val_accuracy, Some(0.5));
        // ... gets the common one right once the prior of 1 against 100 photos is added, and
        // keeps the rare one whose evidence is strong (at any temperature it can fit).
        let prior = log_prior(&[1.0, 100.0], 0.5);
        let (adjusted, summary) = head(prior.clone());
        assert_eq!(adjusted.info.log_prior, prior);
        assert_eq!(summary.val_accuracy, Some(1.0));
        // Without validation photos nothing is measured, and the summary says so with nulls,
        // not with an accuracy of 0.
        let mut unmeasured = HeadData::new("h", vec!["rare".into(), "common".into()], 1);
        unmeasured.push_train(vec![0.5], 1);
        let (_, summary) = export_head(&unmeasured, &trained, 101, 0.0);
        assert_eq!((summary.val_rows, summary.temperature), (0, 1.0));
        let json = serde_json::to_value(&summary).unwrap();
        for key in [
            "val_accuracy",
            "val_top3",
            "val_nll_before_calibration",
            "val_nll_after_calibration",
        ] {
            assert!(json[key].is_null(), "{key}: {json}");
        }
    }

    #[test]
    fn temperature_one_nll_matches_hand_computation() {
        // logits [2, 0] with target 0: -ln(e^2 / (e^2 + 1))
        let v = nll(&[2.0, 0.0], &[0], 2, 1.0);
        assert!((v - (1.0f64 + (-2.0f64).exp()).ln()).abs() < 1e-6, "{v}");
        // Row 1: class 0 is third (top-3, not top-1); row 2: class 0 is first.
        let (a, t3) = accuracy(&[0.1, 0.5, 0.2, 0.9, 0.0, 0.1], &[0, 0], 3);
        assert_eq!((a, t3), (0.5, 1.0));
    }
}
