//! Choosing the model: `--model FILE`, or the built-in one compiled into the binary.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use fashion::colour::Vocabulary;
use fashion::{Classifier, ClassifyOptions, Fit, Model, Threads};

/// The flags that choose the model and how it runs, shared by the commands that classify.
#[derive(Args)]
pub struct ModelArgs {
    /// Model file (default: the built-in model).
    #[arg(long, value_name = "FILE")]
    model: Option<PathBuf>,
    /// The built-in model's int8 variant (models/default-int8.onnx, compiled in as well): about
    /// twice the photos per second and half the memory, within one point of the built-in model
    /// on every head (see the model card).
    #[arg(long, conflicts_with = "model")]
    int8: bool,
    /// Colour vocabulary CSV (`name,family,hex`) replacing the built-in colour names.
    #[arg(long, value_name = "FILE")]
    colours: Option<PathBuf>,
    /// Inference threads (0 = every core). Batches are shared out over up to four model
    /// sessions; `fashion serve` runs this many model workers of one thread each.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// How a photo that is not square becomes the model's square, instead of the model's own
    /// setting: `pad` (whole photo, proportions kept, padded with its edge colour), `squash`
    /// (whole photo, stretched to square) or `crop` (the centre square, ends cut off).
    #[arg(long, value_name = "HOW", value_parser = parse_fit)]
    fit: Option<Fit>,
    /// One look per photo: skip the model's second, mirrored look (its test-time flip). About
    /// 1.8x the photos per second, slightly less accurate (see the model card). A model without
    /// a test-time flip runs as it is.
    #[arg(long)]
    fast: bool,
}

fn parse_fit(s: &str) -> std::result::Result<Fit, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|_| format!("{s:?} is not one of pad, squash, crop"))
}

impl ModelArgs {
    /// Loads the vocabulary and the model, set up for batches of photos: the `--threads` are
    /// shared out over several sessions ([`Threads::throughput`]).
    pub fn classifier(&self, options: ClassifyOptions) -> Result<Classifier> {
        self.classifier_with(options, Threads::throughput(self.threads), false)
    }

    /// Like [`ModelArgs::classifier`], with these inference threads, and with the weights
    /// that heat maps need when `explain` is set.
    pub fn classifier_with(
        &self,
        options: ClassifyOptions,
        threads: Threads,
        explain: bool,
    ) -> Result<Classifier> {
        self.classifier_from(&self.bytes()?, options, threads, explain)
    }

    /// [`ModelArgs::classifier_with`] for the model in `bytes` (from [`ModelArgs::bytes`]).
    fn classifier_from(
        &self,
        bytes: &[u8],
        options: ClassifyOptions,
        threads: Threads,
        explain: bool,
    ) -> Result<Classifier> {
        let vocabulary = match &self.colours {
            Some(p) => Vocabulary::from_file(p)?,
            None => Vocabulary::default(),
        };
        let mut model = self.model_from(bytes, threads)?;
        if let Some(fit) = self.fit {
            model.info.preprocess.fit = fit;
        }
        if explain {
            model
                .load_explainer(bytes)
                .context("cannot read the category head for heat maps")?;
        }
        Ok(Classifier::new(model, vocabulary, options))
    }

    /// `n` classifiers of one inference thread each (at least one), for a server's model
    /// workers: the first also draws heat maps; the others share its metadata and vocabulary
    /// ([`fashion::Model::replica`]), so that the model file is read, and its pixel colour trees
    /// decoded, once.
    pub fn workers(&self, options: ClassifyOptions, n: usize) -> Result<Vec<Classifier>> {
        let bytes = self.bytes()?;
        let mut out =
            vec![self.classifier_from(&bytes, options.clone(), Threads::single(1), true)?];
        for _ in 1..n {
            // The replica's metadata is the first's, `--fit` included.
            let model = out[0]
                .model
                .replica(&bytes, Threads::single(1))
                .context("cannot load")?;
            let vocabulary = out[0].vocabulary.clone();
            out.push(Classifier::new(model, vocabulary, options.clone()));
        }
        Ok(out)
    }

    /// What these flags decide about the answers, for `fashion classify --resume` to compare
    /// with the run it continues: a hash of the model file as given (`--model`, the built-in
    /// model or its `--int8` variant), `--fast`, `--fit`, and a hash of the `--colours` file.
    pub fn identity(&self) -> Result<serde_json::Value> {
        let model = match &self.model {
            Some(p) => file_hash(p, "model")?,
            None if self.int8 => hex_hash(INT8_MODEL),
            None => hex_hash(DEFAULT_MODEL),
        };
        let colours = self
            .colours
            .as_deref()
            .map(|p| file_hash(p, "colours"))
            .transpose()?;
        Ok(serde_json::json!({
            "model": model,
            "fast": self.fast,
            "fit": self.fit,
            "colours": colours,
        }))
    }

    /// The built-in model and vocabulary, one inference thread.
    #[cfg(test)]
    pub fn default_for_tests() -> ModelArgs {
        ModelArgs {
            model: None,
            int8: false,
            colours: None,
            threads: 1,
            fit: None,
            fast: false,
        }
    }

    /// The model file's bytes (a built-in model is not copied), without the test-time flip
    /// under `--fast`.
    pub fn bytes(&self) -> Result<Cow<'static, [u8]>> {
        let bytes = match &self.model {
            Some(p) => std::fs::read(p)
                .map(Cow::Owned)
                .with_context(|| format!("cannot read model {}", p.display()))?,
            None if self.int8 => Cow::Borrowed(INT8_MODEL),
            None => Cow::Borrowed(DEFAULT_MODEL),
        };
        if !self.fast {
            return Ok(bytes);
        }
        // The library's errors name the model themselves.
        let single = fashion::model::single_look(&bytes, &self.name()).context("cannot load")?;
        Ok(single.map_or(bytes, Cow::Owned))
    }

    /// The model's name in messages.
    fn name(&self) -> PathBuf {
        self.model.clone().unwrap_or_else(|| {
            PathBuf::from(if self.int8 {
                "built-in int8 model"
            } else {
                "built-in model"
            })
        })
    }

    /// The model held in `bytes` (from [`ModelArgs::bytes`]).
    pub fn model_from(&self, bytes: &[u8], threads: Threads) -> Result<Model> {
        let name = self.name();
        Model::from_bytes(bytes, &name, threads).context("cannot load")
    }

    /// The inference thread count asked for (0 = every core).
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The model as a file: --model, or the model as [`ModelArgs::bytes`] gives it (a built-in
    /// model, or one without its test-time flip) written into `dir`.
    pub fn file(&self, dir: &Path) -> Result<PathBuf> {
        match &self.model {
            Some(p) if !self.fast => Ok(p.clone()),
            _ => {
                let p = dir.join("model.onnx");
                std::fs::write(&p, self.bytes()?)
                    .with_context(|| format!("cannot write {}", p.display()))?;
                Ok(p)
            }
        }
    }
}

/// The FNV-1a hash of `bytes` as 16 hex digits.
fn hex_hash(bytes: &[u8]) -> String {
    format!("{:016x}", fashion::hash::of(bytes))
}

/// [`hex_hash`] of the file at `path`; `what` names it in the error.
pub fn file_hash(path: &Path, what: &str) -> Result<String> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read {what} {}", path.display()))?;
    Ok(hex_hash(&bytes))
}

/// The built-in model, trained on DeepFashion In-shop and Fashion Product Images (see
/// models/MODEL_CARD.md).
static DEFAULT_MODEL: &[u8] = include_bytes!("../../../models/default.onnx");

/// The built-in model's int8 variant, written by scripts/quantize.py (see models/MODEL_CARD.md).
static INT8_MODEL: &[u8] = include_bytes!("../../../models/default-int8.onnx");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_workers_share_one_load_and_answer_alike() {
        let args = ModelArgs {
            fit: Some(Fit::Crop),
            ..ModelArgs::default_for_tests()
        };
        let workers = args.workers(ClassifyOptions::default(), 3).unwrap();
        assert_eq!(workers.len(), 3);
        // Heat maps are drawn by the first worker only.
        assert!(workers[0].model.explainer.is_some());
        assert!(workers[1..].iter().all(|w| w.model.explainer.is_none()));
        // `--fit` holds for every worker, not only the one loaded from the file.
        assert!(workers
            .iter()
            .all(|w| w.model.info.preprocess.fit == Fit::Crop));
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let photos = [
            root.join("samples/tee-navy.jpg"),
            root.join("samples/dress-red.jpg"),
        ];
        let answers: Vec<String> = workers
            .iter()
            .map(|w| {
                let got: Vec<_> = w
                    .classify_paths(&photos)
                    .into_iter()
                    .map(|p| p.unwrap())
                    .collect();
                serde_json::to_string(&got).unwrap()
            })
            .collect();
        assert!(answers.iter().all(|a| *a == answers[0]));
        // No worker asked for still gives one.
        assert_eq!(
            args.workers(ClassifyOptions::default(), 0).unwrap().len(),
            1
        );
    }
}
