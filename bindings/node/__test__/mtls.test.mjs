import assert from 'node:assert/strict'
import { after, before, test } from 'node:test'

import { closed, devMesh, echo, port, roundTrip } from './helpers.mjs'

let agent, db, web, api, server
const seen = []

before(async () => {
  ;({ agent, target: db, allowed: web, denied: api } = await devMesh('db', 'web', 'api'))
  server = await db.listen(0, '127.0.0.1', echo(seen))
})
after(() => agent.close())

test('an allowed peer connects and talks', async () => {
  const socket = await web.connect('db', { port: port(server) })
  assert.equal(await roundTrip(socket, 'hello'), 'hello')
  const last = seen.at(-1)
  assert.equal(last.allowed, true)
  assert.match(last.peer, /svc\/web$/)
  assert.match(last.reason, /Matched L4 intention: ALLOW default\/web => default\/db/)
  socket.destroy()
})

test('a denied peer is destroyed before the handler sees it', async () => {
  const before = seen.length
  const denied = new Promise((resolve) => {
    const onError = (err, socket) => {
      if (err.code !== 'AUTHORIZATION_DENIED') return
      server.off('tlsClientError', onError)
      resolve({ err, socket })
    }
    server.on('tlsClientError', onError)
  })
  const socket = await api.connect('db', { port: port(server) }).catch((e) => e)
  if (!(socket instanceof Error)) {
    socket.write('secret')
    await closed(socket)
  }
  const { err, socket: serverSide } = await denied
  assert.equal(err.code, 'AUTHORIZATION_DENIED')
  assert.match(err.message, /svc\/api may not connect: Matched L4 intention: DENY default\/api => default\/db/)
  assert.ok(serverSide.destroyed)
  assert.equal(seen.length, before, 'the handler never saw the denied peer')
})

test('connect by name finds a registered instance', async () => {
  await agent.registerService({ name: 'db', port: port(server), address: '127.0.0.1' })
  let socket
  for (let i = 0; i < 100 && !socket; i++) {
    socket = await web.connect('db').catch((e) => {
      assert.equal(e.code, 'CONNECTION_REFUSED')
      return new Promise((r) => setTimeout(r, 50))
    })
  }
  assert.ok(socket, 'the catalog answered')
  assert.equal(socket.authorized, true)
  assert.equal(await roundTrip(socket, 'by name'), 'by name')
  socket.destroy()
  await agent.deregisterService('db')
})

test('a client refuses a server that is not the target', async () => {
  await assert.rejects(web.connect('cache', { port: port(server) }), (e) => {
    assert.equal(e.code, 'PEER_IDENTITY_MISMATCH')
    assert.match(e.message, /peer certificate mismatch got spiffe:\/\/.*\/svc\/db, want spiffe:\/\/.*\/svc\/cache/)
    return true
  })
})

test('authorize explains decisions for URIs and certificates', () => {
  const td = db.material().trustDomain
  const allowed = db.authorize(`spiffe://${td}/ns/default/dc/dc1/svc/web`)
  assert.equal(allowed.allowed, true)
  const deniedByCert = db.authorize(api.leafPem())
  assert.equal(deniedByCert.allowed, false)
  assert.match(deniedByCert.reason, /DENY/)
})
