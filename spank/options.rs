//! The plugin's own options. `--container` itself is Slurm's (registering it would be
//! refused), so ours are `--container-mounts`, `--container-workdir` and
//! `--container-provenance`. sbatch puts
//! them in the job's environment and every srun of the job picks them up; an explicit
//! srun option overrides. Callbacks may run twice with the same value: they only store.

use crate::ffi::{self, Spank};
use std::ffi::{c_char, c_int};
use std::sync::Mutex;

const MOUNTS: i32 = 1;
const WORKDIR: i32 = 2;
const PROVENANCE: i32 = 3;

static VALUES: Mutex<[Option<String>; 3]> = Mutex::new([None, None, None]);

pub fn register(spank: &Spank) -> Result<(), String> {
    spank.register_option(
        "container-mounts",
        "SRC[:DST[:ro]],...",
        "[ferry] bind host folders or files into the --container image",
        MOUNTS,
        on_option,
    )?;
    spank.register_option(
        "container-workdir",
        "DIR",
        "[ferry] folder inside the --container image to start in",
        WORKDIR,
        on_option,
    )?;
    spank.register_option(
        "container-provenance",
        "FILE",
        "[ferry] append each step's provenance record (JSON, one line) to FILE",
        PROVENANCE,
        on_option,
    )
}

extern "C" fn on_option(val: c_int, optarg: *const c_char, remote: c_int) -> c_int {
    ffi::option_hook(val, optarg, remote, store)
}

fn store(val: i32, arg: String, _remote: bool) -> Result<(), String> {
    let slot = match val {
        MOUNTS => 0,
        WORKDIR => 1,
        PROVENANCE => 2,
        _ => return Err(format!("unknown option value {val}")),
    };
    VALUES.lock().map_err(|_| "option state poisoned")?[slot] = Some(arg);
    Ok(())
}

fn get(slot: usize) -> Option<String> {
    VALUES.lock().ok()?[slot].clone().filter(|v| !v.is_empty())
}

pub fn mounts() -> Option<String> {
    get(0)
}

pub fn workdir() -> Option<String> {
    get(1)
}

pub fn provenance() -> Option<String> {
    get(2)
}
