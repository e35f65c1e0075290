//! Reading a full-size Parquet shard (256 MiB, as large as one of UltraChat 200k's) to a `--limit`
//! stops at the limit: the rows after it are never decoded, so memory stays at a row group and the
//! examples kept, not the file. Alone in its test binary, so the process's peak memory is this
//! test's. Linux only (the peak is read from /proc/self/status).

use std::path::Path;
use std::sync::Arc;

use parquet::data_type::{ByteArray, ByteArrayType};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use wgspin::data::{ReadOptions, read_files};

const ROWS_PER_GROUP: usize = 512;
const GROUPS: usize = 64;
/// Bytes of each text column per row: 2 × 4 KiB × 512 × 64 = 256 MiB of text.
const TEXT: usize = 4096;

/// A Parquet file of `{prompt, response}` rows of distinct, incompressible-looking text, written a
/// row group at a time (uncompressed: the bytes on disk are the bytes a reader decodes).
fn write_shard(path: &Path) {
    let schema = parse_message_type(
        "message rows { REQUIRED BYTE_ARRAY prompt (UTF8); REQUIRED BYTE_ARRAY response (UTF8); }",
    )
    .unwrap();
    let props = WriterProperties::builder()
        .set_compression(parquet::basic::Compression::UNCOMPRESSED)
        .set_dictionary_enabled(false)
        .build();
    let file = std::fs::File::create(path).unwrap();
    let mut writer = SerializedFileWriter::new(file, Arc::new(schema), Arc::new(props)).unwrap();
    // One pool of letters; each cell is a window of it at a row-dependent offset.
    let mut rng = wgspin::rng::SplitMix64(7);
    let pool: Vec<u8> = (0..(1 << 20))
        .map(|_| b'a' + (rng.next() % 26) as u8)
        .collect();
    for g in 0..GROUPS {
        let mut group = writer.next_row_group().unwrap();
        for column in 0..2 {
            let cells: Vec<ByteArray> = (0..ROWS_PER_GROUP)
                .map(|r| {
                    let row = g * ROWS_PER_GROUP + r;
                    let at = (row * 7919 + column * 104729) % (pool.len() - TEXT);
                    let mut text = format!("row {row}: ").into_bytes();
                    text.extend_from_slice(&pool[at..at + TEXT]);
                    ByteArray::from(text)
                })
                .collect();
            let mut col = group.next_column().unwrap().unwrap();
            col.typed::<ByteArrayType>()
                .write_batch(&cells, None, None)
                .unwrap();
            col.close().unwrap();
        }
        group.close().unwrap();
    }
    writer.close().unwrap();
}

/// A `kB` line of /proc/self/status, in bytes.
fn status_bytes(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

#[test]
fn a_full_size_shard_is_read_to_its_limit_in_bounded_memory() {
    if status_bytes("VmHWM:").is_none() {
        eprintln!("skipped: no /proc/self/status peak memory on this system");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let shard = tmp.path().join("train_sft-00000-of-00001.parquet");
    write_shard(&shard);
    let size = std::fs::metadata(&shard).unwrap().len();
    assert!(size >= 256 << 20, "the shard is {size} bytes");
    // The writer's peak is a row group (a few MiB); start the count at what is resident now.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let before = status_bytes("VmRSS:").unwrap();
    let opts = ReadOptions {
        limit: Some(1000),
        ..Default::default()
    };
    let start = std::time::Instant::now();
    let ds = read_files(&[shard], opts).unwrap();
    let elapsed = start.elapsed();
    let peak = status_bytes("VmHWM:").unwrap();
    assert_eq!(ds.examples.len(), 1000);
    assert!(ds.examples[999].prompt.starts_with("row 999: "));
    let grew = peak.saturating_sub(before);
    eprintln!(
        "read 1000 of {} rows of a {} MiB shard in {elapsed:.2?}: peak memory +{} MiB",
        ROWS_PER_GROUP * GROUPS,
        size >> 20,
        grew >> 20
    );
    // 1000 rows of 8 KiB are 8 MiB; two row groups' pages another 8. Reading the file whole would
    // take at least its 256 MiB.
    assert!(
        grew < 64 << 20,
        "reading to the limit grew memory by {} MiB",
        grew >> 20
    );
}
