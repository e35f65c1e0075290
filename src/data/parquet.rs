//! Parquet rows (as Hugging Face stores datasets) converted to JSON values, so the shape parser for
//! JSON lines serves Parquet too. Uses the parquet crate's row API: it assembles nested columns
//! (a `messages` list of `{role, content}` structs) into nested fields, which map one to one onto
//! JSON arrays and objects.

use std::io::Read;
use std::ops::ControlFlow;
use std::path::Path;

use ::parquet::basic::Type as PhysicalType;
use ::parquet::column::page::Page;
use ::parquet::file::reader::{ChunkReader, FileReader, RowGroupReader};
use ::parquet::file::serialized_reader::SerializedFileReader;
use ::parquet::record::{Field, Row};
use serde_json::{Map, Number, Value};

use crate::error::{Error, Result};

/// Parquet files begin (and end) with these four bytes.
pub(super) const MAGIC: &[u8; 4] = b"PAR1";

/// Whether the file is Parquet, judged by its magic bytes rather than its name.
pub(super) fn is_parquet(path: &Path) -> Result<bool> {
    let mut head = [0u8; 4];
    let mut file = super::open(path)?;
    let mut n = 0;
    // `read` may return fewer bytes than asked even before the end; a shorter file is not Parquet.
    while n < head.len() {
        match file.read(&mut head[n..]) {
            Ok(0) => return Ok(false),
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(path, e)),
        }
    }
    Ok(&head == MAGIC)
}

/// Calls `sink(row, value)` for every row (1-based row numbers across all row groups) until it
/// says `Break`. Row groups are decoded one at a time, so memory holds one row group's pages, and
/// the row groups after a `Break` are never read.
///
/// The parquet crate's row reader panics on some corrupt files (asserts in its metadata and level
/// decoding, found by flipping single bytes of the fixtures), so the read runs under
/// `catch_unwind` and such a panic becomes an error naming the file. The panic hook may still print
/// the panic message; an error is better than taking the caller down.
pub(super) fn read_rows<R: ChunkReader + 'static>(
    path: &Path,
    reader: R,
    sink: &mut dyn FnMut(usize, Value) -> Result<ControlFlow<()>>,
) -> Result<()> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        read_rows_unguarded(path, reader, sink)
    }))
    .unwrap_or_else(|payload| {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Err(Error::Dataset {
            path: path.to_path_buf(),
            message: format!("the Parquet reader failed (corrupt file?): {what}"),
        })
    })
}

fn read_rows_unguarded<R: ChunkReader + 'static>(
    path: &Path,
    reader: R,
    sink: &mut dyn FnMut(usize, Value) -> Result<ControlFlow<()>>,
) -> Result<()> {
    let dataset_error = |message: String| Error::Dataset {
        path: path.to_path_buf(),
        message,
    };
    let reader = SerializedFileReader::new(reader)
        .map_err(|e| dataset_error(format!("not a readable Parquet file: {e}")))?;
    let mut row_no = 0;
    for g in 0..reader.num_row_groups() {
        let group = reader
            .get_row_group(g)
            .map_err(|e| dataset_error(format!("cannot read row group {g}: {e}")))?;
        check_dictionaries(g, group.as_ref()).map_err(dataset_error)?;
        let rows = group
            .get_row_iter(None)
            .map_err(|e| dataset_error(format!("cannot read Parquet rows: {e}")))?;
        for row in rows {
            row_no += 1;
            let row = row.map_err(|e| Error::Data {
                path: path.to_path_buf(),
                line: row_no,
                message: format!("Parquet row {row_no}: {e}"),
            })?;
            if sink(row_no, row_to_json(&row))?.is_break() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Refuses dictionary pages that declare more values than their bytes can hold.
///
/// The parquet crate sizes a column's dictionary from the page header's value count before decoding
/// it, so a few-kilobyte file that declares two billion values asks for tens of gigabytes and
/// aborts the process (found by fuzzing, parquet 60.1). Each plain-encoded value takes at least a
/// known number of bits, which bounds the honest count by the page's decompressed length. Only a
/// column's first page can be a dictionary, so data pages are not read here. Checked per row
/// group, just before its rows are decoded.
fn check_dictionaries(g: usize, group: &dyn RowGroupReader) -> std::result::Result<(), String> {
    for (c, column) in group.metadata().columns().iter().enumerate() {
        let mut pages = group
            .get_column_page_reader(c)
            .map_err(|e| format!("cannot read column {}: {e}", column.column_path()))?;
        let first_is_dict = pages
            .peek_next_page()
            .map_err(|e| format!("cannot read column {}: {e}", column.column_path()))?
            .is_some_and(|meta| meta.is_dict);
        if !first_is_dict {
            continue;
        }
        let page = pages
            .get_next_page()
            .map_err(|e| format!("cannot read column {}: {e}", column.column_path()))?;
        if let Some(Page::DictionaryPage {
            buf, num_values, ..
        }) = page
        {
            let bits = min_plain_bits(column.column_type(), column.column_descr().type_length());
            let fits = (buf.len() as u64).saturating_mul(8) / bits;
            if u64::from(num_values) > fits {
                return Err(format!(
                    "column {} of row group {g}: its dictionary page declares {num_values} \
                     values but holds {} bytes (at most {fits} values); the file is corrupt",
                    column.column_path(),
                    buf.len()
                ));
            }
        }
    }
    Ok(())
}

/// The fewest bits one plain-encoded value of a physical type occupies (byte arrays carry a 4-byte
/// length; a zero-width fixed-length array still counts one byte so the bound stays finite).
fn min_plain_bits(ty: PhysicalType, type_length: i32) -> u64 {
    match ty {
        PhysicalType::BOOLEAN => 1,
        PhysicalType::INT32 | PhysicalType::FLOAT | PhysicalType::BYTE_ARRAY => 32,
        PhysicalType::INT64 | PhysicalType::DOUBLE => 64,
        PhysicalType::INT96 => 96,
        PhysicalType::FIXED_LEN_BYTE_ARRAY => 8 * u64::try_from(type_length).unwrap_or(0).max(1),
    }
}

fn row_to_json(row: &Row) -> Value {
    Value::Object(
        row.get_column_iter()
            .map(|(name, field)| (name.clone(), field_to_json(field)))
            .collect::<Map<_, _>>(),
    )
}

/// Converts one field. Text and integers are what SFT data holds; other scalar types (timestamps,
/// decimals, ...) become their display string, which is enough for ids and for "wrong type"
/// reasons. Binary that is not UTF-8 becomes null (unusable text), never a lossy string.
fn field_to_json(field: &Field) -> Value {
    match field {
        Field::Null => Value::Null,
        Field::Bool(b) => Value::Bool(*b),
        Field::Byte(n) => Value::from(*n),
        Field::Short(n) => Value::from(*n),
        Field::Int(n) => Value::from(*n),
        Field::Long(n) => Value::from(*n),
        Field::UByte(n) => Value::from(*n),
        Field::UShort(n) => Value::from(*n),
        Field::UInt(n) => Value::from(*n),
        Field::ULong(n) => Value::from(*n),
        Field::Float(x) => float(f64::from(*x)),
        Field::Double(x) => float(*x),
        Field::Float16(x) => float(f64::from(*x)),
        Field::Str(s) => Value::String(s.clone()),
        Field::Bytes(b) => std::str::from_utf8(b.data())
            .map(|s| Value::String(s.to_owned()))
            .unwrap_or(Value::Null),
        Field::Group(row) => row_to_json(row),
        Field::ListInternal(list) => {
            Value::Array(list.elements().iter().map(field_to_json).collect())
        }
        Field::MapInternal(map) => Value::Object(
            map.entries()
                .iter()
                .map(|(k, v)| {
                    let key = match field_to_json(k) {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (key, field_to_json(v))
                })
                .collect(),
        ),
        other => Value::String(other.to_string()),
    }
}

/// JSON has no NaN or infinity; those become null.
fn float(x: f64) -> Value {
    Number::from_f64(x)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}
