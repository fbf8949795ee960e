//! The kernel modules the backend needs and the functions it takes from each.

use super::err::drv;
use anyhow::{Context, Result};
use cudarc::driver::{CudaContext, CudaFunction};
use std::collections::HashMap;
use std::sync::Arc;

/// (module = `kernels/<name>.cu`, its functions).
pub const MODULES: &[(&str, &[&str])] = &[
    (
        "elementwise",
        &[
            "fill_f32",
            "add_f32",
            "add_assign_f32",
            "mul_f32",
            "scale_f32",
            "reciprocal_f32",
            "scale_by_scalar_f32",
            "act_forward_f32",
            "act_backward_f32",
        ],
    ),
    (
        "reduce",
        &[
            "sum_rows_f32",
            "broadcast_rows_f32",
            "add_channel_bias_f32",
            "channel_sum_f32",
            "dot_partials_f32",
            "sum_partials_f32",
        ],
    ),
    (
        "batchnorm",
        &[
            "bn_stats_f32",
            "bn_apply_f32",
            "bn_eval_f32",
            "bn_invstd_f32",
            "bn_backward_reduce_f32",
            "bn_backward_dx_f32",
        ],
    ),
    (
        "random",
        &[
            "dropout_mask_f32",
            "gaussian_noise_f32",
            "dropout_mask_by_f32",
            "gaussian_noise_by_f32",
        ],
    ),
    (
        "spectral_norm",
        &[
            "sn_wt_u_f32",
            "sn_w_v_f32",
            "sn_normalize_f32",
            "sn_sigma_f32",
            "sn_backward_f32",
        ],
    ),
    ("loss", &["bce_logits_f32", "hinge_logits_f32"]),
    (
        "adam",
        &[
            "adam_multi_f32",
            "amp_find_inf_multi",
            "adam_multi_scaled_f32",
            "amp_update_scale",
        ],
    ),
    (
        "conv",
        &[
            "im2col_f32",
            "col2im_f32",
            "gather_dy_f32",
            "f32_to_f16",
            "f16_to_f32",
        ],
    ),
    ("augment", &["assemble_batch_u8"]),
    (
        "conditional",
        &[
            "embedding_f32",
            "embedding_backward_f32",
            "channel_affine_f32",
            "channel_affine_dx_f32",
            "channel_affine_reduce_f32",
            "row_dot_f32",
            "row_dot_backward_f32",
            "diffaug_color_f32",
            "diffaug_translate_f32",
            "diffaug_cutout_f32",
        ],
    ),
];

/// Loads every module (embedded image from build.rs, or compiled at run time by the loader)
/// and returns the functions by name.
pub fn load_all(ctx: &Arc<CudaContext>) -> Result<HashMap<&'static str, CudaFunction>> {
    let mut funcs = HashMap::new();
    for (module, names) in MODULES {
        let m = super::loader::load_module(ctx, module)
            .with_context(|| format!("loading kernel module {module}"))?;
        for name in *names {
            let f = m
                .load_function(name)
                .map_err(|e| drv(e, &format!("kernel {name} in module {module}")))?;
            funcs.insert(*name, f);
        }
    }
    Ok(funcs)
}
