//! The one path from an RGB photo to the model's input tensor, used for training and inference
//! alike. The constants match the backbone's reference preprocessing: shorter side resized to 256
//! with an antialiased bilinear filter (as PIL does), centre crop 224x224, `(value - 127) / 128`.
//! A model may instead squash a photo that is not square to 256x256 before the same centre crop
//! ([`Fit::Squash`]); square photos give the same tensor either way.

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
    /// Number of floats in one photo's tensor (`3 x crop x crop`).
    pub fn tensor_len(&self) -> usize {
        3 * (self.crop as usize).pow(2)
    }

    /// Resizes the shorter side (with [`Fit::Squash`]: both sides) to `resize_shorter` and cuts
    /// the centre `crop x crop` square.
    pub fn resize_and_crop(&self, img: &RgbImage) -> Result<RgbImage> {
        let (w, h) = img.dimensions();
        let short = w.min(h) as f64;
        let scale = f64::from(self.resize_shorter) / short;
        // Same rounding as torchvision's Resize(int): the shorter side exactly, the longer truncated.
        let (nw, nh) = match self.fit {
            Fit::Squash => (self.resize_shorter, self.resize_shorter),
            Fit::Crop if w <= h => (self.resize_shorter, ((h as f64) * scale) as u32),
            Fit::Crop => (((w as f64) * scale) as u32, self.resize_shorter),
        };
        let (nw, nh) = (nw.max(self.crop), nh.max(self.crop));
        let src = ImageRef::new(w, h, img.as_raw(), PixelType::U8x3)
            .map_err(|e| Error::InvalidArgument(format!("resize: {e}")))?;
        let mut dst = Image::new(nw, nh, PixelType::U8x3);
        let opts = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
        Resizer::new()
            .resize(&src, &mut dst, &opts)
            .map_err(|e| Error::InvalidArgument(format!("resize: {e}")))?;
        let resized = RgbImage::from_raw(nw, nh, dst.into_vec())
            .ok_or_else(|| Error::InvalidArgument("resize: wrong buffer size".into()))?;
        let left = ((nw - self.crop) as f64 / 2.0).round() as u32;
        let top = ((nh - self.crop) as f64 / 2.0).round() as u32;
        Ok(image::imageops::crop_imm(&resized, left, top, self.crop, self.crop).to_image())
    }

    /// Decodes a photo and cuts the model's square from it: the one path every photo takes,
    /// in training and in inference. Large JPEGs are decoded at a reduced scale that still leaves
    /// at least `resize_shorter` pixels on the shorter side.
    pub fn load(&self, path: &std::path::Path, max_pixels: u64) -> Result<RgbImage> {
        let img = crate::image::load(path, &self.decode_options(max_pixels))?;
        self.resize_and_crop(&img)
    }

    /// Like [`Preprocess::load`], for an encoded photo held in memory (`name` names it in errors).
    pub fn decode(
        &self,
        bytes: &[u8],
        name: &std::path::Path,
        max_pixels: u64,
    ) -> Result<RgbImage> {
        let img = crate::image::decode(bytes, name, &self.decode_options(max_pixels))?;
        self.resize_and_crop(&img)
    }

    fn decode_options(&self, max_pixels: u64) -> crate::image::DecodeOptions {
        crate::image::DecodeOptions {
            max_pixels,
            min_shorter_side: self.resize_shorter,
        }
    }

    /// Writes the normalised CHW tensor of a `crop x crop` image into `out`, mirrored left-right
    /// when `flip` is set (the training augmentation).
    pub fn write_tensor(&self, img: &RgbImage, flip: bool, out: &mut [f32]) {
        let s = self.crop as usize;
        assert_eq!(
            img.dimensions(),
            (self.crop, self.crop),
            "crop the image first"
        );
        assert_eq!(out.len(), self.tensor_len());
        let plane = s * s;
        for (y, row) in img.as_raw().chunks_exact(s * 3).enumerate() {
            for x in 0..s {
                let sx = if flip { s - 1 - x } else { x };
                for c in 0..3 {
                    out[c * plane + y * s + x] =
                        (f32::from(row[sx * 3 + c]) - self.mean[c]) / self.std[c];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        // A square photo gives the same crop whichever the fit.
        let square = RgbImage::from_fn(400, 400, |x, y| image::Rgb([(x % 256) as u8, y as u8, 7]));
        assert_eq!(
            p.resize_and_crop(&square).unwrap(),
            Preprocess::default().resize_and_crop(&square).unwrap()
        );
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
    }
}
