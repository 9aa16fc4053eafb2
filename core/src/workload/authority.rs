//! The `:authority` of requests on the Workload API socket, made acceptable to h2.
//!
//! gRPC's C core (the Python, C++, Ruby and PHP clients, py-spiffe among them) sends the
//! percent-encoded socket path as `:authority` on a Unix socket (`tmp%2Fagent.sock`), and
//! grpc-java the path itself; h2, under tonic, refuses both as malformed and resets the stream
//! (hyperium/h2 issue 487, grpc/grpc issue 38142). Go clients send `localhost`. A Unix socket has
//! no authority worth keeping, so every request header block is rewritten on its way in: decoded
//! with the client's HPACK dynamic table, `:authority` replaced by `localhost`, and re-encoded as
//! literals without indexing (so h2's own decoder table stays empty and cannot drift from the
//! client's). Every other frame passes through unchanged. Malformed input ends the connection;
//! frames larger than h2's maximum are passed through for h2 to refuse.

use std::io;

/// h2's default `SETTINGS_MAX_FRAME_SIZE`, which the Workload API server keeps.
const MAX_FRAME: usize = 16_384;
/// The largest header block (HEADERS plus CONTINUATIONs) accepted before decoding.
const MAX_BLOCK: usize = 64 * 1024;
/// The largest decoded header list passed on, counted as h2 does; beyond it the connection
/// ends (h2 itself refuses more than 16 KiB).
const MAX_HEADER_LIST: usize = 32 * 1024;
/// The HPACK dynamic table size h2 advertises (the default, 4096).
const TABLE_SIZE: usize = 4096;
const PREFACE_LEN: usize = 24;

const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Preface,
    Frames,
    /// Something h2 will refuse anyway: forwarded as is.
    Passthrough,
}

/// A header block being collected.
struct Block {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
}

/// The client-to-server byte stream of one connection, rewritten as described above.
pub(crate) struct AuthorityFix {
    state: State,
    input: Vec<u8>,
    output: Vec<u8>,
    sent: usize,
    block: Option<Block>,
    decoder: fluke_hpack::Decoder<'static>,
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_owned())
}

impl AuthorityFix {
    pub(crate) fn new() -> AuthorityFix {
        let mut decoder = fluke_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(TABLE_SIZE);
        AuthorityFix {
            state: State::Preface,
            input: Vec::new(),
            output: Vec::new(),
            sent: 0,
            block: None,
            decoder,
        }
    }

    /// Bytes ready for the server.
    pub(crate) fn pending(&self) -> &[u8] {
        &self.output[self.sent..]
    }

    /// Marks `n` bytes of [`pending`](Self::pending) as handed over.
    pub(crate) fn consume(&mut self, n: usize) {
        self.sent += n;
        if self.sent == self.output.len() {
            self.output.clear();
            self.sent = 0;
        }
    }

    /// Takes bytes read from the client; what can be forwarded becomes pending.
    pub(crate) fn feed(&mut self, data: &[u8]) -> io::Result<()> {
        self.input.extend_from_slice(data);
        loop {
            match self.state {
                State::Passthrough => {
                    self.output.append(&mut self.input);
                    return Ok(());
                }
                State::Preface => {
                    if self.input.len() < PREFACE_LEN {
                        return Ok(());
                    }
                    // h2 checks the preface itself.
                    self.output.extend(self.input.drain(..PREFACE_LEN));
                    self.state = State::Frames;
                }
                State::Frames => {
                    if self.input.len() < 9 {
                        return Ok(());
                    }
                    let len = usize::from(self.input[0]) << 16
                        | usize::from(self.input[1]) << 8
                        | usize::from(self.input[2]);
                    if len > MAX_FRAME {
                        self.state = State::Passthrough;
                        continue;
                    }
                    if self.input.len() < 9 + len {
                        return Ok(());
                    }
                    let frame: Vec<u8> = self.input.drain(..9 + len).collect();
                    self.frame(&frame)?;
                }
            }
        }
    }

    fn frame(&mut self, frame: &[u8]) -> io::Result<()> {
        let (head, payload) = frame.split_at(9);
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        match (kind, self.block.as_mut()) {
            (HEADERS, None) => {
                let mut start = 0;
                let mut pad = 0;
                if flags & PADDED != 0 {
                    pad = usize::from(*payload.first().ok_or_else(|| bad("empty padded HEADERS"))?);
                    start = 1;
                }
                let priority = if flags & PRIORITY != 0 {
                    let p: [u8; 5] = payload
                        .get(start..start + 5)
                        .and_then(|p| p.try_into().ok())
                        .ok_or_else(|| bad("short HEADERS priority"))?;
                    start += 5;
                    Some(p)
                } else {
                    None
                };
                let end = payload
                    .len()
                    .checked_sub(pad)
                    .filter(|e| *e >= start)
                    .ok_or_else(|| bad("HEADERS padding longer than the frame"))?;
                self.block = Some(Block {
                    stream,
                    end_stream: flags & END_STREAM != 0,
                    priority,
                    fragment: payload[start..end].to_vec(),
                });
                if flags & END_HEADERS != 0 {
                    self.finish()?;
                }
                Ok(())
            }
            (CONTINUATION, Some(block)) if block.stream == stream => {
                if block.fragment.len() + payload.len() > MAX_BLOCK {
                    return Err(bad("header block too large"));
                }
                block.fragment.extend_from_slice(payload);
                if flags & END_HEADERS != 0 {
                    self.finish()?;
                }
                Ok(())
            }
            (_, Some(_)) => Err(bad("a header block was interrupted")),
            _ => {
                self.output.extend_from_slice(frame);
                Ok(())
            }
        }
    }

    /// Decodes the collected block, replaces `:authority`, and writes it out again.
    fn finish(&mut self) -> io::Result<()> {
        let Some(block) = self.block.take() else {
            return Ok(());
        };
        // The decoder asserts on some malformed input instead of returning an error. Decoded
        // size is bounded as h2 counts a header list (name + value + 32 per field), so that a
        // block of indexed references to large table entries cannot expand without limit.
        let decoder = &mut self.decoder;
        let mut encoded = Vec::with_capacity(block.fragment.len() + 16);
        let mut listed = 0usize;
        let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            decoder.decode_with_cb(&block.fragment, |name, value| {
                listed += name.len() + value.len() + 32;
                if listed > MAX_HEADER_LIST {
                    return;
                }
                let value: &[u8] = if name.as_ref() == b":authority" {
                    b"localhost"
                } else {
                    &value
                };
                encoded.push(0x00); // literal without indexing, new name
                encode_string(&mut encoded, &name);
                encode_string(&mut encoded, value);
            })
        }));
        if !matches!(decoded, Ok(Ok(()))) {
            return Err(bad("malformed header block"));
        }
        if listed > MAX_HEADER_LIST {
            return Err(bad("header list too large"));
        }
        let mut first = true;
        let mut rest: &[u8] = &encoded;
        loop {
            let room = MAX_FRAME
                - if first && block.priority.is_some() {
                    5
                } else {
                    0
                };
            let (chunk, tail) = rest.split_at(rest.len().min(room));
            let last = tail.is_empty();
            let mut flags = if last { END_HEADERS } else { 0 };
            let kind = if first {
                if block.end_stream {
                    flags |= END_STREAM;
                }
                if block.priority.is_some() {
                    flags |= PRIORITY;
                }
                HEADERS
            } else {
                CONTINUATION
            };
            let priority = if first { block.priority } else { None };
            let len = chunk.len() + priority.map_or(0, |_| 5);
            self.output.extend_from_slice(&[
                (len >> 16) as u8,
                (len >> 8) as u8,
                len as u8,
                kind,
                flags,
            ]);
            self.output.extend_from_slice(&block.stream.to_be_bytes());
            if let Some(p) = priority {
                self.output.extend_from_slice(&p);
            }
            self.output.extend_from_slice(chunk);
            first = false;
            rest = tail;
            if last {
                return Ok(());
            }
        }
    }
}

/// An HPACK string literal, not Huffman-coded: a 7-bit-prefix length, then the bytes.
fn encode_string(out: &mut Vec<u8>, s: &[u8]) {
    encode_integer(out, s.len(), 7, 0x00);
    out.extend_from_slice(s);
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541, 5.1), the first byte's high bits `high`.
fn encode_integer(out: &mut Vec<u8>, mut value: usize, n: u32, high: u8) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(high | value as u8);
        return;
    }
    out.push(high | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// Splits the forwarded bytes into frames after the preface and decodes every header
    /// block with a fresh decoder (the rewritten blocks use no dynamic table).
    fn headers_seen(bytes: &[u8]) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        assert_eq!(&bytes[..24], PREFACE);
        let mut rest = &bytes[24..];
        let mut blocks = Vec::new();
        let mut current = Vec::new();
        while !rest.is_empty() {
            let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            let (kind, flags) = (rest[3], rest[4]);
            let mut payload = &rest[9..9 + len];
            if kind == HEADERS && flags & PRIORITY != 0 {
                payload = &payload[5..];
            }
            if kind == HEADERS || kind == CONTINUATION {
                current.extend_from_slice(payload);
                if flags & END_HEADERS != 0 {
                    blocks.push(fluke_hpack::Decoder::new().decode(&current).unwrap());
                    current.clear();
                }
            }
            rest = &rest[9 + len..];
        }
        blocks
    }

    fn grpc_headers(authority: &[u8]) -> Vec<(&'static [u8], Vec<u8>)> {
        vec![
            (b":method".as_slice(), b"POST".to_vec()),
            (b":scheme", b"http".to_vec()),
            (b":path", b"/SpiffeWorkloadAPI/FetchX509SVID".to_vec()),
            (b":authority", authority.to_vec()),
            (b"workload.spiffe.io", b"true".to_vec()),
        ]
    }

    #[test]
    fn the_socket_path_authority_becomes_localhost_across_dynamic_table_reuse() {
        // The client's encoder indexes headers, so its second block refers to the first's
        // entries: the rewrite must follow its dynamic table.
        let mut enc = fluke_hpack::Encoder::new();
        let h1 = grpc_headers(b"tmp%2Fwl%2Fw.sock");
        let b1 = enc.encode(h1.iter().map(|(n, v)| (*n, v.as_slice())));
        let b2 = enc.encode(h1.iter().map(|(n, v)| (*n, v.as_slice())));
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        input.extend(frame(HEADERS, END_HEADERS, 1, &b1));
        input.extend(frame(0x0, END_STREAM, 1, &[0, 0, 0, 0, 0]));
        // The second block in two pieces, padded and with a priority.
        let (p1, p2) = b2.split_at(b2.len() / 2);
        let mut padded = vec![3u8, 0, 0, 0, 0, 16];
        padded.extend_from_slice(p1);
        padded.extend_from_slice(&[0, 0, 0]);
        input.extend(frame(HEADERS, PADDED | PRIORITY | END_STREAM, 3, &padded));
        input.extend(frame(CONTINUATION, END_HEADERS, 3, p2));
        let mut fix = AuthorityFix::new();
        // Byte by byte: frames split across reads.
        for b in &input {
            fix.feed(std::slice::from_ref(b)).unwrap();
        }
        let out = fix.pending().to_vec();
        let blocks = headers_seen(&out);
        assert_eq!(blocks.len(), 2);
        for block in blocks {
            let authority: Vec<_> = block.iter().filter(|(n, _)| n == b":authority").collect();
            assert_eq!(
                authority,
                [&(b":authority".to_vec(), b"localhost".to_vec())]
            );
            assert!(
                block
                    .iter()
                    .any(|(n, v)| n == b":path" && v == b"/SpiffeWorkloadAPI/FetchX509SVID")
            );
            assert!(
                block
                    .iter()
                    .any(|(n, v)| n == b"workload.spiffe.io" && v == b"true")
            );
        }
        fix.consume(out.len());
        assert!(fix.pending().is_empty());
    }

    #[test]
    fn malformed_and_oversized_input_is_refused_or_passed_to_h2() {
        let mut fix = AuthorityFix::new();
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS, 1, &[0x3f])); // a cut size update
        assert!(fix.feed(&input).is_err());

        let mut fix = AuthorityFix::new();
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, 0, 1, &[0x82]));
        input.extend(frame(0x0, 0, 1, &[]));
        assert!(
            fix.feed(&input).is_err(),
            "a header block interrupted by DATA"
        );

        let mut fix = AuthorityFix::new();
        let mut input = PREFACE.to_vec();
        input.extend_from_slice(&[0xff, 0xff, 0xff, 1, 0, 0, 0, 0, 1]);
        fix.feed(&input).unwrap();
        assert_eq!(
            fix.pending(),
            &input[..],
            "a frame over the maximum goes to h2 as is"
        );

        let mut fix = AuthorityFix::new();
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, PADDED | END_HEADERS, 1, &[9, 0x82]));
        assert!(fix.feed(&input).is_err(), "padding longer than the frame");

        // An HPACK bomb: one 4 KiB table entry, then a block of references to it.
        let mut fix = AuthorityFix::new();
        let mut input = PREFACE.to_vec();
        let first = {
            let mut f = vec![0x40, 0x01, b'x'];
            encode_integer(&mut f, 4096 - 32 - 1, 7, 0);
            f.extend(std::iter::repeat_n(b'y', 4096 - 32 - 1));
            f
        };
        input.extend(frame(HEADERS, END_HEADERS, 1, &first));
        input.extend(frame(HEADERS, END_HEADERS, 3, &[0xbe; 1000])); // index 62, 1000 times
        assert!(fix.feed(&input).is_err(), "an expanding header block");

        let mut fix = AuthorityFix::new();
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, 0, 1, &[0x82]));
        for _ in 0..5 {
            input.extend(frame(CONTINUATION, 0, 1, &[0x40; MAX_FRAME]));
        }
        assert!(fix.feed(&input).is_err(), "an endless header block");
    }

    #[test]
    fn integers_use_their_prefix_then_continuation_bytes() {
        let mut out = Vec::new();
        encode_integer(&mut out, 10, 5, 0);
        assert_eq!(out, [10]);
        out.clear();
        encode_integer(&mut out, 1337, 5, 0);
        assert_eq!(out, [31, 154, 10]);
    }
}
