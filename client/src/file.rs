//! Reading the programs' own config files with a size bound, so a wrong
//! path (a device, a huge log) gives a clear error instead of filling
//! memory.

use std::io::Read;
use std::path::Path;

/// The largest config file read: far beyond any real config, small enough
/// that a mistaken path cannot exhaust memory.
pub const MAX_CONFIG_BYTES: u64 = 16 * 1024 * 1024;

/// Why a config file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Opening or reading failed, or the text is not UTF-8.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The file holds more than the limit.
    #[error("larger than {} MiB, the limit for a config file", .0 / (1024 * 1024))]
    TooLarge(u64),
}

/// The text at `path`, refusing more than `limit` bytes.
pub fn read_bounded(path: &Path, limit: u64) -> Result<String, FileError> {
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(FileError::TooLarge(limit));
    }
    String::from_utf8(bytes)
        .map_err(|e| FileError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_up_to_the_limit_and_refuses_more() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "0123456789").unwrap();
        assert_eq!(read_bounded(&path, 10).unwrap(), "0123456789");
        assert!(matches!(
            read_bounded(&path, 9),
            Err(FileError::TooLarge(9))
        ));
        std::fs::write(&path, [0xff, 0xfe]).unwrap();
        assert!(matches!(read_bounded(&path, 10), Err(FileError::Io(_))));
        assert!(matches!(
            read_bounded(&dir.path().join("missing"), 10),
            Err(FileError::Io(_))
        ));
    }
}
