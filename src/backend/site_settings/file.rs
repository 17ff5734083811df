//! One site's settings file, `sites_dir/<site>.yaml`, as the operator's control plane writes
//! it: its YAML shape, and the checks that turn it into `SiteSettings`. The key names are a
//! contract with control planes; every problem names the file and the field.

use super::{Password, SiteSettings};
use crate::backend::static_files::Mapping;
use crate::config::units::parse_duration;
use crate::config::{yaml_error, ConfigError, Scalar};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

/// More mappings than this is a mistake (each request looks at all of them).
const MAX_STATIC: usize = 100;
/// An htpasswd file larger than this is not one.
const MAX_HTPASSWD_BYTES: u64 = 1 << 20;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(rename = "static")]
    statics: Option<Vec<StaticEntry>>,
    force_https: Option<bool>,
    hsts: Option<Scalar>,
    password: Option<PasswordEntry>,
    disabled: Option<Disabled>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StaticEntry {
    url: String,
    dir: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordEntry {
    realm: String,
    users: Users,
}

/// An htpasswd file, or its lines inline.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Users {
    File(String),
    Inline(Vec<String>),
}

/// `true`, `false`, or the reason (which picks the operator's page).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Disabled {
    Flag(bool),
    Reason(String),
}

/// What a settings file needs besides its own text: the files it names, so a change to
/// them counts as a change of the settings.
pub struct Parsed {
    pub settings: SiteSettings,
    pub htpasswd: Option<PathBuf>,
}

/// Checks `text`, the contents of the settings file `path`.
pub fn parse(path: &Path, text: &str) -> Result<Parsed, ConfigError> {
    let file_name = path.display().to_string();
    let raw: File = if text.trim().is_empty() {
        File::default()
    } else {
        serde_yaml::from_str(text).map_err(|e| yaml_error(&file_name, &e))?
    };
    let mut problems: Vec<(String, String)> = Vec::new();
    let mut bad = |field: String, message: String| problems.push((field, message));

    let mut statics = Vec::new();
    let entries = raw.statics.unwrap_or_default();
    if entries.len() > MAX_STATIC {
        bad(
            "static".into(),
            format!("{} mappings; at most {MAX_STATIC}", entries.len()),
        );
    }
    for (i, entry) in entries.into_iter().enumerate().take(MAX_STATIC) {
        let field = format!("static[{i}]");
        if let Err(e) = check_url_prefix(&entry.url) {
            bad(format!("{field}.url"), e);
        }
        if let Err(e) = check_dir(&entry.dir) {
            bad(format!("{field}.dir"), e);
        }
        if statics.iter().any(|m: &Mapping| m.url == entry.url) {
            bad(
                format!("{field}.url"),
                format!("{:?} is mapped twice", entry.url),
            );
        }
        statics.push(Mapping {
            url: entry.url,
            dir: PathBuf::from(entry.dir),
        });
    }

    let hsts = raw.hsts.and_then(|value| match parse_duration(&value.0) {
        Ok(age) => Some(age),
        Err(e) => {
            bad("hsts".into(), e);
            None
        }
    });

    let mut htpasswd = None;
    let password = raw.password.and_then(|entry| {
        if entry.realm.is_empty() || entry.realm.len() > 200 {
            bad(
                "password.realm".into(),
                "must be 1 to 200 characters".into(),
            );
        } else if entry
            .realm
            .chars()
            .any(|c| c == '"' || c == '\\' || c.is_control())
        {
            bad(
                "password.realm".into(),
                "may not contain quotes, backslashes or control characters".into(),
            );
        }
        let users = match entry.users {
            Users::File(file) => {
                let read = read_htpasswd(&file);
                htpasswd = Some(PathBuf::from(&file));
                read.map_err(|e| bad("password.users".into(), e)).ok()?
            }
            Users::Inline(lines) => {
                let mut users = HashMap::new();
                for (i, line) in lines.iter().enumerate() {
                    match parse_user(line) {
                        Ok((user, hash)) => {
                            users.insert(user, hash);
                        }
                        Err(e) => bad(format!("password.users[{i}]"), e),
                    }
                }
                users
            }
        };
        if users.is_empty() {
            bad(
                "password.users".into(),
                "no users: nobody could get in".into(),
            );
        }
        Some(Password {
            realm: entry.realm,
            users,
        })
    });

    let disabled = match raw.disabled {
        None | Some(Disabled::Flag(false)) => None,
        Some(Disabled::Flag(true)) => Some(String::new()),
        Some(Disabled::Reason(reason)) => {
            if let Err(e) = check_reason(&reason) {
                bad("disabled".into(), e);
            }
            Some(reason)
        }
    };

    if !problems.is_empty() {
        return Err(ConfigError::many(&file_name, problems));
    }
    Ok(Parsed {
        settings: SiteSettings {
            statics,
            force_https: raw.force_https.unwrap_or(false),
            hsts,
            password,
            disabled,
        },
        htpasswd,
    })
}

/// A URL prefix: a path that starts and ends with `/`, in plain characters, so it matches
/// whole path segments (`/static` would also match `/static-secrets`, and its files could be
/// reached as `/static../`, nginx's `alias` trap).
fn check_url_prefix(url: &str) -> Result<(), String> {
    if !url.starts_with('/') || !url.ends_with('/') {
        return Err(format!(
            "{url:?} must start and end with '/', like /static/"
        ));
    }
    let plain = |c: char| c.is_ascii_alphanumeric() || "/-._~".contains(c);
    if !url.chars().all(plain) {
        return Err(format!(
            "{url:?}: only letters, digits, '/', '-', '.', '_' and '~' (no escapes)"
        ));
    }
    if url
        .split('/')
        .any(|segment| segment == "." || segment == "..")
        || url.contains("//")
    {
        return Err(format!("{url:?}: no '.', '..' or empty segments"));
    }
    Ok(())
}

fn check_dir(dir: &str) -> Result<(), String> {
    let path = Path::new(dir);
    if !path.is_absolute() {
        return Err(format!("{dir:?} must be an absolute path"));
    }
    if path
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(format!("{dir:?} may not contain '.' or '..'"));
    }
    Ok(())
}

/// A reason names a page file (`disabled-REASON.html`), so it is a plain word.
fn check_reason(reason: &str) -> Result<(), String> {
    let plain = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    if reason.is_empty() || reason.len() > 32 || !reason.chars().all(plain) {
        return Err(format!(
            "{reason:?}: true, false, or a reason of 1 to 32 lowercase letters, digits and '-' (it picks the page disabled-REASON.html)"
        ));
    }
    Ok(())
}

/// The users of an htpasswd file. Its contents never appear in a message: the path could
/// name any file Herald can read.
fn read_htpasswd(file: &str) -> Result<HashMap<String, String>, String> {
    if !Path::new(file).is_absolute() {
        return Err(format!("{file:?} must be an absolute path"));
    }
    let meta = std::fs::metadata(file).map_err(|e| format!("cannot read {file:?}: {e}"))?;
    if !meta.is_file() || meta.len() > MAX_HTPASSWD_BYTES {
        return Err(format!("{file:?} is not an htpasswd file"));
    }
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read {file:?}: {e}"))?;
    let mut users = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (user, hash) = parse_user(line).map_err(|e| format!("{file:?} line {}: {e}", i + 1))?;
        users.insert(user, hash);
    }
    Ok(users)
}

/// `user:hash`, where the hash is bcrypt's (`htpasswd -B`).
fn parse_user(line: &str) -> Result<(String, String), String> {
    let Some((user, hash)) = line.split_once(':') else {
        return Err("expected user:hash".into());
    };
    if user.is_empty() || user.len() > 255 || user.chars().any(|c| c.is_control()) {
        return Err("the user name must be 1 to 255 printable characters".into());
    }
    let bcrypt = ["$2y$", "$2b$", "$2a$"]
        .iter()
        .any(|prefix| hash.starts_with(prefix));
    if !bcrypt || bcrypt::HashParts::from_str(hash).is_err() {
        return Err(format!(
            "the hash of user {user:?} is not a bcrypt hash ($2y$...); make it with htpasswd -B"
        ));
    }
    Ok((user.to_owned(), hash.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "$2y$05$Ud0E4bjYQIanMO3Mx3wXyeFgLpSgjhKP7b7sUJyP1OpYNd1vgGkfW";

    fn problems(text: &str) -> String {
        match parse(Path::new("/s/a.example.yaml"), text) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_full_file_is_understood() {
        let text = format!(
            "static:\n  - url: /static/\n    dir: /home/a/static\n  - url: /media/\n    dir: /home/a/media\nforce_https: true\nhsts: 365d\npassword:\n  realm: Staging\n  users: ['ann:{HASH}']\ndisabled: maintenance\n"
        );
        let parsed = parse(Path::new("/s/a.example.yaml"), &text).unwrap();
        let s = parsed.settings;
        assert_eq!(s.statics.len(), 2);
        assert_eq!(s.statics[1].dir, PathBuf::from("/home/a/media"));
        assert!(s.force_https);
        assert_eq!(s.hsts.unwrap().as_secs(), 365 * 86400);
        assert_eq!(s.password.unwrap().users["ann"], HASH);
        assert_eq!(s.disabled.as_deref(), Some("maintenance"));
        assert!(parsed.htpasswd.is_none());
        let empty = parse(Path::new("/s/b.yaml"), "").unwrap().settings;
        assert!(empty.statics.is_empty() && empty.password.is_none() && empty.disabled.is_none());
    }

    #[test]
    fn each_problem_names_the_file_and_field() {
        assert_eq!(
            problems("statics: []\n"),
            "/s/a.example.yaml: unknown field `statics`, expected one of `static`, `force_https`, `hsts`, `password`, `disabled`"
        );
        assert_eq!(
            problems("static:\n  - url: /static\n    dir: static\n"),
            "/s/a.example.yaml: static[0].url: \"/static\" must start and end with '/', like /static/\n/s/a.example.yaml: static[0].dir: \"static\" must be an absolute path"
        );
        assert!(problems("static:\n  - url: /a/../\n    dir: /x\n").contains("static[0].url"));
        assert!(problems("static:\n  - url: /%2e/\n    dir: /x\n").contains("no escapes"));
        assert!(problems("static:\n  - url: /a/\n    dir: /x/../etc\n").contains("static[0].dir"));
        assert!(
            problems("hsts: forever\n").starts_with("/s/a.example.yaml: hsts: invalid duration")
        );
        assert!(problems("disabled: \"../../etc/passwd\"\n").contains("disabled: "));
        assert!(problems("force_https: yes please\n").contains("force_https"));
        assert!(
            problems("password:\n  realm: x\n  users: ['ann:{SHA}abc']\n")
                .contains("password.users[0]: the hash of user \"ann\" is not a bcrypt hash")
        );
        assert!(problems("password:\n  realm: x\n  users: []\n").contains("no users"));
        assert!(problems(&format!(
            "password:\n  realm: 'a\"b'\n  users: ['a:{HASH}']\n"
        ))
        .contains("password.realm"));
        assert!(
            problems("password:\n  realm: x\n  users: relative/htpasswd\n")
                .contains("must be an absolute path")
        );
    }

    #[test]
    fn an_htpasswd_file_is_read_and_its_contents_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("htpasswd");
        std::fs::write(&file, format!("# staff\nann:{HASH}\n\nbob:{HASH}\n")).unwrap();
        let text = format!("password:\n  realm: x\n  users: {}\n", file.display());
        let parsed = parse(Path::new("/s/a.yaml"), &text).unwrap();
        assert_eq!(parsed.settings.password.unwrap().users.len(), 2);
        assert_eq!(parsed.htpasswd.as_deref(), Some(file.as_path()));
        std::fs::write(&file, "root:secret-from-another-file\n").unwrap();
        let message = problems(&text);
        assert!(message.contains("line 1"), "{message}");
        assert!(!message.contains("secret-from"), "{message}");
    }
}
