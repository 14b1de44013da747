//! Bounds checked before a YAML parser sees the text: its size, and how
//! deep flow collections (`[`, `{`) nest. libyaml's work grows with the
//! square of flow nesting (100,000 nested brackets take minutes), so the
//! depth is measured by a linear scan that skips quoted scalars and
//! comments, and refused past a bound no real rule comes near.

/// Largest rule file accepted.
pub const MAX_SOURCE_BYTES: usize = 8 << 20;

/// Deepest flow nesting accepted (rules nest a handful of levels).
pub const MAX_FLOW_DEPTH: usize = 64;

/// Where `source` first nests flow collections deeper than `max`:
/// 1-based (line, column).
pub fn too_deep(source: &str, max: usize) -> Option<(usize, usize)> {
    #[derive(PartialEq)]
    enum State {
        Plain,
        Single,
        Double,
        Comment,
    }
    let (mut state, mut depth, mut escaped) = (State::Plain, 0usize, false);
    let (mut line, mut column) = (1, 0);
    let mut previous = b'\n';
    for &b in source.as_bytes() {
        column += 1;
        match state {
            State::Plain => match b {
                b'[' | b'{' => {
                    depth += 1;
                    if depth > max {
                        return Some((line, column));
                    }
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                b'\'' => state = State::Single,
                b'"' => state = State::Double,
                b'#' if previous.is_ascii_whitespace() => state = State::Comment,
                _ => {}
            },
            State::Single if b == b'\'' => state = State::Plain,
            State::Double if escaped => escaped = false,
            State::Double if b == b'\\' => escaped = true,
            State::Double if b == b'"' => state = State::Plain,
            State::Comment if b == b'\n' => state = State::Plain,
            _ => {}
        }
        if b == b'\n' {
            line += 1;
            column = 0;
        }
        previous = b;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_flow_nesting_outside_quotes_and_comments() {
        assert_eq!(too_deep("a: [[[1]]]\n", 3), None);
        assert_eq!(too_deep("a: [[[[1]]]]\n", 3), Some((1, 7)));
        assert_eq!(too_deep("a: '[[[[x'\nb: \"[[[[\\\"[[\"\n# [[[[\n", 3), None);
        assert_eq!(
            too_deep("a: {b: [c, {d: [1]}]}\nb: [[[[[x]]]]]\n", 4),
            Some((2, 8))
        );
        let deep = format!("hosts: {}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(
            too_deep(&deep, MAX_FLOW_DEPTH),
            Some((1, 8 + MAX_FLOW_DEPTH))
        );
    }
}
