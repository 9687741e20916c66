//! Trusted networks (CIDR lists) and the client address derived from forwarding headers.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IPv4 or IPv6 network. The stored address has no host bits set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix_len: u8,
}

impl Cidr {
    pub fn network(&self) -> IpAddr {
        self.network
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, as seen on dual-stack sockets) match
    /// IPv4 networks, and IPv4 addresses match `::ffff:0:0/96`-style networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                in_net(net.to_bits(), ip.to_bits(), 32, self.prefix_len)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                in_net(net.to_bits(), ip.to_bits(), 128, self.prefix_len)
            }
            (IpAddr::V4(net), IpAddr::V6(ip)) => ip
                .to_ipv4_mapped()
                .is_some_and(|ip| in_net(net.to_bits(), ip.to_bits(), 32, self.prefix_len)),
            (IpAddr::V6(net), IpAddr::V4(ip)) => in_net(
                net.to_bits(),
                ip.to_ipv6_mapped().to_bits(),
                128,
                self.prefix_len,
            ),
        }
    }
}

fn mask<T>(width: u32, prefix: u8) -> T
where
    T: From<u8> + std::ops::Not<Output = T> + std::ops::Shl<u32, Output = T> + Copy,
{
    // A shift by the full width would overflow, so /0 is special-cased.
    if prefix == 0 {
        T::from(0)
    } else {
        !T::from(0) << (width - u32::from(prefix))
    }
}

fn in_net<T>(net: T, ip: T, width: u32, prefix: u8) -> bool
where
    T: From<u8>
        + std::ops::Not<Output = T>
        + std::ops::Shl<u32, Output = T>
        + std::ops::BitAnd<Output = T>
        + PartialEq
        + Copy,
{
    ip & mask::<T>(width, prefix) == net
}

impl FromStr for Cidr {
    type Err = String;

    /// `"10.0.0.0/8"`, `"::1/128"`, `"192.168.1.5"` (a single host), `"fd00::/8"`.
    /// Host bits set (`"10.0.0.1/8"`) are an error: in a trust list such a typo would
    /// silently trust a whole network.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let network: IpAddr = addr
            .parse()
            .map_err(|_| format!("\"{s}\": \"{addr}\" is not an IPv4 or IPv6 address"))?;
        let width: u8 = if network.is_ipv4() { 32 } else { 128 };
        let prefix_len = match prefix {
            None => width,
            Some(p) => {
                if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.len() > 3 {
                    return Err(format!(
                        "\"{s}\": prefix length \"{p}\" is not a number 0..={width}"
                    ));
                }
                let n: u8 = p.parse().unwrap_or(u8::MAX);
                if n > width {
                    return Err(format!(
                        "\"{s}\": prefix length /{p} is too long for an IPv{} address (max /{width})",
                        if width == 32 { 4 } else { 6 }
                    ));
                }
                n
            }
        };
        let masked = match network {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from_bits(
                a.to_bits() & mask::<u32>(32, prefix_len),
            )),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from_bits(
                a.to_bits() & mask::<u128>(128, prefix_len),
            )),
        };
        if masked != network {
            return Err(format!(
                "\"{s}\": address has bits set beyond the /{prefix_len} prefix; did you mean {masked}/{prefix_len} (the network) or {network} (one host)?"
            ));
        }
        Ok(Cidr {
            network,
            prefix_len,
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

/// The proxies whose forwarding headers are believed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedNetworks(pub Vec<Cidr>);

impl TrustedNetworks {
    /// Comma and/or whitespace separated CIDRs; `""` means none.
    pub fn parse_list(s: &str) -> Result<Self, String> {
        s.split(|c: char| c == ',' || c.is_whitespace())
            .filter(|item| !item.is_empty())
            .map(Cidr::from_str)
            .collect::<Result<Vec<_>, _>>()
            .map(TrustedNetworks)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Which forwarding header [`client_address_with`] believes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ForwardedHeader {
    /// `Forwarded` if present, else `X-Forwarded-For`, else `X-Real-IP`. Convenient, but a
    /// proxy that maintains only one of them usually passes the others through from the
    /// client unchanged, so a client can pick the header that wins (see `client_address`).
    #[default]
    Auto,
    Forwarded,
    XForwardedFor,
    XRealIp,
}

/// The client address given forwarding headers.
///
/// Headers are honoured only when `peer` is trusted. The chain is, in header-line order:
/// the `for=` of every `Forwarded` element if any `Forwarded` header is present, else the
/// `X-Forwarded-For` lists, else the `X-Real-IP` values. Walking from the right, the first
/// address that is not trusted is the client; if all are trusted the left-most wins. An
/// entry that can't be parsed (`unknown`, `_hidden`, garbage, a `Forwarded` element without
/// `for=`) stops the walk and the last trusted address seen so far is returned — `peer`
/// if the garbage is right-most — because nothing left of it can be vouched for.
///
/// Caveat of the automatic choice: behind an nginx that only sets `X-Forwarded-For`, a
/// client-sent `Forwarded: for=1.2.3.4` passes through untouched and wins. Deployments
/// should name their header via [`client_address_with`].
pub fn client_address(
    peer: IpAddr,
    headers: &[(String, String)],
    trusted: &TrustedNetworks,
) -> IpAddr {
    client_address_with(peer, headers, trusted, ForwardedHeader::Auto)
}

/// [`client_address`] reading only the given header (or the automatic choice).
pub fn client_address_with(
    peer: IpAddr,
    headers: &[(String, String)],
    trusted: &TrustedNetworks,
    which: ForwardedHeader,
) -> IpAddr {
    if !trusted.contains(peer) {
        return peer;
    }
    let named = |name: &'static str| {
        headers
            .iter()
            .filter(move |(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let present = |name| named(name).next().is_some();
    let which = match which {
        ForwardedHeader::Auto if present("forwarded") => ForwardedHeader::Forwarded,
        ForwardedHeader::Auto if present("x-forwarded-for") => ForwardedHeader::XForwardedFor,
        ForwardedHeader::Auto => ForwardedHeader::XRealIp,
        explicit => explicit,
    };
    let chain: Vec<Option<IpAddr>> = match which {
        ForwardedHeader::Forwarded => named("forwarded").flat_map(forwarded_for).collect(),
        ForwardedHeader::XForwardedFor => named("x-forwarded-for")
            .flat_map(|v| v.split(','))
            .map(|e| e.trim_matches([' ', '\t']))
            .filter(|e| !e.is_empty())
            .map(parse_node)
            .collect(),
        _ => named("x-real-ip")
            .map(|v| v.trim_matches([' ', '\t']))
            .filter(|e| !e.is_empty())
            .map(parse_node)
            .collect(),
    };
    let mut result = peer;
    for entry in chain.iter().rev() {
        match *entry {
            None => return result,
            Some(ip) if !trusted.contains(ip) => return ip,
            Some(ip) => result = ip,
        }
    }
    result
}

/// The `for=` node of each element of one `Forwarded` header value (RFC 7239);
/// None for elements whose `for` is missing, obfuscated or invalid.
fn forwarded_for(value: &str) -> Vec<Option<IpAddr>> {
    split_unquoted(value, b',')
        .into_iter()
        .map(|e| e.trim_matches([' ', '\t']))
        .filter(|e| !e.is_empty())
        .map(|element| {
            let mut found = None;
            for pair in split_unquoted(element, b';') {
                let pair = pair.trim_matches([' ', '\t']);
                if pair.is_empty() {
                    continue;
                }
                let (key, val) = pair.split_once('=')?;
                if key.trim_matches([' ', '\t']).eq_ignore_ascii_case("for") {
                    if found.is_some() {
                        return None; // RFC 7239: a parameter must not occur twice
                    }
                    found = Some(unquote(val.trim_matches([' ', '\t']))?);
                }
            }
            parse_node(&found?)
        })
        .collect()
}

/// Splits on `sep` outside double-quoted strings (honouring backslash escapes).
fn split_unquoted(s: &str, sep: u8) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, b) in s.bytes().enumerate() {
        if escaped {
            escaped = false;
        } else if quoted && b == b'\\' {
            escaped = true;
        } else if b == b'"' {
            quoted = !quoted;
        } else if b == sep && !quoted {
            parts.push(&s[start..i]);
            start = i + 1;
        }
    }
    parts.push(&s[start..]);
    parts
}

/// A token as is, or a quoted-string with its escapes resolved; None if unterminated.
fn unquote(v: &str) -> Option<String> {
    let Some(inner) = v.strip_prefix('"') else {
        return (!v.contains('"')).then(|| v.to_owned());
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            '"' => return chars.as_str().is_empty().then_some(out),
            c => out.push(c),
        }
    }
    None
}

/// `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`, `[2001:db8::1]`, `[2001:db8::1]:4711`.
/// `unknown`, `_obfuscated` and anything else → None.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Some(inner) = node.strip_prefix('[') {
        let (ip, after) = inner.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(valid_port)) {
            return None;
        }
        return ip.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip);
    }
    // IPv4 with a port; a bare IPv6 already parsed above.
    let (ip, port) = node.rsplit_once(':')?;
    if !valid_port(port) {
        return None;
    }
    ip.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

/// RFC 7239 node-port: a decimal port or an obfuscated `_token`.
fn valid_port(p: &str) -> bool {
    let digits = !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit());
    let obfuscated = p.len() > 1
        && p.starts_with('_')
        && p.bytes()
            .skip(1)
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    (digits && p.parse::<u16>().is_ok()) || obfuscated
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn nets(s: &str) -> TrustedNetworks {
        TrustedNetworks::parse_list(s).unwrap()
    }

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn cidr_contains_table() {
        let table: &[(&str, &str, bool)] = &[
            ("10.0.0.0/8", "10.255.1.2", true),
            ("10.0.0.0/8", "11.0.0.0", false),
            ("10.0.0.0/8", "::ffff:10.1.2.3", true),
            ("10.0.0.0/8", "::ffff:11.1.2.3", false),
            ("10.0.0.0/8", "::10.1.2.3", false),
            ("10.0.0.0/8", "2001:db8::1", false),
            ("192.168.1.5", "192.168.1.5", true),
            ("192.168.1.5", "192.168.1.6", false),
            ("192.168.1.5", "::ffff:192.168.1.5", true),
            ("172.16.0.0/12", "172.31.255.255", true),
            ("172.16.0.0/12", "172.32.0.0", false),
            ("0.0.0.0/0", "8.8.8.8", true),
            ("0.0.0.0/0", "::ffff:8.8.8.8", true),
            ("0.0.0.0/0", "::1", false),
            ("::/0", "2001:db8::1", true),
            ("::/0", "1.2.3.4", true),
            ("::1/128", "::1", true),
            ("::1/128", "::2", false),
            ("::1/128", "127.0.0.1", false),
            ("::1", "::1", true),
            ("fd00::/8", "fdab:cd::1", true),
            ("fd00::/8", "fe00::1", false),
            ("2001:db8::/32", "2001:db8:ffff::1", true),
            ("2001:db8::/32", "2001:db9::1", false),
            ("::ffff:0:0/96", "1.2.3.4", true),
            ("::ffff:10.0.0.0/104", "10.9.9.9", true),
            ("::ffff:10.0.0.0/104", "11.9.9.9", false),
            ("127.0.0.1/32", "127.0.0.1", true),
        ];
        for (cidr, addr, want) in table {
            let c: Cidr = cidr.parse().unwrap();
            assert_eq!(c.contains(ip(addr)), *want, "{cidr} contains {addr}");
        }
    }

    #[test]
    fn cidr_parse_and_display() {
        let c: Cidr = " 10.0.0.0/8 ".parse().unwrap();
        assert_eq!((c.network(), c.prefix_len()), (ip("10.0.0.0"), 8));
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert_eq!(
            "192.168.1.5".parse::<Cidr>().unwrap().to_string(),
            "192.168.1.5/32"
        );
        assert_eq!("fd00::/8".parse::<Cidr>().unwrap().to_string(), "fd00::/8");
        assert_eq!("::1".parse::<Cidr>().unwrap().prefix_len(), 128);
    }

    #[test]
    fn cidr_errors() {
        let table: &[(&str, &str)] = &[
            ("", "is not an IPv4 or IPv6 address"),
            ("10.0.0/8", "\"10.0.0\" is not an IPv4 or IPv6 address"),
            ("010.0.0.0/8", "is not an IPv4 or IPv6 address"),
            ("fe80::1%eth0", "is not an IPv4 or IPv6 address"),
            ("[::1]/128", "is not an IPv4 or IPv6 address"),
            ("example.com", "is not an IPv4 or IPv6 address"),
            ("10.0.0.0/", "prefix length \"\" is not a number 0..=32"),
            ("10.0.0.0/+8", "prefix length \"+8\" is not a number 0..=32"),
            ("10.0.0.0/8/8", "prefix length \"8/8\" is not a number"),
            (
                "10.0.0.0/33",
                "/33 is too long for an IPv4 address (max /32)",
            ),
            ("10.0.0.0/1000", "is not a number 0..=32"),
            ("::/129", "/129 is too long for an IPv6 address (max /128)"),
            (
                "10.0.0.1/8",
                "did you mean 10.0.0.0/8 (the network) or 10.0.0.1 (one host)?",
            ),
            ("fd00::1/8", "did you mean fd00::/8"),
        ];
        for (input, want) in table {
            let err = input.parse::<Cidr>().unwrap_err();
            assert!(err.contains(want), "{input:?}: {err}");
        }
    }

    #[test]
    fn trusted_list() {
        assert!(TrustedNetworks::parse_list("").unwrap().is_empty());
        assert!(TrustedNetworks::parse_list(" , ").unwrap().is_empty());
        let t = nets("10.0.0.0/8, 192.168.0.0/16\t::1 ,fd00::/8");
        assert_eq!(t.0.len(), 4);
        assert!(t.contains(ip("192.168.3.4")));
        assert!(t.contains(ip("::1")));
        assert!(t.contains(ip("::ffff:10.0.0.1")));
        assert!(!t.contains(ip("8.8.8.8")));
        let err = TrustedNetworks::parse_list("10.0.0.0/8, 300.0.0.0/8").unwrap_err();
        assert!(err.contains("300.0.0.0"), "{err}");
        assert!(!TrustedNetworks::default().contains(ip("127.0.0.1")));
    }

    #[test]
    fn untrusted_peer_ignores_headers() {
        let t = nets("10.0.0.0/8");
        let hs = h(&[
            ("X-Forwarded-For", "1.2.3.4"),
            ("Forwarded", "for=1.2.3.4"),
            ("X-Real-IP", "1.2.3.4"),
        ]);
        assert_eq!(client_address(ip("8.8.8.8"), &hs, &t), ip("8.8.8.8"));
        assert_eq!(
            client_address(ip("8.8.8.8"), &hs, &TrustedNetworks::default()),
            ip("8.8.8.8")
        );
    }

    #[test]
    fn xff_right_most_untrusted() {
        let t = nets("10.0.0.0/8");
        let peer = ip("10.0.0.1");
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[], "10.0.0.1"),
            (&[("X-Forwarded-For", "1.2.3.4")], "1.2.3.4"),
            // A client-supplied spoof on the left is skipped.
            (
                &[("X-Forwarded-For", "6.6.6.6, 1.2.3.4, 10.0.0.2")],
                "1.2.3.4",
            ),
            (
                &[("x-forwarded-for", "6.6.6.6,1.2.3.4 ,  10.0.0.2")],
                "1.2.3.4",
            ),
            // Multiple header lines form one list, in order.
            (
                &[
                    ("X-Forwarded-For", "6.6.6.6, 1.2.3.4"),
                    ("X-FORWARDED-FOR", "10.0.0.3"),
                ],
                "1.2.3.4",
            ),
            (
                &[
                    ("X-Forwarded-For", "1.2.3.4"),
                    ("X-Forwarded-For", "5.6.7.8"),
                ],
                "5.6.7.8",
            ),
            // All trusted: the left-most.
            (&[("X-Forwarded-For", "10.0.0.9, 10.0.0.8")], "10.0.0.9"),
            // Ports and IPv6 forms.
            (
                &[("X-Forwarded-For", "1.2.3.4:5678, 10.0.0.2:80")],
                "1.2.3.4",
            ),
            (&[("X-Forwarded-For", "2001:db8::1")], "2001:db8::1"),
            (&[("X-Forwarded-For", "[2001:db8::1]:4711")], "2001:db8::1"),
            (&[("X-Forwarded-For", "[2001:db8::1]")], "2001:db8::1"),
            (
                &[("X-Forwarded-For", "::ffff:10.0.0.5, 1.1.1.1")],
                "1.1.1.1",
            ),
            (
                &[("X-Forwarded-For", "1.1.1.1, ::ffff:10.0.0.5")],
                "1.1.1.1",
            ),
            // Empty list elements are allowed by HTTP list syntax.
            (&[("X-Forwarded-For", ", 1.2.3.4,,")], "1.2.3.4"),
            (&[("X-Forwarded-For", "")], "10.0.0.1"),
            // Garbage right-most: trust nothing to its left.
            (&[("X-Forwarded-For", "1.2.3.4, unknown")], "10.0.0.1"),
            (
                &[("X-Forwarded-For", "1.2.3.4, garbage, 10.0.0.7")],
                "10.0.0.7",
            ),
            (&[("X-Forwarded-For", "1.2.3.4:99999")], "10.0.0.1"),
            (&[("X-Forwarded-For", "1.2.3.4:")], "10.0.0.1"),
            (&[("X-Forwarded-For", "[2001:db8::1]x")], "10.0.0.1"),
            (&[("X-Forwarded-For", "1.2.3.4 5.6.7.8")], "10.0.0.1"),
            // Garbage further left doesn't matter once an untrusted address is found.
            (&[("X-Forwarded-For", "junk, 1.2.3.4")], "1.2.3.4"),
            // X-Real-IP only without X-Forwarded-For.
            (&[("X-Real-IP", " 1.2.3.4 ")], "1.2.3.4"),
            (
                &[("X-Real-IP", "1.2.3.4"), ("X-Forwarded-For", "5.6.7.8")],
                "5.6.7.8",
            ),
            (&[("X-Real-IP", "unknown")], "10.0.0.1"),
            (&[("X-Real-IP", "10.0.0.4")], "10.0.0.4"),
            // Unrelated headers are ignored.
            (
                &[("X-Forwarded-Host", "1.2.3.4"), ("Host", "5.6.7.8")],
                "10.0.0.1",
            ),
        ];
        for (headers, want) in cases {
            assert_eq!(
                client_address(peer, &h(headers), &t),
                ip(want),
                "{headers:?}"
            );
        }
    }

    #[test]
    fn forwarded_header() {
        let t = nets("10.0.0.0/8, fd00::/8");
        let peer = ip("10.0.0.1");
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("Forwarded", "for=192.0.2.60;proto=http;by=203.0.113.43")],
                "192.0.2.60",
            ),
            (
                &[("Forwarded", "For=\"[2001:db8:cafe::17]:4711\"")],
                "2001:db8:cafe::17",
            ),
            (
                &[("forwarded", "for=\"[2001:db8:cafe::17]\"")],
                "2001:db8:cafe::17",
            ),
            (&[("Forwarded", "for=\"192.0.2.43:47011\"")], "192.0.2.43"),
            (
                &[("Forwarded", "for=192.0.2.43, for=198.51.100.17")],
                "198.51.100.17",
            ),
            (
                &[("Forwarded", "for=192.0.2.43, for=10.0.0.3;proto=https")],
                "192.0.2.43",
            ),
            (
                &[
                    ("Forwarded", "for=192.0.2.43"),
                    ("Forwarded", "for=\"[fd00::5]\""),
                ],
                "192.0.2.43",
            ),
            // Quoted separators don't split.
            (&[("Forwarded", "proto=\"a,b;c\";for=1.2.3.4")], "1.2.3.4"),
            (
                &[("Forwarded", "for=\"1.2.3.4\";host=\"a\\\"b,c\"")],
                "1.2.3.4",
            ),
            (&[("Forwarded", "for=1.2.3.4 ;proto=https;")], "1.2.3.4"),
            // All trusted: the left-most.
            (
                &[("Forwarded", "for=10.1.1.1, for=\"[fd00::2]\"")],
                "10.1.1.1",
            ),
            // Obfuscated / unknown / missing for= stop the walk.
            (&[("Forwarded", "for=1.2.3.4, for=unknown")], "10.0.0.1"),
            (&[("Forwarded", "for=1.2.3.4, for=_hidden")], "10.0.0.1"),
            (
                &[("Forwarded", "for=1.2.3.4, for=_hidden, for=10.0.0.9")],
                "10.0.0.9",
            ),
            (&[("Forwarded", "for=1.2.3.4, proto=https")], "10.0.0.1"),
            (&[("Forwarded", "for=1.2.3.4;for=5.6.7.8")], "10.0.0.1"),
            (&[("Forwarded", "for=\"1.2.3.4")], "10.0.0.1"),
            (
                &[("Forwarded", "for=\"[2001:db8::1]:_port\"")],
                "2001:db8::1",
            ),
            (&[("Forwarded", "for=[2001:db8::1]:x")], "10.0.0.1"),
            (&[("Forwarded", "for=\"1.2.3.4\"x")], "10.0.0.1"),
            (&[("Forwarded", "junk")], "10.0.0.1"),
            // Forwarded wins over X-Forwarded-For when present.
            (
                &[("X-Forwarded-For", "5.6.7.8"), ("Forwarded", "for=1.2.3.4")],
                "1.2.3.4",
            ),
            (
                &[("X-Forwarded-For", "5.6.7.8"), ("Forwarded", "")],
                "10.0.0.1",
            ),
        ];
        for (headers, want) in cases {
            assert_eq!(
                client_address(peer, &h(headers), &t),
                ip(want),
                "{headers:?}"
            );
        }
    }

    #[test]
    fn explicit_header_choice() {
        let t = nets("10.0.0.0/8");
        let peer = ip("10.0.0.1");
        let hs = h(&[
            ("Forwarded", "for=6.6.6.6"),
            ("X-Forwarded-For", "6.6.6.7, 1.2.3.4"),
            ("X-Real-IP", "5.6.7.8"),
        ]);
        let with = |w| client_address_with(peer, &hs, &t, w);
        assert_eq!(with(ForwardedHeader::Auto), ip("6.6.6.6"));
        assert_eq!(with(ForwardedHeader::Forwarded), ip("6.6.6.6"));
        assert_eq!(with(ForwardedHeader::XForwardedFor), ip("1.2.3.4"));
        assert_eq!(with(ForwardedHeader::XRealIp), ip("5.6.7.8"));
        let none = h(&[("X-Real-IP", "5.6.7.8")]);
        let f = client_address_with(peer, &none, &t, ForwardedHeader::Forwarded);
        assert_eq!(f, peer);
        let untrusted = client_address_with(ip("8.8.8.8"), &hs, &t, ForwardedHeader::XRealIp);
        assert_eq!(untrusted, ip("8.8.8.8"));
    }

    #[test]
    fn mapped_peer_is_trusted() {
        let t = nets("127.0.0.1");
        let hs = h(&[("X-Forwarded-For", "203.0.113.9")]);
        assert_eq!(
            client_address(ip("::ffff:127.0.0.1"), &hs, &t),
            ip("203.0.113.9")
        );
    }
}
