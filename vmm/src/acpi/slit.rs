//! SLIT: distances between guest NUMA nodes (10 local, 20 remote, as Linux assumes without a
//! SLIT).

use acpi_tables::slit::SLIT;

use super::{bytes_of, OEM_ID, OEM_REVISION, OEM_TABLE_ID};

/// Distance of a node to itself.
pub const LOCAL_DISTANCE: u8 = 10;
/// Distance between two different nodes.
pub const REMOTE_DISTANCE: u8 = 20;

/// The SLIT for `nodes` nodes.
pub fn slit(nodes: u32) -> Vec<u8> {
    let mut s = SLIT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION, nodes);
    for a in 0..nodes as usize {
        for b in (a + 1)..nodes as usize {
            s.set_distance(a, b, REMOTE_DISTANCE);
        }
    }
    bytes_of(&s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slit_matrix() {
        let s = slit(3);
        assert_eq!(super::super::checksum(&s), 0);
        assert_eq!(u64::from_le_bytes(s[36..44].try_into().expect("8")), 3);
        assert_eq!(&s[44..53], &[10, 20, 20, 20, 10, 20, 20, 20, 10]);
    }
}
