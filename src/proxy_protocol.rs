//! Sans-I/O reader for the HAProxy PROXY protocol, versions 1 (text) and 2 (binary).
//!
//! Spec: haproxy's `doc/proxy-protocol.txt`. The reader never does I/O: the caller feeds
//! whatever bytes it read and gets back either "need more", a parsed header plus the bytes
//! that followed it, or an error whose `Display` is one log line naming the likely cause.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Which PROXY protocol versions are accepted ("off" is handled by the caller).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Versions {
    V1,
    V2,
    Any,
}

/// Addresses announced by the header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Addresses {
    /// v2 LOCAL command (e.g. a load balancer health check): use the socket's own addresses.
    Local,
    /// v1 `UNKNOWN` or v2 `UNSPEC`: the proxy doesn't know; use the socket's own addresses.
    Unknown,
    Inet {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// AF_UNIX paths with trailing NUL padding removed.
    Unix {
        source: Vec<u8>,
        destination: Vec<u8>,
    },
}

/// A complete, validated PROXY header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyHeader {
    /// 1 or 2.
    pub version: u8,
    pub addresses: Addresses,
    /// TLV 0x02 (v2 only): the host name the client asked for (SNI).
    pub authority: Option<String>,
    /// TLV 0x01 (v2 only): the negotiated application protocol.
    pub alpn: Option<Vec<u8>>,
    /// Bytes the header occupied on the wire.
    pub header_len: usize,
}

impl ProxyHeader {
    /// The real client address, when the header carries an IP one.
    pub fn source(&self) -> Option<SocketAddr> {
        match self.addresses {
            Addresses::Inet { source, .. } => Some(source),
            _ => None,
        }
    }

    /// The address the client connected to (the proxy's listener), when known.
    pub fn destination(&self) -> Option<SocketAddr> {
        match self.addresses {
            Addresses::Inet { destination, .. } => Some(destination),
            _ => None,
        }
    }
}

/// Why a connection's PROXY header was rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProxyError {
    /// The bytes cannot start a PROXY header at all (typically a plain HTTP request).
    NotProxy,
    /// A well-formed signature of a version the configuration doesn't accept.
    VersionNotAccepted {
        received: u8,
        accepted: u8,
    },
    MalformedV1(String),
    V1TooLong,
    V2TooLarge {
        header_len: usize,
        max: usize,
    },
    UnsupportedV2Version(u8),
    UnsupportedV2Command(u8),
    UnsupportedV2Family(u8),
    V2Datagram,
    V2AddressTooShort {
        family: u8,
        len: usize,
        needed: usize,
    },
    /// A TLV (or TLV header, when `tlv_type` is None) runs past the end of the header.
    V2TlvOverrun {
        tlv_type: Option<u8>,
        offset: usize,
    },
    MalformedV2(String),
    V2CrcMismatch {
        announced: u32,
        computed: u32,
    },
    SecondHeader,
    /// `feed` was called again after it returned a header (a caller bug).
    AlreadyComplete,
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyError::NotProxy => f.write_str(
                "expected a PROXY protocol header — is proxy protocol enabled on the load balancer?",
            ),
            ProxyError::VersionNotAccepted { received, accepted } => write!(
                f,
                "PROXY protocol v{received} header received but proxy_protocol only accepts v{accepted}"
            ),
            ProxyError::MalformedV1(what) => write!(f, "malformed PROXY v1 header: {what}"),
            ProxyError::V1TooLong => write!(f, "PROXY v1 header longer than {V1_MAX_LEN} bytes"),
            ProxyError::V2TooLarge { header_len, max } => write!(
                f,
                "PROXY v2 header of {header_len} bytes exceeds proxy_max_header_bytes ({max})"
            ),
            ProxyError::UnsupportedV2Version(v) => {
                write!(f, "unsupported PROXY v2 version {v} (only 2 exists)")
            }
            ProxyError::UnsupportedV2Command(c) => write!(
                f,
                "unsupported PROXY v2 command 0x{c:x} (expected 0x0 LOCAL or 0x1 PROXY)"
            ),
            ProxyError::UnsupportedV2Family(fam) => write!(
                f,
                "unsupported PROXY v2 family/transport byte 0x{fam:02x} (expected 0x00, 0x11, 0x21 or 0x31)"
            ),
            ProxyError::V2Datagram => f.write_str(
                "PROXY v2 header announces UDP (DGRAM); wsrt only serves TCP streams",
            ),
            ProxyError::V2AddressTooShort { family, len, needed } => write!(
                f,
                "PROXY v2 header length {len} is shorter than the {needed}-byte address block of family 0x{family:02x}"
            ),
            ProxyError::V2TlvOverrun {
                tlv_type: Some(t),
                offset,
            } => write!(
                f,
                "PROXY v2 TLV 0x{t:02x} at byte {offset} runs past the end of the header"
            ),
            ProxyError::V2TlvOverrun {
                tlv_type: None,
                offset,
            } => write!(
                f,
                "PROXY v2 TLV header at byte {offset} is cut off by the end of the header"
            ),
            ProxyError::MalformedV2(what) => write!(f, "malformed PROXY v2 header: {what}"),
            ProxyError::V2CrcMismatch { announced, computed } => write!(
                f,
                "PROXY v2 CRC32C mismatch (header says 0x{announced:08x}, computed 0x{computed:08x})"
            ),
            ProxyError::SecondHeader => f.write_str(
                "second PROXY protocol header right after the first — proxy protocol is enabled twice along the path (e.g. on both the load balancer and nginx)",
            ),
            ProxyError::AlreadyComplete => {
                f.write_str("PROXY protocol reader fed again after the header was complete")
            }
        }
    }
}

impl std::error::Error for ProxyError {}

const V1_PREFIX: &[u8] = b"PROXY ";
/// Longest legal v1 line, CRLF included (spec section 2.1).
const V1_MAX_LEN: usize = 107;
const V2_SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
const V2_FIXED_LEN: usize = 16;

/// True iff `data` starts with `"PROXY "` or the 12-byte v2 signature, or is non-empty and
/// shorter than that and a prefix of either (so it may still turn into one).
///
/// Meant for a caller whose HTTP parser choked on buffered bytes after a header was
/// already consumed: a second header split across reads is not caught by
/// [`ProxyReader::feed`] (which only flags one already visible), so this names the cause.
/// Empty input returns false: there is nothing to judge.
pub fn looks_like_proxy_header(data: &[u8]) -> bool {
    let matches = |sig: &[u8]| {
        let n = data.len().min(sig.len());
        n > 0 && data[..n] == sig[..n]
    };
    matches(V1_PREFIX) || matches(V2_SIG)
}

/// Whether the bytes after a header clearly start another one. Stricter than
/// [`looks_like_proxy_header`] so that e.g. a `"POST"` split after `"P"` isn't misread.
/// Only a whole v2 signature counts: a shorter prefix of it (`"\r\n\r\n"` may also be
/// blank lines before an HTTP request line) could turn out not to be one once more bytes
/// arrive, which would make the verdict depend on where the reads were cut.
fn starts_second_header(rest: &[u8]) -> bool {
    rest.starts_with(b"PROXY") || rest.starts_with(V2_SIG)
}

#[derive(Debug)]
enum State {
    Reading,
    Done,
    Failed(ProxyError),
}

/// Sans-I/O reader: the header may arrive split over many reads (one byte at a time works)
/// or in the same read as the HTTP request that follows.
#[derive(Debug)]
pub struct ProxyReader {
    versions: Versions,
    max_header_bytes: usize,
    /// Header prefix seen so far; never more than max(107, 16 + v2 length) bytes.
    buf: Vec<u8>,
    state: State,
}

impl ProxyReader {
    /// `max_header_bytes` bounds v2 headers (v1 is always bounded by 107 bytes).
    pub fn new(versions: Versions, max_header_bytes: usize) -> Self {
        ProxyReader {
            versions,
            max_header_bytes,
            buf: Vec::new(),
            state: State::Reading,
        }
    }

    /// See the free function [`looks_like_proxy_header`].
    pub fn looks_like_proxy_header(data: &[u8]) -> bool {
        looks_like_proxy_header(data)
    }

    /// `Ok(None)`: need more bytes. `Ok(Some((header, rest)))`: complete; `rest` is the
    /// suffix of `data` after the header (it may hold the HTTP request; the caller keeps it).
    ///
    /// Rejects as soon as the bytes seen cannot be a prefix of an accepted header, so a plain
    /// `GET / HTTP/1.1` fails on its first byte. One nuance: bytes matching the signature of
    /// a version that is *not* accepted are read up to the full signature (6 bytes for v1,
    /// 12 for v2) so the error can say "v1 received but only v2 accepted" rather than
    /// guessing from `"P"`. Errors are sticky: later calls return the same error.
    pub fn feed<'a>(
        &mut self,
        data: &'a [u8],
    ) -> Result<Option<(ProxyHeader, &'a [u8])>, ProxyError> {
        match &self.state {
            State::Reading => {}
            State::Done => return Err(ProxyError::AlreadyComplete),
            State::Failed(e) => return Err(e.clone()),
        }
        let result = self.feed_inner(data);
        match &result {
            Ok(None) => {}
            Ok(Some(_)) => {
                self.state = State::Done;
                self.buf = Vec::new();
            }
            Err(e) => {
                self.state = State::Failed(e.clone());
                self.buf = Vec::new();
            }
        }
        result
    }

    /// Bytes held internally (a header prefix split across reads).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    fn feed_inner<'a>(
        &mut self,
        data: &'a [u8],
    ) -> Result<Option<(ProxyHeader, &'a [u8])>, ProxyError> {
        if self.buf.is_empty() {
            // Fast path: the whole header usually arrives in the first read; no copy.
            return match parse(data, self.versions, self.max_header_bytes)? {
                Some(h) => {
                    let rest = &data[h.header_len..];
                    finish(h, rest)
                }
                None => {
                    // Incomplete means all of `data` is header prefix, so this is bounded.
                    self.buf.extend_from_slice(data);
                    Ok(None)
                }
            };
        }
        let mut data = data;
        while !data.is_empty() {
            // Append only bytes that can belong to the header so `rest` stays a suffix of
            // the caller's slice and the buffer never holds request bytes.
            let take = append_limit(&self.buf, data);
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if let Some(h) = parse(&self.buf, self.versions, self.max_header_bytes)? {
                debug_assert_eq!(h.header_len, self.buf.len());
                return finish(h, data);
            }
        }
        Ok(None)
    }
}

fn finish(h: ProxyHeader, rest: &[u8]) -> Result<Option<(ProxyHeader, &[u8])>, ProxyError> {
    if starts_second_header(rest) {
        return Err(ProxyError::SecondHeader);
    }
    Ok(Some((h, rest)))
}

/// How many bytes of `data` may be appended to the non-empty, still-incomplete `buf`
/// without reaching past the end of the header. Always ≥ 1 for non-empty `data`.
fn append_limit(buf: &[u8], data: &[u8]) -> usize {
    if buf[0] == b'P' {
        // v1: up to and including the first LF, never beyond 107 bytes in total.
        let room = (V1_MAX_LEN - buf.len()).min(data.len());
        data[..room]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(room, |i| i + 1)
    } else if buf.len() < V2_FIXED_LEN {
        (V2_FIXED_LEN - buf.len()).min(data.len())
    } else {
        (v2_total_len(buf) - buf.len()).min(data.len())
    }
}

fn v2_total_len(buf: &[u8]) -> usize {
    V2_FIXED_LEN + usize::from(u16::from_be_bytes([buf[14], buf[15]]))
}

/// Parses a header at the start of `buf`: Ok(None) if `buf` is a valid but incomplete prefix.
fn parse(buf: &[u8], versions: Versions, max: usize) -> Result<Option<ProxyHeader>, ProxyError> {
    if buf.is_empty() {
        return Ok(None);
    }
    let prefix_of = |sig: &[u8]| {
        let n = buf.len().min(sig.len());
        buf[..n] == sig[..n]
    };
    if prefix_of(V1_PREFIX) {
        if versions == Versions::V2 {
            return if buf.len() >= V1_PREFIX.len() {
                Err(ProxyError::VersionNotAccepted {
                    received: 1,
                    accepted: 2,
                })
            } else {
                Ok(None)
            };
        }
        parse_v1(buf)
    } else if prefix_of(V2_SIG) {
        if versions == Versions::V1 {
            return if buf.len() >= V2_SIG.len() {
                Err(ProxyError::VersionNotAccepted {
                    received: 2,
                    accepted: 1,
                })
            } else {
                Ok(None)
            };
        }
        parse_v2(buf, max)
    } else {
        Err(ProxyError::NotProxy)
    }
}

// ---------------------------------------------------------------------------------------
// v1

fn malformed_v1(what: impl Into<String>) -> ProxyError {
    ProxyError::MalformedV1(what.into())
}

/// Log-safe rendering of peer-controlled bytes.
fn show(bytes: &[u8]) -> String {
    const MAX: usize = 48;
    let mut s = bytes[..bytes.len().min(MAX)].escape_ascii().to_string();
    if bytes.len() > MAX {
        s.push('…');
    }
    s
}

fn parse_v1(buf: &[u8]) -> Result<Option<ProxyHeader>, ProxyError> {
    if buf.len() < V1_PREFIX.len() {
        return Ok(None);
    }
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    match window.iter().position(|&b| b == b'\n') {
        Some(lf) => {
            // First what a reader fed byte by byte saw before the LF, so the error is the
            // same however the line was split (e.g. a bad protocol, then LF without CR).
            parse_v1(&buf[..lf])?;
            if buf[lf - 1] != b'\r' {
                return Err(malformed_v1("line ends with LF without CR"));
            }
            let line = &buf[V1_PREFIX.len()..lf - 1];
            let addresses =
                parse_v1_fields(line, true)?.expect("a complete line either parses or errors");
            Ok(Some(ProxyHeader {
                version: 1,
                addresses,
                authority: None,
                alpn: None,
                header_len: lf + 1,
            }))
        }
        None => {
            // Validate what we have so garbage is refused now, not after 107 bytes.
            let mut line = &window[V1_PREFIX.len()..];
            if let Some(stripped) = line.strip_suffix(b"\r") {
                line = stripped; // CR waiting for its LF
            }
            parse_v1_fields(line, false)?;
            if buf.len() >= V1_MAX_LEN {
                return Err(ProxyError::V1TooLong);
            }
            Ok(None)
        }
    }
}

const V1_FIELDS: [&str; 5] = [
    "protocol",
    "source address",
    "destination address",
    "source port",
    "destination port",
];

/// Validates the v1 fields after "PROXY " (without CRLF). With `complete == false` the
/// line is a prefix and its last field may still grow: returns Ok(None) unless it's wrong.
fn parse_v1_fields(line: &[u8], complete: bool) -> Result<Option<Addresses>, ProxyError> {
    if let Some(cr) = line.iter().position(|&b| b == b'\r') {
        // Whatever was wrong before the CR was reported before the CR arrived.
        parse_v1_fields(&line[..cr], false)?;
        return Err(malformed_v1("CR not followed by LF"));
    }
    let proto_end = line.iter().position(|&b| b == b' ');
    let proto = &line[..proto_end.unwrap_or(line.len())];
    let proto_done = proto_end.is_some() || complete;
    // UNKNOWN: the receiver must ignore everything up to the CRLF (spec 2.1).
    if proto == b"UNKNOWN" && proto_done {
        return Ok(complete.then_some(Addresses::Unknown));
    }
    let is_v6 = match proto {
        b"TCP4" => false,
        b"TCP6" => true,
        b"" if proto_done => return Err(malformed_v1("empty protocol field (double space?)")),
        _ => {
            // Report the shortest wrong prefix so split reads give the same message.
            let known = [&b"TCP4"[..], b"TCP6", b"UNKNOWN"];
            let wrong =
                (1..=proto.len()).find(|&n| !known.iter().any(|k| k.starts_with(&proto[..n])));
            return match wrong {
                Some(n) => Err(malformed_v1(format!(
                    "unknown protocol starting \"{}\" (expected TCP4, TCP6 or UNKNOWN)",
                    show(&proto[..n])
                ))),
                None if !proto_done => Ok(None),
                None => Err(malformed_v1(format!(
                    "unknown protocol \"{}\" (expected TCP4, TCP6 or UNKNOWN)",
                    show(proto)
                ))),
            };
        }
    };
    let Some(proto_end) = proto_end else {
        // "TCP4" then end of line (complete) — or still waiting for the space.
        return if complete {
            Err(malformed_v1("missing source address"))
        } else {
            Ok(None)
        };
    };
    let tokens: Vec<&[u8]> = line[proto_end + 1..].split(|&b| b == b' ').collect();
    let mut ips = [None; 2];
    let mut ports = [0u16; 2];
    for (i, &tok) in tokens.iter().enumerate() {
        let field = i + 1;
        let done = complete || i + 1 < tokens.len();
        if field >= V1_FIELDS.len() {
            return Err(malformed_v1("unexpected data after the destination port"));
        }
        let name = V1_FIELDS[field];
        if tok.is_empty() {
            if done {
                return Err(malformed_v1(format!("empty {name} (double space?)")));
            }
            continue;
        }
        if field <= 2 {
            if done {
                ips[field - 1] = Some(parse_v1_ip(tok, is_v6, name)?);
            } else {
                check_ip_prefix(tok, is_v6, name)?;
            }
        } else {
            ports[field - 3] = parse_port_prefix(tok, name)?;
        }
    }
    if !complete {
        return Ok(None);
    }
    if tokens.len() < 4 {
        return Err(malformed_v1(format!(
            "missing {}",
            V1_FIELDS[tokens.len() + 1]
        )));
    }
    let (Some(src), Some(dst)) = (ips[0], ips[1]) else {
        unreachable!("all four fields were validated")
    };
    Ok(Some(Addresses::Inet {
        source: SocketAddr::new(src, ports[0]),
        destination: SocketAddr::new(dst, ports[1]),
    }))
}

fn ip_kind(is_v6: bool) -> &'static str {
    if is_v6 {
        "IPv6 (TCP6)"
    } else {
        "IPv4 (TCP4)"
    }
}

/// Character and length checks, left to right, so a prefix fails exactly like the whole
/// token would: the error (and log line) doesn't depend on how the bytes were split.
fn check_ip_prefix(tok: &[u8], is_v6: bool, name: &str) -> Result<(), ProxyError> {
    // Longest textual forms: 15 ("255.255.255.255") and 45 (IPv6 with embedded IPv4).
    let max = if is_v6 { 45 } else { 15 };
    for (i, &b) in tok.iter().enumerate() {
        if i == max {
            return Err(malformed_v1(format!(
                "{name} is longer than {max} characters, too long for an {} address",
                ip_kind(is_v6)
            )));
        }
        let ok = b.is_ascii_digit() || b == b'.' || (is_v6 && (b.is_ascii_hexdigit() || b == b':'));
        if !ok {
            return Err(malformed_v1(format!(
                "{name} contains '{}', which can't appear in an {} address",
                b.escape_ascii(),
                ip_kind(is_v6)
            )));
        }
    }
    Ok(())
}

fn parse_v1_ip(tok: &[u8], is_v6: bool, name: &str) -> Result<IpAddr, ProxyError> {
    check_ip_prefix(tok, is_v6, name)?;
    // std's parsers are strict: no leading zeros (octal) in IPv4, no zone ids in IPv6.
    let text = std::str::from_utf8(tok).ok();
    let ip = if is_v6 {
        text.and_then(|t| t.parse::<Ipv6Addr>().ok())
            .map(IpAddr::V6)
    } else {
        text.and_then(|t| t.parse::<Ipv4Addr>().ok())
            .map(IpAddr::V4)
    };
    ip.ok_or_else(|| {
        malformed_v1(format!(
            "{name} \"{}\" is not a valid {} address",
            show(tok),
            ip_kind(is_v6)
        ))
    })
}

/// Digits only, at most 5, value ≤ 65535 — all decidable on a prefix.
fn parse_port_prefix(tok: &[u8], name: &str) -> Result<u16, ProxyError> {
    let mut v = 0u32;
    for (i, &b) in tok.iter().enumerate() {
        if !b.is_ascii_digit() {
            return Err(malformed_v1(format!(
                "{name} contains '{}' (decimal digits only)",
                b.escape_ascii()
            )));
        }
        if i == 5 {
            return Err(malformed_v1(format!("{name} has more than 5 digits")));
        }
        v = v * 10 + u32::from(b - b'0');
        // Checked per digit, so "655364" fails on its fifth digit as its prefix "65536" does.
        if v > u32::from(u16::MAX) {
            return Err(malformed_v1(format!("{name} {v} is above 65535")));
        }
    }
    Ok(v as u16)
}

// ---------------------------------------------------------------------------------------
// v2

const CMD_LOCAL: u8 = 0x0;
const CMD_PROXY: u8 = 0x1;
const FAM_UNSPEC: u8 = 0x00;
const FAM_TCP4: u8 = 0x11;
const FAM_TCP6: u8 = 0x21;
const FAM_UNIX_STREAM: u8 = 0x31;

const TLV_ALPN: u8 = 0x01;
const TLV_AUTHORITY: u8 = 0x02;
const TLV_CRC32C: u8 = 0x03;

fn parse_v2(buf: &[u8], max: usize) -> Result<Option<ProxyHeader>, ProxyError> {
    // Judge each fixed byte as soon as it's there.
    let Some(&ver_cmd) = buf.get(12) else {
        return Ok(None);
    };
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::UnsupportedV2Version(ver_cmd >> 4));
    }
    let cmd = ver_cmd & 0x0f;
    if cmd != CMD_LOCAL && cmd != CMD_PROXY {
        return Err(ProxyError::UnsupportedV2Command(cmd));
    }
    let Some(&fam) = buf.get(13) else {
        return Ok(None);
    };
    // LOCAL: the family is to be ignored, whatever it says.
    let addr_len = if cmd == CMD_PROXY {
        match fam {
            FAM_UNSPEC => 0,
            FAM_TCP4 => 12,
            FAM_TCP6 => 36,
            FAM_UNIX_STREAM => 216,
            0x12 | 0x22 | 0x32 => return Err(ProxyError::V2Datagram),
            _ => return Err(ProxyError::UnsupportedV2Family(fam)),
        }
    } else {
        0
    };
    if buf.len() < V2_FIXED_LEN {
        return Ok(None);
    }
    let total = v2_total_len(buf);
    // Checked before buffering the rest, so an absurd length costs nothing.
    if total > max {
        return Err(ProxyError::V2TooLarge {
            header_len: total,
            max,
        });
    }
    let len = total - V2_FIXED_LEN;
    if len < addr_len {
        return Err(ProxyError::V2AddressTooShort {
            family: fam,
            len,
            needed: addr_len,
        });
    }
    if buf.len() < total {
        return Ok(None);
    }
    let header = &buf[..total];
    let a = &header[V2_FIXED_LEN..];
    let mut out = ProxyHeader {
        version: 2,
        addresses: Addresses::Local,
        authority: None,
        alpn: None,
        header_len: total,
    };
    if cmd == CMD_LOCAL {
        return Ok(Some(out));
    }
    out.addresses = match fam {
        FAM_TCP4 => {
            let ip = |o: usize| IpAddr::from([a[o], a[o + 1], a[o + 2], a[o + 3]]);
            Addresses::Inet {
                source: SocketAddr::new(ip(0), be16(&a[8..])),
                destination: SocketAddr::new(ip(4), be16(&a[10..])),
            }
        }
        FAM_TCP6 => {
            let ip = |o: usize| {
                let mut b = [0u8; 16];
                b.copy_from_slice(&a[o..o + 16]);
                IpAddr::from(b)
            };
            Addresses::Inet {
                source: SocketAddr::new(ip(0), be16(&a[32..])),
                destination: SocketAddr::new(ip(16), be16(&a[34..])),
            }
        }
        FAM_UNIX_STREAM => {
            // sun_path is NUL-padded; trimming only the tail keeps abstract names (leading NUL).
            let path = |s: &[u8]| {
                let end = s.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
                s[..end].to_vec()
            };
            Addresses::Unix {
                source: path(&a[..108]),
                destination: path(&a[108..216]),
            }
        }
        // UNSPEC: "the receiver should ignore address information" — the whole block.
        _ => {
            out.addresses = Addresses::Unknown;
            return Ok(Some(out));
        }
    };
    parse_tlvs(header, V2_FIXED_LEN + addr_len, &mut out)?;
    Ok(Some(out))
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn parse_tlvs(header: &[u8], start: usize, out: &mut ProxyHeader) -> Result<(), ProxyError> {
    let end = header.len();
    let mut pos = start;
    let mut crc_at = None;
    while pos < end {
        if end - pos < 3 {
            return Err(ProxyError::V2TlvOverrun {
                tlv_type: None,
                offset: pos,
            });
        }
        let t = header[pos];
        let vstart = pos + 3;
        let vend = vstart + usize::from(be16(&header[pos + 1..]));
        if vend > end {
            return Err(ProxyError::V2TlvOverrun {
                tlv_type: Some(t),
                offset: pos,
            });
        }
        let value = &header[vstart..vend];
        match t {
            TLV_ALPN => out.alpn = Some(value.to_vec()),
            TLV_AUTHORITY => {
                let s = std::str::from_utf8(value).map_err(|_| {
                    ProxyError::MalformedV2(format!(
                        "AUTHORITY TLV \"{}\" is not UTF-8",
                        show(value)
                    ))
                })?;
                out.authority = Some(s.to_owned());
            }
            TLV_CRC32C => {
                if value.len() != 4 {
                    return Err(ProxyError::MalformedV2(format!(
                        "CRC32C TLV has {} bytes instead of 4",
                        value.len()
                    )));
                }
                if crc_at.replace(vstart).is_some() {
                    return Err(ProxyError::MalformedV2("more than one CRC32C TLV".into()));
                }
            }
            // NOOP, SSL, NETNS, vendor TLVs (e.g. AWS 0xEA): nothing wsrt needs.
            _ => {}
        }
        pos = vend;
    }
    if let Some(at) = crc_at {
        let announced =
            u32::from_be_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]]);
        // Checksum covers the whole header with the CRC value itself zeroed.
        let mut crc = !0;
        crc = crc32c_update(crc, &header[..at]);
        crc = crc32c_update(crc, &[0; 4]);
        crc = crc32c_update(crc, &header[at + 4..]);
        let computed = !crc;
        if computed != announced {
            return Err(ProxyError::V2CrcMismatch {
                announced,
                computed,
            });
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// CRC32C (Castagnoli), reflected polynomial 0x82F63B78, table-driven.

const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

fn crc32c_update(mut crc: u32, data: &[u8]) -> u32 {
    for &b in data {
        crc = CRC32C_TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

/// CRC32C of `data` (as used by the PROXY v2 CRC32C TLV).
pub fn crc32c(data: &[u8]) -> u32 {
    !crc32c_update(!0, data)
}

/// Build a v2 header (tests, fuzz seeds, the bench's load generator).
pub fn encode_v2(
    source: SocketAddr,
    destination: SocketAddr,
    tlvs: &[(u8, &[u8])],
    with_crc: bool,
) -> Vec<u8> {
    let mut out = V2_SIG.to_vec();
    out.push(0x21);
    let mut body = Vec::new();
    match (source, destination) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            out.push(0x11);
            body.extend_from_slice(&s.ip().octets());
            body.extend_from_slice(&d.ip().octets());
            body.extend_from_slice(&s.port().to_be_bytes());
            body.extend_from_slice(&d.port().to_be_bytes());
        }
        (s, d) => {
            out.push(0x21);
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            body.extend_from_slice(&v6(s).octets());
            body.extend_from_slice(&v6(d).octets());
            body.extend_from_slice(&s.port().to_be_bytes());
            body.extend_from_slice(&d.port().to_be_bytes());
        }
    }
    for (kind, value) in tlvs {
        body.push(*kind);
        body.extend_from_slice(&(value.len() as u16).to_be_bytes());
        body.extend_from_slice(value);
    }
    let crc_at = if with_crc {
        body.extend_from_slice(&[0x03, 0, 4]);
        let at = V2_FIXED_LEN + body.len();
        body.extend_from_slice(&[0; 4]);
        Some(at)
    } else {
        None
    };
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(&body);
    if let Some(at) = crc_at {
        let crc = crc32c(&out);
        out[at..at + 4].copy_from_slice(&crc.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQ: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n";
    const MAX: usize = 4096;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn inet(src: &str, dst: &str) -> Addresses {
        Addresses::Inet {
            source: sa(src),
            destination: sa(dst),
        }
    }

    fn header(version: u8, addresses: Addresses, header_len: usize) -> ProxyHeader {
        ProxyHeader {
            version,
            addresses,
            authority: None,
            alpn: None,
            header_len,
        }
    }

    /// Builds a v2 header; with `crc` a CRC32C TLV is appended and filled in.
    fn v2(ver_cmd: u8, fam: u8, addr: &[u8], tlvs: &[(u8, &[u8])], crc: bool) -> Vec<u8> {
        let mut body = addr.to_vec();
        for (t, v) in tlvs {
            body.push(*t);
            body.extend((v.len() as u16).to_be_bytes());
            body.extend(*v);
        }
        let crc_at = crc.then(|| {
            body.extend([TLV_CRC32C, 0, 4]);
            let at = V2_FIXED_LEN + body.len();
            body.extend([0; 4]);
            at
        });
        let mut h = V2_SIG.to_vec();
        h.extend([ver_cmd, fam]);
        h.extend((body.len() as u16).to_be_bytes());
        h.extend(body);
        if let Some(at) = crc_at {
            let c = crc32c(&h);
            h[at..at + 4].copy_from_slice(&c.to_be_bytes());
        }
        h
    }

    fn addr4(src: [u8; 4], dst: [u8; 4], sp: u16, dp: u16) -> Vec<u8> {
        let mut a = src.to_vec();
        a.extend(dst);
        a.extend(sp.to_be_bytes());
        a.extend(dp.to_be_bytes());
        a
    }

    fn addr6(src: &str, dst: &str, sp: u16, dp: u16) -> Vec<u8> {
        let mut a = src.parse::<Ipv6Addr>().unwrap().octets().to_vec();
        a.extend(dst.parse::<Ipv6Addr>().unwrap().octets());
        a.extend(sp.to_be_bytes());
        a.extend(dp.to_be_bytes());
        a
    }

    fn addr_unix(src: &[u8], dst: &[u8]) -> Vec<u8> {
        let mut a = vec![0u8; 216];
        a[..src.len()].copy_from_slice(src);
        a[108..108 + dst.len()].copy_from_slice(dst);
        a
    }

    fn valid_cases() -> Vec<(Vec<u8>, ProxyHeader)> {
        let mut cases = Vec::new();
        let mut add = |bytes: Vec<u8>, mut h: ProxyHeader| {
            h.header_len = bytes.len();
            cases.push((bytes, h));
        };
        add(
            b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n".to_vec(),
            header(1, inet("192.0.2.1:56324", "198.51.100.2:443"), 0),
        );
        add(
            b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n".to_vec(),
            header(1, inet("0.0.0.0:0", "255.255.255.255:65535"), 0),
        );
        add(
            b"PROXY TCP6 2001:db8::1 ::1 1 80\r\n".to_vec(),
            header(1, inet("[2001:db8::1]:1", "[::1]:80"), 0),
        );
        // Worst case from the spec: exactly 107 bytes.
        let long = b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        assert_eq!(long.len(), 104);
        add(
            long.to_vec(),
            header(
                1,
                inet(
                    "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
                    "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
                ),
                0,
            ),
        );
        add(
            b"PROXY UNKNOWN\r\n".to_vec(),
            header(1, Addresses::Unknown, 0),
        );
        add(
            b"PROXY UNKNOWN ffff::1  whatever  1 2\r\n".to_vec(),
            header(1, Addresses::Unknown, 0),
        );
        let mut max_unknown = b"PROXY UNKNOWN ".to_vec();
        max_unknown.resize(105, b'x');
        max_unknown.extend(b"\r\n");
        add(max_unknown, header(1, Addresses::Unknown, 0));

        add(
            v2(0x20, 0x00, &[], &[], false),
            header(2, Addresses::Local, 0),
        );
        // LOCAL ignores family and payload entirely.
        add(
            v2(0x20, 0x99, &[1, 2, 3], &[], false),
            header(2, Addresses::Local, 0),
        );
        add(
            v2(
                0x21,
                0x11,
                &addr4([192, 0, 2, 1], [10, 0, 0, 1], 56324, 443),
                &[],
                false,
            ),
            header(2, inet("192.0.2.1:56324", "10.0.0.1:443"), 0),
        );
        add(
            v2(
                0x21,
                0x21,
                &addr6("2001:db8::7", "2001:db8::1", 1234, 8080),
                &[],
                false,
            ),
            header(2, inet("[2001:db8::7]:1234", "[2001:db8::1]:8080"), 0),
        );
        add(
            v2(
                0x21,
                0x31,
                &addr_unix(b"/run/lb.sock", b"\0abstract"),
                &[],
                false,
            ),
            header(
                2,
                Addresses::Unix {
                    source: b"/run/lb.sock".to_vec(),
                    destination: b"\0abstract".to_vec(),
                },
                0,
            ),
        );
        add(
            v2(0x21, 0x00, &[], &[], false),
            header(2, Addresses::Unknown, 0),
        );
        add(
            v2(0x21, 0x00, &[9; 20], &[], false),
            header(2, Addresses::Unknown, 0),
        );
        let mut with_tlvs = header(2, inet("192.0.2.1:1", "10.0.0.1:443"), 0);
        with_tlvs.authority = Some("example.com".into());
        with_tlvs.alpn = Some(b"http/1.1".to_vec());
        add(
            v2(
                0x21,
                0x11,
                &addr4([192, 0, 2, 1], [10, 0, 0, 1], 1, 443),
                &[
                    (0x04, &[0; 5]),
                    (0x02, b"example.com"),
                    (0xEA, b"\x01vpce-0123"),
                    (0x01, b"http/1.1"),
                    (0x20, &[1, 0, 0, 0, 0]),
                    (0x30, b"netns"),
                    (0x04, &[]),
                ],
                false,
            ),
            with_tlvs.clone(),
        );
        add(
            v2(
                0x21,
                0x11,
                &addr4([192, 0, 2, 1], [10, 0, 0, 1], 1, 443),
                &[(0x02, b"example.com"), (0x01, b"http/1.1")],
                true,
            ),
            with_tlvs,
        );
        let mut ipv6_crc = header(2, inet("[::1]:5", "[::2]:6"), 0);
        ipv6_crc.authority = Some("ü.example".into());
        add(
            v2(
                0x21,
                0x21,
                &addr6("::1", "::2", 5, 6),
                &[(0x02, "ü.example".as_bytes())],
                true,
            ),
            ipv6_crc,
        );
        cases
    }

    fn accepting(h: &ProxyHeader) -> [Versions; 2] {
        let own = if h.version == 1 {
            Versions::V1
        } else {
            Versions::V2
        };
        [own, Versions::Any]
    }

    #[test]
    fn crc32c_known_vector() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn valid_headers_in_one_read() {
        for (bytes, want) in valid_cases() {
            for versions in accepting(&want) {
                let mut r = ProxyReader::new(versions, MAX);
                let (h, rest) = r.feed(&bytes).unwrap().unwrap();
                assert_eq!(h, want);
                assert!(rest.is_empty());

                let mut full = bytes.clone();
                full.extend(REQ);
                let mut r = ProxyReader::new(versions, MAX);
                let (h, rest) = r.feed(&full).unwrap().unwrap();
                assert_eq!((h, rest), (want.clone(), REQ));
                assert_eq!(r.buffered(), 0);
                assert_eq!(r.feed(b"x"), Err(ProxyError::AlreadyComplete));
            }
        }
    }

    #[test]
    #[cfg_attr(miri, ignore = "exhaustive: minutes under Miri; runs natively")]
    fn every_truncation_point_then_rest() {
        for (bytes, want) in valid_cases() {
            let mut full = bytes.clone();
            full.extend(REQ);
            for versions in accepting(&want) {
                for k in 0..bytes.len() {
                    let mut r = ProxyReader::new(versions, MAX);
                    assert_eq!(r.feed(&bytes[..k]), Ok(None), "{want:?} cut at {k}");
                    assert_eq!(r.buffered(), k);
                    let (h, rest) = r.feed(&full[k..]).unwrap().unwrap();
                    assert_eq!((h, rest), (want.clone(), REQ), "cut at {k}");
                }
            }
        }
    }

    #[test]
    #[cfg_attr(miri, ignore = "exhaustive: minutes under Miri; runs natively")]
    fn every_pair_of_cut_points() {
        for (bytes, want) in valid_cases() {
            let mut full = bytes.clone();
            full.extend(REQ);
            for i in 0..bytes.len() {
                for j in i..bytes.len() {
                    let mut r = ProxyReader::new(Versions::Any, MAX);
                    assert_eq!(r.feed(&full[..i]), Ok(None));
                    assert_eq!(r.feed(&full[i..j]), Ok(None));
                    let (h, rest) = r.feed(&full[j..]).unwrap().unwrap();
                    assert_eq!((h, rest), (want.clone(), REQ), "cuts {i} {j}");
                }
            }
        }
    }

    #[test]
    fn byte_at_a_time() {
        for (bytes, want) in valid_cases() {
            let mut full = bytes.clone();
            full.extend(REQ);
            let mut r = ProxyReader::new(Versions::Any, MAX);
            for (i, b) in full.iter().enumerate() {
                let out = r.feed(std::slice::from_ref(b)).unwrap();
                if i + 1 < bytes.len() {
                    assert_eq!(out, None);
                    assert!(r.buffered() <= V1_MAX_LEN.max(bytes.len()));
                } else {
                    let (h, rest) = out.unwrap();
                    assert_eq!(h, want);
                    assert!(rest.is_empty());
                    break;
                }
            }
        }
    }

    /// The error must be the same whether the bytes arrive at once or one by one.
    fn expect_err(bytes: &[u8], versions: Versions, want: &ProxyError) {
        let mut r = ProxyReader::new(versions, MAX);
        assert_eq!(
            r.feed(bytes).as_ref().err(),
            Some(want),
            "{}",
            bytes.escape_ascii()
        );
        // Sticky.
        assert_eq!(r.feed(b"").as_ref().err(), Some(want));
        let mut r = ProxyReader::new(versions, MAX);
        let mut got = None;
        for b in bytes {
            match r.feed(std::slice::from_ref(b)) {
                Ok(None) => {}
                Ok(Some(h)) => panic!("accepted {h:?}"),
                Err(e) => {
                    got = Some(e);
                    break;
                }
            }
        }
        assert_eq!(got.as_ref(), Some(want), "{}", bytes.escape_ascii());
    }

    /// Bytes fed one at a time until the first error; returns how many were needed.
    fn bytes_until_error(bytes: &[u8], versions: Versions) -> usize {
        let mut r = ProxyReader::new(versions, MAX);
        for (i, b) in bytes.iter().enumerate() {
            if r.feed(std::slice::from_ref(b)).is_err() {
                return i + 1;
            }
        }
        panic!("no error for {}", bytes.escape_ascii());
    }

    #[test]
    fn plain_http_rejected_on_first_byte() {
        for versions in [Versions::V1, Versions::V2, Versions::Any] {
            for req in [&b"GET / HTTP/1.1\r\n"[..], b"\x16\x03\x01", b"OPTIONS *"] {
                expect_err(req, versions, &ProxyError::NotProxy);
                assert_eq!(bytes_until_error(req, versions), 1);
            }
            // "POST" shares only "P" with "PROXY ".
            expect_err(b"POST / HTTP/1.1\r\n", versions, &ProxyError::NotProxy);
            expect_err(b"PRI * HTTP/2.0\r\n", versions, &ProxyError::NotProxy);
        }
        assert_eq!(bytes_until_error(b"POST /", Versions::Any), 2);
        assert_eq!(bytes_until_error(b"PRI * HTTP/2.0", Versions::Any), 3);
        assert_eq!(bytes_until_error(b"PROXY!", Versions::Any), 6);
        assert_eq!(bytes_until_error(b"\r\n\r\nGET", Versions::Any), 5);
        assert_eq!(
            ProxyError::NotProxy.to_string(),
            "expected a PROXY protocol header — is proxy protocol enabled on the load balancer?"
        );
    }

    #[test]
    fn version_not_accepted() {
        let v1 = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n";
        let e12 = ProxyError::VersionNotAccepted {
            received: 1,
            accepted: 2,
        };
        expect_err(v1, Versions::V2, &e12);
        assert_eq!(bytes_until_error(v1, Versions::V2), 6);
        assert_eq!(
            e12.to_string(),
            "PROXY protocol v1 header received but proxy_protocol only accepts v2"
        );
        let v2h = v2(0x21, 0x11, &addr4([1; 4], [2; 4], 1, 2), &[], false);
        let e21 = ProxyError::VersionNotAccepted {
            received: 2,
            accepted: 1,
        };
        expect_err(&v2h, Versions::V1, &e21);
        assert_eq!(bytes_until_error(&v2h, Versions::V1), 12);
        assert_eq!(
            e21.to_string(),
            "PROXY protocol v2 header received but proxy_protocol only accepts v1"
        );
    }

    #[test]
    fn v1_syntax_errors() {
        let cases: &[(&[u8], &str)] = &[
            (
                b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
                "empty source address (double space?)",
            ),
            (
                b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
                "empty protocol field (double space?)",
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 80  443\r\n",
                "empty destination port (double space?)",
            ),
            (
                b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",
                "source address \"1.2.3.256\" is not a valid IPv4 (TCP4) address",
            ),
            (
                b"PROXY TCP4 1.2.3.4 01.2.3.4 1 2\r\n",
                "destination address \"01.2.3.4\" is not a valid IPv4 (TCP4) address",
            ),
            (
                b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n",
                "source address \"1.2.3\" is not a valid IPv4 (TCP4) address",
            ),
            (
                b"PROXY TCP4 ::1 ::1 1 2\r\n",
                "source address contains ':', which can't appear in an IPv4 (TCP4) address",
            ),
            (
                b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
                "source address \"1.2.3.4\" is not a valid IPv6 (TCP6) address",
            ),
            (
                b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",
                "source address contains '%', which can't appear in an IPv6 (TCP6) address",
            ),
            (
                b"PROXY TCP6 2001:db8:::1 ::1 1 2\r\n",
                "source address \"2001:db8:::1\" is not a valid IPv6 (TCP6) address",
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
                "source port 65536 is above 65535",
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 123456\r\n",
                "destination port has more than 5 digits",
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 +80 2\r\n",
                "source port contains '+' (decimal digits only)",
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
                "source port contains '-' (decimal digits only)",
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 0x50\r\n",
                "destination port contains 'x' (decimal digits only)",
            ),
            (
                b"PROXY TCP4 255.255.255.2555 5.6.7.8 1 2\r\n",
                "source address is longer than 15 characters, too long for an IPv4 (TCP4) address",
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
                "unexpected data after the destination port",
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
                "unexpected data after the destination port",
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \r\n",
                "empty destination port (double space?)",
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
                "missing destination port",
            ),
            (b"PROXY TCP4 1.2.3.4\r\n", "missing destination address"),
            (b"PROXY TCP4\r\n", "missing source address"),
            (b"PROXY \r\n", "empty protocol field (double space?)"),
            (
                b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
                "unknown protocol starting \"UD\" (expected TCP4, TCP6 or UNKNOWN)",
            ),
            (
                b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n",
                "unknown protocol starting \"t\" (expected TCP4, TCP6 or UNKNOWN)",
            ),
            (
                b"PROXY UNKNOWNX\r\n",
                "unknown protocol starting \"UNKNOWNX\" (expected TCP4, TCP6 or UNKNOWN)",
            ),
            (
                b"PROXY TCP 1.2.3.4 5.6.7.8 1 2\r\n",
                "unknown protocol \"TCP\" (expected TCP4, TCP6 or UNKNOWN)",
            ),
            (b"PROXY TCP4\r\n\r\n", "missing source address"),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
                "line ends with LF without CR",
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX",
                "CR not followed by LF",
            ),
            (
                b"PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n",
                "source address contains '\\t', which can't appear in an IPv4 (TCP4) address",
            ),
        ];
        for (bytes, what) in cases {
            let want = ProxyError::MalformedV1((*what).to_owned());
            expect_err(bytes, Versions::V1, &want);
            expect_err(bytes, Versions::Any, &want);
            assert_eq!(
                want.to_string(),
                format!("malformed PROXY v1 header: {what}")
            );
        }
        // Garbage inside the line is refused on the offending byte, not at CRLF.
        assert_eq!(bytes_until_error(b"PROXY TCP4 1.2.x", Versions::Any), 16);
        assert_eq!(bytes_until_error(b"PROXY TCP4  ", Versions::Any), 12);
        assert_eq!(
            bytes_until_error(b"PROXY TCP4 1.2.3.4 5.6.7.8 65536", Versions::Any),
            32
        );
    }

    /// Found by fuzz/fuzz_targets/proxy_protocol.rs: a complete line with a bare LF (or a
    /// stray CR) was "LF without CR" ("CR not followed by LF") in one read, but the earlier
    /// field error when fed byte by byte; a 6-digit port over 65535 was "more than 5 digits"
    /// in one read but "above 65535" byte by byte.
    #[test]
    #[cfg_attr(miri, ignore = "exhaustive: minutes under Miri; runs natively")]
    fn v1_first_error_wins_however_split() {
        for (bytes, what) in [
            (
                &b"PROXY 6\x0c\n"[..],
                "unknown protocol starting \"6\" (expected TCP4, TCP6 or UNKNOWN)",
            ),
            (
                b"PROXY TCP4 1.2.x 5.6.7.8 1 2\n",
                "source address contains 'x', which can't appear in an IPv4 (TCP4) address",
            ),
            (b"PROXY TCP4  \n", "empty source address (double space?)"),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
                "line ends with LF without CR",
            ),
            (
                b"PROXY UN]xx\rx\r\n",
                "unknown protocol starting \"UN]\" (expected TCP4, TCP6 or UNKNOWN)",
            ),
            (b"PROXY TCP4 1.2.3.4 5\rx\r\n", "CR not followed by LF"),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 655364 1\r\n",
                "source port 65536 is above 65535",
            ),
        ] {
            let want = ProxyError::MalformedV1(what.to_owned());
            expect_err(bytes, Versions::Any, &want);
            for cut in 1..bytes.len() {
                let mut r = ProxyReader::new(Versions::Any, MAX);
                let got = r.feed(&bytes[..cut]).and_then(|_| r.feed(&bytes[cut..]));
                assert_eq!(got, Err(want.clone()), "cut {cut}");
            }
        }
    }

    #[test]
    fn v1_length_limit() {
        let mut line = b"PROXY UNKNOWN ".to_vec();
        line.resize(V1_MAX_LEN, b'x');
        expect_err(&line, Versions::Any, &ProxyError::V1TooLong);
        assert_eq!(bytes_until_error(&line, Versions::Any), V1_MAX_LEN);
        // CRLF one byte too late: 108 bytes.
        line.truncate(V1_MAX_LEN - 1);
        line.extend(b"\r\n");
        expect_err(&line, Versions::Any, &ProxyError::V1TooLong);
        // CR as byte 107 still waits for its LF, which would be byte 108.
        let mut cr_last = b"PROXY UNKNOWN ".to_vec();
        cr_last.resize(V1_MAX_LEN - 1, b'x');
        cr_last.push(b'\r');
        expect_err(&cr_last, Versions::Any, &ProxyError::V1TooLong);
        assert_eq!(
            ProxyError::V1TooLong.to_string(),
            "PROXY v1 header longer than 107 bytes"
        );
    }

    #[test]
    fn v2_oversize_rejected_after_fixed_part() {
        let mut h = V2_SIG.to_vec();
        h.extend([0x21, 0x11]);
        h.extend(5000u16.to_be_bytes());
        let want = ProxyError::V2TooLarge {
            header_len: 5016,
            max: MAX,
        };
        expect_err(&h, Versions::Any, &want);
        assert_eq!(
            want.to_string(),
            "PROXY v2 header of 5016 bytes exceeds proxy_max_header_bytes (4096)"
        );
        // Exactly at the limit is fine.
        let tlv = vec![0u8; 100];
        let h = v2(
            0x21,
            0x11,
            &addr4([1; 4], [2; 4], 1, 2),
            &[(0x04, &tlv)],
            false,
        );
        let mut r = ProxyReader::new(Versions::Any, h.len());
        assert!(r.feed(&h).unwrap().is_some());
        let mut r = ProxyReader::new(Versions::Any, h.len() - 1);
        assert!(matches!(r.feed(&h), Err(ProxyError::V2TooLarge { .. })));
        // LOCAL is bounded too.
        let h = v2(0x20, 0x00, &[0; 64], &[], false);
        let mut r = ProxyReader::new(Versions::Any, 32);
        assert!(matches!(
            r.feed(&h[..16]),
            Err(ProxyError::V2TooLarge { .. })
        ));
    }

    #[test]
    fn v2_version_command_family() {
        let a = addr4([1; 4], [2; 4], 1, 2);
        expect_err(
            &v2(0x11, 0x11, &a, &[], false),
            Versions::Any,
            &ProxyError::UnsupportedV2Version(1),
        );
        expect_err(
            &v2(0x31, 0x11, &a, &[], false),
            Versions::Any,
            &ProxyError::UnsupportedV2Version(3),
        );
        expect_err(
            &v2(0x22, 0x11, &a, &[], false),
            Versions::Any,
            &ProxyError::UnsupportedV2Command(2),
        );
        expect_err(
            &v2(0x2f, 0x11, &a, &[], false),
            Versions::Any,
            &ProxyError::UnsupportedV2Command(0xf),
        );
        for fam in [0x12, 0x22, 0x32] {
            let h = v2(0x21, fam, &[0; 216], &[], false);
            expect_err(&h, Versions::Any, &ProxyError::V2Datagram);
            assert_eq!(bytes_until_error(&h, Versions::Any), 14);
        }
        for fam in [0x01, 0x02, 0x10, 0x13, 0x41, 0xff] {
            expect_err(
                &v2(0x21, fam, &[0; 216], &[], false),
                Versions::Any,
                &ProxyError::UnsupportedV2Family(fam),
            );
        }
        assert_eq!(
            ProxyError::V2Datagram.to_string(),
            "PROXY v2 header announces UDP (DGRAM); wsrt only serves TCP streams"
        );
        assert!(ProxyError::UnsupportedV2Family(0x41)
            .to_string()
            .starts_with("unsupported PROXY v2 family"));
    }

    #[test]
    fn v2_address_block_too_short() {
        for (fam, need) in [(0x11u8, 12usize), (0x21, 36), (0x31, 216)] {
            let h = v2(0x21, fam, &vec![0; need - 1], &[], false);
            let want = ProxyError::V2AddressTooShort {
                family: fam,
                len: need - 1,
                needed: need,
            };
            expect_err(&h, Versions::Any, &want);
            assert_eq!(bytes_until_error(&h, Versions::Any), 16);
        }
    }

    #[test]
    fn v2_tlv_errors() {
        let a = addr4([1; 4], [2; 4], 1, 2);
        // Value runs past the end: declare 10 bytes, provide 3.
        let mut h = v2(0x21, 0x11, &a, &[(0x02, b"abc")], false);
        h[16 + 12 + 2] = 10;
        let want = ProxyError::V2TlvOverrun {
            tlv_type: Some(0x02),
            offset: 28,
        };
        expect_err(&h, Versions::Any, &want);
        assert_eq!(
            want.to_string(),
            "PROXY v2 TLV 0x02 at byte 28 runs past the end of the header"
        );
        // Two stray bytes can't hold a TLV header.
        let mut a2 = a.clone();
        a2.extend([0x04, 0x00]);
        let h = v2(0x21, 0x11, &a2, &[], false);
        expect_err(
            &h,
            Versions::Any,
            &ProxyError::V2TlvOverrun {
                tlv_type: None,
                offset: 28,
            },
        );
        // Nested overrun past the header even though the connection has more bytes.
        let mut h = v2(0x21, 0x11, &a, &[(0x01, b"h2")], false);
        h[16 + 12 + 2] = 3;
        h.extend(b"GET / HTTP/1.1\r\n");
        let mut r = ProxyReader::new(Versions::Any, MAX);
        assert!(matches!(r.feed(&h), Err(ProxyError::V2TlvOverrun { .. })));

        let h = v2(0x21, 0x11, &a, &[(0x02, b"\xff\xfe")], false);
        expect_err(
            &h,
            Versions::Any,
            &ProxyError::MalformedV2("AUTHORITY TLV \"\\xff\\xfe\" is not UTF-8".into()),
        );
        let h = v2(0x21, 0x11, &a, &[(0x03, &[0, 0, 0])], false);
        expect_err(
            &h,
            Versions::Any,
            &ProxyError::MalformedV2("CRC32C TLV has 3 bytes instead of 4".into()),
        );
    }

    #[test]
    fn v2_crc() {
        let a = addr4([192, 0, 2, 1], [10, 0, 0, 1], 1, 443);
        let good = v2(0x21, 0x11, &a, &[(0x02, b"example.com")], true);
        let mut r = ProxyReader::new(Versions::Any, MAX);
        assert!(r.feed(&good).unwrap().is_some());
        // Any single flipped bit outside the CRC value is caught.
        for i in 13..good.len() - 4 {
            if i == 14 || i == 15 {
                continue; // length bytes change the framing instead
            }
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            let mut r = ProxyReader::new(Versions::Any, MAX);
            let res = r.feed(&bad);
            if (16..16 + 12).contains(&i) {
                assert!(
                    matches!(res, Err(ProxyError::V2CrcMismatch { .. })),
                    "byte {i}: {res:?}"
                );
            } else {
                assert!(res.is_err(), "byte {i}");
            }
        }
        let mut bad = good.clone();
        let n = bad.len();
        bad[n - 1] ^= 0xff;
        let mut r = ProxyReader::new(Versions::Any, MAX);
        let err = r.feed(&bad).unwrap_err();
        assert!(err.to_string().starts_with("PROXY v2 CRC32C mismatch"));
        // Two CRC TLVs are ambiguous.
        let h = v2(0x21, 0x11, &a, &[(0x03, &[0; 4]), (0x03, &[0; 4])], false);
        expect_err(
            &h,
            Versions::Any,
            &ProxyError::MalformedV2("more than one CRC32C TLV".into()),
        );
    }

    #[test]
    fn second_header() {
        let v1 = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec();
        let v2h = v2(0x21, 0x11, &addr4([1; 4], [2; 4], 1, 2), &[], false);
        for (first, second) in [
            (&v1, &v1[..]),
            (&v1, &b"PROXY"[..]),
            (&v1, &v2h[..]),
            (&v1, &v2h[..12]),
            (&v2h, &v1[..]),
            (&v2h, &v2h[..]),
        ] {
            let mut both = first.clone();
            both.extend(second);
            let mut r = ProxyReader::new(Versions::Any, MAX);
            assert_eq!(r.feed(&both), Err(ProxyError::SecondHeader));
            // Also when the second one arrives with the last byte of the first.
            let mut r = ProxyReader::new(Versions::Any, MAX);
            assert_eq!(r.feed(&first[..first.len() - 1]), Ok(None));
            assert_eq!(
                r.feed(&both[first.len() - 1..]),
                Err(ProxyError::SecondHeader)
            );
        }
        // Too short to tell: handed back; the caller can use looks_like_proxy_header later.
        let mut both = v1.clone();
        both.extend(b"PROX");
        let mut r = ProxyReader::new(Versions::Any, MAX);
        let (_, rest) = r.feed(&both).unwrap().unwrap();
        assert_eq!(rest, b"PROX");
        assert!(looks_like_proxy_header(rest));
        assert!(ProxyError::SecondHeader
            .to_string()
            .contains("proxy protocol is enabled twice"));
        // Part of a v2 signature is handed back too (it may be blank lines, see below).
        let mut both = v1.clone();
        both.extend(&v2h[..11]);
        let mut r = ProxyReader::new(Versions::Any, MAX);
        let (_, rest) = r.feed(&both).unwrap().unwrap();
        assert_eq!(rest, &v2h[..11]);
        assert!(looks_like_proxy_header(rest));
    }

    /// Found by fuzz/fuzz_targets/proxy_protocol.rs: a request after blank lines was refused
    /// as a second header when a read ended inside "\r\n\r\n" (a v2 signature prefix), and
    /// accepted when the "GET" came in the same read.
    #[test]
    fn blank_lines_after_header_accepted_however_split() {
        let v2h = v2(0x21, 0x11, &addr4([1; 4], [2; 4], 1, 2), &[], false);
        let v1 = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec();
        let after = b"\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        for header in [v1, v2h] {
            let mut full = header.clone();
            full.extend(after);
            let mut r = ProxyReader::new(Versions::Any, MAX);
            let (h, rest) = r.feed(&full).unwrap().unwrap();
            assert_eq!((h.header_len, rest), (header.len(), &after[..]));
            for cut in header.len()..full.len() {
                let mut r = ProxyReader::new(Versions::Any, MAX);
                let (_, rest) = r.feed(&full[..cut]).unwrap().unwrap();
                assert_eq!(rest, &after[..cut - header.len()], "cut {cut}");
            }
        }
    }

    #[test]
    fn looks_like() {
        for yes in [
            &b"P"[..],
            b"PROX",
            b"PROXY ",
            b"PROXY TCP4 junk",
            b"\r\n\r",
            b"\r\n\r\n\0\r\nQUIT\n",
            b"\r\n\r\n\0\r\nQUIT\n\x21\x11",
        ] {
            assert!(looks_like_proxy_header(yes), "{}", yes.escape_ascii());
            assert!(ProxyReader::looks_like_proxy_header(yes));
        }
        for no in [
            &b""[..],
            b"PROXY\t",
            b"PROXYX",
            b"GET /",
            b"\r\n\r\n\0\r\nQUIT\r",
            b"POST",
        ] {
            assert!(!looks_like_proxy_header(no), "{}", no.escape_ascii());
        }
    }

    #[test]
    fn source_and_destination() {
        let mut r = ProxyReader::new(Versions::Any, MAX);
        let (h, _) = r
            .feed(b"PROXY TCP6 2001:db8::1 ::1 4711 443\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.source(), Some(sa("[2001:db8::1]:4711")));
        assert_eq!(h.destination(), Some(sa("[::1]:443")));
        let mut r = ProxyReader::new(Versions::Any, MAX);
        let (h, _) = r.feed(b"PROXY UNKNOWN\r\n").unwrap().unwrap();
        assert_eq!(h.source(), None);
    }

    #[test]
    fn buffer_never_holds_request_bytes() {
        let h = v2(0x21, 0x11, &addr4([1; 4], [2; 4], 1, 2), &[], false);
        let mut full = h.clone();
        full.extend(REQ);
        let mut r = ProxyReader::new(Versions::Any, MAX);
        assert_eq!(r.feed(&full[..5]), Ok(None));
        assert_eq!(r.buffered(), 5);
        let (_, rest) = r.feed(&full[5..]).unwrap().unwrap();
        assert_eq!(rest, REQ);
    }
}
