//! A depthwise convolution (one `k x k` filter per channel, stride 1, "same" zero padding) on
//! channels-last maps, with its gradients, as a candle custom op.
//!
//! Written by hand because candle runs a grouped convolution as one convolution per group: for
//! the backbone's 1152-channel depthwise layers that is 1152 small convolutions per call, each
//! way, far too slow to fine-tune with. Here the channel is the innermost loop, so each tap is
//! one contiguous multiply-add over the channels.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// `x`: `[B, H, W, C]`, `w`: `[k * k, C]` (row `ky * k + kx`) → `[B, H, W, C]`.
pub fn depthwise(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2(&w.contiguous()?, Depthwise { flip: false })
}

/// The op; `flip` turns the filter by 180 degrees (what the gradient of the input needs).
struct Depthwise {
    flip: bool,
}

fn contiguous<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let all = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&all[a..b]),
        None => candle_core::bail!("depthwise: {what} is not contiguous"),
    }
}

/// The map's shape `(B, H, W, C)` and the filter side `k`, checked against each other.
fn shapes(x: &Layout, w: &Layout) -> Result<((usize, usize, usize, usize), usize)> {
    let (b, h, wd, c) = x.shape().dims4()?;
    let (taps, wc) = w.shape().dims2()?;
    let k = (taps as f64).sqrt().round() as usize;
    if wc != c || k * k != taps || k.is_multiple_of(2) {
        candle_core::bail!("depthwise: maps {:?} and filter {:?}", x.shape(), w.shape());
    }
    Ok(((b, h, wd, c), k))
}

/// The taps `(dy, dx, filter row)` of a `k x k` filter, centred.
fn taps(k: usize, flip: bool) -> Vec<(isize, isize, usize)> {
    let p = (k / 2) as isize;
    (0..k * k)
        .map(|t| {
            let (ky, kx) = ((t / k) as isize, (t % k) as isize);
            let row = if flip { k * k - 1 - t } else { t };
            (ky - p, kx - p, row)
        })
        .collect()
}

/// Calls `f(output cell, input cell, filter row)` for every tap of every cell of an `h x w` map
/// whose input cell lies inside the map (outside it is the zero padding).
fn for_each_tap(
    h: usize,
    w: usize,
    taps: &[(isize, isize, usize)],
    mut f: impl FnMut(usize, usize, usize),
) {
    for y in 0..h {
        for x in 0..w {
            for &(dy, dx, row) in taps {
                let (sy, sx) = (y as isize + dy, x as isize + dx);
                if sy < 0 || sx < 0 || sy >= h as isize || sx >= w as isize {
                    continue;
                }
                f(y * w + x, sy as usize * w + sx as usize, row);
            }
        }
    }
}

impl CustomOp2 for Depthwise {
    fn name(&self) -> &'static str {
        "depthwise"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let ((b, h, wd, c), k) = shapes(l1, l2)?;
        let x = contiguous(s1, l1, "the input")?;
        let w = contiguous(s2, l2, "the filter")?;
        let taps = taps(k, self.flip);
        let mut out = vec![0f32; b * h * wd * c];
        out.par_chunks_mut(h * wd * c)
            .zip(x.par_chunks(h * wd * c))
            .for_each(|(o, x)| {
                for_each_tap(h, wd, &taps, |out, inp, row| {
                    let dst = &mut o[out * c..][..c];
                    let src = &x[inp * c..][..c];
                    for ((d, s), f) in dst.iter_mut().zip(src).zip(&w[row * c..][..c]) {
                        *d += s * f;
                    }
                });
            });
        Ok((CpuStorage::F32(out), Shape::from((b, h, wd, c))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        // The input's gradient is the same convolution of the output's gradient with the
        // filter turned around.
        let grad_x = grad.apply_op2_no_bwd(w, &Depthwise { flip: !self.flip })?;
        // The filter's gradient: per tap, the sum over positions of gradient x shifted input.
        let (_, h, wd, c) = x.dims4()?;
        let taps_n = w.dim(0)?;
        let k = (taps_n as f64).sqrt().round() as usize;
        let gv = grad.flatten_all()?.to_vec1::<f32>()?;
        let xv = x.flatten_all()?.to_vec1::<f32>()?;
        let taps = taps(k, self.flip);
        let per_photo = gv
            .par_chunks(h * wd * c)
            .zip(xv.par_chunks(h * wd * c))
            .map(|(g, x)| {
                let mut gw = vec![0f32; taps_n * c];
                for_each_tap(h, wd, &taps, |out, inp, row| {
                    let go = &g[out * c..][..c];
                    let src = &x[inp * c..][..c];
                    for ((d, s), g) in gw[row * c..][..c].iter_mut().zip(src).zip(go) {
                        *d += s * g;
                    }
                });
                gw
            })
            .reduce(
                || vec![0f32; taps_n * c],
                |mut a, b| {
                    a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                    a
                },
            );
        let grad_w = Tensor::from_vec(per_photo, (taps_n, c), x.device())?;
        Ok((Some(grad_x), Some(grad_w)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Forward and both gradients agree with candle's own grouped convolution (NCHW, one group
    /// per channel) on random maps and filters.
    #[test]
    fn matches_candles_grouped_convolution() {
        let dev = Device::Cpu;
        let mut rng = StdRng::seed_from_u64(3);
        for (b, h, wd, c, k) in [(2, 7, 7, 5, 3), (3, 5, 6, 4, 5), (1, 4, 4, 3, 1)] {
            let mut r =
                |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0..1.0)).collect() };
            let x = Var::from_vec(r(b * h * wd * c), (b, h, wd, c), &dev).unwrap();
            let w = Var::from_vec(r(k * k * c), (k * k, c), &dev).unwrap();
            let weights = Tensor::from_vec(r(b * h * wd * c), (b, h, wd, c), &dev).unwrap();

            let ours = depthwise(x.as_tensor(), w.as_tensor()).unwrap();
            let loss = (&ours * &weights).unwrap().sum_all().unwrap();
            let g = loss.backward().unwrap();

            // Reference: NCHW input, [C, 1, k, k] filter, `groups = C`.
            let xr = Var::from_tensor(x.as_tensor()).unwrap();
            let wr = Var::from_tensor(w.as_tensor()).unwrap();
            let kernel = wr.as_tensor().t().unwrap().reshape((c, 1, k, k)).unwrap();
            let theirs = xr
                .as_tensor()
                .permute((0, 3, 1, 2))
                .unwrap()
                .conv2d(&kernel, k / 2, 1, 1, c)
                .unwrap()
                .permute((0, 2, 3, 1))
                .unwrap();
            let loss_r = (&theirs * &weights).unwrap().sum_all().unwrap();
            let gr = loss_r.backward().unwrap();

            let close = |a: &Tensor, b: &Tensor, what: &str| {
                let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
                let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
                assert_eq!(a.len(), b.len(), "{what}");
                let worst = a
                    .iter()
                    .zip(&b)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(worst < 1e-4, "{what} differs by {worst} (k {k})");
            };
            close(&ours, &theirs, "output");
            close(
                g.get(x.as_tensor()).unwrap(),
                gr.get(xr.as_tensor()).unwrap(),
                "input gradient",
            );
            close(
                g.get(w.as_tensor()).unwrap(),
                gr.get(wr.as_tensor()).unwrap(),
                "filter gradient",
            );
        }
    }

    #[test]
    fn refuses_mismatched_shapes() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 4, 4, 3), candle_core::DType::F32, &dev).unwrap();
        for w in [(9, 4), (8, 3), (4, 3)] {
            let w = Tensor::zeros(w, candle_core::DType::F32, &dev).unwrap();
            assert!(depthwise(&x, &w).is_err(), "{:?}", w.shape());
        }
    }
}
