// Node smoke test of the wsrt C ABI through the N-API addon: wsrt's own listener echoes, and
// an http server's 'upgrade' event hands its socket to wsrt (the `ws` noServer shape).
// Prints "listening on PORT" and "http listening on PORT"; SIGTERM stops both cleanly.
'use strict';
const http = require('http');
const wsrt = require(process.argv[2]);

const EVENT_MESSAGE = 3;
const port = wsrt.start((kind, conn, data) => {
  if (kind === EVENT_MESSAGE) wsrt.send(conn, data);
});
console.log(`listening on ${port}`);

const server = http.createServer((req, res) => res.end('plain http\n'));
server.on('upgrade', (req, socket, head) => {
  // Authenticate here (cookies, tokens), then hand over: stop Node reading, pass the fd
  // and the request head (re-serialized from rawHeaders) plus bytes already read.
  socket.pause();
  socket._handle.readStop();
  let text = `${req.method} ${req.url} HTTP/${req.httpVersion}\r\n`;
  for (let i = 0; i < req.rawHeaders.length; i += 2) text += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
  const bytes = Buffer.concat([Buffer.from(text + '\r\n'), head]);
  const rc = wsrt.adopt(socket._handle.fd, bytes);
  if (rc !== 0) console.error(`adopt failed: ${rc}`);
  socket.destroy(); // wsrt holds its own dup of the fd
});
server.listen(0, '127.0.0.1', () => console.log(`http listening on ${server.address().port}`));

process.on('SIGTERM', () => {
  server.close();
  wsrt.stop();
  console.log('stopped');
});
