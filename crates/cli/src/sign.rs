//! `licenseseal sign`: signs one HTTP request for the gateway (RFC 9421) and prints the headers
//! to send, one per line, ready for `curl -H @file` (or `-H @-`).
//!
//! ```sh
//! licenseseal sign --key-id sig_… --hmac-secret-file secret.b64 \
//!   --method POST --url http://127.0.0.1:8080/v1/debits --data '{"subject":"alice","amount":1}' \
//!   | curl -s http://127.0.0.1:8080/v1/debits -H @- -H 'content-type: application/json' \
//!       -H 'idempotency-key: k1' --data '{"subject":"alice","amount":1}'
//! ```

use std::path::PathBuf;

use anyhow::{bail, Context};
use base64::Engine;
use licenseseal_auth::httpsig::{sign_request, RequestParts, SigningKey};
use licenseseal_store::{Clock, SystemClock};
use rustls_pki_types::pem::PemObject;

#[derive(clap::Args)]
pub struct SignArgs {
    /// The signing credential's id (`sig_…`): the `keyid` of the signature.
    #[arg(long)]
    key_id: String,
    /// File holding the HMAC secret as shown at creation (standard base64).
    #[arg(long, conflicts_with = "ed25519_key_file")]
    hmac_secret_file: Option<PathBuf>,
    /// The HMAC secret itself (prefer the file: arguments are visible to other users).
    #[arg(long, env = "LICENSESEAL_HMAC_SECRET", hide_env_values = true, conflicts_with = "ed25519_key_file")]
    hmac_secret: Option<String>,
    /// PEM (PKCS#8) Ed25519 private key, e.g. from `openssl genpkey -algorithm ed25519`.
    #[arg(long)]
    ed25519_key_file: Option<PathBuf>,
    /// HTTP method.
    #[arg(long, default_value = "GET")]
    method: String,
    /// The full URL the request goes to, exactly as sent (scheme, host, port, path, query).
    #[arg(long)]
    url: String,
    /// The body, exactly as sent.
    #[arg(long, conflicts_with = "data_file")]
    data: Option<String>,
    /// A file holding the body.
    #[arg(long)]
    data_file: Option<PathBuf>,
}

pub fn run(args: SignArgs) -> anyhow::Result<()> {
    let key = match (&args.hmac_secret_file, &args.hmac_secret, &args.ed25519_key_file) {
        (Some(path), None, None) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            hmac_key(&text)?
        }
        (None, Some(text), None) => hmac_key(text)?,
        (None, None, Some(path)) => {
            let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            let der = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(&pem)
                .context("the key file must hold a PKCS#8 PEM private key")?;
            SigningKey::ed25519_from_pkcs8(der.secret_pkcs8_der()).map_err(|e| anyhow::anyhow!("{e}"))?
        }
        _ => bail!("give exactly one of --hmac-secret-file, --hmac-secret, --ed25519-key-file"),
    };
    let body = match (&args.data, &args.data_file) {
        (Some(text), None) => text.clone().into_bytes(),
        (None, Some(path)) => std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
        _ => Vec::new(),
    };
    let url = reqwest::Url::parse(&args.url).context("--url must be an absolute http(s) URL")?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        bail!("--url must be an absolute http(s) URL");
    }
    let authority = match url.port() {
        Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_owned(),
    };
    let method = args.method.to_ascii_uppercase();
    let req = RequestParts {
        method: &method,
        scheme: url.scheme(),
        authority: &authority,
        path: url.path(),
        query: url.query(),
        headers: &[],
    };
    let created = SystemClock.now().micros().div_euclid(1_000_000);
    let nonce = uuid::Uuid::now_v7().simple().to_string();
    let signed = sign_request(&req, &body, &key, &args.key_id, created, &nonce).map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(digest) = signed.content_digest {
        println!("Content-Digest: {digest}");
    }
    println!("Signature-Input: {}", signed.signature_input);
    println!("Signature: {}", signed.signature);
    Ok(())
}

fn hmac_key(text: &str) -> anyhow::Result<SigningKey> {
    let secret = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .context("the HMAC secret must be the standard base64 shown when the key was created")?;
    Ok(SigningKey::Hmac(secret))
}
