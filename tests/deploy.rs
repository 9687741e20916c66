//! The deployment files of deploy/, the Dockerfile and the Elastic Beanstalk bundles, run for
//! real: nginx and HAProxy (foreground, loopback ports, configs from deploy/ with their
//! placeholders filled in) in front of three ws-echo processes. Clients connect from distinct
//! 127.0.0.x source addresses so the tests can tell whether a backend saw the client or the
//! proxy.
//!
//! Placeholders: the nginx configs use `${LISTEN}`, `${BACKEND1..3}` and `${LB_CIDR}`
//! (envsubst syntax, as the official nginx image's templates fill them); haproxy.cfg reads
//! the environment variables `LISTEN`, `BACKEND1..3` and `CHECK_INTER` itself.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

// ---------------------------------------------------------------------------------------------
// Child processes: killed (and their log readers ended) even when a test fails.

/// Log lines of a child (stdout and stderr), kept as they are read.
struct Log {
    rx: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Log {
    /// The next line containing `needle` that was not returned before (bounded by WAIT).
    fn wait(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!("no log line containing {needle:?}; saw {:?}", self.seen),
            }
        }
    }

    /// Every line so far (nothing waited for).
    fn all(&mut self) -> &[String] {
        self.seen.extend(self.rx.try_iter());
        &self.seen
    }
}

struct Proc {
    name: String,
    child: Option<Child>,
    pid: u32,
    log: Log,
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{name} starts: {e}"));
        let (tx, rx) = mpsc::channel();
        let out: Box<dyn Read + Send> = Box::new(child.stdout.take().unwrap());
        let err: Box<dyn Read + Send> = Box::new(child.stderr.take().unwrap());
        for stream in [out, err] {
            let (tx, name) = (tx.clone(), name.to_string());
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    eprintln!("[{name}] {line}");
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Proc {
            name: name.to_string(),
            pid: child.id(),
            child: Some(child),
            log: Log { rx, seen: vec![] },
        }
    }

    fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([sig, &self.pid.to_string()])
            .stderr(Stdio::null())
            .status();
    }

    /// Exited already? (Some(status) once it has.)
    fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Wait (bounded) for the process to exit by itself.
    fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exited() {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {limit:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SIGTERM first: an nginx master killed with SIGKILL would leave its workers (and
        // their listening sockets) behind. ws-echo exits at once on a second signal.
        self.signal("-TERM");
        std::thread::sleep(Duration::from_millis(50));
        self.signal("-TERM");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A tool the test needs: under tests/run (WSRT_TEST_REQUIRE_TOOLS) it must exist.
fn tool(name: &str) -> Option<String> {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if found.is_none() {
        assert!(
            std::env::var_os("WSRT_TEST_REQUIRE_TOOLS").is_none(),
            "{name} is not installed: run tests/setup"
        );
        eprintln!("{name} not installed (run tests/setup); skipping");
    }
    found
}

/// A fresh directory per proxy (tests run in parallel threads).
fn scratch_dir(what: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "wsrt-deploy-{}-{what}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Wait until something accepts connections on `addr`, or the process exits.
fn wait_listening(p: &mut Proc, addr: SocketAddr, extra_log: Option<&Path>) {
    let deadline = Instant::now() + WAIT;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        let log = || {
            extra_log
                .and_then(|f| std::fs::read_to_string(f).ok())
                .unwrap_or_default()
        };
        if let Some(status) = p.exited() {
            panic!("{} exited ({status}): {:?} {}", p.name, p.log.all(), log());
        }
        assert!(
            Instant::now() < deadline,
            "{} does not listen on {addr}: {}",
            p.name,
            log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// ws-echo backends

struct Backend {
    name: String,
    addr: SocketAddr,
    p: Proc,
}

fn ws_echo(name: &str, args: &[&str], env: &[(String, String)]) -> (Proc, SocketAddr) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ws-echo"));
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("WSRT_") && k != "WSRT_TEST_REQUIRE_TOOLS" {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut p = Proc::spawn(name, cmd);
    let line = p.log.wait("listening on");
    let addr: SocketAddr = line
        .split("listening on ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("address in {line:?}"));
    (p, addr)
}

/// Three ws-echo processes, prefixes backend1..backend3, with the same extra options.
fn backends(extra: &[&str]) -> Vec<Backend> {
    (1..=3)
        .map(|i| {
            let name = format!("backend{i}");
            let mut args = vec!["--listen", "127.0.0.1:0", "--workers", "1"];
            args.extend(["--prefix", &name]);
            args.extend_from_slice(extra);
            let (p, addr) = ws_echo(&name, &args, &[]);
            Backend { name, addr, p }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Proxies started from the files in deploy/

struct Front {
    addr: SocketAddr,
    p: Proc,
    dir: PathBuf,
}

impl Drop for Front {
    fn drop(&mut self) {
        if let Some(mut child) = self.p.child.take() {
            self.p.signal("-TERM");
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && !matches!(child.try_wait(), Ok(Some(_))) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn deploy_file(rel: &str) -> String {
    let path = Path::new(ROOT).join("deploy").join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Fill `${NAME}` placeholders; every placeholder must be filled.
fn fill(text: &str, vars: &[(&str, String)]) -> String {
    let mut out = text.to_string();
    for (k, v) in vars {
        out = out.replace(&format!("${{{k}}}"), v);
    }
    assert!(!out.contains("${"), "unfilled placeholder in:\n{out}");
    out
}

fn backend_vars(bs: &[SocketAddr]) -> Vec<(&'static str, String)> {
    vec![
        ("BACKEND1", bs[0].to_string()),
        ("BACKEND2", bs[1].to_string()),
        ("BACKEND3", bs[2].to_string()),
    ]
}

/// nginx with deploy/nginx/`file`, placeholders filled, `edit` applied to the result.
fn nginx(
    file: &str,
    bs: &[SocketAddr],
    extra: &[(&str, String)],
    edit: impl Fn(String) -> String,
) -> Option<Front> {
    let bin = tool("nginx")?;
    let dir = scratch_dir("nginx");
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mut vars = backend_vars(bs);
    vars.push(("LISTEN", addr.to_string()));
    vars.extend(extra.iter().cloned());
    let conf = edit(fill(&deploy_file(&format!("nginx/{file}")), &vars));
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let d = dir.display();
    let mut cmd = Command::new(bin);
    cmd.args(["-p", &format!("{d}/"), "-e", &format!("{d}/error.log")])
        .args(["-c", &format!("{d}/nginx.conf")])
        .args(["-g", &format!("daemon off; pid {d}/nginx.pid;")]);
    let p = Proc::spawn("nginx", cmd);
    let mut front = Front { addr, p, dir };
    let error_log = front.dir.join("error.log");
    wait_listening(&mut front.p, addr, Some(&error_log));
    Some(front)
}

/// HAProxy with deploy/haproxy/haproxy.cfg (`edit` applied), addresses from the environment.
fn haproxy(bs: &[SocketAddr], edit: impl Fn(String) -> String) -> Option<Front> {
    let bin = tool("haproxy")?;
    let dir = scratch_dir("haproxy");
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(&cfg, edit(deploy_file("haproxy/haproxy.cfg"))).unwrap();
    let mut cmd = Command::new(bin);
    cmd.arg("-f").arg(&cfg).arg("-db");
    for (k, v) in backend_vars(bs) {
        cmd.env(k, v);
    }
    cmd.env("LISTEN", addr.to_string())
        .env("CHECK_INTER", "200ms");
    let p = Proc::spawn("haproxy", cmd);
    let mut front = Front { addr, p, dir };
    wait_listening(&mut front.p, addr, None);
    Some(front)
}

fn addrs(bs: &[Backend]) -> Vec<SocketAddr> {
    bs.iter().map(|b| b.addr).collect()
}

// ---------------------------------------------------------------------------------------------
// Clients

/// A TCP connection from a chosen loopback source address.
fn connect_from(src: [u8; 4], addr: SocketAddr) -> TcpStream {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    sock.bind(&SocketAddr::from((src, 0)).into()).unwrap();
    sock.connect_timeout(&addr.into(), WAIT)
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// An upgraded connection from `src` through `addr`; `head` goes in front of the request
/// (a PROXY header) and `extra` after its headers.
fn ws_from(src: [u8; 4], addr: SocketAddr, head: &str, path: &str, extra: &str) -> TcpStream {
    let mut s = connect_from(src, addr);
    s.write_all(format!("{head}{}", upgrade_request(path, extra)).as_bytes())
        .unwrap();
    let (status, head) = read_head(&mut s);
    assert_eq!(status, 101, "{head}");
    s
}

/// One HTTP request (`Connection: close` is added unless it has a Connection header), the
/// response read by its Content-Length: (status, body). A proxy may keep the connection open.
fn request(addr: SocketAddr, req: &str) -> (u16, String) {
    let mut req = req.to_string();
    if !req.contains("Connection:") {
        req = req.replacen("\r\n", "\r\nConnection: close\r\n", 1);
    }
    let mut s = tcp(addr);
    s.write_all(req.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => return (0, String::from_utf8_lossy(&head).into()),
        }
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).expect("response body");
    (status, String::from_utf8_lossy(&body).into())
}

/// Send a text message and return the reply.
fn echo(s: &mut TcpStream, text: &str) -> String {
    s.write_all(&frame(true, 1, text.as_bytes(), true)).unwrap();
    next_text(s)
}

fn next_text(s: &mut TcpStream) -> String {
    loop {
        match read_frame(s) {
            (_, 1, p) => return String::from_utf8(p).unwrap(),
            (_, 9, p) => s.write_all(&frame(true, 10, &p, true)).unwrap(),
            (_, 8, p) => panic!("closed: {p:?}"),
            _ => {}
        }
    }
}

/// "[backend2] hi" -> "backend2"
fn prefix_of(reply: &str) -> String {
    reply
        .strip_prefix('[')
        .and_then(|r| r.split_once("] "))
        .map(|(p, _)| p.to_string())
        .unwrap_or_else(|| panic!("no prefix in {reply:?}"))
}

/// Opens `n` connections from `src` and checks they reached every backend, each of which
/// logged the client's address (not the proxy's). Returns the connections with their backend.
fn spread_and_addresses(
    front: SocketAddr,
    bs: &mut [Backend],
    src: [u8; 4],
    head: &str,
    n: usize,
) -> Vec<(TcpStream, String)> {
    let mut conns = Vec::new();
    for i in 0..n {
        let mut s = ws_from(src, front, head, "/ws", "");
        let reply = echo(&mut s, &format!("hello {i}"));
        assert!(reply.ends_with(&format!("] hello {i}")), "{reply}");
        conns.push((s, prefix_of(&reply)));
    }
    let client_ip = format!("{}.{}.{}.{}:", src[0], src[1], src[2], src[3]);
    for b in bs.iter_mut() {
        let here = conns.iter().filter(|(_, p)| *p == b.name).count();
        assert!(here > 0, "no connection reached {}", b.name);
        for _ in 0..here {
            let open = b.p.log.wait("open ");
            assert!(
                open.contains(&client_ip),
                "{} logs the client {client_ip}, not the proxy: {open}",
                b.name
            );
        }
        assert!(
            !b.p.log.all().iter().any(|l| l.contains("refused")),
            "{}: {:?}",
            b.name,
            b.p.log.all()
        );
    }
    conns
}

// ---------------------------------------------------------------------------------------------
// nginx

#[test]
fn nginx_http_proxy_upgrades_spreads_and_forwards_the_client_address() {
    let mut bs = backends(&["--trusted-proxies", "127.0.0.1/32"]);
    let Some(front) = nginx("http-proxy.conf", &addrs(&bs), &[], |c| c) else {
        return;
    };
    spread_and_addresses(front.addr, &mut bs, [127, 0, 0, 5], "", 6);

    // A client-sent X-Forwarded-For does not win: nginx appends the real address and
    // ws-echo reads the right-most untrusted entry.
    let spoof = "X-Forwarded-For: 198.51.100.66\r\n";
    let mut s = ws_from([127, 0, 0, 6], front.addr, "", "/ws", spoof);
    let reply = echo(&mut s, "spoof?");
    let b = bs.iter_mut().find(|b| b.name == prefix_of(&reply)).unwrap();
    let open = b.p.log.wait("open ");
    assert!(open.contains("127.0.0.6:"), "{open}");

    // The path-prefixed location (seed 003) strips the prefix.
    let mut s = ws_from([127, 0, 0, 6], front.addr, "", "/push-service/room1", "");
    let reply = echo(&mut s, "pushed");
    let b = bs.iter_mut().find(|b| b.name == prefix_of(&reply)).unwrap();
    let open = b.p.log.wait("open ");
    assert!(open.contains("path=/room1"), "{open}");

    // Health checks and plain HTTP pass through too.
    let (status, body) = request(front.addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
}

#[test]
fn nginx_stream_sends_proxy_v1_and_backends_log_the_client() {
    let mut bs = backends(&[
        "--proxy-protocol",
        "v1",
        "--trusted-proxies",
        "127.0.0.1/32",
    ]);
    let Some(front) = nginx("stream-proxy-protocol.conf", &addrs(&bs), &[], |c| c) else {
        return;
    };
    spread_and_addresses(front.addr, &mut bs, [127, 0, 0, 7], "", 6);
    // A health check through the TCP proxy carries the PROXY header as well.
    let (status, body) = request(front.addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
}

#[test]
fn nginx_behind_a_load_balancer_believes_proxy_only_from_it() {
    let mut bs = backends(&["--trusted-proxies", "127.0.0.1/32"]);
    let lb = [("LB_CIDR", "127.0.0.1/32".to_string())];
    let Some(front) = nginx("behind-elb-proxy-protocol.conf", &addrs(&bs), &lb, |c| c) else {
        return;
    };
    // The test plays the load balancer (127.0.0.1): PROXY v1 as an AWS Classic ELB sends it,
    // with a client that also tries to spoof X-Forwarded-For.
    let pp = "PROXY TCP4 203.0.113.7 10.0.0.1 56324 80\r\n";
    let spoof = "X-Forwarded-For: 198.51.100.66\r\n";
    let mut seen = Vec::new();
    for i in 0..6 {
        let mut s = ws_from([127, 0, 0, 1], front.addr, pp, "/", spoof);
        let reply = echo(&mut s, &format!("via lb {i}"));
        seen.push((s, prefix_of(&reply)));
    }
    for b in bs.iter_mut() {
        let here = seen.iter().filter(|(_, p)| *p == b.name).count();
        assert!(here > 0, "no connection reached {}", b.name);
        for _ in 0..here {
            let open = b.p.log.wait("open ");
            assert!(open.contains("203.0.113.7:"), "{open}");
        }
    }

    // From outside the load balancer's network, the PROXY header is not believed.
    let mut s = ws_from([127, 0, 0, 9], front.addr, pp, "/", "");
    let reply = echo(&mut s, "not the lb");
    let b = bs.iter_mut().find(|b| b.name == prefix_of(&reply)).unwrap();
    let open = b.p.log.wait("open ");
    assert!(open.contains("127.0.0.9:"), "{open}");

    // And a connection without the PROXY header never reaches a backend.
    let (status, _) = request(front.addr, &upgrade_request("/", ""));
    assert_ne!(status, 101);
}

#[test]
fn nginx_without_upgrade_headers_gets_the_diagnostic() {
    let (mut backend, addr) = ws_echo("backend", &["--listen", "127.0.0.1:0"], &[]);
    // Seed 004's first attempt: the same config without the two proxy_set_header lines.
    let strip = |c: String| {
        let kept: Vec<&str> = c
            .lines()
            .filter(|l| {
                !l.contains("proxy_set_header Upgrade")
                    && !l.contains("proxy_set_header Connection")
            })
            .collect();
        assert!(kept.len() + 2 == c.lines().count(), "both lines removed");
        kept.join("\n")
    };
    let Some(front) = nginx("http-proxy.conf", &[addr; 3], &[], strip) else {
        return;
    };
    let (status, body) = request(front.addr, &upgrade_request("/ws", ""));
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("Upgrade") && body.contains("proxy_set_header"),
        "the client sees why: {body}"
    );
    let line = backend.log.wait("upgrade refused");
    assert!(line.contains("missing_upgrade"), "{line}");
}

// ---------------------------------------------------------------------------------------------
// HAProxy

fn haproxy_sends_proxy(version: &str, edit: impl Fn(String) -> String) {
    let mut bs = backends(&[
        "--proxy-protocol",
        version,
        "--trusted-proxies",
        "127.0.0.1/32",
    ]);
    let Some(front) = haproxy(&addrs(&bs), edit) else {
        return;
    };
    // Two health-check rounds (200 ms apart, each with a PROXY header): all must stay up.
    std::thread::sleep(Duration::from_millis(600));
    let _conns = spread_and_addresses(front.addr, &mut bs, [127, 0, 0, 8], "", 6);
    let (status, body) = request(front.addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
}

#[test]
fn haproxy_send_proxy_v2_with_health_checks() {
    haproxy_sends_proxy("v2", |c| c);
}

#[test]
fn haproxy_send_proxy_v1() {
    haproxy_sends_proxy("v1", |c| {
        assert!(c.contains("send-proxy-v2"));
        c.replace("send-proxy-v2", "send-proxy")
    });
}

// ---------------------------------------------------------------------------------------------
// Drain: SIGTERM to one backend behind a proxy

fn drain_one_backend(start: impl FnOnce(&[SocketAddr]) -> Option<Front>, extra: &[&str]) {
    let mut args = vec!["--drain-delay", "1s", "--trusted-proxies", "127.0.0.1/32"];
    args.extend_from_slice(extra);
    let mut bs = backends(&args);
    let Some(front) = start(&addrs(&bs)) else {
        return;
    };
    std::thread::sleep(Duration::from_millis(600));
    let mut conns = spread_and_addresses(front.addr, &mut bs, [127, 0, 0, 10], "", 3);
    let victim = conns[0].1.clone();
    let v = bs.iter().position(|b| b.name == victim).unwrap();
    bs[v].p.signal("-TERM");
    bs[v].p.log.wait("SIGTERM");

    // Its clients are still served during drain_delay: nothing sent is lost.
    let mut on_victim: Vec<TcpStream> = Vec::new();
    let mut rest: Vec<TcpStream> = Vec::new();
    for (s, p) in conns.drain(..) {
        if p == victim {
            on_victim.push(s)
        } else {
            rest.push(s)
        }
    }
    for s in on_victim.iter_mut() {
        let burst: Vec<u8> = (0..20)
            .flat_map(|i| frame(true, 1, format!("draining {i}").as_bytes(), true))
            .collect();
        s.write_all(&burst).unwrap();
        for i in 0..20 {
            assert_eq!(next_text(s), format!("[{victim}] draining {i}"));
        }
    }
    // New clients go to the other backends.
    for i in 0..4 {
        let mut s = ws_from([127, 0, 0, 10], front.addr, "", "/ws", "");
        let reply = echo(&mut s, &format!("new {i}"));
        assert_ne!(
            prefix_of(&reply),
            victim,
            "a new client reached the draining backend"
        );
        rest.push(s);
    }
    // Then the victim's clients get 1001 and the process exits.
    for s in on_victim.iter_mut() {
        assert_eq!(read_until_close(s), Some(1001));
        let _ = s.write_all(&close_frame(1001, ""));
    }
    let close = bs[v].p.log.wait("close ");
    assert!(
        close.contains("code=1001") && close.contains("127.0.0.10:"),
        "{close}"
    );
    assert!(bs[v].p.wait_exit(WAIT).success());
    // The others never noticed.
    for (i, s) in rest.iter_mut().enumerate() {
        let reply = echo(s, &format!("still here {i}"));
        assert_ne!(prefix_of(&reply), victim);
    }
}

#[test]
fn drain_behind_nginx_http_proxy() {
    drain_one_backend(|bs| nginx("http-proxy.conf", bs, &[], |c| c), &[]);
}

#[test]
fn drain_behind_haproxy_send_proxy_v2() {
    drain_one_backend(|bs| haproxy(bs, |c| c), &["--proxy-protocol", "v2"]);
}

// ---------------------------------------------------------------------------------------------
// The Docker image, without Docker: the Dockerfile's own ENV, ENTRYPOINT, CMD and HEALTHCHECK

struct Image {
    env: Vec<(String, String)>,
    args: Vec<String>,
    healthcheck: String,
}

/// The runtime stage (after the last FROM) of the Dockerfile.
fn dockerfile() -> Image {
    let text = std::fs::read_to_string(Path::new(ROOT).join("Dockerfile")).unwrap();
    let mut logical = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if cur.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(part) => {
                cur.push_str(part);
                cur.push(' ');
            }
            None => {
                cur.push_str(t);
                logical.push(std::mem::take(&mut cur));
            }
        }
    }
    let last_from = logical
        .iter()
        .rposition(|l| l.starts_with("FROM "))
        .unwrap();
    let json_array = |s: &str| -> Vec<String> {
        s.trim()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .split(',')
            .map(|a| a.trim().trim_matches('"').to_string())
            .filter(|a| !a.is_empty())
            .collect()
    };
    let mut image = Image {
        env: vec![],
        args: vec![],
        healthcheck: String::new(),
    };
    let (mut entrypoint, mut cmd) = (vec![], vec![]);
    for l in &logical[last_from..] {
        let (instr, rest) = l.split_once(' ').unwrap_or((l, ""));
        match instr {
            "ENV" => {
                for kv in rest.split_whitespace() {
                    let (k, v) = kv.split_once('=').expect("ENV K=V");
                    image.env.push((k.to_string(), v.to_string()));
                }
            }
            "ENTRYPOINT" => entrypoint = json_array(rest),
            "CMD" => cmd = json_array(rest),
            "HEALTHCHECK" => {
                image.healthcheck = rest.split_once(" CMD ").expect("HEALTHCHECK CMD").1.into()
            }
            _ => {}
        }
    }
    assert_eq!(entrypoint, ["/usr/local/bin/ws-echo"]);
    image.args = cmd;
    image
}

/// Run the HEALTHCHECK command (shell form, as Docker does) with the container's environment.
fn health(image: &Image, env: &[(String, String)]) -> bool {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &image.healthcheck]).stdin(Stdio::null());
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("WSRT_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().cloned());
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.success();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// ws-echo as the image runs it: the Dockerfile's environment, `extra` on top, and the one
/// change a test needs, WSRT_LISTEN on a free loopback port instead of 0.0.0.0:8080.
fn run_image(image: &Image, extra: &[(&str, &str)]) -> (Proc, SocketAddr, Vec<(String, String)>) {
    let mut env = image.env.clone();
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let listen = image.env.iter().find(|(k, _)| k == "WSRT_LISTEN");
    assert_eq!(listen.map(|(_, v)| v.as_str()), Some("0.0.0.0:8080"));
    env.push(("WSRT_LISTEN".into(), "127.0.0.1:0".into()));
    let args: Vec<&str> = image.args.iter().map(String::as_str).collect();
    let (p, addr) = ws_echo("image", &args, &env);
    // The health check reads the port from WSRT_LISTEN, as in the container.
    env.push(("WSRT_LISTEN".into(), addr.to_string()));
    (p, addr, env)
}

#[test]
fn docker_image_command_line_health_check_and_stop() {
    let image = dockerfile();
    assert!(
        tool("bash").is_some(),
        "the health check needs bash (in debian:bookworm-slim)"
    );
    let (mut p, addr, env) = run_image(&image, &[("WSRT_PREFIX", "container")]);
    let mut s = raw_ws(addr, "/ws");
    assert_eq!(echo(&mut s, "hi"), "[container] hi");
    assert!(health(&image, &env), "healthy while serving");

    // docker stop: SIGTERM, then SIGKILL after 10 s by default.
    let stopped = Instant::now();
    p.signal("-TERM");
    p.log.wait("SIGTERM");
    assert!(!health(&image, &env), "unhealthy while draining");
    assert_eq!(echo(&mut s, "still served"), "[container] still served");
    assert_eq!(read_until_close(&mut s), Some(1001));
    let _ = s.write_all(&close_frame(1001, ""));
    assert!(p.wait_exit(Duration::from_secs(10)).success());
    assert!(
        stopped.elapsed() < Duration::from_secs(9),
        "exits inside docker stop's grace period: {:?}",
        stopped.elapsed()
    );
    assert!(!health(&image, &env), "unhealthy once stopped");
}

#[test]
fn docker_health_check_speaks_proxy_protocol_when_required() {
    let image = dockerfile();
    if tool("bash").is_none() {
        return;
    }
    for version in ["v1", "v2", "any"] {
        let extra = [
            ("WSRT_PROXY_PROTOCOL", version),
            ("WSRT_TRUSTED_PROXIES", "10.0.0.0/16,127.0.0.1/32"),
        ];
        let (mut p, _addr, env) = run_image(&image, &extra);
        assert!(
            health(&image, &env),
            "healthy with proxy_protocol={version}"
        );
        assert!(
            !p.log.all().iter().any(|l| l.contains("refused")),
            "{version}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Elastic Beanstalk bundles

/// `"name": ..., "value": ...` pairs of one container's "environment" in a Dockerrun.aws.json.
fn dockerrun_env(text: &str, container: &str) -> Vec<(String, String)> {
    let start = text
        .find(&format!("\"name\": \"{container}\""))
        .unwrap_or_else(|| panic!("container {container}"));
    let env_start = start + text[start..].find("\"environment\"").unwrap();
    let env_end = env_start + text[env_start..].find(']').unwrap();
    let quoted: Vec<&str> = text[env_start..env_end]
        .split('"')
        .skip(1)
        .step_by(2)
        .collect();
    // quoted = ["environment", "name", K, "value", V, ...]
    quoted[1..]
        .chunks(4)
        .map(|c| {
            assert_eq!((c[0], c[2]), ("name", "value"), "{c:?}");
            (c[1].to_string(), c[3].to_string())
        })
        .collect()
}

#[test]
fn elastic_beanstalk_tcp_bundle_runs_ws_echo_behind_proxy_protocol() {
    let text = deploy_file("elastic-beanstalk/tcp-proxy-protocol/Dockerrun.aws.json");
    let env = dockerrun_env(&text, "ws-echo");
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(get("WSRT_PROXY_PROTOCOL").as_deref(), Some("v1"));
    let trusted = get("WSRT_TRUSTED_PROXIES").expect("WSRT_TRUSTED_PROXIES");
    assert!(trusted.contains("/16"), "the VPC CIDR: {trusted}");
    let config =
        deploy_file("elastic-beanstalk/tcp-proxy-protocol/.ebextensions/loadbalancer.config");
    for needle in [
        "ListenerProtocol: TCP",
        "ProxyProtocol: true",
        "InstancePorts: 80",
    ] {
        assert!(config.contains(needle), "{needle}");
    }

    // The image with the bundle's environment; the test is the ELB, from 127.0.0.1, which
    // the bundle trusts for the container's own health check.
    let image = dockerfile();
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (mut p, addr, full_env) = run_image(&image, &pairs);
    let pp = "PROXY TCP4 198.51.100.22 203.0.113.7 35646 80\r\n";
    let mut s = ws_from([127, 0, 0, 1], addr, pp, "/", "");
    let reply = echo(&mut s, "through the ELB");
    assert!(reply.ends_with("through the ELB"), "{reply}");
    let open = p.log.wait("open ");
    assert!(open.contains("198.51.100.22:35646"), "{open}");
    // Without the ELB's PROXY policy, the failure of seed 000 is named.
    let (status, _, body) = http(addr, &upgrade_request("/", ""));
    assert_eq!(status, 400);
    assert!(
        body.contains("is proxy protocol enabled on the load balancer?"),
        "{body}"
    );
    if tool("bash").is_some() {
        assert!(health(&image, &full_env));
    }
}

#[test]
fn elastic_beanstalk_nginx_bundle_uses_the_tested_nginx_config() {
    let dir = Path::new(ROOT).join("deploy/elastic-beanstalk/nginx-in-front");
    let template = std::fs::read_to_string(dir.join("nginx/nginx.conf.template")).unwrap();
    assert_eq!(
        template,
        deploy_file("nginx/behind-elb-proxy-protocol.conf")
    );
    let text = std::fs::read_to_string(dir.join("Dockerrun.aws.json")).unwrap();
    let nginx_env = dockerrun_env(&text, "nginx");
    let names: Vec<&str> = nginx_env.iter().map(|(k, _)| k.as_str()).collect();
    for k in [
        "LISTEN",
        "LB_CIDR",
        "BACKEND1",
        "BACKEND2",
        "BACKEND3",
        "NGINX_ENVSUBST_OUTPUT_DIR",
    ] {
        assert!(names.contains(&k), "nginx container sets {k}");
    }
    let app_env = dockerrun_env(&text, "ws-echo");
    assert!(
        app_env.iter().any(|(k, _)| k == "WSRT_TRUSTED_PROXIES"),
        "ws-echo believes nginx's X-Forwarded-For"
    );
    assert!(
        !app_env.iter().any(|(k, _)| k == "WSRT_PROXY_PROTOCOL"),
        "nginx consumes the PROXY header; ws-echo must not expect one"
    );
}
