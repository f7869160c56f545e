//! One connection between two devices: handshake, negotiation, keep-alive, message delivery
//! with segmentation, and orderly close.
//!
//! # Contract
//!
//! A [`Session`] is a pure state machine. The driver owns the transport (a TLS stream, a QUIC
//! stream, a simulated pipe) and the clock, and calls:
//!
//! * **inputs**: [`handle_bytes`](Session::handle_bytes) when bytes arrive,
//!   [`handle_timeout`](Session::handle_timeout) when the deadline from `poll_timeout` passes,
//!   [`handle_transport_closed`](Session::handle_transport_closed) when the transport ends;
//! * **commands** from the application: [`send`](Session::send), [`close`](Session::close);
//! * **outputs**, after every input or command: drain [`poll_event`](Session::poll_event) until
//!   `None`; call [`poll_transmit`](Session::poll_transmit) whenever the transport can take
//!   more bytes (until it returns `None`); then re-arm the timer from
//!   [`poll_timeout`](Session::poll_timeout).
//!
//! Transmission is a pull, one frame at a time, on purpose: frames are produced only when the
//! transport has room, so a control message queued behind a megabyte of file data goes out
//! after at most one frame of that data instead of after all of it (see `spec/wire.md`
//! § Scheduling). When [`is_finished`](Session::is_finished) is true the driver closes the
//! transport.
//!
//! Every input takes `now`; a `now` earlier than one already seen is clamped. After
//! `handle_timeout(now)`, `poll_timeout()` is `None` or later than `now`.

use core::time::Duration;
use std::collections::{BTreeSet, VecDeque};

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{Error, Misuse, ProtocolViolation};
use crate::time::{Clock, Timestamp};
use crate::wire::frame::encode_preface;
use crate::wire::{
    Close, CloseCode, DEFAULT_KEEPALIVE, FRAME_HEADER_LEN, FrameDecoder, FrameHeader,
    HANDSHAKE_TIMEOUT, Hello, IDLE_TIMEOUT_FACTOR, MAX_EXTENSIONS, MAX_FRAME_PAYLOAD,
    MAX_KEEPALIVE, MAX_MESSAGE_SIZE, MAX_NAME_LEN, MAX_REASON_LEN, MAX_VERSIONS, MIN_KEEPALIVE,
    Message, PREFACE_LEN, PROTOCOL_VERSIONS, Reassembler, SEND_QUEUE_LIMIT,
    is_valid_extension_name,
};

/// What a session announces about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// This device's human-readable name (at most `MAX_NAME_LEN` bytes).
    pub device_name: String,
    /// Software name and version sent in HELLO.
    pub software: String,
    /// The keep-alive interval this device asks for. A phone asks for a long one; the larger
    /// of the two requests wins.
    pub keepalive: Duration,
    /// Extensions this device supports, reverse-DNS names.
    pub extensions: Vec<String>,
    /// Protocol versions offered. Defaults to [`PROTOCOL_VERSIONS`]; other values exist for
    /// interoperability tests.
    pub protocol_versions: Vec<u32>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            device_name: String::new(),
            software: concat!("clearskies/", env!("CARGO_PKG_VERSION")).to_owned(),
            keepalive: DEFAULT_KEEPALIVE,
            extensions: Vec::new(),
            protocol_versions: PROTOCOL_VERSIONS.to_vec(),
        }
    }
}

impl SessionConfig {
    fn validate(&self) -> Result<(), Misuse> {
        let bad = |detail: String| Err(Misuse::BadConfig { detail });
        if self.device_name.len() > MAX_NAME_LEN || self.software.len() > MAX_NAME_LEN {
            return bad(format!(
                "device name and software are limited to {MAX_NAME_LEN} bytes"
            ));
        }
        if self.protocol_versions.is_empty() || self.protocol_versions.len() > MAX_VERSIONS {
            return bad(format!("offer 1 to {MAX_VERSIONS} protocol versions"));
        }
        if self.extensions.len() > MAX_EXTENSIONS {
            return bad(format!("at most {MAX_EXTENSIONS} extensions"));
        }
        if let Some(name) = self.extensions.iter().find(|n| !is_valid_extension_name(n)) {
            return bad(format!(
                "extension name {name:?} is not lowercase reverse-DNS"
            ));
        }
        Ok(())
    }
}

/// How urgently a message should go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// Small, latency-sensitive messages: sent before any further bulk frame.
    Control,
    /// Large transfers: sent when no control message waits.
    Bulk,
}

/// What both sides agreed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// The highest protocol version both speak.
    pub version: u32,
    /// Extensions both support, sorted.
    pub extensions: Vec<String>,
    /// The keep-alive interval: the larger of the two requests, clamped to the spec's range.
    pub keepalive: Duration,
    /// The peer's device name.
    pub peer_name: String,
    /// The peer's software string.
    pub peer_software: String,
}

/// Which timer ended a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeout {
    /// The peer's HELLO did not arrive within `HANDSHAKE_TIMEOUT`.
    Handshake,
    /// Nothing arrived for `IDLE_TIMEOUT_FACTOR` keep-alive intervals.
    Idle,
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// This side called [`Session::close`].
    Local {
        /// The code sent.
        code: CloseCode,
        /// The reason sent.
        reason: String,
    },
    /// The peer sent CLOSE.
    Peer {
        /// The peer's code.
        code: CloseCode,
        /// The peer's reason.
        reason: String,
    },
    /// The peer broke the protocol or is incompatible; a CLOSE saying so was queued.
    Error(Error),
    /// A timer expired; a CLOSE with code `TIMEOUT` was queued.
    TimedOut(Timeout),
    /// The transport ended without a CLOSE.
    TransportLost,
}

/// What a session reports to its driver and application.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The peer's HELLO arrived and negotiation succeeded; `send` now works.
    Established(Negotiated),
    /// A message for the layers above the session.
    Message(Message),
    /// The session ended. No event follows this one.
    Closed(CloseReason),
}

/// The coarse state of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// Waiting for the peer's HELLO.
    Handshaking,
    /// Both HELLOs exchanged.
    Established,
    /// Ended; a final CLOSE may still be waiting in `poll_transmit`.
    Closed,
}

/// Counters for tests, logs and status displays.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Bytes handed out by `poll_transmit`.
    pub bytes_sent: u64,
    /// Bytes passed to `handle_bytes`.
    pub bytes_received: u64,
    /// Frames handed out.
    pub frames_sent: u64,
    /// Whole messages received (including ignored ones).
    pub messages_received: u64,
    /// Messages ignored: unknown types, extensions not negotiated.
    pub messages_ignored: u64,
    /// PINGs sent.
    pub pings_sent: u64,
}

/// A message waiting to be framed.
#[derive(Debug)]
struct Outgoing {
    body: Bytes,
    /// Bytes of `body` already framed.
    offset: usize,
    /// The stream of a segmented message, assigned when its first segment goes out.
    stream: u16,
    /// Whether this is the keep-alive PING, which clears `ping_pending` once framed.
    is_ping: bool,
}

/// One connection's protocol state. See the [module docs](self) for the contract.
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    clock: Clock,
    state: SessionState,
    negotiated: Option<Negotiated>,
    decoder: FrameDecoder,
    reassembler: Reassembler,
    events: VecDeque<Event>,
    control: VecDeque<Outgoing>,
    bulk: VecDeque<Outgoing>,
    queued_bytes: usize,
    preface_pending: bool,
    next_stream: u16,
    started: Timestamp,
    last_sent: Timestamp,
    last_received: Timestamp,
    ping_pending: bool,
    finished: bool,
    stats: SessionStats,
}

impl Session {
    /// Starts a session on a freshly opened transport. Both sides start the same way: the
    /// preface and HELLO are queued at once, so the handshake costs one flight.
    pub fn new(mut config: SessionConfig, now: Timestamp) -> Result<Session, Error> {
        config.validate()?;
        // HELLO carries whole seconds; negotiate from exactly what was announced so both
        // sides compute the same interval.
        config.keepalive = Duration::from_secs(clamp_keepalive(config.keepalive).as_secs());
        let hello = Message::Hello(Hello {
            versions: config.protocol_versions.clone(),
            extensions: config.extensions.clone(),
            name: config.device_name.clone(),
            software: config.software.clone(),
            // At most MAX_KEEPALIVE (86 400 s) after the clamp above: fits in u32.
            keepalive: config.keepalive.as_secs() as u32,
        });
        let mut session = Session {
            config,
            clock: Clock::new(now),
            state: SessionState::Handshaking,
            negotiated: None,
            decoder: FrameDecoder::new(),
            reassembler: Reassembler::new(),
            events: VecDeque::new(),
            control: VecDeque::new(),
            bulk: VecDeque::new(),
            queued_bytes: 0,
            preface_pending: true,
            next_stream: 1,
            started: now,
            last_sent: now,
            last_received: now,
            ping_pending: false,
            finished: false,
            stats: SessionStats::default(),
        };
        session.enqueue(Bytes::from(hello.encode()), Priority::Control);
        Ok(session)
    }

    // ---- getters -------------------------------------------------------------------------

    /// The coarse state.
    pub fn state(&self) -> SessionState {
        self.state
    }

    /// What was negotiated, once established.
    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.negotiated.as_ref()
    }

    /// The configuration this session announced.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// Counters.
    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// Bytes of messages queued and not yet fully framed.
    pub fn send_queue_len(&self) -> usize {
        self.queued_bytes
    }

    /// True once the session has ended and its last bytes were handed out: the driver closes
    /// the transport.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    // ---- inputs --------------------------------------------------------------------------

    /// Feeds bytes received from the transport. Bytes after the session ended are dropped.
    pub fn handle_bytes(&mut self, now: Timestamp, data: &[u8]) {
        let now = self.clock.observe(now);
        if self.state == SessionState::Closed {
            return;
        }
        if data.is_empty() {
            return;
        }
        self.stats.bytes_received += data.len() as u64;
        self.last_received = now;
        self.decoder.push(data);
        while self.state != SessionState::Closed {
            let result = match self.decoder.next_frame() {
                Ok(Some(frame)) => self.reassembler.push(frame).map_err(Error::from),
                Ok(None) => break,
                Err(e) => Err(e),
            };
            let result = match result {
                Ok(Some(body)) => self.on_body(now, &body),
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                self.fail(CloseReason::Error(e));
            }
        }
    }

    /// Tells the session that the deadline from [`poll_timeout`](Session::poll_timeout) (or
    /// any later time) has come.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        let now = self.clock.observe(now);
        match self.state {
            SessionState::Closed => {}
            SessionState::Handshaking => {
                if now >= self.started + HANDSHAKE_TIMEOUT {
                    self.fail(CloseReason::TimedOut(Timeout::Handshake));
                }
            }
            SessionState::Established => {
                let keepalive = self.keepalive();
                if now >= self.last_received + keepalive * IDLE_TIMEOUT_FACTOR {
                    self.fail(CloseReason::TimedOut(Timeout::Idle));
                } else if !self.ping_pending && now >= self.last_sent + keepalive {
                    self.ping_pending = true;
                    self.stats.pings_sent += 1;
                    self.enqueue(Bytes::from(Message::Ping.encode()), Priority::Control);
                    if let Some(ping) = self.control.back_mut() {
                        ping.is_ping = true;
                    }
                }
            }
        }
    }

    /// Tells the session that the transport ended (EOF, reset, QUIC stream closed).
    pub fn handle_transport_closed(&mut self, now: Timestamp) {
        self.clock.observe(now);
        if self.state != SessionState::Closed {
            self.state = SessionState::Closed;
            self.events
                .push_back(Event::Closed(CloseReason::TransportLost));
        }
        self.clear_queues();
        self.finished = true;
    }

    // ---- commands ------------------------------------------------------------------------

    /// Queues a message for the peer. Only extension messages (and, later, the messages of
    /// the layers above) may be sent this way; HELLO, PING and CLOSE belong to the session.
    pub fn send(&mut self, message: Message, priority: Priority) -> Result<(), Error> {
        let negotiated = match self.state {
            SessionState::Handshaking => return Err(Misuse::NotEstablished.into()),
            SessionState::Closed => return Err(Misuse::Closed.into()),
            // Set whenever the state is Established.
            SessionState::Established => self.negotiated.as_ref().ok_or(Misuse::NotEstablished)?,
        };
        match &message {
            Message::Hello(_) | Message::Ping | Message::Close(_) => {
                return Err(Misuse::ReservedMessage.into());
            }
            Message::Extension(e) => {
                if !negotiated.extensions.contains(&e.name) {
                    return Err(Misuse::ExtensionNotNegotiated {
                        name: e.name.clone(),
                    }
                    .into());
                }
            }
        }
        let body = message.encode();
        if body.len() > MAX_MESSAGE_SIZE {
            return Err(Misuse::MessageTooLarge { size: body.len() }.into());
        }
        if self.queued_bytes + body.len() > SEND_QUEUE_LIMIT {
            return Err(Misuse::SendQueueFull {
                queued: self.queued_bytes,
            }
            .into());
        }
        self.enqueue(Bytes::from(body), priority);
        Ok(())
    }

    /// Ends the session: drops unsent messages, queues CLOSE, and reports
    /// [`CloseReason::Local`]. Closing a closed session does nothing.
    pub fn close(&mut self, now: Timestamp, code: CloseCode, reason: &str) {
        self.clock.observe(now);
        if self.state == SessionState::Closed {
            return;
        }
        let reason = truncate(reason, MAX_REASON_LEN).to_owned();
        self.end_with_close(code, reason.clone());
        self.events
            .push_back(Event::Closed(CloseReason::Local { code, reason }));
    }

    // ---- outputs -------------------------------------------------------------------------

    /// The next event, if any. Drain after every input or command.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next bytes to write to the transport: at most one frame (the first also carries
    /// the preface). Control messages go before bulk ones. Call while the transport has room.
    pub fn poll_transmit(&mut self, now: Timestamp) -> Option<Bytes> {
        let now = self.clock.observe(now);
        if self.finished {
            return None;
        }
        let queue_is_control = !self.control.is_empty();
        if !queue_is_control && self.bulk.is_empty() {
            return None;
        }
        let mut out = BytesMut::with_capacity(PREFACE_LEN + FRAME_HEADER_LEN + MAX_FRAME_PAYLOAD);
        if self.preface_pending {
            encode_preface(&mut out);
            self.preface_pending = false;
        }
        let other_stream = |q: &VecDeque<Outgoing>| q.front().map_or(0, |o| o.stream);
        let busy = if queue_is_control {
            other_stream(&self.bulk)
        } else {
            other_stream(&self.control)
        };
        let queue = if queue_is_control {
            &mut self.control
        } else {
            &mut self.bulk
        };
        // Checked non-empty above.
        let head = queue.front_mut().expect("queue checked non-empty");
        let remaining = head.body.len() - head.offset;
        if head.offset == 0 && remaining <= MAX_FRAME_PAYLOAD {
            FrameHeader::message(remaining).encode(&mut out);
            out.put_slice(&head.body);
            head.offset = head.body.len();
        } else {
            if head.stream == 0 {
                head.stream = allocate_stream(&mut self.next_stream, busy);
            }
            let len = remaining.min(MAX_FRAME_PAYLOAD);
            let fin = len == remaining;
            FrameHeader::segment(len, head.stream, fin).encode(&mut out);
            out.put_slice(&head.body[head.offset..head.offset + len]);
            head.offset += len;
        }
        if head.offset == head.body.len() {
            let done = queue.pop_front().expect("front exists");
            self.queued_bytes -= done.body.len();
            if done.is_ping {
                self.ping_pending = false;
            }
        }
        if self.state == SessionState::Closed && self.control.is_empty() {
            // The CLOSE was the last thing queued.
            self.finished = true;
        }
        self.last_sent = now;
        self.stats.frames_sent += 1;
        self.stats.bytes_sent += out.len() as u64;
        Some(out.freeze())
    }

    /// The next deadline, `None` if no timer runs.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        match self.state {
            SessionState::Closed => None,
            SessionState::Handshaking => Some(self.started + HANDSHAKE_TIMEOUT),
            SessionState::Established => {
                let keepalive = self.keepalive();
                let idle = self.last_received + keepalive * IDLE_TIMEOUT_FACTOR;
                if self.ping_pending {
                    Some(idle)
                } else {
                    Some(idle.min(self.last_sent + keepalive))
                }
            }
        }
    }

    // ---- internals -----------------------------------------------------------------------

    fn keepalive(&self) -> Duration {
        self.negotiated
            .as_ref()
            .map_or(self.config.keepalive, |n| n.keepalive)
    }

    fn enqueue(&mut self, body: Bytes, priority: Priority) {
        self.queued_bytes += body.len();
        let item = Outgoing {
            body,
            offset: 0,
            stream: 0,
            is_ping: false,
        };
        match priority {
            Priority::Control => self.control.push_back(item),
            Priority::Bulk => self.bulk.push_back(item),
        }
    }

    fn clear_queues(&mut self) {
        self.control.clear();
        self.bulk.clear();
        self.queued_bytes = 0;
        self.ping_pending = false;
    }

    fn on_body(&mut self, _now: Timestamp, body: &Bytes) -> Result<(), Error> {
        self.stats.messages_received += 1;
        let Some(message) = Message::decode(body)? else {
            self.stats.messages_ignored += 1;
            return Ok(());
        };
        match (self.state, message) {
            (_, Message::Close(close)) => {
                self.state = SessionState::Closed;
                self.clear_queues();
                self.finished = true;
                self.events.push_back(Event::Closed(CloseReason::Peer {
                    code: close.code,
                    reason: close.reason,
                }));
            }
            (SessionState::Handshaking, Message::Hello(hello)) => {
                let negotiated = self.negotiate(hello)?;
                self.state = SessionState::Established;
                self.negotiated = Some(negotiated.clone());
                self.events.push_back(Event::Established(negotiated));
            }
            (SessionState::Established, Message::Ping) => {}
            (SessionState::Established, Message::Extension(e)) => {
                let negotiated = self
                    .negotiated
                    .as_ref()
                    .map_or(&[][..], |n| &n.extensions[..]);
                if negotiated.contains(&e.name) {
                    self.events.push_back(Event::Message(Message::Extension(e)));
                } else {
                    self.stats.messages_ignored += 1;
                }
            }
            (state, message) => {
                return Err(ProtocolViolation::UnexpectedMessage {
                    got: message.name(),
                    state: match state {
                        SessionState::Handshaking => "HANDSHAKING",
                        SessionState::Established => "ESTABLISHED",
                        SessionState::Closed => "CLOSED",
                    },
                }
                .into());
            }
        }
        Ok(())
    }

    fn negotiate(&self, hello: Hello) -> Result<Negotiated, Error> {
        let version = self
            .config
            .protocol_versions
            .iter()
            .filter(|v| hello.versions.contains(v))
            .max()
            .copied()
            .ok_or_else(|| crate::error::Incompatibility::NoCommonVersion {
                ours: self.config.protocol_versions.clone(),
                theirs: hello.versions.clone(),
            })?;
        let theirs: BTreeSet<&String> = hello.extensions.iter().collect();
        let extensions: BTreeSet<String> = self
            .config
            .extensions
            .iter()
            .filter(|e| theirs.contains(e))
            .cloned()
            .collect();
        let requested = Duration::from_secs(u64::from(hello.keepalive));
        Ok(Negotiated {
            version,
            extensions: extensions.into_iter().collect(),
            keepalive: clamp_keepalive(self.config.keepalive.max(requested)),
            peer_name: hello.name,
            peer_software: hello.software,
        })
    }

    /// Ends the session because of `reason`, telling the peer why.
    fn fail(&mut self, reason: CloseReason) {
        let (code, text) = match &reason {
            CloseReason::Error(e @ Error::Incompatible(_)) => {
                (CloseCode::INCOMPATIBLE, e.to_string())
            }
            CloseReason::Error(e) => (CloseCode::PROTOCOL_ERROR, e.to_string()),
            CloseReason::TimedOut(Timeout::Handshake) => (
                CloseCode::TIMEOUT,
                "no HELLO within the handshake timeout".to_owned(),
            ),
            CloseReason::TimedOut(Timeout::Idle) => (
                CloseCode::TIMEOUT,
                "nothing received within the idle timeout".to_owned(),
            ),
            CloseReason::Local { code, reason } | CloseReason::Peer { code, reason } => {
                (*code, reason.clone())
            }
            CloseReason::TransportLost => (CloseCode::NORMAL, String::new()),
        };
        self.end_with_close(code, truncate(&text, MAX_REASON_LEN).to_owned());
        self.events.push_back(Event::Closed(reason));
    }

    fn end_with_close(&mut self, code: CloseCode, reason: String) {
        self.state = SessionState::Closed;
        self.clear_queues();
        let close = Message::Close(Close { code, reason });
        self.enqueue(Bytes::from(close.encode()), Priority::Control);
    }
}

fn clamp_keepalive(d: Duration) -> Duration {
    d.clamp(MIN_KEEPALIVE, MAX_KEEPALIVE)
}

/// The next stream id after `next`, skipping 0 and the one stream the other queue may hold.
fn allocate_stream(next: &mut u16, busy: u16) -> u16 {
    loop {
        let id = *next;
        *next = next.wrapping_add(1);
        if id != 0 && id != busy {
            return id;
        }
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
