//! Classifying a whole catalogue as a stream: worker threads decode and resize photos while the
//! model runs on the previous batch, and the batch before that gets its palettes (in parallel)
//! while results are handed on in input order. Memory stays bounded whatever the number of
//! photos: at most a few batches are in flight at any time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, RecvTimeoutError};
use std::sync::Mutex;
use std::time::Duration;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::predict::{Classifier, ModelOutput, Prediction, Prepared};

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
        let (out_tx, out_rx) = sync_channel::<Vec<Item<(Prepared, ModelOutput)>>>(2);
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
                    let good: Vec<&Prepared> = pending
                        .iter()
                        .filter_map(|(_, _, p)| p.as_ref().ok())
                        .collect();
                    let mut outputs = self.infer(&good).map(Vec::into_iter);
                    let done: Vec<Item<(Prepared, ModelOutput)>> = pending
                        .into_iter()
                        .map(|(i, path, p)| {
                            let r = p.and_then(|p| match &mut outputs {
                                Ok(o) => Ok((p, o.next().expect("one output per photo"))),
                                Err(e) => Err(Error::Engine(e.to_string())),
                            });
                            (i, path, r)
                        })
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
                let finished: Vec<Item<Prediction>> = done
                    .into_par_iter()
                    .map(|(i, path, r)| {
                        let r = r.map(|(p, o)| {
                            let mut pred = self.finish(&p, o);
                            pred.path = path.display().to_string();
                            pred
                        });
                        (i, path, r)
                    })
                    .collect();
                for (i, path, r) in finished {
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
