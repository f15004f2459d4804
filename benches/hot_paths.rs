//! Micro-benchmarks of the pure functions on every request: route lookup,
//! forwarding fields written into a head, hop-by-hop stripping. `cargo bench`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use gatehouse::base::head_fields::write_with;
use gatehouse::config::ForwardedFor;
use gatehouse::proxy::forwarded::{strip_hop_by_hop, Forwarding};
use gatehouse::runtime::router::{normalize, Router};
use http::{HeaderMap, HeaderName, HeaderValue};

fn browser_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "vault.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        ),
        ("accept", "application/json, text/plain, */*"),
        ("accept-language", "en-US,en;q=0.5"),
        ("accept-encoding", "gzip, deflate, br, zstd"),
        (
            "authorization",
            "Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.e30.sig",
        ),
        ("connection", "keep-alive"),
        ("cookie", "a=1; b=2"),
        ("x-forwarded-for", "203.0.113.9"),
    ] {
        h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    h
}

fn route_lookup(c: &mut Criterion) {
    let router = Router::new(vec![
        ("/".to_string(), 0),
        ("/api".to_string(), 1),
        ("/admin".to_string(), 2),
    ]);
    // What the request pipeline does: normalise the path, then walk the
    // candidates (the first one that admits the client wins).
    let lookup = |path: &str| {
        let norm = normalize(path);
        let found = router.candidates(&norm.path).next().copied();
        found
    };
    c.bench_function("route /api/v1/Vault", |b| {
        b.iter(|| lookup(black_box("/api/v1/Vault")))
    });
    c.bench_function("route /_framework/dotnet.wasm", |b| {
        b.iter(|| lookup(black_box("/_framework/dotnet.wasm")))
    });
    c.bench_function("route /api/./v1//%56ault (normalised)", |b| {
        b.iter(|| lookup(black_box("/api/./v1//%56ault")))
    });
}

fn forwarding(c: &mut Criterion) {
    let ip = HeaderValue::from_static("203.0.113.7");
    let proto = HeaderValue::from_static("https");
    let host = HeaderValue::from_static("vault.example.com");
    let prefix = HeaderValue::from_static("/admin/");
    let id = HeaderValue::from_static("0b6e3c1f2a9d4e57b8c0d1e2f3a4b5c6");
    let base = browser_headers();
    let fields = Forwarding {
        client_ip: &ip,
        proto: &proto,
        host: Some(&host),
        prefix: Some(&prefix),
        mode: ForwardedFor::Replace,
        https: true,
        request_id: &id,
    };
    // What an HTTP/1 writer does with them: ask of every field of the map
    // whether ours replaces it, then write ours from bytes.
    let mut out = Vec::with_capacity(1024);
    c.bench_function("forwarding fields", |b| {
        b.iter(|| {
            out.clear();
            write_with(black_box(&base), &fields, &mut out);
            out.len()
        })
    });
}

fn hop_by_hop(c: &mut Criterion) {
    let base = browser_headers();
    c.bench_function("strip_hop_by_hop", |b| {
        b.iter_batched(
            || base.clone(),
            |mut h| {
                strip_hop_by_hop(&mut h);
                h
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, route_lookup, forwarding, hop_by_hop);
criterion_main!(benches);
