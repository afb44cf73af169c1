//! The backup file: a consistent copy of the replicated state at one applied index, with what
//! is needed to trust it before anything is written from it.
//!
//! ```text
//! MAGIC (8 bytes) | header_len: u32 LE | header (postcard) | crc32(header): u32 LE | state
//! ```
//!
//! The header names the format version, the Raft index and term the state was taken at, when and
//! from which node, the state's length and its SHA-256. A file is accepted only whole: the magic,
//! the header's checksum, the state's length and its digest must all match (a truncated, damaged
//! or foreign file is refused with what is wrong), and the state must decode.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const MAGIC: &[u8; 8] = b"BLXBKUP1";
pub const VERSION: u32 = 1;
/// Largest header accepted (it holds a few numbers and a digest).
const MAX_HEADER: usize = 64 * 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub version: u32,
    /// The Raft entry the state includes everything up to.
    pub index: u64,
    pub term: u64,
    /// Wall clock of the node that made it, ms since the Unix epoch.
    pub created_ms: u64,
    pub source_node: u64,
    pub state_len: u64,
    pub sha256: [u8; 32],
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BackupError {
    #[error("not a Blixard backup (no {} header)", String::from_utf8_lossy(MAGIC))]
    NotABackup,
    #[error("the backup is cut short: {0}")]
    Truncated(&'static str),
    #[error("the backup's header is damaged: {0}")]
    BadHeader(String),
    #[error("backup format version {0} is not supported (this version reads {VERSION})")]
    Version(u32),
    #[error("the backup is cut short: its state is {got} bytes, its header says {want}")]
    CutShort { got: u64, want: u64 },
    #[error("the backup has {0} bytes past its end")]
    Trailing(u64),
    #[error("the backup's state does not match its checksum (damaged)")]
    Checksum,
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// The whole file for `state` (an export of the state machine) taken at `index`/`term`.
pub fn encode(index: u64, term: u64, created_ms: u64, source_node: u64, state: &[u8]) -> Vec<u8> {
    let header = Header {
        version: VERSION,
        index,
        term,
        created_ms,
        source_node,
        state_len: state.len() as u64,
        sha256: sha256(state),
    };
    let h = postcard::to_stdvec(&header).unwrap_or_default();
    let mut out = Vec::with_capacity(8 + 4 + h.len() + 4 + state.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(h.len() as u32).to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(&crc32fast::hash(&h).to_le_bytes());
    out.extend_from_slice(state);
    out
}

/// Checks a whole file and returns its header and state.
pub fn decode(file: &[u8]) -> Result<(Header, &[u8]), BackupError> {
    if file.len() < MAGIC.len() || &file[..MAGIC.len()] != MAGIC {
        return Err(BackupError::NotABackup);
    }
    let rest = &file[MAGIC.len()..];
    let len = rest.get(..4).ok_or(BackupError::Truncated("no header length"))?;
    let len = u32::from_le_bytes(len.try_into().map_err(|_| BackupError::Truncated("no header length"))?) as usize;
    if len > MAX_HEADER {
        return Err(BackupError::BadHeader(format!("it claims {len} bytes")));
    }
    let h = rest.get(4..4 + len).ok_or(BackupError::Truncated("the header"))?;
    let crc = rest.get(4 + len..8 + len).ok_or(BackupError::Truncated("the header checksum"))?;
    if crc32fast::hash(h).to_le_bytes() != crc {
        return Err(BackupError::BadHeader("checksum mismatch".into()));
    }
    let header: Header = postcard::from_bytes(h).map_err(|e| BackupError::BadHeader(e.to_string()))?;
    if header.version != VERSION {
        return Err(BackupError::Version(header.version));
    }
    let state = &rest[8 + len..];
    let got = state.len() as u64;
    if got < header.state_len {
        return Err(BackupError::CutShort { got, want: header.state_len });
    }
    if got > header.state_len {
        return Err(BackupError::Trailing(got - header.state_len));
    }
    if sha256(state) != header.sha256 {
        return Err(BackupError::Checksum);
    }
    Ok((header, state))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_round_trips_and_every_kind_of_damage_is_named() {
        let f = encode(42, 7, 1_000, 3, b"the state");
        let (h, s) = decode(&f).unwrap();
        assert_eq!((h.index, h.term, h.source_node, s), (42, 7, 3, &b"the state"[..]));

        assert_eq!(decode(b"PK\x03\x04 a zip file"), Err(BackupError::NotABackup));
        assert_eq!(decode(&f[..10]), Err(BackupError::Truncated("no header length")));
        assert_eq!(decode(&f[..20]), Err(BackupError::Truncated("the header")));
        assert_eq!(decode(&f[..f.len() - 3]), Err(BackupError::CutShort { got: 6, want: 9 }));
        let mut flipped = f.clone();
        let n = flipped.len();
        flipped[n - 2] ^= 1;
        assert_eq!(decode(&flipped), Err(BackupError::Checksum));
        let mut bad_header = f.clone();
        bad_header[14] ^= 1;
        assert!(matches!(decode(&bad_header), Err(BackupError::BadHeader(_))));
        let mut longer = f.clone();
        longer.push(0);
        assert_eq!(decode(&longer), Err(BackupError::Trailing(1)));
    }
}
