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
}
