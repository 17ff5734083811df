//! Opening a static file so that it is never outside its mapped directory, and only when its
//! owner rule allows (see `owner_may_publish`). These are system calls on metadata the
//! kernel caches; they run on the request's thread, as nginx's do.
//!
//! The name is resolved with `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` relative to
//! the mapped directory: a symlink that stays inside it works, one that leads out (a tenant's
//! link to /etc/shadow or into another tenant's home), absolute or through `..`, fails with
//! EXDEV. Where openat2 is missing (kernels before 5.6, or a seccomp filter that refuses it),
//! the name is walked one component at a time with `O_NOFOLLOW`, and every symlink is refused,
//! even one that stays inside: stricter, never looser.
//!
//! Each file is first opened with `O_PATH` and checked (a regular file, the owner rule) before
//! it is opened for reading, so nothing else is ever opened for reading: opening a device
//! (`dir` replaced by a link to /dev, say) can have effects of its own, such as arming a
//! watchdog or rewinding a tape. The second open must find the same inode.

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use std::fs::{File, Metadata};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// A file open for reading, and what its headers are made of.
#[derive(Debug)]
pub struct OpenFile {
    pub file: File,
    pub size: u64,
    /// Seconds since the epoch, as nginx's `Last-Modified` and `ETag` use it.
    pub mtime: i64,
}

/// What was chosen for a request: the file, or its `.gz` sibling (nginx's `gzip_static`).
#[derive(Debug)]
pub struct Chosen {
    pub open: OpenFile,
    /// `open` is the `.gz` sibling: send `Content-Encoding: gzip`.
    pub gzip: bool,
    /// A servable `.gz` sibling exists, so the answer depends on `Accept-Encoding`.
    pub vary: bool,
}

#[derive(Debug)]
pub enum NotOpened {
    /// 404, and why (for the log).
    NotFound(&'static str),
    /// Something other than the file's absence or refusal (EIO, EMFILE...): a 500, as nginx.
    Failed(std::io::Error),
}

/// How names are resolved below the mapped directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolver {
    Openat2,
    /// One component at a time with `O_NOFOLLOW`: every symlink refused.
    ComponentWise,
}

static OPENAT2_MISSING: AtomicBool = AtomicBool::new(false);

/// openat2, unless this kernel has been seen to lack it.
pub fn default_resolver() -> Resolver {
    if OPENAT2_MISSING.load(Ordering::Relaxed) {
        Resolver::ComponentWise
    } else {
        Resolver::Openat2
    }
}

/// The owner rule. Herald can read more than any one site's owner (its group reaches into
/// many tenants' homes, or it runs as root), so a regular file is served only if
/// - it belongs to the site's owner (the uid the site's app runs as) and its owner may read
///   it (`u+r`), or
/// - everyone may read it (`o+r`).
///
/// A file of another user that only a group may read is never served, however it was
/// reached: a mapping (or a `dir` swapped for a symlink) into another tenant's files serves
/// nothing of theirs that is not already readable by every user of the machine. The `.gz`
/// sibling must pass on its own.
pub fn owner_may_publish(metadata: &Metadata, owner_uid: u32) -> bool {
    const OWNER_READ: u32 = 0o400;
    const OTHERS_READ: u32 = 0o004;
    let mode = metadata.mode();
    (metadata.uid() == owner_uid && mode & OWNER_READ != 0) || mode & OTHERS_READ != 0
}

/// `name` (a decoded relative path: no `.`, `..` or empty segments) below `dir`, or its
/// `name.gz` sibling when the client takes gzip and that one may be served.
pub fn choose(
    dir: &Path,
    name: &str,
    owner_uid: u32,
    gzip_accepted: bool,
    resolver: Resolver,
) -> Result<Chosen, NotOpened> {
    let dir_fd = open_mapped_dir(dir)?;
    // As nginx's gzip_static: the .gz is looked for first and is enough on its own (the
    // uncompressed file need not exist); any failure to open it just means "no .gz". With
    // `gzip_vary on` a usable .gz means `Vary` whichever file is sent, so caches keep both.
    let compressed = open_beneath(dir_fd.as_fd(), &format!("{name}.gz"), owner_uid, resolver);
    let compressed = match compressed {
        Ok(open) if gzip_accepted => {
            return Ok(Chosen {
                open,
                gzip: true,
                vary: true,
            })
        }
        Ok(_) => true,
        Err(_) => false,
    };
    let open = open_beneath(dir_fd.as_fd(), name, owner_uid, resolver)?;
    Ok(Chosen {
        open,
        gzip: false,
        vary: compressed,
    })
}

/// The mapped directory itself; symlinks on its way are followed (the settings name it, and
/// the owner rule covers a `dir` that a tenant replaced with a link).
fn open_mapped_dir(dir: &Path) -> Result<OwnedFd, NotOpened> {
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    rustix::fs::open(dir, flags, Mode::empty()).map_err(|errno| match errno {
        Errno::NOENT | Errno::NOTDIR | Errno::ACCESS | Errno::LOOP | Errno::NAMETOOLONG => {
            NotOpened::NotFound("the mapped directory is missing or unreadable")
        }
        other => NotOpened::Failed(other.into()),
    })
}

/// `name` below `dir_fd`, open for reading, if it is a regular file the owner rule allows.
pub fn open_beneath(
    dir_fd: BorrowedFd<'_>,
    name: &str,
    owner_uid: u32,
    resolver: Resolver,
) -> Result<OpenFile, NotOpened> {
    let located = match resolver {
        Resolver::Openat2 => match locate_openat2(dir_fd, name) {
            Err(Errno::NOSYS) => {
                if !OPENAT2_MISSING.swap(true, Ordering::Relaxed) {
                    log::warn!("openat2 is not available: static files are opened one path component at a time, and symlinks in them are refused");
                }
                return open_beneath(dir_fd, name, owner_uid, Resolver::ComponentWise);
            }
            // A seccomp filter may refuse a system call it does not know with EPERM; the
            // walk answers the same for a file that really refuses.
            Err(Errno::PERM) => {
                return open_beneath(dir_fd, name, owner_uid, Resolver::ComponentWise)
            }
            other => other.map(|fd| Located::Beneath(File::from(fd))),
        },
        Resolver::ComponentWise => locate_componentwise(dir_fd, name),
    }
    .map_err(not_opened)?;
    let (Located::Beneath(path_file)
    | Located::Walked {
        leaf: path_file, ..
    }) = &located;
    let located_metadata = path_file.metadata().map_err(NotOpened::Failed)?;
    check(&located_metadata, owner_uid)?;

    let read_flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
    let reopened = match &located {
        Located::Beneath(_) => {
            with_retries(|| rustix::fs::openat2(dir_fd, name, read_flags, Mode::empty(), beneath()))
        }
        Located::Walked { parent, .. } => {
            let at = parent.as_ref().map_or(dir_fd, |fd| fd.as_fd());
            let leaf = name.rsplit('/').next().unwrap_or(name);
            rustix::fs::openat(at, leaf, read_flags | OFlags::NOFOLLOW, Mode::empty())
        }
    }
    .map_err(not_opened)?;
    let file = File::from(reopened);
    let metadata = file.metadata().map_err(NotOpened::Failed)?;
    let same = |m: &Metadata| (m.dev(), m.ino());
    if same(&metadata) != same(&located_metadata) {
        return Err(NotOpened::NotFound(
            "the file was replaced while being opened",
        ));
    }
    check(&metadata, owner_uid)?;
    Ok(OpenFile {
        file,
        size: metadata.size(),
        mtime: metadata.mtime(),
    })
}

/// A name found (opened with `O_PATH`), not yet opened for reading.
enum Located {
    Beneath(File),
    /// Found one component at a time: the leaf, and the directory holding it (`None`: the
    /// mapped directory), to open it for reading from.
    Walked {
        leaf: File,
        parent: Option<OwnedFd>,
    },
}

fn check(metadata: &Metadata, owner_uid: u32) -> Result<(), NotOpened> {
    let kind = metadata.file_type();
    if kind.is_dir() {
        return Err(NotOpened::NotFound("the path names a directory"));
    }
    if kind.is_symlink() {
        return Err(NotOpened::NotFound(
            "a symlink (refused where openat2 is not available)",
        ));
    }
    if !kind.is_file() {
        return Err(NotOpened::NotFound("not a regular file"));
    }
    if !owner_may_publish(metadata, owner_uid) {
        return Err(NotOpened::NotFound(
            "the file belongs to another user than the site's owner and is not world-readable",
        ));
    }
    Ok(())
}

fn beneath() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS
}

/// openat2 answers EAGAIN when a rename raced with a lookup it must keep beneath the
/// directory; its manual suggests trying again.
fn with_retries(
    mut open: impl FnMut() -> rustix::io::Result<OwnedFd>,
) -> rustix::io::Result<OwnedFd> {
    let mut attempts = 0;
    loop {
        match open() {
            Err(Errno::AGAIN) if attempts < 3 => attempts += 1,
            other => return other,
        }
    }
}

fn locate_openat2(dir_fd: BorrowedFd<'_>, name: &str) -> rustix::io::Result<OwnedFd> {
    let flags = OFlags::PATH | OFlags::CLOEXEC;
    with_retries(|| rustix::fs::openat2(dir_fd, name, flags, Mode::empty(), beneath()))
}

/// `name`'s directories opened one by one, none of them a symlink; then the last component
/// itself (a symlink there is opened as the link, and refused by `check`).
fn locate_componentwise(dir_fd: BorrowedFd<'_>, name: &str) -> rustix::io::Result<Located> {
    let (directories, leaf) = match name.rsplit_once('/') {
        Some((directories, leaf)) => (Some(directories), leaf),
        None => (None, name),
    };
    let plain = |component: &str| !matches!(component, "" | "." | "..");
    let mut parent: Option<OwnedFd> = None;
    for component in directories.into_iter().flat_map(|d| d.split('/')) {
        if !plain(component) {
            return Err(Errno::NOENT);
        }
        let at = parent.as_ref().map_or(dir_fd, |fd| fd.as_fd());
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        parent = Some(rustix::fs::openat(at, component, flags, Mode::empty())?);
    }
    if !plain(leaf) {
        return Err(Errno::NOENT);
    }
    let at = parent.as_ref().map_or(dir_fd, |fd| fd.as_fd());
    let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let leaf = File::from(rustix::fs::openat(at, leaf, flags, Mode::empty())?);
    Ok(Located::Walked { leaf, parent })
}

fn not_opened(errno: Errno) -> NotOpened {
    match errno {
        Errno::NOENT | Errno::NOTDIR | Errno::NAMETOOLONG => NotOpened::NotFound("no such file"),
        Errno::XDEV => NotOpened::NotFound("the path leads out of the mapped directory"),
        // A symlink loop, a magic link (/proc/self/fd/...), or (walking component by
        // component) a symlinked directory.
        Errno::LOOP => NotOpened::NotFound("a symlink that cannot be followed here"),
        // nginx answers 403; Herald answers 404 to everything it will not serve.
        Errno::ACCESS | Errno::PERM => NotOpened::NotFound("permission denied"),
        Errno::AGAIN => NotOpened::NotFound("the directory kept changing during the lookup"),
        other => NotOpened::Failed(other.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};
    use std::path::PathBuf;

    const BOTH: [Resolver; 2] = [Resolver::Openat2, Resolver::ComponentWise];

    /// A tenant's tree: `home/static` (the mapped directory) and, outside it,
    /// `home/private` and `elsewhere` (another tenant).
    struct Tree {
        _root: tempfile::TempDir,
        home: PathBuf,
        mapped: PathBuf,
        elsewhere: PathBuf,
        me: u32,
    }

    fn tree() -> Tree {
        let root = tempfile::tempdir().unwrap();
        let home = root.path().join("home");
        let mapped = home.join("static");
        let elsewhere = root.path().join("elsewhere");
        for dir in [
            &mapped,
            &home.join("private"),
            &elsewhere,
            &mapped.join("css"),
        ] {
            std::fs::create_dir_all(dir).unwrap();
        }
        write(&mapped.join("app.js"), "js", 0o644);
        write(&mapped.join("css/site.css"), "css", 0o644);
        write(&home.join("private/settings.py"), "SECRET", 0o644);
        write(&elsewhere.join("secret.txt"), "other tenant", 0o644);
        let me = std::fs::metadata(&mapped).unwrap().uid();
        Tree {
            _root: root,
            home,
            mapped,
            elsewhere,
            me,
        }
    }

    fn write(path: &Path, text: &str, mode: u32) {
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn read(dir: &Path, name: &str, owner: u32, resolver: Resolver) -> Result<String, String> {
        let dir_fd = open_mapped_dir(dir).map_err(|e| format!("{e:?}"))?;
        let open = open_beneath(dir_fd.as_fd(), name, owner, resolver).map_err(|e| match e {
            NotOpened::NotFound(why) => why.to_owned(),
            NotOpened::Failed(e) => format!("failed: {e}"),
        })?;
        Ok(std::io::read_to_string(open.file).unwrap())
    }

    #[test]
    fn files_inside_are_opened_by_both_resolvers() {
        let t = tree();
        for resolver in BOTH {
            assert_eq!(
                read(&t.mapped, "app.js", t.me, resolver).as_deref(),
                Ok("js")
            );
            assert_eq!(
                read(&t.mapped, "css/site.css", t.me, resolver).as_deref(),
                Ok("css")
            );
            assert_eq!(
                read(&t.mapped, "nope.js", t.me, resolver),
                Err("no such file".into())
            );
            assert_eq!(
                read(&t.mapped, "app.js/x", t.me, resolver),
                Err("no such file".into())
            );
            assert_eq!(
                read(&t.mapped, "css", t.me, resolver),
                Err("the path names a directory".into())
            );
        }
    }

    #[test]
    fn symlinks_that_stay_inside_work_with_openat2_and_are_refused_without() {
        let t = tree();
        symlink("css/site.css", t.mapped.join("linked.css")).unwrap();
        symlink("css", t.mapped.join("styles")).unwrap();
        // Inside, but through `..` of a subdirectory.
        symlink("../app.js", t.mapped.join("css/up.js")).unwrap();
        for name in ["linked.css", "styles/site.css", "css/up.js"] {
            assert!(
                read(&t.mapped, name, t.me, Resolver::Openat2).is_ok(),
                "{name}"
            );
            assert!(
                read(&t.mapped, name, t.me, Resolver::ComponentWise).is_err(),
                "{name}"
            );
        }
    }

    #[test]
    fn nothing_outside_the_mapped_directory_is_reachable() {
        let t = tree();
        let m = &t.mapped;
        symlink("/etc/passwd", m.join("passwd")).unwrap();
        symlink("/etc/shadow", m.join("shadow")).unwrap();
        symlink("../private/settings.py", m.join("settings.py")).unwrap();
        symlink(t.home.join("private/settings.py"), m.join("absolute.py")).unwrap();
        symlink(&t.elsewhere, m.join("neighbour")).unwrap();
        symlink("../../elsewhere", m.join("css/neighbour")).unwrap();
        symlink("/", m.join("root")).unwrap();
        symlink("..", m.join("up")).unwrap();
        symlink("/proc/self/root/etc/passwd", m.join("magic")).unwrap();
        symlink("loop", m.join("loop")).unwrap();
        // A link to a link that leads out.
        symlink("passwd", m.join("relay")).unwrap();
        for name in [
            "passwd",
            "shadow",
            "settings.py",
            "absolute.py",
            "neighbour/secret.txt",
            "css/neighbour/secret.txt",
            "root/etc/passwd",
            "up/private/settings.py",
            "up/static/app.js",
            "magic",
            "loop",
            "relay",
            // Names the path decoder never produces, should one ever get here.
            "../private/settings.py",
            "css/../../private/settings.py",
            "/etc/passwd",
        ] {
            for resolver in BOTH {
                let outcome = read(m, name, t.me, resolver);
                assert!(outcome.is_err(), "{name} with {resolver:?}: {outcome:?}");
            }
        }
    }

    #[test]
    fn the_owner_rule_keeps_other_users_files_that_are_not_public() {
        let t = tree();
        let stranger = t.me.wrapping_add(12345);
        // Seen from a site whose owner is someone else, the tree's files belong to another user.
        write(&t.mapped.join("group-only.txt"), "g", 0o640);
        write(&t.mapped.join("public.txt"), "p", 0o604);
        write(&t.mapped.join("owner-unreadable.txt"), "u", 0o040);
        for resolver in BOTH {
            assert_eq!(
                read(&t.mapped, "group-only.txt", stranger, resolver),
                Err("the file belongs to another user than the site's owner and is not world-readable".into())
            );
            assert!(read(&t.mapped, "group-only.txt", t.me, resolver).is_ok());
            assert!(read(&t.mapped, "public.txt", stranger, resolver).is_ok());
            assert!(read(&t.mapped, "owner-unreadable.txt", t.me, resolver).is_err());
        }
    }

    #[test]
    fn a_mapped_dir_swapped_for_a_link_to_another_tenant_serves_only_public_files() {
        let t = tree();
        write(&t.elsewhere.join("private.txt"), "theirs", 0o640);
        let swapped = t.home.join("swapped");
        symlink(&t.elsewhere, &swapped).unwrap();
        let site_owner = t.me.wrapping_add(12345);
        for resolver in BOTH {
            assert!(read(&swapped, "private.txt", site_owner, resolver).is_err());
            // World-readable is public on this machine anyway.
            assert!(read(&swapped, "secret.txt", site_owner, resolver).is_ok());
        }
    }

    #[test]
    fn as_root_files_chowned_to_another_uid_follow_the_owner_rule() {
        if nix::unistd::geteuid().as_raw() != 0 {
            eprintln!("skipped: chown needs root");
            return;
        }
        let t = tree();
        let other = 12345;
        let file = t.elsewhere.join("chowned.txt");
        write(&file, "theirs", 0o640);
        std::os::unix::fs::chown(&file, Some(other), Some(other)).unwrap();
        std::os::unix::fs::chown(&t.elsewhere, Some(other), Some(other)).unwrap();
        symlink(&t.elsewhere, t.home.join("planted")).unwrap();
        // A hard link keeps its owner: linking another tenant's file in gains nothing.
        std::fs::hard_link(&file, t.mapped.join("hard-linked.txt")).unwrap();
        for resolver in BOTH {
            assert!(read(&t.mapped, "hard-linked.txt", t.me, resolver).is_err());
            // The site's owner (uid 0 here) does not own it, and it is not public.
            assert!(read(&t.home.join("planted"), "chowned.txt", t.me, resolver).is_err());
            // Its own owner's site may serve it.
            assert!(read(&t.home.join("planted"), "chowned.txt", other, resolver).is_ok());
        }
    }

    #[test]
    fn fifos_and_sockets_are_never_opened_for_reading() {
        let t = tree();
        let made = std::process::Command::new("mkfifo")
            .arg(t.mapped.join("fifo"))
            .status()
            .unwrap();
        assert!(made.success());
        let _listener = std::os::unix::net::UnixListener::bind(t.mapped.join("sock")).unwrap();
        for resolver in BOTH {
            for name in ["fifo", "sock"] {
                assert_eq!(
                    read(&t.mapped, name, t.me, resolver),
                    Err("not a regular file".into())
                );
            }
        }
    }

    #[test]
    fn the_gz_sibling_is_chosen_only_when_accepted_and_servable() {
        let t = tree();
        write(&t.mapped.join("app.js.gz"), "gz", 0o644);
        write(&t.mapped.join("only.js.gz"), "gz only", 0o644);
        write(&t.mapped.join("hidden.js"), "plain", 0o644);
        write(&t.mapped.join("hidden.js.gz"), "gz", 0o640);
        let r = default_resolver();
        let chosen = choose(&t.mapped, "app.js", t.me, true, r).unwrap();
        assert!(chosen.gzip && chosen.vary);
        let chosen = choose(&t.mapped, "app.js", t.me, false, r).unwrap();
        assert!(!chosen.gzip && chosen.vary);
        let chosen = choose(&t.mapped, "css/site.css", t.me, true, r).unwrap();
        assert!(!chosen.gzip && !chosen.vary);
        // As nginx: the .gz alone answers a client that takes gzip.
        assert!(choose(&t.mapped, "only.js", t.me, true, r).unwrap().gzip);
        assert!(matches!(
            choose(&t.mapped, "only.js", t.me, false, r),
            Err(NotOpened::NotFound(_))
        ));
        // A .gz the owner rule refuses is as good as absent.
        let stranger = t.me.wrapping_add(1);
        let chosen = choose(&t.mapped, "hidden.js", stranger, true, r).unwrap();
        assert!(!chosen.gzip && !chosen.vary);
        // A .gz symlinked out of the directory is absent too.
        symlink("/etc/passwd", t.mapped.join("css/site.css.gz")).unwrap();
        let chosen = choose(&t.mapped, "css/site.css", t.me, true, r).unwrap();
        assert!(!chosen.gzip && !chosen.vary);
    }

    #[test]
    fn a_missing_mapped_directory_is_not_found() {
        let t = tree();
        assert!(matches!(
            choose(&t.mapped.join("nope"), "a", t.me, false, default_resolver()),
            Err(NotOpened::NotFound(_))
        ));
        assert!(matches!(
            choose(
                &t.mapped.join("app.js"),
                "a",
                t.me,
                false,
                default_resolver()
            ),
            Err(NotOpened::NotFound(_))
        ));
    }
}
