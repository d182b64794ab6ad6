//! Opaque pagination cursors: the last row's sequence number, bound to the tenant and the
//! filter of the listing and signed with the store's secret, so a forged cursor or one from
//! another tenant or query is refused instead of leaking rows.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::ApiError;

const MAC_BYTES: usize = 16;

pub struct CursorSigner {
    secret: [u8; 32],
}

impl CursorSigner {
    pub fn new(secret: [u8; 32]) -> Self {
        CursorSigner { secret }
    }

    fn mac(&self, seq: i64, scope: &str) -> [u8; MAC_BYTES] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).expect("hmac takes any key length");
        mac.update(&seq.to_be_bytes());
        mac.update(&Sha256::digest(scope.as_bytes()));
        let full = mac.finalize().into_bytes();
        full[..MAC_BYTES].try_into().expect("slice length")
    }

    /// `scope` names the listing: tenant and canonical filter.
    pub fn encode(&self, seq: i64, scope: &str) -> String {
        let mut bytes = seq.to_be_bytes().to_vec();
        bytes.extend_from_slice(&self.mac(seq, scope));
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// The page a listing asks for: rows after the (verified) cursor, at most `limit`.
    pub fn page(&self, cursor: Option<&str>, limit: u32, scope: &str) -> Result<licenseseal_store::Page, ApiError> {
        let after = cursor.map(|c| self.decode(c, scope)).transpose()?;
        Ok(licenseseal_store::Page { after, limit })
    }

    /// The cursor of the next page, when this one came back full.
    pub fn next<T>(&self, rows: &[(i64, T)], page: licenseseal_store::Page, scope: &str) -> Option<String> {
        let last = rows.last().filter(|_| rows.len() == page.limit as usize)?;
        Some(self.encode(last.0, scope))
    }

    pub fn decode(&self, cursor: &str, scope: &str) -> Result<i64, ApiError> {
        let invalid = || ApiError::bad_request("invalid_cursor", "the cursor is not valid for this listing");
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(cursor).map_err(|_| invalid())?;
        if bytes.len() != 8 + MAC_BYTES {
            return Err(invalid());
        }
        let seq = i64::from_be_bytes(bytes[..8].try_into().map_err(|_| invalid())?);
        if !bool::from(self.mac(seq, scope).ct_eq(&bytes[8..])) {
            return Err(invalid());
        }
        Ok(seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_other_scopes_and_forgeries() {
        let signer = CursorSigner::new([7; 32]);
        let c = signer.encode(42, "t1|all");
        assert_eq!(signer.decode(&c, "t1|all").unwrap(), 42);
        assert!(signer.decode(&c, "t2|all").is_err());
        assert!(CursorSigner::new([8; 32]).decode(&c, "t1|all").is_err());
        let forged = signer.encode(43, "t1|all");
        let mut spliced = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&forged).unwrap();
        spliced[8..].copy_from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&c).unwrap()[8..]);
        let spliced = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(spliced);
        assert!(signer.decode(&spliced, "t1|all").is_err());
        assert!(signer.decode("!!!", "t1|all").is_err());
    }
}
