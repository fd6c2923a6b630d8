//! `fashion export`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Args;

/// Write the model for other serving engines: the ONNX file itself, or a Triton Inference Server
/// model repository. Clients must preprocess photos as the model expects: RGB, brought to a
/// 256x256 square as the metadata's `fit` says (bilinear, antialiased; see `fit_square` in
/// `bench/reference.py`), `(value - 127) / 128`, float32 `[N, 3, 256, 256]` for the built-in
/// model, which cuts its own crop; with --fast, the centre 224x224 crop, `[N, 3, 224, 224]`
/// (the exact constants are in the model's `fashion` metadata, the size in `config.pbtxt`).
#[derive(Args)]
pub struct ExportArgs {
    /// Write the ONNX model to this file.
    #[arg(long, value_name = "FILE", required_unless_present = "triton")]
    onnx: Option<PathBuf>,
    /// Write a Triton model repository into this folder.
    #[arg(long, value_name = "DIR")]
    triton: Option<PathBuf>,
    /// Model name in the Triton repository.
    #[arg(long, default_value = "fashion")]
    name: String,
    /// Largest batch Triton may form.
    #[arg(long, default_value_t = 64)]
    max_batch: u32,
    #[command(flatten)]
    model: crate::model::ModelArgs,
}

pub fn run(args: ExportArgs) -> Result<ExitCode> {
    let bytes = args.model.bytes()?;
    let model = args.model.model_from(&bytes, fashion::Threads::single(1))?;
    if let Some(out) = &args.onnx {
        if out.exists() {
            bail!("{} already exists", out.display());
        }
        fashion::train::write_atomically(out, &bytes)?;
        eprintln!("wrote {}", out.display());
    }
    if let Some(dir) = &args.triton {
        let opts = fashion::export::TritonOptions {
            name: args.name.clone(),
            max_batch_size: args.max_batch,
            ..Default::default()
        };
        fashion::export::triton(&bytes, &model.info, dir, &opts)?;
        eprintln!("wrote Triton model {}", dir.join(&args.name).display());
    }
    Ok(ExitCode::SUCCESS)
}
