//! Map output files sealed by their writer, so that their reader may skip Arrow's validation.
//!
//! Decoding an IPC file validates every array it reads: offsets, lengths and, for strings, that
//! every value is UTF-8. For files this process or a peer executor wrote a moment ago that is
//! wasted work (a sixth of an executor's CPU in TPC-DS's large aggregations, most of it UTF-8
//! checks of string views), and DataFusion skips it for its own spill files. Shuffle files live
//! on a disk where they can be damaged, though, and skipping validation of damaged data is
//! undefined behaviour. So the writer seals each file: a CRC-32 of everything it wrote before
//! the footer, recorded with that length in the footer (`ember.crc32`). The reader skips
//! validation only when the seal holds, every byte the decoder will use is covered by it or
//! compared with covered bytes:
//! - the checksum matches the bytes before the footer;
//! - the footer's schema equals the schema message at the start of the file;
//! - the footer's blocks are exactly the messages found by walking the file from that schema
//!   message to the sealed length (each message's length prefix and its header's body length);
//! - the footer is of metadata version 5, the one this writer writes.
//!
//! A file whose checksum does not match is damaged: an error. A file without a seal, or whose
//! footer disagrees with its covered bytes, is decoded with full validation (which finds the
//! damage, or reads a file some other writer made).

use std::io::Write;

use datafusion::arrow::datatypes::Schema;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::ipc::convert::fb_to_schema;
use datafusion::arrow::ipc::writer::FileWriter;
use datafusion::arrow::ipc::{Footer, MetadataVersion, root_as_message};

/// The footer metadata key of a seal: `<length>:<crc32 in hex>`.
const SEAL_KEY: &str = "ember.crc32";

/// Bytes of the IPC file's leading magic, which zeros pad to the writer's alignment.
const MAGIC_BYTES: usize = 6;

/// A writer that keeps a CRC-32 and a count of the bytes written through it.
#[derive(Debug)]
pub(crate) struct Checksummed<W> {
    inner: W,
    hasher: crc32fast::Hasher,
    len: u64,
}

impl<W: Write> Checksummed<W> {
    pub(crate) fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: crc32fast::Hasher::new(),
            len: 0,
        }
    }

    fn seal(&self) -> String {
        format!("{}:{:08x}", self.len, self.hasher.clone().finalize())
    }
}

impl<W: Write> Write for Checksummed<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.hasher.update(&buf[..written]);
        self.len += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Finishes `writer`'s file with the seal of everything it wrote so far in its footer.
pub(crate) fn finish_sealed<W: Write>(
    writer: &mut FileWriter<Checksummed<W>>,
) -> Result<(), ArrowError> {
    let seal = writer.get_ref().seal();
    writer.write_metadata(SEAL_KEY, seal);
    writer.finish()
}

/// Whether `file` (a whole IPC file whose footer, `footer`, starts at `footer_start` and
/// declares `schema`) holds its writer's seal: then its blocks may be decoded without
/// validation. `Ok(false)` for a file without a seal or whose footer does not agree with the
/// sealed bytes; an error for sealed bytes that changed.
pub(crate) fn sealed(
    file: &[u8],
    footer: &Footer,
    schema: &Schema,
    footer_start: usize,
) -> Result<bool, ArrowError> {
    let Some(seal) = footer
        .custom_metadata()
        .iter()
        .flatten()
        .find(|entry| entry.key() == Some(SEAL_KEY))
        .and_then(|entry| entry.value())
    else {
        return Ok(false);
    };
    let Some((len, crc)) = seal.split_once(':').and_then(|(len, crc)| {
        Some((
            len.parse::<usize>().ok()?,
            u32::from_str_radix(crc, 16).ok()?,
        ))
    }) else {
        return Ok(false);
    };
    if len > footer_start || len < MAGIC_BYTES {
        return Ok(false);
    }
    let sealed = &file[..len];
    if crc32fast::hash(sealed) != crc {
        return Err(ArrowError::IpcError(
            "damaged: its bytes do not match the checksum its writer recorded".into(),
        ));
    }
    if footer.version() != MetadataVersion::V5 {
        return Ok(false);
    }
    let Some(walked) = walk(sealed, schema) else {
        return Ok(false);
    };
    let mut blocks: Vec<(i64, i32, i64)> = footer
        .dictionaries()
        .iter()
        .flatten()
        .chain(footer.recordBatches().iter().flatten())
        .map(|b| (b.offset(), b.metaDataLength(), b.bodyLength()))
        .collect();
    blocks.sort_unstable();
    Ok(blocks == walked)
}

/// The blocks (offset, metadata length, body length) of the messages after the schema message
/// of `sealed`, found by walking it: `None` unless the first message is a schema equal to
/// `schema` and the messages end exactly where `sealed` does.
fn walk(sealed: &[u8], schema: &Schema) -> Option<Vec<(i64, i32, i64)>> {
    let padding = sealed[MAGIC_BYTES..]
        .iter()
        .take_while(|&&b| b == 0)
        .count();
    let mut offset = MAGIC_BYTES + padding;
    let mut blocks = vec![];
    let mut first = true;
    while offset < sealed.len() {
        let prefix = sealed.get(offset..offset.checked_add(8)?)?;
        if prefix[..4] != [0xff; 4] {
            return None;
        }
        let meta = usize::try_from(i32::from_le_bytes(prefix[4..8].try_into().ok()?)).ok()?;
        let meta_end = offset.checked_add(8)?.checked_add(meta)?;
        let message = root_as_message(sealed.get(offset + 8..meta_end)?).ok()?;
        let body = usize::try_from(message.bodyLength()).ok()?;
        let end = meta_end.checked_add(body)?;
        if end > sealed.len() {
            return None;
        }
        if first {
            if fb_to_schema(message.header_as_schema()?) != *schema || body != 0 {
                return None;
            }
            first = false;
        } else {
            blocks.push((
                i64::try_from(offset).ok()?,
                i32::try_from(meta + 8).ok()?,
                i64::try_from(body).ok()?,
            ));
        }
        offset = end;
    }
    (!first && offset == sealed.len()).then_some(blocks)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, RecordBatch, StringViewArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::arrow::ipc::reader::read_footer_length;
    use datafusion::arrow::ipc::root_as_footer;
    use futures::TryStreamExt;

    use super::*;
    use crate::shuffle::read_local_block;

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("s", DataType::Utf8View, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(0..500)),
                Arc::new(StringViewArray::from_iter((0..500).map(|i| {
                    (i % 7 != 0).then(|| format!("a string longer than twelve bytes {i}"))
                }))),
            ],
        )
        .unwrap()
    }

    fn sealed_file(batches: &[RecordBatch]) -> Vec<u8> {
        let mut writer =
            FileWriter::try_new(Checksummed::new(Vec::new()), &batches[0].schema()).unwrap();
        for batch in batches {
            writer.write(batch).unwrap();
        }
        finish_sealed(&mut writer).unwrap();
        writer.into_inner().unwrap().inner
    }

    fn check(file: &[u8]) -> Result<bool, ArrowError> {
        let trailer_start = file.len() - 10;
        let footer_start =
            trailer_start - read_footer_length(file[trailer_start..].try_into().unwrap()).unwrap();
        let footer = root_as_footer(&file[footer_start..trailer_start])
            .map_err(|e| ArrowError::IpcError(e.to_string()))?;
        let schema = fb_to_schema(footer.schema().unwrap());
        sealed(file, &footer, &schema, footer_start)
    }

    async fn read(
        dir: &std::path::Path,
        file: &[u8],
    ) -> datafusion::error::Result<Vec<RecordBatch>> {
        let path = dir.join("block.arrow");
        std::fs::write(&path, file).unwrap();
        read_local_block(&path)?.try_collect().await
    }

    #[tokio::test]
    async fn a_sealed_file_reads_back_as_written() {
        let batches = [batch(), batch().slice(10, 20), batch().slice(0, 0)];
        let file = sealed_file(&batches);
        assert!(check(&file).unwrap());
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path(), &file).await.unwrap(), batches);

        // Compressed bodies are sealed as they were written.
        let options = crate::shuffle::ShuffleCompression::Lz4
            .write_options()
            .unwrap();
        let mut writer = FileWriter::try_new_with_options(
            Checksummed::new(Vec::new()),
            &batches[0].schema(),
            options,
        )
        .unwrap();
        writer.write(&batches[0]).unwrap();
        finish_sealed(&mut writer).unwrap();
        let file = writer.into_inner().unwrap().inner;
        assert!(check(&file).unwrap());
        assert_eq!(read(dir.path(), &file).await.unwrap(), batches[..1]);

        // A file without a seal is read with validation.
        let mut writer = FileWriter::try_new(Vec::new(), &batches[0].schema()).unwrap();
        writer.write(&batches[0]).unwrap();
        writer.finish().unwrap();
        let plain = writer.into_inner().unwrap();
        assert!(!check(&plain).unwrap());
        assert_eq!(read(dir.path(), &plain).await.unwrap(), batches[..1]);
    }

    #[tokio::test]
    async fn damage_to_a_sealed_file_is_found() {
        let file = sealed_file(&[batch(), batch().slice(3, 100)]);
        let dir = tempfile::tempdir().unwrap();
        let trailer_start = file.len() - 10;
        let footer_start =
            trailer_start - read_footer_length(file[trailer_start..].try_into().unwrap()).unwrap();
        // Any byte before the end-of-stream marker ahead of the footer changed: the checksum
        // says so.
        for at in (0..footer_start - 8).step_by(5) {
            let mut damaged = file.clone();
            damaged[at] ^= 0x21;
            let error = read(dir.path(), &damaged).await.unwrap_err().to_string();
            assert!(
                error.contains("do not match the checksum"),
                "at {at}: {error}"
            );
        }
        // Any byte of the marker or the footer changed: an error or a readable file, never a
        // panic (a footer that disagrees with the sealed bytes loses the seal).
        for at in footer_start - 8..file.len() {
            let mut damaged = file.clone();
            damaged[at] ^= 0x21;
            let _ = read(dir.path(), &damaged).await;
        }
        // A footer whose blocks disagree with the sealed messages loses the seal.
        let mut writer =
            FileWriter::try_new(Checksummed::new(Vec::new()), &batch().schema()).unwrap();
        writer.write(&batch()).unwrap();
        // Bytes written outside any message: the walk does not end where the seal does.
        std::io::Write::write_all(writer.get_mut(), &[0; 8]).unwrap();
        finish_sealed(&mut writer).unwrap();
        let file = writer.into_inner().unwrap().inner;
        assert!(!check(&file).unwrap());
    }
}
