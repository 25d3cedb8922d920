//! Opaque page tokens: the service's own cursor text, hex-encoded so that callers treat it
//! as a token rather than something to build by hand.

const MAX_TOKEN_CHARS: usize = 1024;

pub fn encode(cursor: &str) -> String {
    hex(cursor.as_bytes())
}

/// The cursor text, or `None` when the token is not one this encoding produced.
pub fn decode(token: &str) -> Option<String> {
    if !token.len().is_multiple_of(2) || token.len() > MAX_TOKEN_CHARS || !token.is_ascii() {
        return None;
    }
    let bytes = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&token[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .ok()?;
    String::from_utf8(bytes).ok()
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_garbage_is_refused() {
        let cursor = "v1|li|d|1790000000000000|01a20d4f-4851-7165-bc24-a4a860ad92d1";
        assert_eq!(decode(&encode(cursor)).as_deref(), Some(cursor));
        for garbage in ["zz", "abc", "ff", "é1"] {
            assert_eq!(decode(garbage), None, "{garbage}");
        }
    }
}
