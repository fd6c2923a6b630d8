//! 1/8-scale decoding of progressive JPEGs from their DC coefficients alone.
//!
//! A progressive JPEG stores the DC coefficient of every 8x8 block (the block's mean) in its
//! first scans, before any detail. Reading only those scans gives the photo at 1/8 scale,
//! averaged over each block, for a small fraction of the cost of a full decode: a 1800x2400
//! catalogue photo becomes 225x300 without touching the AC scans that hold most of the bytes.
//! No Rust JPEG decoder offers this (`jpeg-decoder` scales baseline JPEGs only after decoding
//! every coefficient), so it is written here; it covers 8-bit Huffman-coded progressive JPEGs
//! with one (grey) or three (YCbCr, or RGB by Adobe marker) components and any sampling
//! factors, and returns `None` for anything else so the caller decodes in full.

use image::{GrayImage, Rgb, RgbImage};

/// A canonical Huffman table (JPEG spec, annex F.2.2.3).
#[derive(Clone, Default)]
struct Huffman {
    maxcode: [i32; 18],
    mincode: [i32; 17],
    valptr: [i32; 17],
    values: Vec<u8>,
}

impl Huffman {
    fn new(bits: &[u8; 16], values: Vec<u8>) -> Option<Self> {
        let mut h = Huffman {
            maxcode: [-1; 18],
            values,
            ..Default::default()
        };
        let (mut code, mut k) = (0i32, 0i32);
        for l in 1..=16 {
            let n = i32::from(bits[l - 1]);
            if n > 0 {
                h.valptr[l] = k;
                h.mincode[l] = code;
                code += n;
                k += n;
                h.maxcode[l] = code - 1;
            }
            if code > (1 << l) {
                return None;
            }
            code <<= 1;
        }
        h.maxcode[17] = i32::MAX;
        (k as usize == h.values.len()).then_some(h)
    }
}

struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
    buf: u32,
    count: u32,
}

impl<'a> Bits<'a> {
    fn new(data: &'a [u8], pos: usize) -> Self {
        Bits {
            data,
            pos,
            buf: 0,
            count: 0,
        }
    }

    /// One bit; past the end of the entropy-coded data (a marker), zeros.
    fn bit(&mut self) -> u32 {
        if self.count == 0 {
            let b = self.data.get(self.pos).copied().unwrap_or(0xff);
            if b == 0xff {
                match self.data.get(self.pos + 1) {
                    Some(0x00) => {
                        self.pos += 2;
                        self.buf = 0xff;
                    }
                    _ => self.buf = 0, // a marker: stay on it
                }
            } else {
                self.pos += 1;
                self.buf = u32::from(b);
            }
            self.count = 8;
        }
        self.count -= 1;
        (self.buf >> self.count) & 1
    }

    fn bits(&mut self, n: u32) -> u32 {
        (0..n).fold(0, |v, _| (v << 1) | self.bit())
    }

    fn decode(&mut self, h: &Huffman) -> Option<u8> {
        let mut code = self.bit() as i32;
        let mut l = 1;
        while code > h.maxcode[l] {
            l += 1;
            if l > 16 {
                return None;
            }
            code = (code << 1) | self.bit() as i32;
        }
        let i = h.valptr[l] + code - h.mincode[l];
        h.values.get(usize::try_from(i).ok()?).copied()
    }

    /// Skips to the next byte boundary and over an RSTn marker there.
    fn restart(&mut self) {
        self.count = 0;
        if self.data.get(self.pos) == Some(&0xff)
            && self
                .data
                .get(self.pos + 1)
                .is_some_and(|m| (0xd0..=0xd7).contains(m))
        {
            self.pos += 2;
        }
    }
}

fn extend(v: u32, s: u32) -> i32 {
    if s == 0 {
        0
    } else if v < (1 << (s - 1)) {
        v as i32 - (1 << s) + 1
    } else {
        v as i32
    }
}

struct Component {
    id: u8,
    h: usize,
    v: usize,
    tq: usize,
    /// DC coefficients, `bw x bh` blocks (padded to whole MCUs).
    dc: Vec<i32>,
    bw: usize,
    bh: usize,
    /// Blocks that hold image data (what a non-interleaved scan covers).
    used_w: usize,
    used_h: usize,
    seen_first: bool,
}

fn u16_at(d: &[u8], i: usize) -> Option<usize> {
    Some(usize::from(u16::from_be_bytes([
        *d.get(i)?,
        *d.get(i + 1)?,
    ])))
}

/// Position of the next marker (other than RSTn and byte stuffing) at or after `pos`.
fn next_marker(d: &[u8], mut pos: usize) -> usize {
    while pos + 1 < d.len() {
        if d[pos] == 0xff
            && d[pos + 1] != 0
            && !(0xd0..=0xd7).contains(&d[pos + 1])
            && d[pos + 1] != 0xff
        {
            return pos;
        }
        pos += 1;
    }
    d.len()
}

/// Decodes a progressive JPEG at 1/8 scale. `None`: not a progressive JPEG this decoder covers
/// (or damaged); decode it in full instead.
pub(crate) fn decode_dc(d: &[u8]) -> Option<RgbImage> {
    if d.get(..2)? != [0xff, 0xd8] {
        return None;
    }
    let mut pos = 2;
    let mut qt = [[0u16; 1]; 4];
    let mut dc_tables: [Option<Huffman>; 4] = Default::default();
    let mut comps: Vec<Component> = Vec::new();
    let (mut width, mut height) = (0usize, 0usize);
    let (mut hmax, mut vmax) = (1usize, 1usize);
    let mut restart_interval = 0usize;
    let mut adobe_rgb = false;
    loop {
        while d.get(pos) == Some(&0xff) && d.get(pos + 1) == Some(&0xff) {
            pos += 1;
        }
        if d.get(pos) != Some(&0xff) {
            return None;
        }
        let marker = *d.get(pos + 1)?;
        pos += 2;
        match marker {
            0xd9 => break, // EOI
            0xd0..=0xd8 | 0x01 => continue,
            _ => {}
        }
        let len = u16_at(d, pos)?;
        let seg = d.get(pos + 2..pos + len)?;
        match marker {
            0xc2 => {
                if seg.first() != Some(&8) || !comps.is_empty() {
                    return None;
                }
                height = u16_at(seg, 1)?;
                width = u16_at(seg, 3)?;
                let n = usize::from(*seg.get(5)?);
                if width == 0 || height == 0 || !(n == 1 || n == 3) {
                    return None;
                }
                for i in 0..n {
                    let c = seg.get(6 + 3 * i..9 + 3 * i)?;
                    let (h, v, tq) = (
                        usize::from(c[1] >> 4),
                        usize::from(c[1] & 15),
                        usize::from(c[2]),
                    );
                    if !(1..=4).contains(&h) || !(1..=4).contains(&v) || tq > 3 {
                        return None;
                    }
                    comps.push(Component {
                        id: c[0],
                        h,
                        v,
                        tq,
                        dc: Vec::new(),
                        bw: 0,
                        bh: 0,
                        used_w: 0,
                        used_h: 0,
                        seen_first: false,
                    });
                }
                hmax = comps.iter().map(|c| c.h).max()?;
                vmax = comps.iter().map(|c| c.v).max()?;
                let (mcux, mcuy) = (width.div_ceil(8 * hmax), height.div_ceil(8 * vmax));
                for c in &mut comps {
                    c.bw = mcux * c.h;
                    c.bh = mcuy * c.v;
                    c.used_w = (width * c.h).div_ceil(hmax).div_ceil(8);
                    c.used_h = (height * c.v).div_ceil(vmax).div_ceil(8);
                    c.dc = vec![0; c.bw * c.bh];
                }
            }
            0xc0 | 0xc1 | 0xc3 | 0xc5..=0xc7 | 0xc9..=0xcb | 0xcd..=0xcf => return None,
            0xc4 => {
                let mut i = 0;
                while i < seg.len() {
                    let tc_th = seg[i];
                    let bits: [u8; 16] = seg.get(i + 1..i + 17)?.try_into().ok()?;
                    let n: usize = bits.iter().map(|&b| usize::from(b)).sum();
                    let values = seg.get(i + 17..i + 17 + n)?.to_vec();
                    if tc_th >> 4 == 0 {
                        *dc_tables.get_mut(usize::from(tc_th & 15))? =
                            Some(Huffman::new(&bits, values)?);
                    }
                    i += 17 + n;
                }
            }
            0xdb => {
                let mut i = 0;
                while i < seg.len() {
                    let (pq, tq) = (seg[i] >> 4, usize::from(seg[i] & 15));
                    let q0 = if pq == 0 {
                        u16::from(*seg.get(i + 1)?)
                    } else {
                        u16_at(seg, i + 1)? as u16
                    };
                    qt.get_mut(tq)?[0] = q0;
                    i += 1 + 64 * (usize::from(pq) + 1);
                }
            }
            0xdd => restart_interval = u16_at(seg, 0)?,
            // Adobe: transform 0 means the three components are RGB, not YCbCr.
            0xee if seg.get(..5) == Some(b"Adobe") && seg.get(11) == Some(&0) => adobe_rgb = true,
            0xda => {
                let ns = usize::from(*seg.first()?);
                let mut members = Vec::with_capacity(ns);
                for i in 0..ns {
                    let id = *seg.get(1 + 2 * i)?;
                    let td = usize::from(*seg.get(2 + 2 * i)? >> 4);
                    members.push((comps.iter().position(|c| c.id == id)?, td));
                }
                let (ss, se, a) = (
                    *seg.get(1 + 2 * ns)?,
                    *seg.get(2 + 2 * ns)?,
                    *seg.get(3 + 2 * ns)?,
                );
                let (ah, al) = (a >> 4, u32::from(a & 15));
                let data_start = pos + len;
                let end = if ss == 0 && se == 0 && !members.is_empty() {
                    dc_scan(
                        d,
                        data_start,
                        &mut comps,
                        &members,
                        &dc_tables,
                        ah,
                        al,
                        restart_interval,
                        hmax,
                        vmax,
                        width,
                        height,
                    )?
                } else {
                    next_marker(d, data_start)
                };
                pos = end;
                continue;
            }
            _ => {}
        }
        pos += len;
    }
    if comps.is_empty() || comps.iter().any(|c| !c.seen_first) {
        return None;
    }
    // Each DC value is the block's mean: coefficient x quantiser / 8, level-shifted by 128.
    let (w, h) = (width.div_ceil(8), height.div_ceil(8));
    let planes: Vec<GrayImage> = comps
        .iter()
        .map(|c| {
            let q = i32::from(qt[c.tq][0]);
            // A subsampled component's block covers several output pixels: interpolate
            // bilinearly between block centres, as a full decoder's upsampling does.
            let at = |bx: usize, by: usize| (c.dc[by * c.bw + bx] * q) as f32 / 8.0 + 128.0;
            let (sx, sy) = (c.h as f32 / hmax as f32, c.v as f32 / vmax as f32);
            let (lastx, lasty) = (c.used_w.min(c.bw) - 1, c.used_h.min(c.bh) - 1);
            GrayImage::from_fn(w as u32, h as u32, |x, y| {
                let fx = ((x as f32 + 0.5) * sx - 0.5).clamp(0.0, lastx as f32);
                let fy = ((y as f32 + 0.5) * sy - 0.5).clamp(0.0, lasty as f32);
                let (x0, y0) = (fx as usize, fy as usize);
                let (x1, y1) = ((x0 + 1).min(lastx), (y0 + 1).min(lasty));
                let (tx, ty) = (fx - x0 as f32, fy - y0 as f32);
                let top = at(x0, y0) * (1.0 - tx) + at(x1, y0) * tx;
                let bottom = at(x0, y1) * (1.0 - tx) + at(x1, y1) * tx;
                let v = top * (1.0 - ty) + bottom * ty;
                image::Luma([v.round().clamp(0.0, 255.0) as u8])
            })
        })
        .collect();
    Some(RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let p = |i: usize| f32::from(planes[i].get_pixel(x, y)[0]);
        if planes.len() == 1 {
            let g = planes[0].get_pixel(x, y)[0];
            return Rgb([g, g, g]);
        }
        if adobe_rgb {
            return Rgb([p(0) as u8, p(1) as u8, p(2) as u8]);
        }
        let (yy, cb, cr) = (p(0), p(1) - 128.0, p(2) - 128.0);
        let c = |v: f32| v.round().clamp(0.0, 255.0) as u8;
        Rgb([
            c(yy + 1.402 * cr),
            c(yy - 0.344_136 * cb - 0.714_136 * cr),
            c(yy + 1.772 * cb),
        ])
    }))
}

/// Decodes one DC scan (first pass or refinement); returns where the next marker starts.
#[allow(clippy::too_many_arguments)]
fn dc_scan(
    d: &[u8],
    start: usize,
    comps: &mut [Component],
    members: &[(usize, usize)],
    tables: &[Option<Huffman>; 4],
    ah: u8,
    al: u32,
    restart_interval: usize,
    hmax: usize,
    vmax: usize,
    width: usize,
    height: usize,
) -> Option<usize> {
    let mut bits = Bits::new(d, start);
    let mut pred = vec![0i32; members.len()];
    let interleaved = members.len() > 1;
    let (units_x, units_y) = if interleaved {
        (width.div_ceil(8 * hmax), height.div_ceil(8 * vmax))
    } else {
        let c = &comps[members[0].0];
        (c.used_w, c.used_h)
    };
    for (n, unit) in (0..units_x * units_y).enumerate() {
        if restart_interval > 0 && n > 0 && n % restart_interval == 0 {
            bits.restart();
            pred.iter_mut().for_each(|p| *p = 0);
        }
        let (ux, uy) = (unit % units_x, unit / units_x);
        for (m, &(ci, td)) in members.iter().enumerate() {
            let c = &mut comps[ci];
            let (bh_, bv_) = if interleaved { (c.h, c.v) } else { (1, 1) };
            for v in 0..bv_ {
                for h in 0..bh_ {
                    let (bx, by) = (ux * bh_ + h, uy * bv_ + v);
                    let idx = by * c.bw + bx;
                    if ah == 0 {
                        let s = u32::from(bits.decode(tables.get(td)?.as_ref()?)?);
                        if s > 11 {
                            return None;
                        }
                        pred[m] += extend(bits.bits(s), s);
                        *c.dc.get_mut(idx)? = pred[m] << al;
                    } else if bits.bit() == 1 {
                        *c.dc.get_mut(idx)? |= 1 << al;
                    }
                }
            }
            if ah == 0 {
                c.seen_first = true;
            }
        }
    }
    Some(next_marker(d, bits.pos))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The full decode (by the `image` crate) averaged over 8x8 blocks, against the DC decode.
    fn compare(name: &str) -> (f64, u8) {
        let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
        let bytes = std::fs::read(&path).unwrap();
        let dc = decode_dc(&bytes).unwrap_or_else(|| panic!("{name}: not decoded"));
        let full = image::load_from_memory(&bytes).unwrap().into_rgb8();
        assert_eq!(
            dc.dimensions(),
            (full.width().div_ceil(8), full.height().div_ceil(8))
        );
        let (mut sum, mut max, mut n) = (0u64, 0u8, 0u64);
        for by in 0..full.height() / 8 {
            for bx in 0..full.width() / 8 {
                for c in 0..3 {
                    let mut s = 0u32;
                    for y in 0..8 {
                        for x in 0..8 {
                            s += u32::from(full.get_pixel(bx * 8 + x, by * 8 + y)[c]);
                        }
                    }
                    let mean = ((s + 32) / 64) as u8;
                    let diff = mean.abs_diff(dc.get_pixel(bx, by)[c]);
                    sum += u64::from(diff);
                    max = max.max(diff);
                    n += 1;
                }
            }
        }
        (sum as f64 / n as f64, max)
    }

    #[test]
    fn dc_image_is_the_block_average_of_the_full_decode() {
        // 4:2:0 and 4:4:4 colour (Pillow), grey, and libjpeg's scan script with DC successive
        // approximation and a restart marker after every MCU row (cjpeg -progressive -restart 1).
        // Full-resolution chroma (4:4:4, grey) must match to rounding; 4:2:0 chroma is stored at
        // half resolution, so blocks on sharp colour edges differ more.
        for (name, mean_limit, max_limit) in [
            ("progressive-444.jpg", 0.5, 3),
            ("progressive-grey.jpg", 0.5, 3),
            ("progressive-420.jpg", 3.0, 100),
            ("progressive-restart.jpg", 3.0, 100),
        ] {
            let (mean, max) = compare(name);
            assert!(mean < mean_limit, "{name}: mean difference {mean}");
            assert!(max <= max_limit, "{name}: max difference {max}");
        }
    }

    #[test]
    fn baseline_and_damaged_jpegs_are_left_to_the_full_decoder() {
        let img = RgbImage::from_pixel(32, 32, Rgb([10, 20, 30]));
        let mut baseline = std::io::Cursor::new(Vec::new());
        img.write_to(&mut baseline, image::ImageFormat::Jpeg)
            .unwrap();
        assert!(decode_dc(baseline.get_ref()).is_none());
        let path = format!(
            "{}/tests/data/progressive-420.jpg",
            env!("CARGO_MANIFEST_DIR")
        );
        let bytes = std::fs::read(path).unwrap();
        for cut in [3, 20, 200, 600] {
            // Cut inside the headers: not decodable; never a panic.
            assert!(decode_dc(&bytes[..cut]).is_none(), "cut at {cut}");
        }
        let mut flipped = bytes.clone();
        for b in flipped.iter_mut().skip(700).step_by(97) {
            *b ^= 0x5a;
        }
        let _ = decode_dc(&flipped);
    }
}
