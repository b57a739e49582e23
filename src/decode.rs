//! Encoded bytes to an upright decoded image, within the limits on
//! untrusted input: bytes, pixels, and the memory the decode holds.
//!
//! Pixels alone do not bound memory: a 7000x7000 16-bit RGBA TIFF is 392
//! MB decoded, a progressive JPEG keeps every DCT coefficient (2 bytes a
//! sample) until its last scan, and a 1x1 PNG may carry a 400 MB ICC
//! profile. So every decode first reads the header with the decoder's
//! allocations capped at [`HEADER_BYTES`], then estimates the bytes it will
//! hold at its peak ([`peak_bytes`]: output, decoder working memory, the
//! conversion to RGB and an EXIF rotation), refuses an image over
//! `MAX_DECODE_BYTES`, and reserves that many bytes from the process's
//! [`DecodeBudget`] before the pixel buffer exists. The decoders' own
//! allocation caps are then set to the estimate, so one that asks for more
//! fails instead of growing.

use std::io::Cursor;
use std::sync::{Arc, Condvar, Mutex};

use image::metadata::Orientation;
use image::{
    ColorType, DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, RgbImage,
};

use crate::config::InputLimits;
use crate::error::InputError;

/// Formats we decode; anything else is `unsupported_format`.
const SUPPORTED: [ImageFormat; 7] = [
    ImageFormat::Jpeg,
    ImageFormat::Png,
    ImageFormat::WebP,
    ImageFormat::Gif,
    ImageFormat::Bmp,
    ImageFormat::Tiff,
    ImageFormat::Pnm,
];

/// Whether a file or key name ends in an extension of a format [`decode`]
/// reads (any case): what `predict`, `bench` and `submit` take from a
/// folder or a bucket by default.
pub fn has_image_extension(name: &str) -> bool {
    let Some((_, ext)) = name.rsplit_once('.') else {
        return false;
    };
    let ext = ext.to_ascii_lowercase();
    SUPPORTED
        .iter()
        .flat_map(|f| f.extensions_str())
        .any(|e| *e == ext)
}

/// The extensions of [`has_image_extension`], each with its dot.
pub fn image_suffixes() -> Vec<String> {
    SUPPORTED
        .iter()
        .flat_map(|f| f.extensions_str())
        .map(|e| format!(".{e}"))
        .collect()
}

/// What a decoder may allocate before the image's size is known, and on
/// top of the estimate after: headers, metadata chunks (ICC, EXIF, text),
/// palettes, line and strip buffers. A PNG whose ICC profile inflates past
/// it is refused.
pub const HEADER_BYTES: u64 = 8 << 20;

/// Decodes an image at full size and returns it upright (EXIF orientation
/// applied).
///
/// GIFs give their first frame. Size limits are enforced before any large
/// allocation: the byte count, the header's dimensions, then the memory
/// the decode would hold (`limits.max_decode_bytes`).
pub fn decode(bytes: &[u8], limits: &InputLimits) -> Result<DynamicImage, InputError> {
    decode_for(bytes, limits, 0)
}

/// [`decode`], for a preprocessor that only needs the shorter side to be
/// `min_side` pixels: a JPEG at least twice that is decoded at 1/2, 1/4 or
/// 1/8 scale in the DCT domain, as libjpeg's `scale_num` and Pillow's
/// `draft` do. A 12-megapixel photo then costs a fraction of a full
/// decode, in time and memory, and the resize that follows sees nearly the
/// same pixels (`tests/library/pipeline.rs` checks the top-5 agree).
pub fn decode_for(
    bytes: &[u8],
    limits: &InputLimits,
    min_side: u32,
) -> Result<DynamicImage, InputError> {
    decode_within(bytes, limits, min_side, |_| ())
}

/// [`decode_for`], holding a reservation of the decode's peak bytes from
/// `budget` (waiting for one if other decodes hold it) until the caller
/// drops the returned [`Reservation`], after the image has been used.
pub(crate) fn decode_reserved(
    bytes: &[u8],
    limits: &InputLimits,
    min_side: u32,
    budget: &Arc<DecodeBudget>,
) -> Result<(DynamicImage, Reservation), InputError> {
    let mut held: Option<Reservation> = None;
    let image = decode_within(bytes, limits, min_side, |need| {
        held = None; // a second estimate replaces the first
        held = Some(budget.reserve(need));
    })?;
    Ok((
        image,
        held.expect("every decode reserves before it allocates"),
    ))
}

/// The decode, calling `reserve(bytes)` once the peak is known and within
/// the limit, before the pixel buffer is allocated (twice if a scaled JPEG
/// decode falls back to full size).
fn decode_within(
    bytes: &[u8],
    limits: &InputLimits,
    min_side: u32,
    mut reserve: impl FnMut(u64),
) -> Result<DynamicImage, InputError> {
    let format = check_format(bytes, limits)?;
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .expect("reading from memory cannot fail");
    reader.limits(alloc_limit(HEADER_BYTES));
    let mut decoder = reader.into_decoder().map_err(|e| map_error(e, format))?;
    let (width, height) = decoder.dimensions();
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels {
        return Err(InputError::TooManyPixels {
            width,
            height,
            pixels,
            limit: limits.max_pixels,
        });
    }
    if pixels == 0 {
        return Err(InputError::Corrupt(format!(
            "the {format:?} header declares a {width}x{height} image"
        )));
    }
    // A broken EXIF block is not worth rejecting the photo for.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let jpeg = (format == ImageFormat::Jpeg)
        .then(|| jpeg_frame(bytes))
        .flatten();
    let color = decoder.color_type();
    let full = Plan {
        format,
        size: (width, height),
        decoded: (width, height),
        color,
        rotates: rotates(orientation),
        jpeg,
    };
    let scale = (format == ImageFormat::Jpeg && min_side > 0 && width.min(height) / 2 >= min_side)
        .then(|| jpeg_scaled_size((width, height), min_side))
        .flatten();
    let mut image = None;
    if let Some(decoded) = scale {
        let plan = Plan {
            decoded,
            color: ColorType::Rgb8,
            ..full
        };
        reserve(admit(&plan, limits)?);
        image = decode_jpeg_scaled(bytes, (width, height), min_side);
    }
    let mut image = match image {
        Some(image) => image,
        None => {
            let need = admit(&full, limits)?;
            reserve(need);
            decoder
                .set_limits(alloc_limit(need))
                .map_err(|e| map_error(e, format))?;
            DynamicImage::from_decoder(decoder).map_err(|e| map_error(e, format))?
        }
    };
    image.apply_orientation(orientation);
    Ok(image)
}

/// The format, if it is one we decode and the bytes are within the limit.
fn check_format(bytes: &[u8], limits: &InputLimits) -> Result<ImageFormat, InputError> {
    if bytes.is_empty() {
        return Err(InputError::Empty);
    }
    if bytes.len() as u64 > limits.max_bytes {
        return Err(InputError::TooManyBytes {
            actual: bytes.len() as u64,
            limit: limits.max_bytes,
        });
    }
    let format = match image::guess_format(bytes) {
        Ok(f) if SUPPORTED.contains(&f) => f,
        Ok(f) => {
            return Err(InputError::UnsupportedFormat {
                detail: format!(": {f:?} images are not supported"),
            })
        }
        Err(_) => {
            return Err(InputError::UnsupportedFormat {
                detail: ": the first bytes match no known image signature".into(),
            })
        }
    };
    // The JPEG decoder fills a truncated scan with grey instead of failing;
    // a half-grey photo would get a confident, wrong answer.
    if format == ImageFormat::Jpeg && !jpeg_reaches_end_marker(bytes) {
        return Err(InputError::Corrupt(
            "the JPEG data ends before its end-of-image marker (truncated upload or download?)"
                .into(),
        ));
    }
    Ok(format)
}

fn alloc_limit(bytes: u64) -> image::Limits {
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(bytes);
    limits
}

/// What one decode will produce, for its memory estimate.
#[derive(Debug, Clone, Copy)]
struct Plan {
    format: ImageFormat,
    /// The image's size, as its header gives it.
    size: (u32, u32),
    /// The size it is decoded at (smaller for a DCT-scaled JPEG).
    decoded: (u32, u32),
    color: ColorType,
    /// Whether the EXIF orientation turns the image a quarter (a copy).
    rotates: bool,
    jpeg: Option<JpegFrame>,
}

/// The plan's peak bytes, if within `MAX_DECODE_BYTES`.
fn admit(plan: &Plan, limits: &InputLimits) -> Result<u64, InputError> {
    let need = peak_bytes(plan);
    if need > limits.max_decode_bytes {
        return Err(InputError::TooMuchMemory {
            width: plan.size.0,
            height: plan.size.1,
            kind: describe(plan),
            bytes: need,
            limit: limits.max_decode_bytes,
        });
    }
    Ok(need)
}

/// The most bytes a decode holds at once, from its header: the decoded
/// image, what the decoder keeps besides it, the conversion to 8-bit RGB
/// (`preprocess::to_rgb8`: none for RGB8, in place for RGBA8) and a
/// quarter-turn's copy, plus [`HEADER_BYTES`]. Measured against peak RSS
/// by `tests/servers/memory.rs`.
fn peak_bytes(plan: &Plan) -> u64 {
    let full = u64::from(plan.size.0) * u64::from(plan.size.1);
    let out = u64::from(plan.decoded.0) * u64::from(plan.decoded.1);
    let output = out * u64::from(plan.color.bytes_per_pixel());
    let working = match plan.format {
        // Component planes at the decoded size; a progressive JPEG also
        // keeps all coefficients of the full-size image until its last scan.
        ImageFormat::Jpeg => {
            let frame = plan.jpeg.unwrap_or(JpegFrame::WORST);
            let planes = out * u64::from(frame.components);
            let coefficients = if frame.progressive {
                frame.coefficient_bytes(plan.size)
            } else {
                0
            };
            planes + coefficients
        }
        // The first frame's indices and its RGBA copy, composed onto the
        // output canvas.
        ImageFormat::Gif => full * 5,
        // Lossless WebP decodes to ARGB words; lossy to YUV planes.
        ImageFormat::WebP => full * 4,
        _ => 0,
    };
    let convert = match plan.color {
        ColorType::Rgb8 | ColorType::Rgba8 => 0,
        _ => out * 3,
    };
    let rotate = if plan.rotates { output.max(out * 3) } else { 0 };
    output + working + convert + rotate + HEADER_BYTES
}

/// "16-bit RGBA", "progressive 4:4:4 JPEG": what makes an image costly.
fn describe(plan: &Plan) -> String {
    let bits = plan.color.bits_per_pixel() / u16::from(plan.color.channel_count());
    let channels = match plan.color.channel_count() {
        1 => "grey",
        2 => "grey+alpha",
        3 => "RGB",
        _ => "RGBA",
    };
    let progressive = if plan.jpeg.is_some_and(|j| j.progressive) {
        "progressive "
    } else {
        ""
    };
    format!("{progressive}{bits}-bit {channels} {:?}", plan.format)
}

fn rotates(o: Orientation) -> bool {
    matches!(
        o,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    )
}

/// A JPEG's frame header, for its memory estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct JpegFrame {
    progressive: bool,
    components: u8,
    /// Each component's (horizontal, vertical) sampling factors.
    sampling: [(u8, u8); 4],
}

impl JpegFrame {
    /// What to assume when the header cannot be read: the decoder refuses
    /// such a file, and the estimate must not be low meanwhile.
    const WORST: JpegFrame = JpegFrame {
        progressive: true,
        components: 4,
        sampling: [(1, 1); 4],
    };

    /// Bytes of DCT coefficients (64 `i16` a block) of the whole image,
    /// blocks padded to whole MCUs as decoders store them.
    fn coefficient_bytes(&self, (w, h): (u32, u32)) -> u64 {
        let used = &self.sampling[..usize::from(self.components.min(4))];
        let hmax = u64::from(used.iter().map(|s| s.0).max().unwrap_or(1).max(1));
        let vmax = u64::from(used.iter().map(|s| s.1).max().unwrap_or(1).max(1));
        let mcus_x = u64::from(w).div_ceil(8 * hmax);
        let mcus_y = u64::from(h).div_ceil(8 * vmax);
        used.iter()
            .map(|&(sh, sv)| mcus_x * u64::from(sh) * mcus_y * u64::from(sv) * 128)
            .sum()
    }
}

/// The first frame header (SOFn) of a JPEG, walking segments from the
/// start; `None` if there is none before the first scan.
fn jpeg_frame(b: &[u8]) -> Option<JpegFrame> {
    let mut i = 2;
    loop {
        while *b.get(i)? != 0xFF {
            i += 1;
        }
        while *b.get(i)? == 0xFF {
            i += 1;
        }
        let marker = *b.get(i)?;
        i += 1;
        if matches!(marker, 0x01 | 0xD0..=0xD7) {
            continue;
        }
        let len = usize::from(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]));
        match marker {
            0xC0..=0xCF if !matches!(marker, 0xC4 | 0xC8 | 0xCC) => {
                let seg = b.get(i + 2..i + len)?;
                let components = *seg.get(5)?;
                let mut sampling = [(1, 1); 4];
                for (c, s) in sampling
                    .iter_mut()
                    .enumerate()
                    .take(usize::from(components))
                {
                    let hv = *seg.get(6 + 3 * c + 1)?;
                    *s = ((hv >> 4).max(1), (hv & 0x0F).max(1));
                }
                return Some(JpegFrame {
                    progressive: matches!(marker, 0xC2 | 0xC6 | 0xCA | 0xCE),
                    components,
                    sampling,
                });
            }
            0xDA | 0xD9 => return None,
            _ => i += len,
        }
    }
}

/// The size `decode_jpeg_scaled` decodes at: the smallest DCT scale
/// (1/8, 1/4, 1/2) whose shorter side is still `min_side`; `None` for full
/// size.
fn jpeg_scaled_size((w, h): (u32, u32), min_side: u32) -> Option<(u32, u32)> {
    [1u32, 2, 4]
        .into_iter()
        .map(|s| (w.div_ceil(8 / s), h.div_ceil(8 / s)))
        .find(|&(sw, sh)| sw.min(sh) >= min_side)
}

/// Bytes of decoded images in flight, shared by every decode of a process
/// (`MAX_DECODE_BYTES`): a decode waits until its peak fits. Decodes run
/// one per pool thread and never wait while holding a reservation, so
/// waiting always ends.
#[derive(Debug)]
pub struct DecodeBudget {
    capacity: u64,
    used: Mutex<u64>,
    freed: Condvar,
}

impl DecodeBudget {
    /// A budget of `capacity` bytes.
    pub fn new(capacity: u64) -> Arc<DecodeBudget> {
        Arc::new(DecodeBudget {
            capacity,
            used: Mutex::new(0),
            freed: Condvar::new(),
        })
    }

    /// Takes `bytes` (at most the capacity: [`admit`] checked), waiting for
    /// other decodes to give theirs back.
    fn reserve(self: &Arc<Self>, bytes: u64) -> Reservation {
        let bytes = bytes.min(self.capacity);
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        while *used + bytes > self.capacity {
            used = self.freed.wait(used).unwrap_or_else(|p| p.into_inner());
        }
        *used += bytes;
        Reservation {
            budget: self.clone(),
            bytes,
        }
    }

    /// Bytes reserved now.
    pub fn in_use(&self) -> u64 {
        *self.used.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Bytes held from a [`DecodeBudget`], given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<DecodeBudget>,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut used = self.budget.used.lock().unwrap_or_else(|p| p.into_inner());
        *used -= self.bytes;
        self.budget.freed.notify_all();
    }
}

/// Decodes a JPEG at the smallest DCT scale whose shorter side is still at
/// least `min_side`; `None` (the caller decodes at full size) for what this
/// path does not handle: CMYK, 16-bit, or anything the decoder refuses.
fn decode_jpeg_scaled(bytes: &[u8], (w, h): (u32, u32), min_side: u32) -> Option<DynamicImage> {
    let shorter = u64::from(w.min(h));
    let request = |side: u32| {
        let v = (u64::from(side) * u64::from(min_side)).div_ceil(shorter);
        u16::try_from(v).ok()
    };
    let mut decoder = jpeg_decoder::Decoder::new(bytes);
    let (sw, sh) = decoder.scale(request(w)?, request(h)?).ok()?;
    if u32::from(sw.min(sh)) < min_side {
        return None;
    }
    let pixels = decoder.decode().ok()?;
    let info = decoder.info()?;
    let (sw, sh) = (u32::from(info.width), u32::from(info.height));
    match info.pixel_format {
        jpeg_decoder::PixelFormat::RGB24 => {
            RgbImage::from_raw(sw, sh, pixels).map(DynamicImage::ImageRgb8)
        }
        jpeg_decoder::PixelFormat::L8 => {
            image::GrayImage::from_raw(sw, sh, pixels).map(DynamicImage::ImageLuma8)
        }
        jpeg_decoder::PixelFormat::L16 | jpeg_decoder::PixelFormat::CMYK32 => None,
    }
}

/// Walks a JPEG's segments and entropy-coded scans and reports whether it
/// reaches the end-of-image marker (FF D9). Linear in the input, no allocation.
///
/// Segment lengths are followed (so an EXIF thumbnail's own markers are
/// skipped), and inside a scan `FF 00` (stuffing) and `FF D0..D7` (restart)
/// are data, so the first other marker after a scan is real.
pub(crate) fn jpeg_reaches_end_marker(b: &[u8]) -> bool {
    if b.len() < 4 || b[0] != 0xFF || b[1] != 0xD8 {
        return false;
    }
    let mut i = 2;
    loop {
        // Tolerate junk between segments: resynchronise on the next 0xFF.
        while i < b.len() && b[i] != 0xFF {
            i += 1;
        }
        while i < b.len() && b[i] == 0xFF {
            i += 1;
        }
        let Some(&marker) = b.get(i) else {
            return false;
        };
        i += 1;
        match marker {
            0xD9 => return true,
            0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        let Some(len) = b
            .get(i..i + 2)
            .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])))
        else {
            return false;
        };
        if len < 2 {
            return false;
        }
        i += len;
        if marker == 0xDA {
            // Entropy-coded data runs to the next marker that is not
            // stuffing, a restart or a fill byte.
            loop {
                match (b.get(i), b.get(i + 1)) {
                    (Some(0xFF), Some(0x00 | 0xD0..=0xD7 | 0xFF)) => i += 1,
                    (Some(0xFF), Some(_)) => break,
                    (Some(_), _) => i += 1,
                    (None, _) => return false,
                }
            }
        }
    }
}

fn map_error(e: ImageError, format: ImageFormat) -> InputError {
    match e {
        ImageError::Unsupported(u) => InputError::UnsupportedFormat {
            detail: format!(": {u}"),
        },
        ImageError::Limits(l) => InputError::Corrupt(format!(
            "decoding this {format:?} image needs more memory than allowed ({l})"
        )),
        ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            InputError::Corrupt(format!("the {format:?} data ends too early"))
        }
        other => InputError::Corrupt(format!("{format:?}: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names of this process's threads right now.
    fn thread_names() -> Vec<String> {
        std::fs::read_dir("/proc/self/task")
            .map(|dir| {
                dir.flatten()
                    .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
                    .map(|n| n.trim().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Regression: `jpeg-decoder` without its `rayon` feature started a
    /// thread per colour component for every decode wider than 128 pixels
    /// ("worker thread for component N") and sent it each row through a
    /// channel. A scaled decode on one of our pool's workers must start
    /// none.
    #[test]
    #[cfg(target_os = "linux")]
    fn a_scaled_jpeg_decode_starts_no_threads_of_its_own() {
        let (w, h) = (1600u32, 1200u32);
        let img = RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 90])
        });
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 85)
            .encode_image(&img)
            .unwrap();
        let done = std::sync::atomic::AtomicBool::new(false);
        let seen = std::thread::scope(|scope| {
            let watcher = scope.spawn(|| {
                let mut seen = Vec::new();
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    seen.extend(
                        thread_names()
                            .into_iter()
                            .filter(|n| n.starts_with("worker thread")),
                    );
                }
                seen
            });
            let pool = crate::ops::OperatorPool::new(1);
            for _ in 0..10 {
                let image = pool
                    .run(|| decode_for(&jpeg, &InputLimits::default(), 256))
                    .unwrap();
                assert_eq!(
                    (image.width(), image.height()),
                    (400, 300),
                    "decoded at 1/4"
                );
            }
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            watcher.join().unwrap()
        });
        let names: std::collections::BTreeSet<_> = seen.iter().collect();
        assert!(
            seen.is_empty(),
            "the decoder started threads, seen {} times: {names:?}",
            seen.len()
        );
    }

    #[test]
    fn jpeg_end_marker_walk() {
        // SOI, APP1 segment whose payload contains a fake EOI, SOS, scan data
        // with stuffing and a restart marker, EOI.
        let mut j = vec![0xFF, 0xD8, 0xFF, 0xE1, 0x00, 0x06, 0xFF, 0xD9, 0x00, 0x00];
        j.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x04, 0x01, 0x02]);
        j.extend_from_slice(&[0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD3, 0x56]);
        assert!(
            !jpeg_reaches_end_marker(&j),
            "no EOI yet: the APP1 one is payload"
        );
        j.extend_from_slice(&[0xFF, 0xD9]);
        assert!(jpeg_reaches_end_marker(&j));
        for cut in 0..j.len() - 1 {
            assert!(!jpeg_reaches_end_marker(&j[..cut]), "cut at {cut}");
        }
        assert!(!jpeg_reaches_end_marker(b"\xFF\xD8\xFF\xDA\x00\x01"));
    }

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img = RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
            .encode_image(&img)
            .unwrap();
        out
    }

    #[test]
    fn jpeg_frame_header_is_read_and_priced() {
        let mut j = jpeg(64, 48);
        let frame = jpeg_frame(&j).unwrap();
        assert!(!frame.progressive);
        assert_eq!(frame.components, 3);
        let sof = j.windows(2).position(|m| m == [0xff, 0xc0]).unwrap();
        j[sof + 1] = 0xc2;
        for c in 0..3 {
            j[sof + 10 + 3 * c + 1] = if c == 0 { 0x22 } else { 0x11 };
        }
        let frame = jpeg_frame(&j).unwrap();
        assert!(frame.progressive);
        assert_eq!(&frame.sampling[..3], &[(2, 2), (1, 1), (1, 1)]);
        // 4:2:0, 1600x1200: 100x75 MCUs of 16x16; Y 4 blocks, Cb and Cr 1.
        assert_eq!(frame.coefficient_bytes((1600, 1200)), 100 * 75 * 6 * 128);
        assert_eq!(jpeg_frame(b"\xff\xd8\xff\xda\x00\x02"), None);
    }

    #[test]
    fn an_image_over_the_decode_budget_is_refused_before_decoding() {
        let png = {
            let img = image::ImageBuffer::<image::Rgba<u16>, _>::new(600, 500);
            let mut out = std::io::Cursor::new(Vec::new());
            img.write_to(&mut out, ImageFormat::Png).unwrap();
            out.into_inner()
        };
        // 600x500 16-bit RGBA: 2.4 MB decoded, 0.9 MB as RGB, plus headroom.
        let need = 600 * 500 * (8 + 3) + HEADER_BYTES;
        let tight = InputLimits {
            max_decode_bytes: need - 1,
            ..InputLimits::default()
        };
        let e = decode(&png, &tight).unwrap_err();
        assert_eq!(crate::error::ErrorCode::code(&e), "image_too_large");
        assert!(e.to_string().contains("16-bit RGBA Png"), "{e}");
        let enough = InputLimits {
            max_decode_bytes: need,
            ..tight
        };
        assert_eq!(decode(&png, &enough).unwrap().width(), 600);
    }

    #[test]
    fn scaled_jpeg_decodes_are_priced_at_their_scale() {
        assert_eq!(jpeg_scaled_size((4000, 3000), 256), Some((500, 375)));
        assert_eq!(jpeg_scaled_size((1000, 600), 256), Some((500, 300)));
        assert_eq!(jpeg_scaled_size((500, 400), 256), None);
    }

    #[test]
    fn the_budget_makes_a_decode_wait_until_another_gives_its_bytes_back() {
        let budget = DecodeBudget::new(100);
        let first = budget.reserve(70);
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let budget = budget.clone();
            std::thread::spawn(move || {
                let second = budget.reserve(50);
                tx.send(()).unwrap();
                drop(second);
            })
        };
        assert!(rx
            .recv_timeout(std::time::Duration::from_millis(200))
            .is_err());
        assert_eq!(budget.in_use(), 70);
        drop(first);
        rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
        waiter.join().unwrap();
        assert_eq!(budget.in_use(), 0);
    }
}
