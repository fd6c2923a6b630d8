//! The on-disk feature cache: the frozen backbone runs once per (photo, augmentation), and one
//! of its outputs (the pooled features, or a feature map) is appended to a file as each batch
//! finishes, so a killed run resumes where it stopped. A photo that fails to decode gets a row
//! of NaN and is left out of training. Training reads the file back memory-mapped, so a cache
//! larger than memory (feature maps of a large catalogue) is paged in as batches need it.

use std::fs::OpenOptions;
use std::io::Write;
use std::ops::Deref;
use std::path::{Path, PathBuf};

use ndarray::Array4;
use rayon::prelude::*;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::hash::fnv1a;
use crate::model::FEATURES;
use crate::preprocess::Preprocess;

/// How a cached value is stored: float32, or float16 for the large feature maps; in the
/// machine's own byte order (the cache is read back by mapping the file into memory).
pub trait Stored: bytemuck::Pod + Send + Sync {
    const NAN: Self;
    fn from_f32(v: f32) -> Self;
}

impl Stored for f32 {
    const NAN: f32 = f32::NAN;
    fn from_f32(v: f32) -> f32 {
        v
    }
}

impl Stored for half::f16 {
    const NAN: half::f16 = half::f16::NAN;
    fn from_f32(v: f32) -> half::f16 {
        half::f16::from_f32(v)
    }
}

/// The rows of a finished cache file, mapped into memory: `rows[photo * dim + i]`.
pub struct Rows<T> {
    map: Option<memmap2::Mmap>,
    _values: std::marker::PhantomData<T>,
}

impl<T: Stored> Deref for Rows<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // A mapping starts on a page boundary, so it is aligned for any `T`.
        self.map.as_deref().map_or(&[], bytemuck::cast_slice)
    }
}

/// What each photo is given to the engine as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// The centre crop.
    Crop,
    /// The centre crop, mirrored left to right (the training augmentation).
    Mirrored,
    /// The whole square the crop is cut from (for a graph that makes its own look of it,
    /// [`crate::model::second_look_graph`]).
    Square,
}

/// Computes (or reads back) output `output` of `engine` for `paths`, `dim` values per photo
/// given as `input` says, stored as `T`. `model_key` identifies the backbone (and the graph in
/// front of it) and the preprocessing.
#[allow(clippy::too_many_arguments)]
pub fn cached_rows<T: Stored>(
    engine: &Engine,
    pre: &Preprocess,
    paths: &[PathBuf],
    input: Input,
    cache_dir: &Path,
    model_key: u64,
    batch: usize,
    label: &str,
    output: &str,
    dim: usize,
) -> Result<Rows<T>> {
    let mut key = fnv1a(model_key, &[input as u8]);
    if output != FEATURES {
        key = fnv1a(key, output.as_bytes());
        key = fnv1a(key, &(size_of::<T>() as u64).to_le_bytes());
    }
    for p in paths {
        key = fnv1a(key, p.to_string_lossy().as_bytes());
        key = fnv1a(key, b"\n");
    }
    std::fs::create_dir_all(cache_dir).map_err(|e| Error::io(cache_dir, e))?;
    let file = cache_dir.join(format!("features-{key:016x}.f{}", size_of::<T>() * 8));
    let row_bytes = dim * size_of::<T>();
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
    let s = if input == Input::Square {
        pre.square_side()
    } else {
        pre.crop
    } as usize;
    let n = 3 * s * s;
    let max_pixels = crate::image::DEFAULT_MAX_PIXELS;
    for chunk_start in (done..paths.len()).step_by(batch.max(1)) {
        let chunk = &paths[chunk_start..(chunk_start + batch).min(paths.len())];
        let mut tensor = vec![0f32; chunk.len() * n];
        let ok: Vec<bool> = tensor
            .par_chunks_mut(n)
            .zip(chunk.par_iter())
            .map(|(out, p)| {
                let img = match input {
                    Input::Square => pre.load_square(p, max_pixels),
                    _ => pre.load(p, max_pixels),
                };
                match img {
                    Ok(img) => {
                        pre.write_tensor(&img, input == Input::Mirrored, out);
                        true
                    }
                    Err(e) => {
                        bar.suspend(|| eprintln!("skipping {e}"));
                        false
                    }
                }
            })
            .collect();
        let arr = Array4::from_shape_vec((chunk.len(), 3, s, s), tensor)
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
                bytes.extend_from_slice(bytemuck::bytes_of(&v));
            }
        }
        f.write_all(&bytes).map_err(|e| Error::io(&file, e))?;
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let len = f.metadata().map_err(|e| Error::io(&file, e))?.len() as usize;
    if len != paths.len() * row_bytes {
        return Err(Error::bad_data(
            &file,
            "feature cache has the wrong size; delete it",
        ));
    }
    // SAFETY: the mapping is read only, and the file is complete: a later run with the same
    // key only reads it. Two runs filling one cache directory at the same time are not
    // supported (one could cut the other's file short under its mapping).
    let map = (len > 0)
        .then(|| unsafe { memmap2::Mmap::map(&f) })
        .transpose()
        .map_err(|e| Error::io(&file, e))?;
    Ok(Rows {
        map,
        _values: std::marker::PhantomData,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Threads;
    use crate::model::{Model, FEATURE_DIM};

    /// The model's `features` for one photo, run alone (not through the cache).
    fn direct(model: &Model, path: &Path, flip: bool) -> Vec<f32> {
        let pre = &model.info.preprocess;
        let s = pre.crop as usize;
        let mut input = vec![0f32; pre.tensor_len()];
        let img = pre.load(path, crate::image::DEFAULT_MAX_PIXELS).unwrap();
        pre.write_tensor(&img, flip, &mut input);
        let input = Array4::from_shape_vec((1, 3, s, s), input).unwrap();
        let out = model.engine.run(input.view(), &[FEATURES]).unwrap();
        out[0].iter().copied().collect()
    }

    #[test]
    fn cache_reads_back_the_models_rows_and_resumes_after_a_cut() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        // The model's single look: the crops the cache holds rows of.
        let shipped = std::fs::read(root.join("models/default.onnx")).unwrap();
        let name = Path::new("default.onnx");
        let single = crate::model::single_look(&shipped, name)
            .unwrap()
            .unwrap_or(shipped);
        let model = Model::from_bytes(&single, name, Threads::single(1)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("not-a-photo.jpg");
        std::fs::write(&bad, b"plain text").unwrap();
        let samples = root.join("samples");
        let paths = vec![
            samples.join("tee-navy.jpg"),
            bad,
            samples.join("dress-red.jpg"),
            samples.join("jeans-denim.png"),
        ];
        let cache = dir.path().join("cache");
        let run = |flip: bool| {
            cached_rows::<half::f16>(
                &model.engine,
                &model.info.preprocess,
                &paths,
                if flip { Input::Mirrored } else { Input::Crop },
                &cache,
                7,
                2,
                "test",
                FEATURES,
                FEATURE_DIM,
            )
            .unwrap()
        };
        let check = |rows: &[half::f16], flip: bool| {
            assert_eq!(rows.len(), paths.len() * FEATURE_DIM);
            for (i, p) in paths.iter().enumerate() {
                let row = &rows[i * FEATURE_DIM..(i + 1) * FEATURE_DIM];
                if i == 1 {
                    assert!(row.iter().all(|v| v.is_nan()), "a bad photo's row is NaN");
                    continue;
                }
                for (got, want) in row.iter().zip(direct(&model, p, flip)) {
                    let err = (got.to_f32() - want).abs();
                    assert!(err <= 2e-3 * want.abs().max(1.0), "{p:?}: {got} vs {want}");
                }
            }
        };
        let first = run(false);
        check(&first, false);
        // The mirror images are another file; they differ from the photos.
        let flipped = run(true);
        check(&flipped, true);
        assert_ne!(&first[..FEATURE_DIM], &flipped[..FEATURE_DIM]);
        drop((first, flipped));
        // A run killed in the middle of its third row: the next run keeps the first two,
        // computes the rest and gives the same rows.
        let file = std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| std::fs::metadata(p).unwrap().len() > 0)
            .unwrap();
        let f = OpenOptions::new().write(true).open(&file).unwrap();
        f.set_len((2 * FEATURE_DIM + 100) as u64 * 2).unwrap();
        drop(f);
        check(&run(false), false);
        check(&run(true), true);
        assert_eq!(
            std::fs::metadata(&file).unwrap().len(),
            (paths.len() * FEATURE_DIM * 2) as u64
        );
    }
}
