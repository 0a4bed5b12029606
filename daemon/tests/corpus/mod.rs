//! What the corpus replay tests share: running the seeds, (re)writing them into the corpus
//! directory on request, and replaying every committed corpus file.

use std::fs;
use std::path::{Path, PathBuf};

/// The committed corpus of fuzz target `target`.
pub fn dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

/// Runs `fuzz` on every seed; with `OFFICESYNC_WRITE_SEEDS=1` also (re)writes them into
/// `dir` as `seed-NN`.
pub fn run_seeds(dir: &Path, seeds: &[Vec<u8>], fuzz: impl Fn(&[u8])) {
    for seed in seeds {
        fuzz(seed);
    }
    if std::env::var_os("OFFICESYNC_WRITE_SEEDS").is_some() {
        fs::create_dir_all(dir).expect("corpus dir");
        for (i, seed) in seeds.iter().enumerate() {
            fs::write(dir.join(format!("seed-{i:02}")), seed).expect("write seed");
        }
    }
}

/// Replays every file of `dir` (at least `min` of them) through `fuzz`, naming the file that
/// panics.
pub fn replay(dir: &Path, min: usize, fuzz: impl Fn(&[u8]) + std::panic::RefUnwindSafe) {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .expect("the corpus directory")
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(files.len() >= min, "only {} corpus files", files.len());
    for path in files {
        let bytes = fs::read(&path).expect("corpus file");
        let outcome = std::panic::catch_unwind(|| fuzz(&bytes));
        assert!(
            outcome.is_ok(),
            "the fuzz target fails on {}",
            path.display()
        );
    }
}
