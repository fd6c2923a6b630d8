//! Training the pixel colour head ([`crate::model::PixelColourHead`]): the model built so far
//! (backbone, heads, garment mask) classifies every colour-labelled photo as `fashion classify`
//! would; the colour features of the pixels its palette used are the inputs of one more
//! classifier head, trained like the others (or boosted trees, `[pixel_colour.trees]`), with
//! drawn photos of garments in vivid colours among its training photos
//! ([`super::synthetic`]); then the weight of the `colour_family` head's vote (unless the
//! config sets it) and the temperature of the combined answer are fitted on the validation
//! split.

use std::path::Path;

use image::imageops::FilterType;
use image::RgbImage;
use rayon::prelude::*;

use crate::colour::Vocabulary;
use crate::data::{Sample, Split, COLOUR_FAMILY};
use crate::engine::Threads;
use crate::error::{Error, Result};
use crate::hash::fnv1a;
use crate::model::{Model, PixelClassifier, PixelColourHead};
use crate::predict::{Classifier, ClassifyOptions, Prepared};
use crate::Preprocess;

use super::heads::{self, HeadData, HeadSummary};
use super::synthetic::{draw, vivid_garments};
use super::PixelColourConfig;

/// What training the pixel colour head measured on the validation split.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PixelColourSummary {
    pub head: HeadSummary,
    pub fusion_temperature: f32,
    pub head_weight: f32,
    /// Accuracy of the `colour_family` head alone, of the pixel head alone and of both (null
    /// without validation photos: nothing was measured).
    pub val_accuracy_head: Option<f64>,
    pub val_accuracy_pixels: Option<f64>,
    pub val_accuracy_combined: Option<f64>,
}

/// Trains the head on the samples labelled with a colour family. `model` is the model file
/// built so far (`name` names it in errors).
#[allow(clippy::too_many_arguments)]
pub fn train_pixel_colour(
    model: &[u8],
    name: &Path,
    samples: &[&Sample],
    cfg: &PixelColourConfig,
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
    let mut labelled: Vec<(Source, usize)> = samples
        .iter()
        .filter_map(|s| {
            let l = s.labels.get(COLOUR_FAMILY)?;
            labels
                .iter()
                .position(|x| x == l)
                .map(|i| (Source::Photo(s), i))
        })
        .collect();
    if labelled.is_empty() {
        return Err(Error::Training(
            "pixel colour: no photo with a colour family label".into(),
        ));
    }
    // Drawn photos never outnumber the labelled training photos: a small set keeps its own
    // conventions.
    let train_photos = labelled
        .iter()
        .filter(|(s, _)| s.split() == Split::Train)
        .count();
    let wanted = cfg.vivid_photos.min(train_photos);
    let vivid = vivid_garments(wanted, seed, &classifier.vocabulary, &labels);
    if !vivid.is_empty() {
        let capped = if wanted < cfg.vivid_photos {
            " (no more than the labelled training photos)"
        } else {
            ""
        };
        eprintln!(
            "{:>14}: {} drawn photos of garments in vivid colours join the training photos{capped}",
            "pixel colour",
            vivid.len()
        );
    }
    labelled.extend(vivid.iter().map(|g| (Source::Drawn(g.seed), g.class)));
    // Models with the garment's own features give them to the head too.
    let garment_features = classifier.model.has_garment_features();
    let dim = PixelColourHead::input_len_of(anchors.len(), true, garment_features);
    let mut data = HeadData::new("pixel_colour", labels.clone(), dim);
    // The `colour_family` head's probabilities on the validation photos, for the fusion.
    let mut val_head: Vec<Vec<f32>> = Vec::new();
    let mut val_feats: Vec<Vec<f32>> = Vec::new();
    let mut val_y: Vec<usize> = Vec::new();
    // Which validation rows are portraits: they count in the fit of the fusion, so that it
    // suits both shapes of photo, and not in the accuracies reported.
    let mut val_portrait: Vec<bool> = Vec::new();
    let bar = super::photo_bar(labelled.len(), "pixel colour");
    // The key of the cached head covers what decides the features: the model (mask included)
    // and the photos.
    let mut key = fnv1a(crate::hash::START, &seed.to_le_bytes());
    for chunk in labelled.chunks(batch.max(1)) {
        // Photos are seen twice: as they are, and (square ones) as portraits; each is decoded
        // once for both. Training photos are learnt in both shapes; validation photos in both
        // shapes fit the fusion.
        let pre = &classifier.model.info.preprocess;
        let prepared: Vec<(Prepared, bool, &(Source, usize))> = chunk
            .par_iter()
            .flat_map_iter(|entry| {
                let img = match entry.0 {
                    Source::Photo(s) => pre.load_photo(&s.path, classifier.options.max_pixels).ok(),
                    Source::Drawn(seed) => Some(draw(seed)),
                };
                let photo = img.as_ref().and_then(|i| pre.square(i).ok());
                let portrait = img
                    .as_ref()
                    .and_then(|i| portrait_square(pre, i).ok().flatten());
                let classifier = &classifier;
                photo
                    .map(|sq| (sq, false))
                    .into_iter()
                    .chain(portrait.map(|sq| (sq, true)))
                    .map(move |(sq, portrait)| (classifier.prepare_square(sq), portrait, entry))
            })
            .collect();
        let photos: Vec<&Prepared> = prepared.iter().map(|(p, _, _)| p).collect();
        for ((prep, portrait, (source, class)), out) in
            prepared.iter().zip(classifier.infer(&photos)?)
        {
            let model_features = out.garment_features.clone();
            let pred = classifier.finish(prep, out);
            let f = PixelColourHead::input(
                &prep.pixels,
                &pred.colour_mask.2,
                &anchors,
                true,
                model_features.as_deref(),
            );
            for v in &f {
                key = fnv1a(key, &v.to_le_bytes());
            }
            match source.split() {
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
                    val_portrait.push(*portrait);
                    if !portrait {
                        data.push_val(f, *class);
                    }
                }
            }
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let (classifier, summary) = match &cfg.trees {
        Some(trees) => {
            let (t, s) = super::trees::train_trees(&data, trees, seed, threads)?;
            (PixelClassifier::Trees(t), s)
        }
        None => {
            let (w, s) = heads::train_head(data, &cfg.network(), seed, cache_dir, key)?;
            (PixelClassifier::Network(w), s)
        }
    };
    let mut head = PixelColourHead {
        anchors,
        head: classifier,
        fusion_temperature: 1.0,
        head_weight: 1.0,
        regions: true,
        garment_features,
    };
    let pixel_probs: Vec<Vec<f32>> = val_feats.iter().map(|f| head.probabilities(f)).collect();
    // The head's weight (0 to 1 in steps of 0.05, unless the config sets it) and the
    // temperature (0.5 to 5) with the least negative log-likelihood of the labels, over the
    // validation photos in both shapes: a weak head that errs with the pixels gets less say,
    // and so does a head that answers the portrait (a full catalogue photo) otherwise than its
    // square copy: the backbone's heads learn square photos only.
    let nll = |w: f32, t: f32| -> f64 {
        val_head
            .iter()
            .zip(&pixel_probs)
            .zip(&val_y)
            .map(|((a, b), y)| {
                -f64::from(PixelColourHead::fuse_with(a, b, w, t)[*y].max(1e-12)).ln()
            })
            .sum::<f64>()
    };
    let weights: Vec<f32> = match cfg.head_weight {
        Some(w) => vec![w],
        None => (0..=20).map(|wi| wi as f32 / 20.0).collect(),
    };
    let grid = weights
        .into_iter()
        .flat_map(|w| (0..=80).map(move |ti| (w, 0.5f32 * 10f32.powf(ti as f32 / 80.0))));
    // Without validation photos nothing can be fitted: the pixels alone (or the config's
    // weight), at temperature 1.
    (head.head_weight, head.fusion_temperature) = if val_y.is_empty() {
        (cfg.head_weight.unwrap_or(0.0), 1.0)
    } else {
        grid.map(|(w, t)| (w, t, nll(w, t)))
            .min_by(|a, b| a.2.total_cmp(&b.2))
            .map_or((1.0, 1.0), |(w, t, _)| (w, t))
    };
    let argmax = |p: &[f32]| {
        (0..p.len())
            .max_by(|&a, &b| p[a].total_cmp(&p[b]))
            .unwrap_or(0)
    };
    let acc = |pred: &dyn Fn(usize) -> usize| {
        let plain: Vec<usize> = (0..val_y.len()).filter(|&i| !val_portrait[i]).collect();
        let right = plain.iter().filter(|&&i| pred(i) == val_y[i]).count();
        (!plain.is_empty()).then(|| right as f64 / plain.len() as f64)
    };
    let s = PixelColourSummary {
        head: summary,
        fusion_temperature: head.fusion_temperature,
        head_weight: head.head_weight,
        val_accuracy_head: acc(&|i| argmax(&val_head[i])),
        val_accuracy_pixels: acc(&|i| argmax(&pixel_probs[i])),
        val_accuracy_combined: acc(&|i| argmax(&head.fuse(&val_head[i], &pixel_probs[i]))),
    };
    let measured = match (
        s.val_accuracy_head,
        s.val_accuracy_pixels,
        s.val_accuracy_combined,
    ) {
        (Some(head), Some(pixels), Some(combined)) => format!(
            "val accuracy head {:.1}%, pixels {:.1}%, combined {:.1}%",
            100.0 * head,
            100.0 * pixels,
            100.0 * combined,
        ),
        _ => "no validation photos: accuracy not measured, nothing fitted".to_string(),
    };
    eprintln!(
        "{:>14}: {measured} (head weight {:.2}, temperature {:.2})",
        "pixel colour", s.head_weight, s.fusion_temperature
    );
    Ok(Some((head, s)))
}

/// A photo the head learns from: a labelled one, or one drawn ([`super::synthetic`]), which is
/// always a training photo.
enum Source<'a> {
    Photo(&'a Sample),
    Drawn(u64),
}

impl Source<'_> {
    fn split(&self) -> Split {
        match self {
            Source::Photo(s) => s.split,
            Source::Drawn(_) => Split::Train,
        }
    }
}

/// The model's square of a square photo stretched back to a 3:4 portrait (its width cut by a
/// quarter), brought to the square as any photo is; `None` for a photo that is not square.
/// Catalogue photos are 3:4 portraits, and square catalogue copies (FPI's) are those portraits
/// squashed: a head that learns both shapes gives a full photo and its square copy the same
/// colour.
fn portrait_square(pre: &Preprocess, img: &RgbImage) -> Result<Option<RgbImage>> {
    let (w, h) = img.dimensions();
    if w != h {
        return Ok(None);
    }
    let tall = image::imageops::resize(img, (w * 3 / 4).max(1), h, FilterType::Triangle);
    pre.square(&tall).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Fit;

    #[test]
    fn a_portrait_is_the_photo_three_quarters_wide_padded_square() {
        let (red, blue) = (image::Rgb([200, 20, 20]), image::Rgb([20, 20, 200]));
        // Left half red, right half blue.
        let img = RgbImage::from_fn(64, 64, |x, _| if x < 32 { red } else { blue });
        let pre = Preprocess {
            fit: Fit::Pad,
            ..Preprocess::default()
        };
        let sq = portrait_square(&pre, &img).unwrap().unwrap();
        assert_eq!(sq.dimensions(), (256, 256));
        // 48 x 64 scaled to 192 x 256 and centred: red over x 32..128, blue over 128..224
        // (blended where they meet), the edges' mean colour beside them.
        for (x, want) in [(35, red), (110, red), (146, blue), (221, blue)] {
            assert_eq!(*sq.get_pixel(x, 128), want, "x = {x}");
        }
        for x in [5, 250] {
            let p = *sq.get_pixel(x, 128);
            assert!(p != red && p != blue, "x = {x}: padding, not the photo");
        }
        // A photo that is not square has no portrait.
        assert!(portrait_square(&pre, &RgbImage::new(48, 64))
            .unwrap()
            .is_none());
    }
}
