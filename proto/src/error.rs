//! Errors, in the three kinds that call for different reactions.
//!
//! * [`ProtocolViolation`]: the peer sent something the spec forbids. The session closes with
//!   close code [`CloseCode::PROTOCOL_ERROR`](crate::wire::CloseCode::PROTOCOL_ERROR) and the
//!   error's text as reason. Reconnecting will not help until the peer is fixed.
//! * [`Incompatibility`]: the peer is well-behaved but speaks nothing we speak (framing or
//!   protocol version). Close code `INCOMPATIBLE`; an upgrade on one side fixes it.
//! * [`Misuse`]: the caller (driver or app) used the API wrongly. The session is not harmed;
//!   the call is refused.
//!
//! Every variant has a stable [`code`](Error::code) string; `spec/vectors/` names expected
//! errors by it, so the spec and the code cannot drift apart.

use core::fmt;

/// Any error proto reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The peer broke the protocol.
    Protocol(ProtocolViolation),
    /// The peer is incompatible with us.
    Incompatible(Incompatibility),
    /// The caller misused the API.
    Misuse(Misuse),
}

impl Error {
    /// The stable, kebab-case name of this error, as used in `spec/vectors/`.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Protocol(e) => e.code(),
            Error::Incompatible(e) => e.code(),
            Error::Misuse(e) => e.code(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Protocol(e) => write!(f, "peer broke the protocol: {e}"),
            Error::Incompatible(e) => write!(f, "peer is incompatible: {e}"),
            Error::Misuse(e) => write!(f, "API misuse: {e}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<ProtocolViolation> for Error {
    fn from(e: ProtocolViolation) -> Error {
        Error::Protocol(e)
    }
}

impl From<Incompatibility> for Error {
    fn from(e: Incompatibility) -> Error {
        Error::Incompatible(e)
    }
}

impl From<Misuse> for Error {
    fn from(e: Misuse) -> Error {
        Error::Misuse(e)
    }
}

/// What the peer did wrong. Limits named here are the constants of [`crate::wire`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolViolation {
    /// The connection did not start with the ClearSkies preface.
    BadPreface,
    /// A frame declared a payload longer than `MAX_FRAME_PAYLOAD`.
    FrameTooLarge {
        /// The declared length.
        len: u32,
    },
    /// A critical frame kind (high bit clear) that this version does not define.
    UnknownFrameKind {
        /// The kind byte.
        kind: u8,
    },
    /// Flag bits that are reserved for this frame kind were set.
    ReservedFlags {
        /// The kind byte.
        kind: u8,
        /// The flags byte.
        flags: u8,
    },
    /// A MESSAGE frame with a non-zero stream, or a SEGMENT frame on stream 0.
    BadStream {
        /// The kind byte.
        kind: u8,
        /// The stream field.
        stream: u16,
    },
    /// A SEGMENT frame with no payload that does not end its message.
    EmptySegment {
        /// The stream field.
        stream: u16,
    },
    /// A new segmented message while `MAX_OPEN_STREAMS` are already open.
    TooManyStreams,
    /// A message (whole or reassembled) longer than `MAX_MESSAGE_SIZE`.
    MessageTooLarge {
        /// Its size so far.
        size: usize,
    },
    /// The message body is not valid CBOR of the expected shape.
    MalformedMessage {
        /// What the decoder said.
        detail: String,
    },
    /// A text or list field longer than its limit.
    FieldTooLong {
        /// The field's name in the spec.
        field: &'static str,
        /// Its length (bytes for text, items for lists).
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An extension name that is not a lowercase reverse-DNS name.
    BadExtensionName {
        /// The name as received.
        name: String,
    },
    /// A message that is not allowed in the session's current state.
    UnexpectedMessage {
        /// The message type received.
        got: &'static str,
        /// The session state that refused it.
        state: &'static str,
    },
}

impl ProtocolViolation {
    /// The stable name of this violation.
    pub fn code(&self) -> &'static str {
        match self {
            ProtocolViolation::BadPreface => "bad-preface",
            ProtocolViolation::FrameTooLarge { .. } => "frame-too-large",
            ProtocolViolation::UnknownFrameKind { .. } => "unknown-frame-kind",
            ProtocolViolation::ReservedFlags { .. } => "reserved-flags",
            ProtocolViolation::BadStream { .. } => "bad-stream",
            ProtocolViolation::EmptySegment { .. } => "empty-segment",
            ProtocolViolation::TooManyStreams => "too-many-streams",
            ProtocolViolation::MessageTooLarge { .. } => "message-too-large",
            ProtocolViolation::MalformedMessage { .. } => "malformed-message",
            ProtocolViolation::FieldTooLong { .. } => "field-too-long",
            ProtocolViolation::BadExtensionName { .. } => "bad-extension-name",
            ProtocolViolation::UnexpectedMessage { .. } => "unexpected-message",
        }
    }
}

impl fmt::Display for ProtocolViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use crate::wire::{MAX_FRAME_PAYLOAD, MAX_MESSAGE_SIZE, MAX_OPEN_STREAMS};
        match self {
            ProtocolViolation::BadPreface => {
                write!(
                    f,
                    "the connection did not start with the ClearSkies preface"
                )
            }
            ProtocolViolation::FrameTooLarge { len } => write!(
                f,
                "frame payload of {len} bytes exceeds MAX_FRAME_PAYLOAD ({MAX_FRAME_PAYLOAD})"
            ),
            ProtocolViolation::UnknownFrameKind { kind } => {
                write!(f, "unknown critical frame kind 0x{kind:02x}")
            }
            ProtocolViolation::ReservedFlags { kind, flags } => write!(
                f,
                "reserved flag bits set: flags 0x{flags:02x} on frame kind 0x{kind:02x}"
            ),
            ProtocolViolation::BadStream { kind, stream } => {
                write!(
                    f,
                    "stream {stream} is not allowed on frame kind 0x{kind:02x}"
                )
            }
            ProtocolViolation::EmptySegment { stream } => {
                write!(f, "empty segment without FIN on stream {stream}")
            }
            ProtocolViolation::TooManyStreams => write!(
                f,
                "more than MAX_OPEN_STREAMS ({MAX_OPEN_STREAMS}) segmented messages open at once"
            ),
            ProtocolViolation::MessageTooLarge { size } => write!(
                f,
                "message of at least {size} bytes exceeds MAX_MESSAGE_SIZE ({MAX_MESSAGE_SIZE})"
            ),
            ProtocolViolation::MalformedMessage { detail } => {
                write!(f, "malformed message: {detail}")
            }
            ProtocolViolation::FieldTooLong { field, len, max } => {
                write!(
                    f,
                    "field `{field}` has length {len}, more than its limit {max}"
                )
            }
            ProtocolViolation::BadExtensionName { name } => {
                write!(
                    f,
                    "extension name {name:?} is not a lowercase reverse-DNS name"
                )
            }
            ProtocolViolation::UnexpectedMessage { got, state } => {
                write!(f, "{got} is not allowed in state {state}")
            }
        }
    }
}

/// Why the peer and we cannot talk.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Incompatibility {
    /// The preface names a framing version we do not speak.
    FramingVersion {
        /// The peer's framing version.
        theirs: u16,
    },
    /// The HELLO messages share no protocol version.
    NoCommonVersion {
        /// The versions we offered.
        ours: Vec<u32>,
        /// The versions the peer offered.
        theirs: Vec<u32>,
    },
}

impl Incompatibility {
    /// The stable name of this incompatibility.
    pub fn code(&self) -> &'static str {
        match self {
            Incompatibility::FramingVersion { .. } => "framing-version",
            Incompatibility::NoCommonVersion { .. } => "no-common-version",
        }
    }
}

impl fmt::Display for Incompatibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Incompatibility::FramingVersion { theirs } => write!(
                f,
                "peer uses framing version {theirs}, we speak {}",
                crate::wire::FRAMING_VERSION
            ),
            Incompatibility::NoCommonVersion { ours, theirs } => write!(
                f,
                "no common protocol version (ours {ours:?}, theirs {theirs:?}); upgrade the older device"
            ),
        }
    }
}

/// How the caller misused the API. The session's state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Misuse {
    /// Application messages can only be sent once the session is established.
    NotEstablished,
    /// The session is closed or closing.
    Closed,
    /// The message encodes to more than `MAX_MESSAGE_SIZE` bytes.
    MessageTooLarge {
        /// Its encoded size.
        size: usize,
    },
    /// Queuing the message would exceed `SEND_QUEUE_LIMIT`; wait for the queue to drain.
    SendQueueFull {
        /// Bytes already queued.
        queued: usize,
    },
    /// The extension was not negotiated with this peer.
    ExtensionNotNegotiated {
        /// The extension's name.
        name: String,
    },
    /// The configuration is unusable.
    BadConfig {
        /// What is wrong with it.
        detail: String,
    },
    /// The message type is managed by the session itself (HELLO, PING, CLOSE).
    ReservedMessage,
}

impl Misuse {
    /// The stable name of this misuse.
    pub fn code(&self) -> &'static str {
        match self {
            Misuse::NotEstablished => "not-established",
            Misuse::Closed => "closed",
            Misuse::MessageTooLarge { .. } => "send-too-large",
            Misuse::SendQueueFull { .. } => "send-queue-full",
            Misuse::ExtensionNotNegotiated { .. } => "extension-not-negotiated",
            Misuse::BadConfig { .. } => "bad-config",
            Misuse::ReservedMessage => "reserved-message",
        }
    }
}

impl fmt::Display for Misuse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use crate::wire::{MAX_MESSAGE_SIZE, SEND_QUEUE_LIMIT};
        match self {
            Misuse::NotEstablished => write!(f, "the session is not established yet"),
            Misuse::Closed => write!(f, "the session is closed"),
            Misuse::MessageTooLarge { size } => write!(
                f,
                "message encodes to {size} bytes, more than MAX_MESSAGE_SIZE ({MAX_MESSAGE_SIZE})"
            ),
            Misuse::SendQueueFull { queued } => write!(
                f,
                "{queued} bytes already queued (limit {SEND_QUEUE_LIMIT}); wait for the transport to drain"
            ),
            Misuse::ExtensionNotNegotiated { name } => {
                write!(f, "extension {name:?} was not negotiated with this peer")
            }
            Misuse::BadConfig { detail } => write!(f, "bad configuration: {detail}"),
            Misuse::ReservedMessage => {
                write!(f, "HELLO, PING and CLOSE are sent by the session itself")
            }
        }
    }
}
