//! ferry's SPANK plugin: runs every step of a job that asked for `--container=IMAGE`
//! inside that image. Only the exported symbols live here; each is a thin call into the
//! module for its context (`client` for srun/sbatch, `step` for slurmstepd).

#![deny(unsafe_code)]

mod client;
#[allow(unsafe_code)] // Slurm's C API: every block carries a `// SAFETY:` line
mod ffi;
mod options;
mod provenance;
mod resolve;
mod step;
mod syslog;

use ffi::{hook, spank_t, Context, Spank};
use std::ffi::{c_char, c_int};

/// Slurm's loader reads these three data symbols.
#[allow(unsafe_code)] // exported for Slurm's loader, which looks it up by name
#[no_mangle]
pub static plugin_name: [u8; 6] = *b"ferry\0";
#[allow(unsafe_code)] // exported for Slurm's loader, which looks it up by name
#[no_mangle]
pub static plugin_type: [u8; 6] = *b"spank\0";
/// The Slurm version this build is for (major.minor must match the running Slurm's).
#[allow(unsafe_code)] // exported for Slurm's loader, which looks it up by name
#[no_mangle]
pub static plugin_version: u32 = parse_version(env!("FERRY_SLURM_VERSION_NUMBER"));

/// What this build is, in words: logged at each step's start (debug level) and read
/// back from the plugin file by `ferry doctor` (keep the "plugin built for Slurm " part).
const BUILT_FOR: &str = concat!(
    "ferry ",
    env!("CARGO_PKG_VERSION"),
    " plugin built for Slurm ",
    env!("FERRY_SLURM_VERSION")
);

const fn parse_version(s: &str) -> u32 {
    let b = s.as_bytes();
    let mut i = 0;
    let mut n: u32 = 0;
    while i < b.len() {
        n = n * 10 + (b[i] - b'0') as u32;
        i += 1;
    }
    n
}

#[allow(unsafe_code)] // exported for Slurm's loader, which looks it up by name
#[no_mangle]
pub extern "C" fn slurm_spank_init(sp: spank_t, argc: c_int, argv: *mut *mut c_char) -> c_int {
    hook(sp, argc, argv, |spank, args| match Spank::context() {
        Context::S_CTX_LOCAL | Context::S_CTX_ALLOCATOR => {
            options::register(spank)?;
            client::init();
            Ok(())
        }
        Context::S_CTX_REMOTE => {
            ffi::debug(BUILT_FOR);
            options::register(spank)?;
            step::init(spank, args)
        }
        _ => Ok(()), // slurmd and job scripts: nothing to do
    })
}

#[allow(unsafe_code)] // exported for Slurm's loader, which looks it up by name
#[no_mangle]
pub extern "C" fn slurm_spank_init_post_opt(
    sp: spank_t,
    argc: c_int,
    argv: *mut *mut c_char,
) -> c_int {
    hook(sp, argc, argv, |spank, args| match Spank::context() {
        Context::S_CTX_LOCAL | Context::S_CTX_ALLOCATOR => {
            client::init_post_opt(&ferry_runtime::plugin_config::Config::parse(args)?)
        }
        Context::S_CTX_REMOTE => step::prepare(spank, args),
        _ => Ok(()),
    })
}

#[allow(unsafe_code)] // exported for Slurm's loader, which looks it up by name
#[no_mangle]
pub extern "C" fn slurm_spank_task_init_privileged(
    sp: spank_t,
    argc: c_int,
    argv: *mut *mut c_char,
) -> c_int {
    hook(sp, argc, argv, |spank, _| step::task_join(spank))
}

#[allow(unsafe_code)] // exported for Slurm's loader, which looks it up by name
#[no_mangle]
pub extern "C" fn slurm_spank_task_init(sp: spank_t, argc: c_int, argv: *mut *mut c_char) -> c_int {
    hook(sp, argc, argv, |spank, _| step::task_enter(spank))
}

#[allow(unsafe_code)] // exported for Slurm's loader, which looks it up by name
#[no_mangle]
pub extern "C" fn slurm_spank_task_exit(sp: spank_t, argc: c_int, argv: *mut *mut c_char) -> c_int {
    hook(sp, argc, argv, |spank, _| {
        if Spank::context() == Context::S_CTX_REMOTE {
            step::task_ended(spank);
        }
        Ok(())
    })
}

#[allow(unsafe_code)] // exported for Slurm's loader, which looks it up by name
#[no_mangle]
pub extern "C" fn slurm_spank_exit(sp: spank_t, argc: c_int, argv: *mut *mut c_char) -> c_int {
    hook(sp, argc, argv, |_, _| {
        if Spank::context() == Context::S_CTX_REMOTE {
            step::release();
        }
        Ok(())
    })
}
