//! The inference core against real data: ONNX Runtime's logits, real photos,
//! re-encodings, and hostile inputs.

use crate::common;

use std::io::Cursor;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use common::data;
use image::{DynamicImage, ImageEncoder, ImageFormat};
use onnx_lambda::{Classifier, ErrorCode, InputLimits, LoadOptions, Model};

fn classifier() -> &'static Classifier {
    static C: OnceLock<Classifier> = OnceLock::new();
    C.get_or_init(|| {
        let model = Model::load_path(&onnx_lambda::bundled_model_path(), LoadOptions::default())
            .expect("bundled model loads");
        Classifier::new(Arc::new(model), InputLimits::default())
    })
}

fn read_f32le(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn top1(bytes: &[u8]) -> usize {
    classifier()
        .classify(bytes, 1)
        .expect("classifies")
        .predictions[0]
        .index
}

#[test]
fn logits_match_onnxruntime_within_1e_4() {
    let input = read_f32le(&data("testdata/chelsea.input.1x3x224x224.f32le"));
    let expected = read_f32le(&data("testdata/chelsea.logits.onnxruntime.1x1000.f32le"));
    assert_eq!(input.len(), 3 * 224 * 224);
    let got = classifier().run(input).unwrap().remove(0);
    assert_eq!((got.len(), expected.len()), (1000, 1000));
    let max_diff = got
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(max_diff < 1e-4, "max abs logit difference {max_diff}");
}

/// The photo re-encoded as a JPEG whose longer side is 4032 pixels (a
/// 12-megapixel phone photo), upscaled with Catmull-Rom.
fn twelve_megapixel_jpeg(bytes: &[u8]) -> Vec<u8> {
    let img = image::load_from_memory(bytes).unwrap().to_rgb8();
    let (w, h) = img.dimensions();
    let scale = 4032.0 / f64::from(w.max(h));
    let (bw, bh) = (
        (f64::from(w) * scale).round() as u32,
        (f64::from(h) * scale).round() as u32,
    );
    let big = image::imageops::resize(&img, bw, bh, image::imageops::FilterType::CatmullRom);
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .write_image(big.as_raw(), bw, bh, image::ExtendedColorType::Rgb8)
        .unwrap();
    out
}

/// Large JPEGs take the DCT-scaled decode (1/8 here), and their top-5 still
/// shares at least 4 classes with ONNX Runtime's on the original photo.
#[test]
fn large_jpegs_decode_scaled_and_keep_onnxruntimes_top5() {
    let limits = InputLimits::default();
    for (file, ort_top5) in expected_top5() {
        let big = twelve_megapixel_jpeg(&std::fs::read(data(&format!("images/{file}"))).unwrap());
        let full = onnx_lambda::decode::decode(&big, &limits).unwrap();
        let scaled = onnx_lambda::decode::decode_for(&big, &limits, 256).unwrap();
        assert_eq!(full.width().max(full.height()), 4032, "{file}");
        assert_eq!(
            (scaled.width(), scaled.height()),
            (full.width().div_ceil(8), full.height().div_ceil(8)),
            "{file}: a 1/8 decode still has a shorter side over 256"
        );
        let c = classifier().classify(&big, 5).unwrap();
        let ours: Vec<usize> = c.predictions.iter().map(|p| p.index).collect();
        let shared = ours.iter().filter(|i| ort_top5.contains(i)).count();
        assert!(
            shared >= 4,
            "{file} at 12 MP: top-5 {ours:?} shares {shared} with onnxruntime {ort_top5:?}"
        );
    }
}

/// Expected class families, from `tests/data/images/README.md` (SOURCES.md).
fn family(file: &str) -> &'static [usize] {
    match file {
        "chelsea.png" => &[285, 281, 282],
        "coffee.png" => &[967, 968],
        "rocket.jpg" => &[657, 744, 812],
        "grace_hopper.jpg" => &[652, 457],
        "china.jpg" => &[698, 663],
        other => panic!("no expected family for {other}"),
    }
}

fn expected_top5() -> Vec<(String, Vec<usize>)> {
    std::fs::read_to_string(data("images/expected_top5_onnxruntime.tsv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|line| {
            let cols: Vec<&str> = line.split('\t').collect();
            let top5 = cols[4].split(',').map(|i| i.parse().unwrap()).collect();
            (cols[0].to_string(), top5)
        })
        .collect()
}

#[test]
fn every_photo_gets_its_family_and_onnxruntimes_top5() {
    let expected = expected_top5();
    assert_eq!(expected.len(), 5);
    let bytes: Vec<Vec<u8>> = expected
        .iter()
        .map(|(f, _)| std::fs::read(data(&format!("images/{f}"))).unwrap())
        .collect();
    let inputs: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
    let results = classifier().classify_batch(&inputs, 5);
    assert_eq!(results.len(), expected.len(), "one result per photo");
    for ((file, ort_top5), result) in expected.iter().zip(results) {
        let c = result.unwrap_or_else(|e| panic!("{file}: {e}"));
        let ours: Vec<usize> = c.predictions.iter().map(|p| p.index).collect();
        assert!(
            family(file).contains(&ours[0]),
            "{file}: top-1 {} not in {:?}",
            ours[0],
            family(file)
        );
        let shared = ours.iter().filter(|i| ort_top5.contains(i)).count();
        assert!(
            shared >= 4,
            "{file}: top-5 {ours:?} shares {shared} with onnxruntime {ort_top5:?}"
        );
        let probs: Vec<f32> = c.predictions.iter().map(|p| p.probability).collect();
        assert!(
            probs.windows(2).all(|w| w[0] >= w[1]),
            "{file}: not sorted {probs:?}"
        );
        assert!(c.timing_ms.total >= c.timing_ms.inference && c.timing_ms.inference > 0.0);
    }
}

fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

/// A little-endian EXIF (TIFF) block holding only the orientation tag.
fn exif_orientation(value: u8) -> Vec<u8> {
    let mut exif = b"II\x2a\x00\x08\x00\x00\x00\x01\x00\x12\x01\x03\x00\x01\x00\x00\x00".to_vec();
    exif.extend_from_slice(&[value, 0, 0, 0, 0, 0, 0, 0]);
    exif
}

fn jpeg_with_orientation(img: &DynamicImage, orientation: u8) -> Vec<u8> {
    let rgb = img.to_rgb8();
    let mut out = Vec::new();
    let mut enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95);
    enc.set_exif_metadata(exif_orientation(orientation))
        .unwrap();
    enc.write_image(
        rgb.as_raw(),
        rgb.width(),
        rgb.height(),
        image::ExtendedColorType::Rgb8,
    )
    .unwrap();
    out
}

#[test]
fn reencoded_photo_keeps_its_top1() {
    let original = std::fs::read(data("images/chelsea.png")).unwrap();
    let img = image::load_from_memory(&original).unwrap();
    let want = top1(&original);
    let grey = DynamicImage::ImageLuma8(img.to_luma8());
    let variants: Vec<(&str, Vec<u8>)> = vec![
        ("jpeg", encode(&img, ImageFormat::Jpeg)),
        ("png", encode(&img, ImageFormat::Png)),
        ("bmp", encode(&img, ImageFormat::Bmp)),
        ("webp", encode(&img, ImageFormat::WebP)),
        ("tiff", encode(&img, ImageFormat::Tiff)),
        ("ppm", encode(&img, ImageFormat::Pnm)),
        ("grey png", encode(&grey, ImageFormat::Png)),
        (
            "rgba png",
            encode(&DynamicImage::ImageRgba8(img.to_rgba8()), ImageFormat::Png),
        ),
        (
            "16-bit png",
            encode(&DynamicImage::ImageRgb16(img.to_rgb16()), ImageFormat::Png),
        ),
        (
            "grey+alpha png",
            encode(
                &DynamicImage::ImageLumaA8(img.to_luma_alpha8()),
                ImageFormat::Png,
            ),
        ),
        // Stored upside down, EXIF says "rotate 180 to display".
        (
            "jpeg rotated 180 + exif 3",
            jpeg_with_orientation(&img.rotate180(), 3),
        ),
        // Stored turned left, EXIF says "rotate 90 clockwise to display".
        (
            "jpeg rotated 270 + exif 6",
            jpeg_with_orientation(&img.rotate270(), 6),
        ),
        // Stored turned right, EXIF says "rotate 270 clockwise to display".
        (
            "jpeg rotated 90 + exif 8",
            jpeg_with_orientation(&img.rotate90(), 8),
        ),
    ];
    for (name, bytes) in &variants {
        assert_eq!(top1(bytes), want, "{name}");
    }
    // Control: without the EXIF tag the upside-down photo is not the same input.
    let upside_down = classifier()
        .classify(&encode(&img.rotate180(), ImageFormat::Png), 5)
        .unwrap();
    let upright = classifier().classify(&original, 5).unwrap();
    assert_ne!(upside_down.predictions, upright.predictions);
}

#[test]
fn gif_first_frame_is_classified() {
    let img = image::load_from_memory(&std::fs::read(data("images/coffee.png")).unwrap()).unwrap();
    let small = img.resize(320, 320, image::imageops::FilterType::Triangle);
    let gif = encode(
        &DynamicImage::ImageRgba8(small.to_rgba8()),
        ImageFormat::Gif,
    );
    assert!(family("coffee.png").contains(&top1(&gif)));
}

fn error_code(bytes: &[u8], limits: InputLimits) -> String {
    let model = classifier().model().clone();
    let c = Classifier::new(model, limits);
    match c.classify(bytes, 5) {
        Ok(r) => panic!("expected an error, got {:?}", r.predictions[0]),
        Err(e) => {
            assert!(!e.to_string().is_empty());
            e.code().to_string()
        }
    }
}

/// GIF header + image descriptor declaring 65535x65535 (4.3 gigapixels), tiny LZW body.
fn gif_pixel_bomb() -> Vec<u8> {
    let mut g = b"GIF89a".to_vec();
    g.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x80, 0, 0]); // screen, 2-colour table
    g.extend_from_slice(&[0, 0, 0, 255, 255, 255]);
    g.extend_from_slice(&[0x2c, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0]); // image descriptor
    g.extend_from_slice(&[2, 2, 0x44, 0x01, 0, 0x3b]); // LZW data, trailer
    g
}

#[test]
fn hostile_inputs_get_typed_errors() {
    let limits = InputLimits::default();
    let jpeg = std::fs::read(data("images/grace_hopper.jpg")).unwrap();
    let png = std::fs::read(data("images/chelsea.png")).unwrap();
    let bomb = gif_pixel_bomb();
    let img = image::load_from_memory(&png).unwrap();
    let truncated = |format: ImageFormat| {
        let full = encode(&img, format);
        full[..full.len() * 2 / 3].to_vec()
    };
    assert!(bomb.len() < 64);
    let cases: Vec<(&str, Vec<u8>, InputLimits, &str)> = vec![
        ("empty", vec![], limits, "empty_input"),
        (
            "text",
            b"hello, this is not an image\n".to_vec(),
            limits,
            "unsupported_format",
        ),
        (
            "html error page",
            b"<html><body>403 Forbidden</body></html>".to_vec(),
            limits,
            "unsupported_format",
        ),
        (
            "ico",
            vec![0, 0, 1, 0, 1, 0, 16, 16, 0, 0],
            limits,
            "unsupported_format",
        ),
        (
            "truncated jpeg",
            jpeg[..jpeg.len() / 3].to_vec(),
            limits,
            "corrupt_image",
        ),
        (
            "truncated png",
            png[..png.len() / 2].to_vec(),
            limits,
            "corrupt_image",
        ),
        (
            "jpeg header only",
            jpeg[..200].to_vec(),
            limits,
            "corrupt_image",
        ),
        (
            "truncated jpeg encoded here",
            truncated(ImageFormat::Jpeg),
            limits,
            "corrupt_image",
        ),
        (
            "truncated bmp",
            truncated(ImageFormat::Bmp),
            limits,
            "corrupt_image",
        ),
        (
            "truncated webp",
            truncated(ImageFormat::WebP),
            limits,
            "corrupt_image",
        ),
        (
            "truncated tiff",
            truncated(ImageFormat::Tiff),
            limits,
            "corrupt_image",
        ),
        (
            "truncated gif",
            truncated(ImageFormat::Gif),
            limits,
            "corrupt_image",
        ),
        (
            "truncated ppm",
            truncated(ImageFormat::Pnm),
            limits,
            "corrupt_image",
        ),
        (
            "png signature only",
            png[..8].to_vec(),
            limits,
            "corrupt_image",
        ),
        ("gif pixel bomb", bomb, limits, "image_too_large"),
        (
            "over pixel limit",
            png.clone(),
            InputLimits {
                max_pixels: 1000,
                ..limits
            },
            "image_too_large",
        ),
        (
            "over byte limit",
            png.clone(),
            InputLimits {
                max_bytes: 1000,
                ..limits
            },
            "input_too_large",
        ),
    ];
    let mut wrong = Vec::new();
    for (name, bytes, limits, code) in cases {
        let got = std::panic::catch_unwind(|| error_code(&bytes, limits));
        match got {
            Ok(got) if got == code => {}
            Ok(got) => wrong.push(format!("{name}: {got}, want {code}")),
            Err(_) => wrong.push(format!("{name}: no error, want {code}")),
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn one_bad_input_does_not_disturb_a_batch() {
    let good = std::fs::read(data("images/coffee.png")).unwrap();
    let inputs: Vec<&[u8]> = vec![&good, b"", &good[..100], &good];
    let results = classifier().classify_batch(&inputs, 3);
    assert_eq!(results.len(), 4);
    assert!(results[0].is_ok() && results[3].is_ok());
    assert_eq!(results[1].as_ref().unwrap_err().code(), "empty_input");
    assert_eq!(results[2].as_ref().unwrap_err().code(), "corrupt_image");
    assert_eq!(
        results[0].as_ref().unwrap().predictions,
        results[3].as_ref().unwrap().predictions
    );
}

#[test]
fn fixed_batch_plan_agrees_with_batch1_plan() {
    let model = Model::load_path(
        &onnx_lambda::bundled_model_path(),
        LoadOptions {
            plan_batch: 4,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    assert_eq!(model.plan_batch(), 4);
    let batched = Classifier::new(Arc::new(model), InputLimits::default());
    let files = [
        "chelsea.png",
        "china.jpg",
        "rocket.jpg",
        "coffee.png",
        "grace_hopper.jpg",
    ];
    let bytes: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(data(&format!("images/{f}"))).unwrap())
        .collect();
    let mut inputs: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
    inputs.insert(2, b"junk");
    let a = batched.classify_batch(&inputs, 5);
    let b = classifier().classify_batch(&inputs, 5);
    assert_eq!((a.len(), b.len()), (inputs.len(), inputs.len()));
    for (x, y) in a.iter().zip(&b) {
        match (x, y) {
            (Ok(x), Ok(y)) => {
                let xi: Vec<usize> = x.predictions.iter().map(|p| p.index).collect();
                let yi: Vec<usize> = y.predictions.iter().map(|p| p.index).collect();
                assert_eq!(xi[0], yi[0]);
                assert!((x.predictions[0].probability - y.predictions[0].probability).abs() < 1e-4);
            }
            (Err(x), Err(y)) => assert_eq!(x.code(), y.code()),
            _ => panic!("batch-4 and batch-1 disagree on success"),
        }
    }
}

#[test]
fn preprocessing_matches_pillow_reference_tensor() {
    let reference = read_f32le(&data("testdata/chelsea.input.1x3x224x224.f32le"));
    let bytes = std::fs::read(data("images/chelsea.png")).unwrap();
    let pre = onnx_lambda::preprocess::Preprocessor::new(classifier().model().manifest());
    let img = onnx_lambda::decode::decode(&bytes, &InputLimits::default()).unwrap();
    let mut ours = vec![0f32; pre.image_len()];
    pre.preprocess_into(img, &mut ours);
    assert_eq!(
        (ours.len(), reference.len()),
        (3 * 224 * 224, 3 * 224 * 224)
    );
    let diffs: Vec<f32> = ours
        .iter()
        .zip(&reference)
        .map(|(a, b)| (a - b).abs())
        .collect();
    let max = diffs.iter().copied().fold(0f32, f32::max);
    let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
    eprintln!("max {max} mean {mean}");
    // One 8-bit step is 1/255/std ~ 0.0175 in normalised units.
    assert!(max < 0.02 && mean < 0.005, "max {max}, mean {mean}");
}

/// One image on two threads (the whole run inside the operator pool, each
/// operator splitting its channels) scores as one thread does.
#[test]
fn one_image_on_two_threads_scores_as_on_one() {
    let bytes = std::fs::read(data("images/chelsea.png")).unwrap();
    let model = classifier().model().clone();
    let one = Classifier::new(model.clone(), InputLimits::default()).with_threads(1);
    let two = Classifier::new(model, InputLimits::default()).with_threads(2);
    for _ in 0..3 {
        let (a, b) = (
            one.classify(&bytes, 5).unwrap(),
            two.classify(&bytes, 5).unwrap(),
        );
        let pairs: Vec<_> = a.predictions.iter().zip(&b.predictions).collect();
        assert_eq!(pairs.len(), 5);
        for (x, y) in pairs {
            assert_eq!(x.index, y.index);
            assert!((x.probability - y.probability).abs() < 1e-5);
        }
    }
}

/// Regression: concurrent single-image requests share one operator pool.
/// When each whole run was queued on the pool, a pool thread waiting inside
/// one image's matrix product picked up another image's run and re-entered
/// tract's per-thread scratch ("RefCell already borrowed", an `internal`
/// error to the caller; CI, `s3_model`, 2026-11-28).
#[test]
fn concurrent_single_images_on_one_pool_all_score_alike() {
    let bytes = std::fs::read(data("images/chelsea.png")).unwrap();
    let model = classifier().model().clone();
    let reference = Classifier::new(model.clone(), InputLimits::default())
        .with_threads(1)
        .classify(&bytes, 5)
        .unwrap();
    let shared = Classifier::new(model, InputLimits::default()).with_threads(2);
    std::thread::scope(|scope| {
        let callers: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    (0..6)
                        .map(|_| shared.classify(&bytes, 5))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for caller in callers {
            for result in caller.join().unwrap() {
                let got = result.unwrap_or_else(|e| panic!("concurrent run failed: {e}"));
                for (x, y) in reference.predictions.iter().zip(&got.predictions) {
                    assert_eq!(x.index, y.index);
                    assert!((x.probability - y.probability).abs() < 1e-5);
                }
            }
        }
    });
}

/// A local model file is mapped rather than read (`model/loader.rs`): it
/// gets every check an S3 object gets, and the same digest.
#[tokio::test]
async fn a_local_model_file_gets_the_checks_an_s3_object_gets() {
    use onnx_lambda::{Config, LoadError, Location, ModelError, ModelLoader};
    let dir = std::env::temp_dir().join(format!("onnx-lambda-local-model-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bytes = std::fs::read(onnx_lambda::bundled_model_path()).unwrap();
    let file = dir.join("m.onnx");
    std::fs::write(&file, &bytes).unwrap();
    let config = |path: &Path| Config {
        model: Location::File(path.to_path_buf()),
        ..Config::default()
    };
    let loader = ModelLoader::new(None);

    let loaded = loader.load(&config(&file)).await.unwrap();
    let digest = onnx_lambda::model::hex_sha256(&bytes);
    assert_eq!(loaded.model.info().sha256, digest);
    assert_eq!(loaded.model.info().size_bytes, bytes.len());

    let pinned = Config {
        model_sha256: Some(digest.clone()),
        ..config(&file)
    };
    assert_eq!(
        loader.load(&pinned).await.unwrap().model.info().sha256,
        digest
    );
    let wrong = Config {
        model_sha256: Some("0".repeat(64)),
        ..config(&file)
    };
    match loader.load(&wrong).await.unwrap_err() {
        LoadError::Checksum { actual, .. } => assert_eq!(actual, digest),
        e => panic!("{e}"),
    }

    let capped = Config {
        model_max_bytes: 1_000_000,
        ..config(&file)
    };
    match loader.load(&capped).await.unwrap_err() {
        LoadError::TooLarge { size, limit, .. } => {
            assert_eq!((size, limit), (bytes.len() as u64, 1_000_000))
        }
        e => panic!("{e}"),
    }

    let empty = dir.join("empty.onnx");
    std::fs::write(&empty, b"").unwrap();
    let err = loader.load(&config(&empty)).await.unwrap_err();
    assert!(
        matches!(err, LoadError::Model(ModelError::NotOnnx { .. }))
            && err.to_string().contains("empty"),
        "{err}"
    );
    let err = loader
        .load(&config(&dir.join("missing.onnx")))
        .await
        .unwrap_err();
    assert!(matches!(err, LoadError::File { .. }), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
