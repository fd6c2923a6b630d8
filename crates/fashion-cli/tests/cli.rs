//! Runs the built `fashion` binary on folders of good and bad photos.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn fashion(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fashion"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

fn garment(path: &Path, colour: [u8; 3]) {
    let img = image::RgbImage::from_fn(300, 400, |x, y| {
        if (80..220).contains(&x) && (60..360).contains(&y) {
            image::Rgb(colour)
        } else {
            image::Rgb([245, 245, 245])
        }
    });
    img.save(path).unwrap();
}

fn photo_folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("nested")).unwrap();
    garment(&d.join("navy.png"), [31, 42, 68]);
    garment(&d.join("red.jpg"), [200, 16, 46]);
    garment(&d.join("nested/green.png"), [46, 139, 62]);
    std::fs::write(d.join("empty.jpg"), b"").unwrap();
    std::fs::write(d.join("notes.jpg"), b"not a photo").unwrap();
    std::fs::write(d.join("readme.txt"), b"ignored: not a photo extension").unwrap();
    dir
}

/// `fashion classify --out OUT --resume PHOTOS`.
fn resume(out: &Path, photos: &Path) -> Output {
    fashion(
        &[
            "classify",
            "--out",
            out.to_str().unwrap(),
            "--resume",
            photos.to_str().unwrap(),
        ],
        None,
    )
}

fn jsonl(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

#[test]
fn folder_of_good_and_bad_photos_prints_every_good_one_and_the_failures() {
    let dir = photo_folder();
    let out = fashion(
        &[
            "classify",
            "--format",
            "jsonl",
            dir.path().to_str().unwrap(),
        ],
        None,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "some photos failed: {stderr}");
    let rows = jsonl(&out);
    assert_eq!(rows.len(), 5, "every photo once, the .txt skipped");
    let good: Vec<&serde_json::Value> = rows.iter().filter(|r| r.get("error").is_none()).collect();
    assert_eq!(good.len(), 3);
    for r in &good {
        let c = r["category"]["confidence"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&c));
        assert_eq!(r["category"]["top"].as_array().unwrap().len(), 3);
        assert!(r["view"]["label"].is_string());
        assert!(r["colour"]["primary"]["hex"]
            .as_str()
            .unwrap()
            .starts_with('#'));
        assert!(!r["colour"]["palette"].as_array().unwrap().is_empty());
    }
    let navy = rows
        .iter()
        .find(|r| r["path"].as_str().unwrap().ends_with("navy.png"))
        .unwrap();
    assert_eq!(navy["colour"]["palette"][0]["name"], "navy");
    let kinds: Vec<&str> = rows
        .iter()
        .filter_map(|r| r.get("error"))
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.len(), 2);
    assert!(
        kinds.contains(&"empty") && kinds.contains(&"unknown_format"),
        "{kinds:?}"
    );
    assert!(
        stderr.contains("5 photos, 3 classified, 2 failed"),
        "{stderr}"
    );
    assert!(
        stderr.contains("empty.jpg") && stderr.contains("notes.jpg"),
        "{stderr}"
    );
}

#[test]
fn paths_from_stdin_globs_and_csv_output() {
    let dir = photo_folder();
    let d = dir.path();
    let list = format!(
        "{}\n{}\n",
        d.join("navy.png").display(),
        d.join("red.jpg").display()
    );
    let out = fashion(&["classify", "--format", "csv", "-"], Some(&list));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut r = csv::Reader::from_reader(text.as_bytes());
    assert_eq!(r.headers().unwrap().get(0), Some("path"));
    assert_eq!(r.records().count(), 2);

    let pattern = format!("{}/*.png", d.display());
    let out = fashion(&["classify", "--format", "json", &pattern], None);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v.as_array().unwrap().len(),
        1,
        "only navy.png matches at the top level"
    );
}

#[test]
fn min_confidence_makes_answers_unsure_and_keeps_candidates() {
    let dir = photo_folder();
    let p = dir.path().join("red.jpg");
    let out = fashion(
        &[
            "classify",
            "--format",
            "jsonl",
            "--min-confidence",
            "1",
            p.to_str().unwrap(),
        ],
        None,
    );
    let rows = jsonl(&out);
    assert_eq!(rows[0]["category"]["label"], "unsure");
    assert_eq!(rows[0]["category"]["top"].as_array().unwrap().len(), 3);
}

#[test]
fn bad_arguments_and_missing_model_fail_clearly() {
    let out = fashion(
        &["classify", "--model", "/nonexistent/model.onnx", "x.jpg"],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/model.onnx"));
    let out = fashion(&["classify", "--min-confidence", "2", "x.jpg"], None);
    assert_eq!(out.status.code(), Some(2));
    let out = fashion(&["classify", "/nonexistent/*.jpg"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no file matches"));
}

/// An error names its file and its reason once, in the table's row and in a command's error.
#[test]
fn errors_say_the_path_and_the_reason_once() {
    let dir = photo_folder();
    let empty = dir.path().join("empty.jpg");
    let notes = dir.path().join("notes.jpg");
    let missing = dir.path().join("missing.jpg");
    let paths = [&empty, &notes, &missing].map(|p| p.to_str().unwrap().to_string());
    let out = fashion(&["classify", &paths[0], &paths[1], &paths[2]], None);
    assert_eq!(out.status.code(), Some(1));
    let table = String::from_utf8_lossy(&out.stdout);
    for (path, kind) in paths.iter().zip(["empty", "unknown_format", "unreadable"]) {
        let row = table
            .lines()
            .find(|l| l.starts_with(path.as_str()))
            .unwrap_or_else(|| panic!("no row for {path}: {table}"));
        assert_eq!(row.matches(path.as_str()).count(), 1, "{row}");
        assert_eq!(row.matches(&format!("{kind}: ")).count(), 1, "{row}");
    }
    let missing_row = table.lines().find(|l| l.starts_with(&paths[2])).unwrap();
    assert!(missing_row.contains("No such file"), "{missing_row}");

    let data = dir.path().join("no-dataset");
    let out = fashion(
        &[
            "eval",
            "--data",
            data.to_str().unwrap(),
            "--layout",
            "inshop",
            "--split",
            "val",
        ],
        None,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("list_eval_partition.txt"), "{stderr}");
    assert_eq!(stderr.matches("No such file").count(), 1, "{stderr}");
}

#[test]
fn resume_refuses_a_run_begun_with_another_model_or_settings() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let photos = d.join("photos");
    std::fs::create_dir(&photos).unwrap();
    garment(&photos.join("navy.png"), [31, 42, 68]);
    garment(&photos.join("red.png"), [200, 16, 46]);
    let out = d.join("tags.jsonl");
    let side = d.join("tags.jsonl.settings.json");
    let run = |extra: &[&str]| {
        let mut a = vec!["classify", "--out", out.to_str().unwrap()];
        a.extend_from_slice(extra);
        a.push(photos.to_str().unwrap());
        fashion(&a, None)
    };
    let first = run(&[]);
    assert_eq!(first.status.code(), Some(0));
    let text = std::fs::read_to_string(&out).unwrap();
    let record = std::fs::read_to_string(&side).unwrap();
    let settings: serde_json::Value = serde_json::from_str(&record).unwrap();
    assert_eq!(settings["fast"], false);
    assert_eq!(settings["contradict_confidence"], 0.9);
    for (extra, named) in [
        (&["--resume", "--int8"][..], "--int8"),
        (&["--resume", "--fast"][..], "--fast"),
        (
            &["--resume", "--min-confidence", "0.5"][..],
            "--min-confidence",
        ),
        (&["--resume", "--fit", "crop"][..], "--fit"),
    ] {
        let again = run(extra);
        let stderr = String::from_utf8_lossy(&again.stderr);
        assert_eq!(again.status.code(), Some(2), "{extra:?}: {stderr}");
        assert!(stderr.contains(named), "{extra:?}: {stderr}");
        assert_eq!(std::fs::read_to_string(&out).unwrap(), text, "{extra:?}");
        assert_eq!(std::fs::read_to_string(&side).unwrap(), record, "{extra:?}");
    }
    // A run refused for an existing --out leaves the record of the run that wrote it.
    assert_eq!(run(&["--int8"]).status.code(), Some(2));
    assert_eq!(std::fs::read_to_string(&side).unwrap(), record);
    // The same settings continue.
    let same = run(&["--resume"]);
    assert_eq!(same.status.code(), Some(0));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), text);
    // A file begun without a record continues with a warning, and gets one.
    std::fs::remove_file(&side).unwrap();
    let old = run(&["--resume"]);
    assert_eq!(old.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&old.stderr).contains("warning"));
    assert_eq!(std::fs::read_to_string(&side).unwrap(), record);
}

#[test]
fn a_killed_run_resumes_with_every_photo_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    std::fs::create_dir(&photos).unwrap();
    let total = 60;
    for i in 0..total {
        let shade = (i * 4) as u8;
        let img = image::RgbImage::from_fn(900, 1200, |x, y| {
            image::Rgb([shade, (x % 256) as u8, (y % 256) as u8])
        });
        img.save(photos.join(format!("{i:03}.png"))).unwrap();
    }
    let out = dir.path().join("tags.jsonl");
    let mut child = Command::new(env!("CARGO_BIN_EXE_fashion"))
        .args(["classify", "--batch", "1", "--out"])
        .arg(&out)
        .arg(&photos)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = |p: &Path| {
        std::fs::read_to_string(p)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while lines(&out) < 3 {
        assert!(std::time::Instant::now() < deadline, "no progress");
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before it could be killed"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let before = lines(&out);
    assert!(
        before < total,
        "killed mid-run ({before} of {total} written)"
    );

    let again = resume(&out, &photos);
    assert_eq!(
        again.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let text = std::fs::read_to_string(&out).unwrap();
    let mut seen: Vec<String> = text
        .lines()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"));
            assert!(v.get("category").is_some(), "{l}");
            v["path"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(seen.len(), total);
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), total, "every photo exactly once");

    // Resuming a finished run classifies nothing and leaves the file as it is.
    let third = resume(&out, &photos);
    assert_eq!(third.status.code(), Some(0));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), text);
    // Without --resume an existing output is never overwritten.
    let clobber = fashion(
        &[
            "classify",
            "--out",
            out.to_str().unwrap(),
            photos.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(clobber.status.code(), Some(2));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), text);
}

#[test]
fn shards_partition_the_photos() {
    let dir = photo_folder();
    let d = dir.path().to_str().unwrap();
    let mut all = Vec::new();
    for i in 1..=3 {
        let shard = format!("{i}/3");
        let out = fashion(
            &["classify", "--format", "jsonl", "--shard", &shard, d],
            None,
        );
        all.extend(
            jsonl(&out)
                .into_iter()
                .map(|r| r["path"].as_str().unwrap().to_string()),
        );
    }
    all.sort();
    let whole: Vec<String> = {
        let out = fashion(&["classify", "--format", "jsonl", d], None);
        let mut v: Vec<String> = jsonl(&out)
            .into_iter()
            .map(|r| r["path"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(all, whole);
    let bad = fashion(&["classify", "--shard", "4/3", d], None);
    assert_eq!(bad.status.code(), Some(2));
}

/// Two products of three photos each, in folders named by product id, listed by a CSV.
fn catalogue() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let colours = [
        [31, 42, 68],
        [200, 16, 46],
        [46, 139, 62],
        [240, 200, 40],
        [20, 20, 20],
        [150, 80, 160],
    ];
    let mut csv = String::from("path,sku,category\n");
    for (i, c) in colours.iter().enumerate() {
        let product = if i < 3 { "p1" } else { "p2" };
        std::fs::create_dir_all(d.join(product)).unwrap();
        let rel = format!("{product}/{i}.png");
        garment(&d.join(&rel), *c);
        csv += &format!("{rel},{product},\n");
    }
    std::fs::write(d.join("photos.csv"), csv).unwrap();
    dir
}

/// The built-in model's log prior of a head (label -> value), read from its metadata; empty
/// when the head has none.
fn log_prior(head: &str) -> std::collections::BTreeMap<String, f64> {
    use protobuf::Message;
    let bytes = std::fs::read(repo_file("models/default.onnx")).unwrap();
    let model = onnx_protobuf::ModelProto::parse_from_bytes(&bytes).unwrap();
    let meta = model.metadata_props.iter().find(|p| p.key == "fashion");
    let info: serde_json::Value = serde_json::from_str(&meta.unwrap().value).unwrap();
    let h = info["heads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == head);
    let h = h.unwrap();
    let labels = h["labels"].as_array().unwrap();
    let prior = h["log_prior"].as_array().cloned().unwrap_or_default();
    labels
        .iter()
        .zip(prior)
        .map(|(l, p)| (l.as_str().unwrap().to_string(), p.as_f64().unwrap()))
        .collect()
}

#[test]
fn group_by_combines_each_products_photos_by_mean_probability() {
    let dir = catalogue();
    let d = dir.path();
    let products = d.join("products.jsonl");
    let out = fashion(
        &[
            "classify",
            "--format",
            "jsonl",
            "--top",
            "1000",
            "--group-by",
            "sku",
            "--products",
            products.to_str().unwrap(),
            d.join("photos.csv").to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = jsonl(&out);
    let paths: Vec<String> = rows
        .iter()
        .map(|r| r["path"].as_str().unwrap().to_string())
        .collect();
    let want: Vec<String> = (0..6)
        .map(|i| {
            let p = if i < 3 { "p1" } else { "p2" };
            d.join(format!("{p}/{i}.png")).display().to_string()
        })
        .collect();
    assert_eq!(paths, want, "CSV rows, in order, relative to the CSV");

    let text = std::fs::read_to_string(&products).unwrap();
    let got: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got.len(), 2);
    for (k, product) in got.iter().enumerate() {
        assert_eq!(product["product"], if k == 0 { "p1" } else { "p2" });
        assert_eq!(product["photos"], 3);
        // The mean of the three photos' full probability lists, computed here, each without
        // the head's log prior (p e^-prior, normalised).
        let prior = log_prior("category");
        let mine = &rows[3 * k..3 * k + 3];
        let mut mean: std::collections::BTreeMap<String, f64> = Default::default();
        for r in mine {
            let top = r["category"]["top"].as_array().unwrap();
            let raw: Vec<(String, f64)> = top
                .iter()
                .map(|t| {
                    let l = t["label"].as_str().unwrap().to_string();
                    let p = t["confidence"].as_f64().unwrap();
                    let w = (-prior.get(&l).copied().unwrap_or(0.0)).exp();
                    (l, p * w)
                })
                .collect();
            let sum: f64 = raw.iter().map(|(_, v)| v).sum();
            for (l, v) in raw {
                *mean.entry(l).or_default() += v / sum / 3.0;
            }
        }
        let (label, conf) = mean.iter().max_by(|a, b| a.1.total_cmp(b.1)).unwrap();
        assert_eq!(product["category"]["label"].as_str().unwrap(), label);
        assert!((product["category"]["confidence"].as_f64().unwrap() - conf).abs() < 1e-4);
        let disagree: Vec<&str> = product["disagree"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x["field"] == "category")
            .map(|x| x["path"].as_str().unwrap())
            .collect();
        let expected: Vec<&str> = mine
            .iter()
            .filter(|r| r["category"]["label"].as_str().unwrap() != label)
            .map(|r| r["path"].as_str().unwrap())
            .collect();
        assert_eq!(disagree, expected);
    }

    // A regular expression on the path groups the same way.
    let products2 = d.join("products2.jsonl");
    let out = fashion(
        &[
            "classify",
            "--group-by",
            "/(p[0-9])/",
            "--products",
            products2.to_str().unwrap(),
            d.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(0));
    let text2 = std::fs::read_to_string(&products2).unwrap();
    let ids: Vec<String> = text2
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["product"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(ids, ["p1", "p2"]);

    // Resumed: photos of the first run vote with what it wrote, and count once.
    let out = d.join("tags.jsonl");
    let first = fashion(
        &[
            "classify",
            "--out",
            out.to_str().unwrap(),
            d.join("p1").to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(first.status.code(), Some(0));
    let second = fashion(
        &[
            "classify",
            "--out",
            out.to_str().unwrap(),
            "--resume",
            "--group-by",
            "/(p[0-9])/",
            d.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(
        second.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let resumed = std::fs::read_to_string(d.join("tags.products.jsonl")).unwrap();
    let counts: Vec<(String, u64)> = resumed
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["product"].as_str().unwrap().to_string(),
                v["photos"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(counts, [("p1".to_string(), 3), ("p2".to_string(), 3)]);
}

#[test]
fn answers_and_products_never_replace_the_runs_own_files_and_default_apart() {
    let dir = catalogue();
    let d = dir.path();
    let csv = d.join("photos.csv");
    let listed = std::fs::read(&csv).unwrap();
    let tags = d.join("tags.jsonl");
    std::fs::write(&tags, "").unwrap();
    let labels = d.join("labels.csv");
    std::fs::write(&labels, "path,category\n").unwrap();
    let run = |extra: &[&str]| {
        let mut a = vec!["classify", "--group-by", "sku", csv.to_str().unwrap()];
        a.extend_from_slice(extra);
        fashion(&a, None)
    };
    let aliased = d.join("p1").join("..").join("photos.csv");
    let nowhere = d.join("no/such/p.jsonl");
    let refused: [(Vec<&str>, &str); 5] = [
        (
            vec![
                "--out",
                tags.to_str().unwrap(),
                "--resume",
                "--products",
                tags.to_str().unwrap(),
            ],
            "is --out",
        ),
        (vec!["--products", aliased.to_str().unwrap()], "is an input"),
        (
            vec!["--out", aliased.to_str().unwrap(), "--resume"],
            "is an input",
        ),
        (
            vec![
                "--labels",
                labels.to_str().unwrap(),
                "--products",
                labels.to_str().unwrap(),
            ],
            "is --labels",
        ),
        (
            vec!["--products", nowhere.to_str().unwrap()],
            "does not exist",
        ),
    ];
    for (extra, why) in refused {
        let out = run(&extra);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains(why), "{extra:?}: {err}");
        // Refused before a photo is answered: nothing written, nothing replaced.
        assert!(out.stdout.is_empty(), "{extra:?}");
        assert_eq!(std::fs::read(&csv).unwrap(), listed);
        assert_eq!(std::fs::read_to_string(&tags).unwrap(), "");
        assert_eq!(std::fs::read_to_string(&labels).unwrap(), "path,category\n");
    }
    std::fs::remove_file(&tags).unwrap();

    // Runs into tags.jsonl and tags.csv keep their products apart.
    for (out, products) in [
        ("tags.jsonl", "tags.products.jsonl"),
        ("tags.csv", "tags.csv.products.jsonl"),
    ] {
        let r = run(&["--out", d.join(out).to_str().unwrap()]);
        assert_eq!(
            r.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&r.stderr)
        );
        let text = std::fs::read_to_string(d.join(products)).unwrap();
        assert_eq!(text.lines().count(), 2, "{products}");
    }
    assert!(d.join("tags.products.jsonl").exists());
}

#[test]
fn a_reader_that_goes_away_stops_the_run_quietly() {
    use std::io::BufRead;
    // 40 answers of about 5 kB each: more than a pipe holds, so the run writes after the
    // reader has gone.
    let photo = repo_file("samples/dress-red.jpg");
    let list = format!("{}\n", photo.display()).repeat(40);
    let mut child = Command::new(env!("CARGO_BIN_EXE_fashion"))
        .args(["classify", "-", "--format", "jsonl", "--top", "1000"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(list.as_bytes())
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.contains("dress-red.jpg"), "{first}");
    // The reader is dropped here, as `| head -1` would.
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "{err}");
    assert!(!err.contains("error"), "{err}");
}

#[test]
fn eval_says_how_many_photos_its_split_measures() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Class folders without `val/`: 1 photo in 10 is validation, by a hash of its name.
    for (class, colour) in [("Jeans", [31, 42, 68]), ("Dresses", [200, 16, 46])] {
        std::fs::create_dir(d.join(class)).unwrap();
        for i in 0..15 {
            garment(&d.join(class).join(format!("{i}.png")), colour);
        }
    }
    let eval = |extra: &[&str]| {
        let mut a = vec!["eval", "--data", d.to_str().unwrap(), "--layout", "folders"];
        a.extend_from_slice(extra);
        fashion(&a, None)
    };
    let val = eval(&[]);
    let err = String::from_utf8_lossy(&val.stderr);
    assert_eq!(val.status.code(), Some(0), "{err}");
    let said = err
        .lines()
        .find_map(|l| l.strip_prefix("measuring the "))
        .unwrap_or_else(|| panic!("{err}"));
    let n: usize = said.split(' ').next().unwrap().parse().unwrap();
    assert!((1..30).contains(&n), "{said}");
    assert!(
        said.ends_with("of 30 (--split all measures every photo)"),
        "{said}"
    );
    let report = String::from_utf8_lossy(&val.stdout);
    assert!(
        report.contains(&format!("{n} photos, 0 failed")),
        "{report}"
    );
    let all = eval(&["--split", "all"]);
    assert_eq!(all.status.code(), Some(0));
    assert!(!String::from_utf8_lossy(&all.stderr).contains("measuring"));
    assert!(String::from_utf8_lossy(&all.stdout).contains("30 photos, 0 failed"));
    // A split without photos is refused with the way out.
    std::fs::create_dir_all(d.join("train/Jeans")).unwrap();
    std::fs::create_dir_all(d.join("val/Jeans")).unwrap();
    garment(&d.join("train/Jeans/0.png"), [31, 42, 68]);
    let none = eval(&[]);
    let err = String::from_utf8_lossy(&none.stderr);
    assert_eq!(none.status.code(), Some(2), "{err}");
    assert!(
        err.contains("no photos in its val split of 1: --split all"),
        "{err}"
    );
}

#[test]
fn labels_flag_only_the_rows_the_model_contradicts() {
    let dir = catalogue();
    let d = dir.path();
    let first = fashion(
        &[
            "classify",
            "--format",
            "jsonl",
            d.join("p1").to_str().unwrap(),
        ],
        None,
    );
    let rows = jsonl(&first);
    assert_eq!(rows.len(), 3);
    // Row 0 keeps the model's own answer; row 1 gets a label the model ranks last.
    let own = rows[0]["category"]["label"].as_str().unwrap().to_string();
    let all = fashion(
        &[
            "classify",
            "--format",
            "jsonl",
            "--top",
            "1000",
            d.join("p1/1.png").to_str().unwrap(),
        ],
        None,
    );
    let worst = jsonl(&all)[0]["category"]["top"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()["label"]
        .as_str()
        .unwrap()
        .to_string();
    let labels = d.join("labels.csv");
    std::fs::write(
        &labels,
        format!("path,category\np1/0.png,{own}\np1/1.png,{worst}\n"),
    )
    .unwrap();
    let check = |confidence: &str| {
        fashion(
            &[
                "classify",
                "--format",
                "jsonl",
                "--labels",
                labels.to_str().unwrap(),
                "--contradict-confidence",
                confidence,
                d.join("p1").to_str().unwrap(),
            ],
            None,
        )
    };
    let out = check("0");
    assert_eq!(out.status.code(), Some(0));
    let rows = jsonl(&out);
    assert!(
        rows[0].get("flags").is_none(),
        "the model agrees with row 0"
    );
    let flags = rows[1]["flags"].as_array().unwrap();
    assert_eq!(flags.len(), 1);
    assert_eq!(flags[0]["field"], "category");
    assert_eq!(flags[0]["given"].as_str().unwrap(), worst);
    assert!(rows[2].get("flags").is_none(), "no label given for row 2");
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 photos have a catalogue label"));

    // A confidence threshold above the model's answer flags nothing.
    assert!(jsonl(&check("1")).iter().all(|r| r.get("flags").is_none()));

    // A labels file with no column the model knows is refused.
    std::fs::write(&labels, "path,price\np1/0.png,10\n").unwrap();
    let out = fashion(
        &[
            "classify",
            "--labels",
            labels.to_str().unwrap(),
            d.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no column is named after"));
}

#[test]
fn explain_writes_a_colour_sheet_per_good_photo() {
    let dir = photo_folder();
    let sheets = tempfile::tempdir().unwrap();
    let out = fashion(
        &[
            "classify",
            "--format",
            "jsonl",
            "--explain",
            sheets.path().to_str().unwrap(),
            dir.path().to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1), "two bad photos in the folder");
    let rows = jsonl(&out);
    let mut names: Vec<String> = std::fs::read_dir(sheets.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    // Input order: empty.jpg, navy.png, nested/green.png, notes.jpg, red.jpg (walk is sorted).
    let good: Vec<(usize, &serde_json::Value)> = rows
        .iter()
        .enumerate()
        .filter(|(_, r)| r.get("error").is_none())
        .collect();
    let want: Vec<String> = good
        .iter()
        .map(|(i, r)| {
            let stem = Path::new(r["path"].as_str().unwrap())
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            format!("{i:06}-{stem}.png")
        })
        .collect();
    assert_eq!(names, want);
    let (i, navy) = good
        .iter()
        .find(|(_, r)| r["path"].as_str().unwrap().ends_with("navy.png"))
        .unwrap();
    let sheet = image::open(sheets.path().join(format!("{i:06}-navy.png")))
        .unwrap()
        .to_rgb8();
    assert_eq!(sheet.height(), 224);
    // Right column: the first swatch's colour, as the JSON says.
    let hex = navy["colour"]["palette"][0]["hex"].as_str().unwrap();
    let px = sheet.get_pixel(sheet.width() - 5, 5).0;
    assert_eq!(format!("#{:02x}{:02x}{:02x}", px[0], px[1], px[2]), hex);
    // Middle panel: the garment (centre) kept, the background (corner) faded to near white.
    let centre = sheet.get_pixel(224 + 8 + 112, 112).0;
    assert!(centre.iter().all(|&c| c < 90), "{centre:?}");
    let corner = sheet.get_pixel(224 + 8 + 3, 3).0;
    assert!(corner.iter().all(|&c| c > 240), "{corner:?}");
}

/// `fashion classify --format jsonl --top 1000 [extra...] photo`: its one record.
fn classify_one(photo: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["classify", "--format", "jsonl", "--top", "1000"];
    args.extend(extra);
    args.push(photo.to_str().unwrap());
    let out = fashion(&args, None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    jsonl(&out).remove(0)
}

/// The probability of every label of every head of one photo, in label order.
fn probabilities(row: &serde_json::Value) -> Vec<f64> {
    let mut all: Vec<(String, f64)> = ["category", "view", "article_type", "colour_family"]
        .iter()
        .filter_map(|h| Some((h, row[h]["top"].as_array()?)))
        .flat_map(|(h, top)| {
            top.iter().map(move |c| {
                let label = c["label"].as_str().unwrap();
                (format!("{h}/{label}"), c["confidence"].as_f64().unwrap())
            })
        })
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all.into_iter().map(|(_, p)| p).collect()
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn fit_decides_how_a_photo_that_is_not_square_is_seen() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sample = repo_file("samples/dress-red.jpg");
    let tall = image::open(&sample).unwrap().to_rgb8(); // 600x800
    let (w, h) = tall.dimensions();
    tall.save(d.join("tall.png")).unwrap();
    // The squares each fit should turn it into: padded with its edge colour, stretched, and
    // its centre square.
    let edge = *tall.get_pixel(0, h / 2);
    let mut padded = image::RgbImage::from_pixel(h, h, edge);
    image::imageops::replace(&mut padded, &tall, i64::from((h - w) / 2), 0);
    padded.save(d.join("padded.png")).unwrap();
    image::imageops::resize(&tall, h, h, image::imageops::FilterType::Triangle)
        .save(d.join("squashed.png"))
        .unwrap();
    image::imageops::crop_imm(&tall, 0, (h - w) / 2, w, w)
        .to_image()
        .save(d.join("centre.png"))
        .unwrap();
    let run = |fit: Option<&str>, name: &str| -> Vec<f64> {
        let extra: Vec<&str> = fit.map(|f| vec!["--fit", f]).unwrap_or_default();
        probabilities(&classify_one(&d.join(name), &extra))
    };
    let default = run(None, "tall.png");
    let pad = run(Some("pad"), "tall.png");
    let squash = run(Some("squash"), "tall.png");
    let crop = run(Some("crop"), "tall.png");
    // The built-in model pads.
    assert_eq!(default, pad);
    // Each fit sees what its square shows (up to resampling), and the three differ.
    for (got, square) in [
        (&pad, "padded.png"),
        (&squash, "squashed.png"),
        (&crop, "centre.png"),
    ] {
        let want = run(None, square);
        let diff = max_diff(got, &want);
        eprintln!("{square}: max difference {diff:.4}");
        assert!(diff < 0.05, "{square}: {diff}");
    }
    eprintln!(
        "between fits: {:.3} {:.3} {:.3}",
        max_diff(&pad, &squash),
        max_diff(&pad, &crop),
        max_diff(&squash, &crop)
    );
    assert!(max_diff(&pad, &squash) > 0.1);
    assert!(max_diff(&pad, &crop) > 0.1);
    assert!(max_diff(&squash, &crop) > 0.1);
    let out = fashion(&["classify", "--fit", "stretch", "x.jpg"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not one of pad, squash, crop"));
}

#[test]
fn the_built_in_model_averages_the_crop_and_the_mirrored_whole_square_and_fast_takes_one_look() {
    check_two_looks(None, 2e-3);
}

#[test]
fn the_int8_variant_keeps_both_looks_and_fast_takes_one() {
    // Quantised activations turn the second look's rounding to whole pixel values into
    // slightly larger steps than in float.
    check_two_looks(Some(&repo_file("models/default-int8.onnx")), 2e-2);
}

#[test]
fn int8_runs_the_compiled_in_copy_of_the_int8_file() {
    let photo = repo_file("samples/tee-navy.jpg");
    let built_in = classify_one(&photo, &["--int8"]);
    let file = repo_file("models/default-int8.onnx");
    assert_eq!(
        built_in,
        classify_one(&photo, &["--model", file.to_str().unwrap()])
    );
    // Not the float model's answer.
    let float = classify_one(&photo, &[]);
    assert!(max_diff(&probabilities(&built_in), &probabilities(&float)) > 1e-4);
    let out = fashion(
        &[
            "classify",
            "--int8",
            "--model",
            file.to_str().unwrap(),
            photo.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used with"));
}

/// A file of this repository, by its path from the repository's root.
fn repo_file(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

/// Classifies a photo with the default look, with `--fast`, and with `--fast` on a photo whose
/// centre crop is exactly the model's second look at the first photo: the default must be the
/// mean of the two single looks, to `tolerance`.
fn check_two_looks(model: Option<&Path>, tolerance: f64) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sample = repo_file("samples/dress-red.jpg");
    // 256x256 needs no resizing: the model's square is the photo itself.
    let photo = image::open(&sample)
        .unwrap()
        .resize_exact(256, 256, image::imageops::FilterType::Triangle)
        .to_rgb8();
    photo.save(d.join("photo.png")).unwrap();
    // The second look as a photo of its own: the square shrunk to 224x224 (linear
    // interpolation, half-pixel centres), mirrored, framed by 16 grey pixels so that the
    // single look's centre crop is exactly it.
    let at = |o: u32| {
        let x = ((f64::from(o) + 0.5) * 256.0 / 224.0 - 0.5).clamp(0.0, 255.0);
        let i = x.floor() as u32;
        (i, (i + 1).min(255), x - f64::from(i))
    };
    let mut second = image::RgbImage::from_pixel(256, 256, image::Rgb([128, 128, 128]));
    for y in 0..224 {
        for x in 0..224 {
            let ((y0, y1, fy), (x0, x1, fx)) = (at(y), at(223 - x));
            let mut px = [0u8; 3];
            for (c, v) in px.iter_mut().enumerate() {
                let p = |xx: u32, yy: u32| f64::from(photo.get_pixel(xx, yy).0[c]);
                let top = p(x0, y0) * (1.0 - fx) + p(x1, y0) * fx;
                let bottom = p(x0, y1) * (1.0 - fx) + p(x1, y1) * fx;
                *v = (top * (1.0 - fy) + bottom * fy).round() as u8;
            }
            second.put_pixel(x + 16, y + 16, image::Rgb(px));
        }
    }
    second.save(d.join("second.png")).unwrap();
    let run = |fast: bool, name: &str| -> serde_json::Value {
        let mut extra = Vec::new();
        if let Some(m) = model {
            extra.extend(["--model", m.to_str().unwrap()]);
        }
        if fast {
            extra.push("--fast");
        }
        classify_one(&d.join(name), &extra)
    };
    let (both, one, other) = (
        run(false, "photo.png"),
        run(true, "photo.png"),
        run(true, "second.png"),
    );
    // The colour family is also voted on by the pixels, so only the model's own heads are
    // compared.
    let probs = |row: &serde_json::Value| -> Vec<f64> {
        let mut r = row.clone();
        r.as_object_mut().unwrap().remove("colour_family");
        probabilities(&r)
    };
    let mean: Vec<f64> = probs(&one)
        .iter()
        .zip(probs(&other))
        .map(|(a, b)| (a + b) / 2.0)
        .collect();
    // The second look's photo is rounded to whole pixel values; the model's is not.
    let diff = max_diff(&probs(&both), &mean);
    assert!(
        diff < tolerance,
        "default vs mean of two single looks: {diff}"
    );
    // The two single looks disagree, so the mean is neither of them.
    let apart = max_diff(&probs(&one), &probs(&other));
    eprintln!("mean off by {diff:.5}, looks {apart:.3} apart");
    assert!(
        apart > 10.0 * diff,
        "looks {apart} apart, mean off by {diff}"
    );
}

#[test]
fn only_pixel_colour_trains_that_head_and_keeps_the_rest_of_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let colours: [(&str, [u8; 3]); 4] = [
        ("red", [200, 16, 46]),
        ("blue", [30, 60, 200]),
        ("green", [46, 139, 62]),
        ("black", [20, 20, 22]),
    ];
    let mut csv = String::from("path,colour_family,split\n");
    for (name, rgb) in colours {
        for i in 0..3u8 {
            let file = format!("{name}{i}.png");
            let shade = rgb.map(|v| v.saturating_add(8 * i));
            garment(&d.join(&file), shade);
            let split = if i == 2 { "val" } else { "train" };
            csv.push_str(&format!("{file},{name},{split}\n"));
        }
    }
    std::fs::write(d.join("colours.csv"), csv).unwrap();
    let shipped = repo_file("models/default.onnx");
    // `fashion train --only-pixel-colour` on these photos into `out`, with `extra` arguments;
    // it must succeed.
    let train = |csv: &Path, extra: &[&str], out: &Path| {
        let cache = d.join("cache");
        let mut args = vec![
            "train",
            "--csv",
            csv.to_str().unwrap(),
            "--backbone",
            shipped.to_str().unwrap(),
            "--only-pixel-colour",
            "--cache",
            cache.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let run = fashion(&args, None);
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        run
    };
    let out = d.join("out.onnx");
    // Default settings but for fewer drawn photos of vivid colours.
    let few_drawn = d.join("few-drawn.toml");
    std::fs::write(&few_drawn, "[pixel_colour]\nvivid_photos = 24\n").unwrap();
    let labels = d.join("colours.csv");
    let few = ["--config", few_drawn.to_str().unwrap()];
    let run = train(&labels, &few, &out);
    // The new head learned from these photos: 4 of them are validation photos. Its training
    // photos are the 8 others (300x400, so no portrait copies) and as many drawn ones, no more
    // than the labelled ones of the 24 asked for (those drawn square also as portraits).
    let bytes = std::fs::read(&out).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("\"garment_features\":true"));
    // The model records what the validation photos measured (a number after each key) ...
    let measured = |text: &str| {
        ["head", "pixels", "combined"].map(|k| {
            let key = format!("\"val_accuracy_{k}\":");
            let at = text.find(&key).expect("the summary has the key") + key.len();
            text[at..].starts_with(|c: char| c.is_ascii_digit())
        })
    };
    assert_eq!(measured(&text), [true; 3]);
    // ... and, trained without any, that nothing was measured (null, not an accuracy of 0).
    let unmeasured = d.join("unmeasured.onnx");
    let train_only = d.join("train-only.csv");
    let labels_text = std::fs::read_to_string(&labels).unwrap();
    std::fs::write(&train_only, labels_text.replace(",val\n", ",train\n")).unwrap();
    let run_unmeasured = train(&train_only, &few, &unmeasured);
    let text_unmeasured =
        String::from_utf8_lossy(&std::fs::read(&unmeasured).unwrap()).into_owned();
    assert_eq!(measured(&text_unmeasured), [false; 3]);
    assert!(String::from_utf8_lossy(&run_unmeasured.stderr)
        .contains("no validation photos: accuracy not measured"));
    let summary: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(summary["heads"]["pixel_colour"]["val_rows"], 4);
    let rows = summary["heads"]["pixel_colour"]["train_rows"]
        .as_u64()
        .unwrap();
    assert!((8 + 8..=8 + 16).contains(&rows), "{rows} training rows");
    assert!(String::from_utf8_lossy(&run.stderr).contains(
        "8 drawn photos of garments in vivid colours join the training photos \
         (no more than the labelled training photos)"
    ));
    // Everything else is the model it started from.
    let photo = d.join("blue1.png");
    let before = classify_one(&photo, &["--model", shipped.to_str().unwrap()]);
    let after = classify_one(&photo, &["--model", out.to_str().unwrap()]);
    // (category, view, article type: the colour family is no head of its own in the output.)
    let diff = max_diff(&probabilities(&before), &probabilities(&after));
    assert!(diff < 1e-6, "the other heads moved by {diff}");
    assert_eq!(before["category"]["top"].as_array().unwrap().len(), 30);
    // With the shipped config the head is boosted trees, without the colour_family head's vote
    // (here with fewer drawn photos).
    let trees_out = d.join("trees.onnx");
    let shipped_config = std::fs::read_to_string(repo_file("configs/default.toml")).unwrap();
    assert!(shipped_config.contains("\nvivid_photos = 1700\n"));
    let config = d.join("shipped.toml");
    std::fs::write(
        &config,
        shipped_config.replace("\nvivid_photos = 1700\n", "\nvivid_photos = 24\n"),
    )
    .unwrap();
    train(&labels, &["--config", config.to_str().unwrap()], &trees_out);
    let text = String::from_utf8_lossy(&std::fs::read(&trees_out).unwrap()).into_owned();
    assert!(text.contains("\"trees\":\"") && text.contains("\"head_weight\":0.0"));
    let trees = classify_one(&photo, &["--model", trees_out.to_str().unwrap()]);
    assert!(max_diff(&probabilities(&before), &probabilities(&trees)) < 1e-6);
    assert!(trees["colour"]["primary"]["family"].is_string());
    // A model file that is not one is refused with its name.
    std::fs::write(d.join("bad.onnx"), b"not a model").unwrap();
    let bad = fashion(
        &[
            "train",
            "--csv",
            d.join("colours.csv").to_str().unwrap(),
            "--backbone",
            d.join("bad.onnx").to_str().unwrap(),
            "--only-pixel-colour",
            "--output",
            d.join("never.onnx").to_str().unwrap(),
        ],
        None,
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("bad.onnx"));
    assert!(!d.join("never.onnx").exists());
}
