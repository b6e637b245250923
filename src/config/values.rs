//! Values read out of strings: durations, byte sizes, port ranges,
//! `host:port`.

use std::ops::RangeInclusive;
use std::time::Duration;

/// Parses a duration the way humantime does: `"250ms"`, `"30s"`, `"5m"`,
/// `"1h"`, `"2d"`, or several parts such as `"1h 30m"`. A bare number has
/// no unit and is refused.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?}: {e} (e.g. \"250ms\", \"30s\", \"5m\", \"1h\", \"2d\")"))
}

pub(crate) fn valid_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0),
        None => false,
    }
}

pub(crate) fn parse_port_range(s: &str) -> Result<RangeInclusive<u16>, String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?} is not a range such as \"19093-19199\""))?;
    let a: u16 = a
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: {a:?} is not a port"))?;
    let b: u16 = b
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: {b:?} is not a port"))?;
    if a == 0 || a > b {
        return Err(format!(
            "{s:?} must go from a low port to a higher one, both above 0"
        ));
    }
    Ok(a..=b)
}

/// Parses a size the way the bytesize crate does: a number of bytes, or
/// one with a binary (`"64KiB"`, `"1MiB"`, `"1GiB"`) or decimal (`"1MB"`)
/// unit.
pub(crate) fn parse_byte_size(s: &str) -> Result<usize, String> {
    let size: bytesize::ByteSize = s
        .trim()
        .parse()
        .map_err(|e| format!("{s:?}: {e} (e.g. \"512\", \"64KiB\", \"1MiB\")"))?;
    usize::try_from(size.as_u64()).map_err(|_| format!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse_duration("1").is_err());
        assert!(parse_duration("1q").is_err());
        assert!(parse_duration("-1s").is_err());
        assert_eq!(parse_byte_size("1MiB").unwrap(), 1 << 20);
        assert_eq!(parse_byte_size("512").unwrap(), 512);
        assert_eq!(parse_byte_size("64 KiB").unwrap(), 64 << 10);
        assert_eq!(parse_byte_size("1MB").unwrap(), 1_000_000);
        assert!(parse_byte_size("1QB").is_err());
        assert!(parse_byte_size("-1").is_err());
        assert!(parse_byte_size("").is_err());
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("").is_err());
    }
}
