//! nginx's `$document_uri` (what it passes as `PATH_INFO`): the request target's path,
//! percent-decoded, with `.` and `..` segments resolved and runs of slashes merged
//! (`merge_slashes on`). What nginx refuses with 400 is refused here too.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// `%` not followed by two hex digits.
    BadEscape,
    /// `%00`.
    NulByte,
    /// `..` above the root.
    EscapesRoot,
    /// Not an origin-form path (`*`).
    NotAPath,
}

impl PathError {
    pub fn reason(self) -> &'static str {
        match self {
            PathError::BadEscape => "a % in the path is not followed by two hex digits",
            PathError::NulByte => "the path contains %00",
            PathError::EscapesRoot => "the path climbs above / with ..",
            PathError::NotAPath => "the request target is not a path",
        }
    }
}

/// The decoded, normalized path of `target` (a raw origin-form target, query included).
pub fn document_uri(target: &[u8]) -> Result<Vec<u8>, PathError> {
    let path = target
        .split(|&b| b == b'?' || b == b'#')
        .next()
        .unwrap_or_default();
    if path.first() != Some(&b'/') {
        return Err(PathError::NotAPath);
    }
    let decoded = percent_decode(path)?;
    resolve_segments(&decoded)
}

/// `%XX` → the byte. nginx treats a decoded `/` or `.` like a literal one (so `%2e%2e` is `..`),
/// which decoding everything first and resolving segments afterwards does too.
fn percent_decode(path: &[u8]) -> Result<Vec<u8>, PathError> {
    let mut out = Vec::with_capacity(path.len());
    let mut bytes = path.iter();
    while let Some(&b) = bytes.next() {
        if b != b'%' {
            out.push(b);
            continue;
        }
        let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
        let (Some(high), Some(low)) = (hex(bytes.next()), hex(bytes.next())) else {
            return Err(PathError::BadEscape);
        };
        let byte = (high * 16 + low) as u8;
        if byte == 0 {
            return Err(PathError::NulByte);
        }
        out.push(byte);
    }
    Ok(out)
}

/// `/a//b/./c/../d/` → `/a/b/d/`; a trailing `.` or `..` leaves a trailing slash, as in nginx.
fn resolve_segments(path: &[u8]) -> Result<Vec<u8>, PathError> {
    let mut kept: Vec<&[u8]> = Vec::new();
    let mut trailing_slash = false;
    let segments: Vec<&[u8]> = path[1..].split(|&b| b == b'/').collect();
    let last = segments.len() - 1;
    for (i, segment) in segments.into_iter().enumerate() {
        match segment {
            b"" | b"." => {}
            b".." => {
                kept.pop().ok_or(PathError::EscapesRoot)?;
            }
            name => kept.push(name),
        }
        trailing_slash = i == last && matches!(segment, b"" | b"." | b"..");
    }
    let mut out = Vec::with_capacity(path.len());
    for name in &kept {
        out.push(b'/');
        out.extend_from_slice(name);
    }
    if out.is_empty() || trailing_slash {
        out.push(b'/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(target: &str) -> Result<String, PathError> {
        document_uri(target.as_bytes()).map(|p| String::from_utf8(p).unwrap())
    }

    #[test]
    fn paths_as_nginx_makes_them() {
        for (target, expected) in [
            ("/", "/"),
            ("/a/b?x=/../y", "/a/b"),
            ("/a/", "/a/"),
            ("//a///b", "/a/b"),
            ("/a/./b/.", "/a/b/"),
            ("/a/b/../c", "/a/c"),
            ("/a/b/..", "/a/"),
            ("/a/..", "/"),
            ("/%41%62c%20d", "/Abc d"),
            ("/a%2fb", "/a/b"),
            ("/a/%2e%2E/b", "/b"),
            ("/a/%2e/b", "/a/b"),
            ("/caf%C3%A9", "/café"),
            ("/a%3Fb%23c%25", "/a?b#c%"),
            ("/a/..b/.c", "/a/..b/.c"),
            ("/frag#ment", "/frag"),
        ] {
            assert_eq!(uri(target).as_deref(), Ok(expected), "{target}");
        }
    }

    #[test]
    fn what_nginx_refuses() {
        for (target, error) in [
            ("/..", PathError::EscapesRoot),
            ("/a/../..", PathError::EscapesRoot),
            ("/%2e%2e/etc/passwd", PathError::EscapesRoot),
            ("/a%2", PathError::BadEscape),
            ("/a%zz", PathError::BadEscape),
            ("/a%00b", PathError::NulByte),
            ("*", PathError::NotAPath),
        ] {
            assert_eq!(uri(target), Err(error), "{target}");
        }
    }

    #[test]
    fn odd_bytes_are_kept() {
        let path = document_uri(b"/\xff%FE").unwrap();
        assert_eq!(path, b"/\xff\xfe");
    }
}
