//! HTTP/2 frames in the request direction: the frame header, what a client may send
//! (RFC 9113, section 6), and the plausibility checks used to find frame boundaries again.

/// Length of a frame header (RFC 9113, section 4.1).
pub const FRAME_HEADER_LEN: usize = 9;

pub(super) const DATA: u8 = 0x0;
pub(super) const HEADERS: u8 = 0x1;
pub(super) const PRIORITY: u8 = 0x2;
pub(super) const RST_STREAM: u8 = 0x3;
pub(super) const SETTINGS: u8 = 0x4;
pub(super) const PUSH_PROMISE: u8 = 0x5;
pub(super) const PING: u8 = 0x6;
pub(super) const GOAWAY: u8 = 0x7;
pub(super) const WINDOW_UPDATE: u8 = 0x8;
pub(super) const CONTINUATION: u8 = 0x9;

pub(super) const FLAG_END_HEADERS: u8 = 0x4;
pub(super) const FLAG_PADDED: u8 = 0x8;
pub(super) const FLAG_PRIORITY: u8 = 0x20;
/// SETTINGS and PING use bit 0 as ACK; DATA and HEADERS as END_STREAM.
pub(super) const FLAG_ACK: u8 = 0x1;
pub(super) const FLAG_END_STREAM: u8 = 0x1;

/// The fixed part of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct FrameHead {
    pub(super) len: u32,
    pub(super) kind: u8,
    pub(super) flags: u8,
    pub(super) stream_id: u32,
}

impl FrameHead {
    pub(super) fn parse(b: &[u8; FRAME_HEADER_LEN]) -> Self {
        let [l0, l1, l2, kind, flags, s0, s1, s2, s3] = *b;
        FrameHead {
            len: u32::from_be_bytes([0, l0, l1, l2]),
            kind,
            flags,
            // The reserved bit must be ignored on receipt.
            stream_id: u32::from_be_bytes([s0 & 0x7f, s1, s2, s3]),
        }
    }

    /// Whether a client may send this frame (RFC 9113, section 6). Unknown types are allowed:
    /// receivers must ignore them.
    pub(super) fn valid_from_client(&self) -> bool {
        let (len, sid) = (self.len, self.stream_id);
        match self.kind {
            DATA => sid != 0,
            // Client-initiated streams are odd.
            HEADERS => sid % 2 == 1,
            PRIORITY => sid != 0 && len == 5,
            RST_STREAM => sid != 0 && len == 4,
            SETTINGS => sid == 0 && len % 6 == 0 && (self.flags & FLAG_ACK == 0 || len == 0),
            PUSH_PROMISE => false,
            PING => sid == 0 && len == 8,
            GOAWAY => sid == 0 && len >= 8,
            WINDOW_UPDATE => len == 4,
            CONTINUATION => sid != 0,
            _ => true,
        }
    }

    /// Stricter than [`Self::valid_from_client`], for guessing whether a chunk of a stream that
    /// lost its place starts on a frame boundary: a known type, reserved bit clear, the frame
    /// sizes a client really uses, and not the middle of a header block.
    pub(super) fn plausible_start(b: &[u8; FRAME_HEADER_LEN]) -> bool {
        let head = FrameHead::parse(b);
        let [_, _, _, _, _, reserved, ..] = *b;
        reserved & 0x80 == 0
            && head.kind <= WINDOW_UPDATE
            && head.len <= 1 << 16
            && head.valid_from_client()
    }
}

/// Removes the pad length, priority fields and padding of a HEADERS payload, leaving the header
/// block fragment. False if the fields do not fit in the payload.
pub(super) fn strip_headers_payload(payload: &mut Vec<u8>, flags: u8) -> bool {
    let mut start = 0;
    let mut pad = 0;
    if flags & FLAG_PADDED != 0 {
        let Some(&p) = payload.first() else {
            return false;
        };
        pad = usize::from(p);
        start = 1;
    }
    if flags & FLAG_PRIORITY != 0 {
        start += 5;
    }
    let Some(end) = payload.len().checked_sub(pad).filter(|&end| end >= start) else {
        return false;
    };
    payload.truncate(end);
    payload.drain(..start);
    true
}

/// Whether a chunk of a stream that lost its place plausibly starts on a frame boundary: a chain
/// of plausible frame headers inside the captured bytes that ends exactly where the syscall
/// ended, or a lone frame header (servers read the header and the payload separately).
pub(super) fn starts_on_frame(data: &[u8], total_len: u64) -> bool {
    let mut offset: u64 = 0;
    loop {
        if offset == total_len {
            return offset > 0;
        }
        let Some(head) = usize::try_from(offset)
            .ok()
            .and_then(|o| data.get(o..o.checked_add(FRAME_HEADER_LEN)?))
            .and_then(|b| <&[u8; FRAME_HEADER_LEN]>::try_from(b).ok())
        else {
            return false;
        };
        if !FrameHead::plausible_start(head) {
            return false;
        }
        let len = u64::from(FrameHead::parse(head).len);
        if offset == 0 && total_len == FRAME_HEADER_LEN as u64 {
            return true;
        }
        offset = offset.saturating_add(FRAME_HEADER_LEN as u64 + len);
        if offset > total_len {
            return false;
        }
    }
}
