"""An independent permessage-deflate client (Python `websockets`) for tests/compression.rs.

Usage: deflate_client.py URL PARAMS_JSON
PARAMS_JSON: {"server_no_context_takeover": bool, "client_no_context_takeover": bool,
              "server_max_window_bits": int|null, "client_max_window_bits": int|null}
Sends text, binary and fragmented messages, checks each echo, prints one JSON line:
{"extensions": "...", "ok": true} or {"error": "..."}.
"""
import asyncio
import json
import sys

from websockets.asyncio.client import connect
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory


async def main(url, params):
    factory = ClientPerMessageDeflateFactory(
        server_no_context_takeover=params.get("server_no_context_takeover", False),
        client_no_context_takeover=params.get("client_no_context_takeover", False),
        server_max_window_bits=params.get("server_max_window_bits"),
        client_max_window_bits=params.get("client_max_window_bits"),
    )
    async with connect(url, extensions=[factory], compression=None, max_size=2**25, open_timeout=10) as ws:
        negotiated = ws.response.headers.get("Sec-WebSocket-Extensions", "")
        samples = [
            "hello " * 200,
            "ünïcödé ✓ " * 50,
            b"\x00\x01\x02" * 1000,
            "short",
            "",
            ("json", '{"k": "v", "list": [1, 2, 3]}' * 300),
            bytes(range(256)) * 4096,
        ]
        for s in samples:
            if isinstance(s, tuple):
                s = s[1]
                # Fragmented: websockets sends an iterable as one message in several frames.
                await ws.send([s[: len(s) // 3], s[len(s) // 3 : 2 * len(s) // 3], s[2 * len(s) // 3 :]])
            else:
                await ws.send(s)
            got = await asyncio.wait_for(ws.recv(), 10)
            if got != s:
                print(json.dumps({"error": f"echo differs for a {type(s).__name__} of {len(s)}"}))
                return
        print(json.dumps({"extensions": negotiated, "ok": True}))


if __name__ == "__main__":
    try:
        asyncio.run(main(sys.argv[1], json.loads(sys.argv[2])))
    except Exception as e:  # report, don't hang the Rust test
        print(json.dumps({"error": repr(e)}))
