// Shared pieces of the node:test suites.
import { once } from 'node:events'

import { Agent } from 'libconnect'

// An echo handler for `createServer`: every authorized connection it sees is counted.
export function echo(seen) {
  return (socket, peer) => {
    seen.push(peer)
    socket.on('data', (d) => socket.write(d))
    socket.on('error', () => {})
  }
}

// Writes `msg` and resolves with the same number of bytes read back.
export async function roundTrip(socket, msg) {
  const want = Buffer.from(msg)
  const got = []
  let n = 0
  const done = new Promise((resolve, reject) => {
    const onData = (d) => {
      got.push(d)
      n += d.length
      if (n >= want.length) {
        socket.off('data', onData)
        resolve()
      }
    }
    socket.on('data', onData)
    socket.once('error', reject)
    socket.once('close', () => reject(new Error('closed before the echo')))
  })
  socket.write(want)
  await done
  return Buffer.concat(got).toString()
}

// Resolves when the socket is closed, whatever the reason.
export async function closed(socket) {
  socket.on('error', () => {})
  if (socket.destroyed) return
  await once(socket, 'close')
}

export function port(server) {
  return server.address().port
}

// A dev agent whose intentions let `allowed` reach `target` and deny `denied`, with the three
// services ready.
export async function devMesh(target, allowed, denied) {
  const agent = await Agent.dev()
  await agent.intentions.upsert(allowed, target, 'allow')
  await agent.intentions.upsert(denied, target, 'deny')
  const ready = (name) => agent.service(name).ready()
  return { agent, target: await ready(target), allowed: await ready(allowed), denied: await ready(denied) }
}
