//! The Noto emoji of the npm package `emoji-datasource-google@16.0.0` (package MIT, images
//! Apache-2.0): 3,786 PNGs of 64×64 RGBA, composited on white and resized to 32×32 RGB, each
//! labelled with its Unicode category (`emoji.json`). 19 of them repeat another's picture (flags
//! shared by territories, a snowboarder without skin tones): each picture is kept once, 3,767.
//!
//! A fixed tenth is held out for evaluation, chosen by base emoji: an emoji and its skin-tone
//! variants (which differ only in a few pixels) are all on one side, so the held-out images
//! are new to the model and measure what a copy of the training set would look like.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Cursor, Read};

use anyhow::{Context, Result, ensure};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::folder::decode_bounded;
use super::{Dataset, npm_package};
use crate::images::from_u8;

pub const EMOJI_PACKAGE: &str = "emoji-datasource-google@16.0.0";
pub const EMOJI_INTEGRITY: &str =
    "sha512-ZRexfzs7MVoLnmzZmNsO4TKhnAJp5D++Vm6PpUpH/jEQQlemp3l88CjZ+DoZ2faM9R4QxZkOPJCoT8DlPhfQ3A==";
/// The images' side after resizing (the package's are 64).
pub const SIZE: usize = 32;
/// Unicode's emoji categories in their own order; the label is the index.
pub const CATEGORIES: [&str; 10] = [
    "Smileys & Emotion", "People & Body", "Component", "Animals & Nature", "Food & Drink", "Travel & Places",
    "Activities", "Objects", "Symbols", "Flags",
];
/// One image in this many is held out (by base emoji, so the share is close to, not exactly, this).
const HELD_OUT_EVERY: usize = 10;
const IMAGE_DIR: &str = "package/img/google/64/";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// About 90 %: what `ddpm train --data emoji` trains on.
    Train,
    /// About 10 %: the real images that quality is measured against.
    HeldOut,
}

#[derive(Deserialize)]
struct Entry {
    unified: String,
    image: String,
    category: String,
    sort_order: u32,
    has_img_google: bool,
    #[serde(default)]
    skin_variations: BTreeMap<String, Variation>,
}

#[derive(Deserialize)]
struct Variation {
    image: String,
    has_img_google: bool,
}

/// One split of the emoji as 3×32×32 images in [−1, 1], labelled with their category.
pub fn load(split: Split) -> Result<Dataset> {
    let [train, held_out] = splits()?;
    Ok(if split == Split::Train { train } else { held_out })
}

/// Both splits (training, held out) from one read of the package.
pub fn splits() -> Result<[Dataset; 2]> {
    let bytes = npm_package(EMOJI_PACKAGE, "emoji-datasource-google-16.0.0.tgz", EMOJI_INTEGRITY)?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
    let mut index = None;
    let mut pngs = HashMap::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.to_string_lossy().into_owned();
        if path == "package/emoji.json" {
            let mut text = String::new();
            entry.read_to_string(&mut text)?;
            index = Some(serde_json::from_str::<Vec<Entry>>(&text).context("parsing emoji.json")?);
        } else if let Some(name) = path.strip_prefix(IMAGE_DIR) {
            let mut png = Vec::new();
            entry.read_to_end(&mut png)?;
            pngs.insert(name.to_string(), png);
        }
    }
    let mut index = index.with_context(|| format!("{EMOJI_PACKAGE} has no emoji.json"))?;
    index.sort_by_key(|e| e.sort_order);

    // Every distinct picture with its base emoji and its label, in the package's order.
    let mut seen = HashSet::new();
    let mut images: Vec<(&str, &str, u8)> = Vec::new();
    for e in &index {
        let label = CATEGORIES
            .iter()
            .position(|&c| c == e.category)
            .with_context(|| format!("emoji.json: unknown category {:?}", e.category))? as u8;
        let variants = e.skin_variations.values().filter(|v| v.has_img_google).map(|v| v.image.as_str());
        let files = e.has_img_google.then_some(e.image.as_str()).into_iter().chain(variants);
        for file in files {
            let png =
                pngs.get(file).with_context(|| format!("{EMOJI_PACKAGE} lists {file} but has no {IMAGE_DIR}{file}"))?;
            if seen.insert(Sha256::digest(png)) {
                images.push((e.unified.as_str(), file, label));
            }
        }
    }
    let held_out = held_out_bases(&images);

    let mut parts: [(Vec<f32>, Vec<u8>); 2] = Default::default();
    for &(base, file, label) in &images {
        let (pixels, labels) = &mut parts[usize::from(held_out.contains(base))];
        let reader = image::ImageReader::with_format(Cursor::new(&pngs[file]), image::ImageFormat::Png);
        let rgba = decode_bounded(reader).with_context(|| format!("decoding {file}"))?.to_rgba8();
        pixels.extend(on_white_32(&rgba));
        labels.push(label);
    }
    ensure!(parts.iter().all(|(_, l)| !l.is_empty()), "{EMOJI_PACKAGE}: a split has no images");
    Ok(parts.map(|(pixels, labels)| Dataset { shape: [3, SIZE, SIZE], pixels, labels: Some(labels) }))
}

/// The base emoji held out: in the order of a hash of their code points (a fixed, unbiased
/// shuffle), whole groups are taken until a tenth of all images is reached.
fn held_out_bases<'a>(images: &[(&'a str, &str, u8)]) -> HashSet<&'a str> {
    let mut groups: BTreeMap<&str, usize> = BTreeMap::new();
    for &(base, _, _) in images {
        *groups.entry(base).or_default() += 1;
    }
    let mut order: Vec<(&str, usize)> = groups.into_iter().collect();
    order.sort_by_key(|&(base, _)| Sha256::digest(base.as_bytes()));
    let target = images.len() / HELD_OUT_EVERY;
    let mut taken = 0;
    let mut held = HashSet::new();
    for (base, n) in order {
        if taken >= target {
            break;
        }
        taken += n;
        held.insert(base);
    }
    held
}

/// Alpha-composites an RGBA emoji on white (the "over" operator in sRGB, as a browser draws it
/// on a white page), then downsamples it to 32×32 with a triangle filter whose support spans the
/// scale (an area-weighted average: no aliasing, no ringing around the dark outlines), as planar
/// RGB in [−1, 1].
fn on_white_32(rgba: &image::RgbaImage) -> Vec<f32> {
    let rgb = image::RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let [r, g, b, a] = rgba.get_pixel(x, y).0;
        let over = |c: u8| ((c as u32 * a as u32 + 255 * (255 - a as u32) + 127) / 255) as u8;
        image::Rgb([over(r), over(g), over(b)])
    });
    let small = image::imageops::resize(&rgb, SIZE as u32, SIZE as u32, image::imageops::FilterType::Triangle);
    let raw = small.into_raw();
    (0..3).flat_map(|ch| (0..SIZE * SIZE).map(move |p| (p, ch))).map(|(p, ch)| from_u8(raw[p * 3 + ch])).collect()
}
