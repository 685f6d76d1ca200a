//! The FFI boundary: the generated SPANK bindings and a safe handle over them. Every
//! raw call into Slurm is in this module; the rest of the plugin sees plain Rust.
#![allow(
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    dead_code,
    clippy::all
)]

mod bindings {
    include!(concat!(env!("OUT_DIR"), "/spank_bindings.rs"));
}

pub use bindings::spank_context as Context;
pub use bindings::spank_t;
use bindings::{spank_err, spank_item};
use std::ffi::{c_char, c_int, CStr, CString};

pub type OptionCallback = unsafe extern "C" fn(c_int, *const c_char, c_int) -> c_int;

/// A SPANK handle for the duration of one callback.
pub struct Spank(spank_t);

impl Spank {
    /// # Safety
    /// `sp` must be the handle Slurm passed to the running callback.
    pub unsafe fn from_raw(sp: spank_t) -> Spank {
        Spank(sp)
    }

    pub fn context() -> Context {
        // SAFETY: spank_context takes no argument and only reads Slurm's global state.
        unsafe { bindings::spank_context() }
    }

    /// Registers an option. The table entry is leaked on purpose: Slurm keeps the pointer.
    pub fn register_option(
        &self,
        name: &str,
        arginfo: &str,
        usage: &str,
        kind: ArgKind,
        val: i32,
        cb: OptionCallback,
    ) -> Result<(), String> {
        let leak = |s: &str| {
            CString::new(s)
                .expect("option strings have no NUL")
                .into_raw()
        };
        let opt = Box::leak(Box::new(bindings::spank_option {
            name: leak(name),
            arginfo: leak(arginfo),
            usage: leak(usage),
            has_arg: kind as c_int,
            val,
            cb: Some(cb),
        }));
        // SAFETY: `self.0` is the live handle; `opt` points to a 'static option struct.
        let rc = unsafe { bindings::spank_option_register(self.0, opt) };
        ok(rc).map_err(|e| format!("cannot register option --{name}: {e}"))
    }

    fn item_u32(&self, item: spank_item::Type) -> Option<u32> {
        let mut value: u32 = 0;
        // SAFETY: the items used with this helper take one `uint32_t *` (uid_t and gid_t
        // are 32-bit on Linux); `value` outlives the call.
        let rc = unsafe { bindings::spank_get_item(self.0, item, &mut value as *mut u32) };
        ok(rc).ok().map(|_| value)
    }

    pub fn uid(&self) -> Option<u32> {
        self.item_u32(spank_item::S_JOB_UID)
    }
    pub fn gid(&self) -> Option<u32> {
        self.item_u32(spank_item::S_JOB_GID)
    }
    pub fn job_id(&self) -> Option<u32> {
        self.item_u32(spank_item::S_JOB_ID)
    }
    /// The task's index on this node (task hooks only).
    pub fn local_task_id(&self) -> Option<u32> {
        let mut value: c_int = -1;
        // SAFETY: S_TASK_ID takes one `int *`; `value` outlives the call.
        let rc = unsafe {
            bindings::spank_get_item(self.0, spank_item::S_TASK_ID, &mut value as *mut c_int)
        };
        ok(rc).ok().and_then(|_| u32::try_from(value).ok())
    }

    /// How the task just ended, as wait(2) gives it (task_exit only): 0 is success.
    pub fn task_exit_status(&self) -> Option<c_int> {
        let mut value: c_int = 0;
        // SAFETY: S_TASK_EXIT_STATUS takes one `int *`; `value` outlives the call.
        let rc = unsafe {
            bindings::spank_get_item(
                self.0,
                spank_item::S_TASK_EXIT_STATUS,
                &mut value as *mut c_int,
            )
        };
        ok(rc).ok().map(|_| value)
    }

    /// How many tasks of the step run on this node.
    pub fn local_task_count(&self) -> Option<u32> {
        self.item_u32(spank_item::S_JOB_LOCAL_TASK_COUNT)
    }

    /// The node's index in the job (0 for the first node).
    pub fn node_id(&self) -> Option<u32> {
        self.item_u32(spank_item::S_JOB_NODEID)
    }

    /// The running Slurm's version string.
    pub fn slurm_version(&self) -> Option<String> {
        let mut value: *const c_char = std::ptr::null();
        // SAFETY: S_SLURM_VERSION takes one `char **`; `value` outlives the call.
        let rc =
            unsafe { bindings::spank_get_item(self.0, spank_item::S_SLURM_VERSION, &mut value) };
        if ok(rc).is_err() || value.is_null() {
            return None;
        }
        // SAFETY: Slurm returns a NUL-terminated string it owns, valid during the callback.
        Some(
            unsafe { CStr::from_ptr(value) }
                .to_string_lossy()
                .into_owned(),
        )
    }

    pub fn step_id(&self) -> Option<u32> {
        self.item_u32(spank_item::S_JOB_STEPID)
    }

    pub fn supplementary_gids(&self) -> Vec<u32> {
        let mut gids: *mut libc::gid_t = std::ptr::null_mut();
        let mut count: c_int = 0;
        // SAFETY: S_JOB_SUPPLEMENTARY_GIDS takes (gid_t **, int *); both outlive the call.
        let rc = unsafe {
            bindings::spank_get_item(
                self.0,
                spank_item::S_JOB_SUPPLEMENTARY_GIDS,
                &mut gids,
                &mut count,
            )
        };
        if ok(rc).is_err() || gids.is_null() || count <= 0 {
            return Vec::new();
        }
        // SAFETY: Slurm returns a pointer to `count` gids owned by the step, valid now.
        unsafe { std::slice::from_raw_parts(gids, count as usize) }.to_vec()
    }

    /// The first element of the step's argv (the batch script's path for a batch step).
    pub fn argv0(&self) -> Option<String> {
        let mut argc: c_int = 0;
        let mut argv: *mut *mut c_char = std::ptr::null_mut();
        // SAFETY: S_JOB_ARGV takes (int *, char ***); both outlive the call.
        let rc = unsafe {
            bindings::spank_get_item(self.0, spank_item::S_JOB_ARGV, &mut argc, &mut argv)
        };
        if ok(rc).is_err() || argc < 1 || argv.is_null() {
            return None;
        }
        // SAFETY: argv has argc valid C strings owned by the step.
        let first = unsafe { *argv };
        (!first.is_null()).then(|| {
            // SAFETY: first is non-null and, like every argv entry, a valid C string.
            unsafe { CStr::from_ptr(first) }
                .to_string_lossy()
                .into_owned()
        })
    }

    /// The job environment's value of `name` (remote context only). The buffer grows
    /// until the value fits: a long value must not read as "unset" (a 10,000-byte
    /// `--container` would otherwise run the step on the host).
    pub fn getenv(&self, name: &str) -> Option<String> {
        let name = CString::new(name).ok()?;
        // An exec'd environment string is at most 128 KiB (MAX_ARG_STRLEN).
        for size in [8 << 10, 256 << 10] {
            let mut buf = vec![0u8; size];
            // SAFETY: `buf` is writable for its length, which we pass; `name` is a C string.
            let rc = unsafe {
                bindings::spank_getenv(
                    self.0,
                    name.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len() as c_int,
                )
            };
            if rc == spank_err::ESPANK_NOSPACE {
                continue;
            }
            ok(rc).ok()?;
            let value = CStr::from_bytes_until_nul(&buf).ok()?;
            return Some(value.to_string_lossy().into_owned());
        }
        None
    }

    pub fn unsetenv(&self, name: &str) -> Result<(), String> {
        let n = cstring(name)?;
        // SAFETY: a valid C string for the call.
        ok(unsafe { bindings::spank_unsetenv(self.0, n.as_ptr()) })
            .map_err(|e| format!("unsetting {name}: {e}"))
    }

    pub fn setenv(&self, name: &str, value: &str) -> Result<(), String> {
        let (n, v) = (cstring(name)?, cstring(value)?);
        // SAFETY: both are valid C strings for the call.
        ok(unsafe { bindings::spank_setenv(self.0, n.as_ptr(), v.as_ptr(), 1) })
            .map_err(|e| format!("setting {name}: {e}"))
    }
}

fn cstring(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{s:?} contains a NUL byte"))
}

fn ok(rc: spank_err::Type) -> Result<(), String> {
    if rc == spank_err::ESPANK_SUCCESS {
        Ok(())
    } else {
        Err(format!("SPANK error {rc}"))
    }
}

/// The plugin's arguments from plugstack.conf.
///
/// # Safety
/// `argv` must hold `argc` valid C strings, as Slurm passes to every callback.
pub unsafe fn plugin_args(argc: c_int, argv: *mut *mut c_char) -> Vec<String> {
    if argv.is_null() {
        return Vec::new();
    }
    (0..argc.max(0) as usize)
        .filter_map(|i| {
            // SAFETY: i < argc, per the caller's contract.
            let p = unsafe { *argv.add(i) };
            (!p.is_null()).then(|| {
                // SAFETY: p is non-null and points to one of Slurm's argument strings.
                unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
            })
        })
        .collect()
}

/// # Safety
/// `optarg` must be null or a valid C string (Slurm's option callback argument).
pub unsafe fn optarg(optarg: *const c_char) -> Result<String, String> {
    if optarg.is_null() {
        return Ok(String::new());
    }
    // SAFETY: per the caller's contract.
    let value = unsafe { CStr::from_ptr(optarg) };
    value.to_str().map(str::to_string).map_err(|_| {
        format!(
            "option value {:?} is not valid UTF-8; ferry takes paths and names in UTF-8 only",
            value.to_string_lossy()
        )
    })
}

/// Whether an option takes a value (`struct spank_option`'s `has_arg`).
#[derive(Clone, Copy)]
pub enum ArgKind {
    None = 0,
    Required = 1,
    /// `--opt` or `--opt=VALUE`.
    Optional = 2,
}

/// Prints through Slurm's log: on the user's terminal from srun/sbatch, in the step's
/// error output from slurmstepd. The one place the plugin's `ferry: ` prefix is added.
pub fn error(message: &str) {
    let line = format!("ferry: {}", ferry_runtime::error::one_line(message));
    if let Ok(m) = CString::new(line) {
        // SAFETY: a constant "%s" format with one C string argument.
        unsafe { bindings::slurm_error(c"%s".as_ptr(), m.as_ptr()) }
    }
}

/// Into slurmd's log (info level): for the site, not the user.
pub fn info(message: &str) {
    let line = format!("ferry: {}", ferry_runtime::error::one_line(message));
    if let Ok(m) = CString::new(line) {
        // SAFETY: as in `error`.
        unsafe { bindings::slurm_info(c"%s".as_ptr(), m.as_ptr()) }
    }
}

pub fn debug(message: &str) {
    if let Ok(m) = CString::new(message) {
        // SAFETY: as in `error`.
        unsafe { bindings::slurm_debug(c"%s".as_ptr(), m.as_ptr()) }
    }
}

/// Runs one SPANK callback body: no panic crosses into Slurm, an error becomes one
/// `slurm_error` line and the return value -1.
pub fn hook(
    sp: spank_t,
    argc: c_int,
    argv: *mut *mut c_char,
    body: fn(&Spank, &[String]) -> Result<(), String>,
) -> c_int {
    // SAFETY: Slurm calls every hook with its live handle and its argc/argv.
    let (spank, args) = unsafe { (Spank::from_raw(sp), plugin_args(argc, argv)) };
    match std::panic::catch_unwind(|| body(&spank, &args)) {
        Ok(Ok(())) => 0,
        Ok(Err(message)) => {
            if !message.is_empty() {
                error(&message);
            }
            -1
        }
        Err(_) => {
            error("internal error (a bug: please report it with the job's output)");
            -1
        }
    }
}

/// Runs an option callback the same way.
pub fn option_hook(
    val: c_int,
    arg: *const c_char,
    remote: c_int,
    body: fn(i32, String, bool) -> Result<(), String>,
) -> c_int {
    // SAFETY: Slurm passes null or a valid C string as the option's argument.
    let arg = match unsafe { optarg(arg) } {
        Ok(arg) => arg,
        Err(message) => {
            error(&message);
            return -1;
        }
    };
    match std::panic::catch_unwind(|| body(val, arg, remote != 0)) {
        Ok(Ok(())) => 0,
        Ok(Err(message)) => {
            error(&message);
            -1
        }
        Err(_) => -1,
    }
}
