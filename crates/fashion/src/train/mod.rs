//! Training: run the frozen backbone once per photo and augmentation (cached on disk, see
//! [`features`]), train one small classifier per head on those features with candle, calibrate
//! each head's confidences by temperature scaling on the validation split, and write the model
//! as one ONNX file. The heads in `[tune]` are trained instead together with a copy of the
//! backbone's last blocks (see [`TuneConfig`]).
//!
//! Every hyper-parameter is in [`TrainConfig`], read from TOML and saved in the model.

mod checkpoint;
mod depthwise;
pub mod features;
mod heads;
mod mask;
mod pixel_colour;
pub mod synthetic;
mod trees;
mod tune;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::data::{Dataset, Layout, Sample, Split};
use crate::engine::{Engine, Threads};
use crate::error::{Error, Result};
use crate::mirror::SecondLook;
use crate::model::{self, HeadWeights, ModelInfo};
use crate::preprocess::Preprocess;
use features::Input;

pub use heads::HeadConfig;
pub use mask::MaskConfig;
pub use trees::TreesConfig;
pub use tune::TuneConfig;

/// One dataset to train on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DataSource {
    pub path: PathBuf,
    pub layout: Layout,
}

/// Everything that decides what `fashion train` produces.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Model name written into the file.
    #[serde(default = "default_name")]
    pub name: String,
    /// Seed for weight initialisation, shuffling and dropout.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Photos per backbone batch while caching features.
    #[serde(default = "default_batch")]
    pub backbone_batch: usize,
    /// Also cache and train on left-right mirrored photos.
    #[serde(default = "default_true")]
    pub flip: bool,
    /// The model looks at each photo twice and averages the two ([`crate::mirror`]): twice the
    /// work per photo, more accurate.
    #[serde(default = "default_true")]
    pub test_time_flip: bool,
    /// What the second look sees: `mirror` (the crop mirrored), `whole` or `whole-mirrored`
    /// (the whole square the crop is cut from, shrunk to the crop's size).
    #[serde(default = "default_second_look")]
    pub second_look: SecondLook,
    /// Heads on frozen features that also learn from the second look of every training photo
    /// when it is the whole square (as they learn from the mirror image), so that they know the
    /// look they are asked about. The colour family head learned no better from it.
    #[serde(default = "default_second_look_heads")]
    pub second_look_heads: Vec<String>,
    /// Heads whose answers follow how often each class occurs in training: `[heads]
    /// class_balance` weights the loss towards rare classes so that they are learnt; for
    /// these heads its effect is taken back out of the answer ([`heads::log_prior`]), which
    /// trades macro-F1 for accuracy. Photos of one product vote without it
    /// ([`model::HeadInfo::vote`]).
    #[serde(default = "default_prior_heads")]
    pub prior_heads: Vec<String>,
    /// Inference threads (0 = every core).
    #[serde(default)]
    pub threads: usize,
    /// Heads get trained only for labels seen at least this often in training.
    #[serde(default = "default_min_count")]
    pub min_class_count: usize,
    /// The classifier heads.
    #[serde(default)]
    pub heads: HeadConfig,
    /// Fine-tuning the backbone's last layers for some heads.
    #[serde(default)]
    pub tune: TuneConfig,
    /// The garment mask head (trained where the data has parsing masks).
    #[serde(default)]
    pub mask: MaskConfig,
    /// The colour family classifier on garment pixels (trained with the `colour_family` head;
    /// `hidden = 0` leaves it out).
    #[serde(default)]
    pub pixel_colour: PixelColourConfig,
    /// Preprocessing (must match the backbone).
    #[serde(default)]
    pub preprocess: Preprocess,
}

fn default_name() -> String {
    "fashion-default".into()
}
fn default_seed() -> u64 {
    42
}
fn default_batch() -> usize {
    32
}
fn default_true() -> bool {
    true
}
fn default_second_look() -> SecondLook {
    SecondLook::WholeMirrored
}
fn default_second_look_heads() -> Vec<String> {
    vec![crate::data::ARTICLE_TYPE.into()]
}
fn default_prior_heads() -> Vec<String> {
    vec![crate::data::CATEGORY.into()]
}
fn default_min_count() -> usize {
    2
}
/// Hyper-parameters of the pixel colour head ([`crate::model::PixelColourHead`]): a network's
/// (the keys of [`HeadConfig`]; a key left out takes `[heads]`'s default, except `hidden` 64,
/// `epochs` 30 and `batch` 128), or boosted trees' instead
/// (`[pixel_colour.trees]`); and how its answer is combined with the `colour_family` head's.
/// The network's keys are repeated here rather than flattened in from [`HeadConfig`]: serde
/// does not refuse unknown keys through a flattened struct, and a misspelt key must not pass.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PixelColourConfig {
    pub hidden: usize,
    pub epochs: usize,
    pub batch: usize,
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub dropout: f32,
    pub class_balance: f64,
    /// Boosted trees in place of the network (whose keys then do not apply, except `hidden =
    /// 0`, which still leaves the head out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trees: Option<TreesConfig>,
    /// Weight of the `colour_family` head's vote (0 to 1); left out, it is fitted on the
    /// validation split.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head_weight: Option<f32>,
    /// Drawn photos of garments in vivid colours added to its training photos (see
    /// [`synthetic`]), at most as many as the labelled training photos; 0 adds none.
    pub vivid_photos: usize,
}

impl Default for PixelColourConfig {
    fn default() -> Self {
        let h = HeadConfig::default();
        Self {
            hidden: 64,
            epochs: 30,
            batch: 128,
            learning_rate: h.learning_rate,
            weight_decay: h.weight_decay,
            dropout: h.dropout,
            class_balance: h.class_balance,
            trees: None,
            head_weight: None,
            vivid_photos: 1700,
        }
    }
}

impl PixelColourConfig {
    /// Refuses settings that cannot train, before any photo is read.
    fn check(&self) -> Result<()> {
        let bad = |what: String| {
            Err(Error::InvalidArgument(format!(
                "config: [pixel_colour] {what}"
            )))
        };
        if let Some(w) = self.head_weight {
            if !(0.0..=1.0).contains(&w) {
                return bad(format!("head_weight must be from 0 to 1, not {w}"));
            }
        }
        if let Some(t) = &self.trees {
            let share = |v: f64| v > 0.0 && v <= 1.0;
            if t.rounds == 0 || t.depth == 0 {
                return bad("trees need rounds and depth of at least 1".into());
            }
            if !(t.learning_rate > 0.0 && t.learning_rate.is_finite()) {
                return bad(format!(
                    "trees learning_rate must be above 0, not {}",
                    t.learning_rate
                ));
            }
            if !share(t.subsample) || !share(t.colsample) {
                return bad(format!(
                    "trees subsample and colsample must be above 0 and at most 1, not {} and {}",
                    t.subsample, t.colsample
                ));
            }
        }
        Ok(())
    }

    /// The network's hyper-parameters.
    pub fn network(&self) -> HeadConfig {
        HeadConfig {
            hidden: self.hidden,
            epochs: self.epochs,
            batch: self.batch,
            learning_rate: self.learning_rate,
            weight_decay: self.weight_decay,
            dropout: self.dropout,
            class_balance: self.class_balance,
        }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

impl TrainConfig {
    /// Reads a TOML config file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        toml::from_str(&text).map_err(|e| Error::bad_data(path, e.to_string()))
    }
}

/// Inputs of one training run.
pub struct TrainJob<'a> {
    pub backbone: &'a Path,
    pub data: &'a [DataSource],
    pub cache_dir: &'a Path,
    pub output: &'a Path,
    pub config: &'a TrainConfig,
}

/// What a finished run reports.
#[derive(Debug, Serialize)]
pub struct TrainSummary {
    pub output: PathBuf,
    pub seconds: f64,
    pub heads: BTreeMap<String, heads::HeadSummary>,
}

/// Trains the pixel colour head ([`crate::model::PixelColourHead`], `[pixel_colour]` in the
/// config) of a finished model again, on the colour-labelled photos of `job.data`, and keeps
/// everything else: `job.backbone` is that model. The model's looks are first brought up to
/// date ([`current_looks`]). A few minutes instead of a whole training run.
pub fn retrain_pixel_colour(job: &TrainJob) -> Result<TrainSummary> {
    let start = Instant::now();
    let bytes = current_looks(job)?;
    let datasets = load_datasets(job)?;
    let samples: Vec<&Sample> = datasets.iter().flat_map(|d| d.samples.iter()).collect();
    let mut heads = BTreeMap::new();
    finish_retrained(job, bytes, &samples, &mut heads)?;
    Ok(TrainSummary {
        output: job.output.to_path_buf(),
        seconds: start.elapsed().as_secs_f64(),
        heads,
    })
}

/// Trains the heads `names` of a finished model, heads that read the backbone's frozen features
/// (not fine-tuned with its tail: `article_type` and `colour_family` in the built-in model),
/// again on `job.data`, then its pixel colour head, and keeps everything else: its other heads,
/// its fine-tuned layers, its garment mask. `job.backbone` is that model; its looks are first brought up
/// to date ([`current_looks`]), so that the heads learn the looks the model takes.
pub fn retrain_heads(job: &TrainJob, names: &[String]) -> Result<TrainSummary> {
    let start = Instant::now();
    let cfg = job.config;
    let bytes = current_looks(job)?;
    let info = model::read_info(&bytes, job.backbone)?;
    let frozen_heads: Vec<&str> = info
        .heads
        .iter()
        .filter(|h| !h.tuned)
        .map(|h| h.name.as_str())
        .collect();
    if let Some(bad) = names.iter().find(|n| !frozen_heads.contains(&n.as_str())) {
        return Err(Error::InvalidArgument(format!(
            "{}: {bad:?} is not one of the model's heads on frozen features ({})",
            job.backbone.display(),
            frozen_heads.join(", ")
        )));
    }
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    if names.is_empty() {
        return Err(Error::InvalidArgument("no head named to train".into()));
    }
    let key = model_key(&bytes, &cfg.preprocess);
    let datasets = load_datasets(job)?;
    let samples: Vec<&Sample> = datasets.iter().flat_map(|d| d.samples.iter()).collect();
    report_photos(&samples, datasets.len());
    // Refused now, not after the features are cached.
    if let Some(bare) = names
        .iter()
        .find(|n| head_labels(&samples, n, cfg.min_class_count).len() < 2)
    {
        return Err(Error::InvalidArgument(format!(
            "the data gives head {bare:?} fewer than two labels to learn"
        )));
    }
    let paths: Vec<PathBuf> = samples.iter().map(|s| s.path.clone()).collect();
    let frozen = frozen_features(job, &bytes, key, &paths, &names)?;
    let trained = train_frozen_heads(job, &samples, &frozen, key, &names)?;
    let weights: Vec<HeadWeights> = trained.iter().map(|(w, _)| w.clone()).collect();
    let bytes = model::with_heads(&bytes, job.backbone, &weights)?;
    let mut heads: BTreeMap<String, heads::HeadSummary> =
        trained.into_iter().map(|(w, s)| (w.info.name, s)).collect();
    let mut info = model::read_info(&bytes, job.backbone)?;
    for (name, summary) in &heads {
        info.training["heads"][name] = serde_json::json!(summary);
    }
    info.training["config"]["heads"] = serde_json::json!(cfg.heads);
    info.training["config"]["second_look_heads"] = serde_json::json!(cfg.second_look_heads);
    let bytes = model::with_info(&bytes, job.backbone, &info)?;
    finish_retrained(job, bytes, &samples, &mut heads)?;
    Ok(TrainSummary {
        output: job.output.to_path_buf(),
        seconds: start.elapsed().as_secs_f64(),
        heads,
    })
}

/// The finished model `job.backbone` with its looks as the config says now: a model of an
/// earlier version first gets the [`crate::mask::GARMENT_FEATURES`] output as `fashion train`
/// writes it ([`model::with_garment_features`]); then its second look becomes the config's
/// (`test_time_flip`, `second_look`). A config without a pixel colour head is refused first:
/// both ways of training part of a model end by training it.
fn current_looks(job: &TrainJob) -> Result<Vec<u8>> {
    let cfg = job.config;
    if cfg.pixel_colour.hidden == 0 {
        return Err(Error::InvalidArgument(
            "config: [pixel_colour] hidden = 0 turns the pixel colour head off".into(),
        ));
    }
    cfg.pixel_colour.check()?;
    let original = std::fs::read(job.backbone).map_err(|e| Error::io(job.backbone, e))?;
    let bytes = model::with_garment_features(&original, job.backbone)?.unwrap_or(original);
    let looked = if cfg.test_time_flip {
        model::with_second_look(&bytes, job.backbone, cfg.second_look)?
    } else {
        model::single_look(&bytes, job.backbone)?
    };
    Ok(looked.unwrap_or(bytes))
}

/// Trains the pixel colour head of `bytes` (a finished model) again, records it and the config
/// in the model's metadata and writes the model to `job.output`.
fn finish_retrained(
    job: &TrainJob,
    bytes: Vec<u8>,
    samples: &[&Sample],
    heads: &mut BTreeMap<String, heads::HeadSummary>,
) -> Result<()> {
    let cfg = job.config;
    // The model as `fashion train` has it before the pixel colour head: without one.
    let mut info = model::read_info(&bytes, job.backbone)?;
    info.pixel_colour = None;
    let bytes = model::with_info(&bytes, job.backbone, &info)?;
    let head = add_pixel_colour(job, &bytes, samples, &mut info)?.ok_or_else(|| {
        Error::InvalidArgument(format!(
            "{}: the model has no {} head for the pixel colour head to vote with",
            job.backbone.display(),
            crate::data::COLOUR_FAMILY
        ))
    })?;
    heads.insert("pixel_colour".to_string(), head);
    let config = &mut info.training["config"];
    config["pixel_colour"] = serde_json::json!(cfg.pixel_colour);
    config["test_time_flip"] = serde_json::json!(cfg.test_time_flip);
    config["second_look"] = serde_json::json!(cfg.second_look);
    let bytes = model::with_info(&bytes, job.output, &info)?;
    write_atomically(job.output, &bytes)
}

/// The datasets of `job.data`, loaded.
fn load_datasets(job: &TrainJob) -> Result<Vec<Dataset>> {
    job.data
        .iter()
        .map(|src| Dataset::load(&src.path, src.layout))
        .collect()
}

/// Trains the pixel colour head on the model built so far (`model`, without one) and records it
/// and its training summary in `info`. Returns the summary of the classifier itself; `None`
/// when the model has no `colour_family` head to vote with.
fn add_pixel_colour(
    job: &TrainJob,
    model: &[u8],
    samples: &[&Sample],
    info: &mut ModelInfo,
) -> Result<Option<heads::HeadSummary>> {
    let cfg = job.config;
    let Some((head, summary)) = pixel_colour::train_pixel_colour(
        model,
        job.output,
        samples,
        &cfg.pixel_colour,
        cfg.seed,
        cfg.threads,
        cfg.backbone_batch,
        job.cache_dir,
    )?
    else {
        return Ok(None);
    };
    info.pixel_colour = Some(head);
    info.training["pixel_colour"] = serde_json::json!(summary);
    Ok(Some(summary.head))
}

/// The heads a dataset can label, in a fixed order.
const HEAD_ORDER: [&str; 4] = [
    crate::data::CATEGORY,
    crate::data::VIEW,
    crate::data::ARTICLE_TYPE,
    crate::data::COLOUR_FAMILY,
];

/// Trains a model and writes it (atomically) to `job.output`.
pub fn train(job: &TrainJob) -> Result<TrainSummary> {
    let start = Instant::now();
    let cfg = job.config;
    cfg.pixel_colour.check()?;
    for (key, names) in [
        ("tune.heads", &cfg.tune.heads),
        ("prior_heads", &cfg.prior_heads),
        ("second_look_heads", &cfg.second_look_heads),
    ] {
        if let Some(bad) = names.iter().find(|h| !HEAD_ORDER.contains(&h.as_str())) {
            return Err(Error::InvalidArgument(format!(
                "config: {key} names {bad:?}, which is not a head (heads: {})",
                HEAD_ORDER.join(", ")
            )));
        }
    }
    let backbone_bytes = std::fs::read(job.backbone).map_err(|e| Error::io(job.backbone, e))?;
    // A tail the backbone does not have, or a flip it cannot take, is refused now, not after
    // the features are cached.
    if !cfg.tune.heads.is_empty() {
        model::tail_graph(&backbone_bytes, job.backbone, cfg.tune.blocks)?;
    }
    if cfg.test_time_flip {
        model::check_test_time_flip(&backbone_bytes, job.backbone)?;
    }
    let model_key = model_key(&backbone_bytes, &cfg.preprocess);
    let datasets = load_datasets(job)?;
    let samples: Vec<&Sample> = datasets.iter().flat_map(|d| d.samples.iter()).collect();
    report_photos(&samples, datasets.len());
    // Said before the features are computed, so that the run can still be stopped.
    let dropped = heads_not_kept(&backbone_bytes, job.backbone, &samples, cfg.min_class_count);
    if !dropped.is_empty() {
        eprintln!(
            "warning: {} is a trained model, and the data gives its heads {} fewer than two \
             labels each to learn: the new model is trained from its backbone and will not \
             have them (--only-heads and --only-pixel-colour train some of a model's heads \
             again, on their own labels, and keep the rest)",
            job.backbone.display(),
            dropped.join(", ")
        );
    }
    let paths: Vec<PathBuf> = samples.iter().map(|s| s.path.clone()).collect();
    let untuned: Vec<&str> = HEAD_ORDER
        .into_iter()
        .filter(|h| !cfg.tune.heads.iter().any(|t| t == h))
        .collect();
    let frozen = frozen_features(job, &backbone_bytes, model_key, &paths, &untuned)?;

    let tuned_labels: Vec<(String, Vec<String>)> = HEAD_ORDER
        .iter()
        .filter(|h| cfg.tune.heads.iter().any(|t| t == *h))
        .map(|h| (h.to_string(), head_labels(&samples, h, cfg.min_class_count)))
        .filter(|(_, l)| l.len() >= 2)
        .collect();
    let mut tuned = if tuned_labels.is_empty() {
        None
    } else {
        tune::tune(
            &tune::TuneJob {
                backbone: &backbone_bytes,
                backbone_path: job.backbone,
                pre: &cfg.preprocess,
                samples: &samples,
                labels: &tuned_labels,
                flip: cfg.flip,
                seed: cfg.seed,
                threads: cfg.threads,
                backbone_batch: cfg.backbone_batch,
                cache_dir: job.cache_dir,
                model_key,
                prior_heads: &cfg.prior_heads,
            },
            &cfg.tune,
            &cfg.heads,
        )?
    };
    let mut trained = BTreeMap::new();
    if let Some(t) = &mut tuned {
        for (w, s) in std::mem::take(&mut t.heads) {
            trained.insert(w.info.name.clone(), (w, s));
        }
    }
    // A fine-tuned head was trained with the tail; the others read the frozen features.
    let others: Vec<&str> = HEAD_ORDER
        .into_iter()
        .filter(|h| !trained.contains_key(*h))
        .collect();
    for (w, s) in train_frozen_heads(job, &samples, &frozen, model_key, &others)? {
        trained.insert(w.info.name.clone(), (w, s));
    }
    let mut head_weights = Vec::new();
    let mut summaries = BTreeMap::new();
    for name in HEAD_ORDER {
        if let Some((weights, summary)) = trained.remove(name) {
            summaries.insert(name.to_string(), summary);
            head_weights.push(weights);
        }
    }
    if head_weights.is_empty() {
        return Err(Error::InvalidArgument(
            "no head to train: the datasets carry no labels with at least two classes".into(),
        ));
    }
    // Photos with a parsing mask, and the training photos without one (the product shots among
    // them are found when the mask is trained).
    let mask_samples: Vec<mask::MaskSample> = samples
        .iter()
        .filter(|s| s.mask.is_some() || s.split == Split::Train)
        .map(|s| mask::MaskSample {
            photo: s.path.clone(),
            mask: s.mask.clone(),
            train: s.split == Split::Train,
        })
        .collect();
    let mut mask_weights = None;
    if cfg.mask.enabled && mask_samples.iter().any(|m| m.train && m.mask.is_some()) {
        let graph = model::mask_feature_graph(&backbone_bytes, job.backbone)?;
        let engine = Engine::from_bytes(&graph, job.backbone, Threads::single(cfg.threads))?;
        let (w, summary) = mask::train_mask(
            &engine,
            &cfg.preprocess,
            &mask_samples,
            &cfg.mask,
            cfg.seed,
            job.cache_dir,
            model_key,
            cfg.backbone_batch,
        )?;
        mask_weights = Some((w, summary));
    }
    let mut info = model_info(job, &head_weights, &summaries, mask_weights.as_ref());
    if let Some(t) = &tuned {
        info.training["tune"] = serde_json::json!(t.summary);
    }
    let mask = mask_weights.as_ref().map(|(w, _)| w);
    let layers = tuned.as_ref().map(|t| &t.layers);
    let bytes = model::build(
        &backbone_bytes,
        job.backbone,
        &head_weights,
        layers,
        mask,
        &info,
    )?;
    if cfg.pixel_colour.hidden > 0 {
        add_pixel_colour(job, &bytes, &samples, &mut info)?;
    }
    info.training["seconds"] = serde_json::json!(start.elapsed().as_secs_f64().round());
    let bytes = model::with_info(&bytes, job.output, &info)?;
    write_atomically(job.output, &bytes)?;
    Ok(TrainSummary {
        output: job.output.to_path_buf(),
        seconds: start.elapsed().as_secs_f64(),
        heads: summaries,
    })
}

/// The key of everything cached for a backbone (ONNX bytes) and preprocessing.
fn model_key(backbone: &[u8], pre: &Preprocess) -> u64 {
    let key = crate::hash::fnv1a(crate::hash::START, backbone);
    crate::hash::fnv1a(
        key,
        serde_json::to_string(pre).unwrap_or_default().as_bytes(),
    )
}

/// Prints how many photos training reads.
fn report_photos(samples: &[&Sample], datasets: usize) {
    eprintln!(
        "{} photos ({} train, {} val) from {} dataset(s)",
        samples.len(),
        samples.iter().filter(|s| s.split == Split::Train).count(),
        samples.iter().filter(|s| s.split == Split::Val).count(),
        datasets
    );
}

/// A head's labels: those seen at least `min_count` times in training, sorted.
fn head_labels(samples: &[&Sample], name: &str, min_count: usize) -> Vec<String> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for s in samples {
        if let (Some(l), Split::Train) = (s.labels.get(name), s.split) {
            *counts.entry(l).or_default() += 1;
        }
    }
    counts
        .iter()
        .filter(|(_, &c)| c >= min_count)
        .map(|(l, _)| l.to_string())
        .collect()
}

/// The heads of `backbone`, when it is a trained model, that `samples` give fewer than two
/// labels to learn: a model trained from it does not have them.
fn heads_not_kept(
    backbone: &[u8],
    name: &Path,
    samples: &[&Sample],
    min_count: usize,
) -> Vec<String> {
    let Ok(info) = model::read_info(backbone, name) else {
        return Vec::new();
    };
    info.heads
        .iter()
        .filter(|h| head_labels(samples, &h.name, min_count).len() < 2)
        .map(|h| h.name.clone())
        .collect()
}

/// Whether any of the heads `names` learns from the second look.
fn learns_second_look(cfg: &TrainConfig, names: &[&str]) -> bool {
    cfg.test_time_flip
        && cfg.second_look.whole()
        && names
            .iter()
            .any(|n| cfg.second_look_heads.iter().any(|h| h == n))
}

/// The pooled backbone features of every photo that the heads on frozen features learn from:
/// the crop's, its mirror image's (with `flip`), and the second look's of a model whose second
/// look is the whole square, for the heads `second_look_heads` names (of `names`, the heads to
/// train).
struct FrozenFeatures {
    plain: features::Rows<f32>,
    flipped: Option<features::Rows<f32>>,
    second: Option<features::Rows<f32>>,
}

/// Computes (or reads back from the cache) the [`FrozenFeatures`] of `paths` for the heads
/// `names`.
fn frozen_features(
    job: &TrainJob,
    backbone: &[u8],
    model_key: u64,
    paths: &[PathBuf],
    names: &[&str],
) -> Result<FrozenFeatures> {
    let cfg = job.config;
    let graph = model::feature_graph(backbone, job.backbone)?;
    let threads = Threads::single(cfg.threads);
    let engine = Engine::from_bytes(&graph, job.backbone, threads)?;
    let rows = |engine: &Engine, input: Input, key: u64, label: &str| {
        features::cached_rows::<f32>(
            engine,
            &cfg.preprocess,
            paths,
            input,
            job.cache_dir,
            key,
            cfg.backbone_batch,
            label,
            model::FEATURES,
            model::FEATURE_DIM,
        )
    };
    let plain = rows(&engine, Input::Crop, model_key, "features")?;
    let flipped = if cfg.flip {
        Some(rows(&engine, Input::Mirrored, model_key, "flipped")?)
    } else {
        None
    };
    let second = if learns_second_look(cfg, names) {
        let look = cfg.second_look;
        let graph = model::second_look_graph(&graph, job.backbone, look, &cfg.preprocess)?;
        let engine = Engine::from_bytes(&graph, job.backbone, threads)?;
        let key = crate::hash::fnv1a(model_key, format!("{look:?}").as_bytes());
        Some(rows(&engine, Input::Square, key, "second looks")?)
    } else {
        None
    };
    Ok(FrozenFeatures {
        plain,
        flipped,
        second,
    })
}

/// Trains the heads `names` (those of them the data labels with at least two classes) on the
/// frozen features: every look of a training photo is a training row; the validation photos'
/// crops calibrate.
fn train_frozen_heads(
    job: &TrainJob,
    samples: &[&Sample],
    frozen: &FrozenFeatures,
    model_key: u64,
    names: &[&str],
) -> Result<Vec<(HeadWeights, heads::HeadSummary)>> {
    let cfg = job.config;
    let mut out = Vec::new();
    for &name in names {
        let labelled: Vec<(usize, &str, Split)> = samples
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.labels.get(name).map(|l| (i, l.as_str(), s.split)))
            .collect();
        let labels = head_labels(samples, name, cfg.min_class_count);
        if labels.len() < 2 {
            continue;
        }
        let index: BTreeMap<&str, usize> = labels
            .iter()
            .enumerate()
            .map(|(i, l)| (l.as_str(), i))
            .collect();
        let second = learns_second_look(cfg, &[name]);
        let mut set = heads::HeadData::new(name, labels.clone(), model::FEATURE_DIM);
        if cfg.prior_heads.iter().any(|h| h == name) {
            let mut counts = vec![0f64; labels.len()];
            for (_, l, split) in &labelled {
                if let (Some(&class), Split::Train) = (index.get(l), split) {
                    counts[class] += 1.0;
                }
            }
            set = set.following_prior(heads::log_prior(&counts, cfg.heads.class_balance));
        }
        for (i, l, split) in &labelled {
            let Some(&class) = index.get(l) else { continue };
            let row = |f: &[f32]| f[i * model::FEATURE_DIM..(i + 1) * model::FEATURE_DIM].to_vec();
            match split {
                Split::Train => {
                    set.push_train(row(&frozen.plain), class);
                    if let Some(f) = &frozen.flipped {
                        set.push_train(row(f), class);
                    }
                    if let Some(f) = frozen.second.as_ref().filter(|_| second) {
                        set.push_train(row(f), class);
                    }
                }
                Split::Val => set.push_val(row(&frozen.plain), class),
            }
        }
        out.push(heads::train_head(
            set,
            &cfg.heads,
            cfg.seed,
            job.cache_dir,
            model_key,
        )?);
    }
    Ok(out)
}

fn model_info(
    job: &TrainJob,
    heads: &[HeadWeights],
    summaries: &BTreeMap<String, heads::HeadSummary>,
    mask: Option<&(crate::mask::MaskWeights, mask::MaskSummary)>,
) -> ModelInfo {
    let datasets: BTreeSet<String> = job
        .data
        .iter()
        .map(|d| format!("{:?}", d.layout).to_lowercase())
        .collect();
    ModelInfo {
        name: job.config.name.clone(),
        preprocess: job.config.preprocess.clone(),
        heads: heads.iter().map(|h| h.info.clone()).collect(),
        training: serde_json::json!({
            "datasets": datasets,
            "config": job.config,
            "heads": summaries,
            "mask": mask.map(|(_, s)| s),
            "fashion_version": env!("CARGO_PKG_VERSION"),
        }),
        pixel_colour: None,
        test_time_flip: job.config.test_time_flip,
        second_look: job.config.second_look,
    }
}

/// The progress bar of a pass over `len` photos, labelled `label`.
fn photo_bar(len: usize, label: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len as u64).with_prefix(label.to_string());
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix:>14} {bar:40} {pos}/{len} photos {per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// The learning rate at `step` of `total` under cosine decay from `base` to 0.
fn cosine_lr(base: f64, step: usize, total: usize) -> f64 {
    base * 0.5 * (1.0 + (std::f64::consts::PI * step as f64 / total.max(1) as f64).cos())
}

/// Writes a file so that readers see either the old or the new content, never a part.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::Fit;

    /// What `train` says on `backbone` with `cfg` and a dataset that does not exist (the
    /// error it would give after its early checks).
    fn train_error(backbone: &Path, cfg: &TrainConfig) -> Error {
        let dir = tempfile::tempdir().unwrap();
        let data = [DataSource {
            path: dir.path().join("no such dataset"),
            layout: Layout::Folders,
        }];
        train(&TrainJob {
            backbone,
            data: &data,
            cache_dir: dir.path(),
            output: &dir.path().join("out.onnx"),
            config: cfg,
        })
        .unwrap_err()
    }

    #[test]
    fn a_trained_model_as_backbone_names_the_heads_the_data_does_not_label() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let model = root.join("models/default.onnx");
        let bytes = std::fs::read(&model).unwrap();
        let sample = |i: usize, labels: &[(&str, &str)]| Sample {
            path: PathBuf::from(format!("{i}.jpg")),
            split: Split::Train,
            group: None,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            attrs: BTreeMap::new(),
            mask: None,
        };
        // Two categories, and one view label only: the view head cannot be learnt either.
        let owned: Vec<Sample> = (0..6)
            .map(|i| {
                let class = if i % 2 == 0 { "Jeans" } else { "Watches" };
                if i == 0 {
                    sample(i, &[("category", class), ("view", "front")])
                } else {
                    sample(i, &[("category", class)])
                }
            })
            .collect();
        let samples: Vec<&Sample> = owned.iter().collect();
        let info = model::read_info(&bytes, &model).unwrap();
        let mut expected: Vec<String> = info
            .heads
            .iter()
            .map(|h| h.name.clone())
            .filter(|h| h != "category")
            .collect();
        expected.sort();
        let mut dropped = heads_not_kept(&bytes, &model, &samples, 1);
        dropped.sort();
        assert_eq!(dropped, expected);
        assert!(dropped.contains(&"view".to_string()), "{dropped:?}");
        // With four photos of a label needed, three of each category are too few: every head
        // is named.
        assert_eq!(
            heads_not_kept(&bytes, &model, &samples, 4).len(),
            info.heads.len()
        );
        // A bare backbone has no heads to lose.
        assert!(heads_not_kept(b"not a model", &model, &samples, 1).is_empty());
    }

    #[test]
    fn a_tail_longer_than_the_backbone_has_is_refused_before_the_data_is_read() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut cfg = TrainConfig::from_file(&root.join("configs/default.toml")).unwrap();
        cfg.tune.blocks = 9;
        let error = |cfg: &TrainConfig| train_error(&root.join("models/default.onnx"), cfg);
        let err = error(&cfg);
        assert!(
            err.to_string().contains("9 inverted-residual blocks"),
            "{err}"
        );
        cfg.tune.heads.clear();
        let err = error(&cfg);
        // Without tuned heads the blocks do not matter: the missing dataset is the error.
        assert!(err.to_string().contains("no such dataset"), "{err}");
    }

    #[test]
    fn a_config_naming_a_head_that_does_not_exist_is_refused() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut cfg = TrainConfig::from_file(&root.join("configs/default.toml")).unwrap();
        assert_eq!(cfg.prior_heads, ["category"]);
        assert_eq!(TrainConfig::default().prior_heads, cfg.prior_heads);
        let error = |cfg: &TrainConfig| train_error(&root.join("models/default.onnx"), cfg);
        cfg.prior_heads.push("colour".into());
        let err = error(&cfg).to_string();
        assert!(err.contains("prior_heads names \"colour\""), "{err}");
        cfg.prior_heads.clear();
        cfg.tune.heads.push("pose".into());
        let err = error(&cfg).to_string();
        assert!(err.contains("tune.heads names \"pose\""), "{err}");
        cfg.tune.heads.pop();
        cfg.second_look_heads.push("fabric".into());
        let err = error(&cfg).to_string();
        assert!(err.contains("second_look_heads names \"fabric\""), "{err}");
        cfg.second_look_heads.pop();
        assert!(error(&cfg).to_string().contains("no such dataset"));
    }

    #[test]
    fn training_heads_again_takes_only_heads_on_frozen_features() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let cfg = TrainConfig::from_file(&root.join("configs/default.toml")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let data = [DataSource {
            path: dir.path().join("no such dataset"),
            layout: Layout::Fpi,
        }];
        let job = TrainJob {
            backbone: &root.join("models/default.onnx"),
            data: &data,
            cache_dir: dir.path(),
            output: &dir.path().join("out.onnx"),
            config: &cfg,
        };
        let err = |heads: &[&str]| {
            let heads: Vec<String> = heads.iter().map(|h| h.to_string()).collect();
            retrain_heads(&job, &heads).unwrap_err().to_string()
        };
        // `category` is fine-tuned with the tail; `fabric` is no head at all.
        for bad in ["category", "fabric"] {
            let e = err(&["article_type", bad]);
            assert!(
                e.contains(&format!(
                    "{bad:?} is not one of the model's heads on frozen features"
                )),
                "{e}"
            );
        }
        assert!(err(&["article_type"]).contains("no such dataset"));
        // Photos in class folders label the category, not the article type: refused before any
        // feature is computed.
        for (class, photo) in [("Tees_Tanks", "tee-navy.jpg"), ("Dresses", "dress-red.jpg")] {
            let folder = dir.path().join("shop").join(class);
            std::fs::create_dir_all(&folder).unwrap();
            std::fs::copy(root.join("samples").join(photo), folder.join(photo)).unwrap();
        }
        let data = [DataSource {
            path: dir.path().join("shop"),
            layout: Layout::Folders,
        }];
        let job = TrainJob { data: &data, ..job };
        let e = retrain_heads(&job, &["article_type".to_string()]).unwrap_err();
        assert!(e.to_string().contains("fewer than two labels"), "{e}");
        assert!(!dir.path().join("out.onnx").exists());
    }

    #[test]
    fn a_flip_the_backbone_cannot_take_is_refused_before_the_data_is_read() {
        use onnx_protobuf::Message;
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut cfg = TrainConfig::from_file(&root.join("configs/default.toml")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let bytes = std::fs::read(root.join("models/default.onnx")).unwrap();
        let mut old = onnx_protobuf::ModelProto::parse_from_bytes(&bytes).unwrap();
        for o in &mut old.opset_import {
            o.version = 13;
        }
        let backbone = dir.path().join("opset13.onnx");
        std::fs::write(&backbone, old.write_to_bytes().unwrap()).unwrap();
        let error = |cfg: &TrainConfig| train_error(&backbone, cfg);
        let err = error(&cfg);
        assert!(err.to_string().contains("opset 15"), "{err}");
        cfg.test_time_flip = false;
        let err = error(&cfg);
        assert!(err.to_string().contains("no such dataset"), "{err}");
    }

    #[test]
    fn boosted_trees_and_a_fixed_head_weight_are_pixel_colour_settings_only() {
        let cfg: TrainConfig = toml::from_str(
            "[pixel_colour]\nhead_weight = 0.2\nhidden = 32\n[pixel_colour.trees]\nrounds = 10\n",
        )
        .unwrap();
        assert_eq!(cfg.pixel_colour.head_weight, Some(0.2));
        let trees = cfg.pixel_colour.trees.clone().unwrap();
        assert_eq!(trees.rounds, 10);
        assert_eq!(trees.depth, TreesConfig::default().depth);
        // Network keys a section leaves out take the pixel colour defaults, not `[heads]`'s.
        let network = cfg.pixel_colour.network();
        assert_eq!(
            (network.hidden, network.epochs, network.batch),
            (32, 30, 128)
        );
        assert_eq!(network.dropout, HeadConfig::default().dropout);
        // Without the section: the pixel colour network, and the weight fitted.
        let plain: TrainConfig = toml::from_str("").unwrap();
        assert!(plain.pixel_colour.trees.is_none());
        assert!(plain.pixel_colour.head_weight.is_none());
        assert_eq!(plain.pixel_colour.network().hidden, 64);
        for bad in [
            "[heads.trees]\nrounds = 10\n",
            "[heads]\nhead_weight = 0.5\n",
            "[pixel_colour.trees]\nleaves = 3\n",
            "[pixel_colour]\nhiden = 3\n",
        ] {
            assert!(toml::from_str::<TrainConfig>(bad).is_err(), "{bad}");
        }
        // Settings that cannot train are refused before any photo is read.
        assert!(cfg.pixel_colour.check().is_ok() && plain.pixel_colour.check().is_ok());
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        for (bad, says) in [
            (
                "head_weight = 1.5",
                "head_weight must be from 0 to 1, not 1.5",
            ),
            ("[pixel_colour.trees]\ndepth = 0", "rounds and depth"),
            (
                "[pixel_colour.trees]\nlearning_rate = 0.0",
                "learning_rate must be above 0",
            ),
            (
                "[pixel_colour.trees]\ncolsample = 1.5",
                "subsample and colsample",
            ),
        ] {
            let cfg: TrainConfig = toml::from_str(&format!("[pixel_colour]\n{bad}\n")).unwrap();
            let err = train_error(&root.join("models/default.onnx"), &cfg).to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn shipped_config_is_the_one_the_built_in_model_was_trained_with() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let cfg = TrainConfig::from_file(&root.join("configs/default.toml")).unwrap();
        let bytes = std::fs::read(root.join("models/default.onnx")).unwrap();
        let graph = crate::onnx::Graph::from_bytes(&bytes, Path::new("default.onnx")).unwrap();
        let meta: serde_json::Value =
            serde_json::from_str(graph.metadata(model::METADATA_KEY).unwrap()).unwrap();
        let saved: TrainConfig =
            serde_json::from_value(meta["training"]["config"].clone()).unwrap();
        assert_eq!(
            serde_json::to_value(&cfg).unwrap(),
            serde_json::to_value(&saved).unwrap()
        );
        let used: Preprocess = serde_json::from_value(meta["preprocess"].clone()).unwrap();
        assert_eq!(used, cfg.preprocess);
        assert_eq!(used.fit, Fit::Pad);
    }
}
