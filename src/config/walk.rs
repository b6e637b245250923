//! Walks the TOML: takes keys out of a table one by one, records every
//! problem with its key path, and reports whatever is left as unknown keys.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use toml::{Table, Value};

use super::values::{parse_byte_size, parse_duration, parse_port_range, valid_host_port};
use super::Problem;

/// A table being read: takes keys out one by one, records problems with their
/// full path, and reports whatever is left as unknown keys.
pub(crate) struct Section<'a, 'p> {
    pub(crate) prefix: String,
    pub(crate) table: Option<&'a Table>,
    pub(crate) seen: Vec<&'static str>,
    pub(crate) problems: &'p mut Vec<Problem>,
}

impl<'a, 'p> Section<'a, 'p> {
    pub(crate) fn root(table: &'a Table, problems: &'p mut Vec<Problem>) -> Self {
        Section {
            prefix: String::new(),
            table: Some(table),
            seen: Vec::new(),
            problems,
        }
    }

    pub(crate) fn path(&self, key: &str) -> String {
        if key.is_empty() {
            self.prefix.clone()
        } else if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.prefix)
        }
    }

    pub(crate) fn problem(&mut self, key: &str, message: String) {
        let path = self.path(key);
        self.problems.push(Problem { path, message });
    }

    pub(crate) fn get(&mut self, key: &'static str) -> Option<&'a Value> {
        self.seen.push(key);
        self.table.and_then(|t| t.get(key))
    }

    /// Reads a sub-table (absent means all defaults) with `read`.
    pub(crate) fn section<T>(
        &mut self,
        key: &'static str,
        read: impl FnOnce(&mut Section<'a, '_>) -> T,
    ) -> T {
        let path = self.path(key);
        let table = match self.get(key) {
            None => None,
            Some(Value::Table(t)) => Some(t),
            Some(other) => {
                self.problems.push(Problem {
                    path: path.clone(),
                    message: format!("expected a table, found {}", other.type_str()),
                });
                None
            }
        };
        let mut sub = Section {
            prefix: path,
            table,
            seen: Vec::new(),
            problems: self.problems,
        };
        let value = read(&mut sub);
        sub.finish();
        value
    }

    /// Reads a sub-table that may be absent: `None` when it is.
    pub(crate) fn optional_section<T>(
        &mut self,
        key: &'static str,
        read: impl FnOnce(&mut Section<'a, '_>) -> T,
    ) -> Option<T> {
        let present = self.table.is_some_and(|t| t.contains_key(key));
        let value = self.section(key, read);
        present.then_some(value)
    }

    /// A path that must be given (no default).
    pub(crate) fn required_path(&mut self, key: &'static str) -> PathBuf {
        if self.table.is_some_and(|t| !t.contains_key(key)) {
            self.problem(key, "is required".into());
        }
        let path = self.string(key, "");
        if path.is_empty() && self.table.is_some_and(|t| t.contains_key(key)) {
            self.problem(key, "must not be empty".into());
        }
        path.into()
    }

    /// Reports every key nobody asked for.
    pub(crate) fn finish(self) {
        let Some(table) = self.table else { return };
        for key in table.keys() {
            if !self.seen.contains(&key.as_str()) {
                let path = if self.prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{}.{key}", self.prefix)
                };
                let known = if self.seen.is_empty() {
                    String::new()
                } else {
                    format!(" (known keys here: {})", self.seen.join(", "))
                };
                self.problems.push(Problem {
                    path,
                    message: format!("unknown key{known}"),
                });
            }
        }
    }

    pub(crate) fn typed<T>(
        &mut self,
        key: &'static str,
        default: T,
        expected: &str,
        read: impl FnOnce(&'a Value) -> Option<Result<T, String>>,
    ) -> T {
        let Some(value) = self.get(key) else {
            return default;
        };
        match read(value) {
            Some(Ok(v)) => v,
            Some(Err(message)) => {
                self.problem(key, message);
                default
            }
            None => {
                self.problem(
                    key,
                    format!("expected {expected}, found {}", value.type_str()),
                );
                default
            }
        }
    }

    pub(crate) fn string(&mut self, key: &'static str, default: &str) -> String {
        self.typed(key, default.to_string(), "a string", |v| {
            v.as_str().map(|s| Ok(s.to_string()))
        })
    }

    pub(crate) fn bool(&mut self, key: &'static str, default: bool) -> bool {
        self.typed(key, default, "true or false", |v| v.as_bool().map(Ok))
    }

    pub(crate) fn duration(&mut self, key: &'static str, default: Duration) -> Duration {
        self.typed(key, default, "a duration string such as \"30s\"", |v| {
            v.as_str().map(parse_duration)
        })
    }

    pub(crate) fn non_zero(&mut self, key: &'static str, default: usize) -> NonZeroUsize {
        let fallback = NonZeroUsize::new(default).expect("defaults are non-zero");
        self.typed(key, fallback, "a positive integer", |v| {
            v.as_integer().map(|n| {
                usize::try_from(n)
                    .ok()
                    .and_then(NonZeroUsize::new)
                    .ok_or_else(|| format!("{n} must be a positive integer"))
            })
        })
    }

    /// An integer number of bytes, or a string with a unit: `"100MiB"`, `"64KiB"`.
    pub(crate) fn byte_size(&mut self, key: &'static str, default: usize) -> usize {
        self.typed(
            key,
            default,
            "a byte count such as 1048576 or \"1MiB\"",
            |v| match v {
                Value::Integer(n) => {
                    Some(usize::try_from(*n).map_err(|_| format!("{n} must not be negative")))
                }
                Value::String(s) => Some(parse_byte_size(s)),
                _ => None,
            },
        )
    }

    pub(crate) fn socket_addr(&mut self, key: &'static str, default: &str) -> SocketAddr {
        let fallback = default.parse().expect("default addresses parse");
        self.typed(key, fallback, "an \"ip:port\" string", |v| {
            v.as_str().map(|s| {
                s.parse::<SocketAddr>()
                    .map_err(|_| format!("{s:?} is not an ip:port address"))
            })
        })
    }

    pub(crate) fn port_range(&mut self, key: &'static str, default: &str) -> RangeInclusive<u16> {
        let fallback = parse_port_range(default).expect("default range parses");
        self.typed(
            key,
            fallback,
            "a port range string such as \"19093-19199\"",
            |v| v.as_str().map(parse_port_range),
        )
    }

    /// A list of `host:port` strings; each must resolve now or be a literal.
    pub(crate) fn host_ports(&mut self, key: &'static str, default: &[&str]) -> Vec<String> {
        let fallback: Vec<String> = default.iter().map(|s| s.to_string()).collect();
        let Some(value) = self.get(key) else {
            return fallback;
        };
        let Some(items) = value.as_array() else {
            self.problem(
                key,
                format!(
                    "expected a list of \"host:port\" strings, found {}",
                    value.type_str()
                ),
            );
            return fallback;
        };
        if items.is_empty() {
            self.problem(key, "must list at least one broker".into());
            return fallback;
        }
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let item_key = format!("{key}[{i}]");
            match item.as_str() {
                Some(s) if valid_host_port(s) => out.push(s.to_string()),
                Some(s) => {
                    let path = self.path(&item_key);
                    self.problems.push(Problem {
                        path,
                        message: format!("{s:?} is not a host:port address"),
                    })
                }
                None => {
                    let path = self.path(&item_key);
                    self.problems.push(Problem {
                        path,
                        message: format!(
                            "expected a \"host:port\" string, found {}",
                            item.type_str()
                        ),
                    })
                }
            }
        }
        out
    }

    /// A list of strings.
    pub(crate) fn strings(&mut self, key: &'static str, default: &[&str]) -> Vec<String> {
        let fallback: Vec<String> = default.iter().map(|s| s.to_string()).collect();
        let Some(value) = self.get(key) else {
            return fallback;
        };
        let Some(items) = value.as_array() else {
            let found = value.type_str();
            self.problem(key, format!("expected a list of strings, found {found}"));
            return fallback;
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match item.as_str() {
                Some(s) => out.push(s.to_string()),
                None => self.problem(
                    &format!("{key}[{i}]"),
                    format!("expected a string, found {}", item.type_str()),
                ),
            }
        }
        out
    }

    /// An array of tables (`[[key]]`), each read with `read`; problems carry
    /// the entry's index (`dedup.rules[2].mode`).
    pub(crate) fn tables<T>(
        &mut self,
        key: &'static str,
        mut read: impl FnMut(&mut Section<'a, '_>) -> T,
    ) -> Vec<T> {
        let Some(value) = self.get(key) else {
            return Vec::new();
        };
        let Some(items) = value.as_array() else {
            let found = value.type_str();
            self.problem(key, format!("expected [[{key}]] tables, found {found}"));
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let path = self.path(&format!("{key}[{i}]"));
            let Some(table) = item.as_table() else {
                self.problems.push(Problem {
                    path,
                    message: format!("expected a table, found {}", item.type_str()),
                });
                continue;
            };
            let mut sub = Section {
                prefix: path,
                table: Some(table),
                seen: Vec::new(),
                problems: self.problems,
            };
            out.push(read(&mut sub));
            sub.finish();
        }
        out
    }
}
