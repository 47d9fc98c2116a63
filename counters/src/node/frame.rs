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
    let (message, rest) = postcard::take_from_bytes::<Message>(&payload)?;
    if !rest.is_empty() {
        return Err(GossipError::Protocol(format!(
            "{} bytes after the message",
            rest.len()
        )));
    }
    Ok(message)
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
        Ok(())
    }
}
