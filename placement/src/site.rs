//! Sites and the nodes they hold.
//!
//! A site is a failure domain with a legal address: a name, the ISO country it stands in, optional region and
//! zone labels for wider and narrower failure domains, and the nodes placed there. The country is the one fact
//! about a node that the fence trusts, which is why, on the wire, it comes from the node's certificate and not
//! from anything the node says about itself.

use std::fmt;

use serde::Serialize;

use crate::country::Country;

/// The most bytes in a label: a site or service name, as it also appears in certificates and identities.
pub const LABEL_BYTES_MAX: usize = 63;

/// Whether `name` is a label: 1 to [`LABEL_BYTES_MAX`] of a-z, 0-9 and `-` — DNS-label-like, so an identity
/// URI that carries it needs no escaping and parses one way only. One rule for the topology file and for
/// certificates (`raft::identity`).
pub fn is_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= LABEL_BYTES_MAX
        && name
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
}

/// A node's id: the Raft node id, unique in the cluster.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&format!("n{}", self.0))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for NodeId {
    type Err = String;

    /// Accepts `7` and `n7`.
    fn from_str(text: &str) -> Result<NodeId, String> {
        let digits = text.trim().strip_prefix('n').unwrap_or(text.trim());
        digits
            .parse::<u64>()
            .map(NodeId)
            .map_err(|_| format!("`{text}` is not a node id (write `7` or `n7`)"))
    }
}

#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct SiteName(pub String);

impl fmt::Display for SiteName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl fmt::Debug for SiteName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    pub name: SiteName,
    pub country: Country,
    pub region: Option<String>,
    pub zone: Option<String>,
    pub nodes: Vec<NodeId>,
}

impl Site {
    /// The region used for failure-domain spreading. A site without a region label is a region of its own:
    /// assuming two unlabelled sites share a region would understate how independent they are, assuming
    /// they don't can only overstate it, so labels are what makes the rule strict.
    pub fn failure_region(&self) -> &str {
        self.region.as_deref().unwrap_or(&self.name.0)
    }
}
