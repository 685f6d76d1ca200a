//! The image's stored configuration (/.ferry/image.json): read by root from an untrusted
//! image and turned into the tasks' environment. It never sets a reserved variable
//! (Slurm's, the process managers', the user's identity) nor a name with '=' or NUL.
#![no_main]
use ferry_runtime::image_config::{ImageConfig, RESERVED_NAMES};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(config) = ImageConfig::parse(data, Path::new("/fuzz.sqfs")) else {
        return;
    };
    let env = config.environment(|_| None, Some("/.ferry/bin"));
    for (name, value) in &env {
        assert!(!name.is_empty() && !name.contains('=') && !name.contains('\0'), "{name:?}");
        assert!(!value.contains('\0'), "{name}={value:?}");
        assert!(!RESERVED_NAMES.contains(&name.as_str()), "{name}");
        assert!(!name.starts_with("SLURM_") && !name.starts_with("PMIX_"), "{name}");
    }
    assert_eq!(env.iter().filter(|(n, _)| n == "PATH").count(), 1);
    if let Some(dir) = config.workdir() {
        assert!(dir.is_absolute());
    }
    let _ = config.default_command();
});
