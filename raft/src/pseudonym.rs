//! Pseudonymised reads: what a reader outside a jurisdiction sees of its records' personal fields.
//!
//! A jurisdiction's topology may declare fields of its records personal (`[[personal_data]]`). A reader
//! whose certificate places it outside the jurisdiction — or attests no country at all — gets each of those
//! fields replaced by a keyed pseudonym: HMAC-SHA-256, under a key that only nodes inside the jurisdiction
//! hold, of the field's value. The same value gives the same pseudonym on every node and after every
//! restart, so an outside service can still count and join; without the key the value can't be recovered
//! or confirmed by guessing.
//!
//! ```text
//! {"name":"Ana","phone":"+353 1 555 0100"}   read from inside
//! {"name":"Ana","phone":"psn:1:9c0f…"}        read from outside (32 hex digits: 128 of the 256 bits)
//! ```
//!
//! Records are JSON objects and personal fields are top-level keys. A value that is not a JSON object can't
//! be told apart into fields, so an outside reader gets it replaced whole by its pseudonym (a JSON string):
//! when in doubt, nothing leaves in clear.
//!
//! The key file is one line, versioned and checksummed like every other record the node reads from disk:
//!
//! ```text
//! domicile-pseudonym-key v1 jurisdiction=EU id=1 key=<64 hex digits> crc32=<8 hex digits>
//! ```
//!
//! `id` is in every pseudonym, so a rotated key's pseudonyms are told apart from the old ones (they differ:
//! joins across a rotation do not match, which is the point of rotating).

use std::collections::BTreeMap;

use placement::PersonalFields;
use ring::hmac;

const MAGIC: &str = "domicile-pseudonym-key v1";
pub const KEY_BYTES: usize = 32;
/// A key file is one short line; anything longer is not one (bounded before it is read whole).
pub const KEY_FILE_BYTES_MAX: u64 = 512;
/// Pseudonyms carry 128 bits of the MAC: collisions are out of reach for any realistic number of values.
const PSEUDONYM_BYTES: usize = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyFileError {
    #[error("not a Domicile pseudonym key (expected a line starting `{MAGIC}`)")]
    NotAKey,
    #[error("malformed pseudonym key: {0}")]
    Malformed(String),
    #[error("the pseudonym key is damaged: its checksum is {stored:08x}, its contents give {computed:08x}")]
    Checksum { stored: u32, computed: u32 },
}

/// One jurisdiction's pseudonym key.
pub struct PseudonymKey {
    jurisdiction: String,
    id: u32,
    key: hmac::Key,
}

impl std::fmt::Debug for PseudonymKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key itself.
        f.debug_struct("PseudonymKey")
            .field("jurisdiction", &self.jurisdiction)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl PseudonymKey {
    pub fn new(jurisdiction: &str, id: u32, secret: &[u8; KEY_BYTES]) -> PseudonymKey {
        PseudonymKey {
            jurisdiction: jurisdiction.to_string(),
            id,
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    pub fn jurisdiction(&self) -> &str {
        &self.jurisdiction
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    /// The key file's line for `secret` (the CLI draws it from the operating system's randomness).
    pub fn encode_file(jurisdiction: &str, id: u32, secret: &[u8; KEY_BYTES]) -> String {
        let body = format!("{MAGIC} jurisdiction={jurisdiction} id={id} key={}", hex(secret));
        let crc = crc32fast::hash(body.as_bytes());
        format!("{body} crc32={crc:08x}\n")
    }

    pub fn parse_file(text: &str) -> Result<PseudonymKey, KeyFileError> {
        let line = text.strip_suffix('\n').unwrap_or(text);
        if !line.starts_with(MAGIC) {
            return Err(KeyFileError::NotAKey);
        }
        let malformed = |what: &str| KeyFileError::Malformed(what.to_string());
        let (body, crc) = line.rsplit_once(" crc32=").ok_or_else(|| malformed("no crc32"))?;
        let stored = (crc.len() == 8)
            .then(|| u32::from_str_radix(crc, 16).ok())
            .flatten()
            .ok_or_else(|| malformed("crc32 is not 8 hex digits"))?;
        let computed = crc32fast::hash(body.as_bytes());
        if stored != computed {
            return Err(KeyFileError::Checksum { stored, computed });
        }
        let fields: Vec<&str> = body[MAGIC.len()..].split(' ').collect();
        let ["", jurisdiction, id, key] = fields.as_slice() else {
            return Err(malformed("expected jurisdiction=, id= and key="));
        };
        let jurisdiction = jurisdiction
            .strip_prefix("jurisdiction=")
            .filter(|name| !name.is_empty())
            .ok_or_else(|| malformed("no jurisdiction="))?;
        let id = id
            .strip_prefix("id=")
            .filter(|id| id.bytes().all(|byte| byte.is_ascii_digit()))
            .and_then(|id| id.parse::<u32>().ok())
            .ok_or_else(|| malformed("id= is not a number"))?;
        let secret = key
            .strip_prefix("key=")
            .and_then(unhex)
            .ok_or_else(|| malformed("key= is not 64 hex digits"))?;
        Ok(PseudonymKey::new(jurisdiction, id, &secret))
    }

    /// The pseudonym of one value: `psn:<key id>:<32 hex digits>`.
    pub fn pseudonym(&self, value: &[u8]) -> String {
        let tag = hmac::sign(&self.key, value);
        format!("psn:{}:{}", self.id, hex(&tag.as_ref()[..PSEUDONYM_BYTES]))
    }

    /// `value` as an outside reader may see it: each personal field of a JSON object replaced by the
    /// pseudonym of its value (as compact JSON), or the whole value replaced if it is not a JSON object.
    /// Returns the new value and how many fields were replaced (a whole value counts as one).
    pub fn pseudonymise(&self, value: &[u8], personal: &PersonalFields) -> (Vec<u8>, u64) {
        let whole = || {
            let pseudonym = serde_json::Value::String(self.pseudonym(value));
            (pseudonym.to_string().into_bytes(), 1)
        };
        // Parsed into a map: duplicate keys collapse into one (the last), which is then replaced, and the
        // object is written anew, so nothing of the original text survives unexamined.
        let Ok(mut object) = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(value)
        else {
            return whole();
        };
        let mut replaced = 0;
        for field in &personal.fields {
            if let Some(entry) = object.get_mut(field) {
                let clear = serde_json::to_vec(entry).expect("a parsed JSON value serialises");
                *entry = serde_json::Value::String(self.pseudonym(&clear));
                replaced += 1;
            }
        }
        match serde_json::to_vec(&object) {
            Ok(bytes) => (bytes, replaced),
            Err(_) => whole(),
        }
    }
}

/// The pseudonym keys a node holds, by jurisdiction name.
#[derive(Debug, Default)]
pub struct PseudonymKeys {
    keys: BTreeMap<String, PseudonymKey>,
}

impl PseudonymKeys {
    /// Adds `key`; a second key for the same jurisdiction is refused (which one would pseudonyms use?).
    pub fn insert(&mut self, key: PseudonymKey) -> Result<(), String> {
        if self.keys.contains_key(key.jurisdiction()) {
            return Err(format!("two pseudonym keys for `{}`", key.jurisdiction()));
        }
        self.keys.insert(key.jurisdiction.clone(), key);
        Ok(())
    }

    pub fn get(&self, jurisdiction: &str) -> Option<&PseudonymKey> {
        self.keys.get(jurisdiction)
    }

    pub fn iter(&self) -> impl Iterator<Item = &PseudonymKey> {
        self.keys.values()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn unhex(text: &str) -> Option<[u8; KEY_BYTES]> {
    if text.len() != KEY_BYTES * 2 || !text.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return None;
    }
    let mut secret = [0; KEY_BYTES];
    for (index, byte) in secret.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[index * 2..index * 2 + 2], 16).ok()?;
    }
    Some(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> PseudonymKey {
        PseudonymKey::new("EU", 1, &[7; KEY_BYTES])
    }

    fn personal(fields: &[&str]) -> PersonalFields {
        PersonalFields {
            fields: fields.iter().map(|field| field.to_string()).collect(),
        }
    }

    #[test]
    fn key_files_round_trip_and_damage_is_named() {
        let text = PseudonymKey::encode_file("EU", 3, &[0xab; KEY_BYTES]);
        let parsed = PseudonymKey::parse_file(&text).unwrap();
        assert_eq!((parsed.jurisdiction(), parsed.id()), ("EU", 3));
        assert_eq!(
            parsed.pseudonym(b"x"),
            PseudonymKey::new("EU", 3, &[0xab; KEY_BYTES]).pseudonym(b"x")
        );
        let flipped = text.replacen("key=ab", "key=ac", 1);
        assert!(matches!(
            PseudonymKey::parse_file(&flipped),
            Err(KeyFileError::Checksum { .. })
        ));
        assert!(matches!(
            PseudonymKey::parse_file("hello"),
            Err(KeyFileError::NotAKey)
        ));
        let short =
            PseudonymKey::encode_file("EU", 3, &[0xab; KEY_BYTES]).replacen(&"ab".repeat(32), "abab", 1);
        assert!(PseudonymKey::parse_file(&short).is_err());
    }

    #[test]
    fn personal_fields_are_replaced_and_the_rest_kept() {
        let (value, replaced) = key().pseudonymise(
            br#"{"name":"Ana","phone":"+353 1 555 0100","ip":"192.0.2.7","plan":"pro"}"#,
            &personal(&["phone", "ip", "email"]),
        );
        assert_eq!(replaced, 2);
        let object: serde_json::Value = serde_json::from_slice(&value).unwrap();
        assert_eq!(object["name"], "Ana");
        assert_eq!(object["plan"], "pro");
        assert_eq!(object["phone"], key().pseudonym(br#""+353 1 555 0100""#));
        assert!(object["ip"].as_str().unwrap().starts_with("psn:1:"));
        assert!(!String::from_utf8(value).unwrap().contains("555"));
    }

    #[test]
    fn a_value_that_is_not_an_object_is_replaced_whole() {
        for value in [
            &b"+353 1 555 0100"[..],
            b"[\"+353\"]",
            b"\"+353\"",
            b"{\"phone\":",
            b"\xff\xfe",
        ] {
            let (seen, replaced) = key().pseudonymise(value, &personal(&["phone"]));
            assert_eq!(replaced, 1);
            assert_eq!(seen, serde_json::to_vec(&key().pseudonym(value)).unwrap());
        }
    }

    #[test]
    fn duplicate_keys_leave_no_value_in_clear() {
        let (value, _) = key().pseudonymise(
            br#"{"phone":"+353 1 555 0100","phone":"+47 555 0199"}"#,
            &personal(&["phone"]),
        );
        let text = String::from_utf8(value).unwrap();
        assert!(!text.contains("555"), "{text}");
    }

    #[test]
    fn pseudonyms_depend_on_the_key_and_its_id() {
        let other = PseudonymKey::new("EU", 1, &[8; KEY_BYTES]);
        let rotated = PseudonymKey::new("EU", 2, &[7; KEY_BYTES]);
        assert_eq!(key().pseudonym(b"v"), key().pseudonym(b"v"));
        assert_ne!(key().pseudonym(b"v"), other.pseudonym(b"v"));
        assert_ne!(key().pseudonym(b"v"), rotated.pseudonym(b"v"));
        assert_ne!(key().pseudonym(b"v"), key().pseudonym(b"w"));
    }
}
