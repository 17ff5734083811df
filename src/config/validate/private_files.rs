//! Herald's own runtime files (`pid_file`, `upgrade_sock`, `error_log`, access logs, the
//! emperor's stats socket) must be where no app can write: an app that could replace the
//! upgrade socket during a reload would be handed the listening sockets, one that could
//! replace the stats socket could feed Herald its answers, one that could write the logs could
//! rewrite them. `herald -t` warns about each one whose directory someone else can write.

use super::*;
use crate::access_log::Destination;
use std::os::unix::fs::MetadataExt;

/// Who Herald runs as: `server.user`/`server.group` (Pingora switches to them when it
/// daemonizes), else whoever runs this check.
struct Herald {
    uid: u32,
    gid: u32,
}

impl Checker {
    pub(super) fn runtime_files_are_private(&mut self, config: &Config) {
        let herald = herald_user(&config.server);
        let server = &config.server;
        let mut files: Vec<(String, PathBuf)> = vec![
            ("server.pid_file".into(), PathBuf::from(&server.pid_file)),
            (
                "server.upgrade_sock".into(),
                PathBuf::from(&server.upgrade_sock),
            ),
        ];
        if let Some(error_log) = &server.error_log {
            files.push(("server.error_log".into(), PathBuf::from(error_log)));
        }
        for (role, frontend) in [
            ("edge", config.edge.as_ref().map(|e| &e.frontend)),
            ("backend", config.backend.as_ref().map(|b| &b.frontend)),
        ] {
            if let Some(Destination::File(path)) = frontend.map(|f| &f.access_log) {
                files.push((format!("{role}.access_log.path"), path.clone()));
            }
        }
        if let Some(StatsAddress::Unix(path)) = config
            .backend
            .as_ref()
            .and_then(|b| b.emperor_stats.as_ref())
        {
            files.push(("backend.emperor_stats".into(), path.clone()));
        }
        for (field, file) in files {
            let Some(dir) = file.parent() else { continue };
            if let Some(who) = dir_writable_by_others(dir, &herald) {
                self.warn(
                    field,
                    format!(
                        "{dir:?} can be written by {who}, who could then replace {file:?}: keep Herald's runtime files and logs in a directory only root and Herald's user can write (the shipped units use /run/herald and /var/log/herald, 0750)"
                    ),
                );
            }
        }
    }
}

fn herald_user(server: &pingora::server::configuration::ServerConf) -> Herald {
    let named = server
        .user
        .as_deref()
        .and_then(|name| nix::unistd::User::from_name(name).ok().flatten());
    let group = server
        .group
        .as_deref()
        .and_then(|name| nix::unistd::Group::from_name(name).ok().flatten());
    Herald {
        uid: named
            .as_ref()
            .map_or_else(|| nix::unistd::geteuid().as_raw(), |u| u.uid.as_raw()),
        gid: group.map(|g| g.gid.as_raw()).unwrap_or_else(|| {
            named.map_or_else(|| nix::unistd::getegid().as_raw(), |u| u.gid.as_raw())
        }),
    }
}

/// Who besides root and Herald's user can write `dir`, if anyone: its owner (who can always
/// give itself the right), its group, or everyone.
fn dir_writable_by_others(dir: &Path, herald: &Herald) -> Option<String> {
    let meta = std::fs::metadata(dir).ok()?;
    let mode = meta.mode();
    if meta.uid() != 0 && meta.uid() != herald.uid {
        return Some(format!("its owner, uid {}", meta.uid()));
    }
    if mode & 0o020 != 0 && meta.gid() != 0 && meta.gid() != herald.gid {
        return Some(format!(
            "its group, gid {} (mode {:o})",
            meta.gid(),
            mode & 0o7777
        ));
    }
    if mode & 0o002 != 0 {
        return Some(format!("everyone (mode {:o})", mode & 0o7777));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn directories_others_can_write_are_named() {
        let me = Herald {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        };
        let dir = tempfile::tempdir().unwrap();
        let set = |mode| {
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode)).unwrap()
        };
        set(0o750);
        assert_eq!(dir_writable_by_others(dir.path(), &me), None);
        set(0o1777);
        assert!(dir_writable_by_others(dir.path(), &me)
            .unwrap()
            .contains("everyone"));
        set(0o770);
        let other_group = Herald {
            gid: me.gid + 1,
            ..me
        };
        // Group-writable is fine for Herald's own group (or root's).
        assert_eq!(
            dir_writable_by_others(dir.path(), &other_group).is_some(),
            me.gid != 0
        );
        let someone_else = Herald {
            uid: me.uid + 1,
            gid: me.gid,
        };
        set(0o700);
        assert_eq!(
            dir_writable_by_others(dir.path(), &someone_else).is_some(),
            me.uid != 0,
            "a directory owned by another user than root or Herald's"
        );
    }
}
