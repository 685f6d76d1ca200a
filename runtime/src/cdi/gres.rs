//! GPUs Slurm allocated to a step, as CDI devices: the site maps a GRES name to a CDI
//! kind (`cdi_gres`: `{"gpu": "nvidia.com/gpu"}`) and the step's allocation names the
//! devices. Slurm gives a step's GPUs as indices into the node's GPUs in
//! `SLURM_STEP_GPUS` (a batch step: `SLURM_JOB_GPUS`); index N is the CDI device named
//! N, which is how `nvidia-ctk cdi generate` names them. `CUDA_VISIBLE_DEVICES` is not
//! used: under `ConstrainDevices` Slurm renumbers it from 0 per task.

use super::spec::DeviceRef;

/// The one GRES whose allocation Slurm names in the step's environment.
pub const GPU: &str = "gpu";

/// The devices of the step's allocation for the site's `mapping` (GRES name, CDI
/// kind), from the step's environment (`env` looks one up). Empty when the step has
/// none.
pub fn allocated(
    mapping: &[(String, String)],
    batch_step: bool,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Vec<DeviceRef>, String> {
    let mut refs = Vec::new();
    for (gres, kind) in mapping {
        if gres != GPU {
            continue; // the site file accepts only `gpu` (see `site`)
        }
        let list =
            env("SLURM_STEP_GPUS").or_else(|| batch_step.then(|| env("SLURM_JOB_GPUS")).flatten());
        for index in list.iter().flat_map(|l| l.split(',')).map(str::trim) {
            if index.is_empty() {
                continue;
            }
            if !index.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!(
                    "GRES {gres}: Slurm names the step's GPUs {:?}, not as indices; ask your admin (cdi_gres in the site file)",
                    list.as_deref().unwrap_or_default()
                ));
            }
            refs.push(DeviceRef {
                kind: kind.clone(),
                name: index.to_string(),
            });
        }
    }
    Ok(refs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> Vec<(String, String)> {
        vec![("gpu".into(), "nvidia.com/gpu".into())]
    }

    #[test]
    fn the_steps_gpus_by_index() {
        let env = |n: &str| match n {
            "SLURM_STEP_GPUS" => Some("1,3".to_string()),
            "SLURM_JOB_GPUS" => Some("0,1,2,3".to_string()),
            "CUDA_VISIBLE_DEVICES" => Some("0,1".to_string()),
            _ => None,
        };
        let names: Vec<String> = allocated(&map(), false, env)
            .unwrap()
            .iter()
            .map(|r| r.to_string())
            .collect();
        assert_eq!(names, ["nvidia.com/gpu=1", "nvidia.com/gpu=3"]);
    }

    #[test]
    fn the_jobs_only_for_the_batch_step_and_none_without() {
        let env = |n: &str| (n == "SLURM_JOB_GPUS").then(|| "2".to_string());
        assert_eq!(allocated(&map(), true, env).unwrap().len(), 1);
        assert!(allocated(&map(), false, env).unwrap().is_empty());
        assert!(allocated(&map(), true, |_| None).unwrap().is_empty());
        assert!(allocated(&[], true, env).unwrap().is_empty());
    }

    #[test]
    fn names_that_are_not_indices_are_refused() {
        let env = |_: &str| Some("GPU-1234".to_string());
        assert!(allocated(&map(), false, env)
            .unwrap_err()
            .contains("not as indices"));
    }
}
