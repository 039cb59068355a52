//! The archive on disk: verified, atomic writes of images, sidecars and manifests.
//!
//! Layout under the archive root:
//!
//! ```text
//! <batch>/manifest.jsonl                   one line per archived, skipped or lost image
//! <batch>/images/<kk>/<key>-<n>.png        the image (kk = first two characters of the key)
//! <batch>/images/<kk>/<key>-<n>.json       its sidecar
//! <batch>/.tmp/                            downloads in progress (cleared at the start of a run)
//! ```
//!
//! An image is downloaded to `.tmp`, verified (length, PNG decodes, dimensions match the request),
//! hashed, fsynced, renamed into place, and only then marked archived in the store. The manifest
//! is rewritten from the store (temp file, fsync, rename) at the start and end of every run, and
//! appended to as images are archived in between, so it always agrees with the store at rest.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::api::Size;
use crate::store::ImageRecord;

/// Errors of the archive layer.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// A file operation failed (disk full, no permission, ...).
    #[error("archive: {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The downloaded bytes are not the image that was asked for.
    #[error("bad image: {0}")]
    BadImage(String),
    /// A name would escape the archive, or a symlink was found where a folder must be.
    #[error("unsafe archive path: {0}")]
    Unsafe(String),
}

impl ArchiveError {
    /// Whether the download itself was bad (retry the download), rather than the disk.
    pub fn is_bad_image(&self) -> bool {
        matches!(self, ArchiveError::BadImage(_))
    }
}

type Result<T, E = ArchiveError> = std::result::Result<T, E>;

fn io_at<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ArchiveError + 'a {
    move |source| ArchiveError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// A manifest being rewritten (see [`Archive::manifest_writer`]).
#[derive(Debug)]
pub struct ManifestWriter<'a> {
    archive: &'a Archive,
    batch: String,
    dir: PathBuf,
    path: PathBuf,
    out: io::BufWriter<tempfile::NamedTempFile>,
}

impl ManifestWriter<'_> {
    /// Adds one record (in order), and writes its sidecar if it is missing.
    pub fn push(&mut self, r: &ImageRecord) -> Result<()> {
        serde_json::to_writer(&mut self.out, r)
            .map_err(|e| ArchiveError::BadImage(e.to_string()))?;
        self.out
            .write_all(b"\n")
            .map_err(io_at("write", &self.path))?;
        if let Some(rel) = r.path.as_deref()
            && !self.archive.has_sidecar(r)
            && self.archive.resolve(&self.batch, rel)?.exists()
        {
            self.archive.write_sidecar(r)?;
        }
        Ok(())
    }

    /// Syncs the new manifest and renames it over the old one.
    pub fn finish(self) -> Result<()> {
        let tmp = self
            .out
            .into_inner()
            .map_err(|e| io_at("write", &self.path)(e.into_error()))?;
        tmp.as_file()
            .sync_all()
            .map_err(io_at("sync", &self.path))?;
        tmp.persist(&self.path)
            .map_err(|e| io_at("rename into", &self.path)(e.error))?;
        sync_dir(&self.dir)
    }
}

/// What `verify` found for one archived image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileCheck {
    /// Present, same hash.
    Ok,
    /// No file.
    Missing,
    /// The bytes differ from the recorded hash.
    Corrupt,
}

/// The archive root.
#[derive(Debug, Clone)]
pub struct Archive {
    root: PathBuf,
    /// Folders already checked (real folders, no symlinks) in this process.
    checked: Arc<Mutex<HashSet<PathBuf>>>,
}

/// Whether `name` is a safe batch name (the job file's rule, checked again here because it names
/// a folder).
pub fn is_safe_batch(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

fn is_safe_key(key: &str) -> bool {
    key.len() >= 8 && key.len() <= 64 && key.bytes().all(|c| c.is_ascii_hexdigit())
}

impl Archive {
    /// An archive rooted at `root` (created when first written).
    pub fn new(root: impl Into<PathBuf>) -> Archive {
        Archive {
            root: root.into(),
            checked: Arc::default(),
        }
    }

    /// The archive root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The folder of a batch.
    pub fn batch_dir(&self, batch: &str) -> Result<PathBuf> {
        if !is_safe_batch(batch) {
            return Err(ArchiveError::Unsafe(format!("batch name {batch:?}")));
        }
        Ok(self.root.join(batch))
    }

    /// Path of an image relative to its batch folder.
    pub fn image_rel_path(key: &str, idx: u32) -> Result<String> {
        if !is_safe_key(key) {
            return Err(ArchiveError::Unsafe(format!("item key {key:?}")));
        }
        Ok(format!("images/{}/{key}-{idx}.png", &key[..2]))
    }

    /// Creates `dir` and its parents below the root, refusing symlinks on the way (a planted
    /// symlink must not lead writes out of the archive).
    fn ensure_dir(&self, dir: &Path) -> Result<()> {
        if self
            .checked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(dir)
        {
            return Ok(());
        }
        let rel = dir.strip_prefix(&self.root).map_err(|_| {
            ArchiveError::Unsafe(format!("{} is outside the archive", dir.display()))
        })?;
        let mut cur = self.root.clone();
        fs::create_dir_all(&cur).map_err(io_at("create folder", &cur))?;
        for part in rel.components() {
            cur.push(part);
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(ArchiveError::Unsafe(format!(
                        "{} is a symlink",
                        cur.display()
                    )));
                }
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(ArchiveError::Unsafe(format!(
                        "{} is not a folder",
                        cur.display()
                    )));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => match fs::create_dir(&cur) {
                    Ok(()) => {}
                    // Another download worker made it meanwhile: fine if it is a real folder.
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        let m = fs::symlink_metadata(&cur).map_err(io_at("inspect", &cur))?;
                        if !m.is_dir() || m.file_type().is_symlink() {
                            return Err(ArchiveError::Unsafe(format!(
                                "{} is not a folder",
                                cur.display()
                            )));
                        }
                    }
                    Err(e) => return Err(io_at("create folder", &cur)(e)),
                },
                Err(e) => return Err(io_at("inspect", &cur)(e)),
            }
        }
        self.checked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(dir.to_path_buf());
        Ok(())
    }

    /// Refuses a symlink on the way from the root to `path`, among the parts that exist: a
    /// planted link must not lead reads, writes or removals out of the archive.
    fn refuse_links_below_root(&self, path: &Path) -> Result<()> {
        let rel = path.strip_prefix(&self.root).map_err(|_| {
            ArchiveError::Unsafe(format!("{} is outside the archive", path.display()))
        })?;
        let mut cur = self.root.clone();
        for part in rel.components() {
            cur.push(part);
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(ArchiveError::Unsafe(format!(
                        "{} is a symlink",
                        cur.display()
                    )));
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(io_at("inspect", &cur)(e)),
            }
        }
        Ok(())
    }

    /// Removes downloads left half-done by an earlier run.
    pub fn clear_temp(&self, batch: &str) -> Result<usize> {
        let tmp = self.batch_dir(batch)?.join(".tmp");
        // `read_dir` follows links: a planted `.tmp` link would have us empty a folder elsewhere.
        self.refuse_links_below_root(&tmp)?;
        let entries = match fs::read_dir(&tmp) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io_at("read", &tmp)(e)),
        };
        let mut n = 0;
        for entry in entries {
            let entry = entry.map_err(io_at("read", &tmp))?;
            let path = entry.path();
            fs::remove_file(&path).map_err(io_at("remove", &path))?;
            n += 1;
        }
        Ok(n)
    }

    /// A fresh temporary path for a download of `key`/`idx`, unique within this process.
    pub fn temp_path(&self, batch: &str, key: &str, idx: u32) -> Result<PathBuf> {
        static SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let tmp = self.batch_dir(batch)?.join(".tmp");
        self.ensure_dir(&tmp)?;
        if !is_safe_key(key) {
            return Err(ArchiveError::Unsafe(format!("item key {key:?}")));
        }
        let n = SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(tmp.join(format!("{key}-{idx}.{}-{n}.part", std::process::id())))
    }

    /// Absolute path of an image given its batch and relative path; refused when it would lead
    /// out of the archive, by `..`, an absolute path or a symlink below the root.
    pub fn resolve(&self, batch: &str, rel: &str) -> Result<PathBuf> {
        let rel_path = Path::new(rel);
        if rel_path.is_absolute()
            || rel_path
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(ArchiveError::Unsafe(format!("path {rel:?}")));
        }
        let path = self.batch_dir(batch)?.join(rel_path);
        self.refuse_links_below_root(&path)?;
        Ok(path)
    }

    /// Verifies downloaded bytes (a complete PNG of the requested size), writes them through a
    /// temp file, fsyncs, renames into place and makes the rename durable. Returns the path.
    pub fn store_image(
        &self,
        batch: &str,
        key: &str,
        idx: u32,
        bytes: &[u8],
        expected: Size,
    ) -> Result<PathBuf> {
        verify_png_bytes(bytes, expected)?;
        let tmp = self.temp_path(batch, key, idx)?;
        let written = File::create(&tmp)
            .and_then(|mut f| {
                f.write_all(bytes)?;
                f.sync_all()
            })
            .map_err(io_at("write", &tmp));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        let rel = Archive::image_rel_path(key, idx)?;
        self.commit_image(&tmp, batch, &rel).inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })
    }

    /// Moves a verified download into place and makes the rename durable.
    pub fn commit_image(&self, tmp: &Path, batch: &str, rel: &str) -> Result<PathBuf> {
        let dest = self.resolve(batch, rel)?;
        let dir = dest.parent().unwrap_or(&self.root).to_path_buf();
        self.ensure_dir(&dir)?;
        if fs::symlink_metadata(&dest).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(ArchiveError::Unsafe(format!(
                "{} is a symlink",
                dest.display()
            )));
        }
        fs::rename(tmp, &dest).map_err(io_at("rename into", &dest))?;
        sync_dir(&dir)?;
        Ok(dest)
    }

    /// Writes the sidecar JSON beside an archived image, atomically.
    pub fn write_sidecar(&self, record: &ImageRecord) -> Result<()> {
        let Some(rel) = &record.path else {
            return Ok(());
        };
        let image = self.resolve(&record.batch, rel)?;
        let sidecar = image.with_extension("json");
        let json =
            serde_json::to_vec_pretty(record).map_err(|e| ArchiveError::BadImage(e.to_string()))?;
        // Not fsynced: a sidecar is derived from the store, and every run rewrites one that is
        // missing or empty.
        self.write_in_batch(&record.batch, &sidecar, &json, false)
    }

    /// Writes a file of `batch` atomically through a temp file in the batch's `.tmp`, so that a
    /// crash mid-write leaves its temp file where the next run clears it, never beside the images.
    fn write_in_batch(&self, batch: &str, path: &Path, bytes: &[u8], durable: bool) -> Result<()> {
        let tmp = self.batch_dir(batch)?.join(".tmp");
        self.ensure_dir(&tmp)?;
        write_atomic_via(path, &tmp, bytes, durable)
    }

    /// Whether the sidecar of an archived image exists and is not empty.
    pub fn has_sidecar(&self, record: &ImageRecord) -> bool {
        record
            .path
            .as_deref()
            .and_then(|rel| self.resolve(&record.batch, rel).ok())
            .and_then(|p| fs::metadata(p.with_extension("json")).ok())
            .is_some_and(|m| m.len() > 0)
    }

    /// Appends one record to the batch's manifest.
    pub fn append_manifest(&self, record: &ImageRecord) -> Result<()> {
        let dir = self.batch_dir(&record.batch)?;
        self.ensure_dir(&dir)?;
        let path = dir.join("manifest.jsonl");
        refuse_symlink(&path)?;
        let mut line =
            serde_json::to_vec(record).map_err(|e| ArchiveError::BadImage(e.to_string()))?;
        line.push(b'\n');
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_at("open", &path))?;
        f.write_all(&line).map_err(io_at("append to", &path))?;
        Ok(())
    }

    /// A new manifest for `batch`, written record by record into a temp file in the batch's
    /// `.tmp` and put in place by [`ManifestWriter::finish`].
    pub fn manifest_writer(&self, batch: &str) -> Result<ManifestWriter<'_>> {
        let dir = self.batch_dir(batch)?;
        let tmp_dir = dir.join(".tmp");
        self.ensure_dir(&tmp_dir)?;
        let path = dir.join("manifest.jsonl");
        refuse_symlink(&path)?;
        let tmp = tempfile::NamedTempFile::new_in(&tmp_dir)
            .map_err(io_at("create temp file in", &tmp_dir))?;
        Ok(ManifestWriter {
            archive: self,
            batch: batch.to_owned(),
            dir,
            path,
            out: io::BufWriter::with_capacity(1 << 16, tmp),
        })
    }

    /// Removes an archived image (and its sidecar) whose bytes no longer match the store, so the
    /// next run downloads it again instead of adopting the file as a finished download.
    pub fn remove_image(&self, batch: &str, rel: &str) -> Result<()> {
        let image = self.resolve(batch, rel)?;
        for path in [image.with_extension("json"), image] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_at("remove", &path)(e)),
            }
        }
        Ok(())
    }

    /// Re-hashes an archived image against its recorded hash.
    pub fn check(&self, batch: &str, rel: &str, sha256: &str) -> Result<FileCheck> {
        let path = self.resolve(batch, rel)?;
        match hash_file(&path) {
            Ok((hash, _)) if hash == sha256 => Ok(FileCheck::Ok),
            Ok(_) => Ok(FileCheck::Corrupt),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(FileCheck::Missing),
            Err(e) => Err(io_at("read", &path)(e)),
        }
    }
}

fn refuse_symlink(path: &Path) -> Result<()> {
    if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(ArchiveError::Unsafe(format!(
            "{} is a symlink",
            path.display()
        )));
    }
    Ok(())
}

/// Writes `bytes` to `path` through a temp file in `tmp_dir` (on the same file system) and
/// renames it into place; with `durable`, the data and the rename are fsynced too.
fn write_atomic_via(path: &Path, tmp_dir: &Path, bytes: &[u8], durable: bool) -> Result<()> {
    refuse_symlink(path)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp =
        tempfile::NamedTempFile::new_in(tmp_dir).map_err(io_at("create temp file in", tmp_dir))?;
    tmp.write_all(bytes).map_err(io_at("write", tmp.path()))?;
    if durable {
        tmp.as_file().sync_all().map_err(io_at("sync", path))?;
    }
    tmp.persist(path)
        .map_err(|e| io_at("rename into", path)(e.error))?;
    if durable {
        sync_dir(dir)?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_at("sync folder", dir))?;
    Ok(())
}

/// SHA-256 (hex) and length of a file.
pub fn hash_file(path: &Path) -> io::Result<(String, u64)> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let n = io::copy(&mut f, &mut h)?;
    Ok((hex::encode(h.finalize()), n))
}

/// Checks that `path` holds a complete PNG of exactly `expected` size: the header parses and
/// every row decodes (a truncated file fails here).
pub fn verify_png(path: &Path, expected: Size) -> Result<()> {
    let bytes = fs::read(path).map_err(io_at("read", path))?;
    verify_png_bytes(&bytes, expected)
}

/// [`verify_png`] for bytes in memory.
pub fn verify_png_bytes(bytes: &[u8], expected: Size) -> Result<()> {
    let decoder = png::Decoder::new(io::Cursor::new(bytes));
    let mut reader = decoder
        .read_info()
        .map_err(|e| ArchiveError::BadImage(format!("not a PNG: {e}")))?;
    let info = reader.info();
    let got = Size::new(info.width, info.height);
    if got != expected {
        return Err(ArchiveError::BadImage(format!(
            "{got} instead of {expected}"
        )));
    }
    // Row by row: every row is inflated and unfiltered (a truncated or corrupt stream fails),
    // without allocating the whole frame.
    let mut rows = 0;
    while reader
        .next_row()
        .map_err(|e| ArchiveError::BadImage(format!("PNG does not decode: {e}")))?
        .is_some()
    {
        rows += 1;
    }
    if rows != expected.height {
        return Err(ArchiveError::BadImage(format!(
            "{rows} rows instead of {}",
            expected.height
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png_bytes(w: u32, h: u32) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, w, h);
            enc.set_color(png::ColorType::Rgb);
            let mut wr = enc.write_header().unwrap();
            wr.write_image_data(&vec![7u8; (w * h * 3) as usize])
                .unwrap();
        }
        out
    }

    #[test]
    fn png_verification_checks_size_and_completeness() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.png");
        let bytes = png_bytes(64, 32);
        fs::write(&p, &bytes).unwrap();
        verify_png(&p, Size::new(64, 32)).unwrap();
        assert!(
            verify_png(&p, Size::new(32, 64))
                .unwrap_err()
                .is_bad_image()
        );
        fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
        assert!(
            verify_png(&p, Size::new(64, 32))
                .unwrap_err()
                .is_bad_image()
        );
        fs::write(&p, b"<html>").unwrap();
        assert!(
            verify_png(&p, Size::new(64, 32))
                .unwrap_err()
                .is_bad_image()
        );
    }

    #[test]
    fn names_cannot_escape() {
        let a = Archive::new("/tmp/x");
        assert!(a.batch_dir("../etc").is_err());
        assert!(a.batch_dir("/abs").is_err());
        assert!(a.batch_dir("ok-batch_1").is_ok());
        assert!(Archive::image_rel_path("../../x", 0).is_err());
        assert!(a.resolve("ok", "../x").is_err());
        assert!(a.resolve("ok", "/etc/passwd").is_err());
    }

    #[cfg(unix)]
    #[test]
    fn planted_symlinks_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let a = Archive::new(dir.path());
        std::os::unix::fs::symlink(outside.path(), dir.path().join("evil")).unwrap();
        assert!(matches!(
            a.temp_path("evil", "abcdef0123456789", 0),
            Err(ArchiveError::Unsafe(_))
        ));
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[cfg(unix)]
    #[test]
    fn planted_symlinks_never_lead_removals_or_reads_outside() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("keep.txt"), b"precious").unwrap();
        let a = Archive::new(dir.path());
        // A `.tmp` link: clearing leftovers must not empty the folder it points to.
        fs::create_dir_all(dir.path().join("b")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("b/.tmp")).unwrap();
        assert!(matches!(a.clear_temp("b"), Err(ArchiveError::Unsafe(_))));
        // A batch folder that is a link.
        std::os::unix::fs::symlink(outside.path(), dir.path().join("c")).unwrap();
        assert!(matches!(a.clear_temp("c"), Err(ArchiveError::Unsafe(_))));
        // An images folder that is a link: no path through it is handed out.
        fs::create_dir_all(dir.path().join("d")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("d/images")).unwrap();
        let rel = Archive::image_rel_path("abcdef0123456789", 0).unwrap();
        assert!(matches!(a.resolve("d", &rel), Err(ArchiveError::Unsafe(_))));
        assert!(matches!(
            a.check("d", &rel, "00"),
            Err(ArchiveError::Unsafe(_))
        ));
        assert_eq!(
            fs::read(outside.path().join("keep.txt")).unwrap(),
            b"precious"
        );
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 1);
    }

    #[test]
    fn atomic_write_and_check() {
        let dir = tempfile::tempdir().unwrap();
        let a = Archive::new(dir.path());
        let tmp = a.temp_path("b", "abcdef0123456789", 1).unwrap();
        fs::write(&tmp, png_bytes(8, 8)).unwrap();
        let rel = Archive::image_rel_path("abcdef0123456789", 1).unwrap();
        let dest = a.commit_image(&tmp, "b", &rel).unwrap();
        assert!(dest.ends_with("b/images/ab/abcdef0123456789-1.png"));
        let (hash, _) = hash_file(&dest).unwrap();
        assert_eq!(a.check("b", &rel, &hash).unwrap(), FileCheck::Ok);
        assert_eq!(a.check("b", &rel, "00").unwrap(), FileCheck::Corrupt);
        fs::remove_file(&dest).unwrap();
        assert_eq!(a.check("b", &rel, &hash).unwrap(), FileCheck::Missing);
        fs::write(a.temp_path("b", "abcdef0123456789", 2).unwrap(), b"x").unwrap();
        assert_eq!(a.clear_temp("b").unwrap(), 1);
    }
}
