//! Per-stack configuration: `Cairn.<stack>.toml` in the project, read into a typed
//! config struct of the program's own, so `dev` and `prod` differ by their files, not by
//! branches on the stack's name.
//!
//! ```
//! # let dir = tempfile::tempdir().unwrap();
//! #[derive(serde::Deserialize, Default)]
//! #[serde(default)]
//! struct Config {
//!     web_max: u32,
//! }
//! std::fs::write(dir.path().join("Cairn.prod.toml"), "web_max = 40\n").unwrap();
//! let prod: Config = cairn::config::load(dir.path(), "prod").unwrap();
//! assert_eq!(prod.web_max, 40);
//! // A stack without a file gets what its serde defaults say.
//! let dev: Config = cairn::config::load(dir.path(), "dev").unwrap();
//! assert_eq!(dev.web_max, 0);
//! ```
//!
//! With [`Cli::configured`](crate::Cli::configured), the command line loads it for the
//! stack it runs, checks `config set` against it, and hands it to the stack factory.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// A stack's configuration file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// It could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It is not TOML.
    #[error("{path} is not valid TOML: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// Where and why, as the parser says.
        message: String,
    },
    /// It is TOML, but not the program's config: a missing key, a wrong type.
    #[error("the configuration of stack '{stack}' ({path}) does not fit the program's config type: {message}; fix it with `config set KEY VALUE --stack {stack}` or by editing the file")]
    Invalid {
        /// The stack.
        stack: String,
        /// The file.
        path: PathBuf,
        /// What does not fit, as serde says.
        message: String,
    },
}

/// The configuration file of `stack` in `dir`: `Cairn.<stack>.toml`.
pub fn path(dir: &Path, stack: &str) -> PathBuf {
    dir.join(format!("Cairn.{stack}.toml"))
}

/// The keys and values in the configuration file of `stack` (empty when there is none).
pub fn read(dir: &Path, stack: &str) -> Result<toml::Table, ConfigError> {
    let path = path(dir, stack);
    match std::fs::read_to_string(&path) {
        Ok(text) => text.parse::<toml::Table>().map_err(|e| ConfigError::Syntax { path, message: e.to_string() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(toml::Table::new()),
        Err(source) => Err(ConfigError::Io { path, source }),
    }
}

/// The configuration of `stack` as the program's type `C`. A stack without a file is
/// read as an empty one: `C`'s serde defaults fill it, and a required key is an error
/// that names it.
pub fn load<C: DeserializeOwned>(dir: &Path, stack: &str) -> Result<C, ConfigError> {
    typed(dir, stack, read(dir, stack)?)
}

/// `table` as the program's type `C`.
pub(crate) fn typed<C: DeserializeOwned>(dir: &Path, stack: &str, table: toml::Table) -> Result<C, ConfigError> {
    C::deserialize(toml::Value::Table(table))
        .map_err(|e| ConfigError::Invalid { stack: stack.to_owned(), path: path(dir, stack), message: e.to_string().trim().to_owned() })
}

/// Writes `table` as the configuration file of `stack`. Comments in the file are not
/// kept.
pub(crate) fn write(dir: &Path, stack: &str, table: &toml::Table) -> Result<(), ConfigError> {
    let path = path(dir, stack);
    let text = toml::to_string(table).map_err(|e| ConfigError::Syntax { path: path.clone(), message: e.to_string() })?;
    std::fs::write(&path, text).map_err(|source| ConfigError::Io { path, source })
}

/// The value at the dotted `key` (`web.max`) of `table`.
pub(crate) fn get<'a>(table: &'a toml::Table, key: &str) -> Option<&'a toml::Value> {
    let mut parts = key.split('.');
    let mut value = table.get(parts.next()?)?;
    for part in parts {
        value = value.as_table()?.get(part)?;
    }
    Some(value)
}

/// Sets the dotted `key` of `table` to `value`, making the tables on the way.
pub(crate) fn set(table: &mut toml::Table, key: &str, value: toml::Value) -> Result<(), String> {
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(format!("'{key}' is not a key: use names separated by dots, such as web.max"));
    }
    let (last, path) = parts.split_last().expect("split yields at least one part");
    let mut at = table;
    for (i, part) in path.iter().enumerate() {
        let entry = at.entry(part.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        at = entry.as_table_mut().ok_or_else(|| format!("'{}' holds a value, not a table of keys", parts[..=i].join(".")))?;
    }
    at.insert(last.to_string(), value);
    Ok(())
}

/// `text` as a TOML value (`3`, `true`, `["a", "b"]`, `"quoted"`), or else as a string.
pub(crate) fn parse_value(text: &str) -> toml::Value {
    format!("v = {text}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_keys_set_and_get_nested_values_and_bare_words_are_strings() {
        let mut table = toml::Table::new();
        set(&mut table, "web.max", parse_value("40")).unwrap();
        set(&mut table, "zones", parse_value(r#"["a", "b"]"#)).unwrap();
        set(&mut table, "instance_type", parse_value("m6i.large")).unwrap();
        assert_eq!(get(&table, "web.max"), Some(&toml::Value::Integer(40)));
        assert_eq!(get(&table, "zones").and_then(|z| z.as_array()).map(Vec::len), Some(2));
        assert_eq!(get(&table, "instance_type").and_then(toml::Value::as_str), Some("m6i.large"));
        assert_eq!(set(&mut table, "zones.first", parse_value("x")), Err("'zones' holds a value, not a table of keys".to_owned()));
        assert!(set(&mut table, "web..max", parse_value("1")).is_err());
    }
}
