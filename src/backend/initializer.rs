//! Enabling and disabling a site's app: `local` copies its vassal into the uWSGI emperor's
//! directory (and removes it to stop), `http` asks the operator's control plane.

use crate::config::{HttpEndpoint, InitializerConfig, SocketTemplate};
use bytes::Bytes;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora_core::connectors::http::Connector;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    /// Herald connects.
    async fn copy_vassal(&self, site: &str) -> Result<(), InitError> {
        let source = self.sites_dir.join(format!("{site}.ini"));
        let text = tokio::fs::read_to_string(&source)
            .await
            .map_err(|e| InitError::Misconfigured(format!("cannot read {source:?}: {e}")))?;
        let expected = self.socket_path.path_for(site);
        super::vassal::check_socket(&text, site, &expected)
            .map_err(|why| InitError::Misconfigured(format!("{source:?}: {why}")))?;
        // Not *.ini, so the emperor ignores it until the rename.
        let temporary = self.vassals_dir.join(format!(".{site}.ini.herald-tmp"));
        let target = self.enabled_vassal(site);
        let written = async {
            tokio::fs::write(&temporary, &text).await?;
            tokio::fs::rename(&temporary, &target).await
        }
        .await;
        written.map_err(|e| {
            let _ = std::fs::remove_file(&temporary);
            InitError::Failed(format!("cannot write {target:?}: {e}"))
        })
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
