//! The inference engine: ONNX Runtime, loaded at run time from `libonnxruntime.so`. This is the
//! only module that knows the `ort` crate; the rest of the library sees [`Engine`] and plain
//! `ndarray` arrays.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ndarray::{ArrayD, ArrayView4, Axis};
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

/// How many threads a model gets, and how they are shared out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Threads {
    /// Threads per ONNX Runtime session (0 = every core).
    pub per_session: usize,
    /// Sessions (at least 1). A batch is cut into this many parts, run side by side.
    pub sessions: usize,
}

impl Threads {
    /// One session on `n` threads (0 = every core): the lowest latency for one photo.
    pub fn single(n: usize) -> Threads {
        Threads {
            per_session: n,
            sessions: 1,
        }
    }

    /// `n` threads in all (0 = every core) as up to [`Threads::MAX_SESSIONS`] sessions that
    /// share each batch: the most photos per second for batches of several photos. On two
    /// cores, two one-thread sessions ran the default model 4-7% faster than one two-thread
    /// session, which loses time keeping its threads in step through the many small depthwise
    /// layers. Each session holds working memory for its part of a batch and a copy of the
    /// weights, hence the cap.
    pub fn throughput(n: usize) -> Threads {
        let n = match n {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let sessions = n.clamp(1, Self::MAX_SESSIONS);
        Threads {
            per_session: (n / sessions).max(1),
            sessions,
        }
    }

    /// The most sessions [`Threads::throughput`] opens.
    pub const MAX_SESSIONS: usize = 4;
}

/// One loaded ONNX model, ready to run batches. Safe to share between threads. It holds
/// [`Threads::sessions`] sessions; a batch is cut into that many parts, one per session, run at
/// the same time.
pub struct Engine {
    sessions: Vec<Mutex<Session>>,
    input: String,
    /// The input's dimensions (`-1` where they are dynamic).
    input_dims: Vec<i64>,
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
    /// Loads an ONNX model from a file.
    pub fn load(path: &Path, threads: Threads) -> Result<Engine> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(&bytes, path, threads)
    }

    /// Loads an ONNX model held in memory; `name` only names it in errors.
    pub fn from_bytes(bytes: &[u8], name: &Path, threads: Threads) -> Result<Engine> {
        let sessions = (0..threads.sessions.max(1))
            .map(|_| Self::session(bytes, name, threads.per_session))
            .collect::<Result<Vec<_>>>()?;
        let bad = |e: ort::Error| Error::bad_model(name, e.to_string());
        let first = &sessions[0];
        let (input, input_dims) = match first.inputs() {
            [one] => (
                one.name().to_string(),
                one.dtype()
                    .tensor_shape()
                    .map(|s| s.to_vec())
                    .unwrap_or_default(),
            ),
            other => {
                return Err(Error::bad_model(
                    name,
                    format!("expected one input, found {}", other.len()),
                ))
            }
        };
        let outputs = first
            .outputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        let mut metadata = HashMap::new();
        {
            let meta = first.metadata().map_err(bad)?;
            for key in meta.custom_keys().map_err(bad)? {
                if let Some(v) = meta.custom(&key) {
                    metadata.insert(key, v);
                }
            }
        }
        Ok(Engine {
            sessions: sessions.into_iter().map(Mutex::new).collect(),
            input,
            input_dims,
            outputs,
            metadata,
        })
    }

    /// One ONNX Runtime session on `threads` threads (0 = every core).
    fn session(bytes: &[u8], name: &Path, threads: usize) -> Result<Session> {
        let env = environment()?;
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
        builder
            .commit_from_memory(bytes)
            .map_err(|e| Error::bad_model(name, e.to_string()))
    }

    /// Side of the square photos the model takes, where its input is `[N, C, side, side]` with
    /// a fixed side.
    pub fn input_side(&self) -> Option<i64> {
        match self.input_dims[..] {
            [_, _, h, w] if h == w && h > 0 => Some(h),
            _ => None,
        }
    }

    /// How many sessions share each batch ([`Threads::sessions`]).
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// The names of the model's outputs.
    pub fn output_names(&self) -> &[String] {
        &self.outputs
    }

    /// Whether the model has an output of this name.
    pub fn has_output(&self, name: &str) -> bool {
        self.outputs.iter().any(|o| o == name)
    }

    /// A `metadata_props` entry of the model.
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(String::as_str)
    }

    /// Runs a batch `[N, 3, H, W]` and returns the named outputs, in the order asked for. Only
    /// the asked-for outputs are computed and copied. With several sessions the batch is cut
    /// into as many parts (of whole photos), run side by side and put back together in order.
    pub fn run(&self, batch: ArrayView4<'_, f32>, outputs: &[&str]) -> Result<Vec<ArrayD<f32>>> {
        for o in outputs {
            if !self.outputs.iter().any(|n| n == o) {
                return Err(Error::Engine(format!(
                    "the model has no output named {o:?}"
                )));
            }
        }
        let n = batch.shape()[0];
        let parts = self.sessions.len().min(n);
        if parts <= 1 {
            return self.run_part(&self.sessions[0], batch, outputs);
        }
        let per = n.div_ceil(parts);
        let results: Vec<Result<Vec<ArrayD<f32>>>> = std::thread::scope(|s| {
            let handles: Vec<_> = self
                .sessions
                .iter()
                .zip(batch.axis_chunks_iter(Axis(0), per))
                .map(|(session, part)| s.spawn(move || self.run_part(session, part, outputs)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(Error::Engine("a model run panicked".into())))
                })
                .collect()
        });
        let results = results.into_iter().collect::<Result<Vec<_>>>()?;
        (0..outputs.len())
            .map(|k| {
                let views: Vec<_> = results.iter().map(|r| r[k].view()).collect();
                ndarray::concatenate(Axis(0), &views).map_err(engine_err)
            })
            .collect()
    }

    /// Runs one part of a batch on one session.
    fn run_part(
        &self,
        session: &Mutex<Session>,
        batch: ArrayView4<'_, f32>,
        outputs: &[&str],
    ) -> Result<Vec<ArrayD<f32>>> {
        let batch = batch.as_standard_layout();
        let input = TensorRef::from_array_view(batch.view()).map_err(engine_err)?;
        let selector = outputs
            .iter()
            .fold(OutputSelector::no_default(), |s, o| s.with(*o));
        let options = RunOptions::new()
            .map_err(engine_err)?
            .with_outputs(selector);
        let mut session = session.lock().unwrap_or_else(|p| p.into_inner());
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

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array4;

    fn default_model() -> Vec<u8> {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/default.onnx");
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    #[test]
    fn throughput_shares_out_the_threads() {
        let t = |per_session, sessions| Threads {
            per_session,
            sessions,
        };
        assert_eq!(Threads::throughput(1), t(1, 1));
        assert_eq!(Threads::throughput(2), t(1, 2));
        assert_eq!(Threads::throughput(3), t(1, 3));
        assert_eq!(Threads::throughput(8), t(2, 4));
        assert_eq!(Threads::throughput(9), t(2, 4));
        assert!(Threads::throughput(0).sessions >= 1);
    }

    #[test]
    fn a_batch_cut_over_sessions_comes_back_whole_and_in_order() {
        let bytes = default_model();
        let name = Path::new("default.onnx");
        let one = Engine::from_bytes(&bytes, name, Threads::single(1)).unwrap();
        let three = Engine::from_bytes(
            &bytes,
            name,
            Threads {
                per_session: 1,
                sessions: 3,
            },
        )
        .unwrap();
        assert_eq!(three.sessions(), 3);
        // Five different photos: parts of two, two and one.
        let side = crate::model::read_info(&bytes, name).unwrap().input_side() as usize;
        let batch = Array4::from_shape_fn((5, 3, side, side), |(n, c, y, x)| {
            ((n * 7 + c * 3 + y / 8 + x / 16) % 11) as f32 / 5.0 - 1.0
        });
        let names = ["category", "garment_mask"];
        let want = one.run(batch.view(), &names).unwrap();
        let got = three.run(batch.view(), &names).unwrap();
        for (w, g) in want.iter().zip(&got) {
            assert_eq!(w.shape(), g.shape());
            assert_eq!(w.shape()[0], 5);
            let max = w
                .iter()
                .zip(g.iter())
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(max < 1e-5, "max abs diff {max}");
        }
        // The photos differ, so a part put back in the wrong place would show.
        let row = |k: usize| want[0].index_axis(Axis(0), k).to_owned();
        assert!((row(0) - row(4)).iter().any(|d| d.abs() > 1e-4));
        // One photo uses one session; an unknown output is refused.
        assert_eq!(
            three
                .run(batch.slice(ndarray::s![..1, .., .., ..]), &names)
                .unwrap()[0]
                .shape()[0],
            1
        );
        assert!(three.run(batch.view(), &["nope"]).is_err());
    }
}
