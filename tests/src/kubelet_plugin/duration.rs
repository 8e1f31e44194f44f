//! Go `time.Duration` strings, as `metav1.Duration` carries them in
//! `cacheDuration`: `0`, or a run of decimal numbers each with a unit
//! (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`), such as `29m59s` or `1.5h`.

use std::time::Duration;

/// Units by suffix, in nanoseconds. Longer suffixes first, so `ms` wins over `m`.
const UNITS: [(&str, u128); 9] = [
    ("ns", 1),
    ("us", 1_000),
    ("\u{b5}s", 1_000),
    ("\u{3bc}s", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
    ("", 0),
];

/// Parses a non-negative Go duration the way `time.ParseDuration` does;
/// `None` for anything it would reject (and for negative durations).
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    let text = text.strip_prefix('+').unwrap_or(text);
    if text == "0" {
        return Some(Duration::ZERO);
    }
    if text.is_empty() || text.starts_with('-') {
        return None;
    }
    let mut rest = text;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, after) = rest.split_at(int_len);
        let (frac_part, after) = match after.strip_prefix('.') {
            Some(f) => {
                let n = f.bytes().take_while(u8::is_ascii_digit).count();
                f.split_at(n)
            }
            None => ("", after),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return None;
        }
        let unit_len = after
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(after.len(), |(i, _)| i);
        let (unit, after) = after.split_at(unit_len);
        let scale = UNITS
            .iter()
            .find(|(name, _)| !name.is_empty() && *name == unit)
            .map(|(_, ns)| *ns)?;
        let whole: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().ok()?
        };
        let mut nanos = whole.checked_mul(scale)?;
        if !frac_part.is_empty() {
            let digits = frac_part.len().min(30) as u32;
            let frac: u128 = frac_part[..digits as usize].parse().ok()?;
            nanos += frac * scale / 10u128.pow(digits);
        }
        total = total.checked_add(nanos)?;
        rest = after;
    }
    let secs = u64::try_from(total / 1_000_000_000).ok()?;
    Some(Duration::new(secs, (total % 1_000_000_000) as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_formats() {
        let cases = [
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("59s", Duration::from_secs(59)),
            ("29m30s", Duration::from_secs(1770)),
            ("1h0m0s", Duration::from_secs(3600)),
            ("1h30m30s", Duration::from_secs(5430)),
            ("1.5h", Duration::from_secs(5400)),
            ("500ms", Duration::from_millis(500)),
            ("1m0.25s", Duration::from_millis(60_250)),
            ("3\u{b5}s", Duration::from_micros(3)),
            ("7ns", Duration::from_nanos(7)),
            ("+5m", Duration::from_secs(300)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_go_duration(text), Some(want), "{text}");
        }
        for bad in ["", "5", "1d", "m", "-1s", "1h 2m", "1.s.", "s5", "1 s"] {
            assert_eq!(parse_go_duration(bad), None, "{bad:?}");
        }
    }
}
