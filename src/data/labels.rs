//! Class labels for conditional training: `--condition artist|genre|none`,
//! `--labels subfolder|prefix` for plain folders, `--min-images`.
//!
//! The artist of an image is what the scan already derives (Kaggle layout: the folder under
//! `images/images/` or the `resized/` file name without its `_N`, matched to `artists.csv`;
//! plain folder: its top-level sub-folder). `--labels prefix` takes the file-name text before
//! the first `_` instead (e.g. `shared/data/popart`). The genre is the artist's first genre in
//! `artists.csv`. Classes with fewer than `--min-images` images are dropped and listed.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::ImageSet;

/// What a conditional run's classes are.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Condition {
    /// Unconditional.
    #[default]
    None,
    /// One class per artist.
    Artist,
    /// One class per genre (an artist with several takes the first listed in artists.csv).
    Genre,
}

/// Where a plain folder's artist comes from.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LabelSource {
    /// The image's top-level sub-folder (like torchvision's ImageFolder).
    #[default]
    Subfolder,
    /// The file-name text before the first `_` (`<artist>_<title>.jpg`).
    Prefix,
}

/// The conditioning options of `train` (stored in `config.json`).
#[derive(clap::Args, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConditionArgs {
    /// Train a class-conditional model: one class per artist or per genre (genre needs
    /// artists.csv) [default: none].
    #[arg(long, value_enum, default_value_t = Condition::None)]
    pub condition: Condition,
    /// For a plain folder of images: the artist is the sub-folder name, or the file-name text
    /// before the first `_`. The Kaggle layout always uses artists.csv's matching.
    #[arg(long, value_enum, default_value_t = LabelSource::Subfolder)]
    pub labels: LabelSource,
    /// Classes with fewer images than this are dropped (and listed).
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub min_images: usize,
}

impl ConditionArgs {
    /// The values when no conditioning option is given on the command line.
    pub fn default_for_cli() -> Self {
        ConditionArgs {
            condition: Condition::None,
            labels: LabelSource::Subfolder,
            min_images: 8,
        }
    }
}

/// One class: its index (the label), name and number of training images.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassEntry {
    pub index: usize,
    pub name: String,
    pub images: usize,
}

/// The class table of a conditional run (in `config.json` and every checkpoint's copy).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassTable {
    pub condition: Condition,
    pub classes: Vec<ClassEntry>,
    /// Classes left out for having fewer than `--min-images` images (index unused).
    #[serde(default)]
    pub dropped: Vec<ClassEntry>,
}

impl ClassTable {
    pub fn len(&self) -> usize {
        self.classes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
    }

    pub fn names(&self) -> Vec<&str> {
        self.classes.iter().map(|c| c.name.as_str()).collect()
    }

    /// The class called `name` (see [`match_name`]); an unknown name is an error listing the
    /// known ones.
    pub fn find(&self, name: &str) -> Result<usize> {
        let kind = match self.condition {
            Condition::Genre => "genre",
            _ => "artist",
        };
        match match_name(&self.names(), name, "--class", kind)? {
            Some(k) => Ok(self.classes[k].index),
            None => bail!(
                "--class: unknown {kind} '{}' (known: {})",
                escape_controls(name),
                self.names().join(", ")
            ),
        }
    }
}

/// Which of `names` the user's `want` means: the exact name, else the only one that matches
/// loosely ([`super::artist_key`]: case, accents and punctuation do not matter), else none.
/// Several loose matches are an error of `flag` listing them (`kind`: what the names are).
pub fn match_name(names: &[&str], want: &str, flag: &str, kind: &str) -> Result<Option<usize>> {
    if let Some(i) = names.iter().position(|n| *n == want) {
        return Ok(Some(i));
    }
    let key = super::artist_key(want);
    let close: Vec<usize> = (0..names.len())
        .filter(|&i| !key.is_empty() && super::artist_key(names[i]) == key)
        .collect();
    match close.as_slice() {
        [] => Ok(None),
        [i] => Ok(Some(*i)),
        several => bail!(
            "{flag}: '{}' matches {} {kind}s when case and punctuation are ignored: {}; give one \
             of them exactly",
            escape_controls(want),
            several.len(),
            several
                .iter()
                .map(|&i| format!("'{}'", escape_controls(names[i])))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// `s` with its control characters (newline, tab, ...) written as escapes (`\n`, `\u{1b}`), so
/// a name shown in a one-line message stays on its line.
fn escape_controls(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Labelled training data: the class table, the images kept (indices into the set) and the
/// label of each kept image.
#[derive(Clone, Debug)]
pub struct Labelled {
    pub table: ClassTable,
    pub keep: Vec<usize>,
    pub labels: Vec<u32>,
    /// Images with no class at all (no artist match, or no genre).
    pub unlabelled: usize,
}

/// File-name text before the first `_` of a '/'-separated relative path.
fn prefix_of(path: &str) -> &str {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.rsplit_once('.').map_or(file, |(s, _)| s);
    stem.split('_').next().unwrap_or(stem)
}

/// Labels the images of `set` as `args` says (`None` when unconditional).
pub fn label_images(
    set: &ImageSet,
    has_data: bool,
    args: &ConditionArgs,
) -> Result<Option<Labelled>> {
    if args.condition == Condition::None {
        return Ok(None);
    }
    if !has_data {
        bail!("--condition needs labelled data: pass --data PATH (the built-in paintings have no artists)");
    }
    if args.min_images == 0 {
        bail!("--min-images must be at least 1");
    }
    let has_csv = set.report.csv.is_some();
    let name_of = |i: usize| -> Option<String> {
        let m = &set.meta[i];
        match args.condition {
            Condition::None => None,
            Condition::Artist => {
                if !has_csv && args.labels == LabelSource::Prefix {
                    let p = prefix_of(&m.path);
                    (!p.is_empty()).then(|| p.to_string())
                } else {
                    set.artist_of(i).map(str::to_string)
                }
            }
            Condition::Genre => m
                .artist
                .and_then(|a| set.artists.get(a))
                .and_then(|a| a.genres.first().cloned()),
        }
    };
    if args.condition == Condition::Genre && !has_csv {
        bail!(
            "--condition genre needs artists.csv next to the images (a plain folder has no genres)"
        );
    }
    let names: Vec<Option<String>> = (0..set.len()).map(name_of).collect();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for n in names.iter().flatten() {
        *counts.entry(n.clone()).or_default() += 1;
    }
    let unlabelled = names.iter().filter(|n| n.is_none()).count();
    refuse_control_characters(set, &names, args)?;
    if counts.is_empty() {
        bail!(
            "--condition {}: no image has a class{}",
            match args.condition {
                Condition::Genre => "genre",
                _ => "artist",
            },
            if has_csv {
                " (none matched artists.csv)"
            } else if args.labels == LabelSource::Subfolder {
                " (the images are not in sub-folders: try --labels prefix)"
            } else {
                ""
            }
        );
    }
    let mut classes = Vec::new();
    let mut dropped = Vec::new();
    let mut index_of: BTreeMap<&str, u32> = BTreeMap::new();
    for (name, &count) in &counts {
        if count >= args.min_images {
            index_of.insert(name, classes.len() as u32);
            classes.push(ClassEntry {
                index: classes.len(),
                name: name.clone(),
                images: count,
            });
        } else {
            dropped.push(ClassEntry {
                index: usize::MAX,
                name: name.clone(),
                images: count,
            });
        }
    }
    if classes.is_empty() {
        bail!(
            "--min-images {}: every class has fewer images (largest: {} with {}); lower --min-images",
            args.min_images,
            counts.iter().max_by_key(|(_, &c)| c).map_or("", |(n, _)| n.as_str()),
            counts.values().max().copied().unwrap_or(0)
        );
    }
    let mut keep = Vec::new();
    let mut labels = Vec::new();
    for (i, n) in names.iter().enumerate() {
        if let Some(&l) = n.as_deref().and_then(|n| index_of.get(n)) {
            keep.push(i);
            labels.push(l);
        }
    }
    Ok(Some(Labelled {
        table: ClassTable {
            condition: args.condition,
            classes,
            dropped,
        },
        keep,
        labels,
        unlabelled,
    }))
}

/// Refuses a class name with a control character (a newline, a tab, ...), naming where it
/// comes from: such a name would break `classes.txt` (one name per line) and every message
/// that shows it.
fn refuse_control_characters(
    set: &ImageSet,
    names: &[Option<String>],
    args: &ConditionArgs,
) -> Result<()> {
    let Some((i, name)) = names.iter().enumerate().find_map(|(i, n)| {
        n.as_ref()
            .filter(|n| n.contains(char::is_control))
            .map(|n| (i, n))
    }) else {
        return Ok(());
    };
    let root = set.report.image_root.clone().unwrap_or_default();
    let path = &set.meta[i].path;
    let source = match (&set.report.csv, args.labels) {
        (Some(csv), _) => format!("its row in {}", csv.display()),
        (None, LabelSource::Prefix) => format!("the file {}", root.join(path).display()),
        (None, LabelSource::Subfolder) => {
            let folder = path.split('/').next().unwrap_or(path);
            format!("the folder {}", root.join(folder).display())
        }
    };
    bail!(
        "class name '{}' has a control character, which classes.txt and messages cannot show: \
         rename it ({})",
        escape_controls(name),
        escape_controls(&source)
    )
}

impl ImageSet {
    /// A new in-memory set of the images `keep` (in that order), same artists and report.
    pub fn subset(&self, keep: &[usize]) -> Result<ImageSet> {
        let mut pixels = Vec::with_capacity(keep.len() * self.image_bytes());
        let mut meta = Vec::with_capacity(keep.len());
        for &i in keep {
            pixels.extend_from_slice(self.image_u8(i));
            meta.push(self.meta[i].clone());
        }
        let mut s = ImageSet::from_pixels(self.size, pixels, meta)?;
        s.artists = self.artists.clone();
        s.report = self.report.clone();
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_is_the_text_before_the_first_underscore() {
        assert_eq!(prefix_of("aki-kuroda_night-2011.jpg"), "aki-kuroda");
        assert_eq!(prefix_of("sub/andy-warhol_a_b.png"), "andy-warhol");
        assert_eq!(prefix_of("noprefix.jpg"), "noprefix");
    }

    fn table(names: &[&str]) -> ClassTable {
        ClassTable {
            condition: Condition::Artist,
            classes: names
                .iter()
                .enumerate()
                .map(|(index, name)| ClassEntry {
                    index,
                    name: name.to_string(),
                    images: 1,
                })
                .collect(),
            dropped: Vec::new(),
        }
    }

    #[test]
    fn class_names_match_exactly_then_uniquely_loosely() {
        let t = table(&["Monet", "a b", "a.b"]);
        // Exact names win over the loose match that both share.
        assert_eq!(t.find("a.b").unwrap(), 2);
        assert_eq!(t.find("a b").unwrap(), 1);
        // A unique loose match is taken.
        assert_eq!(t.find("MONET!").unwrap(), 0);
        let err = t.find("A_B").unwrap_err().to_string();
        assert!(
            err.contains("'A_B' matches 2 artists") && err.contains("'a b', 'a.b'"),
            "{err}"
        );
        let err = t.find("renoir\nx").unwrap_err().to_string();
        assert!(
            err.contains("unknown artist 'renoir\\nx' (known: Monet, a b, a.b)"),
            "{err}"
        );
        // Punctuation alone matches nothing, not every punctuation-only name.
        let t = table(&["--", "..."]);
        assert!(t.find("__").unwrap_err().to_string().contains("unknown"));
    }
}
