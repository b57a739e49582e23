//! Decoded image to input tensor: convert, resize, crop, normalise (the
//! decode, and the limits on untrusted input, are `decode`'s).
//!
//! The resize and the centre crop happen in one pass: instead of resizing the
//! whole photo so its shorter side is 256 and then cutting 224x224 out of it
//! (as torchvision/Pillow do), we resample only the source rectangle that the
//! crop would keep, at the same scale. The output is the same pixels (same
//! filter support, same sample positions) without allocating the
//! intermediate image.

use fast_image_resize as fir;
use image::{DynamicImage, RgbImage};

use crate::model::manifest::{ChannelOrder, Crop, Interpolation, Layout, Manifest};

/// Converts any colour type to 8-bit RGB: grey is replicated, alpha is
/// dropped (as Pillow's `convert("RGB")`), 16-bit and float are scaled.
/// CMYK JPEGs are already RGB when they leave the decoder.
///
/// 8-bit RGBA (every GIF, most PNGs and WebPs with alpha) is narrowed in
/// its own buffer, so the conversion needs no second image: the decode's
/// memory budget (`decode::peak_bytes`) counts on it.
pub(crate) fn to_rgb8(image: DynamicImage) -> RgbImage {
    match image {
        DynamicImage::ImageRgb8(rgb) => rgb,
        DynamicImage::ImageRgba8(rgba) => {
            let (w, h) = rgba.dimensions();
            let mut raw = rgba.into_raw();
            let pixels = raw.len() / 4;
            // Pixel i moves from 4i to 3i: never over a pixel not yet moved.
            for i in 1..pixels {
                raw.copy_within(4 * i..4 * i + 3, 3 * i);
            }
            raw.truncate(3 * pixels);
            RgbImage::from_raw(w, h, raw).expect("3 bytes a pixel fill the dimensions")
        }
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
    /// (nearly) the pixels it would see at full size: see
    /// [`decode_for`](crate::decode::decode_for).
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
    fn rgba_is_narrowed_in_place_as_the_image_crate_converts_it() {
        let rgba = image::RgbaImage::from_fn(37, 11, |x, y| {
            image::Rgba([x as u8, y as u8, (x * y) as u8, (x + y) as u8])
        });
        let expected = DynamicImage::ImageRgba8(rgba.clone()).into_rgb8();
        let ours = to_rgb8(DynamicImage::ImageRgba8(rgba));
        assert_eq!(ours, expected);
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
