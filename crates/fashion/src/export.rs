//! Model export for serving engines: a Triton Inference Server model repository.

use std::fmt::Write as _;
use std::path::Path;

use crate::error::{Error, Result};
use crate::model::ModelInfo;

/// How the Triton model is configured.
#[derive(Debug, Clone)]
pub struct TritonOptions {
    /// Model name in the repository (its folder name).
    pub name: String,
    /// Largest batch Triton may form.
    pub max_batch_size: u32,
    /// Longest a request waits for others to join its batch, in microseconds.
    pub max_queue_delay_us: u32,
}

impl Default for TritonOptions {
    fn default() -> Self {
        Self {
            name: "fashion".into(),
            max_batch_size: 64,
            max_queue_delay_us: 2000,
        }
    }
}

/// The `config.pbtxt` of a model: ONNX Runtime backend, one float input `[3, side, side]` (the
/// crop, or the whole square for a model that cuts its own crop), one
/// float output per head (its probabilities, with a label file), dynamic batching.
pub fn triton_config(info: &ModelInfo, opts: &TritonOptions) -> String {
    let side = info.input_side();
    let mut s = String::new();
    // `write!` to a String cannot fail.
    let _ = writeln!(s, "name: \"{}\"", opts.name);
    let _ = writeln!(s, "platform: \"onnxruntime_onnx\"");
    let _ = writeln!(s, "max_batch_size: {}", opts.max_batch_size);
    let _ = writeln!(s, "input [");
    let _ = writeln!(s, "  {{");
    let _ = writeln!(s, "    name: \"input\"");
    let _ = writeln!(s, "    data_type: TYPE_FP32");
    let _ = writeln!(s, "    dims: [ 3, {side}, {side} ]");
    let _ = writeln!(s, "  }}");
    let _ = writeln!(s, "]");
    let _ = writeln!(s, "output [");
    for (i, h) in info.heads.iter().enumerate() {
        let _ = writeln!(s, "  {{");
        let _ = writeln!(s, "    name: \"{}\"", h.name);
        let _ = writeln!(s, "    data_type: TYPE_FP32");
        let _ = writeln!(s, "    dims: [ {} ]", h.labels.len());
        let _ = writeln!(s, "    label_filename: \"{}\"", label_file(&h.name));
        let _ = writeln!(s, "  }}{}", if i + 1 < info.heads.len() { "," } else { "" });
    }
    let _ = writeln!(s, "]");
    let preferred: Vec<String> = [8u32, 16, 32]
        .into_iter()
        .filter(|&b| b <= opts.max_batch_size)
        .map(|b| b.to_string())
        .collect();
    let _ = writeln!(s, "dynamic_batching {{");
    if !preferred.is_empty() {
        let _ = writeln!(s, "  preferred_batch_size: [ {} ]", preferred.join(", "));
    }
    let _ = writeln!(
        s,
        "  max_queue_delay_microseconds: {}",
        opts.max_queue_delay_us
    );
    let _ = writeln!(s, "}}");
    let _ = writeln!(s, "instance_group [ {{ kind: KIND_CPU, count: 1 }} ]");
    s
}

fn label_file(head: &str) -> String {
    format!("{head}_labels.txt")
}

/// Writes a Triton model repository into `repo` (created if missing): `NAME/config.pbtxt`,
/// `NAME/1/model.onnx` and one label file per head. An existing `NAME` folder is refused, so
/// that nothing is overwritten; the model folder appears whole or not at all.
pub fn triton(model: &[u8], info: &ModelInfo, repo: &Path, opts: &TritonOptions) -> Result<()> {
    if opts.name.is_empty()
        || !opts
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        || opts.name.starts_with('.')
    {
        return Err(Error::InvalidArgument(format!(
            "bad Triton model name {:?}: use letters, digits, '-', '_' and '.'",
            opts.name
        )));
    }
    if opts.max_batch_size == 0 {
        return Err(Error::InvalidArgument(
            "max batch size must be at least 1".into(),
        ));
    }
    let dest = repo.join(&opts.name);
    if dest.exists() {
        return Err(Error::InvalidArgument(format!(
            "{} already exists; remove it or choose another name",
            dest.display()
        )));
    }
    std::fs::create_dir_all(repo).map_err(|e| Error::io(repo, e))?;
    let tmp = repo.join(format!(".{}.partial", opts.name));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    let write = |rel: &str, bytes: &[u8]| -> Result<()> {
        let p = tmp.join(rel);
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        std::fs::write(&p, bytes).map_err(|e| Error::io(&p, e))
    };
    write("1/model.onnx", model)?;
    write("config.pbtxt", triton_config(info, opts).as_bytes())?;
    for h in &info.heads {
        write(
            &label_file(&h.name),
            (h.labels.join("\n") + "\n").as_bytes(),
        )?;
    }
    std::fs::rename(&tmp, &dest).map_err(|e| Error::io(&dest, e))
}
