//! Frames: the 8-byte header, the streaming decoder and segment reassembly.
//!
//! ```text
//! 0       4      5       6        8
//! | length | kind | flags | stream | payload (length bytes) |
//!   u32 BE   u8     u8      u16 BE
//! ```
//!
//! See `spec/wire.md` § Frames for the rules each field follows.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::{
    FRAME_HEADER_LEN, FRAMING_VERSION, MAX_FRAME_PAYLOAD, MAX_MESSAGE_SIZE, MAX_OPEN_STREAMS,
    PREFACE_LEN, PREFACE_MAGIC,
};
use crate::error::{Error, Incompatibility, ProtocolViolation};

/// The FIN flag of a SEGMENT frame: this segment ends its message.
pub const FLAG_FIN: u8 = 0x01;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// `0x01`: one whole message.
    Message,
    /// `0x02`: a piece of a segmented message.
    Segment,
    /// `0x80..=0xff`: a kind this version does not use, which receivers skip whole, whatever
    /// its flags and stream (padding, future hints).
    Ignorable(u8),
}

impl FrameKind {
    /// The kind byte.
    pub fn to_byte(self) -> u8 {
        match self {
            FrameKind::Message => 0x01,
            FrameKind::Segment => 0x02,
            FrameKind::Ignorable(b) => b,
        }
    }
}

/// A parsed, validated frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Payload length in bytes, at most [`MAX_FRAME_PAYLOAD`].
    pub len: u32,
    /// The frame kind.
    pub kind: FrameKind,
    /// The flags byte: [`FLAG_FIN`] on SEGMENT frames, anything on ignorable ones.
    pub flags: u8,
    /// The stream of a SEGMENT frame (non-zero); zero for MESSAGE frames.
    pub stream: u16,
}

impl FrameHeader {
    /// A MESSAGE frame header.
    pub fn message(len: usize) -> FrameHeader {
        FrameHeader {
            len: frame_len(len),
            kind: FrameKind::Message,
            flags: 0,
            stream: 0,
        }
    }

    /// A SEGMENT frame header.
    pub fn segment(len: usize, stream: u16, fin: bool) -> FrameHeader {
        let flags = if fin { FLAG_FIN } else { 0 };
        FrameHeader {
            len: frame_len(len),
            kind: FrameKind::Segment,
            flags,
            stream,
        }
    }

    /// Parses and validates the first [`FRAME_HEADER_LEN`] bytes of `buf`.
    pub fn decode(buf: [u8; FRAME_HEADER_LEN]) -> Result<FrameHeader, ProtocolViolation> {
        let mut b = &buf[..];
        let len = b.get_u32();
        let kind_byte = b.get_u8();
        let flags = b.get_u8();
        let stream = b.get_u16();
        if len as usize > MAX_FRAME_PAYLOAD {
            return Err(ProtocolViolation::FrameTooLarge { len });
        }
        let kind = match kind_byte {
            0x01 => FrameKind::Message,
            0x02 => FrameKind::Segment,
            k if k & 0x80 != 0 => FrameKind::Ignorable(k),
            k => return Err(ProtocolViolation::UnknownFrameKind { kind: k }),
        };
        let allowed_flags = match kind {
            FrameKind::Segment => FLAG_FIN,
            FrameKind::Message => 0,
            // Flags and stream of an ignorable frame belong to the future kind that defines
            // them; this version skips the frame whole.
            FrameKind::Ignorable(_) => 0xff,
        };
        if flags & !allowed_flags != 0 {
            return Err(ProtocolViolation::ReservedFlags {
                kind: kind_byte,
                flags,
            });
        }
        let header = FrameHeader {
            len,
            kind,
            flags,
            stream,
        };
        match kind {
            FrameKind::Message if stream != 0 => {
                return Err(ProtocolViolation::BadStream {
                    kind: kind_byte,
                    stream,
                });
            }
            FrameKind::Segment if stream == 0 => {
                return Err(ProtocolViolation::BadStream {
                    kind: kind_byte,
                    stream,
                });
            }
            FrameKind::Segment if len == 0 && !header.fin() => {
                return Err(ProtocolViolation::EmptySegment { stream });
            }
            _ => {}
        }
        Ok(header)
    }

    /// Whether this SEGMENT frame ends its message.
    pub fn fin(&self) -> bool {
        self.kind == FrameKind::Segment && self.flags & FLAG_FIN != 0
    }

    /// Writes the header's 8 bytes.
    pub fn encode(&self, out: &mut impl BufMut) {
        out.put_u32(self.len);
        out.put_u8(self.kind.to_byte());
        out.put_u8(self.flags);
        out.put_u16(self.stream);
    }
}

fn frame_len(len: usize) -> u32 {
    assert!(
        len <= MAX_FRAME_PAYLOAD,
        "frame payload of {len} bytes: callers split at MAX_FRAME_PAYLOAD"
    );
    // Cannot truncate: MAX_FRAME_PAYLOAD fits in u32 and was just checked.
    len as u32
}

/// Writes the connection preface.
pub fn encode_preface(out: &mut impl BufMut) {
    out.put_slice(&PREFACE_MAGIC);
    out.put_u16(FRAMING_VERSION);
}

/// A complete frame: header and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The header.
    pub header: FrameHeader,
    /// The payload, `header.len` bytes.
    pub payload: Bytes,
}

/// Splits a byte stream into frames, checking the preface first.
///
/// Push bytes as they arrive with [`push`](FrameDecoder::push), then call
/// [`next_frame`](FrameDecoder::next_frame) until it returns `Ok(None)`. The decoder never holds
/// more than one partial frame beyond what was pushed, and never allocates from a length it
/// read: a header is validated before its payload is awaited. After an error it stays failed.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    state: DecoderState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DecoderState {
    Preface,
    Frames,
    Failed,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder::new()
    }
}

impl FrameDecoder {
    /// A decoder that expects the preface first.
    pub fn new() -> FrameDecoder {
        FrameDecoder {
            buf: BytesMut::new(),
            state: DecoderState::Preface,
        }
    }

    /// A decoder for a stream whose preface was already consumed (tests, fuzzing).
    pub fn without_preface() -> FrameDecoder {
        FrameDecoder {
            buf: BytesMut::new(),
            state: DecoderState::Frames,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        if self.state != DecoderState::Failed {
            self.buf.extend_from_slice(data);
        }
    }

    /// Bytes received but not yet consumed as a whole frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, Error> {
        let result = self.next_frame_inner();
        if result.is_err() {
            self.state = DecoderState::Failed;
            self.buf = BytesMut::new();
        }
        result
    }

    fn next_frame_inner(&mut self) -> Result<Option<Frame>, Error> {
        if self.state == DecoderState::Failed {
            return Ok(None);
        }
        if self.state == DecoderState::Preface {
            // Check the magic as soon as its bytes are here, so a stranger is refused
            // without waiting for more.
            let have = self.buf.len().min(PREFACE_MAGIC.len());
            if self.buf[..have] != PREFACE_MAGIC[..have] {
                return Err(ProtocolViolation::BadPreface.into());
            }
            if self.buf.len() < PREFACE_LEN {
                return Ok(None);
            }
            let version = u16::from_be_bytes([self.buf[4], self.buf[5]]);
            if version != FRAMING_VERSION {
                return Err(Incompatibility::FramingVersion { theirs: version }.into());
            }
            self.buf.advance(PREFACE_LEN);
            self.state = DecoderState::Frames;
        }
        let Some(head) = self.buf.first_chunk::<FRAME_HEADER_LEN>() else {
            return Ok(None);
        };
        let header = FrameHeader::decode(*head)?;
        let total = FRAME_HEADER_LEN + header.len as usize;
        if self.buf.len() < total {
            // Reserve once for the whole frame; bounded by MAX_FRAME_PAYLOAD, checked above.
            self.buf.reserve(total - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(FRAME_HEADER_LEN);
        let payload = self.buf.split_to(header.len as usize).freeze();
        Ok(Some(Frame { header, payload }))
    }
}

/// Turns frames back into whole messages.
///
/// MESSAGE frames pass straight through; SEGMENT frames are collected per stream until FIN.
/// At most [`MAX_OPEN_STREAMS`] streams may be open and none may grow past
/// [`MAX_MESSAGE_SIZE`], so the memory it holds is bounded by their product.
#[derive(Debug, Default)]
pub struct Reassembler {
    // Few entries (MAX_OPEN_STREAMS), so a small vector beats a map.
    open: Vec<(u16, BytesMut)>,
}

impl Reassembler {
    /// An empty reassembler.
    pub fn new() -> Reassembler {
        Reassembler::default()
    }

    /// Bytes held in unfinished segmented messages.
    pub fn buffered(&self) -> usize {
        self.open.iter().map(|(_, b)| b.len()).sum()
    }

    /// Feeds one frame; returns a message body when one is complete.
    pub fn push(&mut self, frame: Frame) -> Result<Option<Bytes>, ProtocolViolation> {
        match frame.header.kind {
            FrameKind::Ignorable(_) => Ok(None),
            FrameKind::Message => Ok(Some(frame.payload)),
            FrameKind::Segment => {
                let stream = frame.header.stream;
                let index = match self.open.iter().position(|(s, _)| *s == stream) {
                    Some(i) => i,
                    None if frame.header.fin() => {
                        // A one-segment message: no copy needed.
                        return Ok(Some(frame.payload));
                    }
                    None if self.open.len() >= MAX_OPEN_STREAMS => {
                        return Err(ProtocolViolation::TooManyStreams);
                    }
                    None => {
                        self.open.push((stream, BytesMut::new()));
                        self.open.len() - 1
                    }
                };
                let buf = &mut self.open[index].1;
                let size = buf.len() + frame.payload.len();
                if size > MAX_MESSAGE_SIZE {
                    return Err(ProtocolViolation::MessageTooLarge { size });
                }
                buf.extend_from_slice(&frame.payload);
                if frame.header.fin() {
                    let (_, body) = self.open.swap_remove(index);
                    Ok(Some(body.freeze()))
                } else {
                    Ok(None)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_bytes(header: FrameHeader, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        header.encode(&mut out);
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn header_round_trip() {
        for h in [
            FrameHeader::message(0),
            FrameHeader::message(MAX_FRAME_PAYLOAD),
            FrameHeader::segment(5, 7, false),
            FrameHeader::segment(0, 65535, true),
        ] {
            let mut out = Vec::new();
            h.encode(&mut out);
            let arr: [u8; 8] = out.try_into().unwrap();
            assert_eq!(FrameHeader::decode(arr), Ok(h));
        }
    }

    #[test]
    fn decoder_waits_for_whole_frames_byte_by_byte() {
        let mut stream = Vec::new();
        encode_preface(&mut stream);
        stream.extend(frame_bytes(FrameHeader::message(3), b"abc"));
        stream.extend(frame_bytes(FrameHeader::segment(2, 1, true), b"de"));
        let mut d = FrameDecoder::new();
        let mut frames = Vec::new();
        for b in &stream {
            d.push(std::slice::from_ref(b));
            while let Some(f) = d.next_frame().unwrap() {
                frames.push(f);
            }
        }
        assert_eq!(frames.len(), 2);
        assert_eq!(&frames[0].payload[..], b"abc");
        assert_eq!(&frames[1].payload[..], b"de");
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn bad_magic_is_refused_at_the_first_wrong_byte() {
        let mut d = FrameDecoder::new();
        d.push(b"G");
        assert_eq!(d.next_frame(), Err(ProtocolViolation::BadPreface.into()));
        // Failed decoders stay failed and hold nothing.
        d.push(b"CSKY\0\x01");
        assert_eq!(d.next_frame(), Ok(None));
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn reassembly_limits() {
        let mut r = Reassembler::new();
        let seg = |stream, fin, payload: &'static [u8]| Frame {
            header: FrameHeader::segment(payload.len(), stream, fin),
            payload: Bytes::from_static(payload),
        };
        assert_eq!(r.push(seg(1, false, b"ab")), Ok(None));
        assert_eq!(r.push(seg(2, false, b"cd")), Ok(None));
        assert_eq!(
            r.push(seg(3, false, b"ef")),
            Err(ProtocolViolation::TooManyStreams)
        );
        assert_eq!(
            r.push(seg(1, true, b"!")),
            Ok(Some(Bytes::from_static(b"ab!")))
        );
        assert_eq!(r.buffered(), 2);
        let big = Frame {
            header: FrameHeader::segment(MAX_FRAME_PAYLOAD, 2, false),
            payload: Bytes::from(vec![0; MAX_FRAME_PAYLOAD]),
        };
        let mut result = Ok(None);
        for _ in 0..=MAX_MESSAGE_SIZE / MAX_FRAME_PAYLOAD {
            result = r.push(big.clone());
            if result.is_err() {
                break;
            }
        }
        assert!(matches!(
            result,
            Err(ProtocolViolation::MessageTooLarge { .. })
        ));
    }
}
