//! A test identity provider: real keys (Ed25519 and P-256, generated per test), its JWKS as
//! JSON, and tokens signed with them — or forged in the ways attackers forge them.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};

pub struct TestIdp {
    pub issuer: String,
    ed: Vec<(String, Ed25519KeyPair)>,
    es: (String, EcdsaKeyPair),
}

impl TestIdp {
    pub fn new(issuer: &str) -> Self {
        let rng = SystemRandom::new();
        let es_doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("p256");
        let es = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, es_doc.as_ref(), &rng).expect("p256");
        let mut idp = TestIdp { issuer: issuer.to_owned(), ed: Vec::new(), es: ("es-1".into(), es) };
        idp.add_ed25519("ed-1");
        idp
    }

    /// Adds an Ed25519 key (a rotation at the provider once published).
    pub fn add_ed25519(&mut self, kid: &str) {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("ed25519");
        self.ed.push((kid.to_owned(), Ed25519KeyPair::from_pkcs8(doc.as_ref()).expect("ed25519")));
    }

    /// The public JWK set with the named kids.
    pub fn jwks(&self, kids: &[&str]) -> Value {
        let mut keys = Vec::new();
        for (kid, pair) in &self.ed {
            if kids.contains(&kid.as_str()) {
                let x = B64.encode(pair.public_key().as_ref());
                keys.push(json!({ "kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "use": "sig" }));
            }
        }
        if kids.contains(&self.es.0.as_str()) {
            let point = self.es.1.public_key().as_ref();
            let (x, y) = (B64.encode(&point[1..33]), B64.encode(&point[33..65]));
            keys.push(json!({ "kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": self.es.0, "use": "sig" }));
        }
        json!({ "keys": keys })
    }

    /// Standard claims for `subject`, valid from `now` for five minutes.
    pub fn claims(&self, subject: &str, audience: &str, scope: &str, now: i64) -> Value {
        json!({ "iss": self.issuer, "sub": subject, "aud": audience, "scope": scope,
                "iat": now, "nbf": now, "exp": now + 300 })
    }

    /// A token signed with the key `kid` (EdDSA or ES256 by key type).
    pub fn sign(&self, kid: &str, claims: &Value) -> String {
        self.sign_with_header(kid, json!({}), claims)
    }

    /// Like `sign`, with extra protected-header members.
    pub fn sign_with_header(&self, kid: &str, extra: Value, claims: &Value) -> String {
        let (alg, ed) = match self.ed.iter().find(|(k, _)| k == kid) {
            Some((_, pair)) => ("EdDSA", Some(pair)),
            None => ("ES256", None),
        };
        let mut header = json!({ "alg": alg, "typ": "JWT", "kid": kid });
        for (k, v) in extra.as_object().expect("object") {
            header[k] = v.clone();
        }
        let input = format!("{}.{}", B64.encode(header.to_string()), B64.encode(claims.to_string()));
        let signature = match ed {
            Some(pair) => pair.sign(input.as_bytes()).as_ref().to_vec(),
            None => self.es.1.sign(&SystemRandom::new(), input.as_bytes()).expect("sign").as_ref().to_vec(),
        };
        format!("{input}.{}", B64.encode(signature))
    }
}

/// A compact JWS from raw header and claims JSON text with the given signature bytes.
pub fn forge(header: &str, claims: &str, signature: &[u8]) -> String {
    format!("{}.{}.{}", B64.encode(header), B64.encode(claims), B64.encode(signature))
}

/// HS256 over `header.claims` keyed by `secret` (the algorithm-confusion attack).
pub fn hs256(header: &str, claims: &str, secret: &[u8]) -> String {
    use hmac::Mac;
    let input = format!("{}.{}", B64.encode(header), B64.encode(claims));
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("hmac key");
    mac.update(input.as_bytes());
    format!("{input}.{}", B64.encode(mac.finalize().into_bytes()))
}
