//! The short HTML pages Herald answers with when it cannot hand a request to an app.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, Session};
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

pub struct Page {
    pub status: u16,
    body: &'static str,
}

macro_rules! page {
    ($status:expr, $title:expr, $message:expr) => {
        Page {
            status: $status,
            body: concat!(
                "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>",
                $title,
                "</title></head>\n<body><h1>",
                $title,
                "</h1>\n<p>",
                $message,
                "</p>\n<hr><p>herald</p></body></html>\n"
            ),
        }
    };
}

pub const HEALTHY: Page = page!(200, "OK", "This server is up.");
pub const BAD_HOST: Page = page!(
    400,
    "400 Bad Request",
    "This request does not name a valid site: its Host header is missing or malformed."
);
pub const BAD_REQUEST: Page = page!(
    400,
    "400 Bad Request",
    "The request could not be understood."
);
pub const BAD_PATH: Page = page!(
    400,
    "400 Bad Request",
    "The address (URL) of this request is malformed: it climbs above the site's root, or holds an invalid or NUL escape."
);
pub const UNKNOWN_SITE: Page = page!(
    404,
    "404 Not Found",
    "There is no site with this name here."
);
pub const FILE_NOT_FOUND: Page = page!(404, "404 Not Found", "There is no file at this address.");
pub const PASSWORD_REQUIRED: Page = page!(
    401,
    "401 Unauthorized",
    "This site is password-protected. Enter its user name and password to see it."
);
pub const TOO_MANY_PASSWORDS: Page = page!(
    429,
    "429 Too Many Requests",
    "Too many wrong passwords have come from your address in the last minute. Please try again shortly."
);
pub const SITE_DISABLED: Page = page!(503, "503 Service Unavailable", "This site is disabled.");
pub const SITE_SETTINGS_BROKEN: Page = page!(
    503,
    "503 Service Unavailable",
    "This site's settings cannot be used right now. If this is your site, its error log says why."
);
pub const REQUEST_TIMEOUT: Page = page!(
    408,
    "408 Request Timeout",
    "The request body did not arrive in time."
);
pub const LENGTH_REQUIRED: Page = page!(
    411,
    "411 Length Required",
    "This server needs to know the size of a request body before it arrives: send it with a Content-Length header, not in chunks (Transfer-Encoding: chunked)."
);
pub const URI_TOO_LONG: Page = page!(
    414,
    "414 URI Too Long",
    "The address (URL) of this request is longer than this server accepts."
);
pub const HEADER_TOO_LARGE: Page = page!(
    431,
    "431 Request Header Fields Too Large",
    "The headers of this request are larger than this server accepts. Clearing this site's cookies may help."
);
pub const NOT_IMPLEMENTED: Page = page!(
    501,
    "501 Not Implemented",
    "This request uses a transfer coding this server does not support."
);
pub const TOO_MANY_CONNECTIONS: Page = page!(
    429,
    "429 Too Many Requests",
    "Too many requests from your address are in progress at once. Please try again shortly."
);
pub const TOO_MANY_STARTS: Page = page!(
    429,
    "429 Too Many Requests",
    "Too many sites that were not running have been started from your address in the last minute. Please try again shortly."
);
pub const BODY_TOO_LARGE: Page = page!(
    413,
    "413 Content Too Large",
    "The request body is larger than this server accepts."
);
pub const INTERNAL_ERROR: Page = page!(
    500,
    "500 Internal Server Error",
    "Something went wrong while handling this request."
);
pub const STORAGE_ERROR: Page = page!(
    500,
    "500 Internal Server Error",
    "This server could not store this request's data while passing it on. Please try again later."
);
pub const STORAGE_FULL: Page = page!(
    507,
    "507 Insufficient Storage",
    "This server has no room left to store this request's data while passing it on. Please try again later."
);
pub const APP_UNAVAILABLE: Page = page!(
    502,
    "502 Bad Gateway",
    "The web app for this site is not running, or it failed to answer."
);
pub const BACKEND_UNAVAILABLE: Page = page!(
    502,
    "502 Bad Gateway",
    "The server that hosts this site could not be reached, or it failed to answer."
);
pub const APP_START_TIMEOUT: Page = page!(
    504,
    "504 Gateway Timeout",
    "The web app for this site is taking too long to start. Please try again in a moment."
);
pub const APP_BROKEN: Page = page!(
    502,
    "502 Bad Gateway",
    "The web app for this site failed to start or stopped answering. If this is your site, its error log says why."
);
pub const APP_MISCONFIGURED: Page = page!(
    502,
    "502 Bad Gateway",
    "The web app for this site is not set up in a way this server can start."
);
pub const APP_IMPOSTOR: Page = page!(
    502,
    "502 Bad Gateway",
    "The socket of this site's web app is held by another user than the site's owner, so the request was not sent to it."
);
pub const APP_START_UNAVAILABLE: Page = page!(
    503,
    "503 Service Unavailable",
    "The web app for this site cannot be started right now. Please try again shortly."
);
pub const APP_BUSY: Page = page!(
    503,
    "503 Service Unavailable",
    "The web app for this site is too busy to take this request. Please try again shortly."
);
pub const UNAVAILABLE: Page = page!(
    503,
    "503 Service Unavailable",
    "This site cannot be served right now. Please try again shortly."
);
pub const TIMEOUT: Page = page!(
    504,
    "504 Gateway Timeout",
    "The site took too long to answer."
);

/// The generic page for a status Herald decided on (`fail_to_proxy`).
pub fn for_status(status: u16) -> &'static Page {
    match status {
        400 => &BAD_REQUEST,
        401 => &PASSWORD_REQUIRED,
        408 => &REQUEST_TIMEOUT,
        411 => &LENGTH_REQUIRED,
        413 => &BODY_TOO_LARGE,
        414 => &URI_TOO_LONG,
        429 => &TOO_MANY_CONNECTIONS,
        431 => &HEADER_TOO_LARGE,
        501 => &NOT_IMPLEMENTED,
        507 => &STORAGE_FULL,
        502 => &APP_UNAVAILABLE,
        503 => &UNAVAILABLE,
        504 => &TIMEOUT,
        _ => &INTERNAL_ERROR,
    }
}

/// Statuses whose page an operator may replace with `NNN.html` in `error_pages`.
const OVERRIDABLE: [u16; 15] = [
    400, 401, 404, 408, 411, 413, 414, 429, 431, 500, 501, 502, 503, 504, 507,
];

/// How long a client is told to wait before trying a disabled site again.
pub const DISABLED_RETRY_AFTER: Duration = Duration::from_secs(600);

/// The pages a role answers with: the built-in ones, or the operator's `NNN.html` files.
#[derive(Default)]
pub struct ErrorPages {
    custom: HashMap<u16, Bytes>,
    /// `disabled.html` (key "") and `disabled-REASON.html`, for disabled sites.
    disabled: HashMap<String, Bytes>,
}

impl ErrorPages {
    /// Reads `dir/NNN.html` for the statuses that have pages, and the disabled sites' pages
    /// (`disabled.html`, `disabled-REASON.html`); any other `.html` file there is a mistake
    /// worth reporting (`4O4.html`, `502.htm` are not).
    pub fn load(dir: &Path) -> std::result::Result<ErrorPages, String> {
        let entries = std::fs::read_dir(dir).map_err(|e| format!("cannot read {dir:?}: {e}"))?;
        let mut pages = ErrorPages::default();
        for entry in entries {
            let path = entry
                .map_err(|e| format!("cannot read {dir:?}: {e}"))?
                .path();
            if path.extension().is_none_or(|ext| ext != "html") {
                continue;
            }
            let stem = path
                .file_stem()
                .and_then(|stem| stem.to_str())
                .unwrap_or("");
            let read = || {
                std::fs::read(&path)
                    .map(Bytes::from)
                    .map_err(|e| format!("cannot read {path:?}: {e}"))
            };
            if let Some(reason) = stem.strip_prefix("disabled-") {
                pages.disabled.insert(reason.to_owned(), read()?);
            } else if stem == "disabled" {
                pages.disabled.insert(String::new(), read()?);
            } else {
                let status = stem
                    .parse::<u16>()
                    .ok()
                    .filter(|status| OVERRIDABLE.contains(status))
                    .ok_or_else(|| {
                        format!("{path:?}: pages are named after their status, one of {OVERRIDABLE:?}, or disabled[-REASON].html")
                    })?;
                pages.custom.insert(status, read()?);
            }
        }
        Ok(pages)
    }

    /// The page of a disabled site: the operator's page for its reason, else their page for
    /// disabled sites, else the built-in one.
    pub async fn send_disabled(&self, session: &mut Session, reason: &str) -> Result<()> {
        let body = self
            .disabled
            .get(reason)
            .or_else(|| self.disabled.get(""))
            .cloned()
            .unwrap_or_else(|| Bytes::from_static(SITE_DISABLED.body.as_bytes()));
        let retry_after = DISABLED_RETRY_AFTER.as_secs().to_string();
        self.write(
            session,
            503,
            body,
            &[(http::header::RETRY_AFTER, retry_after)],
        )
        .await
    }

    /// A redirect to `location`, with a short page for clients that do not follow it.
    pub async fn redirect(&self, session: &mut Session, status: u16, location: &str) -> Result<()> {
        let body = Bytes::from(format!(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{status} Moved</title></head>\n<body><h1>{status} Moved</h1>\n<p>This site is served over HTTPS.</p>\n<hr><p>herald</p></body></html>\n"
        ));
        self.write(
            session,
            status,
            body,
            &[(http::header::LOCATION, location.to_owned())],
        )
        .await
    }

    fn body(&self, page: &Page) -> Bytes {
        self.custom
            .get(&page.status)
            .cloned()
            .unwrap_or_else(|| Bytes::from_static(page.body.as_bytes()))
    }

    /// Sends `page` unless a response has already started; the connection is then closed,
    /// since the request body may not have been read.
    pub async fn send(&self, session: &mut Session, page: &Page) -> Result<()> {
        self.send_with_retry_after(session, page, None).await
    }

    /// `send`, with a `Retry-After` header (whole seconds, at least 1) when `retry_after` is set.
    pub async fn send_with_retry_after(
        &self,
        session: &mut Session,
        page: &Page,
        retry_after: Option<Duration>,
    ) -> Result<()> {
        let headers: Vec<_> = retry_after
            .map(|after| {
                let seconds = after.as_secs_f64().ceil().max(1.0) as u64;
                (http::header::RETRY_AFTER, seconds.to_string())
            })
            .into_iter()
            .collect();
        self.write(session, page.status, self.body(page), &headers)
            .await
    }

    /// `send`, with these headers too (`WWW-Authenticate`, say).
    pub async fn send_with_headers(
        &self,
        session: &mut Session,
        page: &Page,
        headers: &[(http::HeaderName, String)],
    ) -> Result<()> {
        self.write(session, page.status, self.body(page), headers)
            .await
    }

    async fn write(
        &self,
        session: &mut Session,
        status: u16,
        body: Bytes,
        headers: &[(http::HeaderName, String)],
    ) -> Result<()> {
        let mut resp = ResponseHeader::build(status, Some(5 + headers.len()))?;
        for (name, value) in headers {
            resp.insert_header(name.clone(), value.as_str())?;
        }
        resp.insert_header(http::header::CONTENT_TYPE, "text/html; charset=utf-8")?;
        resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
        resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
        session
            .as_downstream_mut()
            .write_error_response(resp, body)
            .await
    }

    /// Answers a request that could not be proxied: with `decided` if the role chose a page
    /// for this status, otherwise with the page for the error's status (`bad_gateway` for
    /// 502, naming which side failed).
    pub async fn answer_proxy_failure(
        &self,
        session: &mut Session,
        e: &Error,
        decided: Option<Failure>,
        bad_gateway: &'static Page,
    ) -> FailToProxy {
        let status = status_of_error(e);
        let (page, retry_after) = match decided {
            Some(failure) if failure.page.status == status => (failure.page, failure.retry_after),
            _ if status == 502 => (bad_gateway, None),
            _ => (for_status(status), None),
        };
        if status != 0 {
            if let Err(e) = self.send_with_retry_after(session, page, retry_after).await {
                log::debug!("could not send the {status} page: {e}");
            }
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }
}

/// What a role decided to answer for a request it could not proxy.
#[derive(Clone, Copy)]
pub struct Failure {
    pub page: &'static Page,
    pub retry_after: Option<Duration>,
}

/// The status Pingora's default `fail_to_proxy` would give `e`; 0 when the client is gone.
pub fn status_of_error(e: &Error) -> u16 {
    match e.etype() {
        HTTPStatus(code) => *code,
        ConnectTimedout | ReadTimedout | WriteTimedout if e.esource() == &ErrorSource::Upstream => {
            504
        }
        _ => match e.esource() {
            ErrorSource::Upstream => 502,
            ErrorSource::Downstream => match e.etype() {
                // Gone, or not reading (send_timeout): no answer can reach it.
                WriteError | WriteTimedout | ReadError | ConnectionClosed => 0,
                // client_body_timeout, as nginx answers it
                ReadTimedout => 408,
                _ => 400,
            },
            ErrorSource::Internal | ErrorSource::Unset => 500,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_herald_answers_with_has_its_own_page() {
        for status in OVERRIDABLE.into_iter().filter(|s| *s != 404) {
            assert_eq!(for_status(status).status, status);
        }
        assert_eq!(UNKNOWN_SITE.status, 404);
    }
}
