//! The sites this backend knows, where each one's app listens, which protocol it speaks, and
//! who owns it: the user its app must run as, which the socket's peer credentials must show.

use super::vassal;
use crate::config::{AppProtocol, SocketTemplate};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::RwLock;

pub struct Sites {
    sites_dir: PathBuf,
    socket_path: SocketTemplate,
    default_protocol: AppProtocol,
    /// What each vassal file said, and which version of the file said it.
    declared: RwLock<HashMap<String, Declared>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct FileVersion {
    modified: i64,
    modified_nsec: i64,
    inode: u64,
    len: u64,
    /// A `chown` changes no mtime.
    uid: u32,
}

#[derive(Clone)]
struct Declared {
    version: FileVersion,
    protocol: Option<AppProtocol>,
    owner: Result<u32, String>,
}

/// A known site, as its vassal file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    pub protocol: AppProtocol,
    /// The uid its app runs as: the vassal's `uid` option, else the vassal file's owner. `Err`:
    /// the vassal names a user this machine does not know.
    pub owner: Result<u32, String>,
}

impl Sites {
    pub fn new(
        sites_dir: PathBuf,
        socket_path: SocketTemplate,
        default_protocol: AppProtocol,
    ) -> Self {
        Sites {
            sites_dir,
            socket_path,
            default_protocol,
            declared: RwLock::new(HashMap::new()),
        }
    }

    /// A site is known when its vassal file is in `sites_dir` ("sites available"); then the
    /// protocol its app speaks (what its vassal file says, or `backend.app_protocol`) and its
    /// owner. The file is read again only when it changes. `site` must come from
    /// `host::parse_site`, which keeps it a plain file name.
    pub fn lookup(&self, site: &str) -> Option<Site> {
        let path = self.vassal_file(site);
        let Some(meta) = std::fs::metadata(&path).ok().filter(|m| m.is_file()) else {
            // Gone (or never there): nothing of it is kept.
            if self
                .declared
                .read()
                .expect("never poisoned")
                .contains_key(site)
            {
                self.declared.write().expect("never poisoned").remove(site);
            }
            return None;
        };
        let version = FileVersion {
            modified: meta.mtime(),
            modified_nsec: meta.mtime_nsec(),
            inode: meta.ino(),
            len: meta.len(),
            uid: meta.uid(),
        };
        let cached = self
            .declared
            .read()
            .expect("never poisoned")
            .get(site)
            .filter(|declared| declared.version == version)
            .cloned();
        let declared = cached.unwrap_or_else(|| {
            // Unreadable now (being replaced, say): the default, and another look next time.
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let declared = Declared {
                version,
                protocol: vassal::declared_protocol(&text, site, &self.socket_path.path_for(site)),
                owner: vassal::declared_uid(&text).map(|uid| uid.unwrap_or(meta.uid())),
            };
            if let Err(why) = &declared.owner {
                log::warn!(
                    "site {site}: {why} ({path:?}); its requests get 502 until the vassal names a user this machine knows"
                );
            }
            self.declared
                .write()
                .expect("never poisoned")
                .insert(site.to_owned(), declared.clone());
            declared
        });
        Some(Site {
            protocol: declared.protocol.unwrap_or(self.default_protocol),
            owner: declared.owner,
        })
    }

    /// Forgets what the vassal files of the sites `keep` rejects said (they are read again
    /// at their next request).
    pub fn forget_unless(&self, keep: impl Fn(&str) -> bool) {
        self.declared
            .write()
            .expect("never poisoned")
            .retain(|site, _| keep(site));
    }

    pub fn is_known(&self, site: &str) -> bool {
        self.vassal_file(site).is_file()
    }

    pub fn vassal_file(&self, site: &str) -> PathBuf {
        self.sites_dir.join(format!("{site}.ini"))
    }

    pub fn socket_path(&self, site: &str) -> String {
        self.socket_path.path_for(site)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::parse_site;

    /// Sites in `dir` (vassals and sockets in directories of their own inside it).
    fn sites_in(dir: &std::path::Path) -> Sites {
        for sub in ["vassals", "sockets"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let yaml = format!(
            "backend:\n  listen: ['127.0.0.1:1']\n  sites_dir: {0}\n  vassals_dir: {0}/vassals\n  socket_path: {0}/sockets/{{host}}.sock\n",
            dir.display()
        );
        let config = crate::config::parse_for_tests(&yaml).backend.unwrap();
        Sites::new(
            config.sites_dir.clone(),
            config.socket_path.clone(),
            AppProtocol::Uwsgi,
        )
    }

    #[test]
    fn what_a_site_said_is_kept_while_it_is_there_and_wanted() {
        let dir = tempfile::tempdir().unwrap();
        let sites = sites_in(dir.path());
        let remembered = |sites: &Sites| {
            let mut names: Vec<String> = sites.declared.read().unwrap().keys().cloned().collect();
            names.sort();
            names
        };
        for name in ["a.example", "b.example", "c.example"] {
            std::fs::write(dir.path().join(format!("{name}.ini")), "[uwsgi]\n").unwrap();
            assert!(sites.lookup(name).is_some());
        }
        std::fs::remove_file(dir.path().join("a.example.ini")).unwrap();
        assert_eq!(sites.lookup("a.example"), None);
        assert_eq!(remembered(&sites), ["b.example", "c.example"]);
        sites.forget_unless(|site| site == "c.example");
        assert_eq!(remembered(&sites), ["c.example"]);
        assert!(sites.lookup("b.example").is_some(), "read again when asked");
    }

    #[test]
    fn a_site_speaks_what_its_vassal_says_even_after_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let sites = sites_in(dir.path());
        assert_eq!(sites.lookup("a.example"), None);
        let ini = dir.path().join("a.example.ini");
        let protocol = |sites: &Sites| sites.lookup("a.example").map(|s| s.protocol);
        std::fs::write(&ini, "[uwsgi]\nhttp-socket = x\n").unwrap();
        assert_eq!(protocol(&sites), Some(AppProtocol::Http));
        std::fs::write(&ini, "[uwsgi]\nsocket = the new one\n").unwrap();
        assert_eq!(protocol(&sites), Some(AppProtocol::Uwsgi));
        std::fs::write(&ini, "[uwsgi]\nplugins = python3\n").unwrap();
        assert_eq!(
            protocol(&sites),
            Some(AppProtocol::Uwsgi),
            "unsaid: the default"
        );
        // The owner: the vassal file's, unless it says `uid`.
        let file_owner = std::fs::metadata(&ini).unwrap().uid();
        assert_eq!(sites.lookup("a.example").unwrap().owner, Ok(file_owner));
        std::fs::write(&ini, "[uwsgi]\nuid = 4321\n").unwrap();
        assert_eq!(sites.lookup("a.example").unwrap().owner, Ok(4321));
        std::fs::remove_file(&ini).unwrap();
        assert_eq!(sites.lookup("a.example"), None);
    }

    #[test]
    fn paths_stay_inside_their_directories() {
        let template_dir = tempfile::tempdir().unwrap();
        let sites = sites_in(template_dir.path());
        for raw in ["a.example", "A.Example.:81", "x--y.z"] {
            let site = parse_site(raw.as_bytes(), false).unwrap();
            let vassal = sites.vassal_file(&site);
            assert_eq!(vassal.parent().unwrap(), template_dir.path());
            let socket = PathBuf::from(sites.socket_path(&site));
            assert_eq!(
                socket.parent().unwrap(),
                template_dir.path().join("sockets")
            );
            assert_eq!(
                socket.file_name().unwrap().to_str().unwrap(),
                format!("{site}.sock")
            );
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Whatever a client puts in Host, an accepted site's vassal file and socket are in
        /// their directories (compared canonically, with the directories on disk).
        #[test]
        fn no_accepted_name_leaves_its_directory(
            raw in "[a-zA-Z0-9.:\\-\\[\\]_/%\\\\ ]{0,80}|\\PC{0,40}",
            allow_ip in proptest::prelude::any::<bool>(),
        ) {
            let (sites_dir, sockets_dir, sites) = fixture();
            if let Ok(site) = parse_site(raw.as_bytes(), allow_ip) {
                let vassal = sites.vassal_file(&site);
                let socket = PathBuf::from(sites.socket_path(&site));
                for (path, dir, name) in [
                    (&vassal, sites_dir, format!("{site}.ini")),
                    (&socket, sockets_dir, format!("{site}.sock")),
                ] {
                    let parent = path.parent().unwrap().canonicalize().unwrap();
                    proptest::prop_assert_eq!(&parent, &dir.canonicalize().unwrap(), "{:?}", raw);
                    proptest::prop_assert_eq!(path.file_name().unwrap().to_str(), Some(name.as_str()));
                }
            }
        }
    }

    /// One sites directory and one socket directory for every case.
    fn fixture() -> (
        &'static std::path::Path,
        &'static std::path::Path,
        &'static Sites,
    ) {
        static FIXTURE: std::sync::OnceLock<(tempfile::TempDir, tempfile::TempDir, Sites)> =
            std::sync::OnceLock::new();
        let (sites_dir, sockets_dir, sites) = FIXTURE.get_or_init(|| {
            let (sites_dir, sockets_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let yaml = format!(
                "backend:\n  listen: ['127.0.0.1:1']\n  sites_dir: {}\n  vassals_dir: {}\n  socket_path: {}/{{host}}.sock\n",
                sites_dir.path().display(),
                std::env::temp_dir().display(),
                sockets_dir.path().display()
            );
            let config = crate::config::parse_for_tests(&yaml).backend.unwrap();
            let sites = Sites::new(config.sites_dir.clone(), config.socket_path.clone(), AppProtocol::Uwsgi);
            (sites_dir, sockets_dir, sites)
        });
        (sites_dir.path(), sockets_dir.path(), sites)
    }
}
