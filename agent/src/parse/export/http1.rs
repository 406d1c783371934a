//! An HTTP/1 export connection's request stream: heads, then bodies by `Content-Length` or
//! chunked; the bodies of `POST …/v1/traces` are export messages. Other requests on the same
//! connection (`/v1/metrics`, `/v1/logs`) are followed past, not kept.

use super::{Incomplete, Message, Out};
use crate::{
    otlp::{BodyFormat, Transport},
    parse::http1::parse_request,
};

/// A request head larger than this loses the stream's place (real heads are a few hundred
/// bytes).
const MAX_HEAD: usize = 64 * 1024;

enum State {
    /// Collecting a request head.
    Head(Vec<u8>),
    /// Inside a body.
    Body(Body),
    /// The place in the stream is lost: waiting for a chunk that starts a request.
    Resync,
}

struct Body {
    framing: Framing,
    /// The export message being collected; `None` when the body is followed but not kept
    /// (another signal, or already known incomplete).
    message: Option<Message>,
    incomplete: Option<Incomplete>,
}

enum Framing {
    /// `Content-Length`: this many bytes left.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked(Chunked),
}

/// RFC 9112, section 7.1.
enum Chunked {
    /// A chunk-size line (with extensions) being read.
    Size(Vec<u8>),
    /// Inside a chunk: this many data bytes left.
    Data(u64),
    /// The CRLF after a chunk's data: this many bytes of it left.
    DataEnd(u8),
    /// After the last chunk: trailer lines until an empty one.
    Trailer(Vec<u8>),
}

pub(super) struct Http1Exports {
    state: State,
    max_bytes: usize,
}

impl Http1Exports {
    /// `from_start`: the first chunk is the stream's start (else it is joined mid-way).
    pub(super) fn new(max_bytes: usize, from_start: bool) -> Self {
        Self {
            state: if from_start {
                State::Head(Vec::new())
            } else {
                State::Resync
            },
            max_bytes,
        }
    }

    /// `n` bytes of the stream were lost before the next chunk.
    pub(super) fn gap(&mut self, n: u64, out: &mut Out) {
        match &mut self.state {
            State::Body(Body {
                framing: Framing::Length(remaining),
                message,
                incomplete,
            }) if n <= *remaining => {
                *remaining -= n;
                if message.take().is_some() && incomplete.is_none() {
                    *incomplete = Some(Incomplete::Gap);
                }
                if *remaining == 0 {
                    self.end_body(out);
                }
            }
            _ => self.lose_with(Incomplete::Gap, out),
        }
    }

    /// Between requests: no head or body begun.
    pub(super) fn at_boundary(&self) -> bool {
        matches!(&self.state, State::Head(head) if head.is_empty())
    }

    /// Bytes of unknown length were missed: the export in progress, if any, has a gap.
    pub(super) fn gap_unknown(&mut self, out: &mut Out) {
        if !self.at_boundary() {
            self.lose_with(Incomplete::Gap, out);
        }
    }

    /// The place in the stream is lost.
    pub(super) fn lose(&mut self, out: &mut Out) {
        self.lose_with(Incomplete::NotFromStart, out);
    }

    fn lose_with(&mut self, why: Incomplete, out: &mut Out) {
        if let State::Body(body) = &self.state {
            if body.message.is_some() || body.incomplete.is_some() {
                out.incomplete.push(body.incomplete.unwrap_or(why));
            }
        }
        self.state = State::Resync;
    }

    pub(super) fn feed(&mut self, mut data: &[u8], out: &mut Out) {
        if matches!(self.state, State::Resync) {
            // A send that starts a request is a place to start again.
            if !data.starts_with(b"POST ") && !data.starts_with(b"PUT ") {
                return;
            }
            self.state = State::Head(Vec::new());
        }
        while !data.is_empty() {
            let used = match &mut self.state {
                State::Head(head) => {
                    let used = take_head(head, data);
                    if head.ends_with(b"\r\n\r\n") {
                        let head = std::mem::take(head);
                        self.start_body(&head, out);
                    } else if head.len() > MAX_HEAD {
                        self.state = State::Resync;
                        return;
                    }
                    used
                }
                State::Body(body) => {
                    let (used, done) = body.feed(data, self.max_bytes);
                    if done {
                        self.end_body(out);
                    }
                    used
                }
                State::Resync => return,
            };
            data = data.get(used..).unwrap_or_default();
        }
    }

    /// A head is complete: the request is told, and its body followed.
    fn start_body(&mut self, head: &[u8], out: &mut Out) {
        let Ok(req) = parse_request(head) else {
            self.state = State::Resync;
            return;
        };
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Request::new(&mut headers);
        if !matches!(parsed.parse(head), Ok(httparse::Status::Complete(_))) {
            self.state = State::Resync;
            return;
        }
        let header = |name: &str| {
            parsed
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
        };
        let chunked = header("transfer-encoding").is_some_and(|t| t.ends_with("chunked"));
        let length = header("content-length").and_then(|l| l.parse::<u64>().ok());
        let framing = match (chunked, length) {
            (true, _) => Framing::Chunked(Chunked::Size(Vec::new())),
            (false, Some(n)) => Framing::Length(n),
            // A POST without a length has no body we can find the end of.
            (false, None) => {
                self.state = State::Resync;
                out.requests.push(req);
                return;
            }
        };
        let is_traces = req.is_http1_trace_export();
        let mut body = Body {
            framing,
            message: None,
            incomplete: None,
        };
        if is_traces {
            let format = header("content-type").and_then(|ct| BodyFormat::from_content_type(&ct));
            let encoding = header("content-encoding");
            let gzip = match encoding.as_deref() {
                None | Some("identity") => Some(false),
                Some("gzip") => Some(true),
                Some(_) => None,
            };
            match (format, gzip) {
                (Some(format), Some(gzip)) => {
                    body.message = Some(Message {
                        body: Vec::new(),
                        format,
                        gzip,
                        transport: match format {
                            BodyFormat::Protobuf => Transport::HttpProtobuf,
                            BodyFormat::Json => Transport::HttpJson,
                        },
                    });
                    if length.is_some_and(|n| n > self.max_bytes as u64) {
                        body.message = None;
                        body.incomplete = Some(Incomplete::TooLarge);
                    }
                }
                _ => body.incomplete = Some(Incomplete::UnknownEncoding),
            }
        }
        out.requests.push(req);
        self.state = State::Body(body);
        if matches!(
            &self.state,
            State::Body(Body {
                framing: Framing::Length(0),
                ..
            })
        ) {
            self.end_body(out);
        }
    }

    fn end_body(&mut self, out: &mut Out) {
        if let State::Body(body) = std::mem::replace(&mut self.state, State::Head(Vec::new())) {
            match (body.message, body.incomplete) {
                (_, Some(why)) => out.incomplete.push(why),
                (Some(m), None) => out.messages.push(m),
                (None, None) => {}
            }
        }
    }
}

impl Body {
    /// Takes body bytes from `data`; returns how many, and whether the body ended.
    fn feed(&mut self, data: &[u8], max_bytes: usize) -> (usize, bool) {
        let (used, content, done) = match &mut self.framing {
            Framing::Length(remaining) => {
                let n = (*remaining).min(data.len() as u64) as usize;
                *remaining -= n as u64;
                (n, data.get(..n).unwrap_or_default(), *remaining == 0)
            }
            Framing::Chunked(state) => state.feed(data),
        };
        if let Some(m) = &mut self.message {
            if m.body.len() + content.len() > max_bytes {
                self.message = None;
                self.incomplete = Some(Incomplete::TooLarge);
            } else {
                m.body.extend_from_slice(content);
            }
        }
        (used, done)
    }
}

impl Chunked {
    /// Takes bytes of a chunked body; returns how many, the content among them, and whether
    /// the body ended.
    fn feed<'a>(&mut self, data: &'a [u8]) -> (usize, &'a [u8], bool) {
        match self {
            Self::Size(line) => {
                let used = take_line(line, data);
                if line.ends_with(b"\r\n") {
                    let text = String::from_utf8_lossy(line);
                    let size = text.split(';').next().unwrap_or_default().trim();
                    match u64::from_str_radix(size, 16) {
                        Ok(0) => *self = Self::Trailer(Vec::new()),
                        Ok(n) => *self = Self::Data(n),
                        // Not chunked framing after all: treat the body as ended.
                        Err(_) => return (used, &[], true),
                    }
                } else if line.len() > 1024 {
                    return (used, &[], true);
                }
                (used, &[], false)
            }
            Self::Data(remaining) => {
                let n = (*remaining).min(data.len() as u64) as usize;
                *remaining -= n as u64;
                if *remaining == 0 {
                    *self = Self::DataEnd(2);
                }
                (n, data.get(..n).unwrap_or_default(), false)
            }
            Self::DataEnd(left) => {
                let n = usize::from(*left).min(data.len());
                *left -= n as u8;
                if *left == 0 {
                    *self = Self::Size(Vec::new());
                }
                (n, &[], false)
            }
            Self::Trailer(line) => {
                let used = take_line(line, data);
                if line.ends_with(b"\r\n") {
                    if line.len() == 2 {
                        return (used, &[], true);
                    }
                    line.clear();
                }
                (used, &[], false)
            }
        }
    }
}

/// Appends to `head` up to and including the first `\r\n\r\n` of `head + data`; returns the
/// bytes of `data` taken.
fn take_head(head: &mut Vec<u8>, data: &[u8]) -> usize {
    for (i, &b) in data.iter().enumerate() {
        head.push(b);
        if head.ends_with(b"\r\n\r\n") {
            return i + 1;
        }
    }
    data.len()
}

/// Appends to `line` up to and including the first `\n`; returns the bytes of `data` taken.
fn take_line(line: &mut Vec<u8>, data: &[u8]) -> usize {
    match data.iter().position(|&b| b == b'\n') {
        Some(i) => {
            line.extend_from_slice(&data[..=i]);
            i + 1
        }
        None => {
            line.extend_from_slice(data);
            data.len()
        }
    }
}
