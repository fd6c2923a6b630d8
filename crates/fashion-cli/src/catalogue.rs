//! Catalogue-level views of a classify run: photos listed in a CSV, one answer per product
//! (`--group-by`), and catalogue labels the model confidently contradicts (`--labels`).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use fashion::Prediction;
use regex::Regex;
use serde::Serialize;

/// Rows of CSV inputs: each photo's other columns, by column name.
#[derive(Default)]
pub struct CsvColumns {
    pub names: Vec<String>,
    pub rows: HashMap<PathBuf, HashMap<String, String>>,
}

/// Reads a CSV that lists photos in its `path` column (relative paths are taken from the CSV's
/// folder); returns the photo paths in row order and keeps the other columns in `columns`.
pub fn read_csv_list(csv_path: &Path, columns: &mut CsvColumns) -> Result<Vec<PathBuf>> {
    let mut r = csv::Reader::from_path(csv_path)
        .with_context(|| format!("cannot read {}", csv_path.display()))?;
    let headers = r
        .headers()
        .with_context(|| format!("{}: bad CSV header", csv_path.display()))?
        .clone();
    let Some(col) = headers.iter().position(|h| h == "path") else {
        bail!(
            "{}: a CSV of photos needs a `path` column (found: {})",
            csv_path.display(),
            headers.iter().collect::<Vec<_>>().join(", ")
        );
    };
    for h in &headers {
        if h != "path" && !columns.names.iter().any(|n| n == h) {
            columns.names.push(h.to_string());
        }
    }
    let base = csv_path.parent().unwrap_or(Path::new(""));
    let mut out = Vec::new();
    for (i, rec) in r.records().enumerate() {
        let rec = rec.with_context(|| format!("{} row {}", csv_path.display(), i + 2))?;
        let p = rec.get(col).unwrap_or_default().trim();
        if p.is_empty() {
            bail!("{} row {}: empty path", csv_path.display(), i + 2);
        }
        let path = if Path::new(p).is_absolute() {
            PathBuf::from(p)
        } else {
            base.join(p)
        };
        let values = headers
            .iter()
            .zip(rec.iter())
            .filter(|(h, _)| *h != "path")
            .map(|(h, v)| (h.to_string(), v.to_string()))
            .collect();
        columns.rows.insert(path.clone(), values);
        out.push(path);
    }
    Ok(out)
}

/// How photos are grouped into products.
pub enum GroupBy {
    /// A column of the input CSV.
    Column(String),
    /// A regular expression on the path: its first capture group (or whole match) is the id.
    Regex(Regex),
}

impl GroupBy {
    /// A column name of the CSV inputs, or else a regular expression.
    pub fn parse(spec: &str, columns: &CsvColumns) -> Result<GroupBy> {
        if columns.names.iter().any(|n| n == spec) {
            return Ok(GroupBy::Column(spec.to_string()));
        }
        let re = Regex::new(spec).with_context(|| {
            format!("--group-by {spec:?} is neither a column of the CSV inputs nor a regular expression")
        })?;
        Ok(GroupBy::Regex(re))
    }

    /// The product of a photo, if it has one.
    pub fn key(&self, path: &Path, columns: &CsvColumns) -> Option<String> {
        match self {
            GroupBy::Column(c) => columns
                .rows
                .get(path)
                .and_then(|r| r.get(c))
                .filter(|v| !v.is_empty())
                .cloned(),
            GroupBy::Regex(re) => {
                let text = path.to_string_lossy();
                let m = re.captures(&text)?;
                m.get(1)
                    .or_else(|| m.get(0))
                    .map(|g| g.as_str().to_string())
            }
        }
    }
}

/// What one photo says, as label -> probability per field (a sparse list is fine: labels left
/// out count as 0), and its own best label per field.
pub struct Vote {
    pub path: String,
    /// What the photo votes with for its product ([`fashion::model::HeadInfo::vote`]).
    pub fields: BTreeMap<String, Vec<(String, f32)>>,
    /// The photo's own best label per field, as it was answered.
    pub own: BTreeMap<String, String>,
}

/// The label with the highest probability in a list.
fn best_of(list: &[(String, f32)]) -> Option<&str> {
    list.iter()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(l, _)| l.as_str())
}

/// The fields combined per product.
const PRODUCT_FIELDS: [&str; 3] = ["category", "article_type", "colour"];

impl Vote {
    /// From a prediction of this run: full probability vectors.
    pub fn of(p: &Prediction, model: &fashion::Model) -> Vote {
        let mut fields = BTreeMap::new();
        let mut own = BTreeMap::new();
        for field in ["category", "article_type"] {
            if let (Some(h), Some(probs)) = (model.head(field), p.probabilities.get(field)) {
                let answered: Vec<(String, f32)> = h
                    .labels
                    .iter()
                    .cloned()
                    .zip(probs.iter().copied())
                    .collect();
                if let Some(b) = best_of(&answered) {
                    own.insert(field.to_string(), b.to_string());
                }
                let list = h.labels.iter().cloned().zip(h.vote(probs)).collect();
                fields.insert(field.to_string(), list);
            }
        }
        let c = &p.colour.primary;
        fields.insert("colour".into(), vec![(c.family.clone(), c.confidence)]);
        own.insert("colour".into(), c.family.clone());
        Vote {
            path: p.path.clone(),
            fields,
            own,
        }
    }

    /// From a JSON line written by an earlier run of `model`: the `top` candidates it kept.
    pub fn from_json(v: &serde_json::Value, model: &fashion::Model) -> Option<Vote> {
        if v.get("error").is_some() {
            return None; // a photo that could not be read does not vote
        }
        let path = v["path"].as_str()?.to_string();
        let mut fields = BTreeMap::new();
        let mut own = BTreeMap::new();
        for field in ["category", "article_type"] {
            if let Some(top) = v[field]["top"].as_array() {
                let list: Vec<(String, f32)> = top
                    .iter()
                    .filter_map(|t| {
                        Some((
                            t["label"].as_str()?.to_string(),
                            t["confidence"].as_f64()? as f32,
                        ))
                    })
                    .collect();
                if let Some(b) = best_of(&list) {
                    own.insert(field.to_string(), b.to_string());
                }
                // The labels the line lists vote as in `of`; the rest count as 0.
                let list = match model.head(field) {
                    Some(h) => {
                        let index = |l: &str| h.labels.iter().position(|x| x == l);
                        let mut full = vec![0f32; h.labels.len()];
                        for (l, p) in &list {
                            if let Some(i) = index(l) {
                                full[i] = *p;
                            }
                        }
                        let voted = h.vote(&full);
                        list.into_iter()
                            .filter_map(|(l, _)| index(&l).map(|i| (l, voted[i])))
                            .collect()
                    }
                    None => list,
                };
                fields.insert(field.to_string(), list);
            }
        }
        let c = &v["colour"]["primary"];
        if let (Some(f), Some(conf)) = (c["family"].as_str(), c["confidence"].as_f64()) {
            fields.insert("colour".into(), vec![(f.to_string(), conf as f32)]);
            own.insert("colour".into(), f.to_string());
        }
        Some(Vote { path, fields, own })
    }
}

/// One product's combined answer.
#[derive(Serialize)]
pub struct ProductAnswer {
    pub product: String,
    pub photos: usize,
    /// Field -> (label, mean probability over the product's photos).
    #[serde(flatten)]
    pub answers: BTreeMap<String, LabelShare>,
    /// Photos whose own best label differs from the product's, per field.
    pub disagree: Vec<Disagreement>,
}

#[derive(Serialize)]
pub struct LabelShare {
    pub label: String,
    pub confidence: f32,
}

#[derive(Serialize)]
pub struct Disagreement {
    pub path: String,
    pub field: String,
    pub label: String,
}

/// Votes grouped by product.
#[derive(Default)]
pub struct Products {
    votes: BTreeMap<String, Vec<Vote>>,
}

impl Products {
    pub fn add(&mut self, key: String, vote: Vote) {
        self.votes.entry(key).or_default().push(vote);
    }

    /// Each product's answer: per field, the label with the highest mean probability.
    pub fn answers(&self) -> Vec<ProductAnswer> {
        self.votes
            .iter()
            .map(|(product, votes)| {
                let mut answers = BTreeMap::new();
                let mut disagree = Vec::new();
                for field in PRODUCT_FIELDS {
                    let mut sums: BTreeMap<&str, f32> = BTreeMap::new();
                    for v in votes {
                        for (l, p) in v.fields.get(field).into_iter().flatten() {
                            *sums.entry(l).or_default() += p;
                        }
                    }
                    let Some((label, sum)) = sums.into_iter().max_by(|a, b| a.1.total_cmp(&b.1))
                    else {
                        continue;
                    };
                    for v in votes {
                        if let Some(own) = v.own.get(field).filter(|own| *own != label) {
                            disagree.push(Disagreement {
                                path: v.path.clone(),
                                field: field.to_string(),
                                label: own.to_string(),
                            });
                        }
                    }
                    answers.insert(
                        field.to_string(),
                        LabelShare {
                            label: label.to_string(),
                            confidence: sum / votes.len() as f32,
                        },
                    );
                }
                ProductAnswer {
                    product: product.clone(),
                    photos: votes.len(),
                    answers,
                    disagree,
                }
            })
            .collect()
    }

    /// Writes one JSON line per product; returns (products, photos that disagree).
    pub fn write(&self, out: &Path) -> Result<(usize, usize)> {
        let answers = self.answers();
        let tmp = with_suffix(out, ".partial");
        let mut w = std::io::BufWriter::new(
            std::fs::File::create(&tmp)
                .with_context(|| format!("cannot write {}", tmp.display()))?,
        );
        let mut disagree = 0;
        for a in &answers {
            disagree += a.disagree.len();
            writeln!(w, "{}", serde_json::to_string(a)?)?;
        }
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, out).with_context(|| format!("cannot write {}", out.display()))?;
        Ok((answers.len(), disagree))
    }
}

/// `path` with `suffix` added to its whole file name (`tags.csv` + `.partial` gives
/// `tags.csv.partial`), so that files beside `tags.csv` and `tags.jsonl` keep apart.
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Catalogue labels to check: photo -> head -> given label.
pub struct Labels {
    rows: HashMap<PathBuf, Vec<(String, String)>>,
    pub min_confidence: f32,
}

/// A catalogue label the model confidently contradicts.
#[derive(Serialize)]
pub struct Flag {
    pub field: String,
    pub given: String,
    pub predicted: String,
    pub confidence: f32,
}

fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

impl Labels {
    /// Reads a CSV with a `path` column (relative to the CSV's folder) and columns named after
    /// the model's heads (`category`, `view`, `article_type`, `colour_family`).
    pub fn read(csv_path: &Path, model: &fashion::Model, min_confidence: f32) -> Result<Labels> {
        let mut cols = CsvColumns::default();
        let paths = read_csv_list(csv_path, &mut cols)?;
        let heads: Vec<&str> = cols
            .names
            .iter()
            .map(String::as_str)
            .filter(|n| model.head(n).is_some())
            .collect();
        if heads.is_empty() {
            bail!(
                "{}: no column is named after one of the model's heads ({})",
                csv_path.display(),
                model
                    .info
                    .heads
                    .iter()
                    .map(|h| h.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let mut rows = HashMap::new();
        for p in paths {
            let given: Vec<(String, String)> = heads
                .iter()
                .filter_map(|h| {
                    let v = cols.rows.get(&p)?.get(*h)?.trim();
                    (!v.is_empty()).then(|| (h.to_string(), v.to_string()))
                })
                .collect();
            rows.insert(canonical(&p), given);
        }
        Ok(Labels {
            rows,
            min_confidence,
        })
    }

    /// The given labels of this photo that the model contradicts with at least `min_confidence`.
    pub fn check(&self, path: &Path, p: &Prediction, model: &fashion::Model) -> Vec<Flag> {
        let Some(given) = self.rows.get(&canonical(path)) else {
            return Vec::new();
        };
        let mut flags = Vec::new();
        for (head, label) in given {
            let (Some(h), Some(probs)) = (model.head(head), p.probabilities.get(head)) else {
                continue;
            };
            let Some((best, conf)) = probs
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, c)| (&h.labels[i], *c))
            else {
                continue;
            };
            if best != label && conf >= self.min_confidence {
                flags.push(Flag {
                    field: head.clone(),
                    given: label.clone(),
                    predicted: best.clone(),
                    confidence: conf,
                });
            }
        }
        flags
    }
}
