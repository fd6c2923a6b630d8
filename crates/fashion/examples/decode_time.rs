//! Decoding time of one photo: the library's decoder at full size and for a 256-pixel model input
//! (DCT-scaled or DC-only JPEG decoding), beside the `image` crate's full decode and a header read.
//!
//! cargo run --release --example decode_time -- PHOTO.jpg

use std::path::Path;
use std::time::Instant;

use fashion::image::{decode, DecodeOptions};

fn median_ms(mut f: impl FnMut()) -> f64 {
    let mut ts: Vec<f64> = (0..21)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ts.sort_by(f64::total_cmp);
    ts[ts.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: decode_time PHOTO")?;
    let bytes = std::fs::read(&path)?;
    let name = Path::new(&path);
    for (label, min_shorter_side) in [
        ("fashion, full size", 0),
        ("fashion, for a 256-pixel input", 256),
    ] {
        let opts = DecodeOptions {
            min_shorter_side,
            ..Default::default()
        };
        let size = decode(&bytes, name, &opts)?.dimensions();
        let ms = median_ms(|| {
            std::hint::black_box(decode(&bytes, name, &opts).ok());
        });
        println!("{label}: {ms:.2} ms -> {}x{}", size.0, size.1);
    }
    let ms = median_ms(|| {
        std::hint::black_box(image::load_from_memory(&bytes).ok());
    });
    println!("image crate, full size: {ms:.2} ms");
    let ms = median_ms(|| {
        let mut d = jpeg_decoder::Decoder::new(std::io::Cursor::new(&bytes));
        std::hint::black_box(d.read_info().ok());
    });
    println!("JPEG header only: {ms:.2} ms");
    Ok(())
}
