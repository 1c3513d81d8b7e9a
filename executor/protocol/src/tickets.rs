//! The Flight ticket of one shuffle block: what a reader asks an executor's Flight service for.
//! Its fields are checked on the way in, so a ticket can only name a block of the work dir.

use arrow_flight::Ticket;
use ember_planner::ids::{QueryId, StageId};
use ember_planner::shuffle::ShuffleBlock;
use prost::Message;
use tonic::Status;

use crate::proto::ShuffleTicket;

/// Encodes a block as a Flight ticket; `live` asks for the stream of a running result task
/// rather than a committed file.
pub fn encode_ticket(block: &ShuffleBlock, live: bool) -> Ticket {
    let ticket = ShuffleTicket {
        query_id: block.query_id.to_string(),
        stage_id: block.stage_id.0,
        map_partition: block.map_partition,
        attempt: block.attempt,
        output_partition: block.output_partition,
        live,
    };
    Ticket::new(ticket.encode_to_vec())
}

/// The block a ticket names and whether it asks for a live stream.
pub fn decode_ticket(ticket: &Ticket) -> Result<(ShuffleBlock, bool), Status> {
    let ticket = ShuffleTicket::decode(ticket.ticket.as_ref())
        .map_err(|e| Status::invalid_argument(format!("malformed shuffle ticket: {e}")))?;
    let query_id = QueryId::parse(&ticket.query_id)
        .ok_or_else(|| Status::invalid_argument("malformed query id in shuffle ticket"))?;
    let block = ShuffleBlock {
        query_id,
        stage_id: StageId(ticket.stage_id),
        map_partition: ticket.map_partition,
        attempt: ticket.attempt,
        output_partition: ticket.output_partition,
    };
    Ok((block, ticket.live))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_round_trip_and_refuse_garbage() {
        let block = ShuffleBlock {
            query_id: QueryId::random(),
            stage_id: StageId(3),
            map_partition: 7,
            attempt: 2,
            output_partition: 1,
        };
        let (decoded, live) = decode_ticket(&encode_ticket(&block, true)).expect("decodes");
        assert!(live);
        assert_eq!(decoded.query_id, block.query_id);
        assert_eq!(decoded.map_partition, 7);
        assert!(decode_ticket(&Ticket::new(b"\xff\xff".to_vec())).is_err());
        let bad_query = ShuffleTicket {
            query_id: "../../etc".into(),
            ..Default::default()
        };
        assert!(decode_ticket(&Ticket::new(bad_query.encode_to_vec())).is_err());
    }
}
