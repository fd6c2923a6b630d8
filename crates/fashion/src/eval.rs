//! Measuring a model on a labelled dataset: accuracy, top-3, macro-F1, per-class precision and
//! recall, confusion matrix and calibration, for every head the dataset labels, each in the
//! dataset's own label space. Reports as JSON, Markdown and PNG plots.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::data::{Dataset, Sample, Split, COLOUR_FAMILY};
use crate::error::{Error, Result};
use crate::predict::{Classifier, Prediction};

/// Which photos to measure on.
#[derive(Debug, Clone, Default)]
pub struct EvalOptions {
    /// `None` measures on every photo.
    pub split: Option<Split>,
    /// Keep only photos whose attribute equals the value (e.g. `master_category` = `Apparel`).
    pub only: Vec<(String, String)>,
    /// Photos per model batch.
    pub batch: usize,
}

/// Precision, recall and F1 of one class.
#[derive(Debug, Clone, Serialize)]
pub struct ClassStats {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: usize,
}

/// Confusion matrix: `matrix[true][predicted]`, rows and columns in `labels` order.
#[derive(Debug, Clone, Serialize)]
pub struct Confusion {
    pub labels: Vec<String>,
    pub matrix: Vec<Vec<usize>>,
}

/// Reliability of the confidences: per confidence bin, how often the answer was right.
#[derive(Debug, Clone, Serialize)]
pub struct Calibration {
    /// Expected calibration error (10 equal-width bins).
    pub ece: f64,
    /// `[lower edge, mean confidence, accuracy, count]` per bin.
    pub bins: Vec<(f64, f64, f64, usize)>,
}

/// The measurements of one head.
#[derive(Debug, Clone, Serialize)]
pub struct HeadReport {
    pub n: usize,
    pub accuracy: f64,
    pub top3: f64,
    /// Mean F1 over the classes present in the ground truth.
    pub macro_f1: f64,
    pub per_class: BTreeMap<String, ClassStats>,
    pub confusion: Confusion,
    pub calibration: Calibration,
    /// Present when the dataset says which photos show the same product.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub products: Option<Products>,
}

/// The measurements of a model on one dataset.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub model: String,
    pub dataset: PathBuf,
    pub split: String,
    pub photos: usize,
    pub failed: Vec<String>,
    #[serde(flatten)]
    pub heads: BTreeMap<String, HeadReport>,
    /// Garment masks against the dataset's parsing masks, where it has them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mask: Option<MaskReport>,
    /// Garment masks of the photos without a parsing mask that are product shots, against the
    /// product's outline ([`crate::mask::product_foreground`]); `leak` is the share of garment
    /// pixels on the background there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub product_shots: Option<MaskReport>,
}

/// How well garment masks match a truth: parsing masks, or the outlines of product shots (see
/// [`crate::mask::MaskScore`]).
#[derive(Debug, Clone, Serialize)]
pub struct MaskReport {
    /// Photos scored.
    pub n: usize,
    /// The learned mask (model output, upsampled to the crop): mean IoU over photos, and the
    /// share of its garment pixels (all photos pooled) on skin, face, hair or background.
    /// Absent for a model without a mask head.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub learned: Option<MaskNumbers>,
    /// The mask the palette was computed from (the learned one, or the colour mask where it
    /// finds too little garment or the model has none).
    pub palette: MaskNumbers,
}

/// Mean IoU and pooled leak of one kind of mask.
#[derive(Debug, Clone, Serialize)]
pub struct MaskNumbers {
    pub mean_iou: f64,
    pub leak: f64,
}

#[derive(Default)]
struct MaskTally {
    n: usize,
    iou_sum: f64,
    total: crate::mask::MaskScore,
}

impl MaskTally {
    fn add(&mut self, s: crate::mask::MaskScore) {
        self.n += 1;
        self.iou_sum += s.iou();
        self.total.intersection += s.intersection;
        self.total.union += s.union;
        self.total.predicted += s.predicted;
        self.total.on_not_garment += s.on_not_garment;
    }

    /// The report of the palette's masks (`self`) and the learned ones, if any photo was scored.
    fn report(&self, learned: &MaskTally) -> Option<MaskReport> {
        (self.n > 0).then(|| MaskReport {
            n: self.n,
            learned: (learned.n > 0).then(|| learned.numbers()),
            palette: self.numbers(),
        })
    }

    fn numbers(&self) -> MaskNumbers {
        MaskNumbers {
            mean_iou: self.iou_sum / self.n.max(1) as f64,
            leak: self.total.leak(),
        }
    }
}

struct Outcome {
    truth: String,
    predicted: String,
    confidence: f32,
    in_top3: bool,
    /// The product the photo shows, and the head's probabilities (model label order) as it
    /// votes for the product ([`crate::model::HeadInfo::vote`]).
    group: Option<String>,
    probs: Vec<f32>,
}

/// Accuracy per product when all photos of a product vote together (mean probability).
#[derive(Debug, Clone, Serialize)]
pub struct Products {
    /// Products (groups of photos) measured.
    pub n: usize,
    /// Share of products whose combined answer is right.
    pub accuracy: f64,
}

/// Runs the model over the dataset's photos and measures every head the dataset labels.
pub fn evaluate(classifier: &Classifier, data: &Dataset, opts: &EvalOptions) -> Result<Report> {
    let samples: Vec<&Sample> = data
        .split(opts.split)
        .into_iter()
        .filter(|s| opts.only.iter().all(|(k, v)| s.attrs.get(k) == Some(v)))
        .collect();
    if samples.is_empty() {
        return Err(Error::InvalidArgument(
            "no photos match the split and filters".into(),
        ));
    }
    let bar = ProgressBar::new(samples.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} photos {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut outcomes: BTreeMap<String, Vec<Outcome>> = BTreeMap::new();
    let mut failed = Vec::new();
    let (mut learned, mut palette) = (MaskTally::default(), MaskTally::default());
    let (mut shots_learned, mut shots_palette) = (MaskTally::default(), MaskTally::default());
    let stream = crate::stream::StreamOptions {
        batch: opts.batch.max(1),
        ..Default::default()
    };
    let mut next = samples.iter();
    classifier.classify_stream(
        samples.iter().map(|s| s.path.clone()),
        &stream,
        |_, r| -> Result<()> {
            // Results come in input order.
            let s = next.next().expect("one result per sample");
            match r {
                Ok(p) => {
                    record(classifier, s, &p, &mut outcomes);
                    if let Some(seg) = &s.mask {
                        let size = image::image_dimensions(&s.path)
                            .map_err(|e| Error::bad_data(&s.path, e.to_string()))?;
                        let planes = crate::mask::parsing_crop(
                            &classifier.model.info.preprocess,
                            seg,
                            size,
                        )?;
                        if let Some(g) = &p.garment {
                            learned.add(crate::mask::MaskScore::of(g, &planes));
                        }
                        let (mw, mh, m) = &p.colour_mask;
                        palette.add(crate::mask::MaskScore::of_mask(m, *mw, *mh, &planes));
                    } else if let Some(truth) = product_shot_truth(classifier, s) {
                        if let Some(g) = &p.garment {
                            shots_learned.add(crate::mask::MaskScore::of(g, &truth));
                        }
                        let (mw, mh, m) = &p.colour_mask;
                        shots_palette.add(crate::mask::MaskScore::of_mask(m, *mw, *mh, &truth));
                    }
                }
                Err(e) => failed.push(e.to_string()),
            }
            bar.inc(1);
            Ok(())
        },
    )?;
    bar.finish_and_clear();
    let heads = outcomes
        .into_iter()
        .filter(|(_, o)| !o.is_empty())
        .map(|(h, o)| {
            let labels = classifier.model.head(&h).map_or(&[][..], |i| &i.labels[..]);
            let mut report = measure(&o);
            report.products = products(&o, labels);
            (h, report)
        })
        .collect();
    Ok(Report {
        model: classifier.model.info.name.clone(),
        dataset: data.root.clone(),
        split: opts
            .split
            .map_or("all".to_string(), |s| format!("{s:?}").to_lowercase()),
        photos: samples.len(),
        failed,
        heads,
        mask: palette.report(&learned),
        product_shots: shots_palette.report(&shots_learned),
    })
}

/// A photo's outline as planes to score a mask against ([`crate::mask::MaskScore`]; red: the
/// product, green: the background), where the photo is a product shot.
fn product_shot_truth(c: &Classifier, s: &Sample) -> Option<RgbImage> {
    let crop = c
        .model
        .info
        .preprocess
        .load(&s.path, c.options.max_pixels)
        .ok()?;
    let fg = crate::mask::product_foreground(&crop)?;
    let w = crop.width();
    Some(RgbImage::from_fn(crop.width(), crop.height(), |x, y| {
        Rgb(if fg[(y * w + x) as usize] {
            [255, 0, 0]
        } else {
            [0, 255, 0]
        })
    }))
}

fn record(c: &Classifier, s: &Sample, p: &Prediction, out: &mut BTreeMap<String, Vec<Outcome>>) {
    for (head, truth) in &s.labels {
        let Some(info) = c.model.head(head) else {
            continue;
        };
        let Some(probs) = p.probabilities.get(head) else {
            continue;
        };
        let mut order: Vec<usize> = (0..probs.len()).collect();
        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
        let in_top3 = order.iter().take(3).any(|&i| &info.labels[i] == truth);
        // The colour answer users see is the combined primary colour; score that.
        let (predicted, confidence) = if head == COLOUR_FAMILY {
            (p.colour.primary.family.clone(), p.colour.primary.confidence)
        } else {
            (info.labels[order[0]].clone(), probs[order[0]])
        };
        out.entry(head.clone()).or_default().push(Outcome {
            truth: truth.clone(),
            predicted,
            confidence,
            in_top3,
            group: s.group.clone(),
            probs: info.vote(probs),
        });
    }
}

/// Combines the photos of each product by their mean probabilities and scores the products.
/// `None` unless every photo belongs to a product, each product has one true label (a view
/// differs from photo to photo of a product; its category does not) and some product has
/// several photos.
fn products(o: &[Outcome], labels: &[String]) -> Option<Products> {
    let mut groups: BTreeMap<&str, (Vec<f32>, &str)> = BTreeMap::new();
    for x in o {
        let g = x.group.as_deref()?;
        let (sum, truth) = groups
            .entry(g)
            .or_insert_with(|| (vec![0.0; x.probs.len()], x.truth.as_str()));
        if *truth != x.truth {
            return None;
        }
        for (a, b) in sum.iter_mut().zip(&x.probs) {
            *a += b;
        }
    }
    let right = groups
        .values()
        .filter(|(sum, truth)| {
            let best = (0..sum.len()).max_by(|&a, &b| sum[a].total_cmp(&sum[b]));
            best.and_then(|i| labels.get(i)).is_some_and(|l| l == truth)
        })
        .count();
    // One photo per product says nothing beyond the per-photo numbers.
    (groups.len() < o.len()).then(|| Products {
        n: groups.len(),
        accuracy: right as f64 / groups.len() as f64,
    })
}

fn measure(o: &[Outcome]) -> HeadReport {
    let mut labels: Vec<String> = o
        .iter()
        .flat_map(|x| [x.truth.clone(), x.predicted.clone()])
        .collect();
    labels.sort();
    labels.dedup();
    let idx: BTreeMap<&str, usize> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.as_str(), i))
        .collect();
    let k = labels.len();
    let mut matrix = vec![vec![0usize; k]; k];
    for x in o {
        matrix[idx[x.truth.as_str()]][idx[x.predicted.as_str()]] += 1;
    }
    let n = o.len();
    let correct = o.iter().filter(|x| x.truth == x.predicted).count();
    let mut per_class = BTreeMap::new();
    let mut f1_sum = 0.0;
    let mut present = 0;
    for (i, l) in labels.iter().enumerate() {
        let tp = matrix[i][i] as f64;
        let support: usize = matrix[i].iter().sum();
        let predicted: usize = matrix.iter().map(|r| r[i]).sum();
        let precision = if predicted > 0 {
            tp / predicted as f64
        } else {
            0.0
        };
        let recall = if support > 0 {
            tp / support as f64
        } else {
            0.0
        };
        let f1 = if precision + recall > 0.0 {
            2.0 * precision * recall / (precision + recall)
        } else {
            0.0
        };
        if support > 0 {
            f1_sum += f1;
            present += 1;
        }
        per_class.insert(
            l.clone(),
            ClassStats {
                precision,
                recall,
                f1,
                support,
            },
        );
    }
    let mut bins = Vec::new();
    let mut ece = 0.0;
    for b in 0..10 {
        let lo = b as f64 / 10.0;
        let inb: Vec<&Outcome> = o
            .iter()
            .filter(|x| {
                let c = f64::from(x.confidence);
                c >= lo && (c < lo + 0.1 || (b == 9 && c <= 1.0))
            })
            .collect();
        if inb.is_empty() {
            bins.push((lo, 0.0, 0.0, 0));
            continue;
        }
        let conf = inb.iter().map(|x| f64::from(x.confidence)).sum::<f64>() / inb.len() as f64;
        let acc = inb.iter().filter(|x| x.truth == x.predicted).count() as f64 / inb.len() as f64;
        ece += (conf - acc).abs() * inb.len() as f64 / n as f64;
        bins.push((lo, conf, acc, inb.len()));
    }
    HeadReport {
        n,
        accuracy: correct as f64 / n as f64,
        top3: o.iter().filter(|x| x.in_top3).count() as f64 / n as f64,
        macro_f1: if present > 0 {
            f1_sum / present as f64
        } else {
            0.0
        },
        per_class,
        confusion: Confusion { labels, matrix },
        calibration: Calibration { ece, bins },
        products: None,
    }
}

impl Report {
    /// The report as Markdown.
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "# {} on {} ({} split)\n\n{} photos, {} failed to decode.\n\n| head | n | accuracy | top-3 | macro-F1 | ECE | products | product accuracy |\n|---|---|---|---|---|---|---|---|\n",
            self.model,
            self.dataset.display(),
            self.split,
            self.photos,
            self.failed.len()
        );
        for (h, r) in &self.heads {
            let (np, pa) = r
                .products
                .as_ref()
                .map_or((String::new(), String::new()), |p| {
                    (p.n.to_string(), format!("{:.1}%", 100.0 * p.accuracy))
                });
            s += &format!(
                "| {h} | {} | {:.1}% | {:.1}% | {:.3} | {:.3} | {np} | {pa} |\n",
                r.n,
                100.0 * r.accuracy,
                100.0 * r.top3,
                r.macro_f1,
                r.calibration.ece
            );
        }
        let masks = [
            (
                &self.mask,
                "parsing masks",
                "skin, face, hair or background",
            ),
            (
                &self.product_shots,
                "outlines of product shots",
                "the background",
            ),
        ];
        for (m, against, off) in masks {
            let Some(m) = m else { continue };
            s += &format!(
                "\nGarment mask against {} {against}: mean IoU / share of garment pixels on {off}\n\n| mask | mean IoU | off the garment |\n|---|---|---|\n",
                m.n
            );
            let rows = [
                ("learned", m.learned.as_ref()),
                ("palette", Some(&m.palette)),
            ];
            for (name, n) in rows {
                if let Some(n) = n {
                    s += &format!("| {name} | {:.3} | {:.1}% |\n", n.mean_iou, 100.0 * n.leak);
                }
            }
        }
        for (h, r) in &self.heads {
            s += &format!("\n## {h}\n\n| class | support | precision | recall | F1 |\n|---|---|---|---|---|\n");
            for (l, c) in &r.per_class {
                s += &format!(
                    "| {l} | {} | {:.2} | {:.2} | {:.2} |\n",
                    c.support, c.precision, c.recall, c.f1
                );
            }
        }
        s
    }

    /// Writes `<stem>.json`, `<stem>.md` and per head `<stem>.<head>.confusion.png` and
    /// `<stem>.<head>.reliability.png` (rows of the confusion image are true labels in the
    /// Markdown's order, normalised per row).
    pub fn write(&self, json_path: &Path) -> Result<Vec<PathBuf>> {
        let json = serde_json::to_string_pretty(self)
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let mut written = vec![json_path.to_path_buf()];
        crate::train::write_atomically(json_path, json.as_bytes())?;
        let md = json_path.with_extension("md");
        crate::train::write_atomically(&md, self.markdown().as_bytes())?;
        written.push(md);
        for (h, r) in &self.heads {
            let cm = json_path.with_extension(format!("{h}.confusion.png"));
            save_png(&confusion_png(&r.confusion), &cm)?;
            let rel = json_path.with_extension(format!("{h}.reliability.png"));
            save_png(&reliability_png(&r.calibration), &rel)?;
            written.extend([cm, rel]);
        }
        Ok(written)
    }
}

fn save_png(img: &RgbImage, path: &Path) -> Result<()> {
    img.save(path)
        .map_err(|e| Error::io(path, std::io::Error::other(e.to_string())))
}

/// A row-normalised confusion matrix as a heat map (white = 0, dark blue = 1), 16 px per cell.
fn confusion_png(c: &Confusion) -> RgbImage {
    let k = c.labels.len().max(1);
    let cell = 16u32;
    RgbImage::from_fn(k as u32 * cell, k as u32 * cell, |x, y| {
        let (i, j) = ((y / cell) as usize, (x / cell) as usize);
        if x % cell == 0 || y % cell == 0 {
            return Rgb([220, 220, 220]);
        }
        let total: usize = c.matrix[i].iter().sum();
        let v = if total > 0 {
            c.matrix[i][j] as f32 / total as f32
        } else {
            0.0
        };
        let shade = |lo: f32, hi: f32| (lo + (hi - lo) * v) as u8;
        Rgb([shade(255.0, 8.0), shade(255.0, 48.0), shade(255.0, 107.0)])
    })
}

/// A reliability diagram: per confidence bin, a bar as high as the accuracy (blue) beside the
/// diagonal of perfect calibration (grey line).
fn reliability_png(c: &Calibration) -> RgbImage {
    let (w, h) = (300u32, 300u32);
    let mut img = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
    for (b, &(_, _, acc, count)) in c.bins.iter().enumerate() {
        if count == 0 {
            continue;
        }
        let x0 = b as u32 * 30 + 2;
        let top = h - (acc * f64::from(h)).round() as u32;
        for x in x0..x0 + 26 {
            for y in top..h {
                img.put_pixel(x, y, Rgb([43, 89, 195]));
            }
        }
    }
    for x in 0..w {
        let y = h - 1 - (x * h / w).min(h - 1);
        img.put_pixel(x, y, Rgb([120, 120, 120]));
    }
    img
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A product shot (a navy block clear of the edges of a white photo) is scored against its
    /// outline; a photo whose subject runs off the edge is not a product shot.
    #[test]
    fn product_shots_are_scored_against_their_outline() {
        let dir = tempfile::tempdir().unwrap();
        let class = dir.path().join("Tees_Tanks");
        std::fs::create_dir(&class).unwrap();
        let photo = |name: &str, off_edge: bool| {
            RgbImage::from_fn(256, 256, |x, y| {
                let inside =
                    (64..192).contains(&x) && (48..if off_edge { 256 } else { 208 }).contains(&y);
                Rgb(if inside {
                    [25, 35, 80]
                } else {
                    [250, 250, 250]
                })
            })
            .save(class.join(name))
            .unwrap();
        };
        photo("shot.png", false);
        photo("worn.png", true);
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let model = crate::model::Model::load(
            &root.join("models/default.onnx"),
            crate::engine::Threads::single(1),
        )
        .unwrap();
        let c = Classifier::new(
            model,
            crate::colour::Vocabulary::default(),
            crate::predict::ClassifyOptions::default(),
        );
        let data = Dataset::load(dir.path(), crate::data::Layout::Folders).unwrap();
        let opts = EvalOptions {
            split: None,
            only: Vec::new(),
            batch: 2,
        };
        let r = evaluate(&c, &data, &opts).unwrap();
        assert!(r.mask.is_none());
        let shots = r.product_shots.expect("one product shot");
        assert_eq!(shots.n, 1);
        // A drawn block is no garment to the learned mask (it is measured on real photos by
        // the real-data gates); the palette's mask, its fallback here, finds the block.
        let learned = shots.learned.expect("the model has a mask head");
        assert!((0.0..=1.0).contains(&learned.mean_iou), "{learned:?}");
        assert!(shots.palette.mean_iou > 0.8, "{:?}", shots.palette);
        assert!(shots.palette.leak < 0.1, "{:?}", shots.palette);
    }

    fn o(t: &str, p: &str, c: f32) -> Outcome {
        Outcome {
            truth: t.into(),
            predicted: p.into(),
            confidence: c,
            in_top3: t == p,
            group: None,
            probs: Vec::new(),
        }
    }

    #[test]
    fn products_vote_with_mean_probabilities() {
        let photo = |g: &str, p: [f32; 2]| Outcome {
            group: Some(g.into()),
            probs: p.to_vec(),
            ..o("a", if p[0] > p[1] { "a" } else { "b" }, p[0].max(p[1]))
        };
        let labels = ["a".to_string(), "b".to_string()];
        // p1: mean (0.45, 0.55) -> b, wrong. p2: right. p3: the vote fixes its second photo.
        let r = products(
            &[
                photo("p1", [0.6, 0.4]),
                photo("p1", [0.3, 0.7]),
                photo("p2", [0.9, 0.1]),
                photo("p3", [0.8, 0.2]),
                photo("p3", [0.45, 0.55]),
            ],
            &labels,
        )
        .unwrap();
        assert_eq!(r.n, 3);
        assert!((r.accuracy - 2.0 / 3.0).abs() < 1e-12);
        assert!(
            products(&[o("a", "a", 0.9)], &labels).is_none(),
            "no groups, no vote"
        );
    }

    #[test]
    fn metrics_match_hand_computation() {
        // a: 2 of 3 right; b: 1 of 1 right, plus one a predicted as b.
        let r = measure(&[
            o("a", "a", 0.95),
            o("a", "a", 0.85),
            o("a", "b", 0.65),
            o("b", "b", 0.75),
        ]);
        assert_eq!(r.n, 4);
        assert!((r.accuracy - 0.75).abs() < 1e-12);
        let a = &r.per_class["a"];
        assert!((a.precision - 1.0).abs() < 1e-12 && (a.recall - 2.0 / 3.0).abs() < 1e-12);
        let b = &r.per_class["b"];
        assert!((b.precision - 0.5).abs() < 1e-12 && (b.recall - 1.0).abs() < 1e-12);
        let f1a = 2.0 * (2.0 / 3.0) / (1.0 + 2.0 / 3.0);
        let f1b = 2.0 * 0.5 / 1.5;
        assert!((r.macro_f1 - (f1a + f1b) / 2.0).abs() < 1e-12);
        assert_eq!(r.confusion.matrix, vec![vec![2, 1], vec![0, 1]]);
        // One photo per bin: 0.65 (wrong), 0.75, 0.85, 0.95 (right): sum of |conf - acc| / 4.
        let ece = (0.65 + 0.25 + 0.15 + 0.05) / 4.0;
        assert!(
            (r.calibration.ece - ece).abs() < 1e-6,
            "{}",
            r.calibration.ece
        );
    }
}
