//! Typed identifiers. Each is built only through `parse` (or generated from bytes the caller
//! supplies), so a malformed id cannot travel past the HTTP edge.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{what} must be 1–{max} characters of [A-Za-z0-9._:@-], not only dots")]
    Subject { what: &'static str, max: usize },
    #[error("idempotency key must be 1–255 printable ASCII characters")]
    IdempotencyKey,
    #[error("{0} is not a valid id")]
    Malformed(&'static str),
}

fn is_subject_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'@' | b'-')
}

macro_rules! string_id {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                $name::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_id!(
    /// The tenant-chosen id of an end customer: 1–128 of `[A-Za-z0-9._:@-]`.
    SubjectId
);
string_id!(
    /// The kind of credit an account holds; `credits` by default.
    CreditType
);
string_id!(
    /// `ten_` + a time-ordered UUID.
    TenantId
);
string_id!(
    /// `evt_` + a time-ordered UUID (UUIDv7, 32 hex digits).
    EventId
);
string_id!(
    /// `key_` + a time-ordered UUID: the public id of an API key.
    KeyId
);
string_id!(
    /// `idp_` + a time-ordered UUID: an external identity provider registered by a tenant.
    ProviderId
);
string_id!(
    /// `sig_` + a time-ordered UUID: a tenant's RFC 9421 request-signing key.
    SigningKeyId
);
string_id!(
    /// `ca_` + a time-ordered UUID: a tenant's trust anchor for client certificates.
    ClientCaId
);
string_id!(
    /// `cid_` + a time-ordered UUID: a mapping from a client certificate to a principal.
    ClientIdentityId
);
string_id!(
    /// A client-chosen key naming one logical attempt: 1–255 printable ASCII characters.
    IdempotencyKey
);

impl SubjectId {
    pub const MAX_LEN: usize = 128;

    /// Subjects made only of dots (`.`, `..`) are refused: they cannot travel in a URL path.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let ok =
            (1..=Self::MAX_LEN).contains(&s.len()) && s.bytes().all(is_subject_char) && !s.bytes().all(|b| b == b'.');
        ok.then(|| SubjectId(s.to_owned())).ok_or(IdError::Subject { what: "subject", max: Self::MAX_LEN })
    }
}

impl CreditType {
    pub const MAX_LEN: usize = 64;
    pub const DEFAULT: &'static str = "credits";

    pub fn parse(s: &str) -> Result<Self, IdError> {
        let ok = (1..=Self::MAX_LEN).contains(&s.len()) && s.bytes().all(is_subject_char);
        ok.then(|| CreditType(s.to_owned())).ok_or(IdError::Subject { what: "credit_type", max: Self::MAX_LEN })
    }

    pub fn default_type() -> Self {
        CreditType(Self::DEFAULT.to_owned())
    }
}

impl Default for CreditType {
    fn default() -> Self {
        Self::default_type()
    }
}

impl IdempotencyKey {
    pub const MAX_LEN: usize = 255;

    pub fn parse(s: &str) -> Result<Self, IdError> {
        let ok = (1..=Self::MAX_LEN).contains(&s.len()) && s.bytes().all(|b| (0x20..0x7f).contains(&b));
        ok.then(|| IdempotencyKey(s.to_owned())).ok_or(IdError::IdempotencyKey)
    }
}

/// Parses `prefix` + 32 lowercase hex digits.
fn parse_prefixed(s: &str, prefix: &str, what: &'static str) -> Result<String, IdError> {
    let hex = s.strip_prefix(prefix).ok_or(IdError::Malformed(what))?;
    let ok = hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    ok.then(|| s.to_owned()).ok_or(IdError::Malformed(what))
}

/// Renders `prefix` + the UUID's 32 hex digits.
fn render_prefixed(prefix: &str, uuid: uuid::Uuid) -> String {
    let mut s = String::with_capacity(prefix.len() + 32);
    s.push_str(prefix);
    s.push_str(uuid.simple().encode_lower(&mut uuid::Uuid::encode_buffer()));
    s
}

macro_rules! uuid_id {
    ($name:ident, $prefix:literal, $what:literal) => {
        impl $name {
            pub const PREFIX: &'static str = $prefix;

            pub fn parse(s: &str) -> Result<Self, IdError> {
                parse_prefixed(s, $prefix, $what).map($name)
            }

            /// Builds the id from a UUID the caller generated (UUIDv7 for time order).
            pub fn from_uuid(uuid: uuid::Uuid) -> Self {
                $name(render_prefixed($prefix, uuid))
            }
        }
    };
}

uuid_id!(TenantId, "ten_", "tenant id");
uuid_id!(EventId, "evt_", "event id");
uuid_id!(KeyId, "key_", "api key id");
uuid_id!(ProviderId, "idp_", "identity provider id");
uuid_id!(SigningKeyId, "sig_", "signing key id");
uuid_id!(ClientCaId, "ca_", "client CA id");
uuid_id!(ClientIdentityId, "cid_", "client identity id");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_follow_the_contract() {
        assert!(SubjectId::parse("user:42@acme.io-x_y").is_ok());
        assert!(SubjectId::parse(&"a".repeat(128)).is_ok());
        for bad in ["", "a b", "ü", "a/b", "a\n", ".", "..", &"a".repeat(129)] {
            assert!(SubjectId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn idempotency_keys_are_printable_ascii() {
        assert!(IdempotencyKey::parse("order 42/retry#1").is_ok());
        assert!(IdempotencyKey::parse(&"k".repeat(255)).is_ok());
        for bad in ["", "tab\t", "é", &"k".repeat(256)] {
            assert!(IdempotencyKey::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn event_ids_round_trip_and_refuse_forgeries() {
        let id = EventId::from_uuid(uuid::Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001));
        assert_eq!(EventId::parse(id.as_str()).unwrap(), id);
        for bad in ["evt_", "evt_XYZ", "ten_01900000000070008000000000000001", "evt_0190000000007000800000000000000G"] {
            assert!(EventId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn provider_ids_round_trip_and_refuse_other_prefixes() {
        let id = ProviderId::from_uuid(uuid::Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001));
        assert_eq!(id.as_str(), "idp_01900000000070008000000000000001");
        assert_eq!(ProviderId::parse(id.as_str()).unwrap(), id);
        for bad in ["idp_", "key_01900000000070008000000000000001", "idp_0190000000007000800000000000000A"] {
            assert!(ProviderId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn credential_ids_carry_their_own_prefix() {
        let uuid = uuid::Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001);
        let sig = SigningKeyId::from_uuid(uuid);
        let ca = ClientCaId::from_uuid(uuid);
        let cid = ClientIdentityId::from_uuid(uuid);
        assert_eq!(sig.as_str(), "sig_01900000000070008000000000000001");
        assert_eq!(ca.as_str(), "ca_01900000000070008000000000000001");
        assert_eq!(cid.as_str(), "cid_01900000000070008000000000000001");
        assert_eq!(SigningKeyId::parse(sig.as_str()).unwrap(), sig);
        assert_eq!(ClientCaId::parse(ca.as_str()).unwrap(), ca);
        assert_eq!(ClientIdentityId::parse(cid.as_str()).unwrap(), cid);
        assert!(SigningKeyId::parse(ca.as_str()).is_err());
        assert!(ClientCaId::parse(cid.as_str()).is_err());
        assert!(ClientIdentityId::parse(sig.as_str()).is_err());
        assert!(ClientCaId::parse("ca_0190000000007000800000000000000").is_err(), "31 digits");
    }
}
