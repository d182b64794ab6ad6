//! HTTP Message Signatures (RFC 9421) and Content-Digest (RFC 9530) for signed API calls: the
//! signature base, strict parsing of `Signature-Input`/`Signature`, the gateway's verification
//! policy, and the client-side signer. Everything here is pure: no I/O and no clock (`now` is
//! passed in), so the server fills [`RequestParts`] from its HTTP types and a client from
//! anything.
//!
//! Verification is two steps, because the key depends on the request: [`inspect`] parses the
//! headers and checks their shape (one signature, the components the gateway requires, a
//! `keyid` and a `created`), the caller looks the credential up by `keyid`, and
//! [`Inspected::verify`] checks time, algorithm, signature and body digest with that key. The
//! algorithm always comes from the credential; a signature's `alg` parameter can only agree
//! with it.
//!
//! The parser is narrower than the RFC allows: component parameters other than `name` on
//! `@query-param` (`sf`, `key`, `bs`, `req`, `tr`), `@status`, unknown derived components and
//! unknown signature parameters are refused rather than skipped, and a query parameter named by
//! a signature must occur exactly once with a UTF-8 value. Errors carry only static reasons,
//! never header text, key ids or library messages, because they end up in the audit log.

use std::fmt;

use hmac::{Hmac, Mac};
use ring::signature::{self as ring_sig, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use sfv::{BareItem, Dictionary, InnerList, Item, List, ListEntry, Parameters, Parser, SerializeValue};
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

/// Longest `Signature-Input`, `Signature` or `Content-Digest` value we parse, in bytes.
pub const HEADER_MAX_BYTES: usize = 8192;
/// Most components one signature may cover.
pub const COMPONENTS_MAX: usize = 32;
/// Longest `keyid` we accept, in bytes.
pub const KEYID_MAX_BYTES: usize = 256;
/// Longest `nonce` we accept, in bytes: it goes into the replay cache.
pub const NONCE_MAX_BYTES: usize = 128;
/// Shortest HMAC secret we sign or verify with.
pub const HMAC_KEY_MIN_BYTES: usize = 16;
/// Default age a signature may have, in seconds ([`Policy::window_secs`]).
pub const WINDOW_SECS_DEFAULT: i64 = 300;
/// Default clock skew tolerated, in seconds ([`Policy::leeway_secs`]).
pub const LEEWAY_SECS_DEFAULT: i64 = 60;
/// The label [`sign_request`] uses.
pub const SIGN_LABEL: &str = "sig1";

/// What the signer or verifier needs from a request. Values are as received: the path and
/// query are never decoded, so `+` and `%20` stay distinct.
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    /// The method, case-sensitive (`"POST"`).
    pub method: &'a str,
    /// `"https"` or `"http"`, any case.
    pub scheme: &'a str,
    /// `host[:port]`, any case; lowercased and stripped of the scheme's default port when used.
    pub authority: &'a str,
    /// The absolute path as received (`"/foo"`); empty means `/`.
    pub path: &'a str,
    /// The query without its `?`, as received; `None` when the target has no `?`.
    pub query: Option<&'a str>,
    /// Header fields, names in any case; a repeated name is combined per RFC 9421 §2.1.
    pub headers: &'a [(&'a str, &'a str)],
}

/// The signature algorithms we accept from clients. A credential fixes one; the request never
/// chooses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SigAlg {
    HmacSha256,
    Ed25519,
}

impl SigAlg {
    /// The algorithm's name in the HTTP Signature Algorithms registry.
    pub fn as_str(self) -> &'static str {
        match self {
            SigAlg::HmacSha256 => "hmac-sha256",
            SigAlg::Ed25519 => "ed25519",
        }
    }

    /// Parses the exact registry name; every other algorithm is unsupported.
    pub fn parse(name: &str) -> Result<Self, SigError> {
        [SigAlg::HmacSha256, SigAlg::Ed25519]
            .into_iter()
            .find(|alg| alg.as_str() == name)
            .ok_or(SigError::Unsupported("algorithm"))
    }
}

impl fmt::Display for SigAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a signature was refused. The reasons are static strings chosen here, so a message never
/// carries header text, a key id or a library's error text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SigError {
    #[error("malformed: {0}")]
    Malformed(&'static str),
    #[error("required component not covered: {0}")]
    MissingComponent(&'static str),
    #[error("a covered component is absent from the request")]
    AbsentComponent,
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
    /// More than one signature, or a query parameter named by the signature occurs twice.
    #[error("ambiguous signature or component")]
    Ambiguous,
    #[error("signature expired")]
    Expired,
    #[error("signature created in the future")]
    CreatedInFuture,
    #[error("signature has no created parameter")]
    MissingCreated,
    #[error("signature has no nonce")]
    MissingNonce,
    #[error("signature has no keyid")]
    MissingKeyId,
    #[error("algorithm does not match the credential")]
    AlgMismatch,
    #[error("key cannot be used")]
    InvalidKey,
    #[error("content digest does not match the body")]
    DigestMismatch,
    #[error("body is not bound by a supported content digest")]
    DigestMissing,
    #[error("bad signature")]
    BadSignature,
}

/// A covered component identifier (RFC 9421 §2).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Component {
    Method,
    TargetUri,
    Authority,
    Scheme,
    RequestTarget,
    Path,
    Query,
    /// `"@query-param";name="…"`, the name in its re-encoded form (§2.2.8).
    QueryParam(String),
    /// A header field by its lowercased name.
    Field(String),
}

impl Component {
    /// A header field component; the name is lowercased and must be an HTTP token.
    pub fn field(name: &str) -> Result<Self, SigError> {
        let name = name.to_ascii_lowercase();
        if !is_field_name(&name) {
            return Err(SigError::Malformed("field name"));
        }
        Ok(Component::Field(name))
    }

    /// The component name as it appears in the identifier (`@method`, `content-type`, …).
    pub fn name(&self) -> &str {
        match self {
            Component::Method => "@method",
            Component::TargetUri => "@target-uri",
            Component::Authority => "@authority",
            Component::Scheme => "@scheme",
            Component::RequestTarget => "@request-target",
            Component::Path => "@path",
            Component::Query => "@query",
            Component::QueryParam(_) => "@query-param",
            Component::Field(name) => name,
        }
    }

    /// The identifier as a structured-field item: the name as a String, plus `name` for
    /// `@query-param`.
    fn to_item(&self) -> Item {
        let mut params = Parameters::new();
        if let Component::QueryParam(name) = self {
            params.insert("name".to_owned(), BareItem::String(name.clone()));
        }
        Item::with_params(BareItem::String(self.name().to_owned()), params)
    }

    fn from_item(item: &Item) -> Result<Self, SigError> {
        let BareItem::String(name) = &item.bare_item else {
            return Err(SigError::Malformed("component identifier is not a string"));
        };
        let component = match name.as_str() {
            "@method" => Component::Method,
            "@target-uri" => Component::TargetUri,
            "@authority" => Component::Authority,
            "@scheme" => Component::Scheme,
            "@request-target" => Component::RequestTarget,
            "@path" => Component::Path,
            "@query" => Component::Query,
            "@query-param" => {
                let mut params = item.params.iter();
                return match (params.next(), params.next()) {
                    (Some((key, BareItem::String(value))), None) if key == "name" => {
                        Ok(Component::QueryParam(value.clone()))
                    }
                    (Some((key, _)), None) if key == "name" => Err(SigError::Malformed("query parameter name")),
                    (None, _) => Err(SigError::Malformed("query parameter without a name")),
                    _ => Err(SigError::Unsupported("component parameter")),
                };
            }
            "@signature-params" => return Err(SigError::Malformed("@signature-params is covered")),
            "@status" => return Err(SigError::Unsupported("@status in a request")),
            derived if derived.starts_with('@') => return Err(SigError::Unsupported("derived component")),
            field if is_field_name(field) => Component::Field(field.to_owned()),
            _ => return Err(SigError::Malformed("field name")),
        };
        if !item.params.is_empty() {
            return Err(SigError::Unsupported("component parameter"));
        }
        Ok(component)
    }
}

/// A signature parameter, for choosing the order in which they are serialized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParamName {
    Created,
    Expires,
    Nonce,
    Alg,
    KeyId,
    Tag,
}

impl ParamName {
    /// The default serialization order.
    pub const ALL: [ParamName; 6] =
        [ParamName::Created, ParamName::Expires, ParamName::Nonce, ParamName::Alg, ParamName::KeyId, ParamName::Tag];

    pub fn as_str(self) -> &'static str {
        match self {
            ParamName::Created => "created",
            ParamName::Expires => "expires",
            ParamName::Nonce => "nonce",
            ParamName::Alg => "alg",
            ParamName::KeyId => "keyid",
            ParamName::Tag => "tag",
        }
    }
}

/// The signature parameters (RFC 9421 §2.3). Times are Unix seconds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SigParams {
    pub created: Option<i64>,
    pub expires: Option<i64>,
    pub nonce: Option<String>,
    pub alg: Option<String>,
    pub keyid: Option<String>,
    pub tag: Option<String>,
    /// Serialization order: present parameters named here come first, in this order, then the
    /// remaining present ones in [`ParamName::ALL`] order. Parsing records the received order,
    /// which a signature base must reproduce.
    pub order: Vec<ParamName>,
}

impl SigParams {
    fn is_present(&self, name: ParamName) -> bool {
        match name {
            ParamName::Created => self.created.is_some(),
            ParamName::Expires => self.expires.is_some(),
            ParamName::Nonce => self.nonce.is_some(),
            ParamName::Alg => self.alg.is_some(),
            ParamName::KeyId => self.keyid.is_some(),
            ParamName::Tag => self.tag.is_some(),
        }
    }

    /// The present parameters in serialization order.
    fn serialization_order(&self) -> Vec<ParamName> {
        let mut names = Vec::with_capacity(ParamName::ALL.len());
        for &name in self.order.iter().chain(ParamName::ALL.iter()) {
            if self.is_present(name) && !names.contains(&name) {
                names.push(name);
            }
        }
        names
    }

    fn to_parameters(&self) -> Parameters {
        let mut params = Parameters::new();
        for name in self.serialization_order() {
            let value = match name {
                ParamName::Created => self.created.map(BareItem::Integer),
                ParamName::Expires => self.expires.map(BareItem::Integer),
                ParamName::Nonce => self.nonce.clone().map(BareItem::String),
                ParamName::Alg => self.alg.clone().map(BareItem::String),
                ParamName::KeyId => self.keyid.clone().map(BareItem::String),
                ParamName::Tag => self.tag.clone().map(BareItem::String),
            };
            if let Some(value) = value {
                params.insert(name.as_str().to_owned(), value);
            }
        }
        params
    }

    fn from_parameters(params: &Parameters) -> Result<Self, SigError> {
        let mut out = SigParams::default();
        for (key, value) in params {
            let name = match key.as_str() {
                "created" => ParamName::Created,
                "expires" => ParamName::Expires,
                "nonce" => ParamName::Nonce,
                "alg" => ParamName::Alg,
                "keyid" => ParamName::KeyId,
                "tag" => ParamName::Tag,
                _ => return Err(SigError::Unsupported("signature parameter")),
            };
            let integer = || value.as_int().ok_or(SigError::Malformed(name.as_str()));
            let string = || value.as_str().map(str::to_owned).ok_or(SigError::Malformed(name.as_str()));
            match name {
                ParamName::Created => out.created = Some(integer()?),
                ParamName::Expires => out.expires = Some(integer()?),
                ParamName::Nonce => out.nonce = Some(string()?),
                ParamName::Alg => out.alg = Some(string()?),
                ParamName::KeyId => out.keyid = Some(string()?),
                ParamName::Tag => out.tag = Some(string()?),
            }
            out.order.push(name);
        }
        if out.created.is_some_and(|created| created < 0) {
            return Err(SigError::Malformed("created"));
        }
        if let (Some(created), Some(expires)) = (out.created, out.expires) {
            if expires < created {
                return Err(SigError::Malformed("expires before created"));
            }
        }
        if out.keyid.as_ref().is_some_and(|keyid| keyid.is_empty() || keyid.len() > KEYID_MAX_BYTES) {
            return Err(SigError::Malformed("keyid"));
        }
        if out.nonce.as_ref().is_some_and(|nonce| nonce.is_empty() || nonce.len() > NONCE_MAX_BYTES) {
            return Err(SigError::Malformed("nonce"));
        }
        Ok(out)
    }
}

/// One labelled signature from a request's `Signature-Input` and `Signature` fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedSignature {
    pub label: String,
    pub components: Vec<Component>,
    pub params: SigParams,
    /// The `@signature-params` value: the received inner list re-serialized (RFC 9421 §3.2).
    pub serialized_params: String,
    pub signature: Vec<u8>,
}

/// Builds the RFC 9421 §2.5 signature base: one `"<identifier>": <value>` line per component,
/// then the `"@signature-params"` line, LF-separated, without a trailing newline.
pub fn signature_base(req: &RequestParts, components: &[Component], params: &SigParams) -> Result<String, SigError> {
    let params_line = serialize_inner_list(&InnerList::with_params(
        components.iter().map(Component::to_item).collect(),
        params.to_parameters(),
    ))?;
    base_with_params_line(req, components, &params_line)
}

/// Parses the `Signature-Input` and `Signature` field values (each repeated field joined with
/// `", "` by the caller) into their labelled signatures, in `Signature-Input` order. Both must
/// carry the same labels.
pub fn parse_signature_headers(signature_input: &str, signature: &str) -> Result<Vec<ParsedSignature>, SigError> {
    let inputs = parse_dictionary(signature_input, "signature-input")?;
    let signatures = parse_dictionary(signature, "signature")?;
    if inputs.is_empty() {
        return Err(SigError::Malformed("no signature"));
    }
    if inputs.len() != signatures.len() || inputs.keys().any(|label| !signatures.contains_key(label)) {
        return Err(SigError::Malformed("labels of signature-input and signature differ"));
    }
    inputs
        .iter()
        .map(|(label, input)| {
            let ListEntry::InnerList(list) = input else {
                return Err(SigError::Malformed("signature-input member is not an inner list"));
            };
            let signature = match &signatures[label] {
                ListEntry::Item(Item { bare_item: BareItem::ByteSeq(bytes), params }) if params.is_empty() => bytes,
                _ => return Err(SigError::Malformed("signature member is not a byte sequence")),
            };
            if signature.is_empty() {
                return Err(SigError::Malformed("empty signature"));
            }
            if list.items.len() > COMPONENTS_MAX {
                return Err(SigError::Malformed("too many components"));
            }
            let components = list.items.iter().map(Component::from_item).collect::<Result<Vec<_>, _>>()?;
            check_distinct(&components)?;
            Ok(ParsedSignature {
                label: label.clone(),
                components,
                params: SigParams::from_parameters(&list.params)?,
                serialized_params: serialize_inner_list(list)?,
                signature: signature.clone(),
            })
        })
        .collect()
}

/// The gateway's time and replay rules. Times are Unix seconds; negative spans count as zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub now: i64,
    /// How old `created` may be, before the leeway.
    pub window_secs: i64,
    /// Clock skew tolerated on `created` (both ways) and on `expires`.
    pub leeway_secs: i64,
    /// Whether a `nonce` is required; the caller checks it against its replay cache.
    pub require_nonce: bool,
}

impl Policy {
    /// The default window and leeway, nonce required.
    pub fn at(now: i64) -> Self {
        Policy { now, window_secs: WINDOW_SECS_DEFAULT, leeway_secs: LEEWAY_SECS_DEFAULT, require_nonce: true }
    }
}

/// A request's one signature, parsed and structurally checked but NOT yet verified: nothing in
/// it may be trusted before [`Inspected::verify`] succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspected {
    signature: ParsedSignature,
}

/// Parses the request's signature and checks its shape: exactly one label (else
/// [`SigError::Ambiguous`]), a `keyid` and a `created`, and coverage of `@method` and of the
/// target — `@target-uri`, or `@authority`, `@path` and (when the request has a query)
/// `@query`. The caller then looks the credential up by [`Inspected::keyid`].
pub fn inspect(req: &RequestParts, signature_input: &str, signature: &str) -> Result<Inspected, SigError> {
    let mut signatures = parse_signature_headers(signature_input, signature)?;
    if signatures.len() != 1 {
        return Err(SigError::Ambiguous);
    }
    let signature = signatures.remove(0);
    if signature.params.keyid.is_none() {
        return Err(SigError::MissingKeyId);
    }
    if signature.params.created.is_none() {
        return Err(SigError::MissingCreated);
    }
    check_target_coverage(&signature.components, req)?;
    Ok(Inspected { signature })
}

impl Inspected {
    pub fn label(&self) -> &str {
        &self.signature.label
    }

    /// The key id, present by construction; untrusted until verified.
    pub fn keyid(&self) -> &str {
        self.signature.params.keyid.as_deref().unwrap_or_default()
    }

    /// The nonce, for the caller's replay check after verification.
    pub fn nonce(&self) -> Option<&str> {
        self.signature.params.nonce.as_deref()
    }

    /// The creation time, present by construction.
    pub fn created(&self) -> i64 {
        self.signature.params.created.unwrap_or_default()
    }

    pub fn expires(&self) -> Option<i64> {
        self.signature.params.expires
    }

    pub fn components(&self) -> &[Component] {
        &self.signature.components
    }

    pub fn parsed(&self) -> &ParsedSignature {
        &self.signature
    }

    /// Verifies the signature with the credential's `key` and `alg` under `policy`: the key and
    /// the `alg` parameter (if any) must agree with `alg`; `created` must lie within
    /// `[now − window − leeway, now + leeway]` and `expires` after `now − leeway`; a nonce is
    /// required if the policy says so; a request with a body must cover `content-digest`; then
    /// the signature is checked, and finally every covered Content-Digest against `body`.
    pub fn verify(
        &self,
        req: &RequestParts,
        body: &[u8],
        key: &VerifyKey,
        alg: SigAlg,
        policy: &Policy,
    ) -> Result<(), SigError> {
        let signature = &self.signature;
        check_key_alg(signature, key, alg)?;
        check_times(&signature.params, policy)?;
        if policy.require_nonce && signature.params.nonce.is_none() {
            return Err(SigError::MissingNonce);
        }
        check_target_coverage(&signature.components, req)?;
        let digest_covered =
            signature.components.iter().any(|c| matches!(c, Component::Field(n) if n == "content-digest"));
        if !digest_covered && has_body(req, body)? {
            return Err(SigError::DigestMissing);
        }
        verify_signature(signature, req, key)?;
        if digest_covered {
            let header = field_value(req.headers, "content-digest")?.ok_or(SigError::DigestMissing)?;
            check_content_digest(&header, body)?;
        }
        Ok(())
    }
}

/// A key to sign with. `Debug` never shows the secret.
pub enum SigningKey {
    Hmac(Vec<u8>),
    Ed25519(Ed25519KeyPair),
}

impl SigningKey {
    /// An Ed25519 key from its 32-byte seed (the JWK `d`).
    pub fn ed25519_from_seed(seed: &[u8; 32]) -> Result<Self, SigError> {
        Ed25519KeyPair::from_seed_unchecked(seed).map(SigningKey::Ed25519).map_err(|_| SigError::InvalidKey)
    }

    /// An Ed25519 key from a PKCS#8 (v1 or v2) document.
    pub fn ed25519_from_pkcs8(pkcs8: &[u8]) -> Result<Self, SigError> {
        Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8).map(SigningKey::Ed25519).map_err(|_| SigError::InvalidKey)
    }

    pub fn alg(&self) -> SigAlg {
        match self {
            SigningKey::Hmac(_) => SigAlg::HmacSha256,
            SigningKey::Ed25519(_) => SigAlg::Ed25519,
        }
    }

    /// The key that verifies this key's signatures.
    pub fn verify_key(&self) -> VerifyKey {
        match self {
            SigningKey::Hmac(secret) => VerifyKey::Hmac(secret.clone()),
            SigningKey::Ed25519(pair) => {
                let mut public = [0; 32];
                public.copy_from_slice(pair.public_key().as_ref());
                VerifyKey::Ed25519(public)
            }
        }
    }

    /// Signs a signature base. HMAC secrets shorter than [`HMAC_KEY_MIN_BYTES`] are refused.
    pub fn sign(&self, base: &str) -> Result<Vec<u8>, SigError> {
        match self {
            SigningKey::Hmac(secret) => {
                let mut mac = hmac_sha256(secret)?;
                mac.update(base.as_bytes());
                Ok(mac.finalize().into_bytes().to_vec())
            }
            SigningKey::Ed25519(pair) => Ok(pair.sign(base.as_bytes()).as_ref().to_vec()),
        }
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey").field("alg", &self.alg()).finish_non_exhaustive()
    }
}

/// A key to verify with: the credential's HMAC secret or Ed25519 public key. `Debug` never
/// shows an HMAC secret.
#[derive(Clone, PartialEq, Eq)]
pub enum VerifyKey {
    Hmac(Vec<u8>),
    Ed25519([u8; 32]),
}

impl VerifyKey {
    /// Checks `signature` over `message`; the HMAC comparison is constant-time.
    fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), SigError> {
        match self {
            VerifyKey::Hmac(secret) => {
                let mut mac = hmac_sha256(secret)?;
                mac.update(message);
                mac.verify_slice(signature).map_err(|_| SigError::BadSignature)
            }
            VerifyKey::Ed25519(public) => UnparsedPublicKey::new(&ring_sig::ED25519, public)
                .verify(message, signature)
                .map_err(|_| SigError::BadSignature),
        }
    }

    fn alg(&self) -> SigAlg {
        match self {
            VerifyKey::Hmac(_) => SigAlg::HmacSha256,
            VerifyKey::Ed25519(_) => SigAlg::Ed25519,
        }
    }
}

impl fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyKey").field("alg", &self.alg()).finish_non_exhaustive()
    }
}

/// The header values [`sign_request`] produced. The caller sends them as they are, replacing
/// any Content-Digest the request had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeaders {
    /// `Content-Digest`, present when the body is not empty.
    pub content_digest: Option<String>,
    pub signature_input: String,
    pub signature: String,
}

/// Signs a request for the gateway: label `sig1`, covering `@method`, `@target-uri` and, when
/// the body is not empty, `content-digest` (SHA-256 of `body`, which replaces any Content-Digest
/// in `req.headers`); parameters `created`, `nonce`, `alg` and `keyid`.
pub fn sign_request(
    req: &RequestParts,
    body: &[u8],
    key: &SigningKey,
    keyid: &str,
    created: i64,
    nonce: &str,
) -> Result<SignedHeaders, SigError> {
    if keyid.is_empty() || keyid.len() > KEYID_MAX_BYTES {
        return Err(SigError::Malformed("keyid"));
    }
    if nonce.is_empty() || nonce.len() > NONCE_MAX_BYTES {
        return Err(SigError::Malformed("nonce"));
    }
    let content_digest = (!body.is_empty()).then(|| content_digest(body));
    let mut headers: Vec<(&str, &str)> =
        req.headers.iter().copied().filter(|(name, _)| !name.eq_ignore_ascii_case("content-digest")).collect();
    let mut components = vec![Component::Method, Component::TargetUri];
    if let Some(digest) = &content_digest {
        headers.push(("content-digest", digest));
        components.push(Component::Field("content-digest".to_owned()));
    }
    let params = SigParams {
        created: Some(created),
        nonce: Some(nonce.to_owned()),
        alg: Some(key.alg().as_str().to_owned()),
        keyid: Some(keyid.to_owned()),
        ..SigParams::default()
    };
    let inner = InnerList::with_params(components.iter().map(Component::to_item).collect(), params.to_parameters());
    let params_line = serialize_inner_list(&inner)?;
    let signed = RequestParts { headers: &headers, ..*req };
    let signature = key.sign(&base_with_params_line(&signed, &components, &params_line)?)?;

    let mut input = Dictionary::new();
    input.insert(SIGN_LABEL.to_owned(), ListEntry::InnerList(inner));
    let mut output = Dictionary::new();
    output.insert(SIGN_LABEL.to_owned(), ListEntry::Item(Item::new(BareItem::ByteSeq(signature))));
    Ok(SignedHeaders {
        content_digest,
        signature_input: input.serialize_value().map_err(|_| SigError::Malformed("signature-input"))?,
        signature: output.serialize_value().map_err(|_| SigError::Malformed("signature"))?,
    })
}

/// The RFC 9530 `Content-Digest` value for `body`: `sha-256=:<base64>:`.
pub fn content_digest(body: &[u8]) -> String {
    format!("sha-256=:{}:", base64::Engine::encode(&base64::engine::general_purpose::STANDARD, Sha256::digest(body)))
}

/// Checks a `Content-Digest` value against `body`. `sha-256` and `sha-512` are supported and
/// other algorithms ignored; at least one supported entry must be present and every supported
/// entry must match (compared in constant time).
pub fn check_content_digest(header: &str, body: &[u8]) -> Result<(), SigError> {
    let entries = parse_dictionary(header, "content-digest")?;
    let mut checked = false;
    for (algorithm, entry) in &entries {
        let expected = match algorithm.as_str() {
            "sha-256" => Sha256::digest(body).to_vec(),
            "sha-512" => Sha512::digest(body).to_vec(),
            _ => continue,
        };
        let ListEntry::Item(Item { bare_item: BareItem::ByteSeq(received), .. }) = entry else {
            return Err(SigError::Malformed("content-digest member is not a byte sequence"));
        };
        if !bool::from(expected.as_slice().ct_eq(received.as_slice())) {
            return Err(SigError::DigestMismatch);
        }
        checked = true;
    }
    if checked {
        Ok(())
    } else {
        Err(SigError::DigestMissing)
    }
}

// --- Private helpers -----------------------------------------------------------------------

fn hmac_sha256(secret: &[u8]) -> Result<Hmac<Sha256>, SigError> {
    if secret.len() < HMAC_KEY_MIN_BYTES {
        return Err(SigError::InvalidKey);
    }
    Hmac::<Sha256>::new_from_slice(secret).map_err(|_| SigError::InvalidKey)
}

fn parse_dictionary(text: &str, what: &'static str) -> Result<Dictionary, SigError> {
    if text.len() > HEADER_MAX_BYTES {
        return Err(SigError::Malformed(what));
    }
    Parser::parse_dictionary(text.as_bytes()).map_err(|_| SigError::Malformed(what))
}

/// Serializes a parameterized inner list on its own, as `@signature-params` needs it.
fn serialize_inner_list(list: &InnerList) -> Result<String, SigError> {
    let list: List = vec![ListEntry::InnerList(list.clone())];
    list.serialize_value().map_err(|_| SigError::Malformed("signature parameters cannot be serialized"))
}

fn check_distinct(components: &[Component]) -> Result<(), SigError> {
    if components.len() > COMPONENTS_MAX {
        return Err(SigError::Malformed("too many components"));
    }
    for (i, component) in components.iter().enumerate() {
        if components[..i].contains(component) {
            return Err(SigError::Malformed("component covered twice"));
        }
    }
    Ok(())
}

/// The signature base for `components`, with the `@signature-params` value given.
fn base_with_params_line(req: &RequestParts, components: &[Component], params_line: &str) -> Result<String, SigError> {
    check_distinct(components)?;
    let mut base = String::new();
    for component in components {
        let identifier =
            component.to_item().serialize_value().map_err(|_| SigError::Malformed("component identifier"))?;
        base.push_str(&identifier);
        base.push_str(": ");
        base.push_str(&component_value(req, component)?);
        base.push('\n');
    }
    base.push_str("\"@signature-params\": ");
    base.push_str(params_line);
    Ok(base)
}

fn component_value(req: &RequestParts, component: &Component) -> Result<String, SigError> {
    match component {
        Component::Method => {
            if !is_token(req.method) {
                return Err(SigError::Malformed("method"));
            }
            Ok(req.method.to_owned())
        }
        Component::TargetUri => Ok(format!("{}://{}{}", scheme(req)?, authority(req)?, request_target(req)?)),
        Component::Authority => authority(req),
        Component::Scheme => scheme(req),
        Component::RequestTarget => request_target(req),
        Component::Path => path(req).map(str::to_owned),
        Component::Query => Ok(format!("?{}", query(req)?.unwrap_or_default())),
        Component::QueryParam(name) => query_param(query(req)?.unwrap_or_default(), name),
        Component::Field(name) => {
            if !is_field_name(name) {
                return Err(SigError::Malformed("field name"));
            }
            field_value(req.headers, name)?.ok_or(SigError::AbsentComponent)
        }
    }
}

/// The lowercased scheme.
fn scheme(req: &RequestParts) -> Result<String, SigError> {
    let scheme = req.scheme;
    let valid = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !valid {
        return Err(SigError::Malformed("scheme"));
    }
    Ok(scheme.to_ascii_lowercase())
}

/// The authority normalized per RFC 9110 §4.2.3: lowercase, the scheme's default port omitted.
fn authority(req: &RequestParts) -> Result<String, SigError> {
    let authority = req.authority.to_ascii_lowercase();
    let valid = !authority.is_empty()
        && authority.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b'?' | b'#' | b'@' | b'\\'));
    if !valid {
        return Err(SigError::Malformed("authority"));
    }
    let default_port = match scheme(req)?.as_str() {
        "https" => Some(":443"),
        "http" => Some(":80"),
        _ => None,
    };
    match default_port.and_then(|port| authority.strip_suffix(port)) {
        Some(host) if !host.is_empty() => Ok(host.to_owned()),
        _ => Ok(authority),
    }
}

/// The path as received; empty means `/`.
fn path<'a>(req: &RequestParts<'a>) -> Result<&'a str, SigError> {
    if req.path.is_empty() {
        return Ok("/");
    }
    let valid =
        req.path.starts_with('/') && req.path.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b'?' | b'#'));
    if !valid {
        return Err(SigError::Malformed("path"));
    }
    Ok(req.path)
}

/// The query as received, without its `?`.
fn query<'a>(req: &RequestParts<'a>) -> Result<Option<&'a str>, SigError> {
    match req.query {
        Some(query) if !query.bytes().all(|b| b.is_ascii_graphic() && b != b'#') => Err(SigError::Malformed("query")),
        query => Ok(query),
    }
}

/// The origin-form request target: path, then `?` and the query if there is one.
fn request_target(req: &RequestParts) -> Result<String, SigError> {
    Ok(match query(req)? {
        Some(query) => format!("{}?{query}", path(req)?),
        None => path(req)?.to_owned(),
    })
}

/// The `@query-param` value (RFC 9421 §2.2.8): the query is parsed as
/// `application/x-www-form-urlencoded` (`+` is a space, `%XX` decoded), and names and values
/// are re-encoded with the urlencoded percent-encode set, a space as `%20`. The named parameter
/// must occur exactly once and decode to UTF-8.
fn query_param(query: &str, name: &str) -> Result<String, SigError> {
    let mut found = None;
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (raw_name, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        if form_reencode(raw_name)? != name {
            continue;
        }
        if found.is_some() {
            return Err(SigError::Ambiguous);
        }
        found = Some(form_reencode(raw_value)?);
    }
    found.ok_or(SigError::AbsentComponent)
}

/// Decodes one form-urlencoded name or value and encodes it again canonically.
fn form_reencode(raw: &str) -> Result<String, SigError> {
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => decoded.push(b' '),
            b'%' if i + 2 < bytes.len() && hex_value(bytes[i + 1]).is_some() && hex_value(bytes[i + 2]).is_some() => {
                decoded.push(
                    hex_value(bytes[i + 1]).unwrap_or_default() << 4 | hex_value(bytes[i + 2]).unwrap_or_default(),
                );
                i += 2;
            }
            byte => decoded.push(byte),
        }
        i += 1;
    }
    let decoded = String::from_utf8(decoded).map_err(|_| SigError::Malformed("query parameter is not UTF-8"))?;
    let mut encoded = String::with_capacity(decoded.len());
    for byte in decoded.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'*' | b'-' | b'.' | b'_') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    Ok(encoded)
}

fn hex_value(byte: u8) -> Option<u8> {
    char::from(byte).to_digit(16).and_then(|digit| u8::try_from(digit).ok())
}

/// A header field's value: every instance with this (lowercase) name, trimmed, joined with
/// `", "`. `None` if the request has no such field. Control characters are refused, so a value
/// can never add a line to the signature base.
fn field_value(headers: &[(&str, &str)], name: &str) -> Result<Option<String>, SigError> {
    let mut combined: Option<String> = None;
    for (_, value) in headers.iter().filter(|(field, _)| field.eq_ignore_ascii_case(name)) {
        if value.chars().any(|c| (c.is_ascii_control() && c != '\t') || c == '\u{7f}') {
            return Err(SigError::Malformed("control character in a field value"));
        }
        let value = value.trim_matches([' ', '\t']);
        match &mut combined {
            None => combined = Some(value.to_owned()),
            Some(combined) => {
                combined.push_str(", ");
                combined.push_str(value);
            }
        }
    }
    Ok(combined)
}

/// Whether the request carries content: a non-empty body, a Content-Length above zero, or a
/// Transfer-Encoding.
fn has_body(req: &RequestParts, body: &[u8]) -> Result<bool, SigError> {
    if !body.is_empty() || field_value(req.headers, "transfer-encoding")?.is_some() {
        return Ok(true);
    }
    match field_value(req.headers, "content-length")? {
        None => Ok(false),
        Some(length) if !length.is_empty() && length.bytes().all(|b| b.is_ascii_digit()) => {
            Ok(length.bytes().any(|b| b != b'0'))
        }
        Some(_) => Err(SigError::Malformed("content-length")),
    }
}

fn check_target_coverage(components: &[Component], req: &RequestParts) -> Result<(), SigError> {
    let covers = |component: &Component| components.contains(component);
    if !covers(&Component::Method) {
        return Err(SigError::MissingComponent("@method"));
    }
    if covers(&Component::TargetUri) {
        return Ok(());
    }
    if !covers(&Component::Authority) {
        return Err(SigError::MissingComponent("@target-uri"));
    }
    if !covers(&Component::Path) {
        return Err(SigError::MissingComponent("@path"));
    }
    if req.query.is_some() && !covers(&Component::Query) {
        return Err(SigError::MissingComponent("@query"));
    }
    Ok(())
}

fn check_key_alg(signature: &ParsedSignature, key: &VerifyKey, alg: SigAlg) -> Result<(), SigError> {
    if key.alg() != alg {
        return Err(SigError::AlgMismatch);
    }
    match signature.params.alg.as_deref() {
        Some(claimed) if claimed != alg.as_str() => Err(SigError::AlgMismatch),
        _ => Ok(()),
    }
}

fn check_times(params: &SigParams, policy: &Policy) -> Result<(), SigError> {
    let created = params.created.ok_or(SigError::MissingCreated)?;
    let window = policy.window_secs.max(0);
    let leeway = policy.leeway_secs.max(0);
    if created > policy.now.saturating_add(leeway) {
        return Err(SigError::CreatedInFuture);
    }
    if created < policy.now.saturating_sub(window).saturating_sub(leeway) {
        return Err(SigError::Expired);
    }
    if params.expires.is_some_and(|expires| expires <= policy.now.saturating_sub(leeway)) {
        return Err(SigError::Expired);
    }
    Ok(())
}

/// Rebuilds the base from the received parameters and checks the signature with `key`.
fn verify_signature(signature: &ParsedSignature, req: &RequestParts, key: &VerifyKey) -> Result<(), SigError> {
    let base = base_with_params_line(req, &signature.components, &signature.serialized_params)?;
    key.verify(base.as_bytes(), &signature.signature)
}

/// RFC 9110 `tchar`.
fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

fn is_token(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(is_tchar)
}

/// A lowercase field name.
fn is_field_name(name: &str) -> bool {
    is_token(name) && !name.bytes().any(|b| b.is_ascii_uppercase())
}

/// RFC 9421 Appendix B, reproduced as fixed expected values (the unwrapped copies in
/// `shared/vectors/auth-vectors.md`, checked there with an independent implementation).
#[cfg(test)]
mod rfc9421_vectors {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use base64::Engine as _;

    use super::*;

    const SHARED_SECRET: &str =
        "uzvJfB4u3N0Jy4T7NZ75MDVcr8zSTInedJtkgcu46YW4XByzNJjxBdtjUkdJPBtbmHhIDi6pcl8jsasjlTMtDQ==";
    const ED25519_SEED: &str = "n4Ni-HpISpVObnQMW0wOhCKROaIKqKtW_2ZYb2p9KcU";
    const ED25519_PKCS8: &str = "MC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF";
    const ED25519_PUBLIC: &str = "JrQLj5P_89iXES9-vFgrIy29clF9CC_oPPsw3c5D0bs";
    const RSA_N: &str = "r4tmm3r20Wd_PbqvP1s2-QEtvpuRaV8Yq40gjUR8y2Rjxa6dpG2GXHbPfvMs8ct-Lh1GH45x28Rw3Ry53mm-oAXjyQ86OnDkZ5N8lYbggD4O3w6M6pAvLkhk95AndTrifbIFPNU8PPMO7OyrFAHqgDsznjPFmTOtCEcN2Z1FpWgchwuYLPL-Wokqltd11nqqzi-bJ9cvSKADYdUAAN5WUtzdpiy6LbTgSxP7ociU4Tn0g5I6aDZJ7A8Lzo0KSyZYoA485mqcO0GVAdVw9lq4aOT9v6d-nb4bnNkQVklLQ3fVAvJm-xdDOp9LCNCN48V2pnDOkFV6-U9nV5oyc6XI2w";
    const BODY: &[u8] = br#"{"hello": "world"}"#;
    const DIGEST_512: &str =
        "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:";

    const HEADERS: &[(&str, &str)] = &[
        ("Host", "example.com"),
        ("Date", "Tue, 20 Apr 2021 02:07:55 GMT"),
        ("Content-Type", "application/json"),
        ("Content-Digest", DIGEST_512),
        ("Content-Length", "18"),
    ];

    /// `test-request` of Appendix B.2.
    fn request() -> RequestParts<'static> {
        RequestParts {
            method: "POST",
            scheme: "https",
            authority: "example.com",
            path: "/foo",
            query: Some("param=Value&Pet=dog"),
            headers: HEADERS,
        }
    }

    fn label_value<'a>(header: &'a str, label: &str) -> &'a str {
        header.strip_prefix(label).and_then(|rest| rest.strip_prefix('=')).expect("labelled value")
    }

    fn only(input: &str, signature: &str) -> ParsedSignature {
        let mut parsed = parse_signature_headers(input, signature).expect("vector parses");
        assert_eq!(parsed.len(), 1);
        parsed.remove(0)
    }

    fn sig_bytes(signature: &str, label: &str) -> Vec<u8> {
        let value = label_value(signature, label);
        STANDARD.decode(value.trim_matches(':')).unwrap()
    }

    fn hmac_key() -> Vec<u8> {
        STANDARD.decode(SHARED_SECRET).unwrap()
    }

    /// `Signature-Input` and `Signature` (label `sig`) for `components` and `params`.
    fn signed(req: &RequestParts, components: &[Component], params: &SigParams, key: &SigningKey) -> (String, String) {
        let base = signature_base(req, components, params).unwrap();
        let inner = InnerList::with_params(components.iter().map(Component::to_item).collect(), params.to_parameters());
        let input = format!("sig={}", serialize_inner_list(&inner).unwrap());
        (input, format!("sig=:{}:", STANDARD.encode(key.sign(&base).unwrap())))
    }

    fn ed25519_key() -> SigningKey {
        let seed: [u8; 32] = URL_SAFE_NO_PAD.decode(ED25519_SEED).unwrap().try_into().unwrap();
        SigningKey::ed25519_from_seed(&seed).unwrap()
    }

    /// Verifies with RSASSA-PSS SHA-512 and the public key of `test-key-rsa-pss` (the gateway
    /// does not offer RSA credentials; this checks that our signature bases are the RFC's).
    fn rsa_pss_verifies(base: &str, signature: &[u8]) -> bool {
        let n = URL_SAFE_NO_PAD.decode(RSA_N).unwrap();
        let key = ring_sig::RsaPublicKeyComponents { n: &n[..], e: &[1u8, 0, 1][..] };
        key.verify(&ring_sig::RSA_PSS_2048_8192_SHA512, base.as_bytes(), signature).is_ok()
    }

    const B21_INPUT: &str = r#"sig-b21=();created=1618884473;keyid="test-key-rsa-pss";nonce="b3k2pp5k7z-50gnwp.yemd""#;
    const B21_SIG: &str = "sig-b21=:d2pmTvmbncD3xQm8E9ZV2828BjQWGgiwAaw5bAkgibUopemLJcWDy/lkbbHAve4cRAtx31Iq786U7it++wgGxbtRxf8Udx7zFZsckzXaJMkA7ChG52eSkFxykJeNqsrWH5S+oxNFlD4dzVuwe8DhTSja8xxbR/Z2cOGdCbzR72rgFWhzx2VjBqJzsPLMIQKhO4DGezXehhWwE56YCE+O6c0mKZsfxVrogUvA4HELjVKWmAvtl6UnCh8jYzuVG5WSb/QEVPnP5TmcAnLH1g+s++v6d4s8m0gCw1fV5/SITLq9mhho8K3+7EPYTU8IU1bLhdxO5Nyt8C8ssinQ98Xw9Q==:";
    const B22_INPUT: &str = r#"sig-b22=("@authority" "content-digest" "@query-param";name="Pet");created=1618884473;keyid="test-key-rsa-pss";tag="header-example""#;
    const B22_SIG: &str = "sig-b22=:LjbtqUbfmvjj5C5kr1Ugj4PmLYvx9wVjZvD9GsTT4F7GrcQEdJzgI9qHxICagShLRiLMlAJjtq6N4CDfKtjvuJyE5qH7KT8UCMkSowOB4+ECxCmT8rtAmj/0PIXxi0A0nxKyB09RNrCQibbUjsLS/2YyFYXEu4TRJQzRw1rLEuEfY17SARYhpTlaqwZVtR8NV7+4UKkjqpcAoFqWFQh62s7Cl+H2fjBSpqfZUJcsIk4N6wiKYd4je2U/lankenQ99PZfB4jY3I5rSV2DSBVkSFsURIjYErOs0tFTQosMTAoxk//0RoKUqiYY8Bh0aaUEb0rQl3/XaVe4bXTugEjHSw==:";
    const B23_INPUT: &str = r#"sig-b23=("date" "@method" "@path" "@query" "@authority" "content-type" "content-digest" "content-length");created=1618884473;keyid="test-key-rsa-pss""#;
    const B23_SIG: &str = "sig-b23=:bbN8oArOxYoyylQQUU6QYwrTuaxLwjAC9fbY2F6SVWvh0yBiMIRGOnMYwZ/5MR6fb0Kh1rIRASVxFkeGt683+qRpRRU5p2voTp768ZrCUb38K0fUxN0O0iC59DzYx8DFll5GmydPxSmme9v6ULbMFkl+V5B1TP/yPViV7KsLNmvKiLJH1pFkh/aYA2HXXZzNBXmIkoQoLd7YfW91kE9o/CCoC1xMy7JA1ipwvKvfrs65ldmlu9bpG6A9BmzhuzF8Eim5f8ui9eH8LZH896+QIF61ka39VBrohr9iyMUJpvRX2Zbhl5ZJzSRxpJyoEZAFL2FUo5fTIztsDZKEgM4cUA==:";
    const B25_INPUT: &str =
        r#"sig-b25=("date" "@authority" "content-type");created=1618884473;keyid="test-shared-secret""#;
    const B25_SIG: &str = "sig-b25=:pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8=:";
    const B26_INPUT: &str = r#"sig-b26=("date" "@method" "@path" "@authority" "content-type" "content-length");created=1618884473;keyid="test-key-ed25519""#;
    const B26_SIG: &str =
        "sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==:";

    const B25_BASE: &str = "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n\"@authority\": example.com\n\"content-type\": application/json\n\"@signature-params\": (\"date\" \"@authority\" \"content-type\");created=1618884473;keyid=\"test-shared-secret\"";
    const B26_BASE: &str = "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n\"@method\": POST\n\"@path\": /foo\n\"@authority\": example.com\n\"content-type\": application/json\n\"content-length\": 18\n\"@signature-params\": (\"date\" \"@method\" \"@path\" \"@authority\" \"content-type\" \"content-length\");created=1618884473;keyid=\"test-key-ed25519\"";

    #[test]
    fn b25_hmac_sha256_base_and_signature_are_reproduced_byte_for_byte() {
        let parsed = only(B25_INPUT, B25_SIG);
        let base = signature_base(&request(), &parsed.components, &parsed.params).unwrap();
        assert_eq!(base, B25_BASE);
        let key = SigningKey::Hmac(hmac_key());
        assert_eq!(key.sign(&base).unwrap(), sig_bytes(B25_SIG, "sig-b25"));
        assert_eq!(parsed.signature, sig_bytes(B25_SIG, "sig-b25"));
        VerifyKey::Hmac(hmac_key()).verify(base.as_bytes(), &parsed.signature).unwrap();
    }

    #[test]
    fn b26_ed25519_base_and_signature_are_reproduced_byte_for_byte() {
        let parsed = only(B26_INPUT, B26_SIG);
        let base = signature_base(&request(), &parsed.components, &parsed.params).unwrap();
        assert_eq!(base, B26_BASE);
        let expected = sig_bytes(B26_SIG, "sig-b26");
        assert_eq!(ed25519_key().sign(&base).unwrap(), expected);
        let pkcs8 = SigningKey::ed25519_from_pkcs8(&STANDARD.decode(ED25519_PKCS8).unwrap()).unwrap();
        assert_eq!(pkcs8.sign(&base).unwrap(), expected, "the PEM private key is the same key");
        let public: [u8; 32] = URL_SAFE_NO_PAD.decode(ED25519_PUBLIC).unwrap().try_into().unwrap();
        assert_eq!(ed25519_key().verify_key(), VerifyKey::Ed25519(public));
        VerifyKey::Ed25519(public).verify(base.as_bytes(), &expected).unwrap();
    }

    #[test]
    fn the_rsa_pss_examples_verify_over_our_signature_bases() {
        let b21 = only(B21_INPUT, B21_SIG);
        let base = signature_base(&request(), &b21.components, &b21.params).unwrap();
        assert_eq!(
            base,
            "\"@signature-params\": ();created=1618884473;keyid=\"test-key-rsa-pss\";nonce=\"b3k2pp5k7z-50gnwp.yemd\""
        );
        assert!(rsa_pss_verifies(&base, &b21.signature), "B.2.1");

        let b22 = only(B22_INPUT, B22_SIG);
        let base = signature_base(&request(), &b22.components, &b22.params).unwrap();
        let expected = format!(
            "\"@authority\": example.com\n\"content-digest\": {DIGEST_512}\n\"@query-param\";name=\"Pet\": dog\n\"@signature-params\": {}",
            label_value(B22_INPUT, "sig-b22")
        );
        assert_eq!(base, expected);
        assert!(rsa_pss_verifies(&base, &b22.signature), "B.2.2");

        let b23 = only(B23_INPUT, B23_SIG);
        let base = signature_base(&request(), &b23.components, &b23.params).unwrap();
        let expected = format!(
            "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n\"@method\": POST\n\"@path\": /foo\n\"@query\": ?param=Value&Pet=dog\n\
             \"@authority\": example.com\n\"content-type\": application/json\n\"content-digest\": {DIGEST_512}\n\
             \"content-length\": 18\n\"@signature-params\": {}",
            label_value(B23_INPUT, "sig-b23")
        );
        assert_eq!(base, expected);
        assert!(rsa_pss_verifies(&base, &b23.signature), "B.2.3");
        assert!(!rsa_pss_verifies(&format!("{base} "), &b23.signature), "a changed base fails");
    }

    #[test]
    fn the_b24_response_signature_verifies_over_the_printed_base() {
        // @status is a response component, which the gateway never verifies; the printed base
        // still checks our P-256 verifier path and the corrected digest of the vectors file.
        let base = "\"@status\": 200\n\"content-type\": application/json\n\"content-digest\": sha-512=:mEWXIS7MaLRuGgxOBdODa3xqM1XdEvxoYhvlCFJ41QJgJc4GTsPp29l5oGX69wWdXymyU0rjJuahq4l5aGgfLQ==:\n\"content-length\": 23\n\"@signature-params\": (\"@status\" \"content-type\" \"content-digest\" \"content-length\");created=1618884473;keyid=\"test-key-ecc-p256\"";
        let x = URL_SAFE_NO_PAD.decode("qIVYZVLCrPZHGHjP17CTW0_-D9Lfw0EkjqF7xB4FivA").unwrap();
        let y = URL_SAFE_NO_PAD.decode("Mc4nN9LTDOBhfoUeg8Ye9WedFRhnZXZJA12Qp0zZ6F0").unwrap();
        let point = [&[4u8][..], &x, &y].concat();
        let signature = STANDARD
            .decode("wNmSUAhwb5LxtOtOpNa6W5xj067m5hFrj0XQ4fvpaCLx0NKocgPquLgyahnzDnDAUy5eCdlYUEkLIj+32oiasw==")
            .unwrap();
        let key = UnparsedPublicKey::new(&ring_sig::ECDSA_P256_SHA256_FIXED, &point);
        key.verify(base.as_bytes(), &signature).unwrap();
        check_content_digest(
            "sha-512=:mEWXIS7MaLRuGgxOBdODa3xqM1XdEvxoYhvlCFJ41QJgJc4GTsPp29l5oGX69wWdXymyU0rjJuahq4l5aGgfLQ==:",
            br#"{"message": "good dog"}"#,
        )
        .unwrap();
        // `@status` in a request signature is refused by the parser.
        let input = r#"sig=("@status");created=1;keyid="k""#;
        assert_eq!(parse_signature_headers(input, "sig=:AAAA:"), Err(SigError::Unsupported("@status in a request")));
    }

    #[test]
    fn content_digests_of_the_test_request_check_with_sha_256_and_sha_512() {
        check_content_digest(DIGEST_512, BODY).unwrap();
        check_content_digest("sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:", BODY).unwrap();
        assert_eq!(content_digest(BODY), "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:");
        let both = format!("sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:, {DIGEST_512}");
        check_content_digest(&both, BODY).unwrap();
        assert_eq!(check_content_digest(DIGEST_512, br#"{"hello": "w0rld"}"#), Err(SigError::DigestMismatch));
        assert_eq!(check_content_digest("md5=:AAAA:", BODY), Err(SigError::DigestMissing), "no supported digest");
    }

    /// The negative cases of the vectors file (§1.4), through the gateway's verifier.
    #[test]
    fn the_gateway_refuses_the_negative_cases() {
        let req = request();
        let now = 1_618_884_473 + 10;
        let policy = Policy { require_nonce: false, ..Policy::at(now) };
        // B.2.5 covers neither @method nor the path: refused by policy before any key lookup.
        assert_eq!(inspect(&req, B25_INPUT, B25_SIG), Err(SigError::MissingComponent("@method")));
        // B.2.1 covers nothing at all.
        assert!(matches!(inspect(&req, B21_INPUT, B21_SIG), Err(SigError::MissingComponent(_))));

        // A request the gateway accepts: B.2.3's coverage, signed with the Ed25519 test key.
        let components = only(B23_INPUT, B23_SIG).components;
        let sign = |params: SigParams, key: &SigningKey| signed(&req, &components, &params, key);
        let params = |created: i64| SigParams {
            created: Some(created),
            keyid: Some("test-key-ed25519".into()),
            ..SigParams::default()
        };
        let ed = ed25519_key();
        let verify_key = ed.verify_key();
        let (input, signature) = sign(params(1_618_884_473), &ed);
        let inspected = inspect(&req, &input, &signature).unwrap();
        inspected.verify(&req, BODY, &verify_key, SigAlg::Ed25519, &policy).unwrap();

        // The body changed, every header kept: the signature verifies but the digest does not.
        assert_eq!(
            inspected.verify(&req, br#"{"hello": "w0rld"}"#, &verify_key, SigAlg::Ed25519, &policy),
            Err(SigError::DigestMismatch)
        );
        // The same signature presented for another kind of credential: the algorithm comes from
        // the credential, never from the message, so it is checked as an HMAC and fails.
        assert_eq!(
            inspected.verify(&req, BODY, &VerifyKey::Hmac(hmac_key()), SigAlg::HmacSha256, &policy),
            Err(SigError::BadSignature)
        );
        // A credential whose key and algorithm disagree is never used.
        assert_eq!(
            inspected.verify(&req, BODY, &VerifyKey::Hmac(hmac_key()), SigAlg::Ed25519, &policy),
            Err(SigError::AlgMismatch)
        );
        // An `alg` parameter that disagrees with the credential (§7.3.6 downgrade).
        let mut claims_rsa = params(1_618_884_473);
        claims_rsa.alg = Some("rsa-pss-sha512".into());
        let (input, signature) = sign(claims_rsa, &ed);
        let inspected = inspect(&req, &input, &signature).unwrap();
        assert_eq!(inspected.verify(&req, BODY, &verify_key, SigAlg::Ed25519, &policy), Err(SigError::AlgMismatch));
        // `created` an hour old against a 300 s window.
        let (input, signature) = sign(params(1_618_884_473 - 3600), &ed);
        let inspected = inspect(&req, &input, &signature).unwrap();
        assert_eq!(inspected.verify(&req, BODY, &verify_key, SigAlg::Ed25519, &policy), Err(SigError::Expired));
        // `expires` in the past.
        let mut expired = params(now - 100);
        expired.expires = Some(now - 90);
        let (input, signature) = sign(expired, &ed);
        let inspected = inspect(&req, &input, &signature).unwrap();
        assert_eq!(inspected.verify(&req, BODY, &verify_key, SigAlg::Ed25519, &policy), Err(SigError::Expired));
        // A nonce is required by the default policy.
        let (input, signature) = sign(params(now), &ed);
        let inspected = inspect(&req, &input, &signature).unwrap();
        assert_eq!(
            inspected.verify(&req, BODY, &verify_key, SigAlg::Ed25519, &Policy::at(now)),
            Err(SigError::MissingNonce)
        );
        // A body that no covered Content-Digest binds.
        let uncovered: Vec<Component> = components.iter().filter(|c| c.name() != "content-digest").cloned().collect();
        let (input, signature) = signed(&req, &uncovered, &params(now), &ed);
        let inspected = inspect(&req, &input, &signature).unwrap();
        assert_eq!(inspected.verify(&req, BODY, &verify_key, SigAlg::Ed25519, &policy), Err(SigError::DigestMissing));
    }

    #[test]
    fn the_authority_path_and_query_form_is_accepted_like_target_uri() {
        let req = request();
        let components = vec![
            Component::Method,
            Component::Authority,
            Component::Path,
            Component::Query,
            Component::Field("content-digest".into()),
        ];
        let params = SigParams {
            created: Some(100),
            nonce: Some("n-1".into()),
            keyid: Some("k".into()),
            ..SigParams::default()
        };
        let key = SigningKey::Hmac(hmac_key());
        let (input, signature) = signed(&req, &components, &params, &key);
        let inspected = inspect(&req, &input, &signature).unwrap();
        inspected.verify(&req, BODY, &key.verify_key(), SigAlg::HmacSha256, &Policy::at(100)).unwrap();
        // Without @query the target is not bound (the request has a query).
        let (input, signature) = signed(&req, &components[..3], &params, &key);
        assert!(matches!(inspect(&req, &input, &signature), Err(SigError::MissingComponent(_))));
    }
}
