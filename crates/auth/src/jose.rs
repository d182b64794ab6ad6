//! JOSE for bearer tokens: a strict compact-JWS/JWT parser, signature verification with public
//! JWKs, claim validation, and our own Ed25519 signer. Everything here is pure: no I/O, no
//! clock (`now` is passed in), and randomness only when a fresh signing key is generated.
//!
//! The parser is deliberately narrower than the standards allow. A token is refused unless its
//! shape is unambiguous: one JSON object per part, no duplicate members, no padding, an
//! algorithm from a closed list (never `none`, never a shared-secret HMAC), and no header that
//! would let the token choose its own key (`jwk`, `jku`, `x5u`, `x5c`, …). The key, and with it
//! the algorithm family, always comes from our side; the header only selects among our keys.
//!
//! Signatures are checked over the first two segments exactly as received; the JSON is never
//! re-serialised. Errors carry only static reasons, never token text or key material, because
//! they end up in the audit log.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::signature::{self as ring_sig, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Longest compact token we parse, in bytes.
pub const TOKEN_MAX_BYTES: usize = 8192;
/// Largest NumericDate we accept: 2^53, the largest integer a JSON number holds exactly
/// everywhere.
const NUMERIC_DATE_MAX: u64 = 1 << 53;
/// RSA moduli outside this range are refused when a key is built (ring refuses them too).
const RSA_MODULUS_MIN_BITS: usize = 2048;
const RSA_MODULUS_MAX_BITS: usize = 8192;
/// Largest RSA public exponent ring accepts: 2^33 − 1.
const RSA_EXPONENT_MAX: u64 = (1 << 33) - 1;
/// Header members that would let a token bring or point at its own key, or make us process
/// the payload in a way we do not implement.
const FORBIDDEN_HEADERS: [&str; 8] = ["jwk", "jku", "x5u", "x5c", "x5t", "x5t#S256", "crit", "b64"];

/// The signature algorithms we ever accept, by their exact JOSE name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl Algorithm {
    pub const ALL: [Algorithm; 9] = [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ];

    /// Parses the exact, case-sensitive JOSE name. `none` in any spelling, the HMAC algorithms
    /// and everything else are unsupported.
    pub fn parse(s: &str) -> Result<Self, JoseError> {
        Self::ALL.into_iter().find(|alg| alg.as_str() == s).ok_or(JoseError::UnsupportedAlgorithm)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::PS256 => "PS256",
            Algorithm::PS384 => "PS384",
            Algorithm::PS512 => "PS512",
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::EdDSA => "EdDSA",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a token or key was refused. The reasons are static strings chosen here, so a message
/// never carries token text, key material or a library's error text.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum JoseError {
    #[error("malformed: {0}")]
    Malformed(&'static str),
    #[error("unsupported algorithm")]
    UnsupportedAlgorithm,
    #[error("forbidden header member: {0}")]
    ForbiddenHeader(&'static str),
    #[error("claim {0} has the wrong type or range")]
    InvalidClaim(&'static str),
    #[error("bad signature")]
    BadSignature,
    #[error("algorithm not usable with this key")]
    KeyMismatch,
    #[error("unknown key id")]
    UnknownKid,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token issued in the future")]
    IssuedInFuture,
    #[error("missing claim: {0}")]
    MissingClaim(&'static str),
    #[error("wrong audience")]
    WrongAudience,
    #[error("wrong issuer")]
    WrongIssuer,
    #[error("invalid key: {0}")]
    InvalidKey(&'static str),
}

/// The protected header members we act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub alg: Algorithm,
    pub kid: Option<String>,
    pub typ: Option<String>,
}

/// The claims of a token, the registered ones typed. Times are NumericDates in seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Claims {
    pub iss: Option<String>,
    pub sub: Option<String>,
    /// A single string or an array of strings in the token; never empty when present.
    pub aud: Vec<String>,
    pub exp: Option<i64>,
    pub nbf: Option<i64>,
    pub iat: Option<i64>,
    pub jti: Option<String>,
    /// Every claim, the registered ones included, for claim mapping.
    pub extra: Map<String, Value>,
}

/// A parsed but NOT yet verified compact JWS. Nothing in it may be trusted before `verify`
/// succeeded.
pub struct Unverified<'a> {
    pub header: Header,
    pub claims: Claims,
    /// The first two segments exactly as received: what the signature covers.
    signing_input: &'a str,
    signature: Vec<u8>,
}

/// Parses a compact JWS strictly; see the module documentation for what is refused.
pub fn parse(token: &str) -> Result<Unverified<'_>, JoseError> {
    if token.len() > TOKEN_MAX_BYTES {
        return Err(JoseError::Malformed("token too long"));
    }
    let mut segments = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (segments.next(), segments.next(), segments.next(), segments.next())
    else {
        return Err(JoseError::Malformed("token does not have three segments"));
    };
    if header_b64.is_empty() || payload_b64.is_empty() || signature_b64.is_empty() {
        return Err(JoseError::Malformed("empty token segment"));
    }
    let header = decode_segment(header_b64)?;
    let payload = decode_segment(payload_b64)?;
    let signature = decode_segment(signature_b64)?;

    let header = parse_header(&header)?;
    let claims = parse_claims(&payload)?;
    let signing_input = &token[..header_b64.len() + 1 + payload_b64.len()];
    Ok(Unverified { header, claims, signing_input, signature })
}

impl Unverified<'_> {
    /// Checks that the header's algorithm may be used with `key`, then the signature.
    pub fn verify(&self, key: &VerifyingKey) -> Result<(), JoseError> {
        if !key.accepts(self.header.alg) {
            return Err(JoseError::KeyMismatch);
        }
        key.verify_signature(self.header.alg, self.signing_input.as_bytes(), &self.signature)
    }

    /// Picks the key from `keys` and verifies with it. With a `kid` the key must carry that
    /// id; without one, exactly one key of the set may accept the algorithm.
    pub fn verify_in<'k>(&self, keys: &'k JwkSet) -> Result<&'k VerifyingKey, JoseError> {
        let alg = self.header.alg;
        let key = match self.header.kid.as_deref() {
            Some(kid) => match keys.find(kid, alg) {
                Some(key) => key,
                None if keys.get(kid).is_some() => return Err(JoseError::KeyMismatch),
                None => return Err(JoseError::UnknownKid),
            },
            None => {
                let mut candidates = keys.keys.iter().filter(|key| key.accepts(alg));
                match (candidates.next(), candidates.next()) {
                    (Some(key), None) => key,
                    _ => return Err(JoseError::UnknownKid),
                }
            }
        };
        self.verify(key)?;
        Ok(key)
    }
}

impl fmt::Debug for Unverified<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Unverified").field("header", &self.header).field("claims", &self.claims).finish_non_exhaustive()
    }
}

/// Time, audience and issuer rules. `now` and `leeway` are in seconds; the leeway applies
/// alike to `exp`, `nbf` and `iat` (a negative leeway counts as zero).
#[derive(Debug, Clone, Copy)]
pub struct Validation<'v> {
    pub now: i64,
    pub leeway: i64,
    /// Compared for exact equality with `iss`, which is therefore required.
    pub issuer: &'v str,
    /// At least one `aud` must be among these; not checked when empty.
    pub audiences: &'v [String],
    /// Further claim names that must be present.
    pub required: &'v [String],
}

impl Claims {
    /// Applies `rules`. `exp` is always required.
    pub fn validate(&self, rules: &Validation) -> Result<(), JoseError> {
        let leeway = rules.leeway.max(0);
        let exp = self.exp.ok_or(JoseError::MissingClaim("exp"))?;
        if rules.now >= exp.saturating_add(leeway) {
            return Err(JoseError::Expired);
        }
        if self.nbf.is_some_and(|nbf| rules.now.saturating_add(leeway) < nbf) {
            return Err(JoseError::NotYetValid);
        }
        if self.iat.is_some_and(|iat| iat > rules.now.saturating_add(leeway)) {
            return Err(JoseError::IssuedInFuture);
        }
        match self.iss.as_deref() {
            None => return Err(JoseError::MissingClaim("iss")),
            Some(iss) if iss != rules.issuer => return Err(JoseError::WrongIssuer),
            Some(_) => {}
        }
        if !rules.audiences.is_empty() {
            if self.aud.is_empty() {
                return Err(JoseError::MissingClaim("aud"));
            }
            if !self.aud.iter().any(|aud| rules.audiences.contains(aud)) {
                return Err(JoseError::WrongAudience);
            }
        }
        match rules.required.iter().find(|name| !self.extra.contains_key(name.as_str())) {
            Some(name) => Err(JoseError::MissingClaim(registered_claim_name(name).unwrap_or("required claim"))),
            None => Ok(()),
        }
    }
}

/// A public verification key and the algorithms it may be used with.
#[derive(Clone)]
pub struct VerifyingKey {
    kid: Option<String>,
    /// The JWK's `alg`, when it named one: then only that algorithm is accepted.
    alg: Option<Algorithm>,
    key: PublicKey,
}

/// The key material; its variant fixes the algorithm family.
#[derive(Clone)]
enum PublicKey {
    /// Big-endian modulus and exponent without leading zero bytes.
    Rsa {
        n: Box<[u8]>,
        e: Box<[u8]>,
    },
    /// Uncompressed SEC1 point, bound to ES256.
    P256(UnparsedPublicKey<[u8; 65]>),
    /// Uncompressed SEC1 point, bound to ES384.
    P384(UnparsedPublicKey<[u8; 97]>),
    Ed25519(UnparsedPublicKey<[u8; 32]>),
}

impl VerifyingKey {
    /// Builds a key from a public JWK. RSA moduli must have 2048 to 8192 bits; EC keys must be
    /// on P-256 or P-384, OKP keys Ed25519. `use` other than `sig`, `key_ops` without
    /// `verify`, and an `alg` that does not fit the key are refused. Private members are
    /// ignored and never kept.
    pub fn from_jwk(jwk: &Value) -> Result<Self, JoseError> {
        let jwk = jwk.as_object().ok_or(JoseError::InvalidKey("jwk is not an object"))?;
        match jwk.get("use") {
            None => {}
            Some(Value::String(usage)) if usage == "sig" => {}
            Some(_) => return Err(JoseError::InvalidKey("use")),
        }
        match jwk.get("key_ops") {
            None => {}
            Some(Value::Array(ops)) if ops.iter().all(Value::is_string) && ops.iter().any(|op| op == "verify") => {}
            Some(_) => return Err(JoseError::InvalidKey("key_ops")),
        }
        let kid = match jwk.get("kid") {
            None => None,
            Some(Value::String(kid)) => Some(kid.clone()),
            Some(_) => return Err(JoseError::InvalidKey("kid")),
        };
        let alg = match jwk.get("alg") {
            None => None,
            Some(Value::String(alg)) => Some(Algorithm::parse(alg).map_err(|_| JoseError::InvalidKey("alg"))?),
            Some(_) => return Err(JoseError::InvalidKey("alg")),
        };
        let key = match jwk.get("kty").and_then(Value::as_str) {
            Some("RSA") => rsa_key(jwk)?,
            Some("EC") => ec_key(jwk)?,
            Some("OKP") => okp_key(jwk)?,
            _ => return Err(JoseError::InvalidKey("kty")),
        };
        let key = VerifyingKey { kid, alg: None, key };
        match alg {
            Some(alg) if !key.accepts(alg) => Err(JoseError::InvalidKey("alg")),
            _ => Ok(VerifyingKey { alg, ..key }),
        }
    }

    /// An Ed25519 key from its 32 raw public bytes.
    pub fn ed25519(kid: Option<String>, public: [u8; 32]) -> Self {
        VerifyingKey { kid, alg: None, key: PublicKey::Ed25519(UnparsedPublicKey::new(&ring_sig::ED25519, public)) }
    }

    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// Whether `alg` may be used with this key: the family is fixed by the key type (RSA →
    /// RS*/PS*, P-256 → ES256, P-384 → ES384, Ed25519 → EdDSA), and the algorithm must equal
    /// the JWK's `alg` when it named one.
    pub fn accepts(&self, alg: Algorithm) -> bool {
        use Algorithm::*;
        let family = matches!(
            (&self.key, alg),
            (PublicKey::Rsa { .. }, RS256 | RS384 | RS512 | PS256 | PS384 | PS512)
                | (PublicKey::P256(_), ES256)
                | (PublicKey::P384(_), ES384)
                | (PublicKey::Ed25519(_), EdDSA)
        );
        family && (self.alg.is_none() || self.alg == Some(alg))
    }

    /// Checks `signature` over `message`; the caller has checked `accepts(alg)`.
    fn verify_signature(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> Result<(), JoseError> {
        let outcome = match &self.key {
            PublicKey::Rsa { n, e } => {
                let params = rsa_parameters(alg).ok_or(JoseError::KeyMismatch)?;
                ring_sig::RsaPublicKeyComponents { n: &n[..], e: &e[..] }.verify(params, message, signature)
            }
            PublicKey::P256(key) => key.verify(message, signature),
            PublicKey::P384(key) => key.verify(message, signature),
            PublicKey::Ed25519(key) => key.verify(message, signature),
        };
        outcome.map_err(|_| JoseError::BadSignature)
    }

    fn kind(&self) -> &'static str {
        match self.key {
            PublicKey::Rsa { .. } => "RSA",
            PublicKey::P256(_) => "EC P-256",
            PublicKey::P384(_) => "EC P-384",
            PublicKey::Ed25519(_) => "OKP Ed25519",
        }
    }
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("kind", &self.kind())
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// The signature keys of a JWK Set. Keys we cannot use (other types, `use` other than `sig`,
/// malformed members) are skipped, so one odd key does not take the others down.
#[derive(Debug, Clone, Default)]
pub struct JwkSet {
    keys: Vec<VerifyingKey>,
}

impl JwkSet {
    /// Parses a `{"keys":[…]}` document. The caller bounds the body's size.
    pub fn parse(body: &[u8]) -> Result<Self, JoseError> {
        let mut set = parse_object(body).map_err(|fault| {
            JoseError::Malformed(match fault {
                JsonFault::Invalid => "jwk set is not JSON",
                JsonFault::Duplicate => "duplicate member in jwk set",
                JsonFault::NotObject => "jwk set is not a JSON object",
            })
        })?;
        let Some(Value::Array(keys)) = set.remove("keys") else {
            return Err(JoseError::Malformed("jwk set has no keys array"));
        };
        Ok(JwkSet { keys: keys.iter().filter_map(|jwk| VerifyingKey::from_jwk(jwk).ok()).collect() })
    }

    /// The first key with this `kid`.
    pub fn get(&self, kid: &str) -> Option<&VerifyingKey> {
        self.keys.iter().find(|key| key.kid() == Some(kid))
    }

    /// The first key with this `kid` that accepts `alg` (a set may reuse a kid across key
    /// types).
    pub fn find(&self, kid: &str, alg: Algorithm) -> Option<&VerifyingKey> {
        self.keys.iter().find(|key| key.kid() == Some(kid) && key.accepts(alg))
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().filter_map(VerifyingKey::kid)
    }
}

/// The RFC 7638 thumbprint (SHA-256, base64url) of an RSA, EC or OKP public JWK: the hash of
/// its required members, sorted, without whitespace.
pub fn thumbprint(jwk: &Value) -> Result<String, JoseError> {
    let jwk = jwk.as_object().ok_or(JoseError::InvalidKey("jwk is not an object"))?;
    let member = |name: &'static str| jwk.get(name).and_then(Value::as_str).ok_or(JoseError::InvalidKey(name));
    let encoded = |name: &'static str| {
        let value = member(name)?;
        URL_SAFE_NO_PAD.decode(value).map_err(|_| JoseError::InvalidKey(name))?;
        Ok::<_, JoseError>(json_string(value))
    };
    let canonical = match member("kty")? {
        "RSA" => format!(r#"{{"e":{},"kty":"RSA","n":{}}}"#, encoded("e")?, encoded("n")?),
        "EC" => {
            format!(
                r#"{{"crv":{},"kty":"EC","x":{},"y":{}}}"#,
                json_string(member("crv")?),
                encoded("x")?,
                encoded("y")?
            )
        }
        "OKP" => format!(r#"{{"crv":{},"kty":"OKP","x":{}}}"#, json_string(member("crv")?), encoded("x")?),
        _ => return Err(JoseError::InvalidKey("kty")),
    };
    Ok(URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes())))
}

/// Our own token signer: Ed25519 (deterministic), its kid the RFC 7638 thumbprint of its
/// public JWK.
pub struct Ed25519Signer {
    kid: String,
    key_pair: Ed25519KeyPair,
}

impl Ed25519Signer {
    /// A fresh key and its PKCS#8 document, which the caller seals and stores.
    ///
    /// # Panics
    /// If the operating system's random number generator fails, which leaves nothing safe to
    /// do.
    pub fn generate() -> (Self, Vec<u8>) {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("the system random number generator failed");
        let signer = Self::from_pkcs8(pkcs8.as_ref()).expect("ring reads back the PKCS#8 document it generated");
        (signer, pkcs8.as_ref().to_vec())
    }

    /// Loads a PKCS#8 (v1 or v2) Ed25519 private key; a v2 document's public key must match.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, JoseError> {
        let key_pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8).map_err(|_| JoseError::InvalidKey("pkcs8"))?;
        Ok(Self::with_key_pair(key_pair))
    }

    /// Builds the key from its 32-byte seed (the JWK `d`), as in RFC 8037's examples.
    pub fn from_seed(seed: &[u8; 32]) -> Result<Self, JoseError> {
        let key_pair = Ed25519KeyPair::from_seed_unchecked(seed).map_err(|_| JoseError::InvalidKey("seed"))?;
        Ok(Self::with_key_pair(key_pair))
    }

    fn with_key_pair(key_pair: Ed25519KeyPair) -> Self {
        let x = URL_SAFE_NO_PAD.encode(key_pair.public_key().as_ref());
        let kid = URL_SAFE_NO_PAD.encode(Sha256::digest(format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#)));
        Ed25519Signer { kid, key_pair }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn public_key(&self) -> [u8; 32] {
        let mut public = [0; 32];
        public.copy_from_slice(self.key_pair.public_key().as_ref());
        public
    }

    /// The key to verify this signer's tokens with.
    pub fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey::ed25519(Some(self.kid.clone()), self.public_key())
    }

    /// `{"kty":"OKP","crv":"Ed25519","x":…,"kid":…,"alg":"EdDSA","use":"sig"}`.
    pub fn public_jwk(&self) -> Value {
        serde_json::json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": URL_SAFE_NO_PAD.encode(self.key_pair.public_key().as_ref()),
            "kid": self.kid,
            "alg": "EdDSA",
            "use": "sig",
        })
    }

    /// A compact JWS over `claims_json` with the protected header
    /// `{"alg":"EdDSA","typ":"JWT","kid":<kid>}`, in that order, without whitespace.
    pub fn sign_jwt(&self, claims_json: &[u8]) -> String {
        // The kid is base64url, so it needs no JSON escaping.
        let header = format!(r#"{{"alg":"EdDSA","typ":"JWT","kid":"{}"}}"#, self.kid);
        self.sign_compact(header.as_bytes(), claims_json)
    }

    /// A compact JWS with the given protected header bytes, used as they are.
    pub fn sign_compact(&self, header_json: &[u8], payload: &[u8]) -> String {
        let mut token = String::with_capacity((header_json.len() + payload.len() + 64) * 4 / 3 + 4);
        URL_SAFE_NO_PAD.encode_string(header_json, &mut token);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(payload, &mut token);
        let signature = self.key_pair.sign(token.as_bytes());
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.as_ref(), &mut token);
        token
    }
}

impl fmt::Debug for Ed25519Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ed25519Signer").field("kid", &self.kid).finish_non_exhaustive()
    }
}

/// Decodes one token segment: base64url, no padding, canonical trailing bits.
fn decode_segment(segment: &str) -> Result<Vec<u8>, JoseError> {
    URL_SAFE_NO_PAD.decode(segment).map_err(|_| JoseError::Malformed("segment is not unpadded base64url"))
}

fn parse_header(bytes: &[u8]) -> Result<Header, JoseError> {
    let members = parse_object(bytes).map_err(|fault| {
        JoseError::Malformed(match fault {
            JsonFault::Invalid => "header is not JSON",
            JsonFault::Duplicate => "duplicate header member",
            JsonFault::NotObject => "header is not a JSON object",
        })
    })?;
    let alg = match members.get("alg") {
        Some(Value::String(alg)) => Algorithm::parse(alg)?,
        Some(_) => return Err(JoseError::Malformed("alg is not a string")),
        None => return Err(JoseError::Malformed("header has no alg")),
    };
    if let Some(name) = FORBIDDEN_HEADERS.into_iter().find(|name| members.contains_key(*name)) {
        return Err(JoseError::ForbiddenHeader(name));
    }
    let text = |name: &str, fault: &'static str| match members.get(name) {
        None => Ok(None),
        Some(Value::String(value)) => Ok(Some(value.clone())),
        Some(_) => Err(JoseError::Malformed(fault)),
    };
    Ok(Header { alg, kid: text("kid", "kid is not a string")?, typ: text("typ", "typ is not a string")? })
}

fn parse_claims(bytes: &[u8]) -> Result<Claims, JoseError> {
    let extra = parse_object(bytes).map_err(|fault| {
        JoseError::Malformed(match fault {
            JsonFault::Invalid => "payload is not JSON",
            JsonFault::Duplicate => "duplicate claim",
            JsonFault::NotObject => "payload is not a JSON object",
        })
    })?;
    Ok(Claims {
        iss: string_claim(&extra, "iss")?,
        sub: string_claim(&extra, "sub")?,
        aud: audience_claim(&extra)?,
        exp: numeric_date_claim(&extra, "exp")?,
        nbf: numeric_date_claim(&extra, "nbf")?,
        iat: numeric_date_claim(&extra, "iat")?,
        jti: string_claim(&extra, "jti")?,
        extra,
    })
}

fn string_claim(claims: &Map<String, Value>, name: &'static str) -> Result<Option<String>, JoseError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::String(value)) => Ok(Some(value.clone())),
        Some(_) => Err(JoseError::InvalidClaim(name)),
    }
}

fn audience_claim(claims: &Map<String, Value>) -> Result<Vec<String>, JoseError> {
    match claims.get("aud") {
        None => Ok(Vec::new()),
        Some(Value::String(aud)) => Ok(vec![aud.clone()]),
        Some(Value::Array(auds)) if !auds.is_empty() => {
            auds.iter().map(|aud| aud.as_str().map(str::to_owned).ok_or(JoseError::InvalidClaim("aud"))).collect()
        }
        Some(_) => Err(JoseError::InvalidClaim("aud")),
    }
}

/// A NumericDate: a JSON number from 0 to 2^53, fractions floored.
fn numeric_date_claim(claims: &Map<String, Value>, name: &'static str) -> Result<Option<i64>, JoseError> {
    let Some(value) = claims.get(name) else {
        return Ok(None);
    };
    let invalid = JoseError::InvalidClaim(name);
    let Value::Number(number) = value else {
        return Err(invalid);
    };
    let seconds = match (number.as_i64(), number.as_f64()) {
        (Some(seconds), _) => seconds,
        // Integers beyond i64 are far beyond 2^53; fractions are floored.
        (None, Some(seconds)) if !number.is_u64() && (0.0..=NUMERIC_DATE_MAX as f64).contains(&seconds.floor()) => {
            // In range and integral, so the cast is exact.
            seconds.floor() as i64
        }
        _ => return Err(invalid),
    };
    match u64::try_from(seconds) {
        Ok(unsigned) if unsigned <= NUMERIC_DATE_MAX => Ok(Some(seconds)),
        _ => Err(invalid),
    }
}

/// The `'static` name of a registered claim, for error reasons.
fn registered_claim_name(name: &str) -> Option<&'static str> {
    ["iss", "sub", "aud", "exp", "nbf", "iat", "jti"].into_iter().find(|registered| *registered == name)
}

fn rsa_parameters(alg: Algorithm) -> Option<&'static ring_sig::RsaParameters> {
    Some(match alg {
        Algorithm::RS256 => &ring_sig::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &ring_sig::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &ring_sig::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &ring_sig::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &ring_sig::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &ring_sig::RSA_PSS_2048_8192_SHA512,
        Algorithm::ES256 | Algorithm::ES384 | Algorithm::EdDSA => return None,
    })
}

/// A base64url member of a JWK, decoded.
fn key_member(jwk: &Map<String, Value>, name: &'static str) -> Result<Vec<u8>, JoseError> {
    let value = jwk.get(name).and_then(Value::as_str).ok_or(JoseError::InvalidKey(name))?;
    URL_SAFE_NO_PAD.decode(value).map_err(|_| JoseError::InvalidKey(name))
}

fn rsa_key(jwk: &Map<String, Value>) -> Result<PublicKey, JoseError> {
    let (n, e) = (key_member(jwk, "n")?, key_member(jwk, "e")?);
    let (n, e) = (strip_leading_zeros(&n), strip_leading_zeros(&e));
    let n_bits = match n.first() {
        Some(first) => n.len() * 8 - first.leading_zeros() as usize,
        None => 0,
    };
    let n_odd = n.last().is_some_and(|last| last & 1 == 1);
    if !(RSA_MODULUS_MIN_BITS..=RSA_MODULUS_MAX_BITS).contains(&n_bits) || !n_odd {
        return Err(JoseError::InvalidKey("n"));
    }
    if e.len() > 8 {
        return Err(JoseError::InvalidKey("e"));
    }
    let e_value = e.iter().fold(0u64, |value, byte| value << 8 | u64::from(*byte));
    if e_value < 3 || e_value % 2 == 0 || e_value > RSA_EXPONENT_MAX {
        return Err(JoseError::InvalidKey("e"));
    }
    Ok(PublicKey::Rsa { n: n.into(), e: e.into() })
}

fn ec_key(jwk: &Map<String, Value>) -> Result<PublicKey, JoseError> {
    match jwk.get("crv").and_then(Value::as_str) {
        Some("P-256") => Ok(PublicKey::P256(UnparsedPublicKey::new(
            &ring_sig::ECDSA_P256_SHA256_FIXED,
            uncompressed_point::<32, 65>(jwk)?,
        ))),
        Some("P-384") => Ok(PublicKey::P384(UnparsedPublicKey::new(
            &ring_sig::ECDSA_P384_SHA384_FIXED,
            uncompressed_point::<48, 97>(jwk)?,
        ))),
        _ => Err(JoseError::InvalidKey("crv")),
    }
}

/// `0x04 || x || y` from the JWK's coordinates, each exactly `C` bytes (`P` = 1 + 2·C).
fn uncompressed_point<const C: usize, const P: usize>(jwk: &Map<String, Value>) -> Result<[u8; P], JoseError> {
    let x = key_member(jwk, "x")?;
    let y = key_member(jwk, "y")?;
    if x.len() != C {
        return Err(JoseError::InvalidKey("x"));
    }
    if y.len() != C {
        return Err(JoseError::InvalidKey("y"));
    }
    let mut point = [0; P];
    point[0] = 0x04;
    point[1..=C].copy_from_slice(&x);
    point[1 + C..].copy_from_slice(&y);
    Ok(point)
}

fn okp_key(jwk: &Map<String, Value>) -> Result<PublicKey, JoseError> {
    if jwk.get("crv").and_then(Value::as_str) != Some("Ed25519") {
        return Err(JoseError::InvalidKey("crv"));
    }
    let x: [u8; 32] = key_member(jwk, "x")?.try_into().map_err(|_| JoseError::InvalidKey("x"))?;
    Ok(PublicKey::Ed25519(UnparsedPublicKey::new(&ring_sig::ED25519, x)))
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|byte| *byte != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

fn json_string(value: &str) -> String {
    Value::from(value).to_string()
}

/// Why a part was not a strict JSON object.
enum JsonFault {
    Invalid,
    Duplicate,
    NotObject,
}

/// Parses a JSON object, refusing duplicate member names at any depth (serde_json's own
/// `Value` would silently keep the last one).
fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, JsonFault> {
    match serde_json::from_slice::<StrictValue>(bytes) {
        Ok(StrictValue(Value::Object(members))) => Ok(members),
        Ok(_) => Err(JsonFault::NotObject),
        // Our visitor's only own error is a duplicate; everything else is syntax.
        Err(error) if error.classify() == serde_json::error::Category::Data => Err(JsonFault::Duplicate),
        Err(_) => Err(JsonFault::Invalid),
    }
}

/// A JSON value deserialised without tolerating duplicate object members.
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(value).map(Value::Number).ok_or_else(|| E::custom("non-finite number"))
    }

    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictValue(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut members = Map::new();
        while let Some(name) = map.next_key::<String>()? {
            if members.contains_key(&name) {
                return Err(de::Error::custom("duplicate member name"));
            }
            let StrictValue(value) = map.next_value()?;
            members.insert(name, value);
        }
        Ok(Value::Object(members))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// RFC 7515 A.1–A.3 payload, exactly as printed (CRLFs and all).
    const RFC7515_PAYLOAD: &str =
        "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ";
    const RFC7515_A1_HS256: &str = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    const RFC7515_A2_N: &str = "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ";
    const RFC7515_A2_SIGNATURE: &str = "cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw";
    const RFC7515_A3_SIGNATURE: &str =
        "DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q";
    const RFC8037_A1_D: &str = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A";
    const RFC8037_A1_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
    const RFC8037_A4: &str = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc.hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg";
    const RFC7517_A1_RSA_N: &str = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
    /// The order of the P-256 group.
    const P256_N_HEX: &str = "ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551";

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn unb64(text: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(text).unwrap()
    }

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect()
    }

    /// A compact token from a header and payload given as JSON text and raw signature bytes.
    fn compact(header: &str, payload: &str, signature: &[u8]) -> String {
        format!("{}.{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()), b64(signature))
    }

    fn rfc7515_a2_key() -> VerifyingKey {
        VerifyingKey::from_jwk(&json!({"kty": "RSA", "n": RFC7515_A2_N, "e": "AQAB"})).unwrap()
    }

    fn rfc7515_a3_jwk() -> Value {
        json!({
            "kty": "EC", "crv": "P-256", "kid": "p256",
            "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
        })
    }

    fn rfc7517_a1_rsa_jwk() -> Value {
        json!({"kty": "RSA", "n": RFC7517_A1_RSA_N, "e": "AQAB", "alg": "RS256", "kid": "2011-04-29"})
    }

    fn rfc8037_signer() -> Ed25519Signer {
        Ed25519Signer::from_seed(&unb64(RFC8037_A1_D).try_into().unwrap()).unwrap()
    }

    fn err(token: &str) -> JoseError {
        parse(token).unwrap_err()
    }

    // --- Published vectors -------------------------------------------------------------------

    #[test]
    fn rfc8037_a4_ed25519_signature_is_reproduced_and_verifies_with_the_a2_jwk() {
        let signer = rfc8037_signer();
        assert_eq!(b64(&signer.public_key()), RFC8037_A1_X);
        let token = signer.sign_compact(br#"{"alg":"EdDSA"}"#, b"Example of Ed25519 signing");
        assert_eq!(token, RFC8037_A4);

        let key = VerifyingKey::from_jwk(&json!({"kty": "OKP", "crv": "Ed25519", "x": RFC8037_A1_X})).unwrap();
        let parsed = parse(&token);
        // The payload is not a JSON object, so the token is not a JWT; verify the signature
        // over the exact signing input instead.
        assert_eq!(parsed.unwrap_err(), JoseError::Malformed("payload is not JSON"));
        let (signing_input, signature) = token.rsplit_once('.').unwrap();
        assert_eq!(key.verify_signature(Algorithm::EdDSA, signing_input.as_bytes(), &unb64(signature)), Ok(()));
        assert_eq!(
            key.verify_signature(Algorithm::EdDSA, b"Example of Ed25519 signinG", &unb64(signature)),
            Err(JoseError::BadSignature)
        );
    }

    #[test]
    fn rfc8037_a3_thumbprint_is_reproduced_and_is_the_signer_kid() {
        let public = json!({"kty": "OKP", "crv": "Ed25519", "x": RFC8037_A1_X});
        assert_eq!(thumbprint(&public).unwrap(), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
        assert_eq!(rfc8037_signer().kid(), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    }

    #[test]
    fn rfc7638_rsa_thumbprint_is_reproduced() {
        assert_eq!(thumbprint(&rfc7517_a1_rsa_jwk()).unwrap(), "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
    }

    #[test]
    fn ec_thumbprint_of_the_rfc7517_a1_key_is_reproduced() {
        let ec = json!({
            "kty": "EC", "crv": "P-256", "use": "enc", "kid": "1",
            "x": "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4",
            "y": "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM",
        });
        assert_eq!(thumbprint(&ec).unwrap(), "cn-I_WNMClehiVp51i_0VpOENW1upEerA8sEam5hn-s");
    }

    #[test]
    fn thumbprint_refuses_symmetric_and_incomplete_keys() {
        assert_eq!(thumbprint(&json!({"kty": "oct", "k": "AAAA"})), Err(JoseError::InvalidKey("kty")));
        assert_eq!(thumbprint(&json!({"kty": "RSA", "n": "AQAB"})), Err(JoseError::InvalidKey("e")));
        assert_eq!(thumbprint(&json!({"kty": "OKP", "crv": "Ed25519", "x": "a+b"})), Err(JoseError::InvalidKey("x")));
    }

    #[test]
    fn rfc7515_a2_rs256_token_verifies_with_its_public_jwk() {
        let token = format!("eyJhbGciOiJSUzI1NiJ9.{RFC7515_PAYLOAD}.{RFC7515_A2_SIGNATURE}");
        let parsed = parse(&token).unwrap();
        assert_eq!(parsed.header, Header { alg: Algorithm::RS256, kid: None, typ: None });
        assert_eq!(parsed.claims.iss.as_deref(), Some("joe"));
        assert_eq!(parsed.claims.exp, Some(1_300_819_380));
        assert_eq!(parsed.claims.extra["http://example.com/is_root"], json!(true));
        assert_eq!(parsed.verify(&rfc7515_a2_key()), Ok(()));

        // Same key under PS256 (a header edit) breaks the signature, not the key check.
        let tampered = format!("{}.{RFC7515_PAYLOAD}.{RFC7515_A2_SIGNATURE}", b64(br#"{"alg":"PS256"}"#));
        assert_eq!(parse(&tampered).unwrap().verify(&rfc7515_a2_key()), Err(JoseError::BadSignature));
    }

    #[test]
    fn rfc7515_a3_es256_token_verifies_with_its_public_jwk() {
        let token = format!("eyJhbGciOiJFUzI1NiJ9.{RFC7515_PAYLOAD}.{RFC7515_A3_SIGNATURE}");
        let key = VerifyingKey::from_jwk(&rfc7515_a3_jwk()).unwrap();
        assert_eq!(parse(&token).unwrap().verify(&key), Ok(()));
    }

    #[test]
    fn rfc7515_a1_hs256_token_is_an_unsupported_algorithm() {
        assert_eq!(err(RFC7515_A1_HS256), JoseError::UnsupportedAlgorithm);
    }

    #[test]
    fn alg_none_is_rejected_with_or_without_a_signature_in_every_spelling() {
        let a5 = format!("eyJhbGciOiJub25lIn0.{RFC7515_PAYLOAD}.");
        assert_eq!(err(&a5), JoseError::Malformed("empty token segment"));
        assert!(parse(&format!("eyJhbGciOiJub25lIn0.{RFC7515_PAYLOAD}")).is_err());
        for alg in ["none", "None", "NONE", "nOnE"] {
            let header = format!(r#"{{"alg":"{alg}"}}"#);
            let token = format!("{}.{RFC7515_PAYLOAD}.{}", b64(header.as_bytes()), b64(&[0; 64]));
            assert_eq!(err(&token), JoseError::UnsupportedAlgorithm, "{alg}");
            let unsigned = format!("{}.{RFC7515_PAYLOAD}.", b64(header.as_bytes()));
            assert!(parse(&unsigned).is_err(), "{alg}");
        }
    }

    #[test]
    fn algorithm_names_are_a_closed_case_sensitive_list() {
        for alg in Algorithm::ALL {
            assert_eq!(Algorithm::parse(alg.as_str()), Ok(alg));
        }
        for name in ["HS256", "HS384", "HS512", "ES512", "es256", "eddsa", "Ed25519", "RSA-OAEP", "", " RS256"] {
            assert_eq!(Algorithm::parse(name), Err(JoseError::UnsupportedAlgorithm), "{name}");
        }
    }

    #[test]
    fn rfc7517_a1_jwk_set_keeps_the_rsa_key_and_skips_the_encryption_key() {
        let body = json!({"keys": [
            {
                "kty": "EC", "crv": "P-256", "use": "enc", "kid": "1",
                "x": "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4",
                "y": "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM",
            },
            rfc7517_a1_rsa_jwk(),
        ]});
        let set = JwkSet::parse(body.to_string().as_bytes()).unwrap();
        assert_eq!(set.len(), 1);
        assert_eq!(set.kids().collect::<Vec<_>>(), ["2011-04-29"]);
        assert!(set.get("1").is_none());
        let rsa = set.get("2011-04-29").unwrap();
        assert!(rsa.accepts(Algorithm::RS256));
        assert!(!rsa.accepts(Algorithm::PS256));
        assert!(set.find("2011-04-29", Algorithm::RS256).is_some());
        assert!(set.find("2011-04-29", Algorithm::RS512).is_none());
    }

    #[test]
    fn jwk_set_body_must_be_an_object_with_a_keys_array() {
        for body in [&b"[]"[..], b"{}", br#"{"keys":{}}"#, b"not json", br#"{"keys":[],"keys":[]}"#] {
            assert!(matches!(JwkSet::parse(body), Err(JoseError::Malformed(_))));
        }
        let set = JwkSet::parse(br#"{"keys":[{"kty":"oct","k":"AAAA"},42]}"#).unwrap();
        assert!(set.is_empty());
    }

    // --- Negative vectors (section 2.8) ------------------------------------------------------

    #[test]
    fn psychic_and_malformed_ecdsa_signatures_are_bad_signatures() {
        let key = VerifyingKey::from_jwk(&rfc7515_a3_jwk()).unwrap();
        let header = r#"{"alg":"ES256","kid":"p256"}"#;
        let payload = r#"{"iss":"joe","exp":9999999999}"#;
        let mut r0_s1 = vec![0; 64];
        r0_s1[63] = 1;
        let mut rn_s1 = hex(P256_N_HEX);
        rn_s1.extend_from_slice(&r0_s1[32..]);
        for signature in [vec![0; 64], r0_s1, rn_s1] {
            assert_eq!(
                parse(&compact(header, payload, &signature)).unwrap().verify(&key),
                Err(JoseError::BadSignature)
            );
        }

        // The genuine RFC 7515 A.3 signature, DER-encoded instead of raw r||s.
        let raw = unb64(RFC7515_A3_SIGNATURE);
        let der_integer = |half: &[u8]| {
            let mut int = strip_leading_zeros(half).to_vec();
            if int[0] & 0x80 != 0 {
                int.insert(0, 0);
            }
            let mut out = vec![0x02, int.len() as u8];
            out.extend(int);
            out
        };
        let body = [der_integer(&raw[..32]), der_integer(&raw[32..])].concat();
        let der = [vec![0x30, body.len() as u8], body].concat();
        let token = format!("eyJhbGciOiJFUzI1NiJ9.{RFC7515_PAYLOAD}.{}", b64(&der));
        assert_eq!(parse(&token).unwrap().verify(&key), Err(JoseError::BadSignature));
    }

    #[test]
    fn hs256_naming_an_rsa_kid_is_rejected_whatever_secret_was_used() {
        let rsa_jwk_text = rfc7517_a1_rsa_jwk().to_string();
        let header = r#"{"alg":"HS256","kid":"2011-04-29"}"#;
        let signing_input = format!("{}.{RFC7515_PAYLOAD}", b64(header.as_bytes()));
        let hmac_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, rsa_jwk_text.as_bytes());
        let tag = ring::hmac::sign(&hmac_key, signing_input.as_bytes());
        let token = format!("{signing_input}.{}", b64(tag.as_ref()));
        assert_eq!(err(&token), JoseError::UnsupportedAlgorithm);
    }

    #[test]
    fn headers_that_bring_or_point_at_a_key_are_forbidden_even_with_a_valid_signature() {
        let attacker = Ed25519Signer::from_seed(&[7; 32]).unwrap();
        let payload = br#"{"iss":"joe","exp":9999999999}"#;
        let cases = [
            (json!({"alg": "EdDSA", "jwk": attacker.public_jwk()}), "jwk"),
            (json!({"alg": "EdDSA", "jku": "https://attacker.example/jwks"}), "jku"),
            (json!({"alg": "EdDSA", "x5u": "https://attacker.example/cert"}), "x5u"),
            (json!({"alg": "EdDSA", "x5c": ["MIIB"]}), "x5c"),
            (json!({"alg": "EdDSA", "x5t": "AAAA"}), "x5t"),
            (json!({"alg": "EdDSA", "x5t#S256": "AAAA"}), "x5t#S256"),
            (json!({"alg": "ES256", "kid": "p256", "crit": ["exp-ext"], "exp-ext": 1}), "crit"),
            (json!({"alg": "EdDSA", "b64": false, "crit": ["b64"]}), "b64"),
        ];
        for (header, member) in cases {
            let token = attacker.sign_compact(header.to_string().as_bytes(), payload);
            match err(&token) {
                // A header may carry more than one forbidden member; any of them is reason enough.
                JoseError::ForbiddenHeader(found) => assert!(header.get(found).is_some(), "{member}: {found}"),
                other => panic!("{member}: {other:?}"),
            }
        }
    }

    #[test]
    fn registered_claims_with_the_wrong_json_type_are_invalid_not_absent() {
        let cases = [
            (r#"{"exp":"9999999999"}"#, "exp"),
            (r#"{"exp":9999999999,"nbf":"99999999999"}"#, "nbf"),
            (r#"{"exp":9999999999,"iat":true}"#, "iat"),
            (r#"{"exp":9999999999,"aud":{"x":1}}"#, "aud"),
            (r#"{"exp":9999999999,"aud":[]}"#, "aud"),
            (r#"{"exp":9999999999,"aud":["a",1]}"#, "aud"),
            (r#"{"exp":9999999999,"iss":123}"#, "iss"),
            (r#"{"exp":9999999999,"sub":null}"#, "sub"),
            (r#"{"exp":9999999999,"jti":["x"]}"#, "jti"),
        ];
        for (payload, claim) in cases {
            assert_eq!(
                err(&compact(r#"{"alg":"EdDSA"}"#, payload, &[1; 64])),
                JoseError::InvalidClaim(claim),
                "{payload}"
            );
        }
    }

    #[test]
    fn numeric_dates_floor_fractions_and_refuse_negative_or_huge_values() {
        let exp = |text: &str| parse_claims(format!(r#"{{"exp":{text}}}"#).as_bytes()).map(|claims| claims.exp);
        assert_eq!(exp("1300819380"), Ok(Some(1_300_819_380)));
        assert_eq!(exp("1300819380.999"), Ok(Some(1_300_819_380)));
        assert_eq!(exp("1.3e9"), Ok(Some(1_300_000_000)));
        assert_eq!(exp("0"), Ok(Some(0)));
        assert_eq!(exp("9007199254740992"), Ok(Some(9_007_199_254_740_992)));
        for bad in ["-1", "-0.5", "9007199254740993", "18446744073709551616", "1e300"] {
            assert_eq!(exp(bad), Err(JoseError::InvalidClaim("exp")), "{bad}");
        }
    }

    #[test]
    fn duplicate_members_are_malformed_at_any_depth() {
        let sig = [1; 64];
        assert_eq!(
            err(&compact(r#"{"alg":"EdDSA","alg":"EdDSA"}"#, r#"{"exp":1}"#, &sig)),
            JoseError::Malformed("duplicate header member")
        );
        assert_eq!(
            err(&compact(r#"{"alg":"none","alg":"EdDSA"}"#, r#"{"exp":1}"#, &sig)),
            JoseError::Malformed("duplicate header member")
        );
        assert_eq!(
            err(&compact(r#"{"alg":"EdDSA"}"#, r#"{"exp":1,"exp":9999999999}"#, &sig)),
            JoseError::Malformed("duplicate claim")
        );
        assert_eq!(
            err(&compact(r#"{"alg":"EdDSA"}"#, r#"{"exp":1,"ctx":{"a":1,"a":2}}"#, &sig)),
            JoseError::Malformed("duplicate claim")
        );
    }

    #[test]
    fn padding_and_the_standard_base64_alphabet_are_malformed() {
        let (header, rest) = RFC8037_A4.split_once('.').unwrap();
        let (payload, signature) = rest.split_once('.').unwrap();
        assert_eq!(payload.len() % 4, 3, "the payload segment can take one padding character");
        let malformed = JoseError::Malformed("segment is not unpadded base64url");
        assert_eq!(err(&format!("{header}.{payload}=.{signature}")), malformed);
        assert_eq!(err(&format!("{header}.{payload}.{signature}==")), malformed);
        assert_eq!(err(&format!("{header}.{payload}.{}", signature.replace('-', "+"))), malformed);
        assert_eq!(err(&format!("{header}.{payload}.{}", signature.replace('_', "/"))), malformed);
        assert_eq!(err(&format!("{header}.{payload}.{signature} ")), malformed);
        // Non-canonical trailing bits: the last character of a 3-mod-4 segment carries 2 spare bits.
        let last = payload.chars().last().unwrap();
        assert_eq!(last, 'c');
        assert_eq!(err(&format!("{header}.{}d.{signature}", &payload[..payload.len() - 1])), malformed);
    }

    #[test]
    fn token_shape_and_size_are_enforced() {
        let good = compact(r#"{"alg":"EdDSA"}"#, r#"{"exp":1}"#, &[1; 64]);
        assert!(parse(&good).is_ok());
        let (header, rest) = good.split_once('.').unwrap();
        let (payload, signature) = rest.split_once('.').unwrap();
        let three = JoseError::Malformed("token does not have three segments");
        assert_eq!(err(&format!("{header}.{payload}")), three);
        assert_eq!(err(&format!("{good}.{signature}")), three);
        assert_eq!(err(""), three);
        assert_eq!(err(&format!(".{payload}.{signature}")), JoseError::Malformed("empty token segment"));
        assert_eq!(err(&format!("{header}..{signature}")), JoseError::Malformed("empty token segment"));

        let long_claim = "x".repeat(TOKEN_MAX_BYTES);
        let long = compact(r#"{"alg":"EdDSA"}"#, &format!(r#"{{"exp":1,"pad":"{long_claim}"}}"#), &[1; 64]);
        assert_eq!(err(&long), JoseError::Malformed("token too long"));

        let sig = [1; 64];
        let cases = [
            (r#"["alg","EdDSA"]"#, "header is not a JSON object"),
            (r#"{"alg":"EdDSA""#, "header is not JSON"),
            (r#"{"typ":"JWT"}"#, "header has no alg"),
            (r#"{"alg":["EdDSA"]}"#, "alg is not a string"),
            (r#"{"alg":"EdDSA","kid":7}"#, "kid is not a string"),
            (r#"{"alg":"EdDSA","typ":null}"#, "typ is not a string"),
        ];
        for (header, reason) in cases {
            assert_eq!(err(&compact(header, r#"{"exp":1}"#, &sig)), JoseError::Malformed(reason), "{header}");
        }
        assert_eq!(
            err(&compact(r#"{"alg":"EdDSA"}"#, "[1]", &sig)),
            JoseError::Malformed("payload is not a JSON object")
        );
        assert_eq!(
            err(&compact(r#"{"alg":"EdDSA"}"#, r#"{"exp":1} x"#, &sig)),
            JoseError::Malformed("payload is not JSON")
        );

        let with_members = compact(r#"{"alg":"EdDSA","kid":"k1","typ":"JWT","cty":"x"}"#, r#"{"exp":1}"#, &sig);
        assert_eq!(
            parse(&with_members).unwrap().header,
            Header { alg: Algorithm::EdDSA, kid: Some("k1".into()), typ: Some("JWT".into()) }
        );
    }

    // --- Keys ----------------------------------------------------------------------------------

    #[test]
    fn keys_accept_only_their_own_algorithm_family() {
        let ed = rfc8037_signer().verifying_key();
        assert!(ed.accepts(Algorithm::EdDSA));
        assert!(!ed.accepts(Algorithm::RS256));
        assert!(!ed.accepts(Algorithm::ES256));

        let rsa = rfc7515_a2_key();
        for alg in [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512, Algorithm::PS256, Algorithm::PS512] {
            assert!(rsa.accepts(alg), "{alg}");
        }
        assert!(!rsa.accepts(Algorithm::ES256));
        assert!(!rsa.accepts(Algorithm::EdDSA));

        let p256 = VerifyingKey::from_jwk(&rfc7515_a3_jwk()).unwrap();
        assert!(p256.accepts(Algorithm::ES256));
        assert!(!p256.accepts(Algorithm::ES384));
        assert!(!p256.accepts(Algorithm::RS256));

        let pinned = VerifyingKey::from_jwk(&rfc7517_a1_rsa_jwk()).unwrap();
        assert!(pinned.accepts(Algorithm::RS256));
        assert!(!pinned.accepts(Algorithm::PS256));
        assert!(!pinned.accepts(Algorithm::RS512));
    }

    #[test]
    fn verify_refuses_an_algorithm_the_key_cannot_use_before_checking_the_signature() {
        let token = format!("eyJhbGciOiJSUzI1NiJ9.{RFC7515_PAYLOAD}.{RFC7515_A2_SIGNATURE}");
        let parsed = parse(&token).unwrap();
        assert_eq!(parsed.verify(&rfc8037_signer().verifying_key()), Err(JoseError::KeyMismatch));
        assert_eq!(parsed.verify(&VerifyingKey::from_jwk(&rfc7515_a3_jwk()).unwrap()), Err(JoseError::KeyMismatch));
        let pinned_ps256 =
            VerifyingKey::from_jwk(&json!({"kty": "RSA", "n": RFC7515_A2_N, "e": "AQAB", "alg": "PS256"}));
        assert_eq!(parsed.verify(&pinned_ps256.unwrap()), Err(JoseError::KeyMismatch));
    }

    #[test]
    fn jwks_that_cannot_verify_our_signatures_are_invalid_keys() {
        let ok_rsa = rfc7517_a1_rsa_jwk();
        let with = |member: &str, value: Value| {
            let mut jwk = ok_rsa.clone();
            jwk[member] = value;
            VerifyingKey::from_jwk(&jwk).map(|_| ())
        };
        assert_eq!(with("use", json!("sig")), Ok(()));
        assert_eq!(with("use", json!("enc")), Err(JoseError::InvalidKey("use")));
        assert_eq!(with("use", json!(1)), Err(JoseError::InvalidKey("use")));
        assert_eq!(with("key_ops", json!(["verify", "sign"])), Ok(()));
        assert_eq!(with("key_ops", json!(["encrypt"])), Err(JoseError::InvalidKey("key_ops")));
        assert_eq!(with("key_ops", json!("verify")), Err(JoseError::InvalidKey("key_ops")));
        assert_eq!(with("alg", json!("ES256")), Err(JoseError::InvalidKey("alg")));
        assert_eq!(with("alg", json!("HS256")), Err(JoseError::InvalidKey("alg")));
        assert_eq!(with("kid", json!(5)), Err(JoseError::InvalidKey("kid")));
        assert_eq!(with("kty", json!("oct")), Err(JoseError::InvalidKey("kty")));
        assert_eq!(with("n", json!(b64(&[0xff; 128]))), Err(JoseError::InvalidKey("n")), "1024-bit modulus");
        assert_eq!(with("n", json!(b64(&[0xff; 1025]))), Err(JoseError::InvalidKey("n")), "8200-bit modulus");
        // A leading zero octet is tolerated and does not count towards the size.
        assert_eq!(with("n", json!(b64(&[&[0][..], &unb64(RFC7517_A1_RSA_N)].concat()))), Ok(()));
        assert_eq!(with("e", json!("AQ")), Err(JoseError::InvalidKey("e")));
        assert_eq!(with("e", json!("AQA")), Err(JoseError::InvalidKey("e")));
        assert_eq!(with("e", json!("AQAB=")), Err(JoseError::InvalidKey("e")));

        assert_eq!(
            VerifyingKey::from_jwk(&json!({"kty": "oct", "k": "GawgguFyGrWKav7AX4VKUg", "alg": "A128KW"})).map(|_| ()),
            Err(JoseError::InvalidKey("alg"))
        );
        assert_eq!(
            VerifyingKey::from_jwk(&json!({"kty": "oct", "k": "GawgguFyGrWKav7AX4VKUg"})).map(|_| ()),
            Err(JoseError::InvalidKey("kty"))
        );
        let mut p256 = rfc7515_a3_jwk();
        p256["crv"] = json!("P-384");
        assert_eq!(VerifyingKey::from_jwk(&p256).map(|_| ()), Err(JoseError::InvalidKey("x")));
        p256["crv"] = json!("P-521");
        assert_eq!(VerifyingKey::from_jwk(&p256).map(|_| ()), Err(JoseError::InvalidKey("crv")));
        let short_x = json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&[1; 31])});
        assert_eq!(VerifyingKey::from_jwk(&short_x).map(|_| ()), Err(JoseError::InvalidKey("x")));
        let x448 = json!({"kty": "OKP", "crv": "X25519", "x": RFC8037_A1_X});
        assert_eq!(VerifyingKey::from_jwk(&x448).map(|_| ()), Err(JoseError::InvalidKey("crv")));
        assert_eq!(
            VerifyingKey::from_jwk(&json!("RSA")).map(|_| ()),
            Err(JoseError::InvalidKey("jwk is not an object"))
        );
    }

    #[test]
    fn private_jwk_members_are_ignored_and_never_kept() {
        let private = json!({"kty": "OKP", "crv": "Ed25519", "d": RFC8037_A1_D, "x": RFC8037_A1_X, "kid": "a1"});
        let key = VerifyingKey::from_jwk(&private).unwrap();
        assert_eq!(key.kid(), Some("a1"));
        let shown = format!("{key:?}");
        assert!(!shown.contains(RFC8037_A1_D) && !shown.contains(RFC8037_A1_X), "{shown}");
        let token = rfc8037_signer().sign_jwt(br#"{"exp":1}"#);
        assert_eq!(parse(&token).unwrap().verify(&key), Ok(()));
    }

    // --- Claim validation --------------------------------------------------------------------

    fn claims(payload: Value) -> Claims {
        parse_claims(payload.to_string().as_bytes()).unwrap()
    }

    fn rules<'v>(now: i64, audiences: &'v [String], required: &'v [String]) -> Validation<'v> {
        Validation { now, leeway: 30, issuer: "https://issuer.example", audiences, required }
    }

    #[test]
    fn expiry_with_leeway_ends_exactly_at_exp_plus_leeway() {
        let token = claims(json!({"iss": "https://issuer.example", "exp": 1000}));
        assert_eq!(token.validate(&rules(1029, &[], &[])), Ok(()));
        assert_eq!(token.validate(&rules(1030, &[], &[])), Err(JoseError::Expired));
        let strict = Validation { leeway: 0, ..rules(999, &[], &[]) };
        assert_eq!(token.validate(&strict), Ok(()));
        assert_eq!(token.validate(&Validation { now: 1000, ..strict }), Err(JoseError::Expired));
        let negative = Validation { leeway: -500, ..strict };
        assert_eq!(token.validate(&negative), Ok(()), "a negative leeway counts as zero");
    }

    #[test]
    fn not_before_with_leeway_starts_exactly_at_nbf_minus_leeway() {
        let token = claims(json!({"iss": "https://issuer.example", "exp": 5000, "nbf": 1000}));
        assert_eq!(token.validate(&rules(970, &[], &[])), Ok(()));
        assert_eq!(token.validate(&rules(969, &[], &[])), Err(JoseError::NotYetValid));
    }

    #[test]
    fn issued_at_may_be_at_most_leeway_in_the_future() {
        let token = claims(json!({"iss": "https://issuer.example", "exp": 5000, "iat": 1000}));
        assert_eq!(token.validate(&rules(970, &[], &[])), Ok(()));
        assert_eq!(token.validate(&rules(969, &[], &[])), Err(JoseError::IssuedInFuture));
    }

    #[test]
    fn exp_is_always_required() {
        let token = claims(json!({"iss": "https://issuer.example", "iat": 1000}));
        assert_eq!(token.validate(&rules(1000, &[], &[])), Err(JoseError::MissingClaim("exp")));
    }

    #[test]
    fn issuer_must_match_exactly() {
        let rules = rules(1000, &[], &[]);
        assert_eq!(
            claims(json!({"iss": "https://issuer.example/", "exp": 5000})).validate(&rules),
            Err(JoseError::WrongIssuer)
        );
        assert_eq!(
            claims(json!({"iss": "https://ISSUER.example", "exp": 5000})).validate(&rules),
            Err(JoseError::WrongIssuer)
        );
        assert_eq!(claims(json!({"exp": 5000})).validate(&rules), Err(JoseError::MissingClaim("iss")));
    }

    #[test]
    fn audience_may_be_a_string_or_an_array_and_one_must_match() {
        let audiences = vec!["licenseseal".to_owned(), "billing".to_owned()];
        let rules = rules(1000, &audiences, &[]);
        let with_aud = |aud: Value| claims(json!({"iss": "https://issuer.example", "exp": 5000, "aud": aud}));
        assert_eq!(with_aud(json!("billing")).aud, ["billing"]);
        assert_eq!(with_aud(json!("billing")).validate(&rules), Ok(()));
        assert_eq!(with_aud(json!(["other", "licenseseal"])).validate(&rules), Ok(()));
        assert_eq!(with_aud(json!("other")).validate(&rules), Err(JoseError::WrongAudience));
        assert_eq!(with_aud(json!(["other", "Billing"])).validate(&rules), Err(JoseError::WrongAudience));
        let no_aud = claims(json!({"iss": "https://issuer.example", "exp": 5000}));
        assert_eq!(no_aud.validate(&rules), Err(JoseError::MissingClaim("aud")));
        assert_eq!(no_aud.validate(&self::rules(1000, &[], &[])), Ok(()), "no audiences configured");
    }

    #[test]
    fn required_claims_must_be_present() {
        let required = vec!["tenant".to_owned(), "sub".to_owned()];
        let rules = rules(1000, &[], &required);
        let full = claims(json!({"iss": "https://issuer.example", "exp": 5000, "sub": "u1", "tenant": "t"}));
        assert_eq!(full.validate(&rules), Ok(()));
        let no_sub = claims(json!({"iss": "https://issuer.example", "exp": 5000, "tenant": "t"}));
        assert_eq!(no_sub.validate(&rules), Err(JoseError::MissingClaim("sub")));
        let no_tenant = claims(json!({"iss": "https://issuer.example", "exp": 5000, "sub": "u1"}));
        assert_eq!(no_tenant.validate(&rules), Err(JoseError::MissingClaim("required claim")));
    }

    // --- Our signer ----------------------------------------------------------------------------

    #[test]
    fn signer_round_trip_verifies_and_any_change_fails() {
        let (signer, _pkcs8) = Ed25519Signer::generate();
        let claims_json = br#"{"iss":"licenseseal","sub":"ten_a","exp":2000000000,"scope":"debit"}"#;
        let token = signer.sign_jwt(claims_json);
        let key = VerifyingKey::ed25519(None, signer.public_key());
        let parsed = parse(&token).unwrap();
        assert_eq!(parsed.header.kid.as_deref(), Some(signer.kid()));
        assert_eq!(parsed.header.typ.as_deref(), Some("JWT"));
        assert_eq!(parsed.claims.sub.as_deref(), Some("ten_a"));
        assert_eq!(parsed.verify(&key), Ok(()));

        let (header, rest) = token.split_once('.').unwrap();
        let (payload, signature) = rest.split_once('.').unwrap();
        let mut payload_bytes = unb64(payload);
        let at = payload_bytes.iter().position(|byte| *byte == b'a').unwrap();
        payload_bytes[at] = b'b';
        let tampered = format!("{header}.{}.{signature}", b64(&payload_bytes));
        assert_eq!(parse(&tampered).unwrap().verify(&key), Err(JoseError::BadSignature));

        let (other, _) = Ed25519Signer::generate();
        assert_eq!(parsed.verify(&other.verifying_key()), Err(JoseError::BadSignature));
    }

    #[test]
    fn sign_jwt_writes_the_exact_protected_header() {
        let signer = rfc8037_signer();
        let token = signer.sign_jwt(b"{}");
        let header = unb64(token.split('.').next().unwrap());
        assert_eq!(
            String::from_utf8(header).unwrap(),
            r#"{"alg":"EdDSA","typ":"JWT","kid":"kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"}"#
        );
        assert_eq!(signer.sign_jwt(b"{}"), token, "Ed25519 is deterministic");
    }

    #[test]
    fn signer_reloads_from_its_pkcs8_document_with_the_same_kid() {
        let (signer, pkcs8) = Ed25519Signer::generate();
        let reloaded = Ed25519Signer::from_pkcs8(&pkcs8).unwrap();
        assert_eq!(reloaded.kid(), signer.kid());
        assert_eq!(reloaded.public_key(), signer.public_key());
        assert_eq!(thumbprint(&signer.public_jwk()).unwrap(), signer.kid());
        assert_eq!(Ed25519Signer::from_pkcs8(b"not a key").unwrap_err(), JoseError::InvalidKey("pkcs8"));

        let jwk = signer.public_jwk();
        assert_eq!(jwk["alg"], "EdDSA");
        assert_eq!(jwk["use"], "sig");
        let from_jwk = VerifyingKey::from_jwk(&jwk).unwrap();
        assert_eq!(from_jwk.kid(), Some(signer.kid()));
        assert_eq!(parse(&signer.sign_jwt(br#"{"exp":1}"#)).unwrap().verify(&from_jwk), Ok(()));
    }

    #[test]
    fn debug_output_of_a_signer_shows_only_its_kid() {
        let signer = rfc8037_signer();
        let shown = format!("{signer:?}");
        assert!(shown.contains(signer.kid()));
        assert!(!shown.contains(RFC8037_A1_D) && !shown.contains(RFC8037_A1_X), "{shown}");
    }

    #[test]
    fn verify_in_picks_the_key_by_kid_or_the_only_candidate() {
        let signer = rfc8037_signer();
        let body = json!({"keys": [signer.public_jwk(), rfc7517_a1_rsa_jwk()]});
        let set = JwkSet::parse(body.to_string().as_bytes()).unwrap();
        let token = signer.sign_jwt(br#"{"exp":1}"#);
        assert_eq!(parse(&token).unwrap().verify_in(&set).unwrap().kid(), Some(signer.kid()));

        let no_kid = signer.sign_compact(br#"{"alg":"EdDSA"}"#, br#"{"exp":1}"#);
        assert_eq!(parse(&no_kid).unwrap().verify_in(&set).unwrap().kid(), Some(signer.kid()));

        let unknown = signer.sign_compact(br#"{"alg":"EdDSA","kid":"nope"}"#, br#"{"exp":1}"#);
        assert_eq!(parse(&unknown).unwrap().verify_in(&set).unwrap_err(), JoseError::UnknownKid);
        let wrong_family = signer.sign_compact(br#"{"alg":"EdDSA","kid":"2011-04-29"}"#, br#"{"exp":1}"#);
        assert_eq!(parse(&wrong_family).unwrap().verify_in(&set).unwrap_err(), JoseError::KeyMismatch);
    }

    #[test]
    fn error_messages_carry_no_token_text() {
        let secretish = "eyJzZWNyZXQiOiJ2YWx1ZSJ9";
        for token in [format!("{secretish}.{secretish}.{secretish}"), format!("{secretish}.x"), secretish.to_owned()] {
            let message = err(&token).to_string();
            assert!(!message.contains(secretish) && !message.contains("secret"), "{message}");
        }
    }
}
