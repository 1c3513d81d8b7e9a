//! Printing answers: an aligned table, CSV with a header, or a JSON array of objects.

use std::io::Write;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::util::pretty::pretty_format_batches;

/// How `ember sql` prints answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns with a header, for people.
    Table,
    /// Comma-separated values with a header row.
    Csv,
    /// A JSON array with one object per row.
    Json,
}

pub(crate) fn print(
    format: Format,
    schema: SchemaRef,
    batches: &[RecordBatch],
) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match format {
        Format::Table => {
            let empty;
            let batches = if batches.is_empty() {
                empty = [RecordBatch::new_empty(schema)];
                &empty[..]
            } else {
                batches
            };
            writeln!(out, "{}", pretty_format_batches(batches)?)?;
        }
        Format::Csv => {
            let mut writer = datafusion::arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut out);
            if batches.is_empty() {
                writer.write(&RecordBatch::new_empty(schema))?;
            }
            for batch in batches {
                writer.write(batch)?;
            }
        }
        Format::Json => {
            let mut writer = datafusion::arrow::json::ArrayWriter::new(&mut out);
            for batch in batches {
                writer.write(batch)?;
            }
            // `finish` writes `[]` when there were no rows.
            writer.finish()?;
            drop(writer);
            writeln!(out)?;
        }
    }
    out.flush()?;
    Ok(())
}
