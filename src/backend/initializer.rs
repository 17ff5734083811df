//! Enabling and disabling a site's app: `local` copies its vassal into the uWSGI emperor's
//! directory (and removes it to stop), `http` asks the operator's control plane.

use crate::config::{HttpEndpoint, InitializerConfig, SocketTemplate};
use bytes::Bytes;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora_core::connectors::http::Connector;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Why an app could not be enabled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitError {
    /// The site's configuration is wrong; starting it again will not help (502).
    Misconfigured(String),
    /// The initializer failed or refused (503).
    Failed(String),
}

pub struct Initializer {
    kind: Kind,
    sites_dir: PathBuf,
    vassals_dir: PathBuf,
    socket_path: SocketTemplate,
}

enum Kind {
    Local,
    Http(Box<ControlPlane>),
}

struct ControlPlane {
    start: HttpEndpoint,
    stop: Option<HttpEndpoint>,
    timeout: Duration,
    connector: Connector,
}

/// How much of a control plane's answer goes into the log.
const MAX_LOGGED_ANSWER: usize = 512;

impl Initializer {
    pub fn new(
        config: &InitializerConfig,
        sites_dir: &Path,
        vassals_dir: &Path,
        socket_path: &SocketTemplate,
    ) -> Self {
        let kind = match config {
            InitializerConfig::Local => Kind::Local,
            InitializerConfig::Http(http) => Kind::Http(Box::new(ControlPlane {
                start: http.start.clone(),
                stop: http.stop.clone(),
                timeout: http.timeout,
                connector: Connector::new(None),
            })),
        };
        Initializer {
            kind,
            sites_dir: sites_dir.to_owned(),
            vassals_dir: vassals_dir.to_owned(),
            socket_path: socket_path.clone(),
        }
    }

    /// The vassal the emperor runs for `site`, whoever wrote it.
    pub fn enabled_vassal(&self, site: &str) -> PathBuf {
        self.vassals_dir.join(format!("{site}.ini"))
    }

    /// Whether idle apps can be stopped at all (`http` needs a `stop_url`).
    pub fn can_stop(&self) -> bool {
        match &self.kind {
            Kind::Local => true,
            Kind::Http(control) => control.stop.is_some(),
        }
    }

    pub async fn enable(&self, site: &str) -> Result<(), InitError> {
        match &self.kind {
            Kind::Local => self.copy_vassal(site).await,
            Kind::Http(control) => control
                .call(&control.start, site)
                .await
                .map_err(InitError::Failed),
        }
    }

    pub async fn disable(&self, site: &str) -> Result<(), String> {
        match &self.kind {
            Kind::Local => match tokio::fs::remove_file(self.enabled_vassal(site)).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(format!(
                    "cannot remove {:?}: {e}",
                    self.enabled_vassal(site)
                )),
                _ => Ok(()),
            },
            Kind::Http(control) => match &control.stop {
                Some(stop) => control.call(stop, site).await,
                None => Ok(()),
            },
        }
    }

    /// Copies `sites_dir/<site>.ini` into the emperor's directory in one rename, so the
    /// emperor never reads half a file, after checking that the app will listen where
    /// Herald connects. The copy is made under a new temporary name (`O_EXCL`: a file or
    /// symlink already there is never opened, let alone followed) with the source's mode but
    /// never wider than 0640: a vassal says who its app runs as, and only the emperor and
    /// Herald have any business reading it.
    async fn copy_vassal(&self, site: &str) -> Result<(), InitError> {
        let source = self.sites_dir.join(format!("{site}.ini"));
        let read = async {
            let mode = tokio::fs::metadata(&source).await?.permissions().mode();
            Ok::<_, std::io::Error>((tokio::fs::read_to_string(&source).await?, mode))
        };
        let (text, mode) = read
            .await
            .map_err(|e| InitError::Misconfigured(format!("cannot read {source:?}: {e}")))?;
        let expected = self.socket_path.path_for(site);
        super::vassal::check_socket(&text, site, &expected)
            .map_err(|why| InitError::Misconfigured(format!("{source:?}: {why}")))?;
        let target = self.enabled_vassal(site);
        let (temporary, written) = self.write_new(site, text.as_bytes(), mode & 0o640).await;
        let renamed = match written {
            Ok(()) => tokio::fs::rename(&temporary, &target).await,
            Err(e) => Err(e),
        };
        renamed.map_err(|e| {
            let _ = std::fs::remove_file(&temporary);
            InitError::Failed(format!("cannot write {target:?}: {e}"))
        })
    }

    /// Writes `text` to a temporary file of the emperor's directory that did not exist before
    /// (not `*.ini`, so the emperor ignores it until the rename); its path and the outcome.
    async fn write_new(
        &self,
        site: &str,
        text: &[u8],
        mode: u32,
    ) -> (PathBuf, std::io::Result<()>) {
        let mut last = None;
        for attempt in 0..8 {
            let temporary = self.vassals_dir.join(format!(
                ".{site}.ini.herald-tmp{}",
                if attempt == 0 {
                    String::new()
                } else {
                    format!(".{attempt}")
                }
            ));
            let created = tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&temporary)
                .await;
            match created {
                Ok(mut file) => {
                    let written = async {
                        file.write_all(text).await?;
                        file.flush().await
                    }
                    .await;
                    return (temporary, written);
                }
                // Something is already there: another name, never that file.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    last = Some((temporary, e))
                }
                Err(e) => return (temporary, Err(e)),
            }
        }
        let (temporary, e) = last.expect("at least one attempt");
        // Not ours to remove: give back a path nothing will be done to.
        (
            self.vassals_dir
                .join(format!(".{site}.ini.herald-tmp.none")),
            Err(std::io::Error::new(
                e.kind(),
                format!("{temporary:?} and 7 other temporary names are taken"),
            )),
        )
    }
}

impl ControlPlane {
    /// POSTs the site to `endpoint`; anything but a 2xx answer is an error that quotes it.
    async fn call(&self, endpoint: &HttpEndpoint, site: &str) -> Result<(), String> {
        match post_site(&self.connector, endpoint, site, self.timeout).await {
            Ok((status, _)) if (200..300).contains(&status) => Ok(()),
            Ok((status, answer)) => Err(format!(
                "control plane {} answered {status}: {answer}",
                endpoint.url
            )),
            Err(e) => Err(format!("control plane {}: {e}", endpoint.url)),
        }
    }
}

/// POSTs `{"host": "<site>"}`; returns the status and the start of the answer.
async fn post_site(
    connector: &Connector,
    endpoint: &HttpEndpoint,
    site: &str,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let exchange = async {
        let mut peer = HttpPeer::new(endpoint.addr, false, String::new());
        peer.options.connection_timeout = Some(timeout);
        peer.options.read_timeout = Some(timeout);
        peer.options.write_timeout = Some(timeout);
        let (mut session, _) = connector.get_http_session(&peer).await?;
        // Site names are [a-z0-9.-] only (host::parse_site), so they need no JSON escaping.
        let body = Bytes::from(format!("{{\"host\": \"{site}\"}}"));
        let mut req = RequestHeader::build("POST", endpoint.path.as_bytes(), None)?;
        req.insert_header(http::header::HOST, &endpoint.authority)?;
        req.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        req.insert_header(http::header::CONTENT_LENGTH, body.len())?;
        req.insert_header(http::header::CONNECTION, "close")?;
        session.write_request_header(Box::new(req)).await?;
        session.write_request_body(body, true).await?;
        session.finish_request_body().await?;
        session.read_response_header().await?;
        let status = session.response_header().map_or(0, |r| r.status.as_u16());
        let mut answer = Vec::new();
        while answer.len() < MAX_LOGGED_ANSWER {
            match session.read_response_body().await? {
                Some(chunk) => answer.extend_from_slice(&chunk),
                None => break,
            }
        }
        answer.truncate(MAX_LOGGED_ANSWER);
        Ok::<_, Box<Error>>((status, String::from_utf8_lossy(&answer).trim().to_owned()))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn a_vassal_is_written_under_a_name_nobody_planted_and_never_wider_than_0640() {
        let sites = tempfile::tempdir().unwrap();
        let vassals = tempfile::tempdir().unwrap();
        let sockets = tempfile::tempdir().unwrap();
        let yaml = format!(
            "backend:\n  listen: ['127.0.0.1:1']\n  sites_dir: {}\n  vassals_dir: {}\n  socket_path: {}/{{host}}.sock\n",
            sites.path().display(),
            vassals.path().display(),
            sockets.path().display()
        );
        let config = crate::config::parse_for_tests(&yaml).backend.unwrap();
        let initializer = Initializer::new(
            &config.starts.initializer,
            &config.sites_dir,
            &config.vassals_dir,
            &config.socket_path,
        );
        let source = sites.path().join("a.example.ini");
        std::fs::write(
            &source,
            format!(
                "[uwsgi]\nsocket = {}/%n.sock\nuid = 1234\n",
                sockets.path().display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&source, std::fs::Permissions::from_mode(0o666)).unwrap();
        // A symlink planted at the temporary name, to a file it must not touch.
        let victim = sites.path().join("victim");
        std::fs::write(&victim, "untouched").unwrap();
        let planted = vassals.path().join(".a.example.ini.herald-tmp");
        std::os::unix::fs::symlink(&victim, &planted).unwrap();

        initializer.enable("a.example").await.unwrap();

        let vassal = initializer.enabled_vassal("a.example");
        assert_eq!(
            std::fs::read_to_string(&vassal).unwrap(),
            std::fs::read_to_string(&source).unwrap()
        );
        let mode = std::fs::metadata(&vassal).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & !0o640, 0, "mode {mode:o}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
        assert!(std::fs::symlink_metadata(&planted)
            .unwrap()
            .file_type()
            .is_symlink());
    }
}
