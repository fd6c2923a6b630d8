//! A model is one ONNX file: the backbone, a pooling layer that turns its last feature map into
//! one feature vector, and one small classifier per head (category, view, article type, colour
//! family). Heads may instead read a fine-tuned copy of the backbone's last layers ([`Tail`],
//! [`TunedLayers`]), run beside the original. Labels, preprocessing constants, calibration and a
//! training summary travel in the file's `metadata_props` under the key [`METADATA_KEY`], as JSON
//! ([`ModelInfo`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::engine::{Engine, Threads};
use crate::error::{Error, Result};
use crate::mirror::{Combine, SecondLook};
use crate::onnx::{Attr, Graph};
use crate::preprocess::Preprocess;

/// The `metadata_props` key holding [`ModelInfo`] as JSON.
pub const METADATA_KEY: &str = "fashion";
/// The backbone's global-average-pooled output.
pub const POOLED: &str = "pooled";
/// The backbone's last feature map, `[N, 1280, 7, 7]`.
pub const FEAT_S32: &str = "feat_s32";
/// The feature vector the heads read: average- and max-pooled `feat_s32`, `[N, 2560]`.
pub const FEATURES: &str = "features";
/// Length of [`FEATURES`].
pub const FEATURE_DIM: usize = 2560;
const CHANNELS: i64 = 1280;
/// The last feature map recomputed by the layers fine-tuned for some heads ([`TunedLayers`]),
/// `[N, 1280, 7, 7]`.
pub const TUNED_S32: &str = "tuned_s32";
/// Average- and max-pooled [`TUNED_S32`], `[N, 2560]`: what the tuned heads read.
pub const TUNED_FEATURES: &str = "tuned_features";

/// One convolution of the [`Tail`]: its initializers and weight shape.
#[derive(Debug, Clone)]
pub struct TailConv {
    pub weight: String,
    pub bias: String,
    pub out_channels: usize,
    /// Input channels per output channel: 1 for a depthwise convolution.
    pub group_channels: usize,
    /// Filter side (1 for a pointwise convolution).
    pub kernel: usize,
}

impl TailConv {
    /// The weight's shape as ONNX stores it.
    pub fn dims(&self) -> [usize; 4] {
        [
            self.out_channels,
            self.group_channels,
            self.kernel,
            self.kernel,
        ]
    }

    pub fn depthwise(&self) -> bool {
        self.kernel > 1
    }

    /// The convolution producing `output` if it has a weight and a bias, stride 1, no dilation
    /// and "same" padding, and is pointwise or depthwise; and its input.
    fn of<'g>(g: &'g Graph, output: &str) -> Option<(TailConv, &'g str)> {
        let (op, inputs) = g.producer(output)?;
        if op != "Conv" || inputs.len() != 3 {
            return None;
        }
        let (d, _) = g.initializer_f32(inputs[1])?;
        if d.len() != 4 || d[2] != d[3] || d[2].is_multiple_of(2) {
            return None;
        }
        let k = d[2];
        let ints = |a: &str| g.producer_ints(output, a);
        let group = ints("group").map_or(1, |v| v[0] as usize);
        let ones = |a: &str| ints(a).is_none_or(|v| v.iter().all(|&s| s == 1));
        let strides_one = ones("strides") && ones("dilations");
        let pad = (k / 2) as i64;
        let same = ints("pads").map_or(k == 1, |v| v.iter().all(|&p| p == pad));
        let shape_ok = if k == 1 {
            group == 1
        } else {
            group == d[0] && d[1] == 1
        };
        if !strides_one || !same || !shape_ok {
            return None;
        }
        let conv = TailConv {
            weight: inputs[1].to_string(),
            bias: inputs[2].to_string(),
            out_channels: d[0],
            group_channels: d[1],
            kernel: k,
        };
        Some((conv, inputs[0]))
    }
}

/// One inverted-residual block of the tail: 1x1 expansion, ReLU6, depthwise convolution,
/// ReLU6, 1x1 projection, plus the block's input when it has a residual connection.
#[derive(Debug, Clone)]
pub struct TailBlock {
    pub expand: TailConv,
    pub depthwise: TailConv,
    pub project: TailConv,
    pub residual: bool,
}

impl TailBlock {
    /// The block whose projection produces `project_out` (and whose input is `skip`, for a
    /// block with a residual connection), and its input.
    fn ending<'g>(
        g: &'g Graph,
        project_out: &str,
        skip: Option<&str>,
    ) -> Option<(TailBlock, &'g str)> {
        let (project, p_in) = TailConv::of(g, project_out)?;
        let (depthwise, d_in) = TailConv::of(g, clip_input(g, p_in)?)?;
        let (expand, e_in) = TailConv::of(g, clip_input(g, d_in)?)?;
        let chained = !project.depthwise()
            && depthwise.depthwise()
            && !expand.depthwise()
            && depthwise.out_channels == expand.out_channels
            && project.group_channels == depthwise.out_channels
            && skip.is_none_or(|s| s == e_in);
        let block = TailBlock {
            expand,
            depthwise,
            project,
            residual: skip.is_some(),
        };
        chained.then_some((block, e_in))
    }
}

/// The layers fine-tuned for some heads, found by walking back from `feat_s32`: the head
/// convolution (1x1 to 1280 channels, ReLU6) and the whole inverted-residual blocks before it
/// (stride 1, on the 7x7 maps).
#[derive(Debug, Clone)]
pub struct Tail {
    /// The tensor the tail reads (`[N, C, 7, 7]`): the input of its first block, or of the head
    /// convolution when it has no block.
    pub input: String,
    pub input_channels: usize,
    pub blocks: Vec<TailBlock>,
    pub head: TailConv,
}

impl Tail {
    /// The tail with `blocks` whole blocks of a backbone graph; `None` if the graph does not
    /// end in that many EfficientNet blocks and a head convolution.
    pub fn of(g: &Graph, blocks: usize) -> Option<Tail> {
        let (op, inputs) = g.producer(FEAT_S32)?;
        if op != "Clip" {
            return None;
        }
        let (head, mut x) = TailConv::of(g, inputs[0])?;
        if head.depthwise() || head.out_channels != CHANNELS as usize {
            return None;
        }
        let mut found = Vec::new();
        for _ in 0..blocks {
            let (op, inputs) = g.producer(x)?;
            let (block, input) = match op {
                // Either input of the residual Add may be the projection.
                "Add" if inputs.len() == 2 => TailBlock::ending(g, inputs[0], Some(inputs[1]))
                    .or_else(|| TailBlock::ending(g, inputs[1], Some(inputs[0])))?,
                _ => TailBlock::ending(g, x, None)?,
            };
            found.push(block);
            x = input;
        }
        found.reverse();
        let input_channels = found
            .first()
            .map_or(head.group_channels, |b| b.expand.group_channels);
        Some(Tail {
            input: x.to_string(),
            input_channels,
            blocks: found,
            head,
        })
    }

    /// Every convolution, in the order the tail runs them.
    pub fn convs(&self) -> Vec<&TailConv> {
        self.blocks
            .iter()
            .flat_map(|b| [&b.expand, &b.depthwise, &b.project])
            .chain([&self.head])
            .collect()
    }
}

/// The input of the `Clip` (ReLU6) that produces `output`.
fn clip_input<'g>(g: &'g Graph, output: &str) -> Option<&'g str> {
    match g.producer(output)? {
        ("Clip", inputs) => Some(inputs[0]),
        _ => None,
    }
}

/// The tail's weights after fine-tuning: a second copy of its convolutions, run beside the
/// original ones, whose pooled output [`TUNED_FEATURES`] feeds the heads marked `tuned`.
#[derive(Debug, Clone)]
pub struct TunedLayers {
    /// How many whole blocks the tail has ([`Tail::of`]).
    pub blocks: usize,
    /// Weight and bias of each of [`Tail::convs`], as ONNX lays them out.
    pub convs: Vec<(Vec<f32>, Vec<f32>)>,
}

impl TunedLayers {
    /// The layers as the model stores them: weights rounded to float16 (half the bytes; the
    /// biases stay float32).
    pub fn rounded(&self) -> TunedLayers {
        let round = |w: &Vec<f32>| w.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
        TunedLayers {
            blocks: self.blocks,
            convs: self
                .convs
                .iter()
                .map(|(w, b)| (round(w), b.clone()))
                .collect(),
        }
    }
}

/// One classification head as stored in a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadInfo {
    /// Head name and the name of its output (probabilities, `[N, labels]`).
    pub name: String,
    /// Class labels, in output order.
    pub labels: Vec<String>,
    /// Width of the hidden layer.
    pub hidden: usize,
    /// Calibration temperature already folded into the output layer.
    pub temperature: f32,
    /// Whether the head reads [`TUNED_FEATURES`] instead of [`FEATURES`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tuned: bool,
    /// Added to the calibrated logits (also folded into the output layer): `class_balance ×
    /// ln(training photos of the class)`, which takes the loss's class weights back out of the
    /// answer, so that it follows how often each class occurs (empty: none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log_prior: Vec<f32>,
}

impl HeadInfo {
    /// One row of logits (before the temperature) as the head answers with them: divided by
    /// the temperature, plus the log prior. The model's output layer holds its weights so.
    pub fn calibrated(&self, logits: &[f32]) -> Vec<f32> {
        logits
            .iter()
            .enumerate()
            .map(|(k, v)| v / self.temperature + self.log_prior.get(k).copied().unwrap_or(0.0))
            .collect()
    }

    /// The head's probabilities from its logits (before the temperature).
    pub fn probabilities(&self, logits: &[f32]) -> Vec<f32> {
        softmax(&self.calibrated(logits), 1.0)
    }

    /// The probabilities (model label order; labels not listed are 0) with which a photo votes
    /// when the photos of one product are combined: without the head's log prior, so that the
    /// vote weighs what each photo shows and the training frequencies do not count once per
    /// photo. A head without a prior votes with its probabilities as they are.
    pub fn vote(&self, probs: &[f32]) -> Vec<f32> {
        if self.log_prior.len() != probs.len() {
            return probs.to_vec();
        }
        let raw: Vec<f32> = probs
            .iter()
            .zip(&self.log_prior)
            .map(|(p, l)| p * (-l).exp())
            .collect();
        let sum: f32 = raw.iter().sum();
        if sum > 0.0 {
            raw.iter().map(|v| v / sum).collect()
        } else {
            raw
        }
    }

    /// The last feature map under what the head reads: [`TUNED_S32`] for a fine-tuned head,
    /// else [`FEAT_S32`] (what heat maps of its answers are drawn from).
    pub fn feature_map(&self) -> &'static str {
        if self.tuned {
            TUNED_S32
        } else {
            FEAT_S32
        }
    }
}

/// Everything a model file says about itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Model name shown to users.
    pub name: String,
    /// The preprocessing the model was trained with.
    pub preprocess: Preprocess,
    /// The classification heads.
    pub heads: Vec<HeadInfo>,
    /// Training summary: data, settings, validation metrics, time taken.
    #[serde(default)]
    pub training: serde_json::Value,
    /// The colour family classifier on garment pixels that votes with the `colour_family` head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pixel_colour: Option<PixelColourHead>,
    /// Whether the graph looks at each photo twice and averages the two ([`crate::mirror`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub test_time_flip: bool,
    /// What the second look sees, with [`ModelInfo::test_time_flip`] (models without this key
    /// mirror the crop).
    #[serde(default, skip_serializing_if = "SecondLook::is_mirror")]
    pub second_look: SecondLook,
}

impl ModelInfo {
    /// Whether the model takes the whole square ([`Preprocess::square`]) and cuts its crop
    /// itself, rather than the crop.
    pub fn takes_square(&self) -> bool {
        self.test_time_flip && self.second_look.whole()
    }

    /// Side of the square photo the model takes: the crop, or the whole square for a model whose
    /// second look is the whole square.
    pub fn input_side(&self) -> u32 {
        if self.takes_square() {
            self.preprocess.square_side()
        } else {
            self.preprocess.crop
        }
    }
}

/// A colour family classifier on the garment's pixels: the [`crate::colour::colour_features`]
/// of the pixels the palette uses and, for heads trained since they were added, how those pixels
/// are spread over the photo ([`crate::colour::ColourPixels::region_features`]) and the
/// garment's low-level features ([`crate::mask::GARMENT_FEATURES`]); a small network or boosted
/// trees ([`PixelClassifier`]). It is run by `fashion` itself rather than in the ONNX graph (its
/// input comes from the garment mask). Its answer is combined with the
/// `colour_family` head's as `p ~ (p_head^head_weight * p_pixels)^(1 / fusion_temperature)`:
/// each votes with its probabilities, the head's vote weighted, and the weight and the
/// temperature (fitted together on the validation split, or the weight set by the training
/// config: 0 leaves the head out) keep the product calibrated.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PixelColourHead {
    /// CIELAB anchor colours of the features (the built-in vocabulary when it was trained).
    pub anchors: Vec<[f32; 3]>,
    /// The classifier; its labels are the `colour_family` head's, in the same order.
    pub head: PixelClassifier,
    pub fusion_temperature: f32,
    /// Weight of the `colour_family` head's log-probabilities in the fusion (1 for heads
    /// trained before it was fitted).
    #[serde(default = "one")]
    pub head_weight: f32,
    /// Whether its features include [`crate::colour::ColourPixels::region_features`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub regions: bool,
    /// Whether its features end with the model's [`crate::mask::GARMENT_FEATURES`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub garment_features: bool,
}

fn one() -> f32 {
    1.0
}

impl PixelColourHead {
    /// Length of its input: see [`PixelColourHead::features`].
    pub fn input_len(&self) -> usize {
        Self::input_len_of(self.anchors.len(), self.regions, self.garment_features)
    }

    /// Length of the input of a head with `anchors` anchor colours that reads the region
    /// features or not and the model's garment features or not.
    pub fn input_len_of(anchors: usize, regions: bool, garment_features: bool) -> usize {
        crate::colour::colour_features_len(anchors)
            + if regions {
                crate::colour::REGION_FEATURES_LEN
            } else {
                0
            }
            + if garment_features {
                crate::mask::GARMENT_FEATURES_DIM
            } else {
                0
            }
    }

    /// Its input for a photo whose garment is the pixels of `pixels` under `mask`: the colour
    /// features of the garment's pixels, then their region features and the model's garment
    /// features where the head reads them. [`Model::from_bytes`] refuses a model whose head
    /// reads an output the model lacks; should `model` still be `None`, zeros stand in.
    pub fn features(
        &self,
        pixels: &crate::colour::ColourPixels,
        mask: &[bool],
        model: Option<&[f32]>,
    ) -> Vec<f32> {
        let zeros = [0f32; crate::mask::GARMENT_FEATURES_DIM];
        let model = self.garment_features.then(|| model.unwrap_or(&zeros));
        Self::input(pixels, mask, &self.anchors, self.regions, model)
    }

    /// The input of a head with these `anchors` that reads the region features (`regions`) or
    /// not and the model's garment features (`model`) or not (`None`): what
    /// [`PixelColourHead::features`] and training compute.
    pub fn input(
        pixels: &crate::colour::ColourPixels,
        mask: &[bool],
        anchors: &[[f32; 3]],
        regions: bool,
        model: Option<&[f32]>,
    ) -> Vec<f32> {
        let mut f = crate::colour::colour_features(&pixels.garment(mask), anchors);
        if regions {
            f.extend(pixels.region_features(mask));
        }
        f.extend_from_slice(model.unwrap_or_default());
        f
    }

    /// Class probabilities from features, calibrated by the head's temperature.
    pub fn probabilities(&self, features: &[f32]) -> Vec<f32> {
        let info = self.head.info();
        info.probabilities(&self.head.logits(features))
    }

    /// The combined distribution of the `colour_family` head's probabilities and this head's.
    pub fn fuse(&self, head: &[f32], pixels: &[f32]) -> Vec<f32> {
        Self::fuse_with(head, pixels, self.head_weight, self.fusion_temperature)
    }

    /// [`PixelColourHead::fuse`] with this head weight and fusion temperature (for fitting
    /// them).
    pub(crate) fn fuse_with(
        head: &[f32],
        pixels: &[f32],
        head_weight: f32,
        temperature: f32,
    ) -> Vec<f32> {
        let log: Vec<f32> = head
            .iter()
            .zip(pixels)
            .map(|(a, b)| head_weight * a.max(1e-12).ln() + b.max(1e-12).ln())
            .collect();
        softmax(&log, temperature)
    }
}

/// `softmax(x / t)`.
pub fn softmax(x: &[f32], t: f32) -> Vec<f32> {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = x.iter().map(|v| ((v - max) / t).exp()).collect();
    let sum: f32 = e.iter().sum();
    e.iter().map(|v| v / sum).collect()
}

/// The classifier of a [`PixelColourHead`]: a small network like the other heads', or boosted
/// trees ([`TreeHead`]). A head file names its kind by its fields (`trees` or `w1`...), so
/// heads written before the trees read as they were trained.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum PixelClassifier {
    Trees(TreeHead),
    Network(HeadWeights),
}

impl<'de> Deserialize<'de> for PixelClassifier {
    /// By the `trees` field, so that a head that fails to read says why (serde's untagged
    /// enums only say that no kind matched).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        let value = serde_json::Value::deserialize(d)?;
        if value.get("trees").is_some() {
            serde_json::from_value(value).map(PixelClassifier::Trees)
        } else {
            serde_json::from_value(value).map(PixelClassifier::Network)
        }
        .map_err(D::Error::custom)
    }
}

impl PixelClassifier {
    /// Its labels and calibration.
    pub fn info(&self) -> &HeadInfo {
        match self {
            PixelClassifier::Trees(t) => &t.info,
            PixelClassifier::Network(h) => &h.info,
        }
    }

    /// Logits (before the temperature) of one feature row.
    pub fn logits(&self, features: &[f32]) -> Vec<f32> {
        match self {
            PixelClassifier::Trees(t) => t.logits(features),
            PixelClassifier::Network(h) => h.logits(features),
        }
    }

    /// Whether it takes rows of `d` features and answers with its labels.
    pub fn fits(&self, d: usize) -> bool {
        let c = self.info().labels.len();
        match self {
            PixelClassifier::Trees(t) => t.model.n_features() == d && t.model.n_outputs() == c,
            PixelClassifier::Network(h) => {
                h.w1.len() == h.info.hidden * d
                    && h.b1.len() == h.info.hidden
                    && h.w2.len() == c * h.info.hidden
                    && h.b2.len() == c
            }
        }
    }
}

/// Gradient-boosted trees (multiclass softmax, trained by the `hessboost` crate): one logit per
/// class, the sum of its trees' leaves. Stored as `hessboost`'s binary model format in base64.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "TreeHeadFile", into = "TreeHeadFile")]
pub struct TreeHead {
    pub info: HeadInfo,
    model: std::sync::Arc<hessboost::model::BoostedModel>,
}

/// How a [`TreeHead`] is written in a model's metadata.
#[derive(Serialize, Deserialize)]
struct TreeHeadFile {
    info: HeadInfo,
    trees: String,
}

impl TreeHead {
    /// The head of a trained model (`info`'s temperature divides its margins).
    pub fn new(info: HeadInfo, model: hessboost::model::BoostedModel) -> Self {
        TreeHead {
            info,
            model: std::sync::Arc::new(model),
        }
    }

    /// The margins (logits) of one row; zeros when the row does not fit the trees (a model
    /// whose head does not fit its features is refused when it is read).
    pub fn logits(&self, features: &[f32]) -> Vec<f32> {
        let mut out = vec![0f32; self.model.n_outputs()];
        if self
            .model
            .predict_margin_row_into(features, hessboost::prelude::Iterations::Best, &mut out)
            .is_err()
        {
            out.fill(0.0);
        }
        out
    }
}

impl TryFrom<TreeHeadFile> for TreeHead {
    type Error = String;
    fn try_from(f: TreeHeadFile) -> std::result::Result<Self, String> {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&f.trees)
            .map_err(|e| format!("pixel colour trees: {e}"))?;
        let model =
            hessboost::model::BoostedModel::decode(bytes, hessboost::model::ModelFormat::Binary)
                .map_err(|e| format!("pixel colour trees: {e}"))?;
        Ok(TreeHead::new(f.info, model))
    }
}

impl From<TreeHead> for TreeHeadFile {
    fn from(t: TreeHead) -> Self {
        use base64::Engine as _;
        // Encoding a model that was decoded or trained cannot fail (the format holds any
        // forest of this size); should it, the head is written without trees and refused
        // when read.
        let bytes = t
            .model
            .encode(hessboost::model::ModelFormat::Binary)
            .unwrap_or_default();
        TreeHeadFile {
            info: t.info,
            trees: base64::engine::general_purpose::STANDARD.encode(bytes),
        }
    }
}

/// Trained weights of one head: `hidden = relu(W1 x + b1)`, `logits = W2 hidden + b2`, with `W`
/// stored row-major as `[out, in]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeadWeights {
    pub info: HeadInfo,
    pub w1: Vec<f32>,
    pub b1: Vec<f32>,
    pub w2: Vec<f32>,
    pub b2: Vec<f32>,
}

impl HeadWeights {
    /// Logits (before the temperature) of each row of `x`, row after row.
    pub fn logits(&self, x: &[f32]) -> Vec<f32> {
        let (h, c) = (self.info.hidden, self.info.labels.len());
        let d = self.w1.len() / h.max(1);
        let mut out = Vec::with_capacity(x.len() / d.max(1) * c);
        let mut a = vec![0f32; h];
        for row in x.chunks_exact(d) {
            for (i, ai) in a.iter_mut().enumerate() {
                let wr = &self.w1[i * d..(i + 1) * d];
                *ai = (self.b1[i] + wr.iter().zip(row).map(|(p, q)| p * q).sum::<f32>()).max(0.0);
            }
            for k in 0..c {
                let wr = &self.w2[k * h..(k + 1) * h];
                out.push(self.b2[k] + wr.iter().zip(&a).map(|(p, q)| p * q).sum::<f32>());
            }
        }
        out
    }
}

/// Adds the `features` node (average- and max-pooled `feat_s32`) to a backbone graph, after
/// removing anything beyond the backbone (so a trained model can serve as the backbone of the
/// next one).
fn add_features(g: &mut Graph) {
    g.set_outputs(&[(POOLED, vec![CHANNELS]), (FEAT_S32, vec![CHANNELS, 7, 7])]);
    g.node(
        "ReduceMax",
        &[FEAT_S32],
        "feat_s32_max",
        vec![("axes", Attr::Ints(vec![2, 3])), ("keepdims", Attr::Int(0))],
    );
    g.node(
        "Concat",
        &[POOLED, "feat_s32_max"],
        FEATURES,
        vec![("axis", Attr::Int(1))],
    );
}

/// The backbone (ONNX bytes; `name` names it in errors) with one output, `features`: what
/// training caches.
pub fn feature_graph(backbone: &[u8], name: &Path) -> Result<Vec<u8>> {
    let mut g = backbone_graph(backbone, name)?;
    add_features(&mut g);
    g.set_outputs(&[(FEATURES, vec![FEATURE_DIM as i64])]);
    g.to_bytes()
}

/// A single-look graph (ONNX bytes, such as [`feature_graph`]'s) that takes the whole square
/// and sees only the second look `look` of it, as a model with that second look sees it:
/// training learns from the looks the model will take.
pub fn second_look_graph(
    graph: &[u8],
    name: &Path,
    look: SecondLook,
    pre: &Preprocess,
) -> Result<Vec<u8>> {
    if !look.whole() {
        return Err(Error::InvalidArgument(format!(
            "the second look {look:?} does not take the whole square"
        )));
    }
    let mut g = Graph::from_bytes(graph, name)?;
    flip_fits(&g, name)?;
    let inputs = g.input_names();
    let [input] = &inputs[..] else {
        return Err(Error::bad_model(name, "a model must have one input"));
    };
    crate::mirror::only_whole_look(&mut g, input, look, pre.crop, pre.square_side());
    g.to_bytes()
}

/// The backbone (ONNX bytes) with the feature maps the garment mask reads as its outputs:
/// what training the mask head runs.
pub fn mask_feature_graph(backbone: &[u8], name: &Path) -> Result<Vec<u8>> {
    let mut g = backbone_graph(backbone, name)?;
    let outputs: Vec<(&str, Vec<i64>)> = crate::mask::MASK_INPUTS
        .iter()
        .map(|(n, c, s)| (*n, vec![*c as i64, *s as i64, *s as i64]))
        .collect();
    g.set_outputs(&outputs);
    g.to_bytes()
}

/// The backbone (ONNX bytes) with one output, the input of its [`Tail`] of `blocks` blocks:
/// what fine-tuning caches. Also returns the tail and its weights as the backbone has them.
pub fn tail_graph(
    backbone: &[u8],
    name: &Path,
    blocks: usize,
) -> Result<(Vec<u8>, Tail, TunedLayers)> {
    let mut g = backbone_graph(backbone, name)?;
    let tail = Tail::of(&g, blocks).ok_or_else(|| {
        Error::bad_model(
            name,
            format!(
                "cannot fine-tune this backbone: feat_s32 is not made by a 1x1 convolution after \
                 {blocks} inverted-residual blocks of stride 1"
            ),
        )
    })?;
    let get = |n: &str| {
        g.initializer_f32(n)
            .map(|(_, v)| v)
            .ok_or_else(|| Error::bad_model(name, format!("no float initializer {n:?}")))
    };
    let convs = tail
        .convs()
        .iter()
        .map(|c| Ok((get(&c.weight)?, get(&c.bias)?)))
        .collect::<Result<_>>()?;
    let initial = TunedLayers { blocks, convs };
    g.set_outputs(&[(tail.input.as_str(), vec![tail.input_channels as i64, 7, 7])]);
    Ok((g.to_bytes()?, tail, initial))
}

/// Adds the fine-tuned copy of the tail and [`TUNED_FEATURES`] to a graph.
fn add_tuned(g: &mut Graph, tail: &Tail, t: &TunedLayers) {
    g.initializer("tuned.min", &[], vec![0.0]);
    g.initializer("tuned.max", &[], vec![6.0]);
    let convs = tail.convs();
    let conv = |g: &mut Graph, i: usize, input: &str, relu6: bool| -> String {
        let (c, (w, b)) = (convs[i], &t.convs[i]);
        let (wn, bn, out) = (
            format!("tuned.{i}.w"),
            format!("tuned.{i}.b"),
            format!("tuned.{i}"),
        );
        // Stored as float16 ([`TunedLayers::rounded`]).
        g.initializer_f16(&format!("tuned.{i}.w16"), &wn, &c.dims(), w);
        g.initializer(&bn, &[c.out_channels], b.clone());
        let attrs = if c.depthwise() {
            let (k, p) = (c.kernel as i64, (c.kernel / 2) as i64);
            vec![
                ("group", Attr::Int(c.out_channels as i64)),
                ("kernel_shape", Attr::Ints(vec![k, k])),
                ("pads", Attr::Ints(vec![p, p, p, p])),
            ]
        } else {
            vec![]
        };
        g.node("Conv", &[input, &wn, &bn], &out, attrs);
        if !relu6 {
            return out;
        }
        let clipped = if i + 1 == convs.len() {
            TUNED_S32.to_string()
        } else {
            format!("tuned.{i}.relu6")
        };
        g.node("Clip", &[&out, "tuned.min", "tuned.max"], &clipped, vec![]);
        clipped
    };
    let mut x = tail.input.clone();
    let mut i = 0;
    for block in &tail.blocks {
        let e = conv(g, i, &x, true);
        let d = conv(g, i + 1, &e, true);
        let p = conv(g, i + 2, &d, false);
        i += 3;
        x = if block.residual {
            let sum = format!("tuned.{}.add", i - 1);
            g.node("Add", &[&p, &x], &sum, vec![]);
            sum
        } else {
            p
        };
    }
    conv(g, i, &x, true);
    for (op, out) in [("ReduceMean", "tuned.avg"), ("ReduceMax", "tuned.max_pool")] {
        g.node(
            op,
            &[TUNED_S32],
            out,
            vec![("axes", Attr::Ints(vec![2, 3])), ("keepdims", Attr::Int(0))],
        );
    }
    g.node(
        "Concat",
        &["tuned.avg", "tuned.max_pool"],
        TUNED_FEATURES,
        vec![("axis", Attr::Int(1))],
    );
}

/// Parses a backbone and checks it has the outputs a model is built on. A trained model can
/// serve as a backbone too; its test-time flip is taken out first.
fn backbone_graph(bytes: &[u8], path: &Path) -> Result<Graph> {
    let mut g = Graph::from_bytes(bytes, path)?;
    let crop = info_of(&g, path).map_or(Preprocess::default().crop, |i| i.preprocess.crop);
    crate::mirror::remove(&mut g, crop);
    check_backbone(&g, path)?;
    Ok(g)
}

fn check_backbone(g: &Graph, path: &Path) -> Result<()> {
    let outs = g.output_names();
    for want in [POOLED, FEAT_S32] {
        if !outs.iter().any(|o| o == want) {
            return Err(Error::bad_model(
                path,
                format!("not a backbone: it has no output named {want:?}"),
            ));
        }
    }
    Ok(())
}

/// Builds a complete model: backbone (ONNX bytes; `name` names it in errors) + features + heads,
/// with `info` in its metadata.
pub fn build(
    backbone: &[u8],
    name: &Path,
    heads: &[HeadWeights],
    tuned: Option<&TunedLayers>,
    mask: Option<&crate::mask::MaskWeights>,
    info: &ModelInfo,
) -> Result<Vec<u8>> {
    let mut g = backbone_graph(backbone, name)?;
    add_features(&mut g);
    let mut outputs = vec![
        (POOLED, vec![CHANNELS]),
        (FEAT_S32, vec![CHANNELS, 7, 7]),
        (FEATURES, vec![FEATURE_DIM as i64]),
    ];
    if let Some(t) = tuned {
        let tail = Tail::of(&g, t.blocks)
            .ok_or_else(|| Error::bad_model(name, "the backbone has no tail to fine-tune"))?;
        let convs = tail.convs();
        let fits = convs.len() == t.convs.len()
            && convs.iter().zip(&t.convs).all(|(c, (w, b))| {
                w.len() == c.dims().iter().product::<usize>() && b.len() == c.out_channels
            });
        if !fits {
            return Err(Error::Training(
                "the tuned layers do not fit the backbone's tail".into(),
            ));
        }
        add_tuned(&mut g, &tail, t);
        outputs.push((TUNED_S32, vec![CHANNELS, 7, 7]));
        outputs.push((TUNED_FEATURES, vec![FEATURE_DIM as i64]));
    }
    for h in heads {
        if h.info.tuned && tuned.is_none() {
            return Err(Error::Training(format!(
                "head {} reads tuned features, but there are no tuned layers",
                h.info.name
            )));
        }
        let input = if h.info.tuned {
            TUNED_FEATURES
        } else {
            FEATURES
        };
        let n = &h.info.name;
        let [w1, b1, w2, b2] = head_tensors(h);
        g.initializer_f16(&w1.0, &format!("{n}.w1_f32"), &w1.1, &w1.2);
        for (name, dims, data) in [b1, w2, b2] {
            g.initializer(&name, &dims, data);
        }
        let (w1, b1, w2, b2) = (
            format!("{n}.w1_f32"),
            format!("{n}.b1"),
            format!("{n}.w2"),
            format!("{n}.b2"),
        );
        let (z1, a1, z2) = (format!("{n}.z1"), format!("{n}.a1"), format!("{n}.logits"));
        g.node(
            "Gemm",
            &[input, &w1, &b1],
            &z1,
            vec![("transB", Attr::Int(1))],
        );
        g.node("Relu", &[&z1], &a1, vec![]);
        g.node(
            "Gemm",
            &[&a1, &w2, &b2],
            &z2,
            vec![("transB", Attr::Int(1))],
        );
        g.node("Softmax", &[&z2], n, vec![("axis", Attr::Int(1))]);
    }
    let head_outputs: Vec<(String, Vec<i64>)> = heads
        .iter()
        .map(|h| (h.info.name.clone(), vec![h.info.labels.len() as i64]))
        .collect();
    outputs.extend(head_outputs.iter().map(|(n, d)| (n.as_str(), d.clone())));
    if let Some(m) = mask {
        crate::mask::add_to_graph(&mut g, m);
        crate::mask::add_garment_features(&mut g);
        let side = crate::mask::MASK_SIDE as i64;
        outputs.push((crate::mask::MASK_OUTPUT, vec![1, side, side]));
        let dim = crate::mask::GARMENT_FEATURES_DIM as i64;
        outputs.push((crate::mask::GARMENT_FEATURES, vec![dim]));
    }
    g.set_outputs(&outputs);
    if info.test_time_flip {
        add_test_time_flip(&mut g, info, name)?;
    }
    set_info(&mut g, info)?;
    g.set_producer("fashion", env!("CARGO_PKG_VERSION"));
    g.to_bytes()
}

/// A head's initializers as the graph holds them: name, shape and values of its first layer
/// (stored as float16), its bias, and its second layer and bias with the temperature and the
/// calibration folded in.
fn head_tensors(h: &HeadWeights) -> [(String, Vec<usize>, Vec<f32>); 4] {
    let n = &h.info.name;
    let classes = h.info.labels.len();
    let hidden = h.info.hidden;
    let t = h.info.temperature;
    // The first layer holds nearly all of a head's weights; float16 keeps the model file small
    // (on 128 In-shop and FPI photos its rounding moved no probability by more than 1e-4 and no
    // answer).
    [
        (format!("{n}.w1"), vec![hidden, FEATURE_DIM], h.w1.clone()),
        (format!("{n}.b1"), vec![hidden], h.b1.clone()),
        (
            format!("{n}.w2"),
            vec![classes, hidden],
            h.w2.iter().map(|v| v / t).collect(),
        ),
        (format!("{n}.b2"), vec![classes], h.info.calibrated(&h.b2)),
    ]
}

/// The model with the weights of some of its heads replaced by `heads` (heads of the same
/// names, labels and sizes, such as the same heads trained again) and their [`HeadInfo`] in its
/// metadata.
pub fn with_heads(model: &[u8], name: &Path, heads: &[HeadWeights]) -> Result<Vec<u8>> {
    let mut g = Graph::from_bytes(model, name)?;
    let mut info = info_of(&g, name)?;
    for h in heads {
        let slot = info
            .heads
            .iter_mut()
            .find(|i| i.name == h.info.name)
            .ok_or_else(|| Error::bad_model(name, format!("it has no head {:?}", h.info.name)))?;
        if slot.labels != h.info.labels || slot.tuned != h.info.tuned {
            return Err(Error::bad_model(
                name,
                format!(
                    "its head {:?} has other labels or reads other features than the new one",
                    h.info.name
                ),
            ));
        }
        for (i, (tensor, dims, data)) in head_tensors(h).into_iter().enumerate() {
            g.replace_initializer(&tensor, &dims, &data, i == 0)
                .map_err(|e| Error::bad_model(name, e))?;
        }
        *slot = h.info.clone();
    }
    set_info(&mut g, &info)?;
    g.to_bytes()
}

/// Adds the second look ([`crate::mirror`], `info.second_look`) to a model's finished graph: its
/// heads' answers and the garment features (the pixel colour head's input) become the mean of
/// both looks; so does its garment mask where the second look is the mirrored crop (the mask of
/// a whole look covers the whole square; brought back to the crop's frame and averaged in, it
/// made the In-shop val mask IoU 0.822 instead of the crop's own 0.873: the mask head finds
/// less of a smaller garment); its feature maps stay the first look's.
fn add_test_time_flip(g: &mut Graph, info: &ModelInfo, name: &Path) -> Result<()> {
    flip_fits(g, name)?;
    let inputs = g.input_names();
    let [input] = &inputs[..] else {
        return Err(Error::bad_model(name, "a model must have one input"));
    };
    let outputs = g.output_names();
    let combine: Vec<(&str, Combine)> = outputs
        .iter()
        .map(|o| {
            let how = if info.heads.iter().any(|h| &h.name == o) {
                Combine::Average
            } else if o == crate::mask::MASK_OUTPUT && !info.second_look.whole() {
                Combine::AverageMirroredBack
            } else if o == crate::mask::GARMENT_FEATURES {
                // Averages over each look's garment, so nothing to mirror back.
                Combine::Average
            } else {
                Combine::First
            };
            (o.as_str(), how)
        })
        .collect();
    let pre = &info.preprocess;
    crate::mirror::add(
        g,
        input,
        &combine,
        info.second_look,
        pre.crop,
        pre.square_side(),
    );
    Ok(())
}

/// Refuses a graph the test-time flip cannot be added to.
fn flip_fits(g: &Graph, name: &Path) -> Result<()> {
    let opset = g.opset().unwrap_or(0);
    if opset < crate::mirror::MIN_OPSET {
        return Err(Error::bad_model(
            name,
            format!(
                "the test-time flip needs ONNX opset {} or later, and this model has opset \
                 {opset}: set test_time_flip = false in the training config",
                crate::mirror::MIN_OPSET
            ),
        ));
    }
    Ok(())
}

/// Checks that a model built on this backbone can have a test-time flip, before any training.
pub fn check_test_time_flip(backbone: &[u8], name: &Path) -> Result<()> {
    flip_fits(&backbone_graph(backbone, name)?, name)
}

/// The model with `look` as its second look ([`crate::mirror`]), replacing the one it has, or
/// `None` when it has that one already.
pub fn with_second_look(model: &[u8], name: &Path, look: SecondLook) -> Result<Option<Vec<u8>>> {
    let mut g = Graph::from_bytes(model, name)?;
    let mut info = info_of(&g, name)?;
    if info.test_time_flip && info.second_look == look {
        return Ok(None);
    }
    crate::mirror::remove(&mut g, info.preprocess.crop);
    info.test_time_flip = true;
    info.second_look = look;
    add_test_time_flip(&mut g, &info, name)?;
    set_info(&mut g, &info)?;
    g.to_bytes().map(Some)
}

/// The [`ModelInfo`] in a model file's metadata.
pub fn read_info(model: &[u8], name: &Path) -> Result<ModelInfo> {
    info_of(&Graph::from_bytes(model, name)?, name)
}

fn info_of(g: &Graph, name: &Path) -> Result<ModelInfo> {
    let json = g.metadata(METADATA_KEY).ok_or_else(|| {
        Error::bad_model(
            name,
            "no fashion metadata: not a model written by `fashion train`",
        )
    })?;
    serde_json::from_str(json).map_err(|e| Error::bad_model(name, format!("bad metadata: {e}")))
}

/// The model without its test-time flip ([`crate::mirror`]): one look per photo, about half
/// the work, slightly less accurate. `None` when it has none.
pub fn single_look(model: &[u8], name: &Path) -> Result<Option<Vec<u8>>> {
    let mut g = Graph::from_bytes(model, name)?;
    let mut info = info_of(&g, name)?;
    if !crate::mirror::remove(&mut g, info.preprocess.crop) {
        return Ok(None);
    }
    info.test_time_flip = false;
    info.second_look = SecondLook::default();
    set_info(&mut g, &info)?;
    g.to_bytes().map(Some)
}

/// A model with a garment mask, given the [`crate::mask::GARMENT_FEATURES`] output as models
/// written by `fashion train` now have it: added if it is missing, and with a test-time flip,
/// the mean of both looks (models of earlier versions gave the first look's). Its other outputs
/// are unchanged. `None` when the model has it so already. A model without a mask is refused.
pub fn with_garment_features(model: &[u8], name: &Path) -> Result<Option<Vec<u8>>> {
    use crate::mask::{GARMENT_FEATURES, GARMENT_FEATURES_DIM, MASK_OUTPUT};
    let mut g = Graph::from_bytes(model, name)?;
    let outputs = g.output_names();
    if !outputs.iter().any(|o| o == MASK_OUTPUT) {
        return Err(Error::bad_model(name, "it has no garment mask"));
    }
    let mut info = info_of(&g, name)?;
    let flipped = crate::mirror::remove(&mut g, info.preprocess.crop);
    if !outputs.iter().any(|o| o == GARMENT_FEATURES) {
        crate::mask::add_garment_features(&mut g);
        g.add_output(GARMENT_FEATURES, &[GARMENT_FEATURES_DIM as i64]);
    }
    info.test_time_flip = false;
    if flipped {
        add_test_time_flip(&mut g, &info, name)?;
        info.test_time_flip = true;
    }
    set_info(&mut g, &info)?;
    let bytes = g.to_bytes()?;
    Ok((bytes != model).then_some(bytes))
}

/// A model file (ONNX bytes; `name` names it in errors) with its [`ModelInfo`] replaced.
pub fn with_info(model: &[u8], name: &Path, info: &ModelInfo) -> Result<Vec<u8>> {
    let mut g = Graph::from_bytes(model, name)?;
    set_info(&mut g, info)?;
    g.to_bytes()
}

/// Writes `info` into the graph's metadata.
fn set_info(g: &mut Graph, info: &ModelInfo) -> Result<()> {
    let json = serde_json::to_string(info).map_err(|e| Error::Engine(e.to_string()))?;
    g.set_metadata(METADATA_KEY, &json);
    Ok(())
}

/// A loaded model: the engine and what the file says about itself.
#[derive(Debug)]
pub struct Model {
    pub path: PathBuf,
    pub engine: Engine,
    pub info: ModelInfo,
    /// The category head, for heat maps; set by [`Model::load_explainer`].
    pub explainer: Option<crate::explain::Explainer>,
}

impl Model {
    /// Loads a model file written by `fashion train`.
    pub fn load(path: &Path, threads: Threads) -> Result<Model> {
        if !path.is_file() {
            return Err(Error::bad_model(path, "no such file"));
        }
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(&bytes, path, threads)
    }

    /// Loads a model held in memory (`path` names it in errors and reports).
    pub fn from_bytes(bytes: &[u8], path: &Path, threads: Threads) -> Result<Model> {
        let engine = Engine::from_bytes(bytes, path, threads)?;
        let json = engine.metadata(METADATA_KEY).ok_or_else(|| {
            Error::bad_model(
                path,
                "no fashion metadata: not a model written by `fashion train`",
            )
        })?;
        let info: ModelInfo = serde_json::from_str(json)
            .map_err(|e| Error::bad_model(path, format!("bad metadata: {e}")))?;
        Self::checked(engine, info, path)
    }

    /// Another copy of this model for one more inference session (a server's model workers):
    /// its own engine, built from `bytes` (the model this one was loaded from) with `threads`,
    /// and this model's metadata shared rather than read again, so that the pixel colour trees
    /// are decoded and held once for all copies. Without heat maps ([`Model::load_explainer`]).
    pub fn replica(&self, bytes: &[u8], threads: Threads) -> Result<Model> {
        let engine = Engine::from_bytes(bytes, &self.path, threads)?;
        if engine.metadata(METADATA_KEY) != self.engine.metadata(METADATA_KEY) {
            return Err(Error::bad_model(
                &self.path,
                "a replica must be built from the bytes its model was loaded from",
            ));
        }
        Self::checked(engine, self.info.clone(), &self.path)
    }

    /// The model of `engine` and `info` once they are checked against each other.
    fn checked(engine: Engine, info: ModelInfo, path: &Path) -> Result<Model> {
        let side = i64::from(info.input_side());
        if let Some(takes) = engine.input_side().filter(|&s| s != side) {
            return Err(Error::bad_model(
                path,
                format!(
                    "its graph takes {takes}x{takes} photos, its metadata {side}x{side} (second \
                     look {:?})",
                    info.second_look
                ),
            ));
        }
        for h in &info.heads {
            if !engine.has_output(&h.name) {
                return Err(Error::bad_model(
                    path,
                    format!("head {:?} has no output", h.name),
                ));
            }
        }
        if let Some(p) = &info.pixel_colour {
            let same_labels = info
                .heads
                .iter()
                .find(|h| h.name == crate::data::COLOUR_FAMILY)
                .is_some_and(|h| h.labels == p.head.info().labels);
            if !same_labels || !p.head.fits(p.input_len()) {
                return Err(Error::bad_model(
                    path,
                    "the pixel colour head does not match the colour_family head or its own sizes",
                ));
            }
            let garment = crate::mask::GARMENT_FEATURES;
            if p.garment_features && !engine.has_output(garment) {
                return Err(Error::bad_model(
                    path,
                    format!("the pixel colour head reads {garment:?}, which is not an output"),
                ));
            }
        }
        Ok(Model {
            path: path.to_path_buf(),
            engine,
            info,
            explainer: None,
        })
    }

    /// Reads the category head's weights from `bytes` (the file this model was loaded from) so
    /// that [`crate::Classifier::heatmaps`] can explain answers. Not done on every load: only a
    /// server drawing heat maps needs them. A model without a category head or the map it
    /// reads (`feat_s32`, or `tuned_s32` for a fine-tuned head) stays without.
    pub fn load_explainer(&mut self, bytes: &[u8]) -> Result<()> {
        let map = self
            .head("category")
            .map_or(FEAT_S32, HeadInfo::feature_map);
        if self.engine.has_output(map) {
            let g = Graph::from_bytes(bytes, &self.path)?;
            self.explainer = crate::explain::Explainer::from_graph(&g, "category");
        }
        Ok(())
    }

    /// Whether the model has a garment mask head ([`crate::mask`]).
    pub fn has_mask(&self) -> bool {
        self.engine.has_output(crate::mask::MASK_OUTPUT)
    }

    /// Whether the model has the [`crate::mask::GARMENT_FEATURES`] output.
    pub fn has_garment_features(&self) -> bool {
        self.engine.has_output(crate::mask::GARMENT_FEATURES)
    }

    /// The head with this name.
    pub fn head(&self, name: &str) -> Option<&HeadInfo> {
        self.info.heads.iter().find(|h| h.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{s, Array4, ArrayD};
    use onnx_protobuf::Message;

    fn run(bytes: &[u8], x: &Array4<f32>, outputs: &[&str]) -> Vec<ArrayD<f32>> {
        let engine = Engine::from_bytes(bytes, Path::new("m"), Threads::single(1)).unwrap();
        engine.run(x.view(), outputs).unwrap()
    }

    /// The largest absolute difference between the values of `a` and `b`, pair by pair.
    fn worst<'a>(
        a: impl IntoIterator<Item = &'a f32>,
        b: impl IntoIterator<Item = &'a f32>,
    ) -> f32 {
        a.into_iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    }

    /// The built-in model file.
    fn shipped() -> Vec<u8> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        std::fs::read(root.join("models/default.onnx")).unwrap()
    }

    /// A model without its second look (the model itself when it has none).
    fn one_look(model: &[u8]) -> Vec<u8> {
        single_look(model, Path::new("default.onnx"))
            .unwrap()
            .unwrap_or_else(|| model.to_vec())
    }

    fn close(a: &ArrayD<f32>, b: &ArrayD<f32>, what: &str) {
        assert_eq!(a.shape(), b.shape(), "{what}");
        let worst = worst(a, b);
        assert!(worst < 1e-5, "{what}: differs by {worst}");
    }

    #[test]
    fn a_replica_answers_as_its_model_and_shares_its_trees() {
        let bytes = one_look(&shipped());
        let name = Path::new("default.onnx");
        let model = Model::from_bytes(&bytes, name, Threads::single(1)).unwrap();
        let copy = model.replica(&bytes, Threads::single(1)).unwrap();
        assert_eq!(copy.path, model.path);
        assert!(copy.explainer.is_none());
        // The pixel colour trees are decoded once, for both.
        let trees = |m: &Model| match &m.info.pixel_colour.as_ref().unwrap().head {
            PixelClassifier::Trees(t) => t.model.clone(),
            PixelClassifier::Network(_) => panic!("the built-in model's pixel head is trees"),
        };
        assert!(std::sync::Arc::ptr_eq(&trees(&model), &trees(&copy)));
        // Its own engine gives the same outputs.
        let side = model.info.input_side() as usize;
        let x = Array4::from_shape_fn((2, 3, side, side), |(n, c, y, x)| {
            ((n * 7 + c * 5 + y * 3 + x) % 17) as f32 / 8.0 - 1.0
        });
        let heads: Vec<&str> = model.info.heads.iter().map(|h| h.name.as_str()).collect();
        for (a, b) in model
            .engine
            .run(x.view(), &heads)
            .unwrap()
            .iter()
            .zip(&copy.engine.run(x.view(), &heads).unwrap())
        {
            close(a, b, "replica");
        }
        // Bytes of another model are refused.
        let int8 = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/default-int8.onnx");
        let err = model
            .replica(&std::fs::read(int8).unwrap(), Threads::single(1))
            .unwrap_err()
            .to_string();
        assert!(err.contains("replica"), "{err}");
    }

    #[test]
    fn the_shipped_int8_variant_is_quantised_from_the_shipped_model() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let name = Path::new("default-int8.onnx");
        let int8 = std::fs::read(root.join("models/default-int8.onnx")).unwrap();
        let info = read_info(&int8, name).unwrap();
        // scripts/quantize.py records the hash of the file it quantised.
        let from = info.training["quantized_from_fnv1a"].as_str().unwrap();
        assert_eq!(
            from,
            format!("{:016x}", crate::hash::of(&shipped())),
            "models/default-int8.onnx is not the int8 copy of models/default.onnx: \
             run scripts/quantize.py again"
        );
        let float = read_info(&shipped(), Path::new("default.onnx")).unwrap();
        assert_eq!(info.name, format!("{}-int8", float.name));
        assert_eq!(info.input_side(), float.input_side());
        let labels = |i: &ModelInfo| -> Vec<Vec<String>> {
            i.heads.iter().map(|h| h.labels.clone()).collect()
        };
        assert_eq!(labels(&info), labels(&float));
    }

    #[test]
    fn test_time_flip_averages_the_photo_and_its_mirror_image() {
        let name = Path::new("default.onnx");
        let single = one_look(&shipped());
        assert!(single_look(&single, name).unwrap().is_none());
        let flipped = with_second_look(&single, name, SecondLook::Mirror)
            .unwrap()
            .unwrap();
        assert!(with_second_look(&flipped, name, SecondLook::Mirror)
            .unwrap()
            .is_none());
        let info = |b: &[u8]| info_of(&Graph::from_bytes(b, name).unwrap(), name).unwrap();
        assert!(info(&flipped).test_time_flip && !info(&single).test_time_flip);

        // Three photos that are not mirror-symmetric: a gradient across, a stripe on one side.
        let x = Array4::from_shape_fn((3, 3, 224, 224), |(n, c, y, x)| {
            let side = if x < 60 + 40 * n { 0.8 } else { -0.3 };
            side + (x as f32 / 224.0) * (c as f32 - 1.0) + (y as f32 / 448.0)
        });
        let mirrored = x.slice(s![.., .., .., ..;-1]).to_owned();
        let heads: Vec<String> = info(&single).heads.iter().map(|h| h.name.clone()).collect();
        let mut names: Vec<&str> = heads.iter().map(String::as_str).collect();
        let mask = crate::mask::MASK_OUTPUT;
        names.extend([mask, FEAT_S32, FEATURES]);
        let both = run(&flipped, &x, &names);
        let a = run(&single, &x, &names);
        let b = run(&single, &mirrored, &names);
        for (i, o) in names.iter().enumerate() {
            let want = match *o {
                FEAT_S32 | FEATURES => a[i].clone(),
                m if m == mask => (&a[i] + &b[i].slice(s![.., .., .., ..;-1])) / 2.0,
                _ => (&a[i] + &b[i]) / 2.0,
            };
            close(&both[i], &want, o);
        }
        // A head's two looks differ, so the mean is not either of them.
        assert!((&a[0] - &b[0]).iter().any(|d| d.abs() > 1e-3));
        // A graph older than the flip's operators is refused, with the setting to change.
        let mut old = onnx_protobuf::ModelProto::parse_from_bytes(&single).unwrap();
        for o in &mut old.opset_import {
            o.version = 13;
        }
        let old = old.write_to_bytes().unwrap();
        let err = with_second_look(&old, name, SecondLook::Mirror)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("opset 15") && err.contains("test_time_flip"),
            "{err}"
        );
        assert!(check_test_time_flip(&old, name).is_err());
        assert!(check_test_time_flip(&single, name).is_ok());
        // Taking the flip out gives the single look back.
        let back = single_look(&flipped, name).unwrap().unwrap();
        for (i, out) in run(&back, &x, &names).iter().enumerate() {
            close(out, &a[i], names[i]);
        }
    }

    /// `x` (`[N, C, H, W]`) resized to `side x side` by linear interpolation with half-pixel
    /// centres, edges clamped: ONNX `Resize` in `linear` mode, written out.
    fn resized(x: &Array4<f32>, side: usize) -> Array4<f32> {
        let taps = |n_in: usize| -> Vec<(usize, usize, f32)> {
            (0..side)
                .map(|o| {
                    let at = ((o as f32 + 0.5) * n_in as f32 / side as f32 - 0.5)
                        .clamp(0.0, (n_in - 1) as f32);
                    let i0 = at.floor() as usize;
                    (i0, (i0 + 1).min(n_in - 1), at - i0 as f32)
                })
                .collect()
        };
        let (n, c, h, w) = x.dim();
        let (ty, tx) = (taps(h), taps(w));
        Array4::from_shape_fn((n, c, side, side), |(n, c, y, xo)| {
            let (y0, y1, fy) = ty[y];
            let (x0, x1, fx) = tx[xo];
            let at = |yy: usize, xx: usize| x[[n, c, yy, xx]];
            let top = at(y0, x0) * (1.0 - fx) + at(y0, x1) * fx;
            let bottom = at(y1, x0) * (1.0 - fx) + at(y1, x1) * fx;
            top * (1.0 - fy) + bottom * fy
        })
    }

    #[test]
    fn a_whole_second_look_averages_the_crop_and_the_shrunk_square() {
        let name = Path::new("default.onnx");
        let single = one_look(&shipped());
        let info = |b: &[u8]| info_of(&Graph::from_bytes(b, name).unwrap(), name).unwrap();
        // The side of the square the graph takes, as ONNX Runtime reads its input.
        let side = |b: &[u8]| {
            Engine::from_bytes(b, name, Threads::single(1))
                .unwrap()
                .input_side()
        };
        assert_eq!(side(&single), Some(224));
        // Three squares whose sides differ: a gradient across, a stripe on one side.
        let x = Array4::from_shape_fn((3, 3, 256, 256), |(n, c, y, x)| {
            let stripe = if x < 70 + 40 * n { 0.8 } else { -0.3 };
            stripe + (x as f32 / 256.0) * (c as f32 - 1.0) + (y as f32 / 512.0)
        });
        let crop = x.slice(s![.., .., 16..240, 16..240]).to_owned();
        let whole = resized(&x, 224);
        let heads: Vec<String> = info(&single).heads.iter().map(|h| h.name.clone()).collect();
        let mut names: Vec<&str> = heads.iter().map(String::as_str).collect();
        let mask = crate::mask::MASK_OUTPUT;
        let garment = crate::mask::GARMENT_FEATURES;
        names.extend([mask, garment, FEAT_S32]);
        let a = run(&single, &crop, &names);
        for look in [SecondLook::Whole, SecondLook::WholeMirrored] {
            let two = with_second_look(&single, name, look).unwrap().unwrap();
            assert!(with_second_look(&two, name, look).unwrap().is_none());
            let i = info(&two);
            assert!(i.takes_square() && i.second_look == look);
            assert_eq!((i.input_side(), side(&two)), (256, Some(256)));
            let second = if look == SecondLook::WholeMirrored {
                whole.slice(s![.., .., .., ..;-1]).to_owned()
            } else {
                whole.clone()
            };
            let b = run(&single, &second, &names);
            let both = run(&two, &x, &names);
            for (k, o) in names.iter().enumerate() {
                // The mask and the feature maps are the crop's own; the rest the mean of both.
                let want = if *o == mask || *o == FEAT_S32 {
                    a[k].clone()
                } else {
                    (&a[k] + &b[k]) / 2.0
                };
                // The interpolation's rounding differs from ONNX Runtime's in the last bits.
                let tolerance = 2e-4;
                let w = worst(&both[k], &want);
                assert!(w < tolerance, "{look:?} {o}: differs by {w}");
            }
            // The two looks differ, so the mean is not the crop's answer.
            assert!((&a[0] - &b[0]).iter().any(|d| d.abs() > 1e-3));
            // Taking the second look out gives the crop's model back.
            let back = single_look(&two, name).unwrap().unwrap();
            assert_eq!(side(&back), Some(224));
            assert!(!info(&back).takes_square());
            for (k, out) in run(&back, &crop, &names).iter().enumerate() {
                close(out, &a[k], names[k]);
            }
        }
        // Training's graph of the second look alone sees what the model's second look sees.
        let features = feature_graph(&single, name).unwrap();
        let pre = info(&single).preprocess;
        for look in [SecondLook::Whole, SecondLook::WholeMirrored] {
            let only = second_look_graph(&features, name, look, &pre).unwrap();
            let second = if look == SecondLook::WholeMirrored {
                whole.slice(s![.., .., .., ..;-1]).to_owned()
            } else {
                whole.clone()
            };
            let want = run(&features, &second, &[FEATURES]);
            let got = run(&only, &x, &[FEATURES]);
            let w = worst(&got[0], &want[0]);
            assert!(w < 2e-4, "{look:?}: differs by {w}");
        }
        // Metadata that says another input than the graph takes is refused on load.
        let two = with_second_look(&single, name, SecondLook::WholeMirrored)
            .unwrap()
            .unwrap();
        let mut wrong = info(&two);
        wrong.second_look = SecondLook::Mirror;
        let bad = with_info(&two, name, &wrong).unwrap();
        let err = Model::from_bytes(&bad, name, Threads::single(1)).unwrap_err();
        assert!(
            err.to_string()
                .contains("graph takes 256x256 photos, its metadata 224x224"),
            "{err}"
        );
        assert!(Model::from_bytes(&two, name, Threads::single(1)).is_ok());
        // One second look replaces the other.
        let whole_model = with_second_look(&single, name, SecondLook::Whole)
            .unwrap()
            .unwrap();
        let mirror = with_second_look(&whole_model, name, SecondLook::Mirror)
            .unwrap()
            .unwrap();
        assert_eq!(side(&mirror), Some(224));
        assert_eq!(info(&mirror).input_side(), 224);
    }

    #[test]
    fn a_heads_temperature_and_log_prior_are_folded_into_the_graph() {
        let shipped = shipped();
        let name = Path::new("default.onnx");
        let mut info = info_of(&Graph::from_bytes(&shipped, name).unwrap(), name).unwrap();
        // A made-up head on the pooled features (its first layer as float16, as stored).
        let (h, c) = (3, 4);
        let w1: Vec<f32> = (0..h * FEATURE_DIM)
            .map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * 0.05)
            .map(|v| half::f16::from_f32(v).to_f32())
            .collect();
        let head = HeadWeights {
            info: HeadInfo {
                name: "category".into(),
                labels: (0..c).map(|i| format!("c{i}")).collect(),
                hidden: h,
                temperature: 1.7,
                tuned: false,
                log_prior: vec![1.5, -0.5, 0.0, -1.0],
            },
            w1,
            b1: vec![0.1, -0.2, 0.3],
            w2: (0..c * h).map(|i| (i as f32 - 5.0) * 0.3).collect(),
            b2: vec![0.2, 0.0, -0.3, 0.1],
        };
        info.heads = vec![head.info.clone()];
        info.test_time_flip = false;
        info.pixel_colour = None;
        let bytes = build(
            &shipped,
            name,
            std::slice::from_ref(&head),
            None,
            None,
            &info,
        )
        .unwrap();
        let x = Array4::from_shape_fn((2, 3, 224, 224), |(n, c, y, x)| {
            ((x + 2 * y + 31 * n + 7 * c) % 50) as f32 / 25.0 - 1.0
        });
        let out = run(&bytes, &x, &["category", FEATURES]);
        let without = HeadInfo {
            log_prior: Vec::new(),
            ..head.info.clone()
        };
        for n in 0..2 {
            let logits = head.logits(&out[1].slice(s![n, ..]).to_vec());
            let got = out[0].slice(s![n, ..]).to_vec();
            let want = head.info.probabilities(&logits);
            let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs());
            assert!(
                worst.fold(0f32, f32::max) < 1e-4,
                "{got:?} against {want:?}"
            );
            // By hand: softmax(z / t + prior).
            let z: Vec<f32> = logits
                .iter()
                .zip(&head.info.log_prior)
                .map(|(v, p)| v / 1.7 + p)
                .collect();
            let e: Vec<f32> = z.iter().map(|v| v.exp()).collect();
            let hand = e[0] / e.iter().sum::<f32>();
            assert!((want[0] - hand).abs() < 1e-6, "{want:?}, {hand}");
            // The prior moves the answer; a vote takes it back out.
            let plain = without.probabilities(&logits);
            assert!((plain[0] - got[0]).abs() > 1e-2);
            let vote = head.info.vote(&want);
            assert!(vote.iter().zip(&plain).all(|(a, b)| (a - b).abs() < 1e-5));
            assert_eq!(without.vote(&plain), plain);
        }
        // The head trained again: other weights, temperature and prior in the same place.
        let again = HeadWeights {
            info: HeadInfo {
                temperature: 0.8,
                log_prior: vec![0.0, 0.5, -0.5, 0.0],
                ..head.info.clone()
            },
            w1: head.w1.iter().rev().copied().collect(),
            b1: vec![0.0, 0.2, -0.1],
            w2: head.w2.iter().map(|v| -v).collect(),
            b2: vec![-0.1, 0.3, 0.0, 0.2],
        };
        let replaced = with_heads(&bytes, name, std::slice::from_ref(&again)).unwrap();
        assert_eq!(
            info_of(&Graph::from_bytes(&replaced, name).unwrap(), name)
                .unwrap()
                .heads[0],
            again.info
        );
        let out = run(&replaced, &x, &["category", FEATURES]);
        for n in 0..2 {
            let want = again
                .info
                .probabilities(&again.logits(&out[1].slice(s![n, ..]).to_vec()));
            let got = out[0].slice(s![n, ..]).to_vec();
            assert!(worst(&got, &want) < 1e-4, "{got:?} against {want:?}");
        }
        // A head with other labels is refused.
        let mut other = again.clone();
        other.info.labels[0] = "else".into();
        let err = with_heads(&bytes, name, &[other]).unwrap_err().to_string();
        assert!(err.contains("other labels"), "{err}");
    }

    #[test]
    fn garment_features_are_the_early_maps_averaged_over_the_garment_mask() {
        use crate::mask::{GARMENT_FEATURES, GARMENT_FEATURES_DIM, MASK_OUTPUT, MASK_SIDE};
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let shipped = shipped();
        let name = Path::new("default.onnx");
        let given = |b: &[u8]| with_garment_features(b, name).unwrap().unwrap();
        let single = one_look(&shipped);
        // The built-in model has them; a model from before them is made by taking them out.
        assert!(with_garment_features(&shipped, name).unwrap().is_none());
        let mut old = onnx_protobuf::ModelProto::parse_from_bytes(&single).unwrap();
        let graph = old.graph.as_mut().unwrap();
        let ours = |t: &str| t.starts_with("garment.") || t == GARMENT_FEATURES;
        graph.node.retain(|n| !n.output.iter().any(|o| ours(o)));
        graph.initializer.retain(|t| !ours(&t.name));
        graph.output.retain(|o| !ours(&o.name));
        let single = old.write_to_bytes().unwrap();
        let one = given(&single);
        let two = given(
            &with_second_look(&single, name, SecondLook::Mirror)
                .unwrap()
                .unwrap(),
        );
        // Once is enough; the test-time flip stays as it was.
        assert!(with_garment_features(&one, name).unwrap().is_none());
        assert!(!read_info(&one, name).unwrap().test_time_flip);
        assert!(read_info(&two, name).unwrap().test_time_flip);
        // Two of the sample photos: garments the mask finds, on a plain background.
        let pre = read_info(&single, name).unwrap().preprocess;
        let mut x = Array4::zeros((2, 3, 224, 224));
        for (n, photo) in ["samples/tee-navy.jpg", "samples/dress-red.jpg"]
            .iter()
            .enumerate()
        {
            let img = pre.load(&root.join(photo), 1 << 26).unwrap();
            let row = x.index_axis_mut(ndarray::Axis(0), n);
            pre.write_tensor(&img, false, row.into_slice().unwrap());
        }
        let got = run(&one, &x, &[MASK_OUTPUT, GARMENT_FEATURES]);
        let maps = run(
            &mask_feature_graph(&single, name).unwrap(),
            &x,
            &["feat_s8", "feat_s16"],
        );
        assert_eq!(got[1].shape(), &[2, GARMENT_FEATURES_DIM]);
        // By hand: each channel's cells weighted by the mask (on the 14x14 map: the mean of each
        // 2x2 block of the mask), divided by the mask's mean.
        let s = MASK_SIDE;
        for n in 0..2 {
            let m8: Vec<f32> = got[0].slice(s![n, 0, .., ..]).iter().copied().collect();
            let m16: Vec<f32> = (0..s * s / 4)
                .map(|i| {
                    let (y, x) = (2 * (i / (s / 2)), 2 * (i % (s / 2)));
                    (m8[y * s + x]
                        + m8[y * s + x + 1]
                        + m8[(y + 1) * s + x]
                        + m8[(y + 1) * s + x + 1])
                        / 4.0
                })
                .collect();
            let mut want = Vec::new();
            for (k, mask) in [m8, m16].iter().enumerate() {
                let area = mask.iter().sum::<f32>() / mask.len() as f32;
                assert!(area > 0.05, "the mask finds the sample's garment");
                for c in maps[k].slice(s![n, .., .., ..]).outer_iter() {
                    let sum: f32 = c.iter().zip(mask).map(|(v, m)| v * m).sum();
                    want.push(sum / mask.len() as f32 / (area + 1e-6));
                }
            }
            let row: Vec<f32> = got[1].slice(s![n, ..]).iter().copied().collect();
            assert_eq!(row.len(), want.len());
            let worst = worst(&row, &want);
            assert!(worst < 1e-4, "photo {n}: differs by {worst}");
            // Not the plain mean of the maps: the mask's weights matter.
            let plain: f32 = maps[0].slice(s![n, 0, .., ..]).mean().unwrap();
            assert!((plain - want[0]).abs() > 1e-3);
        }
        // With the flip, the mean of the photo's and its mirror image's, each over its own mask.
        let flipped = run(&two, &x, &[GARMENT_FEATURES]);
        let mut mirror = x.clone();
        mirror.invert_axis(ndarray::Axis(3));
        let mirrored = run(&one, &mirror, &[GARMENT_FEATURES]);
        let both = (&got[1] + &mirrored[0]) / 2.0;
        close(&flipped[0], &both, GARMENT_FEATURES);
        assert!(
            worst(&flipped[0], &got[1]) > 1e-3,
            "not the first look's alone"
        );
        // A model without a garment mask cannot have them.
        let mut info = read_info(&single, name).unwrap();
        info.test_time_flip = false;
        info.pixel_colour = None;
        info.heads.clear();
        let heads: Vec<HeadWeights> = Vec::new();
        let bare = build(&single, name, &heads, None, None, &info).unwrap();
        let err = with_garment_features(&bare, name).unwrap_err().to_string();
        assert!(err.contains("no garment mask"), "{err}");
    }

    #[test]
    fn a_pixel_colour_head_saved_before_regions_and_head_weight_reads_as_it_was_trained() {
        // The metadata of a head written before the region features and the head's weight:
        // equal votes, colour features (and garment features) only.
        let json = serde_json::json!({
            "anchors": [[50.0, 0.0, 0.0]],
            "head": {"info": {"name": "pixel_colour", "labels": ["a"], "hidden": 1,
                              "temperature": 1.0},
                     "w1": [], "b1": [0.0], "w2": [0.0], "b2": [0.0]},
            "fusion_temperature": 1.5,
            "garment_features": true,
        });
        let p: PixelColourHead = serde_json::from_value(json.clone()).unwrap();
        assert_eq!((p.head_weight, p.regions), (1.0, false));
        assert!(matches!(p.head, PixelClassifier::Network(_)));
        // A head of trees that cannot be read says why.
        let mut broken = json;
        broken["head"] = serde_json::json!({"info": broken["head"]["info"].clone(),
                                            "trees": "bm90IGEgbW9kZWw="});
        let err = serde_json::from_value::<PixelColourHead>(broken).unwrap_err();
        assert!(err.to_string().contains("pixel colour trees"), "{err}");
        let colours = crate::colour::colour_features_len(1);
        assert_eq!(p.input_len(), colours + crate::mask::GARMENT_FEATURES_DIM);
        // Written again, it keeps what it was; one with regions says so.
        let back = serde_json::to_value(&p).unwrap();
        assert_eq!(back.get("regions"), None);
        let with = PixelColourHead { regions: true, ..p };
        assert_eq!(serde_json::to_value(&with).unwrap()["regions"], true);
        assert_eq!(
            with.input_len(),
            colours + crate::colour::REGION_FEATURES_LEN + crate::mask::GARMENT_FEATURES_DIM
        );
    }

    #[test]
    fn fusion_multiplies_the_votes_and_applies_the_temperature() {
        let head = HeadWeights {
            info: HeadInfo {
                name: "pixel_colour".into(),
                labels: vec!["a".into(), "b".into()],
                hidden: 1,
                temperature: 2.0,
                tuned: false,
                log_prior: Vec::new(),
            },
            // One feature, copied to the hidden unit; class a's logit is 2x, b's is 0.
            w1: vec![1.0],
            b1: vec![0.0],
            w2: vec![2.0, 0.0],
            b2: vec![0.0, 0.0],
        };
        let mut p = PixelColourHead {
            anchors: Vec::new(),
            head: PixelClassifier::Network(head),
            fusion_temperature: 1.0,
            head_weight: 1.0,
            regions: false,
            garment_features: false,
        };
        // Logits 2 and 0 at temperature 2: softmax of 1 and 0.
        let probs = p.probabilities(&[1.0]);
        let e = std::f32::consts::E;
        assert!((probs[0] - e / (e + 1.0)).abs() < 1e-6, "{probs:?}");
        // An undecided head leaves the pixels' answer as it is.
        let f = p.fuse(&[0.5, 0.5], &[0.9, 0.1]);
        assert!((f[0] - 0.9).abs() < 1e-6, "{f:?}");
        // At temperature 2 the product is square-rooted: 0.45 and 0.05 -> 0.75 and 0.25.
        p.fusion_temperature = 2.0;
        let f = p.fuse(&[0.5, 0.5], &[0.9, 0.1]);
        assert!((f[0] - 0.75).abs() < 1e-6, "{f:?}");
        // The head's vote weighted by 0.5: 0.9 * sqrt(0.2) against 0.1 * sqrt(0.8), i.e. 9:2
        // at temperature 1.
        p.fusion_temperature = 1.0;
        p.head_weight = 0.5;
        let f = p.fuse(&[0.2, 0.8], &[0.9, 0.1]);
        assert!((f[0] - 9.0 / 11.0).abs() < 1e-6, "{f:?}");
        // Weight 0: the pixels' answer alone.
        p.head_weight = 0.0;
        let f = p.fuse(&[0.01, 0.99], &[0.9, 0.1]);
        assert!((f[0] - 0.9).abs() < 1e-6, "{f:?}");
    }
}
