//! `fashion bench`: photos per second end to end and the model's own speed, optionally side by
//! side with a reference pipeline (`bench/reference.py`) on the same photos.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use fashion::{Classifier, ClassifyOptions, StreamOptions};

/// Measure photos per second: the whole path (decode, resize, model, colours, JSON lines written to
/// a file) and the model alone on one batch. With --reference, a Python pipeline runs on the same
/// photos with the same model, threads and batch, alternating with fashion, and the ratio is
/// printed. Ratios are what count: absolute speeds depend on the machine and its load.
#[derive(Args)]
pub struct BenchArgs {
    /// Photos: folders (searched recursively), files or glob patterns.
    #[arg(required = true, value_name = "PHOTOS")]
    inputs: Vec<String>,
    /// Use at most this many photos (the first ones in path order).
    #[arg(long)]
    limit: Option<usize>,
    /// Photos per model batch (16 is as fast as 32 here and needs half the memory).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1024))]
    batch: u16,
    /// Threads decoding photos while the model runs (0 = one per core).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// Times each measurement is repeated; medians are reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=100))]
    rounds: u16,
    /// Reference pipeline to run side by side (`bench/reference.py` in the source tree).
    #[arg(long, value_name = "SCRIPT")]
    reference: Option<PathBuf>,
    /// Python interpreter for --reference (it needs onnxruntime, numpy and Pillow).
    #[arg(long, default_value = "python3", requires = "reference")]
    python: String,
    /// Also write the numbers to this JSON file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    #[command(flatten)]
    model: crate::model::ModelArgs,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One end-to-end pass: every photo classified and written as a JSON line to `out`.
fn end_to_end(
    c: &Classifier,
    paths: &[PathBuf],
    stream: &StreamOptions,
    out: &Path,
) -> Result<f64> {
    let file = std::fs::File::create(out)?;
    let mut w = std::io::BufWriter::new(file);
    let start = Instant::now();
    let mut failed = 0usize;
    c.classify_stream(paths.iter().cloned(), stream, |path, r| -> Result<()> {
        let line = match r {
            Ok(p) => serde_json::to_string(&p)?,
            Err(e) => {
                failed += 1;
                serde_json::json!({"path": path.display().to_string(), "error": {"kind": e.kind()}})
                    .to_string()
            }
        };
        writeln!(w, "{line}")?;
        w.flush()?;
        Ok(())
    })?;
    let secs = start.elapsed().as_secs_f64();
    if failed > 0 {
        eprintln!("warning: {failed} photos could not be read");
    }
    Ok(paths.len() as f64 / secs)
}

/// Runs the reference script once; returns its photos per second.
fn reference(
    python: &str,
    script: &Path,
    model: &Path,
    threads: usize,
    batch: u16,
    paths: &[PathBuf],
    out: &Path,
) -> Result<f64> {
    let mut child = Command::new(python)
        .arg(script)
        .arg(model)
        .arg(out)
        .arg(threads.to_string())
        .arg(batch.to_string())
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {python} {}", script.display()))?;
    {
        let mut stdin = child.stdin.take().context("no stdin")?;
        for p in paths {
            writeln!(stdin, "{}", p.display())?;
        }
    }
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!("{} failed ({})", script.display(), output.status);
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let v: serde_json::Value = serde_json::from_str(text.lines().last().unwrap_or_default())
        .with_context(|| format!("{} printed no result: {text}", script.display()))?;
    v["photos_per_s"]
        .as_f64()
        .with_context(|| format!("{} printed no photos_per_s", script.display()))
}

pub fn run(args: BenchArgs) -> Result<ExitCode> {
    let mut paths = crate::classify::expand_inputs(&args.inputs, &mut Default::default())?;
    paths.sort();
    if let Some(n) = args.limit {
        paths.truncate(n);
    }
    if paths.is_empty() {
        bail!("no photos found in the inputs");
    }
    let classifier = args.model.classifier(ClassifyOptions::default())?;
    let stream = StreamOptions {
        batch: usize::from(args.batch),
        workers: args.workers,
        ..Default::default()
    };
    let tmp = tempfile::tempdir()?;
    let out = tmp.path().join("out.jsonl");
    let threads = match args.model.threads() {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };

    // The model alone, on one batch of prepared photos.
    let batch: Vec<_> = paths
        .iter()
        .take(usize::from(args.batch))
        .filter_map(|p| classifier.prepare_path(p).ok())
        .collect();
    if batch.is_empty() {
        bail!("none of the first photos could be read");
    }
    let refs: Vec<_> = batch.iter().collect();
    classifier.run(&refs)?; // warm up
    let model_rates: Vec<f64> = (0..args.rounds.max(3))
        .map(|_| {
            let t = Instant::now();
            classifier.run(&refs)?;
            Ok(refs.len() as f64 / t.elapsed().as_secs_f64())
        })
        .collect::<Result<_>>()?;
    let model_rate = median(model_rates);

    let model_file = match &args.reference {
        Some(_) => Some(args.model.file(tmp.path())?),
        None => None,
    };
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        // Alternate which goes first, so that neither always meets a warmer cache.
        let reference_first = round % 2 == 1;
        let run_ref = |theirs: &mut Vec<f64>| -> Result<()> {
            if let (Some(script), Some(model)) = (&args.reference, &model_file) {
                let r = reference(
                    &args.python,
                    script,
                    model,
                    threads,
                    args.batch,
                    &paths,
                    &tmp.path().join("reference.jsonl"),
                )?;
                eprintln!("  round {}: reference {r:.1} photos/s", round + 1);
                theirs.push(r);
            }
            Ok(())
        };
        if reference_first {
            run_ref(&mut theirs)?;
        }
        let r = end_to_end(&classifier, &paths, &stream, &out)?;
        eprintln!("  round {}: fashion {r:.1} photos/s", round + 1);
        ours.push(r);
        if !reference_first {
            run_ref(&mut theirs)?;
        }
    }
    let ours = median(ours);
    println!("photos:                  {}", paths.len());
    let sessions = classifier.model.engine.sessions();
    println!(
        "threads, sessions, batch: {threads}, {sessions}, {}",
        args.batch
    );
    println!("model alone:             {model_rate:.1} photos/s");
    println!(
        "fashion end to end:      {ours:.1} photos/s (median of {})",
        args.rounds
    );
    let mut json = serde_json::json!({
        "photos": paths.len(),
        "threads": threads,
        "sessions": sessions,
        "batch": args.batch,
        "rounds": args.rounds,
        "model_photos_per_s": model_rate,
        "end_to_end_photos_per_s": ours,
    });
    if !theirs.is_empty() {
        let theirs = median(theirs);
        println!(
            "reference end to end:    {theirs:.1} photos/s (median of {})",
            args.rounds
        );
        println!("ratio fashion/reference: {:.2}", ours / theirs);
        json["reference_photos_per_s"] = theirs.into();
        json["ratio"] = (ours / theirs).into();
    }
    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_string_pretty(&json)? + "\n")
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
