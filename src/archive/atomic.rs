//! Atomic file writes: a temp file on the same file system, written whole, fsynced when it must be
//! durable, renamed over the destination (never through a symlink planted there), and the rename
//! made durable. The archive's sidecars and manifests and the report's pages, thumbnails, exports
//! and metrics all go through here.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

/// Why an atomic write failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The destination is a symlink: it is never written through.
    #[error("{} is a symlink", .0.display())]
    Symlink(PathBuf),
}

fn io_at<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> WriteError + 'a {
    move |source| WriteError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Who may read the file once it is in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The owner alone (0600): the archive's files.
    Private,
    /// Everyone (0644): report pages, thumbnails, exports and metrics, read by a web server or
    /// node_exporter.
    Public,
}

/// A temp file for `dest` in `tmp_dir` (its own folder when `None`), which must be on the same
/// file system as `dest`.
pub fn temp_for(
    dest: &Path,
    tmp_dir: Option<&Path>,
    mode: Mode,
) -> Result<NamedTempFile, WriteError> {
    let dir = tmp_dir.unwrap_or_else(|| parent(dest));
    let mut builder = tempfile::Builder::new();
    builder.prefix(".runner-tmp");
    #[cfg(unix)]
    if mode == Mode::Public {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o644));
    }
    #[cfg(not(unix))]
    let _ = mode;
    builder
        .tempfile_in(dir)
        .map_err(io_at("create a temp file in", dir))
}

/// Moves a finished temp file over `dest`: fsynced first when `durable`, the rename made durable
/// too, and never through a symlink planted at `dest`.
pub fn commit(tmp: NamedTempFile, dest: &Path, durable: bool) -> Result<(), WriteError> {
    if durable {
        tmp.as_file().sync_all().map_err(io_at("sync", dest))?;
    }
    refuse_symlink(dest)?;
    tmp.persist(dest)
        .map_err(|e| io_at("rename into", dest)(e.error))?;
    if durable {
        sync_dir(parent(dest))?;
    }
    Ok(())
}

/// Writes `bytes` to `dest` atomically (see the module's doc).
pub fn write(
    dest: &Path,
    tmp_dir: Option<&Path>,
    mode: Mode,
    bytes: &[u8],
    durable: bool,
) -> Result<(), WriteError> {
    refuse_symlink(dest)?;
    let mut tmp = temp_for(dest, tmp_dir, mode)?;
    tmp.write_all(bytes).map_err(io_at("write", dest))?;
    commit(tmp, dest, durable)
}

/// Refuses a symlink at `path` (a missing file is fine).
pub fn refuse_symlink(path: &Path) -> Result<(), WriteError> {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(WriteError::Symlink(path.to_path_buf()));
    }
    Ok(())
}

/// Makes the entries of `dir` (a rename into it) durable.
pub fn sync_dir(dir: &Path) -> Result<(), WriteError> {
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_at("sync folder", dir))?;
    Ok(())
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replace_whole_files_with_the_asked_mode_and_refuse_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("a.txt");
        write(&dest, None, Mode::Public, b"one", true).unwrap();
        write(&dest, None, Mode::Public, b"two", false).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"two");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&dest), 0o644);
            let private = dir.path().join("p.txt");
            write(&private, None, Mode::Private, b"x", false).unwrap();
            assert_eq!(mode(&private), 0o600);
            let target = dir.path().join("target");
            std::fs::write(&target, b"keep").unwrap();
            let link = dir.path().join("link");
            std::os::unix::fs::symlink(&target, &link).unwrap();
            assert!(matches!(
                write(&link, None, Mode::Public, b"y", true),
                Err(WriteError::Symlink(_))
            ));
            assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        }
        // No temp file is left beside the destination.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with(".runner-tmp"))
            .collect();
        assert!(names.is_empty(), "{names:?}");
    }
}
