//! Shuffle: the operators at stage boundaries and the on-disk layout of map outputs.
//!
//! A map task's [`ShuffleWriterExec`] writes one Arrow IPC file per output partition under the
//! executor's work dir; a downstream task's [`ShuffleReaderExec`] reads them back, straight from
//! disk when co-located and through a [`ShuffleFetcher`] (Arrow Flight, provided by the executor)
//! otherwise. The planner knows no network: the fetcher is injected through the task's
//! [`ShuffleEnv`] session extension.

mod live;
mod reader;
mod seal;
mod writer;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::buffer::Buffer;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::ipc::CompressionType;
use datafusion::arrow::ipc::convert::fb_to_schema;
use datafusion::arrow::ipc::reader::{FileDecoder, FileReader, read_footer_length};
use datafusion::arrow::ipc::writer::IpcWriteOptions;
use datafusion::arrow::ipc::{Block, root_as_footer};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;

pub use live::{
    LiveBlocks, LiveItem, LiveReader, LiveReceiver, LiveSender, LiveWriter, OVERFLOW_AFTER,
    Overflow, live_batches,
};
pub use reader::{ReadMode, ReadSpec, SHUFFLE_READ_BYTES, ShuffleReaderExec};
pub use writer::{ShuffleWriterExec, map_output_schema};

use crate::ids::{ExecutorId, QueryId, StageId};

/// Where one map task's committed output lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapOutputLocation {
    /// The partition of the upstream stage, that is, which map task wrote the output.
    pub map_partition: u32,
    /// The attempt that wrote the output; readers ask for this attempt's blocks and no other's.
    pub attempt: u32,
    /// The executor holding the files. When the reader runs on this same executor, it opens them
    /// from disk.
    pub executor_id: ExecutorId,
    /// `host:port` of the executor's Flight service.
    pub flight_address: String,
    /// The machine the executor runs on (empty if unknown) and its work dir there: a reader on the
    /// same machine opens the file instead of fetching it.
    pub host_key: String,
    /// That executor's work dir, meaningful only on the machine named by
    /// [`host_key`](Self::host_key).
    pub work_dir: PathBuf,
}

/// Identifies one output partition of one map attempt; doubles as the Flight ticket.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ShuffleBlock {
    /// The query the block belongs to.
    pub query_id: QueryId,
    /// The stage whose map task wrote the block.
    pub stage_id: StageId,
    /// The map task (partition of that stage) that wrote the block.
    pub map_partition: u32,
    /// The attempt of that map task.
    pub attempt: u32,
    /// The reader partition the block is for; always 0 when each map task writes a single output
    /// (gather, broadcast and result stages).
    pub output_partition: u32,
}

impl ShuffleBlock {
    /// The file holding this block under `work_dir`. Every component is numeric or a validated
    /// [`QueryId`], so the path cannot leave the work dir.
    pub fn path(&self, work_dir: &Path) -> PathBuf {
        map_attempt_dir(
            work_dir,
            &self.query_id,
            self.stage_id,
            self.map_partition,
            self.attempt,
        )
        .join(format!("part-{}.arrow", self.output_partition))
    }
}

/// The file in an executor's work dir that names the executor (its id from the coordinator):
/// a reader on the same machine opens committed blocks there only when it names the executor
/// the block's location does.
pub const WORK_DIR_MARKER: &str = "executor.id";

/// The work dirs of executors on this machine whose marker file named them, checked once each:
/// an executor that registers again gets a new id, so a confirmed pair stays true.
#[derive(Debug, Default)]
pub struct PeerWorkDirs {
    confirmed: std::sync::Mutex<std::collections::HashSet<(PathBuf, ExecutorId)>>,
}

impl PeerWorkDirs {
    /// Whether `work_dir` is the work dir of `executor_id` on this machine: an absolute path
    /// whose marker file names it.
    pub fn is_work_dir_of(&self, work_dir: &Path, executor_id: &ExecutorId) -> bool {
        let key = (work_dir.to_path_buf(), executor_id.clone());
        let mut confirmed = self.confirmed.lock().unwrap_or_else(|e| e.into_inner());
        if confirmed.contains(&key) {
            return true;
        }
        let named = work_dir.is_absolute()
            && std::fs::read(work_dir.join(WORK_DIR_MARKER))
                .is_ok_and(|named| named == executor_id.0.as_bytes());
        if named {
            confirmed.insert(key);
        }
        named
    }
}

/// The directory of all shuffle files of a query on one executor.
pub fn query_dir(work_dir: &Path, query_id: &QueryId) -> PathBuf {
    work_dir.join("shuffle").join(query_id.as_str())
}

/// The directory holding the output files of one map attempt.
pub fn map_attempt_dir(
    work_dir: &Path,
    query_id: &QueryId,
    stage_id: StageId,
    map_partition: u32,
    attempt: u32,
) -> PathBuf {
    query_dir(work_dir, query_id)
        .join(format!("stage-{stage_id}"))
        .join(format!("map-{map_partition}.{attempt}"))
}

/// Why a shuffle block could not be read. Kept typed so the scheduler can tell a lost map output
/// (recompute it) from a failing query.
#[derive(Debug, thiserror::Error)]
pub enum ShuffleError {
    /// A block of a map output could not be opened or streamed. The scheduler takes the map output
    /// as lost and re-runs the map task that wrote it.
    #[error(
        "fetch of stage {stage_id} map {map_partition} from executor {executor_id} failed: {message}"
    )]
    FetchFailed {
        /// The executor that held the map output.
        executor_id: ExecutorId,
        /// The upstream stage whose output was read.
        stage_id: StageId,
        /// The map task whose output was read.
        map_partition: u32,
        /// The attempt of the map task whose output was read.
        map_attempt: u32,
        /// What went wrong, for the task's error message.
        message: String,
    },
}

impl ShuffleError {
    /// Finds a typed shuffle error inside a DataFusion error chain.
    pub fn find(error: &DataFusionError) -> Option<&ShuffleError> {
        match error {
            DataFusionError::External(e) => e.downcast_ref::<ShuffleError>(),
            DataFusionError::Shared(e) => Self::find(e),
            DataFusionError::Context(_, e) => Self::find(e),
            DataFusionError::ArrowError(e, _) => match e.as_ref() {
                datafusion::arrow::error::ArrowError::ExternalError(e) => {
                    e.downcast_ref::<ShuffleError>()
                }
                _ => None,
            },
            _ => None,
        }
    }
}

/// Fetches shuffle blocks that live on other executors.
#[async_trait]
pub trait ShuffleFetcher: fmt::Debug + Send + Sync {
    /// Streams `block` from the executor at `location`. Errors, also those inside the stream,
    /// carry a [`ShuffleError::FetchFailed`].
    async fn fetch(
        &self,
        location: &MapOutputLocation,
        block: ShuffleBlock,
        schema: SchemaRef,
    ) -> Result<SendableRecordBatchStream>;
}

/// Per-task environment that the executor puts into the session config of a task, read by the
/// shuffle operators at `execute` time.
#[derive(Debug)]
pub struct ShuffleEnv {
    /// This executor's work dir; shuffle files live under `shuffle/<query id>/` in it.
    pub work_dir: PathBuf,
    /// This executor; blocks whose location names it are read straight from disk.
    pub executor_id: ExecutorId,
    /// This machine's identity, compared with [`MapOutputLocation::host_key`].
    pub host_key: String,
    /// The attempt number of the task being run; the writer puts its files in that attempt's
    /// directory.
    pub attempt: u32,
    /// Fetches the blocks that cannot be read from this machine's disk.
    pub fetcher: Arc<dyn ShuffleFetcher>,
    /// Where a live (streamed) output hands its batches to the reader.
    pub live: Arc<LiveBlocks>,
    /// The bytes of shuffle files this executor may keep.
    pub disk: Arc<DiskBudget>,
    /// Peers on this machine whose committed files may be read from their work dirs.
    pub peers: Arc<PeerWorkDirs>,
    /// How map outputs are compressed on disk (`executor.shuffle_compression`).
    pub compression: ShuffleCompression,
}

/// The compression of shuffle files: Arrow IPC's own buffer compression, which every reader
/// undoes whatever the writer chose.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ShuffleCompression {
    /// Buffers as they are in memory.
    #[default]
    None,
    /// LZ4 frames: cheap to write and read.
    Lz4,
    /// Zstandard: smaller files for more CPU.
    Zstd,
}

impl ShuffleCompression {
    /// `none`, `lz4` or `zstd`.
    pub fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "none" => Some(Self::None),
            "lz4" => Some(Self::Lz4),
            "zstd" => Some(Self::Zstd),
            _ => None,
        }
    }

    /// The IPC writer options that compress this way.
    pub fn write_options(&self) -> Result<IpcWriteOptions> {
        let compression = match self {
            Self::None => None,
            Self::Lz4 => Some(CompressionType::LZ4_FRAME),
            Self::Zstd => Some(CompressionType::ZSTD),
        };
        Ok(IpcWriteOptions::default().try_with_compression(compression)?)
    }
}

/// Bounds the bytes of shuffle files an executor keeps on disk (`executor.max_disk_bytes`).
/// Writers reserve as they write; a query's reservation goes when its files are deleted.
#[derive(Debug, Default)]
pub struct DiskBudget {
    /// 0 means no limit.
    limit: u64,
    // A std Mutex: held only to add or remove a number.
    used: std::sync::Mutex<std::collections::HashMap<QueryId, u64>>,
}

impl DiskBudget {
    /// A budget of `limit` bytes, none of them reserved; 0 means no limit.
    pub fn new(limit: u64) -> Self {
        Self {
            limit,
            used: Default::default(),
        }
    }

    /// The limit in bytes; 0 means no limit.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Takes `bytes` for a file of `query`; fails when the budget would be exceeded.
    pub fn reserve(&self, query: &QueryId, bytes: u64) -> std::io::Result<()> {
        let mut used = self.lock();
        let total: u64 = used.values().sum();
        if self.limit > 0 && total + bytes > self.limit {
            // Typed inside the I/O error, so the task reports 53100 whichever layer it crosses.
            return Err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                crate::Error::DiskFull { limit: self.limit },
            ));
        }
        *used.entry(query.clone()).or_default() += bytes;
        Ok(())
    }

    /// Bytes of shuffle files on disk now.
    pub fn used(&self) -> u64 {
        self.lock().values().sum()
    }

    /// The query's files were deleted.
    pub fn release(&self, query: &QueryId) {
        self.lock().remove(query);
    }

    /// Every file was deleted.
    pub fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<QueryId, u64>> {
        self.used.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A file whose writes are charged to a [`DiskBudget`].
#[derive(Debug)]
pub(crate) struct BudgetedFile {
    pub(crate) file: std::fs::File,
    pub(crate) budget: Arc<DiskBudget>,
    pub(crate) query: QueryId,
}

impl std::io::Write for BudgetedFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.budget.reserve(&self.query, buf.len() as u64)?;
        self.file.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// An identity of this machine: `/etc/machine-id` where it exists, else the host name.
pub fn local_host_key() -> String {
    std::fs::read_to_string("/etc/machine-id")
        .ok()
        .map(|id| id.trim().to_string())
        .filter(|id| !id.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|id| id.trim().to_string())
        .unwrap_or_default()
}

/// Map output files up to this size are read whole, on the reading task's thread, and decoded
/// from that one buffer: most blocks of a small query are far below it, and for them a blocking
/// thread's hand-offs and a zeroed buffer per batch cost more than the read (TPC-H q16 waited
/// 2-3 ms per task for 60 K rows).
const SMALL_BLOCK_BYTES: u64 = 8 << 20;

/// Streams a local shuffle file: a small one read and decoded at once, a larger one batch by
/// batch on a blocking thread.
pub fn read_local_block(path: &Path) -> Result<SendableRecordBatchStream> {
    let open_error =
        |e: std::io::Error| DataFusionError::Execution(format!("open {}: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(open_error)?;
    let size = file.metadata().map_err(open_error)?.len();
    if size <= SMALL_BLOCK_BYTES {
        let mut bytes = Vec::with_capacity(size as usize);
        std::io::Read::read_to_end(&mut std::io::Read::take(&file, size + 1), &mut bytes)
            .map_err(open_error)?;
        if bytes.len() as u64 != size {
            return Err(DataFusionError::Execution(format!(
                "{} changed while it was read",
                path.display()
            )));
        }
        let (schema, batches) = decode_file(Buffer::from_vec(bytes))
            .map_err(|e| DataFusionError::Execution(format!("read {}: {e}", path.display())))?;
        return Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            futures::stream::iter(batches.into_iter().map(Ok)),
        )));
    }
    let reader = FileReader::try_new(std::io::BufReader::new(file), None)?;
    let schema = reader.schema();
    let (tx, rx) = futures::channel::mpsc::channel(2);
    tokio::task::spawn_blocking(move || {
        let mut tx = tx;
        for batch in reader {
            let item = batch.map_err(DataFusionError::from);
            let failed = item.is_err();
            if futures::executor::block_on(futures::SinkExt::send(&mut tx, item)).is_err() || failed
            {
                break;
            }
        }
    });
    Ok(Box::pin(RecordBatchStreamAdapter::new(schema, rx)))
}

/// [`read_local_block`] on a blocking thread, for callers on a runtime that must not wait on a
/// whole small file being read and decoded (Flight serving, result streams).
pub async fn read_local_block_off_runtime(path: PathBuf) -> Result<SendableRecordBatchStream> {
    tokio::task::spawn_blocking(move || read_local_block(&path))
        .await
        .map_err(|e| DataFusionError::Execution(e.to_string()))?
}

/// The schema and batches of a whole Arrow IPC file in `buffer`, decoded without copying (the
/// batches' arrays point into it). A damaged file is an error: the footer's offsets are checked
/// here, and Arrow's decoder, which panics on some damage (an unknown type, a buffer outside
/// its message), runs inside `catch_unwind`. A file its writer sealed ([`seal`]) is decoded
/// without validating its arrays again.
fn decode_file(buffer: Buffer) -> std::result::Result<(SchemaRef, Vec<RecordBatch>), ArrowError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        decode_file_unguarded(&buffer)
    }))
    .unwrap_or_else(|_| {
        Err(ArrowError::IpcError(
            "not an Arrow IPC file: the decoder gave up on it".into(),
        ))
    })
}

fn decode_file_unguarded(
    buffer: &Buffer,
) -> std::result::Result<(SchemaRef, Vec<RecordBatch>), ArrowError> {
    let corrupt = |what: &str| ArrowError::IpcError(format!("not an Arrow IPC file: {what}"));
    let trailer_start = buffer
        .len()
        .checked_sub(10)
        .ok_or_else(|| corrupt("too short"))?;
    let trailer: [u8; 10] = buffer[trailer_start..]
        .try_into()
        .map_err(|_| corrupt("no trailer"))?;
    let footer_start = trailer_start
        .checked_sub(read_footer_length(trailer)?)
        .ok_or_else(|| corrupt("footer longer than the file"))?;
    let footer = root_as_footer(&buffer[footer_start..trailer_start])
        .map_err(|e| corrupt(&format!("footer: {e}")))?;
    let ipc_schema = footer.schema().ok_or_else(|| corrupt("no schema"))?;
    if !ipc_schema.endianness().equals_to_target_endianness() {
        return Err(ArrowError::IpcError(
            "the file was written on a machine of the other endianness".into(),
        ));
    }
    let schema = Arc::new(fb_to_schema(ipc_schema));
    let mut decoder = FileDecoder::new(Arc::clone(&schema), footer.version());
    if seal::sealed(buffer, &footer, &schema, footer_start)? {
        // SAFETY: every byte the decoder reads is one the writer checksummed, or was compared
        // with those (`seal::sealed`): the file is as a shuffle writer of this build wrote it,
        // from arrays that were valid.
        decoder = unsafe { decoder.with_skip_validation(true) };
    }
    let block_data = |block: &Block| {
        let offset = usize::try_from(block.offset()).ok();
        let metadata = usize::try_from(block.metaDataLength()).ok();
        let body = usize::try_from(block.bodyLength()).ok();
        match (offset, metadata, body) {
            (Some(offset), Some(metadata), Some(body)) => metadata
                .checked_add(body)
                .filter(|len| {
                    offset
                        .checked_add(*len)
                        .is_some_and(|end| end <= footer_start)
                })
                .map(|len| buffer.slice_with_length(offset, len)),
            _ => None,
        }
        .ok_or_else(|| corrupt("a block outside the file"))
    };
    for block in footer.dictionaries().iter().flatten() {
        decoder.read_dictionary(block, &block_data(block)?)?;
    }
    let mut batches = vec![];
    for block in footer.recordBatches().iter().flatten() {
        if let Some(batch) = decoder.read_record_batch(block, &block_data(block)?)? {
            batches.push(batch);
        }
    }
    Ok((schema, batches))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_are_read_from_disk_only_where_their_marker_names_them() {
        let dir = tempfile::tempdir().unwrap();
        let work_dir = std::fs::canonicalize(dir.path()).unwrap();
        let peers = PeerWorkDirs::default();
        let id = ExecutorId("exec-1".into());
        assert!(!peers.is_work_dir_of(&work_dir, &id), "no marker yet");
        std::fs::write(work_dir.join(WORK_DIR_MARKER), "exec-2").unwrap();
        assert!(
            !peers.is_work_dir_of(&work_dir, &id),
            "another executor's dir"
        );
        assert!(!peers.is_work_dir_of(Path::new("relative/dir"), &id));
        std::fs::write(work_dir.join(WORK_DIR_MARKER), "exec-1").unwrap();
        assert!(peers.is_work_dir_of(&work_dir, &id));
        assert!(!peers.is_work_dir_of(Path::new("/etc"), &id));
    }

    #[tokio::test]
    async fn compressed_blocks_read_back_as_written() {
        use datafusion::arrow::array::{Int64Array, StringArray};
        use datafusion::arrow::datatypes::{DataType, Field, Schema};
        use datafusion::arrow::ipc::writer::FileWriter;
        use futures::TryStreamExt;

        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("s", DataType::Utf8, true),
        ]));
        let batch = datafusion::arrow::array::RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Int64Array::from_iter_values(0..10_000)),
                Arc::new(StringArray::from_iter(
                    (0..10_000).map(|i| (i % 7 != 0).then(|| format!("value {}", i % 100))),
                )),
            ],
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut sizes = vec![];
        for name in ["none", "lz4", "zstd"] {
            let compression = ShuffleCompression::parse(name).unwrap();
            let path = dir.path().join(format!("{name}.arrow"));
            let file = std::fs::File::create(&path).unwrap();
            let options = compression.write_options().unwrap();
            let mut writer = FileWriter::try_new_with_options(file, &schema, options).unwrap();
            writer.write(&batch).unwrap();
            writer.finish().unwrap();
            let read: Vec<_> = read_local_block(&path)
                .unwrap()
                .try_collect()
                .await
                .unwrap();
            assert_eq!(read, vec![batch.clone()], "{name}");
            sizes.push(std::fs::metadata(&path).unwrap().len());
        }
        assert!(sizes[1] < sizes[0] && sizes[2] < sizes[1], "{sizes:?}");
        assert_eq!(
            ShuffleCompression::parse("LZ4"),
            Some(ShuffleCompression::Lz4)
        );
        assert_eq!(ShuffleCompression::parse("gzip"), None);
    }

    #[tokio::test]
    async fn damaged_blocks_are_errors_not_panics() {
        use datafusion::arrow::array::{Int64Array, StringViewArray};
        use datafusion::arrow::datatypes::{DataType, Field, Schema};
        use datafusion::arrow::ipc::writer::FileWriter;
        use futures::TryStreamExt;

        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("s", DataType::Utf8View, true),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Int64Array::from_iter_values(0..1_000)),
                Arc::new(StringViewArray::from_iter(
                    (0..1_000).map(|i| Some(format!("a string longer than twelve bytes {i}"))),
                )),
            ],
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("block.arrow");
        let mut writer =
            FileWriter::try_new(std::fs::File::create(&path).unwrap(), &schema).unwrap();
        writer.write(&batch).unwrap();
        writer.write(&batch.slice(10, 20)).unwrap();
        writer.finish().unwrap();
        let good = std::fs::read(&path).unwrap();
        let read = |bytes: &[u8]| {
            std::fs::write(&path, bytes).unwrap();
            async {
                match read_local_block(&path) {
                    Ok(stream) => stream.try_collect::<Vec<_>>().await,
                    Err(error) => Err(error),
                }
            }
        };
        let batches = read(&good).await.unwrap();
        assert_eq!(batches, vec![batch.clone(), batch.slice(10, 20)]);
        // Cut short anywhere, the file is an error.
        for len in (0..good.len()).step_by(7) {
            assert!(read(&good[..len]).await.is_err(), "cut at {len}");
        }
        // Any byte of the footer and trailer changed: an error or a readable file, never a panic.
        let footer_len =
            u32::from_le_bytes(good[good.len() - 10..good.len() - 6].try_into().unwrap());
        for at in good.len() - 10 - footer_len as usize..good.len() {
            let mut damaged = good.clone();
            damaged[at] ^= 0x5a;
            let _ = read(&damaged).await;
        }
    }
}
