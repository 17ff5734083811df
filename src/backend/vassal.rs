//! What a site's vassal file says about where and how its app listens: its socket options in
//! `[uwsgi]`, `socket`/`uwsgi-socket` (the uwsgi protocol) or `http-socket`/`http11-socket`
//! (HTTP), and the user it runs as (`uid`). The option that listens where Herald connects
//! decides the site's protocol, over `backend.app_protocol`; a local start checks there is one.

use crate::config::AppProtocol;

/// One socket option of the `[uwsgi]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SocketOption {
    protocol: AppProtocol,
    value: String,
}

/// The socket options of `[uwsgi]`, in order. `protocol = http` (or `socket-protocol`) turns
/// a plain `socket` into an HTTP one, as it does in uWSGI. Keys are read as uWSGI reads them
/// (`http_socket` is `http-socket`).
fn socket_options(ini: &str) -> Vec<SocketOption> {
    let mut in_uwsgi = false;
    let mut options = Vec::new();
    let mut plain_speaks_http = false;
    for line in ini.lines().map(str::trim) {
        if line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_uwsgi = section.trim() == "uwsgi";
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if !in_uwsgi {
            continue;
        }
        let protocol = match key.trim().replace('_', "-").as_str() {
            "socket" | "uwsgi-socket" => AppProtocol::Uwsgi,
            "http-socket" | "http11-socket" => AppProtocol::Http,
            "protocol" | "socket-protocol" => {
                plain_speaks_http = value.trim().eq_ignore_ascii_case("http");
                continue;
            }
            _ => continue,
        };
        options.push(SocketOption {
            protocol,
            value: value.trim().to_owned(),
        });
    }
    if plain_speaks_http {
        for option in &mut options {
            option.protocol = AppProtocol::Http;
        }
    }
    options
}

/// The protocol of the socket option that listens at `expected` (Herald's socket path for
/// `site`), or of the first one when none can be matched; `None` when there is none.
pub fn declared_protocol(ini: &str, site: &str, expected: &str) -> Option<AppProtocol> {
    let options = socket_options(ini);
    options
        .iter()
        .find(|o| expand_name(&o.value, site).is_ok_and(|path| path == expected))
        .or(options.first())
        .map(|o| o.protocol)
}

/// The user the vassal's app runs as: its `uid` option, a number or a user name. `Ok(None)`:
/// it has none (the app runs as the emperor's user, or the vassal file's owner in tyrant mode).
pub fn declared_uid(ini: &str) -> Result<Option<u32>, String> {
    let mut in_uwsgi = false;
    let mut uid = None;
    for line in ini.lines().map(str::trim) {
        if line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_uwsgi = section.trim() == "uwsgi";
            continue;
        }
        if let Some((key, value)) = line.split_once('=').filter(|_| in_uwsgi) {
            if key.trim() == "uid" {
                uid = Some(value.trim().to_owned());
            }
        }
    }
    let Some(uid) = uid else {
        return Ok(None);
    };
    if let Ok(number) = uid.parse::<u32>() {
        return Ok(Some(number));
    }
    match nix::unistd::User::from_name(&uid) {
        Ok(Some(user)) => Ok(Some(user.uid.as_raw())),
        Ok(None) => Err(format!("uid {uid:?} is not a user on this machine")),
        Err(e) => Err(format!("cannot look up the user {uid:?}: {e}")),
    }
}

/// Checks that one socket option listens at `expected` once `%n` (the vassal's name, i.e. the
/// site) is expanded.
pub fn check_socket(ini: &str, site: &str, expected: &str) -> Result<(), String> {
    let mut found = Vec::new();
    for option in socket_options(ini) {
        found.push(expand_name(&option.value, site)?);
    }
    if found.iter().any(|socket| socket == expected) {
        Ok(())
    } else if found.is_empty() {
        Err(format!(
            "no socket (socket, uwsgi-socket, http-socket or http11-socket) in [uwsgi]; Herald connects to {expected:?}"
        ))
    } else {
        Err(format!(
            "the app listens on {found:?} but Herald connects to {expected:?}; make the vassal's socket and backend.socket_path agree"
        ))
    }
}

fn expand_name(value: &str, site: &str) -> Result<String, String> {
    let mut out = String::with_capacity(value.len() + site.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push_str(site),
            Some('%') => out.push('%'),
            other => {
                return Err(format!(
                    "socket {value:?} uses %{} which Herald cannot check; use the full path or %n",
                    other.map(String::from).unwrap_or_default()
                ))
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SITE: &str = "a.example";
    const EXPECTED: &str = "/run/herald/sockets/a.example.sock";

    #[test]
    fn the_socket_herald_connects_to_decides_the_protocol() {
        let cases = [
            (
                "[uwsgi]\nsocket = /run/herald/sockets/%n.sock\n",
                Some(AppProtocol::Uwsgi),
            ),
            (
                "[uwsgi]\nuwsgi_socket=/run/x.sock\n",
                Some(AppProtocol::Uwsgi),
            ),
            (
                "[uwsgi]\nhttp-socket = /run/herald/sockets/%n.sock\n",
                Some(AppProtocol::Http),
            ),
            ("[uwsgi]\nhttp11-socket = /x\n", Some(AppProtocol::Http)),
            // Two sockets: the one at Herald's path, not the first.
            (
                "[uwsgi]\nhttp-socket = :8000\nsocket = /run/herald/sockets/%n.sock\n",
                Some(AppProtocol::Uwsgi),
            ),
            (
                "[uwsgi]\n; socket = x\nhttp-socket = y\nsocket = z\n",
                Some(AppProtocol::Http),
            ),
            (
                "[uwsgi]\nsocket = x\nprotocol = http\n",
                Some(AppProtocol::Http),
            ),
            (
                "[other]\nsocket = x\n[uwsgi]\nhttp-socket = y\n",
                Some(AppProtocol::Http),
            ),
            ("[uwsgi]\nplugins = python3\n", None),
            ("socket = x\n", None),
        ];
        for (ini, expected) in cases {
            assert_eq!(declared_protocol(ini, SITE, EXPECTED), expected, "{ini}");
        }
    }

    #[test]
    fn the_uid_option_names_the_user_by_number_or_name() {
        assert_eq!(declared_uid("[uwsgi]\nsocket = x\n"), Ok(None));
        assert_eq!(
            declared_uid("[uwsgi]\nuid = 1234\ngid = 1234\n"),
            Ok(Some(1234))
        );
        assert_eq!(declared_uid("[uwsgi]\nuid = root\n"), Ok(Some(0)));
        assert_eq!(declared_uid("[other]\nuid = 7\n[uwsgi]\n"), Ok(None));
        assert!(declared_uid("[uwsgi]\nuid = no-such-user-here\n")
            .unwrap_err()
            .contains("not a user"));
    }

    #[test]
    fn vassal_socket_must_be_where_herald_connects() {
        let ok = "[uwsgi]\nplugins = python3\nhttp11-socket = /run/herald/sockets/%n.sock\n";
        assert_eq!(check_socket(ok, SITE, EXPECTED), Ok(()));
        let uwsgi = "[uwsgi]\nsocket = /run/herald/sockets/%n.sock\n";
        assert_eq!(check_socket(uwsgi, SITE, EXPECTED), Ok(()));
        let literal = "[uwsgi]\nhttp_socket=/run/herald/sockets/a.example.sock\n";
        assert_eq!(check_socket(literal, SITE, EXPECTED), Ok(()));
        let elsewhere = "[uwsgi]\nhttp-socket = /tmp/%n.sock\n";
        assert!(check_socket(elsewhere, SITE, EXPECTED)
            .unwrap_err()
            .contains("/tmp/a.example.sock"));
        let none = "[uwsgi]\nplugins = python3\n";
        assert!(check_socket(none, SITE, EXPECTED)
            .unwrap_err()
            .contains("no socket"));
        let other_section = "[other]\nhttp-socket = /run/herald/sockets/%n.sock\n[uwsgi]\n";
        assert!(check_socket(other_section, SITE, EXPECTED).is_err());
        let magic = "[uwsgi]\nsocket = %d/%n.sock\n";
        assert!(check_socket(magic, SITE, EXPECTED)
            .unwrap_err()
            .contains("%d"));
    }
}
