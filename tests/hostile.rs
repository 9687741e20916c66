//! Hostile clients over real sockets on 127.0.0.1: slowloris, handshake floods, clients that
//! never read, oversize input, invalid UTF-8 at every position, resets mid-frame, half-close,
//! the connection cap, file-descriptor exhaustion (ws-echo under a low RLIMIT_NOFILE), a host
//! that stops polling its event queue, and address spoofing. Each test is bounded in count and
//! time; every wait is bounded by `WAIT` (or a stated deadline), so a broken server fails a
//! test instead of hanging it.

mod common;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use wsrt::event_queue::{EventQueue, QueuedEvent};
use wsrt::{ConnId, Message, SendStatus, Server};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The tests here load the machine on purpose and some compare timings; they run one at a
/// time (the harness would otherwise run them side by side on the same cores).
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// One echo round trip of a small text message on an upgraded raw connection.
fn round_trip(s: &mut TcpStream, text: &str) -> Duration {
    let t = Instant::now();
    s.write_all(&frame(true, 1, text.as_bytes(), true)).unwrap();
    let (fin, op, p) = read_frame(s);
    let d = t.elapsed();
    assert_eq!((fin, op, p.as_slice()), (true, 1, text.as_bytes()));
    d
}

fn median(mut v: Vec<Duration>) -> Duration {
    assert!(!v.is_empty());
    v.sort();
    v[v.len() / 2]
}

/// The server still echoes on a fresh connection.
fn still_serves(addr: SocketAddr) {
    let mut s = raw_ws(addr, "/");
    round_trip(&mut s, "still here");
    s.write_all(&close_frame(1000, "")).unwrap();
    assert_eq!(read_until_close(&mut s), Some(1000));
}

/// A raw TCP client whose receive buffer is small (set before connect, so the window stays
/// small): the kernel absorbs little of what the server sends to a client that never reads.
fn small_rcvbuf_tcp(addr: SocketAddr) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&addr.into()).unwrap();
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

fn small_rcvbuf_ws(addr: SocketAddr) -> TcpStream {
    let mut s = small_rcvbuf_tcp(addr);
    s.write_all(upgrade_request("/", "").as_bytes()).unwrap();
    assert_eq!(read_head(&mut s).0, 101);
    s
}

/// Close with a TCP reset instead of a FIN.
fn reset(s: TcpStream) {
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
}

/// Read until EOF or reset (bounded by the socket's read timeout); returns the bytes read.
fn drain_to_eof(s: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut b = [0u8; 16384];
    loop {
        match s.read(&mut b) {
            Ok(0) => return all,
            Ok(n) => all.extend_from_slice(&b[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return all,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("expected EOF, got {e} after {} bytes", all.len()),
        }
    }
}

/// Split a byte stream of server frames: (fin, opcode, payload) each.
fn parse_frames(mut b: &[u8]) -> Vec<(bool, u8, Vec<u8>)> {
    let mut out = Vec::new();
    while b.len() >= 2 {
        let (len, hl) = match b[1] & 0x7f {
            126 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        assert!(b.len() >= hl + len, "truncated frame");
        out.push((b[0] & 0x80 != 0, b[0] & 0x0f, b[hl..hl + len].to_vec()));
        b = &b[hl + len..];
    }
    assert!(b.is_empty(), "trailing bytes");
    out
}

/// Per-process figures from /proc.
mod procfs {
    pub fn rss_kib(pid: u32) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS")
    }

    /// utime + stime in seconds.
    pub fn cpu_secs(pid: u32) -> f64 {
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // Fields after the command name, which is in parentheses and may hold spaces.
        let rest = &s[s.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // rest starts at field 3 (state); utime is field 14, stime field 15.
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        ticks as f64 / clk_tck()
    }

    pub fn fd_count(pid: u32) -> usize {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    }

    fn clk_tck() -> f64 {
        // SAFETY: sysconf has no preconditions.
        let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if t > 0 {
            t as f64
        } else {
            100.0
        }
    }
}

/// A ws-echo child process; its stderr log lines arrive on `log`.
struct EchoProc {
    child: Child,
    pid: u32,
    addr: SocketAddr,
    log: mpsc::Receiver<String>,
}

impl EchoProc {
    /// Start ws-echo on 127.0.0.1:0; `nofile` sets RLIMIT_NOFILE (soft = hard) for the child.
    fn start(args: &[&str], nofile: Option<u64>) -> EchoProc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ws-echo"));
        cmd.args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, _) in std::env::vars() {
            if k.starts_with("WSRT_") {
                cmd.env_remove(k);
            }
        }
        if let Some(n) = nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: the closure runs in the forked child before exec and only calls
            // setrlimit, which is async-signal-safe; it touches no memory of the parent.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n as libc::rlim_t,
                        rlim_max: n as libc::rlim_t,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("ws-echo starts");
        let (tx, log) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("HOSTILE_ECHO_LOG").is_some() {
                    eprintln!("[ws-echo] {line}");
                }
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let line = wait_line(&log, "listening on");
        let addr_text = line.split("listening on ").nth(1).unwrap();
        let addr: SocketAddr = addr_text.split(' ').next().unwrap().parse().unwrap();
        EchoProc {
            pid: child.id(),
            child,
            addr,
            log,
        }
    }
}

impl Drop for EchoProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_line(log: &mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match log.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => {}
            Err(_) => panic!("no ws-echo log line containing {needle:?}"),
        }
    }
}

/// Wait (bounded) for a condition no event announces, checking every few milliseconds.
fn eventually(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------------------------
// Slowloris
// ---------------------------------------------------------------------------------------------

#[test]
fn slowloris_1000_connections_are_closed_at_the_handshake_timeout_while_others_are_served() {
    let _serial = serial();
    wsrt::os::raise_fd_limit().unwrap();
    const N: usize = 1000;
    let timeout = Duration::from_secs(2);
    let srv = TestServer::start(&[("handshake_timeout", "2s")]);
    let mut normal = raw_ws(srv.addr, "/");
    srv.wait_open();
    for _ in 0..50 {
        round_trip(&mut normal, "warm-up");
    }
    let unloaded = median((0..400).map(|_| round_trip(&mut normal, "rtt")).collect());

    // 1,000 connections, each sending the upgrade request one byte per second. They are
    // opened in batches of 64 that the server has accepted before the next, so the test
    // measures handshake timeouts, not the listen queue (see
    // `connect_burst_is_not_stalled_by_a_small_listen_backlog`).
    let t0 = Instant::now();
    let h = srv.handle();
    let mut socks = Vec::with_capacity(N);
    for i in 0..N {
        let s = TcpStream::connect(srv.addr).expect("connect");
        s.set_nonblocking(true).unwrap();
        s.set_nodelay(true).unwrap();
        socks.push((s, Instant::now(), None::<Instant>));
        if i % 64 == 63 {
            eventually("the batch is accepted", WAIT, || {
                h.stats().accepted >= i as u64 + 2
            });
        }
    }
    let first_connect = socks[0].1;
    eprintln!("slowloris: {N} connected in {:?}", t0.elapsed());
    let request = upgrade_request("/", "").into_bytes();
    let loris = thread::spawn(move || {
        let mut sent = 0;
        let mut next_byte = Instant::now();
        let mut buf = [0u8; 4096];
        let give_up = Instant::now() + timeout + WAIT;
        loop {
            let now = Instant::now();
            if now >= next_byte && sent < request.len() {
                for (s, _, closed) in socks.iter_mut() {
                    if closed.is_none() {
                        let _ = s.write(&request[sent..sent + 1]);
                    }
                }
                sent += 1;
                next_byte += Duration::from_secs(1);
            }
            // Sample every socket for the server's close (EOF or reset).
            let mut open = 0;
            for (s, _, closed) in socks.iter_mut() {
                if closed.is_some() {
                    continue;
                }
                loop {
                    match s.read(&mut buf) {
                        Ok(0) => *closed = Some(now),
                        Ok(_) => continue, // a response before the close is fine
                        Err(e) if e.kind() == ErrorKind::WouldBlock => open += 1,
                        Err(_) => *closed = Some(now),
                    }
                    break;
                }
            }
            if open == 0 || now > give_up {
                return (socks, sent);
            }
            thread::sleep(Duration::from_millis(10));
        }
    });

    // Meanwhile a normal client's echo latency: round trips until shortly before the first
    // slowloris connection's deadline.
    let mut loaded = Vec::new();
    while Instant::now() < first_connect + timeout - Duration::from_millis(200)
        && loaded.len() < 20_000
    {
        loaded.push(round_trip(&mut normal, "rtt"));
    }
    let (socks, bytes_sent) = loris.join().unwrap();
    let loaded_n = loaded.len();
    let loaded = median(loaded);
    eprintln!(
        "slowloris: unloaded median {unloaded:?}, loaded median {loaded:?} over {loaded_n} round trips; \
         each slow client sent {bytes_sent} bytes"
    );
    assert!(
        loaded_n >= 50,
        "only {loaded_n} round trips during the attack"
    );
    assert!(
        loaded <= unloaded * 2 + Duration::from_millis(2),
        "echo latency under slowloris: median {loaded:?} vs {unloaded:?} unloaded"
    );

    let mut lifetimes: Vec<Duration> = Vec::new();
    for (i, (_, connected, closed)) in socks.iter().enumerate() {
        let closed = closed.unwrap_or_else(|| panic!("slow connection {i} never closed"));
        lifetimes.push(closed - *connected);
    }
    lifetimes.sort();
    let (min, max) = (lifetimes[0], lifetimes[N - 1]);
    eprintln!("slowloris: closed after {min:?} .. {max:?}");
    assert!(
        min >= timeout - Duration::from_millis(50),
        "closed before the handshake timeout: {min:?}"
    );
    assert!(
        max <= timeout + Duration::from_millis(1500),
        "closed late: {max:?}"
    );
    let stats = srv.handle().stats();
    assert_eq!(stats.rejected("handshake_timeout"), N as u64);
    assert_eq!(stats.open, 1, "only the normal client is open");
    // The normal client was never disturbed.
    round_trip(&mut normal, "after");
}

// ---------------------------------------------------------------------------------------------
// Handshake floods
// ---------------------------------------------------------------------------------------------

#[test]
fn handshake_flood_of_full_upgrades_and_closes() {
    let _serial = serial();
    wsrt::os::raise_fd_limit().unwrap();
    const THREADS: usize = 4;
    const PER_THREAD: usize = 400;
    let srv = TestServer::start(&[]);
    let mut normal = raw_ws(srv.addr, "/");
    srv.wait_open();
    let done = Arc::new(AtomicUsize::new(0));
    let flooders: Vec<_> = (0..THREADS)
        .map(|t| {
            let addr = srv.addr;
            let done = done.clone();
            thread::spawn(move || {
                for i in 0..PER_THREAD {
                    let mut s = raw_ws(addr, "/flood");
                    match i % 4 {
                        // Clean: close handshake.
                        0 | 1 => {
                            s.write_all(&close_frame(1000, "")).unwrap();
                            assert_eq!(read_until_close(&mut s), Some(1000));
                        }
                        // One message, then a clean close.
                        2 => {
                            round_trip(&mut s, &format!("{t}/{i}"));
                            s.write_all(&close_frame(1001, "bye")).unwrap();
                            assert_eq!(read_until_close(&mut s), Some(1001));
                        }
                        // Vanish without a close frame.
                        _ => drop(s),
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // The normal client keeps echoing throughout.
    let mut trips = 0;
    while done.load(Ordering::Relaxed) < THREADS * PER_THREAD {
        round_trip(&mut normal, "steady");
        trips += 1;
    }
    for f in flooders {
        f.join().unwrap();
    }
    let total = THREADS * PER_THREAD;
    let (mut opens, mut clean, mut abnormal) = (0, 0, 0);
    while opens < total || clean + abnormal < total {
        match srv.next_event() {
            Ev::Open(..) => opens += 1,
            Ev::Close(_, info) if info.clean => clean += 1,
            Ev::Close(_, info) => {
                assert_eq!(info.code, 1006);
                abnormal += 1
            }
            _ => {}
        }
    }
    assert_eq!((clean, abnormal), (total * 3 / 4, total / 4));
    let stats = srv.handle().stats();
    eprintln!("flood: {total} upgrades, {trips} round trips of the steady client meanwhile");
    assert_eq!(stats.upgraded, total as u64 + 1);
    assert_eq!(stats.open, 1);
    round_trip(&mut normal, "after the flood");
}

#[test]
fn flood_of_requests_abandoned_before_the_response() {
    let _serial = serial();
    let srv = TestServer::start(&[]);
    let req = upgrade_request("/", "");
    for i in 0..300 {
        let mut s = tcp(srv.addr);
        match i % 3 {
            0 => {}
            1 => s.write_all(&req.as_bytes()[..req.len() / 2]).unwrap(),
            _ => s.write_all(req.as_bytes()).unwrap(),
        }
        if i % 2 == 0 {
            reset(s);
        }
    }
    still_serves(srv.addr);
    // Every abandoned connection is gone (the full ones were upgraded, then closed).
    eventually("abandoned connections are released", WAIT, || {
        let st = srv.handle().stats();
        st.open == 0 && st.accepted == st.closed
    });
}

/// A burst of connections (a reconnect storm after a deploy, a load balancer failing over)
/// must not overflow the listen queue: an overflow drops the SYN and the client waits for
/// its retransmission, 1 s later. The only worker is held in `on_open`, so the burst waits
/// in the kernel's accept queue, whose length is `listen_backlog` (mio and std use 128).
#[test]
fn connect_burst_is_not_stalled_by_a_small_listen_backlog() {
    let _serial = serial();
    const BURST: usize = 1000;
    wsrt::os::raise_fd_limit().unwrap();
    /// on_open tells the test it runs, then waits for the release.
    struct HeldOpen(std::sync::Mutex<(mpsc::Sender<()>, mpsc::Receiver<()>)>);
    impl wsrt::Handler for HeldOpen {
        fn on_open(&self, _conn: &mut wsrt::Conn<'_>) {
            let chans = self.0.lock().unwrap();
            chans.0.send(()).unwrap();
            let _ = chans.1.recv_timeout(WAIT);
        }
    }
    let (release, held) = mpsc::channel();
    let (entered, holding) = mpsc::channel();
    let srv = Server::start(
        options(&[("workers", "1")]),
        HeldOpen(std::sync::Mutex::new((entered, held))),
    )
    .unwrap();
    let addr = srv.local_addr();
    let mut holder = TcpStream::connect(addr).unwrap();
    holder
        .write_all(upgrade_request("/", "").as_bytes())
        .unwrap();
    holding
        .recv_timeout(WAIT)
        .expect("on_open holds the worker");
    let mut socks = Vec::with_capacity(BURST);
    for i in 0..BURST {
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.connect_timeout(&addr.into(), Duration::from_millis(500))
            .unwrap_or_else(|e| panic!("connect {i} of {BURST} while accepts wait: {e} (SYN dropped: listen queue overflow)"));
        socks.push(sock);
    }
    release.send(()).unwrap();
    // Every queued connection is accepted once the worker runs again.
    eventually("the burst is accepted", WAIT, || {
        srv.handle().stats().accepted as usize > BURST
    });
}

// ---------------------------------------------------------------------------------------------
// Clients that never read
// ---------------------------------------------------------------------------------------------

/// A host thread keeps sending to clients that never read. The server's queued bytes stay
/// within max_backpressure (+ one message) per connection; the slow clients are closed with
/// 1008; a reading client receives everything.
#[test]
fn clients_that_never_read_are_closed_per_policy_and_memory_stays_bounded() {
    let _serial = serial();
    const SLOW: usize = 16;
    const MAX_BP: usize = 256 * 1024;
    const MSG: usize = 64 * 1024;
    let srv = TestServer::start_with(
        &[
            ("max_backpressure", "256KiB"),
            ("backpressure_policy", "close"),
            ("close_timeout", "500ms"),
        ],
        false,
        None,
    );
    let h = srv.handle();
    let mut slow = Vec::new();
    let mut slow_ids = Vec::new();
    for _ in 0..SLOW {
        slow.push(small_rcvbuf_ws(srv.addr));
        slow_ids.push(srv.wait_open());
    }
    let good = raw_ws(srv.addr, "/");
    let good_id = srv.wait_open();
    let received = Arc::new(AtomicUsize::new(0));
    let reader = {
        let mut good = good.try_clone().unwrap();
        let received = received.clone();
        thread::spawn(move || loop {
            let (_, op, p) = read_frame(&mut good);
            if op == 8 {
                return;
            }
            assert_eq!(p.len(), 1024);
            received.fetch_add(1, Ordering::Relaxed);
        })
    };

    let big = vec![0x5a; MSG];
    let small = vec![0x11; 1024];
    let (mut good_sent, mut peak_queued) = (0usize, 0usize);
    let mut closed_by_policy = 0;
    for _round in 0..400 {
        for id in &slow_ids {
            match h.send_binary(*id, &big) {
                SendStatus::Sent | SendStatus::Queued | SendStatus::Gone => {}
                SendStatus::Dropped => closed_by_policy += 1,
            }
        }
        // Like a real host, pace the reading client by its buffered amount: its socket
        // drains at the reader's speed, and the host may outrun it (sends to the slow
        // clients are refused at once).
        let deadline = Instant::now() + WAIT;
        while h.buffered_amount(good_id).unwrap_or(0) > MAX_BP / 2 {
            assert!(
                Instant::now() < deadline,
                "the reading client stopped draining"
            );
            thread::yield_now();
        }
        assert_ne!(h.send_binary(good_id, &small), SendStatus::Dropped);
        good_sent += 1;
        let queued: usize = slow_ids
            .iter()
            .chain(Some(&good_id))
            .filter_map(|id| h.buffered_amount(*id))
            .sum();
        peak_queued = peak_queued.max(queued);
        if slow_ids.iter().all(|id| !h.is_open(*id)) {
            break;
        }
    }
    let bound = SLOW * (MAX_BP + MSG) + 64 * 1024;
    eprintln!(
        "never-read: peak queued {peak_queued} bytes over {} connections (bound {bound}); \
         {closed_by_policy} sends refused",
        SLOW + 1
    );
    assert!(peak_queued <= bound, "queued {peak_queued} > {bound}");
    // Every slow client is closed with 1008; the reading client is not.
    let mut closed = std::collections::HashSet::new();
    while closed.len() < SLOW {
        if let Ev::Close(id, info) = srv.next_event() {
            assert_ne!(id, good_id, "the reading client was closed: {info:?}");
            assert!(slow_ids.contains(&id));
            assert_eq!(info.code, 1008, "{info:?}");
            closed.insert(id);
        }
    }
    assert!(h.is_open(good_id));
    assert!(h.stats().backpressure_dropped >= SLOW as u64);
    // The reading client gets every message it was sent, then a clean close.
    eventually("the reading client got everything", WAIT, || {
        received.load(Ordering::Relaxed) == good_sent
    });
    assert!(h.close(good_id, 1000, ""));
    let mut good = good;
    reader.join().unwrap();
    good.write_all(&close_frame(1000, "")).unwrap();
    drop(slow);
    let mut s = raw_ws(srv.addr, "/");
    let id = srv.wait_open();
    round_trip_via_host(&srv, &mut s, id);
}

/// Policy `drop`: the slow client stays open, sends past the limit are refused, and the queue
/// never holds more than max_backpressure + one message.
#[test]
fn clients_that_never_read_with_drop_policy_stay_open_and_bounded() {
    let _serial = serial();
    const MAX_BP: usize = 128 * 1024;
    const MSG: usize = 16 * 1024;
    let srv = TestServer::start_with(
        &[
            ("max_backpressure", "128KiB"),
            ("backpressure_policy", "drop"),
        ],
        false,
        None,
    );
    let h = srv.handle();
    let mut s = small_rcvbuf_ws(srv.addr);
    let id = srv.wait_open();
    let msg = vec![7u8; MSG];
    let (mut dropped, mut accepted, mut peak) = (0, 0, 0);
    for _ in 0..2000 {
        match h.send_binary(id, &msg) {
            SendStatus::Dropped => dropped += 1,
            SendStatus::Sent | SendStatus::Queued => accepted += 1,
            SendStatus::Gone => panic!("closed under policy drop"),
        }
        peak = peak.max(h.buffered_amount(id).unwrap());
    }
    eprintln!("drop policy: {accepted} accepted, {dropped} dropped, peak queue {peak}");
    assert!(dropped > 0);
    assert!(peak <= MAX_BP + MSG, "queue peaked at {peak}");
    assert!(h.is_open(id));
    // Now the client reads: it gets exactly the accepted messages, in full.
    let mut got = 0;
    while got < accepted {
        let (fin, op, p) = read_frame(&mut s);
        assert_eq!((fin, op, p.len()), (true, 2, MSG));
        got += 1;
    }
    round_trip_via_host(&srv, &mut s, id);
}

fn round_trip_via_host(srv: &TestServer, s: &mut TcpStream, id: ConnId) {
    assert_eq!(srv.handle().send_text(id, "alive"), SendStatus::Sent);
    assert_eq!(read_frame(s), (true, 1, b"alive".to_vec()));
}

/// ws-echo as a separate process: clients send a lot and never read the echoes. The server's
/// RSS stays within max_backpressure × connections (+ slack), those clients are closed, and a
/// normal client is unaffected.
#[test]
fn ws_echo_memory_stays_bounded_with_clients_that_never_read() {
    let _serial = serial();
    const CLIENTS: usize = 40;
    const MSG: usize = 16 * 1024;
    const LIMIT: usize = 256 * 1024 * 1024; // far beyond what the limits allow
    let echo = EchoProc::start(
        &[
            "--max-backpressure",
            "256KiB",
            "--close-timeout",
            "500ms",
            "--workers",
            "2",
        ],
        None,
    );
    still_serves(echo.addr);
    let baseline = procfs::rss_kib(echo.pid);
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        let pid = echo.pid;
        thread::spawn(move || {
            let mut peak = 0;
            while !stop.load(Ordering::Relaxed) {
                peak = peak.max(procfs::rss_kib(pid));
                thread::sleep(Duration::from_millis(10));
            }
            peak
        })
    };
    // Each writes until the server cuts it off (bounded: 256 MiB or twice WAIT).
    let writers: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let addr = echo.addr;
            thread::spawn(move || {
                let mut s = small_rcvbuf_ws(addr);
                s.set_write_timeout(Some(WAIT)).unwrap();
                let f = frame(true, 2, &vec![0xab; MSG], true);
                let give_up = Instant::now() + WAIT * 2;
                let mut sent = 0;
                while sent < LIMIT && Instant::now() < give_up {
                    if s.write_all(&f).is_err() {
                        return (sent, true); // closed by the server (policy) — expected
                    }
                    sent += MSG;
                }
                (sent, false)
            })
        })
        .collect();
    let mut normal = raw_ws(echo.addr, "/");
    let mut trips = 0;
    while writers.iter().any(|w| !w.is_finished()) {
        round_trip(&mut normal, "unaffected");
        trips += 1;
    }
    let results: Vec<(usize, bool)> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    let sent: Vec<usize> = results.iter().map(|r| r.0).collect();
    stop.store(true, Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    let total: usize = sent.iter().sum();
    let growth_kib = peak.saturating_sub(baseline);
    let bound_kib = (CLIENTS * (256 * 1024 + MSG) / 1024) as u64 * 3 / 2 + 16 * 1024;
    eprintln!(
        "ws-echo never-read: {CLIENTS} clients sent {} MiB in total; RSS baseline {baseline} KiB, \
         peak {peak} KiB (+{growth_kib} KiB, bound +{bound_kib} KiB); {trips} normal round trips",
        total >> 20
    );
    assert!(
        results.iter().all(|r| r.1),
        "some never-reading client was never cut off: {results:?}"
    );
    assert!(growth_kib <= bound_kib, "RSS grew by {growth_kib} KiB");
    let closes = closes_logged(&echo, CLIENTS, "code=1008");
    assert_eq!(closes, CLIENTS);
    round_trip(&mut normal, "still unaffected");
}

/// Count `close` log lines containing `needle` until `n` were seen (bounded by WAIT).
fn closes_logged(echo: &EchoProc, n: usize, needle: &str) -> usize {
    let mut seen = 0;
    let deadline = Instant::now() + WAIT;
    while seen < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match echo.log.recv_timeout(left) {
            Ok(line) if line.contains(" close ") && line.contains(needle) => seen += 1,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    seen
}

// ---------------------------------------------------------------------------------------------
// Oversize headers, frames and messages
// ---------------------------------------------------------------------------------------------

#[test]
fn oversize_request_heads_get_431_without_reading_them_whole() {
    let _serial = serial();
    let srv = TestServer::start(&[
        ("max_header_bytes", "8KiB"),
        ("max_headers", "64"),
        ("close_timeout", "500ms"),
    ]);
    // An endless header, streamed: the 431 arrives at once; the server then discards what
    // still comes (so its response is not destroyed by a reset) for at most close_timeout.
    let mut s = tcp(srv.addr);
    s.set_write_timeout(Some(WAIT)).unwrap();
    let started = Instant::now();
    let writer = {
        let mut s = s.try_clone().unwrap();
        thread::spawn(move || {
            let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: ");
            let chunk = vec![b'a'; 64 * 1024];
            while started.elapsed() < WAIT * 2 {
                if s.write_all(&chunk).is_err() {
                    return Some(started.elapsed());
                }
            }
            None
        })
    };
    let (status, head) = read_head(&mut s);
    assert_eq!(status, 431, "{head}");
    let cut_off = writer
        .join()
        .unwrap()
        .expect("the server never stopped reading");
    eprintln!("endless header: cut off after {cut_off:?}");
    assert!(cut_off < Duration::from_millis(500) + Duration::from_secs(2));
    drop(s);
    // Too many header lines.
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let (status, _, _) = http(srv.addr, &upgrade_request("/", &many));
    assert_eq!(status, 431);
    // A single header line without an end, just under and over the limit.
    let (status, _, _) = http(
        srv.addr,
        &upgrade_request("/", &format!("X-Big: {}\r\n", "b".repeat(9000))),
    );
    assert_eq!(status, 431);
    assert!(srv.handle().stats().rejected("headers_too_large") >= 3);
    still_serves(srv.addr);
}

#[test]
fn oversize_frames_are_refused_from_their_header_alone() {
    let _serial = serial();
    let srv = TestServer::start(&[("max_frame_size", "64KiB"), ("max_message_size", "1MiB")]);
    for len in [64 * 1024 + 1, 1 << 30, u64::MAX >> 1] {
        let mut s = raw_ws(srv.addr, "/");
        // The header alone announces the length: no payload is ever sent.
        let mut f = vec![0x82, 0x80 | 127];
        f.extend_from_slice(&len.to_be_bytes());
        f.extend_from_slice(&[1, 2, 3, 4]);
        s.write_all(&f).unwrap();
        assert_eq!(read_until_close(&mut s), Some(1009), "length {len}");
        assert_eof(&mut s);
    }
    // A length with the most significant bit set is a protocol error (RFC 6455 5.2).
    let mut s = raw_ws(srv.addr, "/");
    let mut f = vec![0x82, 0x80 | 127];
    f.extend_from_slice(&u64::MAX.to_be_bytes());
    f.extend_from_slice(&[1, 2, 3, 4]);
    s.write_all(&f).unwrap();
    let code = read_until_close(&mut s);
    assert!(matches!(code, Some(1002) | Some(1009)), "{code:?}");
    still_serves(srv.addr);
}

#[test]
fn oversize_messages_are_refused_however_they_are_fragmented() {
    let _serial = serial();
    let srv = TestServer::start(&[("max_frame_size", "64KiB"), ("max_message_size", "64KiB")]);
    // Fragments under the frame limit, adding up past the message limit.
    let mut s = raw_ws(srv.addr, "/");
    let part = vec![b'p'; 16 * 1024];
    s.write_all(&frame(false, 2, &part, true)).unwrap();
    for _ in 0..3 {
        s.write_all(&frame(false, 0, &part, true)).unwrap();
    }
    s.write_all(&frame(false, 0, b"!", true)).unwrap();
    assert_eq!(read_until_close(&mut s), Some(1009));
    // 70,000 one-byte fragments: refused once the total passes the limit, not at the end.
    let mut s = raw_ws(srv.addr, "/");
    let mut bytes = frame(false, 1, b"a", true);
    for _ in 0..70_000 {
        bytes.extend(frame(false, 0, b"a", true));
    }
    let writer = {
        let mut s = s.try_clone().unwrap();
        thread::spawn(move || {
            let _ = s.write_all(&bytes);
        })
    };
    assert_eq!(read_until_close(&mut s), Some(1009));
    drop(s);
    writer.join().unwrap();
    // Exactly at the limit is fine.
    let mut s = raw_ws(srv.addr, "/");
    let exact = vec![b'e'; 64 * 1024];
    s.write_all(&frame(false, 2, &exact[..32 * 1024], true))
        .unwrap();
    s.write_all(&frame(true, 0, &exact[32 * 1024..], true))
        .unwrap();
    assert_eq!(read_frame(&mut s), (true, 2, exact));
    still_serves(srv.addr);
}

// ---------------------------------------------------------------------------------------------
// Invalid UTF-8 at every position
// ---------------------------------------------------------------------------------------------

const TEXT: &str = "héllo wörld — 日本語 ✓ 𝄞 κόσμε ok";

#[test]
fn invalid_utf8_at_every_position_closes_with_1007() {
    let _serial = serial();
    let srv = TestServer::start(&[]);
    let valid = TEXT.as_bytes();
    // Check: the server echoes the valid text intact.
    let mut s = raw_ws(srv.addr, "/");
    round_trip(&mut s, TEXT);
    for pos in 0..valid.len() {
        for bad in [0xffu8, 0x80, 0xc0] {
            let mut b = valid.to_vec();
            b[pos] = bad;
            if std::str::from_utf8(&b).is_ok() {
                continue;
            }
            // Whole message in one frame.
            let mut s = raw_ws(srv.addr, "/");
            s.write_all(&frame(true, 1, &b, true)).unwrap();
            assert_eq!(
                read_until_close(&mut s),
                Some(1007),
                "byte {bad:#x} at {pos}"
            );
            // Fragmented at that position; the message never ends: refused early (fail fast)
            // as soon as the bytes seen so far cannot start a valid text.
            let mut s = raw_ws(srv.addr, "/");
            s.write_all(&frame(false, 1, &b[..=pos], true)).unwrap();
            if bad == 0xff || bad == 0x80 {
                assert_eq!(
                    read_until_close(&mut s),
                    Some(1007),
                    "fail fast: byte {bad:#x} at {pos}, first fragment only"
                );
            } else {
                s.write_all(&frame(true, 0, &b[pos + 1..], true)).unwrap();
                assert_eq!(read_until_close(&mut s), Some(1007), "{bad:#x} at {pos}");
            }
        }
    }
    // Truncated at every position inside a multi-byte character, at the end of the message.
    for end in 1..valid.len() {
        if std::str::from_utf8(&valid[..end]).is_ok() {
            continue;
        }
        let mut s = raw_ws(srv.addr, "/");
        s.write_all(&frame(true, 1, &valid[..end], true)).unwrap();
        assert_eq!(read_until_close(&mut s), Some(1007), "truncated at {end}");
    }
    // A valid message split at every byte position (inside characters too) is accepted.
    let mut s = raw_ws(srv.addr, "/");
    for pos in 1..valid.len() {
        s.write_all(&frame(false, 1, &valid[..pos], true)).unwrap();
        s.write_all(&frame(true, 0, &valid[pos..], true)).unwrap();
        assert_eq!(
            read_frame(&mut s),
            (true, 1, valid.to_vec()),
            "split at {pos}"
        );
    }
    // Invalid UTF-8 in a close reason is 1007 too.
    let mut s = raw_ws(srv.addr, "/");
    let mut p = 1000u16.to_be_bytes().to_vec();
    p.extend_from_slice(&[b'o', 0xff, b'k']);
    s.write_all(&frame(true, 8, &p, true)).unwrap();
    assert_eq!(read_until_close(&mut s), Some(1007));
    drop(s);
    eventually("refused connections released", WAIT, || {
        srv.handle().stats().open == 2
    });
}

// ---------------------------------------------------------------------------------------------
// Resets and half-close
// ---------------------------------------------------------------------------------------------

#[test]
fn reset_in_the_middle_of_a_frame_or_handshake_leaves_others_served() {
    let _serial = serial();
    let srv = TestServer::start(&[]);
    let mut normal = raw_ws(srv.addr, "/");
    let normal_id = srv.wait_open();
    let payload = vec![b'r'; 4000];
    let whole = frame(true, 2, &payload, true);
    let h = srv.handle();
    let mut resets = 0;
    for i in 0..60 {
        match i % 5 {
            // Mid-handshake.
            0 => {
                let mut s = tcp(srv.addr);
                s.write_all(&upgrade_request("/", "").as_bytes()[..40])
                    .unwrap();
                reset(s);
                continue;
            }
            // Mid-header, mid-extended-length, mid-payload.
            1..=3 => {
                let cut = [1, 3, 2000][i % 5 - 1];
                let mut s = raw_ws(srv.addr, "/");
                let id = srv.wait_open();
                s.write_all(&whole[..cut]).unwrap();
                reset(s);
                let (closed, info) = srv.wait_close();
                assert_eq!((closed, info.code, info.clean), (id, 1006, false));
            }
            // While the server has a lot queued for it.
            _ => {
                let s = small_rcvbuf_ws(srv.addr);
                let id = srv.wait_open();
                for _ in 0..16 {
                    h.send_binary(id, &payload);
                }
                let mut s = s;
                s.write_all(&whole[..100]).unwrap();
                reset(s);
                let (closed, info) = srv.wait_close();
                assert_eq!((closed, info.code), (id, 1006));
            }
        }
        resets += 1;
        round_trip(&mut normal, "unaffected");
    }
    assert_eq!(resets, 48);
    eventually("reset connections released", WAIT, || {
        let st = h.stats();
        st.open == 1 && st.accepted == st.closed + 1
    });
    assert!(h.is_open(normal_id));
    round_trip(&mut normal, "after");
}

#[test]
fn half_close_after_a_close_frame_finishes_cleanly() {
    let _serial = serial();
    let srv = TestServer::start(&[]);
    let mut s = raw_ws(srv.addr, "/");
    let id = srv.wait_open();
    s.write_all(&close_frame(1000, "done")).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let frames = parse_frames(&drain_to_eof(&mut s));
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].1, 8);
    assert_eq!(&frames[0].2[..2], &1000u16.to_be_bytes());
    let (closed, info) = srv.wait_close();
    assert_eq!((closed, info.code, info.clean), (id, 1000, true));
}

/// The client sends a message, then shuts down its writing side without a close frame. The
/// echo the server accepted for it is still delivered before the server closes, even when
/// the client reads nothing until it has half-closed (so the EOF reaches the server while
/// most of a large echo is still queued), and whether or not it reads meanwhile.
#[test]
fn half_close_after_a_message_still_delivers_the_reply() {
    let _serial = serial();
    let srv = TestServer::start(&[]);
    for (size, read_meanwhile) in [
        (10usize, false),
        (200 * 1024, false),
        (4 * 1024 * 1024, false),
        (4 * 1024 * 1024, true),
    ] {
        // A small receive window keeps most of a large echo in the server's queue.
        let mut s = if read_meanwhile {
            raw_ws(srv.addr, "/")
        } else {
            small_rcvbuf_ws(srv.addr)
        };
        let id = srv.wait_open();
        let msg = vec![b'h'; size];
        let f = frame(true, 2, &msg, true);
        let write_and_half_close = move |mut s: TcpStream| {
            s.write_all(&f).unwrap();
            s.shutdown(Shutdown::Write).unwrap();
        };
        let frames = if read_meanwhile {
            let writer = {
                let s = s.try_clone().unwrap();
                thread::spawn(move || write_and_half_close(s))
            };
            let got = parse_frames(&drain_to_eof(&mut s));
            writer.join().unwrap();
            got
        } else {
            write_and_half_close(s.try_clone().unwrap());
            parse_frames(&drain_to_eof(&mut s))
        };
        assert!(!frames.is_empty(), "size {size}: nothing came back");
        assert_eq!(frames[0], (true, 2, msg), "size {size}: echo first");
        assert!(
            frames[1..].iter().all(|f| f.1 == 8),
            "only a close may follow"
        );
        let (closed, info) = srv.wait_close();
        assert_eq!((closed, info.clean), (id, false));
    }
    still_serves(srv.addr);
}

/// A client that half-closes while a large echo is queued and then never reads: the server
/// keeps the echo only for close_timeout, then drops the connection (it must not wait forever).
#[test]
fn half_closed_client_that_never_reads_is_dropped_at_close_timeout() {
    let _serial = serial();
    let srv = TestServer::start(&[("close_timeout", "300ms")]);
    let mut s = small_rcvbuf_ws(srv.addr);
    let id = srv.wait_open();
    s.write_all(&frame(true, 2, &vec![b'h'; 4 * 1024 * 1024], true))
        .unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    srv.wait_for(|e| matches!(e, Ev::Binary(..)));
    let (closed, info) = srv.wait_close();
    assert_eq!((closed, info.code, info.clean), (id, 1006, false));
    drop(s);
    still_serves(srv.addr);
}

// ---------------------------------------------------------------------------------------------
// Connection cap
// ---------------------------------------------------------------------------------------------

#[test]
fn connection_cap_refuses_a_flood_with_503_and_retry_after() {
    let _serial = serial();
    const CAP: usize = 50;
    let srv = TestServer::start(&[("max_connections", "50")]);
    let mut held: Vec<TcpStream> = (0..CAP)
        .map(|_| {
            let s = raw_ws(srv.addr, "/");
            srv.wait_open();
            s
        })
        .collect();
    let refusals: Vec<_> = (0..4)
        .map(|_| {
            let addr = srv.addr;
            thread::spawn(move || {
                for _ in 0..50 {
                    let (status, head, body) = http(addr, &upgrade_request("/", ""));
                    assert_eq!(status, 503, "{head}");
                    assert!(
                        head.to_ascii_lowercase().contains("retry-after: 1"),
                        "{head}"
                    );
                    assert!(body.contains("too many connections"), "{body}");
                }
            })
        })
        .collect();
    for r in refusals {
        r.join().unwrap();
    }
    assert_eq!(srv.handle().stats().rejected("too_many_connections"), 200);
    // Those holding a place are unaffected.
    for s in held.iter_mut().step_by(7) {
        round_trip(s, "held");
    }
    // Ten leave; exactly ten new ones get in, the eleventh is refused.
    for mut s in held.drain(..10) {
        s.write_all(&close_frame(1000, "")).unwrap();
        assert_eq!(read_until_close(&mut s), Some(1000));
    }
    for _ in 0..10 {
        srv.wait_close();
    }
    let newcomers: Vec<TcpStream> = (0..10).map(|_| raw_ws(srv.addr, "/")).collect();
    let (status, _, _) = http(srv.addr, &upgrade_request("/", ""));
    assert_eq!(status, 503);
    assert_eq!(srv.handle().stats().open, CAP as u64);
    drop(newcomers);
}

// ---------------------------------------------------------------------------------------------
// File-descriptor exhaustion
// ---------------------------------------------------------------------------------------------

/// Upgrade on a fresh connection, giving up on the response after `limit`.
fn try_upgrade(addr: SocketAddr, limit: Duration) -> (TcpStream, bool) {
    let mut s = tcp(addr);
    s.write_all(upgrade_request("/", "").as_bytes()).unwrap();
    s.set_read_timeout(Some(limit)).unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            Ok(_) => panic!("closed while waiting for the upgrade response"),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                s.set_read_timeout(Some(WAIT)).unwrap();
                return (s, false);
            }
            Err(e) => panic!("{e}"),
        }
    }
    s.set_read_timeout(Some(WAIT)).unwrap();
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&head)
    );
    (s, true)
}

#[test]
fn fd_exhaustion_keeps_serving_does_not_spin_and_recovers() {
    let _serial = serial();
    let echo = EchoProc::start(&["--workers", "2"], Some(64));
    let mut open = Vec::new();
    // Open connections until the server cannot accept any more.
    let starved = loop {
        assert!(
            open.len() < 64,
            "the server accepted more connections than it has fds"
        );
        let (s, upgraded) = try_upgrade(echo.addr, Duration::from_millis(500));
        if !upgraded {
            break s;
        }
        open.push(s);
    };
    let fds = procfs::fd_count(echo.pid);
    eprintln!(
        "fd exhaustion: {} connections upgraded, server holds {fds} fds (limit 64)",
        open.len()
    );
    assert!(
        open.len() >= 40,
        "only {} connections before starving",
        open.len()
    );
    wait_line(&echo.log, "out of file descriptors");
    // Existing connections still echo.
    for s in open.iter_mut() {
        round_trip(s, "starved but serving");
    }
    // No spinning while the listener has a connection it cannot accept.
    let (cpu0, t0) = (procfs::cpu_secs(echo.pid), Instant::now());
    thread::sleep(Duration::from_secs(2));
    let (cpu, window) = (
        procfs::cpu_secs(echo.pid) - cpu0,
        t0.elapsed().as_secs_f64(),
    );
    eprintln!("fd exhaustion: {cpu:.3} s CPU over a {window:.2} s window");
    assert!(
        cpu < 0.2 * window,
        "server spins: {cpu:.3} s CPU in {window:.2} s"
    );
    // Close five clients: the waiting connection is accepted and upgraded, then new ones too.
    for mut s in open.drain(..5) {
        s.write_all(&close_frame(1000, "")).unwrap();
        assert_eq!(read_until_close(&mut s), Some(1000));
    }
    let mut starved = starved;
    let (status, head) = read_head(&mut starved);
    assert_eq!(status, 101, "{head}");
    round_trip(&mut starved, "accepted at last");
    for _ in 0..3 {
        let (mut s, upgraded) = try_upgrade(echo.addr, WAIT);
        assert!(upgraded);
        round_trip(&mut s, "new");
        open.push(s);
    }
    for s in open.iter_mut() {
        round_trip(s, "still serving");
    }
}

// ---------------------------------------------------------------------------------------------
// A host that stops polling (event queue)
// ---------------------------------------------------------------------------------------------

#[test]
fn a_host_that_stops_polling_many_connections_bounded_then_complete_and_in_order() {
    let _serial = serial();
    const CONNS: usize = 40;
    const PER_CONN: u32 = 2000;
    const CAPACITY: usize = 256;
    const WORKERS: usize = 2;
    const MIN_FRAME: usize = 6 + 100; // header + smallest payload below
    let q = EventQueue::new(CAPACITY, false).unwrap();
    let server = Server::start(options(&[("workers", "2")]), q.handler()).unwrap();
    q.attach(server.handle());
    let h = server.handle();
    let addr = server.local_addr();
    let payload = |c: u32, i: u32| {
        let mut p = c.to_be_bytes().to_vec();
        p.extend_from_slice(&i.to_be_bytes());
        p.resize(100 + ((c * 31 + i * 7) % 300) as usize, b'.');
        p
    };
    // Small send buffers, so the kernel holds little of what a held-back client writes.
    let clients: Vec<TcpStream> = (0..CONNS)
        .map(|_| {
            let sock =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            sock.set_send_buffer_size(8192).unwrap();
            sock.connect(&addr.into()).unwrap();
            let mut s: TcpStream = sock.into();
            s.set_read_timeout(Some(WAIT)).unwrap();
            s.write_all(upgrade_request("/", "").as_bytes()).unwrap();
            assert_eq!(read_head(&mut s).0, 101);
            s
        })
        .collect();
    // Opens: learn which id is which client from its first message, later.
    let mut batch = Vec::new();
    let mut opened = 0;
    while opened < CONNS {
        batch.clear();
        assert!(q.poll(&mut batch, 64, Some(WAIT)) > 0);
        opened += batch
            .iter()
            .filter(|e| matches!(e, QueuedEvent::Open(_)))
            .count();
    }
    // Every client streams its messages while the host does not poll.
    let writers: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(c, s)| {
            let mut s = s.try_clone().unwrap();
            let bytes: Vec<u8> = (0..PER_CONN)
                .flat_map(|i| frame(true, 2, &payload(c as u32, i), true))
                .collect();
            thread::spawn(move || s.write_all(&bytes).unwrap())
        })
        .collect();
    eventually("reading pauses", WAIT, || q.is_paused());
    // Paused: the queue stays bounded and stops growing while the host is away.
    let bound = CAPACITY + WORKERS * (64 * 1024 / MIN_FRAME + 1);
    let mut lens = Vec::new();
    let bytes_in = h.stats().bytes_in;
    for _ in 0..20 {
        lens.push(q.len());
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        h.stats().bytes_in,
        bytes_in,
        "the server kept reading while paused"
    );
    let held = *lens.iter().max().unwrap();
    eprintln!("host away: queue held {lens:?} events (bound {bound})");
    assert!(held <= bound, "queue held {held} events while paused");
    assert_eq!(
        lens[lens.len() / 2],
        lens[lens.len() - 1],
        "queue still growing"
    );
    assert!(
        writers.iter().any(|w| !w.is_finished()),
        "clients were never held back"
    );

    // The host comes back: every message arrives once, in order per connection; it echoes
    // them, and each client reads its own back in order.
    let readers: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(c, s)| {
            let mut s = s.try_clone().unwrap();
            thread::spawn(move || {
                for i in 0..PER_CONN {
                    let (_, op, p) = read_frame(&mut s);
                    assert_eq!((op, p), (2, payload(c as u32, i)), "client {c} echo {i}");
                }
            })
        })
        .collect();
    let mut next = std::collections::HashMap::<ConnId, (u32, u32)>::new();
    let mut total = 0usize;
    let mut max_len = 0;
    while total < CONNS * PER_CONN as usize {
        batch.clear();
        max_len = max_len.max(q.len());
        assert!(
            q.poll(&mut batch, 128, Some(WAIT)) > 0,
            "stalled at {total}"
        );
        for ev in batch.drain(..) {
            if let QueuedEvent::Message { id, text, data } = ev {
                assert!(!text);
                let c = u32::from_be_bytes(data[..4].try_into().unwrap());
                let i = u32::from_be_bytes(data[4..8].try_into().unwrap());
                let e = next.entry(id).or_insert((c, 0));
                assert_eq!(e.0, c, "one connection, one client");
                assert_eq!(i, e.1, "client {c}: out of order");
                assert_eq!(data, payload(c, i));
                e.1 += 1;
                total += 1;
                assert_ne!(h.send(id, Message::Binary(&data)), SendStatus::Gone);
            }
        }
    }
    assert!(
        max_len <= bound,
        "queue held {max_len} while the host polled"
    );
    assert_eq!(next.len(), CONNS);
    assert!(next.values().all(|(_, n)| *n == PER_CONN));
    for w in writers {
        w.join().unwrap();
    }
    for r in readers {
        r.join().unwrap();
    }
    for mut s in clients {
        s.write_all(&close_frame(1000, "")).unwrap();
        assert_eq!(read_until_close(&mut s), Some(1000));
    }
    let mut closes = 0;
    while closes < CONNS {
        batch.clear();
        assert!(q.poll(&mut batch, 64, Some(WAIT)) > 0);
        for ev in &batch {
            if let QueuedEvent::Close { info, .. } = ev {
                assert_eq!((info.code, info.clean), (1000, true));
                closes += 1;
            }
        }
    }
    let st = h.stats();
    assert_eq!(st.messages_in, (CONNS * PER_CONN as usize) as u64);
    assert_eq!(st.open, 0);
}

// ---------------------------------------------------------------------------------------------
// Spoofing
// ---------------------------------------------------------------------------------------------

/// Upgrade with `prefix` (e.g. a PROXY header) and `extra` headers; the address the handler
/// saw, or the refusal status.
fn remote_seen(srv: &TestServer, prefix: &[u8], extra: &str) -> Result<String, u16> {
    let mut s = tcp(srv.addr);
    let mut req = prefix.to_vec();
    req.extend_from_slice(upgrade_request("/", extra).as_bytes());
    s.write_all(&req).unwrap();
    let (status, _) = read_head(&mut s);
    if status != 101 {
        return Err(status);
    }
    match srv.wait_for(|e| matches!(e, Ev::Open(..))) {
        Ev::Open(_, remote) => Ok(remote),
        _ => unreachable!(),
    }
}

fn ip_of(remote: &str) -> &str {
    remote.rsplit_once(':').unwrap().0
}

const SPOOFS: &[&str] = &[
    "X-Forwarded-For: 203.0.113.66\r\n",
    "X-Forwarded-For: 203.0.113.66, 198.51.100.7\r\n",
    "X-Forwarded-For: 203.0.113.66\r\nX-Forwarded-For: 198.51.100.7\r\n",
    "x-forwarded-for: 203.0.113.66\r\n",
    "X-Real-IP: 203.0.113.66\r\n",
    "Forwarded: for=203.0.113.66\r\n",
    "Forwarded: for=\"[2001:db8::66]:443\";proto=https\r\n",
    "Forwarded: for=203.0.113.66\r\nX-Forwarded-For: 198.51.100.7\r\nX-Real-IP: 192.0.2.9\r\n",
];

fn proxy_v1(src: &str) -> Vec<u8> {
    format!("PROXY TCP4 {src} 127.0.0.1 40000 80\r\n").into_bytes()
}

fn proxy_v2(src: [u8; 4]) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x21); // v2, PROXY
    h.push(0x11); // TCP over IPv4
    h.extend_from_slice(&12u16.to_be_bytes());
    h.extend_from_slice(&src);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&40000u16.to_be_bytes());
    h.extend_from_slice(&80u16.to_be_bytes());
    h
}

#[test]
fn forwarding_headers_from_untrusted_sources_never_change_the_address() {
    let _serial = serial();
    for header in ["x-forwarded-for", "x-real-ip", "forwarded", "auto"] {
        for trusted in ["", "10.0.0.0/8", "::1/128, 192.168.0.0/16"] {
            let srv =
                TestServer::start(&[("trusted_proxies", trusted), ("forwarded_header", header)]);
            for spoof in SPOOFS {
                let remote = remote_seen(&srv, b"", spoof).unwrap();
                assert_eq!(
                    ip_of(&remote),
                    "127.0.0.1",
                    "{header} with trusted {trusted:?}: {spoof:?} -> {remote}"
                );
            }
        }
    }
}

#[test]
fn proxy_headers_from_untrusted_sources_never_change_the_address() {
    let _serial = serial();
    // PROXY protocol off: any PROXY header is refused, never believed.
    let srv = TestServer::start(&[("trusted_proxies", "127.0.0.1")]);
    assert_eq!(remote_seen(&srv, &proxy_v1("203.0.113.7"), ""), Err(400));
    assert_eq!(remote_seen(&srv, &proxy_v2([203, 0, 113, 7]), ""), Err(400));
    // PROXY protocol on, but this peer is not a trusted proxy: refused.
    for version in ["v1", "v2", "any"] {
        let srv = TestServer::start(&[
            ("proxy_protocol", version),
            ("trusted_proxies", "10.0.0.0/8"),
        ]);
        let header = if version == "v1" {
            proxy_v1("203.0.113.7")
        } else {
            proxy_v2([203, 0, 113, 7])
        };
        let refused = remote_seen(&srv, &header, "X-Forwarded-For: 198.51.100.1\r\n");
        assert_eq!(refused, Err(400), "{version}");
        assert!(srv_events_have_no_open(&srv), "{version}: nothing opened");
    }
    assert!(srv_events_have_no_open(&srv));
}

fn srv_events_have_no_open(srv: &TestServer) -> bool {
    srv.events.try_iter().all(|e| !matches!(e, Ev::Open(..)))
}

/// Behind a trusted load balancer speaking PROXY, the client it names is not trusted: the
/// forwarding headers that client sends are ignored, and a second PROXY header is refused.
#[test]
fn a_client_behind_a_trusted_proxy_cannot_spoof_further() {
    let _serial = serial();
    let srv = TestServer::start(&[("proxy_protocol", "any"), ("trusted_proxies", "127.0.0.1")]);
    for prefix in [proxy_v1("203.0.113.7"), proxy_v2([203, 0, 113, 7])] {
        for spoof in SPOOFS.iter().chain(Some(&"")) {
            let remote = remote_seen(&srv, &prefix, spoof).unwrap();
            assert_eq!(ip_of(&remote), "203.0.113.7", "{spoof:?}");
        }
    }
    // The client's own PROXY header inside the proxied stream is refused.
    let mut twice = proxy_v1("203.0.113.7");
    twice.extend(proxy_v1("198.51.100.1"));
    assert_eq!(remote_seen(&srv, &twice, ""), Err(400));
    // A trusted proxy naming a trusted address does not let that client's headers be used
    // for more than the chain allows: the right-most untrusted entry wins.
    let srv = TestServer::start(&[("trusted_proxies", "127.0.0.1, 10.0.0.0/8")]);
    let chain = "X-Forwarded-For: 10.9.9.9, 203.0.113.7\r\n";
    assert_eq!(
        ip_of(&remote_seen(&srv, b"", chain).unwrap()),
        "203.0.113.7"
    );
    // The client prepends a fake chain; the proxy appends the real address.
    let chain = "X-Forwarded-For: 6.6.6.6, 10.0.0.1\r\nX-Forwarded-For: 203.0.113.8\r\n";
    assert_eq!(
        ip_of(&remote_seen(&srv, b"", chain).unwrap()),
        "203.0.113.8"
    );
    // Garbage from a trusted proxy is never taken for an address.
    for junk in [
        "not-an-ip",
        "unknown",
        "_hidden",
        "999.1.1.1",
        "203.0.113.7:80:90",
        "",
    ] {
        let remote = remote_seen(&srv, b"", &format!("X-Forwarded-For: {junk}\r\n")).unwrap();
        assert_eq!(ip_of(&remote), "127.0.0.1", "{junk:?}");
    }
}
