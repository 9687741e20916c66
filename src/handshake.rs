//! The HTTP/1.1 upgrade (RFC 6455 §4), sans-I/O: accumulate a request arriving in any
//! pieces, decide what it is, and write the responses. Every refusal says exactly why.

use base64::Engine;

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
    pub query: Option<String>,
    /// HTTP/1.x
    pub version_minor: u8,
    /// In order, names as sent.
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// First header with this name (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All values of a header as comma-separated tokens, across repeated headers, trimmed.
    pub fn header_tokens(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .collect()
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        self.header_tokens(name)
            .iter()
            .any(|t| t.eq_ignore_ascii_case(token))
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
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub kind: RejectKind,
    pub status: u16,
    /// Short plain-text reason for the client, ending with '\n'.
    pub body: String,
    /// One log line: what exactly was wrong and the likely cause or fix.
    pub log: String,
    pub headers: Vec<(String, String)>,
}

impl Rejection {
    pub fn new(
        kind: RejectKind,
        status: u16,
        body: impl Into<String>,
        log: impl Into<String>,
    ) -> Self {
        Rejection {
            kind,
            status,
            body: body.into(),
            log: log.into(),
            headers: Vec::new(),
        }
    }
}

/// Accumulates a request that may arrive in arbitrary pieces.
pub struct RequestReader {
    limits: Limits,
    buf: Vec<u8>,
}

impl RequestReader {
    pub fn new(limits: Limits) -> Self {
        RequestReader {
            limits,
            buf: Vec::new(),
        }
    }

    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Feed the next bytes. `Ok(Some((request, rest)))` when complete; `rest` is the suffix
    /// of `data` after the blank line (frames the client sent right behind its request).
    pub fn feed<'a>(&mut self, data: &'a [u8]) -> Result<Option<(Request, &'a [u8])>, Rejection> {
        if self.buf.is_empty() {
            // Fast path: the whole head in this read, parsed in place.
            if let Some(end) = find_head_end(data, 0) {
                self.check_size(end)?;
                let req = parse(&data[..end], self.limits)?;
                return Ok(Some((req, &data[end..])));
            }
        }
        let old = self.buf.len();
        // Only the new bytes (and the 3 before them) can complete "\r\n\r\n".
        let search_from = old.saturating_sub(3);
        let room = self.limits.max_header_bytes.saturating_sub(old);
        let take = data.len().min(room + 4);
        self.buf.extend_from_slice(&data[..take]);
        match find_head_end(&self.buf, search_from) {
            Some(end) => {
                self.check_size(end)?;
                let req = parse(&self.buf[..end], self.limits)?;
                // The head ends inside `data`: what follows is the caller's.
                let consumed_from_data = end - old;
                self.buf = Vec::new();
                Ok(Some((req, &data[consumed_from_data..])))
            }
            None => {
                self.check_size(self.buf.len())?;
                Ok(None)
            }
        }
    }

    fn check_size(&self, len: usize) -> Result<(), Rejection> {
        if len > self.limits.max_header_bytes {
            return Err(Rejection::new(
                RejectKind::HeadersTooLarge,
                431,
                "431 Request Header Fields Too Large\n",
                format!(
                    "request head over max_header_bytes ({} bytes); cookies piling up, or raise max_header_bytes",
                    self.limits.max_header_bytes
                ),
            ));
        }
        Ok(())
    }
}

/// Index just past "\r\n\r\n" (or a bare "\n\n"), searching from `from`.
fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < buf.len() {
        if buf[i] == b'\n' {
            if i >= 3 && &buf[i - 3..=i] == b"\r\n\r\n" {
                return Some(i + 1);
            }
            if i >= 1 && buf[i - 1] == b'\n' {
                return Some(i + 1);
            }
        }
        i += 1;
    }
    None
}

fn parse(head: &[u8], limits: Limits) -> Result<Request, Rejection> {
    let mut headers = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut req = httparse::Request::new(&mut headers);
    let bad = |why: String| {
        Rejection::new(
            RejectKind::BadRequest,
            400,
            "400 Bad Request: malformed HTTP request\n",
            format!("malformed HTTP request: {why}"),
        )
    };
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(bad("incomplete head".into())),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Rejection::new(
                RejectKind::HeadersTooLarge,
                431,
                "431 Request Header Fields Too Large: too many header lines\n",
                format!(
                    "more than max_headers ({}) header lines",
                    limits.max_headers
                ),
            ))
        }
        Err(e) => {
            let start = String::from_utf8_lossy(&head[..head.len().min(24)]).to_string();
            return Err(bad(format!("{e} (request starts with {start:?})")));
        }
    }
    let target = req.path.unwrap_or("/");
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
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
    })
}

pub struct Policy<'a> {
    /// "*" = all; "/x" exact; "/x/*" prefix (matches "/x" and "/x/anything").
    pub paths: &'a [String],
    /// Empty = a browser's Origin must match Host; "*" = any; else exact matches.
    pub allowed_origins: &'a [String],
    /// Server preference order.
    pub subprotocols: &'a [String],
    pub health_path: Option<&'a str>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upgrade {
    pub key: String,
    /// The Sec-WebSocket-Accept value.
    pub accept: String,
    /// The client's Sec-WebSocket-Protocol tokens, in order.
    pub offered_protocols: Vec<String>,
    /// The first of the server's subprotocols (in server order) that the client offered.
    pub subprotocol: Option<String>,
    pub origin: Option<String>,
    /// Every Sec-WebSocket-Extensions line, joined with ", ".
    pub extensions: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    Upgrade(Upgrade),
    Health,
    /// A plain HTTP request (no attempt to upgrade).
    Http,
}

/// Is `path` one of the served WebSocket paths?
pub fn path_served(path: &str, paths: &[String]) -> bool {
    paths.iter().any(|p| {
        if p == "*" {
            true
        } else if let Some(prefix) = p.strip_suffix("/*") {
            path == prefix
                || path
                    .strip_prefix(prefix)
                    .is_some_and(|r| r.starts_with('/'))
        } else {
            p == path
        }
    })
}

const NGINX_FIX: &str = "for nginx: proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection $connection_upgrade; (with map $http_upgrade $connection_upgrade { default upgrade; '' close; }); for AWS: a Classic ELB in HTTP mode does not pass upgrades, use TCP listeners or an ALB/NLB";

/// Decide what a complete request is.
pub fn route(req: &Request, policy: &Policy) -> Result<Route, Rejection> {
    if policy.health_path == Some(req.path.as_str())
        && (req.method == "GET" || req.method == "HEAD")
    {
        return Ok(Route::Health);
    }
    let wants_websocket = req.has_token("Upgrade", "websocket");
    let key = req.header("Sec-WebSocket-Key");
    let version = req.header("Sec-WebSocket-Version");
    if !wants_websocket && key.is_none() && version.is_none() {
        return Ok(Route::Http);
    }
    if req.method != "GET" {
        let mut r = Rejection::new(
            RejectKind::BadRequest,
            405,
            "405 Method Not Allowed: a WebSocket upgrade must be a GET request\n",
            format!("upgrade request with method {} (must be GET)", req.method),
        );
        r.headers.push(("Allow".into(), "GET".into()));
        return Err(r);
    }
    if req.version_minor < 1 {
        return Err(Rejection::new(
            RejectKind::BadRequest,
            400,
            "400 Bad Request: WebSocket requires HTTP/1.1\n",
            "upgrade request over HTTP/1.0; WebSocket requires HTTP/1.1 (a proxy speaking HTTP/1.0 to this server? for nginx: proxy_http_version 1.1)",
        ));
    }
    if req.header("Host").is_none() {
        return Err(Rejection::new(
            RejectKind::BadRequest,
            400,
            "400 Bad Request: missing Host header\n",
            "upgrade request without a Host header",
        ));
    }
    let has_connection_upgrade = req.has_token("Connection", "upgrade");
    if !wants_websocket || !has_connection_upgrade {
        let what = match (
            wants_websocket,
            req.header("Upgrade"),
            req.header("Connection"),
        ) {
            (false, None, _) => "the Upgrade header is missing".to_string(),
            (false, Some(u), _) => format!("Upgrade is {u:?}, not websocket"),
            (true, _, None) => "the Connection header is missing".to_string(),
            (true, _, Some(c)) => format!("Connection is {c:?}, without the upgrade token"),
        };
        return Err(Rejection::new(
            RejectKind::MissingUpgrade,
            400,
            format!(
                "400 Bad Request: missing Upgrade: websocket / Connection: upgrade ({what}). \
                 A proxy in front of this server likely dropped these hop-by-hop headers; {NGINX_FIX}\n"
            ),
            format!(
                "WebSocket handshake (Sec-WebSocket-Key present) but {what}: a proxy likely dropped the hop-by-hop Upgrade/Connection headers; {NGINX_FIX}"
            ),
        ));
    }
    if version.map(str::trim) != Some("13") {
        let mut r = Rejection::new(
            RejectKind::UnsupportedVersion,
            426,
            "426 Upgrade Required: unsupported Sec-WebSocket-Version (this server speaks 13)\n",
            format!(
                "Sec-WebSocket-Version {:?} is not supported (only 13)",
                version.unwrap_or("(missing)")
            ),
        );
        r.headers
            .push(("Sec-WebSocket-Version".into(), "13".into()));
        return Err(r);
    }
    let key = key.map(str::trim).unwrap_or("");
    let key_ok = base64::engine::general_purpose::STANDARD
        .decode(key)
        .is_ok_and(|k| k.len() == 16);
    if !key_ok {
        return Err(Rejection::new(
            RejectKind::BadKey,
            400,
            "400 Bad Request: Sec-WebSocket-Key must be base64 of 16 bytes\n",
            format!("bad Sec-WebSocket-Key {key:?}: must be base64 of 16 random bytes"),
        ));
    }
    if !path_served(&req.path, policy.paths) {
        return Err(Rejection::new(
            RejectKind::PathNotFound,
            404,
            "404 Not Found: no WebSocket endpoint at this path\n",
            format!(
                "path {} is not served (option paths: {})",
                req.path,
                policy.paths.join(",")
            ),
        ));
    }
    let origin = req.header("Origin").map(str::trim);
    if let Some(origin) = origin {
        check_origin(
            origin,
            req.header("Host").unwrap_or(""),
            policy.allowed_origins,
        )?;
    }
    let offered: Vec<String> = req
        .header_tokens("Sec-WebSocket-Protocol")
        .into_iter()
        .map(String::from)
        .collect();
    let subprotocol = policy
        .subprotocols
        .iter()
        .find(|p| offered.iter().any(|o| o == *p))
        .cloned();
    Ok(Route::Upgrade(Upgrade {
        key: key.to_string(),
        accept: accept_key(key),
        offered_protocols: offered,
        subprotocol,
        origin: origin.map(String::from),
        extensions: {
            let all: Vec<&str> = req
                .headers
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case("Sec-WebSocket-Extensions"))
                .map(|(_, v)| v.as_str())
                .collect();
            (!all.is_empty()).then(|| all.join(", "))
        },
    }))
}

fn check_origin(origin: &str, host: &str, allowed: &[String]) -> Result<(), Rejection> {
    if allowed.iter().any(|a| a == "*") {
        return Ok(());
    }
    let ok = if allowed.is_empty() {
        let origin_host = origin.split_once("://").map_or(origin, |(_, h)| h);
        origin_host.eq_ignore_ascii_case(host.trim())
    } else {
        allowed.iter().any(|a| a.eq_ignore_ascii_case(origin))
    };
    if ok {
        return Ok(());
    }
    let rule = if allowed.is_empty() {
        format!("it does not match Host {host:?} and allowed_origins is empty (same-origin only)")
    } else {
        format!("it is not in allowed_origins ({})", allowed.join(","))
    };
    Err(Rejection::new(
        RejectKind::OriginNotAllowed,
        403,
        "403 Forbidden: Origin not allowed\n",
        format!("Origin {origin:?} refused: {rule}; set allowed_origins to allow it"),
    ))
}

/// base64(sha1(key + GUID)), RFC 6455 §4.2.2.
pub fn accept_key(key: &str) -> String {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes())
}

/// The 101 response.
pub fn write_accept(
    out: &mut Vec<u8>,
    accept: &str,
    subprotocol: Option<&str>,
    extra_headers: &[(String, String)],
) {
    out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ");
    out.extend_from_slice(accept.as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(p) = subprotocol {
        push_header(out, "Sec-WebSocket-Protocol", p);
    }
    for (k, v) in extra_headers {
        push_header(out, k, v);
    }
    out.extend_from_slice(b"\r\n");
}

fn push_header(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// A plain HTTP response; the connection closes after it.
pub fn write_response(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    extra_headers: &[(String, String)],
    body: &[u8],
) {
    out.extend_from_slice(format!("HTTP/1.1 {status} {}\r\n", reason_phrase(status)).as_bytes());
    push_header(out, "Content-Type", content_type);
    push_header(out, "Content-Length", &body.len().to_string());
    push_header(out, "Connection", "close");
    for (k, v) in extra_headers {
        push_header(out, k, v);
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

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
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// A header a host may add: the name is an HTTP token and the value has no CR, LF or NUL
/// (so it cannot split the response).
pub fn valid_header(name: &str, value: &str) -> bool {
    let token = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c);
    !name.is_empty()
        && name.bytes().all(token)
        && !value.bytes().any(|c| c == b'\r' || c == b'\n' || c == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_header_bytes: 8192,
        max_headers: 64,
    };

    fn request(extra: &str) -> String {
        format!(
            "GET /chat?room=1 HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
    }

    fn parse_all(text: &str) -> Request {
        let mut r = RequestReader::new(LIMITS);
        r.feed(text.as_bytes()).unwrap().unwrap().0
    }

    fn any() -> Vec<String> {
        vec!["*".to_string()]
    }

    fn policy<'a>(paths: &'a [String], origins: &'a [String], protos: &'a [String]) -> Policy<'a> {
        Policy {
            paths,
            allowed_origins: origins,
            subprotocols: protos,
            health_path: Some("/healthz"),
        }
    }

    fn route_text(text: &str) -> Result<Route, Rejection> {
        let (p, none) = (any(), Vec::new());
        route(&parse_all(text), &policy(&p, &none, &none))
    }

    #[test]
    fn rfc_sample_key() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn valid_upgrade_in_one_piece_and_byte_by_byte_with_trailing_frames() {
        let mut bytes = request("").into_bytes();
        bytes.extend_from_slice(b"\x81\x85frame");
        let mut r = RequestReader::new(LIMITS);
        let (req, rest) = r.feed(&bytes).unwrap().unwrap();
        assert_eq!(rest, b"\x81\x85frame");
        assert_eq!(
            (req.path.as_str(), req.query.as_deref()),
            ("/chat", Some("room=1"))
        );
        let mut r = RequestReader::new(LIMITS);
        let mut done = None;
        for (i, b) in bytes.iter().enumerate() {
            if let Some((req2, rest)) = r.feed(std::slice::from_ref(b)).unwrap() {
                assert_eq!(req2, req);
                assert!(rest.is_empty());
                done = Some(i);
                break;
            }
        }
        // Completed exactly at the blank line; the caller keeps what follows.
        assert_eq!(done, Some(request("").len() - 1));
        // Split in the middle of the terminator, with frames in the same piece.
        let cut = request("").len() - 2;
        let mut r = RequestReader::new(LIMITS);
        assert!(r.feed(&bytes[..cut]).unwrap().is_none());
        let (_, rest) = r.feed(&bytes[cut..]).unwrap().unwrap();
        assert_eq!(rest, b"\x81\x85frame");
        match route(&req, &policy(&any(), &[], &[])).unwrap() {
            Route::Upgrade(u) => assert_eq!(u.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn oversize_and_too_many_headers_are_431_even_byte_by_byte() {
        let limits = Limits {
            max_header_bytes: 512,
            max_headers: 8,
        };
        let big = request(&format!("X-Big: {}\r\n", "a".repeat(600)));
        let mut r = RequestReader::new(limits);
        assert_eq!(r.feed(big.as_bytes()).unwrap_err().status, 431);
        let mut r = RequestReader::new(limits);
        let mut err = None;
        for b in big.as_bytes() {
            match r.feed(std::slice::from_ref(b)) {
                Ok(_) => assert!(r.buffered() <= 512 + 4),
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        assert_eq!(err.unwrap().kind, RejectKind::HeadersTooLarge);
        let many: String = (0..10).map(|i| format!("X-{i}: 1\r\n")).collect();
        let mut r = RequestReader::new(limits);
        assert_eq!(r.feed(request(&many).as_bytes()).unwrap_err().status, 431);
    }

    #[test]
    fn malformed_request_is_400() {
        let mut r = RequestReader::new(LIMITS);
        let e = r.feed(b"\x16\x03\x01garbage\r\n\r\n").unwrap_err();
        assert_eq!((e.status, e.kind), (400, RejectKind::BadRequest));
    }

    #[test]
    fn rejections_name_their_cause() {
        let e =
            route_text(&request("").replace("Upgrade: websocket\r\nConnection: Upgrade\r\n", ""))
                .unwrap_err();
        assert_eq!((e.status, e.kind), (400, RejectKind::MissingUpgrade));
        assert!(
            e.log.contains("proxy") && e.body.contains("proxy_set_header Upgrade"),
            "{e:?}"
        );
        let e = route_text(&request("").replace("Connection: Upgrade", "Connection: close"))
            .unwrap_err();
        assert!(e.log.contains("\"close\""), "{}", e.log);
        let e = route_text(&request("").replace("Version: 13", "Version: 8")).unwrap_err();
        assert_eq!(
            (e.status, e.headers.clone()),
            (426, vec![("Sec-WebSocket-Version".into(), "13".into())])
        );
        let e = route_text(&request("").replace("Sec-WebSocket-Version: 13\r\n", "")).unwrap_err();
        assert_eq!(e.status, 426);
        let e =
            route_text(&request("").replace("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ=")).unwrap_err();
        assert_eq!(e.kind, RejectKind::BadKey);
        let e =
            route_text(&request("").replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""))
                .unwrap_err();
        assert_eq!(e.kind, RejectKind::BadKey);
        let e = route_text(&request("").replacen("GET", "POST", 1)).unwrap_err();
        assert_eq!(e.status, 405);
        let e = route_text(&request("").replacen("HTTP/1.1", "HTTP/1.0", 1)).unwrap_err();
        assert!(e.body.contains("HTTP/1.1"));
        let e = route_text(&request("").replace("Host: example.com\r\n", "")).unwrap_err();
        assert!(e.body.contains("Host"));
    }

    #[test]
    fn case_and_comma_lists() {
        let r = request("")
            .replace("Upgrade: websocket", "Upgrade: WebSocket")
            .replace("Connection: Upgrade", "Connection: keep-alive, Upgrade");
        assert!(matches!(route_text(&r), Ok(Route::Upgrade(_))));
    }

    #[test]
    fn paths_health_and_plain_http() {
        let paths = vec!["/ws".to_string(), "/push/*".to_string()];
        let p = policy(&paths, &[], &[]);
        let req = |path: &str| parse_all(&request("").replace("/chat?room=1", path));
        assert!(matches!(route(&req("/ws"), &p), Ok(Route::Upgrade(_))));
        assert!(matches!(route(&req("/push"), &p), Ok(Route::Upgrade(_))));
        assert!(matches!(
            route(&req("/push/a/b"), &p),
            Ok(Route::Upgrade(_))
        ));
        assert_eq!(route(&req("/pushy"), &p).unwrap_err().status, 404);
        assert_eq!(route(&req("/healthz"), &p), Ok(Route::Health));
        let plain = parse_all("GET /ws HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(route(&plain, &p), Ok(Route::Http));
    }

    #[test]
    fn origin_rules() {
        let same = request("Origin: https://example.com\r\n");
        assert!(route_text(&same).is_ok());
        let port = request("Origin: http://example.com:8080\r\n");
        assert_eq!(route_text(&port).unwrap_err().status, 403);
        let foreign = request("Origin: https://evil.test\r\n");
        let e = route_text(&foreign).unwrap_err();
        assert!(e.log.contains("allowed_origins"));
        let list = vec!["https://evil.test".to_string()];
        assert!(route(&parse_all(&foreign), &policy(&any(), &list, &[])).is_ok());
        assert_eq!(
            route(&parse_all(&same), &policy(&any(), &list, &[]))
                .unwrap_err()
                .status,
            403
        );
        assert!(route(&parse_all(&foreign), &policy(&any(), &any(), &[])).is_ok());
    }

    #[test]
    fn subprotocol_in_server_order_across_repeated_headers() {
        let r = parse_all(&request(
            "Sec-WebSocket-Protocol: a, b\r\nSec-WebSocket-Protocol: c\r\n",
        ));
        let protos = vec!["c".to_string(), "b".to_string()];
        match route(&r, &policy(&any(), &[], &protos)).unwrap() {
            Route::Upgrade(u) => {
                assert_eq!(u.offered_protocols, vec!["a", "b", "c"]);
                assert_eq!(u.subprotocol.as_deref(), Some("c"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn responses_are_exact() {
        let mut out = Vec::new();
        write_accept(
            &mut out,
            "abc",
            Some("chat"),
            &[("Set-Cookie".into(), "a=b".into())],
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: abc\r\nSec-WebSocket-Protocol: chat\r\nSet-Cookie: a=b\r\n\r\n"
        );
        let mut out = Vec::new();
        write_response(&mut out, 200, "text/plain", &[], b"ok\n");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"
        );
        assert!(valid_header("Set-Cookie", "a=b; Path=/"));
        assert!(!valid_header("Set-Cookie", "a=b\r\nX-Evil: 1"));
        assert!(!valid_header("Bad Name", "x"));
    }
}
