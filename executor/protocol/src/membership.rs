//! Cluster membership: who may join the cluster and how each side knows the other.
//!
//! Every coordinator and executor holds the cluster secret (`auth.cluster_secret`). A session
//! opens with a challenge–response in both directions, so the secret never crosses the wire
//! and no answer can be replayed into another session:
//!
//! ```text
//!  coordinator                                          executor
//!    Challenge { nonce_c }  ─────────────────────────►
//!                           ◄──────────────────────── RegisterExecutor { offer, nonce_e,
//!                                                       proof = H(k, nonce_c, offer, nonce_e) }
//!    Registered { id, proof = H(k, nonce_c, nonce_e, id) } ──►  (checked before any task runs)
//! ```
//!
//! `H` is HMAC-SHA256 under a key derived from the secret for this purpose alone; shuffle
//! tickets ([`crate::tickets`]) use another key derived from the same secret.

use prost::Message;

use crate::credentials::SigningKey;
use crate::proto::{RegisterExecutor, RegisterWorker};

/// Bytes of each side's challenge.
pub const NONCE_LEN: usize = 32;

/// The keys derived from the cluster secret. Their bytes never leave this type.
#[derive(Clone, Debug)]
pub struct ClusterKey {
    membership: SigningKey,
    tickets: SigningKey,
}

impl ClusterKey {
    /// The keys of the cluster whose secret is `secret`.
    pub fn from_secret(secret: &str) -> Self {
        Self {
            membership: SigningKey::derived(secret, "ember cluster membership v1"),
            tickets: SigningKey::derived(secret, "ember shuffle tickets v1"),
        }
    }

    pub(crate) fn tickets(&self) -> &SigningKey {
        &self.tickets
    }

    /// The executor's proof for `register` (its `proof` field is ignored) in answer to the
    /// coordinator's `challenge`.
    pub fn executor_proof(&self, challenge: &[u8], register: &RegisterExecutor) -> Vec<u8> {
        let offer = RegisterExecutor {
            proof: vec![],
            ..register.clone()
        };
        self.offer_tag(
            b"executor",
            challenge,
            &offer.encode_to_vec(),
            &register.nonce,
        )
    }

    /// Whether `register` answers `challenge` with a valid proof and a fresh nonce of its own.
    pub fn verify_executor(&self, challenge: &[u8], register: &RegisterExecutor) -> bool {
        let offer = RegisterExecutor {
            proof: vec![],
            ..register.clone()
        };
        self.verify_offer(
            b"executor",
            challenge,
            &offer.encode_to_vec(),
            &register.nonce,
            &register.proof,
        )
    }

    /// A standalone worker's proof for `register` in answer to the coordinator's `challenge`.
    pub fn worker_proof(&self, challenge: &[u8], register: &RegisterWorker) -> Vec<u8> {
        let offer = RegisterWorker {
            proof: vec![],
            ..register.clone()
        };
        self.offer_tag(
            b"worker",
            challenge,
            &offer.encode_to_vec(),
            &register.nonce,
        )
    }

    /// Whether `register` answers `challenge` with a valid worker proof and a fresh nonce.
    pub fn verify_worker(&self, challenge: &[u8], register: &RegisterWorker) -> bool {
        let offer = RegisterWorker {
            proof: vec![],
            ..register.clone()
        };
        self.verify_offer(
            b"worker",
            challenge,
            &offer.encode_to_vec(),
            &register.nonce,
            &register.proof,
        )
    }

    /// `H(k, label, challenge, offer, nonce)`: the label keeps an executor's proof from passing
    /// for a worker's and back.
    fn offer_tag(&self, label: &[u8], challenge: &[u8], offer: &[u8], nonce: &[u8]) -> Vec<u8> {
        self.membership.tag(&[label, challenge, offer, nonce])
    }

    fn verify_offer(
        &self,
        label: &[u8],
        challenge: &[u8],
        offer: &[u8],
        nonce: &[u8],
        proof: &[u8],
    ) -> bool {
        nonce.len() == NONCE_LEN
            && nonce != challenge
            && self
                .membership
                .verify_tag(&[label, challenge, offer, nonce], proof)
    }

    /// The coordinator's proof that it holds the secret too, binding the id it assigned.
    pub fn coordinator_proof(&self, challenge: &[u8], nonce: &[u8], executor_id: &str) -> Vec<u8> {
        self.membership
            .tag(&[b"coordinator", challenge, nonce, executor_id.as_bytes()])
    }

    /// Whether `proof` is the coordinator's answer to the executor's `nonce`.
    pub fn verify_coordinator(
        &self,
        challenge: &[u8],
        nonce: &[u8],
        executor_id: &str,
        proof: &[u8],
    ) -> bool {
        self.membership.verify_tag(
            &[b"coordinator", challenge, nonce, executor_id.as_bytes()],
            proof,
        )
    }
}

/// What a member needs to take part in the cluster: the keys derived from the secret, and TLS
/// for the cluster's ports when it is configured.
#[derive(Clone, Debug)]
pub struct ClusterCredentials {
    /// Proves membership and signs shuffle tickets.
    pub key: ClusterKey,
    /// TLS between members; `None`: plaintext (cluster ports on a trusted network only).
    pub tls: Option<crate::tls::ClusterTls>,
}

/// A fresh random challenge.
pub fn nonce() -> Vec<u8> {
    crate::credentials::random_id(NONCE_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer() -> RegisterExecutor {
        RegisterExecutor {
            host: "10.0.0.7".into(),
            flight_port: 50060,
            slots: 4,
            cores: 4,
            memory: 1 << 30,
            host_key: "machine".into(),
            work_dir: "/var/lib/ember/work".into(),
            nonce: nonce(),
            proof: vec![],
            name: "executor-1".into(),
            allocation_id: "local-1".into(),
        }
    }

    #[test]
    fn both_sides_prove_the_secret_and_nothing_else_passes() {
        let key = ClusterKey::from_secret("s3cret");
        let challenge = nonce();
        let mut register = offer();
        register.proof = key.executor_proof(&challenge, &register);
        assert!(key.verify_executor(&challenge, &register));

        // Another secret, another challenge (a replay), a changed offer: all refused.
        let other = ClusterKey::from_secret("guess");
        assert!(!other.verify_executor(&challenge, &register));
        assert!(!key.verify_executor(&nonce(), &register));
        for change in [
            |r: &mut RegisterExecutor| r.slots = u32::MAX,
            |r: &mut RegisterExecutor| r.host = "evil.example".into(),
            |r: &mut RegisterExecutor| r.work_dir = "/etc".into(),
            |r: &mut RegisterExecutor| r.allocation_id = "local-2".into(),
            |r: &mut RegisterExecutor| r.proof.clear(),
            |r: &mut RegisterExecutor| r.nonce = vec![0; 3],
        ] {
            let mut changed = register.clone();
            change(&mut changed);
            assert!(!key.verify_executor(&challenge, &changed));
        }
        // A worker proves the secret the same way, under its own label: neither proof passes
        // for the other.
        let mut worker = RegisterWorker {
            host: "machine".into(),
            cores: 8,
            memory: 1 << 34,
            work_dir: "/var/lib/ember/work".into(),
            nonce: nonce(),
            proof: vec![],
            name: "worker-1".into(),
        };
        worker.proof = key.worker_proof(&challenge, &worker);
        assert!(key.verify_worker(&challenge, &worker));
        assert!(!other.verify_worker(&challenge, &worker));
        let mut more = worker.clone();
        more.cores = 4096;
        assert!(!key.verify_worker(&challenge, &more));
        let mut as_executor = register.clone();
        as_executor.proof = key.worker_proof(&challenge, &worker);
        assert!(!key.verify_executor(&challenge, &as_executor));

        // Echoing the coordinator's challenge as one's own is refused (a reflection).
        let mut echo = offer();
        echo.nonce = challenge.clone();
        echo.proof = key.executor_proof(&challenge, &echo);
        assert!(!key.verify_executor(&challenge, &echo));

        let proof = key.coordinator_proof(&challenge, &register.nonce, "exec-1");
        assert!(key.verify_coordinator(&challenge, &register.nonce, "exec-1", &proof));
        assert!(!key.verify_coordinator(&challenge, &register.nonce, "exec-2", &proof));
        assert!(!other.verify_coordinator(
            &challenge,
            &register.nonce,
            "exec-1",
            &other.coordinator_proof(&nonce(), &register.nonce, "exec-1")
        ));
        // An executor's proof is never a coordinator's.
        assert!(!key.verify_coordinator(&challenge, &register.nonce, "", &register.proof));
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(crate::fuzz_config(512))]

            /// Registrations with arbitrary fields and proofs never pass without the secret,
            /// and the coordinator's proof is never forged by random bytes either.
            #[test]
            fn random_registrations_never_prove_the_secret(
                host in ".{0,64}",
                flight_port in any::<u32>(),
                slots in any::<u32>(),
                memory in any::<u64>(),
                work_dir in ".{0,64}",
                nonce in prop::collection::vec(any::<u8>(), 0..64),
                proof in prop::collection::vec(any::<u8>(), 0..64),
                challenge in prop::collection::vec(any::<u8>(), 0..64),
            ) {
                let key = ClusterKey::from_secret("fuzzing-cluster-secret");
                let register = RegisterExecutor {
                    host,
                    flight_port,
                    slots,
                    cores: 1,
                    memory,
                    host_key: String::new(),
                    work_dir,
                    nonce: nonce.clone(),
                    proof: proof.clone(),
                    name: String::new(),
                    allocation_id: String::new(),
                };
                prop_assert!(!key.verify_executor(&challenge, &register));
                prop_assert!(!key.verify_coordinator(&challenge, &nonce, "exec-1", &proof));
            }
        }
    }
}
