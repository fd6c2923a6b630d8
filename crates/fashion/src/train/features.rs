//! The on-disk feature cache: the frozen backbone runs once per (photo, augmentation), and its
//! pooled features are appended to a file as each batch finishes, so a killed run resumes where
//! it stopped. A photo that fails to decode gets a row of NaN and is left out of training.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use ndarray::Array4;
use rayon::prelude::*;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::hash::fnv1a;
use crate::model::{FEATURES, FEATURE_DIM};
use crate::preprocess::Preprocess;

/// Computes (or reads back) the features of `paths`, `FEATURE_DIM` floats per photo, mirrored
/// when `flip` is set. `model_key` identifies the backbone and preprocessing.
#[allow(clippy::too_many_arguments)]
pub fn features(
    engine: &Engine,
    pre: &Preprocess,
    paths: &[PathBuf],
    flip: bool,
    cache_dir: &Path,
    model_key: u64,
    batch: usize,
    label: &str,
) -> Result<Vec<f32>> {
    let mut key = fnv1a(model_key, &[u8::from(flip)]);
    for p in paths {
        key = fnv1a(key, p.to_string_lossy().as_bytes());
        key = fnv1a(key, b"\n");
    }
    std::fs::create_dir_all(cache_dir).map_err(|e| Error::io(cache_dir, e))?;
    let file = cache_dir.join(format!("features-{key:016x}.f32"));
    let row_bytes = FEATURE_DIM * 4;
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
        let out = engine.run(arr.view(), &[FEATURES])?;
        let feats = out[0]
            .as_slice()
            .ok_or_else(|| Error::Engine("non-contiguous output".into()))?;
        let mut bytes = Vec::with_capacity(chunk.len() * row_bytes);
        for (i, good) in ok.iter().enumerate() {
            for j in 0..FEATURE_DIM {
                let v = if *good {
                    feats[i * FEATURE_DIM + j]
                } else {
                    f32::NAN
                };
                bytes.extend_from_slice(&v.to_le_bytes());
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
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}
