//! Per-site settings: `sites_dir/<site>.yaml`, written by the operator's control plane next to
//! the site's vassal file (see `file` for the keys). A site's file is looked at (one `stat`) at
//! most once a second, when the site has a request, and read again only when it, or the
//! htpasswd file it names, changed: a change takes effect within a second, at a cost that
//! grows with the requests, not with the sites. A file that does not parse leaves the site's
//! last good settings in force; a site that never had good ones gets the 503 page, since
//! serving it without its password, say, would be worse. Either way it is logged once per
//! version of the file, and counted.

pub mod file;

use crate::backend::static_files::Mapping;
use dashmap::DashMap;
use log::warn;
use once_cell::sync::Lazy;
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a site's settings are used before its file is looked at again.
const RECHECK: Duration = Duration::from_secs(1);

/// What a site's owner chose; all off for a site without a settings file.
#[derive(Debug, Default)]
pub struct SiteSettings {
    /// URL prefixes served from directories (`static`), without the app.
    pub statics: Vec<Mapping>,
    /// Plain-HTTP requests are redirected to https.
    pub force_https: bool,
    /// `Strict-Transport-Security: max-age` on HTTPS answers.
    pub hsts: Option<Duration>,
    pub password: Option<Password>,
    /// `Some(reason)` (empty: none given): 503 with the operator's page, no app start.
    pub disabled: Option<String>,
}

/// HTTP basic authentication in front of the whole site.
#[derive(Debug)]
pub struct Password {
    pub realm: String,
    /// User name to bcrypt hash.
    pub users: HashMap<String, String>,
}

/// The site's settings file cannot be used and there are no earlier good settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Broken;

static NO_SETTINGS: Lazy<Arc<SiteSettings>> = Lazy::new(|| Arc::new(SiteSettings::default()));

/// What identifies one version of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl Stamp {
    fn of(path: &Path) -> Option<Stamp> {
        let meta = std::fs::metadata(path).ok()?;
        Some(Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        })
    }
}

/// The versions of the files a site's settings were made from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Versions {
    settings: Option<Stamp>,
    htpasswd: Option<Stamp>,
}

#[derive(Clone)]
struct Entry {
    checked: Instant,
    versions: Versions,
    htpasswd: Option<PathBuf>,
    /// The settings in force: the file's, or the last good ones while it is broken.
    good: Option<Arc<SiteSettings>>,
}

pub struct SettingsStore {
    sites_dir: PathBuf,
    entries: DashMap<String, Entry>,
}

impl SettingsStore {
    pub fn new(sites_dir: PathBuf) -> SettingsStore {
        SettingsStore {
            sites_dir,
            entries: DashMap::new(),
        }
    }

    /// The file of `site`, a name from `host::parse_site` (a plain file name).
    pub fn file_of(&self, site: &str) -> PathBuf {
        self.sites_dir.join(format!("{site}.yaml"))
    }

    /// The settings in force for `site`.
    pub fn get(&self, site: &str) -> Result<Arc<SiteSettings>, Broken> {
        let now = Instant::now();
        // The common case, checked within the last second: one Arc cloned under the shard's
        // read lock, nothing else (the whole entry holds the htpasswd path).
        if let Some(entry) = self.entries.get(site) {
            if now.duration_since(entry.checked) < RECHECK {
                return entry.good.clone().ok_or(Broken);
            }
        }
        let known = self.entries.get(site).map(|entry| entry.clone());
        let path = self.file_of(site);
        let htpasswd = known.as_ref().and_then(|entry| entry.htpasswd.clone());
        let versions = Versions {
            settings: Stamp::of(&path),
            htpasswd: htpasswd.as_deref().and_then(Stamp::of),
        };
        let entry = match known {
            Some(entry) if entry.versions == versions => Entry {
                checked: now,
                ..entry
            },
            known => self.read(site, &path, versions, known.and_then(|e| e.good), now),
        };
        let good = entry.good.clone();
        self.entries.insert(site.to_owned(), entry);
        good.ok_or(Broken)
    }

    /// Reads the settings of `site` anew; `previous`: the settings in force until now.
    fn read(
        &self,
        site: &str,
        path: &Path,
        versions: Versions,
        previous: Option<Arc<SiteSettings>>,
        now: Instant,
    ) -> Entry {
        if versions.settings.is_none() {
            return Entry {
                checked: now,
                versions,
                htpasswd: None,
                good: Some(NO_SETTINGS.clone()),
            };
        }
        let parsed = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))
            .and_then(|text| file::parse(path, &text).map_err(|e| e.to_string()));
        match parsed {
            Ok(parsed) => Entry {
                checked: now,
                // The htpasswd file as it was read (it may be new to this version).
                versions: Versions {
                    settings: versions.settings,
                    htpasswd: parsed.htpasswd.as_deref().and_then(Stamp::of),
                },
                htpasswd: parsed.htpasswd,
                good: Some(Arc::new(parsed.settings)),
            },
            Err(problem) => {
                crate::metrics::site_settings_error();
                let outcome = if previous.is_some() {
                    "the site keeps its last good settings"
                } else {
                    "the site answers 503 until it is fixed"
                };
                let problem = crate::logging::printable(&problem);
                warn!("site {site}: bad settings: {problem}; {outcome}");
                crate::site_logs::error(site, &format!("bad settings: {problem}; {outcome}"));
                Entry {
                    checked: now,
                    versions,
                    htpasswd: None,
                    good: previous,
                }
            }
        }
    }

    /// Forgets the settings of the sites `keep` rejects (read again at their next request).
    pub fn forget_unless(&self, keep: impl Fn(&str) -> bool) {
        self.entries.retain(|site, _| keep(site));
    }
}

/// Every site's settings file in `sites_dir` checked, for `herald -t`: one line per problem,
/// `FILE: FIELD: message`.
pub fn check_all(sites_dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(sites_dir) else {
        return Vec::new(); // -t has said the directory is unusable
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    let mut problems = Vec::new();
    for path in files {
        let checked = std::fs::read_to_string(&path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))
            .and_then(|text| file::parse(&path, &text).map_err(|e| e.to_string()));
        if let Err(problem) = checked {
            problems.extend(problem.lines().map(str::to_owned));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "$2y$05$Ud0E4bjYQIanMO3Mx3wXyeFgLpSgjhKP7b7sUJyP1OpYNd1vgGkfW";

    /// Makes the next `get` look at the files again.
    fn expire(store: &SettingsStore, site: &str) {
        if let Some(mut entry) = store.entries.get_mut(site) {
            entry.checked -= RECHECK;
        }
    }

    #[test]
    fn settings_follow_their_file_and_survive_a_bad_version() {
        let dir = tempfile::tempdir().unwrap();
        let store = SettingsStore::new(dir.path().to_owned());
        let file = store.file_of("a.example");
        assert!(
            !store.get("a.example").unwrap().force_https,
            "no file: all off"
        );
        std::fs::write(&file, "force_https: true\n").unwrap();
        assert!(
            !store.get("a.example").unwrap().force_https,
            "looked at once a second at most"
        );
        expire(&store, "a.example");
        assert!(store.get("a.example").unwrap().force_https);
        std::fs::write(&file, "force_https: maybe\n").unwrap();
        expire(&store, "a.example");
        assert!(
            store.get("a.example").unwrap().force_https,
            "a bad version keeps the last good settings"
        );
        std::fs::write(&file, "static: nope\n").unwrap();
        let fresh = SettingsStore::new(dir.path().to_owned());
        assert_eq!(
            fresh.get("a.example").unwrap_err(),
            Broken,
            "never good: broken"
        );
        assert!(
            !fresh.get("b.example").unwrap().force_https,
            "the others are unaffected"
        );
        std::fs::remove_file(&file).unwrap();
        expire(&store, "a.example");
        assert!(
            !store.get("a.example").unwrap().force_https,
            "removed: all off"
        );
    }

    #[test]
    fn a_changed_htpasswd_file_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = SettingsStore::new(dir.path().to_owned());
        let htpasswd = dir.path().join("a.htpasswd");
        std::fs::write(&htpasswd, format!("ann:{HASH}\n")).unwrap();
        std::fs::write(
            store.file_of("a.example"),
            format!("password:\n  realm: x\n  users: {}\n", htpasswd.display()),
        )
        .unwrap();
        let users = |store: &SettingsStore| {
            let settings = store.get("a.example").unwrap();
            let mut users: Vec<String> = settings
                .password
                .as_ref()
                .unwrap()
                .users
                .keys()
                .cloned()
                .collect();
            users.sort();
            users
        };
        assert_eq!(users(&store), ["ann"]);
        std::fs::write(&htpasswd, format!("ann:{HASH}\nbob:{HASH}\n")).unwrap();
        expire(&store, "a.example");
        assert_eq!(users(&store), ["ann", "bob"]);
    }

    #[test]
    fn herald_t_lists_every_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.example.yaml"), "force_https: true\n").unwrap();
        std::fs::write(dir.path().join("b.example.yaml"), "nope: 1\n").unwrap();
        std::fs::write(dir.path().join("c.example.yaml"), "hsts: soon\n").unwrap();
        std::fs::write(dir.path().join("c.example.ini"), "[uwsgi]\n").unwrap();
        let problems = check_all(dir.path());
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("b.example.yaml: unknown field `nope`"));
        assert!(problems[1].contains("c.example.yaml: hsts: invalid duration"));
    }
}
