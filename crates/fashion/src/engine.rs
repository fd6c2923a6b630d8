//! The inference engine: ONNX Runtime, loaded at run time from `libonnxruntime.so`. This is the
//! only module that knows the `ort` crate; the rest of the library sees [`Engine`] and plain
//! `ndarray` arrays.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ndarray::{ArrayD, ArrayView4};
use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{OutputSelector, RunOptions, Session};
use ort::value::TensorRef;

use crate::error::{Error, Result};

/// The command that installs the ONNX Runtime library where `fashion` finds it.
pub const INSTALL_HINT: &str = "run `make onnxruntime` in the fashion source folder (it fetches the pinned library from the `onnxruntime` wheel on PyPI), or set ORT_DYLIB_PATH to an existing libonnxruntime.so 1.32";

const LIB_NAME: &str = "libonnxruntime.so";

/// Where the ONNX Runtime library is looked for, in order: `ORT_DYLIB_PATH`; next to the
/// executable; `vendor/onnxruntime/` in the executable's folder or any folder above it (a source
/// checkout, where `target/` sits beside `vendor/`).
pub fn library_candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        out.push(PathBuf::from(p));
        return out;
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            out.push(dir.join(LIB_NAME));
            for anc in dir.ancestors() {
                out.push(anc.join("vendor/onnxruntime").join(LIB_NAME));
            }
        }
    }
    out
}

fn environment() -> Result<&'static Environment> {
    static ENV: OnceLock<std::result::Result<Environment, String>> = OnceLock::new();
    ENV.get_or_init(|| {
        let candidates = library_candidates();
        let lib = candidates.iter().find(|p| p.is_file()).ok_or_else(|| {
            format!(
                "ONNX Runtime library not found (looked for {}); {INSTALL_HINT}",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        ort::init_from(lib)
            .map_err(|e| format!("cannot load {}: {e}; {INSTALL_HINT}", lib.display()))?
            .with_name("fashion")
            .build()
            .map_err(|e| format!("cannot start ONNX Runtime: {e}"))
    })
    .as_ref()
    .map_err(|e| Error::Engine(e.clone()))
}

fn engine_err(e: impl std::fmt::Display) -> Error {
    Error::Engine(e.to_string())
}

/// One loaded ONNX model, ready to run batches. Safe to share between threads; runs are
/// serialised, and each run uses the configured number of threads.
pub struct Engine {
    session: Mutex<Session>,
    input: String,
    outputs: Vec<String>,
    metadata: HashMap<String, String>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("input", &self.input)
            .field("outputs", &self.outputs)
            .finish()
    }
}

impl Engine {
    /// Loads an ONNX model from a file. `threads` = 0 lets ONNX Runtime use every core.
    pub fn load(path: &Path, threads: usize) -> Result<Engine> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(&bytes, path, threads)
    }

    /// Loads an ONNX model held in memory; `name` only names it in errors.
    pub fn from_bytes(bytes: &[u8], name: &Path, threads: usize) -> Result<Engine> {
        let env = environment()?;
        let bad = |e: ort::Error| Error::bad_model(name, e.to_string());
        let mut builder = Session::builder(env)
            .map_err(engine_err)?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| engine_err(e.to_string()))?
            // Decoding threads share the cores with the model: idle model threads must sleep,
            // not spin.
            .with_intra_op_spinning(false)
            .map_err(|e| engine_err(e.to_string()))?
            // The planned-memory pattern keeps one block per batch shape alive: 456 MB instead of
            // 514 MB peak at batch 32, at no measured cost in speed.
            .with_memory_pattern(false)
            .map_err(|e| engine_err(e.to_string()))?;
        if threads > 0 {
            builder = builder
                .with_intra_threads(threads)
                .map_err(|e| engine_err(e.to_string()))?;
        }
        let session = builder.commit_from_memory(bytes).map_err(bad)?;
        let input = match session.inputs() {
            [one] => one.name().to_string(),
            other => {
                return Err(Error::bad_model(
                    name,
                    format!("expected one input, found {}", other.len()),
                ))
            }
        };
        let outputs = session
            .outputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        let mut metadata = HashMap::new();
        {
            let meta = session.metadata().map_err(bad)?;
            for key in meta.custom_keys().map_err(bad)? {
                if let Some(v) = meta.custom(&key) {
                    metadata.insert(key, v);
                }
            }
        }
        Ok(Engine {
            session: Mutex::new(session),
            input,
            outputs,
            metadata,
        })
    }

    /// The names of the model's outputs.
    pub fn output_names(&self) -> &[String] {
        &self.outputs
    }

    /// A `metadata_props` entry of the model.
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(String::as_str)
    }

    /// Runs a batch `[N, 3, H, W]` and returns the named outputs, in the order asked for. Only
    /// the asked-for outputs are computed and copied.
    pub fn run(&self, batch: ArrayView4<'_, f32>, outputs: &[&str]) -> Result<Vec<ArrayD<f32>>> {
        for o in outputs {
            if !self.outputs.iter().any(|n| n == o) {
                return Err(Error::Engine(format!(
                    "the model has no output named {o:?}"
                )));
            }
        }
        let batch = batch.as_standard_layout();
        let input = TensorRef::from_array_view(batch.view()).map_err(engine_err)?;
        let selector = outputs
            .iter()
            .fold(OutputSelector::no_default(), |s, o| s.with(*o));
        let options = RunOptions::new()
            .map_err(engine_err)?
            .with_outputs(selector);
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let result = session
            .run_with_options(ort::inputs![self.input.as_str() => input], &options)
            .map_err(engine_err)?;
        outputs
            .iter()
            .map(|o| {
                let v = result
                    .get(*o)
                    .ok_or_else(|| Error::Engine(format!("output {o:?} missing")))?;
                Ok(v.try_extract_array::<f32>().map_err(engine_err)?.to_owned())
            })
            .collect()
    }
}
