//! Batch assembly through the backend (`upload_images` + `assemble_batch`, the path the loader
//! takes on every device) against the reference `data::assemble_batch`, on the CPU: bit for bit,
//! random images (no zero bytes), odd sizes (so the byte packing has a padded tail), flips and
//! angles including 0, ±5°, 90° and 180°. The same inputs on the GPU are in tests/gpu_parity.rs.

use std::sync::Arc;

use artgan::backend::batch;
use artgan::backend::{backend, Backend, Device};
use artgan::data::{assemble_batch, builtin, Augment, ImageMeta, ImageSet, Loader};
use artgan::rng::Rng;

/// `count` random `size`×`size` images with bytes in 1..=255.
fn random_set(count: usize, size: usize, seed: u64) -> ImageSet {
    let mut rng = Rng::new(seed);
    let pixels: Vec<u8> = (0..count * size * size * 3)
        .map(|_| 1 + (rng.next_u32() % 255) as u8)
        .collect();
    let meta = (0..count)
        .map(|i| ImageMeta {
            path: format!("random/{i}"),
            artist: None,
            width: size as u32,
            height: size as u32,
        })
        .collect();
    ImageSet::from_pixels(size, pixels, meta).unwrap()
}

const ANGLES: [f32; 9] = [0.0, 5.0, -5.0, 90.0, 2.7, -0.3, 180.0, -37.5, 1e-3];

/// A batch touching the first and last image, repeats and out-of-order indices, every angle
/// with and without a flip.
fn plan(count: usize, batch: usize) -> (Vec<usize>, Vec<bool>, Vec<f32>) {
    let indices = (0..batch)
        .map(|b| match b {
            0 => count - 1,
            1 => 0,
            _ => (b * 7 + 3) % count,
        })
        .collect();
    let flips = (0..batch).map(|b| (b / ANGLES.len()) % 2 == 1).collect();
    let angles = (0..batch).map(|b| ANGLES[b % ANGLES.len()]).collect();
    (indices, flips, angles)
}

fn via_backend(
    b: &dyn Backend,
    set: &ImageSet,
    indices: &[usize],
    flips: &[bool],
    angles: &[f32],
) -> Vec<f32> {
    let images = b.upload_images(set.pixels()).unwrap();
    assert_eq!(images.len(), set.pixels().len().div_ceil(4));
    let idx: Vec<u32> = indices.iter().map(|&i| i as u32).collect();
    let out = b
        .assemble_batch(&images, set.size, &idx, flips, angles)
        .unwrap();
    b.download(&out).unwrap()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn cpu_backend_matches_the_reference_bit_for_bit() {
    let cpu = backend(Device::Cpu).unwrap();
    for (size, count, batch) in [(5, 7, 20), (17, 5, 18), (32, 4, 36), (1, 3, 9), (2, 3, 9)] {
        let set = random_set(count, size, size as u64);
        let (indices, flips, angles) = plan(count, batch);
        let want = assemble_batch(&set, &indices, &flips, &angles);
        assert_eq!(want.len(), batch * 3 * size * size);
        assert!(want.iter().all(|v| (-1.0..=1.0).contains(v)));
        let got = via_backend(&*cpu, &set, &indices, &flips, &angles);
        assert_eq!(bits(&got), bits(&want), "size {size}");
    }
}

#[test]
fn assembled_values_are_the_plan() {
    // Independent of the shared arithmetic: unrotated elements are the source bytes mapped
    // to [-1, 1], mirrored where flipped; a half turn of a flipped image is a vertical flip.
    let cpu = backend(Device::Cpu).unwrap();
    let (s, count) = (5usize, 3usize);
    let set = random_set(count, s, 11);
    let indices = [2usize, 0, 1, 2];
    let flips = [false, true, false, true];
    let angles = [0.0f32, 0.0, 180.0, 180.0];
    let got = via_backend(&*cpu, &set, &indices, &flips, &angles);
    let plane = s * s;
    let byte = |i: usize, x: usize, y: usize, c: usize| set.image_u8(i)[(y * s + x) * 3 + c];
    for (b, &i) in indices.iter().enumerate() {
        for c in 0..3 {
            for y in 0..s {
                for x in 0..s {
                    let (sx, sy) = match (flips[b], angles[b] != 0.0) {
                        (false, false) => (x, y),
                        (true, false) => (s - 1 - x, y),
                        (false, true) => (s - 1 - x, s - 1 - y),
                        (true, true) => (x, s - 1 - y),
                    };
                    let want = f32::from(byte(i, sx, sy, c)) / 127.5 - 1.0;
                    let v = got[b * 3 * plane + c * plane + y * s + x];
                    assert!(
                        (v - want).abs() < 1e-4,
                        "b{b} c{c} ({x},{y}): {v} vs {want}"
                    );
                }
            }
        }
    }
}

#[test]
fn bad_requests_are_errors() {
    let cpu = backend(Device::Cpu).unwrap();
    let set = random_set(3, 5, 1);
    let images = cpu.upload_images(set.pixels()).unwrap();
    let ok = cpu.assemble_batch(&images, 5, &[2], &[false], &[0.0]);
    assert!(ok.is_ok());
    for (idx, flips, angles) in [
        (vec![3u32], vec![false], vec![0.0f32]),
        (vec![0], vec![], vec![0.0]),
        (vec![0], vec![false], vec![]),
        (vec![0], vec![false], vec![f32::INFINITY]),
    ] {
        assert!(cpu
            .assemble_batch(&images, 5, &idx, &flips, &angles)
            .is_err());
    }
    assert!(cpu.assemble_batch(&images, 0, &[], &[], &[]).is_err());
    // An empty batch is an empty tensor.
    let empty = cpu.assemble_batch(&images, 5, &[], &[], &[]).unwrap();
    assert!(empty.is_empty());
    assert!(batch::rotation(0.0).is_none() && batch::rotation(-0.0).is_none());
}

#[test]
fn loader_batches_are_the_reference_of_their_plans() {
    let set = Arc::new(builtin(20, 17, 3));
    let aug = Augment {
        flip: true,
        rotate_deg: 5.0,
    };
    let mut planner = Loader::new(set.clone(), 6, aug, 7);
    let mut loader = Loader::new(set.clone(), 6, aug, 7);
    assert_eq!(loader.resident_device(), None);
    for epoch in 0..2 {
        planner.start_epoch(epoch);
        loader.start_epoch(epoch);
        while let Some(p) = planner.next_plan().unwrap() {
            let t = loader.next_batch(Device::Cpu).unwrap().unwrap();
            assert_eq!(t.shape(), &[6, 3, 17, 17]);
            assert_eq!(loader.resident_device(), Some(Device::Cpu));
            let want = assemble_batch(&set, &p.indices, &p.flips, &p.angles_deg);
            assert_eq!(bits(&t.to_vec().unwrap()), bits(&want));
        }
        assert!(loader.next_batch(Device::Cpu).unwrap().is_none());
    }
}

#[test]
fn loader_stays_send() {
    // It holds device storage now; a prefetching caller may still move it to another thread.
    fn assert_send<T: Send>() {}
    assert_send::<Loader>();
}
