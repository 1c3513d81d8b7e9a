//! The `FlightSqlService` implementation: checks the caller on every call, then hands each
//! command family to its module.

use std::pin::Pin;
use std::sync::Arc;

use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::metadata::{SqlInfoData, XdbcTypeInfoData};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionBeginSavepointRequest, ActionBeginSavepointResult, ActionBeginTransactionRequest,
    ActionBeginTransactionResult, ActionCancelQueryRequest, ActionCancelQueryResult,
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, ActionEndSavepointRequest, ActionEndTransactionRequest,
    CommandGetCatalogs, CommandGetCrossReference, CommandGetDbSchemas, CommandGetExportedKeys,
    CommandGetImportedKeys, CommandGetPrimaryKeys, CommandGetSqlInfo, CommandGetTableTypes,
    CommandGetTables, CommandGetXdbcTypeInfo, CommandPreparedStatementQuery,
    CommandPreparedStatementUpdate, CommandStatementIngest, CommandStatementQuery,
    CommandStatementUpdate, DoPutPreparedStatementResult, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{
    Action, ActionType, CancelFlightInfoRequest, CancelFlightInfoResult, CancelStatus,
    FlightDescriptor, FlightInfo, HandshakeRequest, HandshakeResponse, Ticket,
};
use datafusion::arrow::array::RecordBatch;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use ember_config::EmberConfig;
use futures::{Stream, StreamExt};
use prost::Message;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{Authenticator, Caller};
use crate::prepared::PreparedStatements;
use crate::results::{ResultStore, ticket_handle};
use crate::{FlightSqlOptions, metadata, session_options, sql_info};
use ember_coordinator::QueryEngine;
use ember_coordinator::Result;
use ember_coordinator::users::Method;

type DoGetStream = <EmberFlightSql as FlightService>::DoGetStream;
type ActionStream = <EmberFlightSql as FlightService>::DoActionStream;

/// The Flight SQL service of one coordinator.
pub(crate) struct EmberFlightSql {
    pub(crate) engine: Arc<QueryEngine>,
    pub(crate) results: Arc<ResultStore>,
    pub(crate) proxy: bool,
    auth: Arc<Authenticator>,
    prepared: PreparedStatements,
    xdbc_types: XdbcTypeInfoData,
    max_message_size: usize,
    pub(crate) max_ingest_bytes: usize,
}

impl EmberFlightSql {
    pub(crate) fn new(
        engine: Arc<QueryEngine>,
        config: &EmberConfig,
        options: FlightSqlOptions,
    ) -> Result<Self> {
        let method = Method::parse(&config.auth.method)?;
        let auth = Authenticator::new(
            options.key.clone(),
            method,
            options.token_ttl,
            Arc::clone(&engine),
            options.sessions,
        );
        let results = ResultStore::new(
            options.key,
            auth.requires_token(),
            options.fetch_timeout,
            options.executor_scheme,
        );
        Ok(Self {
            engine,
            results: Arc::new(results),
            proxy: options.proxy,
            auth: Arc::new(auth),
            prepared: PreparedStatements::default(),
            xdbc_types: metadata::xdbc_types().map_err(|e| {
                ember_coordinator::Error::Unavailable(format!("flight sql type info: {e}"))
            })?,
            max_message_size: options.max_message_size,
            max_ingest_bytes: options.max_ingest_bytes,
        })
    }

    pub(crate) fn max_message_size(&self) -> usize {
        self.max_message_size
    }

    /// Drops unfetched answers and idle sessions every few seconds.
    pub(crate) fn start_janitor(&self) -> tokio::task::JoinHandle<()> {
        let results = Arc::clone(&self.results);
        let auth = Arc::clone(&self.auth);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                tick.tick().await;
                results.drop_expired();
                auth.forget_idle();
            }
        })
    }

    fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        self.auth.check(request.metadata())
    }

    /// `response` with the caller's new token, if this call issued or renewed one.
    fn respond<T>(caller: &Caller, value: T) -> Response<T> {
        let mut response = Response::new(value);
        if let Some(token) = &caller.new_token
            && let Ok(value) = format!("Bearer {token}").parse()
        {
            response.metadata_mut().insert("authorization", value);
        }
        response
    }

    /// A FlightInfo for a metadata answer computed now.
    fn hold_batch(
        &self,
        caller: &Caller,
        batch: RecordBatch,
        descriptor: FlightDescriptor,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = batch.schema();
        let stream = RecordBatchStreamAdapter::new(schema, futures::stream::iter([Ok(batch)]));
        let info = self
            .results
            .hold(caller.user(), Box::pin(stream), descriptor)?;
        Ok(Self::respond(caller, info))
    }
}

fn one_result(message: impl Message) -> Response<ActionStream> {
    let result = arrow_flight::Result::new(message.encode_to_vec());
    Response::new(futures::stream::iter([Ok(result)]).boxed())
}

#[tonic::async_trait]
impl FlightSqlService for EmberFlightSql {
    type FlightService = EmberFlightSql;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<
        Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>,
        Status,
    > {
        let metadata = request.metadata().clone();
        let mut stream = request.into_inner();
        let payload = match stream.next().await {
            Some(Ok(first)) => first.payload.to_vec(),
            _ => vec![],
        };
        let token = self.auth.handshake(&metadata, &payload).await?;
        let response = HandshakeResponse {
            protocol_version: 0,
            payload: token.clone().into(),
        };
        let mut response =
            Response::new(futures::stream::iter([Ok(response)]).boxed() as Pin<Box<_>>);
        let header = format!("Bearer {token}")
            .parse()
            .map_err(|_| Status::internal("cannot encode the token"))?;
        response.metadata_mut().insert("authorization", header);
        Ok(response)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let caller = self.caller(&request)?;
        if query.transaction_id.is_some() {
            return Err(Status::unimplemented("transactions are not supported"));
        }
        let parsed = self.parse_one(&caller, &query.query)?;
        let plan = self
            .engine
            .plan(&caller.session.session, &parsed)
            .await
            .map_err(|e| crate::status::status(&e))?;
        let info = self
            .run_for_info(&caller, parsed, plan, request.into_inner())
            .await?;
        Ok(Self::respond(&caller, info))
    }

    async fn get_flight_info_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let caller = self.caller(&request)?;
        let prepared = self
            .prepared
            .get(&caller, &query.prepared_statement_handle)?;
        let plan = prepared.query_plan()?;
        let info = self
            .run_for_info(&caller, prepared.parsed.clone(), plan, request.into_inner())
            .await?;
        Ok(Self::respond(&caller, info))
    }

    async fn get_flight_info_catalogs(
        &self,
        _query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let caller = self.caller(&request)?;
        let batch = metadata::catalogs(&caller.session.session)?;
        debug_assert_eq!(batch.schema(), metadata::catalogs_schema());
        self.hold_batch(&caller, batch, request.into_inner())
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let caller = self.caller(&request)?;
        let batch = metadata::db_schemas(&caller.session.session, query)?;
        debug_assert_eq!(batch.schema(), metadata::db_schemas_schema());
        self.hold_batch(&caller, batch, request.into_inner())
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let caller = self.caller(&request)?;
        let include_schema = query.include_schema;
        let batch = metadata::tables(&caller.session.session, query).await?;
        debug_assert_eq!(batch.schema(), metadata::tables_schema(include_schema));
        self.hold_batch(&caller, batch, request.into_inner())
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let caller = self.caller(&request)?;
        let mut builder = query.into_builder();
        for table_type in metadata::TABLE_TYPES {
            builder.append(table_type);
        }
        let batch = builder
            .build()
            .map_err(|e| Status::internal(e.to_string()))?;
        self.hold_batch(&caller, batch, request.into_inner())
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let caller = self.caller(&request)?;
        let data: SqlInfoData = sql_info::sql_info(&caller.session.session)?;
        let batch = data
            .record_batch(query.info)
            .map_err(|e| Status::internal(e.to_string()))?;
        self.hold_batch(&caller, batch, request.into_inner())
    }

    async fn get_flight_info_primary_keys(
        &self,
        query: CommandGetPrimaryKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let caller = self.caller(&request)?;
        let batch = metadata::primary_keys(&caller.session.session, query).await?;
        self.hold_batch(&caller, batch, request.into_inner())
    }

    async fn get_flight_info_exported_keys(
        &self,
        _query: CommandGetExportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let caller = self.caller(&request)?;
        self.hold_batch(&caller, metadata::foreign_keys(), request.into_inner())
    }

    async fn get_flight_info_imported_keys(
        &self,
        _query: CommandGetImportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let caller = self.caller(&request)?;
        self.hold_batch(&caller, metadata::foreign_keys(), request.into_inner())
    }

    async fn get_flight_info_cross_reference(
        &self,
        _query: CommandGetCrossReference,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let caller = self.caller(&request)?;
        self.hold_batch(&caller, metadata::foreign_keys(), request.into_inner())
    }

    async fn get_flight_info_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let caller = self.caller(&request)?;
        let batch = self
            .xdbc_types
            .record_batch(query.data_type)
            .map_err(|e| Status::internal(e.to_string()))?;
        self.hold_batch(&caller, batch, request.into_inner())
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let caller = self.caller(&request)?;
        let stream = self
            .results
            .fetch(caller.user(), &ticket_handle(&ticket))
            .await?;
        Ok(Self::respond(&caller, stream))
    }

    async fn do_put_statement_update(
        &self,
        command: CommandStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let caller = self.caller(&request)?;
        if command.transaction_id.is_some() {
            return Err(Status::unimplemented("transactions are not supported"));
        }
        let parsed = self.parse_one(&caller, &command.query)?;
        let plan = self
            .engine
            .plan(&caller.session.session, &parsed)
            .await
            .map_err(|e| crate::status::status(&e))?;
        self.run_update(&caller, parsed, plan).await
    }

    async fn do_put_statement_ingest(
        &self,
        command: CommandStatementIngest,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let caller = self.caller(&request)?;
        self.ingest(&caller, command, request.into_inner()).await
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let caller = self.caller(&request)?;
        let prepared = self
            .prepared
            .get(&caller, &query.prepared_statement_handle)?;
        self.prepared.bind(&prepared, request.into_inner()).await?;
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(query.prepared_statement_handle),
        })
    }

    async fn do_put_prepared_statement_update(
        &self,
        query: CommandPreparedStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let caller = self.caller(&request)?;
        let prepared = self
            .prepared
            .get(&caller, &query.prepared_statement_handle)?;
        let mut stream = request.into_inner();
        // Parameters come with the update when the stream carries data beyond the descriptor.
        let has_rows = {
            let mut pinned = Pin::new(&mut stream);
            matches!(pinned.peek().await, Some(Ok(data)) if !data.data_header.is_empty())
        };
        if has_rows {
            self.prepared.bind(&prepared, stream).await?;
        }
        let mut total = 0;
        for plan in prepared.bound_plans()? {
            total += self
                .run_update(&caller, prepared.parsed.clone(), plan)
                .await?;
        }
        Ok(total)
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let caller = self.caller(&request)?;
        if query.transaction_id.is_some() {
            return Err(Status::unimplemented("transactions are not supported"));
        }
        let parsed = self.parse_one(&caller, &query.query)?;
        let plan = self
            .engine
            .plan(&caller.session.session, &parsed)
            .await
            .map_err(|e| crate::status::status(&e))?;
        self.prepared.create(&caller, parsed, plan)
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<(), Status> {
        let caller = self.caller(&request)?;
        self.prepared
            .close(&caller, &query.prepared_statement_handle)
    }

    async fn do_action_begin_transaction(
        &self,
        _query: ActionBeginTransactionRequest,
        _request: Request<Action>,
    ) -> Result<ActionBeginTransactionResult, Status> {
        Err(Status::unimplemented(
            "transactions are not supported: every statement commits on its own",
        ))
    }

    async fn do_action_end_transaction(
        &self,
        _query: ActionEndTransactionRequest,
        _request: Request<Action>,
    ) -> Result<(), Status> {
        Err(Status::unimplemented(
            "transactions are not supported: every statement commits on its own",
        ))
    }

    async fn do_action_begin_savepoint(
        &self,
        _query: ActionBeginSavepointRequest,
        _request: Request<Action>,
    ) -> Result<ActionBeginSavepointResult, Status> {
        Err(Status::unimplemented("savepoints are not supported"))
    }

    async fn do_action_end_savepoint(
        &self,
        _query: ActionEndSavepointRequest,
        _request: Request<Action>,
    ) -> Result<(), Status> {
        Err(Status::unimplemented("savepoints are not supported"))
    }

    async fn do_action_cancel_query(
        &self,
        query: ActionCancelQueryRequest,
        request: Request<Action>,
    ) -> Result<ActionCancelQueryResult, Status> {
        let caller = self.caller(&request)?;
        let info = FlightInfo::decode(query.info)
            .map_err(|e| Status::invalid_argument(format!("malformed FlightInfo: {e}")))?;
        let cancelled = self.cancel_info(&caller, &info);
        // CANCEL_RESULT_CANCELLED = 1, CANCEL_RESULT_NOT_CANCELLABLE = 3.
        Ok(ActionCancelQueryResult {
            result: if cancelled { 1 } else { 3 },
        })
    }

    async fn do_action_fallback(
        &self,
        request: Request<Action>,
    ) -> Result<Response<ActionStream>, Status> {
        let caller = self.caller(&request)?;
        let action = request.get_ref();
        let body = action.body.as_ref();
        match action.r#type.as_str() {
            "CancelFlightInfo" => {
                let cancel = CancelFlightInfoRequest::decode(body)
                    .map_err(|e| Status::invalid_argument(format!("malformed request: {e}")))?;
                let info = cancel
                    .info
                    .ok_or_else(|| Status::invalid_argument("CancelFlightInfo without info"))?;
                let status = if self.cancel_info(&caller, &info) {
                    CancelStatus::Cancelled
                } else {
                    CancelStatus::NotCancellable
                };
                Ok(one_result(CancelFlightInfoResult::new(status)))
            }
            session_options::SET_SESSION_OPTIONS => {
                let set = session_options::SetSessionOptionsRequest::decode(body)
                    .map_err(|e| Status::invalid_argument(format!("malformed request: {e}")))?;
                let result = session_options::set(&caller.session.session, set);
                Ok(Self::respond(&caller, one_result(result).into_inner()))
            }
            session_options::GET_SESSION_OPTIONS => {
                let result = session_options::get(&caller.session.session);
                Ok(Self::respond(&caller, one_result(result).into_inner()))
            }
            session_options::CLOSE_SESSION => {
                self.auth.close(request.metadata());
                Ok(one_result(session_options::CloseSessionResult {
                    status: session_options::CLOSED,
                }))
            }
            other => Err(Status::invalid_argument(format!(
                "unknown action {other:?}"
            ))),
        }
    }

    async fn list_custom_actions(&self) -> Option<Vec<Result<ActionType, Status>>> {
        let action = |name: &str, description: &str| {
            Ok(ActionType {
                r#type: name.to_string(),
                description: description.to_string(),
            })
        };
        Some(vec![
            action("CancelFlightInfo", "Cancel the query of a FlightInfo"),
            action(
                session_options::SET_SESSION_OPTIONS,
                "Set session options: catalog, schema",
            ),
            action(session_options::GET_SESSION_OPTIONS, "Get session options"),
            action(session_options::CLOSE_SESSION, "Close the session"),
        ])
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

impl EmberFlightSql {
    /// Cancels every endpoint of `info`; true if any was still running.
    fn cancel_info(&self, caller: &Caller, info: &FlightInfo) -> bool {
        let mut cancelled = false;
        for endpoint in &info.endpoint {
            if let Some(ticket) = &endpoint.ticket {
                cancelled |= self.results.cancel(caller.user(), ticket);
            }
        }
        cancelled
    }
}
