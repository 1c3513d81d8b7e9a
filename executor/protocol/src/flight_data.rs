//! Result batches as Flight data for Flight SQL clients, with exactly the schema the FlightInfo
//! announced, whether the coordinator or an executor serves them.

use std::pin::Pin;

use arrow_flight::FlightData;
use arrow_flight::encode::{DictionaryHandling, FlightDataEncoderBuilder};
use arrow_flight::error::FlightError;
use datafusion::arrow::datatypes::SchemaRef;
use futures::{Stream, StreamExt, TryStreamExt};
use tonic::Status;

/// A stream of Flight data as a `do_get` returns it.
pub type FlightDataStream =
    Pin<Box<dyn Stream<Item = Result<FlightData, Status>> + Send + 'static>>;

/// Batches as Flight data with exactly `schema` (dictionaries sent as dictionaries), so every
/// endpoint of a result announces the schema its `FlightInfo` did.
pub fn encode(
    schema: SchemaRef,
    batches: impl Stream<Item = Result<datafusion::arrow::array::RecordBatch, FlightError>>
    + Send
    + 'static,
) -> FlightDataStream {
    FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .with_dictionary_handling(DictionaryHandling::Resend)
        .build(batches)
        .map_err(|e| match e {
            FlightError::Tonic(status) => *status,
            other => Status::internal(other.to_string()),
        })
        .boxed()
}
