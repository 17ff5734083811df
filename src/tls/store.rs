//! The certificates on disk: every `NAME.crt` + `NAME.key` in `certs_dir`, and the default
//! pair. A full rescan stats every file and re-reads only the pairs whose files changed
//! (device, inode, size or modification time: a certbot-style symlink pointing somewhere new
//! counts); the watcher (`watch`) runs it rarely, and otherwise refreshes only the pairs whose
//! files it was told changed. A pair that fails to load keeps serving the certificate it last
//! loaded, so a pair caught half-written never drops its sites.

use super::certs::{load_pair, LoadedPair, PairPaths, PairProblem};
use super::resolver::{CertIndex, Entry};
use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What identifies one version of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl FileStamp {
    /// Follows symlinks: a link that now points at a renewed file is a change.
    fn of(path: &Path) -> Option<FileStamp> {
        let meta = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        })
    }
}

/// One pair's files, and what was made of them.
#[derive(Debug, Clone)]
struct PairState {
    paths: PairPaths,
    /// The files as they were when last read (`None` inside: missing); `None`: never read.
    read: Option<(Option<FileStamp>, Option<FileStamp>)>,
    /// The last version that loaded; kept while the files are being rewritten or are broken.
    good: Option<Arc<LoadedPair>>,
    /// Why the files, as last read, cannot be served.
    problem: Option<PairProblem>,
}

impl PairState {
    fn new(paths: PairPaths) -> Self {
        PairState {
            paths,
            read: None,
            good: None,
            problem: None,
        }
    }

    fn stamps(&self) -> (Option<FileStamp>, Option<FileStamp>) {
        (
            FileStamp::of(&self.paths.cert),
            FileStamp::of(&self.paths.key),
        )
    }

    /// Reads the pair again if its files changed since the last read.
    fn refresh(&mut self, needs_names: bool) -> Option<Event> {
        // Stamped before reading: a write that lands while we read changes the stamp again,
        // and the next rescan reads the finished file.
        let stamps = self.stamps();
        if self.read == Some(stamps) {
            return None;
        }
        self.read = Some(stamps);
        let loaded = load_pair(&self.paths).and_then(|pair| {
            if needs_names && pair.names.is_empty() {
                Err(PairProblem {
                    file: self.paths.cert.clone(),
                    reason: "the certificate carries no DNS name (subjectAltName); browsers ignore its common name".into(),
                })
            } else {
                Ok(pair)
            }
        });
        Some(match loaded {
            Ok(pair) => {
                let pair = Arc::new(pair);
                let replaced = self.good.replace(pair.clone()).is_some();
                self.problem = None;
                Event::Loaded {
                    cert: self.paths.cert.clone(),
                    pair,
                    replaced,
                }
            }
            Err(problem) => {
                self.problem = Some(problem.clone());
                Event::Failed {
                    problem,
                    keeps_previous: self.good.is_some(),
                }
            }
        })
    }
}

/// What a rescan did, for the log.
#[derive(Debug)]
pub enum Event {
    Loaded {
        cert: PathBuf,
        pair: Arc<LoadedPair>,
        replaced: bool,
    },
    Failed {
        problem: PairProblem,
        keeps_previous: bool,
    },
    Removed {
        cert: PathBuf,
    },
    DirUnreadable {
        dir: PathBuf,
        reason: String,
    },
    DirReadable {
        dir: PathBuf,
    },
}

impl Event {
    /// Whether it is a problem (logged as a warning) rather than news.
    pub fn is_problem(&self) -> bool {
        matches!(self, Event::Failed { .. } | Event::DirUnreadable { .. })
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Loaded {
                cert,
                pair,
                replaced,
            } => write!(
                f,
                "certificate {} {}: {}, expires {}",
                cert.display(),
                if *replaced { "reloaded" } else { "loaded" },
                if pair.names.is_empty() {
                    "no DNS names".to_owned()
                } else {
                    pair.names.join(" ")
                },
                pair.not_after_text
            ),
            Event::Failed {
                problem,
                keeps_previous,
            } => write!(
                f,
                "{problem}; {}",
                if *keeps_previous {
                    "still serving the certificate it last loaded"
                } else {
                    "the pair is skipped"
                }
            ),
            Event::Removed { cert } => write!(f, "certificate {} removed", cert.display()),
            Event::DirUnreadable { dir, reason } => write!(
                f,
                "cannot read certs_dir {}: {reason}; keeping the certificates already loaded",
                dir.display()
            ),
            Event::DirReadable { dir } => {
                write!(f, "certs_dir {} can be read again", dir.display())
            }
        }
    }
}

/// Counts for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Distinct pairs being served.
    pub loaded: usize,
    /// Pairs whose files, as last read, cannot be served.
    pub invalid: usize,
    /// The soonest notAfter among the pairs being served.
    pub soonest_expiry: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct CertStore {
    dir: Option<PathBuf>,
    default: Option<PairState>,
    /// By file name without `.crt`, so pairs are read and indexed in a stable order.
    pairs: BTreeMap<String, PairState>,
    dir_problem: Option<String>,
}

impl CertStore {
    /// Reads every pair. `Err` only when `dir` cannot be listed; a bad pair is in the events.
    pub fn load(
        dir: Option<&Path>,
        default: Option<PairPaths>,
    ) -> Result<(CertStore, Vec<Event>), String> {
        let mut store = CertStore {
            dir: dir.map(Path::to_owned),
            default: default.map(PairState::new),
            pairs: BTreeMap::new(),
            dir_problem: None,
        };
        let events = store.rescan();
        match store.dir_problem.take() {
            Some(problem) => Err(problem),
            None => Ok((store, events)),
        }
    }

    /// `certs_dir`, if there is one.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Brings the store up to date with the files; `events` is empty when nothing changed.
    pub fn rescan(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        if let Some(event) = self.default.as_mut().and_then(|d| d.refresh(false)) {
            events.push(event);
        }
        let Some(dir) = self.dir.clone() else {
            return events;
        };
        let stems = match list_pairs(&dir) {
            Ok(stems) => {
                if self.dir_problem.take().is_some() {
                    events.push(Event::DirReadable { dir: dir.clone() });
                }
                stems
            }
            Err(reason) => {
                if self.dir_problem.as_ref() != Some(&reason) {
                    self.dir_problem = Some(reason.clone());
                    events.push(Event::DirUnreadable { dir, reason });
                }
                return events;
            }
        };
        let listed: HashSet<&String> = stems.iter().collect();
        self.pairs.retain(|stem, state| {
            let kept = listed.contains(stem);
            if !kept {
                events.push(Event::Removed {
                    cert: state.paths.cert.clone(),
                });
            }
            kept
        });
        for stem in stems {
            let state = self.pairs.entry(stem).or_insert_with_key(|stem| {
                PairState::new(PairPaths {
                    cert: dir.join(format!("{stem}.crt")),
                    key: dir.join(format!("{stem}.key")),
                })
            });
            events.extend(state.refresh(true));
        }
        events
    }

    /// The pairs a change of these files of `certs_dir` concerns (`NAME.crt` or `NAME.key`:
    /// the pair `NAME`; hidden and other files concern none).
    pub fn stems_of<'a>(names: impl IntoIterator<Item = &'a OsStr>) -> HashSet<String> {
        names
            .into_iter()
            .filter_map(|name| {
                let name = name.to_str()?;
                let stem = name.strip_suffix(".crt").or(name.strip_suffix(".key"))?;
                (!stem.is_empty() && !stem.starts_with('.')).then(|| stem.to_owned())
            })
            .collect()
    }

    /// Brings these pairs up to date (their files changed, or a link they go through).
    pub fn refresh_stems(&mut self, stems: impl IntoIterator<Item = String>) -> Vec<Event> {
        let Some(dir) = self.dir.clone() else {
            return Vec::new();
        };
        let mut events = Vec::new();
        for stem in stems {
            let cert = dir.join(format!("{stem}.crt"));
            if std::fs::symlink_metadata(&cert).is_err() {
                if let Some(state) = self.pairs.remove(&stem) {
                    events.push(Event::Removed {
                        cert: state.paths.cert,
                    });
                }
                continue;
            }
            let state = self.pairs.entry(stem).or_insert_with_key(|stem| {
                PairState::new(PairPaths {
                    cert,
                    key: dir.join(format!("{stem}.key")),
                })
            });
            events.extend(state.refresh(true));
        }
        events
    }

    /// Brings the default pair up to date.
    pub fn refresh_default(&mut self) -> Vec<Event> {
        self.default
            .as_mut()
            .and_then(|d| d.refresh(false))
            .into_iter()
            .collect()
    }

    /// The directories whose changes can change a pair without any change in `certs_dir`: the
    /// default pair's, and those a symlinked pair's files lead through (certbot's `live/NAME`,
    /// say), each with the pairs it concerns (`None`: the default pair). `only`: of these pairs
    /// alone (the default pair left out), rather than of all.
    pub fn linked_dirs(
        &self,
        only: Option<&HashSet<String>>,
    ) -> BTreeMap<PathBuf, HashSet<Option<String>>> {
        let mut dirs: BTreeMap<PathBuf, HashSet<Option<String>>> = BTreeMap::new();
        let some_pairs: Vec<(Option<&String>, &PairState)> = match only {
            Some(stems) => stems
                .iter()
                .filter_map(|stem| self.pairs.get_key_value(stem))
                .map(|(stem, state)| (Some(stem), state))
                .collect(),
            None => self
                .default
                .iter()
                .map(|state| (None, state))
                .chain(self.pairs.iter().map(|(stem, state)| (Some(stem), state)))
                .collect(),
        };
        let certs_dir = self.dir.as_deref().map(canonical);
        for (stem, state) in some_pairs {
            for file in [&state.paths.cert, &state.paths.key] {
                let is_default = stem.is_none();
                for dir in link_dirs(file, is_default) {
                    if Some(&dir) != certs_dir.as_ref() {
                        dirs.entry(dir).or_default().insert(stem.cloned());
                    }
                }
            }
        }
        dirs
    }

    /// Whether `state` is the default pair itself, found again in `certs_dir`.
    fn is_default(&self, state: &PairState) -> bool {
        let file = |state: &PairState| state.read.and_then(|(cert, _)| cert);
        match (self.default.as_ref().and_then(file), file(state)) {
            (Some(default), Some(cert)) => default.dev == cert.dev && default.ino == cert.ino,
            _ => false,
        }
    }

    fn default_pair(&self) -> Option<&LoadedPair> {
        self.default.as_ref().and_then(|d| d.good.as_deref())
    }

    /// The pairs of `certs_dir` being served, apart from the default pair.
    fn dir_pairs(&self) -> impl Iterator<Item = &PairState> {
        self.pairs.values().filter(|state| !self.is_default(state))
    }

    /// Every pair being served (the default first), with its certificate file.
    pub fn served(&self) -> impl Iterator<Item = (&Path, &LoadedPair)> {
        self.default
            .iter()
            .chain(self.dir_pairs())
            .filter_map(|state| Some((state.paths.cert.as_path(), state.good.as_deref()?)))
    }

    /// What the resolver serves from now on.
    pub fn index(&self) -> CertIndex {
        CertIndex::build(
            self.default_pair().map(Entry::from),
            self.dir_pairs()
                .filter_map(|state| state.good.as_deref())
                .map(Entry::from),
        )
    }

    /// The `n` pairs served that expire first: their first name and notAfter.
    pub fn soonest(&self, n: usize) -> Vec<(String, i64)> {
        let mut pairs: Vec<(String, i64)> = self
            .served()
            .map(|(_, pair)| {
                (
                    pair.names.first().cloned().unwrap_or_default(),
                    pair.not_after,
                )
            })
            .collect();
        pairs.sort_by_key(|(name, not_after)| (*not_after, name.clone()));
        pairs.truncate(n);
        pairs
    }

    pub fn summary(&self) -> Summary {
        Summary {
            loaded: self.served().count(),
            invalid: self
                .default
                .iter()
                .chain(self.dir_pairs())
                .filter(|state| state.problem.is_some())
                .count(),
            soonest_expiry: self.served().map(|(_, pair)| pair.not_after).min(),
        }
    }
}

/// The directories `file` resolves through: its own (when `own`), then each symlink's target's,
/// at most 8 links deep; each by its canonical name, so one directory is watched once.
fn link_dirs(file: &Path, own: bool) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let mut path = file.to_owned();
    if own {
        dirs.extend(path.parent().map(canonical));
    }
    for _ in 0..8 {
        let Ok(target) = std::fs::read_link(&path) else {
            break;
        };
        let target = match path.parent() {
            Some(parent) if target.is_relative() => parent.join(target),
            _ => target,
        };
        dirs.extend(target.parent().map(canonical));
        path = target;
    }
    dirs
}

fn canonical(dir: &Path) -> PathBuf {
    dir.canonicalize().unwrap_or_else(|_| dir.to_owned())
}

/// The names of the `.crt` files in `dir`, without `.crt`. Hidden files (editor and
/// temporary files) are left out; `NAME.key` is looked for when the pair is read.
fn list_pairs(dir: &Path) -> Result<Vec<String>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| e.to_string())?;
    let mut stems = Vec::new();
    for entry in entries {
        let name = entry.map_err(|e| e.to_string())?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(stem) = name.strip_suffix(".crt") {
            if !stem.is_empty() && !stem.starts_with('.') {
                stems.push(stem.to_owned());
            }
        }
    }
    stems.sort();
    Ok(stems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_names_the_pair_it_belongs_to() {
        let names = [
            "shop.crt",
            "shop.key",
            ".shop.crt.tmp",
            ".x.key",
            "README",
            ".crt",
            "b.key",
        ];
        let stems = CertStore::stems_of(names.iter().map(OsStr::new));
        let expected: HashSet<String> = ["shop".to_owned(), "b".to_owned()].into();
        assert_eq!(stems, expected);
    }

    #[test]
    fn links_are_followed_to_every_directory_they_pass() {
        let root = tempfile::tempdir().unwrap();
        let (certs, live, archive) = (
            root.path().join("certs"),
            root.path().join("live"),
            root.path().join("archive"),
        );
        for dir in [&certs, &live, &archive] {
            std::fs::create_dir(dir).unwrap();
        }
        std::fs::write(archive.join("cert1.pem"), "").unwrap();
        // Relative, as certbot writes them.
        std::os::unix::fs::symlink("../archive/cert1.pem", live.join("cert.pem")).unwrap();
        std::os::unix::fs::symlink(live.join("cert.pem"), certs.join("a.crt")).unwrap();
        assert_eq!(
            link_dirs(&certs.join("a.crt"), false),
            vec![
                live.canonicalize().unwrap(),
                archive.canonicalize().unwrap()
            ]
        );
        assert_eq!(
            link_dirs(&archive.join("cert1.pem"), true),
            vec![archive.canonicalize().unwrap()]
        );
        // A loop ends.
        std::os::unix::fs::symlink(certs.join("loop"), certs.join("loop")).unwrap();
        assert_eq!(link_dirs(&certs.join("loop"), false).len(), 8);
    }
}
