//! Drawn photos of garments in vivid colours, added to the pixel colour head's training photos
//! (`[pixel_colour] vivid_photos`).
//!
//! Catalogue photos have few garments of saturated colour, and a classifier learnt on them
//! answers such colours by extrapolation: the built-in model's pixel colour head, trained on
//! FPI alone, names 96 of 557 drawn garments of CIELAB chroma 45 or more otherwise than the
//! palette does, pure blues as purple and bright yellows as green. A drawn photo is one of
//! four garment outlines (tee, shirt, trousers, dress), jittered, filled with one colour,
//! shaded top to bottom and side to side, with folds and noise, on a light plain background,
//! 300x400 or squashed to 224x224, and JPEG-compressed as a catalogue photo is. Its label is
//! the family the vocabulary names its colour (CIEDE2000, as the palette names colours), and
//! only colours of CIELAB chroma [`MIN_CHROMA`] or more are drawn: there the family is not a
//! matter of a catalogue's conventions (grey against navy, cream against white), which the
//! labelled photos teach.
//!
//! A photo is drawn from its own seed, so the list of what to draw ([`vivid_garments`]) is
//! cheap and each photo is drawn only when the training pass reaches it ([`draw`]).

use image::codecs::jpeg::JpegEncoder;
use image::imageops::FilterType;
use image::{GrayImage, RgbImage};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::colour::lab::srgb_to_lab;
use crate::colour::Vocabulary;
use crate::hash::fnv1a;

/// Smallest CIELAB chroma of a drawn garment's colour.
pub const MIN_CHROMA: f32 = 60.0;

/// Garment outlines on a 300x400 canvas (x, y), before jitter.
const OUTLINES: [&[(f32, f32)]; 4] = [
    // Tee.
    &[
        (90., 60.),
        (210., 60.),
        (270., 120.),
        (240., 150.),
        (220., 130.),
        (220., 360.),
        (80., 360.),
        (80., 130.),
        (60., 150.),
        (30., 120.),
    ],
    // Trousers.
    &[
        (90., 40.),
        (210., 40.),
        (230., 370.),
        (170., 370.),
        (150., 150.),
        (130., 370.),
        (70., 370.),
    ],
    // Dress.
    &[
        (110., 40.),
        (190., 40.),
        (200., 140.),
        (260., 370.),
        (40., 370.),
        (100., 140.),
    ],
    // Long-sleeved shirt.
    &[
        (100., 50.),
        (200., 50.),
        (280., 200.),
        (250., 215.),
        (215., 150.),
        (215., 370.),
        (85., 370.),
        (85., 150.),
        (50., 215.),
        (20., 200.),
    ],
];

const WIDTH: u32 = 300;
const HEIGHT: u32 = 400;

/// One photo to draw: its seed and the index of its family in the head's labels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VividGarment {
    pub seed: u64,
    pub class: usize,
}

/// Up to `n` photos to draw, of colours whose vocabulary family is one of `labels` (none when
/// no family is). Looks at most 100 colours per photo wanted (one family alone is about one
/// colour in 50).
pub fn vivid_garments(
    n: usize,
    seed: u64,
    vocab: &Vocabulary,
    labels: &[String],
) -> Vec<VividGarment> {
    let mut out = Vec::new();
    for i in 0..(n as u64).saturating_mul(100) {
        if out.len() == n {
            break;
        }
        let seed = fnv1a(seed, &i.to_le_bytes());
        let rgb = colour(&mut StdRng::seed_from_u64(seed));
        let lab = srgb_to_lab(rgb);
        if lab[1].hypot(lab[2]) < MIN_CHROMA {
            continue;
        }
        let family = &vocab.name(lab).family;
        if let Some(class) = labels.iter().position(|l| l == family) {
            out.push(VividGarment { seed, class });
        }
    }
    out
}

/// The garment's colour: HSV saturation 0.55 to 1, value 0.3 to 1, any hue. The first draws
/// of a photo's generator, so [`vivid_garments`] and [`draw`] agree on it.
fn colour(rng: &mut StdRng) -> [u8; 3] {
    let (h, s, v) = (
        rng.random_range(0.0..6.0f32),
        rng.random_range(0.55..1.0f32),
        rng.random_range(0.3..1.0f32),
    );
    let f = h.fract();
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    let [r, g, b] = match h as u32 {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    };
    [r, g, b].map(|c| (c * 255.0).round() as u8)
}

/// Draws the photo of `seed` (see the module's documentation).
pub fn draw(seed: u64) -> RgbImage {
    let mut rng = StdRng::seed_from_u64(seed);
    let base = colour(&mut rng).map(f32::from);
    let outline = OUTLINES[rng.random_range(0..OUTLINES.len())];
    let polygon: Vec<(f32, f32)> = outline
        .iter()
        .map(|&(x, y)| {
            (
                x * rng.random_range(0.9..1.1) + rng.random_range(-15.0..15.0),
                y * rng.random_range(0.95..1.05) + rng.random_range(-10.0..10.0),
            )
        })
        .collect();
    let mask = image::imageops::blur(&coverage(&polygon), rng.random_range(0.5..2.0));
    // Light falls off top to bottom (to `fall` of it) and changes side to side; folds are a
    // sine across the garment.
    let (fall, top) = (rng.random_range(0.6..1.0f32), rng.random_range(0.9..1.1f32));
    let (left, right) = (
        rng.random_range(0.85..1.1f32),
        rng.random_range(0.85..1.1f32),
    );
    let (period, phase, depth) = (
        rng.random_range(6.0..30.0f32),
        rng.random_range(0.0..6.0f32),
        0.08 * rng.random::<f32>(),
    );
    let noise = rng.random_range(2.0..8.0f32);
    let grey = rng.random_range(215.0..255.0f32);
    let background: [f32; 3] = std::array::from_fn(|_| grey + 4.0 * normal(&mut rng));
    let img = RgbImage::from_fn(WIDTH, HEIGHT, |x, y| {
        let (fx, fy) = (x as f32 / WIDTH as f32, y as f32 / HEIGHT as f32);
        let light = top
            * (1.0 - fy * (1.0 - fall))
            * (left + (right - left) * fx)
            * (1.0 + depth * (x as f32 / period + phase).sin());
        let m = f32::from(mask.get_pixel(x, y).0[0]) / 255.0;
        image::Rgb(std::array::from_fn(|c| {
            let garment = base[c] * light + noise * normal(&mut rng);
            (garment * m + background[c] * (1.0 - m))
                .round()
                .clamp(0.0, 255.0) as u8
        }))
    });
    let img = if rng.random_bool(0.7) {
        image::imageops::resize(&img, 224, 224, FilterType::Triangle)
    } else {
        img
    };
    jpeg(&img, rng.random_range(80..=95))
}

/// `img` as a JPEG of this quality would decode.
fn jpeg(img: &RgbImage, quality: u8) -> RgbImage {
    let mut bytes = Vec::new();
    let encoded = JpegEncoder::new_with_quality(&mut bytes, quality)
        .encode_image(img)
        .is_ok();
    match image::load_from_memory(&bytes) {
        Ok(decoded) if encoded => decoded.to_rgb8(),
        _ => img.clone(),
    }
}

/// A standard normal draw (Box-Muller).
fn normal(rng: &mut StdRng) -> f32 {
    let u = 1.0 - rng.random::<f32>();
    let v = rng.random::<f32>();
    (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
}

/// How much of each pixel of the canvas the polygon covers (even-odd rule), from 4 rows of
/// samples per pixel row and exact spans along each. Written here because the image crates in
/// use fill polygons without anti-aliasing, and this is a few lines.
fn coverage(polygon: &[(f32, f32)]) -> GrayImage {
    const ROWS: usize = 4;
    let (w, h) = (WIDTH as usize, HEIGHT as usize);
    let mut cover = vec![0f32; w * h];
    let mut xs = Vec::new();
    for row in 0..h * ROWS {
        let y = (row as f32 + 0.5) / ROWS as f32;
        xs.clear();
        for (i, &(x0, y0)) in polygon.iter().enumerate() {
            let (x1, y1) = polygon[(i + 1) % polygon.len()];
            if (y0 <= y) != (y1 <= y) {
                xs.push(x0 + (y - y0) / (y1 - y0) * (x1 - x0));
            }
        }
        xs.sort_by(f32::total_cmp);
        let line = &mut cover[(row / ROWS) * w..][..w];
        for span in xs.chunks_exact(2) {
            let (a, b) = (span[0].clamp(0.0, w as f32), span[1].clamp(0.0, w as f32));
            for (x, c) in line
                .iter_mut()
                .enumerate()
                .take(b.ceil() as usize)
                .skip(a.floor() as usize)
            {
                let inside = (b.min(x as f32 + 1.0) - a.max(x as f32)).max(0.0);
                *c += inside / ROWS as f32;
            }
        }
    }
    GrayImage::from_fn(WIDTH, HEIGHT, |x, y| {
        image::Luma([(cover[y as usize * w + x as usize] * 255.0)
            .round()
            .min(255.0) as u8])
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::colour::{palette, ColourPixels};

    fn families() -> Vec<String> {
        let v = Vocabulary::default();
        let mut f: Vec<String> = v.colours.iter().map(|c| c.family.clone()).collect();
        f.sort();
        f.dedup();
        f
    }

    #[test]
    fn a_triangle_covers_half_its_box_with_soft_edges() {
        // Right triangle over the box (10,10)-(110,110): half of it, 5,000 pixels.
        let c = coverage(&[(10.0, 10.0), (110.0, 10.0), (10.0, 110.0)]);
        let total: f32 = c.pixels().map(|p| f32::from(p.0[0]) / 255.0).sum();
        assert!((total - 5000.0).abs() < 10.0, "{total}");
        assert_eq!(c.get_pixel(30, 30).0[0], 255);
        assert_eq!(c.get_pixel(100, 100).0[0], 0);
        // On the diagonal the pixels are half covered.
        let diagonal = c.get_pixel(60, 59).0[0];
        assert!((100..=160).contains(&diagonal), "{diagonal}");
    }

    #[test]
    fn drawn_garments_have_the_vivid_colour_they_are_labelled_with() {
        let v = Vocabulary::default();
        let labels = families();
        let list = vivid_garments(40, 7, &v, &labels);
        assert_eq!(list.len(), 40);
        // The same seed gives the same list; another seed another.
        assert_eq!(list, vivid_garments(40, 7, &v, &labels));
        assert_ne!(list, vivid_garments(40, 8, &v, &labels));
        let mut seen = std::collections::BTreeSet::new();
        let mut agree = 0;
        for g in &list {
            let img = draw(g.seed);
            assert!(matches!(img.dimensions(), (224, 224) | (300, 400)));
            assert_eq!(img, draw(g.seed), "drawing is repeatable");
            // The corners are the light background; the middle is the garment's colour,
            // vivid.
            let corner = srgb_to_lab(img.get_pixel(2, 2).0);
            assert!(corner[0] > 80.0 && corner[1].hypot(corner[2]) < 10.0);
            let px = ColourPixels::of(&img);
            let p = palette(&px.garment(&px.mask(None)), &v, 3, 0.05);
            agree += usize::from(p[0].family == labels[g.class]);
            seen.insert(g.class);
        }
        // The palette of the drawn photo, shading and all, mostly names the label's family
        // (36 of these 40; shading takes a few dark oranges to brown, and such).
        assert!(agree >= 32, "{agree} of 40");
        assert!(seen.len() >= 6, "colours of many families: {seen:?}");
        // Only the families asked for.
        let blue = vec!["blue".to_string()];
        let only = vivid_garments(5, 7, &v, &blue);
        assert_eq!(only.len(), 5);
        assert!(only.iter().all(|g| g.class == 0));
        assert!(vivid_garments(10, 7, &v, &["navy blue".to_string()]).is_empty());
    }
}
