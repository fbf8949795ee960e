//! Decoding one file into a square 8-bit RGB training image.

use std::io::Cursor;
use std::path::Path;

use image::imageops::FilterType;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};

use super::Fit;

/// Largest width or height decoded. Real paintings are far below it (the Kaggle set's largest
/// are a few thousand px a side); a header claiming more is broken or forged.
pub const MAX_SIDE: u32 = 16_384;
/// Most bytes the decoded image may take (width × height × bytes per pixel of its colour type),
/// checked from the header before anything is decoded: a forged 15 KB JPEG claiming
/// 14000×14000 would otherwise take 561 MiB per decoding thread and decode to garbage. A
/// 12000×12000 8-bit RGB scan (412 MiB) still fits.
pub const MAX_DECODED_BYTES: u64 = 512 << 20;
/// Smallest width or height accepted: below this there is no painting to learn from.
pub const MIN_SIDE: u32 = 8;

/// A decoded, preprocessed image.
#[derive(Clone, Debug)]
pub struct Decoded {
    /// `size*size*3` bytes, HWC RGB.
    pub rgb: Vec<u8>,
    /// The original image's size.
    pub width: u32,
    pub height: u32,
}

/// Reads and preprocesses one file; the error is a short reason for the skip list.
pub fn decode_file(path: &Path, size: u32, fit: Fit) -> Result<Decoded, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    decode_bytes(&bytes, size, fit)
}

/// Same as [`decode_file`] on bytes already in memory.
pub fn decode_bytes(bytes: &[u8], size: u32, fit: Fit) -> Result<Decoded, String> {
    if bytes.is_empty() {
        return Err("empty file (0 bytes)".into());
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| format!("cannot read: {e}"))?;
    let Some(format) = reader.format() else {
        return Err("not an image (unrecognised content)".into());
    };
    // Some JPEG decoders fill a cut-off file with grey instead of failing, so check the
    // end-of-image marker ourselves (trailing bytes after it are tolerated).
    if format == ImageFormat::Jpeg {
        let tail = &bytes[bytes.len().saturating_sub(4096)..];
        if !tail.windows(2).any(|w| w == [0xFF, 0xD9]) {
            return Err("truncated JPEG (no end-of-image marker)".into());
        }
    }
    let mut reader = reader;
    // The header is read without the crate's own limits so that ours below give the reason.
    reader.no_limits();
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| format!("unreadable {format:?} header: {e}"))?;
    let (w, h) = decoder.dimensions();
    let bytes = decoder.total_bytes();
    if w > MAX_SIDE || h > MAX_SIDE || bytes > MAX_DECODED_BYTES {
        return Err(format!(
            "too large to decode: the header says {w}x{h} px ({} MiB decoded), beyond the limit \
             of {MAX_SIDE} px a side and {} MiB",
            bytes.div_ceil(1 << 20),
            MAX_DECODED_BYTES >> 20
        ));
    }
    if w < MIN_SIDE || h < MIN_SIDE {
        return Err(format!(
            "too small ({w}x{h}, need at least {MIN_SIDE} px a side)"
        ));
    }
    // The same limits again for the decoder itself, with room for its working buffers.
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(2 * MAX_DECODED_BYTES);
    decoder
        .set_limits(limits)
        .map_err(|e| format!("undecodable {format:?}: {e}"))?;
    let img =
        DynamicImage::from_decoder(decoder).map_err(|e| format!("undecodable {format:?}: {e}"))?;
    let rgb = to_rgb8(img);
    Ok(Decoded {
        rgb: preprocess(&rgb, size, fit).into_raw(),
        width: w,
        height: h,
    })
}

/// Any colour type to 8-bit RGB: grey is replicated, 16-bit and float are rescaled, alpha is
/// composited over white (transparent areas are usually the paper or background, and their
/// stored colour is arbitrary). CMYK JPEGs arrive already converted by the decoder.
pub fn to_rgb8(img: DynamicImage) -> RgbImage {
    if !img.color().has_alpha() {
        return img.into_rgb8();
    }
    let rgba = img.into_rgba16();
    let (w, h) = rgba.dimensions();
    let mut out = RgbImage::new(w, h);
    for (o, p) in out.pixels_mut().zip(rgba.pixels()) {
        let a = u32::from(p[3]);
        for c in 0..3 {
            // Blend in 16 bits, then round to 8: value*a + white*(1-a).
            let v16 = (u32::from(p[c]) * a + 65535 * (65535 - a) + 32767) / 65535;
            o[c] = ((v16 * 255 + 32767) / 65535) as u8;
        }
    }
    out
}

/// Square `size`×`size` image: Lanczos3 resize of the shorter side then centre crop, or of the
/// longer side then centred on black.
pub fn preprocess(img: &RgbImage, size: u32, fit: Fit) -> RgbImage {
    let (w, h) = img.dimensions();
    if w == size && h == size {
        return img.clone();
    }
    match fit {
        Fit::Crop => {
            let scale = f64::from(size) / f64::from(w.min(h));
            let nw = ((f64::from(w) * scale).round() as u32).max(size);
            let nh = ((f64::from(h) * scale).round() as u32).max(size);
            let resized = image::imageops::resize(img, nw, nh, FilterType::Lanczos3);
            image::imageops::crop_imm(&resized, (nw - size) / 2, (nh - size) / 2, size, size)
                .to_image()
        }
        Fit::Pad => {
            let scale = f64::from(size) / f64::from(w.max(h));
            let nw = ((f64::from(w) * scale).round() as u32).clamp(1, size);
            let nh = ((f64::from(h) * scale).round() as u32).clamp(1, size);
            let resized = image::imageops::resize(img, nw, nh, FilterType::Lanczos3);
            let mut out = RgbImage::new(size, size);
            image::imageops::replace(
                &mut out,
                &resized,
                i64::from((size - nw) / 2),
                i64::from((size - nh) / 2),
            );
            out
        }
    }
}
