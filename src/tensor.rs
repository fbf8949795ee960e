//! Tensors and reverse-mode autograd.
//!
//! A [`Tensor`] is a shape, a device and a shared [`Storage`], whose variant is its element
//! type ([`Tensor::dtype`]). Ops (in `crate::ops`) that see an
//! input requiring gradients record a [`GradFn`] on their output: the inputs and a closure that
//! maps the output's gradient to the inputs' gradients. [`Tensor::backward`] walks that graph
//! in reverse topological order and accumulates into the leaves' `grad`.

use crate::backend::{backend, Backend, DType, Device, Storage};
use crate::rng::Rng;
use anyhow::{bail, Context, Result};
use std::cell::{Cell, Ref, RefCell, RefMut};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

/// Maps the output gradient to one optional gradient per input. The second argument says, per
/// input, whether that input requires a gradient: a closure computes only those (an image, a
/// detached fake or a latent fed to a convolution gets no backward-data), and may return
/// `None` for the others.
pub type BackwardFn = Box<dyn Fn(&Storage, &[bool]) -> Result<Vec<Option<Storage>>>>;

pub struct GradFn {
    pub name: &'static str,
    pub inputs: Vec<Tensor>,
    pub backward: BackwardFn,
}

struct Inner {
    id: u64,
    shape: Vec<usize>,
    device: Device,
    data: Rc<RefCell<Storage>>,
    grad: RefCell<Option<Storage>>,
    /// A `Cell` so a leaf can be frozen for a while (see [`FrozenParams`]).
    requires_grad: Cell<bool>,
    grad_fn: Option<GradFn>,
}

#[derive(Clone)]
pub struct Tensor(Rc<Inner>);

thread_local! {
    static NEXT_ID: Cell<u64> = const { Cell::new(0) };
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

fn next_id() -> u64 {
    NEXT_ID.with(|c| {
        let id = c.get();
        c.set(id + 1);
        id
    })
}

/// While alive, the given leaf parameters do not require gradients: ops on them alone record no
/// graph, and a backward run while the guard lives computes no gradient for them (a conv whose
/// weight is frozen skips its backward-filter). The G step freezes D this way: it needs the
/// gradient through D, not D's own. Restores each leaf's flag on drop.
pub struct FrozenParams {
    params: Vec<(Tensor, bool)>,
}

impl FrozenParams {
    /// Freezes `params`; errors on a tensor that is not a leaf.
    pub fn new(params: impl IntoIterator<Item = Tensor>) -> Result<Self> {
        let mut out = Vec::new();
        for p in params {
            if p.0.grad_fn.is_some() {
                bail!("only leaf tensors can be frozen");
            }
            let was = p.0.requires_grad.replace(false);
            out.push((p, was));
        }
        Ok(FrozenParams { params: out })
    }
}

impl Drop for FrozenParams {
    fn drop(&mut self) {
        for (p, was) in &self.params {
            p.0.requires_grad.set(*was);
        }
    }
}

/// While alive, ops record no graph (sampling, evaluation). Restores the previous mode on drop.
pub struct NoGradGuard {
    previous: bool,
}

pub fn no_grad() -> NoGradGuard {
    let previous = GRAD_ENABLED.with(|g| g.replace(false));
    NoGradGuard { previous }
}

impl Drop for NoGradGuard {
    fn drop(&mut self) {
        GRAD_ENABLED.with(|g| g.set(self.previous));
    }
}

pub fn grad_enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}

pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl Tensor {
    /// A leaf tensor (no gradient) from storage already on a device.
    pub fn from_storage(storage: Storage, shape: &[usize]) -> Result<Tensor> {
        if storage.len() != numel(shape) {
            bail!(
                "tensor of shape {shape:?} needs {} elements, storage holds {}",
                numel(shape),
                storage.len()
            );
        }
        let device = storage.device();
        Ok(Tensor(Rc::new(Inner {
            id: next_id(),
            shape: shape.to_vec(),
            device,
            data: Rc::new(RefCell::new(storage)),
            grad: RefCell::new(None),
            requires_grad: Cell::new(false),
            grad_fn: None,
        })))
    }

    pub fn from_vec(data: Vec<f32>, shape: &[usize], device: Device) -> Result<Tensor> {
        if data.len() != numel(shape) {
            bail!(
                "tensor of shape {shape:?} needs {} elements, got {}",
                numel(shape),
                data.len()
            );
        }
        let storage = match device {
            Device::Cpu => Storage::Cpu(data),
            _ => backend(device)?.upload(&data)?,
        };
        Tensor::from_storage(storage, shape)
    }

    /// An f16 tensor (two bytes an element on every device).
    pub fn from_f16(data: Vec<half::f16>, shape: &[usize], device: Device) -> Result<Tensor> {
        let storage = match device {
            Device::Cpu => Storage::CpuF16(data),
            _ => backend(device)?.upload_f16(&data)?,
        };
        Tensor::from_storage(storage, shape)
    }

    pub fn zeros(shape: &[usize], device: Device) -> Result<Tensor> {
        Tensor::from_storage(backend(device)?.zeros(numel(shape))?, shape)
    }

    pub fn full(shape: &[usize], value: f32, device: Device) -> Result<Tensor> {
        Tensor::from_storage(backend(device)?.full(numel(shape), value)?, shape)
    }

    pub fn randn(
        shape: &[usize],
        mean: f32,
        std: f32,
        rng: &mut Rng,
        device: Device,
    ) -> Result<Tensor> {
        Tensor::from_vec(rng.normal_vec(numel(shape), mean, std), shape, device)
    }

    /// A trainable leaf: gradients accumulate into it.
    pub fn parameter(data: Vec<f32>, shape: &[usize], device: Device) -> Result<Tensor> {
        Ok(Tensor::from_vec(data, shape, device)?.requiring_grad())
    }

    /// The same data as a leaf that requires gradients.
    pub fn requiring_grad(&self) -> Tensor {
        Tensor(Rc::new(Inner {
            id: next_id(),
            shape: self.0.shape.clone(),
            device: self.0.device,
            data: self.0.data.clone(),
            grad: RefCell::new(None),
            requires_grad: Cell::new(true),
            grad_fn: None,
        }))
    }

    /// Output of an op: records `grad_fn` when gradients are on and an input needs them.
    pub fn from_op(
        storage: Storage,
        shape: &[usize],
        name: &'static str,
        inputs: &[&Tensor],
        backward: impl Fn(&Storage, &[bool]) -> Result<Vec<Option<Storage>>> + 'static,
    ) -> Result<Tensor> {
        let track = grad_enabled() && inputs.iter().any(|t| t.requires_grad());
        let t = Tensor::from_storage(storage, shape)?;
        if !track {
            return Ok(t);
        }
        let inner = Rc::try_unwrap(t.0).ok().expect("fresh tensor is unshared");
        Ok(Tensor(Rc::new(Inner {
            requires_grad: Cell::new(true),
            grad_fn: Some(GradFn {
                name,
                inputs: inputs.iter().map(|&t| t.clone()).collect(),
                backward: Box::new(backward),
            }),
            ..inner
        })))
    }

    /// A view with a new shape sharing this tensor's storage (and gradient path).
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        if numel(shape) != self.numel() {
            bail!("cannot reshape {:?} into {shape:?}", self.shape());
        }
        let track = grad_enabled() && self.requires_grad();
        let grad_fn = track.then(|| GradFn {
            name: "reshape",
            inputs: vec![self.clone()],
            backward: Box::new(|g: &Storage, _: &[bool]| {
                Ok(vec![Some(backend(g.device())?.copy(g)?)])
            }),
        });
        Ok(Tensor(Rc::new(Inner {
            id: next_id(),
            shape: shape.to_vec(),
            device: self.0.device,
            data: self.0.data.clone(),
            grad: RefCell::new(None),
            requires_grad: Cell::new(track),
            grad_fn,
        })))
    }

    /// The same data cut from the graph.
    pub fn detach(&self) -> Tensor {
        Tensor(Rc::new(Inner {
            id: next_id(),
            shape: self.0.shape.clone(),
            device: self.0.device,
            data: self.0.data.clone(),
            grad: RefCell::new(None),
            requires_grad: Cell::new(false),
            grad_fn: None,
        }))
    }

    pub fn id(&self) -> u64 {
        self.0.id
    }
    pub fn shape(&self) -> &[usize] {
        &self.0.shape
    }
    pub fn numel(&self) -> usize {
        numel(&self.0.shape)
    }
    pub fn device(&self) -> Device {
        self.0.device
    }
    pub fn dtype(&self) -> DType {
        self.storage().dtype()
    }
    pub fn requires_grad(&self) -> bool {
        self.0.requires_grad.get()
    }
    pub fn grad_fn_name(&self) -> Option<&'static str> {
        self.0.grad_fn.as_ref().map(|g| g.name)
    }

    /// The backend of this tensor's device (created when the tensor was).
    pub fn backend(&self) -> Rc<dyn Backend> {
        backend(self.0.device).expect("backend exists for a live tensor")
    }

    pub fn storage(&self) -> Ref<'_, Storage> {
        self.0.data.borrow()
    }
    pub fn storage_mut(&self) -> RefMut<'_, Storage> {
        self.0.data.borrow_mut()
    }
    /// Shared handle on the storage, for backward closures (never capture an op's own output
    /// tensor there: that would be a reference cycle).
    pub fn storage_rc(&self) -> Rc<RefCell<Storage>> {
        self.0.data.clone()
    }

    /// The values as f32 (an f16 tensor's widened, exactly).
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        match &*self.storage() {
            Storage::Cpu(v) => Ok(v.clone()),
            s if s.dtype() == DType::F16 => {
                Ok(self.to_vec_f16()?.iter().map(|h| h.to_f32()).collect())
            }
            s => self.backend().download(s),
        }
    }

    /// The values of an f16 tensor.
    pub fn to_vec_f16(&self) -> Result<Vec<half::f16>> {
        match &*self.storage() {
            Storage::CpuF16(v) => Ok(v.clone()),
            s => self.backend().download_f16(s),
        }
    }

    /// The single value of a one-element tensor.
    pub fn item(&self) -> Result<f32> {
        if self.numel() != 1 {
            bail!("item() of a tensor with {} elements", self.numel());
        }
        Ok(self.to_vec()?[0])
    }

    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        if device == self.device() {
            return Ok(self.clone());
        }
        match self.dtype() {
            DType::F32 => Tensor::from_vec(self.to_vec()?, self.shape(), device),
            DType::F16 => Tensor::from_f16(self.to_vec_f16()?, self.shape(), device),
        }
    }

    /// Overwrites the values (shape must match), keeping identity: used to load checkpoints.
    pub fn set_values(&self, values: &[f32]) -> Result<()> {
        if values.len() != self.numel() {
            bail!(
                "set_values: {} values for shape {:?}",
                values.len(),
                self.shape()
            );
        }
        let s = match (self.device(), self.dtype()) {
            (Device::Cpu, DType::F32) => Storage::Cpu(values.to_vec()),
            (d, DType::F32) => backend(d)?.upload(values)?,
            // An f16 tensor stays f16 (rounded as `to_dtype` rounds).
            (d, DType::F16) => {
                let halves: Vec<half::f16> =
                    values.iter().map(|&v| half::f16::from_f32(v)).collect();
                backend(d)?.upload_f16(&halves)?
            }
        };
        *self.storage_mut() = s;
        Ok(())
    }

    pub fn grad(&self) -> Option<Ref<'_, Option<Storage>>> {
        let g = self.0.grad.borrow();
        if g.is_some() {
            Some(g)
        } else {
            None
        }
    }

    /// The gradient slot, writable (the data-parallel all-reduce averages it in place).
    pub fn grad_mut(&self) -> RefMut<'_, Option<Storage>> {
        self.0.grad.borrow_mut()
    }

    pub fn grad_to_vec(&self) -> Result<Option<Vec<f32>>> {
        match &*self.0.grad.borrow() {
            None => Ok(None),
            Some(Storage::Cpu(v)) => Ok(Some(v.clone())),
            Some(s) if s.dtype() == DType::F16 => {
                let h = self.backend().download_f16(s)?;
                Ok(Some(h.iter().map(|h| h.to_f32()).collect()))
            }
            Some(s) => Ok(Some(self.backend().download(s)?)),
        }
    }

    pub fn zero_grad(&self) {
        *self.0.grad.borrow_mut() = None;
    }

    fn accumulate_grad(&self, g: Storage) -> Result<()> {
        let mut slot = self.0.grad.borrow_mut();
        match slot.as_mut() {
            None => *slot = Some(g),
            Some(acc) => self.backend().add_assign(acc, &g)?,
        }
        Ok(())
    }

    /// Back-propagates from this tensor with seed gradient 1 (any shape: as `sum().backward()`).
    pub fn backward(&self) -> Result<()> {
        let be = self.backend();
        let mut seed = be.full(self.numel(), 1.0)?;
        if self.dtype() != DType::F32 {
            seed = be.cast(&seed, self.dtype())?;
        }
        self.backward_with(seed)
    }

    /// Back-propagates with an explicit gradient for this tensor.
    pub fn backward_with(&self, grad: Storage) -> Result<()> {
        if !self.requires_grad() {
            bail!("backward() on a tensor that does not require gradients");
        }
        if grad.dtype() != self.dtype() {
            bail!(
                "backward seed is {}, the tensor {} (a gradient has its tensor's dtype)",
                grad.dtype(),
                self.dtype()
            );
        }
        if grad.len() != self.numel() {
            bail!(
                "backward seed has {} elements, tensor {}",
                grad.len(),
                self.numel()
            );
        }
        // Reverse topological order by iterative depth-first search.
        let mut order: Vec<Tensor> = Vec::new();
        let mut seen: HashSet<u64> = HashSet::new();
        let mut stack: Vec<(Tensor, bool)> = vec![(self.clone(), false)];
        while let Some((t, expanded)) = stack.pop() {
            if expanded {
                order.push(t);
                continue;
            }
            if !seen.insert(t.id()) {
                continue;
            }
            stack.push((t.clone(), true));
            if let Some(f) = &t.0.grad_fn {
                for input in &f.inputs {
                    if input.requires_grad() && !seen.contains(&input.id()) {
                        stack.push((input.clone(), false));
                    }
                }
            }
        }
        let mut pending: HashMap<u64, Storage> = HashMap::new();
        pending.insert(self.id(), grad);
        for t in order.iter().rev() {
            let Some(g) = pending.remove(&t.id()) else {
                continue;
            };
            let Some(f) = &t.0.grad_fn else {
                t.accumulate_grad(g)?;
                continue;
            };
            let needs: Vec<bool> = f.inputs.iter().map(Tensor::requires_grad).collect();
            let grads =
                (f.backward)(&g, &needs).with_context(|| format!("backward of {}", f.name))?;
            drop(g);
            for (input, gi) in f.inputs.iter().zip(grads) {
                let Some(gi) = gi else { continue };
                if !input.requires_grad() {
                    continue;
                }
                match pending.get_mut(&input.id()) {
                    Some(acc) => input.backend().add_assign(acc, &gi)?,
                    None => {
                        pending.insert(input.id(), gi);
                    }
                }
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tensor(shape={:?}, dtype={}, device={}, requires_grad={})",
            self.shape(),
            self.dtype(),
            self.device(),
            self.requires_grad()
        )
    }
}
