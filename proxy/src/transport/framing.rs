//! Strict chunked framing beneath hyper's HTTP/1 server: a read-side
//! wrapper of an accepted connection that follows the request stream as
//! hyper frames it (head, then a Content-Length or chunked body) and checks
//! every chunk-size line against RFC 9112 §7.1, which hyper does not fully
//! do (it takes `5 \r\n` as a size of 5 and lets any byte into an
//! extension). The bytes before an offending one are delivered, so hyper
//! has the request; the next read fails, which the request body reports
//! as the client's fault (400). An HTTP/2 connection (its preface) passes
//! through untouched; request heads are hyper's to judge.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const TRANSFER_ENCODING: &[u8] = b"transfer-encoding:";
const CONTENT_LENGTH: &[u8] = b"content-length:";

/// What is wrong with a chunked request body's framing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadChunk(&'static str);

impl fmt::Display for BadChunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad chunked framing: {}", self.0)
    }
}

impl std::error::Error for BadChunk {}

/// Where the request stream is, byte by byte.
#[derive(Debug)]
pub struct Framing {
    state: State,
}

#[derive(Debug)]
enum State {
    /// Bytes of the HTTP/2 preface matched so far (at connection start).
    Preface(usize),
    /// HTTP/2: nothing to check here.
    Opaque,
    Head(Head),
    /// Content-Length bytes left.
    Length(u64),
    Chunked(Chunk),
    Failed(BadChunk),
}

/// A request head, line by line, looking only for the framing headers.
#[derive(Debug, Default)]
struct Head {
    request_line: bool,
    chunked: bool,
    length: u64,
    line: Line,
}

#[derive(Debug, Default)]
struct Line {
    /// Bytes of the line so far (its CR included).
    len: usize,
    last_cr: bool,
    field: Field,
}

#[derive(Debug, Default)]
enum Field {
    /// Matching the name against the framing headers, as one of them
    /// could still be it.
    #[default]
    Name,
    TransferEncoding,
    /// Content-Length's value: the last number of its list so far (hyper
    /// refuses a list of different numbers, or anything else in it).
    ContentLength {
        value: u64,
        restart: bool,
    },
    /// Nothing the framing depends on.
    Other,
}

#[derive(Debug)]
struct Chunk {
    at: ChunkAt,
    size: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChunkAt {
    /// The first hex digit of a size.
    Start,
    Size,
    /// Whitespace after the size: an extension must follow.
    SizeWs,
    /// After `;`: whitespace, then a name.
    ExtStart,
    ExtName,
    ExtNameWs,
    /// After `=`: whitespace, then a token or a quoted string.
    ValStart,
    ValToken,
    ValWs,
    Quoted,
    QuotedEscape,
    /// After a quoted value's closing quote.
    AfterQuoted,
    /// CR seen ending the size line.
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// After the last chunk: CR of the empty line, or a trailer field.
    EndCr,
    EndLf,
    Trailer,
    TrailerLf,
}

impl Default for Framing {
    fn default() -> Self {
        Self {
            state: State::Preface(0),
        }
    }
}

impl Framing {
    /// The verdict on a whole stream from its start, read in one piece or
    /// in two at `split`.
    pub fn judge(stream: &[u8], split: Option<usize>) -> Result<(), (usize, BadChunk)> {
        let mut framing = Self::default();
        let split = split.unwrap_or(stream.len()).min(stream.len());
        framing.feed(&stream[..split])?;
        framing
            .feed(&stream[split..])
            .map_err(|(at, e)| (at + split, e))
    }

    /// Follows `bytes` (the next ones read from the client). On a framing
    /// error returns how many of them come before the offending byte.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), (usize, BadChunk)> {
        let mut at = 0;
        while at < bytes.len() {
            at += match &mut self.state {
                State::Failed(e) => return Err((at, *e)),
                State::Opaque => return Ok(()),
                State::Preface(n) => {
                    let matched = *n;
                    if bytes[at] != PREFACE[matched] {
                        // HTTP/1: what matched so far was the start of its
                        // stream (it frames no body, so it cannot fail).
                        self.state = State::Head(Head::default());
                        self.feed(&PREFACE[..matched]).map_err(|(_, e)| (at, e))?;
                        continue;
                    }
                    *n += 1;
                    if *n == PREFACE.len() {
                        self.state = State::Opaque;
                    }
                    1
                }
                State::Head(head) => {
                    let (used, done) = head.feed(&bytes[at..]);
                    if done {
                        self.state = match (head.chunked, head.length) {
                            (true, _) => State::Chunked(Chunk {
                                at: ChunkAt::Start,
                                size: 0,
                            }),
                            (false, 0) => State::Head(Head::default()),
                            (false, n) => State::Length(n),
                        };
                    }
                    used
                }
                State::Length(left) => {
                    let used = usize::try_from(*left)
                        .map_or(bytes.len() - at, |l| l.min(bytes.len() - at));
                    *left -= used as u64;
                    if *left == 0 {
                        self.state = State::Head(Head::default());
                    }
                    used
                }
                State::Chunked(chunk) => match chunk.feed(&bytes[at..]) {
                    Ok((used, false)) => used,
                    Ok((used, true)) => {
                        self.state = State::Head(Head::default());
                        used
                    }
                    Err((used, e)) => {
                        self.state = State::Failed(e);
                        return Err((at + used, e));
                    }
                },
            };
        }
        Ok(())
    }
}

impl Head {
    /// Reads up to the end of the head; returns the bytes used and whether
    /// the head ended.
    fn feed(&mut self, bytes: &[u8]) -> (usize, bool) {
        let mut used = 0;
        while used < bytes.len() {
            if matches!(self.line.field, Field::Other) {
                // Skip to the end of the line.
                match bytes[used..].iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        self.line.len += i;
                        used += i;
                    }
                    None => {
                        self.line.len += bytes.len() - used;
                        return (bytes.len(), false);
                    }
                }
            }
            let b = bytes[used];
            used += 1;
            if self.byte(b) {
                return (used, true);
            }
        }
        (used, false)
    }

    /// One byte; true when it ends the head.
    fn byte(&mut self, b: u8) -> bool {
        if b != b'\n' {
            let line = &mut self.line;
            line.field = match std::mem::take(&mut line.field) {
                Field::Name if self.request_line => name_byte(line.len, b),
                Field::ContentLength { value, restart } => content_length_byte(value, restart, b),
                Field::TransferEncoding => Field::TransferEncoding,
                Field::Name | Field::Other => Field::Other,
            };
            line.len += 1;
            line.last_cr = b == b'\r';
            return false;
        }
        let line = std::mem::take(&mut self.line);
        let empty = line.len == 0 || (line.len == 1 && line.last_cr);
        if !self.request_line {
            // Empty lines before the request line are skipped.
            self.request_line = !empty;
            return false;
        }
        if empty {
            return true;
        }
        match line.field {
            // Any Transfer-Encoding makes the body chunked (or hyper refuses
            // the request), whatever the Content-Length.
            Field::TransferEncoding => self.chunked = true,
            Field::ContentLength { value, .. } => self.length = value,
            Field::Name | Field::Other => {}
        }
        false
    }
}

/// The byte at `at` of a field name: still possibly a framing header, now
/// known to be one (its colon), or not one.
fn name_byte(at: usize, b: u8) -> Field {
    let b = b.to_ascii_lowercase();
    let is = |name: &[u8]| name.get(at) == Some(&b);
    if is(TRANSFER_ENCODING) {
        if at + 1 == TRANSFER_ENCODING.len() {
            return Field::TransferEncoding;
        }
        return Field::Name;
    }
    if is(CONTENT_LENGTH) {
        if at + 1 == CONTENT_LENGTH.len() {
            return Field::ContentLength {
                value: 0,
                restart: false,
            };
        }
        return Field::Name;
    }
    Field::Other
}

/// The next byte of Content-Length's value.
fn content_length_byte(value: u64, restart: bool, b: u8) -> Field {
    match b {
        b'0'..=b'9' => {
            let base = if restart { 0 } else { value };
            Field::ContentLength {
                value: base.saturating_mul(10).saturating_add(u64::from(b - b'0')),
                restart: false,
            }
        }
        b',' => Field::ContentLength {
            value,
            restart: true,
        },
        _ => Field::ContentLength { value, restart },
    }
}

impl Chunk {
    /// Reads up to the end of the body; returns the bytes used and whether
    /// the body ended, or where its framing broke.
    fn feed(&mut self, bytes: &[u8]) -> Result<(usize, bool), (usize, BadChunk)> {
        let mut used = 0;
        while used < bytes.len() {
            if self.at == ChunkAt::Data {
                let left = bytes.len() - used;
                let take = usize::try_from(self.size).map_or(left, |size| size.min(left));
                self.size -= take as u64;
                used += take;
                if self.size == 0 {
                    self.at = ChunkAt::DataCr;
                }
                continue;
            }
            match self.byte(bytes[used]) {
                Ok(true) => return Ok((used + 1, true)),
                Ok(false) => used += 1,
                Err(e) => return Err((used, e)),
            }
        }
        Ok((used, false))
    }

    /// One byte outside chunk data; true when it ends the body.
    fn byte(&mut self, b: u8) -> Result<bool, BadChunk> {
        use ChunkAt::*;
        let ws = b == b' ' || b == b'\t';
        self.at = match (self.at, b) {
            (Start | Size, _) if b.is_ascii_hexdigit() => {
                self.size = self
                    .size
                    .checked_mul(16)
                    .and_then(|s| s.checked_add(u64::from(hex(b))))
                    .ok_or(BadChunk("chunk size over 64 bits"))?;
                Size
            }
            (Start, _) => return Err(BadChunk("chunk size line without a size")),
            (Size | SizeWs, _) if ws => SizeWs,
            (Size | SizeWs | ExtName | ExtNameWs | ValToken | ValWs | AfterQuoted, b';') => {
                ExtStart
            }
            (Size | ExtName | ValToken | AfterQuoted, b'\r') => SizeLf,
            (Size, _) => return Err(BadChunk("chunk size is not hex digits then CRLF")),
            (SizeWs, _) => {
                return Err(BadChunk(
                    "whitespace after the chunk size not followed by an extension",
                ))
            }
            (ExtStart, _) if ws => ExtStart,
            (ExtStart | ExtName, _) if is_tchar(b) => ExtName,
            (ExtName | ExtNameWs, _) if ws => ExtNameWs,
            (ExtName | ExtNameWs, b'=') => ValStart,
            (ValStart, _) if ws => ValStart,
            (ValStart, b'"') => Quoted,
            (ValStart | ValToken, _) if is_tchar(b) => ValToken,
            (ValToken | ValWs | AfterQuoted, _) if ws => ValWs,
            (Quoted, b'"') => AfterQuoted,
            (Quoted, b'\\') => QuotedEscape,
            (Quoted, _) if is_qdtext(b) => Quoted,
            (QuotedEscape, _) if ws || is_vchar_or_obs(b) => Quoted,
            (
                ExtStart | ExtName | ExtNameWs | ValStart | ValToken | ValWs | Quoted
                | QuotedEscape | AfterQuoted,
                _,
            ) => return Err(BadChunk("malformed chunk extension")),
            (SizeLf, b'\n') if self.size == 0 => EndCr,
            (SizeLf, b'\n') => Data,
            (SizeLf, _) => return Err(BadChunk("chunk size line not ended by CRLF")),
            // `feed` counts chunk data off; it never comes byte by byte.
            (Data, _) => Data,
            (DataCr, b'\r') => DataLf,
            (DataLf, b'\n') => {
                self.size = 0;
                Start
            }
            (DataCr | DataLf, _) => return Err(BadChunk("chunk data not followed by CRLF")),
            (EndCr, b'\r') => EndLf,
            (EndLf, b'\n') => return Ok(true),
            (EndLf, _) => return Err(BadChunk("chunked body not ended by CRLF")),
            (Trailer, b'\r') => TrailerLf,
            (EndCr | Trailer, b'\n') => return Err(BadChunk("bare LF in a trailer field")),
            (EndCr | Trailer, _) => Trailer,
            (TrailerLf, b'\n') => EndCr,
            (TrailerLf, _) => return Err(BadChunk("trailer field not ended by CRLF")),
        };
        Ok(false)
    }
}

fn hex(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// RFC 9110 `qdtext`.
fn is_qdtext(b: u8) -> bool {
    matches!(b, b'\t' | b' ' | 0x21 | 0x23..=0x5b | 0x5d..=0x7e | 0x80..=0xff)
}

fn is_vchar_or_obs(b: u8) -> bool {
    matches!(b, 0x21..=0x7e | 0x80..=0xff)
}

/// An accepted connection whose reads follow the request framing (see the
/// module header); writes pass through.
#[derive(Debug)]
pub struct StrictFraming<IO> {
    io: IO,
    framing: Framing,
}

impl<IO> StrictFraming<IO> {
    pub fn new(io: IO) -> Self {
        Self {
            io,
            framing: Framing::default(),
        }
    }
}

fn invalid(e: BadChunk) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl<IO: AsyncRead + Unpin> AsyncRead for StrictFraming<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let State::Failed(e) = this.framing.state {
            return Poll::Ready(Err(invalid(e)));
        }
        let before = buf.filled().len();
        std::task::ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        match this.framing.feed(&buf.filled()[before..]) {
            Ok(()) => Poll::Ready(Ok(())),
            // Nothing before the offending byte: fail now.
            Err((0, e)) => Poll::Ready(Err(invalid(e))),
            // Deliver what comes before it; the next read fails.
            Err((n, _)) => {
                buf.set_filled(before + n);
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for StrictFraming<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
