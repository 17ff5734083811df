//! The HTTP clients of on-demand certificates: the one instant-acme speaks ACME over (trusting
//! `ca_roots`, and noting the server's `Retry-After` when it says it is busy or limited), and
//! the `ask` request.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Every ACME request is bounded, so an order never hangs on a silent server.
const ACME_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct AcmeHttp {
    client: Client<HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>,
    /// The latest `Retry-After` of a 429 or 503 answer: no order starts before it.
    retry_after: Arc<Mutex<Option<SystemTime>>>,
}

impl AcmeHttp {
    pub fn new(ca_roots: Option<&Path>) -> Result<Self, String> {
        let tls = super::roots::client_config(ca_roots)?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .build();
        Ok(AcmeHttp {
            client: Client::builder(TokioExecutor::new()).build(connector),
            retry_after: Arc::default(),
        })
    }

    /// When the ACME server last asked to be left alone until, if that is still ahead.
    pub fn retry_after(&self) -> Option<SystemTime> {
        let until = *self.retry_after.lock().expect("never poisoned");
        until.filter(|until| *until > SystemTime::now())
    }
}

impl HttpClient for AcmeHttp {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let answer = self.client.request(req);
        let retry_after = self.retry_after.clone();
        Box::pin(async move {
            let answer = tokio::time::timeout(ACME_REQUEST_TIMEOUT, answer)
                .await
                .map_err(|_| instant_acme::Error::Str("the ACME server did not answer in 30 s"))?
                .map_err(|e| instant_acme::Error::Other(Box::new(e)))?;
            let status = answer.status();
            if status == http::StatusCode::TOO_MANY_REQUESTS
                || status == http::StatusCode::SERVICE_UNAVAILABLE
            {
                if let Some(until) = parse_retry_after(answer.headers()) {
                    *retry_after.lock().expect("never poisoned") = Some(until);
                }
            }
            Ok(BytesResponse::from(answer))
        })
    }
}

/// `Retry-After`: seconds, or an HTTP date.
fn parse_retry_after(headers: &http::HeaderMap) -> Option<SystemTime> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    match value.parse::<u64>() {
        Ok(seconds) => Some(SystemTime::now() + Duration::from_secs(seconds)),
        Err(_) => httpdate::parse_http_date(value).ok(),
    }
}

/// The operator's answer about one name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Allowed,
    Denied,
    /// No answer (unreachable, timed out, 5xx): asked again after a short back-off.
    Error,
}

impl Answer {
    pub fn label(self) -> &'static str {
        match self {
            Answer::Allowed => "allowed",
            Answer::Denied => "denied",
            Answer::Error => "error",
        }
    }
}

const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// `GET ask?domain=NAME`, as Caddy's on-demand `ask`: 200 approves, any other status
/// denies; no answer within 5 s is an error.
pub struct Ask {
    url: http::Uri,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Ask {
    pub fn new(url: http::Uri) -> Self {
        Ask {
            url,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub async fn ask(&self, name: &str) -> Answer {
        let uri = match self.uri_for(name) {
            Ok(uri) => uri,
            Err(e) => {
                log::error!("acme: cannot build the ask URL for {name}: {e}");
                return Answer::Error;
            }
        };
        let request = async {
            let answer = self.client.get(uri).await?;
            let status = answer.status();
            // Read to the end, so the connection can be kept for the next ask.
            let _ = answer.into_body().collect().await;
            Ok::<_, hyper_util::client::legacy::Error>(status)
        };
        match tokio::time::timeout(ASK_TIMEOUT, request).await {
            Ok(Ok(status)) if status == http::StatusCode::OK => Answer::Allowed,
            Ok(Ok(status)) if status.is_server_error() => {
                log::warn!("acme: ask answered {status} for {name}; asking again later");
                Answer::Error
            }
            Ok(Ok(_)) => Answer::Denied,
            Ok(Err(e)) => {
                log::warn!("acme: ask {}: {e}", self.url);
                Answer::Error
            }
            Err(_) => {
                log::warn!(
                    "acme: ask {} did not answer within {ASK_TIMEOUT:?}",
                    self.url
                );
                Answer::Error
            }
        }
    }

    /// The ask URL with `domain=NAME` added to its query (a site name needs no escaping: it
    /// is letters, digits, dots and hyphens).
    fn uri_for(&self, name: &str) -> Result<http::Uri, http::Error> {
        let path = self.url.path();
        let query = match self.url.query() {
            Some(query) if !query.is_empty() => format!("{query}&domain={name}"),
            _ => format!("domain={name}"),
        };
        let mut parts = self.url.clone().into_parts();
        parts.path_and_query = Some(format!("{path}?{query}").parse()?);
        Ok(http::Uri::from_parts(parts)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ask_url_adds_the_domain_to_any_query() {
        let plain = Ask::new("http://127.0.0.1:9000/allowed".parse().unwrap());
        assert_eq!(
            plain.uri_for("a.example").unwrap(),
            "http://127.0.0.1:9000/allowed?domain=a.example"
        );
        let with_query = Ask::new("http://127.0.0.1:9000/allowed?key=k".parse().unwrap());
        assert_eq!(
            with_query.uri_for("a.example").unwrap(),
            "http://127.0.0.1:9000/allowed?key=k&domain=a.example"
        );
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::RETRY_AFTER, "120".parse().unwrap());
        let until = parse_retry_after(&headers).unwrap();
        let ahead = until.duration_since(SystemTime::now()).unwrap();
        assert!(ahead > Duration::from_secs(110) && ahead <= Duration::from_secs(120));
        headers.insert(
            http::header::RETRY_AFTER,
            "Wed, 21 Oct 2037 07:28:00 GMT".parse().unwrap(),
        );
        assert!(parse_retry_after(&headers).unwrap() > SystemTime::now());
        headers.insert(http::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(parse_retry_after(&headers), None);
    }
}
