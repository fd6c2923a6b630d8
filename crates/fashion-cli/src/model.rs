//! Choosing the model: `--model FILE`, or the built-in one compiled into the binary.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use fashion::Model;

/// The built-in model, trained on DeepFashion In-shop and Fashion Product Images (see
/// models/MODEL_CARD.md).
static DEFAULT_MODEL: &[u8] = include_bytes!("../../../models/default.onnx");

/// Loads `path`, or the built-in model when it is `None`.
pub fn load(path: Option<&Path>, threads: usize) -> Result<Model> {
    match path {
        Some(p) => {
            Model::load(p, threads).with_context(|| format!("cannot load model {}", p.display()))
        }
        None => Model::from_bytes(DEFAULT_MODEL, &PathBuf::from("built-in model"), threads)
            .context("cannot load the built-in model"),
    }
}
