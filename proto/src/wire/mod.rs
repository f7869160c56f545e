//! The wire format: preface, frames, segmentation and messages.
//!
//! `spec/wire.md` is normative; this module implements it and every constant below is defined
//! there under the same name.
//!
//! * [`frame`]: the 8-byte frame header, the streaming [`FrameDecoder`] and the
//!   [`Reassembler`] that turns SEGMENT frames back into messages.
//! * [`message`]: the message catalogue and its CBOR shape.
//! * [`codec`]: the one module that touches the CBOR library.

use core::time::Duration;

pub mod codec;
pub mod frame;
pub mod message;

pub use frame::{Frame, FrameDecoder, FrameHeader, FrameKind, Reassembler};
pub use message::{Close, CloseCode, ExtensionMessage, Hello, Message, MessageType};

/// The bytes every connection starts with, in both directions: `"CSKY"` then the framing
/// version as a big-endian `u16`.
pub const PREFACE_MAGIC: [u8; 4] = *b"CSKY";
/// The framing version this implementation speaks.
pub const FRAMING_VERSION: u16 = 1;
/// Length of the preface: magic plus framing version.
pub const PREFACE_LEN: usize = 6;
/// Length of a frame header: length (u32), kind (u8), flags (u8), stream (u16).
pub const FRAME_HEADER_LEN: usize = 8;
/// The largest payload one frame may carry. Larger messages are segmented.
pub const MAX_FRAME_PAYLOAD: usize = 16 * 1024;
/// The largest message, whole or reassembled from segments.
pub const MAX_MESSAGE_SIZE: usize = 1024 * 1024;
/// How many segmented messages a sender may have open (started, not finished) at once.
pub const MAX_OPEN_STREAMS: usize = 2;
/// The protocol versions this implementation speaks, newest last.
pub const PROTOCOL_VERSIONS: &[u32] = &[1];
/// Most protocol versions one HELLO may list.
pub const MAX_VERSIONS: usize = 16;
/// Most extensions one HELLO may list.
pub const MAX_EXTENSIONS: usize = 32;
/// Longest extension name, in bytes.
pub const MAX_EXTENSION_NAME: usize = 128;
/// Longest device name or software string, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// Longest close reason, in bytes. Longer local reasons are cut at a character boundary.
pub const MAX_REASON_LEN: usize = 256;
/// The shortest keep-alive interval a HELLO may ask for; smaller values are raised to it.
pub const MIN_KEEPALIVE: Duration = Duration::from_secs(5);
/// The longest keep-alive interval; larger values are lowered to it.
pub const MAX_KEEPALIVE: Duration = Duration::from_secs(24 * 3600);
/// The default keep-alive interval of a desktop device.
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(30);
/// A session that received nothing for this many keep-alive intervals is dead.
pub const IDLE_TIMEOUT_FACTOR: u32 = 3;
/// A session whose peer's HELLO has not arrived this long after it started is abandoned.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes of encoded messages one session will queue for sending (a local limit).
pub const SEND_QUEUE_LIMIT: usize = 8 * 1024 * 1024;

/// Whether `name` is a valid extension name: lowercase reverse-DNS, at least two labels of
/// `[a-z0-9-]` separated by dots, not starting or ending with `-`, optionally followed by
/// `/` and a version or sub-name of `[a-z0-9.-]`.
pub fn is_valid_extension_name(name: &str) -> bool {
    if name.is_empty() || name.len() > MAX_EXTENSION_NAME {
        return false;
    }
    let (domain, suffix) = match name.split_once('/') {
        Some((d, s)) => (d, Some(s)),
        None => (name, None),
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    let labels = domain.split('.').count();
    let suffix_ok = suffix.is_none_or(|s| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    });
    labels >= 2 && domain.split('.').all(label_ok) && suffix_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extension_names() {
        for ok in [
            "org.clearskies.db",
            "com.example.chat/2",
            "io.x1.a-b",
            "a.b",
        ] {
            assert!(is_valid_extension_name(ok), "{ok}");
        }
        for bad in [
            "",
            "chat",
            "Com.example",
            "com..example",
            "com.-x",
            "com.example/",
            "com.example/X",
            "com example.x",
        ] {
            assert!(!is_valid_extension_name(bad), "{bad}");
        }
        assert!(!is_valid_extension_name(&format!(
            "a.{}",
            "b".repeat(MAX_EXTENSION_NAME)
        )));
    }
}
