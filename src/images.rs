//! Tensors in a model's data range (the paper's [−1, 1] unless its file says otherwise) to 8-bit
//! pixels, for PNGs, GIFs and canvases, and back.

use serde::{Deserialize, Serialize};

/// The interval x₀ lives in, which 0..=255 maps onto linearly: [−1, 1] for the paper and every
/// model trained here; [0, 1] for labml's experiment (`ToTensor` without normalisation). x̂₀ is
/// clipped to it, drawings enter through it and pictures leave through it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "[f32; 2]", into = "[f32; 2]")]
pub struct DataRange {
    pub lo: f32,
    pub hi: f32,
}

impl DataRange {
    /// The paper's [−1, 1].
    pub const PAPER: Self = Self { lo: -1.0, hi: 1.0 };

    pub fn is_paper(&self) -> bool {
        *self == Self::PAPER
    }

    /// [lo, hi] → 0..=255, rounding to nearest (for [−1, 1] the map the paper's code saves
    /// images with, bit for bit: (v + 1)·127.5).
    pub fn to_u8(self, v: f32) -> u8 {
        ((v.clamp(self.lo, self.hi) - self.lo) * (255.0 / (self.hi - self.lo))).round() as u8
    }

    /// 0..=255 → [lo, hi], the inverse of [`Self::to_u8`] on the pixel grid.
    pub fn from_u8(self, p: u8) -> f32 {
        self.from_level(p as f32)
    }

    /// A fractional level in [0, 255] (a drawing's luminance) → [lo, hi], as [`Self::from_u8`]
    /// maps a whole one (for [−1, 1]: v/127.5 − 1, bit for bit).
    pub fn from_level(self, v: f32) -> f32 {
        v / (255.0 / (self.hi - self.lo)) + self.lo
    }
}

impl Default for DataRange {
    fn default() -> Self {
        Self::PAPER
    }
}

impl TryFrom<[f32; 2]> for DataRange {
    type Error = String;
    fn try_from([lo, hi]: [f32; 2]) -> Result<Self, String> {
        if lo.is_finite() && hi.is_finite() && lo < hi && hi - lo <= 1e3 {
            Ok(Self { lo, hi })
        } else {
            Err(format!("data range [{lo}, {hi}] must be finite with lo < hi"))
        }
    }
}

impl From<DataRange> for [f32; 2] {
    fn from(r: DataRange) -> Self {
        [r.lo, r.hi]
    }
}

/// 0..=255 → [−1, 1]: how every data set is read for training here.
pub fn from_u8(p: u8) -> f32 {
    DataRange::PAPER.from_u8(p)
}

/// A batch laid out as a grid of RGBA pixels (grayscale repeated into R, G and B), `cols`
/// images per row with `pad` pixels of dark border: the canvas and PNG form of a batch.
#[derive(Clone, Debug, PartialEq)]
pub struct Grid {
    pub width: usize,
    pub height: usize,
    pub rgba: Vec<u8>,
}

impl Grid {
    /// `values` is a [B, C, H, W] batch flattened row-major, C = 1 or 3, in `range`.
    pub fn new(values: &[f32], [b, c, h, w]: [usize; 4], cols: usize, pad: usize, range: DataRange) -> Self {
        assert!(c == 1 || c == 3, "images have 1 or 3 channels");
        assert_eq!(values.len(), b * c * h * w, "values match the shape");
        let cols = cols.clamp(1, b.max(1));
        let rows = b.div_ceil(cols);
        let width = cols * (w + pad) + pad;
        let height = rows * (h + pad) + pad;
        let mut rgba = [24u8, 24, 24, 255].repeat(width * height);
        for (i, image) in values.chunks_exact(c * h * w).enumerate() {
            let (x0, y0) = (pad + (i % cols) * (w + pad), pad + (i / cols) * (h + pad));
            for y in 0..h {
                for x in 0..w {
                    let at = 4 * ((y0 + y) * width + x0 + x);
                    for ch in 0..3 {
                        rgba[at + ch] = range.to_u8(image[(ch % c) * h * w + y * w + x]);
                    }
                }
            }
        }
        Self { width, height, rgba }
    }
}

/// One image of a [C, H, W] block as interleaved 8-bit pixels (L for C = 1, RGB for C = 3).
pub fn interleaved(image: &[f32], [c, h, w]: [usize; 3], range: DataRange) -> Vec<u8> {
    (0..h * w).flat_map(|p| (0..c).map(move |ch| range.to_u8(image[ch * h * w + p]))).collect()
}

/// Saves one [C, H, W] image as an 8-bit gray or RGB PNG.
#[cfg(not(target_arch = "wasm32"))]
pub fn save_png(path: &std::path::Path, image: &[f32], [c, h, w]: [usize; 3], range: DataRange) -> anyhow::Result<()> {
    let color = if c == 1 { image::ExtendedColorType::L8 } else { image::ExtendedColorType::Rgb8 };
    image::save_buffer(path, &interleaved(image, [c, h, w], range), w as u32, h as u32, color)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))
}

#[cfg(not(target_arch = "wasm32"))]
impl Grid {
    /// Saves the grid as an RGBA PNG, each pixel drawn as a `scale`×`scale` block.
    pub fn save_png(&self, path: &std::path::Path, scale: usize) -> anyhow::Result<()> {
        let img = self.scaled(scale);
        img.save(path).map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))
    }

    /// Nearest-neighbour upscaling, so small digits stay crisp.
    pub fn scaled(&self, scale: usize) -> image::RgbaImage {
        let img = image::RgbaImage::from_raw(self.width as u32, self.height as u32, self.rgba.clone())
            .expect("buffer matches the grid size");
        let s = scale.max(1) as u32;
        image::imageops::resize(&img, img.width() * s, img.height() * s, image::imageops::FilterType::Nearest)
    }
}
