//! The animation `ddpm animate` and the page's "download as animation" share (src/animation.rs):
//! which steps it shows, how a frame is laid out, and the GIF's frames and timing, decoded here by
//! the image crate's own GIF decoder.

use ddpm::animation::{self, DELAY_CS, FRAMES, HOLD, frame, gif, keeps, steps};
use ddpm::images::Grid;
use image::AnimationDecoder;

#[test]
fn a_short_run_is_shown_whole_and_a_long_one_evenly() {
    assert_eq!(steps(10, FRAMES), (1..=10).collect::<Vec<_>>());
    let long = steps(1000, FRAMES);
    assert_eq!(long.len(), FRAMES);
    assert_eq!(*long.last().unwrap(), 1000, "the finished image is always in");
    assert!(long.windows(2).all(|w| (16..=17).contains(&(w[1] - w[0]))), "{long:?}");
    assert_eq!(steps(10, 5), [2, 4, 6, 8, 10]);
    assert!(!keeps(0, 10, 5) && !keeps(11, 10, 5));
}

/// A gray grid whose pixel (x, y) has level `f(x, y)`.
fn grid(width: usize, height: usize, f: impl Fn(usize, usize) -> u8) -> Grid {
    let rgba = (0..width * height).flat_map(|i| {
        let v = f(i % width, i / width);
        [v, v, v, 255]
    });
    Grid { width, height, rgba: rgba.collect() }
}

#[test]
fn a_frame_is_x_t_beside_x0_hat_scaled() {
    let (x_t, x0) = (grid(3, 2, |x, y| (10 * x + y) as u8), grid(3, 2, |x, y| (100 + 10 * x + y) as u8));
    let f = frame(&x_t, &x0, 2).unwrap();
    assert_eq!((f.width, f.height), (12, 4));
    for y in 0..4 {
        for x in 0..12 {
            let want = if x < 6 { 10 * (x / 2) + y / 2 } else { 100 + 10 * ((x - 6) / 2) + y / 2 };
            assert_eq!(f.rgba[4 * (y * 12 + x)], want as u8, "({x}, {y})");
        }
    }
    assert!(frame(&x_t, &grid(2, 2, |_, _| 0), 1).is_err(), "two grids of different sizes");
    assert!(frame(&x_t, &x0, animation::MAX_SIDE).is_err(), "a frame above the bound");
}

#[test]
fn the_gif_holds_the_frames_exactly_and_holds_the_last() {
    // Gray frames (≤ 256 levels): the GIF keeps every pixel.
    let frames: Vec<Grid> = (0..4).map(|k| grid(10, 5, move |x, y| (k * 60 + 7 * x + 3 * y) as u8)).collect();
    let bytes = gif(frames.clone()).unwrap();
    let decoded = image::codecs::gif::GifDecoder::new(std::io::Cursor::new(&bytes)).unwrap();
    let decoded = decoded.into_frames().collect_frames().unwrap();
    assert_eq!(decoded.len(), 4);
    for (want, got) in frames.iter().zip(&decoded) {
        assert_eq!(got.buffer().as_raw(), &want.rgba);
    }
    let ms: Vec<u32> = decoded.iter().map(|f| f.delay().numer_denom_ms().0 / f.delay().numer_denom_ms().1).collect();
    let delay = 10 * DELAY_CS as u32;
    assert_eq!(ms, [delay, delay, delay, delay * (1 + HOLD as u32)]);
    // It loops: the NETSCAPE2.0 extension with a repeat count of 0 (forever).
    let netscape = bytes.windows(11).position(|w| w == b"NETSCAPE2.0").expect("a looping GIF");
    assert_eq!(&bytes[netscape + 11..netscape + 15], &[3, 1, 0, 0]);
    assert!(gif(vec![]).is_err());
    assert!(gif(vec![grid(2, 2, |_, _| 0), grid(3, 2, |_, _| 0)]).is_err(), "frames of different sizes");
}
