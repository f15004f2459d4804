//! `gatehouse doctor` and `gatehouse external` (issue 5): the printed
//! configurations run for real by
//! nginx, Apache, Caddy and HAProxy in front of Gatehouse on loopback, with
//! the doctor (the binary) checking through them, WebSocket included.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::support::*;

use crate::support::apps::*;

// ------------------------------------------------------ the proxies in front

/// The public side: a test CA and a certificate for HOST signed by it.
struct Site {
    dir: tempfile::TempDir,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    /// Certificate and key in one file, as HAProxy wants it.
    combined: PathBuf,
}

fn site() -> Site {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let dir = tempfile::tempdir().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "Gatehouse test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf = CertificateParams::new(vec![HOST.to_string()]).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let ca = write("ca.pem", &ca_cert.pem());
    let cert = write("site.pem", &leaf_cert.pem());
    let key = write("site.key", &leaf_key.serialize_pem());
    let combined = write(
        "site-combined.pem",
        &format!("{}{}", leaf_cert.pem(), leaf_key.serialize_pem()),
    );
    Site {
        dir,
        ca,
        cert,
        key,
        combined,
    }
}

/// `gatehouse external KIND` for a proxy on `127.0.0.1:port` in front of
/// `proxy`; returns the printed text.
async fn external(kind: &str, site: &Site, port: u16, proxy: &Proxy) -> String {
    let cert = if kind == "haproxy" {
        &site.combined
    } else {
        &site.cert
    };
    let out = within(
        Command::new(BIN)
            .args(["external", kind, "--host", HOST])
            .arg("--to")
            .arg(format!("https://127.0.0.1:{}", proxy.https.port()))
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--cert")
            .arg(cert)
            .arg("--key")
            .arg(&site.key)
            .arg("--gatehouse-ca")
            .arg(proxy.cert_path())
            .output(),
    )
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    // The Gatehouse side of the bargain, which `gatehouse()` applied.
    assert!(
        text.contains("TRUSTED_PROXIES=127.0.0.1/32,::1/128"),
        "{text}"
    );
    text
}

/// A proxy process, killed when dropped; its output goes to a log file.
struct Front {
    child: Child,
    log: PathBuf,
    port: u16,
}

impl Front {
    async fn start(
        program: &str,
        args: &[String],
        dir: &Path,
        env: &[(&str, &str)],
        port: u16,
    ) -> Front {
        let log = dir.join(format!("{}.log", program.rsplit('/').next().unwrap()));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            // A group of its own: nginx's workers and Apache's children
            // are stopped with it (see Drop).
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{program}: {e} (installed by scripts/test)"));
        let mut front = Front { child, log, port };
        front.ready().await;
        front
    }

    /// Waits until the port accepts, or fails with the program's output.
    async fn ready(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "exited with {status}: {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "port {} never opened: {}",
                self.port,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Front {
    /// Killing the main process alone would leave nginx's workers and
    /// Apache's children serving: the whole group goes, by its id.
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .status();
        }
    }
}

/// Runs the doctor binary through the proxy in front, as a user would.
async fn doctor(front: &Front, site: &Site) -> (i32, serde_json::Value, String) {
    let out = within(
        Command::new(BIN)
            .arg("doctor")
            .arg(format!("https://{HOST}:{}", front.port))
            .arg("--connect-to")
            .arg(format!("127.0.0.1:{}", front.port))
            .arg("--ca")
            .arg(&site.ca)
            .args(["--token", TOKEN, "--json", "--timeout", "5"])
            .output(),
    )
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let json: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{e}: {text} {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap_or(-1), json, text)
}

fn finding_ids(json: &serde_json::Value) -> Vec<String> {
    let mut ids: Vec<String> = json["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

fn assert_all_checks_pass(json: &serde_json::Value, code: i32, text: &str, log: &str) {
    assert_eq!(code, 0, "{text}\n--- proxy log ---\n{log}");
    let checks = json["checks"].as_array().unwrap();
    for name in ALL_CHECKS {
        let c = checks
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no check {name}: {text}"));
        assert_eq!(c["ok"], true, "{name}: {text}");
    }
    assert!(json["findings"].as_array().unwrap().is_empty(), "{text}");
}

fn nginx_main(dir: &Path, site_conf: &Path) -> PathBuf {
    let d = dir.display();
    let conf = format!(
        "user root;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log stderr warn;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
         \x20 fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
         \x20 include {};\n}}\n",
        site_conf.display()
    );
    let p = dir.join("nginx.conf");
    std::fs::write(&p, conf).unwrap();
    p
}

async fn start_nginx(site: &Site, port: u16, site_conf_text: &str) -> Front {
    let dir = site.dir.path();
    let site_conf = dir.join("site.conf");
    std::fs::write(&site_conf, site_conf_text).unwrap();
    let main = nginx_main(dir, &site_conf);
    let args = vec![
        "-p".to_string(),
        dir.display().to_string(),
        "-c".into(),
        main.display().to_string(),
        "-g".into(),
        "daemon off;".into(),
    ];
    Front::start("/usr/sbin/nginx", &args, dir, &[], port).await
}

#[tokio::test]
async fn broken_nginx_is_diagnosed_as_exactly_its_two_faults() {
    let apps = apps().await;
    let proxy = gatehouse(&apps, "127.0.0.1/32,::1/128").await;
    let site = site();
    let port = free_port();
    // The two classic mistakes: no Upgrade/Connection headers, and a
    // proxy_pass with a URI part that strips /admin.
    let up = format!("https://127.0.0.1:{}", proxy.https.port());
    let body = format!(
        "    proxy_set_header Host $host;
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    proxy_set_header X-Forwarded-Proto $scheme;
    location / {{ proxy_pass {up}; }}
    location /admin/ {{ proxy_pass {up}/; }}
"
    );
    let front = hand_written_nginx(&site, port, &body).await;
    let (code, json, text) = doctor(&front, &site).await;
    assert_eq!(code, 1, "{text}");
    assert_eq!(
        finding_ids(&json),
        ["path-rewritten", "websocket-headers"],
        "{text}"
    );
    let path = finding(&json, "path-rewritten");
    assert_eq!(path["path"], "/admin");
    assert!(
        path["message"]
            .as_str()
            .unwrap()
            .contains("stripped the /admin prefix"),
        "{text}"
    );
    assert!(
        path["fix"].as_str().unwrap().contains("no URI part"),
        "{text}"
    );
    let ws = finding(&json, "websocket-headers");
    assert!(
        ws["fix"]
            .as_str()
            .unwrap()
            .contains("proxy_set_header Upgrade $http_upgrade"),
        "{text}"
    );

    // The human report says the same in words.
    let out = within(
        Command::new(BIN)
            .arg("doctor")
            .arg(format!("https://{HOST}:{port}"))
            .arg("--connect-to")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--ca")
            .arg(&site.ca)
            .args(["--token", TOKEN])
            .output(),
    )
    .await
    .unwrap();
    let human = String::from_utf8_lossy(&out.stdout);
    assert!(
        human.contains("[websocket-headers]") && human.contains("[path-rewritten] /admin:"),
        "{human}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_bare_nginx_is_diagnosed_as_dropping_host_and_forwarding_headers() {
    // What many first attempts look like: upgrades handled, but nginx's
    // defaults for the rest (Host becomes the upstream's address, no
    // X-Forwarded-For).
    let apps = apps().await;
    let proxy = gatehouse(&apps, "127.0.0.1/32,::1/128").await;
    let site = site();
    let port = free_port();
    let body = format!(
        "    location / {{
        proxy_pass https://127.0.0.1:{gh};
        proxy_http_version 1.1;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection \"upgrade\";
    }}
",
        gh = proxy.https.port()
    );
    let front = hand_written_nginx(&site, port, &body).await;
    let (code, json, text) = doctor(&front, &site).await;
    assert_eq!(code, 1, "{text}");
    assert_eq!(
        finding_ids(&json),
        ["forwarding-headers", "host-rewritten"],
        "{text}"
    );
    let host = finding(&json, "host-rewritten");
    assert!(
        host["message"]
            .as_str()
            .unwrap()
            .contains(&format!("127.0.0.1:{}", proxy.https.port())),
        "{text}"
    );
    let fwd = finding(&json, "forwarding-headers");
    assert!(
        fwd["message"].as_str().unwrap().contains("X-Forwarded-For"),
        "{text}"
    );
    // The Testing list itself passes: only the diagnosis finds the faults.
    for c in json["checks"].as_array().unwrap() {
        assert_eq!(c["ok"], true, "{text}");
    }
    proxy.stop().await;
}

#[tokio::test]
async fn a_proxy_on_the_http_port_without_the_scheme_is_told_about_the_redirect() {
    let apps = apps().await;
    let proxy = gatehouse(&apps, "127.0.0.1/32,::1/128").await;
    let site = site();
    let port = free_port();
    // Gatehouse's HTTP port, and no X-Forwarded-Proto: every request gets
    // the HTTPS redirect (browsers loop between the two).
    let body = format!(
        "    proxy_set_header Host $host;
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    proxy_http_version 1.1;
    proxy_set_header Upgrade $http_upgrade;
    proxy_set_header Connection \"upgrade\";
    location / {{ proxy_pass http://127.0.0.1:{gh}; }}
",
        gh = proxy.http.port()
    );
    let front = hand_written_nginx(&site, port, &body).await;
    let (code, json, text) = doctor(&front, &site).await;
    assert_eq!(code, 1, "{text}");
    assert_eq!(
        finding_ids(&json),
        ["forwarding-headers", "https-redirect"],
        "{text}"
    );
    let fwd = finding(&json, "forwarding-headers");
    let msg = fwd["message"].as_str().unwrap();
    assert!(
        msg.contains("X-Forwarded-Proto") && msg.contains("plain HTTP"),
        "{text}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn nginx_in_front_of_a_stopped_gatehouse_is_named_as_the_one_answering() {
    let apps = apps().await;
    let proxy = gatehouse(&apps, "127.0.0.1/32,::1/128").await;
    let site = site();
    let port = free_port();
    let conf = external("nginx", &site, port, &proxy).await;
    // Stopped, with its certificate still on disk for nginx to load.
    let mut proxy = proxy;
    let server = proxy.server.take().unwrap();
    within(server.shutdown(Duration::from_secs(5))).await;
    let front = start_nginx(&site, port, &conf).await;
    let (code, json, text) = doctor(&front, &site).await;
    assert_eq!(code, 1);
    assert_eq!(finding_ids(&json), ["front-proxy-error"], "{text}");
    let msg = json["findings"][0]["message"].as_str().unwrap();
    assert!(
        msg.contains("502") && msg.contains("Server: nginx"),
        "{text}"
    );
    drop(front);
    drop(proxy);
}

#[tokio::test]
async fn gatehouse_not_trusting_the_proxy_in_front_is_named_with_the_fix() {
    let apps = apps().await;
    // The default trusted ranges are private networks, not loopback.
    let proxy = Proxy::start_env(&layout(&apps), &[("HOSTNAME", HOST)]).await;
    let site = site();
    let port = free_port();
    let conf = external("nginx", &site, port, &proxy).await;
    let front = start_front("nginx", &site, port, &conf).await;
    let (code, json, text) = doctor(&front, &site).await;
    assert_eq!(code, 1);
    assert_eq!(finding_ids(&json), ["untrusted-proxy"], "{text}");
    assert!(
        json["findings"][0]["fix"]
            .as_str()
            .unwrap()
            .contains("TRUSTED_PROXIES=127.0.0.1/32"),
        "{text}"
    );
    proxy.stop().await;
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

/// nginx with a configuration written by hand: `body` inside a server
/// block that terminates TLS for HOST on `port` with the site certificate.
async fn hand_written_nginx(site: &Site, port: u16, body: &str) -> Front {
    let conf = format!(
        "server {{\n    listen 127.0.0.1:{port} ssl;\n    server_name {HOST};\n    \
         ssl_certificate {};\n    ssl_certificate_key {};\n{body}}}\n",
        site.cert.display(),
        site.key.display()
    );
    start_nginx(site, port, &conf).await
}

/// The finding with this id in the doctor's JSON.
fn finding<'a>(json: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    json["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == id)
        .unwrap_or_else(|| panic!("no finding {id}: {json}"))
}

/// Starts KIND on the configuration `gatehouse external` printed.
async fn start_front(kind: &str, site: &Site, port: u16, conf: &str) -> Front {
    let dir = site.dir.path();
    let path = |name: &str| dir.join(name).display().to_string();
    match kind {
        "nginx" => start_nginx(site, port, conf).await,
        "apache" => {
            std::fs::write(dir.join("site.conf"), conf).unwrap();
            let m = "/usr/lib/apache2/modules";
            let user = if is_root() {
                "User www-data\nGroup www-data\n"
            } else {
                ""
            };
            let main = format!(
                "ServerRoot {d}\nServerName localhost\nPidFile {d}/httpd.pid\nDefaultRuntimeDir {d}\n\
                 ErrorLog /dev/stderr\nLogLevel warn\n{user}\
                 LoadModule mpm_event_module {m}/mod_mpm_event.so\n\
                 LoadModule authz_core_module {m}/mod_authz_core.so\n\
                 LoadModule socache_shmcb_module {m}/mod_socache_shmcb.so\n\
                 LoadModule ssl_module {m}/mod_ssl.so\n\
                 LoadModule headers_module {m}/mod_headers.so\n\
                 LoadModule proxy_module {m}/mod_proxy.so\n\
                 LoadModule proxy_http_module {m}/mod_proxy_http.so\n\
                 Include {d}/site.conf\n",
                d = dir.display()
            );
            std::fs::write(dir.join("httpd.conf"), main).unwrap();
            let args = ["-f".to_string(), path("httpd.conf"), "-DFOREGROUND".into()];
            Front::start("/usr/sbin/apache2", &args, dir, &[], port).await
        }
        "caddy" => {
            std::fs::write(dir.join("Caddyfile"), conf).unwrap();
            let args = [
                "run".to_string(),
                "--config".into(),
                path("Caddyfile"),
                "--adapter".into(),
                "caddyfile".into(),
            ];
            // Caddy's state goes to the test's folder, not $HOME.
            let (home, data, config) = (path(""), path("data"), path("config"));
            let env = [
                ("HOME", home.as_str()),
                ("XDG_DATA_HOME", data.as_str()),
                ("XDG_CONFIG_HOME", config.as_str()),
            ];
            Front::start("/usr/bin/caddy", &args, dir, &env, port).await
        }
        "haproxy" => {
            std::fs::write(dir.join("haproxy.cfg"), conf).unwrap();
            let args = ["-f".to_string(), path("haproxy.cfg"), "-db".into()];
            Front::start("/usr/sbin/haproxy", &args, dir, &[], port).await
        }
        other => panic!("no test setup for {other}"),
    }
}

/// The "done": KIND with the printed configuration in front of
/// Gatehouse, and the doctor through it passes, WebSocket included.
async fn printed_config_passes_the_doctor(kind: &str) {
    let apps = apps().await;
    let proxy = gatehouse(&apps, "127.0.0.1/32,::1/128").await;
    let site = site();
    let port = free_port();
    let conf = external(kind, &site, port, &proxy).await;
    let front = start_front(kind, &site, port, &conf).await;
    let (code, json, text) = doctor(&front, &site).await;
    assert_all_checks_pass(&json, code, &text, &front.log());
    proxy.stop().await;
}

#[tokio::test]
async fn nginx_from_external_passes_the_doctor() {
    printed_config_passes_the_doctor("nginx").await;
}

#[tokio::test]
async fn apache_from_external_passes_the_doctor() {
    printed_config_passes_the_doctor("apache").await;
}

#[tokio::test]
async fn caddy_from_external_passes_the_doctor() {
    printed_config_passes_the_doctor("caddy").await;
}

#[tokio::test]
async fn haproxy_from_external_passes_the_doctor() {
    printed_config_passes_the_doctor("haproxy").await;
}

#[tokio::test]
async fn external_refuses_bad_arguments_with_exit_2() {
    let out = within(
        Command::new(BIN)
            .args([
                "external",
                "nginx",
                "--host",
                HOST,
                "--to",
                "https://gatehouse/api",
            ])
            .output(),
    )
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("without a path"));
}

#[tokio::test]
async fn the_default_caddyfile_adapts() {
    // What most users copy: port 443, Caddy's own certificate. `caddy
    // adapt` parses it fully without binding or loading files.
    let dir = tempfile::tempdir().unwrap();
    let out = within(
        Command::new(BIN)
            .args(["external", "caddy", "--host", "vault.example.com"])
            .args(["--to", "https://gatehouse:443"])
            .output(),
    )
    .await
    .unwrap();
    assert!(out.status.success());
    let file = dir.path().join("Caddyfile");
    std::fs::write(&file, &out.stdout).unwrap();
    let adapted = within(
        Command::new("/usr/bin/caddy")
            .arg("adapt")
            .arg("--config")
            .arg(&file)
            .args(["--adapter", "caddyfile"])
            .env("HOME", dir.path())
            .output(),
    )
    .await
    .unwrap();
    let json = String::from_utf8_lossy(&adapted.stdout);
    assert!(
        adapted.status.success(),
        "{json}{}",
        String::from_utf8_lossy(&adapted.stderr)
    );
    assert!(
        json.contains("vault.example.com") && json.contains("gatehouse:443"),
        "{json}"
    );
    assert!(json.contains("/etc/gatehouse/cert.pem"), "{json}");
}
