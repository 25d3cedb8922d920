//! Enums the contract carries as text (in JSON events and in Postgres columns): a name this
//! version does not know is an error wherever it is read, never a silent default.

/// A name that no variant of `what` carries: a value written by a newer version, or a fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?}")]
pub struct UnknownValue {
    /// The enum read, as a person would name it (`interaction kind`, `score source`).
    pub what: &'static str,
    /// The text as read.
    pub value: String,
}

/// Reads an enum back from the names its `as_str` gives (the names serde writes, which a
/// unit test holds to the same), through every variant of its `ALL`: `TryFrom<&str>`,
/// `TryFrom<String>` (what `sqlx(try_from = "String")` calls) and `FromStr`.
macro_rules! read_by_name {
    ($name:ty, $what:literal) => {
        impl TryFrom<&str> for $name {
            type Error = $crate::named::UnknownValue;

            fn try_from(text: &str) -> Result<Self, Self::Error> {
                Self::ALL
                    .into_iter()
                    .find(|value| value.as_str() == text)
                    .ok_or_else(|| $crate::named::UnknownValue { what: $what, value: text.to_owned() })
            }
        }

        impl TryFrom<String> for $name {
            type Error = $crate::named::UnknownValue;

            fn try_from(text: String) -> Result<Self, Self::Error> {
                Self::try_from(text.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::named::UnknownValue;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                Self::try_from(text)
            }
        }
    };
}
