//! The learned garment mask: which pixels of the model's square are garment (not skin, hair,
//! face or background). A small head on the backbone's feature maps at strides 8, 16 and 32
//! (`feat_s8`, `feat_s16`, `feat_s32`): each map goes through a 1x1 convolution to `hidden`
//! channels, the coarser two are upsampled bilinearly to the stride-8 grid, the three are added,
//! then ReLU, a 1x1 convolution to one channel and a sigmoid: the probability that each cell of
//! a 28x28 grid over the 224x224 square is garment. It is part of the model file (output
//! [`MASK_OUTPUT`]); it is trained on human-parsing masks by `fashion train` (see
//! [`crate::train`]).
//!
//! Upsampling is written as two matrix products with fixed interpolation matrices
//! ([`interp_matrix`]), the same in training, in the ONNX graph and when the mask is brought to
//! a palette's or a photo's size ([`upsample`]), so all three agree exactly.

use image::RgbImage;

use crate::onnx::{Attr, Graph};

/// The model output holding garment probabilities, `[N, 1, MASK_SIDE, MASK_SIDE]`.
pub const MASK_OUTPUT: &str = "garment_mask";
/// The model output holding the garment's own low-level features, `[N, GARMENT_FEATURES_DIM]`:
/// the mean of `feat_s8` and of `feat_s16` over the photo, each cell weighted by its garment
/// probability ([`add_garment_features`]). What the pixel colour head reads besides the
/// garment's pixels: the backbone's early maps describe colour and texture, and pooled over the
/// garment alone they leave out skin, hair and background.
pub const GARMENT_FEATURES: &str = "garment_features";
/// Length of [`GARMENT_FEATURES`]: the channels of `feat_s8` and `feat_s16`.
pub const GARMENT_FEATURES_DIM: usize = MASK_INPUTS[0].1 + MASK_INPUTS[1].1;
/// Side of the mask grid (stride 8 over a 224-pixel square).
pub const MASK_SIDE: usize = 28;
/// The backbone feature maps the mask reads, their channels and sides.
pub const MASK_INPUTS: [(&str, usize, usize); 3] = [
    ("feat_s8", 40, 28),
    ("feat_s16", 112, 14),
    ("feat_s32", 1280, 7),
];

/// Weights of the mask head; `w[i]` is row-major `[hidden, channels of MASK_INPUTS[i]]`.
#[derive(Debug, Clone)]
pub struct MaskWeights {
    pub hidden: usize,
    pub w: [Vec<f32>; 3],
    /// Bias of the summed hidden layer, `[hidden]`.
    pub b: Vec<f32>,
    /// Output layer, `[hidden]`, and its bias.
    pub w_out: Vec<f32>,
    pub b_out: f32,
}

/// Bilinear interpolation from `n_in` to `n_out` samples (half-pixel centres, edges clamped, as
/// ONNX `Resize` and PyTorch `align_corners=False` do): row-major `[n_out, n_in]`.
pub fn interp_matrix(n_in: usize, n_out: usize) -> Vec<f32> {
    let mut m = vec![0f32; n_out * n_in];
    let scale = n_in as f32 / n_out as f32;
    for o in 0..n_out {
        let x = ((o as f32 + 0.5) * scale - 0.5).clamp(0.0, (n_in - 1) as f32);
        let i0 = x.floor() as usize;
        let i1 = (i0 + 1).min(n_in - 1);
        let t = x - i0 as f32;
        m[o * n_in + i0] += 1.0 - t;
        m[o * n_in + i1] += t;
    }
    m
}

/// Resizes a square `n_in x n_in` map (row-major) to `w x h` bilinearly (see [`interp_matrix`]).
pub fn upsample(src: &[f32], n_in: usize, w: usize, h: usize) -> Vec<f32> {
    assert_eq!(src.len(), n_in * n_in);
    let mx = interp_matrix(n_in, w);
    let my = interp_matrix(n_in, h);
    // Rows first: [n_in, n_in] -> [n_in, w].
    let mut rows = vec![0f32; n_in * w];
    for y in 0..n_in {
        for x in 0..w {
            rows[y * w + x] = (0..n_in)
                .map(|i| src[y * n_in + i] * mx[x * n_in + i])
                .sum();
        }
    }
    let mut out = vec![0f32; h * w];
    for y in 0..h {
        for x in 0..w {
            out[y * w + x] = (0..n_in).map(|i| rows[i * w + x] * my[y * n_in + i]).sum();
        }
    }
    out
}

/// Adds the mask head to a graph whose nodes produce [`MASK_INPUTS`]; its output is
/// [`MASK_OUTPUT`] (the caller lists it among the graph's outputs).
pub fn add_to_graph(g: &mut Graph, m: &MaskWeights) {
    let h = m.hidden;
    let mut sum: Option<String> = None;
    for (i, (input, channels, side)) in MASK_INPUTS.iter().enumerate() {
        let w = format!("mask.w_{input}");
        g.initializer(&w, &[h, *channels, 1, 1], m.w[i].clone());
        let mut x = format!("mask.{input}");
        if i == 0 {
            g.initializer("mask.b", &[h], m.b.clone());
            g.node("Conv", &[input, &w, "mask.b"], &x, vec![]);
        } else {
            g.node("Conv", &[input, &w], &x, vec![]);
        }
        if *side != MASK_SIDE {
            // [N,h,s,s] x [s,28] -> [N,h,s,28]; [28,s] x that -> [N,h,28,28].
            let across = format!("mask.up_{side}_t");
            let down = format!("mask.up_{side}");
            let m = interp_matrix(*side, MASK_SIDE);
            g.initializer(
                &across,
                &[*side, MASK_SIDE],
                transpose(&m, MASK_SIDE, *side),
            );
            g.initializer(&down, &[MASK_SIDE, *side], m);
            let xa = format!("{x}.across");
            g.node("MatMul", &[&x, &across], &xa, vec![]);
            let xd = format!("{x}.up");
            g.node("MatMul", &[&down, &xa], &xd, vec![]);
            x = xd;
        }
        sum = Some(match sum {
            None => x,
            Some(s) => {
                let out = format!("mask.sum{i}");
                g.node("Add", &[&s, &x], &out, vec![]);
                out
            }
        });
    }
    let sum = sum.expect("three inputs");
    g.node("Relu", &[&sum], "mask.hidden", vec![]);
    g.initializer("mask.w_out", &[1, h, 1, 1], m.w_out.clone());
    g.initializer("mask.b_out", &[1], vec![m.b_out]);
    g.node(
        "Conv",
        &["mask.hidden", "mask.w_out", "mask.b_out"],
        "mask.logits",
        vec![("kernel_shape", Attr::Ints(vec![1, 1]))],
    );
    g.node("Sigmoid", &["mask.logits"], MASK_OUTPUT, vec![]);
}

/// Adds [`GARMENT_FEATURES`] to a graph that has the mask head ([`add_to_graph`]): for `feat_s8`
/// (28x28, the mask's own grid) and `feat_s16` (14x14, the mask averaged over 2x2 cells),
/// `mean(feature x mask) / (mean(mask) + 1e-6)` over the cells, then both side by side. The
/// caller lists it among the graph's outputs.
pub fn add_garment_features(g: &mut Graph) {
    g.initializer("garment.eps", &[], vec![1e-6]);
    g.node(
        "AveragePool",
        &[MASK_OUTPUT],
        "garment.mask_s16",
        vec![
            ("kernel_shape", Attr::Ints(vec![2, 2])),
            ("strides", Attr::Ints(vec![2, 2])),
        ],
    );
    let over_cells = || vec![("axes", Attr::Ints(vec![2, 3])), ("keepdims", Attr::Int(0))];
    let mut parts = Vec::new();
    for ((input, _, _), mask) in MASK_INPUTS[..2]
        .iter()
        .zip([MASK_OUTPUT, "garment.mask_s16"])
    {
        let [weighted, sum, area, area_eps, mean] =
            ["weighted", "sum", "area", "area_eps", "mean"].map(|s| format!("garment.{input}.{s}"));
        g.node("Mul", &[input, mask], &weighted, vec![]);
        g.node("ReduceMean", &[&weighted], &sum, over_cells());
        g.node("ReduceMean", &[mask], &area, over_cells());
        g.node("Add", &[&area, "garment.eps"], &area_eps, vec![]);
        g.node("Div", &[&sum, &area_eps], &mean, vec![]);
        parts.push(mean);
    }
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    g.node(
        "Concat",
        &parts,
        GARMENT_FEATURES,
        vec![("axis", Attr::Int(1))],
    );
}

fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; m.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = m[r * cols + c];
        }
    }
    t
}

/// What a human-parsing mask says about a pixel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsing {
    /// Upper clothes, dress, coat, pants, jumpsuit, skirt, scarf.
    Garment,
    /// Background, hair, face, arms, legs: what a colour must never come from.
    NotGarment,
    /// Hat, gloves, sunglasses, socks, shoes: worn, but not the garment.
    Other,
}

/// The class of a pixel of a parsing mask in the LIP/CIHP palette (as DeepFashion's `seg/`
/// PNGs are drawn); `None` for a colour outside the palette.
pub fn parsing_class(rgb: [u8; 3]) -> Option<Parsing> {
    use Parsing::*;
    Some(match rgb {
        [255, 85, 0]
        | [0, 0, 85]
        | [0, 119, 221]
        | [0, 85, 85]
        | [85, 51, 0]
        | [52, 86, 128]
        | [0, 128, 0] => Garment,
        [0, 0, 0]
        | [255, 0, 0]
        | [0, 0, 255]
        | [51, 170, 221]
        | [0, 255, 255]
        | [85, 255, 170]
        | [170, 255, 85] => NotGarment,
        [128, 0, 0] | [0, 85, 0] | [170, 0, 51] | [85, 85, 0] | [255, 255, 0] | [255, 170, 0] => {
            Other
        }
        _ => return None,
    })
}

/// A parsing mask as an RGB image the preprocessing can resize and crop like the photo: red 255
/// where garment, green 255 where not garment (skin, hair, face, background), blue 255 for the
/// rest. After resizing, each channel is the share of that class around the pixel.
pub fn parsing_planes(seg: &RgbImage) -> RgbImage {
    RgbImage::from_fn(seg.width(), seg.height(), |x, y| {
        let c = parsing_class(seg.get_pixel(x, y).0).unwrap_or(Parsing::Other);
        image::Rgb(match c {
            Parsing::Garment => [255, 0, 0],
            Parsing::NotGarment => [0, 255, 0],
            Parsing::Other => [0, 0, 255],
        })
    })
}

/// The parsing mask of a photo as [`parsing_planes`], resized and cropped exactly like the photo
/// (`photo_size`: the photo's width and height, which the mask is first brought to).
pub fn parsing_crop(
    pre: &crate::preprocess::Preprocess,
    seg: &std::path::Path,
    photo_size: (u32, u32),
) -> crate::Result<RgbImage> {
    let img = image::open(seg)
        .map_err(|e| crate::Error::bad_data(seg, format!("cannot read the parsing mask: {e}")))?
        .to_rgb8();
    let mut planes = parsing_planes(&img);
    if planes.dimensions() != photo_size {
        planes = image::imageops::resize(
            &planes,
            photo_size.0,
            photo_size.1,
            image::imageops::FilterType::Nearest,
        );
    }
    pre.resize_and_crop(&planes)
}

/// Agreement of a predicted garment mask with a parsing mask, both over the model's square
/// (`planes` from [`parsing_crop`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MaskScore {
    /// Pixels both call garment.
    pub intersection: u64,
    /// Pixels either calls garment.
    pub union: u64,
    /// Pixels predicted garment.
    pub predicted: u64,
    /// Pixels predicted garment that the parsing mask calls skin, hair, face or background.
    pub on_not_garment: u64,
}

impl MaskScore {
    /// Scores a `MASK_SIDE`-grid of probabilities (upsampled bilinearly, garment where at least
    /// 0.5) against the planes, at the planes' size.
    pub fn of(probs: &[f32], planes: &RgbImage) -> MaskScore {
        let (w, h) = (planes.width() as usize, planes.height() as usize);
        let p = upsample(probs, MASK_SIDE, w, h);
        Self::score(p.iter().map(|v| *v >= 0.5), planes)
    }

    /// Scores a `mw x mh` garment mask over the same square (each plane pixel takes the mask
    /// pixel it falls in).
    pub fn of_mask(mask: &[bool], mw: u32, mh: u32, planes: &RgbImage) -> MaskScore {
        let (w, h) = planes.dimensions();
        let pred = (0..h)
            .flat_map(|y| (0..w).map(move |x| mask[((y * mh / h) * mw + x * mw / w) as usize]));
        Self::score(pred, planes)
    }

    fn score(pred: impl Iterator<Item = bool>, planes: &RgbImage) -> MaskScore {
        let mut s = MaskScore::default();
        for (pred, px) in pred.zip(planes.pixels()) {
            let truth = px.0[0] >= 128;
            s.intersection += u64::from(pred && truth);
            s.union += u64::from(pred || truth);
            s.predicted += u64::from(pred);
            s.on_not_garment += u64::from(pred && px.0[1] >= 128);
        }
        s
    }

    /// Intersection over union (1 when neither has garment).
    pub fn iou(&self) -> f64 {
        if self.union == 0 {
            1.0
        } else {
            self.intersection as f64 / self.union as f64
        }
    }

    /// Share of predicted garment pixels on skin, hair, face or background.
    pub fn leak(&self) -> f64 {
        if self.predicted == 0 {
            0.0
        } else {
            self.on_not_garment as f64 / self.predicted as f64
        }
    }
}

/// Largest CIEDE2000 difference from the background colour (the median of the border pixels)
/// at which a pixel still counts as background in [`product_foreground`].
const PLAIN_DELTA: f32 = 3.0;

/// The foreground of a product shot: a photo of the product alone on a plain background, as
/// catalogues photograph flat lays, footwear and bags. Background is every pixel within
/// [`PLAIN_DELTA`] of the border's median colour that connects to the border through such
/// pixels; the rest is the product, holes included, so a white shirt on white stays whole
/// where its outline or shading closes it off. `None` when the photo is not such a shot: the
/// border is not plain (something runs off the edge, as a model does), the foreground is too
/// small or too large to be one product, or a visible share of it is skin (a model).
///
/// `fashion train` learns the garment mask from these foregrounds as well as from human-parsing
/// masks, which show only worn garments.
pub fn product_foreground(img: &RgbImage) -> Option<Vec<bool>> {
    use crate::colour::lab::ciede2000;
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w < 8 || h < 8 {
        return None;
    }
    let labs = crate::colour::lab_pixels(img);
    let on_border = |i: usize| {
        let (x, y) = (i % w, i / w);
        x < 2 || y < 2 || x >= w - 2 || y >= h - 2
    };
    let ring: Vec<usize> = (0..w * h).filter(|&i| on_border(i)).collect();
    let bg = crate::colour::median_lab(ring.iter().map(|&i| labs[i]));
    let plain: Vec<bool> = labs
        .iter()
        .map(|l| ciede2000(*l, bg) <= PLAIN_DELTA)
        .collect();
    if ring.iter().filter(|&&i| !plain[i]).count() * 50 > ring.len() {
        return None;
    }
    // Flood fill from the border through plain pixels (4-connected). Written out: a walk with a
    // stack of pixels is all it takes, where an image-processing crate would add a heavy
    // dependency.
    let mut background = vec![false; w * h];
    let mut queue: Vec<usize> = ring.into_iter().filter(|&i| plain[i]).collect();
    for &i in &queue {
        background[i] = true;
    }
    while let Some(i) = queue.pop() {
        let (x, y) = (i % w, i / w);
        let mut visit = |j: usize| {
            if plain[j] && !background[j] {
                background[j] = true;
                queue.push(j);
            }
        };
        if x > 0 {
            visit(i - 1);
        }
        if x + 1 < w {
            visit(i + 1);
        }
        if y > 0 {
            visit(i - w);
        }
        if y + 1 < h {
            visit(i + w);
        }
    }
    let fg: Vec<bool> = background.iter().map(|b| !b).collect();
    let n_fg = fg.iter().filter(|f| **f).count();
    let n_skin = fg
        .iter()
        .zip(&labs)
        .filter(|(f, l)| **f && crate::colour::is_skin(**l))
        .count();
    let share = n_fg as f32 / (w * h) as f32;
    if !(0.03..=0.9).contains(&share) || n_skin * 20 > n_fg {
        return None;
    }
    Some(fg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolation_matches_hand_computation() {
        // 2 -> 4, half-pixel: outputs sit at 0.25-0.5 = -0.25 (clamped to 0), 0.25, 0.75, 1.25
        // (clamped to 1) in input coordinates.
        let m = interp_matrix(2, 4);
        let want = [1.0, 0.0, 0.75, 0.25, 0.25, 0.75, 0.0, 1.0];
        for (a, b) in m.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{m:?}");
        }
        // Rows sum to one: a constant map stays constant.
        let up = upsample(&[0.3; 49], 7, 56, 40);
        assert!(up.iter().all(|v| (v - 0.3).abs() < 1e-6));
        // A ramp stays a ramp between the first and last sample centres.
        let ramp: Vec<f32> = (0..4).flat_map(|_| (0..4).map(|x| x as f32)).collect();
        let up = upsample(&ramp, 4, 8, 8);
        assert!((up[3] - 1.25).abs() < 1e-6, "{:?}", &up[..8]);
    }

    #[test]
    fn parsing_palette_classes() {
        assert_eq!(parsing_class([255, 85, 0]), Some(Parsing::Garment));
        assert_eq!(parsing_class([0, 0, 255]), Some(Parsing::NotGarment));
        assert_eq!(parsing_class([255, 170, 0]), Some(Parsing::Other));
        assert_eq!(parsing_class([1, 2, 3]), None);
    }

    #[test]
    fn score_counts_overlap_and_leak() {
        // Truth: left half garment, right half background. Prediction: left three quarters.
        let planes = RgbImage::from_fn(28, 28, |x, _| {
            image::Rgb(if x < 14 { [255, 0, 0] } else { [0, 255, 0] })
        });
        let probs: Vec<f32> = (0..28 * 28)
            .map(|i| if i % 28 < 21 { 0.9 } else { 0.1 })
            .collect();
        let s = MaskScore::of(&probs, &planes);
        assert_eq!(s.intersection, 14 * 28);
        assert_eq!(s.union, 21 * 28);
        assert!((s.iou() - 2.0 / 3.0).abs() < 1e-9);
        assert!((s.leak() - 1.0 / 3.0).abs() < 1e-9);
        // The same as a 4x4 boolean mask: columns 0..3 garment cover 21 of 28 plane columns.
        let mask: Vec<bool> = (0..16).map(|i| i % 4 < 3).collect();
        assert_eq!(MaskScore::of_mask(&mask, 4, 4, &planes), s);
    }

    #[test]
    fn product_foreground_keeps_a_white_shirt_on_white_whole() {
        // A white square (the shirt) on a white background, closed off by a grey outline, with
        // a dark print inside and a white patch the flood must not reach.
        let img = RgbImage::from_fn(64, 64, |x, y| {
            let inside = (16..48).contains(&x) && (16..48).contains(&y);
            let outline = inside && (x == 16 || x == 47 || y == 16 || y == 47);
            let print = (28..36).contains(&x) && (28..36).contains(&y);
            image::Rgb(if outline {
                [200, 200, 200]
            } else if print {
                [20, 20, 120]
            } else {
                [255, 255, 255]
            })
        });
        let fg = product_foreground(&img).expect("a product shot");
        let at = |x: usize, y: usize| fg[y * 64 + x];
        assert!(at(20, 20) && at(30, 30) && at(16, 16) && at(47, 47));
        assert!(!at(0, 0) && !at(10, 40) && !at(50, 50) && !at(15, 30));
        assert_eq!(fg.iter().filter(|f| **f).count(), 32 * 32);
    }

    #[test]
    fn product_foreground_refuses_other_shots() {
        let plain = |x: u32, y: u32, rgb| {
            let inside = (16..48).contains(&x) && (16..48).contains(&y);
            image::Rgb(if inside { rgb } else { [250, 250, 250] })
        };
        // A blue product: accepted.
        assert!(product_foreground(&RgbImage::from_fn(64, 64, |x, y| plain(
            x,
            y,
            [30, 60, 200]
        )))
        .is_some());
        // Something runs off the bottom edge (a model's legs).
        let off_edge = RgbImage::from_fn(64, 64, |x, y| {
            image::Rgb(if (24..40).contains(&x) && y >= 16 {
                [30, 60, 200]
            } else {
                [250, 250, 250]
            })
        });
        assert!(product_foreground(&off_edge).is_none());
        // Skin-coloured foreground (a model standing clear of the edges).
        assert!(product_foreground(&RgbImage::from_fn(64, 64, |x, y| plain(
            x,
            y,
            [224, 172, 140]
        )))
        .is_none());
        // Nothing on the background, or a background that is not plain.
        assert!(product_foreground(&RgbImage::from_pixel(64, 64, image::Rgb([250; 3]))).is_none());
        let noise = RgbImage::from_fn(64, 64, |x, y| {
            image::Rgb([((x * 37 + y * 91) % 256) as u8; 3])
        });
        assert!(product_foreground(&noise).is_none());
    }
}
