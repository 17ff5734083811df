//! Herald's own log: env_logger (`RUST_LOG`, default `herald=info,warn`) to stderr, with every
//! record also shown to the TLS handshake counter, which learns of failed handshakes only
//! from Pingora's log (see `tls::handshakes`).

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
        if self.0.matches(record) {
            self.0.log(record);
        }
    }

    fn flush(&self) {
        self.0.flush();
    }
}
