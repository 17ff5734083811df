//! Storage in a directory, for a single edge: `account.json`, `certs/NAME.json`,
//! `challenges/TOKEN`, `locks/NAME`, `generation`. The directory and every file in it are
//! readable by Herald's user only (0700 / 0600). Files are written whole to a temp file
//! beside them and renamed, so a reader never sees half of one; a temp file a crash left
//! behind is removed at the next start.

use super::{StorageError, StorageResult, StoredCertificate, CHALLENGE_TTL, LOCK_TTL};
use async_trait::async_trait;
use std::collections::HashMap;
use std::fs;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

const TEMP_PREFIX: &str = ".tmp-";

pub struct DirectoryStorage {
    root: PathBuf,
}

fn fail(what: impl std::fmt::Display, e: std::io::Error) -> StorageError {
    StorageError(format!("{what}: {e}"))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A file name from a site name or token: never a path of its own.
fn plain(name: &str) -> StorageResult<&str> {
    if name.is_empty() || name.starts_with('.') || name.contains('/') || name.contains('\0') {
        return Err(StorageError(format!("{name:?} cannot name a file")));
    }
    Ok(name)
}

impl DirectoryStorage {
    pub fn new(root: &Path) -> Result<Self, String> {
        for dir in ["", "certs", "challenges", "locks"] {
            let path = root.join(dir);
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&path)
                .map_err(|e| format!("{}: cannot create it: {e}", path.display()))?;
            // Left behind by a crash in the middle of a write.
            for entry in fs::read_dir(&path).into_iter().flatten().flatten() {
                if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        let mode = fs::metadata(root)
            .map_err(|e| format!("{}: {e}", root.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            fs::set_permissions(root, fs::Permissions::from_mode(0o700))
                .map_err(|e| format!("{}: cannot make it private: {e}", root.display()))?;
        }
        Ok(DirectoryStorage {
            root: root.to_owned(),
        })
    }

    /// The directory as it is, for a look (`herald -t`): nothing is made or changed.
    pub fn at(root: &Path) -> Self {
        DirectoryStorage {
            root: root.to_owned(),
        }
    }

    fn read(&self, path: &Path) -> StorageResult<Option<String>> {
        match fs::read_to_string(path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(fail(path.display(), e)),
        }
    }

    /// The whole file at once, mode 0600.
    fn write(&self, path: &Path, contents: &str) -> StorageResult<()> {
        let dir = path.parent().expect("files are inside the root");
        let mut temp = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .permissions(fs::Permissions::from_mode(0o600))
            .tempfile_in(dir)
            .map_err(|e| fail(dir.display(), e))?;
        temp.write_all(contents.as_bytes())
            .map_err(|e| fail(path.display(), e))?;
        temp.persist(path)
            .map_err(|e| fail(path.display(), e.error))?;
        Ok(())
    }

    fn remove(&self, path: &Path) -> StorageResult<()> {
        match fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(fail(path.display(), e)),
        }
    }

    fn cert_path(&self, name: &str) -> StorageResult<PathBuf> {
        Ok(self
            .root
            .join("certs")
            .join(format!("{}.json", plain(name)?)))
    }
}

#[async_trait]
impl super::Storage for DirectoryStorage {
    async fn account(&self) -> StorageResult<Option<String>> {
        self.read(&self.root.join("account.json"))
    }

    async fn set_account(&self, credentials: &str) -> StorageResult<()> {
        self.write(&self.root.join("account.json"), credentials)
    }

    async fn forget_account(&self) -> StorageResult<()> {
        self.remove(&self.root.join("account.json"))
    }

    async fn versions(&self) -> StorageResult<HashMap<String, i64>> {
        let dir = self.root.join("certs");
        let mut versions = HashMap::new();
        for entry in fs::read_dir(&dir).map_err(|e| fail(dir.display(), e))? {
            let entry = entry.map_err(|e| fail(dir.display(), e))?;
            let file = entry.file_name().to_string_lossy().into_owned();
            let Some(name) = file.strip_suffix(".json") else {
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            if let Some(cert) = self.certificate(name).await? {
                versions.insert(name.to_owned(), cert.not_after);
            }
        }
        Ok(versions)
    }

    async fn generation(&self) -> StorageResult<u64> {
        let text = self.read(&self.root.join("generation"))?;
        Ok(text.and_then(|t| t.trim().parse().ok()).unwrap_or(0))
    }

    async fn certificate(&self, name: &str) -> StorageResult<Option<StoredCertificate>> {
        let path = self.cert_path(name)?;
        let Some(json) = self.read(&path)? else {
            return Ok(None);
        };
        serde_json::from_str(&json)
            .map(Some)
            .map_err(|e| StorageError(format!("{}: not readable: {e}", path.display())))
    }

    async fn store_certificate(&self, name: &str, cert: &StoredCertificate) -> StorageResult<()> {
        let json = serde_json::to_string(cert).expect("plain strings serialize");
        self.write(&self.cert_path(name)?, &json)?;
        let next = self.generation().await? + 1;
        self.write(&self.root.join("generation"), &next.to_string())
    }

    async fn challenge(&self, token: &str) -> StorageResult<Option<String>> {
        let path = self.root.join("challenges").join(plain(token)?);
        let fresh = fs::metadata(&path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|at| at.elapsed().ok())
            .is_some_and(|age| age < CHALLENGE_TTL);
        if !fresh {
            return Ok(None);
        }
        self.read(&path)
    }

    async fn set_challenge(&self, token: &str, key_authorization: &str) -> StorageResult<()> {
        // Old answers (an order that ended without tidying up) go when new ones come.
        let dir = self.root.join("challenges");
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|at| at.elapsed().ok())
                .is_some_and(|age| age >= CHALLENGE_TTL);
            if stale {
                let _ = fs::remove_file(entry.path());
            }
        }
        self.write(&dir.join(plain(token)?), key_authorization)
    }

    async fn forget_challenge(&self, token: &str) -> StorageResult<()> {
        self.remove(&self.root.join("challenges").join(plain(token)?))
    }

    async fn lock(&self, name: &str) -> StorageResult<Option<String>> {
        let path = self.root.join("locks").join(plain(name)?);
        let token = super::random_token();
        for _ in 0..2 {
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode_private()
                .open(&path)
            {
                Ok(mut file) => {
                    let expires = now() + LOCK_TTL.as_secs();
                    file.write_all(format!("{token} {expires}").as_bytes())
                        .map_err(|e| fail(path.display(), e))?;
                    return Ok(Some(token));
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    let expired = self
                        .read(&path)?
                        .and_then(|text| text.split_whitespace().nth(1)?.parse::<u64>().ok())
                        .is_none_or(|expires| expires <= now());
                    if !expired {
                        return Ok(None);
                    }
                    self.remove(&path)?;
                }
                Err(e) => return Err(fail(path.display(), e)),
            }
        }
        Ok(None)
    }

    async fn unlock(&self, name: &str, token: &str) -> StorageResult<()> {
        let path = self.root.join("locks").join(plain(name)?);
        let held = self
            .read(&path)?
            .is_some_and(|text| text.split_whitespace().next() == Some(token));
        if held {
            self.remove(&path)?;
        }
        Ok(())
    }
}

trait PrivateMode {
    fn mode_private(&mut self) -> &mut Self;
}

impl PrivateMode for fs::OpenOptions {
    fn mode_private(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::mode(self, 0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Storage;
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn certificates_challenges_and_locks_round_trip_privately() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("acme");
        let storage = DirectoryStorage::new(&root).unwrap();
        runtime().block_on(async {
            assert_eq!(storage.generation().await.unwrap(), 0);
            let cert = StoredCertificate {
                chain: "CHAIN".into(),
                key: "KEY".into(),
                not_after: 42,
            };
            storage.store_certificate("a.example", &cert).await.unwrap();
            assert_eq!(storage.generation().await.unwrap(), 1);
            assert_eq!(
                storage.versions().await.unwrap(),
                HashMap::from([("a.example".to_owned(), 42)])
            );
            let read = storage.certificate("a.example").await.unwrap().unwrap();
            assert_eq!((read.chain.as_str(), read.key.as_str()), ("CHAIN", "KEY"));
            let mode = fs::metadata(root.join("certs/a.example.json"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
            assert!(storage.certificate("../../etc/passwd").await.is_err());

            storage.set_challenge("tok_1", "tok_1.thumb").await.unwrap();
            assert_eq!(
                storage.challenge("tok_1").await.unwrap().as_deref(),
                Some("tok_1.thumb")
            );
            storage.forget_challenge("tok_1").await.unwrap();
            assert_eq!(storage.challenge("tok_1").await.unwrap(), None);

            let held = storage.lock("a.example").await.unwrap().unwrap();
            assert_eq!(storage.lock("a.example").await.unwrap(), None);
            storage.unlock("a.example", "not-the-owner").await.unwrap();
            assert_eq!(storage.lock("a.example").await.unwrap(), None);
            storage.unlock("a.example", &held).await.unwrap();
            assert!(storage.lock("a.example").await.unwrap().is_some());
        });
        let leftovers: Vec<_> = fs::read_dir(root.join("certs"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(TEMP_PREFIX))
            .collect();
        assert!(leftovers.is_empty());
        assert_eq!(
            fs::metadata(&root).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }
}
