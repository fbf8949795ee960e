//! The emulated CUDA device itself (tests/cuda-emu): that it catches what it claims to catch
//! and gets CUDA's semantics exactly right, with the kernels of tests/cuda-emu/selftest.cu.
//!
//! Runs through `scripts/cuda-emu` (CI does). Elsewhere each test prints `skipped: …`; with
//! `ARTGAN_REQUIRE_GPU=1` and no CUDA device at all it fails. A failed launch poisons the whole
//! context (as on a GPU), so the tests that provoke one run in a child process.

use cudarc::cublas::result::{gemm_ex, gemm_strided_batched_ex, CublasError};
use cudarc::cublas::sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
use cudarc::cublas::sys::{
    cublasComputeType_t, cublasGemmAlgo_t, cublasMath_t, cublasStatus_t, cudaDataType_t,
};
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaStream, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;
use half::f16;
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

const CAPTURE_MODE: cudarc::driver::sys::CUstreamCaptureMode =
    cudarc::driver::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL;

fn end_capture(e: &Emu) -> Result<cudarc::driver::CudaGraph, cudarc::driver::DriverError> {
    e.stream
        .end_capture(cudarc::driver::sys::CUgraphInstantiate_flags(0))
        .map(|g| g.expect("a graph"))
}

#[test]
fn library_calls_are_recorded_at_capture_and_replayed() {
    let Some(e) = emu() else { return };
    use cudarc::cudnn::sys::{cudnnConvolutionMode_t, cudnnTensorFormat_t};
    let blas = CudaBlas::new(e.stream.clone()).unwrap();
    let dnn = cudarc::cudnn::Cudnn::new(e.stream.clone()).unwrap();
    // C = A·B with A 2x2 and B 2x1 (column-major); a 2x2 filter over a 3x3 image.
    let mut a = e.stream.clone_htod(&[1f32, 0., 0., 1.]).unwrap();
    let b = e.stream.clone_htod(&[3f32, 4.]).unwrap();
    let mut c = e.stream.clone_htod(&[-1f32, -1.]).unwrap();
    let gemm = GemmConfig {
        transa: CUBLAS_OP_N,
        transb: CUBLAS_OP_N,
        m: 2,
        n: 1,
        k: 2,
        alpha: 1.0f32,
        lda: 2,
        ldb: 2,
        beta: 0.0f32,
        ldc: 2,
    };
    let mut x = e
        .stream
        .clone_htod(&[1f32, 2., 3., 4., 5., 6., 7., 8., 9.])
        .unwrap();
    let w = e.stream.clone_htod(&[1f32, 0., 0., 1.]).unwrap();
    let mut y = e.stream.clone_htod(&[-1f32; 4]).unwrap();
    let nchw = cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
    let xd = dnn.create_4d_tensor::<f32>(nchw, [1, 1, 3, 3]).unwrap();
    let wd = dnn.create_4d_filter::<f32>(nchw, [1, 1, 2, 2]).unwrap();
    let yd = dnn.create_4d_tensor::<f32>(nchw, [1, 1, 2, 2]).unwrap();
    let conv = dnn
        .create_conv2d::<f32>(
            [0, 0],
            [1, 1],
            [1, 1],
            cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
        )
        .unwrap();
    let fwd = cudarc::cudnn::ConvForward {
        conv: &conv,
        x: &xd,
        w: &wd,
        y: &yd,
    };
    let algo = fwd.pick_algorithm().unwrap();
    let mut ws = e
        .stream
        .alloc_zeros::<u8>(fwd.get_workspace_size(algo).unwrap().max(1))
        .unwrap();

    e.stream.begin_capture(CAPTURE_MODE).unwrap();
    unsafe { blas.gemm(gemm, &a, &b, &mut c) }.unwrap();
    unsafe { fwd.launch(algo, Some(&mut ws), (1.0f32, 0.0f32), &x, &w, &mut y) }.unwrap();
    let graph = end_capture(&e).unwrap();
    assert_eq!(
        e.stream.clone_dtoh(&c).unwrap(),
        vec![-1., -1.],
        "a captured GEMM must not run at capture"
    );
    assert_eq!(
        e.stream.clone_dtoh(&y).unwrap(),
        vec![-1.; 4],
        "a captured convolution must not run at capture"
    );
    graph.launch().unwrap();
    assert_eq!(e.stream.clone_dtoh(&c).unwrap(), vec![3., 4.]);
    // x[i][j] + x[i+1][j+1]
    assert_eq!(e.stream.clone_dtoh(&y).unwrap(), vec![6., 8., 12., 14.]);
    // A replay reads the operands as they are at launch time (the same addresses).
    e.stream.memcpy_htod(&[2f32, 0., 0., 2.], &mut a).unwrap();
    e.stream
        .memcpy_htod(&[0f32, 0., 0., 0., 1., 0., 0., 0., 0.], &mut x)
        .unwrap();
    graph.launch().unwrap();
    assert_eq!(e.stream.clone_dtoh(&c).unwrap(), vec![6., 8.]);
    assert_eq!(e.stream.clone_dtoh(&y).unwrap(), vec![1., 0., 0., 1.]);
}

#[test]
fn what_a_capture_cannot_hold_invalidates_it() {
    let Some(e) = emu() else { return };
    let f = e.func("emu_selftest_add_one");
    let n = 8u64;
    let mut x = e.stream.clone_htod(&vec![0f32; n as usize]).unwrap();
    let mut host = vec![0f32; n as usize];
    type Forbidden<'a> =
        Box<dyn Fn(&mut cudarc::driver::CudaSlice<f32>, &mut Vec<f32>) -> bool + 'a>;
    // Each returns whether the call itself failed.
    let cases: Vec<(&str, Forbidden)> = vec![
        (
            "a stream-ordered allocation",
            Box::new(|_, _| {
                // Kept alive past the capture if it succeeds: its free would be captured too.
                match unsafe { e.stream.alloc::<f32>(4) } {
                    Ok(s) => {
                        std::mem::forget(s);
                        false
                    }
                    Err(_) => true,
                }
            }),
        ),
        (
            "a synchronous allocation",
            Box::new(|_, _| unsafe { cudarc::driver::result::malloc_sync(16) }.is_err()),
        ),
        (
            "a host read (copy to pageable memory)",
            Box::new(|x, host| e.stream.memcpy_dtoh(x, host).is_err()),
        ),
        (
            "a copy from pageable memory",
            Box::new(|x, host| e.stream.memcpy_htod(host, x).is_err()),
        ),
        (
            "a synchronous copy",
            Box::new(|x, host| {
                use cudarc::driver::DevicePtr;
                let (p, _g) = x.device_ptr(&e.stream);
                unsafe { cudarc::driver::result::memcpy_dtoh_sync(host, p) }.is_err()
            }),
        ),
        (
            "a wait for the stream",
            Box::new(|_, _| e.stream.synchronize().is_err()),
        ),
        (
            "a wait for the context",
            Box::new(|_, _| e.ctx.synchronize().is_err()),
        ),
    ];
    for (what, call) in &cases {
        e.stream.begin_capture(CAPTURE_MODE).unwrap();
        {
            let mut b = e.stream.launch_builder(&f);
            b.arg(&mut x).arg(&n);
            unsafe { b.launch(cfg(1, 32)) }.unwrap();
        }
        assert!(call(&mut x, &mut host), "{what} during capture must fail");
        // Work after the invalidating call is refused too, as on a GPU.
        let after = {
            let mut b = e.stream.launch_builder(&f);
            b.arg(&mut x).arg(&n);
            unsafe { b.launch(cfg(1, 32)) }
        };
        assert!(
            after.is_err(),
            "{what}: a launch into an invalidated capture must fail"
        );
        let err = end_capture(&e).map(|_| ()).unwrap_err();
        assert!(
            format!("{err:?}").contains("INVALIDATED"),
            "{what}: the capture must end invalidated, got {err:?}"
        );
        // The stream works normally afterwards, and nothing captured ran.
        assert_eq!(
            e.stream.clone_dtoh(&x).unwrap(),
            vec![0.; n as usize],
            "{what}"
        );
    }
    // A later capture on the same stream works.
    e.stream.begin_capture(CAPTURE_MODE).unwrap();
    {
        let mut b = e.stream.launch_builder(&f);
        b.arg(&mut x).arg(&n);
        unsafe { b.launch(cfg(1, 32)) }.unwrap();
    }
    let graph = end_capture(&e).unwrap();
    graph.launch().unwrap();
    assert_eq!(e.stream.clone_dtoh(&x).unwrap(), vec![1.; n as usize]);
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

// ---- cublasGemmEx / cublasGemmStridedBatchedEx with fp16 inputs (mixed precision)

/// One column-major product C (m x n) = alpha * op(A) * op(B) + beta * C, leading dimensions of
/// the operands as stored.
#[derive(Clone, Copy, Debug)]
struct ExShape {
    ta: bool,
    tb: bool,
    m: usize,
    n: usize,
    k: usize,
    lda: usize,
    ldb: usize,
    ldc: usize,
}

impl ExShape {
    /// With `pad` extra rows in every leading dimension.
    fn new(ta: bool, tb: bool, (m, n, k): (usize, usize, usize), pad: usize) -> Self {
        let a_rows = if ta { k } else { m };
        let b_rows = if tb { n } else { k };
        ExShape {
            ta,
            tb,
            m,
            n,
            k,
            lda: a_rows + pad,
            ldb: b_rows + pad,
            ldc: m + pad,
        }
    }
    fn a_len(&self) -> usize {
        self.lda * if self.ta { self.m } else { self.k }
    }
    fn b_len(&self) -> usize {
        self.ldb * if self.tb { self.k } else { self.n }
    }
    fn c_len(&self) -> usize {
        self.ldc * self.n
    }
    fn op(t: bool) -> cudarc::cublas::sys::cublasOperation_t {
        if t {
            CUBLAS_OP_T
        } else {
            CUBLAS_OP_N
        }
    }
}

/// Deterministic non-zero values in [-2, 2), exact in f16.
fn random_f16(n: usize, seed: u64) -> Vec<f16> {
    let mut s = seed ^ 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        s = s
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (s >> 40) as f32 / (1u64 << 24) as f32
    };
    (0..n)
        .map(|_| loop {
            let v = f16::from_f32(4.0 * next() - 2.0);
            if v.to_f32() != 0.0 {
                break v;
            }
        })
        .collect()
}

fn bits(x: &[f16]) -> Vec<u16> {
    x.iter().map(|v| v.to_bits()).collect()
}

/// The cuBLAS definition for fp16 A and B with CUBLAS_COMPUTE_32F: each product of the exact
/// f32 values of two f16 inputs, summed in f32 in k order, then alpha * acc + beta * C in f32
/// (C not read when beta = 0). Returns every element of C: the m x n results before their one
/// rounding to C's type, the padding rows as given.
fn gemm_ex_reference(
    s: &ExShape,
    alpha: f32,
    a: &[f16],
    b: &[f16],
    beta: f32,
    c: &[f32],
) -> Vec<f32> {
    let mut out = c.to_vec();
    for j in 0..s.n {
        for i in 0..s.m {
            let mut acc = 0.0f32;
            for l in 0..s.k {
                let av = if s.ta {
                    a[l + i * s.lda]
                } else {
                    a[i + l * s.lda]
                };
                let bv = if s.tb {
                    b[j + l * s.ldb]
                } else {
                    b[l + j * s.ldb]
                };
                acc += av.to_f32() * bv.to_f32();
            }
            let mut r = alpha * acc;
            if beta != 0.0 {
                r += beta * c[i + j * s.ldc];
            }
            out[i + j * s.ldc] = r;
        }
    }
    out
}

/// A cuBLAS handle on the emulated device whose math mode keeps every reduction in fp32: without
/// CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION cuBLAS may sum partial results in an fp16
/// C's own precision, which the emulator refuses (see the error test).
fn blas_fp32_reductions(e: &Emu) -> CudaBlas {
    let blas = CudaBlas::new(e.stream.clone()).unwrap();
    let status = unsafe {
        cudarc::cublas::sys::cublasSetMathMode(
            *blas.handle(),
            cublasMath_t::CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION,
        )
    };
    assert_eq!(status, cublasStatus_t::CUBLAS_STATUS_SUCCESS);
    blas
}

/// The element type of C in a GemmEx call, with how the test stores it on the device.
#[derive(Clone, Copy, Debug, PartialEq)]
enum CType {
    F16,
    F32,
}

impl CType {
    fn cuda(self) -> cudaDataType_t {
        match self {
            CType::F16 => cudaDataType_t::CUDA_R_16F,
            CType::F32 => cudaDataType_t::CUDA_R_32F,
        }
    }
}

/// C on the device: f16 as its bits (cudarc copies u16), f32 as is.
enum DevC {
    F16(cudarc::driver::CudaSlice<u16>),
    F32(cudarc::driver::CudaSlice<f32>),
}

impl DevC {
    fn upload(e: &Emu, ty: CType, values: &[f32]) -> DevC {
        match ty {
            CType::F16 => DevC::F16(
                e.stream
                    .clone_htod(
                        &values
                            .iter()
                            .map(|&v| f16::from_f32(v).to_bits())
                            .collect::<Vec<_>>(),
                    )
                    .unwrap(),
            ),
            CType::F32 => DevC::F32(e.stream.clone_htod(values).unwrap()),
        }
    }
    /// Raw bits of every element (f16 bits widened), for bit-exact comparisons.
    fn download_bits(&self, e: &Emu) -> Vec<u32> {
        match self {
            DevC::F16(c) => e
                .stream
                .clone_dtoh(c)
                .unwrap()
                .into_iter()
                .map(u32::from)
                .collect(),
            DevC::F32(c) => e
                .stream
                .clone_dtoh(c)
                .unwrap()
                .into_iter()
                .map(f32::to_bits)
                .collect(),
        }
    }
    fn ptr(&mut self, e: &Emu) -> u64 {
        // The guard is dropped at once: every call here is on this one stream, in order.
        match self {
            DevC::F16(c) => c.device_ptr_mut(&e.stream).0,
            DevC::F32(c) => c.device_ptr_mut(&e.stream).0,
        }
    }
}

/// What C must hold afterwards, as bits: each value rounded once to C's type.
fn expected_bits(ty: CType, values: &[f32]) -> Vec<u32> {
    match ty {
        CType::F16 => values
            .iter()
            .map(|&v| u32::from(f16::from_f32(v).to_bits()))
            .collect(),
        CType::F32 => values.iter().map(|v| v.to_bits()).collect(),
    }
}

/// C's starting values as the device holds them (f16 C rounded to f16).
fn as_stored(ty: CType, values: &[f32]) -> Vec<f32> {
    match ty {
        CType::F16 => values.iter().map(|&v| f16::from_f32(v).to_f32()).collect(),
        CType::F32 => values.to_vec(),
    }
}

/// The types of a GemmEx call.
#[derive(Clone, Copy, Debug)]
struct ExTypes {
    ab: cudaDataType_t,
    c: cudaDataType_t,
    compute: cublasComputeType_t,
    algo: cublasGemmAlgo_t,
}

impl ExTypes {
    /// fp16 A and B, fp32 compute: what mixed precision uses.
    fn amp(c: cudaDataType_t) -> Self {
        ExTypes {
            ab: cudaDataType_t::CUDA_R_16F,
            c,
            compute: cublasComputeType_t::CUBLAS_COMPUTE_32F,
            algo: cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        }
    }
}

/// One cublasGemmEx call on device pointers.
#[allow(clippy::too_many_arguments)]
fn call_gemm_ex(
    blas: &CudaBlas,
    s: &ExShape,
    t: ExTypes,
    alpha: f32,
    a: u64,
    b: u64,
    beta: f32,
    c: u64,
) -> Result<(), CublasError> {
    unsafe {
        gemm_ex(
            *blas.handle(),
            ExShape::op(s.ta),
            ExShape::op(s.tb),
            s.m as i32,
            s.n as i32,
            s.k as i32,
            (&alpha) as *const f32 as *const _,
            a as *const _,
            t.ab,
            s.lda as i32,
            b as *const _,
            t.ab,
            s.ldb as i32,
            (&beta) as *const f32 as *const _,
            c as *mut _,
            t.c,
            s.ldc as i32,
            t.compute,
            t.algo,
        )
    }
}

#[test]
fn cublas_gemm_ex_fp16_is_fp32_accumulation_rounded_once() {
    let Some(e) = emu() else { return };
    let blas = blas_fp32_reductions(&e);
    let shapes = [(1, 1, 1), (3, 5, 7), (17, 9, 33), (16, 8, 64), (2, 31, 5)];
    let mut case = 0u64;
    for (si, &mnk) in shapes.iter().enumerate() {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            for c_type in [CType::F16, CType::F32] {
                // beta = 0 with C all NaN: C must not be read.
                for (alpha, beta) in [(0.75f32, -1.25f32), (1.5, 0.0)] {
                    case += 1;
                    let s = ExShape::new(ta, tb, mnk, si % 3);
                    let a = random_f16(s.a_len(), 3 * case);
                    let b = random_f16(s.b_len(), 3 * case + 1);
                    let c0: Vec<f32> = if beta == 0.0 {
                        vec![f32::NAN; s.c_len()]
                    } else {
                        let c = random_f16(s.c_len(), 3 * case + 2);
                        as_stored(
                            c_type,
                            &c.iter().map(|v| v.to_f32() * 3.0).collect::<Vec<_>>(),
                        )
                    };
                    let want =
                        expected_bits(c_type, &gemm_ex_reference(&s, alpha, &a, &b, beta, &c0));
                    let da = e.stream.clone_htod(&bits(&a)).unwrap();
                    let db = e.stream.clone_htod(&bits(&b)).unwrap();
                    let mut dc = DevC::upload(&e, c_type, &c0);
                    // Every algo value is accepted and gives the same result.
                    let algo = if case.is_multiple_of(2) {
                        cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT
                    } else {
                        cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT_TENSOR_OP
                    };
                    let (ap, bp, cp) = (
                        da.device_ptr(&e.stream).0,
                        db.device_ptr(&e.stream).0,
                        dc.ptr(&e),
                    );
                    let t = ExTypes {
                        algo,
                        ..ExTypes::amp(c_type.cuda())
                    };
                    call_gemm_ex(&blas, &s, t, alpha, ap, bp, beta, cp).unwrap();
                    let got = dc.download_bits(&e);
                    assert_eq!(got, want, "{s:?} C {c_type:?} alpha {alpha} beta {beta}");
                }
            }
        }
    }
}

#[test]
fn cublas_gemm_ex_rounds_only_where_cublas_does() {
    let Some(e) = emu() else { return };
    let blas = blas_fp32_reductions(&e);
    let run = |s: &ExShape, a: &[f32], b: &[f32], c_type: CType| -> Vec<u32> {
        let da = e
            .stream
            .clone_htod(
                &a.iter()
                    .map(|&v| f16::from_f32(v).to_bits())
                    .collect::<Vec<_>>(),
            )
            .unwrap();
        let db = e
            .stream
            .clone_htod(
                &b.iter()
                    .map(|&v| f16::from_f32(v).to_bits())
                    .collect::<Vec<_>>(),
            )
            .unwrap();
        let mut dc = DevC::upload(&e, c_type, &vec![0.0; s.c_len()]);
        let (ap, bp, cp) = (
            da.device_ptr(&e.stream).0,
            db.device_ptr(&e.stream).0,
            dc.ptr(&e),
        );
        call_gemm_ex(&blas, s, ExTypes::amp(c_type.cuda()), 1.0, ap, bp, 0.0, cp).unwrap();
        dc.download_bits(&e)
    };
    // (1 + 2^-10)^2 = 1 + 2^-9 + 2^-20: exact in f32, rounded to 1 + 2^-9 in an f16 C.
    let x = 1.0 + 2f32.powi(-10);
    let s1 = ExShape::new(false, false, (1, 1, 1), 0);
    let exact = 1.0 + 2f32.powi(-9) + 2f32.powi(-20);
    assert_eq!(run(&s1, &[x], &[x], CType::F32), vec![exact.to_bits()]);
    let rounded = f16::from_f32(exact);
    assert_eq!(rounded.to_f32(), 1.0 + 2f32.powi(-9));
    assert_eq!(
        run(&s1, &[x], &[x], CType::F16),
        vec![u32::from(rounded.to_bits())]
    );
    // 2048 + 1 + 1: an f16 accumulator gives 2048 (2049 is a tie, rounded to even, twice);
    // the f32 accumulator gives 2050, which an f16 C holds exactly.
    let s3 = ExShape::new(false, false, (1, 1, 3), 0);
    let want = u32::from(f16::from_f32(2050.0).to_bits());
    assert_eq!(
        run(&s3, &[2048.0, 1.0, 1.0], &[1.0; 3], CType::F16),
        vec![want]
    );
    // Beyond f16's range in C: infinity, while the f32 C holds the value.
    let big = 300.0f32;
    assert_eq!(
        run(&s1, &[big], &[big], CType::F32),
        vec![90000f32.to_bits()]
    );
    assert_eq!(
        run(&s1, &[big], &[big], CType::F16),
        vec![u32::from(f16::INFINITY.to_bits())]
    );
}

#[test]
fn cublas_gemm_strided_batched_ex_fp16_matches_each_product() {
    let Some(e) = emu() else { return };
    let blas = blas_fp32_reductions(&e);
    let batch = 3usize;
    for (ci, (s, c_type)) in [
        (ExShape::new(true, false, (5, 7, 9), 1), CType::F16),
        (ExShape::new(false, true, (4, 3, 6), 0), CType::F32),
        (ExShape::new(true, true, (3, 2, 11), 2), CType::F16),
    ]
    .into_iter()
    .enumerate()
    {
        // Gaps between the matrices: they must stay as they were.
        let (sa, sb, sc) = (s.a_len() + 3, s.b_len() + 1, s.c_len() + 2);
        let seed = 100 * ci as u64;
        let a = random_f16(sa * batch, seed);
        let b = random_f16(sb * batch, seed + 1);
        let c0 = as_stored(
            c_type,
            &random_f16(sc * batch, seed + 2)
                .iter()
                .map(|v| v.to_f32())
                .collect::<Vec<_>>(),
        );
        let (alpha, beta) = (-0.5f32, 0.625f32);
        let mut want_values = c0.clone();
        for i in 0..batch {
            let r = gemm_ex_reference(
                &s,
                alpha,
                &a[i * sa..],
                &b[i * sb..],
                beta,
                &c0[i * sc..i * sc + s.c_len()],
            );
            want_values[i * sc..i * sc + s.c_len()].copy_from_slice(&r);
        }
        let mut want = expected_bits(c_type, &want_values);
        // The gaps hold C's starting values as stored, untouched.
        for (i, w) in want.iter_mut().enumerate() {
            if i % sc >= s.c_len() {
                *w = expected_bits(c_type, &c0[i..i + 1])[0];
            }
        }
        let da = e.stream.clone_htod(&bits(&a)).unwrap();
        let db = e.stream.clone_htod(&bits(&b)).unwrap();
        let mut dc = DevC::upload(&e, c_type, &c0);
        let (ap, bp, cp) = (
            da.device_ptr(&e.stream).0,
            db.device_ptr(&e.stream).0,
            dc.ptr(&e),
        );
        unsafe {
            gemm_strided_batched_ex(
                *blas.handle(),
                ExShape::op(s.ta),
                ExShape::op(s.tb),
                s.m as i32,
                s.n as i32,
                s.k as i32,
                (&alpha) as *const f32 as *const _,
                ap as *const _,
                cudaDataType_t::CUDA_R_16F,
                s.lda as i32,
                sa as i64,
                bp as *const _,
                cudaDataType_t::CUDA_R_16F,
                s.ldb as i32,
                sb as i64,
                (&beta) as *const f32 as *const _,
                cp as *mut _,
                c_type.cuda(),
                s.ldc as i32,
                sc as i64,
                batch as i32,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT_TENSOR_OP,
            )
        }
        .unwrap();
        assert_eq!(dc.download_bits(&e), want, "{s:?} C {c_type:?}");
    }
}

#[test]
fn cublas_gemm_ex_all_fp32_is_sgemm() {
    let Some(e) = emu() else { return };
    let blas = CudaBlas::new(e.stream.clone()).unwrap();
    let s = ExShape::new(true, false, (7, 5, 9), 1);
    let to_f32 = |v: Vec<f16>| -> Vec<f32> { v.iter().map(|x| x.to_f32() / 3.0).collect() };
    let a = e
        .stream
        .clone_htod(&to_f32(random_f16(s.a_len(), 7)))
        .unwrap();
    let b = e
        .stream
        .clone_htod(&to_f32(random_f16(s.b_len(), 8)))
        .unwrap();
    let c0 = to_f32(random_f16(s.c_len(), 9));
    let (alpha, beta) = (0.3f32, -0.7f32);
    let mut c_sgemm = e.stream.clone_htod(&c0).unwrap();
    let cfg = GemmConfig {
        transa: CUBLAS_OP_T,
        transb: CUBLAS_OP_N,
        m: s.m as i32,
        n: s.n as i32,
        k: s.k as i32,
        alpha,
        lda: s.lda as i32,
        ldb: s.ldb as i32,
        beta,
        ldc: s.ldc as i32,
    };
    unsafe { blas.gemm(cfg, &a, &b, &mut c_sgemm) }.unwrap();
    let mut c_ex = e.stream.clone_htod(&c0).unwrap();
    let all_f32 = ExTypes {
        ab: cudaDataType_t::CUDA_R_32F,
        ..ExTypes::amp(cudaDataType_t::CUDA_R_32F)
    };
    {
        let (ap, bp) = (a.device_ptr(&e.stream).0, b.device_ptr(&e.stream).0);
        let cp = c_ex.device_ptr_mut(&e.stream).0;
        call_gemm_ex(&blas, &s, all_f32, alpha, ap, bp, beta, cp).unwrap();
    }
    let (got, want) = (
        e.stream.clone_dtoh(&c_ex).unwrap(),
        e.stream.clone_dtoh(&c_sgemm).unwrap(),
    );
    assert_eq!(
        got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        want.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
    assert_ne!(got, c0, "the product was computed");
}

#[test]
fn cublas_gemm_ex_checks_arguments_and_says_what_it_does_not_emulate() {
    if let Some(out) = in_child("cublas_gemm_ex_checks_arguments_and_says_what_it_does_not_emulate")
    {
        if !out.contains("skipped") {
            for said in [
                "cublasGemmEx: compute type 64",
                "cublasGemmEx: compute type 74",
                "CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION",
                "tensor-op algo 99 with fp32 inputs",
                "cublasGemmEx: operand A",
            ] {
                assert!(out.contains(said), "{said:?} not said:\n{out}");
            }
        }
        return;
    }
    let Some(e) = emu() else { return };
    let strict = blas_fp32_reductions(&e);
    let plain = CudaBlas::new(e.stream.clone()).unwrap();
    let s = ExShape::new(false, false, (4, 3, 5), 0);
    let a = e
        .stream
        .clone_htod(&bits(&random_f16(s.a_len(), 1)))
        .unwrap();
    let b = e
        .stream
        .clone_htod(&bits(&random_f16(s.b_len(), 2)))
        .unwrap();
    let mut c16 = e.stream.alloc_zeros::<u16>(s.c_len()).unwrap();
    let mut c32 = e.stream.alloc_zeros::<f32>(s.c_len()).unwrap();
    let (ap, bp) = (a.device_ptr(&e.stream).0, b.device_ptr(&e.stream).0);
    let (c16p, c32p) = (
        c16.device_ptr_mut(&e.stream).0,
        c32.device_ptr_mut(&e.stream).0,
    );
    use cublasComputeType_t::*;
    use cudaDataType_t::*;
    let status = |blas: &CudaBlas, s: &ExShape, a: u64, c: u64, c_type, compute| {
        let t = ExTypes {
            compute,
            ..ExTypes::amp(c_type)
        };
        format!("{:?}", call_gemm_ex(blas, s, t, 1.0, a, bp, 0.0, c))
    };
    // The supported combination works on the strict handle, with both C types.
    assert_eq!(
        status(&strict, &s, ap, c16p, CUDA_R_16F, CUBLAS_COMPUTE_32F),
        "Ok(())"
    );
    assert_eq!(
        status(&plain, &s, ap, c32p, CUDA_R_32F, CUBLAS_COMPUTE_32F),
        "Ok(())"
    );
    // lda below the rows of A as stored.
    let bad_lda = ExShape { lda: s.m - 1, ..s };
    assert!(
        status(&strict, &bad_lda, ap, c16p, CUDA_R_16F, CUBLAS_COMPUTE_32F)
            .contains("INVALID_VALUE")
    );
    // fp16 compute, and FAST_16F (fp32 inputs only, per the cuBLAS table).
    for compute in [CUBLAS_COMPUTE_16F, CUBLAS_COMPUTE_32F_FAST_16F] {
        let r = status(&strict, &s, ap, c16p, CUDA_R_16F, compute);
        assert!(r.contains("NOT_SUPPORTED"), "{compute:?}: {r}");
    }
    // An fp16 C where cuBLAS may reduce in fp16 (the handle's default math mode).
    assert!(status(&plain, &s, ap, c16p, CUDA_R_16F, CUBLAS_COMPUTE_32F).contains("NOT_SUPPORTED"));
    // All fp32 with a tensor-op algo means FAST_16F down-conversion in cuBLAS.
    let (a32, b32) = (
        e.stream.alloc_zeros::<f32>(s.a_len()).unwrap(),
        e.stream.alloc_zeros::<f32>(s.b_len()).unwrap(),
    );
    let tensor_op_f32 = ExTypes {
        ab: CUDA_R_32F,
        algo: cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT_TENSOR_OP,
        ..ExTypes::amp(CUDA_R_32F)
    };
    let (a32p, b32p) = (a32.device_ptr(&e.stream).0, b32.device_ptr(&e.stream).0);
    let r = call_gemm_ex(&plain, &s, tensor_op_f32, 1.0, a32p, b32p, 0.0, c32p);
    assert!(format!("{r:?}").contains("NOT_SUPPORTED"), "{r:?}");
    // A one element short of what m, k and lda need: an error, not a read past the buffer.
    let short = e.stream.alloc_zeros::<u16>(s.a_len() - 1).unwrap();
    let r = status(
        &strict,
        &s,
        short.device_ptr(&e.stream).0,
        c16p,
        CUDA_R_16F,
        CUBLAS_COMPUTE_32F,
    );
    assert!(r.contains("EXECUTION_FAILED"), "{r}");
}

// ---- cuDNN on half tensors (PSEUDO_HALF_CONFIG: half x, w, y; float compute type)

/// One f16 element as cuDNN sees it (`CUDNN_DATA_HALF`, f32 scaling parameters), for cudarc's
/// typed descriptors. The device buffers hold f16 bits (`u16`), viewed as this type.
#[derive(Clone, Copy, Debug)]
struct DnnHalf(u16);

impl cudarc::cudnn::CudnnDataType for DnnHalf {
    const DATA_TYPE: cudarc::cudnn::sys::cudnnDataType_t =
        cudarc::cudnn::sys::cudnnDataType_t::CUDNN_DATA_HALF;
    type Scalar = f32;
    fn into_scaling_parameter(self) -> f32 {
        f16::from_bits(self.0).to_f32()
    }
}

/// A 2-D convolution: x `[n, c, h, w]`, filter `[k, c, kh, kw]`.
#[derive(Clone, Copy, Debug)]
struct DnnShape {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    kh: usize,
    kw: usize,
    pad: usize,
    stride: usize,
    dil: usize,
    /// CUDNN_CONVOLUTION (the filter flipped) instead of cross-correlation.
    flip: bool,
}

impl DnnShape {
    fn out(&self, size: usize, ks: usize) -> usize {
        (size + 2 * self.pad - ((ks - 1) * self.dil + 1)) / self.stride + 1
    }
    fn oh(&self) -> usize {
        self.out(self.h, self.kh)
    }
    fn ow(&self) -> usize {
        self.out(self.w, self.kw)
    }
    fn x_len(&self) -> usize {
        self.n * self.c * self.h * self.w
    }
    fn w_len(&self) -> usize {
        self.k * self.c * self.kh * self.kw
    }
    fn y_len(&self) -> usize {
        self.n * self.k * self.oh() * self.ow()
    }
    /// Calls `f(y index, x index, w index)` for every product, in the emulator's documented
    /// order (n, k, oy, ox, c, ki, kj: what each output's float sum follows).
    fn taps(&self, mut f: impl FnMut(usize, usize, usize)) {
        let (oh, ow) = (self.oh(), self.ow());
        for n in 0..self.n {
            for co in 0..self.k {
                for oy in 0..oh {
                    for ox in 0..ow {
                        for ci in 0..self.c {
                            for ki in 0..self.kh {
                                let iy = (oy * self.stride + ki * self.dil).checked_sub(self.pad);
                                let Some(iy) = iy.filter(|&v| v < self.h) else {
                                    continue;
                                };
                                for kj in 0..self.kw {
                                    let ix =
                                        (ox * self.stride + kj * self.dil).checked_sub(self.pad);
                                    let Some(ix) = ix.filter(|&v| v < self.w) else {
                                        continue;
                                    };
                                    let (fi, fj) = if self.flip {
                                        (self.kh - 1 - ki, self.kw - 1 - kj)
                                    } else {
                                        (ki, kj)
                                    };
                                    f(
                                        ((n * self.k + co) * oh + oy) * ow + ox,
                                        ((n * self.c + ci) * self.h + iy) * self.w + ix,
                                        ((co * self.c + ci) * self.kh + fi) * self.kw + fj,
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum DnnDir {
    Forward,
    BackwardData,
    BackwardFilter,
}

/// The pseudo-half definition: products of the f32 values of two f16 inputs summed in f32 in
/// `taps` order, `r = alpha * sum`, `r += beta * out` in f32 when beta != 0, and `r` rounded
/// once to f16 (nearest, ties to even). `a`, `b` and `out0` as the direction takes them: x and
/// w → y, dy and w → dx, x and dy → dw.
fn pseudo_half_reference(
    s: &DnnShape,
    dir: DnnDir,
    a: &[f16],
    b: &[f16],
    out0: &[f16],
    alpha: f32,
    beta: f32,
) -> Vec<u16> {
    let mut acc = vec![0f32; out0.len()];
    s.taps(|yi, xi, wi| {
        let (o, i, j) = match dir {
            DnnDir::Forward => (yi, xi, wi),
            DnnDir::BackwardData => (xi, yi, wi),
            DnnDir::BackwardFilter => (wi, xi, yi),
        };
        acc[o] += a[i].to_f32() * b[j].to_f32();
    });
    acc.iter()
        .zip(out0)
        .map(|(&sum, &old)| {
            let mut r = alpha * sum;
            if beta != 0.0 {
                r += beta * old.to_f32();
            }
            f16::from_f32(r).to_bits()
        })
        .collect()
}

/// Runs one direction on the emulated cuDNN with half descriptors and compute type `C`;
/// returns the output's bits.
#[allow(clippy::too_many_arguments)]
fn run_dnn_half<C: cudarc::cudnn::CudnnDataType>(
    e: &Emu,
    s: &DnnShape,
    dir: DnnDir,
    math: cudarc::cudnn::sys::cudnnMathType_t,
    a: &[f16],
    b: &[f16],
    out0: &[f16],
    (alpha, beta): (f32, f32),
) -> Result<Vec<u16>, cudarc::cudnn::CudnnError> {
    use cudarc::cudnn::sys::{cudnnConvolutionMode_t, cudnnTensorFormat_t};
    use cudarc::cudnn::{ConvBackwardData, ConvBackwardFilter, ConvForward};
    let dnn = cudarc::cudnn::Cudnn::new(e.stream.clone()).unwrap();
    let nchw = cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
    let i = |v: usize| v as i32;
    let xd = dnn.create_4d_tensor::<DnnHalf>(nchw, [i(s.n), i(s.c), i(s.h), i(s.w)])?;
    let wd = dnn.create_4d_filter::<DnnHalf>(nchw, [i(s.k), i(s.c), i(s.kh), i(s.kw)])?;
    let yd = dnn.create_4d_tensor::<DnnHalf>(nchw, [i(s.n), i(s.k), i(s.oh()), i(s.ow())])?;
    let mode = if s.flip {
        cudnnConvolutionMode_t::CUDNN_CONVOLUTION
    } else {
        cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION
    };
    let mut conv = dnn.create_conv2d::<C>([i(s.pad); 2], [i(s.stride); 2], [i(s.dil); 2], mode)?;
    conv.set_math_type(math)?;
    let up = |v: &[f16]| e.stream.clone_htod(&bits(v)).unwrap();
    let (da, db, mut dout) = (up(a), up(b), up(out0));
    let scales = (
        DnnHalf(f16::from_f32(alpha).to_bits()),
        DnnHalf(f16::from_f32(beta).to_bits()),
    );
    // The views borrow the buffers until the call is made; the download comes after.
    {
        // SAFETY: u16 bits viewed as f16 elements, lengths as uploaded.
        let (va, vb, mut vout) = unsafe {
            (
                da.transmute::<DnnHalf>(a.len()).unwrap(),
                db.transmute::<DnnHalf>(b.len()).unwrap(),
                dout.transmute_mut::<DnnHalf>(out0.len()).unwrap(),
            )
        };
        // The largest workspace any algorithm asks for here.
        let mut ws = e.stream.alloc_zeros::<u8>(1 << 16).unwrap();
        unsafe {
            match dir {
                DnnDir::Forward => {
                    let op = ConvForward {
                        conv: &conv,
                        x: &xd,
                        w: &wd,
                        y: &yd,
                    };
                    let algo = op.pick_algorithm()?;
                    assert!(op.get_workspace_size(algo)? <= 1 << 16);
                    op.launch(algo, Some(&mut ws), scales, &va, &vb, &mut vout)?;
                }
                DnnDir::BackwardData => {
                    let op = ConvBackwardData {
                        conv: &conv,
                        dx: &xd,
                        w: &wd,
                        dy: &yd,
                    };
                    let algo = op.pick_algorithm()?;
                    op.launch(algo, Some(&mut ws), scales, &mut vout, &vb, &va)?;
                }
                DnnDir::BackwardFilter => {
                    let op = ConvBackwardFilter {
                        conv: &conv,
                        x: &xd,
                        dw: &wd,
                        dy: &yd,
                    };
                    let algo = op.pick_algorithm()?;
                    op.launch(algo, Some(&mut ws), scales, &va, &mut vout, &vb)?;
                }
            }
        }
    }
    Ok(e.stream.clone_dtoh(&dout).unwrap())
}

#[test]
fn cudnn_pseudo_half_is_f32_sums_rounded_once_to_f16() {
    let Some(e) = emu() else { return };
    use cudarc::cudnn::sys::cudnnMathType_t::{CUDNN_FMA_MATH, CUDNN_TENSOR_OP_MATH};
    let sh = |n, c, h, w, k, kh, kw, pad, stride, dil, flip| DnnShape {
        n,
        c,
        h,
        w,
        k,
        kh,
        kw,
        pad,
        stride,
        dil,
        flip,
    };
    let shapes = [
        sh(1, 1, 1, 1, 1, 1, 1, 0, 1, 1, false),
        sh(2, 3, 7, 5, 4, 3, 3, 1, 2, 1, false),
        sh(3, 5, 9, 11, 2, 4, 2, 1, 2, 1, false),
        sh(2, 4, 8, 6, 3, 2, 3, 2, 1, 2, true),
        // K = 144 products per output: long enough f32 sums to round.
        sh(2, 16, 6, 6, 8, 3, 3, 1, 1, 1, false),
    ];
    let mut case = 0u64;
    for s in shapes {
        for dir in [
            DnnDir::Forward,
            DnnDir::BackwardData,
            DnnDir::BackwardFilter,
        ] {
            let (a_len, b_len, out_len) = match dir {
                DnnDir::Forward => (s.x_len(), s.w_len(), s.y_len()),
                DnnDir::BackwardData => (s.y_len(), s.w_len(), s.x_len()),
                DnnDir::BackwardFilter => (s.x_len(), s.y_len(), s.w_len()),
            };
            // beta = 0 with the output all NaN: it must not be read.
            for (alpha, beta) in [(1.0f32, 0.0f32), (0.75, -1.25)] {
                case += 1;
                let a = random_f16(a_len, 3 * case);
                let b = random_f16(b_len, 3 * case + 1);
                let out0 = if beta == 0.0 {
                    vec![f16::NAN; out_len]
                } else {
                    random_f16(out_len, 3 * case + 2)
                };
                let want = pseudo_half_reference(&s, dir, &a, &b, &out0, alpha, beta);
                // Tensor-op math or not: the same arithmetic.
                let math = if case.is_multiple_of(2) {
                    CUDNN_TENSOR_OP_MATH
                } else {
                    CUDNN_FMA_MATH
                };
                let got =
                    run_dnn_half::<f32>(&e, &s, dir, math, &a, &b, &out0, (alpha, beta)).unwrap();
                assert_eq!(got, want, "{dir:?} {s:?} alpha {alpha} beta {beta}");
            }
        }
    }
}

#[test]
fn cudnn_pseudo_half_sums_in_f32_not_wider() {
    let Some(e) = emu() else { return };
    use cudarc::cudnn::sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH;
    // A 1x1 convolution over two channels: 683 * 1.5 = 1024.5, then + 2^-8 * 2^-7 = 2^-15, a
    // quarter of f32's ulp at 1024: the f32 sum stays 1024.5, an f16 tie, which rounds to even
    // (1024); the exact sum rounds up to 1025.
    let s = DnnShape {
        n: 1,
        c: 2,
        h: 1,
        w: 1,
        k: 1,
        kh: 1,
        kw: 1,
        pad: 0,
        stride: 1,
        dil: 1,
        flip: false,
    };
    let h = |v: f32| f16::from_f32(v);
    let x = [h(683.0), h(2f32.powi(-8))];
    let w = [h(1.5), h(2f32.powi(-7))];
    let y0 = [f16::NAN];
    let got = run_dnn_half::<f32>(
        &e,
        &s,
        DnnDir::Forward,
        CUDNN_TENSOR_OP_MATH,
        &x,
        &w,
        &y0,
        (1.0, 0.0),
    )
    .unwrap();
    assert_eq!(f16::from_bits(got[0]).to_f32(), 1024.0);
    // Beyond f16's range: infinity.
    let big = [h(60000.0), h(60000.0)];
    let got = run_dnn_half::<f32>(
        &e,
        &s,
        DnnDir::Forward,
        CUDNN_TENSOR_OP_MATH,
        &big,
        &[h(1.0), h(1.0)],
        &y0,
        (1.0, 0.0),
    )
    .unwrap();
    assert_eq!(got[0], f16::INFINITY.to_bits());
}

#[test]
fn cudnn_refuses_the_half_configurations_it_does_not_emulate() {
    let Some(e) = emu() else { return };
    // In a child, to read the emulator's stderr lines.
    if let Some(text) = in_child("cudnn_refuses_the_half_configurations_it_does_not_emulate") {
        for line in [
            "TRUE_HALF_CONFIG",
            "mixed x/w/y data types half/half/float",
            "CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION",
        ] {
            assert!(text.contains(line), "no stderr line with {line:?}:\n{text}");
        }
        return;
    }
    use cudarc::cudnn::sys::cudnnMathType_t::{
        CUDNN_TENSOR_OP_MATH, CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION,
    };
    use cudarc::cudnn::sys::{cudnnConvolutionMode_t, cudnnTensorFormat_t};
    let s = DnnShape {
        n: 1,
        c: 2,
        h: 3,
        w: 3,
        k: 2,
        kh: 2,
        kw: 2,
        pad: 0,
        stride: 1,
        dil: 1,
        flip: false,
    };
    let (x, w, y) = (
        random_f16(s.x_len(), 1),
        random_f16(s.w_len(), 2),
        vec![f16::ZERO; s.y_len()],
    );
    let not_supported = |r: Result<Vec<u16>, cudarc::cudnn::CudnnError>, what: &str| {
        let err = r.expect_err(what);
        assert!(
            format!("{err:?}").contains("NOT_SUPPORTED"),
            "{what}: {err:?}"
        );
    };
    // TRUE_HALF_CONFIG: half compute type (sums in half).
    not_supported(
        run_dnn_half::<DnnHalf>(
            &e,
            &s,
            DnnDir::Forward,
            CUDNN_TENSOR_OP_MATH,
            &x,
            &w,
            &y,
            (1.0, 0.0),
        ),
        "half compute type",
    );
    let dnn = cudarc::cudnn::Cudnn::new(e.stream.clone()).unwrap();
    let nchw = cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
    let xd = dnn.create_4d_tensor::<DnnHalf>(nchw, [1, 2, 3, 3]).unwrap();
    let wd = dnn.create_4d_filter::<DnnHalf>(nchw, [2, 2, 2, 2]).unwrap();
    let conv = |math| {
        let mut c = dnn
            .create_conv2d::<f32>(
                [0, 0],
                [1, 1],
                [1, 1],
                cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
            )
            .unwrap();
        c.set_math_type(math).unwrap();
        c
    };
    // Mixed: half x and w, float y.
    let yd_f32 = dnn.create_4d_tensor::<f32>(nchw, [1, 2, 2, 2]).unwrap();
    refused_forward(&conv(CUDNN_TENSOR_OP_MATH), &xd, &wd, &yd_f32);
    // Float data down-converted to half on tensor cores.
    let (xf, wf) = (
        dnn.create_4d_tensor::<f32>(nchw, [1, 2, 3, 3]).unwrap(),
        dnn.create_4d_filter::<f32>(nchw, [2, 2, 2, 2]).unwrap(),
    );
    refused_forward(
        &conv(CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION),
        &xf,
        &wf,
        &yd_f32,
    );
}

/// Asserts that cuDNN's forward heuristic refuses these descriptors with NOT_SUPPORTED.
fn refused_forward<X: cudarc::cudnn::CudnnDataType, Y: cudarc::cudnn::CudnnDataType>(
    conv: &cudarc::cudnn::ConvDescriptor<f32>,
    x: &cudarc::cudnn::TensorDescriptor<X>,
    w: &cudarc::cudnn::FilterDescriptor<X>,
    y: &cudarc::cudnn::TensorDescriptor<Y>,
) {
    let op = cudarc::cudnn::ConvForward { conv, x, w, y };
    let err = op.pick_algorithm().unwrap_err();
    assert!(format!("{err:?}").contains("NOT_SUPPORTED"), "{err:?}");
}
