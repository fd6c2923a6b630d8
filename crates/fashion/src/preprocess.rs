//! The one path from an RGB photo to the model's input tensor, used for training and inference
//! alike. The constants match the backbone's reference preprocessing: shorter side resized to 256
//! with an antialiased bilinear filter (as PIL does), centre crop 224x224, `(value - 127) / 128`.
//! A model may instead bring a photo that is not square to a 256x256 square whole, padded
//! ([`Fit::Pad`]) or squashed ([`Fit::Squash`]), before the same centre crop; square photos give
//! the same tensor every way.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Preprocessing constants; saved in every model file so a model is enough to rebuild them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preprocess {
    /// Side of the square crop the network sees.
    pub crop: u32,
    /// The shorter side is resized to this before the centre crop.
    pub resize_shorter: u32,
    /// Subtracted from each 0..255 channel value.
    pub mean: [f32; 3],
    /// Each channel is divided by this after subtracting the mean.
    pub std: [f32; 3],
    /// How a photo that is not square becomes square.
    #[serde(default, skip_serializing_if = "Fit::is_crop")]
    pub fit: Fit,
}

/// How a photo that is not square is brought to the model's square.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fit {
    /// Keep the proportions: the shorter side is resized to `resize_shorter` and the centre
    /// square is cut, losing the ends of the longer side (the backbone's reference crop).
    #[default]
    Crop,
    /// Resize both sides to `resize_shorter`, changing the proportions, so that the whole photo
    /// stays in view. Catalogue thumbnails are often made this way (the Fashion Product Images
    /// photos are their 1800x2400 originals squashed to 224x224), so a model trained on them
    /// sees a full-size original as it saw its thumbnail.
    Squash,
    /// Keep the proportions and the whole photo: the longer side is resized to
    /// `resize_shorter` and the shorter is filled out to a square with the mean colour of the
    /// photo's two edges along it, as the DeepFashion In-shop photos were made from their
    /// originals.
    Pad,
}

impl Fit {
    fn is_crop(&self) -> bool {
        *self == Fit::Crop
    }
}

impl Default for Preprocess {
    fn default() -> Self {
        Self {
            crop: 224,
            resize_shorter: 256,
            mean: [127.0; 3],
            std: [128.0; 3],
            fit: Fit::Crop,
        }
    }
}

impl Preprocess {
    /// Number of floats in the tensor of one `crop x crop` photo.
    pub fn tensor_len(&self) -> usize {
        3 * (self.crop as usize).pow(2)
    }

    /// Side of the square the crop is cut from.
    pub fn square_side(&self) -> u32 {
        self.resize_shorter.max(self.crop)
    }

    /// Brings the photo to a `resize_shorter` square as [`Preprocess::fit`] says and cuts the
    /// centre `crop x crop` square from it.
    pub fn resize_and_crop(&self, img: &RgbImage) -> Result<RgbImage> {
        Ok(self.cut(&self.square(img)?))
    }

    /// The centre `crop x crop` square of a [`Preprocess::square`].
    pub fn cut(&self, square: &RgbImage) -> RgbImage {
        let (w, h) = square.dimensions();
        let left = (w.saturating_sub(self.crop) as f64 / 2.0).round() as u32;
        let top = (h.saturating_sub(self.crop) as f64 / 2.0).round() as u32;
        copy_region(square, left, top, self.crop, self.crop)
    }

    /// Brings the photo to a [`Preprocess::square_side`] square as [`Preprocess::fit`] says (for
    /// [`Fit::Crop`], the centre square of the photo resized to `resize_shorter` on its shorter
    /// side).
    pub fn square(&self, img: &RgbImage) -> Result<RgbImage> {
        let (w, h) = img.dimensions();
        let side = self.resize_shorter;
        let square = self.square_side();
        let (nw, nh) = match self.fit {
            Fit::Squash => (square, square),
            Fit::Pad => {
                let scale = f64::from(side) / f64::from(w.max(h));
                let fit = |v: u32| ((f64::from(v) * scale).round() as u32).clamp(1, side);
                (fit(w), fit(h))
            }
            // Same rounding as torchvision's Resize(int): the shorter side exactly, the longer
            // truncated.
            Fit::Crop => {
                let scale = f64::from(side) / f64::from(w.min(h));
                let long = |v: u32| (f64::from(v) * scale) as u32;
                let (nw, nh) = if w <= h {
                    (side, long(h))
                } else {
                    (long(w), side)
                };
                (nw.max(self.crop), nh.max(self.crop))
            }
        };
        let src = ImageRef::new(w, h, img.as_raw(), PixelType::U8x3)
            .map_err(|e| Error::InvalidArgument(format!("resize: {e}")))?;
        let mut dst = Image::new(nw, nh, PixelType::U8x3);
        let opts = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
        Resizer::new()
            .resize(&src, &mut dst, &opts)
            .map_err(|e| Error::InvalidArgument(format!("resize: {e}")))?;
        let resized = RgbImage::from_raw(nw, nh, dst.into_vec())
            .ok_or_else(|| Error::InvalidArgument("resize: wrong buffer size".into()))?;
        Ok(match self.fit {
            _ if (nw, nh) == (square, square) => resized,
            Fit::Pad => pad_to_square(&resized, square),
            Fit::Squash => resized,
            Fit::Crop => {
                let left = (nw.saturating_sub(square) as f64 / 2.0).round() as u32;
                let top = (nh.saturating_sub(square) as f64 / 2.0).round() as u32;
                copy_region(&resized, left, top, square, square)
            }
        })
    }

    /// Decodes a photo and cuts the model's square from it: the one path every photo takes,
    /// in training and in inference. Large JPEGs are decoded at a reduced scale that still leaves
    /// at least `resize_shorter` pixels on the shorter side.
    pub fn load(&self, path: &std::path::Path, max_pixels: u64) -> Result<RgbImage> {
        self.resize_and_crop(&self.load_photo(path, max_pixels)?)
    }

    /// Decodes a photo and brings it to its [`Preprocess::square`].
    pub fn load_square(&self, path: &std::path::Path, max_pixels: u64) -> Result<RgbImage> {
        self.square(&self.load_photo(path, max_pixels)?)
    }

    /// Decodes a photo as it is (large JPEGs at a reduced scale, as [`Preprocess::load`]).
    pub(crate) fn load_photo(&self, path: &std::path::Path, max_pixels: u64) -> Result<RgbImage> {
        crate::image::load(path, &self.decode_options(max_pixels))
    }

    /// Like [`Preprocess::load_square`], for an encoded photo held in memory (`name` names it in
    /// errors).
    pub fn decode_square(
        &self,
        bytes: &[u8],
        name: &std::path::Path,
        max_pixels: u64,
    ) -> Result<RgbImage> {
        let img = crate::image::decode(bytes, name, &self.decode_options(max_pixels))?;
        self.square(&img)
    }

    fn decode_options(&self, max_pixels: u64) -> crate::image::DecodeOptions {
        crate::image::DecodeOptions {
            max_pixels,
            min_shorter_side: self.resize_shorter,
        }
    }

    /// Writes the normalised CHW tensor of a square image (the crop, or the whole square for a
    /// model that cuts its own crop) into `out`, mirrored left-right when `flip` is set (the
    /// training augmentation).
    pub fn write_tensor(&self, img: &RgbImage, flip: bool, out: &mut [f32]) {
        let (w, h) = img.dimensions();
        assert_eq!(w, h, "the model takes a square");
        let s = w as usize;
        assert_eq!(out.len(), 3 * s * s);
        let plane = s * s;
        // Each channel's 256 possible values, normalised once.
        let table: [[f32; 256]; 3] = std::array::from_fn(|c| {
            std::array::from_fn(|v| (v as f32 - self.mean[c]) / self.std[c])
        });
        let (red, rest) = out.split_at_mut(plane);
        let (green, blue) = rest.split_at_mut(plane);
        for (y, row) in img.as_raw().chunks_exact(s * 3).enumerate() {
            let at = y * s;
            for (x, px) in row.chunks_exact(3).enumerate() {
                let i = at + if flip { s - 1 - x } else { x };
                red[i] = table[0][usize::from(px[0])];
                green[i] = table[1][usize::from(px[1])];
                blue[i] = table[2][usize::from(px[2])];
            }
        }
    }
}

/// Centres `img` on a `side x side` square filled with the mean colour of the edges it is
/// padded beyond (the left and right columns of a tall photo, the top and bottom rows of a wide
/// one), so that a plain studio background carries on across the padding.
fn pad_to_square(img: &RgbImage, side: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let edge: Vec<[u8; 3]> = if w < h {
        (0..h)
            .flat_map(|y| [img.get_pixel(0, y).0, img.get_pixel(w - 1, y).0])
            .collect()
    } else {
        (0..w)
            .flat_map(|x| [img.get_pixel(x, 0).0, img.get_pixel(x, h - 1).0])
            .collect()
    };
    let mut sum = [0u64; 3];
    for p in &edge {
        for (s, v) in sum.iter_mut().zip(p) {
            *s += u64::from(*v);
        }
    }
    let fill = sum.map(|s| (s / edge.len().max(1) as u64) as u8);
    let mut out = RgbImage::from_pixel(side, side, image::Rgb(fill));
    let (left, top) = ((side - w.min(side)) / 2, (side - h.min(side)) / 2);
    let (row, stride) = (3 * w.min(side) as usize, 3 * side as usize);
    let raw: &mut [u8] = &mut out;
    for (y, src) in img
        .as_raw()
        .chunks_exact(3 * w as usize)
        .take(side as usize)
        .enumerate()
    {
        let at = (top as usize + y) * stride + 3 * left as usize;
        raw[at..at + row].copy_from_slice(&src[..row]);
    }
    out
}

/// The `width x height` region of `img` at (`left`, `top`), cut back to the part inside `img`
/// as `image`'s `crop_imm` does, copied row by row (`crop_imm(..).to_image()` copies pixel by
/// pixel, a visible share of the time per photo).
fn copy_region(img: &RgbImage, left: u32, top: u32, width: u32, height: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let (left, top) = (left.min(w), top.min(h));
    let (width, height) = (width.min(w - left), height.min(h - top));
    if width == 0 || height == 0 {
        return RgbImage::new(width, height);
    }
    let stride = 3 * w as usize;
    let (from, row) = (3 * left as usize, 3 * width as usize);
    let mut raw = Vec::with_capacity(row * height as usize);
    for src in img
        .as_raw()
        .chunks_exact(stride)
        .skip(top as usize)
        .take(height as usize)
    {
        raw.extend_from_slice(&src[from..from + row]);
    }
    RgbImage::from_raw(width, height, raw).expect("rows of the region's size")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_region_cuts_what_image_crop_imm_cuts() {
        let img = RgbImage::from_fn(37, 23, |x, y| image::Rgb([x as u8, y as u8, (x * y) as u8]));
        for (left, top, w, h) in [
            (0, 0, 37, 23),
            (5, 3, 10, 7),
            (30, 20, 10, 10),
            (37, 0, 4, 4),
            (2, 22, 40, 1),
            (0, 0, 0, 5),
        ] {
            let want = image::imageops::crop_imm(&img, left, top, w, h).to_image();
            assert_eq!(
                copy_region(&img, left, top, w, h),
                want,
                "{left} {top} {w} {h}"
            );
        }
    }

    #[test]
    fn crop_geometry_matches_reference() {
        let p = Preprocess::default();
        let img = RgbImage::from_fn(300, 600, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 0])
        });
        let out = p.resize_and_crop(&img).unwrap();
        assert_eq!(out.dimensions(), (224, 224));
        // 300x600 -> 256x512; crop starts at x=16, y=144. The red channel is x, resized by 256/300.
        let px = out.get_pixel(0, 0).0[0] as f64;
        let expected = (16.0 + 0.5) * 300.0 / 256.0 - 0.5;
        assert!((px - expected).abs() < 1.5, "{px} vs {expected}");
        // The square the crop is cut from is the centre 256x256 of the 256x512 resize: its top
        // row is y = 128, and the crop is its centre.
        let square = p.square(&img).unwrap();
        assert_eq!(square.dimensions(), (256, 256));
        let py = square.get_pixel(0, 0).0[1] as f64;
        let expected = ((128.0 + 0.5) * 600.0 / 512.0 - 0.5) % 256.0;
        assert!((py - expected).abs() < 1.5, "{py} vs {expected}");
        assert_eq!(p.cut(&square), out);
    }

    /// A square photo (of either size) gives `p` the same crop as the reference crop.
    fn assert_squares_cut_as_the_reference(p: &Preprocess) {
        for side in [300, 400] {
            let square =
                RgbImage::from_fn(side, side, |x, y| image::Rgb([(x % 256) as u8, y as u8, 7]));
            assert_eq!(
                p.resize_and_crop(&square).unwrap(),
                Preprocess::default().resize_and_crop(&square).unwrap(),
                "{:?}, {side}x{side}",
                p.fit
            );
        }
    }

    #[test]
    fn squash_keeps_the_whole_photo_and_leaves_squares_alone() {
        let p = Preprocess {
            fit: Fit::Squash,
            ..Preprocess::default()
        };
        // Red is x, green is y, both as a share of the side (0..255).
        let img = RgbImage::from_fn(300, 600, |x, y| {
            image::Rgb([(x * 255 / 299) as u8, (y * 255 / 599) as u8, 0])
        });
        let out = p.resize_and_crop(&img).unwrap();
        assert_eq!(out.dimensions(), (224, 224));
        // 300x600 -> 256x256; the crop starts 16 pixels in on both axes: 16/256 of each side,
        // where the reference crop would start 144/512 down the photo.
        let share = (16.0 + 0.5) / 256.0 * 255.0;
        let [r, g, _] = out.get_pixel(0, 0).0;
        assert!((f64::from(r) - share).abs() < 2.0, "{r} vs {share}");
        assert!((f64::from(g) - share).abs() < 2.0, "{g} vs {share}");
        let [r, g, _] = out.get_pixel(223, 223).0;
        assert!((f64::from(r) - (255.0 - share)).abs() < 2.0, "{r}");
        assert!((f64::from(g) - (255.0 - share)).abs() < 2.0, "{g}");
        assert_squares_cut_as_the_reference(&p);
    }

    #[test]
    fn pad_keeps_the_whole_photo_in_proportion_on_its_edge_colour() {
        let p = Preprocess {
            fit: Fit::Pad,
            ..Preprocess::default()
        };
        // A 200x400 photo: grey edges, a red block in the middle third of its height.
        let img = RgbImage::from_fn(200, 400, |x, y| {
            if (40..160).contains(&x) && (133..267).contains(&y) {
                image::Rgb([200, 0, 0])
            } else {
                image::Rgb([90, 90, 90])
            }
        });
        let out = p.resize_and_crop(&img).unwrap();
        assert_eq!(out.dimensions(), (224, 224));
        // 200x400 -> 128x256, centred on a 256 square from x = 64; the crop starts at 16.
        // The padding takes the edge colour, so the whole border of the crop is grey.
        for (x, y) in [
            (0, 0),
            (223, 223),
            (0, 112),
            (223, 112),
            (112, 0),
            (112, 223),
        ] {
            assert_eq!(out.get_pixel(x, y).0, [90, 90, 90], "({x}, {y})");
        }
        // The red block keeps its proportions: 120/200 of 128 = 77 wide, 134/400 of 256 = 86
        // high, centred.
        let red = |x: u32, y: u32| out.get_pixel(x, y).0 == [200, 0, 0];
        let wide = (0..224).filter(|&x| red(x, 112)).count() as i32;
        let high = (0..224).filter(|&y| red(112, y)).count() as i32;
        assert!((wide - 77).abs() <= 2, "{wide}");
        assert!((high - 86).abs() <= 2, "{high}");
        assert_squares_cut_as_the_reference(&p);
    }

    #[test]
    fn fit_is_saved_only_when_it_is_not_the_reference_crop() {
        // Models written before `fit` existed read as `crop`, and keep their cache keys.
        let json = serde_json::to_string(&Preprocess::default()).unwrap();
        assert!(!json.contains("fit"), "{json}");
        let back: Preprocess = serde_json::from_str(&json).unwrap();
        assert_eq!(back.fit, Fit::Crop);
        let squash = Preprocess {
            fit: Fit::Squash,
            ..Preprocess::default()
        };
        let json = serde_json::to_string(&squash).unwrap();
        assert!(json.contains(r#""fit":"squash""#), "{json}");
        assert_eq!(serde_json::from_str::<Preprocess>(&json).unwrap(), squash);
    }

    #[test]
    fn tensor_is_normalised_chw_and_flips() {
        let p = Preprocess::default();
        let mut img = RgbImage::new(224, 224);
        img.put_pixel(0, 5, image::Rgb([255, 127, 0]));
        let mut t = vec![0.0; p.tensor_len()];
        p.write_tensor(&img, false, &mut t);
        let plane = 224 * 224;
        assert_eq!(t[5 * 224], 1.0);
        assert_eq!(t[plane + 5 * 224], 0.0);
        assert_eq!(t[2 * plane + 5 * 224], -127.0 / 128.0);
        p.write_tensor(&img, true, &mut t);
        assert_eq!(t[5 * 224 + 223], 1.0);
        assert_eq!(t[5 * 224], -127.0 / 128.0);
        // A whole square (for a model that cuts its own crop) has its own side.
        let mut square = RgbImage::new(256, 256);
        square.put_pixel(255, 3, image::Rgb([0, 255, 0]));
        let mut t = vec![0.0; 3 * 256 * 256];
        p.write_tensor(&square, false, &mut t);
        assert_eq!(t[256 * 256 + 3 * 256 + 255], 1.0);
    }
}
