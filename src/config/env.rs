//! Environment variables, read once into a map and never written back.
//!
//! AliasVault's install keeps its settings in a `.env` file that Docker
//! passes as real environment variables. Gatehouse reads the same names from
//! the process environment first and then from `.env`, so both a container
//! and a bare binary next to an AliasVault folder behave the same. The
//! process environment is never mutated (see STYLE rule 10): tests build an
//! [`Env`] from pairs instead.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::error::ConfigError;

/// Every variable Gatehouse understands. Only these are copied out of the
/// process environment, so an unrelated variable can never change behaviour.
pub const KNOWN: &[&str] = &[
    "HTTP_PORT",
    "HTTPS_PORT",
    "FORCE_HTTPS_REDIRECT",
    "HOSTNAME",
    "MAX_UPLOAD_SIZE_MB",
    "DEPLOYMENT_MODE",
    "GATEHOUSE_WORKERS",
    "GATEHOUSE_LISTEN_HTTP_PORT",
    "GATEHOUSE_LISTEN_HTTPS_PORT",
    "GATEHOUSE_DIAGNOSTICS_TOKEN",
    "TRUSTED_PROXIES",
    "ADMIN_IP_ALLOWLIST",
    "LETSENCRYPT_ENABLED",
    "GATEHOUSE_LAYOUT",
    "GATEHOUSE_ACME",
    "GATEHOUSE_ACME_EMAIL",
    "GATEHOUSE_ACME_DIRECTORY",
    "GATEHOUSE_ACME_CHALLENGE",
    "GATEHOUSE_ACME_CA_ROOTS",
    "GATEHOUSE_REDIS_URL",
];

/// Where a value came from, so an error can point at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Process,
    DotEnv { path: PathBuf, line: usize },
    Given,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Process => f.write_str("environment"),
            Origin::DotEnv { path, line } => write!(f, "{}:{line}", path.display()),
            Origin::Given => f.write_str("environment"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Value {
    pub value: String,
    pub origin: Origin,
}

/// The layered variables: process environment over `.env`.
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: HashMap<String, Value>,
}

impl Env {
    /// An empty environment: only the configuration file and defaults apply.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Variables given directly (tests, `gatehouse demo`).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let vars = pairs
            .into_iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    Value {
                        value: v.to_string(),
                        origin: Origin::Given,
                    },
                )
            })
            .collect();
        Env { vars }
    }

    /// Reads the known variables from the process environment, then fills the
    /// gaps from `dotenv` (or `.env` in the working directory when `None`).
    /// A missing default `.env` is fine; a missing explicit one is an error.
    pub fn load(dotenv: Option<&Path>) -> Result<Self, ConfigError> {
        let mut vars = HashMap::new();
        let (path, required) = match dotenv {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(".env"), false),
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                for (key, value, line) in parse_dotenv(&text) {
                    if KNOWN.contains(&key.as_str()) {
                        let origin = Origin::DotEnv {
                            path: path.clone(),
                            line,
                        };
                        vars.insert(key, Value { value, origin });
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {}
            Err(e) => {
                return Err(ConfigError::io(&path, e));
            }
        }
        for key in KNOWN {
            if let Ok(value) = std::env::var(key) {
                vars.insert(
                    key.to_string(),
                    Value {
                        value,
                        origin: Origin::Process,
                    },
                );
            }
        }
        Ok(Env { vars })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.vars.get(key)
    }
}

/// Parses `KEY=VALUE` lines as docker compose's `env_file` does: `#`
/// comments, optional `export `, single or double quotes around the value.
/// Returns (key, value, 1-based line).
pub(crate) fn parse_dotenv(text: &str) -> Vec<(String, String, usize)> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        let mut value = value.trim();
        if value.len() >= 2
            && ((value.starts_with('"') && value.ends_with('"'))
                || (value.starts_with('\'') && value.ends_with('\'')))
        {
            value = &value[1..value.len() - 1];
        } else if let Some(idx) = value.find(" #") {
            // An unquoted value ends at an inline comment.
            value = value[..idx].trim_end();
        }
        out.push((key.to_string(), value.to_string(), i + 1));
    }
    out
}

impl super::ConfigError {
    /// An environment variable with a value that is not valid.
    pub fn var(name: &str, value: &Value, msg: impl Into<String>) -> Self {
        super::ConfigError {
            origin: value.origin.to_string(),
            position: None,
            key: Some(name.to_string()),
            msg: format!("invalid value {:?}: {}", value.value, msg.into()),
            snippet: None,
            cause: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotenv_lines() {
        let text = "# comment\nHTTP_PORT=8080\nexport HOSTNAME=\"vault.example.com\"\n\nADMIN_IP_ALLOWLIST=\nDEPLOYMENT_MODE=install # trailing\nbroken line\nX='a b'\n";
        let parsed = parse_dotenv(text);
        assert_eq!(
            parsed,
            vec![
                ("HTTP_PORT".into(), "8080".into(), 2),
                ("HOSTNAME".into(), "vault.example.com".into(), 3),
                ("ADMIN_IP_ALLOWLIST".into(), "".into(), 5),
                ("DEPLOYMENT_MODE".into(), "install".into(), 6),
                ("X".into(), "a b".into(), 8),
            ]
        );
    }
}
