//! ISO 3166-1 alpha-2 country codes.
//!
//! A site's country is the fact the fence trusts (later attested by the node's certificate), so a code is
//! only accepted when it is one of the officially assigned alpha-2 codes: a typo such as `UK` for `GB`
//! must be a configuration error, not a country that silently belongs to no jurisdiction.

use std::fmt;

use serde::{Serialize, Serializer};

/// An officially assigned ISO 3166-1 alpha-2 code, upper case. Only [`Country::parse`] makes one.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Country([u8; 2]);

/// Every officially assigned ISO 3166-1 alpha-2 code, sorted so lookups can binary-search.
const ASSIGNED: [&str; 249] = [
    "AD", "AE", "AF", "AG", "AI", "AL", "AM", "AO", "AQ", "AR", "AS", "AT", "AU", "AW", "AX", "AZ", //
    "BA", "BB", "BD", "BE", "BF", "BG", "BH", "BI", "BJ", "BL", "BM", "BN", "BO", "BQ", "BR", "BS", //
    "BT", "BV", "BW", "BY", "BZ", "CA", "CC", "CD", "CF", "CG", "CH", "CI", "CK", "CL", "CM", "CN", //
    "CO", "CR", "CU", "CV", "CW", "CX", "CY", "CZ", "DE", "DJ", "DK", "DM", "DO", "DZ", "EC", "EE", //
    "EG", "EH", "ER", "ES", "ET", "FI", "FJ", "FK", "FM", "FO", "FR", "GA", "GB", "GD", "GE", "GF", //
    "GG", "GH", "GI", "GL", "GM", "GN", "GP", "GQ", "GR", "GS", "GT", "GU", "GW", "GY", "HK", "HM", //
    "HN", "HR", "HT", "HU", "ID", "IE", "IL", "IM", "IN", "IO", "IQ", "IR", "IS", "IT", "JE", "JM", //
    "JO", "JP", "KE", "KG", "KH", "KI", "KM", "KN", "KP", "KR", "KW", "KY", "KZ", "LA", "LB", "LC", //
    "LI", "LK", "LR", "LS", "LT", "LU", "LV", "LY", "MA", "MC", "MD", "ME", "MF", "MG", "MH", "MK", //
    "ML", "MM", "MN", "MO", "MP", "MQ", "MR", "MS", "MT", "MU", "MV", "MW", "MX", "MY", "MZ", "NA", //
    "NC", "NE", "NF", "NG", "NI", "NL", "NO", "NP", "NR", "NU", "NZ", "OM", "PA", "PE", "PF", "PG", //
    "PH", "PK", "PL", "PM", "PN", "PR", "PS", "PT", "PW", "PY", "QA", "RE", "RO", "RS", "RU", "RW", //
    "SA", "SB", "SC", "SD", "SE", "SG", "SH", "SI", "SJ", "SK", "SL", "SM", "SN", "SO", "SR", "SS", //
    "ST", "SV", "SX", "SY", "SZ", "TC", "TD", "TF", "TG", "TH", "TJ", "TK", "TL", "TM", "TN", "TO", //
    "TR", "TT", "TV", "TW", "TZ", "UA", "UG", "UM", "US", "UY", "UZ", "VA", "VC", "VE", "VG", "VI", //
    "VN", "VU", "WF", "WS", "YE", "YT", "ZA", "ZM", "ZW",
];

/// Why a string is not a country code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CountryError {
    #[error("`{0}` is not a two-letter ISO 3166-1 alpha-2 code")]
    Malformed(String),
    #[error("`{given}` must be upper case: write `{upper}`")]
    LowerCase { given: String, upper: String },
    #[error("`{0}` is not an assigned ISO 3166-1 alpha-2 country code{hint}", hint = hint_for(.0))]
    Unassigned(String),
}

fn hint_for(code: &str) -> &'static str {
    match code {
        "UK" => " (the United Kingdom is `GB`)",
        "EL" => " (Greece is `GR` in ISO 3166-1; `EL` is only the EU's own abbreviation)",
        _ => "",
    }
}

impl Country {
    pub fn parse(text: &str) -> Result<Country, CountryError> {
        let bytes = text.as_bytes();
        if bytes.len() != 2 || !bytes.iter().all(u8::is_ascii_alphabetic) {
            return Err(CountryError::Malformed(text.to_string()));
        }
        if !bytes.iter().all(u8::is_ascii_uppercase) {
            return Err(CountryError::LowerCase {
                given: text.to_string(),
                upper: text.to_ascii_uppercase(),
            });
        }
        if ASSIGNED.binary_search(&text).is_err() {
            return Err(CountryError::Unassigned(text.to_string()));
        }
        Ok(Country([bytes[0], bytes[1]]))
    }

    /// For built-in tables whose codes are known good; a bad literal is a programming error.
    pub(crate) fn known(code: &str) -> Country {
        Country::parse(code).unwrap_or_else(|error| panic!("built-in country table is wrong: {error}"))
    }

    pub fn as_str(&self) -> &str {
        // Only `parse` builds a Country, and it accepts ASCII upper-case letters only.
        std::str::from_utf8(&self.0).expect("country codes are ASCII")
    }
}

impl fmt::Display for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Country {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_and_unique_so_binary_search_is_sound() {
        assert!(
            ASSIGNED.windows(2).all(|pair| pair[0] < pair[1]),
            "ASSIGNED must be strictly sorted"
        );
    }

    #[test]
    fn accepts_assigned_codes() {
        for code in ["IE", "NO", "DE", "FR", "US", "GB", "CH", "IS", "LI"] {
            assert_eq!(Country::parse(code).unwrap().as_str(), code);
        }
    }

    #[test]
    fn rejects_unassigned_malformed_and_lower_case() {
        assert!(matches!(Country::parse("UK"), Err(CountryError::Unassigned(_))));
        assert!(Country::parse("UK").unwrap_err().to_string().contains("`GB`"));
        assert!(matches!(Country::parse("XX"), Err(CountryError::Unassigned(_))));
        assert!(matches!(Country::parse("IRL"), Err(CountryError::Malformed(_))));
        assert!(matches!(Country::parse("I1"), Err(CountryError::Malformed(_))));
        assert!(matches!(Country::parse(""), Err(CountryError::Malformed(_))));
        assert!(matches!(
            Country::parse("ie"),
            Err(CountryError::LowerCase { .. })
        ));
        assert!(matches!(Country::parse("É1"), Err(CountryError::Malformed(_))));
    }
}
