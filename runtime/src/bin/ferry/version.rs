//! `ferry version`: this build's version and the Slurm version its plugin is for (one
//! build targets one Slurm major.minor: Slurm refuses a plugin built for another).

/// The Slurm version (`MAJOR.MINOR`) the plugin of this build is for.
pub const SLURM: &str = env!("FERRY_SLURM_VERSION");

pub fn print() {
    println!("ferry {}", env!("CARGO_PKG_VERSION"));
    println!("plugin built for Slurm {SLURM}");
}
