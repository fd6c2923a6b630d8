//! Garment colours: which pixels are garment ([`ColourPixels::mask`]), their palette clustered in
//! CIELAB ([`palette`]), each cluster named from a replaceable vocabulary by CIEDE2000
//! ([`Vocabulary`]).

pub mod lab;

use std::path::Path;

use image::RgbImage;
use serde::Serialize;

use crate::error::{Error, Result};
use lab::{ciede2000, hex, lab_to_srgb, parse_hex, srgb_to_lab, Lab};

/// The 12 colour families (plus `multi` for no dominant colour).
pub const FAMILIES: [&str; 12] = [
    "black", "white", "grey", "red", "pink", "orange", "yellow", "green", "blue", "purple",
    "brown", "beige",
];

/// A named colour of the vocabulary.
#[derive(Debug, Clone)]
pub struct NamedColour {
    pub name: String,
    pub family: String,
    pub rgb: [u8; 3],
    pub lab: Lab,
}

/// The colour names a palette is described with: a CSV with `name,family,hex` columns.
#[derive(Debug, Clone)]
pub struct Vocabulary {
    pub colours: Vec<NamedColour>,
}

impl Default for Vocabulary {
    fn default() -> Self {
        Self::parse(
            include_str!("../../data/colours.csv"),
            Path::new("built-in colours"),
        )
        .expect("the built-in vocabulary is valid")
    }
}

impl Vocabulary {
    /// Reads a vocabulary CSV (`name,family,hex`; family one of [`FAMILIES`]).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text, path)
    }

    fn parse(text: &str, path: &Path) -> Result<Self> {
        let mut r = csv::Reader::from_reader(text.as_bytes());
        let mut colours = Vec::new();
        for (i, rec) in r.records().enumerate() {
            let rec = rec.map_err(|e| Error::bad_data(path, e.to_string()))?;
            let err = |m: String| Error::bad_data(path, format!("row {}: {m}", i + 2));
            if rec.len() != 3 {
                return Err(err("expected name,family,hex".into()));
            }
            let family = rec[1].trim().to_string();
            if !FAMILIES.contains(&family.as_str()) {
                return Err(err(format!("unknown family {family:?}")));
            }
            let rgb = parse_hex(&rec[2]).ok_or_else(|| err(format!("bad hex {:?}", &rec[2])))?;
            colours.push(NamedColour {
                name: rec[0].trim().to_string(),
                family,
                rgb,
                lab: srgb_to_lab(rgb),
            });
        }
        if colours.is_empty() {
            return Err(Error::bad_data(path, "no colours"));
        }
        Ok(Vocabulary { colours })
    }

    /// The closest named colour by CIEDE2000.
    pub fn name(&self, lab: Lab) -> &NamedColour {
        closest(self.colours.iter(), lab).expect("vocabulary is not empty")
    }

    /// The closest named colour of `family` by CIEDE2000 (`None` if the vocabulary has none).
    pub fn name_in(&self, lab: Lab, family: &str) -> Option<&NamedColour> {
        closest(self.colours.iter().filter(|c| c.family == family), lab)
    }

    /// The name and hex of the primary colour of a garment whose family is `family`, from its
    /// palette (sorted by share): the family's largest swatch. A mean of the family's swatches
    /// would name a colour the garment may not have, and lands on a naming boundary more
    /// often. With no swatch of that family (the colour head calls a shirt white that the
    /// photo shows light grey), the family's colour closest to the largest swatch. `None` when
    /// the vocabulary has no colour of that family.
    pub fn shade_of(&self, palette: &[Swatch], family: &str) -> Option<(String, String)> {
        if let Some(s) = palette.iter().find(|s| s.family == family) {
            return Some((s.name.clone(), s.hex.clone()));
        }
        palette
            .first()
            .and_then(|s| self.name_in(s.lab, family))
            .or_else(|| self.colours.iter().find(|c| c.family == family))
            .map(|c| (c.name.clone(), lab::hex(c.rgb)))
    }
}

fn closest<'a>(
    colours: impl Iterator<Item = &'a NamedColour>,
    lab: Lab,
) -> Option<&'a NamedColour> {
    colours
        .map(|c| (ciede2000(c.lab, lab), c))
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// One colour of a palette.
#[derive(Debug, Clone, Serialize)]
pub struct Swatch {
    pub name: String,
    pub family: String,
    pub hex: String,
    /// Share of the garment's pixels, 0..1.
    pub share: f32,
    #[serde(skip)]
    pub lab: Lab,
}

/// Longer side of the thumbnail a palette is computed from: about 3,000 pixels (a quarter of the
/// model's 224-pixel square), plenty for shares to the percent, and cheap next to the model.
pub const PALETTE_SIDE: u32 = 56;

/// Smallest share of the square the learned garment mask must find for the palette to use it;
/// under it (a shoe, a bag, a belt: subjects the parsing masks it learned from do not call
/// garment) the palette falls back to the pixels unlike the background.
pub const MIN_LEARNED_SHARE: f32 = 0.03;

/// A photo's pixels as the palette sees them: a box-filtered thumbnail at most
/// [`PALETTE_SIDE`] pixels on its longer side, in CIELAB, and which of its pixels look like
/// garment by colour alone (unlike the border, and unlike skin where enough remains).
#[derive(Debug, Clone)]
pub struct ColourPixels {
    pub width: u32,
    pub height: u32,
    labs: Vec<Lab>,
    by_colour: Vec<bool>,
}

impl ColourPixels {
    /// Thumbnail and colour mask of `img` (done per photo before the model, in parallel).
    pub fn of(img: &RgbImage) -> ColourPixels {
        let small = thumbnail(img, PALETTE_SIDE);
        let img = small.as_ref().unwrap_or(img);
        let (labs, by_colour) = lab_and_mask(img);
        ColourPixels {
            width: img.width(),
            height: img.height(),
            labs,
            by_colour,
        }
    }

    /// Which pixels are garment, row by row: the learned mask (`learned`: garment
    /// probabilities on a `side x side` grid over the same image, see [`crate::mask`]) where it
    /// covers at least [`MIN_LEARNED_SHARE`], else the colour mask.
    pub fn mask(&self, learned: Option<(&[f32], usize)>) -> Vec<bool> {
        if let Some((probs, side)) = learned {
            let up = crate::mask::upsample(probs, side, self.width as usize, self.height as usize);
            let mask: Vec<bool> = up.iter().map(|p| *p >= 0.5).collect();
            let n = mask.iter().filter(|m| **m).count();
            if n as f32 >= MIN_LEARNED_SHARE * mask.len() as f32 {
                return mask;
            }
        }
        self.by_colour.clone()
    }

    /// The CIELAB values of the pixels under `mask` (see [`ColourPixels::mask`]): what the
    /// palette ([`palette`]) and the pixel colour head ([`colour_features`]) are computed from.
    pub fn garment(&self, mask: &[bool]) -> Vec<Lab> {
        self.labs
            .iter()
            .zip(mask)
            .filter_map(|(l, m)| m.then_some(*l))
            .collect()
    }

    /// How the garment's pixels under `mask` are spread, region by region (see
    /// [`REGION_FEATURES_LEN`]): the whole garment, then its pixels in the top, middle and
    /// bottom third of the photo, then those in the middle half of its columns. A photo of a
    /// shirt on a model often shows trousers too; where each colour sits tells which is the
    /// product. Each region gives [`region_stats`].
    pub fn region_features(&self, mask: &[bool]) -> Vec<f32> {
        let (w, h) = (self.width.max(1) as usize, self.height.max(1) as usize);
        let mut regions: [Vec<Lab>; REGIONS] = Default::default();
        for (i, (l, _)) in self
            .labs
            .iter()
            .zip(mask)
            .enumerate()
            .filter(|(_, (_, m))| **m)
        {
            let (x, y) = (i % w, i / w);
            regions[0].push(*l);
            regions[1 + (y * 3 / h).min(2)].push(*l);
            if (1..=2).contains(&(x * 4 / w)) {
                regions[4].push(*l);
            }
        }
        let total = self.labs.len().max(1) as f32;
        regions
            .iter()
            .flat_map(|r| region_stats(r, total))
            .collect()
    }
}

/// Regions of [`ColourPixels::region_features`].
pub const REGIONS: usize = 5;
/// Quantiles of each channel in [`region_stats`].
pub const QUANTILES: [f32; 7] = [0.05, 0.10, 0.25, 0.50, 0.75, 0.90, 0.95];
/// Hue bins of [`region_stats`], each 30 degrees wide, from -180.
pub const HUE_BINS: usize = 12;
/// Length of [`region_stats`].
pub const REGION_STATS_LEN: usize = 4 * QUANTILES.len() + HUE_BINS + 1;
/// Length of [`ColourPixels::region_features`].
pub const REGION_FEATURES_LEN: usize = REGIONS * REGION_STATS_LEN;

/// A fixed-length description of one region's CIELAB pixels, for a learned colour classifier:
/// the [`QUANTILES`] of lightness, a, b and chroma (nearest rank: the value at index
/// `round((n - 1) q)` of the sorted values), then a hue histogram weighted by chroma (pixels of
/// chroma over 5 only, divided by the region's pixel count), then the region's pixel count as a
/// share of `total`. Where the palette's clusters blur them, quantiles keep the thresholds a
/// colour family turns on: how dark the darkest quarter is (navy against black), how pale the
/// palest (a tint against white). No pixels: all zeros.
pub fn region_stats(pixels: &[Lab], total: f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(REGION_STATS_LEN);
    if pixels.is_empty() {
        out.resize(REGION_STATS_LEN, 0.0);
        return out;
    }
    let n = pixels.len();
    let chroma = |p: &Lab| p[1].hypot(p[2]);
    for channel in 0..4 {
        let mut v: Vec<f32> = pixels
            .iter()
            .map(|p| if channel < 3 { p[channel] } else { chroma(p) })
            .collect();
        v.sort_unstable_by(f32::total_cmp);
        out.extend(
            QUANTILES
                .iter()
                .map(|q| v[((n - 1) as f32 * q).round() as usize]),
        );
    }
    let mut hue = [0f32; HUE_BINS];
    for p in pixels {
        let c = chroma(p);
        if c > 5.0 {
            let turn = (p[2].atan2(p[1]) + std::f32::consts::PI) / std::f32::consts::TAU;
            hue[((turn * HUE_BINS as f32) as usize).min(HUE_BINS - 1)] += c;
        }
    }
    out.extend(hue.iter().map(|h| h / n as f32));
    out.push(n as f32 / total);
    out
}

/// A box-filtered copy at most `side` pixels on its longer side; `None` when `img` is already
/// that small (or cannot be resized).
fn thumbnail(img: &RgbImage, side: u32) -> Option<RgbImage> {
    use fast_image_resize::images::{Image, ImageRef};
    use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
    let (w, h) = img.dimensions();
    if w.max(h) <= side {
        return None;
    }
    let scale = f64::from(side) / f64::from(w.max(h));
    let tw = ((f64::from(w) * scale).round() as u32).max(1);
    let th = ((f64::from(h) * scale).round() as u32).max(1);
    let src = ImageRef::new(w, h, img.as_raw(), PixelType::U8x3).ok()?;
    let mut dst = Image::new(tw, th, PixelType::U8x3);
    let opts = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Box));
    Resizer::new().resize(&src, &mut dst, &opts).ok()?;
    RgbImage::from_raw(tw, th, dst.into_vec())
}

/// The CIELAB value of each pixel, row by row. Runs of equal pixels (a plain studio
/// background) are converted once.
pub(crate) fn lab_pixels(img: &RgbImage) -> Vec<Lab> {
    let mut last: Option<([u8; 3], Lab)> = None;
    img.pixels()
        .map(|p| match last {
            Some((rgb, lab)) if rgb == p.0 => lab,
            _ => {
                let lab = srgb_to_lab(p.0);
                last = Some((p.0, lab));
                lab
            }
        })
        .collect()
}

/// The median of each CIELAB channel over `colours` (the upper one of an even count): a
/// photo's background colour from its border pixels. `colours` must not be empty.
pub(crate) fn median_lab(colours: impl Iterator<Item = Lab>) -> Lab {
    let colours: Vec<Lab> = colours.collect();
    let median = |k: usize| {
        let mut v: Vec<f32> = colours.iter().map(|l| l[k]).collect();
        v.sort_by(f32::total_cmp);
        v[v.len() / 2]
    };
    [median(0), median(1), median(2)]
}

fn lab_and_mask(img: &RgbImage) -> (Vec<Lab>, Vec<bool>) {
    let (w, h) = img.dimensions();
    let labs = lab_pixels(img);
    // Background: the median of the outer ring of pixels.
    let mut ring: Vec<Lab> = Vec::new();
    for y in 0..h {
        for x in 0..w {
            if x < 3 || y < 3 || x >= w - 3 || y >= h - 3 {
                ring.push(labs[(y * w + x) as usize]);
            }
        }
    }
    let bg = median_lab(ring.into_iter());
    let mut last: Option<(Lab, bool)> = None;
    let fg: Vec<bool> = labs
        .iter()
        .map(|l| match last {
            Some((prev, far)) if prev == *l => far,
            _ => {
                let far = ciede2000(*l, bg) > 8.0;
                last = Some((*l, far));
                far
            }
        })
        .collect();
    let not_skin: Vec<bool> = fg
        .iter()
        .zip(&labs)
        .map(|(f, l)| *f && !is_skin(*l))
        .collect();
    let (n_fg, n_not_skin) = (
        fg.iter().filter(|f| **f).count(),
        not_skin.iter().filter(|f| **f).count(),
    );
    let mask = if n_not_skin * 4 >= n_fg && n_not_skin > 0 {
        not_skin
    } else if n_fg > 0 {
        fg
    } else {
        // A photo that is all one colour: the garment fills it.
        vec![true; labs.len()]
    };
    (labs, mask)
}

/// A rough skin-tone test in CIELAB (hue 20-70 degrees, moderate chroma, mid lightness).
pub(crate) fn is_skin(l: Lab) -> bool {
    let chroma = l[1].hypot(l[2]);
    let hue = l[2].atan2(l[1]).to_degrees();
    (30.0..=85.0).contains(&l[0]) && (10.0..=45.0).contains(&chroma) && (20.0..=70.0).contains(&hue)
}

/// Bins of the coarse CIELAB histogram in [`colour_features`]: lightness 0..100, a and b
/// -60..60 (values beyond go to the end bins).
pub const HIST_BINS: [usize; 3] = [4, 6, 6];

/// Length of [`colour_features`] for `anchors` anchor colours.
pub fn colour_features_len(anchors: usize) -> usize {
    anchors + HIST_BINS.iter().product::<usize>()
}

/// A fixed-length description of a set of CIELAB pixels for a learned colour classifier: the
/// mean soft assignment of the pixels to each anchor colour (weight `exp(-d^2 / 50)` for the
/// squared Euclidean distance `d^2`, taken relative to the nearest anchor, 0 beyond 600, and
/// normalised per pixel), then the share of pixels in each bin of a coarse histogram ([`HIST_BINS`]). No
/// pixels: all zeros.
pub fn colour_features(pixels: &[Lab], anchors: &[Lab]) -> Vec<f32> {
    let mut out = vec![0f32; colour_features_len(anchors.len())];
    if pixels.is_empty() {
        return out;
    }
    let n = pixels.len() as f32;
    let mut d2 = vec![0f32; anchors.len()];
    let bin = |v: f32, lo: f32, hi: f32, k: usize| {
        (((v - lo) / (hi - lo) * k as f32).floor().max(0.0) as usize).min(k - 1)
    };
    let [bl, ba, bb] = HIST_BINS;
    for p in pixels {
        for (d, a) in d2.iter_mut().zip(anchors) {
            *d = (p[0] - a[0]).powi(2) + (p[1] - a[1]).powi(2) + (p[2] - a[2]).powi(2);
        }
        let min = d2.iter().copied().fold(f32::INFINITY, f32::min);
        // Anchors much farther than the nearest get no weight (e^-12 < 1e-5): most of the
        // exponentials are skipped.
        for d in d2.iter_mut() {
            *d = if *d - min < 600.0 {
                (-(*d - min) / 50.0).exp()
            } else {
                0.0
            };
        }
        let total: f32 = d2.iter().sum();
        for (o, w) in out.iter_mut().zip(&d2) {
            *o += w / total / n;
        }
        let h = bin(p[0], 0.0, 100.0, bl) * ba * bb
            + bin(p[1], -60.0, 60.0, ba) * bb
            + bin(p[2], -60.0, 60.0, bb);
        out[anchors.len() + h] += 1.0 / n;
    }
    out
}

/// Clusters colours into at most `k` groups (k-means in CIELAB, deterministic start), drops
/// clusters under `min_share`, names them and sorts by share.
pub fn palette(pixels: &[Lab], vocab: &Vocabulary, k: usize, min_share: f32) -> Vec<Swatch> {
    if pixels.is_empty() || k == 0 {
        return Vec::new();
    }
    // Start from pixels spread across the lightness order: deterministic and covers dark to light.
    let mut order: Vec<usize> = (0..pixels.len()).collect();
    order.sort_by(|&a, &b| pixels[a][0].total_cmp(&pixels[b][0]));
    let k = k.min(pixels.len());
    let mut centres: Vec<Lab> = (0..k)
        .map(|i| pixels[order[(2 * i + 1) * pixels.len() / (2 * k)]])
        .collect();
    let mut assign = vec![usize::MAX; pixels.len()];
    for _ in 0..12 {
        let mut moved = false;
        for (a, p) in assign.iter_mut().zip(pixels) {
            let n = nearest(&centres, *p);
            moved |= n != *a;
            *a = n;
        }
        if !moved {
            break;
        }
        let mut sums = vec![[0f64; 4]; k];
        for (a, p) in assign.iter().zip(pixels) {
            for j in 0..3 {
                sums[*a][j] += f64::from(p[j]);
            }
            sums[*a][3] += 1.0;
        }
        for (c, s) in centres.iter_mut().zip(&sums) {
            if s[3] > 0.0 {
                *c = [
                    (s[0] / s[3]) as f32,
                    (s[1] / s[3]) as f32,
                    (s[2] / s[3]) as f32,
                ];
            }
        }
    }
    let mut counts = vec![0usize; k];
    for a in &assign {
        counts[*a] += 1;
    }
    // Merge clusters that the vocabulary names alike.
    let mut swatches: Vec<Swatch> = Vec::new();
    for (c, n) in centres.iter().zip(&counts) {
        if *n == 0 {
            continue;
        }
        let share = *n as f32 / pixels.len() as f32;
        let named = vocab.name(*c);
        if let Some(s) = swatches.iter_mut().find(|s| s.name == named.name) {
            let t = s.share + share;
            for (l, v) in s.lab.iter_mut().zip(c) {
                *l = (*l * s.share + v * share) / t;
            }
            s.share = t;
        } else {
            swatches.push(Swatch {
                name: named.name.clone(),
                family: named.family.clone(),
                hex: String::new(),
                share,
                lab: *c,
            });
        }
    }
    swatches.retain(|s| s.share >= min_share);
    let total: f32 = swatches.iter().map(|s| s.share).sum();
    for s in &mut swatches {
        s.share /= total.max(f32::EPSILON);
        s.hex = hex(lab_to_srgb(s.lab));
    }
    swatches.sort_by(|a, b| b.share.total_cmp(&a.share));
    swatches
}

/// The index of the centre nearest to `p` (the first of equals), each distance computed once.
fn nearest(centres: &[Lab], p: Lab) -> usize {
    let d = |c: &Lab| (c[0] - p[0]).powi(2) + (c[1] - p[1]).powi(2) + (c[2] - p[2]).powi(2);
    let mut best = (0, f32::INFINITY);
    for (i, c) in centres.iter().enumerate() {
        let di = d(c);
        if di < best.1 {
            best = (i, di);
        }
    }
    best.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_features_by_hand() {
        // Two anchors 10 apart in lightness; one pixel on the first, one halfway.
        let anchors = [[50.0, 0.0, 0.0], [60.0, 0.0, 0.0]];
        let f = colour_features(&[[50.0, 0.0, 0.0], [55.0, 0.0, 0.0]], &anchors);
        assert_eq!(f.len(), 2 + 144);
        // Pixel 1: weights 1 and e^-2; pixel 2: equal weights.
        let e = (-2.0f32).exp();
        let first = (1.0 / (1.0 + e) + 0.5) / 2.0;
        assert!((f[0] - first).abs() < 1e-6, "{f:?}");
        assert!((f[1] - (1.0 - first)).abs() < 1e-6);
        // Both pixels: lightness bin 2 (50..75), a and b bin 3 (0..20): index 2*36 + 3*6 + 3.
        assert_eq!(f[2 + 2 * 36 + 3 * 6 + 3], 1.0);
        assert_eq!(f.iter().skip(2).sum::<f32>(), 1.0);
        assert!(colour_features(&[], &anchors).iter().all(|v| *v == 0.0));
    }

    #[test]
    fn region_stats_by_hand() {
        // Five pixels, one of them chromatic: a = 6, b = 8 (chroma 10, hue 53.13 degrees).
        let px = [
            [10.0, 0.0, 0.0],
            [20.0, 0.0, 0.0],
            [30.0, 0.0, 0.0],
            [40.0, 0.0, 0.0],
            [50.0, 6.0, 8.0],
        ];
        let f = region_stats(&px, 20.0);
        assert_eq!(f.len(), REGION_STATS_LEN);
        // Nearest ranks of 5 values at 5, 10, 25, 50, 75, 90, 95%: indices 0, 0, 1, 2, 3, 4, 4.
        assert_eq!(&f[0..7], &[10.0, 10.0, 20.0, 30.0, 40.0, 50.0, 50.0]);
        assert_eq!(&f[7..14], &[0.0, 0.0, 0.0, 0.0, 0.0, 6.0, 6.0]);
        assert_eq!(&f[14..21], &[0.0, 0.0, 0.0, 0.0, 0.0, 8.0, 8.0]);
        assert_eq!(&f[21..28], &[0.0, 0.0, 0.0, 0.0, 0.0, 10.0, 10.0]);
        // Hue 53.13 degrees is 233.13 from -180: bin 7 of 30-degree bins, chroma 10 over 5
        // pixels.
        let mut hue = [0.0; HUE_BINS];
        hue[7] = 2.0;
        assert_eq!(&f[28..40], &hue);
        assert_eq!(f[40], 0.25);
        assert!(region_stats(&[], 20.0).iter().all(|v| *v == 0.0));
    }

    #[test]
    fn region_features_split_the_garment_by_thirds_and_centre_columns() {
        // 4 x 6 pixels, each row one grey; the left column is not garment.
        let greys = [20u8, 60, 100, 140, 180, 220];
        let img = RgbImage::from_fn(4, 6, |_, y| image::Rgb([greys[y as usize]; 3]));
        let px = ColourPixels::of(&img);
        let mask: Vec<bool> = (0..24).map(|i| i % 4 != 0).collect();
        let f = px.region_features(&mask);
        assert_eq!(f.len(), REGION_FEATURES_LEN);
        let region = |r: usize| &f[r * REGION_STATS_LEN..(r + 1) * REGION_STATS_LEN];
        let share = |r: usize| region(r)[REGION_STATS_LEN - 1];
        // Whole garment 18 of 24 pixels; each third 6; the middle two columns 12.
        let shares: Vec<f32> = (0..REGIONS).map(share).collect();
        assert_eq!(shares, [0.75, 0.25, 0.25, 0.25, 0.5]);
        let l = |g: u8| srgb_to_lab([g; 3])[0];
        // Lightness quantiles 5% and 95%: the darkest and the lightest row of each region.
        for (r, (lo, hi)) in [
            (0, (20, 220)),
            (1, (20, 60)),
            (2, (100, 140)),
            (3, (180, 220)),
        ] {
            assert!((region(r)[0] - l(lo)).abs() < 1e-4, "region {r}");
            assert!((region(r)[6] - l(hi)).abs() < 1e-4, "region {r}");
        }
        // Greys have no hue.
        assert!(region(0)[28..40].iter().all(|v| v.abs() < 1e-6));
    }

    #[test]
    fn vocabulary_names_pure_colours() {
        let v = Vocabulary::default();
        assert_eq!(v.name(srgb_to_lab([200, 16, 46])).family, "red");
        assert_eq!(v.name(srgb_to_lab([31, 42, 68])).name, "navy");
        assert_eq!(v.name(srgb_to_lab([250, 250, 250])).family, "white");
    }

    /// CSS named colours whose family no one would argue (the CSS Color Module's sRGB values),
    /// vivid and dark ones included: CIEDE2000 was fitted to small differences, and a
    /// saturated colour far from every anchor can land on a grey one unless the vocabulary has
    /// vivid anchors too.
    #[test]
    fn vocabulary_names_css_colours_by_their_family() {
        let v = Vocabulary::default();
        // CSS `beige` (#f5f5dc) is left out: it is as pale as the off-white garments a
        // catalogue calls cream, and the vocabulary counts cream as white.
        let css: [(&str, u32, &str); 42] = [
            ("blue", 0x0000ff, "blue"),
            ("mediumblue", 0x0000cd, "blue"),
            ("darkblue", 0x00008b, "blue"),
            ("navy", 0x000080, "blue"),
            ("royalblue", 0x4169e1, "blue"),
            ("dodgerblue", 0x1e90ff, "blue"),
            ("deepskyblue", 0x00bfff, "blue"),
            ("lightblue", 0xadd8e6, "blue"),
            ("red", 0xff0000, "red"),
            ("darkred", 0x8b0000, "red"),
            ("crimson", 0xdc143c, "red"),
            ("firebrick", 0xb22222, "red"),
            ("maroon", 0x800000, "red"),
            ("hotpink", 0xff69b4, "pink"),
            ("deeppink", 0xff1493, "pink"),
            ("fuchsia", 0xff00ff, "pink"),
            ("pink", 0xffc0cb, "pink"),
            ("purple", 0x800080, "purple"),
            ("indigo", 0x4b0082, "purple"),
            ("darkviolet", 0x9400d3, "purple"),
            ("blueviolet", 0x8a2be2, "purple"),
            ("rebeccapurple", 0x663399, "purple"),
            ("lime", 0x00ff00, "green"),
            ("green", 0x008000, "green"),
            ("darkgreen", 0x006400, "green"),
            ("forestgreen", 0x228b22, "green"),
            ("limegreen", 0x32cd32, "green"),
            ("olive", 0x808000, "green"),
            ("yellow", 0xffff00, "yellow"),
            ("gold", 0xffd700, "yellow"),
            ("orange", 0xffa500, "orange"),
            ("darkorange", 0xff8c00, "orange"),
            ("saddlebrown", 0x8b4513, "brown"),
            ("chocolate", 0x7b3f00, "brown"),
            ("gray", 0x808080, "grey"),
            ("dimgray", 0x696969, "grey"),
            ("silver", 0xc0c0c0, "grey"),
            ("black", 0x000000, "black"),
            ("white", 0xffffff, "white"),
            ("antiquewhite", 0xfaebd7, "white"),
            ("burlywood", 0xdeb887, "beige"),
            ("moccasin", 0xffe4b5, "beige"),
        ];
        let wrong: Vec<String> = css
            .iter()
            .filter_map(|&(name, rgb, family)| {
                let [_, r, g, b] = rgb.to_be_bytes();
                let got = v.name(srgb_to_lab([r, g, b]));
                (got.family != family).then(|| format!("{name} -> {} ({})", got.name, got.family))
            })
            .collect();
        assert!(wrong.is_empty(), "{wrong:?}");
    }

    #[test]
    fn shade_of_names_the_familys_largest_swatch() {
        let v = Vocabulary::default();
        let sw = |name: &str, family: &str, rgb: [u8; 3], share: f32| Swatch {
            name: name.into(),
            family: family.into(),
            hex: lab::hex(rgb),
            share,
            lab: srgb_to_lab(rgb),
        };
        // Sorted by share, as `palette` returns it: white first, then two blues.
        let palette = [
            sw("white", "white", [250, 250, 250], 0.5),
            sw("navy", "blue", [31, 42, 68], 0.3),
            sw("royal blue", "blue", [40, 70, 160], 0.2),
        ];
        assert_eq!(
            v.shade_of(&palette, "blue"),
            Some(("navy".to_string(), lab::hex([31, 42, 68])))
        );
        // No black swatch: black's colour closest to the largest swatch, with its own hex.
        let (name, hex) = v.shade_of(&palette, "black").unwrap();
        let black = v.colours.iter().find(|c| c.name == name).unwrap();
        assert_eq!((black.family.as_str(), hex), ("black", lab::hex(black.rgb)));
        let light_grey = [sw("light grey", "grey", [215, 215, 215], 1.0)];
        let closest = v.name_in(srgb_to_lab([215, 215, 215]), "white").unwrap();
        assert_eq!(v.shade_of(&light_grey, "white").unwrap().0, closest.name);
        // An empty palette: the family's first colour; an unknown family: nothing.
        let first = v.colours.iter().find(|c| c.family == "red").unwrap();
        assert_eq!(v.shade_of(&[], "red").unwrap().0, first.name);
        assert_eq!(v.shade_of(&palette, "no such family"), None);
    }

    #[test]
    fn name_in_keeps_to_the_family() {
        let v = Vocabulary::default();
        // Pure navy: the closest colour overall is navy; within black, black.
        let navy = srgb_to_lab([31, 42, 68]);
        assert_eq!(v.name_in(navy, "blue").unwrap().name, "navy");
        assert_eq!(v.name_in(navy, "black").unwrap().name, "black");
        assert!(v.name_in(navy, "no such family").is_none());
    }

    #[test]
    fn garment_on_background_with_skin_gives_garment_colour() {
        // White studio background, a navy garment block, a skin-coloured arm beside it; edges
        // on even pixels, so the half-size thumbnail has no blended pixels.
        let img = RgbImage::from_fn(112, 112, |x, y| {
            if (28..76).contains(&x) && (20..100).contains(&y) {
                image::Rgb([31, 42, 68])
            } else if (80..92).contains(&x) && (20..70).contains(&y) {
                image::Rgb([224, 172, 140])
            } else {
                image::Rgb([245, 245, 245])
            }
        });
        let px = ColourPixels::of(&img);
        assert_eq!((px.width, px.height), (56, 56), "a thumbnail");
        // Without a learned mask, and with one that finds nothing, the colour mask is used.
        let mask = px.mask(None);
        assert_eq!(px.mask(Some((&[0.0; 49], 7))), mask);
        for (i, m) in mask.iter().enumerate() {
            let (x, y) = (i % 56, i / 56);
            let garment = (14..38).contains(&x) && (10..50).contains(&y);
            assert_eq!(*m, garment, "pixel {x},{y}");
        }
        // A learned mask covering the left half is used as it is.
        let left: Vec<f32> = (0..49).map(|i| if i % 7 < 3 { 0.9 } else { 0.1 }).collect();
        let m = px.mask(Some((&left, 7)));
        assert!(m[56 * 28 + 10] && !m[56 * 28 + 40]);
        let p = palette(&px.garment(&mask), &Vocabulary::default(), 4, 0.05);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].name, "navy");
        assert!((p[0].share - 1.0).abs() < 1e-6);
    }
}
