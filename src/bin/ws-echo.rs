//! ws-echo: a standalone WebSocket echo / broadcast server on wsrt.
//!
//! With no arguments it listens on 0.0.0.0:8080, serves WebSockets on every path and echoes
//! each message back. Every option of the option table is a flag (`--max-message-size 1MiB`
//! or `--max_message_size=1MiB`) and an environment variable (`WSRT_MAX_MESSAGE_SIZE`);
//! flags win over the environment.

use std::io::Write;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use wsrt::{CloseInfo, Conn, Handler, HttpRequest, HttpResponse, Message, Options, OPTIONS};

/// ws-echo's own settings (not server options), each also an environment variable.
struct EchoSpec {
    name: &'static str,
    default: &'static str,
    doc: &'static str,
}

const ECHO_OPTIONS: &[EchoSpec] = &[
    EchoSpec {
        name: "mode",
        default: "echo",
        doc: "`echo` sends each message back to its sender; `broadcast` relays it to every connection.",
    },
    EchoSpec {
        name: "prefix",
        default: "",
        doc: "Prepend `[<text>] ` to every reply; `hostname` uses the machine's hostname (one per replica behind a proxy).",
    },
    EchoSpec {
        name: "greeting",
        default: "",
        doc: "Text message sent to each client when it connects.",
    },
    EchoSpec {
        name: "log_level",
        default: "info",
        doc: "error, warn, info, debug or trace.",
    },
];

/// Defaults that differ from the library's, because ws-echo is a public demo server.
const ECHO_DEFAULTS: &[(&str, &str)] = &[("allowed_origins", "*"), ("paths", "*")];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Echo,
    Broadcast,
}

struct Echo {
    mode: Mode,
    prefix: String,
    greeting: String,
}

impl Echo {
    fn reply<'a>(&self, msg: Message<'a>, buf: &'a mut Vec<u8>) -> Message<'a> {
        if self.prefix.is_empty() {
            return msg;
        }
        buf.clear();
        buf.extend_from_slice(self.prefix.as_bytes());
        buf.extend_from_slice(msg.as_bytes());
        match msg {
            // Prefix and message are both UTF-8.
            Message::Text(_) => Message::Text(std::str::from_utf8(buf).unwrap_or_default()),
            Message::Binary(_) => Message::Binary(buf),
        }
    }
}

impl Handler for Echo {
    fn on_http(&self, req: &HttpRequest<'_>) -> Option<HttpResponse> {
        (req.method == "GET" && req.path == "/").then(|| HttpResponse {
            status: 200,
            content_type: "text/html; charset=utf-8".into(),
            headers: vec![("Cache-Control".into(), "no-store".into())],
            body: PAGE.as_bytes().to_vec(),
        })
    }

    fn on_open(&self, conn: &mut Conn<'_>) {
        log::info!(
            "open {} {} path={}{}{}",
            conn.id(),
            conn.remote_addr(),
            conn.path(),
            conn.subprotocol()
                .map(|p| format!(" subprotocol={p}"))
                .unwrap_or_default(),
            if conn.compressed() {
                " permessage-deflate"
            } else {
                ""
            }
        );
        if !self.greeting.is_empty() {
            conn.send_text(&self.greeting);
        }
    }

    fn on_message(&self, conn: &mut Conn<'_>, msg: Message<'_>) {
        let mut buf = Vec::new();
        let reply = self.reply(msg, &mut buf);
        match self.mode {
            Mode::Echo => {
                conn.send(reply);
            }
            Mode::Broadcast => {
                conn.server().broadcast(reply);
            }
        }
    }

    fn on_close(&self, conn: &mut Conn<'_>, info: &CloseInfo) {
        log::info!(
            "close {} {} code={}{}{}",
            conn.id(),
            conn.remote_addr(),
            info.code,
            if info.clean { "" } else { " (not clean)" },
            if info.reason.is_empty() {
                String::new()
            } else {
                format!(" reason={:?}", info.reason)
            }
        );
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("ws-echo: {msg}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print_help();
        return Ok(());
    }
    if args.iter().any(|a| a == "--version" || a == "-V") {
        println!("ws-echo {}", wsrt::VERSION);
        return Ok(());
    }

    let mut opts = Options::default();
    for (k, v) in ECHO_DEFAULTS {
        opts.set(k, v).map_err(|e| e.to_string())?;
    }
    opts.apply_env().map_err(|e| e.to_string())?;
    let mut extra: Vec<(String, String)> = ECHO_OPTIONS
        .iter()
        .map(|s| {
            let env = format!("WSRT_{}", s.name.to_ascii_uppercase());
            (
                s.name.to_string(),
                std::env::var(env).unwrap_or_else(|_| s.default.into()),
            )
        })
        .collect();

    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let Some(flag) = arg.strip_prefix("--") else {
            return Err(format!(
                "unexpected argument {arg:?} (options are --name value; see --help)"
            ));
        };
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n.replace('-', "_"), Some(v.to_string())),
            None => (flag.replace('-', "_"), None),
        };
        let value = match inline {
            Some(v) => v,
            None => it
                .next()
                .ok_or_else(|| format!("--{name} needs a value (see --help)"))?,
        };
        if let Some(e) = extra.iter_mut().find(|(n, _)| *n == name) {
            e.1 = value;
        } else {
            opts.set(&name, &value).map_err(|e| e.to_string())?;
        }
    }
    let get = |n: &str| {
        extra
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };

    let level = match get("log_level").to_ascii_lowercase().as_str() {
        "error" => log::LevelFilter::Error,
        "warn" => log::LevelFilter::Warn,
        "info" => log::LevelFilter::Info,
        "debug" => log::LevelFilter::Debug,
        "trace" => log::LevelFilter::Trace,
        other => {
            return Err(format!(
                "option `log_level`: expected error, warn, info, debug or trace, got {other:?}"
            ))
        }
    };
    log::set_boxed_logger(Box::new(StderrLogger)).map_err(|e| e.to_string())?;
    log::set_max_level(level);

    let mode = match get("mode").as_str() {
        "echo" => Mode::Echo,
        "broadcast" => Mode::Broadcast,
        other => {
            return Err(format!(
                "option `mode`: expected `echo` or `broadcast`, got {other:?}"
            ))
        }
    };
    let prefix = match get("prefix").as_str() {
        "" => String::new(),
        "hostname" => format!("[{}] ", hostname()),
        text => format!("[{text}] "),
    };
    let handler = Echo {
        mode,
        prefix,
        greeting: get("greeting"),
    };

    if let Ok(n) = wsrt::os::raise_fd_limit() {
        log::debug!("open file limit: {n}");
    }
    // Block SIGTERM/SIGINT before the workers start, so only this thread receives them.
    wsrt::os::block_termination_signals().map_err(|e| format!("cannot set up signals: {e}"))?;
    let server = wsrt::Server::start(opts, handler).map_err(|e| e.to_string())?;
    let handle = server.handle();
    log::info!(
        "ws-echo {} listening on {} ({} workers, mode {})",
        wsrt::VERSION,
        server.local_addr(),
        handle.options().effective_workers(),
        get("mode")
    );

    let sig = wsrt::os::wait_for_signal().map_err(|e| format!("waiting for signals: {e}"))?;
    // Drain first, then say so: whoever reads the line may rely on the drain having begun.
    handle.shutdown();
    log::info!("{sig}: shutting down gracefully (a second signal exits at once)");
    std::thread::spawn(|| {
        if let Ok(sig) = wsrt::os::wait_for_signal() {
            log::warn!("{sig} again: exiting now");
            std::process::exit(130);
        }
    });
    server.join();
    let stats = handle.stats();
    log::info!(
        "stopped: {} connections served, {} messages in, {} out",
        stats.upgraded,
        stats.messages_in,
        stats.messages_out
    );
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

fn print_help() {
    let mut out = String::new();
    out.push_str(&format!(
        "ws-echo {} — WebSocket echo/broadcast server (wsrt)\n\n\
         Usage: ws-echo [--option value]...\n\n\
         With no options it listens on 0.0.0.0:8080 and echoes every message on every path;\n\
         GET / in a browser shows a page to try it. Every option can also be set with the\n\
         environment variable shown; flags win. SIGTERM/SIGINT shut down gracefully.\n\nws-echo options:\n",
        wsrt::VERSION
    ));
    for s in ECHO_OPTIONS {
        out.push_str(&format!(
            "  --{:<24} {}\n  {:<26} default: {:?}, env WSRT_{}\n",
            s.name.replace('_', "-"),
            s.doc,
            "",
            s.default,
            s.name.to_ascii_uppercase()
        ));
    }
    out.push_str("\nServer options (wsrt option table):\n");
    for s in OPTIONS {
        let default = ECHO_DEFAULTS
            .iter()
            .find(|(k, _)| *k == s.name)
            .map_or(s.default, |(_, v)| v);
        out.push_str(&format!(
            "  --{:<24} <{}> {}\n  {:<26} default: {:?}, env {}\n",
            s.name.replace('_', "-"),
            s.kind,
            s.doc,
            "",
            default,
            s.env_var()
        ));
    }
    let _ = std::io::stdout().write_all(out.as_bytes());
}

/// One line per record on stderr: UTC time, level, message.
struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            let line = format!("{} {:<5} {}\n", utc_now(), r.level(), r.args());
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }
    fn flush(&self) {}
}

fn utc_now() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ws-echo</title>
<style>
 body { font: 15px/1.4 system-ui, sans-serif; max-width: 42rem; margin: 2rem auto; padding: 0 1rem; }
 #log { border: 1px solid #ccc; border-radius: 4px; padding: .5rem; height: 18rem; overflow-y: auto; font-family: ui-monospace, monospace; white-space: pre-wrap; }
 .in { color: #075; } .out { color: #333; } .sys { color: #888; }
 form { display: flex; gap: .5rem; margin-top: .5rem; } input { flex: 1; padding: .3rem; }
</style>
</head>
<body>
<h1>ws-echo</h1>
<p>Status: <b id="status">connecting…</b> — <span id="url"></span></p>
<div id="log"></div>
<form id="form"><input id="msg" autocomplete="off" placeholder="Type a message" autofocus><button>Send</button></form>
<script>
const url = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + location.pathname;
document.getElementById('url').textContent = url;
const log = document.getElementById('log'), status = document.getElementById('status');
// ?send=TEXT sends TEXT on open and answers its echo with "echoed: TEXT" (used by the tests).
const auto = new URLSearchParams(location.search).get('send');
function line(cls, text) {
  const d = document.createElement('div'); d.className = cls; d.textContent = text;
  log.appendChild(d); log.scrollTop = log.scrollHeight;
}
let ws;
function connect() {
  ws = new WebSocket(url);
  ws.onopen = () => { status.textContent = 'open'; line('sys', 'connected'); if (auto) { ws.send(auto); line('out', '> ' + auto); } };
  ws.onmessage = (e) => { line('in', '< ' + e.data); if (auto && e.data === auto) ws.send('echoed: ' + auto); };
  ws.onclose = (e) => { status.textContent = 'closed (' + e.code + ')'; line('sys', 'closed with code ' + e.code + (e.reason ? ': ' + e.reason : '')); };
  ws.onerror = () => line('sys', 'error');
}
document.getElementById('form').onsubmit = (e) => {
  e.preventDefault();
  const input = document.getElementById('msg');
  if (ws.readyState === WebSocket.OPEN && input.value) { ws.send(input.value); line('out', '> ' + input.value); input.value = ''; }
};
connect();
</script>
</body>
</html>
"#;
