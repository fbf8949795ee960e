//! cuDNN path for the three convolution primitives. Per geometry: descriptors built once, the
//! algorithm of each direction chosen once (cuDNN's heuristics), one workspace shared by all
//! convolutions and grown on demand.
//!
//! Math type is FMA: on Ampere and newer cuDNN's default allows TF32 tensor cores for f32 data,
//! which would break parity with the CPU reference (PyTorch does the same when TF32 is off).

use super::err::{dnn, drv};
use super::{CudaBackend, CudaBuffer};
use crate::backend::ConvGeom;
use anyhow::Result;
use cudarc::cudnn::sys::{
    cudnnConvolutionBwdDataAlgo_t as BwdDataAlgo, cudnnConvolutionBwdFilterAlgo_t as BwdFilterAlgo,
    cudnnConvolutionFwdAlgo_t as FwdAlgo, cudnnConvolutionMode_t, cudnnMathType_t,
    cudnnTensorFormat_t,
};
use cudarc::cudnn::{
    ConvBackwardData, ConvBackwardFilter, ConvDescriptor, ConvForward, Cudnn, FilterDescriptor,
    TensorDescriptor,
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
            // Drop the old one first so its memory can be reused (stream-ordered free).
            *ws = None;
            // SAFETY: workspace contents are scratch for cuDNN.
            let s = unsafe { self.stream.alloc::<u8>(bytes) }
                .map_err(|e| drv(e, "allocating the cuDNN workspace"))?;
            *ws = Some(s);
        }
        Ok(ws)
    }

    pub fn forward(
        &self,
        _be: &CudaBackend,
        x: &CudaBuffer,
        w: &CudaBuffer,
        y: &mut CudaBuffer,
        g: &ConvGeom,
    ) -> Result<()> {
        let mut plan = self.plan(g)?;
        let op = ConvForward {
            conv: &plan.conv,
            x: &plan.x,
            w: &plan.w,
            y: &plan.y,
        };
        let algo = match plan.fwd {
            Some(a) => a,
            None => op
                .pick_algorithm()
                .map_err(|e| dnn(e, "choosing a forward algorithm"))?,
        };
        let mut run = |algo: FwdAlgo| -> Result<()> {
            let bytes = op
                .get_workspace_size(algo)
                .map_err(|e| dnn(e, "forward workspace size"))?;
            let mut ws = self.workspace(bytes)?;
            // SAFETY: descriptors describe exactly these buffers (NCHW f32, geometry g).
            unsafe {
                op.launch(
                    algo,
                    ws.as_mut().filter(|_| bytes > 0),
                    (1.0f32, 0.0f32),
                    x.slice(),
                    w.slice(),
                    y.slice_mut(),
                )
            }
            .map_err(|e| dnn(e, "convolution forward"))
        };
        let chosen = match run(algo) {
            Ok(()) => algo,
            // Some heuristic choices are unsupported under FMA math: fall back to the
            // always-available implicit GEMM.
            Err(e) if algo != FwdAlgo::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM => {
                eprintln!("note: cuDNN forward {algo:?} failed ({e:#}); using IMPLICIT_GEMM");
                let safe = FwdAlgo::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM;
                run(safe)?;
                safe
            }
            Err(e) => return Err(e),
        };
        plan.fwd = Some(chosen);
        Ok(())
    }

    pub fn backward_data(
        &self,
        _be: &CudaBackend,
        dy: &CudaBuffer,
        w: &CudaBuffer,
        dx: &mut CudaBuffer,
        g: &ConvGeom,
    ) -> Result<()> {
        let mut plan = self.plan(g)?;
        let op = ConvBackwardData {
            conv: &plan.conv,
            dx: &plan.x,
            w: &plan.w,
            dy: &plan.y,
        };
        let algo = match plan.bwd_data {
            Some(a) => a,
            None => op
                .pick_algorithm()
                .map_err(|e| dnn(e, "choosing a backward-data algorithm"))?,
        };
        let mut run = |algo: BwdDataAlgo| -> Result<()> {
            let bytes = op
                .get_workspace_size(algo)
                .map_err(|e| dnn(e, "backward-data workspace size"))?;
            let mut ws = self.workspace(bytes)?;
            // SAFETY: descriptors describe exactly these buffers (NCHW f32, geometry g).
            unsafe {
                op.launch(
                    algo,
                    ws.as_mut().filter(|_| bytes > 0),
                    (1.0f32, 0.0f32),
                    dx.slice_mut(),
                    w.slice(),
                    dy.slice(),
                )
            }
            .map_err(|e| dnn(e, "convolution backward-data"))
        };
        let safe = BwdDataAlgo::CUDNN_CONVOLUTION_BWD_DATA_ALGO_1;
        let chosen = match run(algo) {
            Ok(()) => algo,
            Err(e) if algo != safe => {
                eprintln!("note: cuDNN backward-data {algo:?} failed ({e:#}); using ALGO_1");
                run(safe)?;
                safe
            }
            Err(e) => return Err(e),
        };
        plan.bwd_data = Some(chosen);
        Ok(())
    }

    pub fn backward_filter(
        &self,
        _be: &CudaBackend,
        x: &CudaBuffer,
        dy: &CudaBuffer,
        dw: &mut CudaBuffer,
        g: &ConvGeom,
    ) -> Result<()> {
        let mut plan = self.plan(g)?;
        let op = ConvBackwardFilter {
            conv: &plan.conv,
            x: &plan.x,
            dw: &plan.w,
            dy: &plan.y,
        };
        let algo = match plan.bwd_filter {
            Some(a) => a,
            None => op
                .pick_algorithm()
                .map_err(|e| dnn(e, "choosing a backward-filter algorithm"))?,
        };
        let mut run = |algo: BwdFilterAlgo| -> Result<()> {
            let bytes = op
                .get_workspace_size(algo)
                .map_err(|e| dnn(e, "backward-filter workspace size"))?;
            let mut ws = self.workspace(bytes)?;
            // SAFETY: descriptors describe exactly these buffers (NCHW f32, geometry g).
            unsafe {
                op.launch(
                    algo,
                    ws.as_mut().filter(|_| bytes > 0),
                    (1.0f32, 0.0f32),
                    x.slice(),
                    dw.slice_mut(),
                    dy.slice(),
                )
            }
            .map_err(|e| dnn(e, "convolution backward-filter"))
        };
        let safe = BwdFilterAlgo::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1;
        let chosen = match run(algo) {
            Ok(()) => algo,
            Err(e) if algo != safe => {
                eprintln!("note: cuDNN backward-filter {algo:?} failed ({e:#}); using ALGO_1");
                run(safe)?;
                safe
            }
            Err(e) => return Err(e),
        };
        plan.bwd_filter = Some(chosen);
        Ok(())
    }
}
