//! `fashion serve`: the HTTP JSON API and the web page.
//!
//! Requests are parsed on the async runtime; photos are decoded on the blocking pool; model
//! workers (one single-threaded session each) run the model on the photos of the requests
//! waiting together. A semaphore
//! counts the photos admitted (waiting or in work): when it is exhausted a request gets 429 with
//! Retry-After instead of queueing without bound. Photos stay in memory, never on disk.

mod api;
mod batcher;
mod metrics;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use fashion::ClassifyOptions;

pub use api::{router, AppState, Limits};

/// Serve the model over HTTP: `POST /v1/classify`, `GET /v1/model`, `/healthz`, `/readyz`,
/// `/metrics`, `/openapi.json`, and a page at `/` to drop photos on.
#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Largest request body, in megabytes.
    #[arg(long, default_value_t = 32)]
    max_body_mb: usize,
    /// Most photos in one request.
    #[arg(long, default_value_t = 16)]
    max_photos: usize,
    /// Photos with more pixels than this are refused.
    #[arg(long, default_value_t = fashion::image::DEFAULT_MAX_PIXELS)]
    max_pixels: u64,
    /// Seconds a request may take before it is answered 503.
    #[arg(long, default_value_t = 30)]
    timeout_s: u64,
    /// Photos admitted at once (waiting or in work); beyond, requests get 429.
    #[arg(long, default_value_t = 128)]
    queue: usize,
    /// Most photos a model worker runs at once (concurrent requests share batches). A
    /// one-thread worker is as fast at 8 as at 16, with half the memory.
    #[arg(long, default_value_t = 8)]
    batch: usize,

    #[command(flatten)]
    model: crate::model::ModelArgs,
}

pub fn run(args: ServeArgs) -> Result<ExitCode> {
    let limits = Limits {
        max_body: args.max_body_mb.max(1) * 1024 * 1024,
        max_photos: args.max_photos.max(1),
        timeout: Duration::from_secs(args.timeout_s.max(1)),
        queue: args.queue.max(args.max_photos).max(1),
        batch: args.batch.max(1),
    };
    let workers = match args.model.threads() {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let options = ClassifyOptions {
        max_pixels: args.max_pixels,
        ..Default::default()
    };
    // The first worker's classifier also draws heat maps (AppState::new).
    let classifiers = args.model.workers(options, workers)?;
    let state = AppState::new(classifiers, limits);
    state.warm_up()?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        eprintln!("fashion serving on http://{}", listener.local_addr()?);
        let app = router(state.clone());
        let draining = state.clone();
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                shutdown_signal().await;
                draining.ready.store(false, Ordering::SeqCst);
                eprintln!("shutting down: finishing the requests in flight");
            })
            .await
            .context("server failed")?;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
