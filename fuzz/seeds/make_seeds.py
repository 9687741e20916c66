#!/usr/bin/env python3
"""Writes the hand-made seed corpora of the fuzz targets into fuzz/seeds/<target>/.

Each seed is one meaningful case (a valid header, request or frame stream, or one specific
way of being wrong) in the input layout its target documents at the top of
fuzz/fuzz_targets/<target>.rs. Re-run after changing a layout:
    python3 fuzz/seeds/make_seeds.py
Files from `cargo fuzz cmin` (named by their hash) are kept; only the named seeds are rewritten.
"""
import os
import socket
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---------------------------------------------------------------------------------------
# proxy_protocol: [cfg, max_hi, max_lo, ncuts, lens.., stream]

V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"
REQ = b"GET /chat HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n\r\n"


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def v2(ver_cmd, fam, addr, tlvs=(), crc=False):
    body = bytearray(addr)
    for t, v in tlvs:
        body += bytes([t]) + struct.pack(">H", len(v)) + v
    at = None
    if crc:
        body += b"\x03\x00\x04"
        at = 16 + len(body)
        body += b"\x00" * 4
    h = bytearray(V2_SIG + bytes([ver_cmd, fam]) + struct.pack(">H", len(body)) + body)
    if at is not None:
        h[at:at + 4] = struct.pack(">I", crc32c(bytes(h)))
    return bytes(h)


def addr4(src, dst, sp, dp):
    return socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack(">HH", sp, dp)


def addr6(src, dst, sp, dp):
    return (socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
            + struct.pack(">HH", sp, dp))


def addr_unix(src, dst):
    return src.ljust(108, b"\x00") + dst.ljust(108, b"\x00")


def proxy(name, stream, versions=2, max_len=4096, lens=b""):
    m = max_len - 16
    write("proxy_protocol", name, bytes([versions]) + struct.pack(">H", m)
          + bytes([len(lens)]) + lens + stream)


def proxy_seeds():
    a4 = addr4("192.0.2.1", "10.0.0.1", 56324, 443)
    proxy("v1-tcp4", b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n" + REQ, lens=b"\x07\x0d")
    proxy("v1-tcp6", b"PROXY TCP6 2001:db8::1 ::1 4711 443\r\n" + REQ, versions=0)
    proxy("v1-tcp6-longest", b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
          b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n", lens=b"\x01")
    proxy("v1-unknown", b"PROXY UNKNOWN\r\n" + REQ)
    proxy("v1-unknown-junk", b"PROXY UNKNOWN ffff::1  whatever  1 2\r\n")
    proxy("v1-too-long", b"PROXY UNKNOWN " + b"x" * 100 + b"\r\n")
    proxy("v1-bad-ip", b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n")
    proxy("v1-leading-zero", b"PROXY TCP4 1.2.3.4 01.2.3.4 1 2\r\n")
    proxy("v1-port-range", b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n")
    proxy("v1-lf-only", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n")
    proxy("v1-zone-id", b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n")
    proxy("v1-v4-in-v6", b"PROXY TCP6 ::ffff:192.0.2.1 ::1 1 2\r\n", lens=b"\x03\x01")
    proxy("v1-when-v2-only", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", versions=1)
    proxy("v1-second-header", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nPROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n")
    proxy("v2-tcp4", v2(0x21, 0x11, a4) + REQ, versions=1, lens=b"\x0c\x04\x01")
    proxy("v2-tcp6", v2(0x21, 0x21, addr6("2001:db8::7", "2001:db8::1", 1234, 8080)) + REQ)
    proxy("v2-unix", v2(0x21, 0x31, addr_unix(b"/run/lb.sock", b"\x00abstract")))
    proxy("v2-local", v2(0x20, 0x00, b"") + REQ)
    proxy("v2-local-any-family", v2(0x20, 0x99, b"\x01\x02\x03"))
    proxy("v2-unspec", v2(0x21, 0x00, b"\x09" * 20))
    proxy("v2-tlvs", v2(0x21, 0x11, a4, [(0x04, b"\x00" * 5), (0x02, b"example.com"),
                                         (0xEA, b"\x01vpce-0123"), (0x01, b"http/1.1"),
                                         (0x20, b"\x01\x00\x00\x00\x00"), (0x30, b"netns")]))
    proxy("v2-crc", v2(0x21, 0x11, a4, [(0x02, b"example.com"), (0x01, b"h2")], crc=True) + REQ)
    proxy("v2-crc-tcp6-utf8", v2(0x21, 0x21, addr6("::1", "::2", 5, 6),
                                 [(0x02, "ü.example".encode())], crc=True))
    bad_crc = bytearray(v2(0x21, 0x11, a4, [], crc=True))
    bad_crc[-1] ^= 0xFF
    proxy("v2-crc-mismatch", bytes(bad_crc))
    proxy("v2-two-crc", v2(0x21, 0x11, a4, [(0x03, b"\x00" * 4), (0x03, b"\x00" * 4)]))
    overrun = bytearray(v2(0x21, 0x11, a4, [(0x02, b"abc")]))
    overrun[16 + 12 + 2] = 10
    proxy("v2-tlv-overrun", bytes(overrun))
    proxy("v2-bad-authority", v2(0x21, 0x11, a4, [(0x02, b"\xff\xfe")]))
    proxy("v2-too-large", V2_SIG + b"\x21\x11" + struct.pack(">H", 5000) + a4)
    proxy("v2-small-max", v2(0x21, 0x11, a4, [(0x04, b"\x00" * 100)]), max_len=40)
    proxy("v2-address-short", v2(0x21, 0x21, b"\x00" * 35))
    proxy("v2-datagram", v2(0x21, 0x12, a4))
    proxy("v2-version-1", v2(0x11, 0x11, a4))
    proxy("v2-command-2", v2(0x22, 0x11, a4))
    proxy("v2-when-v1-only", v2(0x21, 0x11, a4), versions=0)
    proxy("v2-second-header", v2(0x21, 0x11, a4) + v2(0x21, 0x11, a4))
    proxy("v2-then-crlf", v2(0x21, 0x11, a4) + b"\r\n\r\nGET / HTTP/1.1\r\n\r\n", lens=b"\x20")
    proxy("plain-http", REQ)
    proxy("tls-hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
    proxy("post", b"POST / HTTP/1.1\r\n\r\n")


# ---------------------------------------------------------------------------------------
# handshake: [cfg, size, headers, ncuts, lens.., stream]

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def upgrade(extra="", path="/chat?token=x", method="GET", version="1.1", key=True,
            host=True, ws=True):
    lines = [f"{method} {path} HTTP/{version}"]
    if host:
        lines.append("Host: example.com")
    if ws:
        lines += ["Upgrade: websocket", "Connection: Upgrade"]
    if key:
        lines.append(f"Sec-WebSocket-Key: {KEY}")
    lines.append("Sec-WebSocket-Version: 13")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


def hs(name, stream, cfg=0x00, size=248, headers=15, lens=b""):
    write("handshake", name, bytes([cfg, size, headers, len(lens)]) + lens + stream)


def handshake_seeds():
    hs("upgrade", upgrade())
    hs("upgrade-split", upgrade(), lens=b"\x05\x01\x10")
    hs("upgrade-paths", upgrade(path="/ws/room1"), cfg=0x01)
    hs("upgrade-404", upgrade(path="/nope"), cfg=0x01)
    hs("subprotocols", upgrade("Sec-WebSocket-Protocol: x, v1.chat\r\n"
                               "Sec-WebSocket-Protocol: v2.chat\r\n"), cfg=0x10)
    hs("deflate-offers", upgrade("Sec-WebSocket-Extensions: permessage-deflate; "
                                 "client_max_window_bits; server_max_window_bits=10, "
                                 "permessage-deflate; server_no_context_takeover\r\n"
                                 "Sec-WebSocket-Extensions: x-webkit-deflate-frame\r\n"))
    hs("deflate-quoted", upgrade('Sec-WebSocket-Extensions: permessage-deflate; '
                                 'server_max_window_bits="12"; client_no_context_takeover\r\n'),
       cfg=0x40)
    hs("origin-same-host", upgrade("Origin: https://example.com\r\n"))
    hs("origin-evil", upgrade("Origin: https://evil.com\r\n"))
    hs("origin-list", upgrade("Origin: HTTPS://App.Example.com\r\n"), cfg=0x08)
    hs("origin-any", upgrade("Origin: null\r\n"), cfg=0x04)
    hs("forwarded", upgrade("X-Forwarded-For: 198.51.100.7, 10.0.0.2\r\n"
                            "Forwarded: for=192.0.2.60;proto=http, for=\"[2001:db8::1]:4711\"\r\n"
                            "X-Real-IP: 203.0.113.5\r\nVia: 1.1 nginx\r\n"))
    hs("bare-lf", b"\r\nGET /chat HTTP/1.1\nHost: h\nUpgrade: websocket\nConnection: upgrade\n"
       b"Sec-WebSocket-Key: " + KEY.encode() + b"\nSec-WebSocket-Version: 13\n\nXY")
    hs("frame-after", upgrade() + b"\x81\x82\x01\x02\x03\x04\x05\x06", lens=b"\x40")
    hs("health", b"GET /healthz HTTP/1.0\r\n\r\n")
    hs("head-health", b"HEAD /healthz?x=1 HTTP/1.1\r\nSec-WebSocket-Key: nope\r\n\r\n")
    hs("plain-http", b"GET /index.html HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n")
    hs("h2c", b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n\r\n")
    hs("post-upgrade", upgrade(method="POST"))
    hs("http10-upgrade", upgrade(version="1.0"))
    hs("no-host", upgrade(host=False))
    hs("no-upgrade-headers", upgrade("X-Forwarded-For: 10.0.0.1\r\n", ws=False))
    hs("connection-close", upgrade().replace(b"Connection: Upgrade", b"Connection: close"))
    hs("connection-list", upgrade().replace(b"Connection: Upgrade",
                                            b"Connection: keep-alive\r\nConnection: UPGRADE"))
    hs("no-key", upgrade(key=False))
    hs("bad-key", upgrade().replace(KEY.encode(), b"not base64!!"))
    hs("short-key", upgrade().replace(KEY.encode(), b"AAAA"))
    hs("two-keys", upgrade(f"Sec-WebSocket-Key: {KEY}\r\n"))
    hs("version-8", upgrade().replace(b"Version: 13", b"Version: 8"))
    hs("tls", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
    hs("proxy-header", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n" + upgrade())
    hs("http2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    hs("too-large", upgrade("X-Pad: " + "a" * 400 + "\r\n"), size=0)
    hs("too-many", upgrade("".join(f"X-{i}: {i}\r\n" for i in range(10))), headers=0)
    hs("bad-request-line", b"GET /x HTTP/1.1 junk\r\nHost: a\r\n\r\n", lens=b"\x01")
    hs("obs-fold", upgrade("X-Long: a\r\n  continued\r\n"))
    hs("utf8-header", upgrade().replace(b"Version: 13\r\n", b"Version: 13\r\nX-Name: caf\xc3\xa9 \xff\r\n"))


# ---------------------------------------------------------------------------------------
# frames: [flags, frame_hi, frame_lo, msg_hi, msg_lo, ncuts, lens.., body]

MASK = b"\x37\xfa\x21\x3d"


def frame(b0, payload, mask=MASK, length=None):
    n = len(payload) if length is None else length
    m = 0x80 if mask else 0
    if n < 126:
        h = bytes([b0, m | n])
    elif n < 65536:
        h = bytes([b0, m | 126]) + struct.pack(">H", n)
    else:
        h = bytes([b0, m | 127]) + struct.pack(">Q", n)
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        h += mask
    return h + payload


def frames(name, body, flags=0, max_frame=65535, max_msg=65535, lens=b""):
    write("frames", name, bytes([flags]) + struct.pack(">HH", max_frame, max_msg)
          + bytes([len(lens)]) + lens + body)


def raw_deflate(data):
    c = zlib.compressobj(1, zlib.DEFLATED, -15)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    return out[:-4] if out.endswith(b"\x00\x00\xff\xff") else out


def frames_seeds():
    frames("text", frame(0x81, b"hello"))
    frames("single-frames", frame(0x81, b"hello") + frame(0x82, b"\x00\x01\x02\xff")
           + frame(0x89, b"p") + frame(0x8a, b"") + frame(0x81, b""), lens=b"\x03\x01\x07")
    frames("fragmented-ping-between", frame(0x01, b"Hel") + frame(0x89, b"ping!")
           + frame(0x00, b"lo, ") + frame(0x80, b"world"), lens=b"\x02")
    frames("utf8-split-fragments", frame(0x01, "aé€".encode()[:3]) + frame(0x80, "aé€".encode()[3:]))
    frames("len-126", frame(0x82, bytes(range(126))))
    frames("len-300-split", frame(0x82, bytes(i % 251 for i in range(300))), lens=b"\x01\x09\x64")
    frames("len-64bit-encoding", bytes([0x82, 0xFF]) + struct.pack(">Q", 3) + MASK + b"abc")
    frames("close-code-reason", frame(0x88, b"\x03\xe8bye") + frame(0x81, b"ignored"))
    frames("close-empty", frame(0x88, b""))
    frames("close-1-byte", frame(0x88, b"\x03"))
    frames("close-bad-code", frame(0x88, b"\x03\xed"))
    frames("close-bad-utf8", frame(0x88, b"\x03\xe8\xff"))
    frames("unmasked", frame(0x81, b"hi", mask=None))
    frames("reserved-bits", frame(0xB1, b"hi"))
    frames("rsv1-not-allowed", frame(0xC1, b"hi"))
    frames("compressed", frame(0xC1, raw_deflate(b"hello hello hello")), flags=1)
    frames("rsv1-on-continuation", frame(0x41, b"a") + frame(0xC0, b"b"), flags=1)
    frames("unknown-opcode", frame(0x83, b""))
    frames("control-too-long", frame(0x89, b"x" * 126))
    frames("control-fragmented", frame(0x09, b"x"))
    frames("unexpected-continuation", frame(0x80, b"x"))
    frames("expected-continuation", frame(0x01, b"a") + frame(0x81, b"b"))
    frames("length-msb", bytes([0x82, 0xFF]) + b"\x80" + b"\x00" * 7 + MASK)
    frames("frame-too-big", frame(0x82, b"x" * 200), max_frame=125)
    frames("message-too-big", frame(0x02, b"x" * 100) + frame(0x80, b"y" * 100), max_msg=150)
    frames("invalid-utf8", frame(0x81, b"ok\xf4\x90\x80\x80"))
    frames("invalid-utf8-fragment", frame(0x01, b"ok\xe2\x82") + frame(0x80, b"A"))
    frames("declared-huge", bytes([0x82, 0xFF]) + struct.pack(">Q", 1 << 40) + MASK + b"abc")
    # Structured mode (flags & 2): items [op, len, (len_hi), data.., per fragment: cut, ping?].
    frames("built-text", bytes([0x08, 5]) + b"hello", flags=2)
    frames("built-fragments", bytes([0x48, 11]) + b"hello world" + b"\x03\x01\x04ping\x04",
           flags=2, lens=b"\x05")
    frames("built-binary-long", bytes([0x03, 0x2c, 0x01]) + bytes(range(256)) * 2, flags=2)
    frames("built-controls", b"\x04\x02hi\x05\x00\x06\x01\x03bye\x07", flags=2)
    frames("built-compressed", bytes([0x18, 20]) + b"compress me, please!" * 1
           + bytes([0x30, 9]) + b"123456789" + b"\x04\x00", flags=3)
    frames("built-limits", bytes([0x20, 200]) + b"z" * 200 + b"\x50\x00", flags=2,
           max_frame=100, max_msg=150)
    frames("server-frames", b"\x06" + b"\x04\x03abc", flags=6)


# ---------------------------------------------------------------------------------------
# options: [sel, len, value..]*

OPTION_VALUES = [  # (name, good values, bad values), in wsrt::OPTIONS order
    ("listen", ["127.0.0.1:9001", "[::]:8080", " [fe80::1%2]:0 "], ["nowhere", "1.2.3.4"]),
    ("workers", ["0", "4", "+7"], ["300", "-1"]),
    ("listen_backlog", ["1024", "65535"], ["0"]),
    ("max_connections", ["100000"], ["16000001"]),
    ("max_header_bytes", ["8KiB", "256", "1 MB"], ["255", "2MiB"]),
    ("max_headers", ["64"], ["3"]),
    ("handshake_timeout", ["10s", "500ms", "2m"], ["5ms", "0"]),
    ("paths", ["*", "/ws, /push/*", " /a ,, /b "], ["", "ws"]),
    ("allowed_origins", ["https://app.example.com,http://localhost:3000", "*", ""], []),
    ("subprotocols", ["v2.chat, v1.chat"], []),
    ("health_path", ["/healthz", "", " /h "], ["healthz"]),
    ("max_message_size", ["16MiB", "125", "1GiB"], ["124", "2GiB", "99999999999999999999K"]),
    ("max_frame_size", ["64KiB", "1g"], ["12 fortnights"]),
    ("ping_interval", ["30s", "0", "0h", "24h"], ["5ms", "25h"]),
    ("idle_timeout", ["120s", "1min"], ["9ms"]),
    ("close_timeout", ["5s", "1ms"], ["0"]),
    ("max_backpressure", ["1MiB", "1"], ["0"]),
    ("backpressure_policy", ["close", " DROP "], ["maybe"]),
    ("shutdown_timeout", ["10s", "0"], ["1d"]),
    ("drain_delay", ["0s", "86400"], ["86401"]),
    ("drain_window", ["250ms"], ["-1s"]),
    ("forwarded_header", ["x-forwarded-for", "X-Real-IP", "forwarded", "auto"], ["via"]),
    ("compression", ["on", "off", "TRUE", "0"], ["yes"]),
    ("compression_level", ["1", "9"], ["10"]),
    ("compression_window_bits", ["15", "9"], ["8"]),
    ("compression_no_context_takeover", ["server,client", "client", ""], ["both"]),
    ("compression_threshold", ["64", "0"], ["-5"]),
    ("max_queued_events", ["10000"], ["15"]),
    ("proxy_protocol", ["off", "v1", "V2", "any"], ["v3"]),
    ("proxy_header_timeout", ["5s"], ["1ms"]),
    ("proxy_max_header_bytes", ["4KiB", "232", "65551"], ["231", "64KiB1"]),
    ("trusted_proxies", ["10.0.0.0/8, ::1", "0.0.0.0/0 ::/0", "::ffff:192.0.2.0/120", ""],
     ["10.0.0.1/8", "10.0.0.0/33", "fe80::1%eth0"]),
]


def option_op(index, value, upper=False):
    v = value.encode()
    return bytes([index | (0x80 if upper else 0), len(v)]) + v


def options_seeds():
    n = len(OPTION_VALUES)
    for i, (name, good, bad) in enumerate(OPTION_VALUES):
        ops = b"".join(option_op(i, v) for v in good)
        ops += b"".join(option_op(i, v, upper=True) for v in bad)
        write("options", name, ops)
    write("options", "unknown-name", option_op(n, "no_such_option") + option_op(n, "MAX-MESSAGE-SIZE"))
    write("options", "cross-checks", option_op(13, "30s") + option_op(14, "20s")
          + option_op(12, "32MiB") + option_op(28, "v2"))


# ---------------------------------------------------------------------------------------
# inflate: [limit_hi, limit_lo, flags, ([len, bytes..])*]


def msgs(*parts):
    out = b""
    for p in parts:
        assert len(p) < 256
        out += bytes([len(p)]) + p
    return out


def inflate(name, limit, flags, body):
    write("inflate", name, struct.pack(">H", limit) + bytes([flags]) + body)


def inflate_seeds():
    # Context takeover: the second message refers back to the first.
    c = zlib.compressobj(1, zlib.DEFLATED, -15)
    m1 = c.compress(b"hello hello hello hello") + c.flush(zlib.Z_SYNC_FLUSH)
    m2 = c.compress(b"hello hello hello hello") + c.flush(zlib.Z_SYNC_FLUSH)
    inflate("takeover", 1024, 0, msgs(m1[:-4], m2[:-4]))
    inflate("no-takeover", 1024, 1, msgs(raw_deflate(b"abc" * 50), raw_deflate(b"xyz")))
    inflate("bomb", 4096, 2, msgs(raw_deflate(b"\x00" * 100000)[:250]))
    inflate("bomb-exact-limit", 300, 0, msgs(raw_deflate(b"a" * 300), raw_deflate(b"a" * 301)))
    inflate("empty-message", 16, 0, msgs(b"\x00", b""))
    inflate("final-block", 64, 0, msgs(zlib.compress(b"x", 1)[2:-4], b"\x03\x00"))
    stored = zlib.compressobj(0, zlib.DEFLATED, -15)
    inflate("stored", 512, 0, msgs((stored.compress(b"stored block!") + stored.flush(zlib.Z_SYNC_FLUSH))[:-4]))
    inflate("garbage", 1024, 0, msgs(b"\xff\xff\xff\xff\xff", b"\x00\x00\xff\xff"))
    inflate("trailing-after-final", 64, 0, msgs(zlib.compress(b"y")[2:-4] + b"junk"))
    inflate("round-trip", 4096, 4 | (6 << 3), msgs(b"hello hello", b"", bytes(range(200))))
    inflate("round-trip-reset", 2048, 4 | 1 | (3 << 5), msgs(b"abcabcabc", b"zzz"))
    inflate("round-trip-too-big", 100, 4 | 2 | (7 << 5), msgs(b"0123456789" * 5))


if __name__ == "__main__":
    proxy_seeds()
    handshake_seeds()
    frames_seeds()
    options_seeds()
    inflate_seeds()
    for t in sorted(os.listdir(HERE)):
        if os.path.isdir(os.path.join(HERE, t)):
            print(t, len(os.listdir(os.path.join(HERE, t))))
