//! Hostile or sloppy dataset inputs: artists.csv naming one artist on several rows, a header
//! with spaces after its commas, and image headers forged to claim a huge picture in a small
//! file (skipped and listed by the dataset scan, refused by `project --image`).

mod common;

use std::path::Path;

use artgan::data::{self, DataArgs, Fit};
use common::{artgan, assert_one_line_error, noise_rgb, save, stderr, stdout};

fn data_args(data: &Path) -> DataArgs {
    DataArgs {
        data: Some(data.to_path_buf()),
        ..DataArgs::default()
    }
}

/// Monet twice with the same fields (lines 2 and 4), van Gogh twice with another genre on the
/// second row (lines 3 and 5); two Monet images and one van Gogh image in artist folders.
fn duplicated_rows_fixture(data: &Path) {
    std::fs::create_dir_all(data).unwrap();
    std::fs::write(
        data.join("artists.csv"),
        "id,name,genre,paintings\n\
         0,Claude Monet,Impressionism,2\n\
         1,Vincent van Gogh,Post-Impressionism,1\n\
         2,Claude Monet,Impressionism,2\n\
         3,Vincent_van_Gogh,Expressionism,1\n",
    )
    .unwrap();
    for n in 1..=2 {
        save(
            &noise_rgb(16, 16, n),
            &data.join(format!("Claude_Monet/Claude_Monet_{n}.png")),
        );
    }
    save(
        &noise_rgb(16, 16, 9),
        &data.join("Vincent_van_Gogh/Vincent_van_Gogh_1.png"),
    );
}

fn summary(out: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap()
}

fn assert_ok(o: &std::process::Output) {
    assert!(o.status.success(), "failed: {}", stderr(o));
}

#[test]
fn duplicated_artist_rows_are_merged_for_filters_and_reported_by_explore() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    duplicated_rows_fixture(&p.join("data"));
    let explore = |out: &str, filter: &[&str]| {
        let mut args = vec![
            "explore",
            "--data",
            "data",
            "--out",
            out,
            "--image-size",
            "8",
        ];
        args.extend_from_slice(filter);
        artgan(&args, p)
    };

    let o = explore("all", &[]);
    assert_ok(&o);
    let monet = "data/artists.csv: artist 'Claude Monet' is on lines 2, 4; merged, using line 2 \
                 (the rows agree)";
    let gogh =
        "data/artists.csv: artist 'Vincent van Gogh' is on lines 3, 5; merged, using line 3 \
                (the others differ in name, genre)";
    for line in [monet, gogh] {
        assert!(
            stdout(&o).contains(line),
            "explore lacks {line:?}: {}",
            stdout(&o)
        );
        let warning = format!("warning: {line}");
        assert!(
            stderr(&o).contains(&warning),
            "no {warning:?}: {}",
            stderr(&o)
        );
    }
    let s = summary(&p.join("all"));
    assert_eq!(s["images"], 3);
    assert_eq!(s["paintings_per_artist"]["Claude Monet"]["files"], 2);
    assert_eq!(s["paintings_per_artist"]["Vincent van Gogh"]["files"], 1);
    assert_eq!(s["artists_without_images"].as_array().unwrap().len(), 0);
    let rows = &s["duplicate_artist_rows"];
    assert_eq!(rows.as_array().unwrap().len(), 2, "{rows}");
    assert_eq!(rows[0]["name"], "Claude Monet");
    assert_eq!(rows[0]["lines"], serde_json::json!([2, 4]));
    assert_eq!(rows[0]["differing"], serde_json::json!([]));
    assert_eq!(rows[1]["lines"], serde_json::json!([3, 5]));
    assert_eq!(rows[1]["differing"], serde_json::json!(["name", "genre"]));

    // --artists finds the artist's images through either spelling.
    for name in ["Claude Monet", "claude_monet"] {
        let out = format!("monet-{}", name.len());
        assert_ok(&explore(&out, &["--artists", name]));
        assert_eq!(summary(&p.join(&out))["images"], 2, "--artists {name}");
    }
    // --genre keeps the artist's images, by the first row's genre.
    assert_ok(&explore("impressionism", &["--genre", "Impressionism"]));
    assert_eq!(summary(&p.join("impressionism"))["images"], 2);
    assert_ok(&explore("post", &["--genre", "Post-Impressionism"]));
    let s = summary(&p.join("post"));
    assert_eq!(s["images"], 1);
    assert_eq!(s["paintings_per_artist"]["Vincent van Gogh"]["files"], 1);
    // The dropped row's genre is not used.
    let o = explore("expr", &["--genre", "Expressionism"]);
    assert_one_line_error(&o, "no artist has genre 'Expressionism'");
}

#[test]
fn csv_header_with_spaces_after_commas_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let csv = data.join("artists.csv");
    std::fs::write(
        &csv,
        "id, name, years, genre, paintings\n0, Claude Monet, 1840 - 1926, Impressionism, 2\n",
    )
    .unwrap();
    let read = data::read_artists_csv(&csv).unwrap();
    assert_eq!(read.artists.len(), 1);
    let monet = &read.artists[0];
    assert_eq!(monet.name, "Claude Monet");
    assert_eq!(monet.years, "1840 - 1926");
    assert_eq!(monet.genres, ["Impressionism"]);
    assert_eq!(monet.csv_paintings, Some(2));
    assert!(read.duplicates.is_empty());

    for n in 1..=2 {
        save(
            &noise_rgb(16, 16, n),
            &data.join(format!("Claude_Monet/Claude_Monet_{n}.jpg")),
        );
    }
    let args = DataArgs {
        genre: Some("impressionism".into()),
        ..data_args(&data)
    };
    let set = data::load(&args, 8, 0, &dir.path().join("run")).unwrap();
    assert_eq!(set.len(), 2);
    assert_eq!(set.artist_of(0), Some("Claude Monet"));
}

/// Width and height as a forged header claims them.
const FORGED_SIDE: u16 = 14_000;

/// A small real JPEG whose frame header (SOF0) claims [`FORGED_SIDE`]² pixels.
fn forged_jpeg() -> Vec<u8> {
    let img = noise_rgb(64, 64, 1);
    let mut bytes = Vec::new();
    jpeg_encoder::Encoder::new(&mut bytes, 90)
        .encode(img.as_raw(), 64, 64, jpeg_encoder::ColorType::Rgb)
        .unwrap();
    // Walk the marker segments (after SOI) to the frame header: FF C0, length, precision,
    // height, width.
    let mut i = 2;
    loop {
        assert_eq!(bytes[i], 0xFF, "not a marker at {i}");
        let len = usize::from(u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]));
        if bytes[i + 1] == 0xC0 {
            bytes[i + 5..i + 7].copy_from_slice(&FORGED_SIDE.to_be_bytes());
            bytes[i + 7..i + 9].copy_from_slice(&FORGED_SIDE.to_be_bytes());
            return bytes;
        }
        i += 2 + len;
    }
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A small real PNG whose IHDR (with a valid CRC) claims [`FORGED_SIDE`]² pixels.
fn forged_png() -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    noise_rgb(16, 16, 2)
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap();
    let mut bytes = out.into_inner();
    // Signature (8), IHDR length (4), "IHDR" at 12, width at 16, height at 20, CRC at 29.
    assert_eq!(&bytes[12..16], b"IHDR");
    let side = u32::from(FORGED_SIDE).to_be_bytes();
    bytes[16..20].copy_from_slice(&side);
    bytes[20..24].copy_from_slice(&side);
    let crc = crc32(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    bytes
}

const TOO_LARGE: &str = "too large to decode: the header says 14000x14000 px (561 MiB decoded), \
                         beyond the limit of 16384 px a side and 512 MiB";

#[test]
fn forged_image_headers_are_skipped_and_listed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("pics");
    save(&noise_rgb(20, 20, 3), &data.join("good-1.png"));
    save(&noise_rgb(20, 20, 4), &data.join("good-2.png"));
    std::fs::write(data.join("forged.jpg"), forged_jpeg()).unwrap();
    std::fs::write(data.join("forged.png"), forged_png()).unwrap();
    let run = dir.path().join("run");
    let set = data::load(&data_args(&data), 8, 0, &run).unwrap();
    assert_eq!(set.len(), 2);
    let skipped = &set.report.skipped;
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    for s in skipped {
        assert!(s.path.starts_with("forged."), "{s:?}");
        assert_eq!(s.reason, TOO_LARGE, "{}", s.path);
    }
    let listed = std::fs::read_to_string(run.join("skipped.csv")).unwrap();
    assert!(
        listed.contains("forged.jpg") && listed.contains("forged.png"),
        "{listed}"
    );

    // A real painting's size is still decoded.
    let mut big = Vec::new();
    let img = noise_rgb(3000, 2000, 5);
    jpeg_encoder::Encoder::new(&mut big, 80)
        .encode(img.as_raw(), 3000, 2000, jpeg_encoder::ColorType::Rgb)
        .unwrap();
    let d = data::decode_bytes(&big, 16, Fit::Crop).unwrap();
    assert_eq!((d.width, d.height), (3000, 2000));
}

#[test]
fn project_refuses_a_forged_image_header() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    #[rustfmt::skip]
    let train = [
        "train", "--image-size", "32", "--ngf", "4", "--ndf", "4", "--nz", "8",
        "--batch-size", "8", "--limit", "16", "--epochs", "1", "--device", "cpu",
        "--quiet", "--out", "run",
    ];
    assert_ok(&artgan(&train, p));
    std::fs::write(p.join("forged.jpg"), forged_jpeg()).unwrap();
    let o = artgan(
        &[
            "project",
            "--checkpoint",
            "run",
            "--image",
            "forged.jpg",
            "--out",
            "proj",
        ],
        p,
    );
    let err = stderr(&o);
    let err: Vec<&str> = err.lines().filter(|l| !l.starts_with("note: ")).collect();
    assert!(!o.status.success(), "{err:?}");
    assert_eq!(err.len(), 1, "{err:?}");
    assert_eq!(
        err[0],
        format!("error: cannot use forged.jpg as --image: {TOO_LARGE}")
    );
    assert!(!p.join("proj").exists(), "output made for a refused image");
}
