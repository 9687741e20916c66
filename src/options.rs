//! The one option table: every setting has one name, one type, one default and one doc line,
//! reachable by the same name from ws-echo flags, `WSRT_*` environment variables, the C ABI
//! and every binding. Defaults are parsed from the table itself, so they cannot drift.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use crate::net_trust::{ForwardedHeader, TrustedNetworks};
use crate::proxy_protocol::Versions;

/// What to do when a connection's outbound queue would exceed `max_backpressure`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackpressurePolicy {
    /// Close the connection with 1008 (the slow client is cut off).
    Close,
    /// Refuse the message (`SendStatus::Dropped`) and keep the connection.
    Drop,
}

/// Which PROXY protocol headers are required in front of every connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyProtocol {
    Off,
    On(Versions),
}

/// Every server setting. Build with `Options::default()` and `set(name, value)`.
#[derive(Clone, Debug)]
pub struct Options {
    pub listen: SocketAddr,
    pub workers: usize,
    pub listen_backlog: u32,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub handshake_timeout: Duration,
    pub paths: Vec<String>,
    pub allowed_origins: Vec<String>,
    pub subprotocols: Vec<String>,
    pub health_path: Option<String>,
    pub max_message_size: usize,
    pub max_frame_size: usize,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    pub close_timeout: Duration,
    pub max_backpressure: usize,
    pub backpressure_policy: BackpressurePolicy,
    pub shutdown_timeout: Duration,
    pub drain_delay: Duration,
    pub drain_window: Duration,
    pub proxy_protocol: ProxyProtocol,
    pub proxy_header_timeout: Duration,
    pub proxy_max_header_bytes: usize,
    pub trusted_proxies: TrustedNetworks,
    pub max_queued_events: usize,
    pub forwarded_header: ForwardedHeader,
    pub compression: bool,
    pub compression_level: u32,
    pub compression_window_bits: u8,
    /// (server, client)
    pub compression_no_context_takeover: (bool, bool),
    pub compression_threshold: usize,
    /// Fan-out writes batched through io_uring where the kernel allows it.
    pub io_uring: bool,
}

/// A rejected option: names the option and says what it accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OptionError {
    pub option: String,
    pub message: String,
}

impl fmt::Display for OptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "option `{}`: {}", self.option, self.message)
    }
}

impl std::error::Error for OptionError {}

/// One row of the option table.
pub struct OptionSpec {
    pub name: &'static str,
    /// What values look like, for help texts ("size", "duration", ...).
    pub kind: &'static str,
    pub default: &'static str,
    pub doc: &'static str,
    set: fn(&mut Options, &str) -> Result<(), String>,
    get: fn(&Options) -> String,
}

impl OptionSpec {
    /// The environment variable that sets this option (`WSRT_` + upper-case name).
    pub fn env_var(&self) -> String {
        format!("WSRT_{}", self.name.to_ascii_uppercase())
    }
}

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * 1024 * 1024;

/// The option table, in the order help texts show it.
pub static OPTIONS: &[OptionSpec] = &[
    OptionSpec {
        name: "listen",
        kind: "address",
        default: "0.0.0.0:8080",
        doc: "Address and port to listen on (IPv4 `0.0.0.0:8080` or IPv6 `[::]:8080`; port 0 = any free port).",
        set: |o, v| {
            o.listen = v.trim().parse().map_err(|_| {
                format!("expected an address like 0.0.0.0:8080 or [::]:8080, got {v:?}")
            })?;
            Ok(())
        },
        get: |o| o.listen.to_string(),
    },
    OptionSpec {
        name: "workers",
        kind: "integer",
        default: "0",
        doc: "Worker threads, each with its own event loop (0 = one per available core; at most 255).",
        set: |o, v| {
            o.workers = parse_int(v, 0, 255)? as usize;
            Ok(())
        },
        get: |o| o.workers.to_string(),
    },
    OptionSpec {
        name: "listen_backlog",
        kind: "integer",
        default: "1024",
        doc: "Connections the kernel queues before they are accepted (capped by net.core.somaxconn); a burst beyond it waits for SYN retransmits.",
        set: |o, v| {
            o.listen_backlog = parse_int(v, 1, 65_535)? as u32;
            Ok(())
        },
        get: |o| o.listen_backlog.to_string(),
    },
    OptionSpec {
        name: "max_connections",
        kind: "integer",
        default: "100000",
        doc: "Open connections the server holds at most; more are answered 503 with Retry-After.",
        set: |o, v| {
            o.max_connections = parse_int(v, 1, 16_000_000)? as usize;
            Ok(())
        },
        get: |o| o.max_connections.to_string(),
    },
    OptionSpec {
        name: "max_header_bytes",
        kind: "size",
        default: "8KiB",
        doc: "Largest HTTP request head accepted for an upgrade; larger gets 431.",
        set: |o, v| {
            o.max_header_bytes = parse_size(v, 256, MIB)?;
            Ok(())
        },
        get: |o| fmt_size(o.max_header_bytes),
    },
    OptionSpec {
        name: "max_headers",
        kind: "integer",
        default: "64",
        doc: "Most header lines accepted in an upgrade request; more gets 431.",
        set: |o, v| {
            o.max_headers = parse_int(v, 4, 1024)? as usize;
            Ok(())
        },
        get: |o| o.max_headers.to_string(),
    },
    OptionSpec {
        name: "handshake_timeout",
        kind: "duration",
        default: "10s",
        doc: "Time a client has from connecting to a complete upgrade (including a deferred host decision).",
        set: |o, v| {
            o.handshake_timeout = parse_duration(v, Duration::from_millis(10), None)?;
            Ok(())
        },
        get: |o| fmt_duration(o.handshake_timeout),
    },
    OptionSpec {
        name: "paths",
        kind: "list",
        default: "*",
        doc: "Paths served as WebSockets: `*` = all, `/x` exact, `/x/*` prefix; others get 404.",
        set: |o, v| {
            let paths = parse_list(v);
            if paths.is_empty() {
                return Err("expected at least one path (`*` serves every path)".into());
            }
            if let Some(bad) = paths.iter().find(|p| *p != "*" && !p.starts_with('/')) {
                return Err(format!("paths start with `/` (or are `*`), got {bad:?}"));
            }
            o.paths = paths;
            Ok(())
        },
        get: |o| o.paths.join(","),
    },
    OptionSpec {
        name: "allowed_origins",
        kind: "list",
        default: "",
        doc: "Browser origins allowed to connect (exact, e.g. `https://app.example.com`); `*` = any; empty = the Origin must match Host.",
        set: |o, v| {
            o.allowed_origins = parse_list(v);
            Ok(())
        },
        get: |o| o.allowed_origins.join(","),
    },
    OptionSpec {
        name: "subprotocols",
        kind: "list",
        default: "",
        doc: "Subprotocols the server speaks, in preference order; the first one the client offers is chosen.",
        set: |o, v| {
            o.subprotocols = parse_list(v);
            Ok(())
        },
        get: |o| o.subprotocols.join(","),
    },
    OptionSpec {
        name: "health_path",
        kind: "path",
        default: "/healthz",
        doc: "Plain-HTTP health check path: 200 while serving, 503 while shutting down (empty = off).",
        set: |o, v| {
            let v = v.trim();
            if !v.is_empty() && !v.starts_with('/') {
                return Err(format!("expected a path starting with `/` (or empty for off), got {v:?}"));
            }
            o.health_path = (!v.is_empty()).then(|| v.to_string());
            Ok(())
        },
        get: |o| o.health_path.clone().unwrap_or_default(),
    },
    OptionSpec {
        name: "max_message_size",
        kind: "size",
        default: "16MiB",
        doc: "Largest message accepted (all fragments together); larger closes with 1009.",
        set: |o, v| {
            o.max_message_size = parse_size(v, 125, GIB)?;
            Ok(())
        },
        get: |o| fmt_size(o.max_message_size),
    },
    OptionSpec {
        name: "max_frame_size",
        kind: "size",
        default: "16MiB",
        doc: "Largest single frame accepted; larger closes with 1009.",
        set: |o, v| {
            o.max_frame_size = parse_size(v, 125, GIB)?;
            Ok(())
        },
        get: |o| fmt_size(o.max_frame_size),
    },
    OptionSpec {
        name: "ping_interval",
        kind: "duration",
        default: "30s",
        doc: "Server pings each connection this often (0 = never); keeps nginx and cloud load balancers, which cut idle connections at 60 s, from dropping it.",
        set: |o, v| {
            o.ping_interval = parse_duration(v, Duration::from_millis(10), Some(Duration::ZERO))?;
            Ok(())
        },
        get: |o| fmt_duration(o.ping_interval),
    },
    OptionSpec {
        name: "idle_timeout",
        kind: "duration",
        default: "120s",
        doc: "Close a connection when nothing (not even a pong) arrived from the client for this long (0 = never).",
        set: |o, v| {
            o.idle_timeout = parse_duration(v, Duration::from_millis(10), Some(Duration::ZERO))?;
            Ok(())
        },
        get: |o| fmt_duration(o.idle_timeout),
    },
    OptionSpec {
        name: "close_timeout",
        kind: "duration",
        default: "5s",
        doc: "How long to wait for the client's close frame after sending ours, or for a client that half-closed to take what is still queued for it, before dropping the TCP connection.",
        set: |o, v| {
            o.close_timeout = parse_duration(v, Duration::from_millis(1), None)?;
            Ok(())
        },
        get: |o| fmt_duration(o.close_timeout),
    },
    OptionSpec {
        name: "max_backpressure",
        kind: "size",
        default: "1MiB",
        doc: "Bytes a connection may have queued for a slow client; past it `backpressure_policy` applies (one message is always accepted into an empty queue).",
        set: |o, v| {
            o.max_backpressure = parse_size(v, 1, GIB)?;
            Ok(())
        },
        get: |o| fmt_size(o.max_backpressure),
    },
    OptionSpec {
        name: "backpressure_policy",
        kind: "close|drop",
        default: "close",
        doc: "Over `max_backpressure`: `close` the connection with 1008, or `drop` the message and keep it.",
        set: |o, v| {
            o.backpressure_policy = match v.trim().to_ascii_lowercase().as_str() {
                "close" => BackpressurePolicy::Close,
                "drop" => BackpressurePolicy::Drop,
                _ => return Err(format!("expected `close` or `drop`, got {v:?}")),
            };
            Ok(())
        },
        get: |o| match o.backpressure_policy {
            BackpressurePolicy::Close => "close".into(),
            BackpressurePolicy::Drop => "drop".into(),
        },
    },
    OptionSpec {
        name: "shutdown_timeout",
        kind: "duration",
        default: "10s",
        doc: "Graceful shutdown gives up waiting for close handshakes after this long (counted after `drain_delay`).",
        set: |o, v| {
            o.shutdown_timeout = parse_duration(v, Duration::ZERO, None)?;
            Ok(())
        },
        get: |o| fmt_duration(o.shutdown_timeout),
    },
    OptionSpec {
        name: "drain_delay",
        kind: "duration",
        default: "0s",
        doc: "On shutdown, fail health checks and refuse upgrades but keep serving for this long, so the load balancer stops sending new clients.",
        set: |o, v| {
            o.drain_delay = parse_duration(v, Duration::ZERO, None)?;
            Ok(())
        },
        get: |o| fmt_duration(o.drain_delay),
    },
    OptionSpec {
        name: "drain_window",
        kind: "duration",
        default: "0s",
        doc: "Spread the 1001 closes of a shutdown over this long, so clients don't all reconnect in the same instant.",
        set: |o, v| {
            o.drain_window = parse_duration(v, Duration::ZERO, None)?;
            Ok(())
        },
        get: |o| fmt_duration(o.drain_window),
    },
    OptionSpec {
        name: "forwarded_header",
        kind: "x-forwarded-for|x-real-ip|forwarded|auto",
        default: "x-forwarded-for",
        doc: "The one forwarding header your proxy sets (read only from trusted_proxies). Name it: a proxy passes the other headers through from the client, so `auto` (Forwarded, else X-Forwarded-For, else X-Real-IP) can be spoofed.",
        set: |o, v| {
            o.forwarded_header = match v.trim().to_ascii_lowercase().as_str() {
                "x-forwarded-for" => ForwardedHeader::XForwardedFor,
                "x-real-ip" => ForwardedHeader::XRealIp,
                "forwarded" => ForwardedHeader::Forwarded,
                "auto" => ForwardedHeader::Auto,
                _ => return Err(format!("expected x-forwarded-for, x-real-ip, forwarded or auto, got {v:?}")),
            };
            Ok(())
        },
        get: |o| match o.forwarded_header {
            ForwardedHeader::XForwardedFor => "x-forwarded-for".into(),
            ForwardedHeader::XRealIp => "x-real-ip".into(),
            ForwardedHeader::Forwarded => "forwarded".into(),
            ForwardedHeader::Auto => "auto".into(),
        },
    },
    OptionSpec {
        name: "compression",
        kind: "off|on",
        default: "off",
        doc: "permessage-deflate (RFC 7692): `on` accepts it when the client offers it.",
        set: |o, v| {
            o.compression = parse_on_off(v)?;
            Ok(())
        },
        get: |o| fmt_on_off(o.compression),
    },
    OptionSpec {
        name: "compression_level",
        kind: "integer",
        default: "1",
        doc: "Deflate level, 0 (store) to 9 (smallest); 1 is fastest.",
        set: |o, v| {
            o.compression_level = parse_int(v, 0, 9)? as u32;
            Ok(())
        },
        get: |o| o.compression_level.to_string(),
    },
    OptionSpec {
        name: "compression_window_bits",
        kind: "integer",
        default: "15",
        doc: "Largest compression window we use (server_max_window_bits), 9..=15; smaller saves memory per connection.",
        set: |o, v| {
            o.compression_window_bits = parse_int(v, 9, 15)? as u8;
            Ok(())
        },
        get: |o| o.compression_window_bits.to_string(),
    },
    OptionSpec {
        name: "compression_no_context_takeover",
        kind: "list",
        default: "",
        doc: "`server`, `client` or both: reset that side's context after each message (no per-connection deflate state; smaller memory, larger messages).",
        set: |o, v| {
            let (mut server, mut client) = (false, false);
            for item in parse_list(v) {
                match item.to_ascii_lowercase().as_str() {
                    "server" => server = true,
                    "client" => client = true,
                    _ => return Err(format!("expected `server`, `client` or `server,client`, got {v:?}")),
                }
            }
            o.compression_no_context_takeover = (server, client);
            Ok(())
        },
        get: |o| match o.compression_no_context_takeover {
            (true, true) => "server,client".into(),
            (true, false) => "server".into(),
            (false, true) => "client".into(),
            (false, false) => String::new(),
        },
    },
    OptionSpec {
        name: "compression_threshold",
        kind: "size",
        default: "64",
        doc: "Messages smaller than this are sent uncompressed.",
        set: |o, v| {
            o.compression_threshold = parse_size(v, 0, GIB)?;
            Ok(())
        },
        get: |o| fmt_size(o.compression_threshold),
    },
    OptionSpec {
        name: "io_uring",
        kind: "off|on",
        default: "on",
        doc: "Linux: a worker thread writes a publish or broadcast to its idle subscribers in batches through io_uring (a few syscalls instead of one per subscriber). Where the kernel or a seccomp profile refuses io_uring, and in inline poll mode (the loop runs on the host's threads), each gets its own `send`, as with `off`.",
        set: |o, v| {
            o.io_uring = parse_on_off(v)?;
            Ok(())
        },
        get: |o| fmt_on_off(o.io_uring),
    },
    OptionSpec {
        name: "max_queued_events",
        kind: "integer",
        default: "10000",
        doc: "Event-queue hosts (C ABI poll, bindings): events held before workers stop reading until the host polls.",
        set: |o, v| {
            o.max_queued_events = parse_int(v, 16, 10_000_000)? as usize;
            Ok(())
        },
        get: |o| o.max_queued_events.to_string(),
    },
    OptionSpec {
        name: "proxy_protocol",
        kind: "off|v1|v2|any",
        default: "off",
        doc: "Require a PROXY protocol header of these versions on every connection (`off` = refuse any PROXY header).",
        set: |o, v| {
            o.proxy_protocol = match v.trim().to_ascii_lowercase().as_str() {
                "off" => ProxyProtocol::Off,
                "v1" => ProxyProtocol::On(Versions::V1),
                "v2" => ProxyProtocol::On(Versions::V2),
                "any" => ProxyProtocol::On(Versions::Any),
                _ => return Err(format!("expected `off`, `v1`, `v2` or `any`, got {v:?}")),
            };
            Ok(())
        },
        get: |o| match o.proxy_protocol {
            ProxyProtocol::Off => "off".into(),
            ProxyProtocol::On(Versions::V1) => "v1".into(),
            ProxyProtocol::On(Versions::V2) => "v2".into(),
            ProxyProtocol::On(Versions::Any) => "any".into(),
        },
    },
    OptionSpec {
        name: "proxy_header_timeout",
        kind: "duration",
        default: "5s",
        doc: "Time allowed for the PROXY header to arrive complete.",
        set: |o, v| {
            o.proxy_header_timeout = parse_duration(v, Duration::from_millis(10), None)?;
            Ok(())
        },
        get: |o| fmt_duration(o.proxy_header_timeout),
    },
    OptionSpec {
        name: "proxy_max_header_bytes",
        kind: "size",
        default: "4KiB",
        doc: "Largest PROXY v2 header (with TLVs) accepted.",
        set: |o, v| {
            o.proxy_max_header_bytes = parse_size(v, 232, 65_551)?;
            Ok(())
        },
        get: |o| fmt_size(o.proxy_max_header_bytes),
    },
    OptionSpec {
        name: "trusted_proxies",
        kind: "list",
        default: "",
        doc: "Networks (CIDR) allowed to send PROXY headers and X-Forwarded-For / X-Real-IP / Forwarded; empty = nobody.",
        set: |o, v| {
            o.trusted_proxies = TrustedNetworks::parse_list(v)?;
            Ok(())
        },
        get: |o| {
            o.trusted_proxies
                .0
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(",")
        },
    },
];

impl Default for Options {
    fn default() -> Self {
        let mut o = Options {
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            workers: 0,
            listen_backlog: 0,
            max_connections: 0,
            max_header_bytes: 0,
            max_headers: 0,
            handshake_timeout: Duration::ZERO,
            paths: Vec::new(),
            allowed_origins: Vec::new(),
            subprotocols: Vec::new(),
            health_path: None,
            max_message_size: 0,
            max_frame_size: 0,
            ping_interval: Duration::ZERO,
            idle_timeout: Duration::ZERO,
            close_timeout: Duration::ZERO,
            max_backpressure: 0,
            backpressure_policy: BackpressurePolicy::Close,
            shutdown_timeout: Duration::ZERO,
            drain_delay: Duration::ZERO,
            drain_window: Duration::ZERO,
            proxy_protocol: ProxyProtocol::Off,
            proxy_header_timeout: Duration::ZERO,
            proxy_max_header_bytes: 0,
            trusted_proxies: TrustedNetworks::default(),
            max_queued_events: 0,
            forwarded_header: ForwardedHeader::Auto,
            compression: false,
            compression_level: 0,
            compression_window_bits: 15,
            compression_no_context_takeover: (false, false),
            compression_threshold: 0,
            io_uring: true,
        };
        for spec in OPTIONS {
            (spec.set)(&mut o, spec.default).expect("option table default must parse");
        }
        o
    }
}

impl Options {
    /// Set an option by name (`max_message_size` or `max-message-size`) from its text form.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), OptionError> {
        let spec = find_spec(name)?;
        (spec.set)(self, value).map_err(|message| OptionError {
            option: spec.name.to_string(),
            message,
        })
    }

    /// The current value of an option in the text form `set` accepts.
    pub fn get(&self, name: &str) -> Result<String, OptionError> {
        Ok((find_spec(name)?.get)(self))
    }

    /// Apply every `WSRT_<NAME>` variable present in the environment.
    pub fn apply_env(&mut self) -> Result<(), OptionError> {
        self.apply_env_from(|k| std::env::var(k).ok())
    }

    /// Like `apply_env`, with the variables looked up through `lookup` (tests, hosts).
    pub fn apply_env_from(
        &mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(), OptionError> {
        for spec in OPTIONS {
            if let Some(v) = lookup(&spec.env_var()) {
                self.set(spec.name, &v).map_err(|mut e| {
                    e.message = format!("{} (from {})", e.message, spec.env_var());
                    e
                })?;
            }
        }
        Ok(())
    }

    /// Checks that involve several options; `Server::start` calls it.
    pub fn validate(&self) -> Result<(), OptionError> {
        if self.max_frame_size > self.max_message_size {
            return Err(OptionError {
                option: "max_frame_size".into(),
                message: format!(
                    "must not exceed max_message_size ({}), got {}",
                    fmt_size(self.max_message_size),
                    fmt_size(self.max_frame_size)
                ),
            });
        }
        if !self.idle_timeout.is_zero()
            && !self.ping_interval.is_zero()
            && self.idle_timeout <= self.ping_interval
        {
            return Err(OptionError {
                option: "idle_timeout".into(),
                message: format!(
                    "must be longer than ping_interval ({}) so a client that answers pings is never idle, got {}",
                    fmt_duration(self.ping_interval),
                    fmt_duration(self.idle_timeout)
                ),
            });
        }
        if self.proxy_protocol != ProxyProtocol::Off && self.trusted_proxies.is_empty() {
            return Err(OptionError {
                option: "trusted_proxies".into(),
                message: "proxy_protocol is on, so trusted_proxies must name the load balancers allowed to send PROXY headers (e.g. 10.0.0.0/8 for the VPC, or 0.0.0.0/0,::/0 to trust any source)".into(),
            });
        }
        Ok(())
    }

    /// The permessage-deflate settings, when compression is on.
    pub fn compression_config(&self) -> Option<crate::deflate::Config> {
        self.compression.then_some(crate::deflate::Config {
            level: self.compression_level,
            window_bits: self.compression_window_bits,
            server_no_context_takeover: self.compression_no_context_takeover.0,
            client_no_context_takeover: self.compression_no_context_takeover.1,
            threshold: self.compression_threshold,
        })
    }

    /// Worker count with 0 resolved to the available cores.
    pub fn effective_workers(&self) -> usize {
        if self.workers == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get().min(255))
                .unwrap_or(1)
        } else {
            self.workers
        }
    }
}

fn find_spec(name: &str) -> Result<&'static OptionSpec, OptionError> {
    let normalized = name.trim().replace('-', "_").to_ascii_lowercase();
    OPTIONS
        .iter()
        .find(|s| s.name == normalized)
        .ok_or_else(|| OptionError {
            option: name.to_string(),
            message: format!(
                "unknown option; known options: {}",
                OPTIONS
                    .iter()
                    .map(|s| s.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })
}

fn parse_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

fn parse_on_off(v: &str) -> Result<bool, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "off" | "false" | "0" => Ok(false),
        "on" | "true" | "1" => Ok(true),
        _ => Err(format!("expected `off` or `on`, got {v:?}")),
    }
}

fn fmt_on_off(on: bool) -> String {
    if on { "on" } else { "off" }.into()
}

fn parse_int(v: &str, min: u64, max: u64) -> Result<u64, String> {
    let n: u64 = v
        .trim()
        .parse()
        .map_err(|_| format!("expected an integer in {min}..={max}, got {v:?}"))?;
    if n < min || n > max {
        return Err(format!("expected an integer in {min}..={max}, got {n}"));
    }
    Ok(n)
}

/// Sizes: `1048576`, `64KiB`, `16MiB`, `1GiB` (also `K`, `KB`, `M`, `MB`, `G`, `GB`, all binary).
pub fn parse_size(v: &str, min: u64, max: u64) -> Result<usize, String> {
    let err = || {
        format!(
            "expected a size like 64KiB or 16MiB in {}..={}, got {v:?}",
            fmt_size(min as usize),
            fmt_size(max as usize)
        )
    };
    let t = v.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| err())?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => KIB,
        "m" | "mb" | "mib" => MIB,
        "g" | "gb" | "gib" => GIB,
        _ => return Err(err()),
    };
    let bytes = n.checked_mul(mult).ok_or_else(err)?;
    if bytes < min || bytes > max {
        return Err(err());
    }
    Ok(bytes as usize)
}

/// Durations: `500ms`, `30s`, `2m`, `1h`; a bare number means seconds.
/// `zero_ok` = Some(ZERO) allows 0 (meaning "off") below `min`.
pub fn parse_duration(
    v: &str,
    min: Duration,
    zero_ok: Option<Duration>,
) -> Result<Duration, String> {
    let max = Duration::from_secs(86_400);
    let err = || {
        let zero = if zero_ok.is_some() { "0 (off) or " } else { "" };
        format!(
            "expected a duration like 500ms, 30s or 2m: {zero}{}..={}, got {v:?}",
            fmt_duration(min),
            fmt_duration(max)
        )
    };
    let t = v.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| err())?;
    let d = match unit.trim().to_ascii_lowercase().as_str() {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" | "min" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(err()),
    };
    if d.is_zero() && zero_ok.is_some() {
        return Ok(d);
    }
    if d < min || d > max {
        return Err(err());
    }
    Ok(d)
}

pub fn fmt_size(n: usize) -> String {
    let n = n as u64;
    if n >= GIB && n % GIB == 0 {
        format!("{}GiB", n / GIB)
    } else if n >= MIB && n % MIB == 0 {
        format!("{}MiB", n / MIB)
    } else if n >= KIB && n % KIB == 0 {
        format!("{}KiB", n / KIB)
    } else {
        n.to_string()
    }
}

pub fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 != 0 {
        format!("{ms}ms")
    } else {
        format!("{}s", ms / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_come_from_the_table_and_round_trip() {
        let o = Options::default();
        assert_eq!(o.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(o.max_message_size, 16 * 1024 * 1024);
        assert_eq!(o.ping_interval, Duration::from_secs(30));
        assert_eq!(o.health_path.as_deref(), Some("/healthz"));
        for spec in OPTIONS {
            assert_eq!(o.get(spec.name).unwrap(), spec.default, "{}", spec.name);
        }
        o.validate().unwrap();
    }

    #[test]
    fn names_accept_dashes_and_errors_name_the_option() {
        let mut o = Options::default();
        o.set("max-message-size", "1MiB").unwrap();
        assert_eq!(o.max_message_size, 1024 * 1024);
        let e = o.set("max_message_size", "lots").unwrap_err();
        assert_eq!(e.option, "max_message_size");
        assert!(e.to_string().contains("expected a size"), "{e}");
        let e = o.set("no_such_option", "1").unwrap_err();
        assert!(e.message.contains("unknown option"), "{e}");
        let e = o.set("backpressure_policy", "maybe").unwrap_err();
        assert!(e.message.contains("`close` or `drop`"), "{e}");
        let e = o.set("workers", "300").unwrap_err();
        assert!(e.message.contains("0..=255"), "{e}");
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("8KiB", 1, GIB).unwrap(), 8192);
        assert_eq!(parse_size("2 MB", 1, GIB).unwrap(), 2 * 1024 * 1024);
        assert!(parse_size("0", 1, GIB).is_err());
        assert!(parse_size("2GiB", 1, GIB).is_err());
        assert!(parse_size("99999999999999999999", 1, GIB).is_err());
        let d = |s| parse_duration(s, Duration::from_millis(10), Some(Duration::ZERO));
        assert_eq!(d("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(d("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(d("7").unwrap(), Duration::from_secs(7));
        assert_eq!(d("0").unwrap(), Duration::ZERO);
        assert!(d("5ms").is_err());
        assert!(d("3 fortnights").is_err());
    }

    #[test]
    fn cross_option_checks() {
        let mut o = Options::default();
        o.set("ping_interval", "30s").unwrap();
        o.set("idle_timeout", "20s").unwrap();
        assert_eq!(o.validate().unwrap_err().option, "idle_timeout");
        o.set("idle_timeout", "0").unwrap();
        o.validate().unwrap();
        o.set("max_frame_size", "32MiB").unwrap();
        assert_eq!(o.validate().unwrap_err().option, "max_frame_size");
        let mut o = Options::default();
        o.set("proxy_protocol", "v2").unwrap();
        assert_eq!(o.validate().unwrap_err().option, "trusted_proxies");
        o.set("trusted_proxies", "10.0.0.0/8").unwrap();
        o.validate().unwrap();
    }

    #[test]
    fn environment_variables() {
        let mut o = Options::default();
        o.apply_env_from(|k| (k == "WSRT_PATHS").then(|| "/ws, /push/*".to_string()))
            .unwrap();
        assert_eq!(o.paths, vec!["/ws", "/push/*"]);
        let e = o
            .apply_env_from(|k| (k == "WSRT_LISTEN").then(|| "nowhere".to_string()))
            .unwrap_err();
        assert!(e.message.contains("WSRT_LISTEN"), "{e}");
    }
}
