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
//! An image is downloaded to `.tmp`, verified (a whole PNG, every chunk's CRC-32, dimensions match
//! the request), hashed, fsynced, renamed into place, and only then marked archived in the store. The manifest
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
        image: &ImageBuf,
        expected: Size,
    ) -> Result<PathBuf> {
        verify_png_bytes(image.as_slice(), expected)?;
        let tmp = self.temp_path(batch, key, idx)?;
        let written = write_new_synced(&tmp, image).map_err(io_at("write", &tmp));
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
        refuse_symlink(&dest)?;
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

/// The error for a path the archive will not use, and why.
fn refused(path: &Path, why: &str) -> ArchiveError {
    ArchiveError::Unsafe(format!("{} {why}", path.display()))
}

fn refuse_symlink(path: &Path) -> Result<()> {
    if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(refused(path, "is a symlink"));
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

/// The unit of direct I/O: buffers, lengths and file offsets on multiples of it are accepted by
/// every common block device and file system (logical blocks are 512 or 4,096 bytes).
const DIRECT_IO_ALIGN: usize = 4096;

/// The bytes of one image in memory, laid out for direct I/O: the first byte on a
/// [`DIRECT_IO_ALIGN`] boundary as long as the buffer never grows past the capacity it was made
/// with (the download sizes it from the `Content-Length`).
#[derive(Clone)]
pub struct ImageBuf {
    buf: Vec<u8>,
    /// Where the image starts in `buf` (the bytes before it are padding).
    start: usize,
}

impl ImageBuf {
    /// An empty buffer that takes `capacity` bytes without moving.
    pub fn with_capacity(capacity: usize) -> ImageBuf {
        let mut buf: Vec<u8> = Vec::with_capacity(capacity.saturating_add(DIRECT_IO_ALIGN));
        let start = buf.as_ptr().align_offset(DIRECT_IO_ALIGN);
        let start = if start < DIRECT_IO_ALIGN { start } else { 0 };
        buf.resize(start, 0);
        ImageBuf { buf, start }
    }

    /// Appends bytes (a buffer that outgrows its capacity moves and loses its alignment, and is
    /// then written the ordinary way).
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The image's bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// The number of bytes.
    pub fn len(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Whether it holds no byte.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many leading bytes can be written with direct I/O: the whole blocks, when the buffer
    /// starts on a block boundary.
    fn direct_len(&self) -> usize {
        if self.as_slice().as_ptr().align_offset(DIRECT_IO_ALIGN) == 0 {
            self.len() / DIRECT_IO_ALIGN * DIRECT_IO_ALIGN
        } else {
            0
        }
    }
}

impl std::fmt::Debug for ImageBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageBuf")
            .field("len", &self.len())
            .field("direct_len", &self.direct_len())
            .finish()
    }
}

impl From<Vec<u8>> for ImageBuf {
    fn from(buf: Vec<u8>) -> ImageBuf {
        ImageBuf { buf, start: 0 }
    }
}

/// Writes `image` to the new file `path` and fsyncs it. On Linux its whole blocks go to the disk
/// with `O_DIRECT`, straight from the download's buffer: copying a quarter of a megabyte per image
/// into the page cache (pages nobody reads again) was the largest single cost of a run without
/// limits. The tail, and every file system that refuses direct I/O (`EINVAL`, as tmpfs on older
/// kernels), take the ordinary buffered path. `sync_all` makes both durable.
fn write_new_synced(path: &Path, image: &ImageBuf) -> io::Result<()> {
    let bytes = image.as_slice();
    let mut done = 0;
    let direct = image.direct_len();
    if direct > 0 {
        match write_direct(path, &bytes[..direct]) {
            Ok(()) => done = direct,
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => {}
            Err(e) => return Err(e),
        }
    }
    let mut f = if done > 0 {
        OpenOptions::new().append(true).open(path)?
    } else {
        File::create(path)?
    };
    f.write_all(&bytes[done..])?;
    f.sync_all()
}

/// Creates (or truncates) `path` and writes `blocks` to it with `O_DIRECT`; `blocks` starts on
/// a [`DIRECT_IO_ALIGN`] boundary and is a whole number of them long.
#[cfg(target_os = "linux")]
fn write_direct(path: &Path, blocks: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?
        .write_all(blocks)
}

#[cfg(not(target_os = "linux"))]
fn write_direct(_path: &Path, _blocks: &[u8]) -> io::Result<()> {
    Err(io::ErrorKind::InvalidInput.into())
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

/// Checks that `path` holds a complete, intact PNG of exactly `expected` size (see
/// [`verify_png_bytes`]); returns its SHA-256 (hex) and length, from the same single read.
pub fn verify_png(path: &Path, expected: Size) -> Result<(String, u64)> {
    let bytes = fs::read(path).map_err(io_at("read", path))?;
    verify_png_bytes(&bytes, expected)?;
    Ok((hex::encode(Sha256::digest(&bytes)), bytes.len() as u64))
}

/// Checks that `bytes` are a complete, intact PNG of exactly `expected` size, chunk by chunk:
/// the signature; an `IHDR` first, valid, of the requested width and height; every chunk whole
/// and matching its CRC-32; `IDAT` chunks in one run, starting a zlib stream; `IEND` last, with
/// nothing after it.
///
/// This catches what a transfer or a disk can do to an image (a cut body, a flipped bit, an error
/// page served with status 200, the wrong size) at the cost of a CRC-32 pass, about 20 µs for a
/// 512x512 image, where inflating every row cost about 0.5 ms. A file the server encoded wrongly
/// under valid CRCs would pass; downloading it again could not mend it anyway.
pub fn verify_png_bytes(bytes: &[u8], expected: Size) -> Result<()> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    let bad = |m: String| Err(ArchiveError::BadImage(m));
    let Some(mut rest) = bytes.strip_prefix(SIGNATURE) else {
        return bad("not a PNG: no PNG signature".into());
    };
    let mut chunks = 0usize;
    let mut idat = IdatRun::NotYet;
    let mut zlib_head = Vec::with_capacity(2);
    loop {
        if rest.len() < 12 {
            return bad(format!(
                "PNG cut short after {} bytes (no IEND)",
                bytes.len() - rest.len()
            ));
        }
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let kind: [u8; 4] = [rest[4], rest[5], rest[6], rest[7]];
        let name = String::from_utf8_lossy(&kind).into_owned();
        if len > (1 << 31) - 1 || rest.len() - 12 < len {
            return bad(format!("PNG cut short in its {name} chunk"));
        }
        let data = &rest[8..8 + len];
        let crc = u32::from_be_bytes(rest[8 + len..12 + len].try_into().unwrap_or([0; 4]));
        let mut h = crc32fast::Hasher::new();
        h.update(&kind);
        h.update(data);
        if h.finalize() != crc {
            return bad(format!("PNG {name} chunk fails its CRC (corrupt)"));
        }
        if chunks == 0 {
            if &kind != b"IHDR" || len != 13 {
                return bad("not a PNG: IHDR is not the first chunk".into());
            }
            check_ihdr(data, expected)?;
        } else if &kind == b"IHDR" {
            return bad("PNG has a second IHDR".into());
        }
        match (&kind, idat) {
            (b"IDAT", IdatRun::Ended) => return bad("PNG IDAT chunks are not consecutive".into()),
            (b"IDAT", _) => {
                idat = IdatRun::In;
                let take = (2 - zlib_head.len()).min(data.len());
                zlib_head.extend_from_slice(&data[..take]);
            }
            (_, IdatRun::In) => idat = IdatRun::Ended,
            _ => {}
        }
        chunks += 1;
        rest = &rest[12 + len..];
        if &kind == b"IEND" {
            break;
        }
    }
    if idat == IdatRun::NotYet {
        return bad("PNG has no image data (no IDAT)".into());
    }
    // A zlib stream starts with deflate (method 8) and a header whose check bits hold.
    let zlib_ok = zlib_head.len() == 2
        && zlib_head[0] & 0x0f == 8
        && (u16::from(zlib_head[0]) << 8 | u16::from(zlib_head[1])) % 31 == 0;
    if !zlib_ok {
        return bad("PNG image data is not a zlib stream".into());
    }
    if !rest.is_empty() {
        return bad(format!("PNG has {} bytes after IEND", rest.len()));
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum IdatRun {
    NotYet,
    In,
    Ended,
}

/// The header's size against the request, and its fields against the PNG specification.
fn check_ihdr(data: &[u8], expected: Size) -> Result<()> {
    let width = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
    let height = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
    let (depth, color, compression, filter, interlace) =
        (data[8], data[9], data[10], data[11], data[12]);
    let depth_ok = match color {
        0 => matches!(depth, 1 | 2 | 4 | 8 | 16),
        3 => matches!(depth, 1 | 2 | 4 | 8),
        2 | 4 | 6 => matches!(depth, 8 | 16),
        _ => false,
    };
    if !depth_ok || compression != 0 || filter != 0 || interlace > 1 {
        return Err(ArchiveError::BadImage(format!(
            "not a PNG: invalid IHDR (bit depth {depth}, colour type {color}, compression \
             {compression}, filter {filter}, interlace {interlace})"
        )));
    }
    let got = Size::new(width, height);
    if got != expected {
        return Err(ArchiveError::BadImage(format!(
            "{got} instead of {expected}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_buffer_starts_on_a_block_boundary_until_it_outgrows_its_capacity() {
        for n in [0, 1, 4095, 4096, 4097, 239_237] {
            let mut b = ImageBuf::with_capacity(n);
            let bytes: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
            b.extend_from_slice(&bytes);
            assert_eq!(b.as_slice(), &bytes[..]);
            assert_eq!(
                b.as_slice().as_ptr() as usize % DIRECT_IO_ALIGN,
                0,
                "{n} bytes"
            );
            assert_eq!(
                b.direct_len(),
                n / DIRECT_IO_ALIGN * DIRECT_IO_ALIGN,
                "{n} bytes"
            );
        }
        // Grown past its capacity, it moves: the bytes stay right, and direct I/O is used only
        // if the new start happens to be aligned.
        let mut b = ImageBuf::with_capacity(10);
        let bytes = vec![7u8; 3 * DIRECT_IO_ALIGN + 5];
        b.extend_from_slice(&bytes);
        assert_eq!(b.as_slice(), &bytes[..]);
        let aligned = (b.as_slice().as_ptr() as usize).is_multiple_of(DIRECT_IO_ALIGN);
        assert_eq!(
            b.direct_len(),
            if aligned { 3 * DIRECT_IO_ALIGN } else { 0 }
        );
        let v = ImageBuf::from(vec![1, 2, 3]);
        assert_eq!((v.len(), v.as_slice()), (3, &[1u8, 2, 3][..]));
    }

    #[test]
    fn images_are_written_whole_by_direct_and_buffered_paths() {
        // The temp dir of the machine, and tmpfs where there is one (which refuses O_DIRECT on
        // older kernels, so the buffered fallback is taken there).
        let mut dirs = vec![tempfile::tempdir().unwrap()];
        if Path::new("/dev/shm").is_dir() {
            dirs.push(tempfile::tempdir_in("/dev/shm").unwrap());
        }
        for dir in &dirs {
            for n in [0, 100, 4096, 4097, 3 * 4096 + 1, 239_237] {
                let bytes: Vec<u8> = (0..n).map(|i| (i * 7 % 253) as u8).collect();
                let mut aligned = ImageBuf::with_capacity(n);
                aligned.extend_from_slice(&bytes);
                let unaligned = ImageBuf::from(bytes.clone());
                for (what, image) in [("aligned", &aligned), ("unaligned", &unaligned)] {
                    let path = dir.path().join(format!("{what}-{n}.png"));
                    write_new_synced(&path, image).unwrap();
                    assert_eq!(fs::read(&path).unwrap(), bytes, "{what}, {n} bytes");
                    // A leftover of the same name is replaced, never appended to.
                    write_new_synced(&path, image).unwrap();
                    assert_eq!(fs::read(&path).unwrap(), bytes, "{what}, {n} bytes again");
                }
            }
        }
    }

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

    fn bad_image_message(bytes: &[u8], size: Size) -> String {
        match verify_png_bytes(bytes, size) {
            Err(ArchiveError::BadImage(m)) => m,
            other => panic!("expected a bad image, got {other:?}"),
        }
    }

    /// Puts a valid CRC back on the chunk that starts at `at` (its length field).
    fn fix_crc(bytes: &mut [u8], at: usize) {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let crc = crc32fast::hash(&bytes[at + 4..at + 8 + len]);
        bytes[at + 8 + len..at + 12 + len].copy_from_slice(&crc.to_be_bytes());
    }

    #[test]
    fn png_verification_catches_every_kind_of_damage() {
        let size = Size::new(64, 32);
        let good = png_bytes(64, 32);
        verify_png_bytes(&good, size).unwrap();
        // Every cut is caught, wherever it falls.
        for cut in 0..good.len() {
            assert!(
                verify_png_bytes(&good[..cut], size).is_err(),
                "a PNG cut at {cut} of {} bytes passed",
                good.len()
            );
        }
        // Any flipped bit past the signature breaks a CRC (or the chunk structure).
        for at in 8..good.len() {
            let mut bytes = good.clone();
            bytes[at] ^= 0x10;
            assert!(
                verify_png_bytes(&bytes, size).is_err(),
                "a flipped bit at byte {at} passed"
            );
        }
        let mut trailing = good.clone();
        trailing.extend_from_slice(b"junk");
        assert_eq!(
            bad_image_message(&trailing, size),
            "PNG has 4 bytes after IEND"
        );
        // A bad IHDR with a valid CRC: colour type 7 does not exist.
        let mut ihdr = good.clone();
        ihdr[8 + 8 + 9] = 7;
        fix_crc(&mut ihdr, 8);
        assert!(bad_image_message(&ihdr, size).contains("invalid IHDR"));
        // Image data that is not a zlib stream, under a valid CRC.
        let idat_at = 8 + 25;
        assert_eq!(&good[idat_at + 4..idat_at + 8], b"IDAT");
        let mut data = good.clone();
        data[idat_at + 8] = 0x00;
        fix_crc(&mut data, idat_at);
        assert_eq!(
            bad_image_message(&data, size),
            "PNG image data is not a zlib stream"
        );
        // No image data at all: IHDR then IEND.
        let mut empty = good[..idat_at].to_vec();
        empty.extend_from_slice(&good[good.len() - 12..]);
        assert_eq!(
            bad_image_message(&empty, size),
            "PNG has no image data (no IDAT)"
        );
        assert_eq!(
            bad_image_message(b"HTTP/1.1 200 OK\r\n\r\n<html>", size),
            "not a PNG: no PNG signature"
        );
        assert_eq!(
            bad_image_message(&good, Size::new(32, 64)),
            "64x32 instead of 32x64"
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
