//! Property: whatever the record and whichever fields are personal, an outside reader never sees a personal
//! value in clear, and sees every other field unchanged.
//!
//! Personal values are drawn from upper-case letters and `+`, the other fields' from lower-case letters and
//! pseudonyms are `psn:<id>:<lower-case hex>`: a personal value found anywhere in the output is a leak, not
//! a coincidence. Pinned like every randomised test in CI (docs/testing.md).

use std::collections::{BTreeMap, BTreeSet};

use placement::PersonalFields;
use proptest::prelude::*;
use proptest::test_runner::{RngAlgorithm, RngSeed};
use raft::pseudonym::{KEY_BYTES, PseudonymKey};

const PINNED_SEED: u64 = 18;

fn pinned(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        rng_algorithm: RngAlgorithm::ChaCha,
        rng_seed: RngSeed::Fixed(PINNED_SEED),
        ..ProptestConfig::default()
    }
}

/// Field names, values by whether the field is personal, and the personal set.
fn record() -> impl Strategy<Value = (BTreeMap<String, String>, BTreeSet<String>)> {
    prop::collection::btree_map("[a-z_]{1,8}", any::<bool>(), 0..8).prop_flat_map(|fields| {
        let personal: BTreeSet<String> = fields
            .iter()
            .filter(|(_, personal)| **personal)
            .map(|(name, _)| name.clone())
            .collect();
        let values: Vec<BoxedStrategy<(String, String)>> = fields
            .into_keys()
            .map(|name| {
                let value = if personal.contains(&name) {
                    "[A-Z+]{6,24}".boxed()
                } else {
                    "[a-z ]{0,24}".boxed()
                };
                value.prop_map(move |value| (name.clone(), value)).boxed()
            })
            .collect();
        (values, Just(personal)).prop_map(|(values, personal)| (values.into_iter().collect(), personal))
    })
}

proptest! {
    #![proptest_config(pinned(512))]

    #[test]
    fn an_outside_reader_never_sees_a_personal_value(
        (record, personal) in record(),
        // Fields declared personal that this record lacks: they must change nothing.
        absent in prop::collection::btree_set("[0-9]{1,4}", 0..3),
        secret in any::<[u8; KEY_BYTES]>(),
    ) {
        let key = PseudonymKey::new("EU", 1, &secret);
        let declared = PersonalFields { fields: personal.iter().cloned().chain(absent).collect() };
        let value = serde_json::to_vec(&record).unwrap();
        let (seen, replaced) = key.pseudonymise(&value, &declared);
        let text = String::from_utf8(seen).unwrap();
        for (field, clear) in &record {
            if personal.contains(field) {
                prop_assert!(!text.contains(clear.as_str()), "{field}'s value {clear} leaked: {text}");
            }
        }
        let object: BTreeMap<String, String> = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(object.len(), record.len());
        prop_assert_eq!(replaced, personal.len() as u64);
        for (field, clear) in &record {
            if personal.contains(field) {
                let expected = key.pseudonym(serde_json::to_string(clear).unwrap().as_bytes());
                prop_assert_eq!(&object[field], &expected);
            } else {
                prop_assert_eq!(&object[field], clear);
            }
        }
    }

    #[test]
    fn a_value_that_is_not_an_object_never_leaves_in_clear(
        value in prop::collection::vec(any::<u8>(), 0..64),
        secret in any::<[u8; KEY_BYTES]>(),
    ) {
        prop_assume!(serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&value).is_err());
        let key = PseudonymKey::new("EU", 1, &secret);
        let declared = PersonalFields { fields: ["phone".to_string()].into() };
        let (seen, replaced) = key.pseudonymise(&value, &declared);
        prop_assert_eq!(replaced, 1);
        prop_assert_eq!(seen, serde_json::to_vec(&key.pseudonym(&value)).unwrap());
    }
}
