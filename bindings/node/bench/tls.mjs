// Handshakes per second and throughput: libconnect's Node path (createServer / connect, which
// add intentions on accept and the SPIFFE check on dial) against plain Node `tls` with the
// same certificates. Bounded: HANDSHAKES sequential connections and MIB mebibytes per run.
//
//   npm run bench    (node --expose-gc bench/tls.mjs, after `napi build --platform`; a
//                     release build measures the addon as shipped: `napi build --platform
//                     --release`; HANDSHAKES, MIB and ROUNDS set the amounts)
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

// Plain Node `tls` as an application would write it: PEM options on every tls.connect, so
// Node builds a SecureContext per connection.
async function dialPlain(port) {
  const o = web.tlsClientOptions('db')
  const socket = tls.connect({ cert: o.cert, key: o.key, ca: o.ca, host: '127.0.0.1', port, checkServerIdentity: () => undefined })
  await once(socket, 'secureConnect')
  return socket
}

// Plain Node `tls` at its best: one SecureContext made up front and shared by every dial
// (what libconnect's connect does per identity generation), no identity check at all.
let sharedContext
async function dialPlainShared(port) {
  if (!sharedContext) {
    const o = web.tlsClientOptions('db')
    sharedContext = tls.createSecureContext({ cert: o.cert, key: o.key, ca: o.ca, minVersion: 'TLSv1.2' })
  }
  const socket = tls.connect({ secureContext: sharedContext, host: '127.0.0.1', port, checkServerIdentity: () => undefined })
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

// Paths take turns, ROUNDS times, each round starting with the next path (what runs first
// after another path's 300 connections meets the garbage they left), so the machine's noise
// falls on each alike; each figure is the median of its rounds.
const ROUNDS = Number(process.env.ROUNDS ?? 15)
const plain = await listenPlain()
const mtls = await db.listen(0, '127.0.0.1', sink)
const rows = [
  ['node tls', () => dialPlain(plain.address().port)],
  ['node tls shared context', () => dialPlainShared(plain.address().port)],
  ['libconnect', () => web.connect('db', { port: mtls.address().port })],
  // The control: the shared-context path once more, measured as a path of its own, shows how
  // far two identical paths differ in one run (the harness's own spread).
  ['node tls shared context control', () => dialPlainShared(plain.address().port)],
]
const samples = Object.fromEntries(rows.map(([name]) => [name, { h: [], t: [] }]))
// Every measurement starts from a collected heap (`npm run bench` passes --expose-gc): the
// garbage 300 connections leave behind otherwise lands on whichever path's bulk comes next.
const collect = globalThis.gc ?? (() => {})
for (let round = 0; round < ROUNDS; round++) {
  for (let k = 0; k < rows.length; k++) {
    const [name, dial] = rows[(round + k) % rows.length]
    collect()
    samples[name].h.push(await handshakes(dial))
    collect()
    samples[name].t.push(await throughput(dial))
  }
}
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]
console.log(`| path | handshakes/s (${HANDSHAKES} sequential, median of ${ROUNDS}) | throughput MiB/s (${MIB} MiB, median of ${ROUNDS}) |`)
console.log('|---|---|---|')
const figures = {}
for (const [name] of rows) {
  const h = median(samples[name].h)
  const t = median(samples[name].t)
  console.log(`| ${name} | ${h.toFixed(0)} | ${t.toFixed(0)} |`)
  figures[name.replaceAll(' ', '_')] = {
    handshakes_per_s: h,
    mib_per_s: t,
    rounds: { handshakes_per_s: samples[name].h, mib_per_s: samples[name].t },
  }
}
if (process.env.BENCH_JSON) {
  const doc = {
    harness: 'node',
    quick: !!process.env.BENCH_QUICK && process.env.BENCH_QUICK !== '0',
    command: 'make bench-node',
    params: { handshakes: HANDSHAKES, mib: MIB, rounds: ROUNDS, node: process.version },
    results: figures,
  }
  writeFileSync(process.env.BENCH_JSON, JSON.stringify(doc, null, 2))
  console.log(`wrote ${process.env.BENCH_JSON}`)
}
plain.close()
mtls.close()
agent.close()
