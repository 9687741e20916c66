// Node smoke test of the wsrt C ABI through the N-API addon: wsrt's own listener echoes, and
// an http server's 'upgrade' event hands its socket to wsrt (the `ws` noServer shape).
// Run: node smoke.js /path/to/wsrt_smoke.node
// Prints "listening on PORT" and "http listening on PORT"; on SIGTERM stops both and prints
// "stopped: opened N, closed N, finalized N" (N-API references released by wsrt).
'use strict';
const http = require('http');
const wsrt = require(process.argv[2]);

const EVENT_OPEN = 2, EVENT_MESSAGE = 3, EVENT_CLOSE = 6;
let opened = 0, closed = 0;
const port = wsrt.start((kind, conn, data, socket) => {
  switch (kind) {
    case EVENT_OPEN:
      opened++;
      return { conn, path: data }; // this connection's object: wsrt holds a reference to it
    case EVENT_MESSAGE:
      if (wsrt.send(conn, data) < 0) throw new Error(`send to ${conn} failed`);
      break;
    case EVENT_CLOSE:
      // The object returned at OPEN comes back with CLOSE (event.user_data).
      if (!socket || socket.conn !== conn) throw new Error(`CLOSE without its object: ${conn}`);
      closed++;
      break;
  }
});
console.log(`listening on ${port}`);

const server = http.createServer((req, res) => res.end('plain http\n'));
server.on('upgrade', (req, socket, head) => {
  // Authenticate here (cookies, tokens), then hand over: stop Node reading, pass the fd and
  // the request head (re-serialized from rawHeaders) plus the bytes already read.
  socket.pause();
  socket._handle.readStop();
  let text = `${req.method} ${req.url} HTTP/${req.httpVersion}\r\n`;
  for (let i = 0; i < req.rawHeaders.length; i += 2) text += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
  const rc = wsrt.adopt(socket._handle.fd, Buffer.concat([Buffer.from(text + '\r\n'), head]));
  if (rc !== 0) console.error(`adopt failed: ${rc}`);
  socket.destroy(); // closes Node's fd; wsrt holds its own dup
});
server.listen(0, '127.0.0.1', () => console.log(`http listening on ${server.address().port}`));

process.on('SIGTERM', () => {
  server.close();
  const finalized = wsrt.stop();
  console.log(`stopped: opened ${opened}, closed ${closed}, finalized ${finalized}`);
  // No exit() call: the loop empties (uv_poll closed, http server closed) and Node exits 0.
});
