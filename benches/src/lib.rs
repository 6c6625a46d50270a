//! Keel's benchmarks: criterion micro-benchmarks live in `benches/`, load tools in `src/bin/`.
#![forbid(unsafe_code)]

pub mod canned;
pub mod load;
