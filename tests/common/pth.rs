//! `.pth` surgery: byte edits of the fixture archives (a zip of a pickle and storages), with
//! the CRC-32 recomputed where an edit must reach the code behind the CRC check.

use super::harness::crc32;
use super::read_fixture;

/// Offset of the first occurrence of `needle` in `hay` (panics if there is none).
pub fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{:?} not found", String::from_utf8_lossy(needle)))
}

/// Offset of the last occurrence of `needle` in `hay` (panics if there is none).
pub fn rfind(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len())
        .rposition(|w| w == needle)
        .unwrap_or_else(|| panic!("{:?} not found", String::from_utf8_lossy(needle)))
}

/// Offset of the central-directory entry of `name`.
pub fn central_entry(zip: &[u8], name: &str) -> usize {
    let mut pat = Vec::new();
    pat.extend_from_slice(name.as_bytes());
    let mut at = 0;
    loop {
        let i = at + find(&zip[at..], b"PK\x01\x02");
        if zip[i + 46..].starts_with(&pat) {
            return i;
        }
        at = i + 4;
    }
}

/// Offset of the local header of `name`.
pub fn local_entry(zip: &[u8], name: &str) -> usize {
    let mut at = 0;
    loop {
        let i = at + find(&zip[at..], b"PK\x03\x04");
        if zip[i + 30..].starts_with(name.as_bytes()) {
            return i;
        }
        at = i + 4;
    }
}

/// Recomputes the CRC-32 that the central directory records for `name`, so that an edit
/// reaches the code behind the CRC check.
pub fn fix_crc(zip: &mut [u8], name: &str) {
    let cd = central_entry(zip, name);
    let size = u32::from_le_bytes(zip[cd + 20..cd + 24].try_into().expect("4 bytes")) as usize;
    let local = u32::from_le_bytes(zip[cd + 42..cd + 46].try_into().expect("4 bytes")) as usize;
    let start = local_data(zip, local);
    let crc = crc32(&zip[start..start + size]);
    zip[cd + 16..cd + 20].copy_from_slice(&crc.to_le_bytes());
}

/// Where the data of the entry whose local header is at `local` start.
pub fn local_data(zip: &[u8], local: usize) -> usize {
    let n = u16::from_le_bytes([zip[local + 26], zip[local + 27]]) as usize;
    let e = u16::from_le_bytes([zip[local + 28], zip[local + 29]]) as usize;
    local + 30 + n + e
}

/// The fixture with `from` replaced by `to` (same length) at its first occurrence inside
/// `data.pkl` (the first entry, so the first occurrence in the file), CRC updated.
pub fn pkl_edit(fixture_name: &str, from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let mut b = read_fixture(fixture_name);
    let start = find(&b, b"\x80\x02}");
    let i = start + find(&b[start..], from);
    b[i..i + to.len()].copy_from_slice(to);
    let archive = fixture_name.trim_end_matches(".pth");
    fix_crc(&mut b, &format!("{archive}/data.pkl"));
    b
}

/// `v` as the 4 little-endian bytes of a zip field.
pub fn le32(v: u32) -> [u8; 4] {
    v.to_le_bytes()
}
