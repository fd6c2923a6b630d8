//! `fashion train`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use fashion::data::Layout;
use fashion::train::{DataSource, TrainConfig, TrainJob};

/// Train the category, view, article-type and colour heads on labelled photos. Each dataset
/// labels the heads it can: In-shop gives category and view, Fashion Product Images gives article
/// type and colour family, a CSV gives the label columns it has, a folder per class gives
/// category. Backbone features are cached in --cache, so an interrupted run resumes.
#[derive(Args)]
pub struct TrainArgs {
    /// DeepFashion In-shop folder in its own layout (img/ and Anno/list_eval_partition.txt).
    #[arg(long, value_name = "DIR")]
    inshop: Vec<PathBuf>,
    /// Fashion Product Images folder in its own layout (images/ and styles.csv).
    #[arg(long, value_name = "DIR")]
    fpi: Vec<PathBuf>,
    /// CSV manifest: a `path` column plus any of category, view, article_type, colour_family, split, group.
    #[arg(long, value_name = "FILE")]
    csv: Vec<PathBuf>,
    /// Folder with one sub-folder per category (optionally under train/ and val/).
    #[arg(long, value_name = "DIR")]
    folders: Vec<PathBuf>,
    /// ONNX backbone with `pooled` and `feat_s32` outputs (EfficientNet-Lite0), or a model
    /// trained earlier.
    #[arg(long, value_name = "FILE")]
    backbone: PathBuf,
    /// TOML file with the hyper-parameters (defaults are used for anything it leaves out).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where cached features and finished heads are kept.
    #[arg(long, value_name = "DIR", default_value = ".cache/fashion")]
    cache: PathBuf,
    /// Keep everything of the model given as --backbone and train only its pixel colour head
    /// (`[pixel_colour]` in the config) on the colour-labelled photos, with the looks the config
    /// gives the model (`test_time_flip`, `second_look`): minutes instead of a whole run.
    #[arg(long, conflicts_with = "only_heads")]
    only_pixel_colour: bool,
    /// Keep everything of the model given as --backbone but these heads on frozen features
    /// (`article_type`, `colour_family`), and train them and then its pixel colour head again,
    /// with the looks the config gives the model.
    #[arg(long, value_name = "HEAD,...", value_delimiter = ',')]
    only_heads: Vec<String>,
    /// Where to write the model.
    #[arg(long, short, value_name = "FILE")]
    output: PathBuf,
}

pub fn run(args: TrainArgs) -> Result<ExitCode> {
    let mut data = Vec::new();
    for (paths, layout) in [
        (&args.inshop, Layout::Inshop),
        (&args.fpi, Layout::Fpi),
        (&args.csv, Layout::Csv),
        (&args.folders, Layout::Folders),
    ] {
        data.extend(paths.iter().map(|p| DataSource {
            path: p.clone(),
            layout,
        }));
    }
    if data.is_empty() {
        bail!("no training data: give at least one of --inshop, --fpi, --csv, --folders");
    }
    let config = match &args.config {
        Some(p) => TrainConfig::from_file(p)?,
        None => TrainConfig::default(),
    };
    let job = TrainJob {
        backbone: &args.backbone,
        data: &data,
        cache_dir: &args.cache,
        output: &args.output,
        config: &config,
    };
    let summary = if args.only_pixel_colour {
        fashion::train::retrain_pixel_colour(&job)
    } else if !args.only_heads.is_empty() {
        fashion::train::retrain_heads(&job, &args.only_heads)
    } else {
        fashion::train::train(&job)
    }
    .context("training failed")?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(ExitCode::SUCCESS)
}
