//! The process's monotonic clock as a number, for state kept in atomics
//! (rate limits, failure marks, connection idle times).

/// Nanoseconds since the first call, offset by a second so that 0 (the
/// "never" marker of the atomics that hold these) never occurs.
pub fn now_nanos() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(std::time::Instant::now);
    epoch.elapsed().as_nanos() as u64 + 1_000_000_000
}

/// Appends the current time as an HTTP date (RFC 9110 §5.6.7,
/// IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`), rendered once a second
/// per thread: every HTTP/1 response carries one (RFC 9110 §6.6.1).
pub fn http_date(out: &mut Vec<u8>) {
    thread_local! {
        static CACHE: std::cell::Cell<(u64, [u8; 29])> = const { std::cell::Cell::new((u64::MAX, [0; 29])) };
    }
    let second = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let text = CACHE.with(|c| {
        let (at, text) = c.get();
        if at == second {
            return text;
        }
        let text = render_http_date(second);
        c.set((second, text));
        text
    });
    out.extend_from_slice(&text);
}

/// Month names as HTTP dates and nginx's log lines write them.
pub const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

fn render_http_date(second: u64) -> [u8; 29] {
    const DAYS: [&[u8; 3]; 7] = [b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun"];
    let t = time::OffsetDateTime::from_unix_timestamp(i64::try_from(second).unwrap_or(0))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let two = |n: u8| [b'0' + n / 10, b'0' + n % 10];
    let year = u16::try_from(t.year().clamp(0, 9999)).unwrap_or(0);
    let mut out = [0u8; 29];
    let mut at = 0;
    for part in [
        &DAYS[usize::from(t.weekday().number_days_from_monday())][..],
        b", ",
        &two(t.day()),
        b" ",
        MONTHS[usize::from(u8::from(t.month())) - 1],
        b" ",
        &two((year / 100) as u8),
        &two((year % 100) as u8),
        b" ",
        &two(t.hour()),
        b":",
        &two(t.minute()),
        b":",
        &two(t.second()),
        b" GMT",
    ] {
        out[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn http_dates_are_imf_fixdate() {
        assert_eq!(
            &super::render_http_date(784_111_777),
            b"Sun, 06 Nov 1994 08:49:37 GMT"
        );
        assert_eq!(
            &super::render_http_date(1_796_601_600),
            b"Mon, 07 Dec 2026 00:00:00 GMT"
        );
        let mut now = Vec::new();
        super::http_date(&mut now);
        assert_eq!(now.len(), 29);
        assert!(now.ends_with(b" GMT"));
    }
}
