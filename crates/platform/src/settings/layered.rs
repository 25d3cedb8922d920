//! The environment layer of the settings. Each setting's variable follows from its path in
//! the file (`consumer.batch_size` is `LEADS_CONSUMER_BATCH_SIZE`), and the settings are found
//! by walking the structs' own `Deserialize`: a field added to a settings struct has its
//! variable with no line here. A few names predate the file's sections and are kept
//! (`variable`), so that deployments need not change.

use super::{ServiceName, SettingsError, invalid};
use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};
use std::str::FromStr;

/// How a variable's text becomes the setting's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Bool,
    U8,
    U16,
    U32,
    U64,
    I8,
    I16,
    I32,
    I64,
    Float,
    Text,
    /// Text that may be absent: an empty variable unsets it.
    Optional,
    /// Comma-separated text.
    List,
}

/// One setting: its path in the file and what it holds. A `*` segment stands for each
/// service of a per-service table (`database.passwords.*`).
#[derive(Debug, Clone)]
pub(super) struct Leaf {
    pub path: Vec<String>,
    pub kind: Kind,
}

const EACH_SERVICE: &str = "*";

/// Every setting `T` (the `Settings` struct) has, in declaration order.
pub(super) fn leaves<T: de::DeserializeOwned>() -> Result<Vec<Leaf>, de::value::Error> {
    let mut leaves = Vec::new();
    T::deserialize(Tracer { path: Vec::new(), leaves: &mut leaves })?;
    Ok(leaves)
}

/// The environment variable of the setting at `path` (with services named, not `*`).
pub(super) fn variable(path: &[&str]) -> String {
    let name = match path {
        ["nats_auth", rest @ ..] => format!("nats_{}", rest.join("_")),
        ["endpoints", service] => format!("{service}_endpoint"),
        ["database", "statement_timeout_ms"] => "statement_timeout_ms".to_owned(),
        ["database", "service_urls", service] => format!("{service}_database_url"),
        ["database", "passwords", service] => format!("{service}_db_password"),
        ["database", "password_files", service] => format!("{service}_db_password_file"),
        ["database", "service_statement_timeout_ms", service] => format!("{service}_statement_timeout_ms"),
        _ => path.join("_"),
    };
    format!("LEADS_{}", name.to_uppercase())
}

/// The standard variable read when a setting's own is unset.
fn fallback(variable: &str) -> Option<&'static str> {
    (variable == "LEADS_OTLP_ENDPOINT").then_some("OTEL_EXPORTER_OTLP_ENDPOINT")
}

/// A setting as a variable gives it.
#[derive(Debug, Clone)]
pub(super) struct Variable {
    /// The setting's path, services named.
    pub path: Vec<String>,
    pub name: String,
    pub kind: Kind,
    /// An entry of a per-service table: an empty variable removes it.
    pub per_service: bool,
}

/// Each setting a variable can give.
pub(super) fn variables(leaves: &[Leaf]) -> Vec<Variable> {
    let mut out = Vec::new();
    for leaf in leaves {
        let per_service = leaf.path.iter().any(|segment| segment == EACH_SERVICE);
        let services: Vec<Option<&str>> =
            if per_service { ServiceName::ALL.iter().map(|s| Some(s.as_str())).collect() } else { vec![None] };
        for service in services {
            let path: Vec<String> = leaf
                .path
                .iter()
                .map(|segment| match service {
                    Some(name) if segment == EACH_SERVICE => name.to_owned(),
                    _ => segment.clone(),
                })
                .collect();
            let borrowed: Vec<&str> = path.iter().map(String::as_str).collect();
            let name = variable(&borrowed);
            out.push(Variable { path, name, kind: leaf.kind, per_service });
        }
    }
    out
}

/// A value a variable sets (`None`: the variable was empty and unsets the setting).
#[derive(Debug, Clone)]
pub(super) struct Change {
    pub path: Vec<String>,
    pub variable: String,
    pub value: Option<toml::Value>,
}

/// The changes the variables `lookup` finds make to the file's settings. A value that does
/// not parse as its setting's type is an error naming the variable.
pub(super) fn changes(leaves: &[Leaf], lookup: &impl Fn(&str) -> Option<String>) -> Result<Vec<Change>, SettingsError> {
    let mut changes = Vec::new();
    for Variable { path, name, kind, per_service } in variables(leaves) {
        let Some(text) = lookup(&name).or_else(|| fallback(&name).and_then(lookup)) else { continue };
        // An empty per-service URL or password leaves the file's entry as it is: unsetting it
        // would quietly send that service through the admin URL.
        if text.is_empty() && per_service && matches!(kind, Kind::Text | Kind::Optional) {
            continue;
        }
        let value = if text.is_empty() && kind == Kind::Optional {
            None
        } else {
            Some(parse(kind, &text).map_err(|reason| invalid(&name, reason))?)
        };
        changes.push(Change { path, variable: name, value });
    }
    Ok(changes)
}

fn parse(kind: Kind, text: &str) -> Result<toml::Value, String> {
    fn integer<T: FromStr + TryInto<i64>>(text: &str) -> Result<toml::Value, String>
    where
        <T as FromStr>::Err: std::fmt::Display,
    {
        let value: T = text.parse().map_err(|e: <T as FromStr>::Err| e.to_string())?;
        let value: i64 = value.try_into().map_err(|_| "number too large to fit in target type".to_owned())?;
        Ok(toml::Value::Integer(value))
    }
    match kind {
        Kind::Bool => text.parse().map(toml::Value::Boolean).map_err(|e| e.to_string()),
        Kind::U8 => integer::<u8>(text),
        Kind::U16 => integer::<u16>(text),
        Kind::U32 => integer::<u32>(text),
        Kind::U64 => integer::<u64>(text),
        Kind::I8 => integer::<i8>(text),
        Kind::I16 => integer::<i16>(text),
        Kind::I32 => integer::<i32>(text),
        Kind::I64 => integer::<i64>(text),
        Kind::Float => text.parse().map(toml::Value::Float).map_err(|e: std::num::ParseFloatError| e.to_string()),
        Kind::Text | Kind::Optional => Ok(toml::Value::String(text.to_owned())),
        Kind::List => Ok(toml::Value::Array(
            text.split(',').map(str::trim).filter(|item| !item.is_empty()).map(toml::Value::from).collect(),
        )),
    }
}

/// Applies one change to a settings table.
pub(super) fn apply(table: &mut toml::Table, change: &Change) {
    let (last, parents) = change.path.split_last().expect("a setting has a path");
    let mut table = table;
    for segment in parents {
        let entry = table.entry(segment.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        table = entry.as_table_mut().expect("made a table above");
    }
    match &change.value {
        Some(value) => {
            table.insert(last.clone(), value.clone());
        }
        None => {
            table.remove(last);
        }
    }
}

/// A deserializer that hands every struct all its fields and every leaf a placeholder,
/// recording the path and kind of each leaf on the way.
struct Tracer<'a> {
    path: Vec<String>,
    leaves: &'a mut Vec<Leaf>,
}

impl Tracer<'_> {
    fn record(&mut self, kind: Kind) {
        self.leaves.push(Leaf { path: self.path.clone(), kind });
    }
}

macro_rules! trace_scalar {
    ($($method:ident => $kind:ident, $visit:ident($placeholder:expr);)*) => {$(
        fn $method<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Self::Error> {
            self.record(Kind::$kind);
            visitor.$visit($placeholder)
        }
    )*};
}

impl<'de> de::Deserializer<'de> for Tracer<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom(format!("setting {} has a type no variable can give", self.path.join("."))))
    }

    trace_scalar! {
        deserialize_bool => Bool, visit_bool(false);
        deserialize_u8 => U8, visit_u8(0);
        deserialize_u16 => U16, visit_u16(0);
        deserialize_u32 => U32, visit_u32(0);
        deserialize_u64 => U64, visit_u64(0);
        deserialize_i8 => I8, visit_i8(0);
        deserialize_i16 => I16, visit_i16(0);
        deserialize_i32 => I32, visit_i32(0);
        deserialize_i64 => I64, visit_i64(0);
        deserialize_f32 => Float, visit_f32(0.0);
        deserialize_f64 => Float, visit_f64(0.0);
        deserialize_str => Text, visit_str("");
        deserialize_string => Text, visit_str("");
    }

    fn deserialize_option<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Self::Error> {
        self.record(Kind::Optional);
        visitor.visit_none()
    }

    fn deserialize_seq<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Self::Error> {
        self.record(Kind::List);
        visitor.visit_seq(de::value::SeqDeserializer::<_, Self::Error>::new(std::iter::empty::<()>()))
    }

    /// Tables of the settings are keyed by service: one entry, `*`, stands for them all.
    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_map(Entries { names: &[EACH_SERVICE], next: 0, path: self.path, leaves: self.leaves })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_map(Entries { names: fields, next: 0, path: self.path, leaves: self.leaves })
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    serde::forward_to_deserialize_any! {
        i128 u128 char bytes byte_buf unit unit_struct tuple tuple_struct enum identifier ignored_any
    }
}

/// The fields of a struct, or the one `*` entry of a per-service table, each traced in turn.
struct Entries<'a> {
    names: &'static [&'static str],
    next: usize,
    path: Vec<String>,
    leaves: &'a mut Vec<Leaf>,
}

impl<'de> MapAccess<'de> for Entries<'_> {
    type Error = de::value::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Self::Error> {
        let Some(name) = self.names.get(self.next) else { return Ok(None) };
        seed.deserialize(IntoDeserializer::<Self::Error>::into_deserializer(*name)).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Self::Error> {
        let name = self.names[self.next];
        self.next += 1;
        let mut path = self.path.clone();
        path.push(name.to_owned());
        seed.deserialize(Tracer { path, leaves: self.leaves })
    }
}
