//! Training data from outside: MNIST IDX files with any declared size and image folders with
//! anything in them get a clear error or a reported skip, in bounded memory, never a panic.

use std::io::Write;
use std::path::Path;

use ddpm::data;

mod common;
use common::TempDir;

fn idx(dir: &Path, header: &[u32], body: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let mut bytes: Vec<u8> = header.iter().flat_map(|v| v.to_be_bytes()).collect();
    bytes.extend(std::iter::repeat_n(7u8, body));
    std::fs::write(dir.join("train-images-idx3-ubyte"), bytes).unwrap();
}

fn error(result: anyhow::Result<data::Dataset>) -> String {
    format!("{:#}", result.expect_err("bad data must be refused"))
}

#[test]
fn idx_files_with_any_declared_size() {
    let root = TempDir::new("idx");
    let case = |name: &str, header: &[u32], body: usize| {
        let dir = root.join(name);
        idx(&dir, header, body);
        data::load(dir.to_str().unwrap(), 1, 28)
    };
    // Zero images passed the old length check (16 + 0 = 16) and divided by zero later.
    assert!(error(case("zero", &[0x803, 0, 28, 28], 0)).contains("declares 0 images"));
    // n·h·w overflows usize: refused, not wrapped to a small number.
    assert!(error(case("overflow", &[0x803, u32::MAX, u32::MAX, u32::MAX], 0)).contains("outside 1..=256"));
    assert!(error(case("huge count", &[0x803, u32::MAX, 28, 28], 10)).contains("header announces 4294967295 images"));
    assert!(error(case("truncated", &[0x803, 2, 28, 28], 784)).contains("header announces 2 images"));
    assert!(error(case("zero rows", &[0x803, 2, 0, 28], 0)).contains("outside"));
    assert!(error(case("magic", &[0x801, 1, 28, 28], 784)).contains("not an IDX image file"));
    let short = root.join("short");
    std::fs::create_dir_all(&short).unwrap();
    std::fs::write(short.join("train-images-idx3-ubyte"), [0u8, 0, 8]).unwrap();
    assert!(error(data::load(short.to_str().unwrap(), 1, 28)).contains("not an IDX image file"));
    // A good file, with a labels file that does not match it.
    let good = root.join("good");
    idx(&good, &[0x803, 3, 28, 28], 3 * 784);
    assert_eq!(data::load(good.to_str().unwrap(), 1, 28).unwrap().len(), 3);
    let mut labels: Vec<u8> = [0x801u32, 2].iter().flat_map(|v| v.to_be_bytes()).collect();
    labels.extend([1, 2]);
    std::fs::write(good.join("train-labels-idx1-ubyte"), &labels).unwrap();
    assert!(error(data::load(good.to_str().unwrap(), 1, 28)).contains("not an IDX label file for 3 images"));
    labels.push(11);
    labels[7] = 3;
    std::fs::write(good.join("train-labels-idx1-ubyte"), &labels).unwrap();
    assert!(error(data::load(good.to_str().unwrap(), 1, 28)).contains("labels must be digits"));
    // Another size than the model's is named.
    let small = root.join("small");
    idx(&small, &[0x803, 1, 8, 8], 64);
    assert!(error(data::load(small.to_str().unwrap(), 1, 28)).contains("1×28×28"));
}

/// A PNG that declares `w`×`h` gray pixels but carries one compressed row of zeros: a few
/// hundred bytes that a careless decoder turns into w·h bytes of memory.
fn bomb(w: u32, h: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend((data.len() as u32).to_be_bytes());
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        out.extend(kind);
        out.extend(data);
        out.extend(crc.sum().to_be_bytes());
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend(w.to_be_bytes());
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 0, 0, 0, 0]); // 8-bit gray, no interlace
    chunk(&mut png, b"IHDR", &ihdr);
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    z.write_all(&vec![0u8; 1 + w as usize]).unwrap();
    chunk(&mut png, b"IDAT", &z.finish().unwrap());
    chunk(&mut png, b"IEND", &[]);
    png
}

#[test]
fn image_folders_with_anything_in_them() {
    let root = TempDir::new("folders");
    let load = |dir: &Path| data::load(dir.to_str().unwrap(), 3, 8);

    let empty = root.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    assert!(error(load(&empty)).contains("no PNG or JPEG images found"));

    let text = root.join("text");
    std::fs::create_dir_all(&text).unwrap();
    std::fs::write(text.join("notes.txt"), "hello").unwrap();
    std::fs::write(text.join("fake.png"), "not a png at all").unwrap();
    std::fs::write(text.join("fake.jpg"), [0xff, 0xd8, 0xff, 0x00]).unwrap();
    let e = error(load(&text));
    assert!(e.contains("no readable images") && e.contains("all 2 files failed"), "{e}");

    // Every odd but valid kind decodes; broken ones are skipped and counted; the bomb is stopped
    // at its header (the process would otherwise allocate 900 MB for it).
    let mixed = root.join("mixed");
    std::fs::create_dir_all(mixed.join("deep/er")).unwrap();
    let rgb = image::RgbImage::from_fn(20, 16, |x, y| image::Rgb([(x * 12) as u8, (y * 15) as u8, 90]));
    rgb.save(mixed.join("good.png")).unwrap();
    rgb.save(mixed.join("deep/er/good.jpg")).unwrap();
    image::RgbImage::from_pixel(1, 1, image::Rgb([200, 10, 10])).save(mixed.join("one.png")).unwrap();
    image::ImageBuffer::<image::Luma<u16>, _>::from_fn(9, 9, |x, _| image::Luma([x as u16 * 7000]))
        .save(mixed.join("sixteen.png"))
        .unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    std::fs::copy(fixtures.join("palette.png"), mixed.join("palette.png")).unwrap();
    std::fs::copy(fixtures.join("cmyk.jpg"), mixed.join("cmyk.jpg")).unwrap();
    let png = std::fs::read(mixed.join("good.png")).unwrap();
    std::fs::write(mixed.join("truncated.png"), &png[..png.len() / 2]).unwrap();
    let jpg = std::fs::read(mixed.join("deep/er/good.jpg")).unwrap();
    std::fs::write(mixed.join("truncated.jpg"), &jpg[..40]).unwrap();
    std::fs::write(mixed.join("bomb.png"), bomb(30_000, 30_000)).unwrap();
    std::os::unix::fs::symlink(&mixed, mixed.join("deep/loop")).unwrap();
    let set = load(&mixed).expect("the readable images load");
    // good.png, good.jpg, one.png, sixteen.png, palette.png, cmyk.jpg; the symlinked loop is
    // not followed (it would list everything again, forever).
    assert_eq!(set.len(), 6);
    assert_eq!(set.shape, [3, 8, 8]);
    assert!(set.pixels.iter().all(|v| v.is_finite() && (-1.0..=1.0).contains(v)));

    let only_bomb = root.join("bomb");
    std::fs::create_dir_all(&only_bomb).unwrap();
    std::fs::write(only_bomb.join("bomb.png"), bomb(30_000, 30_000)).unwrap();
    let e = error(load(&only_bomb));
    assert!(e.contains("bomb.png") && e.to_lowercase().contains("limit"), "{e}");
}

#[test]
fn an_image_folder_of_class_subfolders_is_labelled_by_them() {
    // The ImageFolder convention: cats/ and dogs/ are classes 0 and 1 (sorted by name); a folder
    // with an image outside any subfolder has no labels.
    let root = TempDir::new("classes");
    for (class, n) in [("dogs", 2), ("cats", 3)] {
        std::fs::create_dir_all(root.join(class)).unwrap();
        for i in 0..n {
            image::RgbImage::from_pixel(8, 8, image::Rgb([40 * i as u8, 9, 200]))
                .save(root.join(class).join(format!("{i}.png")))
                .unwrap();
        }
    }
    let names = data::class_names(root.to_str().unwrap()).unwrap();
    assert_eq!(names, Some(vec!["cats".to_string(), "dogs".to_string()]));
    let set = data::load(root.to_str().unwrap(), 3, 8).unwrap();
    // Files in path order: cats/0..2, then dogs/0..1.
    assert_eq!(set.labels, Some(vec![0, 0, 0, 1, 1]));
    image::RgbImage::new(8, 8).save(root.join("loose.png")).unwrap();
    assert_eq!(data::class_names(root.to_str().unwrap()).unwrap(), None);
    assert_eq!(data::load(root.to_str().unwrap(), 3, 8).unwrap().labels, None);
}
