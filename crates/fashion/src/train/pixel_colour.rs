//! Training the pixel colour head ([`crate::model::PixelColourHead`]): the model built so far
//! (backbone, heads, garment mask) classifies every colour-labelled photo as `fashion classify`
//! would; the colour features of the pixels its palette used are the inputs of one more
//! classifier head, trained like the others; then the temperature of the combined answer is
//! fitted on the validation split.

use std::path::Path;

use rayon::prelude::*;

use crate::colour::Vocabulary;
use crate::data::{Sample, Split, COLOUR_FAMILY};
use crate::engine::Threads;
use crate::error::{Error, Result};
use crate::hash::fnv1a;
use crate::model::{Model, PixelColourHead};
use crate::predict::{Classifier, ClassifyOptions, Prepared};

use super::heads::{self, HeadConfig, HeadData, HeadSummary};

/// What training the pixel colour head measured on the validation split.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PixelColourSummary {
    pub head: HeadSummary,
    pub fusion_temperature: f32,
    /// Accuracy of the `colour_family` head alone, of the pixel head alone and of both.
    pub val_accuracy_head: f64,
    pub val_accuracy_pixels: f64,
    pub val_accuracy_combined: f64,
}

/// Trains the head on the samples labelled with a colour family. `model` is the model file
/// built so far (`name` names it in errors).
#[allow(clippy::too_many_arguments)]
pub fn train_pixel_colour(
    model: &[u8],
    name: &Path,
    samples: &[&Sample],
    cfg: &HeadConfig,
    seed: u64,
    threads: usize,
    batch: usize,
    cache_dir: &Path,
) -> Result<Option<(PixelColourHead, PixelColourSummary)>> {
    let model = Model::from_bytes(model, name, Threads::single(threads))?;
    let Some(labels) = model.head(COLOUR_FAMILY).map(|h| h.labels.clone()) else {
        return Ok(None);
    };
    let classifier = Classifier::new(model, Vocabulary::default(), ClassifyOptions::default());
    let anchors: Vec<[f32; 3]> = classifier
        .vocabulary
        .colours
        .iter()
        .map(|c| c.lab)
        .collect();
    let labelled: Vec<(&Sample, usize)> = samples
        .iter()
        .filter_map(|s| {
            let l = s.labels.get(COLOUR_FAMILY)?;
            labels.iter().position(|x| x == l).map(|i| (*s, i))
        })
        .collect();
    // Models with the garment's own features give them to the head too.
    let garment_features = classifier.model.has_garment_features();
    let dim = PixelColourHead::input_len_of(anchors.len(), garment_features);
    let mut data = HeadData::new("pixel_colour", labels.clone(), dim);
    // The `colour_family` head's probabilities on the validation photos, for the fusion.
    let mut val_head: Vec<Vec<f32>> = Vec::new();
    let mut val_feats: Vec<Vec<f32>> = Vec::new();
    let mut val_y: Vec<usize> = Vec::new();
    let bar = super::photo_bar(labelled.len(), "pixel colour");
    // The key of the cached head covers what decides the features: the model (mask included)
    // and the photos.
    let mut key = fnv1a(crate::hash::START, &seed.to_le_bytes());
    for chunk in labelled.chunks(batch.max(1)) {
        let prepared: Vec<Result<Prepared>> = chunk
            .par_iter()
            .map(|(s, _)| classifier.prepare_path(&s.path))
            .collect();
        let good: Vec<(&Prepared, &(&Sample, usize))> = prepared
            .iter()
            .zip(chunk)
            .filter_map(|(p, s)| p.as_ref().ok().map(|p| (p, s)))
            .collect();
        let photos: Vec<&Prepared> = good.iter().map(|(p, _)| *p).collect();
        for ((prep, (sample, class)), out) in good.iter().zip(classifier.infer(&photos)?) {
            let model_features = out.garment_features.clone();
            let pred = classifier.finish(prep, out);
            let f = PixelColourHead::input(
                &prep.pixels.garment(&pred.colour_mask.2),
                &anchors,
                model_features.as_deref(),
            );
            for v in &f {
                key = fnv1a(key, &v.to_le_bytes());
            }
            match sample.split {
                Split::Train => data.push_train(f, *class),
                Split::Val => {
                    val_feats.push(f.clone());
                    val_head.push(
                        pred.probabilities
                            .get(COLOUR_FAMILY)
                            .cloned()
                            .unwrap_or_default(),
                    );
                    val_y.push(*class);
                    data.push_val(f, *class);
                }
            }
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    if labelled.is_empty() {
        return Err(Error::Training(
            "pixel colour: no photo with a colour family label".into(),
        ));
    }
    let (weights, summary) = heads::train_head(data, cfg, seed, cache_dir, key)?;
    let mut head = PixelColourHead {
        anchors,
        head: weights,
        fusion_temperature: 1.0,
        garment_features,
    };
    let pixel_probs: Vec<Vec<f32>> = val_feats.iter().map(|f| head.probabilities(f)).collect();
    let nll = |t: f32| -> f64 {
        let h = PixelColourHead {
            fusion_temperature: t,
            ..head.clone()
        };
        val_head
            .iter()
            .zip(&pixel_probs)
            .zip(&val_y)
            .map(|((a, b), y)| -f64::from(h.fuse(a, b)[*y].max(1e-12)).ln())
            .sum::<f64>()
    };
    head.fusion_temperature = (0..=80)
        .map(|i| 0.5f32 * 10f32.powf(i as f32 / 80.0))
        .min_by(|a, b| nll(*a).total_cmp(&nll(*b)))
        .unwrap_or(1.0);
    let argmax = |p: &[f32]| {
        (0..p.len())
            .max_by(|&a, &b| p[a].total_cmp(&p[b]))
            .unwrap_or(0)
    };
    let acc = |pred: &dyn Fn(usize) -> usize| {
        let right = (0..val_y.len()).filter(|&i| pred(i) == val_y[i]).count();
        right as f64 / val_y.len().max(1) as f64
    };
    let s = PixelColourSummary {
        head: summary,
        fusion_temperature: head.fusion_temperature,
        val_accuracy_head: acc(&|i| argmax(&val_head[i])),
        val_accuracy_pixels: acc(&|i| argmax(&pixel_probs[i])),
        val_accuracy_combined: acc(&|i| argmax(&head.fuse(&val_head[i], &pixel_probs[i]))),
    };
    eprintln!(
        "{:>14}: val accuracy head {:.1}%, pixels {:.1}%, combined {:.1}% (temperature {:.2})",
        "pixel colour",
        100.0 * s.val_accuracy_head,
        100.0 * s.val_accuracy_pixels,
        100.0 * s.val_accuracy_combined,
        s.fusion_temperature
    );
    Ok(Some((head, s)))
}
