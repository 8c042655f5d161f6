//! Data-parallel training under Open MPI's `mpirun`: N ranks x B/N samples equal one
//! process x B. Each test runs the single-process reference here, then starts this
//! same test binary under `mpirun` on its `#[ignore]`d worker (`rank_trains_its_case`),
//! which trains the case the KILN_DP_* variables describe on every rank.
//!
//! Without the `mpi` feature or without `mpirun` the tests skip with a note; under
//! KILN_REQUIRE_MPI=1 (scripts/test) they fail instead.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_core::{Backend, Graph, HostTensor};
use kiln_cpu::CpuBackend;
use kiln_data::{DataLoader, Dataset};
use kiln_nn::{init::seeded_rng, AdamW, Precision, Sequential, SGD};
use kiln_train::data_parallel::shard;
use kiln_train::{BatchSource, Checkpoint, Classification, DatasetBatches, Device, Learner, TrainingData, World, CHECKPOINT_FILE, METRICS_FILE};

const SAMPLES: usize = 96;
const BATCH: usize = 16;
const STEPS: u64 = 5;

/// `n` points of 12 features in 3 classes, from a fixed pseudo-random sequence.
fn points(n: usize) -> Dataset {
    let mut features = Vec::with_capacity(n * 12);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let v: Vec<f32> = (0..12).map(|j| ((i * 7919 + j * 104_729) % 1000) as f32 / 500.0 - 1.0).collect();
        labels.push((0..3).max_by(|&a, &b| v[a].total_cmp(&v[b])).expect("three") as u32);
        features.extend(v);
    }
    Dataset::new(features, vec![12], labels, 3).expect("dataset")
}

/// What one run trains: read from the KILN_DP_* variables by the worker.
#[derive(Clone, Debug)]
struct Case {
    optimizer: String,
    /// "cpu64" (the f64 CPU backend) or "gpu".
    backend: String,
    batch_norm: bool,
    /// Mixed precision: f16 matmuls and dynamic loss scaling.
    mixed: bool,
    accumulate: u64,
    batch: usize,
    steps: u64,
    max_steps: Option<u64>,
    resume: Option<PathBuf>,
    /// Seconds after which rank 1 kills itself (SIGKILL).
    kill_rank_1_after: Option<u64>,
    /// Seconds after which rank 1 alone asks to stop (as its Ctrl-C handler would).
    stop_rank_1_after: Option<u64>,
}

impl Case {
    fn new(optimizer: &str) -> Case {
        Case {
            optimizer: optimizer.into(),
            backend: "cpu64".into(),
            batch_norm: false,
            mixed: false,
            accumulate: 1,
            batch: BATCH,
            steps: STEPS,
            max_steps: None,
            resume: None,
            kill_rank_1_after: None,
            stop_rank_1_after: None,
        }
    }

    fn vars(&self, out: &Path) -> Vec<(String, String)> {
        let mut vars = vec![
            ("KILN_DP_OPTIMIZER".to_string(), self.optimizer.clone()),
            ("KILN_DP_BACKEND".into(), self.backend.clone()),
            ("KILN_DP_BATCH_NORM".into(), self.batch_norm.to_string()),
            ("KILN_DP_MIXED".into(), self.mixed.to_string()),
            ("KILN_DP_ACCUMULATE".into(), self.accumulate.to_string()),
            ("KILN_DP_BATCH".into(), self.batch.to_string()),
            ("KILN_DP_STEPS".into(), self.steps.to_string()),
            ("KILN_DP_OUT".into(), out.display().to_string()),
        ];
        if let Some(m) = self.max_steps {
            vars.push(("KILN_DP_MAX_STEPS".into(), m.to_string()));
        }
        if let Some(r) = &self.resume {
            vars.push(("KILN_DP_RESUME".into(), r.display().to_string()));
        }
        if let Some(k) = self.kill_rank_1_after {
            vars.push(("KILN_DP_KILL_RANK_1_AFTER".into(), k.to_string()));
        }
        if let Some(k) = self.stop_rank_1_after {
            vars.push(("KILN_DP_STOP_RANK_1_AFTER".into(), k.to_string()));
        }
        vars
    }

    fn from_env() -> Case {
        let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is set by the test that starts mpirun"));
        let opt = |name: &str| std::env::var(name).ok();
        Case {
            optimizer: var("KILN_DP_OPTIMIZER"),
            backend: var("KILN_DP_BACKEND"),
            batch_norm: var("KILN_DP_BATCH_NORM") == "true",
            mixed: var("KILN_DP_MIXED") == "true",
            accumulate: var("KILN_DP_ACCUMULATE").parse().expect("accumulate"),
            batch: var("KILN_DP_BATCH").parse().expect("batch"),
            steps: var("KILN_DP_STEPS").parse().expect("steps"),
            max_steps: opt("KILN_DP_MAX_STEPS").map(|v| v.parse().expect("max steps")),
            resume: opt("KILN_DP_RESUME").map(PathBuf::from),
            kill_rank_1_after: opt("KILN_DP_KILL_RANK_1_AFTER").map(|v| v.parse().expect("seconds")),
            stop_rank_1_after: opt("KILN_DP_STOP_RANK_1_AFTER").map(|v| v.parse().expect("seconds")),
        }
    }

    fn device(&self) -> Device {
        match self.backend.as_str() {
            "cpu64" => {
                let backend = CpuBackend::<f64>::new();
                Device { description: backend.name(), backend: Box::new(backend), is_gpu: false }
            }
            _ => Device::gpu().expect("a GPU adapter (the test checked for one)"),
        }
    }

    /// Train on `world` into `out`.
    fn train(&self, world: World, out: &Path) -> kiln_train::TrainReport {
        self.train_until(world, out, &AtomicBool::new(false))
    }

    /// [`Case::train`], stopping with a checkpoint once `stop` is set.
    fn train_until(&self, world: World, out: &Path, stop: &AtomicBool) -> kiln_train::TrainReport {
        let batch_norm = self.batch_norm;
        let model = move |g: &mut Graph| {
            let mut rng = seeded_rng(11);
            let net = Sequential::new().linear(g, 12, 16, &mut rng)?;
            let net = if batch_norm { net.batch_norm1d(g, 16)?.relu() } else { net.tanh() };
            net.linear(g, 16, 3, &mut rng)
        };
        let data = TrainingData {
            train: Box::new(DatasetBatches::new(DataLoader::new(points(SAMPLES), self.batch).expect("loader").shuffle(5))),
            validation: None,
            test: None,
        };
        let learner = Learner::new(model, Classification::new(3, [12])).steps(self.steps).accumulate(self.accumulate).progress(false).out(out).world(world);
        let learner = match self.optimizer.as_str() {
            "sgd" => learner.optimizer(SGD::new(0.1).momentum(0.9)),
            _ => learner.optimizer(AdamW::new(1e-2)),
        };
        let learner = learner.precision(if self.mixed { Precision::Mixed } else { Precision::F32 });
        let learner = match self.max_steps {
            Some(m) => learner.max_steps(m),
            None => learner,
        };
        let learner = match &self.resume {
            Some(r) => learner.resume(r),
            None => learner,
        };
        learner.fit_until(&self.device(), data, stop).expect("fit")
    }
}

/// The worker: one rank of a run that a test below started under mpirun.
#[test]
#[ignore = "a rank of the runs the data-parallel tests start under mpirun"]
fn rank_trains_its_case() {
    let case = Case::from_env();
    let world = World::from_env().expect("the MPI world");
    let out = PathBuf::from(std::env::var("KILN_DP_OUT").expect("out"));
    if let (Some(after), 1) = (case.kill_rank_1_after, world.rank()) {
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(after));
            let _ = Command::new("kill").args(["-9", &std::process::id().to_string()]).status();
        });
    }
    let stop = Arc::new(AtomicBool::new(false));
    if let (Some(after), 1) = (case.stop_rank_1_after, world.rank()) {
        let flag = stop.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(after));
            flag.store(true, Ordering::SeqCst);
        });
    }
    let report = case.train_until(world.clone(), &out, &stop);
    if case.stop_rank_1_after.is_some() {
        assert!(report.interrupted, "rank {} went on after rank 1 asked to stop", world.rank());
    }
    // Each rank's final-state checksum, for the bit-identity check.
    let sum = report.state_checksum.expect("a data-parallel run reports its state's checksum");
    std::fs::write(out.join(format!("rank{}.checksum", world.rank())), sum.to_string()).expect("write checksum");
}

/// Why these tests cannot run here, if they cannot.
fn missing_mpi() -> Option<String> {
    if !cfg!(feature = "mpi") {
        return Some("kiln-train was built without the `mpi` feature".into());
    }
    match Command::new("mpirun").arg("--version").output() {
        Ok(o) if o.status.success() => None,
        _ => Some("no mpirun on PATH (apt-get install openmpi-bin libopenmpi-dev)".into()),
    }
}

/// True when the test should run; a note (or, under KILN_REQUIRE_MPI=1, a failure) otherwise.
fn mpi_ready() -> bool {
    match missing_mpi() {
        None => true,
        Some(why) if std::env::var("KILN_REQUIRE_MPI").is_ok_and(|v| v == "1") => panic!("KILN_REQUIRE_MPI=1 but {why}"),
        Some(why) => {
            eprintln!("skipped: {why}");
            false
        }
    }
}

/// The command that starts `ranks` ranks of the worker on `case`, with extra mpirun
/// arguments before the program.
fn mpirun_command(ranks: usize, case: &Case, out: &Path, extra: &[&str]) -> Command {
    std::fs::create_dir_all(out).expect("out dir");
    let exe = std::env::current_exe().expect("this test binary");
    let mut cmd = Command::new("mpirun");
    cmd.args(["--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-np", &ranks.to_string()]);
    cmd.args(extra);
    cmd.arg(exe).args(["rank_trains_its_case", "--exact", "--ignored", "--nocapture", "--test-threads", "1"]);
    // One CPU thread per rank: the ranks share this machine's cores.
    cmd.env("KILN_THREADS", "1").envs(case.vars(out));
    cmd
}

fn mpirun(ranks: usize, case: &Case, out: &Path, extra: &[&str]) -> Output {
    mpirun_command(ranks, case, out, extra).output().expect("mpirun starts")
}

/// [`mpirun`], killed (and the test failed) if it has not ended after `limit`: a hang
/// must fail the test, not stall the suite.
fn mpirun_within(ranks: usize, case: &Case, out: &Path, limit: Duration) -> Output {
    let mut cmd = mpirun_command(ranks, case, out, &[]);
    cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("mpirun starts");
    let started = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("mpirun -np {ranks} still ran after {limit:?}: a rank hangs");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().expect("mpirun's output")
}

fn run_ok(ranks: usize, case: &Case, out: &Path, extra: &[&str]) {
    let o = mpirun(ranks, case, out, extra);
    assert!(
        o.status.success(),
        "mpirun -np {ranks} failed ({}):\n{}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let sums: Vec<String> =
        (0..ranks).map(|r| std::fs::read_to_string(out.join(format!("rank{r}.checksum"))).expect("every rank wrote its checksum")).collect();
    assert!(sums.iter().all(|s| s == &sums[0]), "the ranks' final states differ: checksums {sums:?}");
}

/// The model's tensors and optimizer moments of a run's checkpoint, by name.
fn state(dir: &Path) -> Vec<(String, HostTensor)> {
    Checkpoint::load(&dir.join(CHECKPOINT_FILE)).expect("checkpoint").tensors.into_iter().collect()
}

/// The largest difference between two runs' tensors, relative to each tensor's scale.
fn largest_gap(a: &[(String, HostTensor)], b: &[(String, HostTensor)]) -> f64 {
    assert_eq!(a.iter().map(|t| &t.0).collect::<Vec<_>>(), b.iter().map(|t| &t.0).collect::<Vec<_>>(), "the same tensors");
    let mut worst = 0.0f64;
    for ((name, x), (_, y)) in a.iter().zip(b) {
        let (x, y) = (x.to_f64_vec(), y.to_f64_vec());
        let scale = x.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
        let gap = x.iter().zip(&y).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max) / scale;
        if gap > worst {
            eprintln!("{name}: {gap:e}");
        }
        worst = worst.max(gap);
    }
    worst
}

fn single(case: &Case, out: &Path) -> Vec<(String, HostTensor)> {
    case.train(World::single(), out);
    state(out)
}

fn equal_to_one_process(optimizer: &str, ranks: usize, extra: &[&str]) {
    if !mpi_ready() {
        return;
    }
    let case = Case::new(optimizer);
    let dir = tempfile::tempdir().expect("tempdir");
    let one = single(&case, &dir.path().join("one"));
    run_ok(ranks, &case, &dir.path().join("many"), extra);
    let gap = largest_gap(&one, &state(&dir.path().join("many")));
    assert!(gap <= 1e-12, "{ranks} ranks x {} differ from one process x {BATCH} by {gap:e} after {STEPS} {optimizer} steps", BATCH / ranks);
    // The runs moved the weights: a zero update would also agree.
    let start = single(&Case { steps: 1, ..case.clone() }, &dir.path().join("first"));
    assert!(largest_gap(&one, &start) > 1e-3, "five steps moved the weights beyond the first");
}

/// The states after `case` in one process accumulating the two ranks' halves as
/// micro-batches, in one process with the whole batch, and on 2 ranks.
fn two_ranks_beside_one_process(case: &Case) -> [Vec<(String, HostTensor)>; 3] {
    let dir = tempfile::tempdir().expect("tempdir");
    let micro = single(&Case { batch: BATCH / 2, accumulate: 2, ..case.clone() }, &dir.path().join("micro"));
    let whole = single(case, &dir.path().join("whole"));
    run_ok(2, case, &dir.path().join("many"), &[]);
    [micro, whole, state(&dir.path().join("many"))]
}

#[test]
fn two_ranks_equal_one_process_with_sgd_momentum() {
    equal_to_one_process("sgd", 2, &[]);
}

#[test]
fn two_ranks_equal_one_process_with_adamw() {
    equal_to_one_process("adamw", 2, &[]);
}

/// Mixed precision: each rank's f16 matmuls see its own half-batch mean's gradients
/// (scaled by 2^16), which f16 rounds otherwise than the whole batch's (half as large:
/// equal only to f16 precision, as in PyTorch's DDP with autocast). One process
/// accumulating the same halves as micro-batches rounds them alike: equal within 1e-12,
/// with the loss-scale skip decided on the summed gradients on every rank alike.
#[test]
fn two_ranks_in_mixed_precision_equal_one_process_accumulating_their_shares() {
    if !mpi_ready() {
        return;
    }
    let [micro, whole, many] = two_ranks_beside_one_process(&Case { mixed: true, ..Case::new("adamw") });
    let gap = largest_gap(&micro, &many);
    assert!(gap <= 1e-12, "2 mixed-precision ranks differ from accumulated shares by {gap:e}");
    let f16_gap = largest_gap(&whole, &many);
    assert!(f16_gap <= 2e-3, "2 mixed-precision ranks differ from one process by {f16_gap:e}, beyond f16 rounding");
}

#[test]
fn four_oversubscribed_ranks_equal_one_process() {
    equal_to_one_process("adamw", 4, &[]);
}

#[test]
fn two_ranks_over_tcp_equal_one_process() {
    equal_to_one_process("sgd", 2, &["--mca", "btl", "tcp,self"]);
}

/// On lavapipe (or a real GPU), within the GPU tolerance of tests/cnn_step.rs.
#[test]
fn two_ranks_on_the_gpu_equal_one_process_there() {
    if !mpi_ready() {
        return;
    }
    let Some(_) = kiln_wgpu::testing::gpu_or_skip() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let case = Case { backend: "gpu".into(), ..Case::new("adamw") };
    let one = single(&case, &dir.path().join("one"));
    run_ok(2, &case, &dir.path().join("many"), &[]);
    let gap = largest_gap(&one, &state(&dir.path().join("many")));
    assert!(gap <= 1e-5, "2 GPU ranks differ from one GPU process by {gap:e} of the tensors' scale");
}

/// Batch norm normalises each rank's share with its own statistics (PyTorch's default):
/// the parameters equal one process accumulating the same shares as micro-batches.
#[test]
fn batch_norm_normalises_each_ranks_share_as_accumulated_micro_batches() {
    if !mpi_ready() {
        return;
    }
    let [micro, whole, many] = two_ranks_beside_one_process(&Case { batch_norm: true, ..Case::new("sgd") });
    let params = |s: &[(String, HostTensor)]| -> Vec<(String, HostTensor)> {
        s.iter().filter(|(n, _)| !n.contains("running_") && !n.contains("num_batches")).cloned().collect()
    };
    let gap = largest_gap(&params(&micro), &params(&many));
    assert!(gap <= 1e-12, "2 batch-norm ranks differ from accumulated shares by {gap:e}");
    // ...and not the whole batch's statistics: that comparison can fail.
    assert!(largest_gap(&params(&whole), &params(&many)) > 1e-9, "per-rank statistics must differ from whole-batch ones");
}

/// Rank 0 alone writes: one checkpoint, one metrics file; the checkpoint resumes in a
/// single process to the same weights as an uninterrupted single-process run.
#[test]
fn one_checkpoint_is_written_and_it_resumes_in_a_single_process() {
    if !mpi_ready() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let case = Case::new("adamw");
    let many = dir.path().join("many");
    run_ok(2, &Case { max_steps: Some(3), ..case.clone() }, &many, &[]);
    let mut files: Vec<String> = std::fs::read_dir(&many).expect("out").map(|e| e.expect("entry").file_name().to_string_lossy().into_owned()).collect();
    files.retain(|f| !f.ends_with(".checksum"));
    files.sort();
    assert_eq!(files, [CHECKPOINT_FILE, "curves.svg", METRICS_FILE], "rank 0's files only");
    let resumed = single(&Case { resume: Some(many.join(CHECKPOINT_FILE)), ..case.clone() }, &dir.path().join("resumed"));
    let straight = single(&case, &dir.path().join("straight"));
    let gap = largest_gap(&straight, &resumed);
    assert!(gap <= 1e-12, "a 2-rank run resumed in one process differs by {gap:e}");
}

#[test]
fn two_ranks_resume_a_single_process_checkpoint() {
    if !mpi_ready() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let case = Case::new("sgd");
    let part = dir.path().join("part");
    single(&Case { max_steps: Some(2), ..case.clone() }, &part);
    let many = dir.path().join("many");
    run_ok(2, &Case { resume: Some(part.join(CHECKPOINT_FILE)), ..case.clone() }, &many, &[]);
    let gap = largest_gap(&single(&case, &dir.path().join("straight")), &state(&many));
    assert!(gap <= 1e-12, "2 ranks resumed from a single-process checkpoint differ by {gap:e}");
}

#[test]
fn a_batch_that_does_not_divide_by_the_ranks_is_refused() {
    if !mpi_ready() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let o = mpirun(3, &Case::new("sgd"), dir.path(), &[]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "3 ranks cannot split batches of 16");
    assert!(stderr.contains("does not divide by the 3 ranks") && stderr.contains("rank "), "{stderr}");
}

/// A stop request (Ctrl-C) on one rank stops every rank after the same step, with rank
/// 0's checkpoint written: no rank leaves the others waiting in a collective.
#[test]
fn a_stop_on_one_rank_stops_every_rank_at_the_same_step() {
    if !mpi_ready() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let case = Case { steps: 1_000_000, stop_rank_1_after: Some(2), ..Case::new("sgd") };
    let o = mpirun_within(2, &case, dir.path(), Duration::from_secs(90));
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "both ranks stop cleanly:\n{text}");
    let sums: Vec<String> = (0..2).map(|r| std::fs::read_to_string(dir.path().join(format!("rank{r}.checksum"))).expect("checksum")).collect();
    assert_eq!(sums[0], sums[1], "the ranks stopped in the same state");
    let ck = Checkpoint::load(&dir.path().join(CHECKPOINT_FILE)).expect("rank 0 wrote the checkpoint");
    let step = ck.meta_u64("step", &dir.path().join(CHECKPOINT_FILE)).expect("step");
    assert!(step > 0 && step < 1_000_000, "stopped mid-run, at step {step}");
}

/// A rank killed mid-run ends the job, with an error, within 60 s: no rank waits forever.
#[test]
fn a_killed_rank_ends_the_job_within_a_minute() {
    if !mpi_ready() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let case = Case { steps: 1_000_000, kill_rank_1_after: Some(3), ..Case::new("sgd") };
    let started = Instant::now();
    let o = mpirun_within(2, &case, dir.path(), Duration::from_secs(90));
    let took = started.elapsed();
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(!o.status.success(), "the job must fail when a rank dies:\n{text}");
    assert!(took < Duration::from_secs(60), "the job took {took:?} to end after a rank died");
    assert!(text.contains("rank 1") || text.contains("signal 9") || text.contains("Killed"), "the error names the dead rank:\n{text}");
}

/// Every rank's shards of an epoch are disjoint and, joined batch by batch in rank
/// order, the single process's epoch order (its last partial batch included).
#[test]
fn the_shards_of_an_epoch_are_disjoint_and_together_the_epoch_order() {
    // Sample i's first feature is i, so a batch tells which samples it holds.
    let n = 38;
    let features: Vec<f32> = (0..n).flat_map(|i| [i as f32, 0.0]).collect();
    let data = Dataset::new(features, vec![2], vec![0; n], 2).expect("dataset");
    let samples_of = |b: &kiln_train::Batch| -> Vec<usize> { b.values[0].to_f32_vec().chunks(2).map(|r| r[0] as usize).collect() };
    for ranks in [2, 3, 4] {
        let mut source = DatasetBatches::new(DataLoader::new(data.clone(), 12).expect("loader").shuffle(9));
        source.seek(1, 0).expect("seek");
        let mut order = Vec::new();
        let mut seen = std::collections::HashSet::new();
        while let Some(batch) = source.next_batch().expect("batch") {
            let whole = samples_of(&batch);
            let joined: Vec<usize> = (0..ranks).flat_map(|r| samples_of(&shard(batch.clone(), r, ranks))).collect();
            assert_eq!(joined, whole, "{ranks} ranks' shards joined are the batch");
            for s in &joined {
                assert!(seen.insert(*s), "sample {s} is in two shards");
            }
            order.extend(whole);
        }
        assert_eq!(order.len(), n, "the epoch holds every sample once");
        assert_ne!(order, (0..n).collect::<Vec<_>>(), "the epoch is shuffled");
    }
}
