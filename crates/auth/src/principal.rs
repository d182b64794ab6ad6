//! The authenticated caller.

use licenseseal_ledger::{Intent, Scopes, SubjectId, TenantId, Timestamp};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    ApiKey,
    /// A token signed by our own Authority.
    AuthorityToken,
    /// A token of an external identity provider the tenant registered.
    IdpToken,
    /// An RFC 9421 signed request.
    HttpSignature,
    /// A client certificate verified in the TLS handshake.
    Mtls,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::ApiKey => "api_key",
            AuthMethod::AuthorityToken => "authority_token",
            AuthMethod::IdpToken => "idp_token",
            AuthMethod::HttpSignature => "http_signature",
            AuthMethod::Mtls => "mtls",
        }
    }

    pub const ALL: [AuthMethod; 5] = [
        AuthMethod::ApiKey,
        AuthMethod::AuthorityToken,
        AuthMethod::IdpToken,
        AuthMethod::HttpSignature,
        AuthMethod::Mtls,
    ];

    pub fn parse(s: &str) -> Option<AuthMethod> {
        AuthMethod::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

/// Who is calling: tenant (none for operators), optional bound subject, scopes, and the
/// credential that proved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// `None` for an operator, who acts on any tenant by naming it.
    pub tenant_id: Option<TenantId>,
    /// When set, the principal may act for this subject only.
    pub subject: Option<SubjectId>,
    pub scopes: Scopes,
    pub method: AuthMethod,
    /// The public id of the credential (never its secret). For an Authority token, the id of
    /// the credential it was exchanged for (its revocation ends the token too).
    pub credential_id: String,
    /// When the credential stops being valid, if it does.
    pub expires_at: Option<Timestamp>,
}

impl Principal {
    pub fn is_operator(&self) -> bool {
        self.tenant_id.is_none()
    }

    /// Operators may do everything; tenant principals what their scopes say.
    pub fn allows(&self, intent: Intent) -> bool {
        self.is_operator() || self.scopes.allows(intent)
    }
}
