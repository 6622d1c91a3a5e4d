//! The emoji data: both splits from the npm package, disjoint by base emoji, white where the
//! emoji is transparent, every category present in training; and the flip augmentation.

use ddpm::data::emoji::{self, CATEGORIES, SIZE, Split};
use ddpm::data::{self, Dataset};
use ddpm::noise::Noise;

#[test]
fn splits_cover_the_package_and_hold_out_a_tenth() {
    let train = emoji::load(Split::Train).unwrap();
    let held = emoji::load(Split::HeldOut).unwrap();
    assert_eq!((train.shape, held.shape), ([3, SIZE, SIZE], [3, SIZE, SIZE]));
    // The package ships 3,786 Google images (1,911 emoji and 1,875 skin-tone variants), 19 of
    // which repeat another's picture.
    assert_eq!(train.len() + held.len(), 3767);
    assert!((370..=420).contains(&held.len()), "held out {}", held.len());
    // No held-out image equals a training image (skin-tone siblings stay on one side, and an
    // image listed twice would show up here too).
    let key = |d: &Dataset, i: usize| d.image(i).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    let seen: std::collections::HashSet<_> = (0..train.len()).map(|i| key(&train, i)).collect();
    assert!((0..held.len()).all(|i| !seen.contains(&key(&held, i))));
    // Every category but the five skin-tone swatches ("Component") is in both splits.
    let labels = train.labels.as_ref().unwrap();
    for (k, name) in CATEGORIES.iter().enumerate() {
        let n = labels.iter().filter(|&&l| l as usize == k).count();
        assert!(n > 0 || *name == "Component", "{name}: {n}");
    }
    // Composited on white: the transparent corners of nearly all emoji are white (keycaps and
    // a few symbols fill their square), and no image is blank.
    let white = |img: &[f32]| (0..3).all(|c| img[c * SIZE * SIZE] > 0.99);
    let white_corners = (0..train.len()).filter(|&i| white(train.image(i))).count();
    assert!(white_corners * 10 > train.len() * 9, "{white_corners} of {} white", train.len());
    assert!((0..train.len()).all(|i| train.image(i).iter().any(|&v| v < 0.8)));
    // `--data emoji` is the training split, and asks for 3×32×32.
    assert_eq!(data::load("emoji", 3, 32).unwrap().len(), train.len());
    let e = data::load("emoji", 1, 28).unwrap_err().to_string();
    assert!(e.contains("the emoji are 3×32×32") && e.contains("--channels 3 --image-size 32"), "{e}");
}

#[test]
fn flip_mirrors_about_half_the_images_and_only_left_right() {
    // 64 images of 1×2×3, each [i, i+1, i+2 / i+3, i+4, i+5].
    let pixels = (0..64).flat_map(|i| (0..6).map(move |k| (i * 6 + k) as f32)).collect();
    let data = Dataset { shape: [1, 2, 3], pixels, labels: None };
    let device = burn::tensor::Device::flex();
    let plain = data.random_batch(256, false, &mut Noise::new(1), &device).0.into_data().try_to_vec::<f32>().unwrap();
    let flipped = data.random_batch(256, true, &mut Noise::new(1), &device).0.into_data().try_to_vec::<f32>().unwrap();
    let mut mirrored = 0;
    for (a, b) in plain.chunks(6).zip(flipped.chunks(6)) {
        // The same image is drawn either way; flipped, it is itself or its rows reversed.
        let rev: Vec<f32> = a.chunks(3).flat_map(|row| row.iter().rev().copied()).collect();
        assert!(b == a || b == rev.as_slice(), "{a:?} → {b:?}");
        mirrored += usize::from(b != a);
    }
    assert!((96..=160).contains(&mirrored), "{mirrored} of 256 mirrored");
}
