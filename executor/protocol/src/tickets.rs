//! The Flight ticket of one shuffle block: what a reader asks an executor's Flight service for.
//!
//! A ticket is signed with the cluster key by its reader and expires soon after: an executor
//! serves a block only to a member of the cluster, and only the block the ticket names.
//!
//! ```text
//!  ticket = "\xebSH1" | ShuffleTicket { query, stage, map partition, attempt, output partition,
//!                                       live, reader, expiry } | hmac
//! ```
//!
//! Its fields are checked on the way in, so a ticket can only name a block of the work dir.

use std::time::Duration;

use arrow_flight::Ticket;
use ember_planner::ids::{QueryId, StageId};
use ember_planner::shuffle::ShuffleBlock;
use prost::Message;
use tonic::Status;

use crate::credentials::{CredentialError, credential_status, now_ms};
use crate::membership::ClusterKey;
use crate::proto::ShuffleTicket;

const SHUFFLE_MAGIC: &[u8; 4] = b"\xebSH1";

/// How long a ticket is valid: it is made right before the request that carries it, so this
/// only needs to cover clocks that differ between machines.
pub const TICKET_TTL: Duration = Duration::from_secs(300);

/// Whether `bytes` look like a shuffle ticket (as opposed to a client's ticket).
pub fn is_shuffle_ticket(bytes: &[u8]) -> bool {
    bytes.starts_with(SHUFFLE_MAGIC)
}

/// A ticket for `block`, signed for `reader`; `live` asks for the stream of a running result
/// task rather than a committed file.
pub fn encode_ticket(key: &ClusterKey, block: &ShuffleBlock, live: bool, reader: &str) -> Ticket {
    let expires_at_ms = now_ms() + TICKET_TTL.as_millis() as u64;
    encode_ticket_until(key, block, live, reader, expires_at_ms)
}

/// Like [`encode_ticket`], valid until `expires_at_ms` (milliseconds since the Unix epoch).
pub fn encode_ticket_until(
    key: &ClusterKey,
    block: &ShuffleBlock,
    live: bool,
    reader: &str,
    expires_at_ms: u64,
) -> Ticket {
    let ticket = ShuffleTicket {
        query_id: block.query_id.to_string(),
        stage_id: block.stage_id.0,
        map_partition: block.map_partition,
        attempt: block.attempt,
        output_partition: block.output_partition,
        live,
        reader: reader.to_string(),
        expires_at_ms,
    };
    Ticket::new(key.tickets().seal(SHUFFLE_MAGIC, &ticket.encode_to_vec()))
}

/// A ticket's block, whether it asks for a live stream, and its reader, once its signature
/// and expiry are checked.
pub fn decode_ticket(
    key: &ClusterKey,
    ticket: &Ticket,
) -> Result<(ShuffleBlock, bool, String), Status> {
    let payload = key
        .tickets()
        .open(SHUFFLE_MAGIC, "shuffle ticket", &ticket.ticket)
        .map_err(|e| credential_status(&e))?;
    let ticket = ShuffleTicket::decode(payload)
        .map_err(|e| Status::invalid_argument(format!("malformed shuffle ticket: {e}")))?;
    if ticket.expires_at_ms <= now_ms() {
        return Err(credential_status(&CredentialError::Expired(
            "shuffle ticket",
        )));
    }
    let query_id = QueryId::parse(&ticket.query_id)
        .ok_or_else(|| Status::invalid_argument("malformed query id in shuffle ticket"))?;
    let block = ShuffleBlock {
        query_id,
        stage_id: StageId(ticket.stage_id),
        map_partition: ticket.map_partition,
        attempt: ticket.attempt,
        output_partition: ticket.output_partition,
    };
    Ok((block, ticket.live, ticket.reader))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block() -> ShuffleBlock {
        ShuffleBlock {
            query_id: QueryId::random(),
            stage_id: StageId(3),
            map_partition: 7,
            attempt: 2,
            output_partition: 1,
        }
    }

    #[test]
    fn tickets_round_trip_and_refuse_forgeries() {
        let key = ClusterKey::from_secret("s3cret");
        let block = block();
        let ticket = encode_ticket(&key, &block, true, "exec-1");
        assert!(is_shuffle_ticket(&ticket.ticket));
        let (decoded, live, reader) = decode_ticket(&key, &ticket).expect("decodes");
        assert!(live);
        assert_eq!(decoded, block);
        assert_eq!(reader, "exec-1");

        // Garbage, the unsigned tickets of old, another cluster's key, a changed block.
        let code = |t: &Ticket| decode_ticket(&key, t).unwrap_err().code();
        assert_eq!(
            code(&Ticket::new(b"\xff\xff".to_vec())),
            tonic::Code::InvalidArgument
        );
        let unsigned = ShuffleTicket {
            query_id: block.query_id.to_string(),
            expires_at_ms: u64::MAX,
            ..Default::default()
        };
        assert_eq!(
            code(&Ticket::new(unsigned.encode_to_vec())),
            tonic::Code::InvalidArgument
        );
        let other = ClusterKey::from_secret("guess");
        assert_eq!(
            code(&encode_ticket(&other, &block, false, "x")),
            tonic::Code::Unauthenticated
        );
        let mut tampered = ticket.ticket.to_vec();
        tampered[8] ^= 1;
        assert_eq!(code(&Ticket::new(tampered)), tonic::Code::Unauthenticated);

        // Expired, though correctly signed.
        let expired = ShuffleTicket {
            query_id: block.query_id.to_string(),
            expires_at_ms: now_ms() - 1,
            ..Default::default()
        };
        let sealed = key.tickets().seal(SHUFFLE_MAGIC, &expired.encode_to_vec());
        let err = decode_ticket(&key, &Ticket::new(sealed)).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        assert!(err.message().contains("expired"), "{}", err.message());

        // A signed ticket whose query id is a path is still refused.
        let bad_query = ShuffleTicket {
            query_id: "../../etc".into(),
            expires_at_ms: u64::MAX,
            ..Default::default()
        };
        let sealed = key
            .tickets()
            .seal(SHUFFLE_MAGIC, &bad_query.encode_to_vec());
        assert_eq!(code(&Ticket::new(sealed)), tonic::Code::InvalidArgument);
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(crate::fuzz_config(512))]

            /// No random bytes pass as a ticket, with or without the magic in front.
            #[test]
            fn random_bytes_are_never_a_ticket(
                bytes in prop::collection::vec(any::<u8>(), 0..512),
                magic in any::<bool>(),
            ) {
                let key = ClusterKey::from_secret("fuzzing-cluster-secret");
                let bytes = if magic { [SHUFFLE_MAGIC.as_slice(), &bytes].concat() } else { bytes };
                prop_assert!(decode_ticket(&key, &Ticket::new(bytes)).is_err());
            }

            /// A real ticket with one bit flipped, or cut short, is refused.
            #[test]
            fn damaged_tickets_are_refused(
                at in any::<prop::sample::Index>(),
                bit in 0u8..8,
                cut in any::<bool>(),
            ) {
                let key = ClusterKey::from_secret("fuzzing-cluster-secret");
                let mut bytes = encode_ticket(&key, &block(), false, "reader").ticket.to_vec();
                let at = at.index(bytes.len());
                if cut {
                    bytes.truncate(at);
                } else {
                    bytes[at] ^= 1 << bit;
                }
                prop_assert!(decode_ticket(&key, &Ticket::new(bytes)).is_err());
            }
        }
    }
}
