//! Static files: URL prefixes a site's owner maps to directories (`static:` in the site's
//! settings), served for GET and HEAD without waking the app. nginx with `alias` and the
//! defaults Debian ships is the contract (`etag on`, `if_modified_since exact`,
//! `gzip_static on`, `merge_slashes on`, `default_type application/octet-stream`, multiple
//! ranges as `multipart/byteranges`); each part says where it follows nginx and where not.
//!
//! - `path`: the target's path decoded; traversal, encoded slashes, backslashes, NUL,
//!   invalid UTF-8 and control characters refused (404); nginx would resolve some of these.
//! - `open`: the file opened beneath the mapped directory (openat2 `RESOLVE_BENEATH`), only
//!   a regular file, only under the owner rule (`open::owner_may_publish`).
//! - `gzip`: whether the `.gz` sibling may be sent.
//! - `conditional`: `ETag`, `Last-Modified`, `If-None-Match`, `If-Modified-Since`, `If-Match`,
//!   `If-Unmodified-Since`, `If-Range`.
//! - `range`: `Range`, single and multipart.
//! - `body`: the body streamed a chunk at a time.
//!
//! Not as nginx: a directory (with or without a trailing `/`) is 404 (nginx redirects to the
//! `/` form, then lists or finds an index; here neither); a file Herald may not read or
//! the owner rule refuses is 404, not 403; nothing is compressed on the fly (nginx's
//! `gzip on` compresses `text/html`); `Content-Type` comes from `mime_guess`'s table, which
//! differs from nginx's mime.types here and there (`.js` is `text/javascript`).

mod body;
mod conditional;
mod gzip;
mod open;
mod path;
mod range;
#[cfg(test)]
mod serve_tests;

use crate::backend::app::uri::document_uri;
use bytes::Bytes;
use http::header::{self, HeaderName};
use open::{NotOpened, OpenFile};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use range::Ranges;
use std::path::PathBuf;

pub use path::Refusal;

/// One `static:` entry of a site's settings. `url` starts and ends with '/', `dir` is
/// absolute (the settings loader guarantees both).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub url: String,
    pub dir: PathBuf,
}

/// A request aimed at a mapping.
#[derive(Debug, PartialEq, Eq)]
pub struct Found<'a> {
    pub mapping: &'a Mapping,
    /// The file's path below `mapping.dir` (`css/site.css`), or why the request is refused
    /// (answered with 404, never passed to the app).
    pub file: Result<String, Refusal>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Served {
    /// An answer was sent (200, 206, 304, 412 or 416).
    Sent,
    /// Nothing was sent: answer with the 404 page. Why, for the log.
    NotFound(&'static str),
}

/// The mapping a request's target belongs to (longest `url` prefix of the decoded path; the
/// query is ignored), and the path inside it; `None`: not a static request (goes to the app).
///
/// A refused path belongs to the mapping it is aimed at, read literally (`/static/../app`)
/// or as nginx would resolve it (`/x/%2e%2e/static/a`), so neither reaches the app.
pub fn find<'a>(maps: &'a [Mapping], raw_target: &[u8]) -> Option<Found<'a>> {
    if maps.is_empty() {
        return None;
    }
    let raw_path = path::path_of_target(raw_target)?;
    match path::decode(raw_path) {
        Ok(decoded) => {
            let mapping = longest_prefix(maps, decoded.as_bytes())?;
            let name = &decoded[mapping.url.len()..];
            let file = if name.is_empty() || name.ends_with('/') {
                Err(Refusal::Directory)
            } else {
                Ok(name.to_owned())
            };
            Some(Found { mapping, file })
        }
        Err(refusal) => {
            let resolved = document_uri(raw_path).ok();
            let mapping = resolved
                .and_then(|resolved| longest_prefix(maps, &resolved))
                .or_else(|| longest_prefix(maps, &path::merge_slashes(raw_path)))?;
            Some(Found {
                mapping,
                file: Err(refusal),
            })
        }
    }
}

fn longest_prefix<'a>(maps: &'a [Mapping], path: &[u8]) -> Option<&'a Mapping> {
    maps.iter()
        .filter(|mapping| path.starts_with(mapping.url.as_bytes()))
        .max_by_key(|mapping| mapping.url.len())
}

/// Answers a GET or HEAD for `found` (any other method is the caller's to refuse): 200,
/// 206, 304, 412 or 416, with `extra_headers` (`Strict-Transport-Security`, say) on each, the
/// body streamed in bounded memory; or nothing sent and `NotFound`, for the caller's 404
/// page. An error other than the file's absence (EIO, no file descriptors left) is an `Err`
/// with status 500, as nginx answers it.
pub async fn serve(
    session: &mut Session,
    found: &Found<'_>,
    owner_uid: u32,
    extra_headers: &[(HeaderName, String)],
) -> Result<Served> {
    let name = match &found.file {
        Ok(name) => name.clone(),
        Err(refusal) => return Ok(Served::NotFound(refusal.reason())),
    };
    let request = session.req_header();
    let head_only = request.method == http::Method::HEAD;
    let gzip_accepted = gzip::accepted(request);
    // On the request's thread, as nginx opens files without `aio`: these are metadata calls
    // the kernel answers from its caches, and a hop to the blocking pool and back costs more
    // than they do (measured: backend CPU per 4 KiB answer, BENCHMARKS.md).
    let chosen = open::choose(
        &found.mapping.dir,
        &name,
        owner_uid,
        gzip_accepted,
        open::default_resolver(),
    );
    let chosen = match chosen {
        Ok(chosen) => chosen,
        Err(NotOpened::NotFound(why)) => return Ok(Served::NotFound(why)),
        Err(NotOpened::Failed(e)) => {
            return Error::e_explain(
                HTTPStatus(500),
                format!("static file {name:?} in {:?}: {e}", found.mapping.dir),
            )
        }
    };
    let OpenFile { file, size, mtime } = chosen.open;
    let head = Head {
        etag: conditional::etag(mtime, size),
        last_modified: conditional::http_date(mtime),
        vary: chosen.vary,
        extra: extra_headers,
    };
    let headers = &session.req_header().headers;
    match conditional::evaluate(headers, &head.etag, mtime) {
        conditional::Outcome::Send => {}
        conditional::Outcome::NotModified => {
            // As nginx: validators kept; type, length, encoding and Accept-Ranges dropped.
            let response = head.response(304)?;
            session
                .write_response_header(Box::new(response), true)
                .await?;
            session.write_response_body(None, true).await?;
            return Ok(Served::Sent);
        }
        conditional::Outcome::PreconditionFailed => {
            send_page(session, &PRECONDITION_FAILED, None, extra_headers).await?;
            return Ok(Served::Sent);
        }
    }

    let ranges = match headers.get(header::RANGE) {
        Some(value) if conditional::range_applies(headers, &head.etag, mtime) => {
            range::parse(value.as_bytes(), size)
        }
        _ => Ranges::Whole,
    };
    let content_type = mime_guess::from_path(&name)
        .first_raw()
        .unwrap_or("application/octet-stream");
    let (mut response, segments) = match ranges {
        Ranges::Whole => {
            let mut response = head.response(200)?;
            response.insert_header(header::CONTENT_TYPE, content_type)?;
            response.insert_header(header::CONTENT_LENGTH, size)?;
            // nginx offers ranges only on a full answer.
            response.insert_header(header::ACCEPT_RANGES, "bytes")?;
            let whole = body::Segment::File {
                start: 0,
                len: size,
            };
            (response, vec![whole])
        }
        Ranges::Partial(ranges) if ranges.len() == 1 => {
            let only = ranges[0];
            let mut response = head.response(206)?;
            response.insert_header(header::CONTENT_TYPE, content_type)?;
            response.insert_header(header::CONTENT_LENGTH, only.end - only.start)?;
            response.insert_header(header::CONTENT_RANGE, range::content_range(only, size))?;
            let part = body::Segment::File {
                start: only.start,
                len: only.end - only.start,
            };
            (response, vec![part])
        }
        Ranges::Partial(ranges) => {
            let parts = range::multipart(&ranges, size, content_type, &range::next_boundary());
            let mut response = head.response(206)?;
            response.insert_header(header::CONTENT_TYPE, parts.content_type)?;
            response.insert_header(header::CONTENT_LENGTH, parts.length)?;
            (response, parts.segments)
        }
        Ranges::Unsatisfiable => {
            let content_range = format!("bytes */{size}");
            send_page(
                session,
                &NOT_SATISFIABLE,
                Some(content_range),
                extra_headers,
            )
            .await?;
            return Ok(Served::Sent);
        }
    };
    if chosen.gzip {
        response.insert_header(header::CONTENT_ENCODING, "gzip")?;
    }
    session
        .write_response_header(Box::new(response), head_only)
        .await?;
    if head_only {
        session.write_response_body(None, true).await?;
    } else {
        body::send(session, file, &segments).await?;
    }
    Ok(Served::Sent)
}

/// What every answer about the file carries.
struct Head<'a> {
    etag: String,
    last_modified: Option<String>,
    vary: bool,
    extra: &'a [(HeaderName, String)],
}

impl Head<'_> {
    fn response(&self, status: u16) -> Result<ResponseHeader> {
        let mut response = ResponseHeader::build(status, Some(10 + self.extra.len()))?;
        if let Some(date) = &self.last_modified {
            response.insert_header(header::LAST_MODIFIED, date.as_str())?;
        }
        response.insert_header(header::ETAG, self.etag.as_str())?;
        if self.vary {
            response.insert_header(header::VARY, "Accept-Encoding")?;
        }
        for (name, value) in self.extra {
            response.insert_header(name.clone(), value.as_str())?;
        }
        Ok(response)
    }
}

/// An error answer about the file, in the style of Herald's pages. nginx sends its own
/// page for these, without the file's validators.
struct StatusPage {
    status: u16,
    body: &'static str,
}

const PRECONDITION_FAILED: StatusPage = StatusPage {
    status: 412,
    body: "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>412 Precondition Failed</title></head>\n<body><h1>412 Precondition Failed</h1>\n<p>The file is not the version this request was conditional on.</p>\n<hr><p>herald</p></body></html>\n",
};

const NOT_SATISFIABLE: StatusPage = StatusPage {
    status: 416,
    body: "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>416 Range Not Satisfiable</title></head>\n<body><h1>416 Range Not Satisfiable</h1>\n<p>The requested range is not part of this file.</p>\n<hr><p>herald</p></body></html>\n",
};

/// Sends `page`; unlike Herald's error pages, the connection is kept: the request was
/// understood and its body (if any) is Pingora's to drain as usual.
async fn send_page(
    session: &mut Session,
    page: &StatusPage,
    content_range: Option<String>,
    extra_headers: &[(HeaderName, String)],
) -> Result<()> {
    let mut response = ResponseHeader::build(page.status, Some(4 + extra_headers.len()))?;
    response.insert_header(header::CONTENT_TYPE, "text/html; charset=utf-8")?;
    response.insert_header(header::CONTENT_LENGTH, page.body.len())?;
    if let Some(content_range) = content_range {
        response.insert_header(header::CONTENT_RANGE, content_range)?;
    }
    for (name, value) in extra_headers {
        response.insert_header(name.clone(), value.as_str())?;
    }
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(response), head_only)
        .await?;
    let body = (!head_only).then(|| Bytes::from_static(page.body.as_bytes()));
    session.write_response_body(body, true).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn maps() -> Vec<Mapping> {
        ["/static/", "/static/img/", "/media/"]
            .into_iter()
            .map(|url| Mapping {
                url: url.to_owned(),
                dir: PathBuf::from(format!("/srv{url}")),
            })
            .collect()
    }

    fn found(target: &str) -> Option<(String, Result<String, Refusal>)> {
        let maps = maps();
        find(&maps, target.as_bytes()).map(|found| (found.mapping.url.clone(), found.file))
    }

    fn file(url: &str, name: &str) -> Option<(String, Result<String, Refusal>)> {
        Some((url.to_owned(), Ok(name.to_owned())))
    }

    fn refused(url: &str, refusal: Refusal) -> Option<(String, Result<String, Refusal>)> {
        Some((url.to_owned(), Err(refusal)))
    }

    #[test]
    fn the_longest_prefix_of_the_decoded_path_wins() {
        assert_eq!(found("/static/a.css"), file("/static/", "a.css"));
        assert_eq!(
            found("/static/img/logo.png"),
            file("/static/img/", "logo.png")
        );
        assert_eq!(found("/static/imgs/x.png"), file("/static/", "imgs/x.png"));
        assert_eq!(
            found("/static/a.css?v=3/../../x"),
            file("/static/", "a.css")
        );
        assert_eq!(found("/st%61tic/a%20b.css"), file("/static/", "a b.css"));
        assert_eq!(
            found("//static//img///logo.png"),
            file("/static/img/", "logo.png")
        );
        assert_eq!(
            found("/static/./css/./a.css"),
            file("/static/", "css/a.css")
        );
        assert_eq!(found("http://site/media/v.mp4?x"), file("/media/", "v.mp4"));
    }

    #[test]
    fn other_paths_go_to_the_app() {
        for target in [
            "/",
            "/static",
            "/staticx/a.css",
            "/app/static/a.css",
            "/STATIC/a.css",
            "/api/..%2f",
            "/api/%2e%2e/x",
            "/..",
            "*",
        ] {
            assert_eq!(found(target), None, "{target}");
        }
        assert!(find(&[], b"/static/a.css").is_none());
    }

    #[test]
    fn directories_and_refused_paths_under_a_prefix_are_404s() {
        assert_eq!(found("/static/"), refused("/static/", Refusal::Directory));
        assert_eq!(
            found("/static/css/"),
            refused("/static/", Refusal::Directory)
        );
        assert_eq!(
            found("/static/css/."),
            refused("/static/", Refusal::Directory)
        );
        assert_eq!(
            found("/static/../app.py"),
            refused("/static/", Refusal::DotDot)
        );
        assert_eq!(
            found("/static/%2e%2e/%2e%2e/etc/passwd"),
            refused("/static/", Refusal::DotDot)
        );
        assert_eq!(
            found("/static%2fa.css"),
            refused("/static/", Refusal::EncodedSlash)
        );
        // nginx would resolve this one into /static/: it is not the app's either.
        assert_eq!(
            found("/x/%2e%2e/static/a.css"),
            refused("/static/", Refusal::DotDot)
        );
        assert_eq!(found("/static/a%00.css"), refused("/static/", Refusal::Nul));
        assert_eq!(
            found("/static/%c0%ae"),
            refused("/static/", Refusal::BadUtf8)
        );
        assert_eq!(
            found("/static/a%zz"),
            refused("/static/", Refusal::BadEscape)
        );
        assert_eq!(
            found("/static/a\\b"),
            refused("/static/", Refusal::Backslash)
        );
    }
}
