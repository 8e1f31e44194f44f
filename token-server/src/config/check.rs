//! Collecting every problem of a config, each with its key path and line.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_saphyr::Spanned;

use super::ConfigIssue;
use super::file::S;
use crate::policy::Glob;
use crate::report::Chain;

/// Collects problems while a config is translated.
pub(super) struct Check {
    base: PathBuf,
    pub(super) issues: Vec<ConfigIssue>,
}

impl Check {
    /// Relative paths in the file resolve against `base`.
    pub(super) fn new(base: &Path) -> Self {
        Check {
            base: base.to_owned(),
            issues: Vec::new(),
        }
    }

    /// Records a problem with `key` at the line of `at`.
    pub(super) fn fail<T>(
        &mut self,
        key: impl Into<String>,
        at: &Spanned<T>,
        message: impl fmt::Display,
    ) {
        self.issues.push(ConfigIssue {
            key: key.into(),
            line: at.referenced.line() as usize,
            message: message.to_string(),
        });
    }

    /// Records a problem that no line of the file caused (line 0).
    pub(super) fn fail_unlocated(&mut self, key: impl Into<String>, error: &dyn std::error::Error) {
        self.issues.push(ConfigIssue {
            key: key.into(),
            line: 0,
            message: Chain(error).to_string(),
        });
    }

    /// Records a problem and its cause chain.
    pub(super) fn fail_with<T>(
        &mut self,
        key: impl Into<String>,
        at: &Spanned<T>,
        error: &dyn std::error::Error,
    ) {
        self.fail(key, at, Chain(error));
    }

    /// A path from the file, resolved.
    pub(super) fn path(&self, p: &str) -> PathBuf {
        self.base.join(p)
    }

    /// A duration such as `5m`; `default` when absent or invalid.
    pub(super) fn duration(
        &mut self,
        key: &str,
        v: &Option<S<String>>,
        default: Duration,
        allow_zero: bool,
    ) -> Duration {
        let Some(v) = v else { return default };
        match humantime::parse_duration(&v.value) {
            Ok(d) if d.is_zero() && !allow_zero => {
                self.fail(key, v, "must be greater than zero");
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.fail(
                    key,
                    v,
                    format!(
                        "invalid duration {:?} ({e}); write e.g. 5m, 1h, 30s",
                        v.value
                    ),
                );
                default
            }
        }
    }

    /// A compiled glob; one that matches nothing when invalid.
    pub(super) fn glob(&mut self, key: String, v: &S<String>) -> Glob {
        Glob::new(&v.value).unwrap_or_else(|e| {
            self.fail(key, v, e);
            Glob::empty()
        })
    }
}
