//! The server name a TLS client asks for, read from its ClientHello before rustls sees it, so
//! the handshake can wait for a certificate being ordered (rustls picks certificates
//! synchronously). The bytes read are put back for the handshake.

use pingora::protocols::l4::stream::Stream as L4Stream;
use tokio::io::AsyncReadExt;

const HANDSHAKE_RECORD: u8 = 22;
const CLIENT_HELLO: u8 = 1;
const SERVER_NAME_EXTENSION: u16 = 0;
const HOST_NAME: u8 = 0;
/// A TLS record holds at most 2^14 bytes of plaintext.
const MAX_RECORD: usize = 1 << 14;

/// Reads the first TLS record, puts it back and returns its SNI name, if it is a ClientHello
/// carrying one.
pub async fn peek_server_name(stream: &mut L4Stream) -> Option<String> {
    let mut header = [0u8; 5];
    if stream.read_exact(&mut header).await.is_err() {
        // The connection ended: the handshake fails on its own.
        stream.rewind(&header);
        return None;
    }
    let length = usize::from(u16::from_be_bytes([header[3], header[4]]));
    if header[0] != HANDSHAKE_RECORD || length > MAX_RECORD {
        stream.rewind(&header);
        return None;
    }
    let mut record = vec![0u8; 5 + length];
    record[..5].copy_from_slice(&header);
    let complete = stream.read_exact(&mut record[5..]).await.is_ok();
    stream.rewind(&record);
    if !complete {
        return None;
    }
    server_name(&record[5..])
}

/// A cursor over the ClientHello's bytes; every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u16(&mut self) -> Option<u16> {
        let b = self.take(2)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }

    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }

    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

/// The host name in a handshake message holding a ClientHello (RFC 8446 4.1.2, RFC 6066 3).
fn server_name(handshake: &[u8]) -> Option<String> {
    let mut r = Reader(handshake);
    if r.u8()? != CLIENT_HELLO {
        return None;
    }
    r.take(3)?; // length: a ClientHello split over records is cut short below, and ignored
    r.take(2 + 32)?; // legacy_version, random
    r.vec8()?; // legacy_session_id
    r.vec16()?; // cipher_suites
    r.vec8()?; // legacy_compression_methods
    let mut extensions = Reader(r.vec16()?);
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let body = extensions.vec16()?;
        if kind != SERVER_NAME_EXTENSION {
            continue;
        }
        let mut names = Reader(Reader(body).vec16()?);
        while !names.0.is_empty() {
            let name_type = names.u8()?;
            let name = names.vec16()?;
            if name_type == HOST_NAME {
                let name = std::str::from_utf8(name).ok()?;
                return Some(name.trim_end_matches('.').to_ascii_lowercase());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello as a client makes it, with `sni` if any.
    fn client_hello(sni: Option<&str>) -> Vec<u8> {
        let mut extensions = Vec::new();
        // An extension before the name, as browsers send (supported_versions).
        extensions.extend_from_slice(&[0x00, 0x2b, 0x00, 0x03, 0x02, 0x03, 0x04]);
        if let Some(name) = sni {
            let name = name.as_bytes();
            let entry_len = 3 + name.len();
            extensions.extend_from_slice(&[0x00, 0x00]);
            extensions.extend_from_slice(&((entry_len + 2) as u16).to_be_bytes());
            extensions.extend_from_slice(&(entry_len as u16).to_be_bytes());
            extensions.push(HOST_NAME);
            extensions.extend_from_slice(&(name.len() as u16).to_be_bytes());
            extensions.extend_from_slice(name);
        }
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[7u8; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0x00, 0x02, 0x13, 0x01]);
        body.extend_from_slice(&[0x01, 0x00]);
        body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
        body.extend_from_slice(&extensions);
        let mut message = vec![CLIENT_HELLO];
        message.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        message.extend_from_slice(&body);
        message
    }

    #[test]
    fn reads_the_name_and_nothing_else() {
        assert_eq!(
            server_name(&client_hello(Some("Site1.Test."))).as_deref(),
            Some("site1.test")
        );
        assert_eq!(server_name(&client_hello(None)), None);
        let whole = client_hello(Some("a.example"));
        for cut in 0..whole.len() {
            assert_eq!(server_name(&whole[..cut]), None, "cut at {cut}");
        }
        assert_eq!(server_name(b"GET / HTTP/1.1\r\n"), None);
    }
}
