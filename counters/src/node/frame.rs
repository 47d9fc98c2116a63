//! Node-to-node framing and messages (documented in docs/counters-format.md, "Gossip frames").

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::{Acknowledged, DecodeError, NodeId};

/// The gossip protocol version sent in every handshake; a peer with another version is refused.
pub const GOSSIP_PROTOCOL_VERSION: u32 = 1;

/// The default bound on one frame's payload: 16 MiB.
pub const DEFAULT_MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// One gossip message: the payload of a frame.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Message {
    /// First message on a connection, from each side.
    Hello { protocol: u32, node: NodeId },
    /// What the sender has merged of the receiver, and an encoded [`Delta`](crate::Delta).
    Exchange {
        ack: Option<Acknowledged>,
        delta: Vec<u8>,
    },
}

/// Why a gossip connection was closed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GossipError {
    /// The socket failed or the peer closed it (including mid-frame).
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// The TLS handshake failed (e.g. the peer has no certificate the cluster CA signed).
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    /// The peer did not send or answer in time.
    #[error("peer did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// A frame header announced more than the bound.
    #[error("frame of {len} bytes exceeds the {max}-byte bound")]
    FrameTooLarge {
        /// The announced length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// A frame header announced an empty payload.
    #[error("empty frame")]
    EmptyFrame,
    /// The payload is not a valid message.
    #[error("frame does not decode as a gossip message: {0}")]
    Message(#[from] postcard::Error),
    /// The delta inside an exchange is invalid.
    #[error("bad delta: {0}")]
    Delta(#[from] DecodeError),
    /// The peer speaks another protocol version.
    #[error("peer speaks gossip protocol {found}, this node speaks {GOSSIP_PROTOCOL_VERSION}")]
    ProtocolVersion {
        /// The version the peer sent.
        found: u32,
    },
    /// The peer broke the protocol (e.g. no handshake first, or a delta from another node).
    #[error("protocol violation: {0}")]
    Protocol(String),
}

pub(crate) async fn read_message<R: AsyncRead + Unpin>(
    reader: &mut R,
    max_len: usize,
) -> Result<Message, GossipError> {
    let mut header = [0u8; 4];
    reader.read_exact(&mut header).await?;
    let len = u32::from_be_bytes(header) as usize;
    if len == 0 {
        return Err(GossipError::EmptyFrame);
    }
    if len > max_len {
        return Err(GossipError::FrameTooLarge { len, max: max_len });
    }
    let mut payload = vec![0u8; len];
    reader.read_exact(&mut payload).await?;
    decode_payload(&payload)
}

/// One frame's payload as a message, nothing after it.
fn decode_payload(payload: &[u8]) -> Result<Message, GossipError> {
    let (message, rest) = postcard::take_from_bytes::<Message>(payload)?;
    if !rest.is_empty() {
        return Err(GossipError::Protocol(format!(
            "{} bytes after the message",
            rest.len()
        )));
    }
    Ok(message)
}

/// Decode the first gossip frame in `bytes` the way a node does (the length bound, the message,
/// and for an exchange the delta inside it, as `CounterSet<String>` state): `Ok(Some(used))`
/// with the bytes the frame took, `Ok(None)` if `bytes` holds only part of a frame, or the error
/// that makes a node close the connection. For fuzzing and tests of hostile input; nodes read
/// frames from their sockets with the same checks.
pub fn decode_gossip_frame(
    bytes: &[u8],
    max_frame_len: usize,
) -> Result<Option<usize>, GossipError> {
    let Some((header, rest)) = bytes.split_first_chunk::<4>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(*header) as usize;
    if len == 0 {
        return Err(GossipError::EmptyFrame);
    }
    if len > max_frame_len {
        return Err(GossipError::FrameTooLarge {
            len,
            max: max_frame_len,
        });
    }
    let Some(payload) = rest.get(..len) else {
        return Ok(None);
    };
    if let Message::Exchange { delta, .. } = decode_payload(payload)? {
        crate::Delta::<String>::decode(&delta)?;
    }
    Ok(Some(4 + len))
}

pub(crate) async fn write_message<W: AsyncWrite + Unpin>(
    writer: &mut W,
    message: &Message,
    max_len: usize,
) -> Result<usize, GossipError> {
    let payload = postcard::to_stdvec(message)?;
    if payload.len() > max_len {
        return Err(GossipError::FrameTooLarge {
            len: payload.len(),
            max: max_len,
        });
    }
    let len = u32::try_from(payload.len()).map_err(|_| GossipError::FrameTooLarge {
        len: payload.len(),
        max: max_len,
    })?;
    let mut frame = Vec::with_capacity(4 + payload.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&payload);
    writer.write_all(&frame).await?;
    writer.flush().await?;
    Ok(frame.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip_and_rejections() -> Result<(), Box<dyn std::error::Error>> {
        let hello = Message::Hello {
            protocol: GOSSIP_PROTOCOL_VERSION,
            node: NodeId::new("a")?,
        };
        let mut bytes = Vec::new();
        write_message(&mut bytes, &hello, 1024).await?;
        // Documented in docs/counters-format.md: length 4, variant 0, protocol 1, "a".
        assert_eq!(bytes, [0, 0, 0, 4, 0, 1, 1, b'a']);
        let back = read_message(&mut bytes.as_slice(), 1024).await?;
        assert!(matches!(back, Message::Hello { protocol: 1, node } if node.as_str() == "a"));

        let truncated = &bytes[..bytes.len() - 1];
        assert!(matches!(
            read_message(&mut &truncated[..], 1024).await,
            Err(GossipError::Io(_))
        ));
        let oversized = [0x7f, 0xff, 0xff, 0xff];
        assert!(matches!(
            read_message(&mut &oversized[..], 1024).await,
            Err(GossipError::FrameTooLarge { .. })
        ));
        let garbage = [0, 0, 0, 3, 9, 9, 9];
        assert!(matches!(
            read_message(&mut &garbage[..], 1024).await,
            Err(GossipError::Message(_))
        ));
        assert!(matches!(
            read_message(&mut &[0u8, 0, 0, 0][..], 1024).await,
            Err(GossipError::EmptyFrame)
        ));

        // The synchronous decoder agrees on every case.
        assert_eq!(decode_gossip_frame(&bytes, 1024)?, Some(bytes.len()));
        assert_eq!(decode_gossip_frame(truncated, 1024)?, None);
        assert!(matches!(
            decode_gossip_frame(&oversized, 1024),
            Err(GossipError::FrameTooLarge { .. })
        ));
        assert!(matches!(
            decode_gossip_frame(&garbage, 1024),
            Err(GossipError::Message(_))
        ));
        Ok(())
    }

    #[tokio::test]
    async fn an_exchange_with_a_bad_delta_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let set = crate::CounterSet::<String>::new(NodeId::new("a")?);
        set.add("k", 3);
        let good = Message::Exchange {
            ack: None,
            delta: set.delta_since(0).encode(),
        };
        let mut bytes = Vec::new();
        write_message(&mut bytes, &good, 1024).await?;
        assert_eq!(decode_gossip_frame(&bytes, 1024)?, Some(bytes.len()));
        let bad = Message::Exchange {
            ack: None,
            delta: vec![9, 9, 9],
        };
        let mut bytes = Vec::new();
        write_message(&mut bytes, &bad, 1024).await?;
        assert!(matches!(
            decode_gossip_frame(&bytes, 1024),
            Err(GossipError::Delta(_))
        ));
        Ok(())
    }
}
