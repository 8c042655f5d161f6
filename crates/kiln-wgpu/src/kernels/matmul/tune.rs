//! The matmul family's tuning: what the autotuner (`crate::autotune`) needs to know of it.
//! The cooperative-matrix kernel has one configuration and is not tuned.
use kiln_core::{ExecError, Step};

use super::{candidates, heuristic, lower_with, problem, MatmulConfig, MatmulProblem, CANDIDATES, SHADER};
use crate::autotune::{bucket, family_version, Choice, Tunable, TuningReport, MATMUL_CONFIG_ENV};
use crate::kernels::compose::{compose, Bindings};
use crate::kernels::{Caps, Launch};

/// The register-tiled matmul kernels (shaders/matmul.wgsl) as a tunable family.
pub struct MatmulTuning;

impl Tunable for MatmulTuning {
    type Problem = MatmulProblem;
    const FAMILY: &'static str = "matmul";
    const CONFIG_ENV: &'static str = MATMUL_CONFIG_ENV;

    fn problem(step: &Step, caps: &Caps) -> Result<MatmulProblem, ExecError> {
        problem(step, caps)
    }

    fn lower_with(step: &Step, caps: &Caps, config: MatmulConfig) -> Result<Vec<Launch>, ExecError> {
        lower_with(step, caps, config)
    }

    /// The kernels' version, the storage type, the transposes, which operands are read by
    /// vec4, and buckets of M, N, K and the batch count (the cache's keys as before).
    fn class(problem: &MatmulProblem) -> String {
        let t = |b: bool| if b { "t" } else { "n" };
        let v = |b: bool| if b { "4" } else { "1" };
        format!(
            "kernels {} | {} {}{} vec{}{}{} | m2^{} n2^{} k2^{} batch2^{}",
            family_version(&[&compose(SHADER, &[], &Bindings::new())], &CANDIDATES),
            problem.storage,
            t(problem.trans_a),
            t(problem.trans_b),
            v(problem.vec4[0]),
            v(problem.vec4[1]),
            v(problem.vec4[2]),
            bucket(problem.m),
            bucket(problem.n),
            bucket(problem.k),
            bucket(problem.batch)
        )
    }

    fn multiply_adds(problem: &MatmulProblem) -> u64 {
        problem.multiply_adds()
    }

    fn heuristic(problem: &MatmulProblem, max_workgroup_bytes: u32, max_invocations: u32) -> MatmulConfig {
        heuristic(problem, max_workgroup_bytes, max_invocations)
    }

    fn candidates(max_workgroup_bytes: u32, max_invocations: u32) -> Vec<MatmulConfig> {
        candidates(max_workgroup_bytes, max_invocations)
    }

    fn workgroup_bytes(config: MatmulConfig) -> u32 {
        config.workgroup_bytes()
    }

    fn choices(report: &mut TuningReport) -> &mut Vec<Choice<MatmulProblem>> {
        &mut report.choices
    }
}

/// The launches of a matmul step on `target`. Mixed-precision products go to tensor cores
/// where the adapter has them (that kernel has one configuration: nothing to tune);
/// otherwise the tuner picks the configuration.
pub(crate) fn lower_tuned(step: &Step, target: &dyn crate::kernels::Target) -> Result<Vec<Launch>, ExecError> {
    let caps = target.caps();
    if super::coop_supported(target.adapter(), caps.shader_f16) && super::coop_applies(step, caps) {
        return super::lower_coop(step, caps);
    }
    crate::autotune::lower_tuned::<MatmulTuning>(step, target)
}
