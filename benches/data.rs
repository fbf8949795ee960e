//! Data path throughput, to compare with the training step: decode-and-cache (images/s, cold)
//! and the loader with the cache warm (batches/s). Fixture JPEGs are generated in a temporary
//! folder at roughly the Kaggle `resized` size (~400 px on the longer side).

use std::sync::Arc;
use std::time::Instant;

use artgan::backend::backend;
use artgan::data::{load, Augment, DataArgs, Loader};
use artgan::Device;

const FILES: usize = 240;

fn main() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("artgan-bench-data-{}", std::process::id()));
    let images = dir.join("images");
    std::fs::create_dir_all(&images)?;
    // Paintings-like content (smooth gradients plus texture) so JPEG sizes are realistic.
    for i in 0..FILES {
        let (w, h) = if i % 3 == 0 { (400, 300) } else { (300, 420) };
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            let t = (x * 7 + y * 13 + i as u32 * 31) % 64;
            image::Rgb([
                (x * 255 / w) as u8 ^ t as u8,
                (y * 255 / h) as u8,
                ((x + y + i as u32) % 256) as u8,
            ])
        });
        img.save(images.join(format!("p{i:04}.jpg")))?;
    }
    println!(
        "data bench: {FILES} JPEGs, {} threads",
        rayon::current_num_threads()
    );
    println!("{:<40} {:>12} {:>14}", "case", "time", "throughput");

    // The loader on the CPU, and on the GPU when there is one (set kept there, batches made
    // there).
    let mut devices = vec![Device::Cpu];
    match backend(Device::Cuda(0)) {
        Ok(_) => devices.push(Device::Cuda(0)),
        Err(e) => println!(
            "loader on cuda:0 skipped: {}",
            format!("{e:#}").lines().next().unwrap_or_default()
        ),
    }

    for size in [64usize, 128] {
        let args = DataArgs {
            data: Some(images.clone()),
            cache_dir: Some(dir.join(format!("cache-{size}"))),
            ..DataArgs::default()
        };
        let t = Instant::now();
        let set = load(&args, size, 0, &dir.join("run"))?;
        let cold = t.elapsed().as_secs_f64();
        println!(
            "{:<40} {:>10.2} s {:>10.0} img/s",
            format!("decode+cache {size}px (cold)"),
            cold,
            set.len() as f64 / cold
        );
        let t = Instant::now();
        let set = load(&args, size, 0, &dir.join("run"))?;
        let warm = t.elapsed().as_secs_f64();
        println!(
            "{:<40} {:>10.3} s {:>10.0} img/s",
            format!("open cache {size}px (warm, mmap)"),
            warm,
            set.len() as f64 / warm
        );
        let set = Arc::new(set);
        for (name, aug, batch) in [
            ("no aug", Augment::NONE, 64),
            (
                "flip",
                Augment {
                    flip: true,
                    rotate_deg: 0.0,
                },
                64,
            ),
            (
                "flip+rotate 5",
                Augment {
                    flip: true,
                    rotate_deg: 5.0,
                },
                64,
            ),
        ] {
            for &device in &devices {
                let be = backend(device)?;
                let mut loader = Loader::new(set.clone(), batch, aug, 0);
                // The first batch uploads the set to the device: not part of the steady state.
                loader.next_batch(device)?;
                be.synchronize()?;
                let mut batches = 0usize;
                let t = Instant::now();
                let mut epoch = 0;
                while t.elapsed().as_secs_f64() < 1.5 {
                    match loader.next_batch(device)? {
                        Some(_) => batches += 1,
                        None => {
                            epoch += 1;
                            loader.start_epoch(epoch);
                        }
                    }
                }
                be.synchronize()?;
                let s = t.elapsed().as_secs_f64();
                println!(
                    "{:<40} {:>8.2} ms/b {:>10.1} batch/s",
                    format!("loader {device} {size}px b{batch} {name}"),
                    s * 1e3 / batches as f64,
                    batches as f64 / s
                );
            }
        }
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
