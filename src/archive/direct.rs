//! Image files written with `O_DIRECT` where the file system takes it.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

#[cfg(doc)]
use crate::client::IMAGE_BUF_ALIGN;
use crate::client::ImageBuf;

/// Writes `image` to the new file `path` and fsyncs it. On Linux its whole blocks go to the disk
/// with `O_DIRECT`, straight from the download's buffer: copying a quarter of a megabyte per image
/// into the page cache (pages nobody reads again) was the largest single cost of a run without
/// limits. The tail, and every file system that refuses direct I/O (`EINVAL`, as tmpfs on older
/// kernels), take the ordinary buffered path. `sync_all` makes both durable.
pub(super) fn write_new_synced(path: &Path, image: &ImageBuf) -> io::Result<()> {
    let bytes = image.as_slice();
    let mut done = 0;
    let direct = image.aligned_len();
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
/// an [`IMAGE_BUF_ALIGN`] boundary and is a whole number of them long.
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

#[cfg(test)]
mod tests {
    use super::*;

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
                    assert_eq!(std::fs::read(&path).unwrap(), bytes, "{what}, {n} bytes");
                    // A leftover of the same name is replaced, never appended to.
                    write_new_synced(&path, image).unwrap();
                    assert_eq!(
                        std::fs::read(&path).unwrap(),
                        bytes,
                        "{what}, {n} bytes again"
                    );
                }
            }
        }
    }
}
