//! Bootstrap tokens: outside Kubernetes, the credential a proxy presents to
//! have its CSR signed. `--bootstrap-tokens FILE` holds one token per line
//! with the identities it may ask for:
//!
//! ```text
//! # token                          identity
//! 6f1c0b7e2d5a4e9f8a3b1c2d3e4f5a6b shop/reviews     # exactly ns shop, sa reviews
//! 0a1b2c3d4e5f60718293a4b5c6d7e8f9 shop/*           # any service account of shop
//! ffeeddccbbaa99887766554433221100 *                # any identity
//! ```

use std::path::Path;

use ring::digest::{digest, SHA256};

/// The identities one token may ask for.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Grant {
    Any,
    Namespace(String),
    Exactly { namespace: String, sa: String },
}

/// The tokens the CA accepts (kept as SHA-256 digests).
#[derive(Clone, Debug, Default)]
pub struct Tokens {
    entries: Vec<(Vec<u8>, Grant)>,
}

impl Tokens {
    /// Reads a token file; an error names the line.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--bootstrap-tokens {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("--bootstrap-tokens {}:{e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let mut entries = Vec::new();
        for entry in token_lines(text, "IDENTITY") {
            let (n, token, grant) = entry?;
            let grant = match grant.split_once('/') {
                None if grant == "*" => Grant::Any,
                Some((ns, "*")) if !ns.is_empty() => Grant::Namespace(ns.to_string()),
                Some((ns, sa)) if !ns.is_empty() && !sa.is_empty() => Grant::Exactly {
                    namespace: ns.to_string(),
                    sa: sa.to_string(),
                },
                _ => {
                    return Err(format!(
                        "{n}: identity {grant:?} is not `*`, `NS/*` or `NS/SA`"
                    ))
                }
            };
            entries.push((hash(token), grant));
        }
        Ok(Self { entries })
    }

    /// Whether `token` may obtain the identity `namespace`/`sa`.
    pub fn allows(&self, token: &str, namespace: &str, sa: &str) -> bool {
        let presented = hash(token);
        self.entries.iter().any(|(h, grant)| {
            *h == presented
                && match grant {
                    Grant::Any => true,
                    Grant::Namespace(ns) => ns == namespace,
                    Grant::Exactly {
                        namespace: ns,
                        sa: s,
                    } => ns == namespace && s == sa,
                }
        })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A token as kept in memory (its SHA-256).
pub(crate) fn hash(token: &str) -> Vec<u8> {
    digest(&SHA256, token.as_bytes()).as_ref().to_vec()
}

/// The entries of a token file: `(line number, token, value)` for each
/// `TOKEN VALUE` line (`#` comments, blank lines skipped); an error names
/// the line. A token has at least 16 characters.
pub(crate) fn token_lines<'a>(
    text: &'a str,
    value: &'static str,
) -> impl Iterator<Item = Result<(usize, &'a str, &'a str), String>> + 'a {
    text.lines().enumerate().filter_map(move |(n, line)| {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            return None;
        }
        let mut fields = line.split_whitespace();
        let (Some(token), Some(v), None) = (fields.next(), fields.next(), fields.next()) else {
            return Some(Err(format!("{}: expected `TOKEN {value}`", n + 1)));
        };
        if token.len() < 16 {
            return Some(Err(format!(
                "{}: a token has at least 16 characters",
                n + 1
            )));
        }
        Some(Ok((n + 1, token, v)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_only_what_the_file_says() {
        let tokens = Tokens::parse(
            "# comment\n\
             aaaaaaaaaaaaaaaa shop/reviews\n\
             bbbbbbbbbbbbbbbb shop/*  # a namespace\n\
             cccccccccccccccc *\n",
        )
        .expect("parses");
        assert!(tokens.allows("aaaaaaaaaaaaaaaa", "shop", "reviews"));
        assert!(!tokens.allows("aaaaaaaaaaaaaaaa", "shop", "ratings"));
        assert!(tokens.allows("bbbbbbbbbbbbbbbb", "shop", "ratings"));
        assert!(!tokens.allows("bbbbbbbbbbbbbbbb", "bank", "ratings"));
        assert!(tokens.allows("cccccccccccccccc", "bank", "vault"));
        assert!(!tokens.allows("dddddddddddddddd", "shop", "reviews"));
    }

    #[test]
    fn a_bad_line_is_named() {
        assert_eq!(
            Tokens::parse("aaaaaaaaaaaaaaaa shop/\n").unwrap_err(),
            "1: identity \"shop/\" is not `*`, `NS/*` or `NS/SA`"
        );
        assert!(Tokens::parse("\nshort *\n").unwrap_err().starts_with("2: "));
    }
}
