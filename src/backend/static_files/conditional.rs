//! Validators (`ETag`, `Last-Modified`) and conditional requests, evaluated as nginx's
//! not_modified and range filters do with `etag on` and `if_modified_since exact`.
//!
//! Where nginx and RFC 9110 differ, nginx wins (it is the contract, and the oracle of the
//! integration tests):
//! - `If-None-Match` and `If-Modified-Since` together: 304 only if both say "not modified"
//!   (the RFC would ignore the date);
//! - an `If-Unmodified-Since` that is not a date fails (412) rather than being ignored;
//! - duplicate header lines, which nginx refuses with 400: the first date is used, and every
//!   line of a list (`If-None-Match`, `If-Match`) counts.
//!
//! Dates are parsed by `httpdate` (the three formats of RFC 9110); unlike nginx it also checks
//! that the weekday fits the date.

use http::header::{IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE};
use http::HeaderMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// nginx's strong ETag: `"<mtime hex>-<size hex>"` (`"%xT-%xO"`).
pub fn etag(mtime: i64, size: u64) -> String {
    // nginx prints a negative time as a minus and the magnitude.
    let sign = if mtime < 0 { "-" } else { "" };
    format!("\"{sign}{:x}-{size:x}\"", mtime.unsigned_abs())
}

/// The first second httpdate cannot format (year 10000).
const YEAR_10000: i64 = 253_402_300_800;

/// `Last-Modified`, for an mtime an HTTP date can express (1970 to 9999); none otherwise.
pub fn http_date(mtime: i64) -> Option<String> {
    let seconds = u64::try_from(mtime).ok().filter(|_| mtime < YEAR_10000)?;
    Some(httpdate::fmt_http_date(
        UNIX_EPOCH + Duration::from_secs(seconds),
    ))
}

/// A date header in seconds; nginx's `NGX_ERROR` (-1) for anything that is not a date, so
/// comparisons come out as nginx's do.
fn seconds(value: &http::HeaderValue) -> i64 {
    std::str::from_utf8(value.as_bytes())
        .ok()
        .and_then(|text| httpdate::parse_http_date(text.trim()).ok())
        .and_then(|time: SystemTime| time.duration_since(UNIX_EPOCH).ok())
        .and_then(|since| i64::try_from(since.as_secs()).ok())
        .unwrap_or(-1)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answer as if unconditional (200, or 206 when a range applies).
    Send,
    NotModified,
    PreconditionFailed,
}

/// The preconditions of a GET or HEAD, in nginx's order.
pub fn evaluate(headers: &HeaderMap, etag: &str, mtime: i64) -> Outcome {
    if let Some(value) = headers.get(IF_UNMODIFIED_SINCE) {
        if seconds(value) < mtime {
            return Outcome::PreconditionFailed;
        }
    }
    if headers.contains_key(IF_MATCH) && !list_matches(headers, IF_MATCH, etag, Comparison::Strong)
    {
        return Outcome::PreconditionFailed;
    }
    let modified_since = headers.get(IF_MODIFIED_SINCE);
    if modified_since.is_none() && !headers.contains_key(IF_NONE_MATCH) {
        return Outcome::Send;
    }
    // `if_modified_since exact`: only the very date sent earlier means "not modified".
    if modified_since.is_some_and(|value| seconds(value) != mtime) {
        return Outcome::Send;
    }
    if headers.contains_key(IF_NONE_MATCH)
        && !list_matches(headers, IF_NONE_MATCH, etag, Comparison::Weak)
    {
        return Outcome::Send;
    }
    Outcome::NotModified
}

/// Whether a `Range` may be honoured: no `If-Range`, or one naming this very ETag
/// (byte for byte, so never a weak one) or this very `Last-Modified` second.
pub fn range_applies(headers: &HeaderMap, etag: &str, mtime: i64) -> bool {
    let Some(value) = headers.get(IF_RANGE) else {
        return true;
    };
    let bytes = value.as_bytes();
    if bytes.len() >= 2 && bytes.ends_with(b"\"") {
        bytes == etag.as_bytes()
    } else {
        seconds(value) == mtime
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Comparison {
    /// If-Match: `W/"..."` never matches.
    Strong,
    /// If-None-Match: `W/"x"` matches `"x"`.
    Weak,
}

/// Whether an entity-tag list (`*`, or `"a", W/"b"`) names `etag`.
fn list_matches(
    headers: &HeaderMap,
    name: http::header::HeaderName,
    etag: &str,
    comparison: Comparison,
) -> bool {
    let trim = |item: &[u8]| -> Vec<u8> {
        let text = String::from_utf8_lossy(item);
        text.trim_matches([' ', '\t']).as_bytes().to_vec()
    };
    headers.get_all(name).iter().any(|line| {
        if trim(line.as_bytes()) == b"*" {
            return true;
        }
        line.as_bytes().split(|&b| b == b',').any(|item| {
            let item = trim(item);
            let tag = match comparison {
                Comparison::Weak if item.len() > 2 => item.strip_prefix(b"W/").unwrap_or(&item),
                _ => &item,
            };
            tag == etag.as_bytes()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MTIME: i64 = 1_700_000_000;
    const DATE: &str = "Tue, 14 Nov 2023 22:13:20 GMT";
    const EARLIER: &str = "Tue, 14 Nov 2023 22:13:19 GMT";
    const LATER: &str = "Tue, 14 Nov 2023 22:13:21 GMT";

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    fn outcome(pairs: &[(&str, &str)]) -> Outcome {
        evaluate(&headers(pairs), &etag(MTIME, 1234), MTIME)
    }

    #[test]
    fn validators_are_formatted_as_nginx_formats_them() {
        assert_eq!(etag(MTIME, 1234), "\"6553f100-4d2\"");
        assert_eq!(etag(0, 0), "\"0-0\"");
        assert_eq!(etag(-1, 16), "\"-1-10\"");
        assert_eq!(http_date(MTIME).as_deref(), Some(DATE));
        assert_eq!(
            http_date(0).as_deref(),
            Some("Thu, 01 Jan 1970 00:00:00 GMT")
        );
        assert_eq!(http_date(-1), None);
        assert_eq!(http_date(YEAR_10000), None);
        assert!(http_date(YEAR_10000 - 1).is_some());
    }

    #[test]
    fn if_none_match_lists_match_weakly() {
        let tag = "\"6553f100-4d2\"";
        for value in [
            tag.to_owned(),
            "*".to_owned(),
            format!("W/{tag}"),
            format!("\"x\", {tag}"),
            format!("\"x\",{tag} ,\"y\""),
            format!("\"x\",\tW/{tag}"),
        ] {
            assert_eq!(
                outcome(&[("if-none-match", &value)]),
                Outcome::NotModified,
                "{value}"
            );
        }
        for value in [
            "\"6553f100-4d3\"",
            "6553f100-4d2",
            "\"6553f100-4d2\"x",
            "\"x\"",
            "W/",
            "*, \"x\"",
        ] {
            assert_eq!(
                outcome(&[("if-none-match", value)]),
                Outcome::Send,
                "{value}"
            );
        }
        // Every line of a repeated header counts.
        assert_eq!(
            outcome(&[("if-none-match", "\"x\""), ("if-none-match", tag)]),
            Outcome::NotModified
        );
    }

    #[test]
    fn if_modified_since_is_exact() {
        assert_eq!(
            outcome(&[("if-modified-since", DATE)]),
            Outcome::NotModified
        );
        assert_eq!(outcome(&[("if-modified-since", LATER)]), Outcome::Send);
        assert_eq!(outcome(&[("if-modified-since", EARLIER)]), Outcome::Send);
        assert_eq!(
            outcome(&[("if-modified-since", "yesterday")]),
            Outcome::Send
        );
        // The two obsolete formats are dates too.
        assert_eq!(
            outcome(&[("if-modified-since", "Tuesday, 14-Nov-23 22:13:20 GMT")]),
            Outcome::NotModified
        );
        assert_eq!(
            outcome(&[("if-modified-since", "Tue Nov 14 22:13:20 2023")]),
            Outcome::NotModified
        );
    }

    #[test]
    fn both_validators_must_agree_as_in_nginx() {
        let tag = "\"6553f100-4d2\"";
        assert_eq!(
            outcome(&[("if-none-match", tag), ("if-modified-since", DATE)]),
            Outcome::NotModified
        );
        assert_eq!(
            outcome(&[("if-none-match", tag), ("if-modified-since", EARLIER)]),
            Outcome::Send
        );
        assert_eq!(
            outcome(&[("if-none-match", "\"x\""), ("if-modified-since", DATE)]),
            Outcome::Send
        );
    }

    #[test]
    fn if_match_and_if_unmodified_since_fail_with_412() {
        let tag = "\"6553f100-4d2\"";
        assert_eq!(outcome(&[("if-match", tag)]), Outcome::Send);
        assert_eq!(outcome(&[("if-match", "*")]), Outcome::Send);
        assert_eq!(
            outcome(&[("if-match", &format!("\"a\", {tag}"))]),
            Outcome::Send
        );
        assert_eq!(
            outcome(&[("if-match", &format!("W/{tag}"))]),
            Outcome::PreconditionFailed
        );
        assert_eq!(
            outcome(&[("if-match", "\"a\"")]),
            Outcome::PreconditionFailed
        );
        assert_eq!(outcome(&[("if-unmodified-since", DATE)]), Outcome::Send);
        assert_eq!(outcome(&[("if-unmodified-since", LATER)]), Outcome::Send);
        assert_eq!(
            outcome(&[("if-unmodified-since", EARLIER)]),
            Outcome::PreconditionFailed
        );
        assert_eq!(
            outcome(&[("if-unmodified-since", "garbage")]),
            Outcome::PreconditionFailed
        );
        // 412 before 304, as nginx checks them.
        assert_eq!(
            outcome(&[("if-match", "\"a\""), ("if-none-match", tag)]),
            Outcome::PreconditionFailed
        );
    }

    #[test]
    fn if_range_names_this_very_etag_or_date() {
        let tag = etag(MTIME, 1234);
        let applies = |value: &str| range_applies(&headers(&[("if-range", value)]), &tag, MTIME);
        assert!(range_applies(&HeaderMap::new(), &tag, MTIME));
        assert!(applies(&tag));
        assert!(applies(DATE));
        assert!(!applies(&format!("W/{tag}")));
        assert!(!applies("\"other\""));
        assert!(!applies(LATER));
        assert!(!applies(EARLIER));
        assert!(!applies("garbage"));
    }
}
