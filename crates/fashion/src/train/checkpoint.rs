//! Finished parts of a training run (heads, the garment mask) saved in the cache as
//! safetensors, so that a repeated run reuses them.

use std::collections::HashMap;
use std::path::Path;

use crate::error::{Error, Result};

/// Writes float32 tensors `(name, shape, values)` and string metadata to `path`, atomically.
pub fn save(
    path: &Path,
    tensors: &[(&str, Vec<usize>, &[f32])],
    meta: HashMap<String, String>,
) -> Result<()> {
    let bufs: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views: Vec<(&str, safetensors::tensor::TensorView)> = tensors
        .iter()
        .zip(&bufs)
        .map(|((n, shape, _), b)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b)
                .map(|v| (*n, v))
                .map_err(|e| Error::Training(e.to_string()))
        })
        .collect::<Result<_>>()?;
    let out = safetensors::tensor::serialize(views, Some(meta))
        .map_err(|e| Error::Training(e.to_string()))?;
    super::write_atomically(path, &out)
}

/// Reads back what [`save`] wrote: every tensor's values by name, and the metadata.
pub type Loaded = (HashMap<String, Vec<f32>>, HashMap<String, String>);

/// Reads a checkpoint; any problem (missing, truncated) is an error message, and the caller
/// trains afresh.
pub fn load(path: &Path) -> std::result::Result<Loaded, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| e.to_string())?;
    let meta = meta.metadata().clone().unwrap_or_default();
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| e.to_string())?;
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(n, t)| {
            let v = t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (n, v)
        })
        .collect();
    Ok((tensors, meta))
}
