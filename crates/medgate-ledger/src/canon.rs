//! Canonical encoding helpers: a compact JSON writer with a fixed field order, strict lowercase
//! hex, SHA-256 and size-checked decoding. Everything the ledger hashes or signs is written here,
//! so hashes never depend on a serializer library's formatting choices.
//!
//! The writer's output is byte-identical to `serde_json`'s compact output for the same structs
//! (tested in each item's module), so the transport form and the hashed form are one encoding.

use sha2::{Digest, Sha256};

use super::LedgerError;

/// SHA-256 of `data`.
pub(super) fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Writes one JSON object, field by field, in the order the caller gives.
pub(super) struct Obj<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> Obj<'a> {
    /// Opens an object at the end of `out`.
    pub(super) fn begin(out: &'a mut Vec<u8>) -> Obj<'a> {
        out.push(b'{');
        Obj { out, first: true }
    }

    fn key(&mut self, key: &str) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        write_str(self.out, key);
        self.out.push(b':');
    }

    pub(super) fn str(&mut self, key: &str, value: &str) -> &mut Self {
        self.key(key);
        write_str(self.out, value);
        self
    }

    pub(super) fn opt_str(&mut self, key: &str, value: Option<&str>) -> &mut Self {
        self.key(key);
        match value {
            Some(v) => write_str(self.out, v),
            None => self.out.extend_from_slice(b"null"),
        }
        self
    }

    pub(super) fn u64(&mut self, key: &str, value: u64) -> &mut Self {
        self.key(key);
        self.out.extend_from_slice(value.to_string().as_bytes());
        self
    }

    pub(super) fn opt_u64(&mut self, key: &str, value: Option<u64>) -> &mut Self {
        self.key(key);
        match value {
            Some(v) => self.out.extend_from_slice(v.to_string().as_bytes()),
            None => self.out.extend_from_slice(b"null"),
        }
        self
    }

    pub(super) fn bool(&mut self, key: &str, value: bool) -> &mut Self {
        self.key(key);
        self.out
            .extend_from_slice(if value { b"true" } else { b"false" });
        self
    }

    /// A field whose value the closure writes (a nested object or array).
    pub(super) fn with(&mut self, key: &str, write: impl FnOnce(&mut Vec<u8>)) -> &mut Self {
        self.key(key);
        write(self.out);
        self
    }

    /// An array field; `write` is called once per item and writes that item.
    pub(super) fn array<T>(
        &mut self,
        key: &str,
        items: &[T],
        mut write: impl FnMut(&mut Vec<u8>, &T),
    ) -> &mut Self {
        self.key(key);
        self.out.push(b'[');
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            write(self.out, item);
        }
        self.out.push(b']');
        self
    }

    /// Closes the object.
    pub(super) fn end(&mut self) {
        self.out.push(b'}');
    }
}

/// Writes a JSON string with the same escaping as `serde_json`: `"` and `\` escaped, control
/// characters as `\b \f \n \r \t` or `\u00xx` (lowercase hex), everything else as UTF-8.
pub(super) fn write_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    // Runs of bytes that need no escape are copied whole: entries carry long base64 and hex
    // strings, and a push per byte was a visible share of the writer's time under load.
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            0x0c => b"\\f",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        start = i + 1;
        if escape.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0x0f)]);
        } else {
            out.extend_from_slice(escape);
        }
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Whether `s` is lowercase hex of exactly `len` characters.
pub(super) fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && is_lower_hex(s)
}

/// Whether `s` consists of lowercase hex digits only.
pub(super) fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Decodes exactly 32 bytes from 64 lowercase hex characters; anything else (uppercase, wrong
/// length) is rejected so that every hash has exactly one spelling.
pub(super) fn hash_from_hex(s: &str) -> Option<[u8; 32]> {
    if !is_hex(s, 64) {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// Decodes JSON into `T` after checking the size limit. `T` rejects unknown and duplicate fields.
pub(super) fn decode<T: serde::de::DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
    limit: usize,
) -> Result<T, LedgerError> {
    if bytes.len() > limit {
        return Err(LedgerError::TooLarge {
            what,
            size: bytes.len(),
            limit,
        });
    }
    serde_json::from_slice(bytes).map_err(|e| LedgerError::Decode {
        what,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_escape_like_serde_json() {
        let samples = [
            "",
            "plain",
            "quote\" back\\slash",
            "ctl \u{0}\u{1}\u{8}\u{c}\n\r\t\u{1f}\u{7f}",
            "unicode é 漢字 🙂 \u{2028}",
            "</script>",
        ];
        for s in samples {
            let mut ours = Vec::new();
            write_str(&mut ours, s);
            let theirs = serde_json::to_vec(s).unwrap_or_default();
            assert_eq!(ours, theirs, "{s:?}");
        }
    }

    #[test]
    fn hex_is_strict() {
        let lower = "ab".repeat(32);
        assert!(hash_from_hex(&lower).is_some());
        assert!(hash_from_hex(&lower.to_uppercase()).is_none());
        assert!(hash_from_hex(&lower[..62]).is_none());
        assert!(hash_from_hex(&format!("{lower}00")).is_none());
        assert!(hash_from_hex(&"zz".repeat(32)).is_none());
    }

    #[test]
    fn decode_checks_size_first() {
        let r: Result<u32, _> = decode("thing", b"12345", 4);
        assert!(matches!(r, Err(LedgerError::TooLarge { size: 5, limit: 4, .. })));
        let r: Result<u32, _> = decode("thing", b"1234", 4);
        assert_eq!(r, Ok(1234));
    }
}
