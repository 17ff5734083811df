//! Herald's command line. Pingora's own flags keep their meaning; Herald builds Pingora's
//! `Opt` from them rather than letting Pingora read the command line.

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "herald",
    version,
    about = "Host-routing load balancer for platforms that host many Python web apps",
    long_about = "Herald routes each request by its Host header. The edge role hashes the site name to \
pick a backend server; the backend role proxies to the site's uWSGI app over its unix socket. \
One configuration file declares which roles this process runs.\n\n\
Reload without losing a request: `herald reload -c FILE`. SIGTERM (`herald stop`) shuts down \
gracefully, SIGINT at once."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Configuration file (YAML) declaring the roles to run
    #[arg(
        short = 'c',
        long = "conf",
        value_name = "FILE",
        default_value = "/etc/herald/herald.yaml"
    )]
    pub conf: String,

    /// Check the configuration and exit: 0 with "configuration OK", or 1 with one line per problem
    #[arg(short = 't', long = "test")]
    pub test: bool,

    /// Run in the background; the pid goes to server.pid_file
    #[arg(short = 'd', long = "daemon")]
    pub daemon: bool,

    /// Graceful upgrade: take over the listening sockets of the running herald, which hands
    /// them over when it gets SIGQUIT
    #[arg(short = 'u', long = "upgrade")]
    pub upgrade: bool,
}

/// The configuration file of a command that drives a running herald.
#[derive(clap::Args, Debug)]
pub struct ConfArg {
    /// Configuration file of the running herald (its server.pid_file names it)
    #[arg(
        short = 'c',
        long = "conf",
        value_name = "FILE",
        default_value = "/etc/herald/herald.yaml"
    )]
    pub conf: String,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check FILE, start a new herald that takes the running one's sockets over, and say
    /// whether it worked; the running one keeps serving when anything fails before it
    Reload(ConfArg),
    /// Stop the running herald gracefully (SIGTERM) and wait until it has exited
    Stop(ConfArg),
    /// Exit 0 and say pid, uptime and listeners if the pid file names a running herald, 3 if not
    Status(ConfArg),
    /// Print the backend of every site; with --backends, which sites a new list would move
    Placement {
        /// Configuration file with the edge role whose backends are used now
        #[arg(
            short = 'c',
            long = "conf",
            value_name = "FILE",
            default_value = "/etc/herald/herald.yaml"
        )]
        conf: String,
        /// A new backend list, in the backends_file format ("ip:port [weight]" per line)
        #[arg(long, value_name = "FILE")]
        backends: Option<String>,
        /// The sites, one per line [default: the names in backend.sites_dir]
        #[arg(long, value_name = "FILE")]
        sites: Option<String>,
    },
}

impl Cli {
    pub fn pingora_opt(&self) -> pingora::server::configuration::Opt {
        pingora::server::configuration::Opt {
            upgrade: self.upgrade,
            daemon: self.daemon,
            nocapture: false,
            // Herald checks its own configuration; Pingora's check would only re-read YAML.
            test: false,
            conf: None,
        }
    }
}
