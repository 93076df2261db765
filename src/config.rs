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
use std::sync::Arc;

use cairn_sdk::Keyring;
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
    /// The stack has secrets and no key is set to open them.
    #[error("stack '{stack}' has secrets ({path}), and no key to open them: set CAIRN_PASSPHRASE to its passphrase, or CAIRN_SECRETS_KEY_FILE to a file holding its key")]
    NoKey {
        /// The stack.
        stack: String,
        /// Its configuration file.
        path: PathBuf,
    },
    /// The key set is not the one the stack's secrets were sealed with.
    #[error("the key set in the environment is not the one stack '{stack}''s secrets were sealed with (its check value in {path} does not open): check CAIRN_PASSPHRASE or CAIRN_SECRETS_KEY_FILE")]
    WrongKey {
        /// The stack.
        stack: String,
        /// Its configuration file.
        path: PathBuf,
    },
    /// A key could not be made from what the environment gives.
    #[error("the secrets key of stack '{stack}' could not be made: {reason}")]
    Key {
        /// The stack.
        stack: String,
        /// Why.
        reason: String,
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

/// The key of a sealed value in a configuration file: `token = { secure = "..." }`.
pub const SECURE: &str = "secure";

/// The environment variable naming a file that holds a stack's secrets key.
pub const KEY_FILE_VAR: &str = "CAIRN_SECRETS_KEY_FILE";

/// The environment variable holding the passphrase a stack's secrets key is derived from.
pub const PASSPHRASE_VAR: &str = "CAIRN_PASSPHRASE";

/// What the check value seals: opening it proves the key is the stack's.
const CHECK: &str = "cairn";

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

/// `table` as the program's type `C`. The `[cairn]` table is Cairn's own (the secrets
/// salt and check) and not given to `C`.
pub(crate) fn typed<C: DeserializeOwned>(dir: &Path, stack: &str, mut table: toml::Table) -> Result<C, ConfigError> {
    table.remove("cairn");
    C::deserialize(toml::Value::Table(table))
        .map_err(|e| ConfigError::Invalid { stack: stack.to_owned(), path: path(dir, stack), message: e.to_string().trim().to_owned() })
}

/// The key that seals and opens the secrets of `stack`, from the environment:
/// `CAIRN_SECRETS_KEY_FILE` (a file of 64 bytes, raw or base64), else
/// `CAIRN_PASSPHRASE` stretched with the salt in `[cairn.secrets]` of the stack's file.
/// `None` when neither is set and the file holds no secret. A key that does not open
/// the file's check value (another stack's, a mistyped passphrase) is an error, so a
/// wrong key never seals a secret differently and shows it as changed.
pub fn keyring(dir: &Path, stack: &str) -> Result<Option<Arc<Keyring>>, ConfigError> {
    let table = read(dir, stack)?;
    let keyring = env_keyring(dir, stack, &table)?;
    match (&keyring, secrets_table(&table).and_then(|t| t.get("check")).and_then(toml::Value::as_str)) {
        (Some(keyring), Some(check)) => verify(dir, stack, keyring, check)?,
        (None, _) if holds_secrets(&table) => {
            return Err(ConfigError::NoKey { stack: stack.to_owned(), path: path(dir, stack) });
        }
        _ => {}
    }
    Ok(keyring)
}

fn secrets_table(table: &toml::Table) -> Option<&toml::Table> {
    table.get("cairn")?.as_table()?.get("secrets")?.as_table()
}

/// Whether a value in `table` is sealed.
fn holds_secrets(table: &toml::Table) -> bool {
    table.iter().any(|(k, v)| k != "cairn" && holds_secret(v))
}

fn holds_secret(value: &toml::Value) -> bool {
    match value {
        toml::Value::Table(t) => is_secure(t) || t.values().any(holds_secret),
        toml::Value::Array(items) => items.iter().any(holds_secret),
        _ => false,
    }
}

fn is_secure(table: &toml::Table) -> bool {
    table.len() == 1 && table.get(SECURE).is_some_and(toml::Value::is_str)
}

fn env_keyring(dir: &Path, stack: &str, table: &toml::Table) -> Result<Option<Arc<Keyring>>, ConfigError> {
    let bad = |reason: String| ConfigError::Key { stack: stack.to_owned(), reason };
    if let Some(file) = std::env::var_os(KEY_FILE_VAR).filter(|f| !f.is_empty()) {
        let bytes = std::fs::read(&file).map_err(|e| bad(format!("{KEY_FILE_VAR}={}: {e}", file.to_string_lossy())))?;
        let key = if bytes.len() == Keyring::KEY_LEN {
            bytes
        } else {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(String::from_utf8_lossy(&bytes).trim())
                .map_err(|_| bad(format!("{KEY_FILE_VAR}: the file must hold {} bytes, raw or base64 (`head -c 64 /dev/urandom | base64`)", Keyring::KEY_LEN)))?
        };
        return Keyring::from_key(&key).map(Some).map_err(|e| bad(format!("{KEY_FILE_VAR}: {e}")));
    }
    let Some(passphrase) = std::env::var(PASSPHRASE_VAR).ok().filter(|p| !p.is_empty()) else { return Ok(None) };
    let Some(salt) = secrets_table(table).and_then(|t| t.get("salt")).and_then(toml::Value::as_str) else {
        // No secret was set yet: `config set --secret` makes the salt.
        return Ok(None);
    };
    use base64::Engine;
    let salt = base64::engine::general_purpose::STANDARD
        .decode(salt)
        .map_err(|_| bad(format!("cairn.secrets.salt in {} is not base64; restore it from version control", path(dir, stack).display())))?;
    Keyring::from_passphrase(&passphrase, &salt).map(Some).map_err(|e| bad(format!("{PASSPHRASE_VAR}: {e}")))
}

fn verify(dir: &Path, stack: &str, keyring: &Keyring, check: &str) -> Result<(), ConfigError> {
    let sealed = serde_json::json!({ cairn_sdk::secret::SEALED_KEY: check });
    let opens = keyring.sealed_this(&sealed) && cairn_sdk::secret::open(&sealed).is_ok_and(|v| v == CHECK);
    if opens {
        Ok(())
    } else {
        Err(ConfigError::WrongKey { stack: stack.to_owned(), path: path(dir, stack) })
    }
}

/// The keyring to seal a new secret of `stack` with, setting up `[cairn.secrets]` in
/// `table` the first time (a new salt for a passphrase, and the check value).
pub(crate) fn keyring_for_new_secret(dir: &Path, stack: &str, table: &mut toml::Table) -> Result<Arc<Keyring>, ConfigError> {
    let no_key = || ConfigError::NoKey { stack: stack.to_owned(), path: path(dir, stack) };
    let bad = |e: cairn_sdk::secret::SecretError| ConfigError::Key { stack: stack.to_owned(), reason: e.to_string() };
    let keyring = match env_keyring(dir, stack, table)? {
        Some(keyring) => keyring,
        None => {
            let passphrase = std::env::var(PASSPHRASE_VAR).ok().filter(|p| !p.is_empty()).ok_or_else(no_key)?;
            let salt = Keyring::new_salt().map_err(bad)?;
            let keyring = Keyring::from_passphrase(&passphrase, &salt).map_err(bad)?;
            use base64::Engine;
            let salt = toml::Value::String(base64::engine::general_purpose::STANDARD.encode(salt));
            set(table, "cairn.secrets.salt", salt).map_err(|reason| ConfigError::Key { stack: stack.to_owned(), reason })?;
            keyring
        }
    };
    match secrets_table(table).and_then(|t| t.get("check")).and_then(toml::Value::as_str) {
        Some(check) => verify(dir, stack, &keyring, check)?,
        None => {
            let check = sealed_body(&keyring.seal(&serde_json::Value::from(CHECK)));
            set(table, "cairn.secrets.check", toml::Value::String(check)).map_err(|reason| ConfigError::Key { stack: stack.to_owned(), reason })?;
        }
    }
    Ok(keyring)
}

/// `value` sealed with `keyring`, in a configuration file's form.
pub(crate) fn seal(keyring: &Keyring, value: &toml::Value) -> toml::Value {
    let json = serde_json::to_value(value).expect("a TOML value is JSON");
    let mut table = toml::Table::new();
    table.insert(SECURE.to_owned(), toml::Value::String(sealed_body(&keyring.seal(&json))));
    toml::Value::Table(table)
}

fn sealed_body(sealed: &serde_json::Value) -> String {
    sealed[cairn_sdk::secret::SEALED_KEY].as_str().expect("a sealed value has its body").to_owned()
}

/// `value` with its sealed values opened (`show`) or shown as `[secret]`.
pub(crate) fn reveal(value: &toml::Value, show: bool) -> Result<toml::Value, ConfigError> {
    Ok(match value {
        toml::Value::Table(t) if is_secure(t) => {
            if !show {
                return Ok(toml::Value::String(cairn_sdk::secret::REDACTED.to_owned()));
            }
            let sealed = serde_json::json!({ cairn_sdk::secret::SEALED_KEY: t[SECURE].as_str() });
            let opened = cairn_sdk::secret::open(&sealed).map_err(|e| ConfigError::Key { stack: String::new(), reason: e.to_string() })?;
            toml::Value::try_from(opened).map_err(|e| ConfigError::Key { stack: String::new(), reason: e.to_string() })?
        }
        toml::Value::Table(t) => toml::Value::Table(t.iter().map(|(k, v)| Ok((k.clone(), reveal(v, show)?))).collect::<Result<_, ConfigError>>()?),
        toml::Value::Array(items) => toml::Value::Array(items.iter().map(|v| reveal(v, show)).collect::<Result<_, _>>()?),
        other => other.clone(),
    })
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
