//! Flags and value parsers shared by several commands (`cli`, `data`, `tools`).
//! A leaf module: the commands share these without importing each other.

use crate::backend::{select, ConvImpl, Device};
use anyhow::Result;
use clap::Args;

/// A whole-number flag (`--batch-size`, `--epochs`, `--seed`, …) as clap parses it. Negative
/// numbers reach this parser (every command allows them syntactically), so `--batch-size -1`
/// is refused with the flag's own name instead of clap's "unexpected argument '-1'".
pub fn parse_whole<T: std::str::FromStr>(s: &str) -> std::result::Result<T, String> {
    let t = s.trim();
    if t.starts_with('-') {
        return Err(format!(
            "{t} is negative: expected a whole number, 0 or more"
        ));
    }
    t.parse()
        .map_err(|_| format!("{t:?} is not a whole number (or is too large)"))
}

/// `--device` and `--conv-impl`, shared by every command that computes.
#[derive(Args, Debug, Clone)]
pub struct DeviceArgs {
    /// Compute device: auto (CUDA when it works, else the CPU), cpu, cuda or cuda:N; `train`
    /// also takes several GPUs, cuda:0,1 or cuda:all (data-parallel).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Convolution implementation on CUDA: cudnn, or own (im2col kernels + cuBLAS)
    /// [default: cudnn, or ARTGAN_CONV_IMPL].
    #[arg(long, value_enum)]
    pub conv_impl: Option<ConvImplArg>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ConvImplArg {
    Cudnn,
    Own,
}

impl DeviceArgs {
    /// Resolves `--device` (printing why when auto picks the CPU).
    pub fn resolve(&self) -> Result<Device> {
        select::resolve(select::parse_device(&self.device)?)
    }

    /// `train`'s `--device`, which may list several GPUs (see [`select::resolve_list`]).
    pub fn resolve_list(&self) -> Result<Vec<Device>> {
        select::resolve_list(&self.device)
    }

    /// `--conv-impl`, else [`conv_impl_from_env`]: resolved once, then carried by the
    /// command's [`crate::amp::Numerics`].
    pub fn conv_impl(&self) -> ConvImpl {
        match self.conv_impl {
            Some(ConvImplArg::Cudnn) => ConvImpl::Cudnn,
            Some(ConvImplArg::Own) => ConvImpl::Own,
            None => conv_impl_from_env(),
        }
    }
}

/// `ARTGAN_CONV_IMPL=cudnn|own`, else cuDNN (an unknown value is warned about).
pub fn conv_impl_from_env() -> ConvImpl {
    match std::env::var("ARTGAN_CONV_IMPL") {
        Ok(v) => v.parse().unwrap_or_else(|e| {
            eprintln!("warning: ARTGAN_CONV_IMPL: {e}; using cudnn");
            ConvImpl::Cudnn
        }),
        Err(_) => ConvImpl::Cudnn,
    }
}
