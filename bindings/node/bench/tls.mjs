// Handshakes per second and throughput: libconnect's Node path (createServer / connect, which
// add intentions on accept and the SPIFFE check on dial) against plain Node `tls` with the
// same certificates. Bounded: HANDSHAKES sequential connections and MIB mebibytes per run.
//
//   node bench/tls.mjs            (after `napi build --platform`; a release build measures
//                                  the addon as shipped: `napi build --platform --release`)
//
// BENCH_JSON=PATH also writes the figures for scripts/bench-report.py.
import { once } from 'node:events'
import { writeFileSync } from 'node:fs'
import tls from 'node:tls'

import { Agent } from 'libconnect'

const HANDSHAKES = Number(process.env.HANDSHAKES ?? 300)
const MIB = Number(process.env.MIB ?? 256)

const agent = await Agent.dev()
await agent.intentions.upsert('web', 'db', 'allow')
const db = await agent.service('db').ready()
const web = await agent.service('web').ready()

function sink(socket) {
  socket.on('data', () => {})
  socket.on('end', () => socket.end())
  socket.on('error', () => {})
}

async function listenPlain() {
  const server = tls.createServer(db.tlsServerOptions(), sink)
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  return server
}

async function dialPlain(port) {
  const o = web.tlsClientOptions('db')
  const socket = tls.connect({ cert: o.cert, key: o.key, ca: o.ca, host: '127.0.0.1', port, checkServerIdentity: () => undefined })
  await once(socket, 'secureConnect')
  return socket
}

async function handshakes(dial) {
  const t0 = process.hrtime.bigint()
  for (let i = 0; i < HANDSHAKES; i++) {
    const s = await dial()
    s.end()
    s.destroy()
  }
  const s = Number(process.hrtime.bigint() - t0) / 1e9
  return HANDSHAKES / s
}

async function throughput(dial) {
  const s = await dial()
  const chunk = Buffer.alloc(64 * 1024, 7)
  const total = MIB * 1024 * 1024
  const t0 = process.hrtime.bigint()
  for (let sent = 0; sent < total; sent += chunk.length) {
    if (!s.write(chunk)) await once(s, 'drain')
  }
  s.end()
  await once(s, 'close')
  const secs = Number(process.hrtime.bigint() - t0) / 1e9
  return MIB / secs
}

const plain = await listenPlain()
const mtls = await db.listen(0, '127.0.0.1', sink)
const rows = [
  ['node tls', () => dialPlain(plain.address().port)],
  ['libconnect', () => web.connect('db', { port: mtls.address().port })],
]
console.log(`| path | handshakes/s (${HANDSHAKES} sequential) | throughput MiB/s (${MIB} MiB) |`)
console.log('|---|---|---|')
const figures = {}
for (const [name, dial] of rows) {
  const h = await handshakes(dial)
  const t = await throughput(dial)
  console.log(`| ${name} | ${h.toFixed(0)} | ${t.toFixed(0)} |`)
  figures[name.replace(' ', '_')] = { handshakes_per_s: h, mib_per_s: t }
}
if (process.env.BENCH_JSON) {
  const doc = {
    harness: 'node',
    quick: !!process.env.BENCH_QUICK && process.env.BENCH_QUICK !== '0',
    command: 'make bench-node',
    params: { handshakes: HANDSHAKES, mib: MIB, node: process.version },
    results: figures,
  }
  writeFileSync(process.env.BENCH_JSON, JSON.stringify(doc, null, 2))
  console.log(`wrote ${process.env.BENCH_JSON}`)
}
plain.close()
mtls.close()
agent.close()
