//! Configuration errors: always a place (file and line, or the variable) and
//! never a panic. `gatehouse check`, start-up and reload print the same text.

use std::fmt;
use std::ops::Range;
use std::path::Path;

/// A configuration problem, rendered as `file:line:col: key: message`
/// followed by the offending source line. What went wrong underneath (a
/// file that cannot be read, a certificate that does not parse) is kept
/// whole as the error's `source()`, not formatted into the message; print
/// it with `ErrorChain` to show both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// File path, `.env` path with line, or `environment`.
    pub origin: String,
    /// 1-based line and column when the error points into a file.
    /// (Files past four billion lines are not configurations.)
    pub position: Option<(u32, u32)>,
    /// The key or variable at fault, when there is one.
    pub key: Option<String>,
    pub msg: String,
    /// The source line, shown under the message.
    pub snippet: Option<String>,
    pub cause: Option<Cause>,
}

/// The error underneath a [`ConfigError`], shared so the error stays
/// cheap to clone (and one pointer wide: configuration errors are
/// returned everywhere); two are equal when they are the same error.
#[derive(Debug, Clone)]
pub struct Cause(std::sync::Arc<Box<dyn std::error::Error + Send + Sync>>);

impl PartialEq for Cause {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Cause {}

impl ConfigError {
    /// An error at `span` (byte offsets) of the file `path` whose text is `src`.
    pub fn at(
        path: &Path,
        src: &str,
        span: Range<usize>,
        key: &str,
        msg: impl Into<String>,
    ) -> Self {
        let (line, col, text) = locate(src, span.start);
        ConfigError {
            origin: path.display().to_string(),
            position: Some((
                u32::try_from(line).unwrap_or(u32::MAX),
                u32::try_from(col).unwrap_or(u32::MAX),
            )),
            key: (!key.is_empty()).then(|| key.to_string()),
            msg: msg.into(),
            snippet: Some(text.to_string()),
            cause: None,
        }
    }

    /// A TOML syntax or shape error from the parser, which carries its own span.
    pub fn toml(path: &Path, src: &str, err: &toml::de::Error) -> Self {
        let span = err.span().unwrap_or(0..0);
        let key = src.get(span.clone()).unwrap_or("").trim().to_string();
        // The parser's message is already precise ("unknown field `upstrem`,
        // expected one of ..."); keep only its first line.
        let msg = err
            .message()
            .lines()
            .next()
            .unwrap_or("invalid TOML")
            .to_string();
        let key = if key.len() <= 40 && !key.contains('\n') {
            key
        } else {
            String::new()
        };
        ConfigError::at(path, src, span, &key, msg)
    }

    /// A file that could not be read.
    pub fn io(path: &Path, err: std::io::Error) -> Self {
        ConfigError::caused(path.display().to_string(), "cannot read", err)
    }

    /// `msg` at `origin`, because of `cause`.
    pub fn caused(
        origin: impl Into<String>,
        msg: impl Into<String>,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        ConfigError {
            cause: Some(Cause(std::sync::Arc::new(Box::new(cause)))),
            ..ConfigError::other(origin, msg)
        }
    }

    /// A problem with no better place than a description of it.
    pub fn other(origin: impl Into<String>, msg: impl Into<String>) -> Self {
        ConfigError {
            origin: origin.into(),
            position: None,
            key: None,
            msg: msg.into(),
            snippet: None,
            cause: None,
        }
    }
}

fn locate(src: &str, offset: usize) -> (usize, usize, &str) {
    let offset = offset.min(src.len());
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = src[line_start..offset].chars().count() + 1;
    let line_end = src[offset..].find('\n').map_or(src.len(), |i| offset + i);
    (line, col, src[line_start..line_end].trim_end_matches('\r'))
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.origin)?;
        if let Some((line, col)) = self.position {
            write!(f, ":{line}:{col}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        // A certificate error's message is its cause (`source()`), which
        // `ErrorChain` prints after this.
        if !self.msg.is_empty() {
            write!(f, ": {}", self.msg)?;
        }
        if let (Some(snippet), Some((_, col))) = (&self.snippet, self.position) {
            write!(
                f,
                "\n    | {snippet}\n    | {:>width$}",
                "^",
                width = col as usize
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause
            .as_ref()
            .map(|c| &**c.0 as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_line_and_column() {
        let src = "http_port = 80\n[[route]]\npath = \"/\"\nupstrem = \"x\"\n";
        let start = src.find("upstrem").unwrap();
        let e = ConfigError::at(
            Path::new("g.toml"),
            src,
            start..start + 7,
            "upstrem",
            "unknown key",
        );
        assert_eq!(e.position, Some((4, 1)));
        assert_eq!(
            e.to_string(),
            "g.toml:4:1: upstrem: unknown key\n    | upstrem = \"x\"\n    | ^"
        );
    }
}
