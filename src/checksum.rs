//! The whole-file checksum: xxh3-64, streamed chunk by chunk while the data is hot
//! in cache. Both sides compute it; the server publishes a file only if they match.

use std::hash::Hasher;

use twox_hash::XxHash3_64;

/// A running xxh3-64 over the bytes fed so far.
pub struct Checksum(XxHash3_64);

impl Checksum {
    /// A checksum of no bytes yet.
    pub fn new() -> Self {
        Checksum(XxHash3_64::with_seed(0))
    }

    /// Feeds the next `bytes`.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.write(bytes);
    }

    /// The xxh3-64 of everything fed so far; more may be fed after.
    pub fn digest(&self) -> u64 {
        self.0.finish()
    }
}

impl Default for Checksum {
    fn default() -> Self {
        Self::new()
    }
}

/// The checksum of `bytes` in one go (equal to streaming them in any pieces).
pub fn of(bytes: &[u8]) -> u64 {
    XxHash3_64::oneshot(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_in_pieces_equals_one_shot() {
        let data: Vec<u8> = (0..1_000_003u32).map(|i| (i * 31 + i / 7) as u8).collect();
        let mut running = Checksum::new();
        for piece in data.chunks(65_537) {
            running.update(piece);
        }
        assert_eq!(running.digest(), of(&data));
        assert_ne!(of(&data), of(&data[1..]));
    }

    #[test]
    fn it_is_standard_xxh3_64() {
        // Reference value of XXH3_64bits("") from the xxHash test vectors.
        assert_eq!(of(b""), 0x2D06_8005_38D3_94C2);
    }
}
