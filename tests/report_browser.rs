//! index.html in a real browser: headless Chromium opens it from disk, every image must decode,
//! and a screenshot must show a page. Skipped (with the reason) without Chromium unless
//! ARTGAN_REQUIRE_BROWSER=1.
#![cfg(unix)]

mod report_fixture;

use artgan::report::write_report;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A hung browser must not stall CI.
const TIMEOUT: Duration = Duration::from_secs(60);
const WINDOW: (u32, u32) = (1280, 2000);

fn find_chromium() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("ARTGAN_CHROMIUM") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("ARTGAN_CHROMIUM={} is not a file", p.display()))
        };
    }
    let names = ["chromium", "chromium-browser", "google-chrome"];
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for n in names {
            let p = dir.join(n);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(format!(
        "none of {} on PATH, ARTGAN_CHROMIUM not set",
        names.join(", ")
    ))
}

/// Runs headless Chromium on `url` with `extra` flags, stdout into `stdout`; killed (with its
/// whole process group: the renderer and GPU helpers too) after [`TIMEOUT`].
fn chromium(bin: &Path, work: &Path, extra: &[String], url: &str, stdout: &Path) {
    let profile = tempfile::tempdir_in(work).unwrap();
    let log = work.join("chromium-stderr.txt");
    let mut child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--allow-file-access-from-files",
            "--no-first-run",
            "--hide-scrollbars",
            "--virtual-time-budget=10000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(fs::File::create(stdout).unwrap())
        .stderr(fs::File::create(&log).unwrap())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > TIMEOUT {
            // The whole process group (renderer and helpers too), signalled while the browser
            // is not yet reaped, so the group id is still ours. Straight through libc: procps
            // 4.0.2's `kill -KILL -PGID` signals every process (pid -1).
            let pgid = i32::try_from(child.id()).unwrap();
            assert!(pgid > 1);
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            let _ = child.wait();
            panic!(
                "chromium did not finish within {TIMEOUT:?}; stderr:\n{}",
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "chromium failed ({status}); stderr:\n{}",
        fs::read_to_string(&log).unwrap_or_default()
    );
}

/// `file://` URL of an absolute path (percent-encoding anything unusual).
fn file_url(path: &Path) -> String {
    let mut url = String::from("file://");
    for b in path.to_str().unwrap().bytes() {
        if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
            url.push(b as char);
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    url
}

fn body_attr(dom: &str, name: &str) -> Option<usize> {
    let body = &dom[dom.find("<body")?..];
    let body = &body[..body.find('>')?];
    let rest = &body[body.find(&format!("{name}=\""))? + name.len() + 2..];
    rest[..rest.find('"')?].parse().ok()
}

#[test]
fn the_page_loads_in_chromium_with_every_image() {
    let bin = match find_chromium() {
        Ok(b) => b,
        Err(why) => {
            if std::env::var("ARTGAN_REQUIRE_BROWSER").as_deref() == Ok("1") {
                panic!("ARTGAN_REQUIRE_BROWSER=1 but no chromium: {why}");
            }
            println!("skipped: no chromium ({why})");
            return;
        }
    };
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run-dcgan-007");
    fs::create_dir(&run).unwrap();
    report_fixture::full_run(&run, 8);
    let files = write_report(&run).unwrap();
    // Every image the page links: the charts and two sample grids.
    let html = fs::read_to_string(&files.index).unwrap();
    let mut pngs: Vec<String> = report_fixture::references(&html)
        .into_iter()
        .filter(|r| r.ends_with(".png"))
        .collect();
    pngs.sort();
    pngs.dedup();
    let images = pngs.len();
    assert_eq!(images, files.plots.len() + 2);
    let url = file_url(&files.index.canonicalize().unwrap());

    // The DOM after load: the page's own check counts the images that decoded.
    let dom_file = tmp.path().join("dom.html");
    chromium(&bin, tmp.path(), &["--dump-dom".into()], &url, &dom_file);
    let dom = fs::read_to_string(&dom_file).unwrap();
    assert!(
        dom.contains("<h1>run-dcgan-007</h1>"),
        "not our page:\n{dom}"
    );
    let loaded = body_attr(&dom, "data-images-loaded");
    let total = body_attr(&dom, "data-images-total");
    assert_eq!(total, Some(images), "the load handler did not run:\n{dom}");
    assert_eq!(loaded, Some(images), "some images did not decode");
    assert_eq!(body_attr(&dom, "data-images-broken"), Some(0));

    // A screenshot of the page: the window's size, and far from blank.
    let shot = tmp.path().join("page.png");
    let (w, h) = WINDOW;
    chromium(
        &bin,
        tmp.path(),
        &[
            format!("--window-size={w},{h}"),
            format!("--screenshot={}", shot.display()),
        ],
        &url,
        &tmp.path().join("screenshot-stdout.txt"),
    );
    let png = image::open(&shot).unwrap().to_rgb8();
    assert_eq!(png.dimensions(), WINDOW);
    let mut colours: Vec<[u8; 3]> = png.pixels().step_by(7).map(|p| p.0).collect();
    colours.sort_unstable();
    colours.dedup();
    assert!(colours.len() > 200, "{} colours only", colours.len());
    // The header band is dark (the stylesheet applied), the page below light.
    let header = png.get_pixel(w - 20, 10).0;
    let page = png.get_pixel(w - 20, h / 2).0;
    assert!(header.iter().all(|&c| c < 80), "header {header:?}");
    assert!(page.iter().all(|&c| c > 200), "page {page:?}");
    if let Some(keep) = std::env::var_os("ARTGAN_KEEP_SCREENSHOT") {
        fs::copy(&shot, keep).unwrap();
    }
}
