//! What build.rs embedded: each kernel module's source, PTX and cubins, and the nvrtc that
//! compiled them. Its own module because both the library finder (`libs`: is nvrtc needed at
//! run time, where is the build's nvrtc) and the module loader (`loader`) read it.

/// One kernel file as embedded by build.rs.
#[derive(Debug)]
pub struct KernelModule {
    /// File stem of `kernels/<name>.cu`.
    pub name: &'static str,
    /// Source with our local headers (`common.cuh`) inlined, so it compiles on its own.
    pub source: &'static str,
    /// PTX for `compute_{PTX_ARCH}`; `None` when no nvrtc was found at build time.
    pub ptx: Option<&'static str>,
    /// `(sm, cubin)`, e.g. `(86, ..)` for sm_86.
    pub cubins: &'static [(u32, &'static [u8])],
}

// KERNEL_MODULES, BUILD_NVRTC_VERSION, PTX_ARCH.
include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// The embedded module called `name`.
pub fn find(name: &str) -> Option<&'static KernelModule> {
    KERNEL_MODULES.iter().find(|m| m.name == name)
}
