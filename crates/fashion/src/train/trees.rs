//! Boosted trees as a classifier head ([`crate::model::TreeHead`]): multiclass softmax
//! gradient boosting by the `hessboost` crate on the same rows as a network head
//! ([`HeadData`]), then calibrated and measured like one. On the pixel colour features,
//! whose quantiles carry thresholds (how dark the darkest quarter is, how pale the palest),
//! trees split where a network has to learn a ramp.

use hessboost::objective::Multiclass;
use hessboost::prelude::{train, DMatrix, Objective, TrainingParams, TreeMethod};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{HeadInfo, TreeHead};

use super::heads::{calibrate, HeadData, HeadSummary};

/// Hyper-parameters of boosted trees.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TreesConfig {
    /// Boosting rounds (one tree per class each).
    pub rounds: usize,
    /// Depth of each tree.
    pub depth: usize,
    pub learning_rate: f64,
    /// Share of the training rows each tree sees.
    pub subsample: f64,
    /// Share of the features each tree may split on.
    pub colsample: f64,
}

impl Default for TreesConfig {
    fn default() -> Self {
        Self {
            rounds: 600,
            depth: 4,
            learning_rate: 0.05,
            subsample: 0.8,
            colsample: 0.3,
        }
    }
}

fn herr(e: hessboost::prelude::HessboostError) -> Error {
    Error::Training(format!("boosted trees: {e}"))
}

/// Trains trees on the rows of `data` (same seed, same trees, on any number of threads).
pub fn train_trees(
    data: &HeadData,
    cfg: &TreesConfig,
    seed: u64,
    threads: usize,
) -> Result<(TreeHead, HeadSummary)> {
    let start = std::time::Instant::now();
    let (n, c) = (data.train_y.len(), data.labels.len());
    if n == 0 {
        return Err(Error::Training(format!(
            "{}: no training photos",
            data.name
        )));
    }
    let y: Vec<f32> = data.train_y.iter().map(|&v| v as f32).collect();
    let train_rows = DMatrix::from_dense(&data.train_x, n, data.dim)
        .and_then(|m| m.with_labels(&y))
        .map_err(herr)?;
    let mut params = TrainingParams::builder()
        .objective(Objective::Softprob(
            Multiclass::new(c.max(2)).map_err(herr)?,
        ))
        .tree_method(TreeMethod::Hist)
        .max_depth(cfg.depth)
        .eta(cfg.learning_rate)
        .subsample(cfg.subsample)
        .colsample_bytree(cfg.colsample)
        .seed(seed);
    if threads > 0 {
        params = params.nthread(threads);
    }
    let params = params.build().map_err(herr)?;
    eprintln!(
        "{:>14}: {} rounds of {c} trees on {n} photos",
        data.name, cfg.rounds
    );
    let model = train(&params, &train_rows, cfg.rounds).map_err(herr)?;
    let mut head = TreeHead::new(
        HeadInfo {
            name: data.name.clone(),
            labels: data.labels.clone(),
            hidden: 0,
            temperature: 1.0,
            tuned: false,
            log_prior: Vec::new(),
        },
        model,
    );
    let logits: Vec<f32> = data
        .val_x
        .chunks_exact(data.dim)
        .flat_map(|row| head.logits(row))
        .collect();
    let summary = calibrate(
        data,
        &logits,
        &mut head.info,
        n,
        start.elapsed().as_secs_f64(),
    );
    Ok((head, summary))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trees_learn_which_feature_is_largest_and_read_back_from_json() {
        // Three classes: the class is the index of the largest of three features. Hand rule,
        // independent of the trees.
        let mut data = HeadData::new("t", vec!["a".into(), "b".into(), "c".into()], 3);
        let mut state = 7u64;
        let mut draw = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 40) as f32 / (1u64 << 24) as f32
        };
        for i in 0..600 {
            let row: Vec<f32> = (0..3).map(|_| draw()).collect();
            let class = (0..3).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
            if i < 450 {
                data.push_train(row, class);
            } else {
                data.push_val(row, class);
            }
        }
        let cfg = TreesConfig {
            rounds: 60,
            depth: 3,
            learning_rate: 0.3,
            subsample: 1.0,
            colsample: 1.0,
        };
        let (head, summary) = train_trees(&data, &cfg, 1, 1).unwrap();
        assert_eq!((summary.train_rows, summary.val_rows), (450, 150));
        assert!(summary.val_accuracy.unwrap() > 0.85, "{summary:?}");
        // Clear cases, by the rule.
        for (row, class) in [
            ([0.9, 0.1, 0.2], 0),
            ([0.1, 0.8, 0.3], 1),
            ([0.2, 0.1, 0.95], 2),
        ] {
            let logits = head.logits(&row);
            let best = (0..3).max_by(|&a, &b| logits[a].total_cmp(&logits[b]));
            assert_eq!(best, Some(class), "{row:?}: {logits:?}");
        }
        // A wrong-length row gets no answer rather than a crash, and a model whose features
        // are not the trees' is refused when it is read (`fits`).
        assert_eq!(head.logits(&[0.5]), vec![0.0; 3]);
        let classifier = crate::model::PixelClassifier::Trees(head.clone());
        assert!(classifier.fits(3) && !classifier.fits(4));
        // Written as model metadata and read back, the trees answer the same.
        let json = serde_json::to_value(&head).unwrap();
        assert!(json["trees"].is_string());
        let back: TreeHead = serde_json::from_value(json).unwrap();
        assert_eq!(back.logits(&[0.3, 0.6, 0.2]), head.logits(&[0.3, 0.6, 0.2]));
        assert_eq!(back.info, head.info);
        // Same seed, same trees.
        let (again, _) = train_trees(&data, &cfg, 1, 2).unwrap();
        assert_eq!(
            again.logits(&[0.3, 0.6, 0.2]),
            head.logits(&[0.3, 0.6, 0.2])
        );
    }

    #[test]
    fn broken_trees_in_a_model_file_are_refused() {
        let json = serde_json::json!({
            "info": {"name": "t", "labels": ["a"], "hidden": 0, "temperature": 1.0},
            "trees": "bm90IGEgbW9kZWw=",
        });
        let err = serde_json::from_value::<TreeHead>(json).unwrap_err();
        assert!(err.to_string().contains("pixel colour trees"), "{err}");
    }
}
