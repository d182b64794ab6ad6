//! RFC 9421 signed requests. A middleware verifies the signature before any handler runs —
//! it needs the whole body, to re-hash it against `Content-Digest` — and leaves the outcome
//! in the request for the `Authed` extractor, so signed requests take the same policy path as
//! every other credential.

use licenseseal_auth::{FailureReason, Principal};

/// The outcome of checking a request's signature.
#[derive(Debug, Clone)]
pub struct SignedRequest(pub Result<Principal, FailureReason>);
