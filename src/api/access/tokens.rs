//! The admin tokens: a [`TokenSet`] of named tokens with roles, from
//! `--admin-tokens-file` (YAML, hashes only) and the single legacy token
//! (`TOLLGATE_ADMIN_TOKEN`, `--admin-token-file`: named `admin`, role
//! `admin`), held in [`AdminTokens`] and swapped whole when the file changes.
//!
//! ```yaml
//! tokens:
//!   - name: ci            # 1-64 of [A-Za-z0-9._@-]; shown in errors and the audit trail
//!     role: keys          # read | keys | admin
//!     sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
//! ```
//!
//! `sha256` is the hex SHA-256 of the token (`printf %s "$TOKEN" | sha256sum`),
//! so the file holds no secret. A call's token is hashed and compared with
//! every entry in constant time. The file is read again when its content
//! changes (checked every [`RELOAD_EVERY`]); a new file with a mistake is
//! refused whole, logged, counted (`tollgate_admin_tokens_reload_errors_total`),
//! and the tokens in use stay.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::{Deserialize, Deserializer};
use sha2::{Digest, Sha256};

use super::Role;

/// How often the tokens file is looked at for changes.
pub const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// The name of the legacy single token.
pub const LEGACY_NAME: &str = "admin";

/// One token: its name, role and hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// Its name (not secret).
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// SHA-256 of the token.
    pub sha256: [u8; 32],
}

/// The tokens in force.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenSet {
    tokens: Vec<Token>,
    /// Whether any source of tokens was configured (without one, the Admin
    /// service is off and says how to turn it on).
    configured: bool,
}

/// Where the set came from, to read it again.
#[derive(Debug, Clone)]
struct Sources {
    file: PathBuf,
    legacy: Option<Token>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileShape {
    tokens: Vec<Line>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    name: String,
    role: Role,
    #[serde(deserialize_with = "sha256_hex")]
    sha256: [u8; 32],
}

fn sha256_hex<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
    let s = String::deserialize(d)?;
    let bytes = hex::decode(s.trim()).ok().filter(|b| b.len() == 32).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "sha256: must be the hex SHA-256 of the token (64 hex digits, `printf %s \"$TOKEN\" | sha256sum`), got {:?}",
            s
        ))
    })?;
    let mut out = [0u8; 32];
    out.copy_from_slice(&bytes);
    Ok(out)
}

fn valid_name(n: &str) -> bool {
    (1..=64).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_alphanumeric() || b".-_@".contains(&b))
}

/// SHA-256 of a token.
pub fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Compares in time that does not depend on where the inputs differ.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl TokenSet {
    /// No token at all: the Admin service is off.
    pub fn unconfigured() -> Self {
        Self::default()
    }

    /// The single legacy token, as `admin` with role admin.
    pub fn legacy(token: &str) -> Self {
        Self { tokens: vec![legacy_token(token)], configured: true }
    }

    /// Parses a tokens file's text; `legacy` (the single token, if also
    /// given) joins the set. Errors name the entry and the field (YAML
    /// errors also the line).
    pub fn parse(text: &str, legacy: Option<&Token>) -> Result<Self, String> {
        let shape: FileShape = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        let mut tokens: Vec<Token> = legacy.cloned().into_iter().collect();
        for (i, line) in shape.tokens.into_iter().enumerate() {
            let at = format!("tokens[{i}]");
            if !valid_name(&line.name) {
                return Err(format!("{at}.name: {:?} must be 1 to 64 of A-Z a-z 0-9 . - _ @", line.name));
            }
            let whose = |t: &Token| {
                if legacy.is_some_and(|l| l == t) {
                    "the single admin token (TOLLGATE_ADMIN_TOKEN or --admin-token-file), named \"admin\"".to_string()
                } else {
                    format!("token {:?}", t.name)
                }
            };
            if let Some(t) = tokens.iter().find(|t| t.name == line.name) {
                return Err(format!("{at}.name: {:?} is taken by {}; names must be unique", line.name, whose(t)));
            }
            if let Some(t) = tokens.iter().find(|t| t.sha256 == line.sha256) {
                return Err(format!("{at}.sha256: the same token as {}; each token must be different", whose(t)));
            }
            tokens.push(Token { name: line.name, role: line.role, sha256: line.sha256 });
        }
        Ok(Self { tokens, configured: true })
    }

    /// Reads and parses a tokens file.
    pub fn read(path: &Path, legacy: Option<&Token>) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&text, legacy).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Whether any token source was configured.
    pub fn configured(&self) -> bool {
        self.configured
    }

    /// The tokens, in file order (the legacy one first).
    pub fn tokens(&self) -> &[Token] {
        &self.tokens
    }

    /// The token `given` is, if any: its hash is compared with every
    /// entry's, in constant time, without stopping at a match.
    pub fn find(&self, given: &str) -> Option<&Token> {
        let h = hash(given);
        let mut found = None;
        for t in &self.tokens {
            if constant_time_eq(&t.sha256, &h) && found.is_none() {
                found = Some(t);
            }
        }
        found
    }
}

fn legacy_token(token: &str) -> Token {
    Token { name: LEGACY_NAME.into(), role: Role::Admin, sha256: hash(token) }
}

/// The token set in force, shared by every listener; swapped whole when the
/// tokens file changes.
#[derive(Clone)]
pub struct AdminTokens {
    current: Arc<ArcSwap<TokenSet>>,
    sources: Option<Arc<Sources>>,
}

impl AdminTokens {
    /// A set that never changes.
    pub fn fixed(set: TokenSet) -> Self {
        Self { current: Arc::new(ArcSwap::from_pointee(set)), sources: None }
    }

    /// The tokens of `file` (if any) and of the legacy `token` (if any),
    /// checked now: a bad file stops the start with the error.
    pub fn load(file: Option<&Path>, token: Option<&str>) -> Result<Self, String> {
        let legacy = token.map(legacy_token);
        let Some(file) = file else {
            return Ok(Self::fixed(token.map_or_else(TokenSet::unconfigured, TokenSet::legacy)));
        };
        let set = TokenSet::read(file, legacy.as_ref())?;
        let sources = Sources { file: file.to_path_buf(), legacy };
        Ok(Self { current: Arc::new(ArcSwap::from_pointee(set)), sources: Some(Arc::new(sources)) })
    }

    /// The set in force now.
    pub fn current(&self) -> Arc<TokenSet> {
        self.current.load_full()
    }

    /// Starts the task that reads the tokens file again when its content
    /// changes (nothing without a file). A file that cannot be read or
    /// parsed keeps the tokens in force; the error is logged once per
    /// content.
    pub fn watch(&self) {
        let Some(sources) = self.sources.clone() else { return };
        let current = self.current.clone();
        tokio::spawn(async move {
            let mut last = std::fs::read(&sources.file).ok().map(|b| Sha256::digest(&b));
            let mut tick = tokio::time::interval(RELOAD_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let (digest, outcome) = match tokio::fs::read(&sources.file).await {
                    Ok(bytes) => (
                        Some(Sha256::digest(&bytes)),
                        String::from_utf8(bytes)
                            .map_err(|_| "not UTF-8".to_string())
                            .and_then(|t| TokenSet::parse(&t, sources.legacy.as_ref())),
                    ),
                    Err(e) => (None, Err(e.to_string())),
                };
                if digest == last {
                    continue;
                }
                last = digest;
                match outcome {
                    Ok(set) => {
                        let n = set.tokens().len();
                        current.store(Arc::new(set));
                        tracing::info!(file = %sources.file.display(), tokens = n, "admin tokens reloaded");
                    }
                    Err(e) => {
                        metrics::counter!("tollgate_admin_tokens_reload_errors_total").increment(1);
                        tracing::error!(
                            file = %sources.file.display(),
                            "admin tokens file not reloaded, the tokens in force stay: {e}"
                        );
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(t: &str) -> String {
        hex::encode(hash(t))
    }

    #[test]
    fn parses_and_finds() {
        let yaml = format!(
            "tokens:\n  - name: ci\n    role: keys\n    sha256: {}\n  - name: dash\n    role: read\n    sha256: {}\n",
            h("ci-token-0123456789"),
            h("dash-token-0123456789").to_uppercase()
        );
        let set = TokenSet::parse(&yaml, None).unwrap();
        assert_eq!(set.find("ci-token-0123456789").map(|t| (t.name.as_str(), t.role)), Some(("ci", Role::Keys)));
        assert_eq!(set.find("dash-token-0123456789").map(|t| t.role), Some(Role::Read));
        assert!(set.find("other").is_none());
        let legacy = legacy_token("the-legacy-token-000");
        let both = TokenSet::parse(&yaml, Some(&legacy)).unwrap();
        assert_eq!(both.find("the-legacy-token-000").map(|t| (t.name.as_str(), t.role)), Some(("admin", Role::Admin)));
        assert!(TokenSet::parse("tokens: []", None).unwrap().configured());
    }

    #[test]
    fn mistakes_are_named() {
        let ok = h("x-token-0123456789");
        let cases = [
            (format!("tokens:\n  - name: ci\n    role: writer\n    sha256: {ok}\n"), "tokens[0].role"),
            (format!("tokens:\n  - name: ci\n    role: writer\n    sha256: {ok}\n"), "line 3"),
            ("tokens:\n  - name: ci\n    role: read\n    sha256: abc\n".to_string(), "tokens[0]: sha256: must be"),
            ("tokens:\n  - name: ci\n    role: read\n    sha256: abc\n".to_string(), "64 hex digits"),
            (format!("tokens:\n  - name: 'a b'\n    role: read\n    sha256: {ok}\n"), "tokens[0].name"),
            (
                format!(
                    "tokens:\n  - {{name: ci, role: read, sha256: {ok}}}\n  - {{name: ci, role: read, sha256: {}}}\n",
                    h("y")
                ),
                "tokens[1].name: \"ci\" is taken by token \"ci\"",
            ),
            (
                format!(
                    "tokens:\n  - {{name: a, role: read, sha256: {ok}}}\n  - {{name: b, role: read, sha256: {ok}}}\n"
                ),
                "tokens[1].sha256: the same token as token \"a\"",
            ),
            (format!("tokens:\n  - {{name: a, role: read, sha265: {ok}}}\n"), "sha265"),
        ];
        for (yaml, needle) in cases {
            let e = TokenSet::parse(&yaml, None).unwrap_err();
            assert!(e.contains(needle), "{e:?} should contain {needle:?}");
        }
        let legacy = legacy_token("x-token-0123456789");
        let e = TokenSet::parse(&format!("tokens:\n  - {{name: b, role: read, sha256: {ok}}}\n"), Some(&legacy))
            .unwrap_err();
        assert!(e.contains("single admin token"), "{e}");
        let e =
            TokenSet::parse(&format!("tokens:\n  - {{name: admin, role: read, sha256: {}}}\n", h("z")), Some(&legacy))
                .unwrap_err();
        assert!(e.contains("tokens[0].name: \"admin\" is taken by the single admin token"), "{e}");
    }
}
