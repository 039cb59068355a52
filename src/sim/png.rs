//! The images the simulator hands out: real PNGs of the requested size, deterministic per
//! (prompt, size, index), visibly different per prompt and per index, and cached by encoded size
//! so that large sizes and repeated downloads stay cheap.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use bytes::Bytes;
use sha2::{Digest, Sha256};

/// An image could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum PngError {
    /// The encoder refused (for example a zero size).
    #[error("cannot encode the PNG: {0}")]
    Encode(#[from] png::EncodingError),
    /// The blocking render task died.
    #[error("the render task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Renders and encodes the image number `index` of `prompt` at `width` x `height`.
///
/// The pattern is diagonal colour bands whose hues, slope and period come from a hash of the
/// prompt, with a disc whose place and colour come from the hash and the index. Every row of the
/// band pattern is one of `period` distinct rows, so the pixels cost little more than a copy and
/// the encoding dominates.
pub fn render_png(prompt: &str, width: u32, height: u32, index: u32) -> Result<Vec<u8>, PngError> {
    let pixels = render_rgb(prompt, width, height, index);
    let mut out = Vec::with_capacity(pixels.len() / 8 + 1024);
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fast);
    encoder.set_filter(png::FilterType::Sub);
    encoder.set_adaptive_filter(png::AdaptiveFilterType::NonAdaptive);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&pixels)?;
    writer.finish()?;
    Ok(out)
}

/// The raw RGB8 pixels of [`render_png`], row by row.
pub fn render_rgb(prompt: &str, width: u32, height: u32, index: u32) -> Vec<u8> {
    let digest: [u8; 32] = Sha256::digest(prompt.as_bytes()).into();
    let (w, h) = (width as usize, height as usize);
    let byte = |i: usize| digest[i % 32] as u32;

    let hue = (byte(0) << 8 | byte(1)) % 360;
    let index_shift = index.wrapping_mul(47) % 360;
    let c0 = hsv_to_rgb(hue + index_shift, 0.55 + byte(2) as f32 / 600.0, 0.95);
    let c1 = hsv_to_rgb(
        hue + 150 + byte(3) % 60,
        0.75,
        0.35 + byte(4) as f32 / 700.0,
    );
    let period = 48 + (byte(5) as usize % 160) + (index as usize % 7) * 9;
    let slope_x = 1 + byte(6) as usize % 4;
    let slope_y = 1 + byte(7) as usize % 5;
    let phase = byte(8) as usize + index as usize * 13;

    // One colour per position in the period: a triangle wave between c0 and c1.
    let palette: Vec<[u8; 3]> = (0..period)
        .map(|t| {
            let half = period / 2;
            let d = if t < half { t } else { period - t };
            let f = d as f32 / half.max(1) as f32;
            lerp(c0, c1, f)
        })
        .collect();
    // Row y is the row of offset (y * slope_y + phase) % period: there are only `period` of them.
    let rows: Vec<Vec<u8>> = (0..period)
        .map(|offset| {
            let mut row = Vec::with_capacity(w * 3);
            let mut t = offset;
            for _ in 0..w {
                row.extend_from_slice(&palette[t]);
                t += slope_x;
                if t >= period {
                    t -= period;
                }
            }
            row
        })
        .collect();
    let mut pixels = vec![0u8; w * h * 3];
    for (y, out) in pixels.chunks_exact_mut(w * 3).enumerate() {
        out.copy_from_slice(&rows[(y * slope_y + phase) % period]);
    }

    // A disc, placed by the prompt and moved by the index.
    let min_side = w.min(h);
    if min_side > 0 {
        let radius = (min_side / 5 + byte(9) as usize % (min_side / 5 + 1)).max(1);
        let cx = (byte(10) as usize * 7 + index as usize * w / 3) % w;
        let cy = (byte(11) as usize * 5 + index as usize * h / 5) % h;
        let disc = hsv_to_rgb(hue + 200 + index * 31, 0.9, 0.85);
        let r2 = (radius * radius) as i64;
        for y in cy.saturating_sub(radius)..(cy + radius).min(h) {
            let dy = y as i64 - cy as i64;
            let span = ((r2 - dy * dy).max(0) as f64).sqrt() as usize;
            let x0 = cx.saturating_sub(span);
            let x1 = (cx + span).min(w);
            for x in x0..x1 {
                let i = (y * w + x) * 3;
                pixels[i..i + 3].copy_from_slice(&disc);
            }
        }
    }
    pixels
}

fn lerp(a: [u8; 3], b: [u8; 3], f: f32) -> [u8; 3] {
    let mix = |x: u8, y: u8| (x as f32 + (y as f32 - x as f32) * f).round() as u8;
    [mix(a[0], b[0]), mix(a[1], b[1]), mix(a[2], b[2])]
}

fn hsv_to_rgb(hue: u32, s: f32, v: f32) -> [u8; 3] {
    let h = (hue % 360) as f32 / 60.0;
    let c = v * s;
    let x = c * (1.0 - ((h % 2.0) - 1.0).abs());
    let (r, g, b) = match h as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = v - c;
    let to = |u: f32| ((u + m) * 255.0).round().clamp(0.0, 255.0) as u8;
    [to(r), to(g), to(b)]
}

/// Key of one cached image: hash of the prompt, size, index.
type Key = ([u8; 32], u32, u32, u32);

/// A cache of encoded PNGs bounded by their total size; the least recently used go first.
#[derive(Debug)]
pub struct PngCache {
    max_bytes: usize,
    inner: Mutex<CacheInner>,
}

#[derive(Debug, Default)]
struct CacheInner {
    entries: HashMap<Key, (Bytes, u64)>,
    /// Last-use tick to key, oldest first.
    recency: BTreeMap<u64, Key>,
    bytes: usize,
    tick: u64,
    hits: u64,
    misses: u64,
}

impl PngCache {
    /// An empty cache holding at most `max_bytes` of encoded images.
    pub fn new(max_bytes: usize) -> PngCache {
        PngCache {
            max_bytes,
            inner: Mutex::new(CacheInner::default()),
        }
    }

    /// The encoded image, from the cache or rendered (on a blocking thread) and cached.
    pub async fn get(
        &self,
        prompt: &str,
        width: u32,
        height: u32,
        index: u32,
    ) -> Result<Bytes, PngError> {
        let key: Key = (
            Sha256::digest(prompt.as_bytes()).into(),
            width,
            height,
            index,
        );
        if let Some(hit) = self.lookup(&key) {
            return Ok(hit);
        }
        let prompt = prompt.to_owned();
        let encoded =
            tokio::task::spawn_blocking(move || render_png(&prompt, width, height, index))
                .await??;
        let encoded = Bytes::from(encoded);
        self.insert(key, encoded.clone());
        Ok(encoded)
    }

    /// (hits, misses) so far.
    pub fn counts(&self) -> (u64, u64) {
        let inner = self.lock();
        (inner.hits, inner.misses)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheInner> {
        // A panic while holding the lock leaves the cache consistent enough to keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lookup(&self, key: &Key) -> Option<Bytes> {
        let mut inner = self.lock();
        inner.tick += 1;
        let tick = inner.tick;
        let Some((bytes, last)) = inner.entries.get_mut(key) else {
            inner.misses += 1;
            return None;
        };
        let old = std::mem::replace(last, tick);
        let bytes = bytes.clone();
        inner.recency.remove(&old);
        inner.recency.insert(tick, *key);
        inner.hits += 1;
        Some(bytes)
    }

    fn insert(&self, key: Key, bytes: Bytes) {
        if bytes.len() > self.max_bytes {
            return;
        }
        let mut inner = self.lock();
        inner.tick += 1;
        let tick = inner.tick;
        let len = bytes.len();
        if let Some((old, last)) = inner.entries.insert(key, (bytes, tick)) {
            // Two downloads rendered the same image at once: keep one.
            inner.bytes -= old.len();
            inner.recency.remove(&last);
        }
        inner.recency.insert(tick, key);
        inner.bytes += len;
        while inner.bytes > self.max_bytes {
            let Some((_, oldest)) = inner.recency.pop_first() else {
                break;
            };
            if let Some((evicted, _)) = inner.entries.remove(&oldest) {
                inner.bytes -= evicted.len();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(png_bytes: &[u8]) -> (u32, u32, Vec<u8>) {
        let decoder = png::Decoder::new(png_bytes);
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        buf.truncate(info.buffer_size());
        (info.width, info.height, buf)
    }

    fn differing_pixels(a: &[u8], b: &[u8]) -> f64 {
        let differ = a
            .chunks_exact(3)
            .zip(b.chunks_exact(3))
            .filter(|(p, q)| p != q)
            .count();
        differ as f64 / (a.len() / 3) as f64
    }

    #[test]
    fn png_decodes_at_the_requested_size_and_matches_the_pixels() {
        for (w, h) in [(512, 512), (640, 360), (360, 640), (1, 1)] {
            let png_bytes = render_png("一只猫", w, h, 0).unwrap();
            let (dw, dh, pixels) = decode(&png_bytes);
            assert_eq!((dw, dh), (w, h));
            assert_eq!(pixels, render_rgb("一只猫", w, h, 0));
        }
    }

    #[test]
    fn images_are_deterministic_and_differ_by_prompt_and_index() {
        let a = render_png("a red fox", 640, 360, 0).unwrap();
        assert_eq!(a, render_png("a red fox", 640, 360, 0).unwrap());
        let fox = render_rgb("a red fox", 640, 360, 0);
        let owl = render_rgb("a grey owl", 640, 360, 0);
        let fox1 = render_rgb("a red fox", 640, 360, 1);
        assert!(differing_pixels(&fox, &owl) > 0.5);
        assert!(differing_pixels(&fox, &fox1) > 0.5);
    }

    #[tokio::test]
    async fn cache_hits_and_stays_under_its_bound() {
        let one = render_png("p", 64, 64, 0).unwrap().len();
        let cache = PngCache::new(one * 2 + one / 2);
        let first = cache.get("p", 64, 64, 0).await.unwrap();
        let again = cache.get("p", 64, 64, 0).await.unwrap();
        assert_eq!(first, again);
        assert_eq!(cache.counts(), (1, 1));
        for i in 1..5 {
            cache.get("p", 64, 64, i).await.unwrap();
        }
        let inner = cache.lock();
        assert!(inner.bytes <= cache.max_bytes);
        assert_eq!(inner.entries.len(), inner.recency.len());
        assert!(inner.entries.len() <= 2 + 1);
    }
}
