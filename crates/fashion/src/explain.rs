//! What drove the category: a class activation map. The category head is a small MLP on the
//! average- and max-pooled `feat_s32`; applied to the features of one 32x32-pixel cell alone (as
//! if that cell were the whole photo), it says how much that cell looks like the predicted
//! category. Done here rather than in the ONNX graph, so the model file stays as served.

use image::{Rgb, RgbImage};
use ndarray::ArrayView3;
use serde::Serialize;

use crate::colour::{lab, Swatch};

use crate::model::FEATURE_DIM;
use crate::onnx::Graph;

/// A coarse map over the model's input square, row by row, scaled to 0..1.
#[derive(Debug, Clone, Serialize)]
pub struct Heatmap {
    /// The category it explains.
    pub label: String,
    /// Cells per side.
    pub size: usize,
    /// `size * size` values, 1 where the photo looks most like `label`.
    pub values: Vec<f32>,
}

/// A head's weights, folded for one cell: `W1[:, avg] + W1[:, max]` (a lone cell's average
/// and maximum are the cell itself).
#[derive(Debug, Clone)]
pub struct Explainer {
    hidden: usize,
    classes: usize,
    w1: Vec<f32>,
    b1: Vec<f32>,
    w2: Vec<f32>,
    b2: Vec<f32>,
}

const CHANNELS: usize = FEATURE_DIM / 2;

impl Explainer {
    /// Reads head `head` from a model graph; `None` if the graph has no such head.
    pub fn from_graph(g: &Graph, head: &str) -> Option<Explainer> {
        let (d1, w1) = g.initializer_f32(&format!("{head}.w1"))?;
        let (_, b1) = g.initializer_f32(&format!("{head}.b1"))?;
        let (d2, w2) = g.initializer_f32(&format!("{head}.w2"))?;
        let (_, b2) = g.initializer_f32(&format!("{head}.b2"))?;
        let (hidden, classes) = (d1[0], d2[0]);
        if d1 != [hidden, FEATURE_DIM] || d2 != [classes, hidden] {
            return None;
        }
        Some(Explainer::fold(hidden, classes, &w1, b1, w2, b2))
    }

    /// From the head's weights as stored (`w1`: `[hidden, FEATURE_DIM]`, `w2`: `[classes,
    /// hidden]`).
    fn fold(
        hidden: usize,
        classes: usize,
        w1: &[f32],
        b1: Vec<f32>,
        w2: Vec<f32>,
        b2: Vec<f32>,
    ) -> Explainer {
        let w1 = w1
            .chunks_exact(FEATURE_DIM)
            .flat_map(|row| (0..CHANNELS).map(move |c| row[c] + row[CHANNELS + c]))
            .collect();
        Explainer {
            hidden,
            classes,
            w1,
            b1,
            w2,
            b2,
        }
    }

    /// The map of class `class` from one photo's `feat_s32` (`[channels, h, w]`).
    pub fn map(&self, feat: ArrayView3<'_, f32>, class: usize) -> Vec<f32> {
        let (c, h, w) = feat.dim();
        assert_eq!(c, CHANNELS, "feat_s32 channels");
        assert!(class < self.classes);
        let mut cell = vec![0f32; CHANNELS];
        let mut hidden = vec![0f32; self.hidden];
        let mut values = Vec::with_capacity(h * w);
        for y in 0..h {
            for x in 0..w {
                for (k, v) in cell.iter_mut().enumerate() {
                    *v = feat[[k, y, x]];
                }
                for (j, out) in hidden.iter_mut().enumerate() {
                    let row = &self.w1[j * CHANNELS..(j + 1) * CHANNELS];
                    let z: f32 =
                        row.iter().zip(&cell).map(|(a, b)| a * b).sum::<f32>() + self.b1[j];
                    *out = z.max(0.0);
                }
                let logits: Vec<f32> = (0..self.classes)
                    .map(|k| {
                        let row = &self.w2[k * self.hidden..(k + 1) * self.hidden];
                        row.iter().zip(&hidden).map(|(a, b)| a * b).sum::<f32>() + self.b2[k]
                    })
                    .collect();
                // Log-probability of the class: comparable across cells.
                let max = logits.iter().copied().fold(f32::MIN, f32::max);
                let lse = max + logits.iter().map(|l| (l - max).exp()).sum::<f32>().ln();
                values.push(logits[class] - lse);
            }
        }
        let lo = values.iter().copied().fold(f32::MAX, f32::min);
        let hi = values.iter().copied().fold(f32::MIN, f32::max);
        let span = (hi - lo).max(1e-6);
        values.iter().map(|v| (v - lo) / span).collect()
    }
}

/// Width of the swatch column of [`colour_sheet`].
pub const SWATCH_WIDTH: u32 = 64;
const GAP: u32 = 8;

/// A picture of how a photo's colours were found: the model's square of the photo; the same
/// with everything outside the garment mask (`mw x mh`, row by row, over the same square)
/// faded to white; a column of the palette's colours, each as tall as its share.
pub fn colour_sheet(
    crop: &RgbImage,
    (mw, mh, mask): (u32, u32, &[bool]),
    palette: &[Swatch],
) -> RgbImage {
    let (w, h) = crop.dimensions();
    let mut out = RgbImage::from_pixel(2 * w + SWATCH_WIDTH + 2 * GAP, h, Rgb([255, 255, 255]));
    for (x, y, p) in crop.enumerate_pixels() {
        out.put_pixel(x, y, *p);
        let (mx, my) = ((x * mw / w).min(mw - 1), (y * mh / h).min(mh - 1));
        let garment = mask[(my * mw + mx) as usize];
        let shown = if garment {
            *p
        } else {
            Rgb(p.0.map(|c| (u16::from(c) / 4 + 191) as u8))
        };
        out.put_pixel(w + GAP + x, y, shown);
    }
    let x0 = 2 * w + 2 * GAP;
    let mut y0 = 0u32;
    for (i, s) in palette.iter().enumerate() {
        let rgb = lab::parse_hex(&s.hex).unwrap_or([255, 255, 255]);
        let y1 = if i + 1 == palette.len() {
            h
        } else {
            (y0 + (s.share * h as f32).round() as u32).min(h)
        };
        for y in y0..y1 {
            for x in x0..x0 + SWATCH_WIDTH {
                out.put_pixel(x, y, Rgb(rgb));
            }
        }
        y0 = y1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_sheet_shows_photo_mask_and_swatches() {
        // A navy block on white: the mask keeps the block, the sheet fades the rest.
        let crop = RgbImage::from_fn(224, 224, |x, y| {
            if (60..160).contains(&x) && (40..200).contains(&y) {
                Rgb([31, 42, 68])
            } else {
                Rgb([250, 250, 250])
            }
        });
        let v = crate::colour::Vocabulary::default();
        let px = crate::colour::ColourPixels::of(&crop);
        let mask = px.mask(None);
        let palette = crate::colour::palette(&px.garment(&mask), &v, 4, 0.05);
        let sheet = colour_sheet(&crop, (px.width, px.height, &mask), &palette);
        assert_eq!(sheet.dimensions(), (2 * 224 + SWATCH_WIDTH + 2 * GAP, 224));
        assert_eq!(sheet.get_pixel(100, 100).0, [31, 42, 68], "photo panel");
        assert_eq!(
            sheet.get_pixel(224 + GAP + 100, 100).0,
            [31, 42, 68],
            "garment kept"
        );
        let faded = sheet.get_pixel(224 + GAP + 10, 10).0;
        assert_eq!(faded, [253, 253, 253], "background faded: 250 / 4 + 191");
        let swatch = sheet.get_pixel(2 * 224 + 2 * GAP + 5, 5).0;
        assert_eq!(Some(swatch), lab::parse_hex(&palette[0].hex));
        assert_eq!(palette[0].name, "navy");
    }

    /// A head whose hidden unit 0 reads channel 0 (avg and max halves alike), and class 1's
    /// logit is that unit: cells with more channel 0 must score higher for class 1.
    #[test]
    fn map_follows_the_cells_that_raise_the_class() {
        let hidden = 2;
        let mut w1 = vec![0f32; hidden * FEATURE_DIM];
        w1[0] = 1.0; // avg half, channel 0
        w1[CHANNELS] = 2.0; // max half, channel 0: folded weight 3
        let e = Explainer::fold(
            hidden,
            2,
            &w1,
            vec![0.0; hidden],
            vec![0.0, 0.0, 1.0, 0.0],
            vec![0.0, 0.0],
        );
        let mut feat = ndarray::Array3::<f32>::zeros((CHANNELS, 2, 2));
        feat[[0, 0, 1]] = 1.0;
        feat[[0, 1, 0]] = 0.5;
        let m = e.map(feat.view(), 1);
        assert_eq!(m.len(), 4);
        assert_eq!(m[1], 1.0, "the strongest cell is hottest");
        assert_eq!(m[0], 0.0);
        assert_eq!(m[3], 0.0);
        assert!(m[2] > 0.0 && m[2] < 1.0, "{m:?}");
        // Class 0 ignores the unit: cells with more channel 0 look less like class 0.
        let m0 = e.map(feat.view(), 0);
        assert_eq!(m0[1], 0.0);
    }
}
