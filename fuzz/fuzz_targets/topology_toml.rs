//! The topology file (`placement::topology_file`): TOML an operator writes, parsed into sites,
//! jurisdictions, group policies and current memberships with line-accurate errors; and a current-
//! placement file parsed against it. Errors must be values, with a position inside the text.
//!
//! Input: pieces; the first is the topology, the second (if any) a current-placement file.
#![no_main]

use domicile_fuzz::{pieces, split_mode};
use libfuzzer_sys::fuzz_target;
use placement::topology_file::TopologyFile;

fuzz_target!(|data: &[u8]| {
    let Some((_, bytes)) = split_mode(data) else {
        return;
    };
    let pieces = pieces(bytes);
    let Some(topology) = pieces.first().and_then(|piece| std::str::from_utf8(piece).ok()) else {
        return;
    };
    match TopologyFile::parse(topology) {
        Ok(file) => {
            if let Some(current) = pieces.get(1).and_then(|piece| std::str::from_utf8(piece).ok())
                && let Err(error) = file.parse_current(current)
            {
                let _ = error.to_string();
            }
        }
        Err(error) => {
            let _ = error.to_string();
        }
    }
});
