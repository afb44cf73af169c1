//! The peer wire format: what one node's Raft messages for another look like on a TCP
//! connection. Pure encoding and decoding, no IO.
//!
//! A connection carries traffic one way, from the node that opened it. It starts with a
//! preamble, then carries frames, each one batch of messages (everything one Ready step had
//! for the receiving node), in order:
//!
//! ```text
//! preamble = MAGIC (8 bytes) | from: u64 LE | addr_len: u16 LE | addr (UTF-8)
//! frame    = len: u32 LE | len bytes of: ( msg_len: u32 LE | msg (eraftpb.Message, protobuf) )*
//! ```
//!
//! `addr` is the sender's advertised address: a node that just joined learns its peers'
//! addresses from it before the replicated member table reaches it. The first byte of
//! [`MAGIC`] is not the first byte of an HTTP/2 connection preface (`P`), so one port serves
//! both the gRPC API and peer connections.

use protobuf::Message as _;
use raft::eraftpb::Message;

pub const MAGIC: &[u8; 8] = b"BLXRAFT1";
/// Largest frame accepted. Frames are filled to [`FRAME_TARGET`]; a message alone may be
/// larger, but raft-rs keeps appends to `max_size_per_msg` (1 MiB) past their first entry, an
/// entry holds one client request (at most `blixard_proto::MAX_MESSAGE_BYTES`, 4 MiB), and a
/// large forwarded proposal is split ([`split_proposal`]).
pub const MAX_FRAME: usize = 16 * 1024 * 1024;
/// Most bytes one frame is filled with before the next one starts.
pub const FRAME_TARGET: usize = 8 * 1024 * 1024;
/// Longest advertised address accepted.
pub const MAX_ADDR: usize = 1024;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("not a peer connection (bad magic)")]
    BadMagic,
    #[error("the sender's address is {0} bytes, more than the {MAX_ADDR} allowed")]
    AddrTooLong(usize),
    #[error("the sender's address is not UTF-8")]
    AddrNotUtf8,
    #[error("frame of {0} bytes is larger than the {MAX_FRAME} allowed")]
    FrameTooLarge(usize),
    #[error("frame is cut short: a message claims {claimed} bytes, {left} are left")]
    Truncated { claimed: usize, left: usize },
    #[error("frame holds an invalid raft message: {0}")]
    BadMessage(String),
}

/// The preamble a connection from node `from`, advertised at `addr`, starts with.
pub fn preamble(from: u64, addr: &str) -> Vec<u8> {
    let addr = &addr.as_bytes()[..addr.len().min(MAX_ADDR)];
    let mut b = Vec::with_capacity(MAGIC.len() + 10 + addr.len());
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&from.to_le_bytes());
    b.extend_from_slice(&(addr.len() as u16).to_le_bytes());
    b.extend_from_slice(addr);
    b
}

/// Checks the fixed part of a preamble (magic, sender id, address length); returns the id and
/// how many address bytes follow.
pub fn preamble_head(head: &[u8; 18]) -> Result<(u64, usize), WireError> {
    if &head[..8] != MAGIC {
        return Err(WireError::BadMagic);
    }
    let from = u64::from_le_bytes(head[8..16].try_into().unwrap_or_default());
    let len = u16::from_le_bytes([head[16], head[17]]) as usize;
    if len > MAX_ADDR {
        return Err(WireError::AddrTooLong(len));
    }
    Ok((from, len))
}

pub fn preamble_addr(b: &[u8]) -> Result<String, WireError> {
    String::from_utf8(b.to_vec()).map_err(|_| WireError::AddrNotUtf8)
}

/// Builds frames from messages in order: each frame stays near [`FRAME_TARGET`] bytes (a lone
/// message larger than that gets a frame of its own).
#[derive(Default)]
pub struct FrameBuilder {
    frames: Vec<Vec<u8>>,
}

impl FrameBuilder {
    pub fn push(&mut self, m: &Message) {
        let size = m.compute_size() as usize;
        let start_new = match self.frames.last() {
            None => true,
            Some(f) => f.len() + 4 + size > FRAME_TARGET + 4 && f.len() > 4,
        };
        if start_new {
            let mut f = Vec::with_capacity(4 + 4 + size);
            f.extend_from_slice(&[0; 4]);
            self.frames.push(f);
        }
        let f = self.frames.last_mut().expect("a frame was just ensured");
        f.extend_from_slice(&(size as u32).to_le_bytes());
        // Writing a well-formed message into a Vec cannot fail.
        let _ = m.write_to_vec(f);
    }

    /// The frames, each with its length filled in.
    pub fn finish(self) -> Vec<Vec<u8>> {
        let mut frames = self.frames;
        for f in &mut frames {
            let len = (f.len() - 4) as u32;
            f[..4].copy_from_slice(&len.to_le_bytes());
        }
        frames
    }
}

/// A proposal larger than [`FRAME_TARGET`] as several, in order, each up to the target (or one
/// entry); any other message as it is.
pub fn split_proposal(mut m: Message) -> Vec<Message> {
    use raft::eraftpb::MessageType;
    if m.get_msg_type() != MessageType::MsgPropose || m.compute_size() as usize <= FRAME_TARGET {
        return vec![m];
    }
    let entries = m.take_entries().into_vec();
    let mut out: Vec<Message> = Vec::new();
    let mut size = 0;
    for e in entries {
        let n = e.compute_size() as usize + 8;
        if out.is_empty() || (size + n > FRAME_TARGET && !out.last().is_some_and(|p| p.entries.is_empty())) {
            out.push(m.clone());
            size = 0;
        }
        size += n;
        out.last_mut().expect("a part was just ensured").mut_entries().push(e);
    }
    out
}

/// Checks a frame's length prefix.
pub fn frame_len(prefix: [u8; 4]) -> Result<usize, WireError> {
    let len = u32::from_le_bytes(prefix) as usize;
    if len > MAX_FRAME {
        return Err(WireError::FrameTooLarge(len));
    }
    Ok(len)
}

/// Decodes a frame's body (what follows its length prefix) into messages.
pub fn decode_frame(mut body: &[u8]) -> Result<Vec<Message>, WireError> {
    let mut out = Vec::new();
    while !body.is_empty() {
        if body.len() < 4 {
            return Err(WireError::Truncated { claimed: 4, left: body.len() });
        }
        let n = u32::from_le_bytes([body[0], body[1], body[2], body[3]]) as usize;
        body = &body[4..];
        if n > body.len() {
            return Err(WireError::Truncated { claimed: n, left: body.len() });
        }
        let m = Message::parse_from_bytes(&body[..n]).map_err(|e| WireError::BadMessage(e.to_string()))?;
        out.push(m);
        body = &body[n..];
    }
    Ok(out)
}

// rust-protobuf messages are built by mutating a default.
#[cfg(test)]
#[allow(clippy::field_reassign_with_default)]
mod tests {
    use super::*;
    use raft::eraftpb::{Entry, MessageType};

    fn msg(to: u64, index: u64, data: usize) -> Message {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        m.to = to;
        m.index = index;
        let mut e = Entry::default();
        e.index = index + 1;
        e.data = vec![7; data].into();
        m.mut_entries().push(e);
        m
    }

    fn body(f: &[u8]) -> &[u8] {
        let len = frame_len(f[..4].try_into().unwrap()).unwrap();
        assert_eq!(len, f.len() - 4);
        &f[4..]
    }

    #[test]
    fn messages_round_trip_in_order() {
        let mut b = FrameBuilder::default();
        let sent: Vec<Message> = (0..5).map(|i| msg(2, i, 10 * i as usize)).collect();
        for m in &sent {
            b.push(m);
        }
        let frames = b.finish();
        assert_eq!(frames.len(), 1);
        assert_eq!(decode_frame(body(&frames[0])).unwrap(), sent);
    }

    #[test]
    fn large_batches_split_into_frames_under_the_limit() {
        let mut b = FrameBuilder::default();
        let sent: Vec<Message> = (0..20).map(|i| msg(2, i, 1024 * 1024)).collect();
        for m in &sent {
            b.push(m);
        }
        let frames = b.finish();
        assert!(frames.len() >= 3, "{} frames", frames.len());
        let mut got = Vec::new();
        for f in &frames {
            assert!(f.len() <= FRAME_TARGET + 4 + 2 * 1024 * 1024);
            got.extend(decode_frame(body(f)).unwrap());
        }
        assert_eq!(got, sent);
    }

    #[test]
    fn a_message_larger_than_the_target_gets_its_own_frame() {
        let mut b = FrameBuilder::default();
        b.push(&msg(2, 1, 10));
        b.push(&msg(2, 2, FRAME_TARGET + 10));
        b.push(&msg(2, 3, 10));
        let frames = b.finish();
        assert_eq!(frames.len(), 3);
    }

    #[test]
    fn a_large_proposal_is_split_in_order_and_each_part_fits_a_frame() {
        let mut p = Message::default();
        p.set_msg_type(MessageType::MsgPropose);
        p.to = 2;
        for i in 0..40u64 {
            let mut e = Entry::default();
            e.data = vec![i as u8; 1024 * 1024].into();
            p.mut_entries().push(e);
        }
        let parts = split_proposal(p.clone());
        assert!(parts.len() >= 5, "{} parts", parts.len());
        let mut got = Vec::new();
        for part in &parts {
            assert_eq!(part.to, 2);
            assert!((part.compute_size() as usize) < MAX_FRAME);
            got.extend(part.entries.iter().cloned());
        }
        assert_eq!(got, p.entries.to_vec());
        assert_eq!(split_proposal(msg(2, 1, 10)), vec![msg(2, 1, 10)], "other messages are left alone");
    }

    #[test]
    fn preamble_round_trips_and_rejects_junk() {
        let p = preamble(7, "10.0.0.1:7001");
        let head: [u8; 18] = p[..18].try_into().unwrap();
        let (from, n) = preamble_head(&head).unwrap();
        assert_eq!((from, n), (7, 13));
        assert_eq!(preamble_addr(&p[18..]).unwrap(), "10.0.0.1:7001");

        let mut http = [0u8; 18];
        http[..8].copy_from_slice(b"PRI * HT");
        assert_eq!(preamble_head(&http), Err(WireError::BadMagic));
        let mut long = head;
        long[16..18].copy_from_slice(&5000u16.to_le_bytes());
        assert_eq!(preamble_head(&long), Err(WireError::AddrTooLong(5000)));
        assert_eq!(preamble_addr(&[0xff, 0xfe]), Err(WireError::AddrNotUtf8));
        assert_ne!(MAGIC[0], b'P', "must differ from the HTTP/2 preface");
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        assert_eq!(frame_len(u32::MAX.to_le_bytes()), Err(WireError::FrameTooLarge(u32::MAX as usize)));
        assert_eq!(decode_frame(&[1, 0]), Err(WireError::Truncated { claimed: 4, left: 2 }));
        assert_eq!(decode_frame(&[9, 0, 0, 0, 1, 2]), Err(WireError::Truncated { claimed: 9, left: 2 }));
        assert!(matches!(decode_frame(&[2, 0, 0, 0, 0xff, 0xff]), Err(WireError::BadMessage(_))));
        assert_eq!(decode_frame(&[]).unwrap(), vec![]);
    }
}
