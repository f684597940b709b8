//! A minimal reader for the zip archives that `torch.save` writes.
//!
//! Only what a `.pth` file needs: the central directory (with its zip64 extensions, which torch
//! always writes) and the position of each *stored* (uncompressed) entry's bytes, so that the
//! tensors can be read in place from the memory-mapped file. Every offset and length read from
//! the file is checked against the file's size before use, and nothing is allocated in
//! proportion to a number the file claims: the entry list grows only with entries actually
//! present in the central directory.

use anyhow::{bail, Result};
use std::collections::HashMap;

/// One entry of the archive: where its bytes are in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Offset of the first byte of the entry's data in the archive.
    pub start: usize,
    /// Stored length in bytes.
    pub len: usize,
    /// Compression method (0 = stored).
    pub method: u16,
    /// CRC-32 of the data, from the central directory.
    pub crc: u32,
}

/// The entries of an archive, by name.
#[derive(Debug, Default)]
pub struct Archive {
    /// Entry names in central-directory order.
    pub names: Vec<String>,
    pub entries: HashMap<String, Entry>,
}

impl Archive {
    /// The data of a stored entry, as a slice of the archive.
    pub fn data<'a>(&self, bytes: &'a [u8], name: &str) -> Result<&'a [u8]> {
        let Some(e) = self.entries.get(name) else {
            bail!("the archive has no entry {name}");
        };
        if e.method != 0 {
            bail!(
                "archive entry {name} is compressed (method {}); torch.save writes stored entries: re-save the checkpoint uncompressed",
                e.method
            );
        }
        // `parse` checked the range against the archive's size.
        bytes
            .get(e.start..e.start + e.len)
            .ok_or_else(|| anyhow::anyhow!("archive entry {name} lies past the end of the file"))
    }
}

impl Entry {
    /// Checks the entry's data (`bytes` is the archive) against its CRC-32.
    pub fn verify(&self, bytes: &[u8], name: &str) -> Result<()> {
        match bytes.get(self.start..self.start + self.len) {
            Some(d) => self.check(crc32(d), name),
            None => bail!("archive entry {name} lies past the end of the file"),
        }
    }

    /// Checks `crc`, the CRC-32 of the entry's data computed elsewhere, against its own.
    pub fn check(&self, crc: u32, name: &str) -> Result<()> {
        if crc != self.crc {
            bail!("archive entry {name} is damaged (its CRC-32 does not match)");
        }
        Ok(())
    }
}

/// CRC-32 (the IEEE polynomial zip uses), by `crc32fast` (carry-less multiplication where the
/// CPU has it: a 1.5B checkpoint's 3 GB took 1.3 s of a first start with our slicing-by-8
/// tables, as long as converting them).
pub fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

const EOCD_SIG: u32 = 0x0605_4b50;
const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;
const ZIP64_EOCD_SIG: u32 = 0x0606_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const LOCAL_SIG: u32 = 0x0403_4b50;
const EOCD_LEN: usize = 22;
const CENTRAL_LEN: usize = 46;
const LOCAL_LEN: usize = 30;

fn u16_at(b: &[u8], at: usize) -> Result<u16> {
    match b.get(at..at.saturating_add(2)) {
        Some(s) => Ok(u16::from_le_bytes([s[0], s[1]])),
        None => bail!("zip structure at byte {at} lies past the end of the file"),
    }
}

fn u32_at(b: &[u8], at: usize) -> Result<u32> {
    match b.get(at..at.saturating_add(4)) {
        Some(s) => Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]])),
        None => bail!("zip structure at byte {at} lies past the end of the file"),
    }
}

fn u64_at(b: &[u8], at: usize) -> Result<u64> {
    match b.get(at..at.saturating_add(8)) {
        Some(s) => {
            let mut a = [0u8; 8];
            a.copy_from_slice(s);
            Ok(u64::from_le_bytes(a))
        }
        None => bail!("zip structure at byte {at} lies past the end of the file"),
    }
}

/// A file offset or length read from the archive, as `usize`, no larger than the archive.
fn within(v: u64, len: usize, what: &str) -> Result<usize> {
    match usize::try_from(v) {
        Ok(v) if v <= len => Ok(v),
        _ => bail!("zip {what} ({v}) points past the end of the file ({len} bytes): the archive is truncated or damaged"),
    }
}

/// Finds the end-of-central-directory record: the last one in the final 64 KiB + 22 bytes.
fn find_eocd(b: &[u8]) -> Option<usize> {
    if b.len() < EOCD_LEN {
        return None;
    }
    let last = b.len() - EOCD_LEN;
    let first = last.saturating_sub(u16::MAX as usize);
    (first..=last)
        .rev()
        .find(|&i| b[i..i + 4] == EOCD_SIG.to_le_bytes())
}

/// Reads the central directory of the archive in `b`.
pub fn parse(b: &[u8]) -> Result<Archive> {
    let Some(eocd) = find_eocd(b) else {
        bail!("zip end-of-central-directory record not found: the archive is truncated or not a zip file");
    };
    let mut count = u64::from(u16_at(b, eocd + 10)?);
    let mut cd_size = u64::from(u32_at(b, eocd + 12)?);
    let mut cd_offset = u64::from(u32_at(b, eocd + 16)?);
    if count == 0xffff || cd_size == 0xffff_ffff || cd_offset == 0xffff_ffff {
        // zip64: the locator sits just before the end record and points at the zip64 record.
        let Some(loc) = eocd.checked_sub(20) else {
            bail!("zip64 archive without its zip64 locator: the archive is damaged");
        };
        if u32_at(b, loc)? != ZIP64_LOCATOR_SIG {
            bail!("zip64 archive without its zip64 locator: the archive is damaged");
        }
        let rec = within(u64_at(b, loc + 8)?, b.len(), "zip64 record offset")?;
        if u32_at(b, rec)? != ZIP64_EOCD_SIG {
            bail!("zip64 end-of-central-directory record not found where its locator points: the archive is damaged");
        }
        count = u64_at(b, rec + 32)?;
        cd_size = u64_at(b, rec + 40)?;
        cd_offset = u64_at(b, rec + 48)?;
    }
    let cd_start = within(cd_offset, b.len(), "central directory offset")?;
    let cd_len = within(cd_size, b.len() - cd_start, "central directory size")?;
    let cd = &b[cd_start..cd_start + cd_len];
    // Each entry takes at least CENTRAL_LEN bytes: a claimed count beyond that is a lie.
    if count > (cd.len() / CENTRAL_LEN) as u64 {
        bail!(
            "zip central directory claims {count} entries in {} bytes: the archive is damaged",
            cd.len()
        );
    }
    let mut archive = Archive::default();
    let mut at = 0usize;
    for _ in 0..count {
        if u32_at(cd, at)? != CENTRAL_SIG {
            bail!("zip central directory entry at byte {} has a bad signature: the archive is damaged", cd_start + at);
        }
        let flags = u16_at(cd, at + 8)?;
        let method = u16_at(cd, at + 10)?;
        let crc = u32_at(cd, at + 16)?;
        let mut csize = u64::from(u32_at(cd, at + 20)?);
        let mut usize_ = u64::from(u32_at(cd, at + 24)?);
        let name_len = usize::from(u16_at(cd, at + 28)?);
        let extra_len = usize::from(u16_at(cd, at + 30)?);
        let comment_len = usize::from(u16_at(cd, at + 32)?);
        let mut local = u64::from(u32_at(cd, at + 42)?);
        let name_at = at + CENTRAL_LEN;
        let Some(raw_name) = cd.get(name_at..name_at + name_len) else {
            bail!("zip central directory is truncated");
        };
        let name = String::from_utf8_lossy(raw_name).into_owned();
        let extra_at = name_at + name_len;
        let Some(extra) = cd.get(extra_at..extra_at + extra_len) else {
            bail!("zip central directory is truncated");
        };
        // The zip64 extra field holds, in this order, whichever of the three are saturated.
        let mut e = 0;
        while e + 4 <= extra.len() {
            let id = u16_at(extra, e)?;
            let size = usize::from(u16_at(extra, e + 2)?);
            let Some(field) = extra.get(e + 4..e + 4 + size) else {
                bail!("zip entry {name}: damaged extra field");
            };
            if id == 1 {
                let mut f = 0;
                for v in [&mut usize_, &mut csize, &mut local] {
                    if *v == 0xffff_ffff {
                        *v = u64_at(field, f).map_err(|_| {
                            anyhow::anyhow!("zip entry {name}: damaged zip64 field")
                        })?;
                        f += 8;
                    }
                }
            }
            e += 4 + size;
        }
        at = extra_at + extra_len + comment_len;
        if flags & 1 != 0 {
            bail!("zip entry {name} is encrypted");
        }
        if method == 0 && csize != usize_ {
            bail!("zip entry {name} is stored but its sizes disagree ({csize} and {usize_}): the archive is damaged");
        }
        // The data follow the local header, whose name and extra lengths may differ from the
        // central directory's (torch pads the local extra field to align the data).
        let local = within(local, b.len(), &format!("entry {name}'s header offset"))?;
        if u32_at(b, local)? != LOCAL_SIG {
            bail!("zip entry {name}: bad local header signature at byte {local}: the archive is damaged");
        }
        let local_name_len = usize::from(u16_at(b, local + 26)?);
        let local_name = b.get(local + LOCAL_LEN..local + LOCAL_LEN + local_name_len);
        if local_name != Some(raw_name) {
            bail!("zip entry {name}: its local header does not match the central directory: the archive is damaged");
        }
        let start = local + LOCAL_LEN + local_name_len + usize::from(u16_at(b, local + 28)?);
        let start = within(
            start as u64,
            b.len(),
            &format!("entry {name}'s data offset"),
        )?;
        let len = within(csize, b.len() - start, &format!("entry {name}'s size"))?;
        if !archive.entries.contains_key(&name) {
            archive.names.push(name.clone());
            archive.entries.insert(
                name,
                Entry {
                    start,
                    len,
                    method,
                    crc,
                },
            );
        }
    }
    Ok(archive)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stored zip archive in the layout torch.save writes (without zip64).
    fn archive(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut central = Vec::new();
        for (name, data) in files {
            let offset = out.len() as u32;
            out.extend_from_slice(&LOCAL_SIG.to_le_bytes());
            out.extend_from_slice(&[20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            out.extend_from_slice(&crc32(data).to_le_bytes());
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(&0u16.to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(data);
            central.extend_from_slice(&CENTRAL_SIG.to_le_bytes());
            central.extend_from_slice(&[20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            central.extend_from_slice(&crc32(data).to_le_bytes());
            central.extend_from_slice(&(data.len() as u32).to_le_bytes());
            central.extend_from_slice(&(data.len() as u32).to_le_bytes());
            central.extend_from_slice(&(name.len() as u16).to_le_bytes());
            central.extend_from_slice(&[0; 12]);
            central.extend_from_slice(&offset.to_le_bytes());
            central.extend_from_slice(name.as_bytes());
        }
        let cd_offset = out.len() as u32;
        out.extend_from_slice(&central);
        out.extend_from_slice(&EOCD_SIG.to_le_bytes());
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(&(files.len() as u16).to_le_bytes());
        out.extend_from_slice(&(files.len() as u16).to_le_bytes());
        out.extend_from_slice(&(central.len() as u32).to_le_bytes());
        out.extend_from_slice(&cd_offset.to_le_bytes());
        out.extend_from_slice(&[0, 0]);
        out
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
        let long: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        // Slicing-by-8 agrees with the bytewise definition at every length.
        for n in 0..40 {
            let mut c = !0u32;
            for &b in &long[..n] {
                c ^= u32::from(b);
                for _ in 0..8 {
                    c = if c & 1 != 0 {
                        0xedb8_8320 ^ (c >> 1)
                    } else {
                        c >> 1
                    };
                }
            }
            assert_eq!(crc32(&long[..n]), !c, "{n}");
        }
    }

    #[test]
    fn reads_stored_entries() {
        let z = archive(&[("a/data.pkl", b"hello"), ("a/data/0", b"0123")]);
        let a = parse(&z).unwrap();
        assert_eq!(a.names, ["a/data.pkl", "a/data/0"]);
        assert_eq!(a.data(&z, "a/data.pkl").unwrap(), b"hello");
        assert_eq!(a.data(&z, "a/data/0").unwrap(), b"0123");
        a.entries["a/data/0"].verify(&z, "a/data/0").unwrap();
        let mut damaged = z.clone();
        damaged[a.entries["a/data/0"].start] ^= 1;
        let e = a.entries["a/data/0"]
            .verify(&damaged, "a/data/0")
            .unwrap_err();
        assert!(e.to_string().contains("CRC"), "{e}");
        assert!(a.data(&z, "a/data/1").is_err());
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let z = archive(&[("a/data.pkl", b"hello"), ("a/data/0", b"0123")]);
        for n in 0..z.len() {
            assert!(parse(&z[..n]).is_err(), "cut at {n}");
        }
        for i in 0..z.len() {
            for v in [0x00, 0xff, 0x7f] {
                let mut b = z.clone();
                b[i] = v;
                if let Ok(a) = parse(&b) {
                    for n in &a.names {
                        let _ = a.data(&b, n);
                    }
                }
            }
        }
    }

    #[test]
    fn compressed_entries_are_refused_by_name() {
        let mut z = archive(&[("a/data.pkl", b"hello")]);
        let cd = z.len() - EOCD_LEN - CENTRAL_LEN - "a/data.pkl".len();
        z[cd + 10] = 8; // deflate
        let a = parse(&z).unwrap();
        let e = a.data(&z, "a/data.pkl").unwrap_err().to_string();
        assert!(e.contains("compressed"), "{e}");
    }
}
