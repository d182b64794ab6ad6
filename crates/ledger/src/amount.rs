//! Money as integers: `Amount` is a positive magnitude, `SignedAmount` a non-zero signed
//! change. Both are bounded by 2^53 − 1 so that every JSON client reads them exactly, and both
//! can only be built through parsing, so an invalid amount never exists past the edge.

use std::fmt;

/// Largest amount accepted anywhere: 2^53 − 1, the largest integer every JSON client keeps exact.
pub const AMOUNT_MAX: u64 = (1 << 53) - 1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("amount must be an integer between 1 and {AMOUNT_MAX}")]
    OutOfRange,
    #[error("amount must be a non-zero integer between -{AMOUNT_MAX} and {AMOUNT_MAX}")]
    SignedOutOfRange,
}

/// A positive amount in the smallest unit: `1 ≤ amount ≤ 2^53 − 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct Amount(u64);

impl Amount {
    pub fn new(value: u64) -> Result<Self, AmountError> {
        if (1..=AMOUNT_MAX).contains(&value) {
            Ok(Amount(value))
        } else {
            Err(AmountError::OutOfRange)
        }
    }

    pub fn get(self) -> u64 {
        self.0
    }

    /// The amount as a signed value; lossless because `AMOUNT_MAX < i64::MAX`.
    pub fn as_i64(self) -> i64 {
        self.0 as i64
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A signed, non-zero change (adjustments): `1 ≤ |amount| ≤ 2^53 − 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct SignedAmount(i64);

impl SignedAmount {
    pub fn new(value: i64) -> Result<Self, AmountError> {
        if value != 0 && value.unsigned_abs() <= AMOUNT_MAX {
            Ok(SignedAmount(value))
        } else {
            Err(AmountError::SignedOutOfRange)
        }
    }

    pub fn get(self) -> i64 {
        self.0
    }

    pub fn magnitude(self) -> Amount {
        Amount(self.0.unsigned_abs())
    }
}

/// Deserialises only from JSON integers: floats (even `1.0`), strings and booleans are
/// refused with a message that names the rule.
struct IntegerVisitor {
    range: Range,
}

/// What a JSON integer must be, for the message that names the rule.
#[derive(Clone, Copy)]
enum Range {
    /// `1 ..= AMOUNT_MAX` (amounts).
    Positive,
    /// `-AMOUNT_MAX ..= AMOUNT_MAX` without 0 (adjustments).
    SignedNonZero,
    /// `0 ..= AMOUNT_MAX` (limits).
    NonNegative,
}

impl<'de> serde::de::Visitor<'de> for IntegerVisitor {
    type Value = i128;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.range {
            Range::SignedNonZero => write!(f, "a non-zero integer amount between -{AMOUNT_MAX} and {AMOUNT_MAX}"),
            Range::Positive => write!(f, "an integer amount between 1 and {AMOUNT_MAX}"),
            Range::NonNegative => write!(f, "an integer between 0 and {AMOUNT_MAX}"),
        }
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<i128, E> {
        Ok(v as i128)
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<i128, E> {
        Ok(v as i128)
    }

    fn visit_u128<E: serde::de::Error>(self, v: u128) -> Result<i128, E> {
        Ok(i128::try_from(v).unwrap_or(i128::MAX))
    }

    fn visit_i128<E: serde::de::Error>(self, v: i128) -> Result<i128, E> {
        Ok(v)
    }
}

fn out_of_range<E: serde::de::Error>(v: i128, range: Range) -> E {
    let expected = IntegerVisitor { range };
    E::invalid_value(serde::de::Unexpected::Other(&format!("integer {v}")), &expected)
}

impl<'de> serde::Deserialize<'de> for Amount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = d.deserialize_any(IntegerVisitor { range: Range::Positive })?;
        u64::try_from(v).ok().and_then(|v| Amount::new(v).ok()).ok_or_else(|| out_of_range(v, Range::Positive))
    }
}

impl<'de> serde::Deserialize<'de> for SignedAmount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = d.deserialize_any(IntegerVisitor { range: Range::SignedNonZero })?;
        i64::try_from(v)
            .ok()
            .and_then(|v| SignedAmount::new(v).ok())
            .ok_or_else(|| out_of_range(v, Range::SignedNonZero))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Amount, String> {
        serde_json::from_str::<Amount>(json).map_err(|e| e.to_string())
    }

    #[test]
    fn limits_take_zero_and_name_their_own_range() {
        assert_eq!(serde_json::from_str::<Limit>("0").unwrap().get(), 0);
        for bad in ["1.5", "-1", "\"5\"", "9007199254740992"] {
            let e = serde_json::from_str::<Limit>(bad).unwrap_err().to_string();
            assert!(e.contains("an integer between 0 and 9007199254740991"), "{bad}: {e}");
        }
    }

    #[test]
    fn amounts_accept_only_positive_safe_integers() {
        assert_eq!(parse("1").unwrap().get(), 1);
        assert_eq!(parse("9007199254740991").unwrap().get(), AMOUNT_MAX);
        for bad in
            ["0", "-1", "9007199254740992", "1.5", "1.0", "1e3", "\"10\"", "true", "null", "18446744073709551616"]
        {
            assert!(parse(bad).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn signed_amounts_refuse_zero_and_out_of_range() {
        assert_eq!(serde_json::from_str::<SignedAmount>("-5").unwrap().get(), -5);
        for bad in ["0", "-9007199254740992", "2.5", "\"-1\""] {
            assert!(serde_json::from_str::<SignedAmount>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ten_thousandths_subtract_exactly() {
        // Credits with four decimal places are integer ten-thousandths; no float anywhere.
        let a = parse("949899").unwrap().as_i64();
        let b = parse("50101").unwrap().as_i64();
        assert_eq!(a.checked_sub(b), Some(899_798));
    }
}

/// A non-negative limit (overdraft): `0 ≤ limit ≤ 2^53 − 1`, integers only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct Limit(u64);

impl Limit {
    pub fn get(self) -> u64 {
        self.0
    }
}

impl<'de> serde::Deserialize<'de> for Limit {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = d.deserialize_any(IntegerVisitor { range: Range::NonNegative })?;
        u64::try_from(v).ok().filter(|v| *v <= AMOUNT_MAX).map(Limit).ok_or_else(|| out_of_range(v, Range::NonNegative))
    }
}
