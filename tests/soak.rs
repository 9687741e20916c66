//! A bounded churn soak against a ws-echo child process: several client threads connect,
//! echo a mix of message sizes, and disconnect (clean close, abrupt drop, or reset), over and
//! over, while each keeps a small pool of connections open. Afterwards the server's RSS and
//! fd count must return to their baseline and ws-echo's log and final stats must show no
//! leaked connection and no lost message.
//!
//! Ignored by default; run with `scripts/soak [minutes]` (default 3, at most 10), i.e.
//! `SOAK_MINUTES=3 cargo test --release --test soak -- --ignored --nocapture`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const THREADS: usize = 6;
const POOL: usize = 16; // connections each thread keeps open at a time
/// RSS may end at most this far above the warmed-up baseline (allocator caches).
const RSS_TOLERANCE_KIB: u64 = 16 * 1024;

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[derive(Default)]
struct Counts {
    opens: AtomicU64,
    closes: AtomicU64,
    closes_1006: AtomicU64,
    warnings: AtomicU64,
}

struct EchoProc {
    child: Child,
    pid: u32,
    addr: SocketAddr,
    counts: Arc<Counts>,
    /// The log lines that are not per-connection chatter (start, warnings, final stats).
    lines: mpsc::Receiver<String>,
}

impl EchoProc {
    fn start() -> EchoProc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ws-echo"));
        cmd.args(["--listen", "127.0.0.1:0", "--workers", "2"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, _) in std::env::vars() {
            if k.starts_with("WSRT_") {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd.spawn().expect("ws-echo starts");
        let counts = Arc::new(Counts::default());
        let (tx, lines) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let c = counts.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains(" open #") {
                    c.opens.fetch_add(1, Ordering::Relaxed);
                } else if line.contains(" close #") {
                    c.closes.fetch_add(1, Ordering::Relaxed);
                    if line.contains("code=1006") {
                        c.closes_1006.fetch_add(1, Ordering::Relaxed);
                    }
                } else {
                    if line.contains("WARN") || line.contains("ERROR") {
                        c.warnings.fetch_add(1, Ordering::Relaxed);
                        eprintln!("[ws-echo] {line}");
                    }
                    let _ = tx.send(line);
                }
            }
        });
        let deadline = Instant::now() + WAIT;
        let addr = loop {
            let line = lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("ws-echo says where it listens");
            if let Some(rest) = line.split("listening on ").nth(1) {
                break rest.split(' ').next().unwrap().parse().unwrap();
            }
        };
        EchoProc {
            pid: child.id(),
            child,
            addr,
            counts,
            lines,
        }
    }
}

impl Drop for EchoProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A small deterministic generator (xorshift), one per thread.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Message sizes: mostly small, some medium, a few large.
fn size(rng: &mut Rng) -> usize {
    match rng.below(100) {
        0..=59 => 1 + rng.below(128) as usize,
        60..=89 => 128 + rng.below(4096) as usize,
        90..=98 => 4096 + rng.below(64 * 1024) as usize,
        _ => 256 * 1024 + rng.below(768 * 1024) as usize,
    }
}

#[derive(Default, Clone, Copy)]
struct Totals {
    connections: u64,
    messages: u64,
    bytes: u64,
    clean: u64,
    dropped: u64,
    reset: u64,
}

fn churn(addr: SocketAddr, seed: u64, stop: Arc<AtomicBool>) -> Totals {
    let mut rng = Rng(seed | 1);
    let mut t = Totals::default();
    let mut pool: Vec<TcpStream> = Vec::new();
    let mut scratch = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        if pool.len() < POOL {
            pool.push(raw_ws(addr, "/soak"));
            t.connections += 1;
        }
        let i = rng.below(pool.len() as u64) as usize;
        let s = &mut pool[i];
        for _ in 0..1 + rng.below(8) {
            let n = size(&mut rng);
            scratch.clear();
            scratch.extend((0..n).map(|j| (j as u64 ^ seed) as u8));
            let text = rng.below(4) == 0;
            if text {
                scratch.iter_mut().for_each(|b| *b = b'a' + *b % 26);
            }
            let op = if text { 1 } else { 2 };
            // Large ones sometimes in fragments.
            if n > 4096 && rng.below(2) == 0 {
                let cut = n / 2;
                s.write_all(&frame(false, op, &scratch[..cut], true))
                    .unwrap();
                s.write_all(&frame(true, 0, &scratch[cut..], true)).unwrap();
            } else {
                s.write_all(&frame(true, op, &scratch, true)).unwrap();
            }
            let (fin, rop, p) = read_frame(s);
            assert!(
                fin && rop == op && p == scratch,
                "echo mismatch ({n} bytes)"
            );
            t.messages += 1;
            t.bytes += n as u64;
        }
        // Retire a connection now and then, in one of three ways.
        if rng.below(3) == 0 {
            let mut s = pool.swap_remove(i);
            match rng.below(10) {
                0..=6 => {
                    s.write_all(&close_frame(1000, "")).unwrap();
                    assert_eq!(read_until_close(&mut s), Some(1000));
                    t.clean += 1;
                }
                7..=8 => {
                    drop(s);
                    t.dropped += 1;
                }
                _ => {
                    socket2::SockRef::from(&s)
                        .set_linger(Some(Duration::ZERO))
                        .unwrap();
                    drop(s);
                    t.reset += 1;
                }
            }
        }
    }
    for mut s in pool {
        s.write_all(&close_frame(1000, "")).unwrap();
        assert_eq!(read_until_close(&mut s), Some(1000));
        t.clean += 1;
    }
    t
}

/// Run the churn for `d`; returns the totals and the peak RSS seen meanwhile.
fn run_churn(echo: &EchoProc, d: Duration, seed: u64) -> (Totals, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..THREADS)
        .map(|i| {
            let (addr, stop) = (echo.addr, stop.clone());
            thread::spawn(move || {
                churn(addr, seed.wrapping_mul(31).wrapping_add(i as u64 + 1), stop)
            })
        })
        .collect();
    let started = Instant::now();
    let mut peak = 0;
    let mut last_report = Instant::now();
    let progress = Arc::new(Mutex::new(()));
    while started.elapsed() < d {
        peak = peak.max(rss_kib(echo.pid));
        if last_report.elapsed() >= Duration::from_secs(30) {
            let _g = progress.lock().unwrap();
            eprintln!(
                "soak: {:>4}s  rss {} KiB  fds {}  opens {}  closes {}",
                started.elapsed().as_secs(),
                rss_kib(echo.pid),
                fd_count(echo.pid),
                echo.counts.opens.load(Ordering::Relaxed),
                echo.counts.closes.load(Ordering::Relaxed)
            );
            last_report = Instant::now();
        }
        assert!(
            workers.iter().all(|w| !w.is_finished()),
            "a client thread failed"
        );
        thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let mut t = Totals::default();
    for w in workers {
        let r = w.join().expect("client thread");
        t.connections += r.connections;
        t.messages += r.messages;
        t.bytes += r.bytes;
        t.clean += r.clean;
        t.dropped += r.dropped;
        t.reset += r.reset;
    }
    peak = peak.max(rss_kib(echo.pid));
    (t, peak)
}

/// Wait (bounded) until ws-echo has logged a close for every open.
fn settle(echo: &EchoProc, opens: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let c = &echo.counts;
        let (o, cl) = (
            c.opens.load(Ordering::Relaxed),
            c.closes.load(Ordering::Relaxed),
        );
        if o >= opens && cl == o {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "connections leaked: {o} opens logged, {cl} closes (expected {opens} opens)"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
#[ignore = "soak: run with scripts/soak [minutes]"]
fn churn_soak() {
    let minutes: f64 = std::env::var("SOAK_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(3.0);
    assert!(
        minutes > 0.0 && minutes <= 10.0,
        "SOAK_MINUTES must be in (0, 10]"
    );
    wsrt::os::raise_fd_limit().unwrap();
    let echo = EchoProc::start();
    let rss_cold = rss_kib(echo.pid);
    let fds_cold = fd_count(echo.pid);

    // Warm up (allocator arenas, worker buffers), then take the baseline with no clients.
    let (warm, _) = run_churn(&echo, Duration::from_secs(10), 7);
    settle(&echo, warm.connections);
    let rss_before = rss_kib(echo.pid);
    let fds_before = fd_count(echo.pid);
    eprintln!(
        "soak: cold rss {rss_cold} KiB, fds {fds_cold}; after warm-up ({} connections) rss {rss_before} KiB, fds {fds_before}",
        warm.connections
    );

    let d = Duration::from_secs_f64(minutes * 60.0);
    let started = Instant::now();
    let (t, rss_peak) = run_churn(&echo, d, 1234567);
    let elapsed = started.elapsed();
    settle(&echo, warm.connections + t.connections);
    let rss_after = rss_kib(echo.pid);
    let fds_after = fd_count(echo.pid);
    let c = &echo.counts;

    eprintln!(
        "soak: ran {:.1} min with {THREADS} client threads",
        elapsed.as_secs_f64() / 60.0
    );
    eprintln!(
        "soak: connections {} (clean {} / dropped {} / reset {}), messages {} echoed, {:.1} MiB each way",
        t.connections,
        t.clean,
        t.dropped,
        t.reset,
        t.messages,
        t.bytes as f64 / (1 << 20) as f64
    );
    eprintln!(
        "soak: server log: {} opens, {} closes ({} abnormal 1006), {} warnings",
        c.opens.load(Ordering::Relaxed),
        c.closes.load(Ordering::Relaxed),
        c.closes_1006.load(Ordering::Relaxed),
        c.warnings.load(Ordering::Relaxed)
    );
    eprintln!(
        "soak: RSS before {rss_before} KiB, peak {rss_peak} KiB, after {rss_after} KiB; fds before {fds_before}, after {fds_after}"
    );

    assert_eq!(fds_after, fds_before, "fd count did not return to baseline");
    assert!(
        rss_after <= rss_before + RSS_TOLERANCE_KIB,
        "RSS did not return to baseline: {rss_after} KiB after vs {rss_before} KiB before (tolerance {RSS_TOLERANCE_KIB} KiB)"
    );
    assert_eq!(
        c.closes_1006.load(Ordering::Relaxed),
        warm.dropped + warm.reset + t.dropped + t.reset,
        "abnormal closes are exactly the clients that vanished"
    );
    assert_eq!(
        c.warnings.load(Ordering::Relaxed),
        0,
        "ws-echo logged warnings"
    );

    // The server's own count, from its final stats line on a graceful stop.
    let kill = Command::new("kill")
        .args(["-TERM", &echo.pid.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let deadline = Instant::now() + WAIT;
    let stopped = loop {
        let line = echo
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("ws-echo logs its final stats");
        if line.contains("stopped:") {
            break line;
        }
    };
    eprintln!("soak: {stopped}");
    let served = warm.connections + t.connections;
    // The handful of checks before the churn (none) and the churn connections are all served.
    assert!(
        stopped.contains(&format!("stopped: {served} connections served")),
        "expected {served} connections served: {stopped}"
    );
    let msgs = warm.messages + t.messages;
    assert!(
        stopped.contains(&format!("{msgs} messages in, {msgs} out")),
        "expected {msgs} messages each way: {stopped}"
    );
}
