//! Routes, request parsing, limits and the one mapping from error codes to HTTP statuses.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Multipart, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use fashion::{Classifier, Prediction};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use super::batcher::{self, Job};
use super::metrics::Metrics;

/// Request limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body in bytes.
    pub max_body: usize,
    /// Most photos in one request.
    pub max_photos: usize,
    /// Longest a request may take.
    pub timeout: Duration,
    /// Photos admitted at once, waiting or in work.
    pub queue: usize,
    /// Most photos per model run.
    pub batch: usize,
}

/// What every handler shares.
pub struct AppState {
    pub classifier: Arc<Classifier>,
    pub limits: Limits,
    pub metrics: Metrics,
    pub ready: AtomicBool,
    jobs: mpsc::Sender<Job>,
    admitted: Arc<Semaphore>,
}

impl AppState {
    /// Starts one model worker per classifier (each should own a one-thread session); the
    /// first classifier also decodes photos and draws heat maps. Not ready until
    /// [`AppState::warm_up`].
    pub fn new(classifiers: Vec<Classifier>, limits: Limits) -> Arc<AppState> {
        let classifiers: Vec<Arc<Classifier>> = classifiers.into_iter().map(Arc::new).collect();
        let classifier = classifiers
            .first()
            .cloned()
            .expect("at least one classifier");
        let (jobs, rx) = mpsc::channel();
        let rx = Arc::new(std::sync::Mutex::new(rx));
        for (i, c) in classifiers.into_iter().enumerate() {
            let rx = rx.clone();
            let batch = limits.batch;
            std::thread::Builder::new()
                .name(format!("fashion-model-{i}"))
                .spawn(move || batcher::run(c, rx, batch))
                .expect("cannot start a model worker");
        }
        Arc::new(AppState {
            admitted: Arc::new(Semaphore::new(limits.queue)),
            classifier,
            limits,
            metrics: Metrics::new(),
            ready: AtomicBool::new(false),
            jobs,
        })
    }

    /// Runs the model once so that the first request does not pay for its start, then reports
    /// ready.
    pub fn warm_up(&self) -> fashion::Result<()> {
        let side = self.classifier.model.info.preprocess.square_side();
        let img = image::RgbImage::from_pixel(side, side, image::Rgb([128, 128, 128]));
        let prepared = self.classifier.prepare_square(img);
        self.classifier.run(&[&prepared])?;
        self.ready.store(true, Ordering::SeqCst);
        Ok(())
    }
}

/// An error answered to a client: a stable code, a message for people, an HTTP status.
#[derive(Debug)]
pub struct ApiError {
    pub code: &'static str,
    pub message: String,
    /// Per-photo results, when the request got as far as classifying.
    pub results: Option<Vec<Value>>,
}

impl ApiError {
    pub fn new(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            results: None,
        }
    }

    /// The one mapping from error codes to HTTP statuses.
    pub fn status(&self) -> StatusCode {
        match self.code {
            "bad_request" | "no_photos" | "bad_base64" | "too_many_photos" => {
                StatusCode::BAD_REQUEST
            }
            "not_found" => StatusCode::NOT_FOUND,
            "payload_too_large" | "too_large" => StatusCode::PAYLOAD_TOO_LARGE,
            "unsupported_media_type" => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "empty" | "unknown_format" | "corrupt" | "bad_shape" => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            "queue_full" => StatusCode::TOO_MANY_REQUESTS,
            "timeout" | "not_ready" => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut body = json!({"error": {"code": self.code, "message": self.message}});
        if let Some(r) = self.results {
            body["results"] = Value::Array(r);
        }
        let mut resp = (status, Json(body)).into_response();
        if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp.extensions_mut().insert(ErrorCode(self.code));
        resp
    }
}

/// Set on error responses, so the metrics layer can count errors by code.
#[derive(Clone, Copy)]
struct ErrorCode(&'static str);

/// The HTTP application.
pub fn router(state: Arc<AppState>) -> Router {
    let body_limit = state.limits.max_body;
    Router::new()
        .route("/", get(page_html))
        .route("/app.js", get(page_js))
        .route("/style.css", get(page_css))
        .route("/v1/classify", post(classify))
        .route("/v1/model", get(model_info))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .fallback(|| async { ApiError::new("not_found", "no such endpoint") })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Counts requests, latency and errors.
async fn observe(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("other".to_string(), |p| p.as_str().to_string());
    let start = Instant::now();
    let resp = next.run(req).await;
    st.metrics
        .latency
        .with_label_values(&[&route])
        .observe(start.elapsed().as_secs_f64());
    st.metrics
        .requests
        .with_label_values(&[&route, resp.status().as_str()])
        .inc();
    if let Some(ErrorCode(code)) = resp.extensions().get::<ErrorCode>() {
        st.metrics.errors.with_label_values(&[code]).inc();
    }
    resp
}

const INDEX_HTML: &str = include_str!("../../assets/index.html");
const APP_JS: &str = include_str!("../../assets/app.js");
const STYLE_CSS: &str = include_str!("../../assets/style.css");
const OPENAPI: &str = include_str!("../../assets/openapi.json");

async fn page_html() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        INDEX_HTML,
    )
}

async fn page_js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        APP_JS,
    )
}

async fn page_css() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        STYLE_CSS,
    )
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

async fn readyz(State(st): State<Arc<AppState>>) -> Response {
    if st.ready.load(Ordering::SeqCst) {
        Json(json!({"status": "ready"})).into_response()
    } else {
        ApiError::new(
            "not_ready",
            "the model is loading or the server is shutting down",
        )
        .into_response()
    }
}

async fn metrics(State(st): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(),
    )
}

async fn model_info(State(st): State<Arc<AppState>>) -> Json<Value> {
    let info = &st.classifier.model.info;
    Json(json!({
        "name": info.name,
        "version": env!("CARGO_PKG_VERSION"),
        "heads": info.heads.iter().map(|h| json!({"name": h.name, "labels": h.labels})).collect::<Vec<_>>(),
        "preprocess": info.preprocess,
        "training": info.training,
        "colours": st.classifier.vocabulary.colours.iter().map(|c| json!({"name": c.name, "family": c.family})).collect::<Vec<_>>(),
    }))
}

/// One uploaded photo.
struct Upload {
    name: String,
    bytes: Vec<u8>,
}

fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

fn too_many(limit: usize) -> ApiError {
    ApiError::new(
        "too_many_photos",
        format!("at most {limit} photos per request"),
    )
}

fn body_error(e: impl std::fmt::Display, status: StatusCode, limit: usize) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            "payload_too_large",
            format!("the request body is over {} MB", limit / (1024 * 1024)),
        )
    } else {
        ApiError::new("bad_request", format!("cannot read the request body: {e}"))
    }
}

/// Reads the photos of a request: multipart fields named `file`, a raw image body, or JSON
/// `{"photos": [{"name": ..., "data": BASE64}]}`.
async fn uploads(st: &AppState, req: Request) -> Result<Vec<Upload>, ApiError> {
    let limits = &st.limits;
    let media = media_type(req.headers());
    let mut out = Vec::new();
    if media == "multipart/form-data" {
        let mut form = Multipart::from_request(req, &())
            .await
            .map_err(|e| ApiError::new("bad_request", e.body_text()))?;
        loop {
            let field = match form.next_field().await {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return Err(body_error(e.body_text(), e.status(), limits.max_body)),
            };
            if field.name() != Some("file") {
                continue;
            }
            if out.len() == limits.max_photos {
                return Err(too_many(limits.max_photos));
            }
            let name = field
                .file_name()
                .map_or_else(|| format!("photo-{}", out.len() + 1), str::to_string);
            let bytes = field
                .bytes()
                .await
                .map_err(|e| body_error(e.body_text(), e.status(), limits.max_body))?;
            out.push(Upload {
                name,
                bytes: bytes.to_vec(),
            });
        }
    } else if media.starts_with("image/") || media == "application/octet-stream" {
        let bytes = axum::body::to_bytes(req.into_body(), limits.max_body)
            .await
            .map_err(|e| body_error(&e, StatusCode::PAYLOAD_TOO_LARGE, limits.max_body))?;
        out.push(Upload {
            name: "photo-1".into(),
            bytes: bytes.to_vec(),
        });
    } else if media == "application/json" {
        let bytes = axum::body::to_bytes(req.into_body(), limits.max_body)
            .await
            .map_err(|e| body_error(&e, StatusCode::PAYLOAD_TOO_LARGE, limits.max_body))?;
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::new("bad_request", format!("bad JSON: {e}")))?;
        let photos = v["photos"].as_array().ok_or_else(|| {
            ApiError::new(
                "bad_request",
                "expected {\"photos\": [{\"name\": ..., \"data\": BASE64}]}",
            )
        })?;
        if photos.len() > limits.max_photos {
            return Err(too_many(limits.max_photos));
        }
        for (i, p) in photos.iter().enumerate() {
            let data = p["data"].as_str().ok_or_else(|| {
                ApiError::new("bad_request", format!("photos[{i}] has no \"data\" string"))
            })?;
            // A data URL ("data:image/jpeg;base64,...") is accepted as well as bare base64.
            let data = data.split_once(";base64,").map_or(data, |(_, d)| d);
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .map_err(|e| ApiError::new("bad_base64", format!("photos[{i}]: {e}")))?;
            let name = p["name"]
                .as_str()
                .map_or_else(|| format!("photo-{}", i + 1), str::to_string);
            out.push(Upload { name, bytes });
        }
    } else {
        return Err(ApiError::new(
            "unsupported_media_type",
            format!(
                "send multipart/form-data (fields named `file`), an image/* body or application/json, not {:?}",
                if media.is_empty() { "no content type" } else { media.as_str() }
            ),
        ));
    }
    if out.is_empty() {
        return Err(ApiError::new("no_photos", "the request holds no photo"));
    }
    Ok(out)
}

fn result_json(name: &str, r: &fashion::Result<Prediction>) -> Value {
    match r {
        // Through text, so that numbers read as `fashion classify` prints them (f32, not f64).
        Ok(p) => serde_json::to_string(p)
            .and_then(|t| serde_json::from_str(&t))
            .unwrap_or(Value::Null),
        Err(e) => {
            // Only the photo's own name is shown: no server paths, no internals.
            let message = match e {
                fashion::Error::BadImage { message, .. } => format!("{name}: {message}"),
                _ => format!("{name}: could not be classified"),
            };
            json!({"path": name, "error": {"kind": e.kind(), "message": message}})
        }
    }
}

async fn classify(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let timeout = st.limits.timeout;
    match tokio::time::timeout(timeout, classify_inner(st, req)).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => e.into_response(),
        Err(_) => ApiError::new(
            "timeout",
            format!("the request took over {} s", timeout.as_secs()),
        )
        .into_response(),
    }
}

async fn classify_inner(st: Arc<AppState>, req: Request) -> Result<Response, ApiError> {
    let start = Instant::now();
    let explain = req.uri().query().is_some_and(|q| {
        q.split('&')
            .any(|kv| kv == "explain=true" || kv == "explain=1")
    });
    let photos = uploads(&st, req).await?;
    let n = photos.len();
    let _permit = st
        .admitted
        .clone()
        .try_acquire_many_owned(n as u32)
        .map_err(|_| ApiError::new("queue_full", "too many photos in work; retry shortly"))?;
    let queued = Instant::now();
    let c = st.classifier.clone();
    let (names, prepared) = tokio::task::spawn_blocking(move || {
        use rayon::prelude::*;
        let prepared: Vec<_> = photos
            .par_iter()
            .map(|u| c.prepare_bytes(&u.bytes, Path::new(&u.name)))
            .collect();
        (
            photos.into_iter().map(|u| u.name).collect::<Vec<_>>(),
            prepared,
        )
    })
    .await
    .map_err(|_| ApiError::new("internal", "internal error"))?;
    let decoded = Instant::now();
    // The heat maps need the photos again after the batcher has taken them.
    let kept: Vec<_> = if explain {
        prepared.iter().map(|p| p.as_ref().ok().cloned()).collect()
    } else {
        Vec::new()
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    st.jobs
        .send(Job {
            names: names.clone(),
            prepared,
            reply: tx,
        })
        .map_err(|_| ApiError::new("internal", "internal error"))?;
    let results = rx
        .await
        .map_err(|_| ApiError::new("internal", "internal error"))?;
    let done = Instant::now();
    let good = results.iter().filter(|r| r.is_ok()).count();
    st.metrics.photos.inc_by(good as u64);
    if good > 0 {
        // Photos that failed in a request that succeeded (a failed request is counted once, by
        // its code, when answered).
        for e in results.iter().filter_map(|r| r.as_ref().err()) {
            st.metrics.errors.with_label_values(&[e.kind()]).inc();
        }
    }
    let mut json_results: Vec<Value> = names
        .iter()
        .zip(&results)
        .map(|(n, r)| result_json(n, r))
        .collect();
    if explain && good > 0 {
        let c = st.classifier.clone();
        let maps = tokio::task::spawn_blocking(move || {
            let photos: Vec<_> = kept.iter().flatten().collect();
            c.heatmaps(&photos)
        })
        .await
        .map_err(|_| ApiError::new("internal", "internal error"))?
        .map_err(|_| ApiError::new("internal", "this model cannot explain its answers"))?;
        let slots = json_results.iter_mut().filter(|r| r.get("error").is_none());
        for (slot, map) in slots.zip(maps) {
            slot["heatmap"] = serde_json::to_value(map).unwrap_or(Value::Null);
        }
    }
    if good == 0 {
        let first = results.iter().find_map(|r| r.as_ref().err());
        let code = first.map_or("internal", |e| match e {
            fashion::Error::BadImage { .. } => e.kind(),
            _ => "internal",
        });
        let mut err = ApiError::new(
            code,
            if n == 1 {
                json_results[0]["error"]["message"]
                    .as_str()
                    .unwrap_or("the photo could not be read")
                    .to_string()
            } else {
                "none of the photos could be read".to_string()
            },
        );
        err.results = Some(json_results);
        return Err(err);
    }
    let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
    Ok(Json(json!({
        "results": json_results,
        "timing_ms": {
            "read": ms(start, queued),
            "decode": ms(queued, decoded),
            "model": ms(decoded, done),
            "total": ms(start, done),
        }
    }))
    .into_response())
}

/// Used by tests to hold admission slots.
#[cfg(test)]
impl AppState {
    pub fn admitted(&self) -> Arc<Semaphore> {
        self.admitted.clone()
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
