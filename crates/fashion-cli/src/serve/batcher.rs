//! One thread runs the model for every request: photos of requests waiting together share a
//! batch, so many small requests cost little more than one large one.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use fashion::predict::Prepared;
use fashion::{Classifier, Prediction, Result};

/// Photos of one request, prepared, and where their answers go.
pub struct Job {
    pub names: Vec<String>,
    pub prepared: Vec<Result<Prepared>>,
    pub reply: tokio::sync::oneshot::Sender<Vec<Result<Prediction>>>,
}

/// How long the batcher waits for more requests to fill a batch once one has arrived.
const GATHER: Duration = Duration::from_millis(2);

/// Runs until every sender of `jobs` is gone.
pub fn run(classifier: Arc<Classifier>, jobs: Receiver<Job>, batch: usize) {
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        let mut photos = group[0].names.len();
        while photos < batch {
            match jobs.recv_timeout(GATHER) {
                Ok(job) => {
                    photos += job.names.len();
                    group.push(job);
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        let mut names = Vec::with_capacity(photos);
        let mut prepared = Vec::with_capacity(photos);
        let mut replies = Vec::with_capacity(group.len());
        for job in group {
            replies.push((job.names.len(), job.reply));
            names.extend(job.names);
            prepared.extend(job.prepared);
        }
        let mut results = classifier.classify_prepared(names, prepared).into_iter();
        for (n, reply) in replies {
            // A request that timed out has dropped its receiver: its answers are discarded.
            let _ = reply.send(results.by_ref().take(n).collect());
        }
    }
}
