//! RFC 6455 server handshake, sans I/O: accumulate the request, decide what it is, write the
//! answer. Every refusal carries a reason for the client, a log line for the operator and a
//! stats kind, because "WebSocket handshake failed: 400" with no why is what users suffer.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use std::fmt;

/// Appended to the client key before hashing (RFC 6455 section 1.3).
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The fix for the most common deployment failure, shared by body and log.
const PROXY_FIX: &str = "nginx: `proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade; \
proxy_set_header Connection $connection_upgrade;` with `map $http_upgrade $connection_upgrade \
{ default upgrade; '' close; }`; AWS: a classic ELB HTTP/HTTPS listener does not pass upgrades, \
use a TCP/SSL listener, an NLB or an ALB";

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_headers: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// Without the query.
    pub path: String,
    /// Text after '?', if any.
    pub query: Option<String>,
    /// HTTP/1.x
    pub version_minor: u8,
    /// In order, names as sent; values via `from_utf8_lossy`.
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// First header with this name (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All values of a header joined the HTTP way (comma lists across repeated headers), split
    /// into trimmed tokens.
    pub fn header_tokens(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .map(|t| t.trim_matches(|c| c == ' ' || c == '\t'))
            .filter(|t| !t.is_empty())
            .collect()
    }

    /// How many times a header was sent.
    pub fn header_count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count()
    }

    /// True if the comma-list header `name` contains `token` (ASCII case-insensitive).
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.header_tokens(name)
            .iter()
            .any(|t| t.eq_ignore_ascii_case(token))
    }

    /// All values of a header joined with ", " (for log messages), or None if absent.
    fn joined(&self, name: &str) -> Option<String> {
        let vals: Vec<&str> = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect();
        if vals.is_empty() {
            None
        } else {
            Some(vals.join(", "))
        }
    }
}

/// Why a request was refused; one variant per stats counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectKind {
    BadRequest,
    HeadersTooLarge,
    MissingUpgrade,
    BadKey,
    UnsupportedVersion,
    OriginNotAllowed,
    PathNotFound,
    NotUpgrade,
    TooManyConnections,
    ShuttingDown,
    RejectedByHost,
    HandshakeTimeout,
    Proxy,
}

impl RejectKind {
    pub const ALL: [RejectKind; 13] = [
        RejectKind::BadRequest,
        RejectKind::HeadersTooLarge,
        RejectKind::MissingUpgrade,
        RejectKind::BadKey,
        RejectKind::UnsupportedVersion,
        RejectKind::OriginNotAllowed,
        RejectKind::PathNotFound,
        RejectKind::NotUpgrade,
        RejectKind::TooManyConnections,
        RejectKind::ShuttingDown,
        RejectKind::RejectedByHost,
        RejectKind::HandshakeTimeout,
        RejectKind::Proxy,
    ];

    /// Stable snake_case name, used as the stats key.
    pub fn name(self) -> &'static str {
        match self {
            RejectKind::BadRequest => "bad_request",
            RejectKind::HeadersTooLarge => "headers_too_large",
            RejectKind::MissingUpgrade => "missing_upgrade",
            RejectKind::BadKey => "bad_key",
            RejectKind::UnsupportedVersion => "unsupported_version",
            RejectKind::OriginNotAllowed => "origin_not_allowed",
            RejectKind::PathNotFound => "path_not_found",
            RejectKind::NotUpgrade => "not_upgrade",
            RejectKind::TooManyConnections => "too_many_connections",
            RejectKind::ShuttingDown => "shutting_down",
            RejectKind::RejectedByHost => "rejected_by_host",
            RejectKind::HandshakeTimeout => "handshake_timeout",
            RejectKind::Proxy => "proxy_protocol",
        }
    }

    /// Position in `ALL`, so stats can be a plain array.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for RejectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub kind: RejectKind,
    pub status: u16,
    /// Short plain-text reason sent to the client, ends with '\n'.
    pub body: String,
    /// One line for the server log: what exactly was wrong and the likely cause/fix.
    pub log: String,
    /// E.g. ("Sec-WebSocket-Version","13") for 426.
    pub headers: Vec<(String, String)>,
}

impl Rejection {
    pub fn new(
        kind: RejectKind,
        status: u16,
        body: impl Into<String>,
        log: impl Into<String>,
    ) -> Self {
        let mut body = body.into();
        // The client reads the body with tools like curl; a missing newline glues it to the prompt.
        if !body.ends_with('\n') {
            body.push('\n');
        }
        Rejection {
            kind,
            status,
            body,
            log: log.into(),
            headers: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.status, self.kind, self.log)
    }
}

impl std::error::Error for Rejection {}

/// Accumulates a request that may arrive in arbitrary pieces (one byte at a time must work).
#[derive(Debug)]
pub struct RequestReader {
    limits: Limits,
    buf: Vec<u8>,
    /// Last two bytes seen, so the end-of-headers search never rescans old bytes.
    prev: [u8; 2],
    /// A non-CR/LF byte was seen; httparse skips leading blank lines, so must we.
    started: bool,
    /// Complete lines so far (request line + headers), for an early max_headers check.
    lines: usize,
}

impl RequestReader {
    pub fn new(limits: Limits) -> Self {
        RequestReader {
            limits,
            buf: Vec::new(),
            prev: [0; 2],
            started: false,
            lines: 0,
        }
    }

    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Feed the next bytes. `Ok(None)`: need more. `Ok(Some((req, rest)))`: complete; `rest` is
    /// the suffix of `data` after the blank line (frame bytes the client sent right after its
    /// headers, which the caller must keep). After `Ok(Some)` the reader is empty again; after
    /// `Err` the connection should be answered and closed.
    pub fn feed<'a>(&mut self, data: &'a [u8]) -> Result<Option<(Request, &'a [u8])>, Rejection> {
        let old_len = self.buf.len();
        let lines_before = self.lines;
        let mut end = None;
        for (i, &b) in data.iter().enumerate() {
            // Checked per byte so an endless header never grows the buffer past the limit.
            if old_len + i + 1 > self.limits.max_header_bytes {
                return Err(self.refuse(&data[..i], too_large(&self.limits)));
            }
            match b {
                b'\n' if self.started => {
                    // httparse accepts both CRLF and bare LF line ends.
                    let [p2, p1] = self.prev;
                    if p1 == b'\n' || (p1 == b'\r' && p2 == b'\n') {
                        end = Some(i + 1);
                        break;
                    }
                    self.lines += 1;
                    if self.lines > self.limits.max_headers.saturating_add(1) {
                        return Err(self.refuse(&data[..=i], too_many(&self.limits)));
                    }
                }
                b'\n' | b'\r' => {}
                _ => self.started = true,
            }
            self.prev = [self.prev[1], b];
        }

        let Some(end) = end else {
            self.buf.extend_from_slice(data);
            // Catch garbage (TLS to a plain port, PROXY header when not enabled) right away
            // instead of waiting for a blank line that never comes. Only on the first bytes and
            // at the end of the request line, so byte-at-a-time stays O(n).
            if (old_len == 0 && !data.is_empty()) || (lines_before == 0 && self.lines > 0) {
                precheck(&self.buf, &self.limits)?;
            }
            return Ok(None);
        };

        let req = if old_len == 0 {
            // Fast path: the whole request arrived in one read, parse in place.
            parse_complete(&data[..end], &self.limits)?
        } else {
            self.buf.extend_from_slice(&data[..end]);
            parse_complete(&self.buf, &self.limits)?
        };
        self.reset();
        Ok(Some((req, &data[end..])))
    }

    /// The refusal for a request over a limit once `seen` (the rest of it) arrived: a
    /// malformed request (a TLS hello, PROXY header or other non-HTTP bytes) is named as such
    /// rather than as too large, so the answer does not depend on how the bytes were split
    /// into reads (the early checks for garbage only run on some reads).
    fn refuse(&self, seen: &[u8], over_limit: Rejection) -> Rejection {
        let mut all = Vec::with_capacity(self.buf.len() + seen.len());
        all.extend_from_slice(&self.buf);
        all.extend_from_slice(seen);
        precheck(&all, &self.limits).err().unwrap_or(over_limit)
    }

    fn reset(&mut self) {
        self.buf.clear();
        self.prev = [0; 2];
        self.started = false;
        self.lines = 0;
    }
}

/// Header slots for httparse: never more than could fit in max_header_bytes ("a:\n" is 3 bytes),
/// so a huge max_headers setting doesn't mean a huge allocation per request.
fn header_slots(limits: &Limits) -> usize {
    limits.max_headers.min(limits.max_header_bytes / 3 + 1)
}

fn parse_complete(block: &[u8], limits: &Limits) -> Result<Request, Rejection> {
    let mut slots = vec![httparse::EMPTY_HEADER; header_slots(limits)];
    let mut req = httparse::Request::new(&mut slots);
    match req.parse(block) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Err(malformed(block, "header block ended early"));
        }
        Err(httparse::Error::TooManyHeaders) => return Err(too_many(limits)),
        Err(e) => return Err(malformed(block, &e.to_string())),
    }
    let target = req.path.unwrap_or("");
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target.to_string(), None),
    };
    Ok(Request {
        method: req.method.unwrap_or("").to_string(),
        path,
        query,
        version_minor: req.version.unwrap_or(0),
        headers: req
            .headers
            .iter()
            .map(|h| {
                let v = String::from_utf8_lossy(h.value);
                (h.name.to_string(), v.trim_matches([' ', '\t']).to_string())
            })
            .collect(),
    })
}

/// Run httparse over an incomplete request only to surface an error early.
fn precheck(partial: &[u8], limits: &Limits) -> Result<(), Rejection> {
    let mut slots = vec![httparse::EMPTY_HEADER; header_slots(limits)];
    match httparse::Request::new(&mut slots).parse(partial) {
        Ok(_) => Ok(()),
        Err(httparse::Error::TooManyHeaders) => Err(too_many(limits)),
        Err(e) => Err(malformed(partial, &e.to_string())),
    }
}

fn too_large(limits: &Limits) -> Rejection {
    Rejection::new(
        RejectKind::HeadersTooLarge,
        431,
        format!(
            "431 Request Header Fields Too Large: header block exceeds {} bytes\n",
            limits.max_header_bytes
        ),
        format!(
            "request header block exceeds max_header_bytes = {} (huge cookies or a client \
             that is not speaking HTTP); raise max_header_bytes if legitimate",
            limits.max_header_bytes
        ),
    )
}

fn too_many(limits: &Limits) -> Rejection {
    Rejection::new(
        RejectKind::HeadersTooLarge,
        431,
        format!(
            "431 Request Header Fields Too Large: more than {} headers\n",
            limits.max_headers
        ),
        format!(
            "request has more than max_headers = {} header lines; raise max_headers if legitimate",
            limits.max_headers
        ),
    )
}

fn malformed(bytes: &[u8], err: &str) -> Rejection {
    let hint = if bytes.first() == Some(&0x16) {
        " (looks like a TLS ClientHello: the client used wss:// or https:// against a plain \
         listener; enable TLS or terminate it in front)"
    } else if bytes.starts_with(b"PROXY ") || bytes.starts_with(b"\r\n\r\n\0\r\nQUIT\n") {
        " (looks like a PROXY protocol header: the load balancer sends PROXY protocol but it \
         is not enabled on this listener)"
    } else if bytes.starts_with(b"PRI * HTTP/2") {
        " (HTTP/2 prior knowledge; this listener speaks HTTP/1.1 only)"
    } else {
        ""
    };
    let head = &bytes[..bytes.len().min(48)];
    Rejection::new(
        RejectKind::BadRequest,
        400,
        "400 Bad Request: malformed HTTP request\n",
        format!(
            "malformed HTTP request: {err} (httparse){hint}; first bytes: \"{}\"",
            head.escape_ascii()
        ),
    )
}

#[derive(Clone, Copy, Debug)]
pub struct Policy<'a> {
    /// Served paths: "*" = all; "/x" exact; "/x/*" prefix (matches "/x" and "/x/anything").
    pub paths: &'a [String],
    /// Empty = browser Origin must match Host; "*" = any; else exact (ASCII case-insensitive)
    /// matches of the Origin value.
    pub allowed_origins: &'a [String],
    /// Server preference order.
    pub subprotocols: &'a [String],
    pub health_path: Option<&'a str>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upgrade {
    pub key: String,
    /// Sec-WebSocket-Accept value.
    pub accept: String,
    /// Client's Sec-WebSocket-Protocol tokens, in order.
    pub offered_protocols: Vec<String>,
    /// First of policy.subprotocols (in server order) that the client offered.
    pub subprotocol: Option<String>,
    pub origin: Option<String>,
    /// Raw Sec-WebSocket-Extensions (repeated headers joined with ", ").
    pub extensions: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    Upgrade(Upgrade),
    Health,
    Http,
}

/// True if `path` is served by one of `paths` ("*", "/x" exact, "/x/*" prefix).
pub fn path_served(path: &str, paths: &[String]) -> bool {
    paths.iter().any(|p| {
        if p == "*" {
            true
        } else if let Some(prefix) = p.strip_suffix("/*") {
            // "/x/*" must not match "/xy": require the separator.
            path == prefix
                || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
        } else {
            path == p
        }
    })
}

/// True if the client meant to open a WebSocket (even if a proxy mangled part of it).
pub fn wants_upgrade(req: &Request) -> bool {
    req.has_token("Upgrade", "websocket")
        || req.header("Sec-WebSocket-Key").is_some()
        || req.header("Sec-WebSocket-Version").is_some()
}

/// Decide what a complete request is.
pub fn route(req: &Request, policy: &Policy) -> Result<Route, Rejection> {
    if let Some(h) = policy.health_path {
        if req.path == h && (req.method == "GET" || req.method == "HEAD") {
            return Ok(Route::Health);
        }
    }
    if !wants_upgrade(req) {
        return Ok(Route::Http);
    }
    // Logs name method and path but never the query: it often carries auth tokens.
    let what = format!("{} {:?}", req.method, req.path);

    if req.method != "GET" {
        return Err(Rejection::new(
            RejectKind::BadRequest,
            405,
            "405 Method Not Allowed: a WebSocket handshake must use GET\n",
            format!(
                "{what}: WebSocket handshake with method {:?}; RFC 6455 requires GET",
                req.method
            ),
        )
        .with_header("Allow", "GET"));
    }
    if req.version_minor < 1 {
        return Err(Rejection::new(
            RejectKind::BadRequest,
            400,
            "400 Bad Request: WebSocket requires HTTP/1.1\n",
            format!(
                "{what}: WebSocket handshake over HTTP/1.0; RFC 6455 requires HTTP/1.1. If a \
                 proxy is in front (nginx speaks HTTP/1.0 upstream by default, dropping \
                 Upgrade), fix it: {PROXY_FIX}"
            ),
        ));
    }
    if req.header("Host").is_none() {
        return Err(Rejection::new(
            RejectKind::BadRequest,
            400,
            "400 Bad Request: missing Host header\n",
            format!("{what}: WebSocket handshake without a Host header (required by HTTP/1.1)"),
        ));
    }

    let has_upgrade = req.has_token("Upgrade", "websocket");
    let has_connection = req.has_token("Connection", "upgrade");
    if !has_upgrade || !has_connection {
        return Err(missing_upgrade(req, &what, has_upgrade, has_connection));
    }

    match req.header("Sec-WebSocket-Version") {
        Some("13") => {}
        v => {
            let (body, why) = match v {
                None => (
                    "missing Sec-WebSocket-Version header".to_string(),
                    "Sec-WebSocket-Version header missing".to_string(),
                ),
                Some(v) => (
                    "unsupported Sec-WebSocket-Version".to_string(),
                    format!("Sec-WebSocket-Version is {v:?} (an old draft client?)"),
                ),
            };
            return Err(Rejection::new(
                RejectKind::UnsupportedVersion,
                426,
                format!("426 Upgrade Required: {body}; only version 13 is supported\n"),
                format!("{what}: {why}; only 13 (RFC 6455) is supported, answered 426 with Sec-WebSocket-Version: 13"),
            )
            .with_header("Sec-WebSocket-Version", "13"));
        }
    }

    let key = check_key(req, &what)?;

    if !path_served(&req.path, policy.paths) {
        return Err(Rejection::new(
            RejectKind::PathNotFound,
            404,
            "404 Not Found: no WebSocket endpoint at this path\n",
            format!(
                "{what}: no WebSocket endpoint at this path; served paths (option paths): {:?}",
                policy.paths
            ),
        ));
    }

    let origin = req.header("Origin");
    if let Some(o) = origin {
        check_origin(req, o, policy.allowed_origins, &what)?;
    }

    let offered: Vec<String> = req
        .header_tokens("Sec-WebSocket-Protocol")
        .into_iter()
        .map(str::to_string)
        .collect();
    // Subprotocol names are case-sensitive (RFC 6455 section 4.1), so compare exactly.
    let subprotocol = policy
        .subprotocols
        .iter()
        .find(|s| offered.iter().any(|o| o == *s))
        .cloned();

    Ok(Route::Upgrade(Upgrade {
        accept: accept_key(&key),
        key,
        offered_protocols: offered,
        subprotocol,
        origin: origin.map(str::to_string),
        extensions: req.joined("Sec-WebSocket-Extensions"),
    }))
}

fn missing_upgrade(
    req: &Request,
    what: &str,
    has_upgrade: bool,
    has_connection: bool,
) -> Rejection {
    let describe = |name: &str, token: &str| match req.joined(name) {
        None => format!("the {name} header is missing"),
        Some(v) => format!("{name} is {v:?}, without the {token:?} token"),
    };
    let mut problems = Vec::new();
    if !has_upgrade {
        problems.push(describe("Upgrade", "websocket"));
    }
    if !has_connection {
        problems.push(describe("Connection", "upgrade"));
    }
    let problems = problems.join(" and ");
    let short = match (has_upgrade, has_connection) {
        (false, false) => "missing Upgrade: websocket and Connection: Upgrade headers",
        (false, true) => "missing Upgrade: websocket header",
        _ => "missing Connection: Upgrade header",
    };
    // Forwarding headers show a proxy really was in the path, which makes the diagnosis firm.
    let via: Vec<&str> = [
        "Via",
        "Forwarded",
        "X-Forwarded-For",
        "X-Real-IP",
        "X-Amzn-Trace-Id",
    ]
    .into_iter()
    .filter(|h| req.header(h).is_some())
    .collect();
    let seen = if via.is_empty() {
        String::new()
    } else {
        format!(
            " (the request carries {}, so it did pass a proxy)",
            via.join(", ")
        )
    };
    Rejection::new(
        RejectKind::MissingUpgrade,
        400,
        format!(
            "400 Bad Request: {short} (a proxy in front of the server likely dropped the \
             hop-by-hop Upgrade/Connection headers; {PROXY_FIX})\n"
        ),
        format!(
            "{what}: WebSocket handshake but {problems}; a proxy or load balancer in front of \
             the server likely dropped the hop-by-hop Upgrade/Connection headers{seen}. Fix: \
             {PROXY_FIX}"
        ),
    )
}

fn check_key(req: &Request, what: &str) -> Result<String, Rejection> {
    let bad = |why: String| {
        Rejection::new(
            RejectKind::BadKey,
            400,
            "400 Bad Request: missing or invalid Sec-WebSocket-Key (must be base64 of 16 bytes)\n",
            format!("{what}: {why}; RFC 6455 requires a base64-encoded random 16-byte nonce"),
        )
    };
    let Some(key) = req.header("Sec-WebSocket-Key") else {
        return Err(bad("Sec-WebSocket-Key header missing".to_string()));
    };
    let n = req.header_count("Sec-WebSocket-Key");
    if n > 1 {
        return Err(bad(format!("Sec-WebSocket-Key sent {n} times")));
    }
    match BASE64.decode(key) {
        Ok(raw) if raw.len() == 16 => Ok(key.to_string()),
        Ok(raw) => Err(bad(format!(
            "Sec-WebSocket-Key {key:?} decodes to {} bytes, not 16",
            raw.len()
        ))),
        Err(e) => Err(bad(format!(
            "Sec-WebSocket-Key {key:?} is not valid base64 ({e})"
        ))),
    }
}

/// host[:port] of an Origin like "https://example.com:8443" (None for "null" or garbage).
fn origin_authority(origin: &str) -> Option<&str> {
    let (_, rest) = origin.split_once("://")?;
    let auth = rest.split(['/', '?', '#']).next().unwrap_or("");
    (!auth.is_empty()).then_some(auth)
}

fn check_origin(
    req: &Request,
    origin: &str,
    allowed: &[String],
    what: &str,
) -> Result<(), Rejection> {
    if allowed.iter().any(|a| a == "*") {
        return Ok(());
    }
    let deny = |log: String| {
        Rejection::new(
            RejectKind::OriginNotAllowed,
            403,
            "403 Forbidden: Origin not allowed\n",
            format!("{what}: {log}"),
        )
    };
    if allowed.is_empty() {
        // Same-origin only, like gorilla/websocket: blocks cross-site WebSocket hijacking.
        let host = req.header("Host").unwrap_or("");
        return match origin_authority(origin) {
            Some(a) if a.eq_ignore_ascii_case(host) => Ok(()),
            _ => Err(deny(format!(
                "Origin {origin:?} does not match Host {host:?} (allowed_origins is empty, so \
                 only same-origin browser pages may connect); add the page's origin to \
                 allowed_origins, or \"*\" to allow any"
            ))),
        };
    }
    if allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)) {
        Ok(())
    } else {
        Err(deny(format!(
            "Origin {origin:?} is not in allowed_origins {allowed:?} (entries must match \
             scheme://host[:port] exactly)"
        )))
    }
}

/// base64(sha1(key + GUID)), the Sec-WebSocket-Accept value.
pub fn accept_key(key: &str) -> String {
    let mut h = sha1_smol::Sha1::new();
    h.update(key.as_bytes());
    h.update(WS_GUID.as_bytes());
    BASE64.encode(h.digest().bytes())
}

/// Headers failing `valid_header` are skipped so they can never split the response; validate
/// host-supplied headers up front with `valid_header` to report them.
fn write_headers(out: &mut Vec<u8>, headers: &[(String, String)]) {
    for (n, v) in headers {
        if valid_header(n, v) {
            out.extend_from_slice(n.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// "HTTP/1.1 101 Switching Protocols" + Upgrade/Connection/Sec-WebSocket-Accept
/// (+ Sec-WebSocket-Protocol if Some) + extra headers.
pub fn write_accept(
    out: &mut Vec<u8>,
    accept: &str,
    subprotocol: Option<&str>,
    extra_headers: &[(String, String)],
) {
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
    );
    out.extend_from_slice(accept.as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(p) = subprotocol {
        write_headers(
            out,
            &[("Sec-WebSocket-Protocol".to_string(), p.to_string())],
        );
    }
    write_headers(out, extra_headers);
    out.extend_from_slice(b"\r\n");
}

/// A plain HTTP response with Content-Length, Content-Type and `Connection: close`.
pub fn write_response(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    extra_headers: &[(String, String)],
    body: &[u8],
) {
    let reason = reason_phrase(status);
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    out.extend_from_slice(head.as_bytes());
    write_headers(out, extra_headers);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// text/plain; charset=utf-8 body, plus the rejection's own headers.
pub fn write_rejection(out: &mut Vec<u8>, r: &Rejection) {
    write_response(
        out,
        r.status,
        "text/plain; charset=utf-8",
        &r.headers,
        r.body.as_bytes(),
    );
}

pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        414 => "URI Too Long",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        // An empty reason phrase is valid HTTP/1.1.
        _ => "",
    }
}

/// True if `value` contains no CR/LF/NUL (so a host-supplied header can't split the response)
/// and `name` is a non-empty HTTP token.
pub fn valid_header(name: &str, value: &str) -> bool {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    !name.is_empty()
        && name.bytes().all(tchar)
        && !value.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_header_bytes: 8192,
        max_headers: 64,
    };
    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    fn valid(extra: &str) -> String {
        format!(
            "GET /chat?token=x HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
    }

    fn parse(raw: &str) -> Request {
        let (req, rest) = RequestReader::new(LIMITS)
            .feed(raw.as_bytes())
            .unwrap()
            .unwrap();
        assert!(rest.is_empty());
        req
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    struct P {
        paths: Vec<String>,
        origins: Vec<String>,
        protos: Vec<String>,
        health: Option<&'static str>,
    }

    impl P {
        fn new() -> Self {
            P {
                paths: s(&["/chat"]),
                origins: vec![],
                protos: vec![],
                health: Some("/healthz"),
            }
        }
        fn route(&self, raw: &str) -> Result<Route, Rejection> {
            route(
                &parse(raw),
                &Policy {
                    paths: &self.paths,
                    allowed_origins: &self.origins,
                    subprotocols: &self.protos,
                    health_path: self.health,
                },
            )
        }
    }

    fn upgrade(r: Result<Route, Rejection>) -> Upgrade {
        match r {
            Ok(Route::Upgrade(u)) => u,
            other => panic!("expected upgrade, got {other:?}"),
        }
    }

    fn reject(r: Result<Route, Rejection>, kind: RejectKind, status: u16) -> Rejection {
        let r = r.expect_err("expected rejection");
        assert_eq!((r.kind, r.status), (kind, status), "{r:?}");
        assert!(r.body.ends_with('\n') && !r.body[..r.body.len() - 1].contains('\n'));
        assert!(!r.log.contains('\n') && !r.log.contains('\r'));
        r
    }

    #[test]
    fn rfc_sample_key() {
        assert_eq!(accept_key(KEY), ACCEPT);
    }

    #[test]
    fn valid_upgrade() {
        let req = parse(&valid(""));
        assert_eq!(req.method, "GET");
        assert_eq!(req.path, "/chat");
        assert_eq!(req.query.as_deref(), Some("token=x"));
        assert_eq!(req.version_minor, 1);
        assert_eq!(req.header("host"), Some("example.com"));
        let u = upgrade(P::new().route(&valid("")));
        assert_eq!(u.key, KEY);
        assert_eq!(u.accept, ACCEPT);
        assert_eq!(u.subprotocol, None);
        assert!(u.offered_protocols.is_empty());
        assert_eq!(u.origin, None);
        assert_eq!(u.extensions, None);
    }

    #[test]
    fn byte_at_a_time() {
        let raw = valid("Sec-WebSocket-Extensions: permessage-deflate\r\n");
        let mut r = RequestReader::new(LIMITS);
        let bytes = raw.as_bytes();
        for (i, b) in bytes.iter().enumerate() {
            let out = r.feed(std::slice::from_ref(b)).unwrap();
            if i + 1 < bytes.len() {
                assert!(out.is_none());
                assert_eq!(r.buffered(), i + 1);
            } else {
                let (req, rest) = out.unwrap();
                assert!(rest.is_empty());
                assert_eq!(req, parse(&raw));
                assert_eq!(r.buffered(), 0);
            }
        }
    }

    #[test]
    #[cfg_attr(miri, ignore = "minutes under Miri; runs natively")]
    fn frame_bytes_after_headers_are_returned() {
        let raw = valid("");
        let frame = [0x81u8, 0x82, 1, 2, 3, 4, 5, 6];
        let mut all = raw.as_bytes().to_vec();
        all.extend_from_slice(&frame);
        // Whole in one read (fast path).
        let mut r = RequestReader::new(LIMITS);
        let (req, rest) = r.feed(&all).unwrap().unwrap();
        assert_eq!(rest, frame);
        assert_eq!(req.path, "/chat");
        assert_eq!(r.buffered(), 0);
        // Split at every point.
        for split in 1..all.len() {
            let mut r = RequestReader::new(LIMITS);
            let (a, b) = all.split_at(split);
            let got = match r.feed(a).unwrap() {
                Some((req, rest)) => {
                    assert_eq!(rest, &a[raw.len()..]);
                    (req, [rest, b].concat())
                }
                None => {
                    let (req, rest) = r.feed(b).unwrap().unwrap();
                    (req, rest.to_vec())
                }
            };
            assert_eq!(got.0, req, "split {split}");
            assert_eq!(got.1, frame, "split {split}");
        }
    }

    #[test]
    fn bare_lf_and_leading_blank_lines() {
        let raw = format!(
            "\r\nGET /chat HTTP/1.1\nHost: h\nUpgrade: websocket\nConnection: upgrade\n\
             Sec-WebSocket-Key: {KEY}\nSec-WebSocket-Version: 13\n\nXY"
        );
        for chunk in [raw.len(), 1] {
            let mut r = RequestReader::new(LIMITS);
            let mut rest = Vec::new();
            let mut req = None;
            for c in raw.as_bytes().chunks(chunk) {
                if let Some((q, tail)) = r.feed(c).unwrap() {
                    req = Some(q);
                    rest.extend_from_slice(tail);
                } else if req.is_some() {
                    rest.extend_from_slice(c);
                }
            }
            let req = req.unwrap();
            assert_eq!(req.header("sec-websocket-key"), Some(KEY));
            assert_eq!(rest, b"XY");
        }
    }

    #[test]
    fn oversize_headers_431() {
        let limits = Limits {
            max_header_bytes: 256,
            max_headers: 64,
        };
        let big = valid(&format!("X-Pad: {}\r\n", "a".repeat(300)));
        let r = RequestReader::new(limits).feed(big.as_bytes()).unwrap_err();
        assert_eq!((r.kind, r.status), (RejectKind::HeadersTooLarge, 431));
        assert!(r.log.contains("max_header_bytes = 256"));
        // Byte at a time: refused as soon as the limit is crossed, buffer stays bounded.
        let mut rd = RequestReader::new(limits);
        let mut err = None;
        for b in big.as_bytes() {
            match rd.feed(std::slice::from_ref(b)) {
                Ok(None) => assert!(rd.buffered() <= 256),
                Ok(Some(_)) => panic!("accepted oversize request"),
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        assert_eq!(err.unwrap().kind, RejectKind::HeadersTooLarge);
        // Valid headers that never end: refused by size, buffer never past the limit.
        let limits = Limits {
            max_header_bytes: 256,
            max_headers: 10_000,
        };
        let mut rd = RequestReader::new(limits);
        assert!(rd.feed(b"GET /chat HTTP/1.1\r\n").unwrap().is_none());
        let e = loop {
            match rd.feed(b"X-A: b\r\n") {
                Ok(None) => assert!(rd.buffered() <= 256),
                Ok(Some(_)) => unreachable!(),
                Err(e) => break e,
            }
        };
        assert_eq!((e.kind, e.status), (RejectKind::HeadersTooLarge, 431));
        // Exactly at the limit is fine.
        let exact = valid("");
        let limits = Limits {
            max_header_bytes: exact.len(),
            max_headers: 64,
        };
        assert!(RequestReader::new(limits)
            .feed(exact.as_bytes())
            .unwrap()
            .is_some());
        let limits = Limits {
            max_header_bytes: exact.len() - 1,
            max_headers: 64,
        };
        assert!(RequestReader::new(limits).feed(exact.as_bytes()).is_err());
    }

    /// Found by fuzz/fuzz_targets/handshake.rs: malformed bytes that also exceed a limit were
    /// 431 in one read but 400 when a read boundary let the early check see them first.
    #[test]
    #[cfg_attr(miri, ignore = "exhaustive: minutes under Miri; runs natively")]
    fn malformed_over_a_limit_is_400_however_split() {
        let mut bad_line = valid("X-0: 0\r\nX-1: 1\r\nX-2: 2\r\n").into_bytes();
        bad_line.splice(17..17, *b"\xff\xff");
        let mut tls = vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01];
        tls.resize(300, 0xab);
        let cases = [
            (
                &bad_line,
                Limits {
                    max_header_bytes: 8192,
                    max_headers: 4,
                },
            ),
            (
                &tls,
                Limits {
                    max_header_bytes: 256,
                    max_headers: 64,
                },
            ),
        ];
        for (bytes, limits) in cases {
            let refusal = |cuts: &[usize]| {
                let mut r = RequestReader::new(limits);
                let mut start = 0;
                for &end in cuts.iter().chain([&bytes.len()]) {
                    if let Err(e) = r.feed(&bytes[start..end]) {
                        return (e.kind, e.status);
                    }
                    start = end;
                }
                panic!("not refused: {}", bytes.escape_ascii());
            };
            assert_eq!(refusal(&[]), (RejectKind::BadRequest, 400));
            let bytewise: Vec<usize> = (1..bytes.len()).collect();
            assert_eq!(refusal(&bytewise), (RejectKind::BadRequest, 400));
            for cut in 1..bytes.len() {
                assert_eq!(refusal(&[cut]), (RejectKind::BadRequest, 400), "cut {cut}");
            }
        }
    }

    #[test]
    fn too_many_headers_431() {
        let limits = Limits {
            max_header_bytes: 65536,
            max_headers: 8,
        };
        // valid() has 5 headers; 3 more is exactly the limit.
        let ok = valid("A: 1\r\nB: 2\r\nC: 3\r\n");
        assert!(RequestReader::new(limits)
            .feed(ok.as_bytes())
            .unwrap()
            .is_some());
        let mut ok_bytes = RequestReader::new(limits);
        let mut done = false;
        for b in ok.as_bytes() {
            done = ok_bytes.feed(std::slice::from_ref(b)).unwrap().is_some();
        }
        assert!(done);

        let bad = valid("A: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n");
        let r = RequestReader::new(limits).feed(bad.as_bytes()).unwrap_err();
        assert_eq!((r.kind, r.status), (RejectKind::HeadersTooLarge, 431));
        assert!(r.log.contains("max_headers = 8"));
        // Byte at a time, with a stream of headers that never ends.
        let mut rd = RequestReader::new(limits);
        let mut stream = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..100 {
            stream.extend_from_slice(format!("H{i}: v\r\n").as_bytes());
        }
        let mut err = None;
        for b in &stream {
            if let Err(e) = rd.feed(std::slice::from_ref(b)) {
                err = Some(e);
                break;
            }
        }
        let e = err.unwrap();
        assert_eq!(e.kind, RejectKind::HeadersTooLarge);
        assert!(rd.buffered() < 100);
    }

    #[test]
    fn malformed_400() {
        let r = RequestReader::new(LIMITS)
            .feed(b"GET /chat HTTP/1.1\r\nBad Header: x\r\n\r\n")
            .unwrap_err();
        assert_eq!((r.kind, r.status), (RejectKind::BadRequest, 400));
        assert!(r.log.contains("invalid header name"), "{}", r.log);
        assert!(r.log.contains("httparse"));
        let r = RequestReader::new(LIMITS)
            .feed(b"GET /chat HTTP/9.9\r\n\r\n")
            .unwrap_err();
        assert!(r.log.contains("invalid HTTP version"), "{}", r.log);
    }

    #[test]
    fn garbage_detected_early() {
        // A TLS ClientHello never contains a blank line; refuse on the first byte.
        let mut r = RequestReader::new(LIMITS);
        let e = r.feed(&[0x16]).unwrap_err();
        assert_eq!(e.kind, RejectKind::BadRequest);
        assert!(e.log.contains("TLS"), "{}", e.log);
        let e = RequestReader::new(LIMITS)
            .feed(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nGET / HTTP/1.1\r\n")
            .unwrap_err();
        assert!(e.log.contains("PROXY protocol"), "{}", e.log);
        // A bad request line is caught when its line ends, even byte by byte.
        let mut r = RequestReader::new(LIMITS);
        let mut err = None;
        for b in b"GET /x HTTP/1.1 junk\r\nHost: a\r\n" {
            if let Err(e) = r.feed(std::slice::from_ref(b)) {
                err = Some(e);
                break;
            }
        }
        assert_eq!(err.unwrap().kind, RejectKind::BadRequest);
    }

    #[test]
    fn header_tokens_join_repeated() {
        let req = parse("GET / HTTP/1.1\r\nX-L: a, b ,,c\r\nx-l:\td\r\nOther: z\r\nX-L: \r\n\r\n");
        assert_eq!(req.header_tokens("x-L"), vec!["a", "b", "c", "d"]);
        assert_eq!(req.header("X-l"), Some("a, b ,,c"));
        assert_eq!(req.header("missing"), None);
    }

    #[test]
    fn health() {
        let p = P::new();
        for m in ["GET", "HEAD"] {
            let raw = format!("{m} /healthz HTTP/1.0\r\n\r\n");
            assert_eq!(p.route(&raw), Ok(Route::Health));
        }
        // Health wins even over a broken upgrade attempt.
        assert_eq!(
            p.route("GET /healthz?x=1 HTTP/1.1\r\nSec-WebSocket-Key: nope\r\n\r\n"),
            Ok(Route::Health)
        );
        assert_eq!(
            p.route("POST /healthz HTTP/1.1\r\nHost: a\r\n\r\n"),
            Ok(Route::Http)
        );
        let mut p = P::new();
        p.health = None;
        assert_eq!(
            p.route("GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"),
            Ok(Route::Http)
        );
    }

    #[test]
    fn plain_http_is_http() {
        let p = P::new();
        assert_eq!(
            p.route("GET /chat HTTP/1.1\r\nHost: a\r\n\r\n"),
            Ok(Route::Http)
        );
        assert_eq!(
            p.route("GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"),
            Ok(Route::Http)
        );
    }

    #[test]
    fn method_405() {
        let raw = valid("").replacen("GET", "POST", 1);
        let r = reject(P::new().route(&raw), RejectKind::BadRequest, 405);
        assert_eq!(r.headers, vec![("Allow".to_string(), "GET".to_string())]);
        assert!(r.log.contains("\"POST\""));
        let mut out = Vec::new();
        write_rejection(&mut out, &r);
        assert!(String::from_utf8(out)
            .unwrap()
            .contains("\r\nAllow: GET\r\n"));
    }

    #[test]
    fn http10_400() {
        let raw = valid("").replacen("HTTP/1.1", "HTTP/1.0", 1);
        let r = reject(P::new().route(&raw), RejectKind::BadRequest, 400);
        assert!(r.body.contains("WebSocket requires HTTP/1.1"));
        assert!(r.log.contains("proxy_http_version 1.1"));
    }

    #[test]
    fn missing_host_400() {
        let raw = valid("").replacen("Host: example.com\r\n", "", 1);
        let r = reject(P::new().route(&raw), RejectKind::BadRequest, 400);
        assert!(r.body.contains("Host"));
        assert!(r.log.contains("Host"));
    }

    #[test]
    fn missing_upgrade_header() {
        let raw = valid("X-Forwarded-For: 10.0.0.1\r\n").replacen("Upgrade: websocket\r\n", "", 1);
        let r = reject(P::new().route(&raw), RejectKind::MissingUpgrade, 400);
        assert!(
            r.body.contains("missing Upgrade: websocket header"),
            "{}",
            r.body
        );
        assert!(r.body.contains("proxy"));
        assert!(r.body.contains("proxy_set_header Upgrade $http_upgrade"));
        assert!(r.log.contains("the Upgrade header is missing"), "{}", r.log);
        assert!(!r.log.contains("Connection is"));
        assert!(r.log.contains("dropped the hop-by-hop"));
        assert!(r.log.contains("proxy_http_version 1.1"));
        assert!(r.log.contains("map $http_upgrade $connection_upgrade"));
        assert!(r.log.contains("NLB"));
        assert!(r.log.contains("X-Forwarded-For"));
    }

    #[test]
    fn missing_connection_upgrade_token() {
        // What nginx sends by default: its own Connection header.
        let raw = valid("").replacen("Connection: Upgrade", "Connection: close", 1);
        let r = reject(P::new().route(&raw), RejectKind::MissingUpgrade, 400);
        assert!(
            r.body.contains("missing Connection: Upgrade header"),
            "{}",
            r.body
        );
        assert!(
            r.log
                .contains("Connection is \"close\", without the \"upgrade\" token"),
            "{}",
            r.log
        );
        // Both gone, key alone tells us it was a WebSocket attempt.
        let raw = valid("")
            .replacen("Connection: Upgrade\r\n", "", 1)
            .replacen("Upgrade: websocket\r\n", "", 1);
        let r = reject(P::new().route(&raw), RejectKind::MissingUpgrade, 400);
        assert!(r
            .log
            .contains("Upgrade header is missing and the Connection header is missing"));
        // Upgrade present but not websocket, while the key is there.
        let raw = valid("").replacen("Upgrade: websocket", "Upgrade: h2c", 1);
        let r = reject(P::new().route(&raw), RejectKind::MissingUpgrade, 400);
        assert!(r.log.contains("Upgrade is \"h2c\""), "{}", r.log);
    }

    #[test]
    fn connection_lists_and_case() {
        let raw = valid("").replacen("Connection: Upgrade", "Connection: keep-alive, Upgrade", 1);
        upgrade(P::new().route(&raw));
        let raw = valid("").replacen("Upgrade: websocket", "Upgrade: WebSocket", 1);
        upgrade(P::new().route(&raw));
        let raw = valid("")
            .replacen(
                "Connection: Upgrade",
                "Connection: keep-alive\r\nConnection: UPGRADE",
                1,
            )
            .replacen("Upgrade: websocket", "Upgrade: foo, websocket", 1);
        upgrade(P::new().route(&raw));
    }

    #[test]
    fn version_426() {
        for (from, to, needle) in [
            (
                "Sec-WebSocket-Version: 13",
                "Sec-WebSocket-Version: 8",
                "\"8\"",
            ),
            ("Sec-WebSocket-Version: 13\r\n", "", "missing"),
        ] {
            let raw = valid("").replacen(from, to, 1);
            let r = reject(P::new().route(&raw), RejectKind::UnsupportedVersion, 426);
            assert!(r.log.contains(needle), "{}", r.log);
            assert_eq!(
                r.headers,
                vec![("Sec-WebSocket-Version".to_string(), "13".to_string())]
            );
            let mut out = Vec::new();
            write_rejection(&mut out, &r);
            let text = String::from_utf8(out).unwrap();
            assert!(text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
            assert!(text.contains("\r\nSec-WebSocket-Version: 13\r\n"));
        }
    }

    #[test]
    fn bad_key_400() {
        for (to, needle) in [
            ("", "missing"),
            ("Sec-WebSocket-Key: not base64!!\r\n", "not valid base64"),
            ("Sec-WebSocket-Key: AAAA\r\n", "decodes to 3 bytes"),
            (
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
                "sent 2 times",
            ),
        ] {
            let raw = valid("").replacen(&format!("Sec-WebSocket-Key: {KEY}\r\n"), to, 1);
            let r = reject(P::new().route(&raw), RejectKind::BadKey, 400);
            assert!(r.log.contains(needle), "{}", r.log);
            assert!(r.body.contains("Sec-WebSocket-Key"));
        }
    }

    #[test]
    fn path_patterns() {
        let paths = s(&["/exact", "/pre/*"]);
        assert!(path_served("/exact", &paths));
        assert!(!path_served("/exact/", &paths));
        assert!(!path_served("/exactly", &paths));
        assert!(path_served("/pre", &paths));
        assert!(path_served("/pre/", &paths));
        assert!(path_served("/pre/a/b", &paths));
        assert!(!path_served("/prefix", &paths));
        assert!(!path_served("/", &paths));
        assert!(path_served("/anything", &s(&["*"])));
        assert!(path_served("/anything", &s(&["/*"])));
        assert!(!path_served("/x", &[]));
    }

    #[test]
    fn path_404() {
        let raw = valid("").replacen("/chat", "/nope", 1);
        let r = reject(P::new().route(&raw), RejectKind::PathNotFound, 404);
        assert!(
            r.log.contains("\"/nope\"") && r.log.contains("\"/chat\""),
            "{}",
            r.log
        );
        // The query may hold credentials: never logged.
        assert!(!r.log.contains("token=x"));
        let mut p = P::new();
        p.paths = s(&["/ws/*"]);
        upgrade(p.route(&valid("").replacen("/chat", "/ws/room1", 1)));
    }

    #[test]
    fn origin_same_host_default() {
        let p = P::new();
        upgrade(p.route(&valid("Origin: https://example.com\r\n")));
        upgrade(p.route(&valid("Origin: http://EXAMPLE.com\r\n")));
        let r = reject(
            p.route(&valid("Origin: https://evil.com\r\n")),
            RejectKind::OriginNotAllowed,
            403,
        );
        assert!(r.log.contains("\"https://evil.com\""));
        assert!(r.log.contains("\"example.com\""));
        assert!(r.log.contains("allowed_origins"));
        reject(
            p.route(&valid("Origin: null\r\n")),
            RejectKind::OriginNotAllowed,
            403,
        );
        // Ports must match too.
        let with_port = valid("Origin: https://example.com:8443\r\n");
        reject(p.route(&with_port), RejectKind::OriginNotAllowed, 403);
        let both = with_port.replacen("Host: example.com", "Host: example.com:8443", 1);
        upgrade(p.route(&both));
    }

    #[test]
    fn origin_lists() {
        let mut p = P::new();
        p.origins = s(&["*"]);
        let u = upgrade(p.route(&valid("Origin: https://evil.com\r\n")));
        assert_eq!(u.origin.as_deref(), Some("https://evil.com"));
        p.origins = s(&["https://app.example.com", "http://localhost:3000"]);
        upgrade(p.route(&valid("Origin: HTTPS://App.Example.com\r\n")));
        upgrade(p.route(&valid("Origin: http://localhost:3000\r\n")));
        // No Origin: not a browser, nothing to check.
        upgrade(p.route(&valid("")));
        let r = reject(
            p.route(&valid("Origin: http://localhost:3001\r\n")),
            RejectKind::OriginNotAllowed,
            403,
        );
        assert!(r.log.contains("localhost:3001") && r.log.contains("allowed_origins"));
        // A list does not imply same-host.
        reject(
            p.route(&valid("Origin: https://example.com\r\n")),
            RejectKind::OriginNotAllowed,
            403,
        );
    }

    #[test]
    fn subprotocols() {
        let mut p = P::new();
        p.protos = s(&["v2.chat", "v1.chat"]);
        let raw =
            valid("Sec-WebSocket-Protocol: x, v1.chat\r\nSec-WebSocket-Protocol: v2.chat\r\n");
        let u = upgrade(p.route(&raw));
        assert_eq!(u.offered_protocols, s(&["x", "v1.chat", "v2.chat"]));
        assert_eq!(u.subprotocol.as_deref(), Some("v2.chat"));
        // Case-sensitive, and no match is not an error.
        let u = upgrade(p.route(&valid("Sec-WebSocket-Protocol: V2.CHAT\r\n")));
        assert_eq!(u.subprotocol, None);
        assert_eq!(u.offered_protocols, s(&["V2.CHAT"]));
    }

    #[test]
    fn extensions_raw() {
        let raw = valid(
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
             Sec-WebSocket-Extensions: x-foo\r\n",
        );
        let u = upgrade(P::new().route(&raw));
        assert_eq!(
            u.extensions.as_deref(),
            Some("permessage-deflate; client_max_window_bits, x-foo")
        );
    }

    #[test]
    fn write_accept_bytes() {
        let mut out = Vec::new();
        write_accept(&mut out, ACCEPT, None, &[]);
        assert_eq!(
            out,
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        );
        out.clear();
        let extra = vec![
            ("X-Server".to_string(), "wsrt".to_string()),
            ("Bad".to_string(), "a\r\nSet-Cookie: x".to_string()),
        ];
        write_accept(&mut out, ACCEPT, Some("chat"), &extra);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: chat\r\n\
             X-Server: wsrt\r\n\r\n"
        );
    }

    #[test]
    fn write_response_bytes() {
        let mut out = Vec::new();
        write_response(
            &mut out,
            200,
            "text/plain",
            &[("X-A".to_string(), "1".to_string())],
            b"ok\n",
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\
             Connection: close\r\nX-A: 1\r\n\r\nok\n"
        );
        let r = Rejection::new(RejectKind::PathNotFound, 404, "nope", "log");
        assert_eq!(r.body, "nope\n");
        let mut out = Vec::new();
        write_rejection(&mut out, &r);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: 5\r\nConnection: close\r\n\r\nnope\n"
        );
    }

    #[test]
    fn header_validation() {
        assert!(valid_header("X-Ok", "value with spaces\tand tab"));
        assert!(!valid_header("X-Bad", "a\r\nSet-Cookie: evil=1"));
        assert!(!valid_header("X-Bad", "a\nb"));
        assert!(!valid_header("X-Bad", "a\rb"));
        assert!(!valid_header("X-Bad", "a\0b"));
        assert!(!valid_header("", "v"));
        assert!(!valid_header("X Bad", "v"));
        assert!(!valid_header("X-Bad:", "v"));
        assert!(!valid_header("X-Bad\r\n", "v"));
    }

    #[test]
    fn reject_kinds() {
        let names: std::collections::HashSet<_> =
            RejectKind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(names.len(), 13);
        assert_eq!(RejectKind::MissingUpgrade.name(), "missing_upgrade");
        for (i, k) in RejectKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i);
            assert!(k
                .name()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_'));
        }
        assert_eq!(reason_phrase(431), "Request Header Fields Too Large");
        assert_eq!(reason_phrase(426), "Upgrade Required");
    }
}
