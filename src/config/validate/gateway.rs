//! `backend.app_protocol`, `backend.document_root` and `backend.buffering`: how the backend
//! hands requests to apps, checked as nginx would check its own (`uwsgi_params`,
//! `proxy_request_buffering`, `proxy_buffering`, their buffers and temp paths).

use super::super::file::{AppProtocolName, BackendSection, BufferingSection};
use super::*;
use crate::backend::app::spool::TempDir;

const DEFAULT_APP_PROTOCOL: AppProtocol = AppProtocol::Uwsgi;
// nginx's defaults (64-bit): client_body_buffer_size 16k, proxy_buffers 8 4k,
// proxy_max_temp_file_size 1024m.
const DEFAULT_CLIENT_BODY_BUFFER_SIZE: u64 = 16 << 10;
const DEFAULT_PROXY_BUFFERS: (usize, u64) = (8, 4 << 10);
const DEFAULT_PROXY_MAX_TEMP_FILE_SIZE: u64 = 1 << 30;
/// Temp files have no name (`O_TMPFILE`), so a shared directory is safe; it must not be a
/// RAM-backed one like /run, or buffering would cost memory after all.
const DEFAULT_TEMP_PATH: &str = "/var/tmp";

impl Checker {
    pub(super) fn gateway(&mut self, raw: &BackendSection) -> GatewayConfig {
        let default = BufferingSection::default();
        let buffering = raw.buffering.as_ref().unwrap_or(&default);
        let field = |key: &str| format!("backend.buffering.{key}");
        let document_root = raw.document_root.as_ref().map(|root| {
            if !root.starts_with('/') {
                self.bad(
                    "backend.document_root",
                    format!("{root:?} must be an absolute path, like /home/sites/{{host}}"),
                );
            }
            root.clone()
        });
        let request_buffering = buffering.request_buffering.is_none_or(|s| s.0);
        let response_buffering = buffering.response_buffering.is_none_or(|s| s.0);
        let client_body_buffer_size = self.size(
            &field("client_body_buffer_size"),
            buffering.client_body_buffer_size.as_ref(),
            DEFAULT_CLIENT_BODY_BUFFER_SIZE,
        );
        let proxy_buffers =
            self.proxy_buffers(&field("proxy_buffers"), buffering.proxy_buffers.as_ref());
        let proxy_max_temp_file_size = self.size(
            &field("proxy_max_temp_file_size"),
            buffering.proxy_max_temp_file_size.as_ref(),
            DEFAULT_PROXY_MAX_TEMP_FILE_SIZE,
        );
        let client_body_temp_path = self.temp_dir(
            &field("client_body_temp_path"),
            buffering.client_body_temp_path.as_deref(),
            request_buffering,
        );
        let proxy_temp_path = self.temp_dir(
            &field("proxy_temp_path"),
            buffering.proxy_temp_path.as_deref(),
            response_buffering && proxy_max_temp_file_size > 0,
        );
        GatewayConfig {
            app_protocol: match raw.app_protocol {
                None => DEFAULT_APP_PROTOCOL,
                Some(AppProtocolName::Uwsgi) => AppProtocol::Uwsgi,
                Some(AppProtocolName::Http) => AppProtocol::Http,
            },
            document_root,
            request_buffering,
            client_body_buffer_size: usize::try_from(client_body_buffer_size).unwrap_or(usize::MAX),
            client_body_temp_path,
            response_buffering,
            proxy_buffers,
            proxy_max_temp_file_size,
            proxy_temp_path,
        }
    }

    /// nginx's `proxy_buffers NUMBER SIZE`, as the bytes they hold in all.
    fn proxy_buffers(&mut self, field: &str, value: Option<&Scalar>) -> usize {
        let (default_number, default_size) = DEFAULT_PROXY_BUFFERS;
        let default = default_number * default_size as usize;
        let Some(Scalar(text)) = value else {
            return default;
        };
        let mut words = text.split_whitespace();
        let parsed = match (words.next(), words.next(), words.next()) {
            (Some(number), Some(size), None) => number
                .parse::<usize>()
                .ok()
                .zip(parse_size(size).ok().and_then(|s| usize::try_from(s).ok())),
            _ => None,
        };
        match parsed {
            Some((number, size)) if number >= 2 && size >= 1024 => {
                number.checked_mul(size).unwrap_or_else(|| {
                    self.bad(field, format!("{text:?} is too large"));
                    default
                })
            }
            Some(_) => {
                self.bad(
                    field,
                    format!("{text:?}: needs at least 2 buffers of at least 1k, like \"8 4k\""),
                );
                default
            }
            None => {
                self.bad(
                    field,
                    format!("invalid value {text:?}: expected a number and a size, like \"8 4k\""),
                );
                default
            }
        }
    }

    /// A directory for temp files: it must exist, and Herald must be able to make one there
    /// (checked by making one, which vanishes at once), when it will be used at all.
    fn temp_dir(&mut self, field: &str, text: Option<&str>, used: bool) -> PathBuf {
        let text = text.unwrap_or(DEFAULT_TEMP_PATH);
        let problems = self.problems.len();
        let path = self.existing_dir(field, text);
        if used && self.problems.len() == problems {
            if let Err(e) = TempDir::new(path.clone()).check() {
                self.bad(
                    field,
                    format!("cannot make temp files in {text:?}: {}", e.error),
                );
            }
        }
        path
    }
}
