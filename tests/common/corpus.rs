//! The bad-input corpus, generated: every case is made here from the sample
//! photos with the `image` crate's encoders and patched headers, so nothing
//! depends on files that happen to be in the repository.

use std::io::Cursor;

use image::{DynamicImage, ImageFormat, RgbImage};

/// What a door must answer for an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Classified.
    Ok,
    /// Refused with this stable code.
    Code(&'static str),
}

/// One encoded input.
pub struct Case {
    pub name: &'static str,
    pub bytes: Vec<u8>,
    pub expect: Expect,
}

fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

/// A photo-like test image (the sample cat, downscaled).
fn photo() -> DynamicImage {
    let png = std::fs::read(super::data("images/chelsea.png")).unwrap();
    image::load_from_memory(&png)
        .unwrap()
        .resize(160, 160, image::imageops::FilterType::Triangle)
}

/// CRC-32 (IEEE), as PNG chunks need.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn be32(bytes: &mut [u8], at: usize, v: u32) {
    bytes[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

fn le32(bytes: &mut [u8], at: usize, v: u32) {
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// A real PNG whose IHDR declares `w`x`h` (CRC fixed up).
fn png_declaring(w: u32, h: u32) -> Vec<u8> {
    let mut p = encode(&photo(), ImageFormat::Png);
    // Signature (8), length (4), "IHDR" (4), then width and height.
    be32(&mut p, 16, w);
    be32(&mut p, 20, h);
    let crc = crc32(&p[12..29]);
    be32(&mut p, 29, crc);
    p
}

/// A real BMP whose DIB header declares `w`x`h`.
fn bmp_declaring(w: u32, h: u32) -> Vec<u8> {
    let mut b = encode(&photo(), ImageFormat::Bmp);
    le32(&mut b, 18, w);
    le32(&mut b, 22, h);
    b
}

/// A real baseline JPEG whose SOF0 declares `w`x`h`.
fn jpeg_declaring(w: u16, h: u16) -> Vec<u8> {
    let mut j = encode(&photo(), ImageFormat::Jpeg);
    let sof = j
        .windows(2)
        .position(|m| m == [0xff, 0xc0])
        .expect("a baseline JPEG has SOF0");
    j[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
    j[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
    j
}

/// A real lossless WebP whose VP8L header declares `side`x`side`.
pub fn webp_declaring(side: u32) -> Vec<u8> {
    let mut w = encode(&photo(), ImageFormat::WebP);
    let at = w
        .windows(4)
        .position(|m| m == b"VP8L")
        .expect("the encoder writes lossless WebP");
    // Chunk header (8) and the 0x2f signature, then 14 bits width-1, 14
    // bits height-1, alpha, version (little-endian bit order).
    let bits = u32::from_le_bytes(w[at + 9..at + 13].try_into().unwrap());
    let patched = (bits & !0x0fff_ffff) | (side - 1) | ((side - 1) << 14);
    w[at + 9..at + 13].copy_from_slice(&patched.to_le_bytes());
    w
}

/// A real uncompressed TIFF whose IFD declares `w`x`h` in one strip.
fn tiff_declaring(w: u32, h: u32) -> Vec<u8> {
    let mut t = encode(&photo(), ImageFormat::Tiff);
    assert_eq!(&t[..4], b"II*\0", "little-endian TIFF");
    let u16_at = |t: &[u8], at: usize| u16::from_le_bytes(t[at..at + 2].try_into().unwrap());
    let u32_at = |t: &[u8], at: usize| u32::from_le_bytes(t[at..at + 4].try_into().unwrap());
    let ifd = u32_at(&t, 4) as usize;
    for i in 0..u16_at(&t, ifd) as usize {
        let e = ifd + 2 + i * 12;
        let (tag, kind, count) = (u16_at(&t, e), u16_at(&t, e + 2), u32_at(&t, e + 4));
        let value = match tag {
            256 => w,
            257 | 278 => h, // ImageLength, RowsPerStrip: one strip
            // StripOffsets, StripByteCounts: keep the first strip's value, inline.
            273 | 279 if count > 1 => {
                let first = u32_at(&t, e + 8) as usize;
                if kind == 3 {
                    u32::from(u16_at(&t, first))
                } else {
                    u32_at(&t, first)
                }
            }
            273 | 279 => {
                if kind == 3 {
                    u32::from(u16_at(&t, e + 8))
                } else {
                    u32_at(&t, e + 8)
                }
            }
            _ => continue,
        };
        t[e + 2..e + 4].copy_from_slice(&4u16.to_le_bytes());
        le32(&mut t, e + 4, 1);
        le32(&mut t, e + 8, value);
    }
    t
}

/// GIF header + image descriptor declaring 65535x65535, tiny LZW body.
fn gif_declaring_max() -> Vec<u8> {
    let mut g = b"GIF89a".to_vec();
    g.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x80, 0, 0]);
    g.extend_from_slice(&[0, 0, 0, 255, 255, 255]);
    g.extend_from_slice(&[0x2c, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0]);
    g.extend_from_slice(&[2, 2, 0x44, 0x01, 0, 0x3b]);
    g
}

/// Two frames: only the first is classified.
fn animated_gif() -> Vec<u8> {
    use image::codecs::gif::GifEncoder;
    use image::{Delay, Frame};
    let first = photo().to_rgba8();
    let second = DynamicImage::ImageRgb8(RgbImage::new(160, 160)).to_rgba8();
    let mut out = Vec::new();
    {
        let mut enc = GifEncoder::new(&mut out);
        for f in [first, second] {
            enc.encode_frame(Frame::from_parts(
                f,
                0,
                0,
                Delay::from_numer_denom_ms(100, 1),
            ))
            .unwrap();
        }
    }
    out
}

/// A JPEG with an APP1 "Exif" segment full of garbage.
fn jpeg_with_broken_exif() -> Vec<u8> {
    let j = encode(&photo(), ImageFormat::Jpeg);
    let mut app1 = vec![0xff, 0xe1, 0x00, 0x20];
    app1.extend_from_slice(b"Exif\0\0MM\0*\xff\xff\xff\xff");
    app1.resize(2 + 0x20, 0xee);
    let mut out = j[..2].to_vec();
    out.extend_from_slice(&app1);
    out.extend_from_slice(&j[2..]);
    out
}

/// Seeded pseudo-random bytes (xorshift), so a failure reproduces.
pub fn random_bytes(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

/// Every image case, with what every door must answer.
pub fn images() -> Vec<Case> {
    use Expect::{Code, Ok};
    let img = photo();
    let truncated = |format: ImageFormat| {
        let full = encode(&img, format);
        full[..full.len() * 2 / 3].to_vec()
    };
    let mut cases = vec![
        Case {
            name: "empty",
            bytes: vec![],
            expect: Code("empty_input"),
        },
        Case {
            name: "random bytes",
            bytes: random_bytes(4096, 42),
            expect: Code("unsupported_format"),
        },
        Case {
            name: "html error page",
            bytes: b"<html><body>403 Forbidden</body></html>".to_vec(),
            expect: Code("unsupported_format"),
        },
        Case {
            name: "png signature only",
            bytes: encode(&img, ImageFormat::Png)[..8].to_vec(),
            expect: Code("corrupt_image"),
        },
        Case {
            name: "png pixel bomb 100000x100000",
            bytes: png_declaring(100_000, 100_000),
            expect: Code("image_too_large"),
        },
        Case {
            name: "bmp pixel bomb 60000x60000 (decoders refuse sides over 65535 themselves)",
            bytes: bmp_declaring(60_000, 60_000),
            expect: Code("image_too_large"),
        },
        Case {
            name: "jpeg pixel bomb 65000x65000",
            bytes: jpeg_declaring(65_000, 65_000),
            expect: Code("image_too_large"),
        },
        Case {
            name: "webp pixel bomb 10000x10000",
            bytes: webp_declaring(10_000),
            expect: Code("image_too_large"),
        },
        Case {
            name: "tiff pixel bomb 60000x60000",
            bytes: tiff_declaring(60_000, 60_000),
            expect: Code("image_too_large"),
        },
        Case {
            name: "gif pixel bomb 65535x65535",
            bytes: gif_declaring_max(),
            expect: Code("image_too_large"),
        },
        Case {
            name: "animated gif",
            bytes: animated_gif(),
            expect: Ok,
        },
        Case {
            name: "1x1 png",
            bytes: encode(
                &DynamicImage::ImageRgb8(RgbImage::new(1, 1)),
                ImageFormat::Png,
            ),
            expect: Ok,
        },
        Case {
            name: "10000x10 png",
            bytes: encode(
                &DynamicImage::ImageRgb8(RgbImage::new(10_000, 10)),
                ImageFormat::Png,
            ),
            expect: Ok,
        },
        Case {
            name: "jpeg with broken exif",
            bytes: jpeg_with_broken_exif(),
            expect: Ok,
        },
    ];
    for (name, format) in [
        ("truncated jpeg", ImageFormat::Jpeg),
        ("truncated png", ImageFormat::Png),
        ("truncated gif", ImageFormat::Gif),
        ("truncated bmp", ImageFormat::Bmp),
        ("truncated webp", ImageFormat::WebP),
        ("truncated tiff", ImageFormat::Tiff),
    ] {
        cases.push(Case {
            name,
            bytes: truncated(format),
            expect: Code("corrupt_image"),
        });
    }
    // Damaged in the middle of the header: the PNG's IHDR CRC no longer matches.
    let mut bad_crc = encode(&img, ImageFormat::Png);
    bad_crc[29] ^= 0xff;
    cases.push(Case {
        name: "png with a corrupt header checksum",
        bytes: bad_crc,
        expect: Code("corrupt_image"),
    });
    cases
}
