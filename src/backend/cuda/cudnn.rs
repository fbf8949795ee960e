//! cuDNN path for the three convolution primitives. Per geometry: descriptors built once, the
//! algorithm of each direction chosen once (cuDNN's heuristics), one workspace shared by all
//! convolutions and grown on demand.
//!
//! Math type is FMA: on Ampere and newer cuDNN's default allows TF32 tensor cores for f32 data,
//! which would break parity with the CPU reference (PyTorch does the same when TF32 is off).

use super::conv::Direction;
use super::err::{dnn, drv};
use super::CudaBuffer;
use crate::backend::ConvGeom;
use anyhow::Result;
use cudarc::cudnn::sys::{
    cudnnConvolutionBwdDataAlgo_t as BwdDataAlgo, cudnnConvolutionBwdFilterAlgo_t as BwdFilterAlgo,
    cudnnConvolutionFwdAlgo_t as FwdAlgo, cudnnConvolutionMode_t, cudnnMathType_t,
    cudnnTensorFormat_t,
};
use cudarc::cudnn::{
    ConvBackwardData, ConvBackwardFilter, ConvDescriptor, ConvForward, Cudnn, CudnnError,
    FilterDescriptor, TensorDescriptor,
};
use cudarc::driver::{CudaSlice, CudaStream};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

struct Plan {
    x: TensorDescriptor<f32>,
    w: FilterDescriptor<f32>,
    y: TensorDescriptor<f32>,
    conv: ConvDescriptor<f32>,
    fwd: Option<FwdAlgo>,
    bwd_data: Option<BwdDataAlgo>,
    bwd_filter: Option<BwdFilterAlgo>,
}

pub struct CudnnConv {
    handle: Arc<Cudnn>,
    stream: Arc<CudaStream>,
    plans: RefCell<HashMap<ConvGeom, Plan>>,
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
            workspace: RefCell::new(None),
            outgrown: RefCell::new(Vec::new()),
        })
    }

    fn plan(&self, g: &ConvGeom) -> Result<std::cell::RefMut<'_, Plan>> {
        let mut plans = self.plans.borrow_mut();
        if !plans.contains_key(g) {
            let nchw = cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
            let h = &self.handle;
            let x = h
                .create_4d_tensor::<f32>(nchw, [dim(g.n)?, dim(g.c_in)?, dim(g.h)?, dim(g.w)?])
                .map_err(|e| dnn(e, "input descriptor"))?;
            let y = h
                .create_4d_tensor::<f32>(nchw, [dim(g.n)?, dim(g.c_out)?, dim(g.oh)?, dim(g.ow)?])
                .map_err(|e| dnn(e, "output descriptor"))?;
            let w = h
                .create_4d_filter::<f32>(
                    nchw,
                    [dim(g.c_out)?, dim(g.c_in)?, dim(g.kh)?, dim(g.kw)?],
                )
                .map_err(|e| dnn(e, "filter descriptor"))?;
            let mut conv = h
                .create_conv2d::<f32>(
                    [dim(g.pad)?, dim(g.pad)?],
                    [dim(g.stride)?, dim(g.stride)?],
                    [1, 1],
                    cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
                )
                .map_err(|e| dnn(e, "convolution descriptor"))?;
            conv.set_math_type(cudnnMathType_t::CUDNN_FMA_MATH)
                .map_err(|e| dnn(e, "convolution math type"))?;
            plans.insert(
                *g,
                Plan {
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
    /// dy) and `out` its result (y, dx, dw).
    pub fn run(
        &self,
        dir: Direction,
        a: &CudaBuffer,
        b: &CudaBuffer,
        out: &mut CudaBuffer,
        g: &ConvGeom,
    ) -> Result<()> {
        let mut plan = self.plan(g)?;
        let p: &Plan = &plan;
        match dir {
            Direction::Forward => {
                let algo = self.run_direction::<ConvForward<f32, f32, f32>>(p, p.fwd, a, b, out)?;
                plan.fwd = Some(algo);
            }
            Direction::BackwardData => {
                let algo = self
                    .run_direction::<ConvBackwardData<f32, f32, f32>>(p, p.bwd_data, a, b, out)?;
                plan.bwd_data = Some(algo);
            }
            Direction::BackwardFilter => {
                let algo = self.run_direction::<ConvBackwardFilter<f32, f32, f32>>(
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
    fn run_direction<'p, O: DirectionOp<'p>>(
        &self,
        plan: &'p Plan,
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
        let mut run = |algo: O::Algo| -> Result<()> {
            let bytes = op
                .workspace_size(algo)
                .map_err(|e| dnn(e, &format!("{what} workspace size")))?;
            let mut ws = self.workspace(bytes)?;
            // SAFETY: the plan's descriptors describe exactly these buffers (NCHW f32, the
            // plan's geometry).
            unsafe { op.launch(algo, ws.as_mut().filter(|_| bytes > 0), a, b, out) }
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
trait DirectionOp<'p>: Sized {
    type Algo: Copy + PartialEq + std::fmt::Debug;
    const WHAT: &'static str;
    /// The always-available algorithm to retry with (some heuristic choices are unsupported
    /// under FMA math).
    const FALLBACK: (Self::Algo, &'static str);
    fn new(plan: &'p Plan) -> Self;
    fn pick(&self) -> Result<Self::Algo, CudnnError>;
    fn workspace_size(&self, algo: Self::Algo) -> Result<usize, CudnnError>;
    /// `a`, `b`, `out` as in `CudnnConv::run`.
    ///
    /// # Safety
    /// The buffers must match the plan's descriptors.
    unsafe fn launch(
        &self,
        algo: Self::Algo,
        ws: Option<&mut CudaSlice<u8>>,
        a: &CudaBuffer,
        b: &CudaBuffer,
        out: &mut CudaBuffer,
    ) -> Result<(), CudnnError>;
}

const SCALES: (f32, f32) = (1.0, 0.0); // out = 1 * result + 0 * out

impl<'p> DirectionOp<'p> for ConvForward<'p, f32, f32, f32> {
    type Algo = FwdAlgo;
    const WHAT: &'static str = "forward";
    const FALLBACK: (FwdAlgo, &'static str) = (
        FwdAlgo::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
        "IMPLICIT_GEMM",
    );
    fn new(p: &'p Plan) -> Self {
        ConvForward {
            conv: &p.conv,
            x: &p.x,
            w: &p.w,
            y: &p.y,
        }
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
        x: &CudaBuffer,
        w: &CudaBuffer,
        y: &mut CudaBuffer,
    ) -> Result<(), CudnnError> {
        ConvForward::launch(self, algo, ws, SCALES, x.slice(), w.slice(), y.slice_mut())
    }
}

impl<'p> DirectionOp<'p> for ConvBackwardData<'p, f32, f32, f32> {
    type Algo = BwdDataAlgo;
    const WHAT: &'static str = "backward-data";
    const FALLBACK: (BwdDataAlgo, &'static str) =
        (BwdDataAlgo::CUDNN_CONVOLUTION_BWD_DATA_ALGO_1, "ALGO_1");
    fn new(p: &'p Plan) -> Self {
        ConvBackwardData {
            conv: &p.conv,
            dx: &p.x,
            w: &p.w,
            dy: &p.y,
        }
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
        dy: &CudaBuffer,
        w: &CudaBuffer,
        dx: &mut CudaBuffer,
    ) -> Result<(), CudnnError> {
        ConvBackwardData::launch(
            self,
            algo,
            ws,
            SCALES,
            dx.slice_mut(),
            w.slice(),
            dy.slice(),
        )
    }
}

impl<'p> DirectionOp<'p> for ConvBackwardFilter<'p, f32, f32, f32> {
    type Algo = BwdFilterAlgo;
    const WHAT: &'static str = "backward-filter";
    const FALLBACK: (BwdFilterAlgo, &'static str) =
        (BwdFilterAlgo::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1, "ALGO_1");
    fn new(p: &'p Plan) -> Self {
        ConvBackwardFilter {
            conv: &p.conv,
            x: &p.x,
            dw: &p.w,
            dy: &p.y,
        }
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
        x: &CudaBuffer,
        dy: &CudaBuffer,
        dw: &mut CudaBuffer,
    ) -> Result<(), CudnnError> {
        ConvBackwardFilter::launch(
            self,
            algo,
            ws,
            SCALES,
            x.slice(),
            dw.slice_mut(),
            dy.slice(),
        )
    }
}
