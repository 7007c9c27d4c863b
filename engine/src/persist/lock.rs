//! The data directory's lock: one writer at a time. A running server holds it for its lifetime;
//! `passpulse compact` takes it too, so the two can never rewrite the same files at once. The lock
//! is an OS file lock (`flock`), released by the kernel when the process dies, even by SIGKILL.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::Path;

use super::PersistError;

/// Name of the lock file in the data directory.
pub const LOCK_FILE: &str = "passpulse.lock";

/// Holds the data directory's lock until dropped.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Takes the lock, or says who holds it.
    pub fn acquire(dir: &Path) -> Result<DirLock, PersistError> {
        super::fsio::ensure_dir(dir)?;
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| PersistError::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(DirLock { _file: file }),
            Err(TryLockError::WouldBlock) => Err(PersistError::Locked(dir.to_path_buf())),
            Err(TryLockError::Error(e)) => Err(PersistError::io(&path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let a = DirLock::acquire(dir.path()).unwrap();
        let e = DirLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(e.contains("in use"), "{e}");
        drop(a);
        DirLock::acquire(dir.path()).unwrap();
    }
}
