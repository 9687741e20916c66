//! loadgen — the WebSocket load generator of wsrt's benchmarks.
//!
//! It shares no code with wsrt: it does the HTTP upgrade itself, builds masked client frames
//! itself (a fresh-looking mask key per frame, like a browser), and parses server frames itself.
//! One thread, one `mio::Poll` (epoll), so pin it to one core with `taskset`.
//!
//! Modes:
//! - `echo`: N connections, K messages of S bytes in flight on each; warm-up, then a fixed
//!   duration; msgs/s, bytes/s, p50/p99/p99.9 latency, own CPU use (getrusage) and the
//!   server's CPU use (/proc/PID/stat) when `--server-pid` is given.
//! - `idle`: N connections over several 127.0.0.x source addresses; the server's VmRSS delta
//!   per connection (/proc/PID/status).
//! - `fanout`: T subscribers and one publisher (connection 0); each round the publisher sends
//!   K messages and the round ends when every subscriber has all of them; deliveries/s and
//!   the time until the last subscriber has the message. Measured rounds start once one
//!   round has reached every subscriber (a raw server may accept late).
//!
//! Output: human lines on stderr, one `RESULT key=value ...` line on stdout.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Protocol, SockRef, Socket, Type};

// ---------------------------------------------------------------- arguments

struct Args {
    mode: String,
    addr: SocketAddr,
    conns: usize,
    inflight: usize,
    size: usize,
    binary: bool,
    warmup: Duration,
    duration: Duration,
    server_pid: Option<u32>,
    raw: bool,
    src_addrs: usize,
    settle: Duration,
    max_pending: usize,
    round_timeout: Duration,
}

fn usage() -> ! {
    eprintln!(
        "usage: loadgen --mode echo|idle|fanout --addr IP:PORT [--conns N] [--inflight K] [--size S]\n\
         \x20      [--binary] [--warmup SECS] [--duration SECS] [--server-pid PID] [--raw]\n\
         \x20      [--src-addrs A] [--settle SECS] [--max-pending P] [--round-timeout SECS]\n\
         \n\
         --raw        no HTTP upgrade (the raw TCP echo ceiling); frames may come back masked\n\
         --src-addrs  spread connections over 127.0.0.2 .. 127.0.0.(A+1) (default 32)\n\
         fanout: --conns is the number of subscribers T; --inflight is messages per round"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        mode: "echo".into(),
        addr: "127.0.0.1:9001".parse().unwrap(),
        conns: 100,
        inflight: 1,
        size: 20,
        binary: false,
        warmup: Duration::from_secs(1),
        duration: Duration::from_secs(5),
        server_pid: None,
        raw: false,
        src_addrs: 32,
        settle: Duration::from_millis(1000),
        max_pending: 256,
        round_timeout: Duration::from_secs(10),
    };
    let mut it = std::env::args().skip(1);
    let secs = |v: String| Duration::from_secs_f64(v.parse::<f64>().unwrap_or_else(|_| usage()));
    while let Some(k) = it.next() {
        let mut v = || it.next().unwrap_or_else(|| usage());
        match k.as_str() {
            "--mode" => a.mode = v(),
            "--addr" => a.addr = v().parse().unwrap_or_else(|_| usage()),
            "--conns" => a.conns = v().parse().unwrap_or_else(|_| usage()),
            "--inflight" => a.inflight = v().parse().unwrap_or_else(|_| usage()),
            "--size" => a.size = v().parse().unwrap_or_else(|_| usage()),
            "--binary" => a.binary = true,
            "--warmup" => a.warmup = secs(v()),
            "--duration" => a.duration = secs(v()),
            "--server-pid" => a.server_pid = Some(v().parse().unwrap_or_else(|_| usage())),
            "--raw" => a.raw = true,
            "--src-addrs" => a.src_addrs = v().parse().unwrap_or_else(|_| usage()),
            "--settle" => a.settle = secs(v()),
            "--max-pending" => a.max_pending = v().parse().unwrap_or_else(|_| usage()),
            "--round-timeout" => a.round_timeout = secs(v()),
            "-h" | "--help" => usage(),
            _ => usage(),
        }
    }
    if a.conns == 0 || a.inflight == 0 || a.src_addrs == 0 || a.src_addrs > 250 {
        usage()
    }
    a
}

// ---------------------------------------------------------------- small helpers

/// xorshift64*: mask keys and handshake keys; not cryptographic, it doesn't need to be.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = ((b[0] as u32) << 16) | ((b[1] as u32) << 8) | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// One masked client frame (FIN set), as a browser sends it.
fn client_frame(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 14);
    f.push(0x80 | opcode);
    let n = payload.len();
    if n < 126 {
        f.push(0x80 | n as u8);
    } else if n <= 0xffff {
        f.push(0x80 | 126);
        f.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&(n as u64).to_be_bytes());
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    f
}

/// A frame header: (header length incl. mask key, payload length, opcode, mask key if masked).
/// `None` when the header or the payload is not complete yet.
fn parse_frame(buf: &[u8]) -> Option<(usize, usize, u8, Option<[u8; 4]>)> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let (mut hl, len) = match buf[1] & 0x7f {
        126 => {
            if buf.len() < 4 {
                return None;
            }
            (4, u16::from_be_bytes([buf[2], buf[3]]) as usize)
        }
        127 => {
            if buf.len() < 10 {
                return None;
            }
            (
                10,
                u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
            )
        }
        n => (2, n as usize),
    };
    let mut mask = None;
    if masked {
        if buf.len() < hl + 4 {
            return None;
        }
        mask = Some([buf[hl], buf[hl + 1], buf[hl + 2], buf[hl + 3]]);
        hl += 4;
    }
    if buf.len() < hl + len {
        return None;
    }
    Some((hl, len, opcode, mask))
}

fn raise_nofile() -> u64 {
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        }
        r.rlim_cur
    }
}

/// This process's user+system CPU time.
fn own_cpu() -> Duration {
    // SAFETY: getrusage writes into a zeroed local struct.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Another process's user+system CPU time (all its threads), from /proc/PID/stat.
fn proc_cpu(pid: u32) -> Option<Duration> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // fields after the comm: state(0) ... utime is field 14 overall → index 11 here, stime 12.
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Some(Duration::from_nanos(ticks * 1_000_000_000 / hz.max(1)))
}

fn proc_rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0 // ns → µs
}

// ---------------------------------------------------------------- connections

#[derive(PartialEq, Eq, Clone, Copy)]
enum State {
    Connecting,
    Handshake,
    Open,
    Dead,
}

struct Conn {
    stream: TcpStream,
    state: State,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    wpos: usize,
    want_write: bool,
    /// Send times of the messages in flight (echo is in order).
    sent: VecDeque<Instant>,
}

impl Conn {
    /// Writes what is queued; registers for writability only while the kernel pushes back.
    fn flush(&mut self, poll: &Poll, tok: Token) -> io::Result<()> {
        while self.wpos < self.wbuf.len() {
            match self.stream.write(&self.wbuf[self.wpos..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.wpos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !self.want_write {
                        self.want_write = true;
                        poll.registry().reregister(
                            &mut self.stream,
                            tok,
                            Interest::READABLE | Interest::WRITABLE,
                        )?;
                    }
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.wbuf.clear();
        self.wpos = 0;
        if self.want_write {
            self.want_write = false;
            poll.registry()
                .reregister(&mut self.stream, tok, Interest::READABLE)?;
        }
        Ok(())
    }

    /// Reads everything available into `rbuf`. Ok(false) = EOF. A read that doesn't fill
    /// `scratch` emptied the socket: data arriving after it raises a new edge-triggered
    /// event, so no second read (one more syscall per message, the generator's ceiling in
    /// the one-in-flight workloads) is needed to see `WouldBlock`.
    fn read_all(&mut self, scratch: &mut [u8]) -> io::Result<bool> {
        loop {
            match self.stream.read(scratch) {
                Ok(0) => return Ok(false),
                Ok(n) if n < scratch.len() => {
                    self.rbuf.extend_from_slice(&scratch[..n]);
                    return Ok(true);
                }
                Ok(n) => self.rbuf.extend_from_slice(&scratch[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

struct Net {
    poll: Poll,
    events: Events,
    conns: Vec<Conn>,
    scratch: Vec<u8>,
    errors: u64,
}

fn src_addr(i: usize, n: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 2 + (i % n) as u8)
}

fn connect(addr: SocketAddr, src: Ipv4Addr) -> io::Result<TcpStream> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    s.set_nonblocking(true)?;
    s.set_nodelay(true)?;
    // Pick the port at connect() time (4-tuple unique), so one source address serves many runs.
    // SAFETY: setsockopt on our own fd with a pointer to a local int.
    unsafe {
        let one: libc::c_int = 1;
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&s),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &one as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    s.bind(&SocketAddr::new(IpAddr::V4(src), 0).into())?;
    match s.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(s.into()))
}

impl Net {
    /// Opens `n` connections and completes each one's upgrade, at most `max_pending` at a time.
    fn open_all(&mut self, a: &Args, n: usize) -> io::Result<()> {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ std::process::id() as u64);
        let deadline = Instant::now() + Duration::from_secs(120);
        let (mut next, mut pending, mut open) = (0usize, 0usize, 0usize);
        while open < n {
            while next < n && pending < a.max_pending {
                let mut stream = connect(a.addr, src_addr(next, a.src_addrs))?;
                self.poll.registry().register(
                    &mut stream,
                    Token(next),
                    Interest::READABLE | Interest::WRITABLE,
                )?;
                self.conns.push(Conn {
                    stream,
                    state: State::Connecting,
                    rbuf: Vec::new(),
                    wbuf: Vec::new(),
                    wpos: 0,
                    want_write: true,
                    sent: VecDeque::new(),
                });
                next += 1;
                pending += 1;
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("only {open} of {n} connections opened in 120 s"),
                ));
            }
            self.poll
                .poll(&mut self.events, Some(Duration::from_millis(500)))?;
            for ev in self.events.iter() {
                let t = ev.token();
                let c = &mut self.conns[t.0];
                if c.state == State::Connecting {
                    if let Some(e) = c.stream.take_error()? {
                        return Err(e);
                    }
                    match c.stream.peer_addr() {
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotConnected => continue,
                        Err(e) => return Err(e),
                    }
                    if a.raw {
                        c.state = State::Open;
                        pending -= 1;
                        open += 1;
                        c.flush(&self.poll, t)?; // drops write interest
                        continue;
                    }
                    let key: [u8; 16] = {
                        let (x, y) = (rng.next(), rng.next());
                        let mut k = [0u8; 16];
                        k[..8].copy_from_slice(&x.to_le_bytes());
                        k[8..].copy_from_slice(&y.to_le_bytes());
                        k
                    };
                    let req = format!(
                        "GET / HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                         Sec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n\r\n",
                        a.addr,
                        base64(&key)
                    );
                    c.wbuf.extend_from_slice(req.as_bytes());
                    c.state = State::Handshake;
                    c.flush(&self.poll, t)?;
                }
                if c.state == State::Handshake {
                    if ev.is_writable() && c.want_write {
                        c.flush(&self.poll, t)?;
                    }
                    if !c.read_all(&mut self.scratch)? {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "server closed during the upgrade",
                        ));
                    }
                    if let Some(end) = c.rbuf.windows(4).position(|w| w == b"\r\n\r\n") {
                        if !c.rbuf.starts_with(b"HTTP/1.1 101") {
                            let head = String::from_utf8_lossy(&c.rbuf[..end]).into_owned();
                            return Err(io::Error::other(format!("upgrade refused: {head}")));
                        }
                        c.rbuf.drain(..end + 4);
                        c.state = State::Open;
                        pending -= 1;
                        open += 1;
                    }
                }
            }
        }
        Ok(())
    }

    fn close_all(&mut self) {
        // RST instead of FIN: no TIME_WAIT pile-up between runs.
        for c in &self.conns {
            let _ = SockRef::from(&c.stream).set_linger(Some(Duration::ZERO));
        }
        self.conns.clear();
    }
}

fn new_net() -> io::Result<Net> {
    Ok(Net {
        poll: Poll::new()?,
        events: Events::with_capacity(4096),
        conns: Vec::new(),
        scratch: vec![0u8; 256 * 1024],
        errors: 0,
    })
}

// ---------------------------------------------------------------- echo

fn run_echo(a: &Args) -> io::Result<()> {
    let mut net = new_net()?;
    net.open_all(a, a.conns)?;
    eprintln!("echo: {} connections open", a.conns);

    // A few masked frames with different keys, built once and sent in rotation.
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    let payload: Vec<u8> = if a.binary {
        (0..a.size).map(|_| rng.next() as u8).collect()
    } else {
        (0..a.size).map(|i| b'a' + (i % 26) as u8).collect()
    };
    let opcode = if a.binary { 2 } else { 1 };
    let frames: Vec<Vec<u8>> = (0..16)
        .map(|_| client_frame(opcode, &payload, (rng.next() as u32).to_le_bytes()))
        .collect();
    let mut fi = 0usize;

    let start = Instant::now();
    let warm_end = start + a.warmup;
    let end = warm_end + a.duration;
    for (i, c) in net.conns.iter_mut().enumerate() {
        for _ in 0..a.inflight {
            c.wbuf.extend_from_slice(&frames[fi & 15]);
            fi += 1;
            c.sent.push_back(start);
        }
        c.flush(&net.poll, Token(i))?;
    }

    let mut lat: Vec<u64> = Vec::with_capacity(1 << 20);
    let (mut msgs, mut bytes) = (0u64, 0u64);
    let mut cpu0 = None;
    let mut srv0 = None;
    let mut t_meas0 = warm_end;
    let mut bad = 0u64;
    loop {
        let now0 = Instant::now();
        if cpu0.is_none() && now0 >= warm_end {
            cpu0 = Some(own_cpu());
            srv0 = a.server_pid.and_then(proc_cpu);
            t_meas0 = now0;
        }
        if now0 >= end {
            break;
        }
        net.poll
            .poll(&mut net.events, Some(Duration::from_millis(20)))?;
        for ev in net.events.iter() {
            let t = ev.token();
            let c = &mut net.conns[t.0];
            if c.state != State::Open {
                continue;
            }
            if ev.is_writable() && c.want_write {
                if let Err(e) = c.flush(&net.poll, t) {
                    eprintln!("write error: {e}");
                    c.state = State::Dead;
                    net.errors += 1;
                    continue;
                }
            }
            if !ev.is_readable() {
                continue;
            }
            match c.read_all(&mut net.scratch) {
                Ok(true) => {}
                Ok(false) | Err(_) => {
                    c.state = State::Dead;
                    net.errors += 1;
                    continue;
                }
            }
            let now = Instant::now();
            let measuring = now >= warm_end && now < end;
            let mut pos = 0;
            while let Some((hl, len, op, _)) = parse_frame(&c.rbuf[pos..]) {
                pos += hl + len;
                match op {
                    1 | 2 => {
                        if len != a.size || op != opcode {
                            bad += 1;
                        }
                        let sent = c.sent.pop_front().unwrap_or(now);
                        if measuring {
                            lat.push((now - sent).as_nanos() as u64);
                            msgs += 1;
                            bytes += len as u64;
                        }
                        if now < end {
                            c.wbuf.extend_from_slice(&frames[fi & 15]);
                            fi += 1;
                            c.sent.push_back(now);
                        }
                    }
                    8 => c.state = State::Dead,
                    _ => {} // pings: too rare to matter in a run this short
                }
            }
            c.rbuf.drain(..pos);
            if let Err(e) = c.flush(&net.poll, t) {
                eprintln!("write error: {e}");
                c.state = State::Dead;
                net.errors += 1;
            }
        }
    }
    let wall = (Instant::now() - t_meas0).as_secs_f64();
    let cpu = (own_cpu() - cpu0.unwrap_or_default()).as_secs_f64();
    let srv_cpu = match (srv0, a.server_pid.and_then(proc_cpu)) {
        (Some(x), Some(y)) => format!("{:.0}", (y - x).as_secs_f64() / wall * 100.0),
        _ => "nan".into(),
    };
    net.close_all();
    lat.sort_unstable();
    let r = format!(
        "RESULT mode=echo conns={} inflight={} size={} msgs_per_s={:.0} bytes_per_s={:.0} \
         p50_us={:.1} p99_us={:.1} p999_us={:.1} loadgen_cpu_pct={:.0} server_cpu_pct={} errors={} bad={}",
        a.conns,
        a.inflight,
        a.size,
        msgs as f64 / wall,
        bytes as f64 / wall,
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        percentile(&lat, 0.999),
        cpu / wall * 100.0,
        srv_cpu,
        net.errors,
        bad
    );
    println!("{r}");
    Ok(())
}

// ---------------------------------------------------------------- idle

fn run_idle(a: &Args) -> io::Result<()> {
    let pid = a.server_pid.unwrap_or_else(|| {
        eprintln!("idle mode needs --server-pid");
        std::process::exit(2)
    });
    let before = proc_rss_kib(pid).ok_or_else(|| io::Error::other("cannot read server VmRSS"))?;
    let t0 = Instant::now();
    let mut net = new_net()?;
    net.open_all(a, a.conns)?;
    let open_s = t0.elapsed().as_secs_f64();
    std::thread::sleep(a.settle);
    // Anything the server sent meanwhile (a greeting) is drained, as a client would.
    net.poll.poll(&mut net.events, Some(Duration::ZERO))?;
    let after = proc_rss_kib(pid).ok_or_else(|| io::Error::other("cannot read server VmRSS"))?;
    let per = (after as f64 - before as f64) * 1024.0 / a.conns as f64;
    eprintln!(
        "idle: {} connections open in {open_s:.2} s; server VmRSS {before} KiB -> {after} KiB",
        a.conns
    );
    println!(
        "RESULT mode=idle conns={} rss_before_kib={before} rss_after_kib={after} bytes_per_conn={per:.0} open_s={open_s:.2}",
        a.conns
    );
    net.close_all();
    Ok(())
}

// ---------------------------------------------------------------- fan-out

fn run_fanout(a: &Args) -> io::Result<()> {
    let t = a.conns;
    let mut net = new_net()?;
    net.open_all(a, t + 1)?; // connection 0 publishes
    eprintln!("fanout: {t} subscribers + 1 publisher open");
    // Let servers that subscribe after the 101 finish doing so; drop anything sent so far.
    std::thread::sleep(a.settle);
    loop {
        net.poll.poll(&mut net.events, Some(Duration::ZERO))?;
        if net.events.is_empty() {
            break;
        }
        for ev in net.events.iter() {
            let c = &mut net.conns[ev.token().0];
            let _ = c.read_all(&mut net.scratch);
            c.rbuf.clear();
        }
    }

    // The measured window starts once a round has reached every subscriber. A raw server
    // (no handshake) may accept a connection seconds after the client's connect completed
    // (a full accept queue is retried by the kernel), and such a subscriber misses what was
    // relayed before; until then, rounds are short and do not count.
    const SETTLE_ROUND: Duration = Duration::from_secs(1);
    let settle_deadline = Instant::now() + Duration::from_secs(30);
    let mut settled = false;
    let mut warm_end = settle_deadline + a.warmup;
    let mut end = warm_end + a.duration;
    let mut rng = Rng(0xA076_1D64_78BD_642F);
    let mut seq: u64 = 0;
    let mut got = vec![0u32; t + 1];
    let mut lat_last: Vec<u64> = Vec::new();
    let (mut deliveries, mut meas_time) = (0u64, Duration::ZERO);
    let (mut rounds, mut timeouts, mut bad) = (0u64, 0u64, 0u64);
    let mut cpu_acc = Duration::ZERO;
    let mut srv_first: Option<(Instant, Duration)> = None;
    let per_round = a.inflight as u32;
    while Instant::now() < end {
        let first_seq = seq + 1;
        got.iter_mut().for_each(|g| *g = 0);
        let pubc = &mut net.conns[0];
        for _ in 0..a.inflight {
            seq += 1;
            let text = format!("p{seq:019}");
            let text = &text.as_bytes()[..20.min(text.len())];
            let mut payload = text.to_vec();
            payload.resize(a.size.max(20), b'.');
            pubc.wbuf.extend_from_slice(&client_frame(
                1,
                &payload,
                (rng.next() as u32).to_le_bytes(),
            ));
        }
        let cpu_r0 = own_cpu();
        let t0 = Instant::now();
        pubc.flush(&net.poll, Token(0))?;
        let mut done = 0usize;
        let mut t_last = t0;
        while done < t {
            if !settled && t0.elapsed() > SETTLE_ROUND {
                if Instant::now() > settle_deadline {
                    timeouts += 1;
                    eprintln!(
                        "fanout: no round reached every subscriber within 30 s ({done} of {t})"
                    );
                    end = Instant::now();
                }
                break;
            }
            if t0.elapsed() > a.round_timeout {
                timeouts += 1;
                eprintln!("fanout: round timed out, {done} of {t} subscribers complete");
                break;
            }
            net.poll
                .poll(&mut net.events, Some(Duration::from_millis(100)))?;
            for ev in net.events.iter() {
                let tok = ev.token();
                let c = &mut net.conns[tok.0];
                if c.state != State::Open {
                    continue;
                }
                if ev.is_writable() && c.want_write {
                    let _ = c.flush(&net.poll, tok);
                }
                match c.read_all(&mut net.scratch) {
                    Ok(true) => {}
                    _ => {
                        c.state = State::Dead;
                        net.errors += 1;
                        continue;
                    }
                }
                let mut pos = 0;
                while let Some((hl, len, op, mask)) = parse_frame(&c.rbuf[pos..]) {
                    let p = &c.rbuf[pos + hl..pos + hl + len];
                    pos += hl + len;
                    if op != 1 || len < 20 {
                        continue;
                    }
                    let mut digits = [0u8; 19];
                    for (i, d) in digits.iter_mut().enumerate() {
                        *d = p[1 + i] ^ mask.map_or(0, |m| m[(1 + i) & 3]);
                    }
                    let s: u64 = std::str::from_utf8(&digits)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    if s < first_seq || s > seq {
                        if s > seq {
                            bad += 1;
                        }
                        continue; // a late copy from a timed-out round
                    }
                    if tok.0 != 0 {
                        got[tok.0] += 1;
                        if got[tok.0] == per_round {
                            done += 1;
                        }
                    }
                }
                c.rbuf.drain(..pos);
            }
            if done == t {
                t_last = Instant::now();
            }
        }
        rounds += 1;
        if !settled && done == t {
            settled = true;
            warm_end = Instant::now() + a.warmup;
            end = warm_end + a.duration;
        }
        if settled && t0 >= warm_end && done == t {
            let d = t_last - t0;
            lat_last.push(d.as_nanos() as u64);
            deliveries += t as u64 * a.inflight as u64;
            meas_time += d;
            cpu_acc += own_cpu() - cpu_r0;
        }
        if srv_first.is_none() && Instant::now() >= warm_end {
            srv_first = a.server_pid.and_then(proc_cpu).map(|c| (Instant::now(), c));
        }
    }
    let srv_pct = match (srv_first, a.server_pid.and_then(proc_cpu)) {
        (Some((t1, c1)), Some(c2)) => (c2 - c1).as_secs_f64() / t1.elapsed().as_secs_f64() * 100.0,
        _ => f64::NAN,
    };
    net.close_all();
    lat_last.sort_unstable();
    let ms = |v: f64| v / 1000.0; // µs → ms
    let mt = meas_time.as_secs_f64();
    println!(
        "RESULT mode=fanout subscribers={t} per_round={} rounds={rounds} measured_rounds={} \
         deliveries_per_s={:.0} last_p50_ms={:.3} last_p99_ms={:.3} last_max_ms={:.3} \
         loadgen_cpu_pct={:.0} server_cpu_pct={:.0} timeouts={timeouts} errors={} bad={bad}",
        a.inflight,
        lat_last.len(),
        if mt > 0.0 {
            deliveries as f64 / mt
        } else {
            0.0
        },
        ms(percentile(&lat_last, 0.5)),
        ms(percentile(&lat_last, 0.99)),
        ms(lat_last.last().map_or(f64::NAN, |&x| x as f64 / 1000.0)),
        if mt > 0.0 {
            cpu_acc.as_secs_f64() / mt * 100.0
        } else {
            0.0
        },
        srv_pct,
        net.errors,
    );
    Ok(())
}

fn main() {
    let a = parse_args();
    let lim = raise_nofile();
    let need = if a.mode == "fanout" {
        a.conns + 1
    } else {
        a.conns
    } as u64
        + 64;
    if lim < need {
        eprintln!("RLIMIT_NOFILE is {lim}, need {need}");
        std::process::exit(1);
    }
    let r = match a.mode.as_str() {
        "echo" => run_echo(&a),
        "idle" => run_idle(&a),
        "fanout" => run_fanout(&a),
        _ => usage(),
    };
    if let Err(e) = r {
        eprintln!("loadgen: {e}");
        println!("RESULT mode={} error=1", a.mode);
        std::process::exit(1);
    }
}
