//! The IDX reader (MNIST's format) on arbitrary file contents, raw or gzip-compressed:
//! `read_idx_u8` is `gunzip_if_gzip` then `parse_idx_u8`, and so is this target.
#![no_main]

use kiln_data::{gunzip_if_gzip, parse_idx_u8};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|file: &[u8]| {
    let bytes = match gunzip_if_gzip(file.to_vec()) {
        Ok(bytes) => bytes,
        Err(message) => return assert!(!message.is_empty(), "a gzip error without a message"),
    };
    // The ranks the MNIST readers ask for (labels, images), and the rank the file's own
    // magic number claims, so that the header and payload checks are reached too.
    let claimed_rank = bytes.get(3).map_or(0, |&rank| usize::from(rank));
    for rank in [1, 3, claimed_rank] {
        match parse_idx_u8(bytes.clone(), rank) {
            Ok(idx) => {
                assert_eq!(idx.dims.len(), rank);
                assert_eq!(idx.dims.iter().product::<usize>(), idx.data.len(), "dims {:?}", idx.dims);
            }
            Err(message) => assert!(!message.is_empty(), "an IDX error without a message"),
        }
    }
});
