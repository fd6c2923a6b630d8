//! Every kind of bad photo gets its own clear error naming the file: never a panic or a hang.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use fashion::image::{load, DecodeOptions};
use image::{DynamicImage, ImageFormat, RgbImage};

fn encoded(format: ImageFormat) -> Vec<u8> {
    let img = RgbImage::from_fn(64, 48, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 5) as u8, 90])
    });
    let mut buf = Cursor::new(Vec::new());
    DynamicImage::ImageRgb8(img)
        .write_to(&mut buf, format)
        .unwrap();
    buf.into_inner()
}

fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut c = (data.len() as u32).to_be_bytes().to_vec();
    c.extend_from_slice(kind);
    c.extend_from_slice(data);
    let crc = crc32(&c[4..]);
    c.extend_from_slice(&crc.to_be_bytes());
    c
}

/// CRC-32 (IEEE), for building PNG chunks by hand in this test.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn png_with_header(w: u32, h: u32) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    v.extend(png_chunk(b"IHDR", &ihdr));
    v.extend(png_chunk(
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    ));
    v.extend(png_chunk(b"IEND", &[]));
    v
}

/// A JPEG whose frame header claims `w x h` pixels.
fn jpeg_with_size(w: u16, h: u16) -> Vec<u8> {
    let mut v = encoded(ImageFormat::Jpeg);
    let sof = v
        .windows(2)
        .position(|p| p == [0xff, 0xc0])
        .expect("baseline JPEG");
    v[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
    v[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
    v
}

struct Case {
    name: &'static str,
    kind: &'static str,
}

fn write_cases(dir: &Path) -> Vec<(PathBuf, Case)> {
    let jpeg = encoded(ImageFormat::Jpeg);
    let png = encoded(ImageFormat::Png);
    let mut bad_crc = png.clone();
    let n = bad_crc.len();
    bad_crc[n - 20] ^= 0xff; // inside the image data chunk
    let gif = encoded(ImageFormat::Gif);
    let mut gif_bomb = gif.clone();
    gif_bomb[6..10].copy_from_slice(&[0xff, 0xff, 0xff, 0xff]);
    let cases: Vec<(&'static str, Vec<u8>, &'static str)> = vec![
        ("empty.jpg", vec![], "empty"),
        ("truncated.jpg", jpeg[..jpeg.len() / 2].to_vec(), "corrupt"),
        ("soi_only.jpg", vec![0xff, 0xd8, 0xff], "corrupt"),
        (
            "soi_garbage.jpg",
            [&[0xff, 0xd8, 0xff, 0xe0][..], &[0x55; 300][..]].concat(),
            "corrupt",
        ),
        ("bad_crc.png", bad_crc, "corrupt"),
        ("truncated.png", png[..40].to_vec(), "corrupt"),
        ("zero_width.png", png_with_header(0, 10), "corrupt"),
        (
            "text.jpg",
            b"this is not a photo\n".to_vec(),
            "unknown_format",
        ),
        (
            "page.png",
            b"<!doctype html><html><body>hi</body></html>".to_vec(),
            "unknown_format",
        ),
        (
            "doc.jpg",
            b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj".to_vec(),
            "unknown_format",
        ),
        (
            "drawing.png",
            b"<svg xmlns=\"http://www.w3.org/2000/svg\"/>".to_vec(),
            "unknown_format",
        ),
        ("one_byte.jpg", vec![0xff], "unknown_format"),
        (
            "random.webp",
            (0..4096u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect(),
            "unknown_format",
        ),
        ("bomb.png", png_with_header(30000, 30000), "too_large"),
        ("strip.png", png_with_header(1, 5000), "bad_shape"),
        ("bomb.jpg", jpeg_with_size(60000, 60000), "too_large"),
        ("bomb.gif", gif_bomb, "too_large"),
        ("header_only.gif", b"GIF89a".to_vec(), "corrupt"),
        (
            "short.bmp",
            b"BM\x10\x00\x00\x00\x00\x00".to_vec(),
            "corrupt",
        ),
        (
            "header_only.tif",
            b"II*\x00\xff\xff\x00\x00".to_vec(),
            "corrupt",
        ),
        (
            "header_only.webp",
            b"RIFF\x10\x00\x00\x00WEBPVP8 ".to_vec(),
            "corrupt",
        ),
        ("truncated.gif", gif[..gif.len() / 2].to_vec(), "corrupt"),
    ];
    let mut out: Vec<(PathBuf, Case)> = cases
        .into_iter()
        .map(|(name, bytes, kind)| {
            let p = dir.join(name);
            std::fs::write(&p, bytes).unwrap();
            (p, Case { name, kind })
        })
        .collect();
    let d = dir.join("folder.jpg");
    std::fs::create_dir(&d).unwrap();
    out.push((
        d,
        Case {
            name: "folder.jpg",
            kind: "not_a_file",
        },
    ));
    out.push((
        dir.join("missing.jpg"),
        Case {
            name: "missing.jpg",
            kind: "unreadable",
        },
    ));
    let link = dir.join("dangling.jpg");
    std::os::unix::fs::symlink(dir.join("nowhere"), &link).unwrap();
    out.push((
        link,
        Case {
            name: "dangling.jpg",
            kind: "unreadable",
        },
    ));
    out
}

#[test]
fn each_bad_file_gets_its_own_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cases = write_cases(dir.path());
    assert!(cases.len() >= 20);
    let opts = DecodeOptions::default();
    let mut wrong = Vec::new();
    for (path, case) in &cases {
        match load(path, &opts) {
            Ok(img) => wrong.push(format!("{}: decoded as {:?}", case.name, img.dimensions())),
            Err(e) => {
                let msg = e.to_string();
                if e.kind() != case.kind || !msg.contains(case.name) {
                    wrong.push(format!(
                        "{}: expected {}, got {} ({msg})",
                        case.name,
                        case.kind,
                        e.kind()
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn good_files_of_every_format_decode() {
    let dir = tempfile::tempdir().unwrap();
    for (name, format) in [
        ("a.jpg", ImageFormat::Jpeg),
        ("a.png", ImageFormat::Png),
        ("a.webp", ImageFormat::WebP),
        ("a.gif", ImageFormat::Gif),
        ("a.bmp", ImageFormat::Bmp),
        ("a.tif", ImageFormat::Tiff),
    ] {
        let p = dir.path().join(name);
        std::fs::write(&p, encoded(format)).unwrap();
        let img = load(&p, &DecodeOptions::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(img.dimensions(), (64, 48), "{name}");
        // The top-right pixel is (252, 0, 90) in every format (lossy ones within a margin).
        let px = img.get_pixel(63, 0).0;
        assert!(
            (px[0] as i32 - 252).abs() < 40 && (px[2] as i32 - 90).abs() < 40,
            "{name}: {px:?}"
        );
    }
}

/// Inserts an EXIF APP1 segment with the given orientation after the JPEG's SOI marker.
fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = b"MM\x00\x2a\x00\x00\x00\x08".to_vec();
    tiff.extend_from_slice(&1u16.to_be_bytes()); // one IFD entry
    tiff.extend_from_slice(&0x0112u16.to_be_bytes()); // Orientation
    tiff.extend_from_slice(&3u16.to_be_bytes()); // SHORT
    tiff.extend_from_slice(&1u32.to_be_bytes());
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    let mut app1 = b"Exif\x00\x00".to_vec();
    app1.extend(tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xff, 0xe1]);
    out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    out.extend(app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

#[test]
fn exif_orientation_is_applied() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("rotated.jpg");
    // Orientation 6: the camera was turned; the stored 64x48 image is shown as 48x64.
    std::fs::write(&p, with_exif_orientation(&encoded(ImageFormat::Jpeg), 6)).unwrap();
    let img = load(&p, &DecodeOptions::default()).unwrap();
    assert_eq!(img.dimensions(), (48, 64));
}
