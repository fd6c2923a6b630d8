//! `fashion eval`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use fashion::data::{Dataset, Layout, Split};
use fashion::eval::{evaluate, EvalOptions};
use fashion::ClassifyOptions;

#[derive(Clone, Copy, ValueEnum)]
pub enum SplitArg {
    Train,
    Val,
    All,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LayoutArg {
    Inshop,
    Fpi,
    Csv,
    Folders,
}

/// Measure a model on labelled photos: accuracy, top-3, macro-F1, per-class precision and
/// recall, confusion matrix and calibration for every head the dataset labels, each in the
/// dataset's own label space. Writes JSON (--json), Markdown and PNG plots beside it.
#[derive(Args)]
pub struct EvalArgs {
    /// Dataset folder (or CSV file for --layout csv).
    #[arg(long, value_name = "PATH")]
    data: PathBuf,
    /// The dataset's layout.
    #[arg(long, value_enum)]
    layout: LayoutArg,
    /// Which photos to measure on.
    #[arg(long, value_enum, default_value = "val")]
    split: SplitArg,
    /// Keep only photos with this attribute, e.g. `master_category=Apparel` (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    only: Vec<String>,
    /// Where to write the JSON report (Markdown and PNGs go beside it).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    #[command(flatten)]
    model: crate::model::ModelArgs,
}

pub fn run(args: EvalArgs) -> Result<ExitCode> {
    let layout = match args.layout {
        LayoutArg::Inshop => Layout::Inshop,
        LayoutArg::Fpi => Layout::Fpi,
        LayoutArg::Csv => Layout::Csv,
        LayoutArg::Folders => Layout::Folders,
    };
    let split = match args.split {
        SplitArg::Train => Some(Split::Train),
        SplitArg::Val => Some(Split::Val),
        SplitArg::All => None,
    };
    let mut only = Vec::new();
    for o in &args.only {
        let Some((k, v)) = o.split_once('=') else {
            bail!("--only takes KEY=VALUE, got {o:?}");
        };
        only.push((k.to_string(), v.to_string()));
    }
    let data = Dataset::load(&args.data, layout).context("cannot load the dataset")?;
    if let Some(want) = split {
        let (n, total) = (data.split(Some(want)).len(), data.samples.len());
        let name = format!("{want:?}").to_lowercase();
        if n == 0 {
            bail!(
                "{} has no photos in its {name} split of {total}: --split all measures every photo",
                args.data.display()
            );
        }
        if n < total {
            eprintln!("measuring the {n} photos of the {name} split, of {total} (--split all measures every photo)");
        }
    }
    let classifier = args.model.classifier(ClassifyOptions::default())?;
    let report = evaluate(
        &classifier,
        &data,
        &EvalOptions {
            split,
            only,
            batch: 32,
        },
    )?;
    // The summary table; per-class tables go to the Markdown file.
    let markdown = report.markdown();
    println!(
        "{}",
        markdown
            .split("\n## ")
            .next()
            .unwrap_or_default()
            .trim_end()
    );
    if let Some(json) = &args.json {
        for f in report.write(json)? {
            eprintln!("wrote {}", f.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
