//! Decode-once cache: the preprocessed images of one file list at one size and fit, in one file
//! that later runs memory-map instead of decoding again.
//!
//! File layout: `ARTGANC1`, u64 LE header length, JSON header, zero padding to a multiple of 64,
//! then `count*size*size*3` pixel bytes (HWC RGB per image). The header holds a key hashed from
//! every file's relative path, size and mtime, the CSV's size and mtime, the image size and the
//! fit; a different key means the inputs changed and the cache is rebuilt. The 4 bytes before the
//! pixels hold the CRC-32 of the JSON header, and the header holds a CRC-32 per
//! [`CHUNK_BYTES`] of pixels: every open checks both, and a cache that fails is rebuilt. The file is written
//! to a temporary name and renamed, so a crash never leaves a half-written cache behind.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rayon::prelude::*;

use super::decode::{decode_file, Decoded};
use super::kaggle::Scan;
use super::{DataArgs, Fit, ImageMeta, ImageSet, LoadReport, Skipped};

const MAGIC: &[u8; 8] = b"ARTGANC1";
/// 2: the pixels carry a CRC-32 per chunk ([`CHUNK_BYTES`]), checked on every open.
const FORMAT_VERSION: u32 = 2;

/// Pixel bytes per checksummed chunk. Checking all of them on open costs about what reading
/// the file does (CRC-32 runs at several GB/s: ~0.05 s for the 104 MB Kaggle set at 64 px).
pub const CHUNK_BYTES: usize = 4 << 20;

#[derive(serde::Serialize, serde::Deserialize)]
struct Header {
    version: u32,
    key: String,
    size: usize,
    fit: String,
    /// Per decoded image: index into the scanned file list, original width and height.
    entries: Vec<(usize, u32, u32)>,
    skipped: Vec<Skipped>,
    data_offset: usize,
    /// CRC-32 of each [`CHUNK_BYTES`] of pixels (the last chunk may be shorter).
    #[serde(default)]
    chunk_crc32: Vec<u32>,
}

/// CRC-32 of each [`CHUNK_BYTES`] of `pixels`.
fn chunk_crcs(pixels: &[u8]) -> Vec<u32> {
    pixels
        .par_chunks(CHUNK_BYTES)
        .map(crc32fast::hash)
        .collect()
}

/// FNV-1a, 64-bit, with a chosen offset basis so that two of them give a 128-bit key.
struct Fnv(u64);
impl Fnv {
    fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separator so that ("ab","c") and ("a","bc") differ.
        self.0 ^= 0xff;
        self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
    }
}

fn hash128(parts: &[Vec<u8>]) -> String {
    let mut a = Fnv(0xcbf2_9ce4_8422_2325);
    let mut b = Fnv(0x8422_2325_cbf2_9ce4);
    for p in parts {
        a.feed(p);
        b.feed(p);
    }
    format!("{:016x}{:016x}", a.0, b.0)
}

fn fit_name(fit: Fit) -> &'static str {
    match fit {
        Fit::Crop => "crop",
        Fit::Pad => "pad",
    }
}

/// Content key: changes whenever a file is added, removed, resized or touched.
fn content_key(scan: &Scan, size: usize, fit: Fit) -> String {
    let mut parts = vec![
        format!("v{FORMAT_VERSION} size={size} fit={}", fit_name(fit)).into_bytes(),
        format!("csv={:?}", scan.csv_stamp).into_bytes(),
    ];
    for f in &scan.files {
        parts.push(format!("{}\0{}\0{}", f.rel, f.len, f.mtime_ns).into_bytes());
    }
    hash128(&parts)
}

/// Cache file name: one slot per data folder, selection and preprocessing, so that a changed
/// input replaces its own cache file rather than piling up new ones.
fn slot_name(scan: &Scan, args: &DataArgs, size: usize) -> String {
    let root = std::fs::canonicalize(&scan.image_root).unwrap_or(scan.image_root.clone());
    let parts = vec![
        root.to_string_lossy().into_owned().into_bytes(),
        format!(
            "{:?}|{:?}|{:?}|{:?}|{:?}",
            scan.csv, args.artists, args.genre, args.limit, args.source
        )
        .into_bytes(),
    ];
    format!(
        "images-{size}px-{}-{}.bin",
        fit_name(args.fit),
        &hash128(&parts)[..16]
    )
}

/// Folders to look in, in order of preference.
fn cache_dirs(scan: &Scan, args: &DataArgs, report_dir: &Path) -> Vec<PathBuf> {
    match &args.cache_dir {
        Some(d) => vec![d.clone()],
        None => vec![
            scan.data_root.join(".artgan-cache"),
            report_dir.join(".artgan-cache"),
        ],
    }
}

/// Loads the cached set for `scan`, or decodes it (in parallel) and writes the cache.
pub fn load_or_build(
    scan: &Scan,
    args: &DataArgs,
    size: usize,
    report_dir: &Path,
) -> Result<ImageSet> {
    let key = content_key(scan, size, args.fit);
    let name = slot_name(scan, args, size);
    let dirs = cache_dirs(scan, args, report_dir);
    for d in &dirs {
        let path = d.join(&name);
        if path.is_file() {
            match open(&path, &key, size, scan) {
                Ok(mut set) => {
                    finish(&mut set, scan, Some(path), true);
                    return Ok(set);
                }
                Err(e) => eprintln!("data: rebuilding cache {}: {e:#}", path.display()),
            }
        }
    }

    let started = Instant::now();
    let decoded = decode_all(scan, size, args.fit);
    let mut entries = Vec::new();
    let mut skipped = Vec::new();
    let mut pixels = Vec::with_capacity(decoded.len() * size * size * 3);
    for (i, r) in decoded.into_iter().enumerate() {
        match r {
            Ok(d) => {
                pixels.extend_from_slice(&d.rgb);
                entries.push((i, d.width, d.height));
            }
            Err(reason) => skipped.push(Skipped {
                path: scan.files[i].rel.clone(),
                reason,
            }),
        }
    }
    if entries.is_empty() {
        let mut msg = format!(
            "no usable image in {}: all {} files were skipped",
            scan.image_root.display(),
            skipped.len()
        );
        for s in skipped.iter().take(5) {
            msg += &format!("\n  {}: {}", s.path, s.reason);
        }
        bail!(msg);
    }
    let header = Header {
        version: FORMAT_VERSION,
        key,
        size,
        fit: fit_name(args.fit).into(),
        entries,
        skipped,
        data_offset: 0,
        chunk_crc32: chunk_crcs(&pixels),
    };
    eprintln!(
        "data: decoded {} files in {:.1}s",
        scan.files.len(),
        started.elapsed().as_secs_f64()
    );

    // Try each folder; a read-only data folder falls through to the run folder.
    let mut last_err = None;
    for d in &dirs {
        let path = d.join(&name);
        match write(&path, &header, &pixels).and_then(|_| open(&path, &header.key, size, scan)) {
            Ok(mut set) => {
                finish(&mut set, scan, Some(path), false);
                return Ok(set);
            }
            Err(e) => last_err = Some(e),
        }
    }
    if let Some(e) = last_err {
        eprintln!("data: cannot write a cache ({e:#}); keeping the images in memory only");
    }
    let meta = metas(scan, &header.entries);
    let mut set = ImageSet::from_pixels(size, pixels, meta)?;
    set.report.skipped = header.skipped;
    finish(&mut set, scan, None, false);
    Ok(set)
}

fn decode_all(scan: &Scan, size: usize, fit: Fit) -> Vec<Result<Decoded, String>> {
    let bar = indicatif::ProgressBar::new(scan.files.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "decoding {bar:40} {pos}/{len} images ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let done = AtomicUsize::new(0);
    let out: Vec<_> = scan
        .files
        .par_iter()
        .map(|f| {
            let r = decode_file(&f.abs, size as u32, fit);
            // Updating the bar every image costs a lock; every 16 is smooth enough.
            if done.fetch_add(1, Ordering::Relaxed) % 16 == 15 {
                bar.set_position(done.load(Ordering::Relaxed) as u64);
            }
            r
        })
        .collect();
    bar.finish_and_clear();
    out
}

fn metas(scan: &Scan, entries: &[(usize, u32, u32)]) -> Vec<ImageMeta> {
    entries
        .iter()
        .map(|&(i, w, h)| ImageMeta {
            path: scan.files[i].rel.clone(),
            artist: scan.files[i].artist,
            width: w,
            height: h,
        })
        .collect()
}

fn finish(set: &mut ImageSet, scan: &Scan, cache_file: Option<PathBuf>, reused: bool) {
    set.artists = scan.artists.clone();
    let mut skipped = scan.skipped.clone();
    skipped.append(&mut set.report.skipped);
    set.report = LoadReport {
        image_root: Some(scan.image_root.clone()),
        csv: scan.csv.clone(),
        skipped,
        unmatched: scan.unmatched.clone(),
        artists_without_images: scan.artists_without_images.clone(),
        duplicates: scan.duplicates.clone(),
        duplicate_artists: scan.duplicate_artists.clone(),
        cache_file,
        cache_reused: reused,
        files_considered: scan.files.len(),
    };
}

fn write(path: &Path, header: &Header, pixels: &[u8]) -> Result<()> {
    let dir = path.parent().context("cache path has no folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // The data offset depends on the header's own length: serialise, then fix it up.
    let mut h = serde_json::to_vec(header)?;
    let mut offset = 0;
    for _ in 0..3 {
        // Room for the header's own CRC-32 in the last 4 bytes before the pixels.
        let needed = (8 + 8 + h.len() + 4).div_ceil(64) * 64;
        if needed == offset {
            break;
        }
        offset = needed;
        let mut with = serde_json::to_value(header)?;
        with["data_offset"] = offset.into();
        h = serde_json::to_vec(&with)?;
    }
    let tmp = crate::durable::unique_tmp_path(path)?;
    let result = (|| -> Result<()> {
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(&tmp)
                .with_context(|| format!("cannot create {}", tmp.display()))?,
        );
        f.write_all(MAGIC)?;
        f.write_all(&(h.len() as u64).to_le_bytes())?;
        f.write_all(&h)?;
        f.write_all(&vec![0u8; offset - 16 - h.len() - 4])?;
        f.write_all(&crc32fast::hash(&h).to_le_bytes())?;
        f.write_all(pixels)?;
        let f = f.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Maps a cache file and checks it belongs to `key`; errors say why it cannot be used.
fn open(path: &Path, key: &str, size: usize, scan: &Scan) -> Result<ImageSet> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: the file is only ever replaced by rename, never written in place by artgan, so
    // the mapping stays valid; another program truncating it while we run is not guarded.
    let map = unsafe { memmap2::Mmap::map(&file) }
        .with_context(|| format!("cannot map {}", path.display()))?;
    if map.len() < 16 || &map[..8] != MAGIC {
        bail!("not an artgan cache file");
    }
    let hlen = u64::from_le_bytes(map[8..16].try_into().unwrap_or_default()) as usize;
    if hlen > map.len() - 16 {
        bail!("cache header is cut off");
    }
    let header: Header = serde_json::from_slice(&map[16..16 + hlen]).context("bad cache header")?;
    let crc_at = header
        .data_offset
        .checked_sub(4)
        .filter(|&c| c >= 16 + hlen && c + 4 <= map.len());
    let stored = crc_at.map(|c| u32::from_le_bytes(map[c..c + 4].try_into().unwrap_or_default()));
    if stored != Some(crc32fast::hash(&map[16..16 + hlen])) && header.version == FORMAT_VERSION {
        bail!("the cache header fails its CRC-32: the file is corrupted");
    }
    if header.version != FORMAT_VERSION {
        bail!(
            "written in cache format {} (this artgan uses {FORMAT_VERSION}, with checksums)",
            header.version
        );
    }
    if header.size != size || header.key != key {
        bail!("inputs changed since it was written");
    }
    let need = header
        .entries
        .len()
        .checked_mul(size * size * 3)
        .and_then(|n| n.checked_add(header.data_offset))
        .context("cache header sizes overflow")?;
    if header.data_offset < 16 + hlen + 4 || map.len() != need {
        bail!("cache is {} bytes, expected {need}", map.len());
    }
    let pixels = &map[header.data_offset..];
    let crcs = chunk_crcs(pixels);
    if crcs.len() != header.chunk_crc32.len() {
        bail!(
            "cache has {} pixel chunks, its header checksums {}",
            crcs.len(),
            header.chunk_crc32.len()
        );
    }
    if let Some(i) = crcs
        .iter()
        .zip(&header.chunk_crc32)
        .position(|(a, b)| a != b)
    {
        let per = size * size * 3;
        bail!(
            "pixel chunk {i} (images {} to {}) fails its CRC-32: the file is corrupted",
            i * CHUNK_BYTES / per,
            ((i + 1) * CHUNK_BYTES).min(pixels.len()).div_ceil(per) - 1
        );
    }
    if header.entries.iter().any(|e| e.0 >= scan.files.len()) {
        bail!("cache lists files that are not there");
    }
    let meta = metas(scan, &header.entries);
    let mut set = ImageSet::from_map(size, map, header.data_offset, meta);
    set.report.skipped = header.skipped;
    Ok(set)
}
