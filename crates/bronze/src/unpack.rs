//! Compressed landing files (`.gz`, `.zst`) read as a stream of their decompressed text.
//!
//! The content hash that makes a file land exactly once is taken over the bytes as received
//! (`ingest::sha256_of`); the readers see only the decompressed text, so line numbers refer to
//! it. A read error is told apart from a damaged archive: the compressed input records whether
//! the file itself failed to read, so any other error while decompressing means the archive is
//! corrupt or truncated, and the file is rejected whole.

use std::io::{self, BufRead, BufReader, Read};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use paylake_contracts::Compression;

/// What the compressed input saw: how many bytes it handed to the decoder, and whether the
/// file itself failed to read.
#[derive(Debug, Default)]
pub struct InputState {
    bytes_read: AtomicU64,
    read_failed: AtomicBool,
}

impl InputState {
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }

    /// The file itself could not be read (an I/O error, not a damaged archive).
    pub fn read_failed(&self) -> bool {
        self.read_failed.load(Ordering::Relaxed)
    }
}

/// The landing file's own bytes, counted on their way into the decoder.
struct Tracked<R> {
    inner: R,
    state: Arc<InputState>,
}

impl<R: Read> Read for Tracked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.state.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
                Ok(n)
            }
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.state.read_failed.store(true, Ordering::Relaxed);
                }
                Err(e)
            }
        }
    }
}

/// The decompressed text of `input`, read as it streams, and what its compressed side saw.
pub fn unpack<R: Read + Send + 'static>(
    input: R,
    compression: Compression,
) -> io::Result<(Box<dyn BufRead + Send>, Arc<InputState>)> {
    let state = Arc::new(InputState::default());
    let tracked = BufReader::new(Tracked {
        inner: input,
        state: Arc::clone(&state),
    });
    let reader: Box<dyn BufRead + Send> = match compression {
        Compression::None => Box::new(tracked),
        // Concatenated gzip members are one file, as `gzip -c a b > ab.gz` makes them.
        Compression::Gzip => Box::new(BufReader::new(flate2::bufread::MultiGzDecoder::new(
            tracked,
        ))),
        Compression::Zstd => Box::new(BufReader::new(zstd::stream::read::Decoder::with_buffer(
            tracked,
        )?)),
    };
    Ok((reader, state))
}

/// The reason a compressed file whose decompression failed is rejected.
pub fn corrupt_reason(
    compression: Compression,
    error: &io::Error,
    state: &InputState,
    size: u64,
) -> String {
    let kind = match compression {
        Compression::Gzip => "gzip",
        Compression::Zstd => "zstd",
        Compression::None => "compressed",
    };
    format!(
        "corrupt or truncated {kind} archive: {error} (after {} of its {size} bytes); \
         nothing of it landed",
        state.bytes_read()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(text: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(text).unwrap();
        encoder.finish().unwrap()
    }

    fn read_all(bytes: Vec<u8>, compression: Compression) -> io::Result<Vec<u8>> {
        let (mut reader, _) = unpack(io::Cursor::new(bytes), compression)?;
        let mut out = Vec::new();
        reader.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn gzip_members_and_zstd_frames_unpack_in_order() {
        let mut two_members = gzip(b"a\n");
        two_members.extend(gzip(b"b\n"));
        assert_eq!(read_all(two_members, Compression::Gzip).unwrap(), b"a\nb\n");
        let zstd = zstd::encode_all(&b"x,y\n1,2\n"[..], 3).unwrap();
        assert_eq!(read_all(zstd, Compression::Zstd).unwrap(), b"x,y\n1,2\n");
    }

    #[test]
    fn a_truncated_or_damaged_archive_is_an_error_not_a_short_file() {
        let text = b"payment_id\nP1\nP2\nP3\n".repeat(50);
        let whole = gzip(&text);
        let truncated = whole[..whole.len() / 2].to_vec();
        assert!(read_all(truncated, Compression::Gzip).is_err());
        let mut damaged = whole.clone();
        let middle = damaged.len() / 2;
        damaged[middle] ^= 0xFF;
        assert!(read_all(damaged, Compression::Gzip).is_err());
        let mut trailing_garbage = whole;
        trailing_garbage.extend_from_slice(b"not gzip");
        assert!(read_all(trailing_garbage, Compression::Gzip).is_err());
        let zstd = zstd::encode_all(&text[..], 3).unwrap();
        assert!(read_all(zstd[..zstd.len() - 3].to_vec(), Compression::Zstd).is_err());
    }
}
