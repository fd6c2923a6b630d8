//! Choosing the model: `--model FILE`, or the built-in one compiled into the binary.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use fashion::colour::Vocabulary;
use fashion::{Classifier, ClassifyOptions, Model};

/// The flags that choose the model and how it runs, shared by the commands that classify.
#[derive(Args)]
pub struct ModelArgs {
    /// Model file (default: the built-in model).
    #[arg(long, value_name = "FILE")]
    model: Option<PathBuf>,
    /// Colour vocabulary CSV (`name,family,hex`) replacing the built-in colour names.
    #[arg(long, value_name = "FILE")]
    colours: Option<PathBuf>,
    /// Inference threads (0 = every core). `fashion serve` runs this many model workers of one
    /// thread each.
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

impl ModelArgs {
    /// Loads the vocabulary and the model.
    pub fn classifier(&self, options: ClassifyOptions) -> Result<Classifier> {
        self.classifier_with_threads(options, self.threads)
    }

    /// Like [`ModelArgs::classifier`], with this many inference threads.
    pub fn classifier_with_threads(
        &self,
        options: ClassifyOptions,
        threads: usize,
    ) -> Result<Classifier> {
        let vocabulary = match &self.colours {
            Some(p) => Vocabulary::from_file(p)?,
            None => Vocabulary::default(),
        };
        let model = load(self.model.as_deref(), threads)?;
        Ok(Classifier::new(model, vocabulary, options))
    }

    /// The built-in model and vocabulary, one inference thread.
    #[cfg(test)]
    pub fn default_for_tests() -> ModelArgs {
        ModelArgs {
            model: None,
            colours: None,
            threads: 1,
        }
    }

    /// The model without the vocabulary.
    pub fn load(&self) -> Result<Model> {
        load(self.model.as_deref(), self.threads)
    }

    /// The model file's bytes.
    pub fn bytes(&self) -> Result<Vec<u8>> {
        match &self.model {
            Some(p) => std::fs::read(p).with_context(|| format!("cannot read {}", p.display())),
            None => Ok(DEFAULT_MODEL.to_vec()),
        }
    }

    /// The inference thread count asked for (0 = every core).
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The model as a file: --model, or the built-in model written into `dir`.
    pub fn file(&self, dir: &Path) -> Result<PathBuf> {
        match &self.model {
            Some(p) => Ok(p.clone()),
            None => {
                let p = dir.join("default.onnx");
                std::fs::write(&p, DEFAULT_MODEL)
                    .with_context(|| format!("cannot write {}", p.display()))?;
                Ok(p)
            }
        }
    }
}

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
