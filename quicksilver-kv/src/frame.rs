//! Replication frames (`docs/kv-replication.md`): `length u32 | type u8 | payload`, decoded
//! from untrusted bytes into typed [`Frame`]s. Every size is checked before it is used, so
//! garbage, truncation and oversized lengths give a [`FrameError`], never a panic or a large
//! allocation.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::LogRecord;

/// Largest frame accepted (a record holds at most one batch; batches are at most 64 MiB).
pub const MAX_FRAME_LEN: usize = (64 << 20) + 1024;
/// The first bytes of every HELLO payload.
pub const HELLO_MAGIC: &[u8; 8] = b"QSKVREPL";

const T_HELLO: u8 = 0x01;
const T_WELCOME: u8 = 0x02;
const T_RECORD: u8 = 0x03;
const T_HEARTBEAT: u8 = 0x04;
const T_SNAPSHOT_CHUNK: u8 = 0x05;
const T_SNAPSHOT_END: u8 = 0x06;
const T_ERROR: u8 = 0x07;

/// One replication frame.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Frame {
    /// Replica -> upstream: where the replica stands (cluster id 0 asks for a snapshot).
    Hello {
        /// The protocol version the replica speaks.
        version: u16,
        /// The replica's cluster id, or 16 zero bytes to be bootstrapped.
        cluster_id: [u8; 16],
        /// The replica's last applied sequence.
        after: u64,
        /// The replica's chain checksum at `after`.
        chain: [u8; 32],
    },
    /// Upstream -> replica: the session is accepted.
    Welcome {
        /// The protocol version the upstream speaks.
        version: u16,
        /// The upstream's cluster id.
        cluster_id: [u8; 16],
        /// The upstream's head sequence.
        head: u64,
        /// Where the root's HTTP API listens, passed down the tree so a replica's 403 can
        /// name it (`None` when the upstream does not know).
        root_api: Option<SocketAddr>,
    },
    /// Upstream -> replica: one log record, bytes exactly as stored.
    Record(LogRecord),
    /// Upstream -> replica: nothing to send; here is my head.
    Heartbeat {
        /// The upstream's head sequence.
        head: u64,
        /// The upstream's clock, Unix milliseconds.
        clock_ms: u64,
    },
    /// Upstream -> replica: the next bytes of a snapshot stream.
    SnapshotChunk(Vec<u8>),
    /// Upstream -> replica: the snapshot is complete; it was taken at `seq`.
    SnapshotEnd {
        /// The snapshot's sequence.
        seq: u64,
    },
    /// Upstream -> replica: the session is refused; the upstream closes after it.
    Error {
        /// Why (see the protocol document for the codes).
        code: u8,
        /// A human-readable reason (lossy UTF-8).
        message: String,
    },
}

/// Why bytes are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix is zero or over [`MAX_FRAME_LEN`].
    #[error("frame length {0} out of bounds (1..={MAX_FRAME_LEN})")]
    LengthOutOfBounds(u64),
    /// The type byte names no frame.
    #[error("unknown frame type {0:#04x}")]
    UnknownType(u8),
    /// The payload's size does not fit the frame type.
    #[error("{kind} payload of {len} bytes (expected {expected})")]
    BadPayloadLength {
        /// The frame type.
        kind: &'static str,
        /// The payload's length.
        len: usize,
        /// What the type needs.
        expected: &'static str,
    },
    /// A HELLO without the protocol's magic bytes.
    #[error("HELLO without the QSKVREPL magic")]
    BadMagic,
}

impl Frame {
    /// The frame's name, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Hello { .. } => "HELLO",
            Self::Welcome { .. } => "WELCOME",
            Self::Record(_) => "RECORD",
            Self::Heartbeat { .. } => "HEARTBEAT",
            Self::SnapshotChunk(_) => "SNAPSHOT_CHUNK",
            Self::SnapshotEnd { .. } => "SNAPSHOT_END",
            Self::Error { .. } => "ERROR",
        }
    }

    /// Encode as `length u32 | type u8 | payload`.
    pub fn encode(&self) -> Vec<u8> {
        let mut payload = Vec::new();
        let kind = match self {
            Self::Hello {
                version,
                cluster_id,
                after,
                chain,
            } => {
                payload.extend_from_slice(HELLO_MAGIC);
                payload.extend_from_slice(&version.to_be_bytes());
                payload.extend_from_slice(cluster_id);
                payload.extend_from_slice(&after.to_be_bytes());
                payload.extend_from_slice(chain);
                T_HELLO
            }
            Self::Welcome {
                version,
                cluster_id,
                head,
                root_api,
            } => {
                payload.extend_from_slice(&version.to_be_bytes());
                payload.extend_from_slice(cluster_id);
                payload.extend_from_slice(&head.to_be_bytes());
                match root_api {
                    None => payload.push(0),
                    Some(addr) => {
                        match addr.ip() {
                            IpAddr::V4(ip) => {
                                payload.push(4);
                                payload.extend_from_slice(&ip.octets());
                            }
                            IpAddr::V6(ip) => {
                                payload.push(6);
                                payload.extend_from_slice(&ip.octets());
                            }
                        }
                        payload.extend_from_slice(&addr.port().to_be_bytes());
                    }
                }
                T_WELCOME
            }
            Self::Record(record) => {
                payload.reserve(40 + record.entry.len());
                payload.extend_from_slice(&record.seq.to_be_bytes());
                payload.extend_from_slice(&record.checksum);
                payload.extend_from_slice(&record.entry);
                T_RECORD
            }
            Self::Heartbeat { head, clock_ms } => {
                payload.extend_from_slice(&head.to_be_bytes());
                payload.extend_from_slice(&clock_ms.to_be_bytes());
                T_HEARTBEAT
            }
            Self::SnapshotChunk(bytes) => {
                payload.extend_from_slice(bytes);
                T_SNAPSHOT_CHUNK
            }
            Self::SnapshotEnd { seq } => {
                payload.extend_from_slice(&seq.to_be_bytes());
                T_SNAPSHOT_END
            }
            Self::Error { code, message } => {
                payload.push(*code);
                payload.extend_from_slice(message.as_bytes());
                T_ERROR
            }
        };
        // Frames we build are far below 4 GiB: records and chunks are bounded by the store's
        // batch and chunk limits.
        let len = (payload.len() + 1) as u32;
        let mut out = Vec::with_capacity(5 + payload.len());
        out.extend_from_slice(&len.to_be_bytes());
        out.push(kind);
        out.extend_from_slice(&payload);
        out
    }
}

/// Check a frame's length prefix (which counts the type byte and the payload).
pub fn check_frame_len(len: u32) -> Result<usize, FrameError> {
    let len = len as usize;
    if len == 0 || len > MAX_FRAME_LEN {
        return Err(FrameError::LengthOutOfBounds(len as u64));
    }
    Ok(len)
}

/// Decode the first frame in `bytes`: `Ok(None)` when more bytes are needed, otherwise the
/// frame and how many bytes it took. A bad length, type or payload is an error: the caller
/// closes the connection.
pub fn decode_frame(bytes: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
    let Some(prefix) = bytes.get(..4) else {
        return Ok(None);
    };
    let len = check_frame_len(u32::from_be_bytes([
        prefix[0], prefix[1], prefix[2], prefix[3],
    ]))?;
    let Some(body) = bytes.get(4..4 + len) else {
        return Ok(None);
    };
    let frame = parse_frame(body[0], &body[1..])?;
    Ok(Some((frame, 4 + len)))
}

fn exact<const N: usize>(
    payload: &[u8],
    kind: &'static str,
    expected: &'static str,
) -> Result<[u8; N], FrameError> {
    <[u8; N]>::try_from(payload).map_err(|_| FrameError::BadPayloadLength {
        kind,
        len: payload.len(),
        expected,
    })
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut out = [0; 8];
    out.copy_from_slice(&bytes[at..at + 8]);
    u64::from_be_bytes(out)
}

fn array_at<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(&bytes[at..at + N]);
    out
}

/// Decode a frame's payload given its type byte.
pub fn parse_frame(kind: u8, payload: &[u8]) -> Result<Frame, FrameError> {
    // Each arm first fixes the payload's size in an array, so the slicing below is in bounds.
    Ok(match kind {
        T_HELLO => {
            let p: [u8; 66] = exact(payload, "HELLO", "66")?;
            if &p[..8] != HELLO_MAGIC {
                return Err(FrameError::BadMagic);
            }
            Frame::Hello {
                version: u16::from_be_bytes([p[8], p[9]]),
                cluster_id: array_at(&p, 10),
                after: u64_at(&p, 26),
                chain: array_at(&p, 34),
            }
        }
        T_WELCOME => {
            // version, cluster id, head, then the root's API address: tag 0 (none), or tag 4
            // and 4 address bytes, or tag 6 and 16, each followed by the port.
            let root_api = match payload.get(26..) {
                Some([0]) => None,
                Some([4, rest @ ..]) => {
                    let p: [u8; 6] = exact(rest, "WELCOME", "27, 33 or 45")?;
                    let ip = Ipv4Addr::from(array_at::<4>(&p, 0));
                    Some(SocketAddr::new(ip.into(), u16::from_be_bytes([p[4], p[5]])))
                }
                Some([6, rest @ ..]) => {
                    let p: [u8; 18] = exact(rest, "WELCOME", "27, 33 or 45")?;
                    let ip = Ipv6Addr::from(array_at::<16>(&p, 0));
                    Some(SocketAddr::new(
                        ip.into(),
                        u16::from_be_bytes([p[16], p[17]]),
                    ))
                }
                _ => {
                    return Err(FrameError::BadPayloadLength {
                        kind: "WELCOME",
                        len: payload.len(),
                        expected: "27, 33 or 45",
                    });
                }
            };
            Frame::Welcome {
                version: u16::from_be_bytes([payload[0], payload[1]]),
                cluster_id: array_at(payload, 2),
                head: u64_at(payload, 18),
                root_api,
            }
        }
        T_RECORD => {
            if payload.len() < 40 {
                return Err(FrameError::BadPayloadLength {
                    kind: "RECORD",
                    len: payload.len(),
                    expected: "at least 40",
                });
            }
            Frame::Record(LogRecord {
                seq: u64_at(payload, 0),
                checksum: array_at(payload, 8),
                entry: payload[40..].to_vec(),
            })
        }
        T_HEARTBEAT => {
            let p: [u8; 16] = exact(payload, "HEARTBEAT", "16")?;
            Frame::Heartbeat {
                head: u64_at(&p, 0),
                clock_ms: u64_at(&p, 8),
            }
        }
        T_SNAPSHOT_CHUNK => Frame::SnapshotChunk(payload.to_vec()),
        T_SNAPSHOT_END => {
            let p: [u8; 8] = exact(payload, "SNAPSHOT_END", "8")?;
            Frame::SnapshotEnd {
                seq: u64::from_be_bytes(p),
            }
        }
        T_ERROR => {
            let Some((&code, message)) = payload.split_first() else {
                return Err(FrameError::BadPayloadLength {
                    kind: "ERROR",
                    len: 0,
                    expected: "at least 1",
                });
            };
            Frame::Error {
                code,
                message: String::from_utf8_lossy(message).into_owned(),
            }
        }
        other => return Err(FrameError::UnknownType(other)),
    })
}
