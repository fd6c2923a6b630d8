fn main() {
    let p = std::env::args().nth(1).unwrap();
    let bytes = std::fs::read(&p).unwrap();
    for (name, scale) in [("jpeg-decoder full", 0u32), ("jpeg-decoder scaled", 256)] {
        let mut ts = Vec::new();
        for _ in 0..15 {
            let t = std::time::Instant::now();
            let img = fashion::image::decode(
                &bytes,
                std::path::Path::new(&p),
                &fashion::image::DecodeOptions {
                    min_shorter_side: scale,
                    ..Default::default()
                },
            )
            .unwrap();
            ts.push(t.elapsed().as_secs_f64() * 1e3);
            std::hint::black_box(img);
        }
        ts.sort_by(f64::total_cmp);
        println!("{name}: {:.1} ms", ts[7]);
    }
    let mut ts = Vec::new();
    for _ in 0..15 {
        let t = std::time::Instant::now();
        let img = image::load_from_memory_with_format(&bytes, image::ImageFormat::Jpeg).unwrap();
        ts.push(t.elapsed().as_secs_f64() * 1e3);
        std::hint::black_box(img);
    }
    ts.sort_by(f64::total_cmp);
    println!("zune-jpeg (image crate) full: {:.1} ms", ts[7]);
}
