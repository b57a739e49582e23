//! Inputs that are small encoded and large decoded, made here byte by byte:
//! valid files (correct CRCs, complete zlib streams) whose pixels or
//! metadata inflate to hundreds of megabytes. For the memory tests: a
//! server must refuse them, or decode them within its budget.

use std::io::Write;

use flate2::write::ZlibEncoder;
use flate2::Compression;

/// zlib of `len` zero bytes, written a megabyte at a time.
fn zlib_zeros(len: usize) -> Vec<u8> {
    let mut z = ZlibEncoder::new(Vec::new(), Compression::best());
    let block = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(block.len());
        z.write_all(&block[..n]).unwrap();
        left -= n;
    }
    z.finish().unwrap()
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = super::corpus::crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// A black `w`x`h` PNG; `color` is the PNG colour type (2 RGB, 6 RGBA),
/// `depth` 8 or 16; `iccp` a profile of that many zero bytes, compressed.
pub fn png(w: u32, h: u32, color: u8, depth: u8, iccp: usize) -> Vec<u8> {
    let channels = if color == 6 { 4 } else { 3 };
    let row = 1 + w as usize * channels * usize::from(depth / 8);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[depth, color, 0, 0, 0]);
    png_chunk(&mut out, b"IHDR", &ihdr);
    if iccp > 0 {
        let mut chunk = b"bomb\0\0".to_vec();
        chunk.extend_from_slice(&zlib_zeros(iccp));
        png_chunk(&mut out, b"iCCP", &chunk);
    }
    png_chunk(&mut out, b"IDAT", &zlib_zeros(row * h as usize));
    png_chunk(&mut out, b"IEND", &[]);
    out
}

/// A black `w`x`h` 16-bit RGBA TIFF, deflate-compressed, in strips of 64
/// rows that all point at one compressed strip (a few kilobytes in all).
pub fn tiff_rgba16(w: u32, h: u32) -> Vec<u8> {
    const ROWS: u32 = 64;
    let strip = zlib_zeros(w as usize * 8 * ROWS as usize);
    let strips = h.div_ceil(ROWS);
    let entries: [(u16, u16, u32, u32); 12] = [
        (256, 4, 1, w),      // ImageWidth
        (257, 4, 1, h),      // ImageLength
        (258, 3, 4, 0),      // BitsPerSample: 16,16,16,16 (offset below)
        (259, 3, 1, 8),      // Compression: deflate
        (262, 3, 1, 2),      // Photometric: RGB
        (273, 4, strips, 0), // StripOffsets (offset below)
        (277, 3, 1, 4),      // SamplesPerPixel
        (278, 4, 1, ROWS),   // RowsPerStrip
        (279, 4, strips, 0), // StripByteCounts (offset below)
        (284, 3, 1, 1),      // PlanarConfiguration: chunky
        (338, 3, 1, 2),      // ExtraSamples: unassociated alpha
        (339, 3, 4, 0),      // SampleFormat (offset below): unsigned
    ];
    let ifd = 8u32;
    let ifd_len = 2 + entries.len() as u32 * 12 + 4;
    let bits_at = ifd + ifd_len;
    let format_at = bits_at + 8;
    let offsets_at = format_at + 8;
    let counts_at = offsets_at + 4 * strips;
    let strip_at = counts_at + 4 * strips;
    let mut t = b"II*\0".to_vec();
    t.extend_from_slice(&ifd.to_le_bytes());
    t.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    for (tag, kind, count, value) in entries {
        let value = match tag {
            258 => bits_at,
            339 => format_at,
            273 => offsets_at,
            279 => counts_at,
            _ => value,
        };
        t.extend_from_slice(&tag.to_le_bytes());
        t.extend_from_slice(&kind.to_le_bytes());
        t.extend_from_slice(&count.to_le_bytes());
        t.extend_from_slice(&value.to_le_bytes());
    }
    t.extend_from_slice(&0u32.to_le_bytes());
    for _ in 0..4 {
        t.extend_from_slice(&16u16.to_le_bytes());
    }
    for _ in 0..4 {
        t.extend_from_slice(&1u16.to_le_bytes());
    }
    for _ in 0..strips {
        t.extend_from_slice(&strip_at.to_le_bytes());
    }
    for _ in 0..strips {
        t.extend_from_slice(&(strip.len() as u32).to_le_bytes());
    }
    t.extend_from_slice(&strip);
    t
}

/// A `w`x`h` GIF whose one frame's LZW stream ends at once: a decoder
/// allocates the frame, then fills it or refuses.
pub fn gif(w: u16, h: u16) -> Vec<u8> {
    let mut g = b"GIF89a".to_vec();
    g.extend_from_slice(&w.to_le_bytes());
    g.extend_from_slice(&h.to_le_bytes());
    g.extend_from_slice(&[0x80, 0, 0, 0, 0, 0, 255, 255, 255]);
    g.extend_from_slice(&[0x2c, 0, 0, 0, 0]);
    g.extend_from_slice(&w.to_le_bytes());
    g.extend_from_slice(&h.to_le_bytes());
    g.extend_from_slice(&[0, 2]);
    g.extend_from_slice(&[2, 0x44, 0x01, 0, 0x3b]);
    g
}

/// A progressive JPEG header (SOF2, three components, no subsampling)
/// declaring `w`x`h`, on a real baseline file's tables and scan.
pub fn progressive_jpeg(w: u16, h: u16) -> Vec<u8> {
    let photo = image::RgbImage::from_pixel(64, 64, image::Rgb([90, 120, 150]));
    let mut j = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut j, 90)
        .encode_image(&photo)
        .unwrap();
    let sof = j
        .windows(2)
        .position(|m| m == [0xff, 0xc0])
        .expect("a baseline JPEG has SOF0");
    j[sof + 1] = 0xc2;
    j[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
    j[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
    let components = usize::from(j[sof + 9]);
    for c in 0..components {
        j[sof + 10 + 3 * c + 1] = 0x11;
    }
    j
}
