//! The artifact key's file. Whoever can write it can make the host run
//! native code of their choosing (they seal it), and whoever can read it
//! likewise; so a key is used only when this user owns it, nobody else may
//! read or write it, and it is whole.
//!
//! The key lives in a cache dir, which may be shared (a CI runner's home, a
//! `/tmp` path in `CLICKSTREAM_CACHE_DIR`): a key planted there by another
//! user is refused, not trusted. It is created by writing a temporary file
//! (`O_EXCL`, 0600), syncing it and linking it into place, so a reader sees
//! no key or a whole one — never the empty file a crash or a concurrent
//! first use used to leave — and every process racing to create it ends up
//! with the same key.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes of a key, as the host writes it: HMAC-SHA256's block of strength.
pub const KEY_BYTES: usize = 32;

/// Why the artifact key cannot be used. Each names the file and the fix.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // fields are named for what they hold; each #[error] says how they read
pub enum KeyError {
    #[error("artifact key {}: {doing}: {source}", path.display())]
    Io {
        path: PathBuf,
        /// What was being done, e.g. `reading`.
        doing: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "artifact key {} is owned by uid {owner}, not by this process's uid {uid}: a key another user planted would let them \
         seal native code for this host. If it is yours, `chown {uid} {}`; otherwise delete it and a new one is made",
        path.display(),
        path.display()
    )]
    Owner { path: PathBuf, owner: u32, uid: u32 },
    #[error(
        "artifact key {} has mode {mode:04o}: others may read or write it, and whoever can seals native code for this host. \
         `chmod 600 {}` if only you ever had it; otherwise delete it and a new one is made (then compile the artifacts again)",
        path.display(),
        path.display()
    )]
    Mode { path: PathBuf, mode: u32 },
    #[error(
        "artifact key {} is {len} bytes, not {KEY_BYTES}: cut short (a crash while it was written) or not a key. \
         Delete it and a new one is made (then compile the artifacts again)",
        path.display()
    )]
    Length { path: PathBuf, len: u64 },
    #[error("artifact key {} is not a regular file; point CLICKSTREAM_ARTIFACT_KEY at a file, or remove it", path.display())]
    NotAFile { path: PathBuf },
}

/// The secret that seals artifacts; see the module's trust model.
#[derive(Clone)]
pub struct ArtifactKey(pub(super) [u8; KEY_BYTES]);

impl std::fmt::Debug for ArtifactKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ArtifactKey(..)")
    }
}

impl ArtifactKey {
    /// A key from its bytes (tests; a host reads its key from a file).
    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> ArtifactKey {
        ArtifactKey(bytes)
    }

    /// The key in `path`, if the file exists; refused unless this user owns
    /// it, only they may read or write it (0600 or 0400), and it is whole.
    pub fn load(path: &Path) -> Result<Option<ArtifactKey>, KeyError> {
        let io = |doing| move |source| KeyError::Io { path: path.to_path_buf(), doing, source };
        let mut options = std::fs::OpenOptions::new();
        options.read(true);
        // A FIFO planted at the path would block the open.
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NONBLOCK);
        let file = match options.open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("opening")(e)),
        };
        // Checked on the open file: what is read is what was checked.
        let meta = file.metadata().map_err(io("reading its owner and mode"))?;
        if !meta.is_file() {
            return Err(KeyError::NotAFile { path: path.to_path_buf() });
        }
        check_owner_and_mode(path, &meta)?;
        let mut bytes = Vec::with_capacity(KEY_BYTES + 1);
        file.take(KEY_BYTES as u64 + 1).read_to_end(&mut bytes).map_err(io("reading"))?;
        let key =
            <[u8; KEY_BYTES]>::try_from(bytes.as_slice()).map_err(|_| KeyError::Length { path: path.to_path_buf(), len: meta.len() })?;
        Ok(Some(ArtifactKey(key)))
    }

    /// The key in `path`, created (random, 0600) when there is none. Any
    /// number of threads and processes may call this at once: they all get
    /// the same key, the one linked into place first.
    pub fn load_or_create(path: &Path) -> Result<ArtifactKey, KeyError> {
        if let Some(key) = Self::load(path)? {
            return Ok(key);
        }
        let io = |doing| move |source| KeyError::Io { path: path.to_path_buf(), doing, source };
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io("creating its folder"))?;
        let key: [u8; KEY_BYTES] = rand::random();
        let tmp = temporary_beside(path);
        let written = write_new(&tmp, &key).map_err(io("writing a new key"));
        // `link` fails when the path exists, where `rename` would replace a
        // key another process made (and may have sealed with) meanwhile.
        let linked = written.and_then(|()| std::fs::hard_link(&tmp, path).map_err(io("linking the new key into place")));
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                sync_dir(dir).map_err(io("syncing its folder"))?;
                Ok(ArtifactKey(key))
            }
            // Another thread or process linked its key first: use that one.
            Err(KeyError::Io { source, .. }) if source.kind() == std::io::ErrorKind::AlreadyExists => {
                Self::load(path)?.ok_or_else(|| io("reading the key another process made")(std::io::ErrorKind::NotFound.into()))
            }
            Err(e) => Err(e),
        }
    }
}

/// Refuses a key another user owns or others may read or write.
fn check_owner_and_mode(path: &Path, meta: &std::fs::Metadata) -> Result<(), KeyError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let uid = unsafe { libc::geteuid() };
        if meta.uid() != uid {
            return Err(KeyError::Owner { path: path.to_path_buf(), owner: meta.uid(), uid });
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Mode { path: path.to_path_buf(), mode });
        }
    }
    #[cfg(not(unix))]
    let _ = (path, meta);
    Ok(())
}

/// A name beside `path` no other thread or process uses.
fn temporary_beside(path: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().map_or_else(|| "artifact.key".into(), |n| n.to_string_lossy());
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id()))
}

/// Writes `bytes` to a file that must not exist yet (`O_EXCL`, mode 0600),
/// synced to disk before it is linked anywhere.
fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Makes a new entry in `dir` durable: a crash after it must not lose the
/// key artifacts were sealed with.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write_key(path: &Path, bytes: &[u8], mode: u32) {
        std::fs::write(path, bytes).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_key_others_may_read_or_write_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("artifact.key");
        for mode in [0o644, 0o640, 0o604, 0o660, 0o602] {
            write_key(&path, &[7; KEY_BYTES], mode);
            let err = ArtifactKey::load_or_create(&path).unwrap_err();
            assert!(matches!(err, KeyError::Mode { mode: m, .. } if m == mode), "{mode:o}: {err}");
            let message = err.to_string();
            assert!(
                message.contains(&path.display().to_string()) && message.contains("chmod 600") && message.contains("delete it"),
                "{message}"
            );
        }
        assert_eq!(std::fs::read(&path).unwrap(), [7; KEY_BYTES], "a refused key is left as it is");
        for mode in [0o600, 0o400] {
            write_key(&path, &[7; KEY_BYTES], mode);
            assert_eq!(ArtifactKey::load(&path).unwrap().unwrap().0, [7; KEY_BYTES], "{mode:o}");
        }
    }

    #[test]
    fn a_key_another_user_owns_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        // SAFETY: no preconditions.
        let path = if unsafe { libc::geteuid() } == 0 {
            let path = dir.path().join("artifact.key");
            write_key(&path, &[7; KEY_BYTES], 0o600);
            let nobody = 65534;
            std::os::unix::fs::chown(&path, Some(nobody), Some(nobody)).unwrap();
            path
        } else {
            // Not root, so no file of another user can be made: take one root owns.
            PathBuf::from("/etc/passwd")
        };
        let err = ArtifactKey::load_or_create(&path).unwrap_err();
        assert!(matches!(err, KeyError::Owner { .. }), "{err}");
        let message = err.to_string();
        assert!(message.contains(&path.display().to_string()) && message.contains("chown") && message.contains("delete it"), "{message}");
    }

    #[test]
    fn an_empty_or_short_key_is_refused_and_a_long_one_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("artifact.key");
        for len in [0, 1, KEY_BYTES - 1, KEY_BYTES + 1] {
            write_key(&path, &vec![7; len], 0o600);
            let err = ArtifactKey::load_or_create(&path).unwrap_err();
            assert!(matches!(err, KeyError::Length { len: l, .. } if l == len as u64), "{len}: {err}");
            assert!(err.to_string().contains("Delete it"), "{err}");
        }
    }

    #[test]
    fn a_new_key_is_whole_private_and_the_same_for_every_thread_making_it_at_once() {
        for round in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("cache").join("artifact.key");
            let start = std::sync::Barrier::new(16);
            let keys: Vec<Result<ArtifactKey, KeyError>> = std::thread::scope(|s| {
                let makers: Vec<_> = (0..16)
                    .map(|_| {
                        s.spawn(|| {
                            start.wait();
                            ArtifactKey::load_or_create(&path)
                        })
                    })
                    .collect();
                makers.into_iter().map(|m| m.join().unwrap()).collect()
            });
            let on_disk = std::fs::read(&path).unwrap();
            assert_eq!(on_disk.len(), KEY_BYTES, "round {round}");
            for key in keys {
                let key = key.unwrap_or_else(|e| panic!("round {round}: {e}"));
                assert_eq!(key.0.as_slice(), on_disk, "round {round}: every maker has the key on disk");
            }
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "round {round}");
            let left: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
            assert_eq!(left, ["artifact.key"], "round {round}: no temporary file left");
        }
    }
}
