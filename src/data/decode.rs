//! Decoding one file into a square 8-bit RGB training image.

use std::io::Cursor;
use std::path::Path;

use image::imageops::FilterType;
use image::{DynamicImage, ImageFormat, ImageReader, Limits, RgbImage};

use super::Fit;

/// Largest width or height accepted; bigger is treated as a broken or hostile file.
pub const MAX_SIDE: u32 = 30_000;
/// Largest pixel count accepted (the decoder would need gigabytes beyond this).
pub const MAX_PIXELS: u64 = 200_000_000;
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
    let (w, h) = ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(|e| format!("unreadable {format:?} header: {e}"))?;
    if w > MAX_SIDE || h > MAX_SIDE || u64::from(w) * u64::from(h) > MAX_PIXELS {
        return Err(format!("absurd dimensions {w}x{h}"));
    }
    if w < MIN_SIDE || h < MIN_SIDE {
        return Err(format!(
            "too small ({w}x{h}, need at least {MIN_SIDE} px a side)"
        ));
    }
    let mut reader = reader;
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(4 << 30);
    reader.limits(limits);
    let img = reader
        .decode()
        .map_err(|e| format!("undecodable {format:?}: {e}"))?;
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
