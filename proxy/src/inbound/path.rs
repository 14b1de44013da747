//! Request paths as authorization sees them: merged slashes, dot segments
//! resolved, unreserved characters decoded; an encoded `/` or `\`, a raw
//! `\`, a bad escape or `..` above the root is refused instead of guessed
//! at. The inbound side forwards the normalized path, so the application
//! receives exactly the path that was authorized.

/// Why a path was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path does not start with `/`")]
    NotAbsolute,
    #[error("encoded `/` or `\\` in the path")]
    EncodedSeparator,
    #[error("`\\` in the path")]
    Backslash,
    #[error("malformed percent-encoding in the path")]
    BadEscape,
    #[error("`..` above the root")]
    AboveRoot,
}

/// The normalized form of `path` (no query).
pub fn normalize(path: &str) -> Result<String, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let decoded = decode_unreserved(path)?;
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || trailing {
        out.push('/');
    }
    Ok(out)
}

/// Decodes `%XX` of unreserved characters (RFC 3986: ALPHA DIGIT - . _ ~),
/// upper-cases the hex of every other escape, refuses `%2F`, `%5C`, raw
/// `\` and bad escapes.
fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadEscape)?;
                let value = std::str::from_utf8(hex)
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or(PathError::BadEscape)?;
                match value {
                    b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                    b if b.is_ascii_alphanumeric() || b"-._~".contains(&b) => {
                        out.push(char::from(b))
                    }
                    b => out.push_str(&format!("%{b:02X}")),
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            _ => {
                // Multi-byte UTF-8 is copied whole: find the char boundary.
                let ch = path[i..].chars().next().ok_or(PathError::BadEscape)?;
                out.push(ch);
                i += ch.len_utf8();
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_what_a_server_would_resolve() {
        for (input, expected) in [
            ("/", "/"),
            ("/admin", "/admin"),
            ("//admin", "/admin"),
            ("/a/../admin", "/admin"),
            ("/./admin", "/admin"),
            ("/admin/", "/admin/"),
            ("/admin/.", "/admin/"),
            ("/x/..", "/"),
            ("/%61dmin", "/admin"),
            ("/a/%2E%2E/admin", "/admin"),
            ("/a%20b", "/a%20b"),
            ("/a%3fb", "/a%3Fb"),
            ("/caf\u{e9}", "/caf\u{e9}"),
        ] {
            assert_eq!(normalize(input).as_deref(), Ok(expected), "{input}");
        }
    }

    #[test]
    fn refuses_ambiguous_paths() {
        assert_eq!(normalize("/%2Fadmin"), Err(PathError::EncodedSeparator));
        assert_eq!(normalize("/%2fadmin"), Err(PathError::EncodedSeparator));
        assert_eq!(normalize("/%5Cadmin"), Err(PathError::EncodedSeparator));
        assert_eq!(normalize("/\\admin"), Err(PathError::Backslash));
        assert_eq!(normalize("/../admin"), Err(PathError::AboveRoot));
        assert_eq!(normalize("/%2e%2e/admin"), Err(PathError::AboveRoot));
        assert_eq!(normalize("/%zz"), Err(PathError::BadEscape));
        assert_eq!(normalize("/%4"), Err(PathError::BadEscape));
        assert_eq!(normalize("admin"), Err(PathError::NotAbsolute));
    }
}
