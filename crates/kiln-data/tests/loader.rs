//! Shuffling, splitting, batching and prefetching on a synthetic dataset whose
//! sample `i` holds the values `[i, i]` and the label `i % 10`, so every batch
//! shows which samples it carries.

use std::collections::HashSet;

use kiln_data::{split_indices, Batch, DataLoader, Dataset};

fn numbered(len: usize) -> Dataset {
    let images = (0..len).flat_map(|i| [i as f32, i as f32]).collect();
    let labels = (0..len as u32).map(|i| i % 10).collect();
    Dataset::new(images, vec![2], labels, 10).unwrap()
}

/// The sample indices a batch carries, read back from its values.
fn indices(batch: &Batch) -> Vec<usize> {
    batch.images.to_f32_vec().chunks(2).map(|pair| pair[0] as usize).collect()
}

fn epoch_indices(loader: &DataLoader, epoch: u64) -> Vec<usize> {
    loader.epoch(epoch).flat_map(|b| indices(&b)).collect()
}

#[test]
fn shuffles_are_reproducible_per_seed_and_epoch() {
    let loader = DataLoader::new(numbered(1000), 64).unwrap().shuffle(7);
    let epoch0 = epoch_indices(&loader, 0);
    assert_eq!(epoch0, epoch_indices(&loader, 0), "same seed and epoch, same order");
    assert_eq!(epoch0, epoch_indices(&DataLoader::new(numbered(1000), 64).unwrap().shuffle(7), 0));

    let epoch1 = epoch_indices(&loader, 1);
    assert_ne!(epoch0, epoch1, "epochs differ");
    let other_seed = epoch_indices(&DataLoader::new(numbered(1000), 64).unwrap().shuffle(8), 0);
    assert_ne!(epoch0, other_seed, "seeds differ");

    // Every epoch is a permutation, and actually shuffled.
    for order in [&epoch0, &epoch1, &other_seed] {
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
        assert_ne!(*order, sorted);
    }
    // Epoch order does not depend on which epochs ran before.
    let fresh = DataLoader::new(numbered(1000), 64).unwrap().shuffle(7);
    assert_eq!(epoch_indices(&fresh, 1), epoch1);
}

#[test]
fn without_shuffle_samples_come_in_stored_order() {
    let loader = DataLoader::new(numbered(10), 4).unwrap();
    assert_eq!(epoch_indices(&loader, 3), (0..10).collect::<Vec<_>>());
}

#[test]
fn last_partial_batch_is_kept_or_dropped() {
    let dataset = numbered(103);
    let keep = DataLoader::new(dataset.clone(), 25).unwrap().shuffle(1);
    assert_eq!(keep.num_batches(), 5);
    let batches: Vec<Batch> = keep.epoch(0).collect();
    assert_eq!(batches.len(), 5);
    for batch in &batches[..4] {
        assert_eq!(batch.len, 25);
        assert_eq!(batch.images.shape.dims(), &[25, 2]);
        assert_eq!(batch.labels.shape.dims(), &[25]);
    }
    let last = &batches[4];
    assert_eq!((last.len, last.images.shape.dims(), last.labels.shape.dims()), (3, &[3, 2][..], &[3][..]));
    // Labels travel with their images.
    for batch in &batches {
        let expected: Vec<u32> = indices(batch).iter().map(|&i| (i % 10) as u32).collect();
        assert_eq!(batch.labels.to_u32_vec(), expected);
    }

    let drop = DataLoader::new(dataset, 25).unwrap().shuffle(1).drop_last(true);
    assert_eq!(drop.num_batches(), 4);
    let epoch = drop.epoch(0);
    assert_eq!(epoch.len(), 4);
    let dropped: Vec<Batch> = epoch.collect();
    assert_eq!(dropped.len(), 4);
    assert!(dropped.iter().all(|b| b.len == 25 && b.images.shape.dims() == [25, 2]));
    // Dropping the tail does not change the order of what is kept.
    assert_eq!(dropped, batches[..4]);
}

#[test]
fn an_exact_multiple_has_no_partial_batch() {
    for drop_last in [false, true] {
        let loader = DataLoader::new(numbered(100), 25).unwrap().drop_last(drop_last);
        assert_eq!(loader.epoch(0).map(|b| b.len).collect::<Vec<_>>(), vec![25; 4]);
    }
    let tiny = DataLoader::new(numbered(3), 25).unwrap().drop_last(true);
    assert_eq!(tiny.epoch(0).count(), 0);
    assert!(DataLoader::new(numbered(3), 0).is_err());
}

#[test]
fn prefetched_batches_equal_the_synchronous_ones() {
    let dataset = numbered(1001);
    for drop_last in [false, true] {
        let sync = DataLoader::new(dataset.clone(), 32).unwrap().shuffle(3).drop_last(drop_last).prefetch(0);
        let ahead = DataLoader::new(dataset.clone(), 32).unwrap().shuffle(3).drop_last(drop_last).prefetch(3);
        for epoch in 0..3 {
            let expected: Vec<Batch> = sync.epoch(epoch).collect();
            let got: Vec<Batch> = ahead.epoch(epoch).collect();
            assert_eq!(got.len(), sync.num_batches());
            assert_eq!(got, expected, "epoch {epoch}, drop_last {drop_last}");
        }
    }
}

#[test]
fn abandoning_a_prefetched_epoch_stops_its_thread() {
    let loader = DataLoader::new(numbered(10_000), 10).unwrap().prefetch(2);
    for epoch in 0..20 {
        let mut batches = loader.epoch(epoch);
        assert_eq!(indices(&batches.next().unwrap()), (0..10).collect::<Vec<_>>());
        // Dropped here with ~1000 batches left: must not hang or leak a blocked thread.
    }
}

#[test]
fn split_sizes_disjointness_and_reproducibility() {
    let dataset = numbered(1000);
    let (train, validation) = dataset.split(100, 11).unwrap();
    assert_eq!((train.len(), validation.len()), (900, 100));

    let sample_ids = |d: &Dataset| -> Vec<usize> { d.images().chunks(2).map(|p| p[0] as usize).collect() };
    let train_ids: HashSet<usize> = sample_ids(&train).into_iter().collect();
    let validation_ids: HashSet<usize> = sample_ids(&validation).into_iter().collect();
    assert_eq!(train_ids.len(), 900);
    assert_eq!(validation_ids.len(), 100);
    assert!(train_ids.is_disjoint(&validation_ids));
    assert_eq!(train_ids.union(&validation_ids).count(), 1000);
    // Not simply the tail: the split is random.
    assert_ne!(sample_ids(&validation), (900..1000).collect::<Vec<_>>());

    assert_eq!(dataset.split(100, 11).unwrap(), (train.clone(), validation.clone()));
    assert_ne!(dataset.split(100, 12).unwrap().1, validation);
    assert_eq!(split_indices(1000, 100, 11).unwrap().1, sample_ids(&validation));
    assert!(dataset.split(1001, 11).is_err());
}

#[test]
fn mnist_sized_split_is_55000_and_5000() {
    let (train, validation) = split_indices(60_000, 5_000, 0).unwrap();
    assert_eq!((train.len(), validation.len()), (55_000, 5_000));
    let mut all: Vec<usize> = train.into_iter().chain(validation).collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 60_000);
}

#[test]
fn subset_takes_the_first_samples() {
    let small = numbered(50).subset(20).unwrap();
    assert_eq!(small.len(), 20);
    let batches: Vec<Batch> = DataLoader::new(small, 8).unwrap().epoch(0).collect();
    assert_eq!(batches.iter().map(|b| b.len).collect::<Vec<_>>(), vec![8, 8, 4]);
    assert_eq!(indices(&batches[2]), vec![16, 17, 18, 19]);
}
