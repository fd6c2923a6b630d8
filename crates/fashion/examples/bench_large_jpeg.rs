//! Benchmark: classifying one large catalogue JPEG against classifying its small copy, side by
//! side in one run (the ratio is what counts; absolute times depend on the machine).
//!
//! cargo run --release --example bench_large_jpeg -- MODEL.onnx LARGE.jpg SMALL.jpg [ROUNDS]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use fashion::colour::Vocabulary;
use fashion::{Classifier, ClassifyOptions, Model};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        return Err("usage: bench_large_jpeg MODEL.onnx LARGE.jpg SMALL.jpg [ROUNDS]".into());
    }
    let rounds: usize = args.get(3).map(|r| r.parse()).transpose()?.unwrap_or(30);
    let model = Model::load(&PathBuf::from(&args[0]), fashion::Threads::single(0))?;
    let c = Classifier::new(model, Vocabulary::default(), ClassifyOptions::default());
    let large = vec![PathBuf::from(&args[1])];
    let small = vec![PathBuf::from(&args[2])];
    for p in [&large, &small] {
        c.classify_paths(p).pop().ok_or("no result")??; // warm up, and fail on a bad photo
    }
    let (mut t_large, mut t_small) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        for (paths, times) in [(&large, &mut t_large), (&small, &mut t_small)] {
            let t = Instant::now();
            c.classify_paths(paths);
            times.push(t.elapsed());
        }
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64() * 1e3
    };
    let (l, s) = (median(&mut t_large), median(&mut t_small));
    println!(
        "large {}: {l:.1} ms per photo (median of {rounds})",
        args[1]
    );
    println!(
        "small {}: {s:.1} ms per photo (median of {rounds})",
        args[2]
    );
    println!("ratio large/small: {:.2}", l / s);
    Ok(())
}
