//! Diagnostics: every problem found in a job file, each with its file, line and column.

use std::fmt;
use std::path::{Path, PathBuf};

/// How bad a [`Diagnostic`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// The job file cannot be used.
    Error,
    /// The job file can be used, but probably not as meant.
    Warning,
}

impl Severity {
    /// The spelling used in messages (`error`, `warning`).
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One problem in a job file (or in its prompts file).
///
/// Displays as `FILE:LINE:COL: error: MESSAGE` (or `warning:`), followed by a line
/// `  hint: HINT` when there is a hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file the problem is in, as the user named it (prompts files: joined to the job file's
    /// folder).
    pub file: PathBuf,
    /// 1-based line.
    pub line: u32,
    /// 1-based column, in characters.
    pub col: u32,
    /// Error or warning.
    pub severity: Severity,
    /// What is wrong.
    pub message: String,
    /// How to fix it, when there is something useful to say.
    pub hint: Option<String>,
}

impl Diagnostic {
    /// Whether this is an error (not a warning).
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.severity,
            self.message
        )?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// A job file that cannot be used: every problem found, errors and warnings, sorted by position.
#[derive(Debug, thiserror::Error)]
pub struct JobFileError {
    /// Every error and warning, in file order.
    pub diagnostics: Vec<Diagnostic>,
}

impl JobFileError {
    /// How many of the diagnostics are errors.
    pub fn error_count(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.is_error()).count()
    }

    /// How many of the diagnostics are warnings.
    pub fn warning_count(&self) -> usize {
        self.diagnostics.len() - self.error_count()
    }
}

impl fmt::Display for JobFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Which file a position is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum FileId {
    /// The job file itself.
    Job,
    /// Its `prompts_file`.
    Prompts,
}

/// A position in one of the two files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Pos {
    /// The file.
    pub file: FileId,
    /// 1-based line.
    pub line: u32,
    /// 1-based column.
    pub col: u32,
}

impl Pos {
    /// The start of the job file, for problems of the file as a whole.
    pub const START: Pos = Pos {
        file: FileId::Job,
        line: 1,
        col: 1,
    };

    /// A position in the job file.
    pub fn job(line: u32, col: u32) -> Pos {
        Pos {
            file: FileId::Job,
            line,
            col,
        }
    }

    /// The start of a line of the prompts file.
    pub fn prompts_line(line: u32) -> Pos {
        Pos {
            file: FileId::Prompts,
            line,
            col: 1,
        }
    }
}

/// Collects diagnostics while a job file is checked, then sorts them by position.
#[derive(Debug)]
pub(crate) struct Diags {
    job_path: PathBuf,
    prompts_path: Option<PathBuf>,
    list: Vec<(Pos, Severity, String, Option<String>)>,
}

impl Diags {
    /// An empty collector for the job file at `job_path`.
    pub fn new(job_path: &Path) -> Diags {
        Diags {
            job_path: job_path.to_path_buf(),
            prompts_path: None,
            list: Vec::new(),
        }
    }

    /// Names the prompts file, so that positions in it can be displayed.
    pub fn set_prompts_path(&mut self, path: PathBuf) {
        self.prompts_path = Some(path);
    }

    /// Records an error.
    pub fn error(&mut self, at: Pos, message: impl Into<String>, hint: Option<String>) {
        self.list.push((at, Severity::Error, message.into(), hint));
    }

    /// Records a warning.
    pub fn warning(&mut self, at: Pos, message: impl Into<String>, hint: Option<String>) {
        self.list
            .push((at, Severity::Warning, message.into(), hint));
    }

    /// Records an error or a warning.
    pub fn push(
        &mut self,
        severity: Severity,
        at: Pos,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        self.list.push((at, severity, message.into(), hint));
    }

    /// Whether any error was recorded.
    pub fn has_errors(&self) -> bool {
        self.list.iter().any(|d| d.1 == Severity::Error)
    }

    /// The file name to show for a position.
    pub fn display_file(&self, file: FileId) -> &Path {
        match file {
            FileId::Job => &self.job_path,
            FileId::Prompts => self.prompts_path.as_deref().unwrap_or(&self.job_path),
        }
    }

    /// How to refer to `pos` from a message about a position in `from`: `line N` in the same
    /// file, `FILE:N` in the other.
    pub fn refer(&self, pos: Pos, from: FileId) -> String {
        if pos.file == from {
            format!("line {}", pos.line)
        } else {
            format!("{}:{}", self.display_file(pos.file).display(), pos.line)
        }
    }

    /// Every diagnostic, sorted by file (job file first) and position, identical ones once.
    pub fn finish(mut self) -> Vec<Diagnostic> {
        // A stable sort keeps problems at one position in the order they were found.
        self.list.sort_by_key(|d| d.0);
        let mut seen = std::collections::HashSet::new();
        let list: Vec<_> = std::mem::take(&mut self.list)
            .into_iter()
            .filter(|d| seen.insert(d.clone()))
            .collect();
        list.into_iter()
            .map(|(pos, severity, message, hint)| Diagnostic {
                file: self.display_file(pos.file).to_path_buf(),
                line: pos.line,
                col: pos.col,
                severity,
                message,
                hint,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_file_line_col_severity_message_then_hint() {
        let d = Diagnostic {
            file: PathBuf::from("jobs/a.yaml"),
            line: 3,
            col: 7,
            severity: Severity::Error,
            message: "unknown key `imag_num`".into(),
            hint: Some("did you mean `image_num`?".into()),
        };
        assert_eq!(
            d.to_string(),
            "jobs/a.yaml:3:7: error: unknown key `imag_num`\n  hint: did you mean `image_num`?"
        );
        let w = Diagnostic {
            severity: Severity::Warning,
            hint: None,
            ..d
        };
        assert_eq!(
            w.to_string(),
            "jobs/a.yaml:3:7: warning: unknown key `imag_num`"
        );
    }

    #[test]
    fn finish_sorts_by_file_then_position_and_drops_repeats() {
        let mut diags = Diags::new(Path::new("a.yaml"));
        diags.set_prompts_path(PathBuf::from("p.txt"));
        diags.warning(Pos::prompts_line(1), "p", None);
        diags.error(Pos::job(5, 1), "late", None);
        diags.error(Pos::job(2, 9), "early", None);
        diags.error(Pos::job(5, 1), "late", None);
        let out = diags.finish();
        let lines: Vec<String> = out.iter().map(|d| d.to_string()).collect();
        assert_eq!(
            lines,
            [
                "a.yaml:2:9: error: early",
                "a.yaml:5:1: error: late",
                "p.txt:1:1: warning: p"
            ]
        );
    }

    #[test]
    fn refer_names_the_other_file() {
        let mut diags = Diags::new(Path::new("a.yaml"));
        diags.set_prompts_path(PathBuf::from("dir/p.txt"));
        assert_eq!(diags.refer(Pos::job(4, 2), FileId::Job), "line 4");
        assert_eq!(
            diags.refer(Pos::prompts_line(9), FileId::Job),
            "dir/p.txt:9"
        );
    }
}
