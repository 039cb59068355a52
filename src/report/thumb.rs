//! Thumbnails: an archived PNG decoded row by row, shrunk with a box filter, written as PNG.
//!
//! Each thumbnail carries the SHA-256 of its source image (and the thumbnail's own format
//! version) in a `tEXt` chunk before the pixels, so regenerating a report reads a few hundred
//! bytes of each existing thumbnail and skips those whose source is unchanged. Memory per
//! thumbnail is bounded by the thumbnail's size, whatever the source's (a 3840x2160 source is
//! never held whole).

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Write};
use std::path::Path;

use png::{BitDepth, ColorType, Transformations};

use crate::api::Size;
use crate::archive::atomic;

/// `tEXt` keyword of the source description.
const SOURCE_KEYWORD: &str = "RunnerThumbSource";
/// Bumped whenever thumbnails would come out differently, so old ones are remade.
const FORMAT: &str = "runner-thumb-1";

/// Why a thumbnail could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ThumbError {
    /// The source image could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The source path.
        path: String,
        /// The OS error.
        source: io::Error,
    },
    /// The source is not a PNG that decodes.
    #[error("{path} does not decode as PNG: {reason}")]
    Decode {
        /// The source path.
        path: String,
        /// What the decoder said.
        reason: String,
    },
    /// The thumbnail could not be written.
    #[error("cannot write the thumbnail {path}: {source}")]
    Write {
        /// The thumbnail path.
        path: String,
        /// The OS error.
        source: io::Error,
    },
}

impl ThumbError {
    /// Whether the source image was missing (not damaged, not a disk problem on the report side).
    pub fn is_missing_source(&self) -> bool {
        matches!(self, ThumbError::Read { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// What [`ensure`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThumbOutcome {
    /// A thumbnail was made.
    Made,
    /// The existing thumbnail was made from the same source bytes.
    Unchanged,
}

/// Work for a [`ThumbPool`] thread.
type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of threads that make thumbnails. A report of many thousands of images then uses
/// the same few threads (and so the same few allocator arenas) from start to end, where a
/// changing set of blocking-pool threads would leave freed memory behind in many arenas.
#[derive(Debug)]
pub struct ThumbPool {
    jobs: Option<std::sync::mpsc::Sender<Job>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl ThumbPool {
    /// A pool of `threads` threads (at least one).
    pub fn new(threads: usize) -> io::Result<ThumbPool> {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        let threads = (0..threads.max(1))
            .map(|i| {
                let rx = rx.clone();
                std::thread::Builder::new()
                    .name(format!("thumbs-{i}"))
                    .spawn(move || {
                        loop {
                            // The lock is held only to take the next job, not to run it.
                            let job = match rx.lock() {
                                Ok(rx) => rx.recv(),
                                Err(_) => break,
                            };
                            match job {
                                Ok(job) => job(),
                                Err(_) => break,
                            }
                        }
                    })
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(ThumbPool {
            jobs: Some(tx),
            threads,
        })
    }

    /// [`ensure`] on one of the pool's threads.
    pub async fn ensure(
        &self,
        source: std::path::PathBuf,
        source_sha256: String,
        dest: std::path::PathBuf,
        max_side: u32,
    ) -> Result<ThumbOutcome, ThumbError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let stopped = |dest: &Path| ThumbError::Write {
            path: dest.display().to_string(),
            source: io::Error::other("the thumbnail threads stopped"),
        };
        let err_dest = dest.clone();
        let job: Job = Box::new(move || {
            let _ = reply.send(ensure(&source, &source_sha256, &dest, max_side));
        });
        match &self.jobs {
            Some(jobs) if jobs.send(job).is_ok() => {}
            _ => return Err(stopped(&err_dest)),
        }
        answer.await.unwrap_or_else(|_| Err(stopped(&err_dest)))
    }
}

impl Drop for ThumbPool {
    fn drop(&mut self) {
        // Closing the channel ends every thread once the queue is empty.
        self.jobs.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The size of the thumbnail of an image of `size`: `max_side` on the long side, never
/// enlarged, never below 1 pixel.
pub fn thumb_size(size: Size, max_side: u32) -> Size {
    let long = size.width.max(size.height).max(1);
    if long <= max_side {
        return Size::new(size.width.max(1), size.height.max(1));
    }
    let scale = |v: u32| {
        ((u64::from(v) * u64::from(max_side) + u64::from(long) / 2) / u64::from(long)).max(1) as u32
    };
    Size::new(scale(size.width), scale(size.height))
}

/// Makes the thumbnail of `source` at `dest` (`max_side` pixels on the long side), unless `dest`
/// already holds one made from a source with hash `source_sha256` at this size. The file is
/// written beside `dest` and renamed into place, so a reader never sees half of it.
pub fn ensure(
    source: &Path,
    source_sha256: &str,
    dest: &Path,
    max_side: u32,
) -> Result<ThumbOutcome, ThumbError> {
    let stamp = format!("{FORMAT} {max_side} {source_sha256}");
    // A thumbnail of an image that is gone from the archive would show what is not there.
    std::fs::metadata(source).map_err(|e| ThumbError::Read {
        path: source.display().to_string(),
        source: e,
    })?;
    if existing_stamp(dest).as_deref() == Some(stamp.as_str()) {
        return Ok(ThumbOutcome::Unchanged);
    }
    let thumb = shrink(source, max_side)?;
    let write_err = |source: io::Error| ThumbError::Write {
        path: dest.display().to_string(),
        source,
    };
    let tmp = atomic::temp_for(dest, None, atomic::Mode::Public)
        .map_err(|e| write_err(io::Error::other(e)))?;
    {
        let mut out = BufWriter::new(tmp.as_file());
        encode(&mut out, &thumb, &stamp).map_err(write_err)?;
        out.flush().map_err(write_err)?;
    }
    // No fsync: a thumbnail is remade from its source whenever it is missing or unreadable.
    atomic::commit(tmp, dest, false).map_err(|e| write_err(io::Error::other(e)))?;
    Ok(ThumbOutcome::Made)
}

/// The stamp of an existing thumbnail, read from its header alone.
fn existing_stamp(path: &Path) -> Option<String> {
    let file = File::open(path).ok()?;
    let reader = png::Decoder::new(BufReader::new(file)).read_info().ok()?;
    reader
        .info()
        .uncompressed_latin1_text
        .iter()
        .find(|t| t.keyword == SOURCE_KEYWORD)
        .map(|t| t.text.clone())
}

/// A decoded, shrunk image: 8-bit samples, `channels` per pixel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pixels {
    /// Size in pixels.
    pub size: Size,
    /// Samples per pixel: 1 (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA).
    pub channels: usize,
    /// Row-major samples.
    pub data: Vec<u8>,
}

/// Decodes `source` row by row into box-filter accumulators of the thumbnail's size: each source
/// pixel is added to the thumbnail pixel it falls in, and every thumbnail pixel is the mean of
/// its box.
pub fn shrink(source: &Path, max_side: u32) -> Result<Pixels, ThumbError> {
    let name = || source.display().to_string();
    let file = File::open(source).map_err(|e| ThumbError::Read {
        path: name(),
        source: e,
    })?;
    let decode_err = |e: png::DecodingError| ThumbError::Decode {
        path: name(),
        reason: e.to_string(),
    };
    let mut decoder = png::Decoder::new(BufReader::new(file));
    decoder.set_transformations(Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().map_err(decode_err)?;
    let (src_w, src_h, interlaced) = {
        let info = reader.info();
        (info.width, info.height, info.interlaced)
    };
    let (color, depth) = reader.output_color_type();
    let channels = match (color, depth) {
        (ColorType::Grayscale, BitDepth::Eight) => 1,
        (ColorType::GrayscaleAlpha, BitDepth::Eight) => 2,
        (ColorType::Rgb, BitDepth::Eight) => 3,
        (ColorType::Rgba, BitDepth::Eight) => 4,
        other => {
            return Err(ThumbError::Decode {
                path: name(),
                reason: format!("unexpected output format {other:?}"),
            });
        }
    };
    let out = thumb_size(Size::new(src_w, src_h), max_side);
    let mut acc = BoxAccumulator::new(Size::new(src_w, src_h), out, channels);
    if interlaced {
        // Interlaced rows arrive in passes; decode the whole frame (rare: the API's are not).
        let mut buf = vec![0; reader.output_buffer_size()];
        let frame = reader.next_frame(&mut buf).map_err(decode_err)?;
        for (y, row) in buf.chunks(frame.line_size).take(src_h as usize).enumerate() {
            acc.add_row(y as u32, row);
        }
    } else {
        let mut y = 0;
        while let Some(row) = reader.next_row().map_err(decode_err)? {
            acc.add_row(y, row.data());
            y += 1;
        }
        if y != src_h {
            return Err(ThumbError::Decode {
                path: name(),
                reason: format!("{y} of {src_h} rows"),
            });
        }
    }
    Ok(acc.finish())
}

/// Sums of source samples per thumbnail pixel, and how many source pixels each box holds.
struct BoxAccumulator {
    src: Size,
    out: Size,
    channels: usize,
    /// Thumbnail column of each source column.
    x_map: Vec<u32>,
    sums: Vec<u32>,
    counts: Vec<u32>,
}

impl BoxAccumulator {
    fn new(src: Size, out: Size, channels: usize) -> BoxAccumulator {
        let x_map = (0..src.width)
            .map(|x| (u64::from(x) * u64::from(out.width) / u64::from(src.width.max(1))) as u32)
            .collect();
        let pixels = out.width as usize * out.height as usize;
        BoxAccumulator {
            src,
            out,
            channels,
            x_map,
            sums: vec![0; pixels * channels],
            counts: vec![0; pixels],
        }
    }

    fn add_row(&mut self, y: u32, row: &[u8]) {
        if y >= self.src.height {
            return;
        }
        let oy = (u64::from(y) * u64::from(self.out.height) / u64::from(self.src.height)) as usize;
        let base = oy * self.out.width as usize;
        for (x, px) in row
            .chunks_exact(self.channels)
            .take(self.src.width as usize)
            .enumerate()
        {
            let o = base + self.x_map[x] as usize;
            self.counts[o] += 1;
            for (c, v) in px.iter().enumerate() {
                self.sums[o * self.channels + c] += u32::from(*v);
            }
        }
    }

    fn finish(self) -> Pixels {
        let mut data = Vec::with_capacity(self.sums.len());
        for (i, n) in self.counts.iter().enumerate() {
            for c in 0..self.channels {
                let s = self.sums[i * self.channels + c];
                data.push(if *n == 0 { 0 } else { ((s + n / 2) / n) as u8 });
            }
        }
        Pixels {
            size: self.out,
            channels: self.channels,
            data,
        }
    }
}

/// Encodes `pixels` as PNG with the source stamp in a `tEXt` chunk ahead of the pixels.
pub fn encode(out: impl Write, pixels: &Pixels, stamp: &str) -> io::Result<()> {
    let color = match pixels.channels {
        1 => ColorType::Grayscale,
        2 => ColorType::GrayscaleAlpha,
        3 => ColorType::Rgb,
        _ => ColorType::Rgba,
    };
    let mut enc = png::Encoder::new(out, pixels.size.width, pixels.size.height);
    enc.set_color(color);
    enc.set_depth(BitDepth::Eight);
    enc.add_text_chunk(SOURCE_KEYWORD.into(), stamp.into())
        .map_err(io::Error::other)?;
    let mut w = enc.write_header().map_err(io::Error::other)?;
    w.write_image_data(&pixels.data).map_err(io::Error::other)?;
    w.finish().map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_png(
        path: &Path,
        w: u32,
        h: u32,
        color: ColorType,
        pixel: impl Fn(u32, u32) -> Vec<u8>,
    ) {
        let file = File::create(path).unwrap();
        let mut enc = png::Encoder::new(BufWriter::new(file), w, h);
        enc.set_color(color);
        let mut wr = enc.write_header().unwrap();
        let mut data = Vec::new();
        for y in 0..h {
            for x in 0..w {
                data.extend(pixel(x, y));
            }
        }
        wr.write_image_data(&data).unwrap();
    }

    #[test]
    fn sizes_keep_the_aspect_and_never_grow() {
        assert_eq!(thumb_size(Size::new(1024, 1024), 256), Size::new(256, 256));
        assert_eq!(thumb_size(Size::new(1280, 720), 256), Size::new(256, 144));
        assert_eq!(thumb_size(Size::new(360, 640), 256), Size::new(144, 256));
        assert_eq!(thumb_size(Size::new(3840, 2160), 256), Size::new(256, 144));
        assert_eq!(thumb_size(Size::new(100, 50), 256), Size::new(100, 50));
        assert_eq!(thumb_size(Size::new(10_000, 1), 256), Size::new(256, 1));
    }

    #[test]
    fn the_box_filter_averages_each_box() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("a.png");
        // 4x2 RGB: left half black and white stripes (mean 127.5 → 128), right half red.
        write_png(&src, 4, 2, ColorType::Rgb, |x, y| {
            if x >= 2 {
                vec![200, 0, 0]
            } else if (x + y) % 2 == 0 {
                vec![0, 0, 0]
            } else {
                vec![255, 255, 255]
            }
        });
        let px = shrink(&src, 2).unwrap();
        assert_eq!(px.size, Size::new(2, 1));
        assert_eq!(px.channels, 3);
        assert_eq!(px.data, vec![128, 128, 128, 200, 0, 0]);
    }

    #[test]
    fn gray_and_alpha_sources_keep_their_channels() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("g.png");
        write_png(&src, 8, 8, ColorType::GrayscaleAlpha, |x, _| {
            vec![x as u8 * 10, 255]
        });
        let px = shrink(&src, 4).unwrap();
        assert_eq!((px.size, px.channels), (Size::new(4, 4), 2));
        assert_eq!(&px.data[..4], &[5, 255, 25, 255]);
    }

    #[test]
    fn thumbnails_are_remade_only_when_the_source_changes() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("s.png");
        let dest = dir.path().join("t.png");
        write_png(&src, 640, 360, ColorType::Rgb, |x, y| {
            vec![x as u8, y as u8, 7]
        });
        assert_eq!(ensure(&src, "aa", &dest, 256).unwrap(), ThumbOutcome::Made);
        let reader = png::Decoder::new(File::open(&dest).unwrap())
            .read_info()
            .unwrap();
        assert_eq!((reader.info().width, reader.info().height), (256, 144));
        assert_eq!(
            ensure(&src, "aa", &dest, 256).unwrap(),
            ThumbOutcome::Unchanged
        );
        // Another source hash, or another size: made again.
        assert_eq!(ensure(&src, "bb", &dest, 256).unwrap(), ThumbOutcome::Made);
        assert_eq!(ensure(&src, "bb", &dest, 128).unwrap(), ThumbOutcome::Made);
        // The source gone: an error even though the thumbnail is up to date.
        let moved = dir.path().join("moved.png");
        std::fs::rename(&src, &moved).unwrap();
        assert!(
            ensure(&src, "bb", &dest, 128)
                .unwrap_err()
                .is_missing_source()
        );
        std::fs::rename(&moved, &src).unwrap();
        // A damaged thumbnail is made again.
        std::fs::write(&dest, b"not a png").unwrap();
        assert_eq!(ensure(&src, "bb", &dest, 128).unwrap(), ThumbOutcome::Made);
        assert_eq!(
            ensure(&src, "bb", &dest, 128).unwrap(),
            ThumbOutcome::Unchanged
        );
    }

    #[tokio::test]
    async fn the_pool_makes_thumbnails_on_its_threads() {
        let dir = tempfile::tempdir().unwrap();
        let pool = ThumbPool::new(2).unwrap();
        let mut waits = Vec::new();
        for i in 0..6u32 {
            let src = dir.path().join(format!("s{i}.png"));
            write_png(&src, 64 + i, 32, ColorType::Rgb, |x, _| vec![x as u8, 0, 0]);
            waits.push(pool.ensure(
                src,
                format!("{i}"),
                dir.path().join(format!("t{i}.png")),
                16,
            ));
        }
        for (i, w) in waits.into_iter().enumerate() {
            assert_eq!(w.await.unwrap(), ThumbOutcome::Made, "{i}");
        }
        let missing = pool
            .ensure(
                dir.path().join("none.png"),
                "x".into(),
                dir.path().join("t.png"),
                16,
            )
            .await
            .unwrap_err();
        assert!(missing.is_missing_source());
        drop(pool);
        let reader = png::Decoder::new(File::open(dir.path().join("t5.png")).unwrap())
            .read_info()
            .unwrap();
        assert_eq!((reader.info().width, reader.info().height), (16, 7));
    }

    #[test]
    fn bad_sources_are_errors_that_say_why() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("t.png");
        let missing = ensure(&dir.path().join("none.png"), "aa", &dest, 256).unwrap_err();
        assert!(missing.is_missing_source(), "{missing}");
        let bad = dir.path().join("bad.png");
        std::fs::write(&bad, b"<html>").unwrap();
        let e = ensure(&bad, "aa", &dest, 256).unwrap_err();
        assert!(matches!(e, ThumbError::Decode { .. }), "{e}");
        assert!(!dest.exists());
        // Truncated: the header is fine, the rows are not.
        let src = dir.path().join("s.png");
        write_png(&src, 300, 300, ColorType::Rgb, |x, y| {
            vec![(x * y) as u8, 1, 2]
        });
        let bytes = std::fs::read(&src).unwrap();
        std::fs::write(&src, &bytes[..bytes.len() / 2]).unwrap();
        let e = ensure(&src, "aa", &dest, 256).unwrap_err();
        assert!(matches!(e, ThumbError::Decode { .. }), "{e}");
    }
}
