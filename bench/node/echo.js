// Node `ws` echo (and broadcast-on-receipt) server for wsrt's benchmarks.
// usage: node echo.js [--listen IP:PORT] [--mode echo|broadcast]
'use strict';
const { WebSocketServer } = require('ws');

let listen = '127.0.0.1:9001';
let mode = 'echo';
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i += 2) {
  if (argv[i] === '--listen') listen = argv[i + 1];
  else if (argv[i] === '--mode') mode = argv[i + 1];
  else { console.error('usage: node echo.js [--listen IP:PORT] [--mode echo|broadcast]'); process.exit(2); }
}
const i = listen.lastIndexOf(':');
const wss = new WebSocketServer({ host: listen.slice(0, i), port: Number(listen.slice(i + 1)), perMessageDeflate: false, clientTracking: true });
wss.on('connection', (ws) => {
  ws.on('error', () => {});
  if (mode === 'broadcast') {
    ws.on('message', (data, isBinary) => {
      // ws has no publish: loop over the connections (the README's broadcast example)
      for (const c of wss.clients) c.send(data, { binary: isBinary });
    });
  } else {
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  }
});
