//! Normative path rules (`spec/files.md` § Paths).
//!
//! A *share path* is how a record names a file: relative to the share root, components
//! separated by `/`. [`validate`] is the check every received record and every local name
//! passes before it touches a disk; a path that fails it is never written, so a peer cannot
//! reach outside the share (`../x`, `/etc/x`) or into the tool's own `.clearskies` entry.
//!
//! The other functions are helpers with documented rules: [`windows_problem`] (names Windows
//! cannot hold), [`case_fold_key`] (paths that collide on a case-insensitive filesystem) and
//! [`conflict_name`] (where the losing side of a conflict is kept).

use core::fmt;

use crate::db::record::MAX_KEY_LEN;
use crate::identity::DeviceId;

/// The longest share path in bytes: its key is `/` followed by the path.
pub const MAX_PATH_LEN: usize = MAX_KEY_LEN - 1;
/// The longest path component (file or directory name) in bytes.
pub const MAX_COMPONENT_LEN: usize = 255;
/// The root entry the tool keeps for itself (temp files); reserved in any letter case.
pub const RESERVED_ROOT: &str = ".clearskies";
/// The ignore file at the share root (gitignore syntax). It is synced like any file.
pub const IGNORE_FILE: &str = ".clearskiesignore";

/// Why a share path is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PathError {
    /// The path is empty.
    Empty,
    /// The path contains a NUL byte.
    Nul,
    /// The path contains a backslash (a separator on Windows, so never allowed in a name).
    Backslash,
    /// The path starts with `/`.
    Absolute,
    /// The path ends with `/`.
    TrailingSlash,
    /// The path is longer than [`MAX_PATH_LEN`] bytes.
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// Two `/` in a row.
    EmptyComponent,
    /// A `.` component.
    Dot,
    /// A `..` component.
    DotDot,
    /// A component longer than [`MAX_COMPONENT_LEN`] bytes.
    ComponentTooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The first component is `.clearskies` (in any letter case).
    Reserved,
}

impl PathError {
    /// The stable, kebab-case name of this error, as used in `spec/vectors/paths.json`.
    pub fn code(&self) -> &'static str {
        match self {
            PathError::Empty => "empty-path",
            PathError::Nul => "nul-byte",
            PathError::Backslash => "backslash",
            PathError::Absolute => "absolute-path",
            PathError::TrailingSlash => "trailing-slash",
            PathError::TooLong { .. } => "path-too-long",
            PathError::EmptyComponent => "empty-component",
            PathError::Dot => "dot-component",
            PathError::DotDot => "dot-dot-component",
            PathError::ComponentTooLong { .. } => "component-too-long",
            PathError::Reserved => "reserved-name",
        }
    }
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathError::Empty => f.write_str("the path is empty"),
            PathError::Nul => f.write_str("the path contains a NUL byte"),
            PathError::Backslash => f.write_str("the path contains a backslash"),
            PathError::Absolute => f.write_str("the path is absolute (starts with '/')"),
            PathError::TrailingSlash => f.write_str("the path ends with '/'"),
            PathError::TooLong { len } => {
                write!(f, "the path is {len} bytes long, more than {MAX_PATH_LEN}")
            }
            PathError::EmptyComponent => f.write_str("the path contains an empty component ('//')"),
            PathError::Dot => f.write_str("the path contains a '.' component"),
            PathError::DotDot => f.write_str("the path contains a '..' component"),
            PathError::ComponentTooLong { len } => write!(
                f,
                "a name in the path is {len} bytes long, more than {MAX_COMPONENT_LEN}"
            ),
            PathError::Reserved => write!(f, "'{RESERVED_ROOT}' at the share root is reserved"),
        }
    }
}

impl std::error::Error for PathError {}

/// Checks a share path, in the order of `spec/files.md` § Paths (the first failing rule is
/// the error reported).
pub fn validate(path: &str) -> Result<(), PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.contains('\0') {
        return Err(PathError::Nul);
    }
    if path.contains('\\') {
        return Err(PathError::Backslash);
    }
    if path.starts_with('/') {
        return Err(PathError::Absolute);
    }
    if path.ends_with('/') {
        return Err(PathError::TrailingSlash);
    }
    if path.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong { len: path.len() });
    }
    for component in path.split('/') {
        match component {
            "" => return Err(PathError::EmptyComponent),
            "." => return Err(PathError::Dot),
            ".." => return Err(PathError::DotDot),
            c if c.len() > MAX_COMPONENT_LEN => {
                return Err(PathError::ComponentTooLong { len: c.len() });
            }
            _ => {}
        }
    }
    let first = path.split('/').next().unwrap_or(path);
    if first.eq_ignore_ascii_case(RESERVED_ROOT) {
        return Err(PathError::Reserved);
    }
    Ok(())
}

/// Device names Windows reserves, whatever the extension.
const WINDOWS_RESERVED: [&str; 22] = [
    "CON", "PRN", "AUX", "NUL", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8",
    "COM9", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9",
];

/// Why Windows could not hold this (valid) share path, if it could not.
///
/// Informative: Unix implementations write such names. A Windows implementation refuses the
/// path into an error state for that path (and keeps syncing the rest) rather than renaming it.
pub fn windows_problem(path: &str) -> Option<&'static str> {
    for name in path.split('/') {
        if name
            .chars()
            .any(|c| matches!(c, '<' | '>' | ':' | '"' | '\\' | '|' | '?' | '*') || c < ' ')
        {
            return Some(
                "a name contains a character Windows forbids (<>:\"\\|?* or a control character)",
            );
        }
        if name.ends_with('.') || name.ends_with(' ') {
            return Some("a name ends with a dot or a space");
        }
        let stem = name.split('.').next().unwrap_or(name).trim_end_matches(' ');
        if WINDOWS_RESERVED
            .iter()
            .any(|r| stem.eq_ignore_ascii_case(r))
        {
            return Some(
                "a name is a device name Windows reserves (CON, PRN, AUX, NUL, COM1-9, LPT1-9)",
            );
        }
    }
    None
}

/// The key under which paths collide on a case-insensitive filesystem: every character
/// replaced by its Unicode lowercase mapping (`char::to_lowercase`, character by character,
/// without context). Two different paths with the same key cannot both exist on such a
/// filesystem.
pub fn case_fold_key(path: &str) -> String {
    path.chars().flat_map(char::to_lowercase).collect()
}

/// The marker inserted into conflict-copy names.
pub const CONFLICT_MARKER: &str = ".sync-conflict-";

/// The name under which the losing version of `path` is kept:
/// `dir/stem.sync-conflict-<first 7 characters of the device ID text>-<YYYYMMDD-HHMMSS>.ext`,
/// the time in UTC from `wall_micros` (microseconds since the Unix epoch).
///
/// The extension is what follows the last dot of the file name, unless that dot is the name's
/// first or last character (then there is none: `.bashrc` → `.bashrc.sync-conflict-…`). If
/// the new name would exceed [`MAX_COMPONENT_LEN`] bytes, the stem is shortened (at a
/// character boundary) to fit.
pub fn conflict_name(path: &str, device: &DeviceId, wall_micros: u64) -> String {
    let (dir, name) = match path.rfind('/') {
        Some(i) => (&path[..=i], &path[i + 1..]),
        None => ("", path),
    };
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 && i + 1 < name.len() => (&name[..i], &name[i..]),
        _ => (name, ""),
    };
    let device_text = device.to_string();
    let short: String = device_text.chars().take(7).collect();
    let (y, mo, d, h, mi, s) = civil_time(wall_micros / 1_000_000);
    let tag = format!("{CONFLICT_MARKER}{short}-{y:04}{mo:02}{d:02}-{h:02}{mi:02}{s:02}");
    let room = MAX_COMPONENT_LEN.saturating_sub(tag.len() + ext.len());
    let mut cut = stem.len().min(room);
    while !stem.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{dir}{}{tag}{ext}", &stem[..cut])
}

/// UTC calendar time of `secs` since the Unix epoch: (year, month, day, hour, minute, second).
///
/// The proleptic Gregorian calendar, days counted in 400-year eras of 146097 days starting on
/// 1 March so that the leap day is the last day of a year.
pub fn civil_time(secs: u64) -> (u64, u32, u32, u32, u32, u32) {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (h, mi, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Shift the epoch from 1970-01-01 to 0000-03-01 (719468 days earlier).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097; // day of era, 0 ..= 146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // year of era, 0 ..= 399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of the March-based year
    let mp = (5 * doy + 2) / 153; // month from March, 0 ..= 11
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    // Every value below is bounded by the arithmetic above (month ≤ 12, day ≤ 31, ...).
    (y, m as u32, d as u32, h as u32, mi as u32, s as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_time_known_dates() {
        assert_eq!(civil_time(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(civil_time(951_782_400), (2000, 2, 29, 0, 0, 0));
        assert_eq!(civil_time(1_700_000_000), (2023, 11, 14, 22, 13, 20));
        assert_eq!(civil_time(4_107_542_399), (2100, 2, 28, 23, 59, 59));
        assert_eq!(civil_time(4_107_542_400), (2100, 3, 1, 0, 0, 0));
    }

    #[test]
    fn civil_time_matches_day_by_day_count() {
        // Walk day by day from 1970 for 500 years with the month-length rule.
        let leap =
            |y: u64| (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400);
        let (mut y, mut m, mut d) = (1970u64, 1u32, 1u32);
        for day in 0..(500 * 366u64) {
            assert_eq!(
                civil_time(day * 86_400 + 3661),
                (y, m, d, 1, 1, 1),
                "day {day}"
            );
            let len = match m {
                2 if leap(y) => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            d += 1;
            if d > len {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
    }

    #[test]
    fn validate_refuses_traversal_and_reserved() {
        for (p, code) in [
            ("../x", "dot-dot-component"),
            ("a/../../x", "dot-dot-component"),
            ("/etc/x", "absolute-path"),
            (".clearskies/tmp/x", "reserved-name"),
            (".ClearSkies", "reserved-name"),
            ("a\\b", "backslash"),
            ("a//b", "empty-component"),
            ("a/./b", "dot-component"),
            ("a/", "trailing-slash"),
            ("", "empty-path"),
        ] {
            assert_eq!(validate(p).map_err(|e| e.code()), Err(code), "{p}");
        }
        for p in ["a", "a/.clearskies", ".clearskiesignore", "..a/b..", "é/ü"] {
            assert_eq!(validate(p), Ok(()), "{p}");
        }
    }

    #[test]
    fn windows_names() {
        assert!(windows_problem("a/CON").is_some());
        assert!(windows_problem("nul.tar.gz").is_some());
        assert!(windows_problem("a/lpt9.txt").is_some());
        assert!(windows_problem("a:b").is_some());
        assert!(windows_problem("dir./x").is_some());
        assert!(windows_problem("x ").is_some());
        assert!(windows_problem("console/com10.txt").is_none());
        assert!(windows_problem("a/b.txt").is_none());
    }

    #[test]
    fn conflict_names() {
        let dev = DeviceId::from_bytes([0; 32]);
        let short: String = dev.to_string().chars().take(7).collect();
        let t = 1_700_000_000_000_000;
        assert_eq!(
            conflict_name("a/b.txt", &dev, t),
            format!("a/b.sync-conflict-{short}-20231114-221320.txt")
        );
        assert_eq!(
            conflict_name(".bashrc", &dev, t),
            format!(".bashrc.sync-conflict-{short}-20231114-221320")
        );
        let long = "é".repeat(127) + ".txt";
        let named = conflict_name(&long, &dev, t);
        assert!(named.len() <= MAX_COMPONENT_LEN && named.ends_with(".txt"));
        assert_eq!(validate(&named), Ok(()));
    }
}
