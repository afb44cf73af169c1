//! Histories as JSON lines: one operation per line, so a script can append as it goes and a
//! killed run still leaves every finished line readable.
//!
//! ```text
//! {"client":1,"invoke":10,"complete":14,"op":{"put":{"key":"a","value":"1"}},"result":{"ok":"written"}}
//! {"client":2,"invoke":12,"complete":15,"op":{"get":{"key":"a"}},"result":{"ok":{"value":"1"}}}
//! {"client":2,"invoke":16,"op":{"vm_create":{"name":"web"}},"result":"unknown"}
//! ```
//!
//! Inputs: `put {key, value}`, `get {key}`, `delete {key}`, `vm_create {name}`,
//! `vm_delete {name}`. Results: `{"ok": OUTPUT}`, `"fail"`, `"unknown"`; outputs: `"written"`,
//! `{"value": "v" | null}`, `{"existed": bool}`, `"created"`, `"already_exists"`, `"deleted"`,
//! `"not_found"`. `complete` may be left out of a failed or unknown operation. Line N is
//! operation #N in reports; blank lines are errors, so the numbers cannot drift.
//!
//! The input is untrusted: each field is decoded on its own so an error names it, unknown
//! fields are refused, and a line is at most [`MAX_LINE_BYTES`] long.

use std::io::{self, BufRead, Read, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::history::{History, Operation};
use crate::model::Model;

pub const MAX_LINE_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("line {line}: cannot read")]
    Read {
        line: usize,
        #[source]
        source: io::Error,
    },
    #[error("line {line}: longer than {MAX_LINE_BYTES} bytes")]
    TooLong { line: usize },
    #[error("line {line}: empty (each line must be one operation)")]
    Empty { line: usize },
    #[error("line {line}: not valid JSON")]
    Syntax {
        line: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("line {line}: not a JSON object")]
    NotObject { line: usize },
    #[error("line {line}: field `{field}` is missing")]
    Missing { line: usize, field: &'static str },
    #[error("line {line}: field `{field}` is not allowed")]
    Unknown { line: usize, field: String },
    #[error("line {line}: field `{field}` is invalid")]
    Field {
        line: usize,
        field: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

impl ParseError {
    pub fn line(&self) -> usize {
        match self {
            ParseError::Read { line, .. }
            | ParseError::TooLong { line }
            | ParseError::Empty { line }
            | ParseError::Syntax { line, .. }
            | ParseError::NotObject { line }
            | ParseError::Missing { line, .. }
            | ParseError::Unknown { line, .. }
            | ParseError::Field { line, .. } => *line,
        }
    }
}

impl<M: Model> History<M>
where
    M::Input: Serialize + DeserializeOwned,
    M::Output: Serialize + DeserializeOwned,
{
    /// Writes one line per operation.
    pub fn write_json_lines(&self, mut out: impl Write) -> io::Result<()> {
        for op in self.ops() {
            serde_json::to_writer(&mut out, op)?;
            out.write_all(b"\n")?;
        }
        Ok(())
    }

    pub fn to_json_lines(&self) -> String {
        let mut out = Vec::new();
        // Writing plain data into a Vec cannot fail.
        let _ = self.write_json_lines(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Reads a history written by [`History::write_json_lines`] (or by a script, one
    /// operation per line). It is not validated against the model: [`crate::check`] does that.
    pub fn read_json_lines(mut input: impl BufRead) -> Result<Self, ParseError> {
        let mut history = History::new();
        let mut buf = Vec::new();
        let mut line = 0;
        loop {
            buf.clear();
            line += 1;
            let read = input
                .by_ref()
                .take(MAX_LINE_BYTES as u64 + 1)
                .read_until(b'\n', &mut buf)
                .map_err(|source| ParseError::Read { line, source })?;
            if read == 0 {
                return Ok(history);
            }
            if buf.last() == Some(&b'\n') {
                buf.pop();
                if buf.last() == Some(&b'\r') {
                    buf.pop();
                }
            }
            if buf.len() > MAX_LINE_BYTES {
                return Err(ParseError::TooLong { line });
            }
            history.push(parse_line(line, &buf)?);
        }
    }

    pub fn from_json_lines(text: &str) -> Result<Self, ParseError> {
        Self::read_json_lines(text.as_bytes())
    }
}

fn parse_line<I: DeserializeOwned, O: DeserializeOwned>(
    line: usize,
    text: &[u8],
) -> Result<Operation<I, O>, ParseError> {
    if text.iter().all(u8::is_ascii_whitespace) {
        return Err(ParseError::Empty { line });
    }
    let value: Value = serde_json::from_slice(text).map_err(|source| ParseError::Syntax { line, source })?;
    let Value::Object(mut fields) = value else {
        return Err(ParseError::NotObject { line });
    };
    let op = Operation {
        client: required(&mut fields, line, "client")?,
        invoke: required(&mut fields, line, "invoke")?,
        complete: optional(&mut fields, line, "complete")?,
        input: required(&mut fields, line, "op")?,
        result: required(&mut fields, line, "result")?,
    };
    if let Some(field) = fields.keys().next() {
        return Err(ParseError::Unknown { line, field: field.clone() });
    }
    Ok(op)
}

fn required<T: DeserializeOwned>(
    fields: &mut Map<String, Value>,
    line: usize,
    field: &'static str,
) -> Result<T, ParseError> {
    optional(fields, line, field)?.ok_or(ParseError::Missing { line, field })
}

/// An absent field and a `null` one are both `None`.
fn optional<T: DeserializeOwned>(
    fields: &mut Map<String, Value>,
    line: usize,
    field: &'static str,
) -> Result<Option<T>, ParseError> {
    match fields.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => {
            serde_json::from_value(value).map(Some).map_err(|source| ParseError::Field { line, field, source })
        }
    }
}
