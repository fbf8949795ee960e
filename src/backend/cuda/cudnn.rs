//! cuDNN path for the three convolution primitives. Per geometry: descriptors built once, the
//! algorithm of each direction chosen once (cuDNN's heuristics), one workspace shared by all
//! convolutions and grown on demand.
//!
//! f32 geometries: f32 tensors, math type FMA: on Ampere and newer cuDNN's default allows TF32
//! tensor cores for f32 data, which would break parity with the CPU reference (PyTorch does the
//! same when TF32 is off).
//!
//! Mixed precision (`ConvGeom::f16_operands`): f16 tensors and filters with an f32 compute type
//! (cuDNN's "pseudo-half" configuration: f16 in, f32 accumulation, f16 out) and math type
//! `CUDNN_TENSOR_OP_MATH`, so that GPUs with tensor cores use them. The buffers hold f16 bits
//! written by `f32_to_f16` (see `conv.rs`).

use super::conv::Direction;
use super::err::{dnn, drv};
use super::CudaBuffer;
use crate::backend::ConvGeom;
use anyhow::Result;
use cudarc::cudnn::sys::{
    cudnnConvolutionBwdDataAlgo_t as BwdDataAlgo, cudnnConvolutionBwdFilterAlgo_t as BwdFilterAlgo,
    cudnnConvolutionFwdAlgo_t as FwdAlgo, cudnnConvolutionMode_t, cudnnDataType_t, cudnnMathType_t,
    cudnnTensorFormat_t,
};
use cudarc::cudnn::{
    ConvBackwardData, ConvBackwardFilter, ConvDescriptor, ConvForward, Cudnn, CudnnDataType,
    CudnnError, FilterDescriptor, TensorDescriptor,
};
use cudarc::driver::{CudaSlice, CudaStream, CudaView, CudaViewMut};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

/// One f16 element as cuDNN sees it (`CUDNN_DATA_HALF`; its scaling parameters are f32).
#[derive(Clone, Copy, Debug)]
#[repr(transparent)]
pub struct Half(u16);

impl CudnnDataType for Half {
    const DATA_TYPE: cudnnDataType_t = cudnnDataType_t::CUDNN_DATA_HALF;
    type Scalar = f32;
    fn into_scaling_parameter(self) -> f32 {
        half::f16::from_bits(self.0).to_f32()
    }
}

/// The element type of a plan's tensors: f32, or [`Half`] under mixed precision.
trait Elem: CudnnDataType + Copy + 'static {
    /// (1, 0): out = 1 * result + 0 * out.
    const SCALES: (Self, Self);
    const MATH: cudnnMathType_t;
    /// The plans of this element type.
    fn plans(c: &CudnnConv) -> &RefCell<HashMap<ConvGeom, Plan<Self>>>;
    /// The first `n` elements of `b` (an f32 buffer, or one holding f16 bits).
    fn view(b: &CudaBuffer, n: usize) -> Result<CudaView<'_, Self>>;
    fn view_mut(b: &mut CudaBuffer, n: usize) -> Result<CudaViewMut<'_, Self>>;
}

impl Elem for f32 {
    const SCALES: (f32, f32) = (1.0, 0.0);
    const MATH: cudnnMathType_t = cudnnMathType_t::CUDNN_FMA_MATH;
    fn plans(c: &CudnnConv) -> &RefCell<HashMap<ConvGeom, Plan<f32>>> {
        &c.plans
    }
    fn view(b: &CudaBuffer, n: usize) -> Result<CudaView<'_, f32>> {
        b.slice()
            .try_slice(..n)
            .ok_or_else(|| too_small(n, b.len(), 4))
    }
    fn view_mut(b: &mut CudaBuffer, n: usize) -> Result<CudaViewMut<'_, f32>> {
        let len = b.len();
        b.slice_mut()
            .try_slice_mut(..n)
            .ok_or_else(|| too_small(n, len, 4))
    }
}

impl Elem for Half {
    const SCALES: (Half, Half) = (Half(0x3c00), Half(0));
    const MATH: cudnnMathType_t = cudnnMathType_t::CUDNN_TENSOR_OP_MATH;
    fn plans(c: &CudnnConv) -> &RefCell<HashMap<ConvGeom, Plan<Half>>> {
        &c.half_plans
    }
    fn view(b: &CudaBuffer, n: usize) -> Result<CudaView<'_, Half>> {
        // SAFETY: any bits are a valid f16; the length is checked by `transmute`.
        unsafe { b.slice().transmute::<Half>(n) }.ok_or_else(|| too_small(n, b.len(), 2))
    }
    fn view_mut(b: &mut CudaBuffer, n: usize) -> Result<CudaViewMut<'_, Half>> {
        let len = b.len();
        // SAFETY: as in `view`.
        unsafe { b.slice_mut().transmute_mut::<Half>(n) }.ok_or_else(|| too_small(n, len, 2))
    }
}

fn too_small(n: usize, len: usize, bytes: usize) -> anyhow::Error {
    anyhow::anyhow!("cuDNN operand of {n} {bytes}-byte elements in a buffer of {len} f32 slots")
}

struct Plan<T: Elem> {
    geom: ConvGeom,
    x: TensorDescriptor<T>,
    w: FilterDescriptor<T>,
    y: TensorDescriptor<T>,
    /// Compute type f32 for both element types.
    conv: ConvDescriptor<f32>,
    fwd: Option<FwdAlgo>,
    bwd_data: Option<BwdDataAlgo>,
    bwd_filter: Option<BwdFilterAlgo>,
}

pub struct CudnnConv {
    handle: Arc<Cudnn>,
    stream: Arc<CudaStream>,
    plans: RefCell<HashMap<ConvGeom, Plan<f32>>>,
    half_plans: RefCell<HashMap<ConvGeom, Plan<Half>>>,
    workspace: RefCell<Option<CudaSlice<u8>>>,
    /// Workspaces outgrown: kept, because a CUDA graph may have captured their address.
    outgrown: RefCell<Vec<CudaSlice<u8>>>,
}

fn dim(x: usize) -> Result<i32> {
    i32::try_from(x).map_err(|_| anyhow::anyhow!("convolution dimension {x} exceeds i32"))
}

impl CudnnConv {
    pub fn new(stream: Arc<CudaStream>) -> Result<Self> {
        let handle = Cudnn::new(stream.clone()).map_err(|e| dnn(e, "creating the cuDNN handle"))?;
        Ok(CudnnConv {
            handle,
            stream,
            plans: RefCell::new(HashMap::new()),
            half_plans: RefCell::new(HashMap::new()),
            workspace: RefCell::new(None),
            outgrown: RefCell::new(Vec::new()),
        })
    }

    fn plan<T: Elem>(&self, g: &ConvGeom) -> Result<std::cell::RefMut<'_, Plan<T>>> {
        let mut plans = T::plans(self).borrow_mut();
        if !plans.contains_key(g) {
            let nchw = cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
            let h = &self.handle;
            let x = h
                .create_4d_tensor::<T>(nchw, [dim(g.n)?, dim(g.c_in)?, dim(g.h)?, dim(g.w)?])
                .map_err(|e| dnn(e, "input descriptor"))?;
            let y = h
                .create_4d_tensor::<T>(nchw, [dim(g.n)?, dim(g.c_out)?, dim(g.oh)?, dim(g.ow)?])
                .map_err(|e| dnn(e, "output descriptor"))?;
            let w = h
                .create_4d_filter::<T>(nchw, [dim(g.c_out)?, dim(g.c_in)?, dim(g.kh)?, dim(g.kw)?])
                .map_err(|e| dnn(e, "filter descriptor"))?;
            let mut conv = h
                .create_conv2d::<f32>(
                    [dim(g.pad)?, dim(g.pad)?],
                    [dim(g.stride)?, dim(g.stride)?],
                    [1, 1],
                    cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
                )
                .map_err(|e| dnn(e, "convolution descriptor"))?;
            conv.set_math_type(T::MATH)
                .map_err(|e| dnn(e, "convolution math type"))?;
            plans.insert(
                *g,
                Plan {
                    geom: *g,
                    x,
                    w,
                    y,
                    conv,
                    fwd: None,
                    bwd_data: None,
                    bwd_filter: None,
                },
            );
        }
        Ok(std::cell::RefMut::map(plans, |p| p.get_mut(g).unwrap()))
    }

    /// The shared workspace, grown to at least `bytes`.
    fn workspace(&self, bytes: usize) -> Result<std::cell::RefMut<'_, Option<CudaSlice<u8>>>> {
        let mut ws = self.workspace.borrow_mut();
        let have = ws.as_ref().map_or(0, |w| w.len());
        if bytes > have {
            // Not freed: a captured step (`graph.rs`) may still use it at every replay.
            if let Some(old) = ws.take() {
                self.outgrown.borrow_mut().push(old);
            }
            // SAFETY: workspace contents are scratch for cuDNN.
            let s = unsafe { self.stream.alloc::<u8>(bytes) }
                .map_err(|e| drv(e, "allocating the cuDNN workspace"))?;
            *ws = Some(s);
        }
        Ok(ws)
    }

    /// Runs one direction: `a`, `b` are the trait method's inputs (x and w, dy and w, x and
    /// dy) and `out` its result (y, dx, dw). With `g.f16_operands` all three hold f16 bits
    /// (`f32_to_f16`'s layout: two per f32 slot), else f32.
    pub fn run(
        &self,
        dir: Direction,
        a: &CudaBuffer,
        b: &CudaBuffer,
        out: &mut CudaBuffer,
        g: &ConvGeom,
    ) -> Result<()> {
        if g.f16_operands {
            self.run_typed::<Half>(dir, a, b, out, g)
        } else {
            self.run_typed::<f32>(dir, a, b, out, g)
        }
    }

    fn run_typed<T: Elem>(
        &self,
        dir: Direction,
        a: &CudaBuffer,
        b: &CudaBuffer,
        out: &mut CudaBuffer,
        g: &ConvGeom,
    ) -> Result<()> {
        let mut plan = self.plan::<T>(g)?;
        let p: &Plan<T> = &plan;
        match dir {
            Direction::Forward => {
                let algo = self.run_direction::<T, ConvForward<T, f32, T>>(p, p.fwd, a, b, out)?;
                plan.fwd = Some(algo);
            }
            Direction::BackwardData => {
                let algo =
                    self.run_direction::<T, ConvBackwardData<T, f32, T>>(p, p.bwd_data, a, b, out)?;
                plan.bwd_data = Some(algo);
            }
            Direction::BackwardFilter => {
                let algo = self.run_direction::<T, ConvBackwardFilter<T, f32, T>>(
                    p,
                    p.bwd_filter,
                    a,
                    b,
                    out,
                )?;
                plan.bwd_filter = Some(algo);
            }
        }
        Ok(())
    }

    /// What the three directions share: the algorithm (cached, else cuDNN's heuristic), its
    /// workspace, the launch, and on failure one retry with the always-available fallback.
    /// Returns the algorithm that ran, for the plan to keep.
    fn run_direction<'p, T: Elem, O: DirectionOp<'p, T>>(
        &self,
        plan: &'p Plan<T>,
        cached: Option<O::Algo>,
        a: &CudaBuffer,
        b: &CudaBuffer,
        out: &mut CudaBuffer,
    ) -> Result<O::Algo> {
        let op = O::new(plan);
        let what = O::WHAT;
        let (safe, safe_name) = O::FALLBACK;
        let algo = match cached {
            Some(a) => a,
            None => op
                .pick()
                .map_err(|e| dnn(e, &format!("choosing a {what} algorithm")))?,
        };
        let (a_len, b_len, out_len) = O::lens(&plan.geom);
        let (a, b) = (T::view(a, a_len)?, T::view(b, b_len)?);
        let mut out = T::view_mut(out, out_len)?;
        let mut run = |algo: O::Algo| -> Result<()> {
            let bytes = op
                .workspace_size(algo)
                .map_err(|e| dnn(e, &format!("{what} workspace size")))?;
            let mut ws = self.workspace(bytes)?;
            // SAFETY: the plan's descriptors describe exactly these views (NCHW of T, the
            // plan's geometry, lengths from `lens`).
            unsafe { op.launch(algo, ws.as_mut().filter(|_| bytes > 0), &a, &b, &mut out) }
                .map_err(|e| dnn(e, &format!("convolution {what}")))
        };
        match run(algo) {
            Ok(()) => Ok(algo),
            Err(e) if algo != safe => {
                eprintln!("note: cuDNN {what} {algo:?} failed ({e:#}); using {safe_name}");
                run(safe)?;
                Ok(safe)
            }
            Err(e) => Err(e),
        }
    }
}

/// One convolution direction as cuDNN runs it, so that the three share `run_direction`.
trait DirectionOp<'p, T: Elem>: Sized {
    type Algo: Copy + PartialEq + std::fmt::Debug;
    const WHAT: &'static str;
    /// The always-available algorithm to retry with (some heuristic choices are unsupported
    /// under FMA math).
    const FALLBACK: (Self::Algo, &'static str);
    fn new(plan: &'p Plan<T>) -> Self;
    /// Elements of `a`, `b` and `out` (as in `CudnnConv::run`).
    fn lens(g: &ConvGeom) -> (usize, usize, usize);
    fn pick(&self) -> Result<Self::Algo, CudnnError>;
    fn workspace_size(&self, algo: Self::Algo) -> Result<usize, CudnnError>;
    /// `a`, `b`, `out` as in `CudnnConv::run`.
    ///
    /// # Safety
    /// The views must match the plan's descriptors.
    unsafe fn launch(
        &self,
        algo: Self::Algo,
        ws: Option<&mut CudaSlice<u8>>,
        a: &CudaView<T>,
        b: &CudaView<T>,
        out: &mut CudaViewMut<T>,
    ) -> Result<(), CudnnError>;
}

impl<'p, T: Elem> DirectionOp<'p, T> for ConvForward<'p, T, f32, T> {
    type Algo = FwdAlgo;
    const WHAT: &'static str = "forward";
    const FALLBACK: (FwdAlgo, &'static str) = (
        FwdAlgo::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
        "IMPLICIT_GEMM",
    );
    fn new(p: &'p Plan<T>) -> Self {
        ConvForward {
            conv: &p.conv,
            x: &p.x,
            w: &p.w,
            y: &p.y,
        }
    }
    fn lens(g: &ConvGeom) -> (usize, usize, usize) {
        (g.input_len(), g.weight_len(), g.output_len())
    }
    fn pick(&self) -> Result<FwdAlgo, CudnnError> {
        self.pick_algorithm()
    }
    fn workspace_size(&self, algo: FwdAlgo) -> Result<usize, CudnnError> {
        self.get_workspace_size(algo)
    }
    unsafe fn launch(
        &self,
        algo: FwdAlgo,
        ws: Option<&mut CudaSlice<u8>>,
        x: &CudaView<T>,
        w: &CudaView<T>,
        y: &mut CudaViewMut<T>,
    ) -> Result<(), CudnnError> {
        ConvForward::launch(self, algo, ws, T::SCALES, x, w, y)
    }
}

impl<'p, T: Elem> DirectionOp<'p, T> for ConvBackwardData<'p, T, f32, T> {
    type Algo = BwdDataAlgo;
    const WHAT: &'static str = "backward-data";
    const FALLBACK: (BwdDataAlgo, &'static str) =
        (BwdDataAlgo::CUDNN_CONVOLUTION_BWD_DATA_ALGO_1, "ALGO_1");
    fn new(p: &'p Plan<T>) -> Self {
        ConvBackwardData {
            conv: &p.conv,
            dx: &p.x,
            w: &p.w,
            dy: &p.y,
        }
    }
    fn lens(g: &ConvGeom) -> (usize, usize, usize) {
        (g.output_len(), g.weight_len(), g.input_len())
    }
    fn pick(&self) -> Result<BwdDataAlgo, CudnnError> {
        self.pick_algorithm()
    }
    fn workspace_size(&self, algo: BwdDataAlgo) -> Result<usize, CudnnError> {
        self.get_workspace_size(algo)
    }
    unsafe fn launch(
        &self,
        algo: BwdDataAlgo,
        ws: Option<&mut CudaSlice<u8>>,
        dy: &CudaView<T>,
        w: &CudaView<T>,
        dx: &mut CudaViewMut<T>,
    ) -> Result<(), CudnnError> {
        ConvBackwardData::launch(self, algo, ws, T::SCALES, dx, w, dy)
    }
}

/// Under mixed precision dw comes out in f16, as with PyTorch autocast (cuDNN's legacy API
/// has no configuration with f16 x and dy but an f32 dw; an f32 dw would mean running this
/// direction in f32, without tensor cores). `conv.rs` widens it to f32 at once: the weights
/// and Adam stay f32, and an f16 overflow (inf) is what the loss scaler checks for and skips.
impl<'p, T: Elem> DirectionOp<'p, T> for ConvBackwardFilter<'p, T, f32, T> {
    type Algo = BwdFilterAlgo;
    const WHAT: &'static str = "backward-filter";
    const FALLBACK: (BwdFilterAlgo, &'static str) =
        (BwdFilterAlgo::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1, "ALGO_1");
    fn new(p: &'p Plan<T>) -> Self {
        ConvBackwardFilter {
            conv: &p.conv,
            x: &p.x,
            dw: &p.w,
            dy: &p.y,
        }
    }
    fn lens(g: &ConvGeom) -> (usize, usize, usize) {
        (g.input_len(), g.output_len(), g.weight_len())
    }
    fn pick(&self) -> Result<BwdFilterAlgo, CudnnError> {
        self.pick_algorithm()
    }
    fn workspace_size(&self, algo: BwdFilterAlgo) -> Result<usize, CudnnError> {
        self.get_workspace_size(algo)
    }
    unsafe fn launch(
        &self,
        algo: BwdFilterAlgo,
        ws: Option<&mut CudaSlice<u8>>,
        x: &CudaView<T>,
        dy: &CudaView<T>,
        dw: &mut CudaViewMut<T>,
    ) -> Result<(), CudnnError> {
        ConvBackwardFilter::launch(self, algo, ws, T::SCALES, x, dw, dy)
    }
}
