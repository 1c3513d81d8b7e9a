//! Task encoding: datafusion-proto plus one extension codec for Ember's operators.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::common::ScalarValue;
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::ColumnarValue;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{CastExpr, Literal};
use datafusion::physical_expr::scalar_subquery::ScalarSubqueryExpr;
use datafusion::physical_expr::{AcrossPartitions, ConstExpr, EquivalenceProperties};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::aggregates::AggregateExec;
use datafusion::physical_plan::windows::{
    BoundedWindowAggExec, StandardWindowExpr, WindowAggExec, WindowUDFExpr,
};
use datafusion_proto::physical_plan::from_proto::{
    parse_physical_expr_with_converter, parse_physical_sort_exprs, parse_protobuf_partitioning,
};
use datafusion_proto::physical_plan::to_proto::{
    serialize_partitioning, serialize_physical_expr_with_converter, serialize_physical_sort_exprs,
};
use datafusion_proto::physical_plan::{
    PhysicalExtensionCodec, PhysicalPlanDecodeContext, PhysicalPlanNodeExt,
    PhysicalProtoConverterExtension,
};
use datafusion_proto::protobuf;
use prost::Message;

use crate::ids::{ExecutorId, QueryId, StageId};
use crate::shuffle::{MapOutputLocation, ReadMode, ReadSpec, ShuffleReaderExec, ShuffleWriterExec};
use crate::write::DistributedSinkExec;
use datafusion::arrow::csv::WriterBuilder;
use datafusion::datasource::file_format::csv::CsvSink;
use datafusion::datasource::physical_plan::FileSink;
use datafusion::datasource::sink::{DataSink, DataSinkExec};

/// The one extension codec: knows [`ShuffleWriterExec`] and [`ShuffleReaderExec`].
#[derive(Debug, Default, Clone, Copy)]
pub struct EmberCodec;

#[derive(Clone, PartialEq, prost::Message)]
struct EmberNode {
    #[prost(message, optional, tag = "1")]
    writer: Option<WriterNode>,
    #[prost(message, optional, tag = "2")]
    reader: Option<ReaderNode>,
    #[prost(message, optional, tag = "3")]
    sink: Option<SinkNode>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SinkNode {
    #[prost(string, tag = "1")]
    staging: String,
    #[prost(string, optional, tag = "2")]
    single_file: Option<String>,
    /// The planned DataFusion sink over a placeholder input, encoded by datafusion-proto.
    #[prost(bytes = "vec", tag = "3")]
    sink_plan: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WriterNode {
    #[prost(string, tag = "1")]
    query_id: String,
    #[prost(uint32, tag = "2")]
    stage_id: u32,
    #[prost(message, optional, tag = "3")]
    partitioning: Option<protobuf::Partitioning>,
    #[prost(bool, tag = "4")]
    live: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ReaderNode {
    #[prost(string, tag = "1")]
    query_id: String,
    #[prost(uint32, tag = "2")]
    stage_id: u32,
    #[prost(message, optional, tag = "3")]
    schema: Option<protobuf::Schema>,
    /// 0 when reading one map output per partition, else the number of shuffle partitions.
    #[prost(uint32, tag = "4")]
    shuffle_partitions: u32,
    #[prost(uint32, tag = "5")]
    num_maps: u32,
    #[prost(message, repeated, tag = "6")]
    locations: Vec<LocationNode>,
    /// The partitioning and equivalences of the exchange the reader replaced, so operators
    /// above it decode as planned (a window over a column that is constant needs no sort).
    #[prost(message, optional, tag = "7")]
    partitioning: Option<protobuf::Partitioning>,
    #[prost(message, optional, tag = "8")]
    equivalence: Option<EquivalenceNode>,
    /// Adaptive execution's plan of the reader's partitions; empty when it kept them.
    #[prost(message, repeated, tag = "9")]
    specs: Vec<ReadSpecNode>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ReadSpecNode {
    #[prost(uint32, tag = "1")]
    partition_start: u32,
    #[prost(uint32, tag = "2")]
    partition_end: u32,
    #[prost(uint32, tag = "3")]
    map_start: u32,
    #[prost(uint32, tag = "4")]
    map_end: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct EquivalenceNode {
    #[prost(message, repeated, tag = "1")]
    orderings: Vec<protobuf::PhysicalSortExprNodeCollection>,
    /// Sets of expressions known to be equal.
    #[prost(message, repeated, tag = "2")]
    classes: Vec<ExprsNode>,
    #[prost(message, repeated, tag = "3")]
    constants: Vec<ConstantNode>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ExprsNode {
    #[prost(message, repeated, tag = "1")]
    exprs: Vec<protobuf::PhysicalExprNode>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ConstantNode {
    #[prost(message, optional, tag = "1")]
    expr: Option<protobuf::PhysicalExprNode>,
    /// Whether every partition has the same value (then `value` holds it when known).
    #[prost(bool, tag = "2")]
    uniform: bool,
    #[prost(message, optional, tag = "3")]
    value: Option<protobuf::ScalarValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct LocationNode {
    #[prost(uint32, tag = "1")]
    map_partition: u32,
    #[prost(uint32, tag = "2")]
    attempt: u32,
    #[prost(string, tag = "3")]
    executor_id: String,
    #[prost(string, tag = "4")]
    flight_address: String,
    #[prost(string, tag = "5")]
    host_key: String,
    #[prost(string, tag = "6")]
    work_dir: String,
}

fn proto_err(what: impl std::fmt::Display) -> DataFusionError {
    DataFusionError::Internal(format!("ember codec: {what}"))
}

fn query_id(id: &str) -> Result<QueryId> {
    QueryId::parse(id).ok_or_else(|| proto_err(format!("invalid query id {id:?}")))
}

impl PhysicalExtensionCodec for EmberCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let node = EmberNode::decode(buf).map_err(proto_err)?;
        if let Some(writer) = node.writer {
            let [input] = inputs else {
                return Err(proto_err("shuffle writer needs one input"));
            };
            let decode_ctx = PhysicalPlanDecodeContext::new(ctx, self);
            let partitioning = parse_protobuf_partitioning(
                writer.partitioning.as_ref(),
                &decode_ctx,
                &input.schema(),
                proto_converter,
            )?;
            let exec = ShuffleWriterExec::try_new(
                Arc::clone(input),
                query_id(&writer.query_id)?,
                StageId(writer.stage_id),
                partitioning,
            )?;
            return Ok(Arc::new(if writer.live {
                exec.with_live_output()?
            } else {
                exec
            }));
        }
        if let Some(reader) = node.reader {
            let schema: Schema = reader
                .schema
                .as_ref()
                .ok_or_else(|| proto_err("shuffle reader without schema"))?
                .try_into()?;
            let mode = match reader.shuffle_partitions {
                0 => ReadMode::PerMap,
                n => ReadMode::Shuffle {
                    num_partitions: n as usize,
                },
            };
            let locations = reader
                .locations
                .into_iter()
                .map(|l| MapOutputLocation {
                    map_partition: l.map_partition,
                    attempt: l.attempt,
                    executor_id: ExecutorId(l.executor_id),
                    flight_address: l.flight_address,
                    host_key: l.host_key,
                    work_dir: l.work_dir.into(),
                })
                .collect();
            let schema = Arc::new(schema);
            let decode_ctx = PhysicalPlanDecodeContext::new(ctx, self);
            let partitioning = parse_protobuf_partitioning(
                reader.partitioning.as_ref(),
                &decode_ctx,
                &schema,
                proto_converter,
            )?;
            let equivalence = match &reader.equivalence {
                Some(node) => decode_equivalence(node, &schema, &decode_ctx, proto_converter)?,
                None => EquivalenceProperties::new(Arc::clone(&schema)),
            };
            let specs = (!reader.specs.is_empty()).then(|| {
                reader
                    .specs
                    .iter()
                    .map(|s| ReadSpec {
                        partitions: s.partition_start..s.partition_end,
                        maps: s.map_start..s.map_end,
                    })
                    .collect()
            });
            return Ok(Arc::new(ShuffleReaderExec::decoded(
                query_id(&reader.query_id)?,
                StageId(reader.stage_id),
                mode,
                reader.num_maps as usize,
                specs,
                locations,
                equivalence,
                partitioning,
            )?));
        }
        if let Some(sink) = node.sink {
            let [input] = inputs else {
                return Err(proto_err("distributed sink needs one input"));
            };
            let sink_plan = decode_plan(&sink.sink_plan, ctx)?;
            let Some(sink_exec) = sink_plan.downcast_ref::<DataSinkExec>() else {
                return Err(proto_err("distributed sink without a DataSinkExec"));
            };
            let repaired = unset_empty_csv_formats(sink_exec.sink());
            return Ok(Arc::new(DistributedSinkExec::try_new(
                Arc::clone(input),
                repaired.as_deref().unwrap_or(sink_exec.sink()),
                sink.staging,
                sink.single_file,
            )?));
        }
        Err(proto_err("unknown extension node"))
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        let message = if let Some(writer) = node.downcast_ref::<ShuffleWriterExec>() {
            let partitioning = writer
                .output_partitioning()
                .map(|p| serialize_partitioning(p, self, proto_converter))
                .transpose()?;
            EmberNode {
                sink: None,
                writer: Some(WriterNode {
                    query_id: writer.query_id().to_string(),
                    stage_id: writer.stage_id().0,
                    partitioning,
                    live: writer.is_live(),
                }),
                reader: None,
            }
        } else if let Some(reader) = node.downcast_ref::<ShuffleReaderExec>() {
            let shuffle_partitions = match reader.mode() {
                ReadMode::Shuffle { num_partitions } => num_partitions as u32,
                ReadMode::PerMap => 0,
            };
            EmberNode {
                writer: None,
                sink: None,
                reader: Some(ReaderNode {
                    query_id: reader.query_id().to_string(),
                    stage_id: reader.stage_id().0,
                    schema: Some(reader.schema().as_ref().try_into()?),
                    shuffle_partitions,
                    num_maps: reader.num_maps() as u32,
                    locations: reader
                        .locations()
                        .iter()
                        .map(|l| LocationNode {
                            map_partition: l.map_partition,
                            attempt: l.attempt,
                            executor_id: l.executor_id.0.clone(),
                            flight_address: l.flight_address.clone(),
                            host_key: l.host_key.clone(),
                            work_dir: l.work_dir.display().to_string(),
                        })
                        .collect(),
                    partitioning: Some(serialize_partitioning(
                        reader.properties().output_partitioning(),
                        self,
                        proto_converter,
                    )?),
                    equivalence: Some(encode_equivalence(
                        reader.properties().equivalence_properties(),
                        self,
                        proto_converter,
                    )?),
                    specs: reader
                        .specs()
                        .unwrap_or_default()
                        .iter()
                        .map(|s| ReadSpecNode {
                            partition_start: s.partitions.start,
                            partition_end: s.partitions.end,
                            map_start: s.maps.start,
                            map_end: s.maps.end,
                        })
                        .collect(),
                }),
            }
        } else if let Some(sink) = node.downcast_ref::<DistributedSinkExec>() {
            EmberNode {
                writer: None,
                reader: None,
                sink: Some(SinkNode {
                    staging: sink.staging().to_string(),
                    single_file: sink.single_file().map(str::to_string),
                    sink_plan: encode_plan(sink.sink_plan())?,
                }),
            }
        } else {
            return Err(proto_err(format!("cannot encode {}", node.name())));
        };
        message.encode(buf).map_err(proto_err)
    }
}

/// Encodes like datafusion-proto's default converter, except that a scalar subquery whose value
/// the coordinator has already computed travels as a literal (see [`crate::subquery`]).
#[derive(Debug, Default, Clone, Copy)]
struct EmberProtoConverter;

impl PhysicalProtoConverterExtension for EmberProtoConverter {
    fn proto_to_execution_plan(
        &self,
        proto: &protobuf::PhysicalPlanNode,
        ctx: &PhysicalPlanDecodeContext<'_>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        proto.try_into_physical_plan_with_context(ctx, self)
    }

    fn execution_plan_to_proto(
        &self,
        plan: &Arc<dyn ExecutionPlan>,
        codec: &dyn PhysicalExtensionCodec,
    ) -> Result<protobuf::PhysicalPlanNode> {
        if let Some(source) = plan.downcast_ref::<DataSourceExec>()
            && let Some(scan) = source.data_source().downcast_ref::<FileScanConfig>()
            && !scan
                .file_source()
                .table_schema()
                .virtual_columns()
                .is_empty()
        {
            // Virtual columns (`file_row_index()`) are not part of the scan's protobuf.
            return Err(proto_err("cannot encode a scan with virtual columns"));
        }
        if let Some(aggregate) = plan.downcast_ref::<AggregateExec>() {
            let group_by = aggregate.group_expr();
            if group_by.expr().is_empty() && !group_by.groups().is_empty() {
                // Grouping sets are sent as one flat list of flags per expression; with no
                // expressions, how many empty sets there were (`GROUPING SETS (())`) is lost.
                return Err(proto_err("cannot encode grouping sets without expressions"));
            }
        }
        let mut node = protobuf::PhysicalPlanNode::try_from_physical_plan_with_converter(
            Arc::clone(plan),
            codec,
            self,
        )?;
        keep_ignore_nulls(plan, &mut node);
        Ok(node)
    }

    fn proto_to_physical_expr(
        &self,
        proto: &protobuf::PhysicalExprNode,
        input_schema: &Schema,
        ctx: &PhysicalPlanDecodeContext<'_>,
    ) -> Result<Arc<dyn PhysicalExpr>> {
        parse_physical_expr_with_converter(proto, input_schema, ctx, self)
    }

    fn physical_expr_to_proto(
        &self,
        expr: &Arc<dyn PhysicalExpr>,
        codec: &dyn PhysicalExtensionCodec,
    ) -> Result<protobuf::PhysicalExprNode> {
        if let Some(subquery) = expr.downcast_ref::<ScalarSubqueryExpr>() {
            // Evaluating reads the value the coordinator stored; it fails if there is none yet.
            let empty = RecordBatch::new_empty(Arc::new(Schema::empty()));
            let ColumnarValue::Scalar(value) = subquery.evaluate(&empty)? else {
                return Err(proto_err("a scalar subquery evaluated to an array"));
            };
            let literal: Arc<dyn PhysicalExpr> = Arc::new(Literal::new(value));
            return serialize_physical_expr_with_converter(&literal, codec, self);
        }
        if let Some(literal) = expr.downcast_ref::<Literal>()
            && let ScalarValue::Float16(value) = literal.value()
        {
            // The protobuf scalar has no half float and sends it as a Float32, which makes
            // `f16_col + 1` a Float16 + Float32 the kernels refuse: send a cast back instead.
            let widened = Arc::new(Literal::new(ScalarValue::Float32(value.map(f32::from))));
            let cast: Arc<dyn PhysicalExpr> =
                Arc::new(CastExpr::new(widened, DataType::Float16, None));
            return serialize_physical_expr_with_converter(&cast, codec, self);
        }
        serialize_physical_expr_with_converter(expr, codec, self)
    }
}

fn encode_equivalence(
    equivalence: &EquivalenceProperties,
    codec: &dyn PhysicalExtensionCodec,
    converter: &dyn PhysicalProtoConverterExtension,
) -> Result<EquivalenceNode> {
    let orderings = equivalence
        .oeq_class()
        .iter()
        .map(|ordering| {
            Ok(protobuf::PhysicalSortExprNodeCollection {
                physical_sort_expr_nodes: serialize_physical_sort_exprs(
                    ordering.iter().cloned(),
                    codec,
                    converter,
                )?,
            })
        })
        .collect::<Result<_>>()?;
    let classes = equivalence
        .eq_group()
        .iter()
        .filter(|class| class.len() > 1)
        .map(|class| {
            Ok(ExprsNode {
                exprs: class
                    .iter()
                    .map(|expr| converter.physical_expr_to_proto(expr, codec))
                    .collect::<Result<_>>()?,
            })
        })
        .collect::<Result<_>>()?;
    let constants = equivalence
        .constants()
        .into_iter()
        .map(|constant| {
            let (uniform, value) = match &constant.across_partitions {
                AcrossPartitions::Heterogeneous => (false, None),
                AcrossPartitions::Uniform(value) => (true, value.as_ref()),
            };
            Ok(ConstantNode {
                expr: Some(converter.physical_expr_to_proto(&constant.expr, codec)?),
                uniform,
                value: value.map(protobuf::ScalarValue::try_from).transpose()?,
            })
        })
        .collect::<Result<_>>()?;
    Ok(EquivalenceNode {
        orderings,
        classes,
        constants,
    })
}

fn decode_equivalence(
    node: &EquivalenceNode,
    schema: &SchemaRef,
    ctx: &PhysicalPlanDecodeContext<'_>,
    converter: &dyn PhysicalProtoConverterExtension,
) -> Result<EquivalenceProperties> {
    let orderings = node
        .orderings
        .iter()
        .map(|o| parse_physical_sort_exprs(&o.physical_sort_expr_nodes, ctx, schema, converter))
        .collect::<Result<Vec<_>>>()?;
    let mut equivalence = EquivalenceProperties::new_with_orderings(Arc::clone(schema), orderings);
    for class in &node.classes {
        let exprs = class
            .exprs
            .iter()
            .map(|e| converter.proto_to_physical_expr(e, schema, ctx))
            .collect::<Result<Vec<_>>>()?;
        if let Some((first, rest)) = exprs.split_first() {
            for other in rest {
                equivalence.add_equal_conditions(Arc::clone(first), Arc::clone(other))?;
            }
        }
    }
    let constants = node
        .constants
        .iter()
        .map(|c| {
            let expr = c
                .expr
                .as_ref()
                .ok_or_else(|| proto_err("constant without expression"))?;
            let across = if c.uniform {
                AcrossPartitions::Uniform(c.value.as_ref().map(ScalarValue::try_from).transpose()?)
            } else {
                AcrossPartitions::Heterogeneous
            };
            Ok(ConstExpr::new(
                converter.proto_to_physical_expr(expr, schema, ctx)?,
                across,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    equivalence.add_constants(constants)?;
    Ok(equivalence)
}

/// datafusion-proto sends a CSV writer's unset date and time formats as empty strings and
/// decodes them as formats: every date and timestamp would be written as an empty field. An
/// empty format is put back to unset. `None` when there is nothing to repair.
fn unset_empty_csv_formats(sink: &dyn DataSink) -> Option<Arc<dyn DataSink>> {
    let csv = sink.downcast_ref::<CsvSink>()?;
    let options = csv.writer_options();
    let written = &options.writer_options;
    let empty = |format: Option<&str>| format.is_some_and(str::is_empty);
    if ![
        written.date_format(),
        written.datetime_format(),
        written.time_format(),
        written.timestamp_format(),
        written.timestamp_tz_format(),
    ]
    .into_iter()
    .any(empty)
    {
        return None;
    }
    let keep = |format: Option<&str>| format.filter(|f| !f.is_empty()).map(str::to_string);
    let mut builder = WriterBuilder::new()
        .with_header(written.header())
        .with_delimiter(written.delimiter())
        .with_quote(written.quote())
        .with_escape(written.escape())
        .with_double_quote(written.double_quote())
        .with_null(written.null().to_string())
        .with_quote_style(written.quote_style())
        .with_ignore_leading_whitespace(written.ignore_leading_whitespace())
        .with_ignore_trailing_whitespace(written.ignore_trailing_whitespace());
    if let Some(format) = keep(written.date_format()) {
        builder = builder.with_date_format(format);
    }
    if let Some(format) = keep(written.datetime_format()) {
        builder = builder.with_datetime_format(format);
    }
    if let Some(format) = keep(written.time_format()) {
        builder = builder.with_time_format(format);
    }
    if let Some(format) = keep(written.timestamp_format()) {
        builder = builder.with_timestamp_format(format);
    }
    if let Some(format) = keep(written.timestamp_tz_format()) {
        builder = builder.with_timestamp_tz_format(format);
    }
    let mut fixed = options.clone();
    fixed.writer_options = builder;
    Some(Arc::new(CsvSink::new(csv.config().clone(), fixed)))
}

/// datafusion-proto writes `ignore_nulls: false` for every window UDF (`first_value`,
/// `last_value`, `nth_value`, ...), so `IGNORE NULLS` would be lost on the way to the executor;
/// the decoder does read the field. `WindowUDFExpr` has no accessor for the flag, so it is read
/// from its `Debug` form, whose last field it is.
fn keep_ignore_nulls(plan: &Arc<dyn ExecutionPlan>, node: &mut protobuf::PhysicalPlanNode) {
    let window_exprs = if let Some(window) = plan.downcast_ref::<BoundedWindowAggExec>() {
        window.window_expr()
    } else if let Some(window) = plan.downcast_ref::<WindowAggExec>() {
        window.window_expr()
    } else {
        return;
    };
    let Some(protobuf::physical_plan_node::PhysicalPlanType::Window(window_node)) =
        node.physical_plan_type.as_mut()
    else {
        return;
    };
    for (expr, proto) in window_exprs.iter().zip(window_node.window_expr.iter_mut()) {
        let Some(standard) = expr.as_any().downcast_ref::<StandardWindowExpr>() else {
            continue;
        };
        let function = standard.get_standard_func_expr();
        if let Some(udf) = function.as_any().downcast_ref::<WindowUDFExpr>() {
            proto.ignore_nulls |= format!("{udf:?}").ends_with("ignore_nulls: true }");
        }
    }
}

/// Encodes a task's fragment.
pub fn encode_plan(plan: Arc<dyn ExecutionPlan>) -> Result<Vec<u8>> {
    Ok(
        datafusion_proto::bytes::physical_plan_to_bytes_with_proto_converter(
            plan,
            &EmberCodec,
            &EmberProtoConverter,
        )?
        .to_vec(),
    )
}

/// Decodes a task's fragment in the context it will run in.
pub fn decode_plan(bytes: &[u8], ctx: &TaskContext) -> Result<Arc<dyn ExecutionPlan>> {
    datafusion_proto::bytes::physical_plan_from_bytes_with_extension_codec(bytes, ctx, &EmberCodec)
}
