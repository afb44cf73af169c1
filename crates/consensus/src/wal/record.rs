//! The record format of log segments, and reading a segment back: where its valid records end,
//! and whether what follows is a torn tail (never acknowledged) or damage (acknowledged data).
//!
//! A record is `len: u32 LE | crc32(kind ++ payload): u32 LE | kind: u8 | payload`, with
//! `len = 1 + payload.len()`. Segments are zeros before any record is written, so a record of
//! length 0 followed by nothing but zeros is the end of the written part.
//!
//! **Torn or damaged.** A crash can tear only what was written after the last completed
//! `fdatasync`: on a machine crash the pages of those writes may reach the disk in any order, so
//! the unsynced tail may hold a bad record *followed by* valid ones, and none of it was ever
//! acknowledged. Everything before the last completed sync was acknowledged and must never be
//! dropped. To tell the two apart the log writes *claims*: a [`K_SYNCED`] record saying "every
//! byte before offset X of this segment was made durable by a completed `fdatasync`". A claim is
//! written only after that sync returned (at the start of the next write, or alone when the log
//! goes idle), so a claim that reached the disk is always true. On reading, a bad record at
//! offset B is a torn tail if no valid claim anywhere in the segment covers B, and damage
//! otherwise.

/// Starts a segment: the entry just before the segment's first one, `(index, term)`.
pub const K_START: u8 = 1;
pub const K_ENTRY: u8 = 2;
pub const K_HARD_STATE: u8 = 3;
/// Entries up to `(index, term)` are no longer needed.
pub const K_COMPACT: u8 = 4;
/// The entries after `(index, term)` are replaced by the ones that follow (a conflicting
/// suffix). Written before an append that overwrites entries, so that the segment alone says
/// where its entries start even when the overwrite reaches below the segment's first entry.
pub const K_TRUNCATE: u8 = 5;
/// A claim: the segment's bytes before this offset are durable (see the module doc).
pub const K_SYNCED: u8 = 6;
/// The identity of the data dir this log belongs to (a random `u128`), in every segment.
pub const K_IDENT: u8 = 7;

/// Largest record accepted when reading (an entry is at most a few MiB; anything larger is junk).
pub const MAX_RECORD: usize = 256 * 1024 * 1024;
/// Bytes of a claim record: header, kind and a `u64`.
pub const CLAIM_LEN: usize = 8 + 1 + 8;

pub fn put_record(buf: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    let mut h = crc32fast::Hasher::new();
    h.update(&[kind]);
    h.update(payload);
    buf.extend_from_slice(&(payload.len() as u32 + 1).to_le_bytes());
    buf.extend_from_slice(&h.finalize().to_le_bytes());
    buf.push(kind);
    buf.extend_from_slice(payload);
}

pub fn pair(a: u64, b: u64) -> [u8; 16] {
    let mut p = [0; 16];
    p[..8].copy_from_slice(&a.to_le_bytes());
    p[8..].copy_from_slice(&b.to_le_bytes());
    p
}

pub fn unpair(p: &[u8]) -> Option<(u64, u64)> {
    let p: &[u8; 16] = p.try_into().ok()?;
    Some((u64::from_le_bytes(p[..8].try_into().ok()?), u64::from_le_bytes(p[8..].try_into().ok()?)))
}

/// One record read back: its kind and payload.
pub struct Rec<'a> {
    pub kind: u8,
    pub payload: &'a [u8],
}

/// How a segment's records end.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// Zeros (or nothing) from here on.
    Clean,
    /// A record that is cut short, fails its checksum, or a zero length with data after it.
    Bad { at: usize, why: &'static str },
}

/// The record at `pos`, if a valid one starts there.
fn record_at(data: &[u8], pos: usize) -> Result<Option<Rec<'_>>, &'static str> {
    let rest = &data[pos..];
    if rest.len() < 8 {
        return if rest.iter().all(|&b| b == 0) { Ok(None) } else { Err("a record header is cut short") };
    }
    let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    if len == 0 {
        return if rest.iter().all(|&b| b == 0) { Ok(None) } else { Err("a zero-length record is followed by data") };
    }
    if len > MAX_RECORD {
        return Err("a record claims an impossible length");
    }
    if rest.len() < 8 + len {
        return Err("a record is cut short");
    }
    let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
    let body = &rest[8..8 + len];
    if crc32fast::hash(body) != crc {
        return Err("a record fails its checksum");
    }
    Ok(Some(Rec { kind: body[0], payload: &body[1..] }))
}

/// Splits a segment into its valid records and says how they end.
pub fn records(data: &[u8]) -> (Vec<Rec<'_>>, usize, End) {
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        match record_at(data, pos) {
            Ok(None) => return (out, pos, End::Clean),
            Ok(Some(r)) => {
                pos += 8 + 1 + r.payload.len();
                out.push(r);
            }
            Err(why) => return (out, pos, End::Bad { at: pos, why }),
        }
    }
}

/// The largest durable offset claimed by any valid claim record from `from` on, found by
/// looking for one at every offset (only a damaged segment is searched this way).
pub fn max_claim_after(data: &[u8], from: usize) -> Option<u64> {
    let mut best = None;
    let want = (1u32 + 8).to_le_bytes();
    let mut pos = from;
    while pos + CLAIM_LEN <= data.len() {
        if data[pos..pos + 4] == want {
            if let Ok(Some(r)) = record_at(data, pos) {
                if r.kind == K_SYNCED {
                    if let Ok(b) = <[u8; 8]>::try_from(r.payload) {
                        best = best.max(Some(u64::from_le_bytes(b)));
                    }
                }
            }
        }
        pos += 1;
    }
    best
}

/// The claims among valid records.
pub fn max_claim(recs: &[Rec<'_>]) -> Option<u64> {
    recs.iter()
        .filter(|r| r.kind == K_SYNCED)
        .filter_map(|r| <[u8; 8]>::try_from(r.payload).ok().map(u64::from_le_bytes))
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(x: u64) -> Vec<u8> {
        let mut b = Vec::new();
        put_record(&mut b, K_SYNCED, &x.to_le_bytes());
        b
    }

    #[test]
    fn records_end_cleanly_at_zeros_and_badly_at_junk() {
        let mut b = Vec::new();
        put_record(&mut b, K_ENTRY, b"one");
        put_record(&mut b, K_ENTRY, b"two");
        let n = b.len();
        b.extend_from_slice(&[0; 64]);
        let (recs, valid, end) = records(&b);
        assert_eq!((recs.len(), valid, end), (2, n, End::Clean));

        b[n + 20] = 1; // data after a zero length
        assert!(matches!(records(&b).2, End::Bad { at, .. } if at == n));
        b[n + 20] = 0;
        b[5] ^= 1; // first record's checksum
        assert!(matches!(records(&b).2, End::Bad { at: 0, why: "a record fails its checksum" }));
    }

    #[test]
    fn claims_are_found_past_a_bad_record() {
        let mut b = Vec::new();
        put_record(&mut b, K_ENTRY, b"payload");
        b[9] ^= 0xff;
        b.extend_from_slice(&[7, 7, 7]);
        let at = b.len();
        b.extend_from_slice(&claim(40));
        b.extend_from_slice(&claim(12));
        assert_eq!(max_claim_after(&b, 0), Some(40));
        assert_eq!(max_claim_after(&b, at + 1), Some(12));
        assert_eq!(max_claim_after(&b[..at], 0), None);
    }
}
