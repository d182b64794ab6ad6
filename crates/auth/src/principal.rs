//! The authenticated caller.

use licenseseal_ledger::{Intent, Scopes, SubjectId, TenantId};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    ApiKey,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::ApiKey => "api_key",
        }
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
    /// The public id of the credential (never its secret).
    pub credential_id: String,
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
