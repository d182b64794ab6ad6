//! Intents (what a request wants to do) and the scopes that permit them.

use std::fmt;

/// The operation a request asks for. A scope string is an intent's name, or `*` for all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Intent {
    UsageDebit,
    CreditsGrant,
    CreditsRefund,
    CreditsAdjust,
    CreditsHold,
    LedgerRead,
    AccountsManage,
    KeysManage,
    TenantsManage,
}

impl Intent {
    pub const ALL: [Intent; 9] = [
        Intent::UsageDebit,
        Intent::CreditsGrant,
        Intent::CreditsRefund,
        Intent::CreditsAdjust,
        Intent::CreditsHold,
        Intent::LedgerRead,
        Intent::AccountsManage,
        Intent::KeysManage,
        Intent::TenantsManage,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Intent::UsageDebit => "usage.debit",
            Intent::CreditsGrant => "credits.grant",
            Intent::CreditsRefund => "credits.refund",
            Intent::CreditsAdjust => "credits.adjust",
            Intent::CreditsHold => "credits.hold",
            Intent::LedgerRead => "ledger.read",
            Intent::AccountsManage => "accounts.manage",
            Intent::KeysManage => "keys.manage",
            Intent::TenantsManage => "tenants.manage",
        }
    }

    pub fn parse(s: &str) -> Option<Intent> {
        Intent::ALL.into_iter().find(|i| i.as_str() == s)
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

impl fmt::Display for Intent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of intents. `*` is every intent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Scopes(u16);

impl Scopes {
    pub fn all() -> Self {
        Scopes(Intent::ALL.iter().fold(0, |acc, i| acc | i.bit()))
    }

    pub fn allows(self, intent: Intent) -> bool {
        self.0 & intent.bit() != 0
    }

    pub fn is_subset_of(self, other: Scopes) -> bool {
        self.0 & !other.0 == 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// These scopes without `intent`.
    pub fn without(self, intent: Intent) -> Self {
        Scopes(self.0 & !intent.bit())
    }

    /// Parses scope strings; unknown names are an error naming the first offender.
    pub fn parse<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut bits = 0;
        for item in items {
            if item == "*" {
                bits |= Scopes::all().0;
            } else {
                bits |= Intent::parse(item).ok_or_else(|| item.to_owned())?.bit();
            }
        }
        Ok(Scopes(bits))
    }

    /// The scope names, `["*"]` when every intent is present.
    pub fn names(self) -> Vec<String> {
        if self == Scopes::all() {
            return vec!["*".to_owned()];
        }
        Intent::ALL.into_iter().filter(|i| self.allows(*i)).map(|i| i.as_str().to_owned()).collect()
    }
}

impl serde::Serialize for Scopes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.names().serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for Scopes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let items = Vec::<String>::deserialize(d)?;
        Scopes::parse(items.iter().map(String::as_str))
            .map_err(|bad| serde::de::Error::custom(format!("unknown scope {bad:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_is_every_intent_and_unknown_names_are_refused() {
        let all = Scopes::parse(["*"]).unwrap();
        assert!(Intent::ALL.iter().all(|i| all.allows(*i)));
        let debit = Scopes::parse(["usage.debit"]).unwrap();
        assert!(debit.allows(Intent::UsageDebit) && !debit.allows(Intent::CreditsGrant));
        assert!(debit.is_subset_of(all) && !all.is_subset_of(debit));
        assert_eq!(Scopes::parse(["usage.debit", "bogus"]), Err("bogus".to_owned()));
        assert_eq!(all.names(), vec!["*"]);
    }
}
