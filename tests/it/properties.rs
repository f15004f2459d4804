//! Property tests of every byte parser Gatehouse owns (issue 10, "Also"):
//! the HTTP/1 reader (alone, and against hyper's own parser on the same
//! bytes), the PROXY protocol reader, `.env` and the configuration loader.
//! A bounded number of cases each, so they run in the test command; the
//! same entry points back the `cargo fuzz` targets in `fuzz/`.

use gatehouse::fuzzing::{self, Parsed, LIMITS};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 128,
        // Shrinking keeps going until a minimal case; bound it.
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    }
}

/// One well-formed request and how hyper should see it.
#[derive(Debug, Clone)]
struct Req {
    bytes: Vec<u8>,
    parsed: Parsed,
}

fn request() -> impl Strategy<Value = Req> {
    let method = prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]);
    let target = "(/[a-zA-Z0-9._~%-]{0,12}){1,4}(\\?[a-z0-9=&]{0,10})?";
    let fields = prop::collection::vec(("[A-Za-z][A-Za-z0-9-]{0,10}", "[ -~]{0,20}"), 0..5);
    let body = prop::collection::vec(any::<u8>(), 0..300);
    // 0: no body framing, 1: Content-Length, 2: chunked (with these chunk
    // sizes and maybe trailers).
    let framing = (
        0u8..3,
        prop::collection::vec(1usize..80, 0..6),
        any::<bool>(),
    );
    (method, target, fields, body, framing).prop_map(
        |(method, target, fields, body, (framing, sizes, trailers))| {
            let mut head = format!("{method} {target} HTTP/1.1\r\nHost: h\r\n");
            for (k, v) in &fields {
                let k = k.to_ascii_lowercase();
                // Fields that change framing or the connection are chosen
                // by the generator, not at random.
                if [
                    "content-length",
                    "transfer-encoding",
                    "connection",
                    "upgrade",
                    "host",
                    "expect",
                    "te",
                    "trailer",
                ]
                .contains(&k.as_str())
                {
                    continue;
                }
                head.push_str(&format!("x-{k}: {}\r\n", v.trim()));
            }
            let mut bytes;
            let sent_body = match framing {
                0 => {
                    head.push_str("\r\n");
                    bytes = head.into_bytes();
                    Vec::new()
                }
                1 => {
                    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
                    bytes = head.into_bytes();
                    bytes.extend_from_slice(&body);
                    body.clone()
                }
                _ => {
                    head.push_str("Transfer-Encoding: chunked\r\n\r\n");
                    bytes = head.into_bytes();
                    let mut rest = &body[..];
                    let mut sizes = sizes.into_iter();
                    while !rest.is_empty() {
                        let n = sizes.next().unwrap_or(rest.len()).min(rest.len());
                        bytes.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                        bytes.extend_from_slice(&rest[..n]);
                        bytes.extend_from_slice(b"\r\n");
                        rest = &rest[n..];
                    }
                    bytes.extend_from_slice(b"0\r\n");
                    if trailers {
                        bytes.extend_from_slice(b"x-trailer: 1\r\n");
                    }
                    bytes.extend_from_slice(b"\r\n");
                    body.clone()
                }
            };
            Req {
                bytes,
                parsed: Parsed {
                    method: method.to_string(),
                    target: target.into_bytes(),
                    body: sent_body,
                },
            }
        },
    )
}

/// Splits `bytes` into reads at the given cut points.
fn reads(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut out = Vec::new();
    let mut from = 0;
    for c in cuts.into_iter().chain([bytes.len()]) {
        if c > from {
            out.push(bytes[from..c].to_vec());
            from = c;
        }
    }
    out
}

fn run(chunks: &[Vec<u8>]) -> fuzzing::Framing {
    let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
    fuzzing::framing(&refs, LIMITS)
}

proptest! {
    #![proptest_config(config())]

    /// Well-formed pipelined requests, read in any pieces, are found whole
    /// and unrefused by Gatehouse's HTTP/1 side, and hyper finds exactly
    /// the same requests in the same bytes.
    #[test]
    fn well_formed_streams_pass_unchanged(
        reqs in prop::collection::vec(request(), 1..5),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let stream: Vec<u8> = reqs.iter().flat_map(|r| r.bytes.clone()).collect();
        let seen = run(&reads(&stream, &cuts));
        prop_assert_eq!(seen.refused, None);
        prop_assert_eq!(seen.heads, reqs.len() as u64);
        let want: Vec<Parsed> = reqs.iter().map(|r| r.parsed.clone()).collect();
        prop_assert_eq!(&seen.requests, &want);
        prop_assert_eq!(fuzzing::hyper_requests(&stream), want);
    }

    /// Differential: on mutated streams (framing fields added, line ends
    /// broken, bytes changed), every request Gatehouse's HTTP/1 side
    /// accepts is the one hyper finds at the same place in the same bytes,
    /// method, target and body: the two never disagree about where a
    /// request ends.
    #[test]
    fn reader_and_hyper_agree_on_request_boundaries(
        reqs in prop::collection::vec(request(), 1..4),
        edits in prop::collection::vec((any::<usize>(), 0usize..10, any::<u8>()), 1..4),
        cuts in prop::collection::vec(any::<usize>(), 0..4),
    ) {
        let mut stream: Vec<u8> = reqs.iter().flat_map(|r| r.bytes.clone()).collect();
        for (at, kind, byte) in edits {
            let at = at % (stream.len() + 1);
            let insert: &[u8] = match kind {
                0 => b"Content-Length: 3\r\n",
                1 => b"Transfer-Encoding: chunked\r\n",
                2 => b"Transfer-Encoding: gzip, chunked\r\n",
                3 => b"\n",
                4 => b"\r",
                5 => b" ",
                6 => b"0\r\n\r\n",
                7 => b"Content-Length: 1, 2\r\n",
                8 => b"Upgrade: websocket\r\nConnection: upgrade\r\n",
                _ => std::slice::from_ref(&byte),
            };
            stream.splice(at..at, insert.iter().copied());
        }
        let seen = run(&reads(&stream, &cuts));
        let hyper = fuzzing::hyper_requests(&stream);
        // Requests accepted before any refusal.
        let accepted = match seen.refused {
            Some((at, _)) => (at - 1) as usize,
            None => seen.requests.len(),
        }
        .min(seen.requests.len());
        for (i, (ours, theirs)) in seen.requests[..accepted].iter().zip(&hyper).enumerate() {
            prop_assert_eq!(
                ours,
                theirs,
                "request {} of {:?}",
                i,
                String::from_utf8_lossy(&stream)
            );
        }
    }

    /// Any bytes at all, in any pieces: no panic, no request is found
    /// that the bytes do not hold, and the verdict is the one the bytes
    /// read whole get.
    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..2000),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let seen = run(&reads(&bytes, &cuts));
        let found: usize = seen.requests.iter().map(|r| r.line().len() + r.body.len()).sum();
        prop_assert!(found <= bytes.len());
        let whole = run(std::slice::from_ref(&bytes));
        prop_assert_eq!(whole.refused, seen.refused);
        prop_assert_eq!(whole.requests, seen.requests);
    }

    /// PROXY v1 and v2 headers made from any addresses are read back
    /// exactly, with the bytes after them returned; nothing panics.
    #[test]
    fn proxy_headers_round_trip(
        v4 in any::<[u8; 4]>(),
        v6 in any::<[u8; 16]>(),
        port in any::<u16>(),
        rest in prop::collection::vec(any::<u8>(), 0..40),
        six in any::<bool>(),
        binary in any::<bool>(),
    ) {
        let source: std::net::SocketAddr = if six {
            (std::net::Ipv6Addr::from(v6), port).into()
        } else {
            (std::net::Ipv4Addr::from(v4), port).into()
        };
        let mut bytes = if binary {
            let mut b = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
            let (fam, addrs): (u8, Vec<u8>) = match source {
                std::net::SocketAddr::V4(a) => {
                    (0x11, [a.ip().octets().to_vec(), vec![10, 0, 0, 1], port.to_be_bytes().to_vec(), vec![0, 80]].concat())
                }
                std::net::SocketAddr::V6(a) => {
                    (0x21, [a.ip().octets().to_vec(), vec![0; 16], port.to_be_bytes().to_vec(), vec![0, 80]].concat())
                }
            };
            b.extend_from_slice(&[0x21, fam]);
            b.extend_from_slice(&(addrs.len() as u16).to_be_bytes());
            b.extend_from_slice(&addrs);
            b
        } else {
            let (proto, dst) = if six { ("TCP6", "::1") } else { ("TCP4", "10.0.0.1") };
            format!("PROXY {proto} {} {dst} {port} 80\r\n", source.ip()).into_bytes()
        };
        bytes.extend_from_slice(&rest);
        let got = fuzzing::proxy_protocol(&bytes, true).unwrap();
        prop_assert_eq!(got, gatehouse::conn::proxy_protocol::Header::Proxy(Some(source), rest));
    }

    #[test]
    fn proxy_reader_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600), trusted in any::<bool>()) {
        let mut b = bytes;
        // Half the cases start with a signature so the parsers are reached.
        if b.first().is_some_and(|x| x % 2 == 0) {
            b.splice(0..0, b"PROXY ".iter().copied());
        } else if b.first().is_some_and(|x| x % 3 == 0) {
            b.splice(0..0, b"\r\n\r\n\0\r\nQUIT\n".iter().copied());
        }
        let _ = fuzzing::proxy_protocol(&b, trusted);
    }

    /// `.env`: generated lines are read back (quotes and comments as
    /// compose reads them); any text never panics.
    #[test]
    fn dotenv_lines_round_trip(
        pairs in prop::collection::vec(("[A-Z][A-Z0-9_]{0,15}", "[a-zA-Z0-9./:_-]{0,20}", 0u8..3), 0..8),
        noise in "[ -~\n]{0,200}",
    ) {
        let mut text = String::new();
        for (k, v, style) in &pairs {
            match style {
                0 => text.push_str(&format!("{k}={v}\n")),
                1 => text.push_str(&format!("export {k}=\"{v}\"\n")),
                _ => text.push_str(&format!("{k}='{v}' \n# a comment\n")),
            }
        }
        let got: Vec<(String, String)> = fuzzing::dotenv(&text).into_iter().map(|(k, v, _)| (k, v)).collect();
        let want: Vec<(String, String)> = pairs.iter().map(|(k, v, _)| (k.clone(), v.clone())).collect();
        prop_assert_eq!(got, want);
        let _ = fuzzing::dotenv(&noise);
    }

    /// The configuration loader: any text gives a configuration or an
    /// error naming the file with a line, never a panic; mutations of a
    /// valid file likewise.
    #[test]
    fn config_loader_never_panics(
        noise in "[ -~\n]{0,300}",
        at in any::<usize>(),
        insert in "[ -~\n]{0,12}",
    ) {
        if let Err(e) = fuzzing::config(&noise) {
            prop_assert!(e.to_string().contains("fuzz.toml"), "{}", e);
        }
        let mut valid = String::from(
            "http_port = 8080\nmax_uri_bytes = \"8K\"\n[listener]\nkeepalive_timeout = \"5s\"\n[[route]]\npath = \"/api\"\nupstream = \"http://api:3001\"\ncase_insensitive = true\nupgrades = [\"websocket\"]\n",
        );
        let mut at = at % (valid.len() + 1);
        while !valid.is_char_boundary(at) {
            at -= 1;
        }
        valid.insert_str(at, &insert);
        if let Err(e) = fuzzing::config(&valid) {
            prop_assert!(e.to_string().contains("fuzz.toml"), "{}", e);
        }
    }
}

/// A chunked body as an upstream could send it: the data, the encoding
/// (sizes in either case, extensions, declared trailers) and the trailers.
fn chunked_body() -> impl Strategy<Value = (Vec<u8>, Vec<u8>, Vec<(String, String)>)> {
    (
        prop::collection::vec(any::<u8>(), 0..2000),
        prop::collection::vec((1usize..400, any::<bool>(), any::<bool>()), 0..8),
        prop::collection::vec(("[a-z][a-z0-9-]{0,8}", "[ -~]{0,12}"), 0..3),
    )
        .prop_map(|(data, shape, trailers)| {
            let mut out = Vec::new();
            let mut rest = &data[..];
            let mut shape = shape.into_iter().cycle();
            while !rest.is_empty() {
                let (n, upper, ext) = shape.next().unwrap_or((rest.len(), false, false));
                let n = n.min(rest.len());
                let size = if upper {
                    format!("{n:X}")
                } else {
                    format!("{n:x}")
                };
                out.extend_from_slice(size.as_bytes());
                if ext {
                    out.extend_from_slice(b";ext=\"v\"");
                }
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(&rest[..n]);
                out.extend_from_slice(b"\r\n");
                rest = &rest[n..];
            }
            out.extend_from_slice(b"0\r\n");
            let trailers: Vec<(String, String)> = trailers
                .into_iter()
                .map(|(k, v)| (format!("x-{k}"), v.trim().to_string()))
                .collect();
            for (k, v) in &trailers {
                out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
            }
            out.extend_from_slice(b"\r\n");
            (data, out, trailers)
        })
}

proptest! {
    #![proptest_config(config())]

    /// Issue 13: the upstream side's chunked decoder gives back exactly the
    /// data and trailers that were encoded, read in any pieces.
    #[test]
    fn chunked_bodies_decode_to_what_was_encoded(
        (data, encoded, trailers) in chunked_body(),
        cuts in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        let owned = reads(&encoded, &cuts);
        let got = fuzzing::chunked(&owned.iter().map(Vec::as_slice).collect::<Vec<_>>());
        prop_assert_eq!(got.invalid, None);
        prop_assert!(got.ended);
        prop_assert!(got.data == data, "data differs");
        let want: Vec<(String, Vec<u8>)> = trailers
            .iter()
            .map(|(k, v)| (k.clone(), v.as_bytes().to_vec()))
            .collect();
        let mut have = got.trailers.clone();
        have.sort();
        let mut want = want;
        want.sort();
        // Repeated names keep every value; the map may order them apart.
        prop_assert_eq!(have, want);
    }

    /// Any bytes: no panic, no more data out than in, the same verdict
    /// whole or in pieces.
    #[test]
    fn chunked_decoder_on_arbitrary_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..600),
        cuts in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        let owned = reads(&bytes, &cuts);
        let pieces = fuzzing::chunked(&owned.iter().map(Vec::as_slice).collect::<Vec<_>>());
        prop_assert!(pieces.data.len() <= bytes.len());
        prop_assert_eq!(fuzzing::chunked(&[&bytes[..]]), pieces);
    }

    /// Differential: a chunk-size line means the same size to httparse's
    /// parser as to ours (hex in either case, extensions ignored).
    #[test]
    fn chunk_size_lines_agree_with_httparse(
        size in 0u64..(1 << 40),
        upper in any::<bool>(),
        ext in prop::option::of("[a-z]{1,5}(=[a-z0-9]{1,5})?"),
        junk in prop::collection::vec(any::<u8>(), 0..12),
    ) {
        let mut line = if upper { format!("{size:X}") } else { format!("{size:x}") }.into_bytes();
        if let Some(e) = &ext {
            line.extend_from_slice(format!(";{e}").as_bytes());
        }
        let mut framed = line.clone();
        framed.extend_from_slice(b"\r\n");
        prop_assert_eq!(fuzzing::chunk_size(&line), Some(size));
        match httparse::parse_chunk_size(&framed) {
            Ok(httparse::Status::Complete((_, theirs))) => prop_assert_eq!(theirs, size),
            other => prop_assert!(false, "httparse: {:?}", other),
        }
        // Any line: where both accept, they agree.
        let mut any = junk.clone();
        any.extend_from_slice(b"\r\n");
        if let (Some(ours), Ok(httparse::Status::Complete((_, theirs)))) =
            (fuzzing::chunk_size(&junk), httparse::parse_chunk_size(&any))
        {
            prop_assert_eq!(ours, theirs);
        }
    }
}
