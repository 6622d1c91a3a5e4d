//! The dev server: `www/` at `/`, `weights/` at `/weights/`, on 127.0.0.1 only, and nothing else.
//!
//! Every request is a trust boundary, since any web page the user visits can make the browser
//! send one (and DNS rebinding lets it read the answer unless the `Host` is checked):
//! * only `GET` and `HEAD`;
//! * only `Host: 127.0.0.1:PORT` or `localhost:PORT`;
//! * the path is percent-decoded once, then every segment must be a plain file name: no empty
//!   segment (`//` would start an absolute path), no `.`, `..` or other dot-name, no backslash,
//!   colon or control character;
//! * the resolved file must still lie inside its folder after symlinks are followed;
//! * request headers are bounded in size (hyper's buffer) and in time (a read deadline).
//!
//! Serving a file once resolved (ranges, `ETag`, `Last-Modified`, `HEAD`, content types) is
//! tower-http's `ServeFile`.

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tower_http::services::ServeFile;

/// The largest request head hyper buffers (its minimum is 8 KiB): a browser's fits easily.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// How long a client may take to send its request head.
const HEAD_DEADLINE: Duration = Duration::from_secs(10);
/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 64;

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// Headers on every file served (and in `cargo xtask dist`'s `_headers`): always revalidate
/// (file names are not content-hashed, so a rebuilt wasm or new weights are seen at once; an
/// unchanged file costs a 304), no content sniffing, and cross-origin isolation so the page
/// may use shared memory (threads in wasm).
pub const HEADERS: [(&str, &str); 4] = [
    ("cache-control", "no-cache"),
    ("x-content-type-options", "nosniff"),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-embedder-policy", "require-corp"),
];

/// What is served, and under which names.
struct Site {
    www: PathBuf,
    weights: PathBuf,
    hosts: [String; 2],
}

/// Serves `root`'s `www/` and `weights/` on `listener` until the process ends.
pub fn run(root: &Path, listener: TcpListener) -> Result<()> {
    run_with(root, listener, HEAD_DEADLINE)
}

fn run_with(root: &Path, listener: TcpListener, head_deadline: Duration) -> Result<()> {
    let port = listener.local_addr()?.port();
    let canonical = |dir: &str| root.join(dir).canonicalize().with_context(|| format!("{dir}/ in {}", root.display()));
    let site = Arc::new(Site {
        www: canonical("www")?,
        weights: canonical("weights")?,
        hosts: [format!("127.0.0.1:{port}"), format!("localhost:{port}")],
    });
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        loop {
            let permit = slots.clone().acquire_owned().await.expect("the semaphore is never closed");
            let Ok((stream, _)) = listener.accept().await else { continue };
            let site = site.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| respond(site.clone(), req));
                // Errors here are the client's (a reset, a malformed or slow request head): hyper
                // has answered what can be answered, and nothing else is ours to do.
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(head_deadline)
                    .max_buf_size(MAX_HEAD_BYTES)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                drop(permit);
            });
        }
    })
}

/// Binds 127.0.0.1:`port` (0: any free port).
pub fn bind(port: u16) -> Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(("127.0.0.1", port)).with_context(|| format!("binding 127.0.0.1:{port}"))?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

async fn respond(site: Arc<Site>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut res = text(StatusCode::METHOD_NOT_ALLOWED, "GET and HEAD only\n");
        res.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Ok(res);
    }
    let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    if !site.hosts.iter().any(|h| h == host) {
        return Ok(text(StatusCode::MISDIRECTED_REQUEST, "this server answers only for 127.0.0.1 and localhost\n"));
    }
    let Some(file) = resolve(&site, req.uri().path()) else {
        return Ok(text(StatusCode::NOT_FOUND, "not found\n"));
    };
    let mut res = match ServeFile::new(&file).try_call(req).await {
        Ok(res) => res.map(|b| b.boxed_unsync()),
        Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "could not read the file\n"),
    };
    for (name, value) in HEADERS {
        res.headers_mut().insert(name, HeaderValue::from_static(value));
    }
    Ok(res)
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut res = Response::new(Full::new(Bytes::from_static(body.as_bytes())).map_err(|e| match e {}).boxed_unsync());
    *res.status_mut() = status;
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    res
}

/// Maps a URL path to a file inside `www/` or `weights/`, or None for anything else.
fn resolve(site: &Site, path: &str) -> Option<PathBuf> {
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8().ok()?;
    let rest = decoded.strip_prefix('/')?;
    if rest.is_empty() {
        return Some(site.www.join("index.html")).filter(|f| f.is_file());
    }
    let mut segments = rest.split('/');
    let (base, first) = match segments.next()? {
        "weights" => (&site.weights, segments.next()?),
        name => (&site.www, name),
    };
    let mut file = base.clone();
    for segment in std::iter::once(first).chain(segments) {
        let plain = !segment.is_empty()
            && !segment.starts_with('.')
            && !segment.chars().any(|c| c == '\\' || c == ':' || c.is_control());
        if !plain {
            return None;
        }
        file.push(segment);
    }
    // Symlinks are followed by the file system: what they reach must still be inside `base`.
    let real = file.canonicalize().ok()?;
    (real.starts_with(base) && real.is_file()).then_some(real)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    use super::*;

    const SECRET: &str = "TOP-SECRET-OUTSIDE-THE-SITE";

    /// A site in a temporary folder with a secret file beside it (and symlinks to it), served on
    /// a free port with a 1 s head deadline.
    fn site(name: &str) -> (PathBuf, SocketAddr) {
        let root = std::env::temp_dir().join(format!("ddpm-serve-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("www")).unwrap();
        std::fs::create_dir_all(root.join("weights")).unwrap();
        std::fs::write(root.join("www/index.html"), "<h1>index</h1>").unwrap();
        std::fs::write(root.join("www/app.js"), "export {};").unwrap();
        std::fs::write(root.join("www/.hidden"), SECRET).unwrap();
        std::fs::write(root.join("weights/w.safetensors"), [7u8; 100]).unwrap();
        std::fs::write(root.join("secret.txt"), SECRET).unwrap();
        std::os::unix::fs::symlink(root.join("secret.txt"), root.join("www/link")).unwrap();
        std::os::unix::fs::symlink("../secret.txt", root.join("weights/outlink")).unwrap();
        std::os::unix::fs::symlink(&root, root.join("weights/up")).unwrap();
        let (listener, addr) = bind(0).unwrap();
        let served = root.clone();
        std::thread::spawn(move || run_with(&served, listener, Duration::from_secs(1)));
        (root, addr)
    }

    /// Sends `head` as is (no client normalises anything) and returns the whole answer.
    fn raw(addr: SocketAddr, head: &str) -> String {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream.write_all(head.as_bytes()).unwrap();
        let mut out = Vec::new();
        let _ = stream.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    fn get(addr: SocketAddr, target: &str) -> String {
        raw(addr, &format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"))
    }

    fn status(answer: &str) -> u16 {
        answer.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
    }

    #[test]
    fn serves_the_site() {
        let (root, addr) = site("ok");
        let index = get(addr, "/");
        assert_eq!(status(&index), 200, "{index}");
        assert!(index.ends_with("<h1>index</h1>"));
        let js = get(addr, "/app.js?v=1");
        assert_eq!(status(&js), 200);
        assert!(js.to_ascii_lowercase().contains("content-type: text/javascript"), "{js}");
        assert!(js.to_ascii_lowercase().contains("cross-origin-embedder-policy: require-corp"), "{js}");
        let w = get(addr, "/weights/w.safetensors");
        assert_eq!(status(&w), 200);
        assert!(w.contains("content-length: 100"), "{w}");
        let head = raw(
            addr,
            &format!(
                "HEAD /weights/w.safetensors HTTP/1.1\r\nHost: localhost:{}\r\nConnection: close\r\n\r\n",
                addr.port()
            ),
        );
        assert_eq!(status(&head), 200);
        assert!(head.ends_with("\r\n\r\n"), "HEAD has no body: {head:?}");
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn no_path_leaves_the_served_folders() {
        let (root, addr) = site("escape");
        let abs = root.join("secret.txt").display().to_string();
        let forms = [
            format!("/weights/{abs}"),
            format!("/weights//{abs}"),
            format!("/weights/%2F{}", abs.trim_start_matches('/').replace('/', "%2F")),
            "/weights//etc/passwd".into(),
            "//etc/passwd".into(),
            "/../secret.txt".into(),
            "/weights/../secret.txt".into(),
            "/weights/../../secret.txt".into(),
            "/%2e%2e/secret.txt".into(),
            "/%2E%2E%2Fsecret.txt".into(),
            "/weights/%2e%2e/secret.txt".into(),
            "/weights/..%2fsecret.txt".into(),
            "/weights/%2e%2e%2f%2e%2e%2fsecret.txt".into(),
            "/.%2e/secret.txt".into(),
            "/./../secret.txt".into(),
            "/weights/./../secret.txt".into(),
            "/..%5csecret.txt".into(),
            "/weights/..\\secret.txt".into(),
            "/%252e%252e/secret.txt".into(),
            "/..;/secret.txt".into(),
            "/weights/..../secret.txt".into(),
            "/%00/../secret.txt".into(),
            "/C:/secret.txt".into(),
            "/link".into(),
            "/weights/outlink".into(),
            "/weights/up/secret.txt".into(),
            "/.hidden".into(),
            "/weights/".into(),
            "/weights".into(),
            "/www/../secret.txt".into(),
            format!("http://{addr}/../secret.txt"),
            "*".into(),
        ];
        assert!(forms.len() >= 20);
        for form in &forms {
            let answer = get(addr, form);
            assert!(!answer.contains(SECRET), "{form} leaked the secret: {answer}");
            assert!(!answer.contains("root:"), "{form} leaked /etc/passwd");
            let code = status(&answer);
            assert!((400..500).contains(&code), "{form}: expected a 4xx answer, got {code}: {answer}");
        }
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn answers_only_local_hosts_and_get() {
        let (root, addr) = site("host");
        let port = addr.port();
        for host in [
            format!("evil.example:{port}"),
            "127.0.0.1".into(),
            format!("127.0.0.1:{}", port + 1),
            format!("localhost.evil.example:{port}"),
        ] {
            let answer = raw(addr, &format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"));
            assert_eq!(status(&answer), 421, "Host {host}: {answer}");
        }
        let none = raw(addr, "GET / HTTP/1.0\r\n\r\n");
        assert_eq!(status(&none), 421, "no Host: {none}");
        for method in ["POST", "PUT", "DELETE", "OPTIONS", "TRACE"] {
            let answer = raw(
                addr,
                &format!("{method} / HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
            );
            assert_eq!(status(&answer), 405, "{method}: {answer}");
        }
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn request_heads_are_bounded_in_size_and_time() {
        let (root, addr) = site("limits");
        let big = format!("GET / HTTP/1.1\r\nHost: {addr}\r\nX-Pad: {}\r\n\r\n", "a".repeat(64 * 1024));
        let answer = raw(addr, &big);
        assert!(
            status(&answer) == 431 || answer.is_empty(),
            "an oversized head is refused: {}",
            &answer[..answer.len().min(200)]
        );
        // A client that never finishes its head is dropped after the deadline, and others are
        // served meanwhile.
        let mut slow = TcpStream::connect(addr).unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nHost: ").unwrap();
        assert_eq!(status(&get(addr, "/")), 200);
        slow.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let started = std::time::Instant::now();
        let mut rest = Vec::new();
        let _ = slow.read_to_end(&mut rest);
        assert!(started.elapsed() < Duration::from_secs(5), "the slow connection was closed by the deadline");
        assert!(!String::from_utf8_lossy(&rest).contains("index"));
        std::fs::remove_dir_all(root).unwrap();
    }
}
