//! Numbers written into HTTP/1 heads and chunk lines without the
//! formatter (one or more per message on both sides of the proxy).

/// `n` in decimal (a `Content-Length`, a status, the numbers of a log
/// line). Two digits per division: a log line has nine numbers.
pub fn push_decimal(out: &mut Vec<u8>, n: u64) {
    if n < 10 {
        out.push(b'0' + n as u8);
        return;
    }
    const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
        2021222324252627282930313233343536373839\
        4041424344454647484950515253545556575859\
        6061626364656667686970717273747576777879\
        8081828384858687888990919293949596979899";
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    let mut n = n;
    while n >= 100 {
        let pair = (n % 100) as usize * 2;
        n /= 100;
        i -= 2;
        tmp[i..i + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    }
    if n >= 10 {
        let pair = n as usize * 2;
        i -= 2;
        tmp[i..i + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    } else {
        i -= 1;
        tmp[i] = b'0' + n as u8;
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
        // Every digit count, and each side of every power of ten.
        let mut around = vec![u64::MAX, u64::MAX - 1];
        let mut p = 1u64;
        while let Some(next) = p.checked_mul(10) {
            around.extend([p - 1, p, p + 1, next / 2 + 7]);
            p = next;
        }
        for n in (0..2_000).chain(around) {
            let mut dec = Vec::new();
            push_decimal(&mut dec, n);
            assert_eq!(dec, n.to_string().into_bytes(), "{n}");
        }
    }
}
