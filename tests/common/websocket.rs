//! A small RFC 6455 client on a plain TCP socket, for tests: the opening handshake (the
//! server's `Sec-WebSocket-Accept` is checked), masked client frames of any length, and
//! server frames read back in order, with pings answered as a browser would.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

pub struct WebSocket {
    stream: TcpStream,
    /// Bytes read past the last frame handed out.
    buffer: Vec<u8>,
    /// The server's 101 response head, as received.
    pub response_head: String,
    /// The key this client sent (the app sees it as `HTTP_SEC_WEBSOCKET_KEY`).
    pub key: String,
    /// Pings from the server, answered with pongs while reading.
    pub pings: usize,
    /// Reads fail with `TimedOut` from then on (`idle_for`).
    deadline: Option<Instant>,
}

/// The answer to a handshake that did not switch protocols.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

const OP_CONTINUATION: u8 = 0;
const OP_TEXT: u8 = 1;
const OP_CLOSE: u8 = 8;
const OP_PING: u8 = 9;
const OP_PONG: u8 = 10;
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

impl WebSocket {
    /// Opens a WebSocket to `path` on `host` through 127.0.0.1:`port`, as a browser would.
    pub fn connect(port: u16, host: &str, path: &str) -> Result<WebSocket, Refused> {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .set_read_timeout(Some(super::IO_TIMEOUT))
            .expect("read timeout");
        let key = base64(&random_bytes::<16>());
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .expect("send handshake");
        let mut buffer = Vec::new();
        let head_end = loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            let mut chunk = [0; 4096];
            let n = stream.read(&mut chunk).expect("read handshake answer");
            assert!(
                n > 0,
                "closed during the handshake after {:?}",
                String::from_utf8_lossy(&buffer)
            );
            buffer.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
        let rest = buffer.split_off(head_end + 4);
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line in {head:?}"));
        if status != 101 {
            // The connection may stay open (keep-alive): read the body by its length.
            let mut body = rest;
            match header(&head, "content-length").and_then(|n| n.parse::<usize>().ok()) {
                Some(length) => {
                    let mut more = vec![0; length.saturating_sub(body.len())];
                    stream
                        .read_exact(&mut more)
                        .expect("read the refusal's body");
                    body.extend_from_slice(&more);
                }
                None => {
                    let _ = stream.read_to_end(&mut body);
                }
            }
            return Err(Refused { status, head, body });
        }
        let expected = base64(&sha1(format!("{key}{ACCEPT_GUID}").as_bytes()));
        let accept = header(&head, "sec-websocket-accept");
        assert_eq!(
            accept,
            Some(expected.as_str()),
            "wrong Sec-WebSocket-Accept in {head:?}"
        );
        Ok(WebSocket {
            stream,
            buffer: rest,
            response_head: head,
            key,
            pings: 0,
            deadline: None,
        })
    }

    /// Sends nothing for `duration` while reading what the server sends (pings are
    /// answered). `Ok` if the connection is still open then; an error if it closed, or if a
    /// message arrived (`InvalidData`).
    pub fn idle_for(&mut self, duration: Duration) -> io::Result<()> {
        self.deadline = Some(Instant::now() + duration);
        let outcome = match self.recv() {
            Ok(message) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "unexpected message while idle: {:?}",
                    String::from_utf8_lossy(&message)
                ),
            )),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => Ok(()),
            Err(e) => Err(e),
        };
        self.deadline = None;
        self.stream.set_read_timeout(Some(super::IO_TIMEOUT))?;
        outcome
    }

    /// Sends `payload` as one masked text frame.
    pub fn send(&mut self, payload: &[u8]) -> io::Result<()> {
        self.send_frame(OP_TEXT, payload)
    }

    /// The next message from the server; pings are answered on the way. A close frame or the
    /// end of the connection is an error (`ConnectionAborted`, `UnexpectedEof`).
    pub fn recv(&mut self) -> io::Result<Vec<u8>> {
        let mut message = Vec::new();
        loop {
            let (fin, opcode, payload) = self.read_frame()?;
            match opcode {
                OP_PING => {
                    self.pings += 1;
                    self.send_frame(OP_PONG, &payload)?;
                }
                OP_PONG => {}
                OP_CLOSE => {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "the server sent a close frame",
                    ))
                }
                OP_TEXT | OP_CONTINUATION | 2 => {
                    message.extend_from_slice(&payload);
                    if fin {
                        return Ok(message);
                    }
                }
                other => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("unexpected opcode {other}"),
                    ))
                }
            }
        }
    }

    /// Sends a close frame (status 1000) and waits for the server to end the connection.
    pub fn close(mut self) {
        let _ = self.send_frame(OP_CLOSE, &1000u16.to_be_bytes());
        while self.read_frame().is_ok() {}
    }

    fn send_frame(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        let mut frame = Vec::with_capacity(payload.len() + 14);
        frame.push(0x80 | opcode);
        match payload.len() {
            n @ 0..=125 => frame.push(0x80 | n as u8),
            n @ 126..=0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask = random_bytes::<4>();
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame)
    }

    /// One frame: (FIN, opcode, payload). Nothing is consumed until the whole frame is in,
    /// so a read that times out leaves the stream usable.
    fn read_frame(&mut self) -> io::Result<(bool, u8, Vec<u8>)> {
        loop {
            if let Some((fin, opcode, start, end)) = parse_frame(&self.buffer)? {
                let payload = self.buffer[start..end].to_vec();
                self.buffer.drain(..end);
                return Ok((fin, opcode, payload));
            }
            self.fill()?;
        }
    }

    fn fill(&mut self) -> io::Result<()> {
        if let Some(deadline) = self.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            self.stream.set_read_timeout(Some(left))?;
        }
        let mut chunk = [0; 65536];
        match self.stream.read(&mut chunk) {
            Ok(0) => Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(read) => {
                self.buffer.extend_from_slice(&chunk[..read]);
                Ok(())
            }
            // A read timeout is reported as WouldBlock on Linux.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(io::ErrorKind::TimedOut.into()),
            Err(e) => Err(e),
        }
    }
}

/// A complete server frame at the start of `data`: (FIN, opcode, payload start, frame end).
fn parse_frame(data: &[u8]) -> io::Result<Option<(bool, u8, usize, usize)>> {
    if data.len() < 2 {
        return Ok(None);
    }
    if data[1] & 0x80 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a server frame must not be masked",
        ));
    }
    let (length, start) = match data[1] & 0x7f {
        126 if data.len() >= 4 => (u16::from_be_bytes([data[2], data[3]]) as usize, 4),
        127 if data.len() >= 10 => (
            u64::from_be_bytes(data[2..10].try_into().unwrap()) as usize,
            10,
        ),
        126 | 127 => return Ok(None),
        n => (n as usize, 2),
    };
    let end = start + length;
    Ok((data.len() >= end).then_some((data[0] & 0x80 != 0, data[0] & 0x0f, start, end)))
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("read /dev/urandom");
    bytes
}

pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// SHA-1 (FIPS 180-4), which the handshake's accept key is made of.
pub fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let mut message = data.to_vec();
    message.push(0x80);
    while message.len() % 64 != 56 {
        message.push(0);
    }
    message.extend_from_slice(&(data.len() as u64 * 8).to_be_bytes());
    for block in message.chunks(64) {
        let mut w = [0u32; 80];
        for (i, word) in block.chunks(4).enumerate() {
            w[i] = u32::from_be_bytes(word.try_into().unwrap());
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, word) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A827999),
                20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                _ => (b ^ c ^ d, 0xCA62C1D6),
            };
            let next = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*word);
            (e, d, c, b, a) = (d, c, b.rotate_left(30), a, next);
        }
        for (state, value) in h.iter_mut().zip([a, b, c, d, e]) {
            *state = state.wrapping_add(value);
        }
    }
    let mut digest = [0; 20];
    for (i, word) in h.iter().enumerate() {
        digest[i * 4..i * 4 + 4].copy_from_slice(&word.to_be_bytes());
    }
    digest
}
