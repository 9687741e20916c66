//! Shared bits of the peer servers: argument parsing and a minimal RFC 6455 upgrade for
//! fastwebsockets (which, without hyper, leaves the handshake to the caller).

use std::net::SocketAddr;

/// `--listen ADDR` (default 127.0.0.1:9001) and `--mode echo|broadcast` (default echo).
pub struct Args {
    pub listen: SocketAddr,
    pub broadcast: bool,
}

pub fn args() -> Args {
    let mut a = Args {
        listen: "127.0.0.1:9001".parse().unwrap(),
        broadcast: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        match (k.as_str(), it.next()) {
            ("--listen", Some(v)) => a.listen = v.parse().expect("--listen IP:PORT"),
            ("--mode", Some(v)) if v == "echo" => a.broadcast = false,
            ("--mode", Some(v)) if v == "broadcast" => a.broadcast = true,
            _ => {
                eprintln!(
                    "usage: {} [--listen IP:PORT] [--mode echo|broadcast]",
                    std::env::args().next().unwrap()
                );
                std::process::exit(2);
            }
        }
    }
    a
}

/// The `Sec-WebSocket-Accept` value for a client key.
pub fn accept_key(key: &[u8]) -> String {
    use base64::Engine;
    let mut h = sha1_smol::Sha1::new();
    h.update(key);
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(h.digest().bytes())
}

/// Parses a complete request head; returns (head length, 101 response) or None if incomplete.
pub fn upgrade_response(buf: &[u8]) -> Result<Option<(usize, Vec<u8>)>, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => {
            let key = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-key"))
                .ok_or("no Sec-WebSocket-Key")?;
            let resp = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: {}\r\n\r\n",
                accept_key(key.value)
            );
            Ok(Some((n, resp.into_bytes())))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(_) => Err("bad request"),
    }
}
