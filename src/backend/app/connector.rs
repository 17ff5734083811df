//! The connection to an app's socket, as Pingora sees it: a `custom_l4` connector
//! (`AppConnector`), so that a failed connect is still a connect failure (`fail_to_connect`
//! starts the app and retries), and the stream it returns (`AppStream`), which
//!
//! - replaces the HTTP/1.1 header Pingora writes with the exchange's head (a uwsgi packet, or
//!   an HTTP header with the buffered body's length), then sends the buffered body itself;
//! - hands Pingora the app's answer from the `answer` task, which reads it at the app's speed.
//!
//! Pingora never pools these connections (the hooks send `Connection: close`), so one
//! request's bytes never meet another's.

use super::answer::{self, find};
use super::exchange::{AnswerMode, AppFailure, Exchange};
use super::socket_owner::Listener;
use super::spool::{Fifo, RequestBody};
use async_trait::async_trait;
use bytes::{Buf, Bytes};
use pingora::connectors::L4Connect;
use pingora::prelude::*;
use pingora::protocols::l4::socket::SocketAddr;
use pingora::protocols::l4::stream::Stream;
use pingora::protocols::l4::virt::{VirtualSockOpt, VirtualSocket, VirtualSocketStream};
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;

/// How long a listener whose process is still entirely root (an app starting: uWSGI drops to
/// the app's user right after it listens) may take to drop before it counts as the wrong owner.
const ROOT_LISTENER_SETTLE: Duration = Duration::from_secs(2);

/// Pingora's request header is at most this large (its own limit is lower).
const MAX_HEAD: usize = 2 << 20;

#[derive(Debug)]
pub struct AppConnector {
    pub exchange: Arc<Exchange>,
}

#[async_trait]
impl L4Connect for AppConnector {
    async fn connect(&self, addr: &SocketAddr) -> Result<Stream> {
        let path = addr
            .as_unix()
            .and_then(|a| a.as_pathname())
            .ok_or_else(|| Error::explain(InternalError, "an app's peer is a unix socket"))?;
        let socket = connect_now(path).map_err(|e| {
            let etype = match e.kind() {
                io::ErrorKind::ConnectionRefused => ConnectRefused,
                io::ErrorKind::PermissionDenied => InternalError,
                _ => ConnectError,
            };
            // As Pingora's own unix-socket connect reports it: `fail_to_connect` reads the
            // io::Error (not there, refused, a full listen queue).
            Error::because(etype, format!("Fail to connect to {}", path.display()), e)
        })?;
        self.check_owner(&socket, path).await?;
        let stream = AppStream::new(socket, self.exchange.clone());
        Ok(Stream::from(VirtualSocketStream::new(Box::new(stream))))
    }
}

/// Connects to an app's socket without waiting on the event loop. A unix socket's connect is
/// complete (or refused, or EAGAIN for a full listen queue) when the call returns; tokio's
/// `UnixStream::connect` would still wait for a writability event and read `SO_ERROR`: a task
/// wake-up and two system calls more per request.
fn connect_now(path: &std::path::Path) -> io::Result<tokio::net::UnixStream> {
    use socket2::{Domain, SockAddr, Socket, Type};
    let socket = Socket::new(Domain::UNIX, Type::STREAM.nonblocking(), None)?;
    socket.connect(&SockAddr::unix(path)?)?;
    let socket = std::os::unix::net::UnixStream::from(std::os::fd::OwnedFd::from(socket));
    tokio::net::UnixStream::from_std(socket)
}

/// Sends on the app's socket at once. tokio's own write waits for the socket's first readiness
/// event, which a socket just connected has not had: that wait cost an event-loop turn per
/// request (an `epoll_wait` before the packet went out) and, through the send timeout it armed,
/// a wake-up of the driver (a `write` to its eventfd). Only a socket that is full
/// (`WouldBlock`) waits, through tokio, for room.
fn poll_send(
    writer: &mut OwnedWriteHalf,
    cx: &mut Context<'_>,
    buf: &[u8],
) -> Poll<io::Result<usize>> {
    let socket: &tokio::net::UnixStream = writer.as_ref();
    match socket2::SockRef::from(socket).send_with_flags(buf, libc::MSG_NOSIGNAL) {
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) =>
        {
            Pin::new(writer).poll_write(cx, buf)
        }
        sent => Poll::Ready(sent),
    }
}

impl AppConnector {
    /// Whoever listens on the socket must be the site's owner: anyone else (another tenant's
    /// app, bound where this site's socket was) never gets a byte of the request.
    async fn check_owner(
        &self,
        socket: &tokio::net::UnixStream,
        path: &std::path::Path,
    ) -> Result<()> {
        let expected = self.exchange.owner;
        let cred = socket
            .peer_cred()
            .or_err(ConnectError, "reading the socket's peer credentials")?;
        // uWSGI listens as root and drops to the app's user just after: an app starting up
        // can be reached while its process is still root. It gets a moment to drop.
        let settle_until = tokio::time::Instant::now() + ROOT_LISTENER_SETTLE;
        let mut pause = Duration::from_millis(2);
        let listener = loop {
            let listener = Listener::of(cred.uid(), cred.pid(), expected);
            if listener.is_owner(expected) {
                return Ok(());
            }
            if !listener.still_root() || tokio::time::Instant::now() >= settle_until {
                break listener;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        };
        log::error!(
            "site {}: the socket {} is held by {listener}, not by the site's owner, uid {expected}: the request was not sent",
            self.exchange.site,
            path.display()
        );
        crate::metrics::app_socket_owner_mismatch();
        crate::site_logs::error(
            &self.exchange.site,
            "502: the app's socket is held by another user than the site's owner; the request was not sent to it",
        );
        self.exchange.fail(AppFailure::WrongOwner);
        Error::e_explain(ConnectError, "the app's socket is held by another user")
    }
}

pub struct AppStream {
    /// `None` once the exchange ended with the app's answer (see `Drop`).
    writer: Option<OwnedWriteHalf>,
    reader: Reader,
    exchange: Arc<Exchange>,
    state: WriteState,
    /// Bytes of Herald's own to send before anything else Pingora writes.
    out: VecDeque<Bytes>,
    /// The buffered body and how much of it is sent.
    body: Option<(Arc<RequestBody>, u64)>,
    /// Armed while the app does not take what is sent (`proxy_send_timeout`).
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Nothing of the answer has been read yet.
    first_read: bool,
}

enum WriteState {
    /// Pingora's request header is arriving.
    Head(Vec<u8>),
    /// After the header: Pingora's body bytes go to the app, or (for a buffered body, which
    /// Pingora was told is empty) there are none.
    Body { from_pingora: bool },
}

enum Reader {
    Direct(OwnedReadHalf),
    /// A buffered answer before its first bytes: read here while the app has them ready. An
    /// answer that ends within the memory buffers (most do: the app has written it and closed
    /// by the time it is read) is served from `Whole`, with no task of its own; a longer one,
    /// or one the app is still writing, goes on in the `answer` task (`Buffered`).
    Unread {
        app: Option<OwnedReadHalf>,
    },
    Whole(VecDeque<Bytes>),
    Buffered {
        from_app: mpsc::Receiver<io::Result<Bytes>>,
        current: Bytes,
    },
}

impl AppStream {
    fn new(socket: tokio::net::UnixStream, exchange: Arc<Exchange>) -> AppStream {
        let (read_half, writer) = socket.into_split();
        let reader = match &exchange.answer {
            AnswerMode::Direct => Reader::Direct(read_half),
            AnswerMode::Buffered(_) => Reader::Unread {
                app: Some(read_half),
            },
        };
        AppStream {
            writer: Some(writer),
            reader,
            exchange,
            state: WriteState::Head(Vec::with_capacity(1024)),
            out: VecDeque::new(),
            body: None,
            stalled: None,
            first_read: true,
        }
    }

    fn writer(&mut self) -> &mut OwnedWriteHalf {
        self.writer
            .as_mut()
            .expect("kept until the stream is dropped")
    }

    /// The app has sent its whole answer and closed its side of the connection.
    fn answer_ended(&self) -> bool {
        matches!(self.reader, Reader::Whole(_))
    }

    /// Pingora's header is complete: queue what the app gets instead, and the body.
    fn head_complete(&mut self, mut seen: Vec<u8>, end: usize) {
        let extra = seen.split_off(end);
        let head = self
            .exchange
            .take_head()
            .unwrap_or_else(|| Bytes::from(seen));
        self.out.push_back(head);
        match &self.exchange.body {
            Some(body) => {
                self.body = Some((body.clone(), 0));
                self.state = WriteState::Body {
                    from_pingora: false,
                };
            }
            None => {
                if !extra.is_empty() {
                    self.out.push_back(Bytes::from(extra));
                }
                self.state = WriteState::Body { from_pingora: true };
            }
        }
    }

    /// Sends Herald's own bytes (the head, the buffered body) until none are left.
    fn poll_send_own(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if let Some(front) = self.out.front_mut() {
                let writer = self
                    .writer
                    .as_mut()
                    .expect("kept until the stream is dropped");
                // (Not `self.writer()`: `front` still borrows `self.out`.)
                match poll_send(writer, cx, front) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => {
                        front.advance(n);
                        if front.is_empty() {
                            self.out.pop_front();
                        }
                        self.stalled = None;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return self.poll_stall(cx),
                }
                continue;
            }
            let Some((body, sent)) = &mut self.body else {
                return Poll::Ready(Ok(()));
            };
            let chunk = body.read_at(*sent)?;
            if chunk.is_empty() {
                self.body = None;
            } else {
                *sent += chunk.len() as u64;
                self.out.push_back(chunk);
            }
        }
    }

    /// The app takes nothing: fail once it has taken nothing for `proxy_send_timeout`.
    fn poll_stall(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let timeout = self.exchange.send_timeout;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if sleep.as_mut().poll(cx).is_ready() {
            self.exchange.fail(AppFailure::SendTimeout);
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the app read nothing for {timeout:?}"),
            )));
        }
        Poll::Pending
    }
}

impl AsyncWrite for AppStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match &mut this.state {
            WriteState::Head(seen) => {
                let start = seen.len().saturating_sub(3);
                seen.extend_from_slice(buf);
                if let Some(i) = find(&seen[start..], b"\r\n\r\n") {
                    let seen = std::mem::take(seen);
                    this.head_complete(seen, start + i + 4);
                } else if seen.len() > MAX_HEAD {
                    return Poll::Ready(Err(io::Error::other("request header without an end")));
                }
                Poll::Ready(Ok(buf.len()))
            }
            WriteState::Body { from_pingora } => {
                let from_pingora = *from_pingora;
                ready!(this.poll_send_own(cx))?;
                if from_pingora {
                    poll_send(this.writer(), cx, buf)
                } else {
                    // Pingora was told the body is empty; it has nothing to add.
                    Poll::Ready(Ok(buf.len()))
                }
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if matches!(this.state, WriteState::Head(_)) {
            return Poll::Ready(Ok(()));
        }
        ready!(this.poll_send_own(cx))?;
        Pin::new(this.writer()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.answer_ended() {
            return Poll::Ready(Ok(())); // see `Drop`
        }
        if !matches!(this.state, WriteState::Head(_)) {
            ready!(this.poll_send_own(cx))?;
        }
        Pin::new(this.writer()).poll_shutdown(cx)
    }
}

impl AsyncRead for AppStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.first_read {
            return this.reader.poll_read(&this.exchange, cx, buf);
        }
        let start = buf.filled().len();
        ready!(this.reader.poll_read(&this.exchange, cx, buf))?;
        this.first_read = false;
        // An app told `SERVER_PROTOCOL: HTTP/2.0` (an HTTP/2 browser, as nginx tells it) answers
        // `HTTP/2.0 200 OK`: the same answer in HTTP/1.1, which is what Pingora reads here.
        let status_line = &mut buf.filled_mut()[start..];
        if this.exchange.has_http2_status_line() && status_line.starts_with(b"HTTP/2.0 ") {
            status_line[..8].copy_from_slice(b"HTTP/1.1");
        }
        Poll::Ready(Ok(()))
    }
}

impl Reader {
    fn poll_read(
        &mut self,
        exchange: &Arc<Exchange>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self {
            Reader::Direct(read_half) => Pin::new(read_half).poll_read(cx, buf),
            Reader::Unread { app } => {
                let AnswerMode::Buffered(buffers) = &exchange.answer else {
                    unreachable!("only buffered answers start unread")
                };
                let read_half = app.as_mut().expect("taken only when leaving this state");
                // Within what either kind of answer (buffered, or streamed with
                // `X-Accel-Buffering: no`) holds in memory.
                let limit = buffers.memory.min(answer::STREAMING_MEMORY);
                let (chunks, ended) = ready!(read_ready(read_half, cx, limit))?;
                let app = app.take().expect("still here");
                *self = if ended {
                    Reader::Whole(chunks.into())
                } else {
                    let (to_client, from_app) = mpsc::channel(1);
                    let fifo = Fifo::new(
                        buffers.memory,
                        buffers.max_temp_file,
                        Some(buffers.temp_dir.clone()),
                    );
                    tokio::spawn(answer::pump(app, chunks, to_client, fifo, exchange.clone()));
                    Reader::Buffered {
                        from_app,
                        current: Bytes::new(),
                    }
                };
                self.poll_read(exchange, cx, buf)
            }
            Reader::Whole(chunks) => {
                let Some(chunk) = chunks.front_mut() else {
                    return Poll::Ready(Ok(())); // the end of the answer
                };
                let n = chunk.len().min(buf.remaining());
                buf.put_slice(&chunk[..n]);
                chunk.advance(n);
                if chunk.is_empty() {
                    chunks.pop_front();
                }
                Poll::Ready(Ok(()))
            }
            Reader::Buffered { from_app, current } => loop {
                if !current.is_empty() {
                    let n = current.len().min(buf.remaining()).min(16 << 10);
                    buf.put_slice(&current[..n]);
                    current.advance(n);
                    return Poll::Ready(Ok(()));
                }
                match ready!(from_app.poll_recv(cx)) {
                    Some(Ok(chunk)) => *current = chunk,
                    Some(Err(e)) => return Poll::Ready(Err(e)),
                    None => return Poll::Ready(Ok(())),
                }
            },
        }
    }
}

/// The answer's first bytes once the app sends any, and what else it has ready, up to `limit`
/// bytes: whether the answer ended there (the app closed its side).
fn read_ready(
    app: &mut OwnedReadHalf,
    cx: &mut Context<'_>,
    limit: usize,
) -> Poll<io::Result<(Vec<Bytes>, bool)>> {
    // Readiness first, so that a poll before the app answers allocates nothing.
    let first = loop {
        ready!(app.as_ref().poll_read_ready(cx))?;
        let mut first = bytes::BytesMut::with_capacity(limit.max(1));
        match app.try_read_buf(&mut first) {
            Ok(0) => return Poll::Ready(Ok((Vec::new(), true))),
            Ok(_) => break first,
            // A stale readiness: try_read cleared it, the next poll waits for the app.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Poll::Ready(Err(e)),
        }
    };
    let n = first.len();
    let mut chunks = vec![first.freeze()];
    let mut total = n;
    while total < limit {
        let mut more = bytes::BytesMut::with_capacity(limit - total);
        match app.try_read_buf(&mut more) {
            Ok(0) => return Poll::Ready(Ok((chunks, true))),
            Ok(n) => {
                total += n;
                chunks.push(more.freeze());
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
    Poll::Ready(Ok((chunks, false)))
}

impl Drop for AppStream {
    fn drop(&mut self) {
        // Once the app has answered and closed, telling it that nothing more is coming
        // (shutdown(2), which tokio's write half does when dropped) is one system call per
        // request for nothing: the close that follows says it too.
        if self.answer_ended() {
            if let Some(writer) = self.writer.take() {
                writer.forget();
            }
        }
    }
}

impl VirtualSocket for AppStream {
    fn set_socket_option(&self, _opt: VirtualSockOpt) -> io::Result<()> {
        Ok(()) // TCP options mean nothing on a unix socket
    }
}

impl std::fmt::Debug for AppStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppStream")
            .field("exchange", &self.exchange)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::app::exchange::AnswerBuffers;
    use crate::backend::app::spool::TempDir;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;

    struct Fixture {
        _dir: tempfile::TempDir,
        temp: TempDir,
        listener: UnixListener,
        addr: SocketAddr,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let addr = SocketAddr::Unix(std::os::unix::net::SocketAddr::from_pathname(&path).unwrap());
        let temp = TempDir::new(dir.path().to_owned());
        Fixture {
            _dir: dir,
            temp,
            listener,
            addr,
        }
    }

    fn body(data: &[u8]) -> Arc<RequestBody> {
        let mut body = RequestBody::new();
        let dir = TempDir::new(std::env::temp_dir());
        body.push(Bytes::copy_from_slice(data), usize::MAX, &dir)
            .unwrap();
        Arc::new(body)
    }

    fn me() -> u32 {
        nix::unistd::getuid().as_raw()
    }

    fn buffered(temp: &TempDir, memory: usize) -> AnswerMode {
        AnswerMode::Buffered(AnswerBuffers {
            memory,
            max_temp_file: 1 << 30,
            temp_dir: temp.clone(),
        })
    }

    /// An exchange for the test's own user, with a send timeout of 5 s.
    fn exchange(body: Option<Arc<RequestBody>>, answer: AnswerMode) -> Arc<Exchange> {
        Arc::new(Exchange::new(
            "a.example",
            me(),
            body,
            answer,
            Duration::from_secs(5),
        ))
    }

    async fn connected(f: &Fixture, exchange: &Arc<Exchange>) -> Stream {
        AppConnector {
            exchange: exchange.clone(),
        }
        .connect(&f.addr)
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn the_head_goes_out_without_waiting_for_the_event_loop() {
        let f = fixture();
        let exchange = exchange(None, buffered(&f.temp, 1024));
        let mut stream = connected(&f, &exchange).await;
        exchange.set_head(Bytes::from_static(b"PACKET"));
        // Polled once, without a turn of the event loop in between: the socket has had no
        // readiness event yet, and the packet must still be on its way (tokio's own write
        // waited for that event, a turn of the loop per request).
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert!(matches!(
            Pin::new(&mut stream).poll_write(&mut cx, head),
            Poll::Ready(Ok(n)) if n == head.len()
        ));
        assert!(matches!(
            Pin::new(&mut stream).poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        // Accepted only now: awaiting the accept earlier would have let the loop turn.
        let (mut app, _) = f.listener.accept().await.unwrap();
        let mut got = [0u8; 6];
        app.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"PACKET");
    }

    #[tokio::test]
    async fn the_app_gets_the_head_and_body_and_pingora_gets_the_answer() {
        let f = fixture();
        let exchange = exchange(Some(body(b"hello")), buffered(&f.temp, 1024));
        let mut stream = connected(&f, &exchange).await;
        let (mut app, _) = f.listener.accept().await.unwrap();
        // Pingora's header, in two writes; what the app gets instead is the exchange's head.
        exchange.set_head(Bytes::from_static(b"PACKET"));
        exchange.answers_in_http2(true);
        stream
            .write_all(b"POST / HTTP/1.1\r\nHost: a\r\nCont")
            .await
            .unwrap();
        stream.write_all(b"ent-Length: 0\r\n\r\n").await.unwrap();
        stream.flush().await.unwrap();
        let mut got = [0u8; 11];
        app.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"PACKEThello");
        // An answer much larger than the memory allowed: it spills, and arrives whole.
        let answer: Vec<u8> = b"HTTP/2.0 200 OK\r\n\r\n"
            .iter()
            .copied()
            .chain((0..300_000u32).map(|i| (i % 251) as u8))
            .collect();
        // Written while Pingora reads, as it does once the request is sent.
        let written = answer.clone();
        let app_writes = tokio::spawn(async move {
            app.write_all(&written).await.unwrap();
        });
        let mut read = Vec::new();
        stream.read_to_end(&mut read).await.unwrap();
        app_writes.await.unwrap();
        assert_eq!(
            &read[..17],
            b"HTTP/1.1 200 OK\r\n",
            "HTTP/2.0 read as HTTP/1.1"
        );
        assert_eq!(read[17..], answer[17..]);
    }

    /// An answer the app has written whole and closed is served from memory, with no answer
    /// task; one the app is still writing goes to the task, and arrives whole all the same.
    #[tokio::test]
    async fn a_whole_answer_needs_no_task_of_its_own() {
        let f = fixture();
        for finished in [true, false] {
            let exchange = exchange(None, buffered(&f.temp, 32 << 10));
            let socket =
                tokio::net::UnixStream::connect(f.addr.as_unix().unwrap().as_pathname().unwrap())
                    .await
                    .unwrap();
            let mut stream = AppStream::new(socket, exchange);
            let (mut app, _) = f.listener.accept().await.unwrap();
            app.write_all(b"HTTP/1.1 200 OK\r\n\r\nfirst")
                .await
                .unwrap();
            if finished {
                drop(app);
                let mut read = Vec::new();
                stream.read_to_end(&mut read).await.unwrap();
                assert_eq!(read, b"HTTP/1.1 200 OK\r\n\r\nfirst");
                assert!(matches!(stream.reader, Reader::Whole(_)));
            } else {
                let mut start = [0u8; 24];
                stream.read_exact(&mut start).await.unwrap();
                assert!(matches!(stream.reader, Reader::Buffered { .. }));
                app.write_all(b", then more").await.unwrap();
                drop(app);
                let mut rest = Vec::new();
                stream.read_to_end(&mut rest).await.unwrap();
                assert_eq!(&start[19..], b"first");
                assert_eq!(rest, b", then more");
            }
        }
    }

    #[tokio::test]
    async fn pingoras_header_passes_when_there_is_no_head_and_the_body_streams() {
        let f = fixture();
        let mut stream = connected(&f, &exchange(None, AnswerMode::Direct)).await;
        let (mut app, _) = f.listener.accept().await.unwrap();
        let request = b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\n";
        stream.write_all(request).await.unwrap();
        stream.flush().await.unwrap();
        stream.write_all(b"abc").await.unwrap();
        stream.flush().await.unwrap();
        let mut got = vec![0u8; request.len() + 3];
        app.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[request.len()..], b"abc");
        assert_eq!(&got[..request.len()], request);
    }

    #[tokio::test]
    async fn an_app_that_reads_nothing_fails_the_send_after_the_send_timeout() {
        let f = fixture();
        let exchange = Arc::new(Exchange::new(
            "a.example",
            me(),
            Some(body(&vec![7u8; 8 << 20])),
            AnswerMode::Direct,
            Duration::from_millis(200),
        ));
        let mut stream = AppConnector {
            exchange: exchange.clone(),
        }
        .connect(&f.addr)
        .await
        .unwrap();
        let (_app, _) = f.listener.accept().await.unwrap();
        stream.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let error = stream.flush().await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(matches!(
            exchange.take_failure(),
            Some(AppFailure::SendTimeout)
        ));
    }

    #[tokio::test]
    async fn nothing_listening_is_a_connect_failure_pingora_can_read() {
        let f = fixture();
        let addr = f.addr.clone();
        drop(f);
        let exchange = exchange(None, AnswerMode::Direct);
        let error = AppConnector { exchange }.connect(&addr).await.unwrap_err();
        let io = error
            .root_cause()
            .downcast_ref::<io::Error>()
            .expect("the io error is kept");
        assert_eq!(io.kind(), io::ErrorKind::NotFound);
    }

    #[tokio::test]
    async fn a_socket_held_by_another_user_gets_nothing() {
        let f = fixture();
        let exchange = Arc::new(Exchange::new(
            "a.example",
            me() + 1,
            Some(body(b"secret")),
            AnswerMode::Direct,
            Duration::from_secs(5),
        ));
        let refused = AppConnector {
            exchange: exchange.clone(),
        }
        .connect(&f.addr)
        .await;
        assert!(refused.is_err());
        assert!(matches!(
            exchange.take_failure(),
            Some(AppFailure::WrongOwner)
        ));
        // The impostor's side of the connection: closed, with nothing sent.
        let (mut app, _) = f.listener.accept().await.unwrap();
        let mut got = Vec::new();
        app.read_to_end(&mut got).await.unwrap();
        assert!(got.is_empty(), "{got:?}");
    }
}
