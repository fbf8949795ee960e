//! Finding the images: the Kaggle layout (artists.csv + images/images/<Artist>/… or
//! resized/resized/…), either image folder alone, or any folder of images. Maps each image to an
//! artist through a normalised key that survives underscores, Unicode normalisation forms and
//! the archive's mojibake folder names.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use anyhow::{bail, Context, Result};
use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;

use super::artists_csv::{read_artists_csv, ArtistsCsv, DuplicateArtist};
use super::{DataArgs, Source};

/// File extensions read as images (compared case-insensitively).
pub const IMAGE_EXTENSIONS: [&str; 5] = ["jpg", "jpeg", "png", "webp", "bmp"];

/// One artist: a row of artists.csv, or a class folder of a plain image folder.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Artist {
    pub name: String,
    /// [`artist_key`] of the name.
    pub key: String,
    pub years: String,
    pub genres: Vec<String>,
    pub nationalities: Vec<String>,
    /// The CSV's `paintings` column.
    pub csv_paintings: Option<u64>,
}

/// Comparison key for names: mojibake is not repaired here (see [`key_variants`]); the string is
/// decomposed (NFKD) with combining marks dropped, lower-cased, and every run of non-alphanumeric
/// characters (spaces, underscores, hyphens) becomes one space.
pub fn artist_key(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut gap = false;
    for c in s.nfkd() {
        if is_combining_mark(c) {
            continue;
        }
        if c.is_alphanumeric() {
            if gap && !out.is_empty() {
                out.push(' ');
            }
            gap = false;
            out.extend(c.to_lowercase());
        } else {
            gap = true;
        }
    }
    out
}

/// Code page 850 (DOS Latin-1), bytes 0x80..=0xFF. The Kaggle archive was zipped on a system that
/// stored UTF-8 names which were later read as CP437/CP850 (`Du╠êrer` is "Dürer" in NFD read
/// that way; `DuÔòá├¬rer` is that again), so encoding back to CP850 and decoding UTF-8 undoes it.
const CP850_HIGH: [char; 128] = [
    'Ç', 'ü', 'é', 'â', 'ä', 'à', 'å', 'ç', 'ê', 'ë', 'è', 'ï', 'î', 'ì', 'Ä', 'Å', //
    'É', 'æ', 'Æ', 'ô', 'ö', 'ò', 'û', 'ù', 'ÿ', 'Ö', 'Ü', 'ø', '£', 'Ø', '×', 'ƒ', //
    'á', 'í', 'ó', 'ú', 'ñ', 'Ñ', 'ª', 'º', '¿', '®', '¬', '½', '¼', '¡', '«', '»', //
    '░', '▒', '▓', '│', '┤', 'Á', 'Â', 'À', '©', '╣', '║', '╗', '╝', '¢', '¥', '┐', //
    '└', '┴', '┬', '├', '─', '┼', 'ã', 'Ã', '╚', '╔', '╩', '╦', '╠', '═', '╬', '¤', //
    'ð', 'Ð', 'Ê', 'Ë', 'È', 'ı', 'Í', 'Î', 'Ï', '┘', '┌', '█', '▄', '¦', 'Ì', '▀', //
    'Ó', 'ß', 'Ô', 'Ò', 'õ', 'Õ', 'µ', 'þ', 'Þ', 'Ú', 'Û', 'Ù', 'ý', 'Ý', '¯', '´', //
    '\u{AD}', '±', '‗', '¾', '¶', '§', '÷', '¸', '°', '¨', '·', '¹', '³', '²', '■', '\u{A0}',
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mojibake {
    None,
    Cp850,
    Latin1,
}

fn encode_single_byte(s: &str, codepage: Mojibake) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii() {
            out.push(c as u8);
            continue;
        }
        let b = match codepage {
            Mojibake::Cp850 => CP850_HIGH.iter().position(|&h| h == c)? as u8 + 0x80,
            Mojibake::Latin1 => u8::try_from(u32::from(c)).ok()?,
            Mojibake::None => return None,
        };
        out.push(b);
    }
    Some(out)
}

/// Undoes "UTF-8 read as `codepage`" as many times as it applies (the archive has names
/// garbled twice). A name that is not such mojibake comes back unchanged.
fn repair(s: &str, codepage: Mojibake) -> String {
    let mut cur = s.to_string();
    for _ in 0..4 {
        if cur.is_ascii() {
            break;
        }
        match encode_single_byte(&cur, codepage).and_then(|b| String::from_utf8(b).ok()) {
            Some(fixed) if fixed != cur => cur = fixed,
            _ => break,
        }
    }
    cur
}

/// Spellings to try for a name taken from the file system: as is, CP850/CP437 mojibake
/// repaired, Latin-1 mojibake repaired.
fn key_variants(s: &str) -> Vec<(Mojibake, String)> {
    let mut out: Vec<(Mojibake, String)> = Vec::new();
    for m in [Mojibake::None, Mojibake::Cp850, Mojibake::Latin1] {
        let fixed = if m == Mojibake::None {
            s.to_string()
        } else {
            repair(s, m)
        };
        let k = artist_key(&fixed);
        if !out.iter().any(|(_, o)| *o == k) {
            out.push((m, k));
        }
    }
    out
}

/// An image file selected for loading.
#[derive(Clone, Debug)]
pub struct ScanFile {
    pub abs: PathBuf,
    /// Relative to [`Scan::image_root`], '/'-separated.
    pub rel: String,
    pub artist: Option<usize>,
    pub len: u64,
    pub mtime_ns: u128,
}

/// Result of scanning the data folder and applying the filters.
#[derive(Debug)]
pub struct Scan {
    pub image_root: PathBuf,
    /// The folder `--data` named (the cache goes beside its images by default).
    pub data_root: PathBuf,
    pub csv: Option<PathBuf>,
    /// Size and mtime of the CSV: the artist mapping depends on it.
    pub csv_stamp: Option<(u64, u128)>,
    pub artists: Vec<Artist>,
    /// Artists that artists.csv names on more than one row (merged into the first).
    pub duplicate_artists: Vec<DuplicateArtist>,
    pub files: Vec<ScanFile>,
    pub unmatched: Vec<String>,
    pub artists_without_images: Vec<String>,
    pub duplicates: Vec<String>,
    /// Entries that could not even be listed (dangling or looping symlinks, unreadable
    /// folders): skipped, and listed in skipped.csv with the files that do not decode.
    pub skipped: Vec<super::Skipped>,
}

fn stamp(meta: &std::fs::Metadata) -> (u64, u128) {
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    (meta.len(), mtime)
}

fn is_image_name(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// Where the images are and which CSV describes them.
fn locate(data: &Path, source: Source) -> Result<(PathBuf, Option<PathBuf>)> {
    if !data.exists() {
        bail!("--data {}: no such file or folder", data.display());
    }
    if !data.is_dir() {
        bail!("--data {}: not a folder", data.display());
    }
    let csv = data.join("artists.csv");
    if csv.is_file() {
        let pick = |name: &str| {
            let nested = data.join(name).join(name);
            if nested.is_dir() {
                Some(nested)
            } else if data.join(name).is_dir() {
                Some(data.join(name))
            } else {
                None
            }
        };
        let (want, other) = match source {
            Source::Resized => ("resized", "images"),
            Source::Images => ("images", "resized"),
        };
        if let Some(dir) = pick(want) {
            return Ok((dir, Some(csv)));
        }
        if let Some(dir) = pick(other) {
            println!(
                "data: {} has no `{want}` folder, using `{other}` instead",
                data.display()
            );
            return Ok((dir, Some(csv)));
        }
        return Ok((data.to_path_buf(), Some(csv)));
    }
    // An image folder of the Kaggle layout alone: the CSV sits one or two levels up.
    let csv = data
        .ancestors()
        .skip(1)
        .take(2)
        .map(|a| a.join("artists.csv"))
        .find(|c| c.is_file());
    Ok((data.to_path_buf(), csv))
}

/// The name part of a Kaggle file stem: `Vincent_van_Gogh_12` → `Vincent_van_Gogh`.
fn stem_prefix(stem: &str) -> &str {
    match stem.rfind('_') {
        Some(i)
            if i > 0 && stem[i + 1..].chars().all(|c| c.is_ascii_digit()) && i + 1 < stem.len() =>
        {
            &stem[..i]
        }
        _ => stem,
    }
}

/// Lists the images, maps them to artists, drops duplicate copies and applies the filters.
pub fn scan(data: &Path, args: &DataArgs) -> Result<Scan> {
    let (image_root, csv) = locate(data, args.source)?;
    let mut all: Vec<(PathBuf, String, std::fs::Metadata)> = Vec::new();
    let walker = walkdir::WalkDir::new(&image_root)
        .follow_links(true)
        .into_iter()
        // Hidden folders (e.g. our own .artgan-cache) are not data.
        .filter_entry(|e| e.depth() == 0 || !e.file_name().to_string_lossy().starts_with('.'));
    let mut skipped = Vec::new();
    let rel_of = |p: &Path| -> String {
        p.strip_prefix(&image_root)
            .unwrap_or(p)
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/")
    };
    for entry in walker {
        let entry = match entry {
            Ok(e) => e,
            // A dangling or looping symlink, or an unreadable folder below the root: skipped
            // and listed like any unreadable file. The root itself must be readable.
            Err(e) if e.depth() > 0 && e.path().is_some() => {
                let path = e.path().expect("checked");
                let reason = match e.loop_ancestor() {
                    Some(_) => "symbolic link loop".to_string(),
                    None => match e.io_error() {
                        Some(io) => format!("cannot read: {io}"),
                        None => e.to_string(),
                    },
                };
                skipped.push(super::Skipped {
                    path: rel_of(path),
                    reason,
                });
                continue;
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read {}", image_root.display()))
            }
        };
        if !entry.file_type().is_file() || !is_image_name(entry.path()) {
            continue;
        }
        let rel = entry
            .path()
            .strip_prefix(&image_root)
            .unwrap_or(entry.path())
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/");
        let meta = match entry.metadata() {
            Ok(m) => m,
            Err(e) => {
                skipped.push(super::Skipped {
                    path: rel,
                    reason: format!("cannot stat: {e}"),
                });
                continue;
            }
        };
        all.push((entry.path().to_path_buf(), rel, meta));
    }
    all.sort_by(|a, b| a.1.cmp(&b.1));

    let (
        ArtistsCsv {
            mut artists,
            duplicates: duplicate_artists,
        },
        csv_stamp,
    ) = match &csv {
        Some(c) => {
            let st =
                std::fs::metadata(c).with_context(|| format!("cannot stat {}", c.display()))?;
            (read_artists_csv(c)?, Some(stamp(&st)))
        }
        None => (ArtistsCsv::default(), None),
    };
    let have_csv = csv.is_some();
    let by_key: HashMap<String, usize> = artists
        .iter()
        .enumerate()
        .map(|(i, a)| (a.key.clone(), i))
        .collect();

    let mut by_folder: HashMap<String, usize> = HashMap::new();
    let mut files = Vec::new();
    let mut unmatched = Vec::new();
    let mut duplicates = Vec::new();
    // (artist, normalised stem) of paintings already taken, to count each painting once.
    let mut seen: HashSet<(usize, String)> = HashSet::new();
    for (abs, rel, meta) in all {
        let parts: Vec<&str> = rel.split('/').collect();
        let file_name = parts[parts.len() - 1];
        let stem = Path::new(file_name)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let folder = (parts.len() > 1).then(|| parts[parts.len() - 2].to_string());
        let mut artist = None;
        let mut dedupe = None;
        if have_csv {
            let candidates = folder
                .iter()
                .map(String::as_str)
                .chain([stem_prefix(&stem)]);
            'found: for cand in candidates {
                for (m, k) in key_variants(cand) {
                    if let Some(&a) = by_key.get(&k) {
                        artist = Some(a);
                        let fixed_stem = if m == Mojibake::None {
                            stem.clone()
                        } else {
                            repair(&stem, m)
                        };
                        dedupe = Some((a, artist_key(&fixed_stem)));
                        break 'found;
                    }
                }
            }
            if artist.is_none() {
                unmatched.push(rel.clone());
            }
        } else if parts.len() > 1 {
            // Plain folder: the top-level sub-folder is the class, like torchvision's ImageFolder
            // (by its exact name: `a b` and `a.b` are two classes).
            let name = parts[0].to_string();
            let idx = *by_folder.entry(name.clone()).or_insert_with(|| {
                artists.push(Artist {
                    key: artist_key(&name),
                    name,
                    ..Artist::default()
                });
                artists.len() - 1
            });
            artist = Some(idx);
        }
        if let Some(d) = dedupe {
            if !seen.insert(d) {
                duplicates.push(rel);
                continue;
            }
        }
        let (len, mtime_ns) = stamp(&meta);
        files.push(ScanFile {
            abs,
            rel,
            artist,
            len,
            mtime_ns,
        });
    }
    let with_images: HashSet<usize> = files.iter().filter_map(|f| f.artist).collect();
    let artists_without_images = if have_csv {
        artists
            .iter()
            .enumerate()
            .filter(|(i, _)| !with_images.contains(i))
            .map(|(_, a)| a.name.clone())
            .collect()
    } else {
        Vec::new()
    };

    // Filters.
    let mut keep: Option<HashSet<usize>> = None;
    if let Some(list) = &args.artists {
        let mut set = HashSet::new();
        let names: Vec<&str> = artists.iter().map(|a| a.name.as_str()).collect();
        for want in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match super::labels::match_name(&names, want, "--artists", "artist")? {
                Some(i) => {
                    set.insert(i);
                }
                None => {
                    let known: Vec<&str> = artists.iter().map(|a| a.name.as_str()).collect();
                    bail!(
                        "--artists: unknown artist '{want}' (known: {})",
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    );
                }
            }
        }
        if set.is_empty() {
            bail!("--artists is empty");
        }
        keep = Some(set);
    }
    if let Some(genre) = &args.genre {
        if !have_csv {
            bail!(
                "--genre needs artists.csv next to the images (none found for {})",
                data.display()
            );
        }
        let g = artist_key(genre);
        let set: HashSet<usize> = artists
            .iter()
            .enumerate()
            .filter(|(_, a)| a.genres.iter().any(|x| artist_key(x) == g))
            .map(|(i, _)| i)
            .collect();
        if set.is_empty() {
            let mut all: BTreeMap<String, ()> = BTreeMap::new();
            for a in &artists {
                for x in &a.genres {
                    all.insert(x.clone(), ());
                }
            }
            bail!(
                "--genre: no artist has genre '{genre}' (genres: {})",
                all.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        }
        keep = Some(match keep {
            Some(k) => k.intersection(&set).copied().collect(),
            None => set,
        });
    }
    if let Some(k) = &keep {
        files.retain(|f| f.artist.is_some_and(|a| k.contains(&a)));
    }
    if let Some(n) = args.limit {
        if n == 0 {
            bail!("--limit 0 leaves no images");
        }
        files.truncate(n);
    }
    if files.is_empty() {
        let mut msg = format!(
            "no image files found in {}{} (looked for {} files, recursively)",
            image_root.display(),
            if keep.is_some() {
                " that pass --artists/--genre"
            } else {
                ""
            },
            IMAGE_EXTENSIONS.join("/")
        );
        if !skipped.is_empty() {
            msg += &format!(
                "; {} unreadable entries skipped, e.g. {}: {}",
                skipped.len(),
                skipped[0].path,
                skipped[0].reason
            );
        }
        bail!(msg);
    }
    Ok(Scan {
        image_root,
        data_root: data.to_path_buf(),
        csv,
        csv_stamp,
        artists,
        duplicate_artists,
        files,
        unmatched,
        artists_without_images,
        duplicates,
        skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mojibake_durer_spellings_repair_to_the_csv_key() {
        let want = artist_key("Albrecht Dürer");
        assert_eq!(want, "albrecht durer");
        for raw in [
            "Albrecht_Du╠êrer",
            "Albrecht_DuÔòá├¬rer",
            "Albrecht_DÃ¼rer",
            "Albrecht_Dürer",
        ] {
            assert!(
                key_variants(raw).iter().any(|(_, k)| *k == want),
                "{raw}: {:?}",
                key_variants(raw)
            );
        }
    }

    #[test]
    fn stem_prefix_strips_only_a_trailing_number() {
        assert_eq!(stem_prefix("Vincent_van_Gogh_12"), "Vincent_van_Gogh");
        assert_eq!(stem_prefix("Titian"), "Titian");
        assert_eq!(stem_prefix("a_b_"), "a_b_");
    }
}
