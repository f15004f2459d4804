//! Issue point 10: compression of text-like responses.

use std::io::Read;

use http::Request;

use crate::support::*;

async fn typed(ct: &'static str, len: usize, encoded: bool) -> Upstream {
    upstream(move |_req| async move {
        let mut res = http::Response::new(full(vec![b'a'; len]));
        res.headers_mut()
            .insert("content-type", ct.parse().unwrap());
        res.headers_mut().insert(
            "cache-control",
            "public, max-age=31536000, immutable".parse().unwrap(),
        );
        res.headers_mut().insert("etag", "\"v1\"".parse().unwrap());
        if encoded {
            res.headers_mut()
                .insert("content-encoding", "gzip".parse().unwrap());
        }
        res
    })
    .await
}

fn req(path: &str, accept: &str) -> Request<Body> {
    Request::builder()
        .uri(path)
        .header("host", "h")
        .header("accept-encoding", accept)
        .body(full(""))
        .unwrap()
}

#[tokio::test]
async fn text_json_js_css_xml_wasm_are_compressed() {
    let json = typed("application/json", 5000, false).await;
    let wasm = typed("application/wasm", 5000, false).await;
    let png = typed("image/png", 5000, false).await;
    let small = typed("text/css", 500, false).await;
    let pre = typed("application/javascript", 5000, true).await;
    let toml = format!(
        "force_https_redirect = false\n{}",
        routes(&[
            ("/json", &json.url()),
            ("/wasm", &wasm.url()),
            ("/png", &png.url()),
            ("/small", &small.url()),
            ("/pre", &pre.url())
        ])
    );
    let px = Proxy::start(&toml).await;
    for proto in [Proto::H1, Proto::TlsH2] {
        // gzip
        let res = px.send(proto, req("/json", "gzip")).await.unwrap();
        assert_eq!(res.header("content-encoding"), Some("gzip"), "{proto:?}");
        assert_eq!(res.header("vary"), Some("Accept-Encoding"));
        assert_eq!(
            res.header("cache-control"),
            Some("public, max-age=31536000, immutable"),
            "cache headers untouched"
        );
        assert_eq!(res.header("etag"), Some("W/\"v1\""));
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&res.body[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, vec![b'a'; 5000]);
        assert!(res.body.len() < 200);
        // brotli where preferred
        let res = px
            .send(proto, req("/wasm", "gzip, deflate, br"))
            .await
            .unwrap();
        assert_eq!(res.header("content-encoding"), Some("br"), "{proto:?}");
        let mut out = Vec::new();
        brotli::Decompressor::new(&res.body[..], 4096)
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, vec![b'a'; 5000]);
        let res = px
            .send(proto, req("/wasm", "br;q=0.1, gzip"))
            .await
            .unwrap();
        assert_eq!(res.header("content-encoding"), Some("gzip"));
        // not compressed
        for (path, why) in [
            ("/png", "binary"),
            ("/small", "under 1 KiB"),
            ("/pre", "already encoded"),
        ] {
            let res = px.send(proto, req(path, "gzip, br")).await.unwrap();
            let enc = res.header("content-encoding");
            if path == "/pre" {
                assert_eq!(enc, Some("gzip"), "{why}: upstream's own encoding kept");
            } else {
                assert_eq!(enc, None, "{why}");
            }
        }
        let res = px.send(proto, req("/json", "identity")).await.unwrap();
        assert_eq!(res.header("content-encoding"), None);
        assert_eq!(res.body.len(), 5000);
    }
    px.stop().await;
}
