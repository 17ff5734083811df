//! Herald's own log: env_logger (`RUST_LOG`, default `herald=info,warn`) to stderr, with every
//! record also shown to the TLS handshake counter, which learns of failed handshakes only
//! from Pingora's log (see `tls::handshakes`). Control characters in a record (a file name
//! or a certificate's name with a newline or a terminal escape in it) are escaped, so that
//! nothing read from outside can forge or hide a log line.

use std::borrow::Cow;

pub fn init() {
    let logger = env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("herald=info,warn"),
    )
    .format_timestamp_millis()
    .build();
    // ERROR records reach `log` even when the filter hides them, so they can be counted.
    let max_level = logger.filter().max(log::LevelFilter::Error);
    log::set_boxed_logger(Box::new(CountingLogger(logger))).expect("the logger is set once");
    log::set_max_level(max_level);
}

struct CountingLogger(env_logger::Logger);

impl log::Log for CountingLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Error || self.0.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        crate::tls::handshakes::observe_log(record);
        if !self.0.matches(record) {
            return;
        }
        let (write, left_out) = crate::tls::handshakes::log_admission(record);
        if let Some(count) = left_out {
            self.0.log(
                &log::Record::builder()
                    .args(format_args!("{count} more failed TLS handshakes were not logged (herald_tls_handshakes_total{{result=\"failed\"}} counts every one)"))
                    .level(log::Level::Warn)
                    .target("herald::tls")
                    .build(),
            );
        }
        if !write {
            return;
        }
        let text = record.args().to_string();
        match printable(&text) {
            Cow::Borrowed(_) => self.0.log(record),
            Cow::Owned(escaped) => self.0.log(
                &log::Record::builder()
                    .args(format_args!("{escaped}"))
                    .level(record.level())
                    .target(record.target())
                    .module_path(record.module_path())
                    .file(record.file())
                    .line(record.line())
                    .build(),
            ),
        }
    }

    fn flush(&self) {
        self.0.flush();
    }
}

/// `text` with its control characters (tabs aside) written as Rust escapes: `\n`, `\u{1b}`.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(|c| c.is_control() && c != '\t') {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if c.is_control() && c != '\t' {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_cannot_make_a_line_of_their_own() {
        assert!(matches!(
            printable("certificate a.crt loaded"),
            Cow::Borrowed(_)
        ));
        assert_eq!(
            printable("a\nFAKE ERROR line\r\u{1b}[31mred\u{0}\tkept"),
            "a\\nFAKE ERROR line\\r\\u{1b}[31mred\\0\tkept"
        );
        assert_eq!(printable("café ünïcode"), "café ünïcode");
    }
}
