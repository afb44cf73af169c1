//! API tokens: `(hash → record)` in [`Table::Tokens`]. Only the SHA-256 of a token's secret is
//! ever replicated; the secret itself is shown once to whoever created it.
//!
//! Expiry is part of the record: `expires_ms` is cluster time at apply plus the requested TTL,
//! so every node computes the same record. Whoever checks a token compares `expires_ms` with its
//! own clock ([`TokenRecord::expired_at`]); expired records are also dropped at apply time by
//! [`sweep`], so the table stays bounded by the live tokens.

use serde::{Deserialize, Serialize};

use super::{decode, encode};
use crate::command::{CommandError, Outcome, Response};
use crate::spec::ValidationError;
use crate::store::{ReadStore, Store, StoreError, Table};

/// The roles a token may carry, weakest first.
pub const ROLES: [&str; 3] = ["viewer", "operator", "admin"];
/// At most this many tokens exist at once.
pub const MAX_TOKENS: usize = 10_000;
/// The length of a token's public id (hex characters of its hash).
pub const ID_LEN: usize = 12;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Unique, 1-64 characters of `A-Z a-z 0-9 . _ -`.
    pub name: String,
    /// One of [`ROLES`].
    pub role: String,
    /// SHA-256 of the secret (32 bytes).
    pub hash: Vec<u8>,
    /// Cluster time of its creation (ms since the Unix epoch).
    pub created_ms: u64,
    /// When it stops being accepted; `None`: never.
    pub expires_ms: Option<u64>,
}

impl TokenRecord {
    /// Its public id: the first hex characters of its hash (never enough to forge it).
    pub fn id(&self) -> String {
        self.hash.iter().map(|b| format!("{b:02x}")).collect::<String>().chars().take(ID_LEN).collect()
    }

    pub fn expired_at(&self, now_ms: u64) -> bool {
        self.expires_ms.is_some_and(|e| now_ms >= e)
    }
}

fn check_name(name: &str) -> Result<(), ValidationError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new("token name", "must be 1-64 characters of A-Z a-z 0-9 . _ -"))
    }
}

/// Every token, by hash.
pub fn tokens(store: &impl ReadStore) -> Result<Vec<TokenRecord>, StoreError> {
    store.scan(Table::Tokens, b"", usize::MAX)?.iter().map(|(k, v)| decode(Table::Tokens, k, v)).collect()
}

/// The token whose secret hashes to `hash`, if any (expired or not).
pub fn by_hash(store: &impl ReadStore, hash: &[u8]) -> Result<Option<TokenRecord>, StoreError> {
    match store.get(Table::Tokens, hash)? {
        None => Ok(None),
        Some(b) => decode(Table::Tokens, hash, &b).map(Some),
    }
}

/// Drops the tokens that expired by cluster time `now`.
pub fn sweep(store: &mut impl Store, now: u64) -> Result<(), StoreError> {
    for t in tokens(store)? {
        if t.expired_at(now) {
            store.delete(Table::Tokens, &t.hash)?;
        }
    }
    Ok(())
}

pub fn create(
    store: &mut impl Store,
    now: u64,
    name: &str,
    role: &str,
    hash: &[u8],
    ttl_ms: Option<u64>,
) -> Result<Outcome, StoreError> {
    if let Err(e) = check_name(name) {
        return Ok(Err(e.into()));
    }
    if !ROLES.contains(&role) {
        return Ok(Err(ValidationError::new("role", "must be viewer, operator or admin").into()));
    }
    if hash.len() != 32 {
        return Ok(Err(ValidationError::new("token hash", "must be 32 bytes (SHA-256)").into()));
    }
    if ttl_ms == Some(0) {
        return Ok(Err(ValidationError::new("ttl", "must be positive").into()));
    }
    sweep(store, now)?;
    let all = tokens(store)?;
    if all.iter().any(|t| t.name == name) || store.get(Table::Tokens, hash)?.is_some() {
        return Ok(Err(CommandError::AlreadyExists(format!("token {name:?}"))));
    }
    if all.len() >= MAX_TOKENS {
        return Ok(Err(CommandError::Exhausted(format!("at most {MAX_TOKENS} tokens may exist"))));
    }
    let rec = TokenRecord {
        name: name.to_string(),
        role: role.to_string(),
        hash: hash.to_vec(),
        created_ms: now,
        expires_ms: ttl_ms.map(|t| now.saturating_add(t)),
    };
    store.put(Table::Tokens, hash, &encode(&rec))?;
    Ok(Ok(Response::Done))
}

/// Revokes the token named `which`, or whose id is `which`.
pub fn revoke(store: &mut impl Store, which: &str) -> Result<Outcome, StoreError> {
    let found = tokens(store)?.into_iter().find(|t| t.name == which || t.id() == which);
    match found {
        Some(t) => Ok(Ok(Response::Deleted { existed: store.delete(Table::Tokens, &t.hash)? })),
        None => Ok(Err(CommandError::NotFound(format!("token {which:?}")))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;

    fn h(b: u8) -> Vec<u8> {
        vec![b; 32]
    }

    #[test]
    fn create_list_revoke_by_name_and_id() {
        let mut s = MemStore::default();
        assert_eq!(create(&mut s, 1000, "ci", "operator", &h(1), None).unwrap(), Ok(Response::Done));
        let dup = create(&mut s, 1000, "ci", "viewer", &h(2), None).unwrap();
        assert!(matches!(dup, Err(CommandError::AlreadyExists(_))), "{dup:?}");
        create(&mut s, 1000, "ro", "viewer", &h(2), Some(500)).unwrap().unwrap();
        assert_eq!(tokens(&s).unwrap().len(), 2);
        let ro = by_hash(&s, &h(2)).unwrap().unwrap();
        assert_eq!(ro.expires_ms, Some(1500));
        assert!(!ro.expired_at(1499) && ro.expired_at(1500));
        assert_eq!(revoke(&mut s, &ro.id()).unwrap(), Ok(Response::Deleted { existed: true }));
        assert_eq!(revoke(&mut s, "ci").unwrap(), Ok(Response::Deleted { existed: true }));
        assert!(matches!(revoke(&mut s, "ci").unwrap(), Err(CommandError::NotFound(_))));
        assert!(tokens(&s).unwrap().is_empty());
    }

    #[test]
    fn bad_input_is_refused_naming_the_field() {
        let mut s = MemStore::default();
        let e = create(&mut s, 0, "a b", "admin", &h(1), None).unwrap().unwrap_err();
        assert!(e.to_string().contains("token name"), "{e}");
        let e = create(&mut s, 0, "a", "root", &h(1), None).unwrap().unwrap_err();
        assert!(e.to_string().contains("role"), "{e}");
        let e = create(&mut s, 0, "a", "admin", &[1, 2], None).unwrap().unwrap_err();
        assert!(e.to_string().contains("hash"), "{e}");
        assert!(tokens(&s).unwrap().is_empty());
    }

    #[test]
    fn expired_tokens_are_swept_at_apply() {
        let mut s = MemStore::default();
        create(&mut s, 0, "short", "viewer", &h(1), Some(10)).unwrap().unwrap();
        // A new token of the same name is refused while the old one lives, and taken after.
        assert!(create(&mut s, 5, "short", "viewer", &h(2), None).unwrap().is_err());
        create(&mut s, 10, "short", "viewer", &h(2), None).unwrap().unwrap();
        assert_eq!(tokens(&s).unwrap().len(), 1);
    }
}
