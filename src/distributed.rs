//! The `kiln` command under `mpirun` or `srun`: what a rank of a data-parallel job does
//! besides what one process does (its share of the cores, the bench's step split).
use kiln_train::{Config, Device, DeviceChoice};

/// Unless `--threads` or KILN_THREADS says otherwise, the CPU backend of each of the
/// ranks on this machine takes its share of the cores, not all of them.
pub(crate) fn share_cores_among_local_ranks(world: &kiln_train::World) {
    if std::env::var_os(kiln_cpu::THREADS_ENV).is_some() {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let share = (cores / world.local_size().max(1)).max(1);
    std::env::set_var(kiln_cpu::THREADS_ENV, share.to_string());
}

/// `kiln bench train` under mpirun: every rank times its data-parallel steps on the
/// device of its local rank; rank 0 prints the split (an error ends every rank).
pub(crate) fn bench_data_parallel(
    world: &kiln_train::World,
    recipe: &str,
    config: &Config,
    device: &str,
    options: kiln_bench::train::BenchOptions,
) -> Result<(), Box<dyn std::error::Error>> {
    let run = || -> Result<(), Box<dyn std::error::Error>> {
        share_cores_among_local_ranks(world);
        let choice: DeviceChoice = match device {
            "all" => DeviceChoice::Auto,
            other => other.parse()?,
        };
        let device = Device::open_for_rank(choice, Some(world.local_rank()))?;
        eprintln!("rank {} of {} (local rank {}): device {}", world.rank(), world.size(), world.local_rank(), device.description);
        let report = kiln_bench::train_dp::bench_train_data_parallel(&device, world, config, options)?;
        if world.is_leader() {
            kiln_bench::train_dp::print_data_parallel_table(recipe, &device, world, &report);
        }
        Ok(())
    };
    world.end_every_rank_on_error(run())
}
