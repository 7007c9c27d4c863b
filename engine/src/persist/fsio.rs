//! Durable file operations: write under a temporary name, fsync, rename, fsync the directory.
//! After [`commit`] returns, the file survives a crash or power loss under its final name; before,
//! only a `.tmp` file can exist, which recovery deletes.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::PersistError;

/// Suffix of files being written.
pub const TMP_SUFFIX: &str = ".tmp";

/// Temporary name of `path`: a hidden sibling ending in [`TMP_SUFFIX`].
pub fn tmp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}{TMP_SUFFIX}"))
}

/// Creates `dir` (and parents) and makes the new entries durable.
pub fn ensure_dir(dir: &Path) -> Result<(), PersistError> {
    // "" is the parent of a relative one-component path: the working directory
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        ensure_dir(parent)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(PersistError::io(dir, e)),
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent)?;
    }
    Ok(())
}

/// fsyncs a directory, making renames and creations in it durable.
pub fn sync_dir(dir: &Path) -> Result<(), PersistError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| PersistError::io(dir, e))
}

/// Opens the temporary file for `path` (creating its directory).
pub fn create_tmp(path: &Path) -> Result<(PathBuf, File), PersistError> {
    if let Some(parent) = path.parent() {
        ensure_dir(parent)?;
    }
    let tmp = tmp_path(path);
    let f = File::create(&tmp).map_err(|e| PersistError::io(&tmp, e))?;
    Ok((tmp, f))
}

/// Makes a fully written temporary file durable under its final name; returns its size.
pub fn commit(tmp: &Path, file: File, path: &Path) -> Result<u64, PersistError> {
    let fail = |e| {
        let _ = fs::remove_file(tmp);
        PersistError::io(tmp, e)
    };
    file.sync_all().map_err(fail)?;
    let size = file.metadata().map_err(fail)?.len();
    drop(file);
    fs::rename(tmp, path).map_err(fail)?;
    if let Some(parent) = path.parent() {
        sync_dir(parent)?;
    }
    Ok(size)
}

/// Writes `bytes` to `path` durably (temp, fsync, rename, fsync dir); returns the size.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<u64, PersistError> {
    let (tmp, mut f) = create_tmp(path)?;
    if let Err(e) = f.write_all(bytes) {
        let _ = fs::remove_file(&tmp);
        return Err(PersistError::io(&tmp, e));
    }
    commit(&tmp, f, path)
}

/// Makes `to` a hard link of `from` (an existing `to` is taken as that link). On a file system
/// without hard links, a durable copy that appears under its name in one rename.
pub(crate) fn link_or_copy(from: &Path, to: &Path) -> Result<(), PersistError> {
    match fs::hard_link(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(PersistError::io(from, e)),
        Err(e) => {
            static WARNED: std::sync::atomic::AtomicBool =
                std::sync::atomic::AtomicBool::new(false);
            if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::warn!(error = %e, "the file system has no hard links; data files are copied instead");
            }
            let tmp = tmp_path(to);
            fs::copy(from, &tmp).map_err(|e| PersistError::io(&tmp, e))?;
            fs::File::open(&tmp)
                .and_then(|h| h.sync_all())
                .map_err(|e| PersistError::io(&tmp, e))?;
            fs::rename(&tmp, to).map_err(|e| PersistError::io(&tmp, e))
        }
    }
}

/// Removes a file; a missing file is not an error.
pub fn remove(path: &Path) -> Result<(), PersistError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(PersistError::io(path, e)),
    }
}

/// Every regular file under `dir`, recursively (empty if `dir` does not exist).
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(t) if t.is_file() => out.push(p),
                _ => {}
            }
        }
    }
    out.sort();
    out
}
