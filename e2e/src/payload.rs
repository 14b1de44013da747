//! Deterministic payloads for body-integrity checks, and their digests.

use ring::digest::{Context, SHA256};

/// Byte `i` of the payload stream.
fn byte(i: u64) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 13) as u8
}

/// Bytes `[offset, offset + len)` of the payload stream.
pub fn chunk(offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| byte(offset + i)).collect()
}

/// The whole payload of `size` bytes.
pub fn bytes(size: usize) -> Vec<u8> {
    chunk(0, size)
}

/// Hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    let mut ctx = Context::new(&SHA256);
    ctx.update(data);
    hex(ctx.finish().as_ref())
}

/// Incremental SHA-256.
pub struct Digest(Context);

impl Digest {
    pub fn new() -> Self {
        Self(Context::new(&SHA256))
    }

    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    pub fn hex(self) -> String {
        hex(self.0.finish().as_ref())
    }
}

impl Default for Digest {
    fn default() -> Self {
        Self::new()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
