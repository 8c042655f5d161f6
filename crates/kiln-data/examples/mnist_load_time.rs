//! Prints how long loading MNIST takes, phase by phase.
//! `cargo run --release -p kiln-data --example mnist_load_time [DATA_DIR]`

use std::path::PathBuf;
use std::time::Instant;

use kiln_data::{read_idx_images, read_maybe_gzip, Mnist, MnistSplit};

fn main() -> Result<(), kiln_data::DataError> {
    let data_dir = std::env::args_os().nth(1).map(PathBuf::from);
    let mnist = Mnist::locate(data_dir.as_deref())?;
    let images_file = mnist.dir().join("train-images-idx3-ubyte.gz");
    println!("MNIST in {}", mnist.dir().display());
    for run in 1..=3 {
        let start = Instant::now();
        let raw = read_maybe_gzip(&images_file)?;
        let gunzip = start.elapsed();

        let start = Instant::now();
        let images = read_idx_images(&images_file)?;
        let idx = start.elapsed();

        let start = Instant::now();
        let train = mnist.load(MnistSplit::Train)?;
        let full = start.elapsed();
        assert_eq!((raw.len(), images.count), (47_040_016, train.len()));
        println!("run {run}: gunzip {gunzip:.0?}, IDX images {idx:.0?}, full training set as f32 {full:.0?}");
    }
    Ok(())
}
