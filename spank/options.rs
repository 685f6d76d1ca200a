//! The plugin's own options. `--container` itself is Slurm's (registering it would be
//! refused), so ours are named `--container-*`. sbatch puts them in the job's
//! environment and every srun of the job picks them up; an explicit srun option
//! overrides. Callbacks may run twice with the same value: they only store.

use crate::ffi::{self, ArgKind, Spank};
use std::ffi::{c_char, c_int};
use std::sync::Mutex;

/// Each option's slot in `VALUES` and its `val` for Slurm.
#[derive(Clone, Copy)]
enum Slot {
    Mounts,
    Workdir,
    Provenance,
    /// `--container-writable[=SIZE]` ("" without a size) or `--container-readonly`
    /// (`READONLY`): one slot, so the last given wins.
    Writable,
    Name,
    Save,
    Env,
    NoMountHome,
    Devices,
}

const SLOTS: [Slot; 9] = [
    Slot::Mounts,
    Slot::Workdir,
    Slot::Provenance,
    Slot::Writable,
    Slot::Name,
    Slot::Save,
    Slot::Env,
    Slot::NoMountHome,
    Slot::Devices,
];

/// What the writable slot holds after `--container-readonly`.
const READONLY: &str = "readonly";
const READONLY_VAL: i32 = 100;

static VALUES: Mutex<[Option<String>; SLOTS.len()]> = Mutex::new([const { None }; SLOTS.len()]);

pub fn register(spank: &Spank) -> Result<(), String> {
    let options: [(&str, &str, &str, ArgKind, i32); 10] = [
        (
            "container-mounts",
            "SRC[:DST[:ro]],...",
            "[ferry] bind host folders or files into the --container image",
            ArgKind::Required,
            Slot::Mounts as i32,
        ),
        (
            "container-workdir",
            "DIR",
            "[ferry] folder inside the --container image to start in",
            ArgKind::Required,
            Slot::Workdir as i32,
        ),
        (
            "container-provenance",
            "FILE",
            "[ferry] append each step's provenance record (JSON, one line) to FILE",
            ArgKind::Required,
            Slot::Provenance as i32,
        ),
        (
            "container-writable",
            "SIZE",
            "[ferry] make the container's root writable (in memory, gone when it ends; SIZE up to the site's maximum)",
            ArgKind::Optional,
            Slot::Writable as i32,
        ),
        (
            "container-readonly",
            "",
            "[ferry] keep the container's root read-only (the default)",
            ArgKind::None,
            READONLY_VAL,
        ),
        (
            "container-name",
            "NAME",
            "[ferry] steps of the job that give the same NAME share one container per node",
            ArgKind::Required,
            Slot::Name as i32,
        ),
        (
            "container-save",
            "FILE",
            "[ferry] when the step succeeds, save its writable container as a SquashFS image FILE",
            ArgKind::Required,
            Slot::Save as i32,
        ),
        (
            "container-env",
            "NAME[,NAME...]",
            "[ferry] for these variables the job's value wins over the image's (PATH too)",
            ArgKind::Required,
            Slot::Env as i32,
        ),
        (
            "no-container-mount-home",
            "",
            "[ferry] do not bind your home folder into the container",
            ArgKind::None,
            Slot::NoMountHome as i32,
        ),
        (
            "container-devices",
            "VENDOR/CLASS=NAME,...",
            "[ferry] apply these CDI devices (such as nvidia.com/gpu=0) from the node's CDI specs",
            ArgKind::Required,
            Slot::Devices as i32,
        ),
    ];
    for (name, arginfo, usage, kind, val) in options {
        spank.register_option(name, arginfo, usage, kind, val, on_option)?;
    }
    Ok(())
}

extern "C" fn on_option(val: c_int, optarg: *const c_char, remote: c_int) -> c_int {
    ffi::option_hook(val, optarg, remote, store)
}

fn store(val: i32, arg: String, _remote: bool) -> Result<(), String> {
    // sbatch passes an option given without its value on to the job's steps as the
    // text "(null)" (measured, Slurm 22.05): that is no value.
    let arg = if arg == "(null)" { String::new() } else { arg };
    let (slot, value) = match val {
        READONLY_VAL => (Slot::Writable, READONLY.to_string()),
        _ => match SLOTS.iter().find(|s| **s as i32 == val) {
            Some(slot) => (*slot, arg),
            None => return Err(format!("unknown option value {val}")),
        },
    };
    VALUES.lock().map_err(|_| "option state poisoned")?[slot as usize] = Some(value);
    Ok(())
}

/// What was given for `slot`, "" for a flag or an option given without its value.
fn given(slot: Slot) -> Option<String> {
    VALUES.lock().ok()?[slot as usize].clone()
}

fn get(slot: Slot) -> Option<String> {
    given(slot).filter(|v| !v.is_empty())
}

pub fn mounts() -> Option<String> {
    get(Slot::Mounts)
}

pub fn workdir() -> Option<String> {
    get(Slot::Workdir)
}

pub fn provenance() -> Option<String> {
    get(Slot::Provenance)
}

/// `--container-writable[=SIZE]`: Some(None) without a size, Some(Some(SIZE)) with one;
/// None when read-only (the default, or `--container-readonly` given last).
pub fn writable() -> Option<Option<String>> {
    match given(Slot::Writable)? {
        v if v == READONLY => None,
        v if v.is_empty() => Some(None),
        v => Some(Some(v)),
    }
}

pub fn name() -> Option<String> {
    get(Slot::Name)
}

pub fn save() -> Option<String> {
    get(Slot::Save)
}

/// `--container-env`: the names whose job value wins over the image's.
pub fn env_names() -> Vec<String> {
    get(Slot::Env)
        .map(|list| {
            list.split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// `--container-devices`: the CDI devices, as given (a comma-separated list).
pub fn devices() -> Option<String> {
    get(Slot::Devices)
}

pub fn no_mount_home() -> bool {
    given(Slot::NoMountHome).is_some()
}
