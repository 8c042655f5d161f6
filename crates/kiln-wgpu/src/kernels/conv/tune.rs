//! The conv family's tuning: what the autotuner (`crate::autotune`) needs to know of it.
//! Its candidates are [`super::CANDIDATES`]; a forced matmul configuration does not force
//! it (`KILN_CONV_CONFIG` does): the families' candidates differ.
use kiln_core::{ExecError, Step};

use super::{candidates, fits, heuristic, lower_with, problem, workgroup_bytes, ConvProblem, CANDIDATES};
use super::{SHADER, SPLIT_K_SHADER};
use crate::autotune::{bucket, family_version, Choice, Tunable, TuningReport, CONV_CONFIG_ENV};
use crate::kernels::matmul::MatmulConfig;
use crate::kernels::compose::{compose, Bindings};
use crate::kernels::{Caps, Launch};

/// The implicit-GEMM convolution kernels (shaders/conv.wgsl, and the split-K sum they may
/// use) as a tunable family.
pub struct ConvTuning;

impl Tunable for ConvTuning {
    type Problem = ConvProblem;
    const FAMILY: &'static str = "conv";
    const CONFIG_ENV: &'static str = CONV_CONFIG_ENV;

    fn problem(step: &Step, caps: &Caps) -> Result<ConvProblem, ExecError> {
        problem(step, caps)
    }

    fn lower_with(step: &Step, caps: &Caps, config: MatmulConfig) -> Result<Vec<Launch>, ExecError> {
        lower_with(step, caps, config)
    }

    /// The kernels' version, which of the three kernels, the storage type, and buckets of
    /// M, N, K and the slices (the cache's keys as before).
    fn class(problem: &ConvProblem) -> String {
        format!(
            "conv kernels {} | {} {} | m2^{} n2^{} k2^{} slices2^{}",
            family_version(&[&compose(SHADER, &[], &Bindings::new()), &compose(SPLIT_K_SHADER, &[], &Bindings::new())], &CANDIDATES),
            problem.kernel.name(),
            problem.storage,
            bucket(problem.m),
            bucket(problem.n),
            bucket(problem.k),
            bucket(problem.slices)
        )
    }

    fn multiply_adds(problem: &ConvProblem) -> u64 {
        problem.multiply_adds()
    }

    fn heuristic(problem: &ConvProblem, max_workgroup_bytes: u32, max_invocations: u32) -> MatmulConfig {
        heuristic(problem, max_workgroup_bytes, max_invocations)
    }

    fn candidates(max_workgroup_bytes: u32, max_invocations: u32) -> Vec<MatmulConfig> {
        candidates(max_workgroup_bytes, max_invocations)
    }

    fn workgroup_bytes(config: MatmulConfig) -> u32 {
        workgroup_bytes(config)
    }

    fn fits(config: MatmulConfig, max_workgroup_bytes: u32, max_invocations: u32) -> bool {
        fits(config, max_workgroup_bytes, max_invocations)
    }

    fn choices(report: &mut TuningReport) -> &mut Vec<Choice<ConvProblem>> {
        &mut report.conv_choices
    }
}
