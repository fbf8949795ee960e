//! Batch norm: the family's backend trait. Its autograd ops are `crate::ops::batchnorm`, its
//! kernels `kernels/batchnorm.cu` (launched by `cuda/batchnorm.rs`), its reference
//! `reference/batchnorm.rs`.

use super::reference::batchnorm as reference;
use super::{
    all_on_host, one_dtype, stored_as, widened, BatchNormAct, BatchNormSaved, ChannelDims, Storage,
};
use anyhow::Result;

/// Batch norm (PyTorch semantics: biased var to normalise, unbiased into running_var), alone or
/// followed by an activation in one pass. The defaults run the reference
/// (`backend/reference/batchnorm.rs`) on host memory. x and dy may be f16 (amp's activations,
/// both the same dtype): y and dx then are f16 too, computed in f32 and rounded on store; the
/// parameters, running statistics, mean, invstd, dgamma and dbeta are always f32.
pub trait BatchNormBackend {
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_train(
        &self,
        x: &Storage,
        gamma: &Storage,
        beta: &Storage,
        running_mean: &mut Storage,
        running_var: &mut Storage,
        d: ChannelDims,
        momentum: f32,
        eps: f32,
    ) -> Result<BatchNormSaved> {
        let act = BatchNormAct::None;
        self.batch_norm_act_train(
            x,
            gamma,
            beta,
            running_mean,
            running_var,
            d,
            momentum,
            eps,
            act,
        )
    }
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_eval(
        &self,
        x: &Storage,
        gamma: &Storage,
        beta: &Storage,
        running_mean: &Storage,
        running_var: &Storage,
        d: ChannelDims,
        eps: f32,
    ) -> Result<Storage> {
        let dtype = x.dtype();
        let x = widened(x);
        let parts = [&*x, gamma, beta, running_mean, running_var];
        all_on_host("batch_norm_eval", &parts)?;
        let y = reference::batch_norm_eval(&x, gamma, beta, running_mean, running_var, d, eps)?;
        Ok(stored_as(y, dtype))
    }
    /// Returns (dx, dgamma, dbeta) for a training-mode forward.
    fn batch_norm_backward(
        &self,
        x: &Storage,
        dy: &Storage,
        gamma: &Storage,
        mean: &Storage,
        invstd: &Storage,
        d: ChannelDims,
    ) -> Result<(Storage, Storage, Storage)> {
        // Without an activation beta is not read; gamma stands in for it.
        let act = BatchNormAct::None;
        self.batch_norm_act_backward(x, dy, gamma, gamma, mean, invstd, d, act, true)
    }
    /// Training-mode batch norm followed by `act` in one pass: `y` of the result is the
    /// activated output, the running statistics move as in
    /// [`BatchNormBackend::batch_norm_train`].
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_act_train(
        &self,
        x: &Storage,
        gamma: &Storage,
        beta: &Storage,
        running_mean: &mut Storage,
        running_var: &mut Storage,
        d: ChannelDims,
        momentum: f32,
        eps: f32,
        act: BatchNormAct,
    ) -> Result<BatchNormSaved> {
        let dtype = x.dtype();
        let x = widened(x);
        let parts = [&*x, gamma, beta, &*running_mean, &*running_var];
        all_on_host("batch_norm_act_train", &parts)?;
        let mut saved = reference::batch_norm_act_train(
            &x,
            gamma,
            beta,
            running_mean,
            running_var,
            d,
            momentum,
            eps,
            act,
        )?;
        saved.y = stored_as(saved.y, dtype);
        Ok(saved)
    }
    /// Eval-mode batch norm followed by `act`: `mean` and `invstd` of the result are
    /// `running_mean` and `1 / sqrt(running_var + eps)`, what the backward needs.
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_act_eval(
        &self,
        x: &Storage,
        gamma: &Storage,
        beta: &Storage,
        running_mean: &Storage,
        running_var: &Storage,
        d: ChannelDims,
        eps: f32,
        act: BatchNormAct,
    ) -> Result<BatchNormSaved> {
        let dtype = x.dtype();
        let x = widened(x);
        let parts = [&*x, gamma, beta, running_mean, running_var];
        all_on_host("batch_norm_act_eval", &parts)?;
        let mut saved = reference::batch_norm_act_eval(
            &x,
            gamma,
            beta,
            running_mean,
            running_var,
            d,
            eps,
            act,
        )?;
        saved.y = stored_as(saved.y, dtype);
        Ok(saved)
    }
    /// (dx, dgamma, dbeta) of the fused forward from its input `x` (the activation's mask comes
    /// from the pre-activation recomputed with [`super::batch_norm_affine`]).
    /// `batch_stats`: the forward normalised with the batch's own statistics (training), so dx
    /// has the terms through the mean and variance; otherwise (eval) they are constants.
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_act_backward(
        &self,
        x: &Storage,
        dy: &Storage,
        gamma: &Storage,
        beta: &Storage,
        mean: &Storage,
        invstd: &Storage,
        d: ChannelDims,
        act: BatchNormAct,
        batch_stats: bool,
    ) -> Result<(Storage, Storage, Storage)> {
        let dtype = one_dtype("batch_norm_act_backward", &[x, dy])?;
        let (x, dy) = (widened(x), widened(dy));
        let parts = [&*x, &*dy, gamma, beta, mean, invstd];
        all_on_host("batch_norm_act_backward", &parts)?;
        let (dx, dgamma, dbeta) = reference::batch_norm_act_backward(
            &x,
            &dy,
            gamma,
            beta,
            mean,
            invstd,
            d,
            act,
            batch_stats,
        )?;
        Ok((stored_as(dx, dtype), dgamma, dbeta))
    }
}
