//! A request target's path as a static file's name: percent-decoded, slashes merged and `.`
//! segments dropped as nginx does (`merge_slashes on`), and refused outright where nginx would
//! resolve or pass something a file name should never hold. Refusing is stricter than nginx on
//! purpose: `..`, an encoded `/` or a backslash in a static URL is an attack or a mistake, and
//! answering it with 404 is cheaper to reason about than resolving it safely.

/// Why a path under a mapped prefix is not looked up (answered with 404).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A `..` segment, however spelled (`..`, `%2e%2e`, `.%2E`...). nginx resolves these;
    /// a static URL never needs them.
    DotDot,
    /// `%2f`: nginx decodes it to a `/`, which would let one URL name a path its
    /// segments do not show.
    EncodedSlash,
    /// `\` or `%5c`, a separator elsewhere and a classic traversal spelling.
    Backslash,
    /// `%00`.
    Nul,
    /// `%` not followed by two hex digits.
    BadEscape,
    /// Bytes that are not UTF-8, overlong forms such as `%c0%ae` included.
    BadUtf8,
    /// A control character (C0, DEL or C1), raw or escaped.
    ControlChar,
    /// The target ends in `/` (or `/.`): no listings and no index files.
    Directory,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::DotDot => "the path has a '..' segment",
            Refusal::EncodedSlash => "the path has an encoded '/' (%2F)",
            Refusal::Backslash => "the path has a backslash",
            Refusal::Nul => "the path has %00",
            Refusal::BadEscape => "a % in the path is not followed by two hex digits",
            Refusal::BadUtf8 => "the path is not valid UTF-8",
            Refusal::ControlChar => "the path has a control character",
            Refusal::Directory => "the path names a directory",
        }
    }
}

/// The path part of a request target: origin form (`/a?q`) or absolute form
/// (`http://host/a?q`), without query or fragment. `None` for `*` and authority form.
pub fn path_of_target(target: &[u8]) -> Option<&[u8]> {
    let path_and_query = if target.first() == Some(&b'/') {
        target
    } else {
        let scheme_end = target.windows(3).position(|w| w == b"://")?;
        let after_authority = &target[scheme_end + 3..];
        match after_authority
            .iter()
            .position(|&b| matches!(b, b'/' | b'?' | b'#'))
        {
            Some(end) if after_authority[end] == b'/' => &after_authority[end..],
            _ => b"/",
        }
    };
    path_and_query.split(|&b| b == b'?' || b == b'#').next()
}

/// `path` (raw, starting with `/`) decoded: `/static//css/./a.css` → `/static/css/a.css`.
/// A trailing `/` (or a trailing `.` segment, which nginx turns into one) is kept, so the
/// caller sees that a directory was asked for.
pub fn decode(path: &[u8]) -> Result<String, Refusal> {
    let bytes = percent_decode(path)?;
    let text = String::from_utf8(bytes).map_err(|_| Refusal::BadUtf8)?;
    if text.chars().any(char::is_control) {
        return Err(Refusal::ControlChar);
    }
    let mut normalised = String::with_capacity(text.len());
    let mut ends_as_directory = false;
    for segment in text.split('/').skip(1) {
        match segment {
            ".." => return Err(Refusal::DotDot),
            "" | "." => ends_as_directory = true,
            name => {
                normalised.push('/');
                normalised.push_str(name);
                ends_as_directory = false;
            }
        }
    }
    if normalised.is_empty() || ends_as_directory {
        normalised.push('/');
    }
    Ok(normalised)
}

fn percent_decode(path: &[u8]) -> Result<Vec<u8>, Refusal> {
    let mut out = Vec::with_capacity(path.len());
    let mut bytes = path.iter();
    while let Some(&byte) = bytes.next() {
        let decoded = if byte == b'%' {
            let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
            let (Some(high), Some(low)) = (hex(bytes.next()), hex(bytes.next())) else {
                return Err(Refusal::BadEscape);
            };
            match (high * 16 + low) as u8 {
                0 => return Err(Refusal::Nul),
                b'/' => return Err(Refusal::EncodedSlash),
                other => other,
            }
        } else {
            byte
        };
        if decoded == b'\\' {
            return Err(Refusal::Backslash);
        }
        out.push(decoded);
    }
    Ok(out)
}

/// `path` with runs of `/` merged and nothing decoded: how a path that was refused still
/// shows which mapping it was aimed at.
pub fn merge_slashes(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len());
    for &byte in path {
        if !(byte == b'/' && out.last() == Some(&b'/')) {
            out.push(byte);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_decode_as_nginx_normalises_them() {
        for (raw, expected) in [
            ("/", "/"),
            ("/static/a.css", "/static/a.css"),
            ("//static///css//a.css", "/static/css/a.css"),
            ("/static/./a.css", "/static/a.css"),
            ("/./static/%2e/a.css", "/static/a.css"),
            ("/static/.", "/static/"),
            ("/static/a/", "/static/a/"),
            ("/st%61tic/%41%20b.css", "/static/A b.css"),
            ("/static/caf%C3%A9.txt", "/static/café.txt"),
            ("/static/caf\u{e9}.txt", "/static/café.txt"),
            ("/static/100%25.txt", "/static/100%.txt"),
            ("/static/%252e%252e/x", "/static/%2e%2e/x"),
            ("/static/a+b%3Fc%23d", "/static/a+b?c#d"),
            ("/static/...", "/static/..."),
            ("/static/..a/.b", "/static/..a/.b"),
        ] {
            assert_eq!(decode(raw.as_bytes()).as_deref(), Ok(expected), "{raw}");
        }
    }

    #[test]
    fn traversal_and_odd_bytes_are_refused() {
        use Refusal::*;
        for (raw, refusal) in [
            (&b"/static/../etc/passwd"[..], DotDot),
            (b"/static/a/..", DotDot),
            (b"/static/%2e%2e/x", DotDot),
            (b"/static/%2E%2E/x", DotDot),
            (b"/static/.%2e/x", DotDot),
            (b"/static/%2E./x", DotDot),
            (b"/static/a/%2e%2e", DotDot),
            (b"/static/..", DotDot),
            (b"/static/..%2fetc", EncodedSlash),
            (b"/static/a%2Fb", EncodedSlash),
            (b"/static/a%2fb", EncodedSlash),
            (b"/static/..\\etc", Backslash),
            (b"/static/a%5cb", Backslash),
            (b"/static/a%5Cb", Backslash),
            (b"/static/a%00.txt", Nul),
            (b"/static/a%0", BadEscape),
            (b"/static/a%zz", BadEscape),
            (b"/static/a%", BadEscape),
            (b"/static/%c0%ae%c0%ae/x", BadUtf8),
            (b"/static/%c0%af", BadUtf8),
            (b"/static/%e0%80%ae", BadUtf8),
            (b"/static/%ed%a0%80", BadUtf8),
            (b"/static/\xff", BadUtf8),
            (b"/static/%ff", BadUtf8),
            (b"/static/a%0ab", ControlChar),
            (b"/static/a%0d%0aSet-Cookie:x", ControlChar),
            (b"/static/a%7f", ControlChar),
            (b"/static/a%c2%85", ControlChar),
            (b"/static/a\tb", ControlChar),
        ] {
            assert_eq!(
                decode(raw),
                Err(refusal),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn the_path_is_found_in_every_target_form() {
        assert_eq!(path_of_target(b"/a/b?x=/../y"), Some(&b"/a/b"[..]));
        assert_eq!(path_of_target(b"/a#frag"), Some(&b"/a"[..]));
        assert_eq!(path_of_target(b"http://site/a/b?q"), Some(&b"/a/b"[..]));
        assert_eq!(path_of_target(b"https://site"), Some(&b"/"[..]));
        assert_eq!(path_of_target(b"http://site?q=/x"), Some(&b"/"[..]));
        assert_eq!(path_of_target(b"*"), None);
        assert_eq!(path_of_target(b"site:443"), None);
    }

    #[test]
    fn slashes_merge_without_decoding() {
        assert_eq!(merge_slashes(b"//static///a%2f/"), b"/static/a%2f/");
    }
}
