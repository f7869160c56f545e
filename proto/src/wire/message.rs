//! The message catalogue.
//!
//! Every message body is one CBOR array `[type, body, ...]`:
//! * `type` is an unsigned integer for core messages ([`MessageType`]) or a text string for an
//!   extension message, naming the negotiated extension (reverse-DNS, e.g. `com.example.chat`);
//! * `body` is a map with text keys for core messages (unknown keys are ignored) and a byte
//!   string, opaque to the session, for extension messages;
//! * further array items are ignored, so a later version may append some.
//!
//! A message with an unknown core type is ignored, as is an extension message for an extension
//! that was not negotiated: that is how old and new peers coexist.

use core::fmt;
use std::borrow::Cow;
use std::marker::PhantomData;

use bytes::Bytes;
use serde::de::{self, Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::ser::{SerializeTuple, Serializer};
use serde::{Deserialize, Serialize};

use super::{
    MAX_EXTENSIONS, MAX_NAME_LEN, MAX_REASON_LEN, MAX_VERSIONS, codec, is_valid_extension_name,
};
use crate::error::ProtocolViolation;

/// Core message type numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum MessageType {
    /// `0`: the first message in each direction.
    Hello = 0,
    /// `1`: keep-alive.
    Ping = 1,
    /// `2`: orderly close.
    Close = 2,
}

impl MessageType {
    fn from_number(n: u64) -> Option<MessageType> {
        match n {
            0 => Some(MessageType::Hello),
            1 => Some(MessageType::Ping),
            2 => Some(MessageType::Close),
            _ => None,
        }
    }
}

/// A decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Message {
    /// Opens the session: versions, extensions, names, keep-alive.
    Hello(Hello),
    /// Keeps an idle connection alive.
    Ping,
    /// Ends the session.
    Close(Close),
    /// A message of a negotiated extension.
    Extension(ExtensionMessage),
}

impl Message {
    /// The message's name in the spec, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello(_) => "HELLO",
            Message::Ping => "PING",
            Message::Close(_) => "CLOSE",
            Message::Extension(_) => "extension message",
        }
    }

    /// Encodes the message body (without frame header).
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Decodes a message body. `Ok(None)` means a well-formed message of a type this version
    /// does not know, which the caller ignores.
    ///
    /// Extension payloads are slices of `body`, not copies.
    pub fn decode(body: &Bytes) -> Result<Option<Message>, ProtocolViolation> {
        let decoded: Decoded<'_> = codec::decode(body)?;
        Ok(match decoded {
            Decoded::Unknown => None,
            Decoded::Ping => Some(Message::Ping),
            Decoded::Hello(h) => Some(Message::Hello(h.validate()?)),
            Decoded::Close(c) => Some(Message::Close(c.validate()?)),
            Decoded::Extension { name, payload } => {
                if !is_valid_extension_name(&name) {
                    return Err(ProtocolViolation::BadExtensionName {
                        name: name.into_owned(),
                    });
                }
                let payload = match payload {
                    Cow::Borrowed(slice) => body.slice_ref(slice),
                    Cow::Owned(vec) => Bytes::from(vec),
                };
                Some(Message::Extension(ExtensionMessage {
                    name: name.into_owned(),
                    payload,
                }))
            }
        })
    }
}

/// The HELLO message: what each side speaks and wants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hello {
    /// Protocol versions the sender speaks (at most [`MAX_VERSIONS`]).
    pub versions: Vec<u32>,
    /// Extensions the sender supports (at most [`MAX_EXTENSIONS`], each reverse-DNS).
    pub extensions: Vec<String>,
    /// The sender's device name (at most [`MAX_NAME_LEN`] bytes).
    pub name: String,
    /// The sender's software and version, e.g. `clearskies/0.1.0`.
    pub software: String,
    /// The keep-alive interval the sender asks for, in seconds.
    pub keepalive: u32,
}

/// The CLOSE message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Close {
    /// Why the session ends.
    pub code: CloseCode,
    /// Human-readable detail (at most [`MAX_REASON_LEN`] bytes).
    #[serde(default)]
    pub reason: String,
}

/// A close code. `0..=0x0fff` are defined by the spec; `0x1000..=0xffff` are for layers and
/// applications above the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// Nothing went wrong; the sender is done with this connection.
    pub const NORMAL: CloseCode = CloseCode(0);
    /// The receiver of this code broke the protocol; the reason says how.
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1);
    /// The peers share no framing or protocol version.
    pub const INCOMPATIBLE: CloseCode = CloseCode(2);
    /// The handshake or keep-alive timed out.
    pub const TIMEOUT: CloseCode = CloseCode(3);
    /// The sender is shutting down or going to sleep; reconnect later.
    pub const GOING_AWAY: CloseCode = CloseCode(4);
    /// The sender has another connection to this peer and keeps that one.
    pub const DUPLICATE: CloseCode = CloseCode(5);
    /// The first code available to layers and applications above the session.
    pub const APPLICATION_MIN: CloseCode = CloseCode(0x1000);
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match *self {
            CloseCode::NORMAL => "normal",
            CloseCode::PROTOCOL_ERROR => "protocol error",
            CloseCode::INCOMPATIBLE => "incompatible",
            CloseCode::TIMEOUT => "timeout",
            CloseCode::GOING_AWAY => "going away",
            CloseCode::DUPLICATE => "duplicate connection",
            c if c >= CloseCode::APPLICATION_MIN => "application",
            _ => "unknown",
        };
        write!(f, "{name} ({})", self.0)
    }
}

/// A message of a negotiated extension. The payload's format is the extension's business.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionMessage {
    /// The extension's reverse-DNS name.
    pub name: String,
    /// The payload.
    pub payload: Bytes,
}

impl Serialize for Message {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(2)?;
        match self {
            Message::Hello(h) => {
                t.serialize_element(&(MessageType::Hello as u8))?;
                t.serialize_element(h)?;
            }
            Message::Ping => {
                t.serialize_element(&(MessageType::Ping as u8))?;
                t.serialize_element(&EmptyMap)?;
            }
            Message::Close(c) => {
                t.serialize_element(&(MessageType::Close as u8))?;
                t.serialize_element(c)?;
            }
            Message::Extension(e) => {
                t.serialize_element(&e.name)?;
                t.serialize_element(serde_bytes::Bytes::new(&e.payload))?;
            }
        }
        t.end()
    }
}

struct EmptyMap;

impl Serialize for EmptyMap {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        s.serialize_map(Some(0))?.end()
    }
}

/// What the CBOR layer yields before validation.
enum Decoded<'de> {
    Hello(HelloWire),
    Ping,
    Close(Close),
    Extension {
        name: Cow<'de, str>,
        payload: Cow<'de, [u8]>,
    },
    Unknown,
}

/// HELLO as it arrives: lists capped while decoding so a hostile count cannot make us allocate.
#[derive(Deserialize)]
struct HelloWire {
    versions: Capped<u32, MAX_VERSIONS>,
    #[serde(default)]
    extensions: Capped<String, MAX_EXTENSIONS>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    software: String,
    keepalive: u32,
}

impl HelloWire {
    fn validate(self) -> Result<Hello, ProtocolViolation> {
        self.versions.check("versions")?;
        self.extensions.check("extensions")?;
        check_len("name", self.name.len(), MAX_NAME_LEN)?;
        check_len("software", self.software.len(), MAX_NAME_LEN)?;
        if let Some(bad) = self
            .extensions
            .items
            .iter()
            .find(|n| !is_valid_extension_name(n))
        {
            return Err(ProtocolViolation::BadExtensionName { name: bad.clone() });
        }
        Ok(Hello {
            versions: self.versions.items,
            extensions: self.extensions.items,
            name: self.name,
            software: self.software,
            keepalive: self.keepalive,
        })
    }
}

impl Close {
    fn validate(self) -> Result<Close, ProtocolViolation> {
        check_len("reason", self.reason.len(), MAX_REASON_LEN)?;
        Ok(self)
    }
}

fn check_len(field: &'static str, len: usize, max: usize) -> Result<(), ProtocolViolation> {
    if len > max {
        Err(ProtocolViolation::FieldTooLong { field, len, max })
    } else {
        Ok(())
    }
}

/// A CBOR array decoded into at most `MAX` items; the rest are only counted, so `check` can
/// report the true length without the decoder allocating for it.
struct Capped<T, const MAX: usize> {
    items: Vec<T>,
    total: usize,
}

impl<T, const MAX: usize> Default for Capped<T, MAX> {
    fn default() -> Self {
        Capped {
            items: Vec::new(),
            total: 0,
        }
    }
}

impl<T, const MAX: usize> Capped<T, MAX> {
    fn check(&self, field: &'static str) -> Result<(), ProtocolViolation> {
        check_len(field, self.total, MAX)
    }
}

impl<'de, T: Deserialize<'de>, const MAX: usize> Deserialize<'de> for Capped<T, MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct CappedVisitor<T, const MAX: usize>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>, const MAX: usize> Visitor<'de> for CappedVisitor<T, MAX> {
            type Value = Capped<T, MAX>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "an array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut capped = Capped::default();
                while capped.total < MAX {
                    match seq.next_element()? {
                        Some(item) => {
                            capped.items.push(item);
                            capped.total += 1;
                        }
                        None => return Ok(capped),
                    }
                }
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    capped.total += 1;
                }
                Ok(capped)
            }
        }
        d.deserialize_seq(CappedVisitor(PhantomData))
    }
}

/// The first array item: a core type number or an extension name.
enum TypeTag<'de> {
    Core(u64),
    Extension(Cow<'de, str>),
}

impl<'de> Deserialize<'de> for TypeTag<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TagVisitor;
        impl<'de> Visitor<'de> for TagVisitor {
            type Value = TypeTag<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a message type (unsigned integer or extension name)")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(TypeTag::Core(v))
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(TypeTag::Extension(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(TypeTag::Extension(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_any(TagVisitor)
    }
}

/// An extension payload, borrowed from the input where the CBOR allows it.
#[derive(Deserialize)]
#[serde(transparent)]
struct Payload<'a>(#[serde(borrow, with = "serde_bytes")] Cow<'a, [u8]>);

impl<'de> Deserialize<'de> for Decoded<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct MessageVisitor;
        impl<'de> Visitor<'de> for MessageVisitor {
            type Value = Decoded<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a message array [type, body]")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let missing = || de::Error::custom("a message is an array [type, body]");
                let tag: TypeTag<'de> = seq.next_element()?.ok_or_else(missing)?;
                let decoded = match tag {
                    TypeTag::Core(n) => match MessageType::from_number(n) {
                        Some(MessageType::Hello) => {
                            Decoded::Hello(seq.next_element()?.ok_or_else(missing)?)
                        }
                        Some(MessageType::Ping) => {
                            let _: IgnoredAny = seq.next_element()?.ok_or_else(missing)?;
                            Decoded::Ping
                        }
                        Some(MessageType::Close) => {
                            Decoded::Close(seq.next_element()?.ok_or_else(missing)?)
                        }
                        None => {
                            let _: IgnoredAny = seq.next_element()?.ok_or_else(missing)?;
                            Decoded::Unknown
                        }
                    },
                    TypeTag::Extension(name) => {
                        let Payload(payload) = seq.next_element()?.ok_or_else(missing)?;
                        Decoded::Extension { name, payload }
                    }
                };
                // Items appended by later versions.
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(decoded)
            }
        }
        d.deserialize_seq(MessageVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            versions: vec![1],
            extensions: vec!["com.example.chat".into()],
            name: "laptop".into(),
            software: "clearskies/0.1.0".into(),
            keepalive: 30,
        }
    }

    #[test]
    fn round_trips() {
        for m in [
            Message::Hello(hello()),
            Message::Ping,
            Message::Close(Close {
                code: CloseCode::GOING_AWAY,
                reason: "bye".into(),
            }),
            Message::Extension(ExtensionMessage {
                name: "com.example.chat".into(),
                payload: Bytes::from_static(b"hi"),
            }),
        ] {
            let body = Bytes::from(m.encode());
            assert_eq!(Message::decode(&body), Ok(Some(m)));
        }
    }

    #[test]
    fn extension_payload_is_not_copied() {
        let m = Message::Extension(ExtensionMessage {
            name: "com.example.blob".into(),
            payload: Bytes::from(vec![7u8; 1000]),
        });
        let body = Bytes::from(m.encode());
        let Some(Message::Extension(e)) = Message::decode(&body).unwrap() else {
            panic!()
        };
        let range = body.as_ptr_range();
        assert!(range.contains(&e.payload.as_ptr()));
    }

    #[test]
    fn capped_lists_count_without_collecting() {
        let wire = (
            0u8,
            HelloBody {
                versions: vec![1; 1000],
                keepalive: 30,
            },
        );
        #[derive(Serialize)]
        struct HelloBody {
            versions: Vec<u32>,
            keepalive: u32,
        }
        let body = Bytes::from(codec::encode(&wire));
        let err = Message::decode(&body).unwrap_err();
        assert_eq!(
            err,
            ProtocolViolation::FieldTooLong {
                field: "versions",
                len: 1000,
                max: MAX_VERSIONS
            }
        );
    }
}
