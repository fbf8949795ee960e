//! Reading artists.csv: a header row with at least `name` (spaces around the commas are fine),
//! one [`Artist`] per row, and rows that name the same artist merged into the first.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::kaggle::{artist_key, Artist};

/// What artists.csv holds: one entry per artist, and where it named one artist more than once.
#[derive(Clone, Debug, Default)]
pub struct ArtistsCsv {
    pub artists: Vec<Artist>,
    pub duplicates: Vec<DuplicateArtist>,
}

/// Rows of artists.csv that name one artist (the same [`artist_key`]). The first row is used and
/// the others are dropped: with two entries, images would map to one and `--artists`/`--genre`
/// would pick the other, losing the artist's images without a word.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct DuplicateArtist {
    /// The name as the used (first) row spells it.
    pub name: String,
    /// Line numbers in the CSV (the header is line 1), the used row first.
    pub lines: Vec<u64>,
    /// Columns in which a dropped row differs from the used one (empty: the rows agree).
    pub differing: Vec<String>,
}

impl DuplicateArtist {
    /// One line for the user: the file, the artist, its lines, which one is used, what differs.
    pub fn describe(&self, csv: &Path) -> String {
        let lines: Vec<String> = self.lines.iter().map(u64::to_string).collect();
        let what = if self.differing.is_empty() {
            "the rows agree".to_string()
        } else {
            format!("the others differ in {}", self.differing.join(", "))
        };
        format!(
            "{}: artist '{}' is on lines {}; merged, using line {} ({what})",
            csv.display(),
            self.name,
            lines.join(", "),
            self.lines[0]
        )
    }
}

#[derive(serde::Deserialize)]
struct CsvRow {
    name: String,
    #[serde(default)]
    years: Option<String>,
    #[serde(default)]
    genre: Option<String>,
    #[serde(default)]
    nationality: Option<String>,
    #[serde(default)]
    paintings: Option<String>,
}

fn split_list(s: Option<&str>) -> Vec<String> {
    s.unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect()
}

/// The CSV columns in which `b` differs from `a`.
fn differing_columns(a: &Artist, b: &Artist) -> Vec<&'static str> {
    [
        ("name", a.name != b.name),
        ("years", a.years != b.years),
        ("genre", a.genres != b.genres),
        ("nationality", a.nationalities != b.nationalities),
        ("paintings", a.csv_paintings != b.csv_paintings),
    ]
    .into_iter()
    .filter_map(|(column, differs)| differs.then_some(column))
    .collect()
}

/// Reads artists.csv (header row with at least `name`; quoted fields may hold commas; header
/// names and fields are trimmed, so "id, name, genre" works).
pub fn read_artists_csv(path: &Path) -> Result<ArtistsCsv> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_path(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let headers = reader
        .headers()
        .with_context(|| format!("{}: cannot read the header row", path.display()))?
        .clone();
    if !headers.iter().any(|h| h == "name") {
        let seen = headers.iter().collect::<Vec<_>>().join(",");
        let seen: String = seen.chars().take(80).collect();
        if headers.len() == 1 {
            let other = [';', '\t', '|']
                .into_iter()
                .find(|c| seen.contains(*c))
                .map_or(String::new(), |c| format!(" ({c:?} appears in it)"));
            bail!(
                "{}: the header has one column ({seen:?}): the file may use another delimiter \
                 than commas{other}; artists.csv must be comma-separated with a `name` column",
                path.display()
            );
        }
        bail!(
            "{}: the header has no `name` column (it has {seen:?})",
            path.display()
        );
    }
    let mut out = ArtistsCsv::default();
    // Artist key → (index in `out.artists`, its line, index in `out.duplicates` once a second
    // row names the artist).
    let mut first: HashMap<String, (usize, u64, Option<usize>)> = HashMap::new();
    for (i, record) in reader.records().enumerate() {
        let record = record.with_context(|| format!("{}: bad row {}", path.display(), i + 2))?;
        // The line where the row starts (a quoted field may span lines).
        let line = record.position().map_or(i as u64 + 2, |p| p.line());
        let row: CsvRow = record
            .deserialize(Some(&headers))
            .with_context(|| format!("{}: bad row on line {line}", path.display()))?;
        let name = row.name.trim().to_string();
        if name.is_empty() {
            continue;
        }
        let artist = Artist {
            key: artist_key(&name),
            name,
            years: row.years.unwrap_or_default(),
            genres: split_list(row.genre.as_deref()),
            nationalities: split_list(row.nationality.as_deref()),
            csv_paintings: row.paintings.and_then(|p| p.trim().parse().ok()),
        };
        let Some(seen) = first.get_mut(&artist.key) else {
            first.insert(artist.key.clone(), (out.artists.len(), line, None));
            out.artists.push(artist);
            continue;
        };
        let (used, used_line, dup) = seen;
        let used = &out.artists[*used];
        let d = *dup.get_or_insert_with(|| {
            out.duplicates.push(DuplicateArtist {
                name: used.name.clone(),
                lines: vec![*used_line],
                differing: Vec::new(),
            });
            out.duplicates.len() - 1
        });
        let d = &mut out.duplicates[d];
        d.lines.push(line);
        for column in differing_columns(used, &artist) {
            if !d.differing.iter().any(|c| c == column) {
                d.differing.push(column.to_string());
            }
        }
    }
    if out.artists.is_empty() {
        bail!(
            "{}: no artists (expected a header with a `name` column)",
            path.display()
        );
    }
    Ok(out)
}
