//! permessage-deflate (RFC 7692): offer negotiation, and the compressor/decompressor a
//! connection (or, without context takeover, a whole worker) uses. Memory is bounded:
//! inflating stops as soon as the output passes the message size limit.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// What the server is configured to accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub level: u32,
    /// Our largest compression window (9..=15).
    pub window_bits: u8,
    pub server_no_context_takeover: bool,
    pub client_no_context_takeover: bool,
    /// Messages shorter than this are sent uncompressed.
    pub threshold: usize,
}

/// What was agreed with one client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    pub server_no_context_takeover: bool,
    pub client_no_context_takeover: bool,
    /// The window we compress with (8: we never compress, see `compresses`).
    pub server_window_bits: u8,
}

impl Params {
    /// Whether outgoing messages may be compressed (zlib needs a window of at least 2^9).
    pub fn compresses(&self) -> bool {
        self.server_window_bits >= 9
    }
}

/// Choose the first acceptable offer of a `Sec-WebSocket-Extensions` value (all header lines
/// joined with ", "). Returns the agreed parameters and the response header value; None
/// declines compression (never fails the handshake).
pub fn negotiate(header: &str, cfg: &Config) -> Option<(Params, String)> {
    split_outside_quotes(header, ',')
        .into_iter()
        .find_map(|offer| accept_offer(offer, cfg))
}

fn accept_offer(offer: &str, cfg: &Config) -> Option<(Params, String)> {
    let mut parts = split_outside_quotes(offer, ';').into_iter().map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case("permessage-deflate") {
        return None;
    }
    let mut seen = Vec::new();
    let mut server_nct = false;
    let mut client_nct = false;
    let mut server_bits: Option<u8> = None;
    let mut client_bits_offered = false;
    for param in parts {
        if param.is_empty() {
            return None;
        }
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (
                n.trim().to_ascii_lowercase(),
                Some(v.trim().trim_matches('"')),
            ),
            None => (param.to_ascii_lowercase(), None),
        };
        if seen.contains(&name) {
            return None; // a parameter twice: malformed offer
        }
        seen.push(name.clone());
        match (name.as_str(), value) {
            ("server_no_context_takeover", None) => server_nct = true,
            ("client_no_context_takeover", None) => client_nct = true,
            ("server_max_window_bits", Some(v)) => server_bits = Some(window_bits(v)?),
            ("client_max_window_bits", None) => client_bits_offered = true,
            ("client_max_window_bits", Some(v)) => {
                window_bits(v)?;
                client_bits_offered = true;
            }
            _ => return None, // unknown parameter or a value where none belongs
        }
    }
    // zlib cannot compress raw deflate in a 256-byte window; such a connection is accepted
    // and sent uncompressed messages only (allowed per message, RFC 7692 §6).
    let bits = server_bits.unwrap_or(15).min(cfg.window_bits);
    let params = Params {
        server_no_context_takeover: server_nct || cfg.server_no_context_takeover,
        client_no_context_takeover: client_nct || cfg.client_no_context_takeover,
        server_window_bits: bits,
    };
    let mut response = String::from("permessage-deflate");
    if params.server_no_context_takeover {
        response.push_str("; server_no_context_takeover");
    }
    if params.client_no_context_takeover {
        response.push_str("; client_no_context_takeover");
    }
    if bits < 15 || server_bits.is_some() {
        response.push_str(&format!("; server_max_window_bits={bits}"));
    }
    // We inflate with a 32 KiB window, so the client's window never needs limiting.
    let _ = client_bits_offered;
    Some((params, response))
}

fn window_bits(v: &str) -> Option<u8> {
    if v.is_empty() || v.len() > 2 || !v.bytes().all(|b| b.is_ascii_digit()) || v.starts_with('0') {
        return None;
    }
    v.parse::<u8>().ok().filter(|b| (8..=15).contains(b))
}

fn split_outside_quotes(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// Compresses messages: raw deflate, sync-flushed, without the 00 00 ff ff tail.
pub struct Deflater {
    c: Compress,
}

impl Deflater {
    pub fn new(level: u32, window_bits: u8) -> Deflater {
        Deflater {
            c: Compress::new_with_window_bits(
                Compression::new(level.min(9)),
                false,
                window_bits.clamp(9, 15),
            ),
        }
    }

    /// Compress one message into `out` (cleared first). `reset`: forget the context after it.
    pub fn compress(&mut self, input: &[u8], out: &mut Vec<u8>, reset: bool) {
        out.clear();
        let start_in = self.c.total_in();
        loop {
            if out.capacity() - out.len() < 1024 {
                out.reserve(out.capacity().max(1024));
            }
            let consumed = (self.c.total_in() - start_in) as usize;
            self.c
                .compress_vec(&input[consumed..], out, FlushCompress::Sync)
                .expect("deflate with valid parameters does not fail");
            // All input taken and the flush fit (room left): the message is complete.
            if (self.c.total_in() - start_in) as usize == input.len() && out.len() < out.capacity()
            {
                break;
            }
        }
        if out.ends_with(&[0, 0, 0xff, 0xff]) {
            out.truncate(out.len() - 4);
        }
        if out.is_empty() {
            // A sync flush with nothing new emits nothing; an empty message is one 0x00
            // (an empty block), RFC 7692 §7.2.3.6.
            out.push(0);
        }
        if reset {
            self.c.reset();
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InflateError {
    /// The message inflates past the size limit (close 1009).
    TooBig,
    /// Not valid deflate data (close 1007).
    Invalid,
}

/// Decompresses messages, bounded by a size limit checked while inflating.
pub struct Inflater {
    d: Decompress,
}

impl Default for Inflater {
    fn default() -> Self {
        Inflater {
            d: Decompress::new_with_window_bits(false, 15),
        }
    }
}

impl Inflater {
    /// Inflate one message (its compressed payload) into `out` (cleared first). `reset`:
    /// forget the context after it.
    pub fn inflate(
        &mut self,
        input: &[u8],
        limit: usize,
        out: &mut Vec<u8>,
        reset: bool,
    ) -> Result<(), InflateError> {
        out.clear();
        if input.is_empty() {
            // Nothing was compressed; feeding only the tail would desync the stream.
            return Ok(());
        }
        let res = self
            .inflate_part(input, limit, out)
            .and_then(|()| self.inflate_part(&[0, 0, 0xff, 0xff], limit, out));
        if reset || res.is_err() {
            self.d.reset(false);
        }
        res
    }

    fn inflate_part(
        &mut self,
        input: &[u8],
        limit: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), InflateError> {
        let start_in = self.d.total_in();
        loop {
            if out.len() == out.capacity() {
                // Grow in steps, never past what the limit allows (+1 to detect overflow).
                let room = (limit + 1).saturating_sub(out.len());
                if room == 0 {
                    return Err(InflateError::TooBig);
                }
                out.reserve_exact(room.min(out.capacity().max(4096)));
            }
            let (in_before, out_before) = (self.d.total_in(), out.len());
            let consumed = (in_before - start_in) as usize;
            let status = self
                .d
                .decompress_vec(&input[consumed..], out, FlushDecompress::Sync)
                .map_err(|_| InflateError::Invalid)?;
            if out.len() > limit {
                return Err(InflateError::TooBig);
            }
            let consumed = (self.d.total_in() - start_in) as usize;
            if status == Status::StreamEnd {
                // A final block ends the stream: nothing may follow it in this message.
                return if consumed == input.len() {
                    Ok(())
                } else {
                    Err(InflateError::Invalid)
                };
            }
            if consumed == input.len() && out.len() < out.capacity() {
                return Ok(());
            }
            let progress = self.d.total_in() != in_before || out.len() != out_before;
            if !progress {
                // Nothing moved although there was room: done if all input was taken.
                return if consumed == input.len() {
                    Ok(())
                } else {
                    Err(InflateError::Invalid)
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: Config = Config {
        level: 1,
        window_bits: 15,
        server_no_context_takeover: false,
        client_no_context_takeover: false,
        threshold: 0,
    };

    #[test]
    fn negotiation_table() {
        let n = |h: &str| negotiate(h, &CFG).map(|(_, r)| r);
        assert_eq!(
            n("permessage-deflate").as_deref(),
            Some("permessage-deflate")
        );
        assert_eq!(
            n("permessage-deflate; client_max_window_bits").as_deref(),
            Some("permessage-deflate")
        );
        assert_eq!(
            n("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
                .as_deref(),
            Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
        );
        assert_eq!(
            n("permessage-deflate; server_max_window_bits=10").as_deref(),
            Some("permessage-deflate; server_max_window_bits=10")
        );
        assert_eq!(
            n("permessage-deflate; server_max_window_bits=\"12\"").as_deref(),
            Some("permessage-deflate; server_max_window_bits=12")
        );
        // Malformed offers are declined; a later good one is taken.
        assert_eq!(n("permessage-deflate; server_max_window_bits=16"), None);
        assert_eq!(n("permessage-deflate; server_max_window_bits"), None);
        assert_eq!(n("permessage-deflate; client_max_window_bits=7"), None);
        assert_eq!(n("permessage-deflate; bogus"), None);
        assert_eq!(
            n("permessage-deflate; server_no_context_takeover; server_no_context_takeover"),
            None
        );
        assert_eq!(n("x-webkit-deflate-frame"), None);
        let (p8, r8) = negotiate("permessage-deflate; server_max_window_bits=8", &CFG).unwrap();
        assert_eq!(r8, "permessage-deflate; server_max_window_bits=8");
        assert!(!p8.compresses(), "accepted, but we send uncompressed");
        let small = Config {
            window_bits: 10,
            server_no_context_takeover: true,
            ..CFG
        };
        let (p, r) = negotiate("permessage-deflate", &small).unwrap();
        assert_eq!(
            r,
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=10"
        );
        assert_eq!(
            (p.server_window_bits, p.server_no_context_takeover),
            (10, true)
        );
    }

    fn round_trip(reset: bool, window: u8) {
        let mut d = Deflater::new(1, window);
        let mut i = Inflater::default();
        let (mut c, mut o) = (Vec::new(), Vec::new());
        let msgs: Vec<Vec<u8>> = vec![
            b"hello hello hello hello".to_vec(),
            Vec::new(),
            (0..200_000u32).map(|x| (x % 251) as u8).collect(),
            b"hello hello hello hello".to_vec(),
        ];
        for m in &msgs {
            d.compress(m, &mut c, reset);
            assert!(!c.ends_with(&[0, 0, 0xff, 0xff]));
            i.inflate(&c, 1 << 20, &mut o, reset).unwrap();
            assert!(o == *m);
        }
    }

    #[test]
    fn round_trips_with_and_without_context_takeover() {
        round_trip(false, 15);
        round_trip(true, 15);
        round_trip(false, 9);
    }

    #[test]
    fn zip_bomb_stops_at_the_limit_without_growing_past_it() {
        let mut d = Deflater::new(1, 15);
        let mut c = Vec::new();
        d.compress(&vec![0u8; 20 << 20], &mut c, true);
        assert!(
            c.len() < 400_000,
            "20 MiB of zeros compresses small: {}",
            c.len()
        );
        let mut i = Inflater::default();
        let mut o = Vec::new();
        assert_eq!(
            i.inflate(&c, 1 << 20, &mut o, true),
            Err(InflateError::TooBig)
        );
        assert!(
            o.capacity() <= (1 << 20) + 4096 + 1,
            "capacity {}",
            o.capacity()
        );
        // The inflater is usable again afterwards.
        d.compress(b"small", &mut c, true);
        i.inflate(&c, 1 << 20, &mut o, true).unwrap();
        assert_eq!(o, b"small");
    }

    #[test]
    fn garbage_is_invalid() {
        let mut i = Inflater::default();
        let mut o = Vec::new();
        assert_eq!(
            i.inflate(&[0xff, 0xff, 0xff, 0xff, 0xff], 1 << 20, &mut o, true),
            Err(InflateError::Invalid)
        );
    }
}
