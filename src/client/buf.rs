//! A downloaded image in memory, laid out for the archive's direct writes.

use std::fmt;

/// The unit of direct I/O: buffers, lengths and file offsets on multiples of it are accepted by
/// every common block device and file system (logical blocks are 512 or 4,096 bytes).
pub const IMAGE_BUF_ALIGN: usize = 4096;

/// The bytes of one image in memory, laid out for direct I/O: the first byte on a
/// [`IMAGE_BUF_ALIGN`] boundary as long as the buffer never grows past the capacity it was made
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
        let mut buf: Vec<u8> = Vec::with_capacity(capacity.saturating_add(IMAGE_BUF_ALIGN));
        let start = buf.as_ptr().align_offset(IMAGE_BUF_ALIGN);
        let start = if start < IMAGE_BUF_ALIGN { start } else { 0 };
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
    pub fn aligned_len(&self) -> usize {
        if self.as_slice().as_ptr().align_offset(IMAGE_BUF_ALIGN) == 0 {
            self.len() / IMAGE_BUF_ALIGN * IMAGE_BUF_ALIGN
        } else {
            0
        }
    }
}

impl std::fmt::Debug for ImageBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageBuf")
            .field("len", &self.len())
            .field("aligned_len", &self.aligned_len())
            .finish()
    }
}

impl From<Vec<u8>> for ImageBuf {
    fn from(buf: Vec<u8>) -> ImageBuf {
        ImageBuf { buf, start: 0 }
    }
}

/// A finished download.
#[derive(Clone)]
pub struct Downloaded {
    /// The bytes, laid out for the archive's direct writes.
    pub body: ImageBuf,
    /// Hex SHA-256 of the bytes.
    pub sha256: String,
}

impl fmt::Debug for Downloaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Downloaded")
            .field("bytes", &self.body.len())
            .field("sha256", &self.sha256)
            .finish()
    }
}
