//! The protocol's fingerprint: a hash of what the messages are, so that
//! processes built from sources whose messages differ refuse to join one
//! cluster with a clear error (see `Session::from_env_str`), while editing
//! a comment or the layout changes nothing.

/// Fingerprint of the protocol: a hash of what the messages are, the
/// type definitions in `protocol/` and the files defining the wire types
/// they nest (ids, resource sets, errors), read as tokens: comments and
/// layout do not count. Processes built from sources whose messages differ
/// refuse to join one cluster with a clear error (see
/// `Session::from_env_str`).
pub(crate) const PROTOCOL: u64 = {
    let mut h = FNV_OFFSET;
    h = schema_hash(h, include_str!("mod.rs").as_bytes());
    h = schema_hash(h, include_str!("raylet.rs").as_bytes());
    h = schema_hash(h, include_str!("gcs.rs").as_bytes());
    h = schema_hash(h, include_str!("peer.rs").as_bytes());
    h = schema_hash(h, include_str!("transfer.rs").as_bytes());
    h = schema_hash(h, include_str!("../ids.rs").as_bytes());
    h = schema_hash(h, include_str!("../resources.rs").as_bytes());
    schema_hash(h, include_str!("../error.rs").as_bytes())
};

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

const fn fnv1a_byte(h: u64, b: u8) -> u64 {
    (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
}

const fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Folds Rust source into `h` token by token: comments (line, doc and
/// block) are skipped, whitespace counts only where it separates two words
/// (`pub enum`), string and char literals are taken as written.
const fn schema_hash(mut h: u64, src: &[u8]) -> u64 {
    let mut i = 0;
    let mut prev = b' ';
    let mut gap = false;
    while i < src.len() {
        let b = src[i];
        if b == b'/' && i + 1 < src.len() && src[i + 1] == b'/' {
            while i < src.len() && src[i] != b'\n' {
                i += 1;
            }
            gap = true;
            continue;
        }
        if b == b'/' && i + 1 < src.len() && src[i + 1] == b'*' {
            i += 2;
            while i + 1 < src.len() && !(src[i] == b'*' && src[i + 1] == b'/') {
                i += 1;
            }
            i += 2;
            gap = true;
            continue;
        }
        if b.is_ascii_whitespace() {
            gap = true;
            i += 1;
            continue;
        }
        if gap && is_ident(prev) && is_ident(b) {
            h = fnv1a_byte(h, b' ');
        }
        gap = false;
        if b == b'"' {
            // A string literal, escapes included, verbatim: a `//` inside
            // it is not a comment.
            h = fnv1a_byte(h, b);
            i += 1;
            while i < src.len() && src[i] != b'"' {
                if src[i] == b'\\' && i + 1 < src.len() {
                    h = fnv1a_byte(h, src[i]);
                    i += 1;
                }
                h = fnv1a_byte(h, src[i]);
                i += 1;
            }
            if i < src.len() {
                h = fnv1a_byte(h, b'"');
            }
            prev = b'"';
            i += 1;
            continue;
        }
        h = fnv1a_byte(h, b);
        prev = b;
        i += 1;
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(src: &str) -> u64 {
        schema_hash(FNV_OFFSET, src.as_bytes())
    }

    /// The fingerprint is the messages' schema: comments, doc comments and
    /// layout do not change it; a field, a type, a variant or a string
    /// literal does, and `//` inside a string is no comment.
    #[test]
    fn fingerprint_ignores_comments_and_layout_only() {
        let base = "/// A message.\npub(crate) enum Msg {\n    Ping { req: u64 },\n}\n";
        let same = [
            "pub(crate) enum Msg { Ping { req: u64 }, }",
            "/// Another comment.\npub(crate)  enum Msg {\n  // which\n  Ping { /* asks */ req: u64 },\n}",
        ];
        for s in same {
            assert_eq!(fp(base), fp(s), "{s}");
        }
        let different = [
            "pub(crate) enum Msg { Ping { req: u32 } }",
            "pub(crate) enum Msg { Ping { req: u64, from: u16 } }",
            "pub(crate) enum Msg { Pong { req: u64 } }",
            "pub(crate) enum Msg { Ping { req: u64 }, Pong }",
            "pub(crate) enumMsg { Ping { req: u64 } }",
        ];
        for d in different {
            assert_ne!(fp(base), fp(d), "{d}");
        }
        assert_ne!(
            fp(r#"const A: &str = "a//b";"#),
            fp(r#"const A: &str = "a//c";"#)
        );
    }

    /// The files the fingerprint reads hold type definitions only (their
    /// code lives with the components, and in `protocol/envelope.rs`), so
    /// the fingerprint changes with the messages, not with code that
    /// happens to sit beside them.
    #[test]
    fn protocol_files_are_types_only() {
        for (file, src) in [
            ("mod.rs", include_str!("mod.rs")),
            ("raylet.rs", include_str!("raylet.rs")),
            ("gcs.rs", include_str!("gcs.rs")),
            ("peer.rs", include_str!("peer.rs")),
            ("transfer.rs", include_str!("transfer.rs")),
        ] {
            for line in src.lines().map(str::trim_start) {
                if line.starts_with("//") {
                    continue;
                }
                for word in ["fn ", "impl ", "impl<", "static ", "const ", "macro_rules"] {
                    assert!(!line.contains(word), "protocol/{file} has code: {line}");
                }
            }
        }
    }
}
