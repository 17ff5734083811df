//! Everything about handing one request to one site's app, as nginx's `uwsgi_pass` (or
//! `proxy_pass` to an `http-socket`) does it: the protocol and its environ (`uwsgi`), the
//! whole request body before the app is connected (`request_body`), the answer read at the
//! app's speed (`answer`), the memory and temp files both use (`spool`), and the connection
//! Pingora is given for it (`connector`, `exchange`).

pub mod answer;
pub mod connector;
pub mod exchange;
pub mod request_body;
mod socket_owner;
pub mod spool;
pub mod uri;
pub mod uwsgi;

use crate::config::{AppProtocol, GatewayConfig, UpstreamTimeouts};
use crate::forwarding::Origin;
use bytes::{BufMut, Bytes, BytesMut};
use connector::AppConnector;
use exchange::{AnswerBuffers, AnswerMode, Exchange};
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use request_body::BodyOutcome;
use spool::{RequestBody, TempDir};
use std::sync::Arc;
use uwsgi::{Environ, EnvironError};

pub struct Gateway {
    config: GatewayConfig,
    body_dir: TempDir,
    answer_dir: TempDir,
}

/// What the hooks know about the request when its connection is chosen.
pub struct Attempt<'a> {
    pub site: &'a str,
    pub owner: u32,
    pub protocol: AppProtocol,
    pub body: Option<Arc<RequestBody>>,
    pub websocket: bool,
}

/// What the hooks know about the request when its head for the app is made.
pub struct Request<'a> {
    pub site: &'a str,
    pub protocol: AppProtocol,
    pub origin: &'a Origin,
    pub websocket: bool,
    /// The request as this backend received it (its version, when no edge said the browser's).
    pub received: &'a RequestHeader,
}

impl Gateway {
    pub fn new(config: &GatewayConfig) -> Gateway {
        Gateway {
            body_dir: TempDir::new(config.client_body_temp_path.clone()),
            answer_dir: TempDir::new(config.proxy_temp_path.clone()),
            config: config.clone(),
        }
    }

    /// Reads the request's whole body, unless it streams (buffering off, or a WebSocket).
    pub async fn read_body(
        &self,
        session: &mut Session,
        websocket: bool,
        max_body: Option<u64>,
    ) -> Result<BodyOutcome> {
        if !self.config.request_buffering || websocket {
            return Ok(BodyOutcome::Empty);
        }
        request_body::read_whole(
            session,
            max_body,
            self.config.client_body_buffer_size,
            &self.body_dir,
        )
        .await
    }

    /// Where the request goes, for one attempt. Always through Herald's connector, which
    /// checks whose socket it is; a plain one (an HTTP app with nothing to buffer) carries
    /// Pingora's bytes as they are.
    pub fn exchange(&self, attempt: Attempt, timeouts: &UpstreamTimeouts) -> Arc<Exchange> {
        let Attempt {
            site,
            owner,
            protocol,
            body,
            websocket,
        } = attempt;
        let answer = if self.config.response_buffering && !websocket {
            AnswerMode::Buffered(AnswerBuffers {
                memory: self.config.proxy_buffers,
                max_temp_file: self.config.proxy_max_temp_file_size,
                temp_dir: self.answer_dir.clone(),
            })
        } else {
            AnswerMode::Direct
        };
        let plain =
            protocol == AppProtocol::Http && body.is_none() && matches!(answer, AnswerMode::Direct);
        let exchange = Exchange::new(site, owner, body, answer, timeouts.send);
        Arc::new(if plain { exchange.plain() } else { exchange })
    }

    /// The connector that makes `exchange`'s connection, for the peer's `custom_l4`.
    pub fn connector(exchange: &Arc<Exchange>) -> Arc<AppConnector> {
        Arc::new(AppConnector {
            exchange: exchange.clone(),
        })
    }

    /// Makes what the app is sent instead of Pingora's header (`upstream`, as the hooks left
    /// it), and tells Pingora what it still has to do: nothing for a buffered body, and never
    /// to keep the connection.
    pub fn prepare(
        &self,
        exchange: &Exchange,
        upstream: &mut RequestHeader,
        request: &Request,
    ) -> Result<()> {
        let buffered = exchange.body.as_ref().map(|b| b.len());
        match request.protocol {
            AppProtocol::Uwsgi => {
                let document_root = self.config.document_root.as_ref().map(|root| {
                    root.replace(crate::config::SocketTemplate::PLACEHOLDER, request.site)
                });
                let environ = Environ {
                    origin: request.origin,
                    site: request.site,
                    document_root: document_root.as_deref().unwrap_or(""),
                    content_length: buffered.or_else(|| declared_length(upstream)),
                    server_protocol: request.origin.version.unwrap_or_else(|| {
                        crate::forwarding::protocol_name(request.received.version)
                    }),
                };
                // uWSGI starts its answer with the SERVER_PROTOCOL it was given, which
                // Pingora reads only as HTTP/1.x.
                exchange.answers_in_http2(environ.server_protocol == "HTTP/2.0");
                let packet = environ.packet(upstream).map_err(|e| match e {
                    EnvironError::BadPath(why) => {
                        Error::explain(HTTPStatus(400), format!("bad path: {}", why.reason()))
                    }
                    EnvironError::TooLarge => Error::explain(
                        HTTPStatus(431),
                        "header too large for one uwsgi packet (64k)",
                    ),
                })?;
                exchange.set_head(packet);
            }
            AppProtocol::Http => {
                if let Some(len) = buffered {
                    exchange.set_head(http_head(upstream, len));
                }
            }
        }
        if buffered.is_some() {
            // Pingora itself sends no body: the connection sends the buffered one.
            upstream.remove_header(&http::header::TRANSFER_ENCODING);
            upstream.insert_header(http::header::CONTENT_LENGTH, "0")?;
        }
        if !request.websocket {
            // Never pooled: the exchange's connection belongs to this request alone.
            upstream.insert_header(http::header::CONNECTION, "close")?;
        }
        Ok(())
    }
}

fn declared_length(req: &RequestHeader) -> Option<u64> {
    req.headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| crate::request_checks::parse_content_length(v.as_bytes()))
}

/// An HTTP/1.1 request header for an `http-socket` app, with the buffered body's length.
fn http_head(req: &RequestHeader, body_len: u64) -> Bytes {
    let mut head = BytesMut::with_capacity(1024);
    head.put_slice(req.method.as_str().as_bytes());
    head.put_u8(b' ');
    head.put_slice(req.raw_path());
    head.put_slice(b" HTTP/1.1\r\n");
    for (name, value) in &req.headers {
        if name == http::header::CONTENT_LENGTH
            || name == http::header::TRANSFER_ENCODING
            || name == http::header::CONNECTION
        {
            continue;
        }
        head.put_slice(name.as_str().as_bytes());
        head.put_slice(b": ");
        head.put_slice(value.as_bytes());
        head.put_slice(b"\r\n");
    }
    head.put_slice(format!("Content-Length: {body_len}\r\nConnection: close\r\n\r\n").as_bytes());
    head.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_http_head_carries_the_buffered_length() {
        let mut req = RequestHeader::build("POST", b"/up?x=1", None).unwrap();
        req.insert_header("Host", "a.example").unwrap();
        req.insert_header("Transfer-Encoding", "chunked").unwrap();
        req.insert_header("X-Thing", "1").unwrap();
        let head = http_head(&req, 1234);
        assert_eq!(
            std::str::from_utf8(&head).unwrap(),
            "POST /up?x=1 HTTP/1.1\r\nhost: a.example\r\nx-thing: 1\r\nContent-Length: 1234\r\nConnection: close\r\n\r\n"
        );
    }
}
