//! The emulated CUDA device itself (tests/cuda-emu): that it catches what it claims to catch
//! and gets CUDA's semantics exactly right, with the kernels of tests/cuda-emu/selftest.cu.
//!
//! Runs through `scripts/cuda-emu` (CI does). Elsewhere each test prints `skipped: …`; with
//! `ARTGAN_REQUIRE_GPU=1` and no CUDA device at all it fails. A failed launch poisons the whole
//! context (as on a GPU), so the tests that provoke one run in a child process.

use cudarc::cublas::sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig};
use cudarc::driver::{CudaContext, CudaFunction, CudaStream, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::Ptx;
use std::sync::Arc;

const KERNELS: &[&str] = &[
    "emu_selftest_shared_sum",
    "emu_selftest_shared_unwritten",
    "emu_selftest_divergent_barrier",
    "emu_selftest_shuffle_exited",
    "emu_selftest_shuffles",
    "emu_selftest_block_sum",
    "emu_selftest_add_one",
    "emu_selftest_write_past",
];

struct Emu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
}

impl Emu {
    fn func(&self, name: &str) -> CudaFunction {
        // The emulator accepts any image and resolves the names it contains.
        let m = self
            .ctx
            .load_module(Ptx::from_src(KERNELS.join("\n")))
            .unwrap();
        m.load_function(name).unwrap()
    }
}

/// The emulated device, or `None` after saying why not.
fn emu() -> Option<Emu> {
    let opened = artgan::backend::cuda::libs::ensure_libraries(false).and_then(|_| {
        artgan::backend::cuda::libs::catch_cudarc_panic("CudaContext::new", || CudaContext::new(0))?
            .map_err(|e| anyhow::anyhow!("{e:?}"))
    });
    match opened {
        Ok(ctx) if ctx.name().unwrap().contains("emulated") => {
            let stream = ctx.new_stream().unwrap();
            Some(Emu { ctx, stream })
        }
        Ok(ctx) => {
            println!(
                "skipped: {} is a real GPU; these tests are about the emulated device",
                ctx.name().unwrap()
            );
            None
        }
        Err(e) => {
            if std::env::var("ARTGAN_REQUIRE_GPU").is_ok_and(|v| v == "1")
                || std::env::var("ARTGAN_CUDA_EMULATED").is_ok_and(|v| v == "1")
            {
                panic!("no CUDA device (run through scripts/cuda-emu): {e:#}");
            }
            let msg = format!("{e:#}");
            println!(
                "skipped: no emulated CUDA device (scripts/cuda-emu runs these): {}",
                msg.lines().next().unwrap_or_default()
            );
            None
        }
    }
}

fn cfg(grid: u32, block: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid, 1, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// In the parent: runs `test` alone in a child process and returns what it printed. In that
/// child: `None`, and the test does the work that poisons its context.
fn in_child(test: &str) -> Option<String> {
    if std::env::var_os("ARTGAN_EMU_SELFTEST_CHILD").is_some() {
        return None;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads", "1"])
        .env("ARTGAN_EMU_SELFTEST_CHILD", "1")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "child {test} failed:\n{text}");
    Some(text)
}

#[test]
fn names_itself_and_looks_like_a_t4() {
    let Some(e) = emu() else { return };
    assert_eq!(
        e.ctx.name().unwrap(),
        "artgan emulated CUDA device (CPU, not a GPU)"
    );
    assert_eq!(e.ctx.compute_capability().unwrap(), (7, 5));
}

#[test]
fn a_missing_barrier_gives_a_wrong_result() {
    let Some(e) = emu() else { return };
    let f = e.func("emu_selftest_shared_sum");
    let x: Vec<f32> = (0..256).map(|i| i as f32).collect();
    let dx = e.stream.clone_htod(&x).unwrap();
    for with_barrier in [1i32, 0] {
        let mut out = e.stream.alloc_zeros::<f32>(1).unwrap();
        let mut b = e.stream.launch_builder(&f);
        b.arg(&dx).arg(&with_barrier).arg(&mut out);
        unsafe { b.launch(cfg(1, 256)) }.unwrap();
        let got = e.stream.clone_dtoh(&out).unwrap()[0];
        if with_barrier == 1 {
            assert_eq!(got, 255.0 * 256.0 / 2.0);
        } else {
            // Thread 0 ran before the others wrote their slots, which hold NaN.
            assert!(got.is_nan(), "without the barrier: {got}");
        }
    }
}

#[test]
fn shared_memory_starts_as_nan() {
    let Some(e) = emu() else { return };
    let f = e.func("emu_selftest_shared_unwritten");
    let mut out = e.stream.alloc_zeros::<u32>(64).unwrap();
    let mut b = e.stream.launch_builder(&f);
    b.arg(&mut out);
    unsafe { b.launch(cfg(1, 64)) }.unwrap();
    let bits = e.stream.clone_dtoh(&out).unwrap();
    assert!(bits.iter().all(|&v| v == u32::MAX), "{bits:x?}");
    assert!(f32::from_bits(bits[0]).is_nan());
}

#[test]
fn block_sum_gives_every_thread_the_sum() {
    let Some(e) = emu() else { return };
    let f = e.func("emu_selftest_block_sum");
    let (blocks, threads) = (3usize, 96usize);
    let x: Vec<f32> = (0..blocks * threads)
        .map(|i| (i % 7) as f32 - 2.5)
        .collect();
    let dx = e.stream.clone_htod(&x).unwrap();
    let mut out = e.stream.alloc_zeros::<f32>(2 * blocks * threads).unwrap();
    let mut b = e.stream.launch_builder(&f);
    b.arg(&dx).arg(&mut out);
    unsafe { b.launch(cfg(blocks as u32, threads as u32)) }.unwrap();
    let got = e.stream.clone_dtoh(&out).unwrap();
    for blk in 0..blocks {
        let sum: f32 = x[blk * threads..(blk + 1) * threads].iter().sum();
        for t in 0..threads {
            let i = blk * threads + t;
            assert_eq!(got[2 * i], sum, "block {blk} thread {t}");
            assert_eq!(
                got[2 * i + 1],
                2.0 * sum,
                "second call, block {blk} thread {t}"
            );
        }
    }
}

#[test]
fn shuffles_follow_cuda_semantics() {
    let Some(e) = emu() else { return };
    let f = e.func("emu_selftest_shuffles");
    let threads = 64usize;
    for width in [32i32, 16, 8, 4] {
        let mut out = e.stream.alloc_zeros::<i32>(4 * threads).unwrap();
        let mut b = e.stream.launch_builder(&f);
        b.arg(&width).arg(&mut out);
        unsafe { b.launch(cfg(1, threads as u32)) }.unwrap();
        let got = e.stream.clone_dtoh(&out).unwrap();
        let w = width as usize;
        for t in 0..threads {
            let (warp_base, lane) = (t - t % 32, t % 32);
            let value = |l: usize| ((warp_base + l) * 10) as i32;
            let seg = lane - lane % w;
            let idx = seg + 3 % w;
            let up = if lane % w >= 2 { lane - 2 } else { lane };
            let down = if lane % w + 2 < w { lane + 2 } else { lane };
            // xor: a source in a later segment gives the caller's own value.
            let x = if (lane ^ 5) >= seg + w {
                lane
            } else {
                lane ^ 5
            };
            let want = [value(idx), value(up), value(down), value(x)];
            assert_eq!(&got[4 * t..4 * t + 4], &want, "width {width}, thread {t}");
        }
    }
}

#[test]
fn launch_limits_are_those_of_a_real_device() {
    let Some(e) = emu() else { return };
    let f = e.func("emu_selftest_add_one");
    let mut x = e.stream.alloc_zeros::<f32>(8).unwrap();
    let n = 8u64;
    for (what, c) in [
        ("1025 threads", cfg(1, 1025)),
        ("zero blocks", cfg(0, 32)),
        (
            "grid y 65536",
            LaunchConfig {
                grid_dim: (1, 65536, 1),
                block_dim: (32, 1, 1),
                shared_mem_bytes: 0,
            },
        ),
        (
            "block z 65",
            LaunchConfig {
                grid_dim: (1, 1, 1),
                block_dim: (1, 1, 65),
                shared_mem_bytes: 0,
            },
        ),
    ] {
        let mut b = e.stream.launch_builder(&f);
        b.arg(&mut x).arg(&n);
        assert!(unsafe { b.launch(c) }.is_err(), "{what} launched");
    }
    // The context is still usable: these were refused before running.
    let mut b = e.stream.launch_builder(&f);
    b.arg(&mut x).arg(&n);
    unsafe { b.launch(cfg(1, 32)) }.unwrap();
    assert_eq!(e.stream.clone_dtoh(&x).unwrap(), vec![1.0; 8]);
}

#[test]
fn kernel_names_resolve_like_the_driver() {
    let Some(e) = emu() else { return };
    let m = e
        .ctx
        .load_module(Ptx::from_src("emu_selftest_add_one"))
        .unwrap();
    assert!(m.load_function("emu_selftest_add_one").is_ok());
    // In the table but not in this image, and in neither.
    assert!(m.load_function("emu_selftest_shuffles").is_err());
    assert!(m.load_function("no_such_kernel").is_err());
}

#[test]
fn graphs_record_at_capture_and_replay() {
    let Some(e) = emu() else { return };
    let f = e.func("emu_selftest_add_one");
    let n = 1000u64;
    let mut x = e.stream.clone_htod(&vec![0.5f32; n as usize]).unwrap();
    e.stream
        .begin_capture(
            cudarc::driver::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
        )
        .unwrap();
    {
        let mut b = e.stream.launch_builder(&f);
        b.arg(&mut x).arg(&n);
        unsafe { b.launch(cfg(2, 128)) }.unwrap();
    }
    let graph = e
        .stream
        .end_capture(cudarc::driver::sys::CUgraphInstantiate_flags(0))
        .unwrap()
        .expect("a graph");
    assert_eq!(
        e.stream.clone_dtoh(&x).unwrap(),
        vec![0.5; n as usize],
        "captured work must not run at capture"
    );
    graph.launch().unwrap();
    graph.launch().unwrap();
    assert_eq!(e.stream.clone_dtoh(&x).unwrap(), vec![2.5; n as usize]);
}

#[test]
fn cublas_gemm_is_column_major_and_checks_arguments() {
    let Some(e) = emu() else { return };
    let blas = CudaBlas::new(e.stream.clone()).unwrap();
    // Column-major A (2x3) = [[1,2,3],[4,5,6]], B (3x2) = [[1,0],[0,1],[1,1]]:
    // A·B = [[4,5],[10,11]], stored by columns.
    let a = e.stream.clone_htod(&[1f32, 4., 2., 5., 3., 6.]).unwrap();
    let b = e.stream.clone_htod(&[1f32, 0., 1., 0., 1., 1.]).unwrap();
    // C starts as NaN: with beta = 0 it must not be read.
    let mut c = e.stream.clone_htod(&[f32::NAN; 4]).unwrap();
    let ok = GemmConfig {
        transa: CUBLAS_OP_N,
        transb: CUBLAS_OP_N,
        m: 2,
        n: 2,
        k: 3,
        alpha: 1.0f32,
        lda: 2,
        ldb: 3,
        beta: 0.0f32,
        ldc: 2,
    };
    unsafe { blas.gemm(ok, &a, &b, &mut c) }.unwrap();
    assert_eq!(e.stream.clone_dtoh(&c).unwrap(), vec![4., 10., 5., 11.]);
    // Aᵀ·Aᵀ-shaped call through the transpose flags: (Aᵀ)ᵀ = A again, with lda of A as stored.
    let t = GemmConfig {
        transa: CUBLAS_OP_T,
        m: 3,
        n: 2,
        k: 2,
        lda: 2,
        ldb: 2,
        ldc: 3,
        ..ok
    };
    let eye = e.stream.clone_htod(&[1f32, 0., 0., 1.]).unwrap();
    let mut c3 = e.stream.alloc_zeros::<f32>(6).unwrap();
    unsafe { blas.gemm(t, &a, &eye, &mut c3) }.unwrap();
    // Aᵀ (3x2) by columns: [1,2,3], [4,5,6].
    assert_eq!(
        e.stream.clone_dtoh(&c3).unwrap(),
        vec![1., 2., 3., 4., 5., 6.]
    );
    // lda smaller than the rows of A as stored: CUBLAS_STATUS_INVALID_VALUE, like cuBLAS.
    let bad = GemmConfig { lda: 1, ..ok };
    let err = unsafe { blas.gemm(bad, &a, &b, &mut c) }.unwrap_err();
    assert!(format!("{err:?}").contains("INVALID_VALUE"), "{err:?}");
}

#[test]
fn cudnn_says_what_it_does_not_emulate() {
    let Some(e) = emu() else { return };
    use cudarc::cudnn::sys::cudnnTensorFormat_t;
    let dnn = cudarc::cudnn::Cudnn::new(e.stream.clone()).unwrap();
    assert!(dnn
        .create_4d_tensor::<f32>(cudnnTensorFormat_t::CUDNN_TENSOR_NCHW, [2, 3, 4, 5])
        .is_ok());
    let err = dnn
        .create_4d_tensor::<f32>(cudnnTensorFormat_t::CUDNN_TENSOR_NHWC, [2, 3, 4, 5])
        .unwrap_err();
    println!("NHWC on the emulated cuDNN: {err:?} (not emulated, by design)");
    assert!(format!("{err:?}").contains("NOT_SUPPORTED"), "{err:?}");
}

#[test]
fn divergent_barriers_are_an_error() {
    if let Some(out) = in_child("divergent_barriers_are_an_error") {
        if !out.contains("skipped") {
            assert!(out.contains("divergent __syncthreads"), "{out}");
            assert!(out.contains("selftest.cu"), "the place is named: {out}");
        }
        return;
    }
    let Some(e) = emu() else { return };
    let f = e.func("emu_selftest_divergent_barrier");
    let mut out = e.stream.alloc_zeros::<f32>(32).unwrap();
    let mut b = e.stream.launch_builder(&f);
    b.arg(&mut out);
    assert!(unsafe { b.launch(cfg(1, 32)) }.is_err());
}

#[test]
fn a_shuffle_with_exited_lanes_is_an_error() {
    if let Some(out) = in_child("a_shuffle_with_exited_lanes_is_an_error") {
        if !out.contains("skipped") {
            assert!(
                out.contains("exited while its warp waits for it at a shuffle"),
                "{out}"
            );
        }
        return;
    }
    let Some(e) = emu() else { return };
    let f = e.func("emu_selftest_shuffle_exited");
    let mut out = e.stream.alloc_zeros::<f32>(32).unwrap();
    let mut b = e.stream.launch_builder(&f);
    b.arg(&mut out);
    assert!(unsafe { b.launch(cfg(1, 32)) }.is_err());
}

#[test]
fn block_sum_needs_whole_warps() {
    // common.cuh's rule "blocks are launched with a multiple of 32 threads": 40 threads make
    // warp_sum shuffle over lanes that do not exist (undefined on a GPU).
    if let Some(out) = in_child("block_sum_needs_whole_warps") {
        if !out.contains("skipped") {
            assert!(out.contains("beyond the block's threads"), "{out}");
        }
        return;
    }
    let Some(e) = emu() else { return };
    let f = e.func("emu_selftest_block_sum");
    let x = e.stream.clone_htod(&[1.0f32; 40]).unwrap();
    let mut out = e.stream.alloc_zeros::<f32>(80).unwrap();
    let mut b = e.stream.launch_builder(&f);
    b.arg(&x).arg(&mut out);
    assert!(unsafe { b.launch(cfg(1, 40)) }.is_err());
}

#[test]
fn a_write_past_the_end_is_caught_under_the_sanitizer() {
    if std::env::var("ARTGAN_EMU_SANITIZE").ok().as_deref() != Some("1") {
        println!(
            "skipped: needs the AddressSanitizer build (scripts/cuda-emu --sanitize, as in CI)"
        );
        return;
    }
    if std::env::var_os("ARTGAN_EMU_SELFTEST_CHILD").is_none() {
        // The child must die: AddressSanitizer aborts the process.
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "a_write_past_the_end_is_caught_under_the_sanitizer",
            ])
            .env("ARTGAN_EMU_SELFTEST_CHILD", "1")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "the write past the end went unnoticed"
        );
        assert!(err.contains("heap-buffer-overflow"), "{err}");
        assert!(err.contains("emu_selftest_write_past"), "{err}");
        return;
    }
    let Some(e) = emu() else { return };
    let f = e.func("emu_selftest_write_past");
    let n = 10u64;
    let mut x = e.stream.alloc_zeros::<f32>(n as usize).unwrap();
    let mut b = e.stream.launch_builder(&f);
    b.arg(&mut x).arg(&n);
    let _ = unsafe { b.launch(cfg(1, 32)) };
    let _ = e.stream.synchronize();
}
