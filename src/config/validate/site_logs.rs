//! `backend.access_log.per_site` and `backend.error_log.per_site`: path templates with `{host}`.

use super::super::file::BackendSection;
use super::*;

impl Checker {
    pub(super) fn site_logs(&mut self, raw: &BackendSection) -> SiteLogsConfig {
        let access = raw
            .access_log
            .as_ref()
            .and_then(|log| log.per_site.as_deref())
            .and_then(|text| self.site_template("backend.access_log.per_site", text));
        let errors = raw
            .error_log
            .as_ref()
            .and_then(|log| self.site_template("backend.error_log.per_site", &log.per_site));
        SiteLogsConfig { access, errors }
    }

    /// `{host}` once in an absolute path; the directory above the first per-site part must
    /// exist (the per-site directories are the control plane's to make).
    fn site_template(&mut self, field: &str, text: &str) -> Option<SiteTemplate> {
        let placeholder = SocketTemplate::PLACEHOLDER;
        if !text.starts_with('/') {
            self.bad(field, format!("{text:?} must be an absolute path"));
            return None;
        }
        if text.matches(placeholder).count() != 1 {
            self.bad(
                field,
                format!("{text:?} must contain {placeholder} exactly once, like /var/log/sites/{placeholder}/access.log"),
            );
            return None;
        }
        let (prefix, suffix) = text.split_once(placeholder).expect("counted above");
        if suffix.is_empty() || suffix.ends_with('/') {
            self.bad(field, format!("{text:?} must name a file"));
            return None;
        }
        let base = &prefix[..prefix.rfind('/').expect("absolute") + 1];
        if !Path::new(base).is_dir() {
            self.bad(field, format!("directory {base:?} does not exist"));
            return None;
        }
        Some(SiteTemplate {
            prefix: prefix.to_owned(),
            suffix: suffix.to_owned(),
        })
    }
}
