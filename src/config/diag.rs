//! Config diagnostics: an error or warning tied to a file, line and column.
//!
//! Owns the one text format operators see, in the server log and in `sluicegate
//! validate` alike: `file:line:col: message` for errors and
//! `file:line:col: warning: message` for warnings. The message after the position keeps
//! the reference service's wording where one exists, so existing log alerts still match.

use std::fmt;
use std::sync::Arc;

use super::yaml::Pos;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file as the operator named it (a path), shared by every diagnostic of the file.
    pub file: Arc<str>,
    pub pos: Pos,
    pub severity: Severity,
    pub message: String,
}

impl Diagnostic {
    pub fn error(file: &Arc<str>, pos: Pos, message: impl Into<String>) -> Self {
        Diagnostic { file: file.clone(), pos, severity: Severity::Error, message: message.into() }
    }

    pub fn warning(file: &Arc<str>, pos: Pos, message: impl Into<String>) -> Self {
        Diagnostic { file: file.clone(), pos, severity: Severity::Warning, message: message.into() }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.severity {
            Severity::Error => write!(f, "{}:{}: {}", self.file, self.pos, self.message),
            Severity::Warning => write!(f, "{}:{}: warning: {}", self.file, self.pos, self.message),
        }
    }
}

/// Every diagnostic of one load, in file order then position order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn push(&mut self, d: Diagnostic) {
        self.0.push(d);
    }

    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.is_error())
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| !d.is_error())
    }

    pub fn has_errors(&self) -> bool {
        self.errors().next().is_some()
    }

    pub fn error_count(&self) -> usize {
        self.errors().count()
    }

    pub fn extend(&mut self, other: Diagnostics) {
        self.0.extend(other.0);
    }
}

impl fmt::Display for Diagnostics {
    /// One diagnostic per line, errors and warnings in the order they were found.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}
