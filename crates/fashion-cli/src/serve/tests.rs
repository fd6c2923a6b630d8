//! Router tests: every endpoint and error path, without a socket.

use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use base64::Engine as _;
use serde_json::Value;
use tower::ServiceExt;

use super::{router, AppState, Limits};

fn limits() -> Limits {
    Limits {
        max_body: 2 * 1024 * 1024,
        max_photos: 4,
        timeout: Duration::from_secs(30),
        queue: 8,
        batch: 8,
    }
}

fn state_with(limits: Limits, max_pixels: u64) -> Arc<AppState> {
    let options = fashion::ClassifyOptions {
        max_pixels,
        ..Default::default()
    };
    // Two model workers, as `fashion serve` starts them: the second is a replica.
    let classifiers = crate::model::ModelArgs::default_for_tests()
        .workers(options, 2)
        .unwrap();
    let st = AppState::new(classifiers, limits);
    st.warm_up().unwrap();
    st
}

fn state() -> Arc<AppState> {
    state_with(limits(), fashion::image::DEFAULT_MAX_PIXELS)
}

/// A garment of one colour on a light background, encoded as PNG.
fn photo(colour: [u8; 3], w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        if (w / 4..3 * w / 4).contains(&x) && (h / 6..5 * h / 6).contains(&y) {
            image::Rgb(colour)
        } else {
            image::Rgb([245, 245, 245])
        }
    });
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

fn multipart(files: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "fashionboundary7MA4YWxk";
    let mut body = Vec::new();
    for (name, bytes) in files {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

async fn send(
    st: &Arc<AppState>,
    req: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let resp = router(st.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap()
        .to_vec();
    (status, headers, body)
}

async fn post(st: &Arc<AppState>, uri: &str, ctype: &str, body: Vec<u8>) -> (StatusCode, Value) {
    let req = Request::post(uri)
        .header(header::CONTENT_TYPE, ctype)
        .body(Body::from(body))
        .unwrap();
    let (status, _, body) = send(st, req).await;
    (status, serde_json::from_slice(&body).unwrap())
}

async fn get(st: &Arc<AppState>, uri: &str) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    send(st, Request::get(uri).body(Body::empty()).unwrap()).await
}

fn code(v: &Value) -> &str {
    v["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {v}"))
}

#[tokio::test]
async fn multipart_photos_get_the_same_answers_as_the_library() {
    let st = state();
    let navy = photo([31, 42, 68], 300, 400);
    let red = photo([200, 16, 46], 400, 300);
    let (ctype, body) = multipart(&[("navy.png", &navy), ("red.png", &red)]);
    let (status, v) = post(&st, "/v1/classify", &ctype, body).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    let direct = st.classifier.classify_bytes(&[
        ("navy.png".to_string(), navy.clone()),
        ("red.png".to_string(), red.clone()),
    ]);
    for (r, d) in results.iter().zip(direct) {
        let d = d.unwrap();
        assert_eq!(r["path"], d.path.as_str());
        for head in ["category", "view", "article_type"] {
            assert_eq!(r[head]["label"], d.heads[head].label.as_str());
            let c = r[head]["confidence"].as_f64().unwrap();
            assert!((c - f64::from(d.heads[head].confidence)).abs() < 1e-6);
        }
        assert_eq!(
            r["colour"]["primary"]["name"],
            d.colour.primary.name.as_str()
        );
        assert!(r.get("heatmap").is_none(), "heat maps only when asked");
    }
    assert!(v["timing_ms"]["total"].as_f64().unwrap() >= 0.0);

    // With explain=true each answer carries a 7x7 map of its category, scaled to 0..1.
    let (ctype, body) = multipart(&[("navy.png", &navy)]);
    let (status, v) = post(&st, "/v1/classify?explain=true", &ctype, body).await;
    assert_eq!(status, StatusCode::OK);
    let map = &v["results"][0]["heatmap"];
    assert_eq!(map["label"], v["results"][0]["category"]["label"]);
    let values = map["values"].as_array().unwrap();
    assert_eq!(values.len(), 49);
    let vals: Vec<f64> = values.iter().map(|x| x.as_f64().unwrap()).collect();
    assert!(vals.iter().all(|x| (0.0..=1.0).contains(x)));
    assert!(vals.contains(&1.0) && vals.contains(&0.0));
}

#[tokio::test]
async fn raw_and_base64_bodies_are_accepted() {
    let st = state();
    let navy = photo([31, 42, 68], 300, 400);
    let (status, v) = post(&st, "/v1/classify", "image/png", navy.clone()).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["results"].as_array().unwrap().len(), 1);

    let b64 = base64::engine::general_purpose::STANDARD.encode(&navy);
    let json = serde_json::json!({"photos": [
        {"name": "a.png", "data": b64},
        {"name": "b.png", "data": format!("data:image/png;base64,{b64}")},
    ]});
    let (status, v) = post(
        &st,
        "/v1/classify",
        "application/json",
        json.to_string().into(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["results"][1]["path"], "b.png");
    assert_eq!(v["results"][0]["category"], v["results"][1]["category"]);

    let bad = serde_json::json!({"photos": [{"data": "%%% not base64"}]});
    let (status, v) = post(
        &st,
        "/v1/classify",
        "application/json",
        bad.to_string().into(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(code(&v), "bad_base64");

    let (status, v) = post(&st, "/v1/classify", "application/json", b"{".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(code(&v), "bad_request");
}

#[tokio::test]
async fn bad_photos_are_422_and_good_ones_still_answered() {
    let st = state();
    let (status, v) = post(&st, "/v1/classify", "image/jpeg", b"not a photo".to_vec()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(code(&v), "unknown_format");
    let truncated = photo([31, 42, 68], 300, 400)[..200].to_vec();
    let (status, v) = post(&st, "/v1/classify", "image/png", truncated).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(code(&v), "corrupt");

    // One good photo and one bad: 200, with the bad one's error in its place.
    let good = photo([31, 42, 68], 300, 400);
    let (ctype, body) = multipart(&[("bad.jpg", b"nope"), ("good.png", &good)]);
    let (status, v) = post(&st, "/v1/classify", &ctype, body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["results"][0]["error"]["kind"], "unknown_format");
    assert!(v["results"][1]["category"]["label"].is_string());
    let msg = v["results"][0]["error"]["message"].as_str().unwrap();
    assert!(msg.starts_with("bad.jpg") && !msg.contains('/'), "{msg}");
}

#[tokio::test]
async fn limits_answer_413_400_415() {
    let st = state();
    // Body over 2 MB.
    let (status, v) = post(
        &st,
        "/v1/classify",
        "image/jpeg",
        vec![0u8; 3 * 1024 * 1024],
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(code(&v), "payload_too_large");
    let big = vec![0u8; 3 * 1024 * 1024];
    let (ctype, body) = multipart(&[("big.jpg", &big)]);
    let (status, v) = post(&st, "/v1/classify", &ctype, body).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{v}");

    // More photos than allowed.
    let p = photo([31, 42, 68], 64, 64);
    let files: Vec<(&str, &[u8])> = (0..5).map(|_| ("p.png", &p[..])).collect();
    let (ctype, body) = multipart(&files);
    let (status, v) = post(&st, "/v1/classify", &ctype, body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(code(&v), "too_many_photos");

    // Wrong content type, and no photo at all.
    let (status, v) = post(&st, "/v1/classify", "text/plain", b"hello".to_vec()).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(code(&v), "unsupported_media_type");
    let (ctype, body) = multipart(&[]);
    let (status, v) = post(&st, "/v1/classify", &ctype, body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(code(&v), "no_photos");

    // Too many pixels for the server's limit.
    let small = state_with(limits(), 100 * 100);
    let (status, v) = post(
        &small,
        "/v1/classify",
        "image/png",
        photo([1, 2, 3], 300, 400),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(code(&v), "too_large");
}

#[tokio::test]
async fn a_full_queue_answers_429_with_retry_after() {
    let st = state();
    let held = st.admitted().try_acquire_many_owned(7).unwrap();
    let p = photo([31, 42, 68], 64, 64);
    let (ctype, body) = multipart(&[("a.png", &p), ("b.png", &p)]);
    let req = Request::post("/v1/classify")
        .header(header::CONTENT_TYPE, &ctype)
        .body(Body::from(body.clone()))
        .unwrap();
    let (status, headers, body_out) = send(&st, req).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers[header::RETRY_AFTER], "1");
    let v: Value = serde_json::from_slice(&body_out).unwrap();
    assert_eq!(code(&v), "queue_full");
    drop(held);
    let (status, _) = post(&st, "/v1/classify", &ctype, body).await;
    assert_eq!(status, StatusCode::OK, "admitted once the queue drains");
}

#[tokio::test]
async fn a_slow_request_times_out_with_503() {
    let mut l = limits();
    l.timeout = Duration::from_nanos(1);
    let st = state_with(l, fashion::image::DEFAULT_MAX_PIXELS);
    let (status, v) = post(&st, "/v1/classify", "image/png", photo([1, 2, 3], 300, 400)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(code(&v), "timeout");
}

#[tokio::test]
async fn service_endpoints() {
    let st = state();
    let (status, _, body) = get(&st, "/healthz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["status"],
        "ok"
    );
    let (status, _, _) = get(&st, "/readyz").await;
    assert_eq!(status, StatusCode::OK);
    st.ready.store(false, std::sync::atomic::Ordering::SeqCst);
    let (status, headers, body) = get(&st, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(headers.contains_key(header::RETRY_AFTER));
    assert_eq!(code(&serde_json::from_slice(&body).unwrap()), "not_ready");

    let (status, _, body) = get(&st, "/v1/model").await;
    assert_eq!(status, StatusCode::OK);
    let m: Value = serde_json::from_slice(&body).unwrap();
    let heads: Vec<&str> = m["heads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap())
        .collect();
    assert!(heads.contains(&"category") && heads.contains(&"view"));
    assert_eq!(m["preprocess"]["crop"], 224);

    let (status, _, body) = get(&st, "/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(code(&serde_json::from_slice(&body).unwrap()), "not_found");

    let (status, headers, body) = get(&st, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = String::from_utf8(body).unwrap();
    assert!(html.contains("/app.js") && html.contains("/style.css"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no external resources"
    );
    for (path, ctype) in [("/app.js", "text/javascript"), ("/style.css", "text/css")] {
        let (status, headers, body) = get(&st, path).await;
        assert_eq!(status, StatusCode::OK);
        assert!(headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with(ctype));
        assert!(!body.is_empty());
    }

    // Every route is documented.
    let (status, _, body) = get(&st, "/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    let doc: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["openapi"].as_str().unwrap().chars().next(), Some('3'));
    for route in [
        "/",
        "/v1/classify",
        "/v1/model",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(doc["paths"].get(route).is_some(), "{route} undocumented");
    }
    // Every error code the server answers with is in the documented enum.
    let codes: Vec<&str> = doc["components"]["schemas"]["Error"]["properties"]["error"]
        ["properties"]["code"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    for c in [
        "queue_full",
        "timeout",
        "too_many_photos",
        "payload_too_large",
        "unsupported_media_type",
        "corrupt",
    ] {
        assert!(codes.contains(&c), "{c}");
    }

    // Metrics count what happened above.
    let _ = post(&st, "/v1/classify", "text/plain", b"x".to_vec()).await;
    let _ = post(&st, "/v1/classify", "image/png", photo([1, 2, 3], 64, 64)).await;
    let (status, _, body) = get(&st, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(body).unwrap();
    assert!(
        text.contains("fashion_http_requests_total{route=\"/v1/classify\",status=\"415\"} 1"),
        "{text}"
    );
    assert!(text.contains("fashion_http_requests_total{route=\"/v1/classify\",status=\"200\"} 1"));
    assert!(text.contains("fashion_errors_total{code=\"unsupported_media_type\"} 1"));
    assert!(text.contains("fashion_photos_classified_total 1"));
    assert!(text.contains("fashion_http_request_duration_seconds_bucket"));
}
