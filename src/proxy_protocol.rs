//! PROXY protocol v1 and v2 prefix parsing (haproxy's proxy-protocol.txt), sans-I/O.
//!
//! The header is required when the option is on and refused when it is off: the spec
//! forbids guessing. Decisions are taken as early as the bytes allow, so a plain HTTP
//! request is refused after its first byte, with a message that names the likely cause.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Which versions are accepted (the `proxy_protocol` option; `off` is handled by the caller).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Versions {
    V1,
    V2,
    Any,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Addresses {
    /// v2 LOCAL: the proxy's own connection (e.g. a load balancer health check).
    Local,
    /// v1 UNKNOWN or v2 UNSPEC.
    Unknown,
    Inet {
        source: SocketAddr,
        destination: SocketAddr,
    },
    Unix {
        source: Vec<u8>,
        destination: Vec<u8>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyHeader {
    pub version: u8,
    pub addresses: Addresses,
    /// TLV 0x02 (e.g. the TLS SNI the load balancer saw).
    pub authority: Option<String>,
    /// TLV 0x01.
    pub alpn: Option<Vec<u8>>,
    /// Bytes the header occupied on the wire.
    pub header_len: usize,
}

impl ProxyHeader {
    /// The client's address; None means "use the socket's own peer address".
    pub fn source(&self) -> Option<SocketAddr> {
        match &self.addresses {
            Addresses::Inet { source, .. } => Some(*source),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProxyError {
    /// The bytes are not a PROXY header at all.
    Missing {
        starts_with: String,
    },
    VersionNotAccepted {
        got: u8,
        accepted: Versions,
    },
    MalformedV1(String),
    V1TooLong,
    V2TooLong {
        len: usize,
        max: usize,
    },
    UnsupportedV2(String),
    Datagram,
    Crc32cMismatch,
    BadTlv(String),
    SecondHeader,
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyError::Missing { starts_with } => write!(
                f,
                "expected a PROXY protocol header — is proxy protocol enabled on the load balancer? (the connection starts with {starts_with})"
            ),
            ProxyError::VersionNotAccepted { got, accepted } => write!(
                f,
                "PROXY protocol v{got} header received but proxy_protocol only accepts {}",
                match accepted {
                    Versions::V1 => "v1",
                    Versions::V2 => "v2",
                    Versions::Any => "v1 and v2",
                }
            ),
            ProxyError::MalformedV1(why) => write!(f, "malformed PROXY v1 header: {why}"),
            ProxyError::V1TooLong => write!(f, "PROXY v1 header longer than 107 bytes"),
            ProxyError::V2TooLong { len, max } => write!(
                f,
                "PROXY v2 header of {len} bytes exceeds proxy_max_header_bytes ({max})"
            ),
            ProxyError::UnsupportedV2(why) => write!(f, "unsupported PROXY v2 header: {why}"),
            ProxyError::Datagram => write!(
                f,
                "PROXY v2 header announces UDP (DGRAM); wsrt only serves TCP streams"
            ),
            ProxyError::Crc32cMismatch => write!(f, "PROXY v2 CRC32C mismatch"),
            ProxyError::BadTlv(why) => write!(f, "malformed PROXY v2 TLV: {why}"),
            ProxyError::SecondHeader => write!(
                f,
                "second PROXY protocol header right after the first — proxy protocol is enabled twice along the path (e.g. on both the load balancer and nginx)"
            ),
        }
    }
}

impl std::error::Error for ProxyError {}

const V1_PREFIX: &[u8] = b"PROXY ";
const V1_MAX: usize = 107;
const V2_SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
const V2_FIXED: usize = 16;

/// True if `data` starts like a PROXY header: "PROXY " or the v2 signature, or is a
/// (shorter) prefix of either. Callers pass what they have read so far.
pub fn looks_like_proxy_header(data: &[u8]) -> bool {
    let prefix_of = |sig: &[u8]| {
        let n = data.len().min(sig.len());
        n > 0 && data[..n] == sig[..n]
    };
    prefix_of(V1_PREFIX) || prefix_of(V2_SIG)
}

/// Accumulates a PROXY header arriving in any pieces.
pub struct ProxyReader {
    versions: Versions,
    max_header_bytes: usize,
    buf: Vec<u8>,
}

impl ProxyReader {
    pub fn new(versions: Versions, max_header_bytes: usize) -> Self {
        ProxyReader {
            versions,
            max_header_bytes,
            buf: Vec::new(),
        }
    }

    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Ok(None): need more. Ok(Some((header, rest))): complete; `rest` is the suffix of
    /// `data` after the header (usually the HTTP request), for the caller to keep.
    pub fn feed<'a>(
        &mut self,
        data: &'a [u8],
    ) -> Result<Option<(ProxyHeader, &'a [u8])>, ProxyError> {
        if self.buf.is_empty() {
            // Fast path: the whole header in this read.
            return match parse(data, self.versions, self.max_header_bytes)? {
                Some(h) => {
                    let rest = &data[h.header_len..];
                    check_second(rest)?;
                    Ok(Some((h, rest)))
                }
                None => {
                    self.buf.extend_from_slice(data);
                    Ok(None)
                }
            };
        }
        let old = self.buf.len();
        self.buf.extend_from_slice(data);
        match parse(&self.buf, self.versions, self.max_header_bytes)? {
            Some(h) => {
                let rest = &data[h.header_len - old..];
                check_second(rest)?;
                self.buf = Vec::new();
                Ok(Some((h, rest)))
            }
            None => Ok(None),
        }
    }
}

fn check_second(rest: &[u8]) -> Result<(), ProxyError> {
    let starts = |sig: &[u8]| rest.len() >= 5 && rest.starts_with(&sig[..5.min(sig.len())]);
    if starts(V1_PREFIX) || starts(V2_SIG) {
        return Err(ProxyError::SecondHeader);
    }
    Ok(())
}

/// Parse a header from the start of `buf`: None = a valid prefix, need more bytes.
fn parse(buf: &[u8], versions: Versions, max: usize) -> Result<Option<ProxyHeader>, ProxyError> {
    if buf.is_empty() {
        return Ok(None);
    }
    let v1 = prefix_match(buf, V1_PREFIX);
    let v2 = prefix_match(buf, V2_SIG);
    match (v1, v2) {
        (false, false) => Err(ProxyError::Missing {
            starts_with: describe(buf),
        }),
        (true, _) if versions == Versions::V2 => Err(ProxyError::VersionNotAccepted {
            got: 1,
            accepted: versions,
        }),
        (_, true) if versions == Versions::V1 => Err(ProxyError::VersionNotAccepted {
            got: 2,
            accepted: versions,
        }),
        (true, _) => parse_v1(buf),
        (_, true) => parse_v2(buf, max),
    }
}

fn prefix_match(buf: &[u8], sig: &[u8]) -> bool {
    let n = buf.len().min(sig.len());
    buf[..n] == sig[..n]
}

fn describe(buf: &[u8]) -> String {
    let head = &buf[..buf.len().min(16)];
    if head.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        format!("{:?}", String::from_utf8_lossy(head))
    } else {
        format!("bytes {head:02x?}")
    }
}

fn parse_v1(buf: &[u8]) -> Result<Option<ProxyHeader>, ProxyError> {
    let Some(lf) = buf.iter().position(|b| *b == b'\n') else {
        if buf.len() >= V1_MAX {
            return Err(ProxyError::V1TooLong);
        }
        return Ok(None);
    };
    let len = lf + 1;
    if len > V1_MAX {
        return Err(ProxyError::V1TooLong);
    }
    let bad = |why: &str| ProxyError::MalformedV1(why.to_string());
    if lf == 0 || buf[lf - 1] != b'\r' {
        return Err(bad("line does not end with CRLF"));
    }
    let line = std::str::from_utf8(&buf[..lf - 1]).map_err(|_| bad("not ASCII"))?;
    let fields: Vec<&str> = line.split(' ').collect();
    let header = |addresses| ProxyHeader {
        version: 1,
        addresses,
        authority: None,
        alpn: None,
        header_len: len,
    };
    match fields.get(1).copied() {
        Some("UNKNOWN") => Ok(Some(header(Addresses::Unknown))),
        Some(proto @ ("TCP4" | "TCP6")) => {
            if fields.len() != 6 {
                return Err(bad(&format!(
                    "expected `PROXY {proto} <src> <dst> <sport> <dport>` with single spaces, got {line:?}"
                )));
            }
            let ip = |s: &str| -> Result<IpAddr, ProxyError> {
                let ip: IpAddr = if proto == "TCP4" {
                    s.parse::<Ipv4Addr>()
                        .map(IpAddr::V4)
                        .map_err(|_| bad(&format!("{s:?} is not an IPv4 address")))?
                } else {
                    s.parse::<Ipv6Addr>()
                        .map(IpAddr::V6)
                        .map_err(|_| bad(&format!("{s:?} is not an IPv6 address")))?
                };
                Ok(ip)
            };
            let port = |s: &str| -> Result<u16, ProxyError> {
                if s.is_empty()
                    || s.len() > 5
                    || !s.bytes().all(|b| b.is_ascii_digit())
                    || (s.len() > 1 && s.starts_with('0'))
                {
                    return Err(bad(&format!("{s:?} is not a port")));
                }
                s.parse()
                    .map_err(|_| bad(&format!("{s:?} is not a port (0..=65535)")))
            };
            let source = SocketAddr::new(ip(fields[2])?, port(fields[4])?);
            let destination = SocketAddr::new(ip(fields[3])?, port(fields[5])?);
            Ok(Some(header(Addresses::Inet {
                source,
                destination,
            })))
        }
        _ => Err(bad(&format!(
            "unknown protocol in {line:?} (expected TCP4, TCP6 or UNKNOWN)"
        ))),
    }
}

fn parse_v2(buf: &[u8], max: usize) -> Result<Option<ProxyHeader>, ProxyError> {
    if buf.len() < V2_FIXED {
        // Check what we can already: the version/command byte.
        if buf.len() > 12 {
            check_ver_cmd(buf[12])?;
        }
        return Ok(None);
    }
    let ver_cmd = buf[12];
    check_ver_cmd(ver_cmd)?;
    let fam = buf[13];
    let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    let total = V2_FIXED + len;
    if total > max {
        return Err(ProxyError::V2TooLong { len: total, max });
    }
    if buf.len() < total {
        return Ok(None);
    }
    let body = &buf[V2_FIXED..total];
    let local = ver_cmd & 0x0f == 0;
    let (addresses, addr_len) = if local {
        (Addresses::Local, 0)
    } else {
        match fam {
            0x00 => (Addresses::Unknown, 0),
            0x11 => {
                need(body, 12, "AF_INET")?;
                let src = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
                let dst = Ipv4Addr::new(body[4], body[5], body[6], body[7]);
                let sp = u16::from_be_bytes([body[8], body[9]]);
                let dp = u16::from_be_bytes([body[10], body[11]]);
                (
                    Addresses::Inet {
                        source: SocketAddr::new(src.into(), sp),
                        destination: SocketAddr::new(dst.into(), dp),
                    },
                    12,
                )
            }
            0x21 => {
                need(body, 36, "AF_INET6")?;
                let ip = |b: &[u8]| Ipv6Addr::from(<[u8; 16]>::try_from(b).expect("16 bytes"));
                let sp = u16::from_be_bytes([body[32], body[33]]);
                let dp = u16::from_be_bytes([body[34], body[35]]);
                (
                    Addresses::Inet {
                        source: SocketAddr::new(ip(&body[0..16]).into(), sp),
                        destination: SocketAddr::new(ip(&body[16..32]).into(), dp),
                    },
                    36,
                )
            }
            0x31 => {
                need(body, 216, "AF_UNIX")?;
                let path =
                    |b: &[u8]| b[..b.iter().position(|c| *c == 0).unwrap_or(b.len())].to_vec();
                (
                    Addresses::Unix {
                        source: path(&body[..108]),
                        destination: path(&body[108..216]),
                    },
                    216,
                )
            }
            0x12 | 0x22 | 0x32 => return Err(ProxyError::Datagram),
            other => {
                return Err(ProxyError::UnsupportedV2(format!(
                    "address family/protocol byte 0x{other:02x}"
                )))
            }
        }
    };
    let mut header = ProxyHeader {
        version: 2,
        addresses,
        authority: None,
        alpn: None,
        header_len: total,
    };
    // LOCAL headers may carry TLVs too; they start after the address block either way.
    let tlvs = if local {
        &body[address_len(fam).min(len)..]
    } else {
        &body[addr_len..]
    };
    let tlv_start = total - tlvs.len();
    let mut i = 0;
    while i < tlvs.len() {
        if tlvs.len() - i < 3 {
            return Err(ProxyError::BadTlv(format!(
                "{} stray bytes after the last TLV",
                tlvs.len() - i
            )));
        }
        let kind = tlvs[i];
        let vlen = u16::from_be_bytes([tlvs[i + 1], tlvs[i + 2]]) as usize;
        let start = i + 3;
        let end = start + vlen;
        if end > tlvs.len() {
            return Err(ProxyError::BadTlv(format!(
                "TLV 0x{kind:02x} of {vlen} bytes runs past the header end"
            )));
        }
        let value = &tlvs[start..end];
        match kind {
            0x01 => header.alpn = Some(value.to_vec()),
            0x02 => {
                header.authority = Some(
                    String::from_utf8(value.to_vec())
                        .map_err(|_| ProxyError::BadTlv("AUTHORITY is not UTF-8".into()))?,
                )
            }
            0x03 => {
                if vlen != 4 {
                    return Err(ProxyError::BadTlv(format!(
                        "CRC32C TLV of {vlen} bytes (must be 4)"
                    )));
                }
                let expected = u32::from_be_bytes([value[0], value[1], value[2], value[3]]);
                let crc_at = tlv_start + start;
                let mut c = Crc32c::new();
                c.update(&buf[..crc_at]);
                c.update(&[0; 4]);
                c.update(&buf[crc_at + 4..total]);
                if c.finish() != expected {
                    return Err(ProxyError::Crc32cMismatch);
                }
            }
            _ => {} // NOOP, UNIQUE_ID, SSL, NETNS, vendor TLVs: skipped.
        }
        i = end;
    }
    Ok(Some(header))
}

fn address_len(fam: u8) -> usize {
    match fam {
        0x11 | 0x12 => 12,
        0x21 | 0x22 => 36,
        0x31 | 0x32 => 216,
        _ => 0,
    }
}

fn check_ver_cmd(b: u8) -> Result<(), ProxyError> {
    if b >> 4 != 2 {
        return Err(ProxyError::UnsupportedV2(format!(
            "version {} (must be 2)",
            b >> 4
        )));
    }
    if b & 0x0f > 1 {
        return Err(ProxyError::UnsupportedV2(format!(
            "command 0x{:x} (must be LOCAL or PROXY)",
            b & 0x0f
        )));
    }
    Ok(())
}

fn need(body: &[u8], n: usize, fam: &str) -> Result<(), ProxyError> {
    if body.len() < n {
        return Err(ProxyError::UnsupportedV2(format!(
            "{fam} needs {n} address bytes, the header has {}",
            body.len()
        )));
    }
    Ok(())
}

/// CRC-32C (Castagnoli), reflected polynomial 0x82F63B78.
struct Crc32c(u32);

const CRC_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
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
        t[i] = c;
        i += 1;
    }
    t
};

impl Crc32c {
    fn new() -> Self {
        Crc32c(!0)
    }
    fn update(&mut self, data: &[u8]) {
        for b in data {
            self.0 = CRC_TABLE[((self.0 ^ *b as u32) & 0xff) as usize] ^ (self.0 >> 8);
        }
    }
    fn finish(&self) -> u32 {
        !self.0
    }
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
        let at = V2_FIXED + body.len();
        body.extend_from_slice(&[0; 4]);
        Some(at)
    } else {
        None
    };
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(&body);
    if let Some(at) = crc_at {
        let mut c = Crc32c::new();
        c.update(&out);
        out[at..at + 4].copy_from_slice(&c.finish().to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQ: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn local_v2() -> Vec<u8> {
        let mut h = V2_SIG.to_vec();
        h.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
        h
    }

    fn valid_headers() -> Vec<Vec<u8>> {
        let mut unix = V2_SIG.to_vec();
        unix.extend_from_slice(&[0x21, 0x31]);
        unix.extend_from_slice(&216u16.to_be_bytes());
        let mut paths = vec![0u8; 216];
        paths[..5].copy_from_slice(b"/a.sk");
        unix.extend_from_slice(&paths);
        let mut unspec = V2_SIG.to_vec();
        unspec.extend_from_slice(&[0x21, 0x00, 0x00, 0x03, 0x04, 0x00, 0x00]);
        vec![
            b"PROXY TCP4 203.0.113.7 10.0.0.1 56324 8080\r\n".to_vec(),
            b"PROXY TCP6 2001:db8::1 ::1 65535 0\r\n".to_vec(),
            b"PROXY UNKNOWN\r\n".to_vec(),
            b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n".to_vec(),
            local_v2(),
            encode_v2(sa("198.51.100.2:4000"), sa("10.0.0.1:443"), &[], false),
            encode_v2(
                sa("[2001:db8::7]:1"),
                sa("[::1]:2"),
                &[
                    (0x02, b"example.com"),
                    (0x01, b"h2"),
                    (0x04, b"pad"),
                    (0xEE, b"vendor"),
                ],
                true,
            ),
            unix,
            unspec,
        ]
    }

    #[test]
    fn crc32c_known_vector() {
        let mut c = Crc32c::new();
        c.update(b"123456789");
        assert_eq!(c.finish(), 0xE306_9283);
    }

    #[test]
    fn every_valid_form_parses_whole_split_and_byte_by_byte() {
        for h in valid_headers() {
            let mut all = h.clone();
            all.extend_from_slice(REQ);
            let mut r = ProxyReader::new(Versions::Any, 4096);
            let (whole, rest) = r.feed(&all).unwrap().unwrap();
            assert_eq!(rest, REQ, "{h:?}");
            assert_eq!(whole.header_len, h.len());
            // Every truncation point, then the rest.
            for cut in 1..all.len() {
                let mut r = ProxyReader::new(Versions::Any, 4096);
                match r.feed(&all[..cut]).unwrap() {
                    None => {
                        let (hdr, rest) = r.feed(&all[cut..]).unwrap().unwrap();
                        assert_eq!(hdr, whole);
                        assert_eq!(rest, REQ);
                    }
                    Some((hdr, rest)) => {
                        assert_eq!(hdr, whole);
                        assert!(cut >= h.len());
                        assert_eq!(rest, &all[h.len()..cut]);
                    }
                }
            }
            let mut r = ProxyReader::new(Versions::Any, 4096);
            let mut got = None;
            for (i, b) in all.iter().enumerate() {
                if let Some((hdr, rest)) = r.feed(std::slice::from_ref(b)).unwrap() {
                    assert!(rest.is_empty());
                    got = Some((hdr, i));
                    break;
                }
            }
            assert_eq!(got, Some((whole, h.len() - 1)));
        }
    }

    #[test]
    fn addresses_and_tlvs() {
        let mut r = ProxyReader::new(Versions::Any, 4096);
        let (h, _) = r.feed(&valid_headers()[0]).unwrap().unwrap();
        assert_eq!(h.source(), Some(sa("203.0.113.7:56324")));
        let mut r = ProxyReader::new(Versions::Any, 4096);
        let (h, _) = r.feed(&valid_headers()[6]).unwrap().unwrap();
        assert_eq!(h.source(), Some(sa("[2001:db8::7]:1")));
        assert_eq!(h.authority.as_deref(), Some("example.com"));
        assert_eq!(h.alpn.as_deref(), Some(&b"h2"[..]));
        let mut r = ProxyReader::new(Versions::V2, 4096);
        let (h, _) = r.feed(&local_v2()).unwrap().unwrap();
        assert_eq!((h.source(), h.addresses), (None, Addresses::Local));
    }

    fn err(versions: Versions, data: &[u8]) -> ProxyError {
        ProxyReader::new(versions, 4096).feed(data).unwrap_err()
    }

    #[test]
    fn plain_http_is_refused_at_the_first_byte_with_the_hint() {
        let e = err(Versions::Any, b"G");
        assert!(e.to_string().contains(
            "expected a PROXY protocol header — is proxy protocol enabled on the load balancer?"
        ));
        assert!(matches!(
            err(Versions::Any, REQ),
            ProxyError::Missing { .. }
        ));
    }

    #[test]
    fn version_not_accepted() {
        let e = err(Versions::V2, b"PROXY TCP4");
        assert!(
            e.to_string()
                .contains("v1 header received but proxy_protocol only accepts v2"),
            "{e}"
        );
        let e = err(Versions::V1, &local_v2());
        assert!(
            e.to_string()
                .contains("v2 header received but proxy_protocol only accepts v1"),
            "{e}"
        );
    }

    #[test]
    fn strict_v1_syntax() {
        for bad in [
            &b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
            b"PROXY TCP4 1.2.3.999 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
        ] {
            assert!(
                matches!(err(Versions::Any, bad), ProxyError::MalformedV1(_)),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.extend(std::iter::repeat_n(b'x', 100));
        assert_eq!(err(Versions::Any, &long), ProxyError::V1TooLong);
        long.extend_from_slice(b"\r\n");
        assert_eq!(err(Versions::Any, &long), ProxyError::V1TooLong);
    }

    #[test]
    fn v2_errors() {
        let good = encode_v2(sa("1.2.3.4:1"), sa("5.6.7.8:2"), &[(0x02, b"x")], true);
        let mut bad_crc = good.clone();
        let n = bad_crc.len();
        bad_crc[n - 1] ^= 1;
        assert_eq!(err(Versions::Any, &bad_crc), ProxyError::Crc32cMismatch);
        let mut bad_ver = good.clone();
        bad_ver[12] = 0x11;
        assert!(matches!(
            err(Versions::Any, &bad_ver),
            ProxyError::UnsupportedV2(_)
        ));
        let mut bad_cmd = good.clone();
        bad_cmd[12] = 0x22;
        assert!(matches!(
            err(Versions::Any, &bad_cmd),
            ProxyError::UnsupportedV2(_)
        ));
        let mut dgram = good.clone();
        dgram[13] = 0x12;
        assert_eq!(err(Versions::Any, &dgram), ProxyError::Datagram);
        let mut overrun = encode_v2(sa("1.2.3.4:1"), sa("5.6.7.8:2"), &[(0x02, b"abc")], false);
        let n = overrun.len();
        overrun[n - 4] = 9; // TLV length now runs past the end
        overrun[n - 5] = 0;
        assert!(matches!(
            err(Versions::Any, &overrun),
            ProxyError::BadTlv(_)
        ));
        let mut short = V2_SIG.to_vec();
        short.extend_from_slice(&[0x21, 0x11, 0, 4, 1, 2, 3, 4]);
        assert!(matches!(
            err(Versions::Any, &short),
            ProxyError::UnsupportedV2(_)
        ));
        let big = encode_v2(
            sa("1.2.3.4:1"),
            sa("5.6.7.8:2"),
            &[(0xE0, &[0u8; 5000])],
            false,
        );
        assert!(
            matches!(err(Versions::Any, &big[..16]), ProxyError::V2TooLong { .. }),
            "refused from the fixed part alone"
        );
    }

    #[test]
    fn second_header_is_named() {
        let mut twice = valid_headers()[0].clone();
        twice.extend_from_slice(&valid_headers()[0]);
        let e = err(Versions::Any, &twice);
        assert_eq!(e, ProxyError::SecondHeader);
        assert!(e.to_string().contains("enabled twice"));
        let mut twice = local_v2();
        twice.extend_from_slice(&local_v2());
        assert_eq!(err(Versions::Any, &twice), ProxyError::SecondHeader);
    }

    #[test]
    fn looks_like() {
        assert!(looks_like_proxy_header(b"PROXY TCP4 ..."));
        assert!(looks_like_proxy_header(b"PRO"));
        assert!(looks_like_proxy_header(&V2_SIG[..]));
        assert!(!looks_like_proxy_header(b"GET / HTTP/1.1"));
        assert!(!looks_like_proxy_header(b""));
    }
}
