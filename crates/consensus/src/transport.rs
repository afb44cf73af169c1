//! The boundary between the Ready loop and the network.

use raft::eraftpb::Message;

/// Delivers Raft messages to peers.
///
/// To be correct, an implementation must never block the caller (the Ready loop): when a peer
/// is slow or down it drops messages, and Raft retries. It may reorder messages to different
/// peers, never those to one peer when it can help it. It must tell the driver a peer is
/// unreachable only through `reachable`, which is advisory.
pub trait Transport: Send + Sync + 'static {
    fn send(&self, msgs: Vec<Message>);
    /// Whether a recent send to `id` succeeded; used for status and `report_unreachable`.
    fn reachable(&self, id: u64) -> bool;
}

/// A transport for a cluster of one: there is nobody to talk to. Messages to other ids are
/// dropped (they can only exist if membership changed without a real transport).
pub struct Loopback;

impl Transport for Loopback {
    fn send(&self, msgs: Vec<Message>) {
        for m in msgs {
            tracing::debug!(to = m.to, "dropping message: no transport");
        }
    }

    fn reachable(&self, _id: u64) -> bool {
        false
    }
}
