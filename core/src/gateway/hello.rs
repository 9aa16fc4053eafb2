//! Reads a TLS ClientHello far enough to learn its SNI, without terminating TLS: the bytes
//! read are handed back so that the gateway forwards them untouched (Consul docs: Mesh
//! Gateways; the record and message layout is RFC 8446, sections 4.1.2, 4.2 and 5.1, and the
//! `server_name` extension RFC 6066, section 3).
//!
//! Every socket is an attack surface (ARCHITECTURE.md, Principles): the hello is bounded in
//! size, records and time, and anything that is not a well-formed ClientHello is an error.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::{Error, ErrorKind};

/// The largest TLS record payload (RFC 8446, 5.1: 2^14 bytes).
pub const MAX_RECORD: usize = 1 << 14;

/// The largest ClientHello accepted, handshake header included. Real hellos, post-quantum key
/// shares included, are a few kilobytes.
pub const MAX_HELLO: usize = MAX_RECORD;

const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: u16 = 0;
const NAME_TYPE_HOST: u8 = 0;
/// A DNS name is at most 253 characters.
const MAX_HOST_NAME: usize = 253;

/// A ClientHello as read from the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// Every byte read, to be forwarded first.
    pub raw: Vec<u8>,
    /// The SNI host name, lower-cased; `None` when the hello has none.
    pub server_name: Option<String>,
}

fn bad(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::Tls, message)
}

/// Reads records from `stream` until a whole ClientHello has arrived, within `timeout`.
///
/// Errors: `Timeout` when the hello does not arrive in time, `Tls` for anything that is not a
/// ClientHello within [`MAX_HELLO`], `Io` when the stream fails or ends early.
pub async fn read_client_hello<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> Result<ClientHello, Error> {
    tokio::time::timeout(timeout, read(stream))
        .await
        .unwrap_or_else(|_| {
            Err(Error::new(
                ErrorKind::Timeout,
                format!("no TLS ClientHello within {timeout:?}"),
            ))
        })
}

async fn read<S: AsyncRead + Unpin>(stream: &mut S) -> Result<ClientHello, Error> {
    let mut raw = Vec::with_capacity(1024);
    // The handshake message, reassembled from the payloads of one or more records.
    let mut message: Vec<u8> = Vec::with_capacity(1024);
    loop {
        let mut header = [0u8; 5];
        stream.read_exact(&mut header).await.map_err(io)?;
        if header[0] != CONTENT_HANDSHAKE {
            return Err(bad("not a TLS handshake record"));
        }
        if header[1] != 3 {
            return Err(bad("not a TLS record version"));
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 || len > MAX_RECORD {
            return Err(bad(format!("TLS record length {len} out of range")));
        }
        if message.len() + len > MAX_HELLO + 4 {
            return Err(bad("ClientHello too large"));
        }
        raw.extend_from_slice(&header);
        let start = raw.len();
        raw.resize(start + len, 0);
        stream.read_exact(&mut raw[start..]).await.map_err(io)?;
        message.extend_from_slice(&raw[start..]);
        if message.len() >= 4 {
            if message[0] != HANDSHAKE_CLIENT_HELLO {
                return Err(bad("first handshake message is not a ClientHello"));
            }
            let body = usize::from(message[1]) << 16
                | usize::from(message[2]) << 8
                | usize::from(message[3]);
            if body > MAX_HELLO {
                return Err(bad("ClientHello too large"));
            }
            if message.len() >= 4 + body {
                let server_name = parse_server_name(&message[4..4 + body])?;
                return Ok(ClientHello { raw, server_name });
            }
        }
    }
}

fn io(e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        Error::new(
            ErrorKind::Io,
            "connection closed before a whole ClientHello",
        )
    } else {
        crate::tls::error_from_io(&e)
    }
}

/// A cursor over a byte slice whose reads fail instead of panicking.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if self.0.len() < n {
            return Err(bad("truncated ClientHello"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Error> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn vec8(&mut self) -> Result<&'a [u8], Error> {
        let n = usize::from(self.u8()?);
        self.take(n)
    }

    fn vec16(&mut self) -> Result<&'a [u8], Error> {
        let n = usize::from(self.u16()?);
        self.take(n)
    }
}

/// The `server_name` of a ClientHello body (after the 4-byte handshake header).
pub fn parse_server_name(body: &[u8]) -> Result<Option<String>, Error> {
    let mut r = Reader(body);
    let _legacy_version = r.u16()?;
    let _random = r.take(32)?;
    let session_id = r.vec8()?;
    if session_id.len() > 32 {
        return Err(bad("ClientHello session ID longer than 32 bytes"));
    }
    let _cipher_suites = r.vec16()?;
    let _compression = r.vec8()?;
    if r.0.is_empty() {
        // A hello without extensions has no SNI.
        return Ok(None);
    }
    let mut extensions = Reader(r.vec16()?);
    let mut found = None;
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let data = extensions.vec16()?;
        if kind != EXT_SERVER_NAME {
            continue;
        }
        if found.is_some() {
            return Err(bad("ClientHello has two server_name extensions"));
        }
        let mut list = Reader(Reader(data).vec16()?);
        while !list.0.is_empty() {
            let name_type = list.u8()?;
            let name = list.vec16()?;
            if name_type == NAME_TYPE_HOST && found.is_none() {
                found = Some(host_name(name)?);
            }
        }
    }
    Ok(found)
}

fn host_name(name: &[u8]) -> Result<String, Error> {
    if name.is_empty() || name.len() > MAX_HOST_NAME {
        return Err(bad("SNI host name length out of range"));
    }
    if !name
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(bad("SNI host name is not a DNS name"));
    }
    Ok(String::from_utf8_lossy(name).to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ClientHello body with the given extensions block.
    fn body(extensions: Option<&[u8]>) -> Vec<u8> {
        let mut b = vec![3, 3];
        b.extend_from_slice(&[7u8; 32]);
        b.push(0); // session id
        b.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
        b.extend_from_slice(&[1, 0]); // null compression
        if let Some(ext) = extensions {
            b.extend_from_slice(&u16::try_from(ext.len()).unwrap().to_be_bytes());
            b.extend_from_slice(ext);
        }
        b
    }

    fn sni_ext(name: &str) -> Vec<u8> {
        let n = name.as_bytes();
        let mut entry = vec![NAME_TYPE_HOST];
        entry.extend_from_slice(&u16::try_from(n.len()).unwrap().to_be_bytes());
        entry.extend_from_slice(n);
        let mut list = u16::try_from(entry.len()).unwrap().to_be_bytes().to_vec();
        list.extend_from_slice(&entry);
        let mut ext = EXT_SERVER_NAME.to_be_bytes().to_vec();
        ext.extend_from_slice(&u16::try_from(list.len()).unwrap().to_be_bytes());
        ext.extend_from_slice(&list);
        ext
    }

    fn records(body: &[u8], split: usize) -> Vec<u8> {
        let mut msg = vec![HANDSHAKE_CLIENT_HELLO];
        msg.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
        msg.extend_from_slice(body);
        let mut out = Vec::new();
        for chunk in msg.chunks(split) {
            out.extend_from_slice(&[CONTENT_HANDSHAKE, 3, 1]);
            out.extend_from_slice(&u16::try_from(chunk.len()).unwrap().to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    async fn read_all(bytes: &[u8]) -> Result<ClientHello, Error> {
        let mut s = bytes;
        read_client_hello(&mut s, Duration::from_secs(1)).await
    }

    #[tokio::test]
    async fn finds_the_sni_and_keeps_every_byte() {
        let mut ext = vec![0, 10, 0, 2, 0, 29]; // supported_groups first
        ext.extend_from_slice(&sni_ext("DB.default.dc2.internal.x.consul"));
        let wire = records(&body(Some(&ext)), 10_000);
        let hello = read_all(&wire).await.unwrap();
        assert_eq!(
            hello.server_name.as_deref(),
            Some("db.default.dc2.internal.x.consul")
        );
        assert_eq!(hello.raw, wire);
    }

    #[tokio::test]
    async fn reassembles_a_hello_split_over_records() {
        let wire = records(&body(Some(&sni_ext("a.b"))), 7);
        let hello = read_all(&wire).await.unwrap();
        assert_eq!(hello.server_name.as_deref(), Some("a.b"));
        assert_eq!(hello.raw, wire);
    }

    #[tokio::test]
    async fn a_hello_without_sni_has_none() {
        assert_eq!(
            read_all(&records(&body(None), 100))
                .await
                .unwrap()
                .server_name,
            None
        );
        let groups = [0u8, 10, 0, 2, 0, 29];
        assert_eq!(
            read_all(&records(&body(Some(&groups)), 100))
                .await
                .unwrap()
                .server_name,
            None
        );
    }

    #[tokio::test]
    async fn hostile_input_is_a_typed_error() {
        let http = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        let huge = [CONTENT_HANDSHAKE, 3, 1, 0xff, 0xff];
        let empty_record = [CONTENT_HANDSHAKE, 3, 1, 0, 0];
        let mut not_hello = records(&body(None), 100);
        not_hello[5] = 2; // ServerHello
        let mut truncated_body = body(Some(&sni_ext("a.b")));
        truncated_body.truncate(truncated_body.len() - 2);
        let mut bad_name = sni_ext("a b");
        bad_name.truncate(bad_name.len());
        let mut two = sni_ext("a.b");
        two.extend_from_slice(&sni_ext("c.d"));
        // A handshake header claiming more than the cap.
        let mut oversized = vec![
            CONTENT_HANDSHAKE,
            3,
            1,
            0,
            4,
            HANDSHAKE_CLIENT_HELLO,
            0xff,
            0xff,
            0xff,
        ];
        oversized.truncate(9);
        for (what, wire, kind) in [
            ("http", http, ErrorKind::Tls),
            ("64 KiB record", huge.to_vec(), ErrorKind::Tls),
            ("empty record", empty_record.to_vec(), ErrorKind::Tls),
            ("server hello", not_hello, ErrorKind::Tls),
            ("truncated", records(&truncated_body, 100), ErrorKind::Tls),
            (
                "bad name",
                records(&body(Some(&bad_name)), 100),
                ErrorKind::Tls,
            ),
            ("two names", records(&body(Some(&two)), 100), ErrorKind::Tls),
            ("oversized", oversized, ErrorKind::Tls),
            ("eof", vec![CONTENT_HANDSHAKE, 3], ErrorKind::Io),
        ] {
            let e = read_all(&wire).await.unwrap_err();
            assert_eq!(e.kind(), kind, "{what}: {e}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_times_out() {
        // The client stays open, and silent, until the read has timed out.
        let (client, mut server) = tokio::io::duplex(64);
        let e = read_client_hello(&mut server, Duration::from_secs(10))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout);
        drop(client);
    }
}
