//! The peer wire from arbitrary bytes: preamble head and address, frame length prefix, frame
//! body, and the validation each decoded Raft message goes through before it is stepped.
//! Errors, never a panic.

#![allow(clippy::field_reassign_with_default)]

use blixard_consensus::validate::{check, Local};
use blixard_node::transport::wire::{decode_frame, frame_len, preamble, preamble_addr, preamble_head, FrameBuilder};
use proptest::prelude::*;
use raft::eraftpb::{Entry, Message, MessageType};

fn validate_all(frame: &[u8]) {
    if let Ok(messages) = decode_frame(frame) {
        let member = |id: u64| id < 4;
        let term_at = |i: u64| (i <= 10).then_some(1);
        let local = Local {
            id: 1,
            term: 2,
            leader: 2,
            in_lease: true,
            is_leader: false,
            last_index: 10,
            committed: 5,
            applied: 5,
            member: &member,
            term_at: &term_at,
        };
        for m in &messages {
            let _ = check(m, &local);
        }
    }
}

fn message(to: u64, index: u64, entries: usize, data: usize) -> Message {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgAppend);
    m.from = 2;
    m.to = to;
    m.term = 2;
    m.index = index;
    for i in 0..entries {
        let mut e = Entry::default();
        e.index = index + 1 + i as u64;
        e.term = 2;
        e.data = vec![7; data].into();
        m.mut_entries().push(e);
    }
    m
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn preambles_parse_or_fail(head in prop::array::uniform18(any::<u8>()), addr in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = preamble_head(&head);
        let _ = preamble_addr(&addr);
        let _ = frame_len([head[0], head[1], head[2], head[3]]);
    }

    #[test]
    fn random_frames_decode_or_fail(body in prop::collection::vec(any::<u8>(), 0..1024)) {
        validate_all(&body);
    }

    /// Real frames with bytes flipped and cut short reach deeper than random bytes.
    #[test]
    fn damaged_frames_decode_or_fail(
        n in 1usize..4, entries in 0usize..4, data in 0usize..64,
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut b = FrameBuilder::default();
        for i in 0..n {
            b.push(&message(1, i as u64 * 3, entries, data));
        }
        for frame in b.finish() {
            // A built frame starts with its length prefix.
            let mut body = frame[4.min(frame.len())..].to_vec();
            for (at, byte) in &flips {
                if !body.is_empty() {
                    let i = at.index(body.len());
                    body[i] ^= byte;
                }
            }
            let keep = cut.index(body.len() + 1);
            validate_all(&body[..keep]);
            validate_all(&body);
        }
    }

    #[test]
    fn own_preambles_parse_back(from in any::<u64>(), addr in "[a-z0-9.:]{0,300}") {
        let p = preamble(from, &addr);
        let head: [u8; 18] = p[..18].try_into().expect("18 bytes");
        let (id, len) = preamble_head(&head).expect("our own preamble");
        prop_assert_eq!(id, from);
        prop_assert_eq!(preamble_addr(&p[18..18 + len]).expect("utf-8"), addr[..len].to_string());
    }
}
