//! Reading job files and prompts files: a size cap before anything is read into memory, UTF-8
//! with the position of the first bad byte, and the prompts-file line format.

use std::io::Read;
use std::path::Path;

use super::MAX_FILE_BYTES;

/// Why a file could not be read as text.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// No such file.
    NotFound,
    /// Larger than [`MAX_FILE_BYTES`]; holds the size seen.
    TooLarge(u64),
    /// Any other I/O error.
    Io(std::io::Error),
    /// Not UTF-8: the position (1-based line and column) of the first bad byte, and the byte.
    NotUtf8 {
        /// 1-based line.
        line: u32,
        /// 1-based column, in characters.
        col: u32,
        /// The first byte that is not UTF-8.
        byte: u8,
    },
    /// A UTF-16 byte-order mark.
    Utf16,
}

impl ReadError {
    /// Message and hint for a diagnostic about the file `name`.
    pub fn describe(&self, name: &str) -> (String, Option<String>) {
        match self {
            ReadError::NotFound => (format!("{name} does not exist"), None),
            ReadError::TooLarge(n) => (
                format!("{name} is {n} bytes, over the limit of {MAX_FILE_BYTES} bytes (64 MiB)"),
                Some("split the batch into several job files".into()),
            ),
            ReadError::Io(e) => (format!("cannot read {name}: {e}"), None),
            ReadError::NotUtf8 { byte, .. } => (
                format!("{name} is not valid UTF-8 (byte 0x{byte:02X})"),
                Some("save it as UTF-8; GBK files convert with `iconv -f GB18030 -t UTF-8`".into()),
            ),
            ReadError::Utf16 => (
                format!("{name} is UTF-16, not UTF-8"),
                Some("save it as UTF-8".into()),
            ),
        }
    }

    /// Where the problem is in the file (the start, unless a byte is to blame).
    pub fn position(&self) -> (u32, u32) {
        match self {
            ReadError::NotUtf8 { line, col, .. } => (*line, *col),
            _ => (1, 1),
        }
    }
}

/// Reads a file as UTF-8 text (a UTF-8 byte-order mark is dropped), refusing files over
/// [`MAX_FILE_BYTES`] before reading them.
pub(crate) fn read_text(path: &Path) -> Result<String, ReadError> {
    let file = std::fs::File::open(path).map_err(io_error)?;
    let len = file.metadata().map_err(io_error)?.len();
    if len > MAX_FILE_BYTES {
        return Err(ReadError::TooLarge(len));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    // The file may grow between the size check and the read: read at most one byte past the cap.
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(ReadError::TooLarge(bytes.len() as u64));
    }
    decode(bytes)
}

fn io_error(e: std::io::Error) -> ReadError {
    if e.kind() == std::io::ErrorKind::NotFound {
        ReadError::NotFound
    } else {
        ReadError::Io(e)
    }
}

/// Decodes UTF-8, dropping a byte-order mark; reports where the first bad byte is.
pub(crate) fn decode(mut bytes: Vec<u8>) -> Result<String, ReadError> {
    if bytes.starts_with(&[0xEF, 0xBB, 0xBF]) {
        bytes.drain(..3);
    } else if bytes.starts_with(&[0xFF, 0xFE]) || bytes.starts_with(&[0xFE, 0xFF]) {
        return Err(ReadError::Utf16);
    }
    String::from_utf8(bytes).map_err(|e| {
        let bytes = e.as_bytes();
        let good = e.utf8_error().valid_up_to();
        // The prefix is valid UTF-8 by definition of `valid_up_to`.
        let prefix = std::str::from_utf8(&bytes[..good]).unwrap_or_default();
        let line = prefix.matches('\n').count() + 1;
        let col = prefix
            .rsplit('\n')
            .next()
            .map_or(0, |last| last.chars().count())
            + 1;
        ReadError::NotUtf8 {
            line: u32::try_from(line).unwrap_or(u32::MAX),
            col: u32::try_from(col).unwrap_or(u32::MAX),
            byte: bytes.get(good).copied().unwrap_or(0),
        }
    })
}

/// The prompts of a prompts file with their 1-based line numbers: one prompt per line; blank
/// lines and lines whose first non-blank character is `#` are skipped; surrounding whitespace
/// (and a Windows `\r`) is dropped.
pub(crate) fn prompt_lines(text: &str) -> impl Iterator<Item = (u32, &str)> {
    text.split('\n').enumerate().filter_map(|(i, line)| {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            return None;
        }
        Some((u32::try_from(i + 1).unwrap_or(u32::MAX), line))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bom_is_dropped() {
        assert_eq!(
            decode(b"\xEF\xBB\xBFbatch: x".to_vec()).unwrap(),
            "batch: x"
        );
    }

    #[test]
    fn bad_byte_is_located_by_line_and_character_column() {
        let mut bytes = "a: 1\n猫: ".as_bytes().to_vec();
        bytes.push(0xFF);
        match decode(bytes) {
            Err(ReadError::NotUtf8 { line, col, byte }) => {
                assert_eq!((line, col, byte), (2, 4, 0xFF));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decode(vec![0xFF, 0xFE, 0x61, 0]),
            Err(ReadError::Utf16)
        ));
    }

    #[test]
    fn prompt_lines_skip_blanks_and_comments() {
        let text = "# heading\n猫\n\n  \n  # indented comment\r\n 狗 \r\n";
        let lines: Vec<(u32, &str)> = prompt_lines(text).collect();
        assert_eq!(lines, [(2, "猫"), (6, " 狗 \r")]);
    }

    #[test]
    fn oversized_files_are_refused_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.yaml");
        let f = std::fs::File::create(&path).unwrap();
        // Sparse: no 64 MiB is written or read.
        f.set_len(MAX_FILE_BYTES + 1).unwrap();
        assert!(matches!(read_text(&path), Err(ReadError::TooLarge(n)) if n == MAX_FILE_BYTES + 1));
        assert!(matches!(
            read_text(&dir.path().join("none.yaml")),
            Err(ReadError::NotFound)
        ));
    }
}
