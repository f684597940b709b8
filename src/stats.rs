//! Resource measurement and number formatting for the stats lines.
//!
//! Memory figures come from `/proc/self/status` (Linux); elsewhere they are
//! `None`. No libc calls are made.

use anyhow::{bail, Result};

/// Peak resident set size of this process (`VmHWM`), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    proc_status_field("VmHWM")
}

/// Resets the peak resident set size (`VmHWM`) to the current one, so that memory freed
/// earlier (a measurement buffer, say) no longer counts as the peak. Linux only (writes `5`
/// to `/proc/self/clear_refs`); returns whether the kernel took it.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Current resident set size of this process (`VmRSS`), in bytes.
pub fn current_rss_bytes() -> Option<u64> {
    proc_status_field("VmRSS")
}

fn proc_status_field(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_status_field(&text, key)
}

/// Finds `key:   <number> kB` in `/proc/<pid>/status` text and returns bytes.
fn parse_status_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        let mut parts = rest.split_whitespace();
        let value: u64 = parts.next()?.parse().ok()?;
        let scale = match parts.next() {
            None => 1,
            Some(unit) => match unit.to_ascii_lowercase().as_str() {
                "b" => 1,
                "kb" => 1024,
                "mb" => 1024 * 1024,
                "gb" => 1024 * 1024 * 1024,
                _ => return None,
            },
        };
        value.checked_mul(scale)
    })
}

/// Byte count in binary units: "512 B", "1.5 KiB", "12.3 MiB", "1.20 GiB".
/// KiB and MiB get one decimal, GiB and above two.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut unit = 0;
    let mut value = n as f64 / 1024.0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let decimals = if unit < 2 { 1 } else { 2 };
    let text = format!("{value:.decimals$}");
    // Rounding can reach 1024 (e.g. 1048575 B -> "1024.0 KiB"): move up a unit.
    if text.parse::<f64>().is_ok_and(|v| v >= 1024.0) && unit + 1 < UNITS.len() {
        let decimals = if unit + 1 < 2 { 1 } else { 2 };
        return format!("{:.decimals$} {}", value / 1024.0, UNITS[unit + 1]);
    }
    format!("{text} {}", UNITS[unit])
}

/// Count with a decimal suffix and three significant digits, trailing zeros
/// dropped: 950 -> "950", 12_345 -> "12.3K", 169_000_000 -> "169M",
/// 1_600_000_000 -> "1.6B".
pub fn human_count(n: u64) -> String {
    const UNITS: [&str; 6] = ["", "K", "M", "B", "T", "Q"];
    if n < 1000 {
        return n.to_string();
    }
    let mut unit = 0;
    let mut value = n as f64;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    let mut text = three_significant(value);
    if text.parse::<f64>().is_ok_and(|v| v >= 1000.0) && unit + 1 < UNITS.len() {
        // 999_999 rounds to "1000K": say "1M" instead.
        unit += 1;
        text = three_significant(value / 1000.0);
    }
    format!("{text}{}", UNITS[unit])
}

/// `v` in [1, 1000) with three significant digits, trailing zeros trimmed.
fn three_significant(v: f64) -> String {
    let decimals = if v < 10.0 {
        2
    } else if v < 100.0 {
        1
    } else {
        0
    };
    let text = format!("{v:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

/// Parses a count such as "100000", "100_000", "100k", "100K", "1M", "1.5M",
/// "2G" or "2B". Suffixes are decimal: k = 1e3, M = 1e6, G/B = 1e9, T = 1e12.
/// The result must be a whole number that fits in a u64.
pub fn parse_count(s: &str) -> Result<u64> {
    let t = s.trim();
    let hint = "expected a whole number such as 100000, 100k, 1.5M or 2G";
    if t.is_empty() {
        bail!("invalid count \"{s}\": {hint}");
    }
    if t.starts_with('-') {
        bail!("invalid count \"{s}\": must not be negative");
    }
    // A trailing letter is a suffix; an unknown one is reported only when the
    // rest is a valid number (otherwise the input is simply not a count).
    let (number, suffix) = match t.chars().last() {
        Some(c) if c.is_ascii_alphabetic() => (t[..t.len() - 1].trim_end(), Some(c)),
        _ => (t, None),
    };
    let (whole, frac) = match number.split_once('.') {
        Some((w, f)) => (w, f),
        None => (number, ""),
    };
    let digits_ok = |part: &str| part.chars().all(|c| c.is_ascii_digit() || c == '_');
    let has_digit = |part: &str| part.chars().any(|c| c.is_ascii_digit());
    if !digits_ok(whole)
        || !digits_ok(frac)
        || !(has_digit(whole) || has_digit(frac))
        || whole.starts_with('_')
    {
        bail!("invalid count \"{s}\": {hint}");
    }
    let multiplier: u128 = match suffix {
        None => 1,
        Some('k' | 'K') => 1_000,
        Some('m' | 'M') => 1_000_000,
        Some('g' | 'G' | 'b' | 'B') => 1_000_000_000,
        Some('t' | 'T') => 1_000_000_000_000,
        Some(c) => bail!("invalid count \"{s}\": unknown suffix '{c}' (use k, M, G or T)"),
    };
    let too_big = || anyhow::anyhow!("invalid count \"{s}\": too large (max {})", u64::MAX);
    let mut value: u128 = 0;
    for c in whole.chars().filter(char::is_ascii_digit) {
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(c as u128 - '0' as u128))
            .filter(|&v| v <= u64::MAX as u128)
            .ok_or_else(too_big)?;
    }
    value = value.checked_mul(multiplier).ok_or_else(too_big)?;
    // Fractional digits: each one is worth multiplier / 10^position, which must
    // stay a whole number for the digit to be allowed.
    let mut place = multiplier;
    for c in frac.chars().filter(char::is_ascii_digit) {
        let d = c as u128 - '0' as u128;
        if !place.is_multiple_of(10) {
            if d != 0 {
                bail!("invalid count \"{s}\": not a whole number");
            }
            continue;
        }
        place /= 10;
        value += d * place;
    }
    u64::try_from(value).map_err(|_| too_big())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_parsing() {
        let text = "Name:\tcat\nVmPeak:\t  10000 kB\nVmHWM:\t    2048 kB\nVmRSS:\t     512 kB\n\
                    VmHWMx:\t1 kB\nThreads:\t1\n";
        assert_eq!(parse_status_field(text, "VmHWM"), Some(2048 * 1024));
        assert_eq!(parse_status_field(text, "VmRSS"), Some(512 * 1024));
        assert_eq!(parse_status_field(text, "Threads"), Some(1));
        assert_eq!(parse_status_field(text, "VmSwap"), None);
        assert_eq!(parse_status_field("VmRSS:\tlots kB\n", "VmRSS"), None);
        assert_eq!(parse_status_field("VmRSS:\t1 parsecs\n", "VmRSS"), None);
    }

    #[test]
    fn rss_reads_this_process() {
        if !std::path::Path::new("/proc/self/status").exists() {
            assert_eq!(peak_rss_bytes(), None);
            return;
        }
        // Touch 64 MiB so the high-water mark must cover it.
        let block = vec![1u8; 64 << 20];
        let sum: u64 = block.iter().step_by(4096).map(|&b| b as u64).sum();
        assert_eq!(sum, (64 << 20) / 4096);
        let current = current_rss_bytes().expect("VmRSS");
        let peak = peak_rss_bytes().expect("VmHWM");
        assert!(current >= 64 << 20, "current {current}");
        assert!(peak >= current, "peak {peak} < current {current}");
        drop(block);
    }

    #[test]
    fn peak_rss_reset_forgets_freed_memory() {
        let block = vec![1u8; 256 << 20];
        let sum: u64 = block.iter().step_by(4096).map(|&b| b as u64).sum();
        assert_eq!(sum, (256 << 20) / 4096);
        drop(block);
        let Some(before) = peak_rss_bytes() else {
            return; // no /proc: nothing to reset
        };
        assert!(before >= 256 << 20, "peak {before}");
        if !reset_peak_rss() {
            return; // a kernel without clear_refs
        }
        // Other tests of this binary run at the same time, but none holds 256 MiB at once.
        let after = peak_rss_bytes().expect("VmHWM");
        assert!(after < before - (128 << 20), "peak {before} -> {after}");
    }

    #[test]
    fn bytes_formatting() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(12_897_485), "12.3 MiB");
        assert_eq!(human_bytes(1_288_490_189), "1.20 GiB");
        assert_eq!(human_bytes(3 << 40), "3.00 TiB");
        assert_eq!(human_bytes((1 << 20) - 1), "1.0 MiB");
        assert_eq!(human_bytes((1 << 30) - 1), "1.00 GiB");
        assert_eq!(human_bytes(u64::MAX), "16.00 EiB");
    }

    #[test]
    fn count_formatting() {
        assert_eq!(human_count(0), "0");
        assert_eq!(human_count(999), "999");
        assert_eq!(human_count(1000), "1K");
        assert_eq!(human_count(12_345), "12.3K");
        assert_eq!(human_count(100_000), "100K");
        assert_eq!(human_count(169_000_000), "169M");
        assert_eq!(human_count(191_000_000), "191M");
        assert_eq!(human_count(1_600_000_000), "1.6B");
        assert_eq!(human_count(7_520_000_000), "7.52B");
        assert_eq!(human_count(999_999), "1M");
        assert_eq!(human_count(1_050_000), "1.05M");
        assert_eq!(human_count(u64::MAX), "18447Q");
    }

    #[test]
    fn count_parsing() {
        let ok = [
            ("100000", 100_000u64),
            ("100_000", 100_000),
            ("100k", 100_000),
            ("100K", 100_000),
            (" 64k ", 64_000),
            ("1M", 1_000_000),
            ("1.5M", 1_500_000),
            ("1.5 M", 1_500_000),
            (".5k", 500),
            ("2G", 2_000_000_000),
            ("2B", 2_000_000_000),
            ("1.25k", 1_250),
            ("1.2500k", 1_250),
            ("3T", 3_000_000_000_000),
            ("0", 0),
            ("18446744073709551615", u64::MAX),
        ];
        for (text, want) in ok {
            assert_eq!(parse_count(text).unwrap(), want, "{text}");
        }
        let bad = [
            ("", "expected"),
            ("abc", "expected"),
            ("-5", "negative"),
            ("-5k", "negative"),
            ("1.2.3", "expected"),
            ("k", "expected"),
            ("1x", "unknown suffix"),
            ("10kk", "expected"),
            ("1.5", "whole number"),
            ("1.0005k", "whole number"),
            ("18446744073709551616", "too large"),
            ("20000000000T", "too large"),
            ("99999999999999999999999999999999999999999", "too large"),
            ("1e6", "expected"),
            ("5x", "unknown suffix"),
            ("+5", "expected"),
        ];
        for (text, want) in bad {
            let e = parse_count(text).expect_err(text).to_string();
            assert!(e.contains(want), "{text}: {e}");
            assert!(e.contains('"'), "{e}");
        }
    }
}
