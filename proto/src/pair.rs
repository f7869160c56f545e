//! Pairing: how a device that was told an access code joins a share (`spec/pairing.md`).
//!
//! Two devices that do not know each other connect with TLS 1.3 in pairing mode (any key is
//! accepted, `spec/transport.md` § 6) and run this exchange, carried as payloads of the session
//! extension [`PAIR_EXTENSION`]:
//!
//! ```text
//! joiner                                          inviter
//!   PairHello { locator_id, spake_msg (B) }  ->
//!                                            <-   PairReply { spake_msg (A) }
//!   Confirm { joiner MAC }                   ->
//!                                            <-   Confirm { inviter MAC }
//!                                            <-   Grant { share, access, members }
//! ```
//!
//! SPAKE2 (asymmetric: the inviter is side A, the joiner side B) is keyed by the secret half of
//! the [`AccessCode`]; its key is confirmed with HMAC-SHA256 over a transcript that includes
//! the TLS channel binding and both device keys, so a man in the middle who terminates TLS on
//! both sides is detected. The inviter checks the joiner's MAC before it sends its own, so a
//! guesser learns whether a guess was right only by spending a counted attempt. Any failure is
//! answered with `Refuse { reason }`.
//!
//! Two state machines, one per role, both sans-IO: [`Joiner`] and [`Inviter`]. Feed each
//! payload received on the extension to `handle_payload`, then drain `poll_output` until
//! `None`. [`Output::Send`] carries an extension payload to send as
//! `Message::Extension { name: PAIR_EXTENSION, payload }` on the same session. Neither needs a
//! timer: the session's handshake and keep-alive timeouts bound a stalled attempt, and a stalled
//! attempt holds nothing (a use is only consumed when a joiner is admitted).
//!
//! The inviter keeps its codes in [`Invitations`], a registry the driver persists (serde)
//! whenever an [`Output::Persist`] says it changed, so codes survive a restart.

use core::fmt;
use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use sha2::{Digest, Sha256};
use spake2::{Ed25519Group, Identity, Password, Spake2};

use crate::code::{ACCESS_CODE_BYTES, AccessCode};
use crate::db::{Access, Member, ShareId};
use crate::error::ProtocolViolation;
use crate::wire::codec;

/// The session extension that carries pairing messages.
pub const PAIR_EXTENSION: &str = "org.clearskies.pair";

/// Domain separation string that starts the transcript.
pub const TRANSCRIPT_CONTEXT: &[u8] = b"clearskies/pair/v1/transcript\0";
/// SPAKE2 identity of side A, the inviter.
pub const SPAKE_ID_INVITER: &[u8] = b"clearskies/pair/v1/inviter";
/// SPAKE2 identity of side B, the joiner.
pub const SPAKE_ID_JOINER: &[u8] = b"clearskies/pair/v1/joiner";
/// HKDF `info` of the inviter's confirmation key.
pub const CONFIRM_INFO_INVITER: &[u8] = b"clearskies/pair/v1/confirm/inviter";
/// HKDF `info` of the joiner's confirmation key.
pub const CONFIRM_INFO_JOINER: &[u8] = b"clearskies/pair/v1/confirm/joiner";

/// Bytes of a SPAKE2 message: a side byte (`A` or `B`) and a compressed Edwards point.
pub const SPAKE_MSG_LEN: usize = 33;
/// Bytes of the SPAKE2 shared key.
pub const SPAKE_KEY_LEN: usize = 32;
/// Bytes of a confirmation MAC (HMAC-SHA256).
pub const MAC_LEN: usize = 32;
/// Bytes of the TLS channel binding (`spec/transport.md` § 8).
pub const CHANNEL_BINDING_LEN: usize = 32;
/// Bytes of a locator ID ([`AccessCode::locator_id`]).
pub const LOCATOR_ID_LEN: usize = 32;

/// Microseconds in one second, for the limits below.
const SECOND: u64 = 1_000_000;
/// How long a code is valid unless the inviter says otherwise: 24 hours.
pub const DEFAULT_LIFETIME_MICROS: u64 = 24 * 3600 * SECOND;
/// The longest lifetime a code may be given: 30 days.
pub const MAX_LIFETIME_MICROS: u64 = 30 * 24 * 3600 * SECOND;
/// Failed attempts after which a single-use code is burned.
pub const SINGLE_USE_BURN_AFTER: u32 = 5;
/// Failed attempts after which a multi-use code is burned.
pub const MULTI_USE_BURN_AFTER: u32 = 20;
/// Failures one address may have within [`ADDRESS_WINDOW_MICROS`] before it is refused.
pub const ADDRESS_MAX_FAILURES: usize = 5;
/// The window of the per-address limit: 10 minutes.
pub const ADDRESS_WINDOW_MICROS: u64 = 10 * 60 * SECOND;
/// Addresses the limiter remembers; beyond, the one whose last failure is oldest is forgotten.
pub const MAX_TRACKED_ADDRESSES: usize = 4096;
/// Invitations a registry holds, ended ones included until they are pruned.
pub const MAX_INVITATIONS: usize = 256;
/// How long an ended invitation (used, cancelled, burned, expired) is kept, so that its code
/// is refused with the precise reason rather than as unknown: 7 days.
pub const ENDED_RETENTION_MICROS: u64 = 7 * 24 * 3600 * SECOND;
/// Members a `Grant` may list.
pub const MAX_GRANT_MEMBERS: usize = 4096;
/// Bytes of a `Refuse` reason.
pub const MAX_REFUSE_REASON_LEN: usize = 64;

/// Wall-clock time: microseconds since the Unix epoch, passed in by the caller. Codes expire at
/// an absolute wall time so that they survive a restart (the monotonic
/// [`Timestamp`](crate::Timestamp) of a driver does not).
pub type UnixMicros = u64;

// ---------------------------------------------------------------------------------------------
// Key schedule
// ---------------------------------------------------------------------------------------------

/// The transcript hash both sides confirm (`spec/pairing.md` § Transcript):
///
/// `SHA-256(TRANSCRIPT_CONTEXT ‖ locator_id ‖ channel_binding ‖ inviter_key ‖ joiner_key ‖
/// inviter_spake_msg ‖ joiner_spake_msg)`, every field of fixed length.
pub fn transcript_hash(
    locator_id: &[u8; LOCATOR_ID_LEN],
    channel_binding: &[u8; CHANNEL_BINDING_LEN],
    inviter_key: &[u8; 32],
    joiner_key: &[u8; 32],
    inviter_spake_msg: &[u8; SPAKE_MSG_LEN],
    joiner_spake_msg: &[u8; SPAKE_MSG_LEN],
) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(TRANSCRIPT_CONTEXT);
    hash.update(locator_id);
    hash.update(channel_binding);
    hash.update(inviter_key);
    hash.update(joiner_key);
    hash.update(inviter_spake_msg);
    hash.update(joiner_spake_msg);
    hash.finalize().into()
}

/// Everything derived from the SPAKE2 key and the transcript.
#[derive(Clone, PartialEq, Eq)]
pub struct KeySchedule {
    /// The transcript hash.
    pub transcript: [u8; 32],
    /// `HKDF-SHA256(salt = transcript, ikm = K, info = CONFIRM_INFO_INVITER, 32)`.
    pub inviter_key: [u8; 32],
    /// `HKDF-SHA256(salt = transcript, ikm = K, info = CONFIRM_INFO_JOINER, 32)`.
    pub joiner_key: [u8; 32],
    /// `HMAC-SHA256(inviter_key, transcript)`: what the inviter sends in `Confirm`.
    pub inviter_mac: [u8; MAC_LEN],
    /// `HMAC-SHA256(joiner_key, transcript)`: what the joiner sends in `Confirm`.
    pub joiner_mac: [u8; MAC_LEN],
}

impl fmt::Debug for KeySchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySchedule").finish_non_exhaustive()
    }
}

impl KeySchedule {
    /// Derives the confirmation keys and MACs from the SPAKE2 key `spake_key` and `transcript`.
    pub fn derive(spake_key: &[u8], transcript: [u8; 32]) -> KeySchedule {
        let hkdf = Hkdf::<Sha256>::new(Some(&transcript), spake_key);
        let mut inviter_key = [0; 32];
        let mut joiner_key = [0; 32];
        // HKDF-SHA256 can expand up to 255 * 32 bytes; 32 always fits.
        hkdf.expand(CONFIRM_INFO_INVITER, &mut inviter_key)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        hkdf.expand(CONFIRM_INFO_JOINER, &mut joiner_key)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        KeySchedule {
            transcript,
            inviter_mac: hmac(&inviter_key, &transcript),
            joiner_mac: hmac(&joiner_key, &transcript),
            inviter_key,
            joiner_key,
        }
    }
}

fn hmac_state(key: &[u8; 32], message: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length.
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(message);
    mac
}

fn hmac(key: &[u8; 32], message: &[u8]) -> [u8; MAC_LEN] {
    hmac_state(key, message).finalize().into_bytes().into()
}

/// Constant-time check of `mac` against `HMAC-SHA256(key, message)`.
fn hmac_matches(key: &[u8; 32], message: &[u8], mac: &[u8; MAC_LEN]) -> bool {
    hmac_state(key, message).verify_slice(mac).is_ok()
}

fn spake_password(code: &AccessCode) -> Password {
    Password::new(code.secret())
}

fn spake_ids() -> (Identity, Identity) {
    (
        Identity::new(SPAKE_ID_INVITER),
        Identity::new(SPAKE_ID_JOINER),
    )
}

fn to_spake_msg(msg: Vec<u8>) -> [u8; SPAKE_MSG_LEN] {
    // spake2 0.4 with the Ed25519 group always emits a side byte and a 32-byte point.
    <[u8; SPAKE_MSG_LEN]>::try_from(msg.as_slice()).expect("a SPAKE2 Ed25519 message is 33 bytes")
}

// ---------------------------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------------------------

/// A byte string of exactly `N` bytes (CBOR major type 2).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Fixed<const N: usize>([u8; N]);

impl<const N: usize> Serialize for Fixed<N> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de, const N: usize> Deserialize<'de> for Fixed<N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_bytes(FixedVisitor::<N>)
    }
}

struct FixedVisitor<const N: usize>;

impl<'de, const N: usize> Visitor<'de> for FixedVisitor<N> {
    type Value = Fixed<N>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a byte string of {N} bytes")
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Fixed<N>, E> {
        <[u8; N]>::try_from(v)
            .map(Fixed)
            .map_err(|_| E::invalid_length(v.len(), &self))
    }

    // Self-describing formats without byte strings (JSON) write bytes as a list of numbers.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Fixed<N>, A::Error> {
        let mut out = [0; N];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = seq
                .next_element()?
                .ok_or_else(|| de::Error::invalid_length(i, &self))?;
        }
        if seq.next_element::<de::IgnoredAny>()?.is_some() {
            return Err(de::Error::invalid_length(N + 1, &self));
        }
        Ok(Fixed(out))
    }
}

/// `Access` as one number on the wire and on disk: 0 read-only, 1 read-write.
fn access_to_number(access: Access) -> u8 {
    match access {
        Access::ReadOnly => 0,
        Access::ReadWrite => 1,
    }
}

fn access_from_number(n: u8) -> Option<Access> {
    match n {
        0 => Some(Access::ReadOnly),
        1 => Some(Access::ReadWrite),
        _ => None,
    }
}

mod access_serde {
    use super::*;

    pub(super) fn serialize<S: Serializer>(access: &Access, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(access_to_number(*access))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Access, D::Error> {
        let n = u8::deserialize(d)?;
        access_from_number(n).ok_or_else(|| de::Error::custom("access is 0 or 1"))
    }
}

/// Joiner → inviter: which code, and the joiner's SPAKE2 message (side B).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairHello {
    /// [`AccessCode::locator_id`] of the code the joiner was told.
    pub locator_id: [u8; LOCATOR_ID_LEN],
    /// The joiner's SPAKE2 message.
    pub spake_msg: [u8; SPAKE_MSG_LEN],
}

/// Inviter → joiner: the inviter's SPAKE2 message (side A).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairReply {
    /// The inviter's SPAKE2 message.
    pub spake_msg: [u8; SPAKE_MSG_LEN],
}

/// Either way: the sender's key confirmation MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirm {
    /// [`KeySchedule::joiner_mac`] or [`KeySchedule::inviter_mac`].
    pub mac: [u8; MAC_LEN],
}

/// Inviter → joiner, after both confirmations: the membership granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The share joined.
    pub share_id: ShareId,
    /// The joiner's access.
    pub access: Access,
    /// The share's members as the inviter knows them, the joiner included, ordered by key.
    pub members: Vec<Member>,
}

/// Either way: the attempt is over, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refuse {
    /// Why.
    pub reason: RefuseReason,
}

/// Why an attempt was refused. On the wire, the stable code string.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefuseReason {
    /// `unknown-code`: the inviter has no such code.
    UnknownCode,
    /// `expired`: the code's lifetime is over.
    Expired,
    /// `used`: the code has admitted as many devices as it may.
    Used,
    /// `cancelled`: the inviter cancelled the code.
    Cancelled,
    /// `burned`: too many wrong attempts used the code up.
    Burned,
    /// `rate-limited`: too many failures from this address lately.
    RateLimited,
    /// `wrong-secret`: key confirmation failed (a wrong secret half, or an intercepted
    /// connection).
    WrongSecret,
    /// A reason this version does not know.
    Other(String),
}

impl RefuseReason {
    /// The stable code string.
    pub fn code(&self) -> &str {
        match self {
            RefuseReason::UnknownCode => "unknown-code",
            RefuseReason::Expired => "expired",
            RefuseReason::Used => "used",
            RefuseReason::Cancelled => "cancelled",
            RefuseReason::Burned => "burned",
            RefuseReason::RateLimited => "rate-limited",
            RefuseReason::WrongSecret => "wrong-secret",
            RefuseReason::Other(code) => code,
        }
    }

    fn from_code(code: String) -> RefuseReason {
        match code.as_str() {
            "unknown-code" => RefuseReason::UnknownCode,
            "expired" => RefuseReason::Expired,
            "used" => RefuseReason::Used,
            "cancelled" => RefuseReason::Cancelled,
            "burned" => RefuseReason::Burned,
            "rate-limited" => RefuseReason::RateLimited,
            "wrong-secret" => RefuseReason::WrongSecret,
            _ => RefuseReason::Other(code),
        }
    }

    fn to_error(&self) -> PairError {
        match self {
            RefuseReason::UnknownCode => PairError::UnknownCode,
            RefuseReason::Expired => PairError::Expired,
            RefuseReason::Used => PairError::Used,
            RefuseReason::Cancelled => PairError::Cancelled,
            RefuseReason::Burned => PairError::Burned,
            RefuseReason::RateLimited => PairError::RateLimited,
            RefuseReason::WrongSecret => PairError::WrongSecret,
            RefuseReason::Other(code) => PairError::Refused { code: code.clone() },
        }
    }
}

/// A pairing message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PairMessage {
    /// `0`
    Hello(PairHello),
    /// `1`
    Reply(PairReply),
    /// `2`
    Confirm(Confirm),
    /// `3`
    Grant(Grant),
    /// `4`
    Refuse(Refuse),
}

#[derive(Serialize, Deserialize)]
struct WireHello {
    #[serde(rename = "l")]
    locator_id: Fixed<LOCATOR_ID_LEN>,
    #[serde(rename = "m")]
    spake_msg: Fixed<SPAKE_MSG_LEN>,
}

#[derive(Serialize, Deserialize)]
struct WireReply {
    #[serde(rename = "m")]
    spake_msg: Fixed<SPAKE_MSG_LEN>,
}

#[derive(Serialize, Deserialize)]
struct WireConfirm {
    #[serde(rename = "c")]
    mac: Fixed<MAC_LEN>,
}

#[derive(Serialize, Deserialize)]
struct WireGrant {
    #[serde(rename = "s")]
    share_id: Fixed<32>,
    #[serde(rename = "a")]
    access: u8,
    #[serde(rename = "m")]
    members: Vec<(Fixed<32>, u8)>,
}

#[derive(Serialize, Deserialize)]
struct WireRefuse {
    #[serde(rename = "r")]
    reason: String,
}

fn malformed(detail: &str) -> ProtocolViolation {
    ProtocolViolation::MalformedMessage {
        detail: detail.to_owned(),
    }
}

impl PairMessage {
    /// The message's name in the spec, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            PairMessage::Hello(_) => "PairHello",
            PairMessage::Reply(_) => "PairReply",
            PairMessage::Confirm(_) => "Confirm",
            PairMessage::Grant(_) => "Grant",
            PairMessage::Refuse(_) => "Refuse",
        }
    }

    /// Encodes the message as an extension payload: the CBOR array `[type, body]`.
    pub fn encode(&self) -> Bytes {
        let bytes = match self {
            PairMessage::Hello(m) => codec::encode(&(
                0u8,
                WireHello {
                    locator_id: Fixed(m.locator_id),
                    spake_msg: Fixed(m.spake_msg),
                },
            )),
            PairMessage::Reply(m) => codec::encode(&(
                1u8,
                WireReply {
                    spake_msg: Fixed(m.spake_msg),
                },
            )),
            PairMessage::Confirm(m) => codec::encode(&(2u8, WireConfirm { mac: Fixed(m.mac) })),
            PairMessage::Grant(m) => codec::encode(&(
                3u8,
                WireGrant {
                    share_id: Fixed(m.share_id),
                    access: access_to_number(m.access),
                    members: m
                        .members
                        .iter()
                        .map(|member| (Fixed(member.public_key), access_to_number(member.access)))
                        .collect(),
                },
            )),
            PairMessage::Refuse(m) => codec::encode(&(
                4u8,
                WireRefuse {
                    reason: m.reason.code().to_owned(),
                },
            )),
        };
        Bytes::from(bytes)
    }

    /// Decodes an extension payload; `Ok(None)` for a type this version does not know.
    pub fn decode(payload: &[u8]) -> Result<Option<PairMessage>, ProtocolViolation> {
        let (kind, _): (u64, de::IgnoredAny) = codec::decode(payload)?;
        Ok(Some(match kind {
            0 => {
                let m = codec::decode::<(u8, WireHello)>(payload)?.1;
                PairMessage::Hello(PairHello {
                    locator_id: m.locator_id.0,
                    spake_msg: m.spake_msg.0,
                })
            }
            1 => {
                let m = codec::decode::<(u8, WireReply)>(payload)?.1;
                PairMessage::Reply(PairReply {
                    spake_msg: m.spake_msg.0,
                })
            }
            2 => PairMessage::Confirm(Confirm {
                mac: codec::decode::<(u8, WireConfirm)>(payload)?.1.mac.0,
            }),
            3 => {
                let m = codec::decode::<(u8, WireGrant)>(payload)?.1;
                if m.members.len() > MAX_GRANT_MEMBERS {
                    return Err(ProtocolViolation::FieldTooLong {
                        field: "Grant.members",
                        len: m.members.len(),
                        max: MAX_GRANT_MEMBERS,
                    });
                }
                let access = access_from_number(m.access)
                    .ok_or_else(|| malformed("Grant.access is neither 0 nor 1"))?;
                let members = m
                    .members
                    .into_iter()
                    .map(|(key, access)| {
                        Ok(Member {
                            public_key: key.0,
                            access: access_from_number(access)
                                .ok_or_else(|| malformed("a member's access is neither 0 nor 1"))?,
                        })
                    })
                    .collect::<Result<Vec<_>, ProtocolViolation>>()?;
                PairMessage::Grant(Grant {
                    share_id: m.share_id.0,
                    access,
                    members,
                })
            }
            4 => {
                let m = codec::decode::<(u8, WireRefuse)>(payload)?.1;
                if m.reason.len() > MAX_REFUSE_REASON_LEN {
                    return Err(ProtocolViolation::FieldTooLong {
                        field: "Refuse.reason",
                        len: m.reason.len(),
                        max: MAX_REFUSE_REASON_LEN,
                    });
                }
                PairMessage::Refuse(Refuse {
                    reason: RefuseReason::from_code(m.reason),
                })
            }
            _ => return Ok(None),
        }))
    }
}

// ---------------------------------------------------------------------------------------------
// Errors and outputs
// ---------------------------------------------------------------------------------------------

/// Why a pairing attempt failed. Each message tells the person what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PairError {
    /// The inviter has no code with this locator.
    UnknownCode,
    /// The code's lifetime is over.
    Expired,
    /// The code has admitted as many devices as it may.
    Used,
    /// The inviter cancelled the code.
    Cancelled,
    /// Too many wrong attempts used the code up.
    Burned,
    /// Too many failed attempts from this address lately.
    RateLimited,
    /// Key confirmation failed: the secret half differs, or someone is intercepting the
    /// connection.
    WrongSecret,
    /// The inviter's grant does not list the inviter as a read-write member, or the joiner
    /// with the access granted.
    BadGrant {
        /// What is wrong with it.
        detail: &'static str,
    },
    /// The peer refused with a reason this version does not know.
    Refused {
        /// The peer's code string.
        code: String,
    },
    /// The peer broke the pairing protocol.
    Protocol(ProtocolViolation),
}

impl PairError {
    /// The stable, kebab-case name of this error.
    pub fn code(&self) -> &'static str {
        match self {
            PairError::UnknownCode => "unknown-code",
            PairError::Expired => "expired",
            PairError::Used => "used",
            PairError::Cancelled => "cancelled",
            PairError::Burned => "burned",
            PairError::RateLimited => "rate-limited",
            PairError::WrongSecret => "wrong-secret",
            PairError::BadGrant { .. } => "bad-grant",
            PairError::Refused { .. } => "refused",
            PairError::Protocol(p) => p.code(),
        }
    }

    fn refuse_reason(&self) -> Option<RefuseReason> {
        Some(match self {
            PairError::UnknownCode => RefuseReason::UnknownCode,
            PairError::Expired => RefuseReason::Expired,
            PairError::Used => RefuseReason::Used,
            PairError::Cancelled => RefuseReason::Cancelled,
            PairError::Burned => RefuseReason::Burned,
            PairError::RateLimited => RefuseReason::RateLimited,
            PairError::WrongSecret => RefuseReason::WrongSecret,
            _ => return None,
        })
    }
}

impl fmt::Display for PairError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PairError::UnknownCode => write!(
                f,
                "the other device does not know this access code: check that you typed the \
                 code it shows, or ask for a new one"
            ),
            PairError::Expired => write!(
                f,
                "this access code has expired: ask the other device for a new code"
            ),
            PairError::Used => write!(
                f,
                "this access code has already been used: ask the other device for a new code"
            ),
            PairError::Cancelled => write!(
                f,
                "this access code was cancelled on the other device: ask for a new code"
            ),
            PairError::Burned => write!(
                f,
                "too many wrong attempts used up this access code: ask the other device for a \
                 new code"
            ),
            PairError::RateLimited => write!(
                f,
                "too many failed pairing attempts from this network address: wait ten \
                 minutes, then try again"
            ),
            PairError::WrongSecret => write!(
                f,
                "the access code does not match the one the other device issued, or someone \
                 is intercepting the connection: check the code letter by letter and try \
                 again; if it keeps failing, pair on a network you trust"
            ),
            PairError::BadGrant { detail } => write!(
                f,
                "the other device sent an invalid membership grant ({detail}); the devices \
                 were not paired: update both and try again"
            ),
            PairError::Refused { code } => write!(
                f,
                "the other device refused to pair ({code:?}): ask it for a new code, or \
                 update this device"
            ),
            PairError::Protocol(p) => write!(
                f,
                "the other device broke the pairing protocol ({p}); the devices were not \
                 paired"
            ),
        }
    }
}

impl std::error::Error for PairError {}

impl From<ProtocolViolation> for PairError {
    fn from(e: ProtocolViolation) -> PairError {
        PairError::Protocol(e)
    }
}

/// A joiner's result: everything it needs to become a member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// The share joined.
    pub share_id: ShareId,
    /// This device's access.
    pub access: Access,
    /// The members as the inviter listed them (this device and the inviter included).
    pub members: Vec<Member>,
    /// The inviter's public key, to pin.
    pub inviter_public_key: [u8; 32],
}

/// An inviter's result: the device to add to the share's members and pin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// The joiner's public key.
    pub public_key: [u8; 32],
    /// The access granted.
    pub access: Access,
    /// The share.
    pub share_id: ShareId,
    /// The locator ID of the code that admitted it.
    pub locator_id: [u8; LOCATOR_ID_LEN],
}

/// What a pairing state machine asks its driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send this payload as an extension message of [`PAIR_EXTENSION`] on the same session.
    Send(Bytes),
    /// The [`Invitations`] registry changed (a use consumed, a failure counted): persist it.
    Persist,
    /// Joiner: paired. Add the members, pin the inviter, open the share.
    Joined(Joined),
    /// Inviter: this device proved it knows the code. Add it to the members, pin it, then call
    /// [`Inviter::grant`] with the share's member list.
    Admitted(Admitted),
    /// The attempt is over. Send whatever `Send` came before it, then close the connection.
    Failed(PairError),
}

/// How the caller misused the pairing API. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PairMisuse {
    /// The registry holds [`MAX_INVITATIONS`] invitations.
    TooManyInvitations,
    /// A lifetime of zero or more than [`MAX_LIFETIME_MICROS`].
    BadLifetime,
    /// A code that admits no device.
    ZeroUses,
    /// The random bytes give a locator the registry already holds: draw new ones.
    DuplicateCode,
    /// `grant` before the joiner was admitted, or twice.
    NotAdmitted,
    /// The member list given to `grant` does not list this device as read-write.
    InviterNotReadWrite,
    /// The member list given to `grant` has more than [`MAX_GRANT_MEMBERS`] entries.
    TooManyMembers,
}

impl PairMisuse {
    /// The stable name of this misuse.
    pub fn code(&self) -> &'static str {
        match self {
            PairMisuse::TooManyInvitations => "too-many-invitations",
            PairMisuse::BadLifetime => "bad-lifetime",
            PairMisuse::ZeroUses => "zero-uses",
            PairMisuse::DuplicateCode => "duplicate-code",
            PairMisuse::NotAdmitted => "not-admitted",
            PairMisuse::InviterNotReadWrite => "inviter-not-read-write",
            PairMisuse::TooManyMembers => "too-many-members",
        }
    }
}

impl fmt::Display for PairMisuse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PairMisuse::TooManyInvitations => write!(
                f,
                "{MAX_INVITATIONS} invitations already exist: cancel some first"
            ),
            PairMisuse::BadLifetime => write!(
                f,
                "a code's lifetime must be more than zero and at most 30 days"
            ),
            PairMisuse::ZeroUses => write!(f, "a code must admit at least one device"),
            PairMisuse::DuplicateCode => {
                write!(f, "the random bytes repeat an existing code: draw new ones")
            }
            PairMisuse::NotAdmitted => write!(f, "no admitted joiner awaits a grant"),
            PairMisuse::InviterNotReadWrite => write!(
                f,
                "only a read-write member can grant membership, and this device is not one"
            ),
            PairMisuse::TooManyMembers => {
                write!(f, "a grant lists at most {MAX_GRANT_MEMBERS} members")
            }
        }
    }
}

impl std::error::Error for PairMisuse {}

// ---------------------------------------------------------------------------------------------
// Invitations
// ---------------------------------------------------------------------------------------------

/// How many devices a code admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Uses {
    /// One (the default).
    Single,
    /// At most this many.
    Limited(u32),
    /// Any number, until the code expires or is cancelled.
    Unlimited,
}

impl Uses {
    fn max(self) -> Option<u32> {
        match self {
            Uses::Single => Some(1),
            Uses::Limited(n) => Some(n),
            Uses::Unlimited => None,
        }
    }

    /// Failed attempts after which a code with these uses is burned.
    pub fn burn_after(self) -> u32 {
        if self.max() == Some(1) {
            SINGLE_USE_BURN_AFTER
        } else {
            MULTI_USE_BURN_AFTER
        }
    }
}

/// What a new code grants and how long it lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvitationOptions {
    /// The access granted (default read-write).
    pub access: Access,
    /// How many devices it admits (default one).
    pub uses: Uses,
    /// Microseconds from creation to expiry (default [`DEFAULT_LIFETIME_MICROS`]).
    pub lifetime_micros: u64,
}

impl Default for InvitationOptions {
    fn default() -> Self {
        InvitationOptions {
            access: Access::ReadWrite,
            uses: Uses::Single,
            lifetime_micros: DEFAULT_LIFETIME_MICROS,
        }
    }
}

/// Where an invitation stands at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvitationStatus {
    /// It admits devices.
    Active,
    /// Cancelled by the inviter.
    Cancelled,
    /// It admitted as many devices as it may.
    Used,
    /// Too many failed attempts.
    Burned,
    /// Its lifetime is over.
    Expired,
}

impl InvitationStatus {
    fn refusal(self) -> Option<PairError> {
        match self {
            InvitationStatus::Active => None,
            InvitationStatus::Cancelled => Some(PairError::Cancelled),
            InvitationStatus::Used => Some(PairError::Used),
            InvitationStatus::Burned => Some(PairError::Burned),
            InvitationStatus::Expired => Some(PairError::Expired),
        }
    }
}

/// One code the inviter issued, as persisted.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invitation {
    code: Fixed<ACCESS_CODE_BYTES>,
    share_id: Fixed<32>,
    #[serde(with = "access_serde")]
    access: Access,
    uses: Uses,
    admitted: u32,
    created_at: UnixMicros,
    expires_at: UnixMicros,
    cancelled: bool,
    failures: u32,
    /// When it was cancelled, used up or burned, for pruning.
    ended_at: Option<UnixMicros>,
}

impl fmt::Debug for Invitation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Invitation")
            .field("code", &self.code())
            .field("access", &self.access)
            .field("uses", &self.uses)
            .field("admitted", &self.admitted)
            .field("expires_at", &self.expires_at)
            .field("cancelled", &self.cancelled)
            .field("failures", &self.failures)
            .finish_non_exhaustive()
    }
}

impl Invitation {
    /// The access code (show it only to the person who is to type it).
    pub fn code(&self) -> AccessCode {
        AccessCode::from_bytes(self.code.0)
    }
    /// The code's locator ID.
    pub fn locator_id(&self) -> [u8; LOCATOR_ID_LEN] {
        self.code().locator_id()
    }
    /// The share it grants.
    pub fn share_id(&self) -> &ShareId {
        &self.share_id.0
    }
    /// The access it grants.
    pub fn access(&self) -> Access {
        self.access
    }
    /// How many devices it admits in all.
    pub fn uses(&self) -> Uses {
        self.uses
    }
    /// How many it has admitted.
    pub fn admitted(&self) -> u32 {
        self.admitted
    }
    /// How many more it admits (`None`: unlimited).
    pub fn uses_left(&self) -> Option<u32> {
        self.uses.max().map(|m| m.saturating_sub(self.admitted))
    }
    /// When it was created.
    pub fn created_at(&self) -> UnixMicros {
        self.created_at
    }
    /// When it expires.
    pub fn expires_at(&self) -> UnixMicros {
        self.expires_at
    }
    /// Failed attempts so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Where it stands at `now`. When several apply, the first of cancelled, used, burned,
    /// expired is reported.
    pub fn status(&self, now: UnixMicros) -> InvitationStatus {
        if self.cancelled {
            InvitationStatus::Cancelled
        } else if self.uses_left() == Some(0) {
            InvitationStatus::Used
        } else if self.failures >= self.uses.burn_after() {
            InvitationStatus::Burned
        } else if now >= self.expires_at {
            InvitationStatus::Expired
        } else {
            InvitationStatus::Active
        }
    }

    fn ended(&self) -> UnixMicros {
        self.ended_at
            .map_or(self.expires_at, |t| t.min(self.expires_at))
    }
}

/// The per-address failure limiter, persisted with the registry (so a restart does not give a
/// guessing address a fresh allowance).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct AddressLimiter {
    /// `SHA-256(address)` → times of recent failures, oldest first, at most
    /// [`ADDRESS_MAX_FAILURES`].
    failures: BTreeMap<[u8; 32], VecDeque<UnixMicros>>,
}

impl AddressLimiter {
    fn key(address: &[u8]) -> [u8; 32] {
        Sha256::digest(address).into()
    }

    fn is_limited(&mut self, address: &[u8], now: UnixMicros) -> bool {
        let key = AddressLimiter::key(address);
        let Some(times) = self.failures.get_mut(&key) else {
            return false;
        };
        while times
            .front()
            .is_some_and(|&t| now.saturating_sub(t) >= ADDRESS_WINDOW_MICROS)
        {
            times.pop_front();
        }
        if times.is_empty() {
            self.failures.remove(&key);
            return false;
        }
        times.len() >= ADDRESS_MAX_FAILURES
    }

    /// Forgets addresses with no failure within the window before `now`.
    fn prune(&mut self, now: UnixMicros) {
        self.failures.retain(|_, times| {
            times
                .back()
                .is_some_and(|&t| now.saturating_sub(t) < ADDRESS_WINDOW_MICROS)
        });
    }

    fn record(&mut self, address: &[u8], now: UnixMicros) {
        let key = AddressLimiter::key(address);
        if !self.failures.contains_key(&key) && self.failures.len() >= MAX_TRACKED_ADDRESSES {
            let stalest = self
                .failures
                .iter()
                .min_by_key(|(_, times)| times.back().copied().unwrap_or(0))
                .map(|(k, _)| *k);
            if let Some(k) = stalest {
                self.failures.remove(&k);
            }
        }
        let times = self.failures.entry(key).or_default();
        times.push_back(now);
        while times.len() > ADDRESS_MAX_FAILURES {
            times.pop_front();
        }
    }
}

/// The inviter's codes, by locator ID, and the per-address failure limiter.
///
/// Serialize it (serde; [`encode`](Self::encode) gives CBOR) whenever a pairing emits
/// [`Output::Persist`] or after `create`/`cancel`/`prune`, and restore it at start: codes, their
/// uses and failure counts, and each address's recent failures survive a restart.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Invitations {
    by_locator: BTreeMap<[u8; LOCATOR_ID_LEN], Invitation>,
    addresses: AddressLimiter,
}

/// The serde form (`spec/pairing.md` § 8): `{"i": [invitation...], "a": [[address key,
/// [failure time...]]...]}`.
impl Serialize for Invitations {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        struct Invites<'a>(&'a BTreeMap<[u8; LOCATOR_ID_LEN], Invitation>);
        impl Serialize for Invites<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(self.0.values())
            }
        }
        struct Addresses<'a>(&'a BTreeMap<[u8; 32], VecDeque<UnixMicros>>);
        impl Serialize for Addresses<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(self.0.iter().map(|(key, times)| (Fixed(*key), times)))
            }
        }
        let mut map = s.serialize_map(Some(2))?;
        map.serialize_entry("i", &Invites(&self.by_locator))?;
        map.serialize_entry("a", &Addresses(&self.addresses.failures))?;
        map.end()
    }
}

impl<'de> Deserialize<'de> for Invitations {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(InvitationsVisitor)
    }
}

struct InvitationsVisitor;

impl InvitationsVisitor {
    fn build<E: de::Error>(
        invitations: Vec<Invitation>,
        addresses: Vec<(Fixed<32>, Vec<UnixMicros>)>,
    ) -> Result<Invitations, E> {
        if addresses.len() > MAX_TRACKED_ADDRESSES {
            return Err(E::custom(format!(
                "{} addresses with pairing failures (at most {MAX_TRACKED_ADDRESSES})",
                addresses.len()
            )));
        }
        let mut failures = BTreeMap::new();
        for (key, mut times) in addresses {
            if times.is_empty() || times.len() > ADDRESS_MAX_FAILURES {
                return Err(E::custom(format!(
                    "an address with {} failure times (1 to {ADDRESS_MAX_FAILURES})",
                    times.len()
                )));
            }
            times.sort_unstable();
            if failures.insert(key.0, VecDeque::from(times)).is_some() {
                return Err(E::custom("an address listed twice among pairing failures"));
            }
        }
        Ok(Invitations {
            by_locator: invitations
                .into_iter()
                .map(|i| (i.locator_id(), i))
                .collect(),
            addresses: AddressLimiter { failures },
        })
    }
}

impl<'de> Visitor<'de> for InvitationsVisitor {
    type Value = Invitations;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a pairing registry: a map of invitations (\"i\") and address failures (\"a\")")
    }

    /// The earlier form, a bare sequence of invitations (no address failures recorded).
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Invitations, A::Error> {
        let mut invitations = Vec::new();
        while let Some(invitation) = seq.next_element()? {
            invitations.push(invitation);
        }
        InvitationsVisitor::build(invitations, Vec::new())
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Invitations, A::Error> {
        let mut invitations = None;
        let mut addresses = None;
        while let Some(field) = map.next_key::<String>()? {
            match field.as_str() {
                "i" if invitations.is_none() => invitations = Some(map.next_value()?),
                "a" if addresses.is_none() => addresses = Some(map.next_value()?),
                "i" | "a" => {
                    return Err(de::Error::custom(format!(
                        "field {field:?} twice in the pairing registry"
                    )));
                }
                // Fields of a later version are skipped.
                _ => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        InvitationsVisitor::build(
            invitations.ok_or_else(|| de::Error::missing_field("i"))?,
            addresses.unwrap_or_default(),
        )
    }
}

impl Invitations {
    /// An empty registry.
    pub fn new() -> Invitations {
        Invitations::default()
    }

    /// Creates a code for `share_id`. `random` MUST come from a CSPRNG (it becomes the code).
    /// Ended invitations past their retention are pruned first.
    pub fn create(
        &mut self,
        now: UnixMicros,
        random: [u8; ACCESS_CODE_BYTES],
        share_id: ShareId,
        options: InvitationOptions,
    ) -> Result<AccessCode, PairMisuse> {
        if options.lifetime_micros == 0 || options.lifetime_micros > MAX_LIFETIME_MICROS {
            return Err(PairMisuse::BadLifetime);
        }
        if options.uses.max() == Some(0) {
            return Err(PairMisuse::ZeroUses);
        }
        self.prune(now);
        if self.by_locator.len() >= MAX_INVITATIONS {
            return Err(PairMisuse::TooManyInvitations);
        }
        let code = AccessCode::from_random(random);
        let locator_id = code.locator_id();
        if self.by_locator.contains_key(&locator_id) {
            return Err(PairMisuse::DuplicateCode);
        }
        self.by_locator.insert(
            locator_id,
            Invitation {
                code: Fixed(code.to_bytes()),
                share_id: Fixed(share_id),
                access: options.access,
                uses: options.uses,
                admitted: 0,
                created_at: now,
                expires_at: now.saturating_add(options.lifetime_micros),
                cancelled: false,
                failures: 0,
                ended_at: None,
            },
        );
        Ok(code)
    }

    /// Cancels the code; returns whether it was active. It is kept (and refused as cancelled)
    /// until pruned.
    pub fn cancel(&mut self, locator_id: &[u8; LOCATOR_ID_LEN], now: UnixMicros) -> bool {
        let Some(invitation) = self.by_locator.get_mut(locator_id) else {
            return false;
        };
        let was_active = invitation.status(now) == InvitationStatus::Active;
        if !invitation.cancelled {
            invitation.cancelled = true;
            invitation.ended_at.get_or_insert(now);
        }
        was_active
    }

    /// The invitation with this locator ID.
    pub fn get(&self, locator_id: &[u8; LOCATOR_ID_LEN]) -> Option<&Invitation> {
        self.by_locator.get(locator_id)
    }

    /// Every invitation, ended ones included, ordered by locator ID.
    pub fn list(&self) -> impl Iterator<Item = &Invitation> {
        self.by_locator.values()
    }

    /// How many invitations the registry holds.
    pub fn len(&self) -> usize {
        self.by_locator.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.by_locator.is_empty()
    }

    /// Forgets invitations that ended more than [`ENDED_RETENTION_MICROS`] before `now`, and
    /// addresses whose last failure is older than [`ADDRESS_WINDOW_MICROS`]; returns how many
    /// invitations.
    pub fn prune(&mut self, now: UnixMicros) -> usize {
        self.addresses.prune(now);
        let before = self.by_locator.len();
        self.by_locator
            .retain(|_, i| now.saturating_sub(i.ended()) < ENDED_RETENTION_MICROS);
        before - self.by_locator.len()
    }

    /// Whether `address` has too many recent failures to try again at `now`.
    pub fn address_limited(&mut self, address: &[u8], now: UnixMicros) -> bool {
        self.addresses.is_limited(address, now)
    }

    /// The registry as CBOR, to persist.
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// A registry read back from [`encode`](Self::encode)'s bytes.
    pub fn decode(bytes: &[u8]) -> Result<Invitations, ProtocolViolation> {
        codec::decode(bytes)
    }
}

// ---------------------------------------------------------------------------------------------
// The joiner
// ---------------------------------------------------------------------------------------------

enum JoinerState {
    AwaitReply {
        spake: Spake2<Ed25519Group>,
        own_msg: [u8; SPAKE_MSG_LEN],
    },
    AwaitConfirm {
        schedule: KeySchedule,
    },
    AwaitGrant,
    Done,
}

impl JoinerState {
    fn name(&self) -> &'static str {
        match self {
            JoinerState::AwaitReply { .. } => "await-reply",
            JoinerState::AwaitConfirm { .. } => "await-confirm",
            JoinerState::AwaitGrant => "await-grant",
            JoinerState::Done => "done",
        }
    }
}

/// The joining side of one pairing attempt (one connection).
///
/// Created with the code the person typed; it queues `PairHello` at once. Feed every payload of
/// the [`PAIR_EXTENSION`] to [`handle_payload`](Self::handle_payload) and drain
/// [`poll_output`](Self::poll_output). Ends with [`Output::Joined`] or [`Output::Failed`];
/// later payloads are ignored.
pub struct Joiner {
    locator_id: [u8; LOCATOR_ID_LEN],
    channel_binding: [u8; CHANNEL_BINDING_LEN],
    own_key: [u8; 32],
    inviter_key: [u8; 32],
    state: JoinerState,
    outputs: VecDeque<Output>,
}

impl fmt::Debug for Joiner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Joiner")
            .field("state", &self.state.name())
            .finish_non_exhaustive()
    }
}

impl Joiner {
    /// Starts an attempt with `code`, over a TLS session whose channel binding is
    /// `channel_binding`, where this device presented `own_key` and the inviter `inviter_key`
    /// (both from the TLS handshake). `seed` MUST be 32 fresh bytes from a CSPRNG; it becomes
    /// the SPAKE2 scalar.
    pub fn new(
        code: &AccessCode,
        channel_binding: [u8; CHANNEL_BINDING_LEN],
        own_key: [u8; 32],
        inviter_key: [u8; 32],
        seed: [u8; 32],
    ) -> Joiner {
        let (id_a, id_b) = spake_ids();
        let (spake, msg) = Spake2::<Ed25519Group>::start_b_with_rng(
            &spake_password(code),
            &id_a,
            &id_b,
            ChaCha20Rng::from_seed(seed),
        );
        let own_msg = to_spake_msg(msg);
        let locator_id = code.locator_id();
        let mut outputs = VecDeque::new();
        outputs.push_back(Output::Send(
            PairMessage::Hello(PairHello {
                locator_id,
                spake_msg: own_msg,
            })
            .encode(),
        ));
        Joiner {
            locator_id,
            channel_binding,
            own_key,
            inviter_key,
            state: JoinerState::AwaitReply { spake, own_msg },
            outputs,
        }
    }

    /// Whether the attempt is over (joined or failed).
    pub fn is_finished(&self) -> bool {
        matches!(self.state, JoinerState::Done)
    }

    /// The next thing to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// One payload received on the [`PAIR_EXTENSION`].
    pub fn handle_payload(&mut self, payload: &[u8]) {
        if self.is_finished() {
            return;
        }
        let message = match PairMessage::decode(payload) {
            Ok(Some(m)) => m,
            Ok(None) => return,
            Err(e) => return self.fail(e.into()),
        };
        let state = core::mem::replace(&mut self.state, JoinerState::Done);
        match (state, message) {
            (_, PairMessage::Refuse(refuse)) => self.fail(refuse.reason.to_error()),
            (JoinerState::AwaitReply { spake, own_msg }, PairMessage::Reply(reply)) => {
                let key = match spake.finish(&reply.spake_msg) {
                    Ok(key) => key,
                    Err(_) => {
                        return self.fail(
                            malformed("PairReply.spake_msg is not an inviter's SPAKE2 message")
                                .into(),
                        );
                    }
                };
                let transcript = transcript_hash(
                    &self.locator_id,
                    &self.channel_binding,
                    &self.inviter_key,
                    &self.own_key,
                    &reply.spake_msg,
                    &own_msg,
                );
                let schedule = KeySchedule::derive(&key, transcript);
                self.send(PairMessage::Confirm(Confirm {
                    mac: schedule.joiner_mac,
                }));
                self.state = JoinerState::AwaitConfirm { schedule };
            }
            (JoinerState::AwaitConfirm { schedule }, PairMessage::Confirm(confirm)) => {
                if hmac_matches(&schedule.inviter_key, &schedule.transcript, &confirm.mac) {
                    self.state = JoinerState::AwaitGrant;
                } else {
                    self.send(PairMessage::Refuse(Refuse {
                        reason: RefuseReason::WrongSecret,
                    }));
                    self.fail(PairError::WrongSecret);
                }
            }
            // The grant is authenticated by the TLS session: it arrives on the session whose
            // channel binding the inviter's confirmation MAC covered.
            (JoinerState::AwaitGrant, PairMessage::Grant(grant)) => {
                match self.check_grant(&grant) {
                    Ok(()) => self.outputs.push_back(Output::Joined(Joined {
                        share_id: grant.share_id,
                        access: grant.access,
                        members: grant.members,
                        inviter_public_key: self.inviter_key,
                    })),
                    Err(e) => self.fail(e),
                }
            }
            (state, message) => self.fail(
                ProtocolViolation::UnexpectedMessage {
                    got: message.name(),
                    state: state.name(),
                }
                .into(),
            ),
        }
    }

    fn check_grant(&self, grant: &Grant) -> Result<(), PairError> {
        let listed = |key: [u8; 32], access: Access| {
            grant
                .members
                .iter()
                .any(|m| m.public_key == key && m.access == access)
        };
        if grant
            .members
            .windows(2)
            .any(|w| w[0].public_key >= w[1].public_key)
        {
            return Err(PairError::BadGrant {
                detail: "members not ordered by key, or listed twice",
            });
        }
        if !listed(self.inviter_key, Access::ReadWrite) {
            return Err(PairError::BadGrant {
                detail: "the inviter is not a read-write member",
            });
        }
        if !listed(self.own_key, grant.access) {
            return Err(PairError::BadGrant {
                detail: "this device is not listed with the access granted",
            });
        }
        Ok(())
    }

    fn send(&mut self, message: PairMessage) {
        self.outputs.push_back(Output::Send(message.encode()));
    }

    fn fail(&mut self, error: PairError) {
        self.state = JoinerState::Done;
        self.outputs.push_back(Output::Failed(error));
    }
}

// ---------------------------------------------------------------------------------------------
// The inviter
// ---------------------------------------------------------------------------------------------

enum InviterState {
    AwaitHello,
    AwaitConfirm {
        locator_id: [u8; LOCATOR_ID_LEN],
        schedule: KeySchedule,
    },
    AwaitGrant {
        share_id: ShareId,
        access: Access,
    },
    Done,
}

impl InviterState {
    fn name(&self) -> &'static str {
        match self {
            InviterState::AwaitHello => "await-hello",
            InviterState::AwaitConfirm { .. } => "await-confirm",
            InviterState::AwaitGrant { .. } => "await-grant",
            InviterState::Done => "done",
        }
    }
}

/// The inviting side of one pairing attempt (one connection in pairing mode).
///
/// Feed every payload of the [`PAIR_EXTENSION`] to [`handle_payload`](Self::handle_payload)
/// with the wall-clock time and the registry, and drain [`poll_output`](Self::poll_output).
/// On [`Output::Admitted`], add the device to the share and call [`grant`](Self::grant).
pub struct Inviter {
    channel_binding: [u8; CHANNEL_BINDING_LEN],
    own_key: [u8; 32],
    joiner_key: [u8; 32],
    address: Vec<u8>,
    seed: [u8; 32],
    state: InviterState,
    outputs: VecDeque<Output>,
}

impl fmt::Debug for Inviter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inviter")
            .field("state", &self.state.name())
            .finish_non_exhaustive()
    }
}

impl Inviter {
    /// Awaits a joiner over a TLS session whose channel binding is `channel_binding`, where
    /// this device presented `own_key` and the joiner `joiner_key`. `address` is an opaque key
    /// for the joiner's network address (e.g. its IP address without the port) for the
    /// per-address limit. `seed` MUST be 32 fresh bytes from a CSPRNG.
    pub fn new(
        channel_binding: [u8; CHANNEL_BINDING_LEN],
        own_key: [u8; 32],
        joiner_key: [u8; 32],
        address: &[u8],
        seed: [u8; 32],
    ) -> Inviter {
        Inviter {
            channel_binding,
            own_key,
            joiner_key,
            address: address.to_vec(),
            seed,
            state: InviterState::AwaitHello,
            outputs: VecDeque::new(),
        }
    }

    /// Whether the attempt is over (granted or failed).
    pub fn is_finished(&self) -> bool {
        matches!(self.state, InviterState::Done)
    }

    /// The next thing to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// One payload received on the [`PAIR_EXTENSION`], at wall-clock time `now`.
    pub fn handle_payload(
        &mut self,
        now: UnixMicros,
        invitations: &mut Invitations,
        payload: &[u8],
    ) {
        if self.is_finished() {
            return;
        }
        let message = match PairMessage::decode(payload) {
            Ok(Some(m)) => m,
            Ok(None) => return,
            Err(e) => return self.fail(e.into()),
        };
        let state = core::mem::replace(&mut self.state, InviterState::Done);
        match (state, message) {
            // The joiner gave up; nothing to count.
            (_, PairMessage::Refuse(refuse)) => self.fail(refuse.reason.to_error()),
            (InviterState::AwaitHello, PairMessage::Hello(hello)) => {
                self.on_hello(now, invitations, hello)
            }
            (
                InviterState::AwaitConfirm {
                    locator_id,
                    schedule,
                },
                PairMessage::Confirm(c),
            ) => self.on_confirm(now, invitations, locator_id, schedule, c),
            (state, message) => self.fail(
                ProtocolViolation::UnexpectedMessage {
                    got: message.name(),
                    state: state.name(),
                }
                .into(),
            ),
        }
    }

    fn on_hello(&mut self, now: UnixMicros, invitations: &mut Invitations, hello: PairHello) {
        if invitations.addresses.is_limited(&self.address, now) {
            return self.refuse(PairError::RateLimited);
        }
        let refusal = match invitations.by_locator.get(&hello.locator_id) {
            None => Some(PairError::UnknownCode),
            Some(invitation) => invitation.status(now).refusal(),
        };
        if let Some(error) = refusal {
            invitations.addresses.record(&self.address, now);
            self.outputs.push_back(Output::Persist);
            return self.refuse(error);
        }
        let Some(invitation) = invitations.by_locator.get(&hello.locator_id) else {
            return self.refuse(PairError::UnknownCode);
        };
        let (id_a, id_b) = spake_ids();
        let (spake, msg) = Spake2::<Ed25519Group>::start_a_with_rng(
            &spake_password(&invitation.code()),
            &id_a,
            &id_b,
            ChaCha20Rng::from_seed(self.seed),
        );
        let own_msg = to_spake_msg(msg);
        let Ok(key) = spake.finish(&hello.spake_msg) else {
            return self
                .fail(malformed("PairHello.spake_msg is not a joiner's SPAKE2 message").into());
        };
        let transcript = transcript_hash(
            &hello.locator_id,
            &self.channel_binding,
            &self.own_key,
            &self.joiner_key,
            &own_msg,
            &hello.spake_msg,
        );
        self.send(PairMessage::Reply(PairReply { spake_msg: own_msg }));
        self.state = InviterState::AwaitConfirm {
            locator_id: hello.locator_id,
            schedule: KeySchedule::derive(&key, transcript),
        };
    }

    fn on_confirm(
        &mut self,
        now: UnixMicros,
        invitations: &mut Invitations,
        locator_id: [u8; LOCATOR_ID_LEN],
        schedule: KeySchedule,
        confirm: Confirm,
    ) {
        let Some(invitation) = invitations.by_locator.get_mut(&locator_id) else {
            // Pruned while the attempt was under way: it had ended long ago.
            return self.refuse(PairError::UnknownCode);
        };
        if !hmac_matches(&schedule.joiner_key, &schedule.transcript, &confirm.mac) {
            invitation.failures = invitation.failures.saturating_add(1);
            if invitation.failures >= invitation.uses.burn_after() {
                invitation.ended_at.get_or_insert(now);
            }
            invitations.addresses.record(&self.address, now);
            self.outputs.push_back(Output::Persist);
            return self.refuse(PairError::WrongSecret);
        }
        // The code may have been used, cancelled, burned or expired meanwhile.
        if let Some(error) = invitation.status(now).refusal() {
            return self.refuse(error);
        }
        invitation.admitted = invitation.admitted.saturating_add(1);
        if invitation.uses_left() == Some(0) {
            invitation.ended_at.get_or_insert(now);
        }
        let share_id = *invitation.share_id();
        let access = invitation.access;
        self.outputs.push_back(Output::Persist);
        self.send(PairMessage::Confirm(Confirm {
            mac: schedule.inviter_mac,
        }));
        self.outputs.push_back(Output::Admitted(Admitted {
            public_key: self.joiner_key,
            access,
            share_id,
            locator_id,
        }));
        self.state = InviterState::AwaitGrant { share_id, access };
    }

    /// Sends the grant to the admitted joiner: `members` is the share's member list as this
    /// device knows it. The joiner is added with the access the code grants (replacing any
    /// entry it had); the list is sent ordered by key.
    pub fn grant(&mut self, members: Vec<Member>) -> Result<(), PairMisuse> {
        let InviterState::AwaitGrant { share_id, access } = self.state else {
            return Err(PairMisuse::NotAdmitted);
        };
        let mut by_key: BTreeMap<[u8; 32], Access> = members
            .into_iter()
            .map(|m| (m.public_key, m.access))
            .collect();
        if by_key.get(&self.own_key) != Some(&Access::ReadWrite) {
            return Err(PairMisuse::InviterNotReadWrite);
        }
        by_key.insert(self.joiner_key, access);
        if by_key.len() > MAX_GRANT_MEMBERS {
            return Err(PairMisuse::TooManyMembers);
        }
        let members = by_key
            .into_iter()
            .map(|(public_key, access)| Member { public_key, access })
            .collect();
        self.send(PairMessage::Grant(Grant {
            share_id,
            access,
            members,
        }));
        self.state = InviterState::Done;
        Ok(())
    }

    fn send(&mut self, message: PairMessage) {
        self.outputs.push_back(Output::Send(message.encode()));
    }

    /// Tells the joiner why, then fails.
    fn refuse(&mut self, error: PairError) {
        if let Some(reason) = error.refuse_reason() {
            self.send(PairMessage::Refuse(Refuse { reason }));
        }
        self.fail(error);
    }

    fn fail(&mut self, error: PairError) {
        self.state = InviterState::Done;
        self.outputs.push_back(Output::Failed(error));
    }
}
