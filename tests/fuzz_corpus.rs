//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/*`: seeds from `fuzz/seeds.py` plus
//! the inputs `cargo fuzz` kept) through the same `wgspin::fuzzing` functions the fuzz targets
//! run, so every input fuzzing ever found interesting stays free of panics in the normal test
//! suite. The seeds are valid files and must also be accepted, which checks that the targets reach
//! past the first parse.

use std::path::PathBuf;

#[test]
fn fuzz_corpus_replays_without_panics_and_the_seeds_are_accepted() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join("corpus");
    for (target, run) in wgspin::fuzzing::TARGETS {
        let dir = root.join(target);
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        let mut seeds = 0;
        for path in &entries {
            let bytes = std::fs::read(path).unwrap();
            let accepted = run(&bytes);
            let name = path.file_name().unwrap().to_string_lossy();
            if name.starts_with("seed-") {
                assert!(accepted, "{}: a valid seed was refused", path.display());
                seeds += 1;
            }
        }
        assert!(
            seeds >= 2,
            "{target}: only {seeds} seeds in {}",
            dir.display()
        );
        println!(
            "{target}: {} inputs replayed ({seeds} seeds)",
            entries.len()
        );
    }
}
