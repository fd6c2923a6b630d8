//! From photos to predictions: [`Classifier`] decodes photos in parallel, runs the model on a
//! batch, and turns each head's probabilities and the photo's garment pixels into a
//! [`Prediction`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use image::RgbImage;
use ndarray::Array4;
use rayon::prelude::*;
use serde::Serialize;

use crate::colour::{self, ColourPixels, Swatch, Vocabulary};
use crate::data::COLOUR_FAMILY;
use crate::error::{Error, Result};
use crate::mask::{GARMENT_FEATURES, GARMENT_FEATURES_DIM, MASK_OUTPUT, MASK_SIDE};
use crate::model::Model;

/// The label given to a head whose confidence is under `min_confidence`.
pub const UNSURE: &str = "unsure";

/// How predictions are made and reported.
#[derive(Debug, Clone)]
pub struct ClassifyOptions {
    /// Candidates listed per head.
    pub top_k: usize,
    /// Below this confidence a head says [`UNSURE`] (its candidates stay listed).
    pub min_confidence: f32,
    /// Photos with more pixels are rejected.
    pub max_pixels: u64,
    /// Most colours in a palette.
    pub palette_size: usize,
    /// Smallest share of the garment a palette colour must cover.
    pub min_share: f32,
}

impl Default for ClassifyOptions {
    fn default() -> Self {
        Self {
            top_k: 3,
            min_confidence: 0.0,
            max_pixels: crate::image::DEFAULT_MAX_PIXELS,
            palette_size: 5,
            min_share: 0.05,
        }
    }
}

/// A label and its confidence.
#[derive(Debug, Clone, Serialize)]
pub struct LabelScore {
    pub label: String,
    pub confidence: f32,
}

/// One head's answer.
#[derive(Debug, Clone, Serialize)]
pub struct HeadPrediction {
    pub label: String,
    pub confidence: f32,
    pub top: Vec<LabelScore>,
}

/// The garment's main colour.
#[derive(Debug, Clone, Serialize)]
pub struct PrimaryColour {
    pub name: String,
    pub family: String,
    pub hex: String,
    pub confidence: f32,
}

/// The garment's colours.
#[derive(Debug, Clone, Serialize)]
pub struct ColourPrediction {
    pub primary: PrimaryColour,
    pub palette: Vec<Swatch>,
}

/// Everything said about one photo.
#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    pub path: String,
    /// Head name (`category`, `view`, `article_type`) -> answer.
    #[serde(flatten)]
    pub heads: BTreeMap<String, HeadPrediction>,
    pub colour: ColourPrediction,
    /// Each head's full probability vector, in the model's label order (`colour_family`: combined
    /// with the pixel colour head's, see [`crate::model::PixelColourHead`]).
    #[serde(skip)]
    pub probabilities: BTreeMap<String, Vec<f32>>,
    /// The learned garment mask: probabilities on a [`crate::mask::MASK_SIDE`] grid over the
    /// model's square (models without a mask head: `None`).
    #[serde(skip)]
    pub garment: Option<Vec<f32>>,
    /// The pixels the palette was computed from: `(width, height, row-major mask)` over the
    /// model's square at the palette's resolution.
    #[serde(skip)]
    pub colour_mask: (u32, u32, Vec<bool>),
}

/// A photo decoded and cut to the model's input, with its colour thumbnail: the work done per
/// photo before the model, in parallel with it.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The centre crop: what the first look sees, the garment mask covers and the palette is
    /// drawn from.
    pub crop: RgbImage,
    /// The whole square the crop was cut from, for a model that takes it
    /// ([`crate::model::ModelInfo::takes_square`]).
    pub square: Option<RgbImage>,
    pub pixels: ColourPixels,
}

/// What the model computed for one photo: each head's probabilities (in the model's head
/// order) and the garment mask, when the model has one.
#[derive(Debug, Clone)]
pub struct ModelOutput {
    pub heads: Vec<Vec<f32>>,
    pub garment: Option<Vec<f32>>,
    /// [`crate::mask::GARMENT_FEATURES`], for models that have it.
    pub garment_features: Option<Vec<f32>>,
}

/// Runs a model on photos.
pub struct Classifier {
    pub model: Model,
    pub vocabulary: Vocabulary,
    pub options: ClassifyOptions,
}

impl Classifier {
    pub fn new(model: Model, vocabulary: Vocabulary, options: ClassifyOptions) -> Self {
        Self {
            model,
            vocabulary,
            options,
        }
    }

    /// Decodes a photo file, brings it to the model's square and computes its garment palette:
    /// everything a photo needs before the model sees it.
    pub fn prepare_path(&self, path: &Path) -> Result<Prepared> {
        let pre = &self.model.info.preprocess;
        let square = pre.load_square(path, self.options.max_pixels)?;
        Ok(self.prepare_square(square))
    }

    /// Like [`Classifier::prepare_path`], for an encoded photo held in memory.
    pub fn prepare_bytes(&self, bytes: &[u8], name: &Path) -> Result<Prepared> {
        let pre = &self.model.info.preprocess;
        let square = pre.decode_square(bytes, name, self.options.max_pixels)?;
        Ok(self.prepare_square(square))
    }

    /// Prepares a photo already brought to its square ([`crate::Preprocess::square`]).
    pub fn prepare_square(&self, square: RgbImage) -> Prepared {
        let crop = self.model.info.preprocess.cut(&square);
        Prepared {
            pixels: ColourPixels::of(&crop),
            crop,
            square: self.model.info.takes_square().then_some(square),
        }
    }

    /// Classifies photo files as one batch; each photo gets its own result.
    pub fn classify_paths(&self, paths: &[PathBuf]) -> Vec<Result<Prediction>> {
        let prepared = paths.par_iter().map(|p| self.prepare_path(p)).collect();
        self.classify_prepared(
            paths.iter().map(|p| p.display().to_string()).collect(),
            prepared,
        )
    }

    /// Classifies encoded photos held in memory, named by `names`.
    pub fn classify_bytes(&self, items: &[(String, Vec<u8>)]) -> Vec<Result<Prediction>> {
        let prepared = items
            .par_iter()
            .map(|(n, b)| self.prepare_bytes(b, Path::new(n)))
            .collect();
        self.classify_prepared(items.iter().map(|(n, _)| n.clone()).collect(), prepared)
    }

    /// Runs the model once over the photos that were prepared; the others keep their error.
    pub fn classify_prepared(
        &self,
        names: Vec<String>,
        prepared: Vec<Result<Prepared>>,
    ) -> Vec<Result<Prediction>> {
        let good: Vec<&Prepared> = prepared.iter().filter_map(|p| p.as_ref().ok()).collect();
        let mut batch = match self.run(&good) {
            Ok(preds) => preds.into_iter(),
            Err(e) => {
                let msg = e.to_string();
                return names
                    .iter()
                    .map(|_| Err(Error::Engine(msg.clone())))
                    .collect();
            }
        };
        prepared
            .into_iter()
            .zip(names)
            .map(|(p, name)| {
                p.map(|_| {
                    let mut pred = batch.next().expect("one prediction per prepared photo");
                    pred.path = name;
                    pred
                })
            })
            .collect()
    }

    /// Runs the model on prepared photos; the predictions' `path` is left empty.
    pub fn run(&self, photos: &[&Prepared]) -> Result<Vec<Prediction>> {
        let outputs = self.infer(photos)?;
        Ok(photos
            .par_iter()
            .zip(outputs)
            .map(|(p, o)| self.finish(p, o))
            .collect())
    }

    /// The model's outputs for prepared photos, one [`ModelOutput`] per photo: the part of
    /// [`Classifier::run`] that needs the model (see [`Classifier::finish`] for the rest).
    pub fn infer(&self, photos: &[&Prepared]) -> Result<Vec<ModelOutput>> {
        // A model with a test-time flip runs each photo twice in one batch: half the photos per
        // run keep the rows, and the memory they need, those of the batch asked for.
        let looks = if self.model.info.test_time_flip { 2 } else { 1 };
        let mut out = Vec::with_capacity(photos.len());
        for part in photos.chunks(photos.len().div_ceil(looks).max(1)) {
            out.extend(self.infer_rows(part)?);
        }
        Ok(out)
    }

    fn infer_rows(&self, photos: &[&Prepared]) -> Result<Vec<ModelOutput>> {
        if photos.is_empty() {
            return Ok(Vec::new());
        }
        let input = self.input_batch(photos)?;
        let heads = &self.model.info.heads;
        let mut names: Vec<&str> = heads.iter().map(|h| h.name.as_str()).collect();
        let has_mask = self.model.has_mask();
        if has_mask {
            names.push(MASK_OUTPUT);
        }
        let has_features = self.model.has_garment_features();
        if has_features {
            names.push(GARMENT_FEATURES);
        }
        let outputs = self.model.engine.run(input.view(), &names)?;
        let row = |k: usize, i: usize| -> Vec<f32> {
            outputs[k]
                .index_axis(ndarray::Axis(0), i)
                .iter()
                .copied()
                .collect()
        };
        for (h, out) in heads.iter().zip(&outputs) {
            if out.len() != photos.len() * h.labels.len() {
                return Err(Error::Engine(format!(
                    "output {:?} has shape {:?}; its metadata lists {} labels",
                    h.name,
                    out.shape(),
                    h.labels.len()
                )));
            }
        }
        if has_mask && outputs[heads.len()].len() != photos.len() * MASK_SIDE * MASK_SIDE {
            return Err(Error::Engine(format!(
                "{MASK_OUTPUT} has shape {:?}; expected [N, 1, {MASK_SIDE}, {MASK_SIDE}]",
                outputs[heads.len()].shape()
            )));
        }
        let features_at = heads.len() + usize::from(has_mask);
        if has_features && outputs[features_at].len() != photos.len() * GARMENT_FEATURES_DIM {
            return Err(Error::Engine(format!(
                "{GARMENT_FEATURES} has shape {:?}; expected [N, {GARMENT_FEATURES_DIM}]",
                outputs[features_at].shape()
            )));
        }
        Ok((0..photos.len())
            .map(|i| ModelOutput {
                heads: (0..heads.len()).map(|k| row(k, i)).collect(),
                garment: has_mask.then(|| row(heads.len(), i)),
                garment_features: has_features.then(|| row(features_at, i)),
            })
            .collect())
    }

    /// Turns a photo's model outputs into its prediction: the garment's pixels, their palette
    /// (k-means) and what the pixel colour head says about them, each head's answer. Photos
    /// can be finished in parallel, while the model runs on the next batch.
    pub fn finish(&self, photo: &Prepared, out: ModelOutput) -> Prediction {
        let heads = &self.model.info.heads;
        let mask = photo
            .pixels
            .mask(out.garment.as_deref().map(|g| (g, MASK_SIDE)));
        let garment = photo.pixels.garment(&mask);
        let palette = colour::palette(
            &garment,
            &self.vocabulary,
            self.options.palette_size,
            self.options.min_share,
        );
        let mut probabilities = BTreeMap::new();
        let mut answers = BTreeMap::new();
        for (h, row) in heads.iter().zip(out.heads) {
            if h.name != COLOUR_FAMILY {
                answers.insert(h.name.clone(), self.answer(&h.labels, &row));
            }
            probabilities.insert(h.name.clone(), row);
        }
        // The colour family is the head's and the pixel head's answers combined.
        if let Some(h) = &self.model.info.pixel_colour {
            if let Some(p) = probabilities.get_mut(COLOUR_FAMILY) {
                let pixels = h.probabilities(&h.features(
                    &photo.pixels,
                    &mask,
                    out.garment_features.as_deref(),
                ));
                *p = h.fuse(p, &pixels);
            }
        }
        let family = self
            .model
            .head(COLOUR_FAMILY)
            .zip(probabilities.get(COLOUR_FAMILY))
            .map(|(h, p)| self.answer(&h.labels, p));
        Prediction {
            path: String::new(),
            heads: answers,
            colour: self.primary(family, palette),
            probabilities,
            garment: out.garment,
            colour_mask: (photo.pixels.width, photo.pixels.height, mask),
        }
    }

    /// The model's input tensor `[N, 3, side, side]` for prepared photos: their crops, or
    /// their squares for a model that takes the square.
    fn input_batch(&self, photos: &[&Prepared]) -> Result<Array4<f32>> {
        let info = &self.model.info;
        let s = info.input_side() as usize;
        let n = 3 * s * s;
        let mut input = vec![0f32; photos.len() * n];
        for (out, p) in input.chunks_mut(n).zip(photos) {
            let img = if info.takes_square() {
                p.square.as_ref()
            } else {
                Some(&p.crop)
            };
            let img = img.filter(|i| i.width() as usize == s).ok_or_else(|| {
                Error::InvalidArgument("the photo was prepared for another model".into())
            })?;
            info.preprocess.write_tensor(img, false, out);
        }
        Array4::from_shape_vec((photos.len(), 3, s, s), input)
            .map_err(|e| Error::Engine(e.to_string()))
    }

    /// Heat maps of what drove each photo's category (see [`crate::explain`]); one more pass
    /// of the model. Fails when the model has no category head or no map it reads
    /// (`feat_s32`, or `tuned_s32` for a fine-tuned head).
    pub fn heatmaps(&self, photos: &[&Prepared]) -> Result<Vec<crate::explain::Heatmap>> {
        let (Some(explainer), Some(head)) = (&self.model.explainer, self.model.head("category"))
        else {
            return Err(Error::InvalidArgument(
                "this model cannot explain its category (no category head or feat_s32, or \
                 Model::load_explainer was not called)"
                    .into(),
            ));
        };
        if photos.is_empty() {
            return Ok(Vec::new());
        }
        let input = self.input_batch(photos)?;
        let out = self
            .model
            .engine
            .run(input.view(), &[head.feature_map(), "category"])?;
        let feats = out[0]
            .view()
            .into_dimensionality::<ndarray::Ix4>()
            .map_err(|e| Error::Engine(format!("feat_s32: {e}")))?;
        (0..photos.len())
            .map(|i| {
                let probs = out[1].index_axis(ndarray::Axis(0), i);
                let class = probs
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map_or(0, |(k, _)| k);
                let feat = feats.index_axis(ndarray::Axis(0), i);
                Ok(crate::explain::Heatmap {
                    label: head.labels[class].clone(),
                    size: feat.dim().1,
                    values: explainer.map(feat, class),
                })
            })
            .collect()
    }

    fn answer(&self, labels: &[String], probs: &[f32]) -> HeadPrediction {
        let mut order: Vec<usize> = (0..probs.len()).collect();
        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
        let top: Vec<LabelScore> = order
            .iter()
            .take(self.options.top_k.max(1))
            .map(|&i| LabelScore {
                label: labels[i].clone(),
                confidence: probs[i],
            })
            .collect();
        let best = &top[0];
        HeadPrediction {
            label: if best.confidence < self.options.min_confidence {
                UNSURE.to_string()
            } else {
                best.label.clone()
            },
            confidence: best.confidence,
            top,
        }
    }

    /// Combines the learned colour family (the `colour_family` head, with the pixel colour head's
    /// vote where the model has one) with the pixel palette: the learned answer picks the
    /// family (it has seen thousands of labelled products); the palette gives the name and hex
    /// within that family. Without a colour head, the largest palette colour is the primary.
    fn primary(&self, family: Option<HeadPrediction>, palette: Vec<Swatch>) -> ColourPrediction {
        let top = palette.first();
        let primary = match family {
            Some(f) if f.label == "multi" || f.label == UNSURE => PrimaryColour {
                name: f.label.clone(),
                family: f.label.clone(),
                hex: top.map(|s| s.hex.clone()).unwrap_or_default(),
                confidence: f.confidence,
            },
            Some(f) => {
                let (name, hex) = self
                    .vocabulary
                    .shade_of(&palette, &f.label)
                    .unwrap_or_else(|| (f.label.clone(), String::new()));
                PrimaryColour {
                    name,
                    family: f.label,
                    hex,
                    confidence: f.confidence,
                }
            }
            None => match top {
                Some(s) => PrimaryColour {
                    name: s.name.clone(),
                    family: s.family.clone(),
                    hex: s.hex.clone(),
                    confidence: s.share,
                },
                None => PrimaryColour {
                    name: UNSURE.into(),
                    family: UNSURE.into(),
                    hex: String::new(),
                    confidence: 0.0,
                },
            },
        };
        ColourPrediction { primary, palette }
    }
}
