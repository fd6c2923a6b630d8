//! Any bytes through the decode path (format sniffing, decoding, orientation, resize and crop)
//! must give an image or an error, never a panic, a hang or an unbounded allocation.
#![no_main]

use std::path::Path;

use fashion::image::{decode, DecodeOptions};
use fashion::Preprocess;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let opts = DecodeOptions {
        max_pixels: 4_000_000,
        // Small enough that progressive JPEGs of a few hundred pixels take the DC-only path.
        min_shorter_side: 16,
    };
    if let Ok(img) = decode(data, Path::new("fuzz"), &opts) {
        let _ = Preprocess::default().resize_and_crop(&img);
    }
});
