//! `fashion classify`.

use std::collections::HashSet;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use fashion::{ClassifyOptions, Prediction};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Jsonl,
    Csv,
}

/// Tell the category, view and colours of photos. Prints every photo that could be read, even
/// when others fail; the exit code is 1 when any photo failed, 2 on a fatal error.
#[derive(Args)]
pub struct ClassifyArgs {
    /// Photos: files, folders (searched recursively), glob patterns, CSV files listing photos in
    /// a `path` column (relative to the CSV's folder), or `-` to read paths from standard input,
    /// one per line.
    #[arg(required = true, value_name = "PHOTOS")]
    inputs: Vec<String>,
    /// Output format [default: table; with --out, csv for a .csv file and jsonl otherwise].
    #[arg(long, short, value_enum)]
    format: Option<Format>,
    /// Write results to this file (jsonl or csv) as they come, instead of standard output.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Continue an interrupted run: photos already in --out are skipped and new results are
    /// appended. A line cut short by the interruption is removed first. Refused when the run
    /// was begun with another model or settings (recorded beside it in OUT.settings.json).
    #[arg(long, requires = "out")]
    resume: bool,
    /// Classify only shard I of N (1-based), a fixed share of the photos chosen by a hash of
    /// their paths: N processes with --shard 1/N ... N/N together classify every photo once.
    #[arg(long, value_name = "I/N", value_parser = parse_shard)]
    shard: Option<(u64, u64)>,
    /// Candidates listed per answer.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..))]
    top: u16,
    /// Answers less confident than this say `unsure` (their candidates stay listed). 0..1.
    #[arg(long, default_value_t = 0.0)]
    min_confidence: f32,
    #[command(flatten)]
    model: crate::model::ModelArgs,
    /// Photos per model batch (16 is as fast as 32 here and needs half the memory).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1024))]
    batch: u16,
    /// Combine the photos of each product into one answer: a column of the CSV inputs (e.g.
    /// `item_id`) or a regular expression on the path whose first group is the product id (e.g.
    /// `'/(id_[0-9]+)/'`). Products are written to --products.
    #[arg(long, value_name = "COLUMN|REGEX")]
    group_by: Option<String>,
    /// Where --group-by writes one JSON line per product [default: next to --out:
    /// `tags.jsonl` gives `tags.products.jsonl`, `tags.csv` gives `tags.csv.products.jsonl`].
    #[arg(long, value_name = "FILE", requires = "group_by")]
    products: Option<PathBuf>,
    /// Catalogue labels to check: a CSV with a `path` column and columns named after the model's
    /// heads (category, view, article_type, colour_family). Rows the model confidently
    /// contradicts get `flags`.
    #[arg(long, value_name = "FILE")]
    labels: Option<PathBuf>,
    /// Confidence at which the model's answer overrules a catalogue label (--labels).
    #[arg(long, default_value_t = 0.9, value_name = "P")]
    contradict_confidence: f32,
    /// Write, per photo, a PNG into this folder: the model's square of the photo, the garment
    /// mask the colours come from (the rest faded), and the palette as a column of swatches,
    /// each as tall as its share. Files are named `NNNNNN-<photo name>.png`, in input order.
    #[arg(long, value_name = "DIR")]
    explain: Option<PathBuf>,
    /// Threads decoding photos while the model runs (0 = one per core).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// Photos with more pixels than this are refused.
    #[arg(long, default_value_t = fashion::image::DEFAULT_MAX_PIXELS)]
    max_pixels: u64,
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read folder {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out)?;
        } else if fashion::data::is_photo(&p) {
            out.push(p);
        }
    }
    Ok(())
}

/// Expands the command line's inputs into photo paths, in the order given.
pub fn expand_inputs(
    inputs: &[String],
    columns: &mut crate::catalogue::CsvColumns,
) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for input in inputs {
        if input == "-" {
            for line in std::io::stdin().lock().lines() {
                let line = line.context("cannot read paths from standard input")?;
                let line = line.trim();
                if !line.is_empty() {
                    out.push(PathBuf::from(line));
                }
            }
            continue;
        }
        let p = Path::new(input);
        if p.is_file() && p.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv")) {
            out.extend(crate::catalogue::read_csv_list(p, columns)?);
        } else if p.is_dir() && !fashion::data::is_photo(p) {
            walk(p, &mut out)?;
        } else if p.exists() || !input.contains(['*', '?', '[']) {
            // A file (or a missing path, which gets its own error when read).
            out.push(p.to_path_buf());
        } else {
            let matches: Vec<PathBuf> = glob::glob(input)
                .with_context(|| format!("bad glob pattern {input:?}"))?
                .filter_map(|m| m.ok())
                .collect();
            if matches.is_empty() {
                bail!("no file matches {input:?}");
            }
            out.extend(matches);
        }
    }
    Ok(out)
}

fn parse_shard(s: &str) -> Result<(u64, u64), String> {
    let (i, n) = s.split_once('/').ok_or("expected I/N, e.g. 2/8")?;
    let (i, n): (u64, u64) = (
        i.parse().map_err(|_| "I must be a number")?,
        n.parse().map_err(|_| "N must be a number")?,
    );
    if n == 0 || i == 0 || i > n {
        return Err("expected 1 <= I <= N".into());
    }
    Ok((i, n))
}

/// The shard (1..=n) of a photo, by a stable hash of its path: the same on every machine and run.
fn shard_of(path: &Path, n: u64) -> u64 {
    fashion::hash::of(path.to_string_lossy().as_bytes()) % n + 1
}

/// Opens --out: a new file, or with `resume` the old one cut back to its last complete line;
/// returns it with the paths it already holds and whether it is empty.
fn open_output(
    path: &Path,
    format: Format,
    resume: bool,
) -> Result<(std::fs::File, HashSet<String>, bool)> {
    use std::fs::OpenOptions;
    if !resume {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .with_context(|| {
                format!(
                    "cannot create {} (to continue a run into it, add --resume)",
                    path.display()
                )
            })?;
        return Ok((file, HashSet::new(), true));
    }
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let mut text = Vec::new();
    std::io::Read::read_to_end(&mut file, &mut text)?;
    let complete = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if complete < text.len() {
        file.set_len(complete as u64)?;
    }
    let text = &text[..complete];
    let mut done = HashSet::new();
    match format {
        Format::Jsonl => {
            for (i, line) in text.split(|&b| b == b'\n').enumerate() {
                if line.is_empty() {
                    continue;
                }
                let v: serde_json::Value = serde_json::from_slice(line)
                    .with_context(|| format!("{} line {}: not JSON", path.display(), i + 1))?;
                let p = v["path"]
                    .as_str()
                    .with_context(|| format!("{} line {}: no path", path.display(), i + 1))?;
                done.insert(p.to_string());
            }
        }
        Format::Csv => {
            let mut r = csv::Reader::from_reader(text);
            for rec in r.records() {
                let rec = rec.with_context(|| format!("{}: bad CSV", path.display()))?;
                done.insert(rec.get(0).unwrap_or_default().to_string());
            }
        }
        Format::Table | Format::Json => bail!("--out writes jsonl or csv"),
    }
    Ok((file, done, complete == 0))
}

/// Where the settings of a run into `out` are kept: beside it, its name followed by
/// `.settings.json` (`tags.csv` and `tags.jsonl` keep theirs apart).
fn settings_path(out: &Path) -> PathBuf {
    crate::catalogue::with_suffix(out, ".settings.json")
}

/// Where `--group-by` writes its products by default: beside `out`, `tags.jsonl` giving
/// `tags.products.jsonl`; any other name keeps its extension (`tags.csv.products.jsonl`), so that
/// the runs into `tags.csv` and `tags.jsonl` keep theirs apart.
fn default_products_path(out: &Path) -> PathBuf {
    if out.extension().is_some_and(|e| e == "jsonl") {
        out.with_extension("products.jsonl")
    } else {
        crate::catalogue::with_suffix(out, ".products.jsonl")
    }
}

/// Refuses a run that would write over one of its own files: `--out` naming an input list or
/// `--labels`, or `--products` naming any of those, `--out` or its settings record. The folder
/// of `--products` must exist, as the products are written only once every photo is answered.
fn check_written_files(args: &ClassifyArgs, products: Option<&Path>) -> Result<()> {
    // Each named once, in its comparable form (a shell glob may give thousands of inputs).
    let mut read: Vec<(PathBuf, &str)> = args
        .inputs
        .iter()
        .filter(|i| Path::new(i).is_file())
        .map(|i| (comparable(Path::new(i)), "an input"))
        .collect();
    if let Some(labels) = &args.labels {
        read.push((comparable(labels), "--labels"));
    }
    let same = |written: &Path, others: &[(PathBuf, &str)]| {
        let target = comparable(written);
        others
            .iter()
            .find(|(p, _)| *p == target)
            .map(|(_, what)| what.to_string())
    };
    if let Some(out) = &args.out {
        if let Some(what) = same(out, &read) {
            bail!(
                "--out {} is {what}: name another file for the answers",
                out.display()
            );
        }
        read.push((comparable(out), "--out"));
        read.push((
            comparable(&settings_path(out)),
            "the settings record of --out",
        ));
    }
    if let Some(products) = products {
        let folder = folder_of(products);
        if !folder.is_dir() {
            bail!(
                "cannot write --products {}: folder {} does not exist",
                products.display(),
                folder.display()
            );
        }
        if let Some(what) = same(products, &read) {
            bail!(
                "--products {} is {what}: writing the products there would replace it; name another file",
                products.display()
            );
        }
    }
    Ok(())
}

/// The folder a file is in (`.` for a bare file name).
fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(f) if !f.as_os_str().is_empty() => f,
        _ => Path::new("."),
    }
}

/// A path in a form two names of one file share, whether or not the file exists yet: the
/// canonical folder joined with the file name.
fn comparable(path: &Path) -> PathBuf {
    if let Ok(p) = path.canonicalize() {
        return p;
    }
    match (folder_of(path).canonicalize(), path.file_name()) {
        (Ok(f), Some(name)) => f.join(name),
        _ => path.to_path_buf(),
    }
}

/// What decides the lines a run writes: the model and how it runs
/// ([`crate::model::ModelArgs::identity`]), `--top`, `--min-confidence`, and the labels checked
/// (a hash of the `--labels` file) with `--contradict-confidence`.
fn run_settings(args: &ClassifyArgs) -> Result<serde_json::Value> {
    let mut s = args.model.identity()?;
    let labels = args
        .labels
        .as_deref()
        .map(|p| crate::model::file_hash(p, "labels"))
        .transpose()?;
    // Confidences as typed (0.9, not 0.899999976 as a float32 widened).
    let typed = |x: f32| x.to_string().parse::<f64>().unwrap_or_default();
    s["top"] = args.top.into();
    s["min_confidence"] = typed(args.min_confidence).into();
    s["labels"] = labels.into();
    s["contradict_confidence"] = typed(args.contradict_confidence).into();
    Ok(s)
}

/// Refuses to continue a run into `out` that was begun with other settings (see
/// [`run_settings`]), so that one file never holds the answers of two models. A file begun
/// without a settings record (by an earlier version) is continued with a warning.
fn check_resume(out: &Path, settings: &serde_json::Value) -> Result<()> {
    let begun = std::fs::metadata(out).is_ok_and(|m| m.len() > 0);
    if !begun {
        return Ok(());
    }
    let side = settings_path(out);
    let text = match std::fs::read_to_string(&side) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!(
                "warning: {} has no record of the settings it was begun with ({}): cannot check \
                 that it was begun with this model",
                out.display(),
                side.display()
            );
            return Ok(());
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", side.display())),
    };
    let before: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a settings record", side.display()))?;
    let differ: Vec<String> = settings
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, v)| before.get(k.as_str()) != Some(v))
        .map(|(k, _)| match k.as_str() {
            "model" => "model (--model, --int8)".to_string(),
            k => format!("--{}", k.replace('_', "-")),
        })
        .collect();
    if !differ.is_empty() {
        bail!(
            "{} was begun with another {}: resume it with the settings it was begun with (see \
             {}), or write to a new --out",
            out.display(),
            differ.join(", "),
            side.display()
        );
    }
    Ok(())
}

pub fn run(args: ClassifyArgs) -> Result<ExitCode> {
    if !(0.0..=1.0).contains(&args.min_confidence) {
        bail!("--min-confidence must be between 0 and 1");
    }
    let format = match (args.format, &args.out) {
        (Some(Format::Table | Format::Json), Some(_)) => {
            bail!("--out writes jsonl or csv, one result per line as it goes")
        }
        (Some(f), _) => f,
        (None, Some(out)) if out.extension().is_some_and(|e| e == "csv") => Format::Csv,
        (None, Some(_)) => Format::Jsonl,
        (None, None) => Format::Table,
    };
    if !(0.0..=1.0).contains(&args.contradict_confidence) {
        bail!("--contradict-confidence must be between 0 and 1");
    }
    let mut columns = crate::catalogue::CsvColumns::default();
    let mut paths = expand_inputs(&args.inputs, &mut columns)?;
    let group_by = args
        .group_by
        .as_deref()
        .map(|g| crate::catalogue::GroupBy::parse(g, &columns))
        .transpose()?;
    let products_path = match (&group_by, &args.products, &args.out) {
        (None, _, _) => None,
        (Some(_), Some(p), _) => Some(p.clone()),
        (Some(_), None, Some(out)) => Some(default_products_path(out)),
        (Some(_), None, None) => bail!("--group-by needs --products FILE (or --out)"),
    };
    check_written_files(&args, products_path.as_deref())?;
    if group_by.is_some() && args.resume && matches!(format, Format::Csv) {
        bail!("--group-by with --resume reads the earlier answers back: use a .jsonl --out");
    }
    if let Some((i, n)) = args.shard {
        paths.retain(|p| shard_of(p, n) == i);
    }
    let (sink, done, header): (Box<dyn Write>, HashSet<String>, bool) = match &args.out {
        Some(out) => {
            let settings = run_settings(&args)?;
            if args.resume {
                check_resume(out, &settings)?;
            }
            let (file, done, empty) = open_output(out, format, args.resume)?;
            // Written once the output is ours: a run refused for an existing --out leaves the
            // record of the run that wrote it.
            let side = settings_path(out);
            std::fs::write(&side, serde_json::to_string_pretty(&settings)? + "\n")
                .with_context(|| format!("cannot write {}", side.display()))?;
            (Box::new(file), done, empty)
        }
        None => (Box::new(std::io::stdout().lock()), HashSet::new(), true),
    };
    let skipped = paths.len();
    paths.retain(|p| !done.contains(&p.display().to_string()));
    let skipped = skipped - paths.len();
    if skipped > 0 {
        eprintln!("{skipped} photos already classified in the output; skipping them");
    }
    if paths.is_empty() && skipped == 0 {
        bail!("no photos found in the inputs");
    }
    let classifier = args.model.classifier(ClassifyOptions {
        top_k: args.top.into(),
        min_confidence: args.min_confidence,
        max_pixels: args.max_pixels,
        ..Default::default()
    })?;
    let labels = args
        .labels
        .as_deref()
        .map(|l| crate::catalogue::Labels::read(l, &classifier.model, args.contradict_confidence))
        .transpose()?;
    let mut products = crate::catalogue::Products::default();
    if let (Some(g), Some(out), true) = (&group_by, &args.out, args.resume) {
        // Photos answered by the earlier run vote with the candidates it wrote.
        let text = std::fs::read_to_string(out).unwrap_or_default();
        for line in text.lines().filter(|l| !l.is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line)?;
            if let Some(vote) = crate::catalogue::Vote::from_json(&v, &classifier.model) {
                if let Some(key) = g.key(Path::new(&vote.path), &columns) {
                    products.add(key, vote);
                }
            }
        }
    }
    let mut flagged = 0usize;
    if let Some(dir) = &args.explain {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut index = 0usize;

    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::new(paths.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} photos {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut out = std::io::BufWriter::new(sink);
    let mut writer = Writer::new(format, &mut out, header)?;
    let mut failures = Vec::new();
    let start = std::time::Instant::now();
    let total = paths.len();
    let stream = fashion::StreamOptions {
        batch: usize::from(args.batch),
        workers: args.workers,
        ..Default::default()
    };
    classifier.classify_stream(paths, &stream, |path, result| -> Result<()> {
        match result {
            Ok(p) => {
                let flags = labels
                    .as_ref()
                    .map(|l| l.check(path, &p, &classifier.model))
                    .unwrap_or_default();
                flagged += usize::from(!flags.is_empty());
                writer.prediction(&p, &flags)?;
                if let Some(dir) = &args.explain {
                    explain(&classifier, path, &p, dir, index)?;
                }
                if let Some(key) = group_by.as_ref().and_then(|g| g.key(path, &columns)) {
                    products.add(key, crate::catalogue::Vote::of(&p, &classifier.model));
                }
            }
            Err(e) => {
                writer.error(path, &e)?;
                failures.push(e);
            }
        }
        index += 1;
        // One whole record per write: a killed run leaves only complete lines behind.
        writer.flush()?;
        bar.inc(1);
        Ok(())
    })?;
    writer.finish()?;
    drop(writer);
    out.flush()?;
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "{} photos, {} classified, {} failed, {:.1} photos/s",
        total,
        total - failures.len(),
        failures.len(),
        total as f64 / secs.max(1e-9)
    );
    for e in &failures {
        eprintln!("  failed: {e}");
    }
    if labels.is_some() {
        eprintln!(
            "{flagged} photos have a catalogue label the model contradicts with confidence >= {}",
            args.contradict_confidence
        );
    }
    if let Some(out) = &products_path {
        let (n, disagree) = products.write(out)?;
        if n == 0 {
            eprintln!(
                "warning: no photo has a product id: --group-by {:?} matched no path (and is not a column of a CSV input)",
                args.group_by.as_deref().unwrap_or_default()
            );
        }
        eprintln!(
            "{n} products written to {}; {disagree} photo answers disagree with their product's",
            out.display()
        );
    }
    Ok(if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Writes the colour sheet of one classified photo (see `--explain`). The photo is read again:
/// explaining is for looking at a few photos, not for whole catalogues.
fn explain(
    classifier: &fashion::Classifier,
    path: &Path,
    p: &Prediction,
    dir: &Path,
    index: usize,
) -> Result<()> {
    let prepared = classifier.prepare_path(path)?;
    let (mw, mh, mask) = &p.colour_mask;
    let sheet = fashion::explain::colour_sheet(&prepared.crop, (*mw, *mh, mask), &p.colour.palette);
    let stem = path
        .file_stem()
        .map(|s| {
            s.to_string_lossy().replace(
                |c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '_',
                "_",
            )
        })
        .unwrap_or_default();
    let out = dir.join(format!("{index:06}-{stem}.png"));
    sheet
        .save(&out)
        .with_context(|| format!("cannot write {}", out.display()))
}

/// An error as the table's row for its photo shows it: the kind and the reason, without the path
/// that starts the row (most errors name their file themselves).
fn table_error(path: &Path, e: &fashion::Error) -> String {
    let text = e.to_string();
    let text = text
        .strip_prefix(&format!("{}: ", path.display()))
        .unwrap_or(&text);
    if text.starts_with(e.kind()) {
        text.to_string()
    } else {
        format!("{}: {text}", e.kind())
    }
}

fn error_json(path: &Path, e: &fashion::Error) -> serde_json::Value {
    serde_json::json!({
        "path": path.display().to_string(),
        "error": { "kind": e.kind(), "message": e.to_string() },
    })
}

const CSV_HEADER: [&str; 15] = [
    "path",
    "category",
    "category_confidence",
    "view",
    "view_confidence",
    "article_type",
    "article_type_confidence",
    "colour",
    "colour_family",
    "colour_hex",
    "colour_confidence",
    "palette",
    "error_kind",
    "error_message",
    "flags",
];

enum Sink<'a, W: Write> {
    Table(&'a mut W),
    Json { out: &'a mut W, first: bool },
    Jsonl(&'a mut W),
    Csv(Box<csv::Writer<&'a mut W>>),
}

struct Writer<'a, W: Write> {
    sink: Sink<'a, W>,
}

impl<'a, W: Write> Writer<'a, W> {
    /// `header`: start with the column names (table, csv); off when appending to a file.
    fn new(format: Format, out: &'a mut W, header: bool) -> Result<Self> {
        let sink = match format {
            Format::Table => {
                if header {
                    writeln!(
                        out,
                        "{:<40} {:<28} {:<14} {:<22} PALETTE",
                        "PHOTO", "CATEGORY", "VIEW", "COLOUR"
                    )?;
                }
                Sink::Table(out)
            }
            Format::Json => {
                write!(out, "[")?;
                Sink::Json { out, first: true }
            }
            Format::Jsonl => Sink::Jsonl(out),
            Format::Csv => {
                let mut w = csv::Writer::from_writer(out);
                if header {
                    w.write_record(CSV_HEADER)?;
                }
                Sink::Csv(Box::new(w))
            }
        };
        Ok(Self { sink })
    }

    fn json_line(&mut self, line: &str) -> Result<()> {
        match &mut self.sink {
            Sink::Json { out, first } => {
                write!(out, "{}\n  {line}", if *first { "" } else { "," })?;
                *first = false;
            }
            Sink::Jsonl(out) => writeln!(out, "{line}")?,
            _ => unreachable!("only JSON sinks"),
        }
        Ok(())
    }

    fn prediction(&mut self, p: &Prediction, flags: &[crate::catalogue::Flag]) -> Result<()> {
        let flag_text = flags
            .iter()
            .map(|f| {
                format!(
                    "{}: {} -> {} ({:.0}%)",
                    f.field,
                    f.given,
                    f.predicted,
                    100.0 * f.confidence
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        let head = |name: &str| p.heads.get(name).map(|h| (h.label.clone(), h.confidence));
        let palette = p
            .colour
            .palette
            .iter()
            .map(|s| format!("{} {:.0}%", s.name, 100.0 * s.share))
            .collect::<Vec<_>>()
            .join(", ");
        match &mut self.sink {
            Sink::Table(out) => {
                let cell = |h: Option<(String, f32)>| {
                    h.map_or("-".to_string(), |(l, c)| format!("{l} ({:.0}%)", 100.0 * c))
                };
                let c = &p.colour.primary;
                writeln!(
                    out,
                    "{:<40} {:<28} {:<14} {:<22} {}{}",
                    p.path,
                    cell(head("category")),
                    cell(head("view")),
                    format!("{} ({:.0}%)", c.name, 100.0 * c.confidence),
                    palette,
                    if flags.is_empty() {
                        String::new()
                    } else {
                        format!("  CHECK {flag_text}")
                    }
                )?;
            }
            Sink::Json { .. } | Sink::Jsonl(_) => {
                let line = if flags.is_empty() {
                    serde_json::to_string(p)?
                } else {
                    let mut v = serde_json::to_value(p)?;
                    v["flags"] = serde_json::to_value(flags)?;
                    v.to_string()
                };
                self.json_line(&line)?
            }
            Sink::Csv(w) => {
                let (cat, catc) = head("category").unzip();
                let (view, viewc) = head("view").unzip();
                let (art, artc) = head("article_type").unzip();
                let c = &p.colour.primary;
                let f = |x: Option<f32>| x.map_or(String::new(), |v| format!("{v:.4}"));
                w.write_record([
                    p.path.clone(),
                    cat.unwrap_or_default(),
                    f(catc),
                    view.unwrap_or_default(),
                    f(viewc),
                    art.unwrap_or_default(),
                    f(artc),
                    c.name.clone(),
                    c.family.clone(),
                    c.hex.clone(),
                    format!("{:.4}", c.confidence),
                    p.colour
                        .palette
                        .iter()
                        .map(|s| format!("{}:{}:{:.3}", s.name, s.hex, s.share))
                        .collect::<Vec<_>>()
                        .join(";"),
                    String::new(),
                    String::new(),
                    flag_text,
                ])?;
            }
        }
        Ok(())
    }

    fn error(&mut self, path: &Path, e: &fashion::Error) -> Result<()> {
        match &mut self.sink {
            Sink::Table(out) => writeln!(
                out,
                "{:<40} error: {}",
                path.display(),
                table_error(path, e)
            )?,
            Sink::Json { .. } | Sink::Jsonl(_) => {
                self.json_line(&serde_json::to_string(&error_json(path, e))?)?
            }
            Sink::Csv(w) => {
                let mut rec = vec![String::new(); CSV_HEADER.len()];
                rec[0] = path.display().to_string();
                rec[12] = e.kind().to_string();
                rec[13] = e.to_string();
                w.write_record(rec)?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        match &mut self.sink {
            Sink::Table(out) | Sink::Jsonl(out) | Sink::Json { out, .. } => out.flush()?,
            Sink::Csv(w) => w.flush()?,
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        if let Sink::Json { out, .. } = &mut self.sink {
            writeln!(out, "\n]")?;
        }
        self.flush()
    }
}
