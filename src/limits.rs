//! The largest model, file and run this code accepts: every bound that input is checked
//! against, in one place. Weights files, checkpoints and CLI flags describe a model in a few
//! numbers, and a number is cheap to lie about: T = 10¹² steps or 10⁹ blocks would make the
//! loader allocate until the process dies (natively an abort, in the page the wasm instance).
//! Each bound sits well above any model trained here and well below what a 32-bit wasm memory
//! (4 GiB) or a laptop can hold, and the checks use checked arithmetic so that no bound can be
//! passed by overflowing `usize` (32 bits on wasm32).

/// Image channels the image code draws: gray or RGB.
pub const IMAGE_CHANNELS: [usize; 2] = [1, 3];
/// Height = width of the images.
pub const MAX_IMAGE_SIZE: usize = 256;
/// UNet levels (channel multipliers): 256 / 2⁵ = 8 at the deepest.
pub const MAX_LEVELS: usize = 6;
/// Channels of any level (base × multiplier): labml's experiment reaches 1,024.
pub const MAX_WIDTH: usize = 4096;
/// Residual blocks per level.
pub const MAX_BLOCKS: usize = 8;
/// GroupNorm groups.
pub const MAX_GROUPS: usize = 64;
/// Positions of an attention level (its size²): attention holds a positions² matrix per image,
/// 4 MiB at 32 × 32.
pub const MAX_ATTENTION_POSITIONS: usize = 32 * 32;
/// Floats of one image's widest activation (width × size² of a level): 64 MiB.
pub const MAX_ACTIVATION: usize = 1 << 24;
/// Parameters of the whole model natively: 2 GiB in f32, three times labml's experiment
/// (167,777,987 parameters, a 671 MB `eps_model.pth`).
pub const MAX_PARAMS: usize = 1 << 29;
/// Classes of a class-conditional model.
pub const MAX_CLASSES: usize = 1000;
/// Diffusion steps T (the paper uses 1,000).
pub const MAX_DIFFUSION_STEPS: usize = 10_000;
/// Bytes of a weights file: the largest model in f32 plus a header. The CLI refuses larger files
/// before reading them.
pub const MAX_WEIGHTS_BYTES: u64 = (MAX_PARAMS as u64) * 4 + (1 << 20);
/// Bytes of a weights file's JSON header (safetensors' own bound).
pub const MAX_WEIGHTS_HEADER_BYTES: u64 = 100_000_000;
/// The page's own bounds: a 32-bit wasm memory (4 GiB at most) holds the downloaded file, the
/// model in f32 and one tensor's decoding at once while loading, so the page takes a quarter of
/// the native model (512 MiB in f32) and refuses a larger download before it starts.
pub const PAGE_MAX_PARAMS: usize = 1 << 27;
pub const PAGE_MAX_WEIGHTS_BYTES: u64 = (PAGE_MAX_PARAMS as u64) * 4 + (1 << 20);
/// The pixels of a run the page keeps for its scrubber and animation (x_t and x̂₀ of each kept
/// step): every step of a one-image run, an even subset of a long run of many.
pub const PAGE_MAX_RECORDED_BYTES: usize = 64 << 20;
/// Images of one training batch.
pub const MAX_BATCH: usize = 4096;
/// Images of one sampling batch (`ddpm sample --batch`), and frames of one interpolation.
pub const MAX_SAMPLE_BATCH: usize = 1024;
/// Images of one `ddpm sample` run (written one batch at a time; a grid holds at most
/// [`MAX_SAMPLE_BATCH`]).
pub const MAX_SAMPLES: usize = 1_000_000;
/// Frames of an animation, and the pixel scale of a saved strip or animation.
pub const MAX_FRAMES: usize = 1000;
pub const MAX_SCALE: usize = 32;
/// The largest side an image folder's file may declare: decoding stops at the header of a
/// bigger one (a "decompression bomb": a few bytes of PNG can declare 30,000 × 30,000 pixels).
pub const MAX_IMAGE_SIDE: u32 = 8192;
/// The most bytes one image's decoder may allocate.
pub const MAX_DECODE_BYTES: u64 = 256 << 20;
/// The most floats a training data set may hold in memory (4 GiB).
pub const MAX_DATASET_FLOATS: usize = 1 << 30;
