//! The configuration file as written on disk: YAML shapes only, no meaning yet.
//! `validate` turns this into the runtime `Config`.

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use std::fmt;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Pingora `ServerConf` fields, checked against its own key list.
    pub server: Option<serde_yaml::Mapping>,
    pub metrics: Option<MetricsSection>,
    pub edge: Option<EdgeSection>,
    pub backend: Option<BackendSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    pub listen: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeSection {
    pub listen: Vec<String>,
    pub hash: Option<HashName>,
    pub backends: Option<Vec<Scalar>>,
    pub backends_file: Option<String>,
    pub health_check: Option<HealthCheckSection>,
    pub retry_idempotent: Option<bool>,
    pub health_host: Option<String>,
    pub allow_ip_hosts: Option<bool>,
    pub limits: Option<LimitsSection>,
    pub access_log: Option<AccessLogSection>,
    pub error_pages: Option<String>,
    pub upstream_keepalive_timeout: Option<Scalar>,
    pub websocket_idle_timeout: Option<Scalar>,
    pub tls: Option<TlsSection>,
    pub h2c: Option<bool>,
    pub trusted_proxies: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    pub listen: Vec<String>,
    pub certs_dir: Option<String>,
    pub default_cert: Option<String>,
    pub default_key: Option<String>,
    pub ssl_handshake_timeout: Option<Scalar>,
    pub acme: Option<AcmeSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeSection {
    pub directory: String,
    pub contact: Option<String>,
    pub ask: String,
    pub storage: String,
    pub ca_roots: Option<String>,
    pub wait: Option<Scalar>,
    pub max_orders_per_hour: Option<u32>,
    pub queue: Option<usize>,
    pub sync_interval: Option<Scalar>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogSection {
    pub path: String,
    pub format: Option<LogFormatName>,
    /// Backend only: each site's lines in a file of its own too.
    pub per_site: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorLogSection {
    pub per_site: String,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormatName {
    Combined,
    Json,
}

/// nginx's names for nginx's limits.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    pub client_max_body_size: Option<Scalar>,
    pub client_header_timeout: Option<Scalar>,
    pub client_body_timeout: Option<Scalar>,
    /// `NUMBER SIZE`, as nginx writes it: `4 8k`.
    pub large_client_header_buffers: Option<Scalar>,
    pub send_timeout: Option<Scalar>,
    pub keepalive_timeout: Option<Scalar>,
    pub proxy_connect_timeout: Option<Scalar>,
    pub proxy_read_timeout: Option<Scalar>,
    pub proxy_send_timeout: Option<Scalar>,
    pub max_connections_per_client: Option<usize>,
    pub max_open_connections_per_client: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSection {
    pub kind: Option<HealthCheckName>,
    pub interval: Option<Scalar>,
    pub timeout: Option<Scalar>,
    pub failures: Option<usize>,
    pub successes: Option<usize>,
    pub path: Option<String>,
    pub host: Option<String>,
    pub expect: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthCheckName {
    Tcp,
    Http,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HashName {
    Ketama,
    Modulo,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSection {
    pub listen: Vec<String>,
    pub sites_dir: String,
    pub vassals_dir: String,
    pub socket_path: String,
    pub trusted_proxies: Option<Vec<String>>,
    pub health_host: Option<String>,
    pub allow_ip_hosts: Option<bool>,
    pub limits: Option<LimitsSection>,
    pub access_log: Option<AccessLogSection>,
    pub error_log: Option<ErrorLogSection>,
    pub error_pages: Option<String>,
    pub upstream_keepalive_timeout: Option<Scalar>,
    pub websocket_idle_timeout: Option<Scalar>,
    pub initializer: Option<InitializerSection>,
    pub start_timeout: Option<Scalar>,
    pub max_starts: Option<usize>,
    pub max_running_apps: Option<usize>,
    pub max_starts_per_client: Option<usize>,
    pub start_queue: Option<usize>,
    pub retry_after: Option<Scalar>,
    pub idle_timeout: Option<Scalar>,
    pub emperor_stats: Option<String>,
    pub app_protocol: Option<AppProtocolName>,
    pub document_root: Option<String>,
    pub buffering: Option<BufferingSection>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AppProtocolName {
    Uwsgi,
    Http,
}

/// nginx's buffering settings for the backend's apps.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BufferingSection {
    pub request_buffering: Option<Switch>,
    pub client_body_buffer_size: Option<Scalar>,
    pub client_body_temp_path: Option<String>,
    pub response_buffering: Option<Switch>,
    /// `NUMBER SIZE`, as nginx writes it: `8 4k`.
    pub proxy_buffers: Option<Scalar>,
    pub proxy_max_temp_file_size: Option<Scalar>,
    pub proxy_temp_path: Option<String>,
}

/// nginx's `on`/`off`, or a YAML boolean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Switch(pub bool);

impl<'de> Deserialize<'de> for Switch {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SwitchVisitor;
        impl Visitor<'_> for SwitchVisitor {
            type Value = Switch;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("on or off")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Switch, E> {
                Ok(Switch(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Switch, E> {
                match v {
                    "on" => Ok(Switch(true)),
                    "off" => Ok(Switch(false)),
                    _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
                }
            }
        }
        deserializer.deserialize_any(SwitchVisitor)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitializerSection {
    pub kind: Option<InitializerKind>,
    pub url: Option<String>,
    pub stop_url: Option<String>,
    pub timeout: Option<Scalar>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InitializerKind {
    Local,
    Http,
}

/// A YAML string or number kept as text, for values with units (`10s`, `1m`, `10.0.0.1:80 2`)
/// where a bare number is also allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scalar(pub String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl Visitor<'_> for ScalarVisitor {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_owned()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        deserializer.deserialize_any(ScalarVisitor)
    }
}
