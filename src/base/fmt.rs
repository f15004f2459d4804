//! Numbers written into HTTP/1 heads and chunk lines without the
//! formatter (one or more per message on both sides of the proxy).

/// `n` in decimal (a `Content-Length`).
pub fn push_decimal(out: &mut Vec<u8>, n: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    let mut n = n;
    loop {
        i -= 1;
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&tmp[i..]);
}

/// `n` in lower-case hex (a chunk size, RFC 9112 §7.1).
pub fn push_hex(out: &mut Vec<u8>, n: usize) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut tmp = [0u8; 16];
    let mut i = tmp.len();
    let mut n = n;
    loop {
        i -= 1;
        tmp[i] = DIGITS[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&tmp[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_without_the_formatter() {
        for n in [0usize, 1, 9, 10, 15, 16, 255, 4096, 65_535, usize::MAX] {
            let mut hex = Vec::new();
            push_hex(&mut hex, n);
            assert_eq!(hex, format!("{n:x}").into_bytes());
            let mut dec = Vec::new();
            push_decimal(&mut dec, n as u64);
            assert_eq!(dec, n.to_string().into_bytes());
        }
    }
}
