// Node's `ws` fan-out server: part of chathub's benchmarks/bench_fanout.py.
//
// The room is the `room=` query parameter; every message a client sends is sent, as
// is, to every other connection of its room (one ws.send each). No compression.
// `ws` is npm-installed into a cache directory at benchmark time (NODE_PATH points to it).
//
// Usage: node ws_server.js PORT
'use strict';
const { WebSocketServer } = require('ws');

const port = parseInt(process.argv[2], 10);
const rooms = new Map();
const wss = new WebSocketServer({
  host: '127.0.0.1', port, backlog: 4096, perMessageDeflate: false, clientTracking: false,
});

wss.on('connection', (ws, req) => {
  const room = new URL(req.url, 'http://127.0.0.1').searchParams.get('room') || '0';
  let members = rooms.get(room);
  if (!members) { members = new Set(); rooms.set(room, members); }
  members.add(ws);
  ws.on('message', (data, isBinary) => {
    for (const c of members) if (c !== ws) c.send(data, { binary: isBinary });
  });
  ws.on('close', () => members.delete(ws));
  ws.on('error', () => {});
});

wss.on('listening', () => {
  const v = require('ws/package.json').version;
  console.log(`node ws ${v} listening on 127.0.0.1:${port} (node ${process.version})`);
});
process.on('SIGTERM', () => process.exit(0));
