//! HTTP/2 request header blocks from captured socket chunks → method, path and trace-context
//! headers.
//!
//! The kernel hands over, per connection and direction, one chunk per syscall: its first bytes
//! and how many bytes the syscall really carried. Only the request direction is decoded (what a
//! client writes, what a server reads). Frames are reassembled across chunks; DATA and every other
//! frame that carries no request header block is skipped by length, never buffered, so a chunk
//! whose uncaptured tail lies inside such a payload costs nothing.
//!
//! HPACK (RFC 7541) makes every header block depend on all earlier ones on the connection: once a
//! block is lost (uncaptured bytes, a decoding error, a block too large to buffer, or joining an
//! open connection) the dynamic table is unknown and stays unknown. Such a stream is *untrusted*
//! for good: while frame boundaries can still be followed, each new request header block is
//! reported as [`H2Event::Undetermined`] so that it is counted, never judged. Trust does not come
//! back on that connection; a new connection starts a new [`RequestStream`].
//!
//! Only trace-context header values (as chosen by the caller's `keep`), `:method`, `:path`
//! (without query or fragment) and `content-type` are copied out. The HPACK dynamic table itself
//! holds whatever the peer asked it to index, as decoding requires, bounded by its size limit.

mod conns;
mod fields;
mod frame;
#[cfg(test)]
mod tests;

use loona_hpack::Decoder;

pub use self::{
    conns::{Chunk, ConnKey, H2Connections, MAX_CONNECTIONS},
    fields::{H2Request, MAX_KEPT_HEADERS},
    frame::FRAME_HEADER_LEN,
};
use self::{
    fields::Fields,
    frame::{
        starts_on_frame, strip_headers_payload, FrameHead, CONTINUATION, DATA, FLAG_END_HEADERS,
        FLAG_END_STREAM, FLAG_PADDED, HEADERS,
    },
};
use crate::model::HTTP2_PREFACE as PREFACE;

/// Largest header block (HEADERS + CONTINUATION fragments) buffered; a larger one makes the
/// stream untrusted. Request header blocks are a few hundred bytes in practice.
pub const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// Largest dynamic table size update accepted inside a header block. The limit really in force
/// is the server's SETTINGS_HEADER_TABLE_SIZE, which travels in the other direction; anything up
/// to this is taken on trust so that a legal update never costs the stream.
pub const MAX_TABLE_SIZE: usize = 64 * 1024;
/// `TraceService/Export` calls of one connection whose DATA is collected at once (exporters
/// make one at a time).
const MAX_EXPORT_CALLS: usize = 16;

/// Why a header block (or the rest of a stream) could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Undetermined {
    /// The stream was untrusted before this block: the HPACK table is unknown.
    #[error("HPACK table unknown (joined late or lost earlier)")]
    Untrusted,
    /// The connection did not start with the HTTP/2 client preface.
    #[error("no HTTP/2 client preface")]
    NoPreface,
    /// Uncaptured bytes of a syscall held part of a header block or a frame header.
    #[error("bytes not captured")]
    Truncated,
    /// The header block is not valid HPACK for the table we hold.
    #[error("HPACK decoding error")]
    Hpack,
    /// The header block is larger than [`MAX_HEADER_BLOCK`].
    #[error("header block too large")]
    TooLarge,
    /// Frames that break RFC 9113 in the request direction: garbage, or we are out of step.
    #[error("HTTP/2 protocol violation")]
    Protocol,
    /// A decoded block on a new stream without `:method`.
    #[error("request without :method")]
    Malformed,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum H2Event {
    /// A complete request header block (HEADERS [+ CONTINUATION] up to END_HEADERS) opening a
    /// client stream.
    Request(H2Request),
    /// A request header block that could not be decoded: counted, never judged.
    Undetermined {
        stream_id: u32,
        reason: Undetermined,
    },
    /// The stream became untrusted (emitted once, on the change). When the cause was a header
    /// block we could place, an `Undetermined` for it comes first.
    LostSync(Undetermined),
    /// A piece of a DATA payload (only with [`RequestStream::deliver_data`]); the last piece of
    /// a stream's last frame says `end_stream`.
    Data {
        stream_id: u32,
        bytes: Vec<u8>,
        end_stream: bool,
    },
    /// Bytes of a delivered DATA payload were not captured: the stream's body is incomplete.
    DataLost { stream_id: u32 },
}

enum Phase {
    /// Matching the client preface; this many bytes of it seen.
    Preface(usize),
    /// Collecting a frame header.
    Head {
        buf: [u8; FRAME_HEADER_LEN],
        len: usize,
    },
    /// Inside a HEADERS or CONTINUATION payload; this many bytes left.
    Block { head: FrameHead, remaining: u32 },
    /// Inside any other payload; this many bytes left to skip.
    Skip(u32),
    /// A DATA frame's pad length byte (PADDED), when DATA payloads are delivered.
    DataPadLen { head: FrameHead },
    /// Inside a DATA payload being delivered: this many bytes left, then `pad` bytes of padding.
    Data {
        head: FrameHead,
        remaining: u32,
        pad: u32,
    },
    /// Frame boundaries unknown: waiting for a chunk that plausibly starts on one.
    Lost,
}

impl Phase {
    fn head() -> Self {
        Phase::Head {
            buf: [0; FRAME_HEADER_LEN],
            len: 0,
        }
    }
}

/// A header block between its HEADERS frame and END_HEADERS.
struct Pending {
    stream_id: u32,
    /// The block opens a new stream (not trailers).
    opens_stream: bool,
    /// Buffer and decode it: false once the stream is untrusted (already reported).
    decode: bool,
    block: Vec<u8>,
}

/// Decoder for the request direction of one connection.
pub struct RequestStream {
    phase: Phase,
    decoder: Decoder<'static>,
    pending: Option<Pending>,
    trusted: bool,
    /// Highest client stream id seen: a HEADERS frame on a lower or equal id carries trailers.
    last_stream_id: u32,
    /// DATA payloads are handed out as [`H2Event::Data`] (export connections), not skipped.
    deliver_data: bool,
    /// Streams of `TraceService/Export` calls, whose DATA is handed out on any connection: the
    /// first export of a connection the kernel does not read whole yet (a short-lived process
    /// may make no other) is taken from the ordinary capture when its sends were whole.
    export_calls: Vec<u32>,
}

impl RequestStream {
    /// A connection whose first bytes (the preface) are the next chunk: the HPACK table is known.
    pub fn from_start() -> Self {
        Self::new(Phase::Preface(0), true)
    }

    /// Joined an open connection: header blocks cannot be decoded, and frame boundaries are
    /// found again only at a chunk that plausibly starts on one.
    pub fn untrusted() -> Self {
        Self::new(Phase::Lost, false)
    }

    fn new(phase: Phase, trusted: bool) -> Self {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(MAX_TABLE_SIZE);
        RequestStream {
            phase,
            decoder,
            pending: None,
            trusted,
            last_stream_id: 0,
            deliver_data: false,
            export_calls: Vec::new(),
        }
    }

    /// Hands DATA payloads out from now on ([`H2Event::Data`]), or not (then only those of
    /// trace export calls).
    pub fn deliver_data(&mut self, deliver: bool) {
        self.deliver_data = deliver;
    }

    /// Header blocks are being decoded (nothing lost since the preface).
    pub fn trusted(&self) -> bool {
        self.trusted
    }

    /// Frame boundaries are known.
    pub fn in_step(&self) -> bool {
        !matches!(self.phase, Phase::Lost)
    }

    /// Feeds one syscall's capture: `data` is its first bytes, `total_len` how many it carried.
    /// `keep(lowercase_name)` says whose values may be kept besides `:method`, `:path` and
    /// `content-type`.
    pub fn feed(
        &mut self,
        data: &[u8],
        total_len: u64,
        keep: impl Fn(&str) -> bool,
    ) -> Vec<H2Event> {
        let mut events = Vec::new();
        // More captured than carried cannot happen; trust the syscall's count.
        let data = match usize::try_from(total_len) {
            Ok(n) if n < data.len() => data.get(..n).unwrap_or(data),
            _ => data,
        };
        if matches!(self.phase, Phase::Lost) {
            if !starts_on_frame(data, total_len) {
                return events;
            }
            self.phase = Phase::head();
        }
        let mut input = data;
        while !input.is_empty() && !matches!(self.phase, Phase::Lost) {
            let used = self.step(input, &keep, &mut events);
            input = input.get(used..).unwrap_or_default();
        }
        let missing = total_len.saturating_sub(data.len() as u64);
        if missing > 0 {
            self.skip_missing(missing, &mut events);
        }
        events
    }

    /// Consumes a prefix of `input` in the current phase; returns its length.
    fn step(
        &mut self,
        input: &[u8],
        keep: &impl Fn(&str) -> bool,
        events: &mut Vec<H2Event>,
    ) -> usize {
        match &mut self.phase {
            Phase::Preface(seen) => {
                let want = PREFACE.get(*seen..).unwrap_or_default();
                let n = want.len().min(input.len());
                if want.get(..n) != input.get(..n) {
                    self.lose(Undetermined::NoPreface, events);
                    return n;
                }
                *seen += n;
                if *seen == PREFACE.len() {
                    self.phase = Phase::head();
                }
                n
            }
            Phase::Head { buf, len } => {
                let n = (FRAME_HEADER_LEN - *len).min(input.len());
                if let (Some(dst), Some(src)) = (buf.get_mut(*len..*len + n), input.get(..n)) {
                    dst.copy_from_slice(src);
                }
                *len += n;
                if *len == FRAME_HEADER_LEN {
                    let head = FrameHead::parse(buf);
                    self.start_frame(head, keep, events);
                }
                n
            }
            Phase::Skip(remaining) => {
                let n = clamp(*remaining, input.len());
                *remaining -= n as u32;
                if *remaining == 0 {
                    self.phase = Phase::head();
                }
                n
            }
            Phase::Block { head, remaining } => {
                let head = *head;
                let n = clamp(*remaining, input.len());
                *remaining -= n as u32;
                let done = *remaining == 0;
                if let Some(p) = self.pending.as_mut().filter(|p| p.decode) {
                    p.block
                        .extend_from_slice(input.get(..n).unwrap_or_default());
                }
                if done {
                    self.end_block_frame(head, keep, events);
                }
                n
            }
            Phase::DataPadLen { head } => {
                let head = *head;
                let pad = u32::from(input.first().copied().unwrap_or_default());
                let remaining = head.len.saturating_sub(1);
                if pad > remaining {
                    self.lose(Undetermined::Protocol, events);
                    return 1;
                }
                self.phase = Phase::Data {
                    head,
                    remaining: remaining - pad,
                    pad,
                };
                if remaining == pad {
                    self.end_data(head, pad, events);
                }
                1
            }
            Phase::Data {
                head,
                remaining,
                pad,
            } => {
                let (head, pad) = (*head, *pad);
                let n = clamp(*remaining, input.len());
                *remaining -= n as u32;
                let done = *remaining == 0;
                events.push(H2Event::Data {
                    stream_id: head.stream_id,
                    bytes: input.get(..n).unwrap_or_default().to_vec(),
                    end_stream: false,
                });
                if done {
                    self.end_data(head, pad, events);
                }
                n
            }
            Phase::Lost => input.len(),
        }
    }

    /// A delivered DATA payload ended: its padding is skipped; END_STREAM is said.
    fn end_data(&mut self, head: FrameHead, pad: u32, events: &mut Vec<H2Event>) {
        if head.flags & FLAG_END_STREAM != 0 {
            events.push(H2Event::Data {
                stream_id: head.stream_id,
                bytes: Vec::new(),
                end_stream: true,
            });
        }
        self.phase = if pad == 0 {
            Phase::head()
        } else {
            Phase::Skip(pad)
        };
    }

    fn start_frame(
        &mut self,
        head: FrameHead,
        keep: &impl Fn(&str) -> bool,
        events: &mut Vec<H2Event>,
    ) {
        if !head.valid_from_client() {
            return self.lose(Undetermined::Protocol, events);
        }
        let continues = self.pending.as_ref().map(|p| p.stream_id);
        match (head.kind, continues) {
            (CONTINUATION, Some(sid)) if sid == head.stream_id => {}
            // A header block must be followed by its CONTINUATION frames and nothing else.
            (_, Some(_)) | (CONTINUATION, None) => {
                return self.lose(Undetermined::Protocol, events);
            }
            (HEADERS, None) => {
                let opens_stream = head.stream_id > self.last_stream_id;
                self.last_stream_id = self.last_stream_id.max(head.stream_id);
                if opens_stream && !self.trusted {
                    events.push(H2Event::Undetermined {
                        stream_id: head.stream_id,
                        reason: Undetermined::Untrusted,
                    });
                }
                self.pending = Some(Pending {
                    stream_id: head.stream_id,
                    opens_stream,
                    decode: self.trusted,
                    block: Vec::new(),
                });
            }
            (DATA, None) if self.deliver_data || self.export_calls.contains(&head.stream_id) => {
                if head.flags & FLAG_END_STREAM != 0 {
                    self.export_calls.retain(|&id| id != head.stream_id);
                }
                self.phase = Phase::Data {
                    head,
                    remaining: head.len,
                    pad: 0,
                };
                if head.flags & FLAG_PADDED != 0 && head.len > 0 {
                    self.phase = Phase::DataPadLen { head };
                } else if head.len == 0 {
                    self.end_data(head, 0, events);
                }
                return;
            }
            _ => {
                self.phase = if head.len == 0 {
                    Phase::head()
                } else {
                    Phase::Skip(head.len)
                };
                return;
            }
        }
        let buffered = self.pending.as_ref().map_or(0, |p| p.block.len());
        if buffered.saturating_add(head.len as usize) > MAX_HEADER_BLOCK {
            self.give_up_block(Undetermined::TooLarge, events);
        }
        self.phase = Phase::Block {
            head,
            remaining: head.len,
        };
        if head.len == 0 {
            self.end_block_frame(head, keep, events);
        }
    }

    /// The last payload byte of a HEADERS or CONTINUATION frame arrived.
    fn end_block_frame(
        &mut self,
        head: FrameHead,
        keep: &impl Fn(&str) -> bool,
        events: &mut Vec<H2Event>,
    ) {
        self.phase = Phase::head();
        if head.kind == HEADERS && self.pending.as_ref().is_some_and(|p| p.decode) {
            // HEADERS is the first frame of the block, so its payload is the whole buffer.
            let stripped = self
                .pending
                .as_mut()
                .is_some_and(|p| strip_headers_payload(&mut p.block, head.flags));
            if !stripped {
                // The frame boundaries still hold, but the peer's encoder state is unknown.
                self.give_up_block(Undetermined::Protocol, events);
            }
        }
        if head.flags & FLAG_END_HEADERS == 0 {
            return;
        }
        let Some(p) = self.pending.take() else {
            return;
        };
        if !p.decode {
            return;
        }
        let mut fields = Fields::default();
        let decoded = self
            .decoder
            .decode_with_cb(&p.block, |name, value| fields.add(&name, &value, keep));
        if decoded.is_err() {
            self.pending = Some(p);
            self.give_up_block(Undetermined::Hpack, events);
            self.pending = None;
            return;
        }
        if !p.opens_stream {
            // Trailers: nothing to judge, but decoding them kept the table in step.
            return;
        }
        events.push(match fields.into_request(p.stream_id) {
            Some(request) => {
                if request.is_trace_export() && self.export_calls.len() < MAX_EXPORT_CALLS {
                    self.export_calls.push(request.stream_id);
                }
                H2Event::Request(request)
            }
            None => H2Event::Undetermined {
                stream_id: p.stream_id,
                reason: Undetermined::Malformed,
            },
        });
    }

    /// The pending block cannot be decoded, but its frames can still be followed.
    fn give_up_block(&mut self, reason: Undetermined, events: &mut Vec<H2Event>) {
        if let Some(p) = self.pending.as_mut().filter(|p| p.decode) {
            p.decode = false;
            p.block = Vec::new();
            if p.opens_stream {
                events.push(H2Event::Undetermined {
                    stream_id: p.stream_id,
                    reason,
                });
            }
        }
        self.distrust(reason, events);
    }

    /// Frame boundaries are gone: so is the pending block and the table.
    fn lose(&mut self, reason: Undetermined, events: &mut Vec<H2Event>) {
        self.give_up_block(reason, events);
        self.pending = None;
        self.phase = Phase::Lost;
    }

    fn distrust(&mut self, reason: Undetermined, events: &mut Vec<H2Event>) {
        if self.trusted {
            self.trusted = false;
            events.push(H2Event::LostSync(reason));
        }
    }

    /// The syscall carried `missing` more bytes than were captured.
    fn skip_missing(&mut self, missing: u64, events: &mut Vec<H2Event>) {
        match &mut self.phase {
            Phase::Skip(remaining) if missing <= u64::from(*remaining) => {
                *remaining -= missing as u32;
                if *remaining == 0 {
                    self.phase = Phase::head();
                }
            }
            Phase::Block { head, remaining } if missing <= u64::from(*remaining) => {
                let head = *head;
                *remaining -= missing as u32;
                let done = *remaining == 0;
                self.give_up_block(Undetermined::Truncated, events);
                if done {
                    // Not decoding any more, so `keep` is never asked.
                    self.end_block_frame(head, &|_: &str| false, events);
                }
            }
            Phase::Data {
                head,
                remaining,
                pad,
            } if missing <= u64::from(*remaining) => {
                let (head, pad) = (*head, *pad);
                *remaining -= missing as u32;
                let done = *remaining == 0;
                events.push(H2Event::DataLost {
                    stream_id: head.stream_id,
                });
                if done {
                    self.end_data(head, pad, events);
                }
            }
            Phase::Lost => {}
            // The gap hides a frame header (or the preface).
            _ => self.lose(Undetermined::Truncated, events),
        }
    }

    /// `missing` bytes of the connection were lost between two chunks (an export stream's
    /// gap): frames whose payload they were part of are followed past them, a frame header
    /// among them loses the frame boundaries.
    pub fn skip(&mut self, missing: u64) -> Vec<H2Event> {
        let mut events = Vec::new();
        if missing > 0 {
            self.skip_missing(missing, &mut events);
        }
        events
    }
}

fn clamp(remaining: u32, available: usize) -> usize {
    (remaining as usize).min(available)
}
