//! The sites this backend knows, and where each one's app listens.

use crate::config::SocketTemplate;
use std::path::PathBuf;

pub struct Sites {
    sites_dir: PathBuf,
    socket_path: SocketTemplate,
}

impl Sites {
    pub fn new(sites_dir: PathBuf, socket_path: SocketTemplate) -> Self {
        Sites {
            sites_dir,
            socket_path,
        }
    }

    /// A site is known when its vassal file is in `sites_dir` ("sites available").
    /// `site` must come from `host::parse_site`, which keeps it a plain file name.
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

    #[test]
    fn paths_stay_inside_their_directories() {
        let template_dir = tempfile::tempdir().unwrap();
        let yaml = format!(
            "backend:\n  listen: ['127.0.0.1:1']\n  sites_dir: {0}\n  vassals_dir: {0}\n  socket_path: {0}/{{host}}.sock\n",
            template_dir.path().display()
        );
        let config = crate::config::parse_for_tests(&yaml).backend.unwrap();
        let sites = Sites::new(config.sites_dir.clone(), config.socket_path.clone());
        for raw in ["a.example", "A.Example.:81", "x--y.z"] {
            let site = parse_site(raw.as_bytes(), false).unwrap();
            let vassal = sites.vassal_file(&site);
            assert_eq!(vassal.parent().unwrap(), template_dir.path());
            let socket = PathBuf::from(sites.socket_path(&site));
            assert_eq!(socket.parent().unwrap(), template_dir.path());
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
                "backend:\n  listen: ['127.0.0.1:1']\n  sites_dir: {}\n  vassals_dir: {0}\n  socket_path: {}/{{host}}.sock\n",
                sites_dir.path().display(),
                sockets_dir.path().display()
            );
            let config = crate::config::parse_for_tests(&yaml).backend.unwrap();
            let sites = Sites::new(config.sites_dir.clone(), config.socket_path.clone());
            (sites_dir, sockets_dir, sites)
        });
        (sites_dir.path(), sockets_dir.path(), sites)
    }
}
