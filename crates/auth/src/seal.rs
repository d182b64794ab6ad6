//! Secrets that must be read back (Authority signing keys, later HMAC request-signing keys)
//! are sealed with AES-256-GCM under the master key before they reach the store.
//!
//! Sealed form: `version (1 byte) || nonce (12 bytes) || ciphertext || tag (16 bytes)`. The
//! caller passes associated data naming what is sealed (e.g. the key id), so a sealed value
//! copied onto another row does not open.

use base64::Engine;
use rand::RngCore;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};

const VERSION: u8 = 1;
/// Bytes of a master key.
pub const MASTER_KEY_BYTES: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("the master key must be base64 of exactly 32 bytes")]
    BadMasterKey,
    #[error("a sealed secret does not open with this master key (wrong key, or the data was altered)")]
    CannotOpen,
}

/// The key that seals secrets at rest. Never printed.
#[derive(Clone)]
pub struct MasterKey {
    bytes: [u8; MASTER_KEY_BYTES],
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    pub fn from_bytes(bytes: [u8; MASTER_KEY_BYTES]) -> Self {
        MasterKey { bytes }
    }

    /// A fresh key from the operating system's random source.
    pub fn generate() -> Self {
        let mut bytes = [0u8; MASTER_KEY_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        MasterKey { bytes }
    }

    /// Parses standard base64 (padding optional, surrounding whitespace ignored).
    pub fn parse_base64(text: &str) -> Result<Self, SealError> {
        let text = text.trim().trim_end_matches('=');
        let bytes =
            base64::engine::general_purpose::STANDARD_NO_PAD.decode(text).map_err(|_| SealError::BadMasterKey)?;
        let bytes: [u8; MASTER_KEY_BYTES] = bytes.try_into().map_err(|_| SealError::BadMasterKey)?;
        Ok(MasterKey { bytes })
    }

    /// Standard base64, for writing a generated key to its file.
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.bytes)
    }

    fn aead(&self) -> LessSafeKey {
        // AES-256-GCM takes any 32-byte key; construction cannot fail for that length.
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &self.bytes).expect("32-byte AES-256 key"))
    }

    /// Encrypts `plaintext`, bound to `context`.
    pub fn seal(&self, context: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let mut in_out = plaintext.to_vec();
        self.aead()
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(context), &mut in_out)
            .expect("AES-GCM sealing of a small secret");
        let mut sealed = Vec::with_capacity(1 + NONCE_LEN + in_out.len());
        sealed.push(VERSION);
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&in_out);
        sealed
    }

    /// Decrypts what `seal` produced with the same key and context.
    pub fn open(&self, context: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let (&version, rest) = sealed.split_first().ok_or(SealError::CannotOpen)?;
        if version != VERSION || rest.len() < NONCE_LEN {
            return Err(SealError::CannotOpen);
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::CannotOpen)?;
        let mut in_out = ciphertext.to_vec();
        let plaintext =
            self.aead().open_in_place(nonce, Aad::from(context), &mut in_out).map_err(|_| SealError::CannotOpen)?;
        Ok(plaintext.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_with_the_same_key_and_context() {
        let key = MasterKey::generate();
        let sealed = key.seal(b"kid-1", b"private key bytes");
        assert!(!sealed.windows(7).any(|w| w == b"private"));
        assert_eq!(key.open(b"kid-1", &sealed).unwrap(), b"private key bytes");
        assert_eq!(key.open(b"kid-2", &sealed), Err(SealError::CannotOpen));
        assert_eq!(MasterKey::generate().open(b"kid-1", &sealed), Err(SealError::CannotOpen));
        let mut altered = sealed.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert_eq!(key.open(b"kid-1", &altered), Err(SealError::CannotOpen));
        assert_eq!(key.open(b"kid-1", &sealed[..5]), Err(SealError::CannotOpen));
        assert_ne!(key.seal(b"kid-1", b"x"), key.seal(b"kid-1", b"x"), "fresh nonce every time");
    }

    #[test]
    fn master_keys_parse_from_base64_of_32_bytes_only() {
        let key = MasterKey::generate();
        let again = MasterKey::parse_base64(&format!("  {}\n", key.to_base64())).unwrap();
        assert_eq!(again.open(b"c", &key.seal(b"c", b"v")).unwrap(), b"v");
        assert!(MasterKey::parse_base64("c2hvcnQ=").is_err());
        assert!(MasterKey::parse_base64("not base64!").is_err());
        assert_eq!(format!("{key:?}"), "MasterKey(<redacted>)");
    }
}
