//! Issue 11: the container drop-in. Public and listening ports, the
//! container layout, and the image itself run by a private Docker daemon
//! in AliasVault's own compose service definition.

use crate::support::*;

/// The public ports go into redirects; the listeners bind others.
#[tokio::test]
async fn public_and_listening_ports_are_two_things() {
    let up = echo().await;
    let px = Proxy::start_env(
        &routes(&[("/", &up.url())]),
        &[
            ("HTTP_PORT", "23080"),
            ("HTTPS_PORT", "23643"),
            ("GATEHOUSE_LISTEN_HTTP_PORT", "0"),
            ("GATEHOUSE_LISTEN_HTTPS_PORT", "0"),
        ],
    )
    .await;
    assert_ne!(px.https.port(), 23643, "bound where the listener was told");
    let res = px.get("/x?y=1").await;
    assert_eq!(res.status, 301);
    assert_eq!(
        res.header("location"),
        Some("https://localhost:23643/x?y=1")
    );
    px.stop().await;
    // `gatehouse check` prints both.
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = run(
        dir.path(),
        &["check"],
        &[
            ("HTTPS_PORT", "23643"),
            ("GATEHOUSE_LISTEN_HTTPS_PORT", "443"),
            ("GATEHOUSE_LISTEN_HTTP_PORT", "80"),
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("http  0.0.0.0:80 (redirect to https, port 23643)"),
        "{out}"
    );
    assert!(
        out.contains("https 0.0.0.0:443 (public port 23643; routes"),
        "{out}"
    );
}

/// `GATEHOUSE_LAYOUT=container` (set by the image): AliasVault's container
/// paths without a file.
#[tokio::test]
async fn the_container_layout_uses_aliasvaults_container_paths() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = run(dir.path(), &["check"], &[("GATEHOUSE_LAYOUT", "container")]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("/etc/nginx/ssl/cert.pem"), "{out}");
    let cfg = gatehouse::config::load(
        &gatehouse::config::Source::BuiltIn,
        &gatehouse::config::Env::from_pairs([
            ("GATEHOUSE_LAYOUT", "container"),
            ("LETSENCRYPT_ENABLED", "true"),
        ]),
    )
    .unwrap();
    assert_eq!(
        cfg.letsencrypt_dir,
        std::path::Path::new("/etc/nginx/ssl-letsencrypt")
    );
    match &cfg.tls {
        gatehouse::config::TlsSettings::Files { cert, key, webroot } => {
            assert_eq!(cert, std::path::Path::new("/etc/nginx/ssl/cert.pem"));
            assert_eq!(key, std::path::Path::new("/etc/nginx/ssl/key.pem"));
            assert_eq!(webroot, std::path::Path::new("/var/www/certbot"));
        }
        other => panic!("{other:?}"),
    }
    let paths: Vec<&str> = cfg.routes.iter().map(|r| r.upstream.url.as_str()).collect();
    assert_eq!(
        paths,
        ["http://admin:3002", "http://api:3001", "http://client:3000"]
    );
}

// ------------------------------------------------------------ the image

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const HOST: &str = "vault.test";

/// A private Docker daemon for this test: its own data and exec roots and
/// socket in a temp dir, container ports published on 127.0.0.1 only
/// (`--ip`). Dropped: compose down, the daemon stopped by its PID, its
/// `docker0` bridge deleted.
struct Daemon {
    dir: tempfile::TempDir,
    child: std::process::Child,
    /// Compose projects to take down.
    projects: Vec<PathBuf>,
}

impl Daemon {
    fn host(&self) -> String {
        format!("unix://{}", self.dir.path().join("docker.sock").display())
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = outside_cargo(program);
        c.env("DOCKER_HOST", self.host())
            .env("DOCKER_BUILDKIT", "0");
        c
    }

    /// Runs `docker ARGS`, panicking with its output when it fails.
    fn docker(&self, args: &[&str]) -> String {
        run_ok(self.cmd("docker").args(args))
    }

    fn compose(&self, dir: &Path, args: &[&str]) -> String {
        run_ok(
            self.cmd("docker-compose")
                .current_dir(dir)
                .args(["-p", "gatehousetest"])
                .args(args),
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        for dir in std::mem::take(&mut self.projects) {
            if std::thread::panicking() {
                // What the containers said, for the failure's report.
                if let Ok(o) = self
                    .cmd("docker-compose")
                    .current_dir(&dir)
                    .args(["-p", "gatehousetest", "logs", "--no-color"])
                    .output()
                {
                    eprintln!("{}", String::from_utf8_lossy(&o.stdout));
                }
            }
            let _ = self
                .cmd("docker-compose")
                .current_dir(&dir)
                .args(["-p", "gatehousetest", "down", "--volumes", "--timeout", "5"])
                .output();
        }
        // Stopped by its own PID, never by name.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let _ = Command::new("ip")
            .args(["link", "delete", "docker0"])
            .output();
    }
}

/// A command without the variables `cargo test` gives this process
/// (`CARGO_MANIFEST_DIR` and the like): a build script that watches one
/// (ring's does) would otherwise rebuild what scripts/test built before
/// the suite.
fn outside_cargo(program: &str) -> Command {
    let mut c = Command::new(program);
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("CARGO_") && k != "CARGO_HOME" && k != "CARGO_TARGET_DIR" {
            c.env_remove(&key);
        }
    }
    c
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("the program runs");
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `check` (a condition) every 100 ms for up to `limit`.
async fn until<F: FnMut() -> bool>(limit: Duration, what: &str, mut check: F) {
    let deadline = tokio::time::Instant::now() + limit;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {limit:?}"
        );
        tick.tick().await;
    }
}

async fn start_daemon() -> Daemon {
    let dir = tempfile::Builder::new()
        .prefix("gh-docker")
        .tempdir()
        .unwrap();
    let p = dir.path();
    let log = std::fs::File::create(p.join("dockerd.log")).unwrap();
    let child = Command::new("dockerd")
        .arg("--data-root")
        .arg(p.join("root"))
        .arg("--exec-root")
        .arg(p.join("exec"))
        .arg("-H")
        .arg(format!("unix://{}", p.join("docker.sock").display()))
        .arg("--pidfile")
        .arg(p.join("dockerd.pid"))
        .args(["--ip", "127.0.0.1"])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("dockerd (Debian's docker.io, installed by scripts/test)");
    let d = Daemon {
        dir,
        child,
        projects: Vec::new(),
    };
    until(Duration::from_secs(60), "dockerd ready", || {
        d.cmd("docker")
            .arg("info")
            .output()
            .is_ok_and(|o| o.status.success())
    })
    .await;
    d
}

/// An image FROM scratch with the given files (host path → image path).
fn build_image(d: &Daemon, tag: &str, files: &[(&Path, &str)], dockerfile_tail: &str) {
    let ctx = tempfile::tempdir().unwrap();
    let mut df = String::from("FROM scratch\n");
    for (i, (from, to)) in files.iter().enumerate() {
        let name = format!("f{i}");
        if from.is_dir() {
            copy_dir(from, &ctx.path().join(&name));
        } else {
            std::fs::copy(from, ctx.path().join(&name)).unwrap();
        }
        df.push_str(&format!("COPY {name} {to}\n"));
    }
    df.push_str(dockerfile_tail);
    std::fs::write(ctx.path().join("Dockerfile"), df).unwrap();
    d.docker(&[
        "build",
        "--quiet",
        "--tag",
        tag,
        &ctx.path().display().to_string(),
    ]);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.path().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// AliasVault's `reverse-proxy` service as its docker-compose.yml ships
/// it (the smtp dependency aside), and the three services it fronts.
const COMPOSE: &str = r#"services:
  client:
    image: gh-client:test
    expose:
      - "3000"
  api:
    image: gh-api:test
    expose:
      - "3001"
  admin:
    image: gh-admin:test
    expose:
      - "3002"
  reverse-proxy:
    image: ghcr.io/aliasvault/reverse-proxy:latest
    ports:
      - "${HTTP_PORT:-80}:80"
      - "${HTTPS_PORT:-443}:443"
    volumes:
      - ./certificates/ssl:/etc/nginx/ssl:rw
      - ./certificates/letsencrypt:/etc/nginx/ssl-letsencrypt:rw
      - ./certificates/letsencrypt/www:/var/www/certbot:rw
    depends_on:
      - admin
      - client
      - api
    restart: always
    env_file: .env
"#;

fn sans_of(pem: &Path) -> Vec<String> {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::pem_file_iter(pem)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
    cert.subject_alternative_name()
        .unwrap()
        .map(|s| {
            s.value
                .general_names
                .iter()
                .map(|n| n.to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// A GET over TLS that trusts only `ca` (so it also says which
/// certificate is served), `None` when the handshake or request fails.
async fn tls_get(port: u16, ca: &Path, path: &str) -> Option<Resp> {
    send(
        Proto::TlsH1,
        ([127, 0, 0, 1], port).into(),
        ca,
        get(path, HOST),
    )
    .await
    .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_drops_into_aliasvaults_compose_file() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut d = start_daemon().await;
    // The image, with the project's own script; a target folder of its
    // own, since the one of this test run is locked by cargo.
    let target = root.join("target/container-test");
    let image_log = run_ok(
        d.cmd(&root.join("scripts/image").display().to_string())
            .env("CARGO_TARGET_DIR", &target),
    );
    println!("{}", image_log.trim());
    let size: u64 = d
        .docker(&[
            "image",
            "inspect",
            "--format",
            "{{.Size}}",
            "gatehouse:latest",
        ])
        .trim()
        .parse()
        .unwrap();
    println!("image size: {size} bytes");
    assert!(size < 15 * 1024 * 1024, "image is {size} bytes");
    let exposed = d.docker(&[
        "image",
        "inspect",
        "--format",
        "{{json .Config.ExposedPorts}}",
        "gatehouse:latest",
    ]);
    assert!(
        exposed.contains("80/tcp") && exposed.contains("443/tcp"),
        "{exposed}"
    );
    // A file mounted at /etc/gatehouse/gatehouse.toml replaces the layout.
    let conf = tempfile::tempdir().unwrap();
    std::fs::write(
        conf.path().join("gatehouse.toml"),
        "[[route]]\npath = \"/\"\nupstream = \"http://elsewhere:8080\"\n",
    )
    .unwrap();
    let mount = format!(
        "{}:/etc/gatehouse/gatehouse.toml:ro",
        conf.path().join("gatehouse.toml").display()
    );
    let out = d.docker(&["run", "--rm", "-v", &mount, "gatehouse:latest", "check"]);
    assert!(out.contains("configuration: gatehouse.toml: ok"), "{out}");
    assert!(out.contains("/ -> http://elsewhere:8080"), "{out}");
    assert!(out.contains("http  0.0.0.0:80 "), "binds 80 inside: {out}");
    // The upstreams, FROM scratch too: busybox httpd for / and /api, the
    // project's WebSocket tool (static) for /admin and its WebSocket.
    run_ok(
        outside_cargo("cargo")
            .current_dir(&root)
            .env("CARGO_TARGET_DIR", &target)
            .args([
                "build",
                "--locked",
                "--release",
                "--target",
                "x86_64-unknown-linux-musl",
                "--example",
                "wsbench",
            ]),
    );
    let www = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(www.path().join("client")).unwrap();
    std::fs::write(www.path().join("client/index.html"), "client app\n").unwrap();
    std::fs::create_dir_all(www.path().join("api")).unwrap();
    std::fs::write(www.path().join("api/api"), "api OK\n").unwrap();
    let busybox = Path::new("/bin/busybox");
    build_image(
        &d,
        "gh-client:test",
        &[
            (busybox, "/bin/busybox"),
            (&www.path().join("client"), "/www"),
        ],
        "ENTRYPOINT [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"3000\", \"-h\", \"/www\"]\n",
    );
    build_image(
        &d,
        "gh-api:test",
        &[(busybox, "/bin/busybox"), (&www.path().join("api"), "/www")],
        "ENTRYPOINT [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"3001\", \"-h\", \"/www\"]\n",
    );
    let wsbench = target.join("x86_64-unknown-linux-musl/release/examples/wsbench");
    build_image(
        &d,
        "gh-admin:test",
        &[(&wsbench, "/wsbench")],
        "ENTRYPOINT [\"/wsbench\", \"service\", \"0.0.0.0:3002\", \"admin panel\"]\n",
    );

    // An AliasVault install folder: its compose file, our override, .env.
    let install = tempfile::tempdir().unwrap();
    let dir = install.path();
    std::fs::write(dir.join("docker-compose.yml"), COMPOSE).unwrap();
    std::fs::copy(
        root.join("docker-compose.override.yml"),
        dir.join("docker-compose.override.yml"),
    )
    .unwrap();
    d.projects.push(dir.to_path_buf());
    let (http, https) = (free_port(), free_port());
    let ports = format!("HTTP_PORT={http}\nHTTPS_PORT={https}\n");
    let ssl = dir.join("certificates/ssl");

    // 1. No HOSTNAME in .env: Docker's HOSTNAME (the container id) is not
    //    used; the certificate is for localhost.
    std::fs::write(dir.join(".env"), &ports).unwrap();
    d.compose(dir, &["up", "-d"]);
    let cert = ssl.join("cert.pem");
    until(Duration::from_secs(30), "certificate written", || {
        cert.is_file()
    })
    .await;
    wait_tls(https, &cert).await;
    assert_eq!(
        std::fs::read_to_string(ssl.join(".hostname_marker"))
            .unwrap()
            .trim(),
        "localhost"
    );
    assert!(
        sans_of(&cert).iter().any(|s| s == "DNSName(localhost)"),
        "{:?}",
        sans_of(&cert)
    );
    let logs = d.compose(dir, &["logs", "reverse-proxy"]);
    assert!(logs.contains("own host name"), "{logs}");
    d.compose(dir, &["down", "--timeout", "5"]);
    std::fs::remove_dir_all(&ssl).unwrap();

    // 2. HOSTNAME and custom ports from .env.
    std::fs::write(dir.join(".env"), format!("{ports}HOSTNAME={HOST}\n")).unwrap();
    d.compose(dir, &["up", "-d"]);
    until(Duration::from_secs(30), "certificate written", || {
        cert.is_file()
    })
    .await;
    wait_tls(https, &cert).await;
    assert_eq!(
        std::fs::read_to_string(ssl.join(".hostname_marker"))
            .unwrap()
            .trim(),
        HOST
    );
    assert!(sans_of(&cert)
        .iter()
        .any(|s| s == &format!("DNSName({HOST})")));
    // Each route reaches its service by compose service name.
    for (path, want) in [
        ("/", "client app\n"),
        ("/api", "api OK\n"),
        ("/admin", "admin panel /admin\n"),
    ] {
        let res = tls_get(https, &cert, path)
            .await
            .unwrap_or_else(|| panic!("{path}"));
        assert_eq!(
            (res.status.as_u16(), res.text().as_str()),
            (200, want),
            "{path}"
        );
    }
    // The redirect names the public HTTPS port, not the container's 443.
    let res = send(
        Proto::H1,
        ([127, 0, 0, 1], http).into(),
        Path::new(""),
        get("/x?y=1", HOST),
    )
    .await
    .unwrap();
    assert_eq!(res.status, 301);
    assert_eq!(
        res.header("location"),
        Some(format!("https://{HOST}:{https}/x?y=1").as_str())
    );
    // A WebSocket under /admin echoes.
    websocket_echo_through(https, &cert).await;
    // A stopped service answers fast with the status page, and comes back.
    d.compose(dir, &["stop", "api"]);
    let started = tokio::time::Instant::now();
    let res = tls_get(https, &cert, "/api").await.unwrap();
    let took = started.elapsed();
    assert_eq!(res.status, 503);
    assert!(res.text().contains("Temporarily unavailable"));
    assert!(
        took < Duration::from_secs(5),
        "503 after {took:?} (connect timeout 3 s)"
    );
    d.compose(dir, &["start", "api"]);
    until_served(Duration::from_secs(30), "api back", || async {
        tls_get(https, &cert, "/api")
            .await
            .is_some_and(|r| r.status == 200)
    })
    .await;
    // The container reports healthy (its HEALTHCHECK runs `gatehouse health`).
    let id = d
        .compose(dir, &["ps", "-q", "reverse-proxy"])
        .trim()
        .to_string();
    until(Duration::from_secs(60), "healthy", || {
        d.docker(&["inspect", "--format", "{{.State.Health.Status}}", &id])
            .trim()
            == "healthy"
    })
    .await;
    let top = d.docker(&["top", &id]);
    assert!(!top.contains("defunct"), "zombie processes: {top}");
    d.compose(dir, &["down", "--timeout", "5"]);

    // 3. LETSENCRYPT_ENABLED=true: certbot's pair is served, and a
    //    replacement is served without a restart.
    let live = dir.join("certificates/letsencrypt/live").join(HOST);
    std::fs::create_dir_all(&live).unwrap();
    let place = |live: &Path| {
        let ck =
            rcgen::generate_simple_self_signed(vec![HOST.to_string(), "localhost".to_string()])
                .unwrap();
        let tmp = live.join("fullchain.pem.new");
        std::fs::write(live.join("privkey.pem"), ck.signing_key.serialize_pem()).unwrap();
        std::fs::write(&tmp, ck.cert.pem()).unwrap();
        std::fs::rename(&tmp, live.join("fullchain.pem")).unwrap();
        let ca = live.join(format!("ca-{}.pem", rand_suffix()));
        std::fs::write(&ca, ck.cert.pem()).unwrap();
        ca
    };
    let first = place(&live);
    std::fs::write(
        dir.join(".env"),
        format!("{ports}HOSTNAME={HOST}\nLETSENCRYPT_ENABLED=true\n"),
    )
    .unwrap();
    d.compose(dir, &["up", "-d"]);
    wait_tls(https, &first).await;
    let second = place(&live);
    until_served(
        Duration::from_secs(30),
        "the renewed pair served",
        || async { tls_get(https, &second, "/").await.is_some() },
    )
    .await;
    // `docker stop` (SIGTERM to PID 1) ends it with 0 within the grace period.
    let id = d
        .compose(dir, &["ps", "-q", "reverse-proxy"])
        .trim()
        .to_string();
    let started = tokio::time::Instant::now();
    d.docker(&["stop", "--time", "15", &id]);
    let took = started.elapsed();
    let code = d.docker(&["inspect", "--format", "{{.State.ExitCode}}", &id]);
    assert_eq!(code.trim(), "0");
    assert!(took < Duration::from_secs(11), "stopped after {took:?}");
    d.compose(dir, &["down", "--timeout", "5"]);

    // 4. Issue 14: the deploy example, on the same daemon (one docker0).
    deploy_example(&mut d, &root).await;
    drop(d);
}

/// `deploy/compose.yml` as shipped, with its `gatehouse.toml`: three
/// replicas and Redis (Debian's redis-server in an image FROM scratch, as
/// `redis:7-alpine`), and a busybox app. The replicas hold a client to the
/// `/api` limit together.
async fn deploy_example(d: &mut Daemon, root: &Path) {
    // redis-server and the libraries it links, at the paths it expects.
    let ldd = run_ok(Command::new("ldd").arg("/usr/bin/redis-server"));
    let mut files: Vec<(PathBuf, String)> = vec![(
        PathBuf::from("/usr/bin/redis-server"),
        "/usr/local/bin/redis-server".into(),
    )];
    for line in ldd.lines() {
        let path = line
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(PathBuf::from);
        if let Some(p) = path {
            let inside = p.display().to_string();
            files.push((std::fs::canonicalize(&p).unwrap(), inside));
        }
    }
    let refs: Vec<(&Path, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_path(), b.as_str()))
        .collect();
    build_image(
        d,
        "redis:7-alpine",
        &refs,
        "ENV PATH=/usr/local/bin\nWORKDIR /data\n",
    );
    let www = tempfile::tempdir().unwrap();
    std::fs::write(www.path().join("index.html"), "app\n").unwrap();
    std::fs::write(www.path().join("api"), "api OK\n").unwrap();
    build_image(
        d,
        "gh-app:test",
        &[
            (Path::new("/bin/busybox"), "/bin/busybox"),
            (www.path(), "/www"),
        ],
        "ENTRYPOINT [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n",
    );
    let install = tempfile::tempdir().unwrap();
    let dir = install.path();
    std::fs::copy(
        root.join("deploy/compose.yml"),
        dir.join("docker-compose.yml"),
    )
    .unwrap();
    std::fs::copy(
        root.join("deploy/gatehouse.toml"),
        dir.join("gatehouse.toml"),
    )
    .unwrap();
    let ports: Vec<u16> = (0..6).map(|_| free_port()).collect();
    let mut env = String::from("REDIS_PASSWORD=deploy-test-secret\nAPP_IMAGE=gh-app:test\n");
    for i in 0..3 {
        env.push_str(&format!(
            "GATEHOUSE_{n}_HTTP={}\nGATEHOUSE_{n}_HTTPS={}\n",
            ports[2 * i],
            ports[2 * i + 1],
            n = i + 1
        ));
    }
    std::fs::write(dir.join(".env"), env).unwrap();
    d.projects.push(dir.to_path_buf());
    d.compose(dir, &["up", "-d"]);
    // As a load balancer that terminated TLS would send it.
    let request = |client: &str| {
        let mut req = get("/api", HOST);
        req.headers_mut()
            .insert("x-forwarded-for", client.parse().unwrap());
        req.headers_mut()
            .insert("x-forwarded-proto", "https".parse().unwrap());
        req
    };
    let replicas: Vec<std::net::SocketAddr> = (0..3)
        .map(|i| ([127, 0, 0, 1], ports[2 * i]).into())
        .collect();
    for (i, addr) in replicas.iter().enumerate() {
        until_served(Duration::from_secs(60), "a replica serves", || async {
            send(
                Proto::H1,
                *addr,
                Path::new(""),
                request(&format!("192.0.2.{i}")),
            )
            .await
            .is_ok_and(|r| r.status == 200 && r.text() == "api OK\n")
        })
        .await;
    }
    // 60 requests of one client spread over the three: the burst of 20
    // is the cluster's (+1 per 200 ms for the refill of 5/s).
    let start = std::time::Instant::now();
    let mut statuses = Vec::new();
    for i in 0..60 {
        let res = send(
            Proto::H1,
            replicas[i % 3],
            Path::new(""),
            request("203.0.113.77"),
        )
        .await
        .unwrap();
        statuses.push(res.status.as_u16());
    }
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    let refill = (start.elapsed().as_secs_f64() * 5.0).ceil() as usize;
    assert!(
        (20..=20 + refill).contains(&admitted) && statuses.iter().all(|s| *s == 200 || *s == 429),
        "{admitted} admitted in {:?}: {statuses:?}",
        start.elapsed()
    );
    for service in ["gatehouse-1", "gatehouse-2", "gatehouse-3"] {
        let logs = d.compose(dir, &["logs", "--no-color", service]);
        assert!(
            logs.contains("shares state through Redis at redis://:***@redis:6379/0"),
            "{logs}"
        );
        assert!(!logs.contains("deploy-test-secret"), "{logs}");
        assert!(!logs.contains("is unreachable"), "{logs}");
    }
    d.compose(dir, &["down", "--volumes", "--timeout", "5"]);
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Waits (bounded) until the HTTPS port answers a request with a
/// certificate that `ca` verifies.
async fn wait_tls(port: u16, ca: &Path) {
    until_served(Duration::from_secs(60), "a TLS answer", || async {
        tls_get(port, ca, "/").await.is_some()
    })
    .await;
}

/// Polls an asynchronous condition every 200 ms for up to `limit`.
async fn until_served<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {limit:?}"
        );
        tick.tick().await;
    }
}

async fn websocket_echo_through(port: u16, ca: &Path) {
    use futures_util::{SinkExt, StreamExt};
    let tls = tls_connect(([127, 0, 0, 1], port).into(), ca, &[b"http/1.1"])
        .await
        .unwrap();
    let url = format!("wss://{HOST}:{port}/admin/_blazor?id=1");
    let (mut ws, res) = within(tokio_tungstenite::client_async(url, tls))
        .await
        .unwrap();
    assert_eq!(res.status(), 101);
    within(ws.send(tokio_tungstenite::tungstenite::Message::text("ping")))
        .await
        .unwrap();
    let back = within(ws.next()).await.unwrap().unwrap();
    assert_eq!(back.into_text().unwrap().as_str(), "ping");
}
