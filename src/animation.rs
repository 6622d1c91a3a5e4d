//! The reverse process as an animation: x_t beside x̂₀ at evenly spaced steps of a run, the last
//! held, as a looping GIF. `ddpm animate` and the page's "download as animation" both make it
//! here from the same grids (the page's step canvases, one-pixel borders), so one seed and one
//! sampler give the same frames on both.

use crate::images::Grid;

/// Frames of an animation unless asked otherwise: a run of up to this many steps is shown whole.
pub const FRAMES: usize = 60;
/// Each frame's time, in GIF's unit of 10 ms.
pub const DELAY_CS: u16 = 8;
/// The last frame (the finished image) shows this many frames' time longer.
pub const HOLD: u16 = 15;
/// Pixel scale of the frames (nearest neighbour, so small images stay crisp).
pub const SCALE: usize = 4;
/// The largest frame either side may be (GIF's own bound is 65,535).
pub const MAX_SIDE: usize = 4096;

/// Whether step `index` (1..=`total`) of a run is one of the `frames` frames: the steps where
/// ⌊index · frames / total⌋ moves on, so they are spread evenly, number min(frames, total), and
/// always include the last.
pub fn keeps(index: usize, total: usize, frames: usize) -> bool {
    (1..=total).contains(&index) && index * frames / total != (index - 1) * frames / total
}

/// The steps of a `total`-step run that an animation of `frames` frames shows, in order.
pub fn steps(total: usize, frames: usize) -> Vec<usize> {
    (1..=total).filter(|&i| keeps(i, total, frames)).collect()
}

/// One frame: the x_t grid with the x̂₀ grid to its right (both the same size), each pixel a
/// `scale` × `scale` block.
pub fn frame(x_t: &Grid, x0: &Grid, scale: usize) -> Result<Grid, String> {
    if (x_t.width, x_t.height) != (x0.width, x0.height) {
        return Err(format!("x_t is {}×{} but x̂₀ is {}×{}", x_t.width, x_t.height, x0.width, x0.height));
    }
    let (w, h, s) = (x_t.width, x_t.height, scale.max(1));
    if 2 * w * s > MAX_SIDE || h * s > MAX_SIDE {
        return Err(format!("a frame of {}×{} pixels is above the {MAX_SIDE}-pixel bound", 2 * w * s, h * s));
    }
    let width = 2 * w * s;
    let mut rgba = Vec::with_capacity(width * h * s * 4);
    for y in 0..h {
        let mut row = Vec::with_capacity(width * 4);
        for grid in [x_t, x0] {
            for pixel in grid.rgba[4 * y * w..4 * (y + 1) * w].chunks_exact(4) {
                for _ in 0..s {
                    row.extend_from_slice(pixel);
                }
            }
        }
        for _ in 0..s {
            rgba.extend_from_slice(&row);
        }
    }
    Ok(Grid { width, height: h * s, rgba })
}

/// The frames as a looping GIF: [`DELAY_CS`] each, the last [`HOLD`] times longer. A frame of up
/// to 256 colours (every gray model's) keeps them exactly; more are reduced by NeuQuant.
pub fn gif(frames: Vec<Grid>) -> Result<Vec<u8>, String> {
    let first = frames.first().ok_or("an animation needs at least one frame")?;
    let (w, h) = (first.width, first.height);
    if frames.iter().any(|f| (f.width, f.height) != (w, h) || f.rgba.len() != w * h * 4) {
        return Err("the frames of an animation must all be the same size".into());
    }
    let side = |v: usize| u16::try_from(v).map_err(|_| format!("a frame of {w}×{h} pixels is too large for a GIF"));
    let mut out = Vec::new();
    let mut encoder = gif::Encoder::new(&mut out, side(w)?, side(h)?, &[]).map_err(|e| e.to_string())?;
    encoder.set_repeat(gif::Repeat::Infinite).map_err(|e| e.to_string())?;
    let last = frames.len() - 1;
    for (i, mut f) in frames.into_iter().enumerate() {
        let mut frame = gif::Frame::from_rgba_speed(side(w)?, side(h)?, &mut f.rgba, 10);
        frame.delay = if i == last { DELAY_CS * (1 + HOLD) } else { DELAY_CS };
        encoder.write_frame(&frame).map_err(|e| e.to_string())?;
    }
    drop(encoder);
    Ok(out)
}
