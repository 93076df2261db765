//! Secrets: values that are stored and shown only sealed.
//!
//! A secret is sealed where it enters a stack (a [`Secret`] read from configuration, an
//! input the schema marks secret) and opened only for the provider call that needs it.
//! In between, in plans, saved plans, state, the journal, outputs, history and errors,
//! it is a sealed value, `{"cairn:secret": "<key id>:<ciphertext>"}`, which every
//! display shows as `[secret]`.
//!
//! Sealing is AES-SIV (RFC 5297, the `aes-siv` crate): an AEAD whose ciphertext depends
//! only on the key and the plaintext. So the engine compares secrets sealed, without
//! opening them: an unchanged secret is an unchanged input, and a changed one shows as a
//! change without its value. The price is that two equal secrets under one key have
//! equal ciphertexts, which someone reading the state can see.
//!
//! The key is a [`Keyring`]: 64 bytes from a key file, or derived from a passphrase
//! with Argon2id and a salt kept in the stack's configuration (`cairn::config`). Each
//! sealed value names its key by an id derived from the key, so a process holding
//! several stacks' keyrings opens each value with the right one. A key held by a cloud
//! KMS would be one more way to make a [`Keyring`] (a data key the KMS unwraps).
//!
//! ```
//! use cairn_sdk::secret::{self, Keyring};
//! let keyring = Keyring::from_key(&[7u8; 64]).unwrap();
//! let sealed = keyring.seal(&serde_json::json!("hunter2"));
//! assert!(secret::is_sealed(&sealed));
//! assert!(!sealed.to_string().contains("hunter2"));
//! // Deterministic: the same secret under the same key seals the same.
//! assert_eq!(sealed, keyring.seal(&serde_json::json!("hunter2")));
//! assert_eq!(secret::open(&sealed).unwrap(), "hunter2");
//! assert_eq!(secret::redact(&sealed), "[secret]");
//! ```

use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use aes_siv::siv::Aes256Siv;
use aes_siv::KeyInit;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use zeroize::Zeroizing;

use crate::input::{Input, Part, Prop};
use crate::provider::{DiffRequest, DiffResult, Observed, Provider, ProviderError, ProviderOp};
use crate::{CheckFailure, Decl, Props, Urn};

/// The key of a sealed value's one field.
pub const SEALED_KEY: &str = "cairn:secret";

/// How a sealed value is shown.
pub const REDACTED: &str = "[secret]";

/// The associated data of every sealed value: a ciphertext of something else (another
/// format, another program) does not open as a secret.
const CONTEXT: &[u8] = b"cairn secret v1";

/// A secret could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// No loaded keyring has the key the value was sealed with.
    #[error(
        "a secret sealed with key {key_id} cannot be opened: no such key is loaded. Set CAIRN_PASSPHRASE (or CAIRN_SECRETS_KEY_FILE) to the stack's key and run again"
    )]
    NoKey {
        /// The id of the key it was sealed with.
        key_id: String,
    },
    /// The value is not a sealed value, or it was changed.
    #[error("a secret could not be opened: {0}")]
    Corrupt(String),
    /// A key of the wrong size, or a passphrase that could not be stretched.
    #[error("a secrets key could not be made: {0}")]
    Key(String),
}

/// A key that seals and opens secrets. Made keyrings are remembered for the life of the
/// process, so any sealed value can be opened by the id it carries.
pub struct Keyring {
    id: String,
    key: Zeroizing<[u8; 64]>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring").field("id", &self.id).finish_non_exhaustive()
    }
}

fn loaded() -> &'static RwLock<Vec<Arc<Keyring>>> {
    static LOADED: OnceLock<RwLock<Vec<Arc<Keyring>>>> = OnceLock::new();
    LOADED.get_or_init(Default::default)
}

impl Keyring {
    /// The length of a key, in bytes (AES-SIV with AES-256 takes two 256-bit keys).
    pub const KEY_LEN: usize = 64;

    /// A keyring of the 64 bytes `key`.
    pub fn from_key(key: &[u8]) -> Result<Arc<Keyring>, SecretError> {
        let key: [u8; 64] = key
            .try_into()
            .map_err(|_| SecretError::Key(format!("a key is {} bytes, not {}", Self::KEY_LEN, key.len())))?;
        let mut keyring = Keyring { id: String::new(), key: Zeroizing::new(key) };
        // The id is a value only the key makes: the first bytes of a sealed constant.
        let tag = keyring.encrypt(b"key id");
        keyring.id = tag[..6].iter().map(|b| format!("{b:02x}")).collect();
        Ok(keyring.remember())
    }

    /// A keyring of the key Argon2id stretches from `passphrase` and `salt` (at least 8
    /// bytes; [`Keyring::new_salt`] makes one).
    pub fn from_passphrase(passphrase: &str, salt: &[u8]) -> Result<Arc<Keyring>, SecretError> {
        if passphrase.is_empty() {
            return Err(SecretError::Key("the passphrase is empty".to_owned()));
        }
        let mut key = Zeroizing::new([0u8; 64]);
        argon2::Argon2::default()
            .hash_password_into(passphrase.as_bytes(), salt, &mut key[..])
            .map_err(|e| SecretError::Key(e.to_string()))?;
        Self::from_key(&key[..])
    }

    /// A new random salt for [`Keyring::from_passphrase`].
    pub fn new_salt() -> Result<[u8; 16], SecretError> {
        let mut salt = [0u8; 16];
        getrandom::getrandom(&mut salt).map_err(|e| SecretError::Key(format!("no randomness for a salt: {e}")))?;
        Ok(salt)
    }

    fn remember(self) -> Arc<Keyring> {
        let mut loaded = loaded().write().unwrap_or_else(PoisonError::into_inner);
        if let Some(known) = loaded.iter().find(|k| k.id == self.id) {
            return known.clone();
        }
        let keyring = Arc::new(self);
        loaded.push(keyring.clone());
        keyring
    }

    /// The key's id, carried by every value it seals.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn cipher(&self) -> Aes256Siv {
        Aes256Siv::new((&self.key[..]).into())
    }

    fn encrypt(&self, plaintext: &[u8]) -> Vec<u8> {
        self.cipher().encrypt([CONTEXT], plaintext).expect("AES-SIV seals any length a process holds")
    }

    /// `value` sealed. A value that already is sealed is returned as it is.
    pub fn seal(&self, value: &Value) -> Value {
        if is_sealed(value) {
            return value.clone();
        }
        let plaintext = Zeroizing::new(serde_json::to_vec(value).expect("a JSON value serializes"));
        let sealed = format!("{}:{}", self.id, BASE64.encode(self.encrypt(&plaintext)));
        Value::Object([(SEALED_KEY.to_owned(), Value::String(sealed))].into_iter().collect())
    }

    fn open(&self, body: &str) -> Result<Value, SecretError> {
        let bytes = BASE64.decode(body).map_err(|e| SecretError::Corrupt(format!("not base64: {e}")))?;
        let plaintext = Zeroizing::new(
            self.cipher()
                .decrypt([CONTEXT], &bytes)
                .map_err(|_| SecretError::Corrupt("it does not open with its key: it was changed".to_owned()))?,
        );
        serde_json::from_slice(&plaintext).map_err(|e| SecretError::Corrupt(e.to_string()))
    }

    /// Whether `sealed` was sealed with this key.
    pub fn sealed_this(&self, sealed: &Value) -> bool {
        sealed_body(sealed).is_some_and(|(id, _)| id == self.id)
    }
}

/// The key id and ciphertext of a sealed value.
fn sealed_body(value: &Value) -> Option<(&str, &str)> {
    match value {
        Value::Object(map) if map.len() == 1 => map.get(SEALED_KEY)?.as_str()?.split_once(':'),
        _ => None,
    }
}

/// Whether `value` is a sealed secret.
pub fn is_sealed(value: &Value) -> bool {
    sealed_body(value).is_some()
}

/// Whether `value` is or holds a sealed secret.
pub fn contains_sealed(value: &Value) -> bool {
    match value {
        v if is_sealed(v) => true,
        Value::Array(items) => items.iter().any(contains_sealed),
        Value::Object(map) => map.values().any(contains_sealed),
        _ => false,
    }
}

/// The loaded keyring with id `key_id`.
pub fn keyring(key_id: &str) -> Option<Arc<Keyring>> {
    loaded().read().unwrap_or_else(PoisonError::into_inner).iter().find(|k| k.id == key_id).cloned()
}

/// The plaintext of a sealed value (a value that is not sealed is returned as it is).
pub fn open(value: &Value) -> Result<Value, SecretError> {
    match sealed_body(value) {
        Some((id, body)) => keyring(id).ok_or_else(|| SecretError::NoKey { key_id: id.to_owned() })?.open(body),
        None => Ok(value.clone()),
    }
}

/// Why a sealed value inside `value` cannot be opened, if one cannot: its key is not
/// loaded.
pub fn locked(value: &Value) -> Option<SecretError> {
    match value {
        v if is_sealed(v) => {
            let (id, _) = sealed_body(v)?;
            keyring(id).is_none().then(|| SecretError::NoKey { key_id: id.to_owned() })
        }
        Value::Array(items) => items.iter().find_map(locked),
        Value::Object(map) => map.values().find_map(locked),
        _ => None,
    }
}

/// [`locked`] of every literal in `prop`.
pub(crate) fn locked_in(prop: &Prop) -> Option<SecretError> {
    match prop {
        Prop::Value(v) => locked(v),
        Prop::Output(_) => None,
        Prop::List(items) => items.iter().find_map(locked_in),
        Prop::Object(fields) => fields.iter().find_map(|(_, p)| locked_in(p)),
        Prop::Apply(a) => a.args.iter().find_map(locked_in),
    }
}

/// `value` with every sealed value inside opened, and the keyring of the first one (to
/// seal what is computed from it); `None` when nothing inside was sealed.
pub fn open_all(value: &Value) -> Result<(Value, Option<Arc<Keyring>>), SecretError> {
    fn walk(value: &Value, first: &mut Option<Arc<Keyring>>) -> Result<Value, SecretError> {
        if let Some((id, body)) = sealed_body(value) {
            let keyring = keyring(id).ok_or_else(|| SecretError::NoKey { key_id: id.to_owned() })?;
            let opened = keyring.open(body)?;
            first.get_or_insert(keyring);
            // What was sealed may hold sealed parts itself.
            return if contains_sealed(&opened) { walk(&opened, first) } else { Ok(opened) };
        }
        Ok(match value {
            Value::Array(items) => Value::Array(items.iter().map(|v| walk(v, first)).collect::<Result<_, _>>()?),
            Value::Object(map) if map.values().any(contains_sealed) => {
                Value::Object(map.iter().map(|(k, v)| Ok((k.clone(), walk(v, first)?))).collect::<Result<_, SecretError>>()?)
            }
            other => other.clone(),
        })
    }
    let mut first = None;
    let opened = walk(value, &mut first)?;
    Ok((opened, first))
}

/// `value` with every sealed value inside shown as `[secret]`: what displays print.
pub fn redact(value: &Value) -> Value {
    match value {
        v if is_sealed(v) => Value::from(REDACTED),
        Value::Array(items) if items.iter().any(contains_sealed) => Value::Array(items.iter().map(redact).collect()),
        Value::Object(map) if map.values().any(contains_sealed) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), redact(v))).collect())
        }
        other => other.clone(),
    }
}

/// A secret value of type `T`, held sealed: what a program's configuration gives for a
/// key set with `config set --secret`, and what it passes as an input.
///
/// It serializes as the sealed value, and deserializes from it or from the
/// configuration file's form, `{ secure = "<key id>:<ciphertext>" }`. A plaintext where
/// a `Secret` is expected is an error, so a secret cannot be left in a file by mistake.
pub struct Secret<T> {
    sealed: Value,
    _type: PhantomData<fn() -> T>,
}

impl<T> Secret<T> {
    /// `value` sealed with `keyring`.
    pub fn seal(keyring: &Keyring, value: &T) -> Self
    where
        T: Serialize,
    {
        let plaintext = serde_json::to_value(value).expect("a secret's value serializes");
        Secret { sealed: keyring.seal(&plaintext), _type: PhantomData }
    }

    /// The sealed value.
    pub fn sealed(&self) -> &Value {
        &self.sealed
    }

    /// The plaintext, for a program that needs it itself (its key must be loaded).
    pub fn open(&self) -> Result<T, SecretError>
    where
        T: DeserializeOwned,
    {
        let value = open(&self.sealed)?;
        serde_json::from_value(value).map_err(|e| SecretError::Corrupt(format!("it is not the type the program expects: {e}")))
    }
}

impl<T> Clone for Secret<T> {
    fn clone(&self) -> Self {
        Secret { sealed: self.sealed.clone(), _type: PhantomData }
    }
}

impl<T> PartialEq for Secret<T> {
    fn eq(&self, other: &Self) -> bool {
        self.sealed == other.sealed
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl<T> Serialize for Secret<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.sealed.serialize(serializer)
    }
}

impl<'de, T> Deserialize<'de> for Secret<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Form {
            secure: Option<String>,
            #[serde(rename = "cairn:secret")]
            sealed: Option<String>,
        }
        let not_sealed = || {
            serde::de::Error::custom(
                "a secret must be stored sealed: set it with `config set --secret KEY VALUE`, which writes { secure = \"...\" }",
            )
        };
        let form = Form::deserialize(deserializer).map_err(|_: D::Error| not_sealed())?;
        let body = form.secure.or(form.sealed).ok_or_else(not_sealed)?;
        let sealed = Value::Object([(SEALED_KEY.to_owned(), Value::String(body))].into_iter().collect());
        if !is_sealed(&sealed) {
            return Err(not_sealed());
        }
        Ok(Secret { sealed, _type: PhantomData })
    }
}

impl<T> From<Secret<T>> for Input<T> {
    fn from(secret: Secret<T>) -> Self {
        Input::from_prop(Prop::Value(secret.sealed))
    }
}

impl<T> From<&Secret<T>> for Input<T> {
    fn from(secret: &Secret<T>) -> Self {
        Input::from_prop(Prop::Value(secret.sealed.clone()))
    }
}

impl<T> Part for Secret<T> {
    fn into_part(self) -> Prop {
        Prop::Value(self.sealed)
    }
}

impl<T> Part for &Secret<T> {
    fn into_part(self) -> Prop {
        Prop::Value(self.sealed.clone())
    }
}

/// Props with their secrets opened, and which props held one, by whose key: what a
/// provider is given and how what it answers is sealed again.
struct Opened {
    props: Props,
    /// Each prop that held a secret: its name, the key, and the value as given (sealed
    /// whole or holding sealed parts).
    sealed: Vec<(String, Arc<Keyring>, Value)>,
}

fn open_props(props: &Props) -> Result<Opened, SecretError> {
    if !props.iter().any(|(_, v)| contains_sealed(v)) {
        return Ok(Opened { props: props.clone(), sealed: Vec::new() });
    }
    let mut sealed = Vec::new();
    let mut opened = Props::new();
    for (name, given) in props.iter() {
        let (value, by) = open_all(given)?;
        if let Some(keyring) = by {
            sealed.push((name.to_owned(), keyring, given.clone()));
        }
        opened.insert(name, value);
    }
    Ok(Opened { props: opened, sealed })
}

/// Seals again, in what a provider answers, each input that was given sealed, and each
/// output of its name or equal to its plaintext (a provider echoes inputs as outputs):
/// the cloud's view of a secret is as secret as the program's. An input read back equal
/// to what it was given gets back its given form, so a secret nested in a list or an
/// object stays nested and shows no drift; one read back different is sealed whole.
fn reseal(mut observed: Observed, given: &[&Opened]) -> Observed {
    for opened in given {
        for (name, keyring, as_given) in &opened.sealed {
            if let Some(value) = observed.inputs.get(name).filter(|v| !v.is_null()) {
                let sealed =
                    if opened.props.get(name) == Some(value) { as_given.clone() } else { keyring.seal(value) };
                observed.inputs.insert(name.as_str(), sealed);
            }
        }
    }
    for (name, keyring, _) in given.iter().flat_map(|g| &g.sealed) {
        let plaintexts: Vec<&Value> = given.iter().filter_map(|g| g.props.get(name)).collect();
        let echoes: Vec<String> = observed
            .outputs
            .iter()
            .filter(|(k, v)| !v.is_null() && !is_sealed(v) && (k == name || plaintexts.contains(v)))
            .map(|(k, _)| k.to_owned())
            .collect();
        for key in echoes {
            let sealed = keyring.seal(observed.outputs.get(&key).expect("listed above"));
            observed.outputs.insert(key, sealed);
        }
    }
    observed
}

/// A provider seen through secrets: it is given every input and output opened, and
/// what it reads back is sealed again where it was given sealed. The engine wraps every
/// provider so, and a provider never sees a sealed value.
#[derive(Debug)]
pub(crate) struct Opening(pub(crate) Arc<dyn Provider>);

impl Opening {
    fn open(urn: &Urn, op: ProviderOp, props: &Props) -> Result<Opened, ProviderError> {
        open_props(props).map_err(|e| ProviderError::unconfigured(e).at(urn, op))
    }
}

#[async_trait::async_trait]
impl Provider for Opening {
    fn package(&self) -> &str {
        self.0.package()
    }

    fn check(&self, urn: &Urn, decl: &Decl) -> Vec<CheckFailure> {
        self.0.check(urn, decl)
    }

    fn diff(&self, req: &DiffRequest<'_>) -> DiffResult {
        // Sealed values compare as their plaintexts do: no need to open them.
        self.0.diff(req)
    }

    async fn create(&self, urn: &Urn, inputs: &Props) -> Result<Observed, ProviderError> {
        let given = Self::open(urn, ProviderOp::Create, inputs)?;
        Ok(reseal(self.0.create(urn, &given.props).await?, &[&given]))
    }

    async fn read(&self, urn: &Urn, id: &str, inputs: &Props, outputs: &Props) -> Result<Option<Observed>, ProviderError> {
        let given = Self::open(urn, ProviderOp::Read, inputs)?;
        let outputs = Self::open(urn, ProviderOp::Read, outputs)?;
        Ok(self.0.read(urn, id, &given.props, &outputs.props).await?.map(|o| reseal(o, &[&given])))
    }

    async fn update(&self, urn: &Urn, id: &str, old: &Props, new: &Props) -> Result<Observed, ProviderError> {
        let old = Self::open(urn, ProviderOp::Update, old)?;
        let new = Self::open(urn, ProviderOp::Update, new)?;
        Ok(reseal(self.0.update(urn, id, &old.props, &new.props).await?, &[&new]))
    }

    async fn delete(&self, urn: &Urn, id: &str, inputs: &Props, outputs: &Props) -> Result<(), ProviderError> {
        let inputs = Self::open(urn, ProviderOp::Delete, inputs)?;
        let outputs = Self::open(urn, ProviderOp::Delete, outputs)?;
        self.0.delete(urn, id, &inputs.props, &outputs.props).await
    }

    async fn ready(&self) -> Result<(), ProviderError> {
        self.0.ready().await
    }

    fn landing_window(&self) -> std::time::Duration {
        self.0.landing_window()
    }

    async fn lookup(&self, urn: &Urn, created_with: &Props) -> Result<Vec<Observed>, ProviderError> {
        let given = Self::open(urn, ProviderOp::Lookup, created_with)?;
        Ok(self.0.lookup(urn, &given.props).await?.into_iter().map(|o| reseal(o, &[&given])).collect())
    }

    async fn lookup_created(&self, urn: &Urn, created_with: &Props) -> Result<Vec<Observed>, ProviderError> {
        let given = Self::open(urn, ProviderOp::Lookup, created_with)?;
        Ok(self.0.lookup_created(urn, &given.props).await?.into_iter().map(|o| reseal(o, &[&given])).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_sealed_value_names_its_key_hides_its_plaintext_and_opens() {
        let keyring = Keyring::from_key(&[1u8; 64]).unwrap();
        let sealed = keyring.seal(&json!({"token": "correct horse"}));
        let text = sealed.to_string();
        assert!(text.contains(keyring.id()) && !text.contains("correct horse"), "{text}");
        assert_eq!(open(&sealed).unwrap(), json!({"token": "correct horse"}));
        // Sealing twice is sealing once.
        assert_eq!(keyring.seal(&sealed), sealed);
    }

    #[test]
    fn another_key_seals_differently_and_a_changed_ciphertext_does_not_open() {
        let a = Keyring::from_key(&[2u8; 64]).unwrap();
        let b = Keyring::from_key(&[3u8; 64]).unwrap();
        assert_ne!(a.id(), b.id());
        assert_ne!(a.seal(&json!("x")), b.seal(&json!("x")));
        let Value::Object(mut map) = a.seal(&json!("x")) else { unreachable!() };
        let body = map[SEALED_KEY].as_str().unwrap().to_owned();
        let (id, cipher) = body.split_once(':').unwrap();
        let mut bytes = BASE64.decode(cipher).unwrap();
        bytes[0] ^= 1;
        map.insert(SEALED_KEY.to_owned(), Value::String(format!("{id}:{}", BASE64.encode(bytes))));
        assert!(matches!(open(&Value::Object(map)), Err(SecretError::Corrupt(_))));
    }

    #[test]
    fn a_value_sealed_with_an_unknown_key_says_which_key_and_how_to_load_it() {
        let sealed = json!({ SEALED_KEY: "0123456789ab:AAAA" });
        let err = open(&sealed).unwrap_err();
        assert_eq!(err, SecretError::NoKey { key_id: "0123456789ab".into() });
        assert!(err.to_string().contains("CAIRN_PASSPHRASE"), "{err}");
    }

    #[test]
    fn a_passphrase_and_its_salt_make_the_same_key_again() {
        let salt = Keyring::new_salt().unwrap();
        let a = Keyring::from_passphrase("open sesame", &salt).unwrap();
        let b = Keyring::from_passphrase("open sesame", &salt).unwrap();
        let c = Keyring::from_passphrase("open sesame!", &salt).unwrap();
        assert_eq!(a.id(), b.id());
        assert_ne!(a.id(), c.id());
        assert!(Keyring::from_passphrase("", &salt).is_err());
    }

    #[test]
    fn redact_and_open_all_reach_nested_secrets() {
        let keyring = Keyring::from_key(&[4u8; 64]).unwrap();
        let value = json!({"plain": 1, "list": ["a", keyring.seal(&json!("s3cret"))]});
        assert_eq!(redact(&value), json!({"plain": 1, "list": ["a", "[secret]"]}));
        let (opened, by) = open_all(&value).unwrap();
        assert_eq!(opened, json!({"plain": 1, "list": ["a", "s3cret"]}));
        assert_eq!(by.unwrap().id(), keyring.id());
        assert!(open_all(&json!([1])).unwrap().1.is_none());
    }

    #[test]
    fn a_secret_reads_only_sealed_and_prints_redacted() {
        let keyring = Keyring::from_key(&[5u8; 64]).unwrap();
        let secret = Secret::seal(&keyring, &"tok".to_owned());
        let body = secret.sealed()[SEALED_KEY].as_str().unwrap().to_owned();
        let from_config: Secret<String> = serde_json::from_value(json!({ "secure": body })).unwrap();
        assert_eq!(from_config, secret);
        assert_eq!(from_config.open().unwrap(), "tok");
        assert_eq!(format!("{secret:?}"), "[secret]");
        let err = serde_json::from_value::<Secret<String>>(json!("tok")).err().unwrap();
        assert!(err.to_string().contains("config set --secret"), "{err}");
    }
}
