//! The on-disk feature cache: the frozen backbone runs once per (photo, augmentation), and one
//! of its outputs (the pooled features, or a feature map) is appended to a file as each batch
//! finishes, so a killed run resumes where it stopped. A photo that fails to decode gets a row
//! of NaN and is left out of training.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use ndarray::Array4;
use rayon::prelude::*;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::hash::fnv1a;
use crate::model::FEATURES;
use crate::preprocess::Preprocess;

/// How a cached value is stored: float32, or float16 for the large feature maps.
pub trait Stored: Copy + Send + Sync {
    const BYTES: usize;
    const NAN: Self;
    fn from_f32(v: f32) -> Self;
    fn write(self, out: &mut Vec<u8>);
    fn read(b: &[u8]) -> Self;
}

impl Stored for f32 {
    const BYTES: usize = 4;
    const NAN: f32 = f32::NAN;
    fn from_f32(v: f32) -> f32 {
        v
    }
    fn write(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    fn read(b: &[u8]) -> f32 {
        f32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
}

impl Stored for half::f16 {
    const BYTES: usize = 2;
    const NAN: half::f16 = half::f16::NAN;
    fn from_f32(v: f32) -> half::f16 {
        half::f16::from_f32(v)
    }
    fn write(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    fn read(b: &[u8]) -> half::f16 {
        half::f16::from_le_bytes([b[0], b[1]])
    }
}

/// Computes (or reads back) output `output` of `engine` for `paths`, `dim` values per photo
/// (mirrored when `flip` is set), stored as `T`. `model_key` identifies the backbone and
/// preprocessing.
#[allow(clippy::too_many_arguments)]
pub fn cached_rows<T: Stored>(
    engine: &Engine,
    pre: &Preprocess,
    paths: &[PathBuf],
    flip: bool,
    cache_dir: &Path,
    model_key: u64,
    batch: usize,
    label: &str,
    output: &str,
    dim: usize,
) -> Result<Vec<T>> {
    let mut key = fnv1a(model_key, &[u8::from(flip)]);
    if output != FEATURES {
        key = fnv1a(key, output.as_bytes());
        key = fnv1a(key, &(T::BYTES as u64).to_le_bytes());
    }
    for p in paths {
        key = fnv1a(key, p.to_string_lossy().as_bytes());
        key = fnv1a(key, b"\n");
    }
    std::fs::create_dir_all(cache_dir).map_err(|e| Error::io(cache_dir, e))?;
    let file = cache_dir.join(format!("features-{key:016x}.f{}", T::BYTES * 8));
    let row_bytes = dim * T::BYTES;
    let mut f = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(&file)
        .map_err(|e| Error::io(&file, e))?;
    let len = f.metadata().map_err(|e| Error::io(&file, e))?.len() as usize;
    let done = (len / row_bytes).min(paths.len());
    if len != done * row_bytes {
        // A partly written last row from a killed run.
        f.set_len((done * row_bytes) as u64)
            .map_err(|e| Error::io(&file, e))?;
    }
    let bar = super::photo_bar(paths.len(), label);
    bar.set_position(done as u64);
    let n = pre.tensor_len();
    for chunk_start in (done..paths.len()).step_by(batch.max(1)) {
        let chunk = &paths[chunk_start..(chunk_start + batch).min(paths.len())];
        let mut input = vec![0f32; chunk.len() * n];
        let ok: Vec<bool> = input
            .par_chunks_mut(n)
            .zip(chunk.par_iter())
            .map(
                |(out, p)| match pre.load(p, crate::image::DEFAULT_MAX_PIXELS) {
                    Ok(img) => {
                        pre.write_tensor(&img, flip, out);
                        true
                    }
                    Err(e) => {
                        bar.suspend(|| eprintln!("skipping {e}"));
                        false
                    }
                },
            )
            .collect();
        let s = pre.crop as usize;
        let arr = Array4::from_shape_vec((chunk.len(), 3, s, s), input)
            .map_err(|e| Error::Engine(e.to_string()))?;
        let out = engine.run(arr.view(), &[output])?;
        let feats = out[0]
            .as_slice()
            .ok_or_else(|| Error::Engine("non-contiguous output".into()))?;
        if feats.len() != chunk.len() * dim {
            return Err(Error::Engine(format!(
                "{output}: {} values for {} photos, expected {dim} each",
                feats.len(),
                chunk.len()
            )));
        }
        let mut bytes = Vec::with_capacity(chunk.len() * row_bytes);
        for (i, good) in ok.iter().enumerate() {
            for &v in &feats[i * dim..(i + 1) * dim] {
                let v = if *good { T::from_f32(v) } else { T::NAN };
                v.write(&mut bytes);
            }
        }
        f.write_all(&bytes).map_err(|e| Error::io(&file, e))?;
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let mut bytes = Vec::with_capacity(paths.len() * row_bytes);
    let mut f = std::fs::File::open(&file).map_err(|e| Error::io(&file, e))?;
    f.read_to_end(&mut bytes).map_err(|e| Error::io(&file, e))?;
    if bytes.len() != paths.len() * row_bytes {
        return Err(Error::bad_data(
            &file,
            "feature cache has the wrong size; delete it",
        ));
    }
    Ok(bytes.chunks_exact(T::BYTES).map(T::read).collect())
}
