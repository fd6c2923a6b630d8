use std::time::Instant;
fn main() {
    let paths: Vec<std::path::PathBuf> = std::fs::read_to_string("/tmp/fpi1k.txt").unwrap().lines().take(320).map(Into::into).collect();
    let model = fashion::Model::load(std::path::Path::new("models/default.onnx"), 2).unwrap();
    let c = fashion::Classifier::new(model, Default::default(), Default::default());
    let pre = c.model.info.preprocess.clone();
    let t = Instant::now();
    let crops: Vec<_> = paths.iter().map(|p| pre.load(p, 1<<28).unwrap()).collect();
    println!("decode+resize {:.3} ms/photo", t.elapsed().as_secs_f64()*1e3/320.0);
    let t = Instant::now();
    for img in &crops { std::hint::black_box(fashion::colour::garment_palette(img, &c.vocabulary, 5, 0.05)); }
    println!("palette {:.3} ms/photo", t.elapsed().as_secs_f64()*1e3/320.0);
    parts(&crops, &c.vocabulary);
    let t = Instant::now();
    let bytes: Vec<Vec<u8>> = paths.iter().map(|p| std::fs::read(p).unwrap()).collect();
    println!("read {:.3} ms/photo", t.elapsed().as_secs_f64()*1e3/320.0);
    let t = Instant::now();
    for b in &bytes { std::hint::black_box(fashion::image::decode(b, std::path::Path::new("x"), &Default::default()).unwrap()); }
    println!("decode only {:.3} ms/photo", t.elapsed().as_secs_f64()*1e3/320.0);
}
#[allow(dead_code)]
fn parts(crops: &[image::RgbImage], voc: &fashion::colour::Vocabulary) {
    let t = Instant::now();
    let th: Vec<_> = crops.iter().map(|img| image::imageops::thumbnail(img, 56, 56)).collect();
    println!("thumb {:.3}", t.elapsed().as_secs_f64()*1e3/320.0);
    let t = Instant::now();
    let px: Vec<_> = th.iter().map(|i| fashion::colour::garment_pixels(i)).collect();
    println!("garment_pixels {:.3}", t.elapsed().as_secs_f64()*1e3/320.0);
    let t = Instant::now();
    for p in &px { std::hint::black_box(fashion::colour::palette(p, voc, 5, 0.05)); }
    println!("kmeans {:.3}", t.elapsed().as_secs_f64()*1e3/320.0);
}
