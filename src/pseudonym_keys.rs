//! Pseudonym key files: made by `domicile certs pseudonym-key`, read by a node at start.
//!
//! A key must exist only on nodes inside its jurisdiction (`raft::pseudonym`): a node refuses to start
//! with a key for a jurisdiction its site is not in, for one no group is fenced to, or with two keys for
//! one jurisdiction. The format (one line, versioned, checksummed) is `raft::pseudonym`'s.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use placement::{Country, TopologyFile};
use raft::pseudonym::{KEY_BYTES, KEY_FILE_BYTES_MAX, PseudonymKey, PseudonymKeys};

/// Reads the node's key files; a node at a site in `country`.
pub fn load(paths: &[PathBuf], file: &TopologyFile, country: Country) -> anyhow::Result<PseudonymKeys> {
    let mut keys = PseudonymKeys::default();
    for path in paths {
        let key = read(path)?;
        let Some(jurisdiction) = file
            .policies
            .values()
            .map(|policy| &policy.jurisdiction)
            .find(|jurisdiction| jurisdiction.name() == key.jurisdiction())
        else {
            bail!(
                "{}: a pseudonym key for `{}`, which no group of the topology is fenced to",
                path.display(),
                key.jurisdiction()
            );
        };
        if !jurisdiction.contains(country) {
            bail!(
                "{}: a pseudonym key for `{}` on a node in {country}, outside it: the key may exist only on \
                 nodes inside its jurisdiction; remove it from this node's pseudonym_keys (and its disk)",
                path.display(),
                key.jurisdiction()
            );
        }
        let name = key.jurisdiction().to_string();
        keys.insert(key)
            .map_err(|reason| anyhow::anyhow!("{}: {reason}", path.display()))?;
        tracing::info!(jurisdiction = %name, file = %path.display(), "pseudonym key loaded");
    }
    Ok(keys)
}

fn read(path: &Path) -> anyhow::Result<PseudonymKey> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("can't open the pseudonym key {}", path.display()))?;
    let mut text = String::new();
    // Bounded before it is read whole: a key file is one short line.
    file.take(KEY_FILE_BYTES_MAX + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("can't read the pseudonym key {}", path.display()))?;
    if text.len() as u64 > KEY_FILE_BYTES_MAX {
        bail!(
            "{}: too long for a pseudonym key ({KEY_FILE_BYTES_MAX} bytes at most)",
            path.display()
        );
    }
    PseudonymKey::parse_file(&text).with_context(|| format!("{}", path.display()))
}

/// Writes a new key for `jurisdiction` (mode 0600), from the operating system's randomness.
pub fn generate(path: &Path, jurisdiction: &str, id: u32) -> anyhow::Result<()> {
    let mut secret = [0u8; KEY_BYTES];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
        .map_err(|_| anyhow::anyhow!("the operating system gave no randomness for the key"))?;
    let text = PseudonymKey::encode_file(jurisdiction, id, &secret);
    crate::certs_cli::write_private(path, &text).with_context(|| format!("can't write {}", path.display()))
}
