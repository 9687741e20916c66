//! Trusted networks (`trusted_proxies`) and the client address behind forwarding headers.
//! Headers are believed only from trusted peers; the client is the right-most address in
//! the chain that is not itself a trusted proxy.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = ip
            .parse()
            .map_err(|_| format!("{s:?} is not an IP network like 10.0.0.0/8 or fd00::/8"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: prefix length must be 0..={max}"))?,
        };
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            // ::ffff:a.b.c.d (a dual-stack socket's view of an IPv4 peer) is that IPv4 address.
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedNetworks(pub Vec<Cidr>);

impl TrustedNetworks {
    /// Comma or space separated; "" = nobody.
    pub fn parse_list(s: &str) -> Result<Self, String> {
        s.split(|c: char| c == ',' || c.is_whitespace())
            .filter(|p| !p.is_empty())
            .map(str::parse)
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

/// The client address given the forwarding headers: honoured only when `peer` is trusted.
/// The chain is `Forwarded` `for=` elements if any `Forwarded` header is present, else
/// `X-Forwarded-For`, else `X-Real-IP`; walking it from the right, the first address that
/// is not a trusted proxy is the client. A garbage entry stops the walk (nothing left of it
/// can be believed); if every entry is trusted, the left-most is the client.
pub fn client_address(
    peer: IpAddr,
    headers: &[(String, String)],
    trusted: &TrustedNetworks,
) -> IpAddr {
    if trusted.is_empty() || !trusted.contains(peer) {
        return peer;
    }
    fn values<'h>(
        headers: &'h [(String, String)],
        name: &'static str,
    ) -> impl Iterator<Item = &'h str> {
        headers
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    let values = |name: &'static str| values(headers, name);
    let chain: Vec<Option<IpAddr>> = if values("Forwarded").next().is_some() {
        values("Forwarded")
            .flat_map(|v| v.split(','))
            .map(|element| {
                element
                    .split(';')
                    .filter_map(|pair| pair.split_once('='))
                    .find(|(k, _)| k.trim().eq_ignore_ascii_case("for"))
                    .and_then(|(_, v)| parse_node(v.trim().trim_matches('"')))
            })
            .collect()
    } else if values("X-Forwarded-For").next().is_some() {
        values("X-Forwarded-For")
            .flat_map(|v| v.split(','))
            .map(|e| parse_node(e.trim()))
            .collect()
    } else if let Some(v) = values("X-Real-IP").next() {
        vec![parse_node(v.trim())]
    } else {
        return peer;
    };
    let mut client = peer;
    for entry in chain.iter().rev() {
        match entry {
            None => return client,
            Some(ip) => {
                client = *ip;
                if !trusted.contains(*ip) {
                    return client;
                }
            }
        }
    }
    client
}

/// `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]:80`; None for `unknown`, `_hidden`...
fn parse_node(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    let (host, port) = s.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_parse_and_contains() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains(ip("10.1.2.3")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("::ffff:10.9.9.9")), "IPv4-mapped IPv6");
        let host: Cidr = "192.168.1.5".parse().unwrap();
        assert_eq!(host.to_string(), "192.168.1.5/32");
        assert!(host.contains(ip("192.168.1.5")) && !host.contains(ip("192.168.1.6")));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")) && !all.contains(ip("::1")));
        assert!("10.0.0.0/33"
            .parse::<Cidr>()
            .unwrap_err()
            .contains("0..=32"));
        assert!("ten"
            .parse::<Cidr>()
            .unwrap_err()
            .contains("not an IP network"));
        let list = TrustedNetworks::parse_list("10.0.0.0/8, ::1 127.0.0.1").unwrap();
        assert_eq!(list.0.len(), 3);
        assert!(TrustedNetworks::parse_list("").unwrap().is_empty());
        assert!(TrustedNetworks::parse_list("10.0.0.0/8,bogus").is_err());
    }

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn forwarding_headers_only_from_trusted_peers() {
        let trusted = TrustedNetworks::parse_list("10.0.0.0/8").unwrap();
        let xff = h(&[("X-Forwarded-For", "203.0.113.9")]);
        assert_eq!(
            client_address(ip("198.51.100.1"), &xff, &trusted),
            ip("198.51.100.1"),
            "untrusted peer"
        );
        assert_eq!(
            client_address(ip("10.0.0.2"), &xff, &trusted),
            ip("203.0.113.9")
        );
        assert_eq!(
            client_address(ip("10.0.0.2"), &xff, &TrustedNetworks::default()),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn right_most_untrusted_wins_over_spoofed_entries() {
        let trusted = TrustedNetworks::parse_list("10.0.0.0/8").unwrap();
        let xff = h(&[
            ("x-forwarded-for", "1.1.1.1, 203.0.113.9"),
            ("X-Forwarded-For", "10.0.0.7:8080"),
        ]);
        assert_eq!(
            client_address(ip("10.0.0.2"), &xff, &trusted),
            ip("203.0.113.9")
        );
        let all_trusted = h(&[("X-Forwarded-For", "10.0.0.9, 10.0.0.8")]);
        assert_eq!(
            client_address(ip("10.0.0.2"), &all_trusted, &trusted),
            ip("10.0.0.9")
        );
        let garbage = h(&[("X-Forwarded-For", "1.1.1.1, unknown, 10.0.0.8")]);
        assert_eq!(
            client_address(ip("10.0.0.2"), &garbage, &trusted),
            ip("10.0.0.8")
        );
        let real = h(&[("X-Real-IP", "203.0.113.4")]);
        assert_eq!(
            client_address(ip("10.0.0.2"), &real, &trusted),
            ip("203.0.113.4")
        );
    }

    #[test]
    fn rfc7239_forwarded() {
        let trusted = TrustedNetworks::parse_list("10.0.0.0/8").unwrap();
        let fwd = h(&[
            (
                "Forwarded",
                r#"for=192.0.2.43, for="[2001:db8:cafe::17]:4711";proto=https"#,
            ),
            ("X-Forwarded-For", "9.9.9.9"),
        ]);
        assert_eq!(
            client_address(ip("10.0.0.2"), &fwd, &trusted),
            ip("2001:db8:cafe::17")
        );
        let hidden = h(&[("Forwarded", "for=198.51.100.17, for=_hidden")]);
        assert_eq!(
            client_address(ip("10.0.0.2"), &hidden, &trusted),
            ip("10.0.0.2")
        );
    }
}
