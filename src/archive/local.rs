//! The archive as a folder on this machine: the embedded default.
//!
//! Downloads are written to the batch's `.tmp` (whole blocks with `O_DIRECT`, see [`direct`]),
//! fsynced, renamed into place, and the rename made durable. Every path handed out is checked:
//! no `..`, nothing absolute, no symlink on the way from the root, so a planted link cannot lead a
//! write, read or removal out of the archive. The file work runs on tokio's blocking pool.

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::future::BoxFuture;

#[cfg(doc)]
use super::direct;
use super::direct::write_new_synced;
use super::png::{hash_file, verify_png, verify_png_bytes};
use super::{
    Archive, ArchiveError, FileCheck, ImageRecord, ManifestSink, Result, Stored, atomic,
    image_rel_path, io_at, is_safe_batch, is_safe_key, refused,
};
use crate::api::Size;
use crate::client::ImageBuf;

/// An archive in a folder.
#[derive(Debug, Clone)]
pub struct LocalArchive {
    root: PathBuf,
    /// Folders already checked (real folders, no symlinks) in this process.
    checked: Arc<Mutex<HashSet<PathBuf>>>,
}

impl LocalArchive {
    /// An archive rooted at `root` (created when first written).
    pub fn new(root: impl Into<PathBuf>) -> LocalArchive {
        LocalArchive {
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
                    return Err(refused(&cur, "is a symlink"));
                }
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(refused(&cur, "is not a folder"));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => match fs::create_dir(&cur) {
                    Ok(()) => {}
                    // Another download worker made it meanwhile: fine if it is a real folder.
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        let m = fs::symlink_metadata(&cur).map_err(io_at("inspect", &cur))?;
                        if !m.is_dir() || m.file_type().is_symlink() {
                            return Err(refused(&cur, "is not a folder"));
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
                    return Err(refused(&cur, "is a symlink"));
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(io_at("inspect", &cur)(e)),
            }
        }
        Ok(())
    }

    /// Removes downloads left half-done by an earlier run.
    fn clear_temp_now(&self, batch: &str) -> Result<usize> {
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
    fn temp_path(&self, batch: &str, key: &str, idx: u32) -> Result<PathBuf> {
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
    fn store_image_now(
        &self,
        batch: &str,
        key: &str,
        idx: u32,
        image: &ImageBuf,
        expected: Size,
    ) -> Result<String> {
        verify_png_bytes(image.as_slice(), expected)?;
        let tmp = self.temp_path(batch, key, idx)?;
        let written = write_new_synced(&tmp, image).map_err(io_at("write", &tmp));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        let rel = image_rel_path(key, idx)?;
        self.commit_image(&tmp, batch, &rel)
            .inspect_err(|_| {
                let _ = fs::remove_file(&tmp);
            })
            .map(|_| rel)
    }

    /// Moves a verified download into place and makes the rename durable.
    fn commit_image(&self, tmp: &Path, batch: &str, rel: &str) -> Result<PathBuf> {
        let dest = self.resolve(batch, rel)?;
        let dir = dest.parent().unwrap_or(&self.root).to_path_buf();
        self.ensure_dir(&dir)?;
        atomic::refuse_symlink(&dest)?;
        fs::rename(tmp, &dest).map_err(io_at("rename into", &dest))?;
        atomic::sync_dir(&dir)?;
        Ok(dest)
    }

    /// Writes the sidecar JSON beside an archived image, atomically.
    fn write_sidecar(&self, record: &ImageRecord) -> Result<()> {
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
        Ok(atomic::write(
            path,
            Some(&tmp),
            atomic::Mode::Private,
            bytes,
            durable,
        )?)
    }

    /// Whether the sidecar of an archived image exists and is not empty.
    fn has_sidecar(&self, record: &ImageRecord) -> bool {
        record
            .path
            .as_deref()
            .and_then(|rel| self.resolve(&record.batch, rel).ok())
            .and_then(|p| fs::metadata(p.with_extension("json")).ok())
            .is_some_and(|m| m.len() > 0)
    }

    /// Appends one record to the batch's manifest.
    fn append_manifest(&self, record: &ImageRecord) -> Result<()> {
        let dir = self.batch_dir(&record.batch)?;
        self.ensure_dir(&dir)?;
        let path = dir.join("manifest.jsonl");
        atomic::refuse_symlink(&path)?;
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
    /// `.tmp` and put in place by [`ManifestSink::finish`].
    fn manifest_writer(&self, batch: &str) -> Result<LocalManifest> {
        let dir = self.batch_dir(batch)?;
        let tmp_dir = dir.join(".tmp");
        self.ensure_dir(&tmp_dir)?;
        let path = dir.join("manifest.jsonl");
        atomic::refuse_symlink(&path)?;
        let tmp = atomic::temp_for(&path, Some(&tmp_dir), atomic::Mode::Private)?;
        Ok(LocalManifest {
            archive: self.clone(),
            batch: batch.to_owned(),
            path,
            out: io::BufWriter::with_capacity(1 << 16, tmp),
        })
    }

    fn remove_image_now(&self, batch: &str, rel: &str) -> Result<()> {
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

    fn check_now(&self, batch: &str, rel: &str, sha256: &str) -> Result<FileCheck> {
        let path = self.resolve(batch, rel)?;
        match hash_file(&path) {
            Ok((hash, _)) if hash == sha256 => Ok(FileCheck::Ok),
            Ok(_) => Ok(FileCheck::Corrupt),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(FileCheck::Missing),
            Err(e) => Err(io_at("read", &path)(e)),
        }
    }

    /// The image at `dest` (`rel` in its batch), when it verifies as `size`; one that does not
    /// is removed.
    fn adopt_now(dest: &Path, rel: String, size: Size) -> Result<Option<Stored>> {
        match verify_png(dest, size) {
            Ok((sha256, bytes)) => Ok(Some(Stored {
                path: rel,
                sha256,
                bytes,
            })),
            Err(_) => {
                let _ = fs::remove_file(dest);
                Ok(None)
            }
        }
    }

    /// Runs `f` on a clone of this archive on tokio's blocking pool: file work (decoding,
    /// hashing, fsync, rename) must not hold up the async workers.
    fn blocking<T, F>(&self, f: F) -> BoxFuture<'static, Result<T>>
    where
        T: Send + 'static,
        F: FnOnce(&LocalArchive) -> Result<T> + Send + 'static,
    {
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(&this))
            .map(|joined| {
                joined.unwrap_or_else(|e| {
                    Err(ArchiveError::Unsafe(format!("archive worker failed: {e}")))
                })
            })
            .boxed()
    }
}

impl Archive for LocalArchive {
    fn location(&self) -> String {
        format!("archive folder {}", self.root.display())
    }

    fn clear_temp<'a>(&'a self, batch: &'a str) -> BoxFuture<'a, Result<usize>> {
        let batch = batch.to_owned();
        self.blocking(move |a| a.clear_temp_now(&batch))
    }

    fn adopt<'a>(
        &'a self,
        batch: &'a str,
        key: &'a str,
        idx: u32,
        size: Size,
    ) -> BoxFuture<'a, Result<Option<Stored>>> {
        // Nearly always there is nothing to adopt: that is known from one look, on this thread;
        // only a file found goes to the blocking pool to be read and verified.
        let found = image_rel_path(key, idx).and_then(|rel| {
            let dest = self.resolve(batch, &rel)?;
            Ok(dest.exists().then_some((dest, rel)))
        });
        match found {
            Ok(Some((dest, rel))) => self.blocking(move |_| Self::adopt_now(&dest, rel, size)),
            other => futures::future::ready(other.map(|_| None)).boxed(),
        }
    }

    fn store_image<'a>(
        &'a self,
        batch: &'a str,
        key: &'a str,
        idx: u32,
        image: ImageBuf,
        size: Size,
    ) -> BoxFuture<'a, Result<String>> {
        let (batch, key) = (batch.to_owned(), key.to_owned());
        self.blocking(move |a| a.store_image_now(&batch, &key, idx, &image, size))
    }

    fn record(&self, record: ImageRecord) -> BoxFuture<'_, Result<()>> {
        self.blocking(move |a| {
            a.write_sidecar(&record)?;
            a.append_manifest(&record)
        })
    }

    fn manifest<'a>(&'a self, batch: &'a str) -> Result<Box<dyn ManifestSink + 'a>> {
        Ok(Box::new(self.manifest_writer(batch)?))
    }

    fn check<'a>(
        &'a self,
        batch: &'a str,
        rel: &'a str,
        sha256: &'a str,
    ) -> BoxFuture<'a, Result<FileCheck>> {
        let (batch, rel, sha256) = (batch.to_owned(), rel.to_owned(), sha256.to_owned());
        self.blocking(move |a| a.check_now(&batch, &rel, &sha256))
    }

    fn remove_image<'a>(&'a self, batch: &'a str, rel: &'a str) -> BoxFuture<'a, Result<()>> {
        let (batch, rel) = (batch.to_owned(), rel.to_owned());
        self.blocking(move |a| a.remove_image_now(&batch, &rel))
    }
}

/// A manifest of a [`LocalArchive`] being rewritten.
#[derive(Debug)]
struct LocalManifest {
    archive: LocalArchive,
    batch: String,
    path: PathBuf,
    out: io::BufWriter<tempfile::NamedTempFile>,
}

impl ManifestSink for LocalManifest {
    fn push(&mut self, r: &ImageRecord) -> Result<()> {
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

    fn finish(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        let this = *self;
        let finished = (|| {
            let tmp = this
                .out
                .into_inner()
                .map_err(|e| io_at("write", &this.path)(e.into_error()))?;
            atomic::commit(tmp, &this.path, true)?;
            Ok(())
        })();
        futures::future::ready(finished).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::png::tests::png_bytes;

    #[test]
    fn names_cannot_escape() {
        let a = LocalArchive::new("/tmp/x");
        assert!(a.batch_dir("../etc").is_err());
        assert!(a.batch_dir("/abs").is_err());
        assert!(a.batch_dir("ok-batch_1").is_ok());
        assert!(image_rel_path("../../x", 0).is_err());
        assert!(a.resolve("ok", "../x").is_err());
        assert!(a.resolve("ok", "/etc/passwd").is_err());
    }

    #[cfg(unix)]
    #[test]
    fn planted_symlinks_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let a = LocalArchive::new(dir.path());
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
        let a = LocalArchive::new(dir.path());
        // A `.tmp` link: clearing leftovers must not empty the folder it points to.
        fs::create_dir_all(dir.path().join("b")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("b/.tmp")).unwrap();
        assert!(matches!(
            a.clear_temp_now("b"),
            Err(ArchiveError::Unsafe(_))
        ));
        // A batch folder that is a link.
        std::os::unix::fs::symlink(outside.path(), dir.path().join("c")).unwrap();
        assert!(matches!(
            a.clear_temp_now("c"),
            Err(ArchiveError::Unsafe(_))
        ));
        // An images folder that is a link: no path through it is handed out.
        fs::create_dir_all(dir.path().join("d")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("d/images")).unwrap();
        let rel = image_rel_path("abcdef0123456789", 0).unwrap();
        assert!(matches!(a.resolve("d", &rel), Err(ArchiveError::Unsafe(_))));
        assert!(matches!(
            a.check_now("d", &rel, "00"),
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
        let a = LocalArchive::new(dir.path());
        let tmp = a.temp_path("b", "abcdef0123456789", 1).unwrap();
        fs::write(&tmp, png_bytes(8, 8)).unwrap();
        let rel = image_rel_path("abcdef0123456789", 1).unwrap();
        let dest = a.commit_image(&tmp, "b", &rel).unwrap();
        assert!(dest.ends_with("b/images/ab/abcdef0123456789-1.png"));
        let (hash, _) = hash_file(&dest).unwrap();
        assert_eq!(a.check_now("b", &rel, &hash).unwrap(), FileCheck::Ok);
        assert_eq!(a.check_now("b", &rel, "00").unwrap(), FileCheck::Corrupt);
        fs::remove_file(&dest).unwrap();
        assert_eq!(a.check_now("b", &rel, &hash).unwrap(), FileCheck::Missing);
        fs::write(a.temp_path("b", "abcdef0123456789", 2).unwrap(), b"x").unwrap();
        assert_eq!(a.clear_temp_now("b").unwrap(), 1);
    }
}
