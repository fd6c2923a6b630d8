//! Classifying a whole catalogue as a stream: worker threads decode, resize and compute palettes
//! while the model runs on the previous batch, and results come back in input order. Memory stays
//! bounded whatever the number of photos: at most a few batches are in flight at any time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, RecvTimeoutError};
use std::sync::Mutex;
use std::time::Duration;

use crate::error::Result;
use crate::predict::{Classifier, Prediction, Prepared};

/// How a stream is run.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// Photos per model batch.
    pub batch: usize,
    /// Threads decoding and resizing photos (0 = one per core).
    pub workers: usize,
    /// A partial batch goes to the model once no photo has come for this long, so that a slow
    /// trickle of photos (a list typed on standard input) is still answered promptly.
    pub max_wait: Duration,
}

impl Default for StreamOptions {
    fn default() -> Self {
        Self {
            batch: 16,
            workers: 0,
            max_wait: Duration::from_millis(50),
        }
    }
}

type Item<T> = (usize, PathBuf, Result<T>);

impl Classifier {
    /// Classifies every photo of `photos`, handing each result to `sink` in input order as soon
    /// as it and all photos before it are done. A photo that cannot be read gets its error and
    /// the stream goes on. An error from `sink` stops the stream (the photos in flight are
    /// dropped) and is returned.
    pub fn classify_stream<I, F, E>(
        &self,
        photos: I,
        opts: &StreamOptions,
        mut sink: F,
    ) -> std::result::Result<(), E>
    where
        I: IntoIterator<Item = PathBuf>,
        I::IntoIter: Send,
        F: FnMut(&Path, Result<Prediction>) -> std::result::Result<(), E>,
    {
        let batch = opts.batch.max(1);
        let workers = match opts.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let queue = Mutex::new(photos.into_iter().enumerate());
        let (prep_tx, prep_rx) = sync_channel::<Item<Prepared>>(2 * batch);
        let (out_tx, out_rx) = sync_channel::<Vec<Item<Prediction>>>(2);
        std::thread::scope(|s| {
            for _ in 0..workers {
                let tx = prep_tx.clone();
                let queue = &queue;
                s.spawn(move || loop {
                    let next = queue.lock().unwrap_or_else(|p| p.into_inner()).next();
                    let Some((i, path)) = next else { break };
                    let prepared = self.prepare_path(&path);
                    if tx.send((i, path, prepared)).is_err() {
                        break; // the stream was stopped
                    }
                });
            }
            drop(prep_tx);
            s.spawn(move || {
                let mut open = true;
                while open {
                    let mut pending = match prep_rx.recv() {
                        Ok(first) => vec![first],
                        Err(_) => break,
                    };
                    while pending.len() < batch {
                        match prep_rx.recv_timeout(opts.max_wait) {
                            Ok(item) => pending.push(item),
                            Err(RecvTimeoutError::Timeout) => break,
                            Err(RecvTimeoutError::Disconnected) => {
                                open = false;
                                break;
                            }
                        }
                    }
                    let mut ids = Vec::with_capacity(pending.len());
                    let mut names = Vec::with_capacity(pending.len());
                    let mut prepared = Vec::with_capacity(pending.len());
                    for (i, path, p) in pending {
                        names.push(path.display().to_string());
                        ids.push((i, path));
                        prepared.push(p);
                    }
                    let results = self.classify_prepared(names, prepared);
                    let done = ids
                        .into_iter()
                        .zip(results)
                        .map(|((i, path), r)| (i, path, r))
                        .collect();
                    if out_tx.send(done).is_err() {
                        break;
                    }
                }
            });
            // Results arrive in batches, not quite in order; hand them on in order.
            let mut next = 0;
            let mut held = BTreeMap::new();
            for done in out_rx {
                for (i, path, r) in done {
                    held.insert(i, (path, r));
                }
                while let Some((path, r)) = held.remove(&next) {
                    sink(&path, r)?;
                    next += 1;
                }
            }
            Ok(())
        })
    }
}
