//! Any folder of PNG/JPEG images, decoded with bounded memory.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};

use super::Dataset;
use crate::images::from_u8;
use crate::limits;

/// Every PNG/JPEG under `dir` (recursively, in path order), center-cropped to a square and
/// resized to `size`×`size`, as gray (C = 1) or RGB (C = 3). Files that do not decode (truncated,
/// not an image, larger than [`limits::MAX_IMAGE_SIDE`]) are skipped and counted on stderr with the
/// first one's reason; a folder with no decodable image is an error. Labelled by the ImageFolder
/// convention when every image lies in a subfolder of `dir` ([`classes`]).
pub fn image_folder(dir: &Path, channels: usize, size: usize) -> Result<Dataset> {
    ensure!(channels == 1 || channels == 3, "--channels must be 1 or 3 for image folders, got {channels}");
    let mut files = Vec::new();
    walk(dir, &mut files)?;
    files.sort();
    ensure!(!files.is_empty(), "no PNG or JPEG images found under {}", dir.display());
    let names = classes_of(dir, &files);
    let mut labels = Vec::new();
    let mut pixels = Vec::new();
    let mut skipped: Vec<String> = Vec::new();
    for file in &files {
        let decoded = image::ImageReader::open(file).and_then(|r| r.with_guessed_format());
        let img = match decoded.map_err(anyhow::Error::from).and_then(decode_bounded) {
            Ok(img) => img,
            Err(e) => {
                skipped.push(format!("{}: {e:#}", file.display()));
                continue;
            }
        };
        let side = img.width().min(img.height());
        let img = img.crop_imm((img.width() - side) / 2, (img.height() - side) / 2, side, side).resize_exact(
            size as u32,
            size as u32,
            image::imageops::FilterType::Triangle,
        );
        ensure!(
            pixels.len() + channels * size * size <= limits::MAX_DATASET_FLOATS,
            "{}: more images than fit in memory at {size}×{size} ({} floats); use a smaller folder",
            dir.display(),
            limits::MAX_DATASET_FLOATS
        );
        if let Some(names) = &names {
            let name = class_of(dir, file).expect("every file has a class when there are classes");
            labels.push(names.iter().position(|n| *n == name).expect("the names were taken from the files") as u8);
        }
        let raw = if channels == 1 { img.to_luma8().into_raw() } else { img.to_rgb8().into_raw() };
        // Interleaved HWC bytes → planar CHW floats in [−1, 1].
        for ch in 0..channels {
            pixels.extend((0..size * size).map(|p| from_u8(raw[p * channels + ch])));
        }
    }
    ensure!(
        skipped.len() < files.len(),
        "no readable images under {}: all {} files failed to decode (first: {})",
        dir.display(),
        files.len(),
        skipped[0]
    );
    if let Some(first) = skipped.first() {
        eprintln!("skipped {} of {} files that did not decode (first: {first})", skipped.len(), files.len());
    }
    Ok(Dataset { shape: [channels, size, size], pixels, labels: names.map(|_| labels) })
}

/// The classes of an image folder by the ImageFolder convention: each subfolder of `dir` is a
/// class named after it (sorted by name, the label is the index), when every image lies in one
/// and there are 2 to 256 of them; None otherwise.
pub fn classes(dir: &Path) -> Result<Option<Vec<String>>> {
    let mut files = Vec::new();
    walk(dir, &mut files)?;
    Ok(classes_of(dir, &files))
}

fn classes_of(dir: &Path, files: &[PathBuf]) -> Option<Vec<String>> {
    let mut names: Vec<String> = files.iter().map(|f| class_of(dir, f)).collect::<Option<_>>()?;
    names.sort();
    names.dedup();
    (2..=256).contains(&names.len()).then_some(names)
}

/// The first folder of `file`'s path below `dir`, if it is below one.
fn class_of(dir: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(dir).ok()?;
    let mut parts = rel.components();
    let first = parts.next()?.as_os_str().to_string_lossy().into_owned();
    parts.next().map(|_| first)
}

/// Decodes one image with the decoder's memory and size bounded (for files, the format is
/// guessed from the content rather than the extension).
pub(crate) fn decode_bounded<R: std::io::BufRead + std::io::Seek>(
    mut reader: image::ImageReader<R>,
) -> Result<image::DynamicImage> {
    let mut bounds = image::Limits::default();
    bounds.max_image_width = Some(limits::MAX_IMAGE_SIDE);
    bounds.max_image_height = Some(limits::MAX_IMAGE_SIDE);
    bounds.max_alloc = Some(limits::MAX_DECODE_BYTES);
    reader.limits(bounds);
    let img = reader.decode()?;
    ensure!(img.width() > 0 && img.height() > 0, "empty image");
    Ok(img)
}

/// The image files under `dir`. Symlinked folders are not entered (a link to a parent would
/// loop forever); symlinked files are read.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading folder {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            walk(&path, out)?;
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
        {
            out.push(path);
        }
    }
    Ok(())
}
