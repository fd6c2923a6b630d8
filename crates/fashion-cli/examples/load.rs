//! Load test of `fashion serve` on loopback: many concurrent clients sending good and bad photos
//! for a fixed time. Checks that no request gets a 5xx, that every good photo gets the answer
//! `fashion classify` gives for the same file and every bad one a 422; reports p50/p99 latency,
//! throughput and the server's peak memory. Then 4 clients sending one photo each, against
//! `fashion bench` on the same photos (the ratio is what counts).
//!
//! cargo run --release -p fashion-cli --example load -- FASHION_BINARY PHOTO_DIR [SECONDS] [CLIENTS] [PHOTOS]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// What must match between the server and `fashion classify`.
#[derive(Debug, Clone, PartialEq)]
struct Answer {
    category: String,
    category_confidence: f64,
    view: String,
    colour: String,
}

fn answer(v: &serde_json::Value) -> Option<Answer> {
    Some(Answer {
        category: v["category"]["label"].as_str()?.to_string(),
        category_confidence: v["category"]["confidence"].as_f64()?,
        view: v["view"]["label"].as_str()?.to_string(),
        colour: v["colour"]["primary"]["name"].as_str()?.to_string(),
    })
}

fn same(a: &Answer, b: &Answer) -> bool {
    a.category == b.category
        && a.view == b.view
        && a.colour == b.colour
        && (a.category_confidence - b.category_confidence).abs() < 1e-4
}

struct Stats {
    latencies: Vec<f64>,
    ok: usize,
    bad_answered: usize,
    mismatches: usize,
    server_errors: usize,
    other: HashMap<u16, usize>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn peak_rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Runs `clients` threads for `secs`, each posting photos (raw bodies) in turn.
fn run(url: &str, photos: &[(Vec<u8>, Option<Answer>)], clients: usize, secs: u64) -> (Stats, f64) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let stats = Mutex::new(Stats {
        latencies: Vec::new(),
        ok: 0,
        bad_answered: 0,
        mismatches: 0,
        server_errors: 0,
        other: HashMap::new(),
    });
    let next = AtomicUsize::new(0);
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    std::thread::scope(|s| {
        for _ in 0..clients {
            s.spawn(|| {
                while Instant::now() < end {
                    let i = next.fetch_add(1, Ordering::Relaxed) % photos.len();
                    let (bytes, want) = &photos[i];
                    let t = Instant::now();
                    let resp = agent
                        .post(format!("{url}/v1/classify"))
                        .header("content-type", "image/jpeg")
                        .send(&bytes[..]);
                    let ms = t.elapsed().as_secs_f64() * 1e3;
                    let mut st = stats.lock().unwrap();
                    st.latencies.push(ms);
                    let Ok(mut resp) = resp else {
                        st.server_errors += 1;
                        continue;
                    };
                    let status = resp.status().as_u16();
                    let body: serde_json::Value = resp
                        .body_mut()
                        .read_to_string()
                        .ok()
                        .and_then(|t| serde_json::from_str(&t).ok())
                        .unwrap_or_default();
                    match (status, want) {
                        (200, Some(w)) => {
                            if answer(&body["results"][0]).is_some_and(|a| same(&a, w)) {
                                st.ok += 1;
                            } else {
                                st.mismatches += 1;
                            }
                        }
                        (422, None) => st.bad_answered += 1,
                        (s, _) if s >= 500 => st.server_errors += 1,
                        (s, _) => *st.other.entry(s).or_default() += 1,
                    }
                }
            });
        }
    });
    let secs = start.elapsed().as_secs_f64();
    let mut st = stats.into_inner().unwrap();
    st.latencies.sort_by(f64::total_cmp);
    (st, secs)
}

fn report(label: &str, st: &Stats, secs: f64) -> f64 {
    let n = st.latencies.len();
    let rate = n as f64 / secs;
    println!(
        "{label}: {n} requests in {secs:.0} s = {rate:.1} req/s; latency p50 {:.0} ms, p99 {:.0} ms; \
         good answered alike {}, bad answered 422 {}, mismatches {}, 5xx or failed {}, other {:?}",
        percentile(&st.latencies, 0.5),
        percentile(&st.latencies, 0.99),
        st.ok,
        st.bad_answered,
        st.mismatches,
        st.server_errors,
        st.other
    );
    rate
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        return Err("usage: load FASHION_BINARY PHOTO_DIR [SECONDS] [CLIENTS] [PHOTOS]".into());
    }
    let fashion = &args[0];
    let secs: u64 = args.get(2).map_or(Ok(60), |s| s.parse())?;
    let clients: usize = args.get(3).map_or(Ok(64), |s| s.parse())?;
    let count: usize = args.get(4).map_or(Ok(200), |s| s.parse())?;
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&args[1])?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "jpg" || e == "png"))
        .collect();
    paths.sort();
    paths.truncate(count);

    // What `fashion classify` says about each photo.
    let out = Command::new(fashion)
        .args(["classify", "--format", "jsonl"])
        .args(&paths)
        .output()?;
    let expected: HashMap<String, Answer> = String::from_utf8(out.stdout)?
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| Some((v["path"].as_str()?.to_string(), answer(&v)?)))
        .collect();
    let mut photos: Vec<(Vec<u8>, Option<Answer>)> = Vec::new();
    for (i, p) in paths.iter().enumerate() {
        let want = expected.get(&p.display().to_string()).cloned();
        photos.push((std::fs::read(p)?, want));
        if i % 10 == 9 {
            // One bad photo in eleven: garbage, and a truncated JPEG.
            photos.push((b"this is not a photo".to_vec(), None));
            let bytes = std::fs::read(p)?;
            photos.push((bytes[..bytes.len() / 3].to_vec(), None));
        }
    }

    let mut server = Command::new(fashion)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = server.id();
    let mut lines = BufReader::new(server.stderr.take().ok_or("no stderr")?).lines();
    let url = loop {
        let line = lines.next().ok_or("server exited")??;
        if let Some(u) = line.split("serving on ").nth(1) {
            break u.trim().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});

    let (st, elapsed) = run(&url, &photos, clients, secs);
    report(&format!("{clients} clients"), &st, elapsed);
    let rss = peak_rss_mb(pid);
    println!("server peak memory: {rss:.0} MB");

    let good: Vec<(Vec<u8>, Option<Answer>)> =
        photos.iter().filter(|p| p.1.is_some()).cloned().collect();
    let (st4, elapsed4) = run(&url, &good, 4, secs.min(30));
    let rate4 = report("4 clients, good photos", &st4, elapsed4);
    let _ = server.kill();
    let _ = server.wait();

    let out = Command::new(fashion)
        .args(["bench", "--rounds", "3"])
        .args(&paths)
        .output()?;
    let text = String::from_utf8(out.stdout)?;
    let bench: f64 = text
        .lines()
        .find(|l| l.starts_with("fashion end to end:"))
        .and_then(|l| l.split_whitespace().nth(4)?.parse().ok())
        .ok_or("fashion bench printed no rate")?;
    println!(
        "fashion bench on the same photos: {bench:.1} photos/s; 4 clients / bench = {:.2}",
        rate4 / bench
    );
    let failed = st.server_errors + st.mismatches + st4.server_errors + st4.mismatches;
    if failed > 0 || rss > 500.0 {
        return Err(
            format!("{failed} requests failed or disagreed; peak memory {rss:.0} MB").into(),
        );
    }
    Ok(())
}
