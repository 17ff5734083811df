//! Herald: one binary, two roles. `main` reads the command line and the configuration, then
//! adds the edge and/or backend proxies (see `edge` and `backend`) to a Pingora server.
// The exceptions: registering inotify's descriptor with tokio (inotify_fd), a second
// descriptor for a TLS connection's handshake watchdog (handshake_limit), and the global
// allocator (allocator).
#![deny(unsafe_code)]

mod access_log;
mod acme;
mod allocator;
mod backend;
mod cidr;
mod cli;
mod config;
mod control;
mod draining;
mod edge;
mod forwarding;
mod frontdoor;
mod handshake_limit;
mod host;
mod inotify_fd;
mod listener;
mod logging;
mod metrics;
mod pages;
mod per_client;
mod preview;
mod request;
mod request_checks;
mod site_logs;
mod site_name;
mod status;
mod text;
mod tls;
mod websocket;

use clap::Parser;
use config::Config;
use pingora::server::Server;
use std::process::ExitCode;

// mimalloc (`allocator`), without transparent huge pages: with them each thread's arena is
// resident in 2 MiB pages (7 MiB more per idle process).
#[global_allocator]
static ALLOCATOR: allocator::MiMalloc = allocator::MiMalloc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    logging::init();

    if let Some(cli::Command::Placement {
        conf,
        backends,
        sites,
    }) = &cli.command
    {
        return match preview::run(conf, backends.as_deref(), sites.as_deref()) {
            Ok(report) => {
                print!("{report}");
                ExitCode::SUCCESS
            }
            Err(problem) => {
                eprintln!("{problem}");
                ExitCode::FAILURE
            }
        };
    }
    match &cli.command {
        Some(cli::Command::Reload(arg)) => return control::reload(&arg.conf),
        Some(cli::Command::Stop(arg)) => return control::stop(&arg.conf),
        Some(cli::Command::Status(arg)) => return control::status(&arg.conf),
        _ => {}
    }
    let config = match Config::load(&cli.conf) {
        Ok(config) => config,
        Err(problems) => {
            eprintln!("{problems}");
            return ExitCode::FAILURE;
        }
    };
    if cli.test {
        for warning in &config.warnings {
            eprintln!("{}", logging::printable(warning));
        }
        // An edge starts (and serves what it has) while its ACME storage is down: a warning.
        let acme = config
            .edge
            .as_ref()
            .and_then(|edge| edge.tls.as_ref()?.acme.as_ref());
        if let Some(acme) = acme {
            if let Err(e) = acme::storage::check_now(&acme.storage) {
                let warning = format!(
                    "{}: edge.tls.acme.storage: warning: not reachable now ({e}); the edge will \
                     serve what it has and order nothing until it is",
                    cli.conf
                );
                eprintln!("{}", logging::printable(&warning));
            }
        }
        // One site's bad settings never stop the others (nor a reload): warnings.
        if let Some(backend) = &config.backend {
            for problem in backend::site_settings::check_all(&backend.sites_dir) {
                let warning = format!("{}: backend.sites_dir: warning: {problem}", cli.conf);
                eprintln!("{}", logging::printable(&warning));
            }
        }
        println!("{}: configuration OK", cli.conf);
        return ExitCode::SUCCESS;
    }
    for warning in &config.warnings {
        log::warn!("{warning}");
    }

    if cli.upgrade {
        // Pingora's own message when nothing arrives is "Bootstrap failed on error: EAGAIN".
        log::info!(
            "waiting about 5 s for the running herald to send its listening sockets to {}: send it SIGQUIT now \
             (`herald reload -c {}` does both, in the safe order)",
            config.server.upgrade_sock,
            cli.conf
        );
    }
    let mut server = Server::new_with_opt_and_conf(cli.pingora_opt(), config.server);
    server.bootstrap();
    draining::watch(&mut server);
    status::mark_start();
    if let Some(metrics) = &config.metrics {
        let mut service = status::service(config.edge.is_some(), config.backend.is_some());
        service.add_tcp(&metrics.listen.to_string());
        server.add_service(service);
    }
    if let Some(edge) = &config.edge {
        edge::add_services(&mut server, edge);
    }
    metrics::register_all();
    metrics::register_process();
    if let Some(backend) = &config.backend {
        backend::add_services(&mut server, backend);
    }
    server.run_forever()
}
