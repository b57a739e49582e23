//! Encoded bytes to input tensor: decode, orient, convert, resize, crop,
//! normalise. Owns the limits on untrusted input.
//!
//! The resize and the centre crop happen in one pass: instead of resizing the
//! whole photo so its shorter side is 256 and then cutting 224x224 out of it
//! (as torchvision/Pillow do), we resample only the source rectangle that the
//! crop would keep, at the same scale. The output is the same pixels (same
//! filter support, same sample positions) without allocating the
//! intermediate image.

use std::io::Cursor;

use fast_image_resize as fir;
use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, RgbImage};

use crate::config::InputLimits;
use crate::error::InputError;
use crate::model::manifest::{ChannelOrder, Crop, Interpolation, Layout, Manifest};

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

/// Decodes an image at full size and returns it upright (EXIF orientation
/// applied).
///
/// GIFs give their first frame. Size limits are enforced before any large
/// allocation: first the byte count, then the dimensions from the header.
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
    if bytes.is_empty() {
        return Err(InputError::Empty);
    }
    if bytes.len() as u64 > limits.max_bytes {
        return Err(InputError::TooManyBytes {
            actual: bytes.len() as u64,
            limit: limits.max_bytes,
        });
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .expect("reading from memory cannot fail");
    let format = match reader.format() {
        Some(f) if SUPPORTED.contains(&f) => f,
        Some(f) => {
            return Err(InputError::UnsupportedFormat {
                detail: format!(": {f:?} images are not supported"),
            })
        }
        None => {
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
    // Decoders also cap their own working memory: the pixel limit at 8 bytes
    // a pixel (RGBA, 16 bits) plus headroom for line buffers and palettes.
    let mut image_limits = image::Limits::default();
    image_limits.max_alloc = Some(limits.max_pixels.saturating_mul(8) + (64 << 20));
    reader.limits(image_limits);
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
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let scaled = (format == ImageFormat::Jpeg && min_side > 0 && width.min(height) / 2 >= min_side)
        .then(|| decode_jpeg_scaled(bytes, (width, height), min_side))
        .flatten();
    let mut image = match scaled {
        Some(image) => image,
        None => DynamicImage::from_decoder(decoder).map_err(|e| map_error(e, format))?,
    };
    image.apply_orientation(orientation);
    Ok(image)
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

/// Converts any colour type to 8-bit RGB: grey is replicated, alpha is
/// dropped (as Pillow's `convert("RGB")`), 16-bit and float are scaled.
/// CMYK JPEGs are already RGB when they leave the decoder.
pub(crate) fn to_rgb8(image: DynamicImage) -> RgbImage {
    match image {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.into_rgb8(),
    }
}

/// Precomputed per-channel normalisation: `(v * scale - mean) / std` for
/// every byte value, so normalising is one table lookup per sample.
#[derive(Debug, Clone)]
pub(crate) struct Normalizer {
    lut: [[f32; 256]; 3],
    source_channel: [usize; 3],
}

impl Normalizer {
    /// Builds the tables for a manifest's preprocessing.
    pub fn new(manifest: &Manifest) -> Normalizer {
        let pre = &manifest.preprocessing;
        let mut lut = [[0f32; 256]; 3];
        for (c, table) in lut.iter_mut().enumerate() {
            for (v, slot) in table.iter_mut().enumerate() {
                *slot = (v as f32 * pre.scale - pre.mean[c]) / pre.std[c];
            }
        }
        let source_channel = match pre.channel_order {
            ChannelOrder::Rgb => [0, 1, 2],
            ChannelOrder::Bgr => [2, 1, 0],
        };
        Normalizer {
            lut,
            source_channel,
        }
    }
}

/// Turns decoded images into model input, as the manifest says.
#[derive(Debug, Clone)]
pub struct Preprocessor {
    width: u32,
    height: u32,
    layout: Layout,
    crop: Crop,
    resize_shorter_side: u32,
    algorithm: fir::ResizeAlg,
    normalizer: Normalizer,
}

impl Preprocessor {
    /// Builds a preprocessor for a manifest.
    pub fn new(manifest: &Manifest) -> Preprocessor {
        let filter = match manifest.preprocessing.interpolation {
            Interpolation::Nearest => None,
            Interpolation::Bilinear => Some(fir::FilterType::Bilinear),
            Interpolation::Bicubic => Some(fir::FilterType::CatmullRom),
            Interpolation::Lanczos3 => Some(fir::FilterType::Lanczos3),
        };
        Preprocessor {
            width: manifest.input.width,
            height: manifest.input.height,
            layout: manifest.input.layout,
            crop: manifest.preprocessing.crop,
            resize_shorter_side: manifest.preprocessing.resize_shorter_side,
            algorithm: filter.map_or(fir::ResizeAlg::Nearest, fir::ResizeAlg::Convolution),
            normalizer: Normalizer::new(manifest),
        }
    }

    /// The shorter side a decoded image needs for this preprocessing to see
    /// (nearly) the pixels it would see at full size: see [`decode_for`].
    pub fn min_decode_side(&self) -> u32 {
        match self.crop {
            Crop::None => self.width.max(self.height),
            _ => self.resize_shorter_side.max(self.width.max(self.height)),
        }
    }

    /// Number of f32 values one image occupies in the input tensor.
    pub fn image_len(&self) -> usize {
        3 * self.width as usize * self.height as usize
    }

    /// The source rectangle `(left, top, width, height)` that the resize +
    /// centre crop keeps, in source pixels (fractional, like Pillow's `box`).
    ///
    /// Same rule as the Pillow pipeline the reference tensors were made with
    /// (`tests/data/testdata`): the shorter side becomes `s`, the longer
    /// `round(s * long / short)`, and the crop starts at
    /// `(resized - crop) // 2`. (torchvision truncates the longer side
    /// instead; the difference is at most one resized pixel.)
    pub(crate) fn crop_box(&self, src_w: u32, src_h: u32) -> (f64, f64, f64, f64) {
        if self.crop == Crop::None {
            return (0.0, 0.0, f64::from(src_w), f64::from(src_h));
        }
        let s = u64::from(self.resize_shorter_side);
        let (w, h) = (u64::from(src_w), u64::from(src_h));
        // Python's round() rounds half to even.
        let longer = |long: u64, short: u64| {
            (s as f64 * long as f64 / short as f64).round_ties_even() as u64
        };
        let (rw, rh) = if w <= h {
            (s, longer(h, w))
        } else {
            (longer(w, h), s)
        };
        let sx = w as f64 / rw as f64;
        let sy = h as f64 / rh as f64;
        let left = (rw.saturating_sub(u64::from(self.width)) / 2) as f64;
        let top = (rh.saturating_sub(u64::from(self.height)) / 2) as f64;
        (
            left * sx,
            top * sy,
            f64::from(self.width) * sx,
            f64::from(self.height) * sy,
        )
    }

    /// Resizes and crops an RGB image to the input size.
    pub(crate) fn resize(&self, rgb: &RgbImage) -> RgbImage {
        let (w, h) = rgb.dimensions();
        let src = fir::images::ImageRef::new(w, h, rgb.as_raw(), fir::PixelType::U8x3)
            .expect("an RgbImage buffer always fits its dimensions");
        let mut dst = fir::images::Image::new(self.width, self.height, fir::PixelType::U8x3);
        let (left, top, cw, ch) = self.crop_box(w, h);
        let options = fir::ResizeOptions::new()
            .resize_alg(self.algorithm)
            .crop(left, top, cw, ch);
        fir::Resizer::new()
            .resize(&src, &mut dst, &options)
            .expect("U8x3 to U8x3 resize with an in-bounds crop cannot fail");
        RgbImage::from_raw(self.width, self.height, dst.into_vec())
            .expect("fir output has the requested size")
    }

    /// Writes one resized image into `out` (length [`image_len`](Self::image_len))
    /// in the model's layout, normalised.
    pub(crate) fn normalize_into(&self, resized: &RgbImage, out: &mut [f32]) {
        let plane = self.width as usize * self.height as usize;
        assert_eq!(
            resized.as_raw().len(),
            plane * 3,
            "image must be resized first"
        );
        assert_eq!(out.len(), plane * 3, "output slot has the wrong length");
        let n = &self.normalizer;
        let pixels = resized.as_raw().chunks_exact(3);
        match self.layout {
            Layout::Nchw => {
                let (r, rest) = out.split_at_mut(plane);
                let (g, b) = rest.split_at_mut(plane);
                for (i, px) in pixels.enumerate() {
                    r[i] = n.lut[0][px[n.source_channel[0]] as usize];
                    g[i] = n.lut[1][px[n.source_channel[1]] as usize];
                    b[i] = n.lut[2][px[n.source_channel[2]] as usize];
                }
            }
            Layout::Nhwc => {
                for (px, o) in pixels.zip(out.chunks_exact_mut(3)) {
                    for c in 0..3 {
                        o[c] = n.lut[c][px[n.source_channel[c]] as usize];
                    }
                }
            }
        }
    }

    /// Decoded image to normalised input values for one image.
    pub fn preprocess_into(&self, image: DynamicImage, out: &mut [f32]) {
        let rgb = to_rgb8(image);
        let resized = self.resize(&rgb);
        self.normalize_into(&resized, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pre() -> Preprocessor {
        Preprocessor::new(&Manifest::imagenet_defaults("t"))
    }

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
    fn crop_box_matches_resize_then_center_crop() {
        // 640x480 -> 341x256 (341.33 rounded) -> crop at (117 // 2, 32 // 2) = (58, 16).
        let (l, t, w, h) = pre().crop_box(640, 480);
        let sx = 640.0 / 341.0;
        let sy = 480.0 / 256.0;
        assert!((l - 58.0 * sx).abs() < 1e-9, "{l}");
        assert!((t - 16.0 * sy).abs() < 1e-9, "{t}");
        assert!((w - 224.0 * sx).abs() < 1e-9);
        assert!((h - 224.0 * sy).abs() < 1e-9);
        // Portrait: the width is the shorter side.
        let (l, _, w, _) = pre().crop_box(480, 640);
        assert!((l - 16.0 * 480.0 / 256.0).abs() < 1e-9);
        assert!((w - 224.0 * 480.0 / 256.0).abs() < 1e-9);
        // 451x300 (chelsea.png) -> 385x256 (384.85 rounded) -> crop at (80, 16).
        let (l, _, _, _) = pre().crop_box(451, 300);
        assert!((l - 80.0 * 451.0 / 385.0).abs() < 1e-9, "{l}");
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

    #[test]
    fn normalize_uses_manifest_mean_and_std_in_nchw() {
        let p = pre();
        let img = RgbImage::from_pixel(224, 224, image::Rgb([255, 0, 128]));
        let mut out = vec![0f32; p.image_len()];
        p.normalize_into(&img, &mut out);
        let plane = 224 * 224;
        assert!((out[0] - (1.0 - 0.485) / 0.229).abs() < 1e-6);
        assert!((out[plane] - (0.0 - 0.456) / 0.224).abs() < 1e-6);
        assert!((out[2 * plane + 5] - (128.0 / 255.0 - 0.406) / 0.225).abs() < 1e-6);
    }

    #[test]
    fn tiny_and_extreme_aspect_images_resize_to_input_size() {
        let p = pre();
        for (w, h) in [(1, 1), (1, 5000), (3000, 2), (224, 224)] {
            let img = RgbImage::from_pixel(w, h, image::Rgb([10, 20, 30]));
            let out = p.resize(&img);
            assert_eq!(out.dimensions(), (224, 224));
            assert_eq!(out.get_pixel(100, 100).0, [10, 20, 30], "{w}x{h}");
        }
    }
}
