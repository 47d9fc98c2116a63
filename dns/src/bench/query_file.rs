//! dnsperf's query file format: one `name type` per line, encoded once up front so the send loop
//! only copies bytes.

use std::{fs, path::Path, str::FromStr};

use hickory_proto::{
    op::{Message, MessageType, OpCode, Query},
    rr::{Name, RecordType},
};

/// Why a query file could not be used. Parse errors name the line (1-based) and what is wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueryFileError {
    /// The file could not be read.
    #[error("cannot read query file {path}: {source}")]
    Read {
        /// The path that was given.
        path: String,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A line is not `name type`.
    #[error("query file line {line}: {problem}: {text:?}")]
    BadLine {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        problem: String,
        /// The line as written.
        text: String,
    },
    /// The file has no queries at all (only comments or blank lines).
    #[error("query file has no queries (expected lines like `www.example.com A`)")]
    Empty,
}

/// One query of the file, already in wire format with ID 0 (the sender writes its own ID).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchQuery {
    /// The name as written in the file.
    pub name: Name,
    /// The query type.
    pub record_type: RecordType,
    /// The encoded query: header (ID 0, RD set, like dnsperf) and one question, no EDNS.
    pub wire: Vec<u8>,
}

/// Parse a query file's text. Lines starting with `;` or `#` and blank lines are skipped; a
/// missing type means `A`, as in dnsperf.
pub fn parse_query_file(text: &str) -> Result<Vec<BenchQuery>, QueryFileError> {
    let mut queries = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        let bad = |problem: String| QueryFileError::BadLine {
            line: index + 1,
            problem,
            text: raw.to_owned(),
        };
        let mut fields = line.split_whitespace();
        let name_text = fields.next().unwrap_or_default();
        let type_text = fields.next().unwrap_or("A");
        if let Some(extra) = fields.next() {
            return Err(bad(format!(
                "expected `name type`, found an extra field {extra:?}"
            )));
        }
        let mut name = Name::from_ascii(name_text)
            .map_err(|err| bad(format!("invalid name {name_text:?} ({err})")))?;
        name.set_fqdn(true);
        let record_type = parse_record_type(type_text)
            .ok_or_else(|| bad(format!("unknown record type {type_text:?}")))?;
        let wire = encode_query(&name, record_type)
            .map_err(|err| bad(format!("cannot encode the query ({err})")))?;
        queries.push(BenchQuery {
            name,
            record_type,
            wire,
        });
    }
    if queries.is_empty() {
        return Err(QueryFileError::Empty);
    }
    Ok(queries)
}

/// Read and parse a query file.
pub fn load_query_file(path: &Path) -> Result<Vec<BenchQuery>, QueryFileError> {
    let bytes = fs::read(path).map_err(|source| QueryFileError::Read {
        path: path.display().to_string(),
        source,
    })?;
    match String::from_utf8(bytes) {
        Ok(text) => parse_query_file(&text),
        Err(not_text) => {
            let bytes = not_text.as_bytes();
            let bad_at = not_text.utf8_error().valid_up_to();
            let line_start = bytes[..bad_at]
                .iter()
                .rposition(|&byte| byte == b'\n')
                .map_or(0, |newline| newline + 1);
            let line_end = bytes[bad_at..]
                .iter()
                .position(|&byte| byte == b'\n')
                .map_or(bytes.len(), |newline| bad_at + newline);
            Err(QueryFileError::BadLine {
                line: bytes[..line_start]
                    .iter()
                    .filter(|&&byte| byte == b'\n')
                    .count()
                    + 1,
                problem: "not UTF-8 text".into(),
                text: String::from_utf8_lossy(&bytes[line_start..line_end]).into_owned(),
            })
        }
    }
}

fn parse_record_type(text: &str) -> Option<RecordType> {
    let upper = text.to_ascii_uppercase();
    if let Some(number) = upper.strip_prefix("TYPE") {
        return number.parse::<u16>().ok().map(RecordType::from);
    }
    match RecordType::from_str(&upper) {
        Ok(RecordType::Unknown(_)) | Err(_) => None,
        Ok(record_type) => Some(record_type),
    }
}

fn encode_query(
    name: &Name,
    record_type: RecordType,
) -> Result<Vec<u8>, hickory_proto::ProtoError> {
    let mut message = Message::new(0, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(name.clone(), record_type));
    message.to_vec()
}
