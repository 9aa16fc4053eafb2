import assert from 'node:assert/strict'
import https from 'node:https'
import { after, before, test } from 'node:test'

import { devMesh, port } from './helpers.mjs'

let agent, api, web, client, intruder, server

before(async () => {
  ;({ agent, target: api, allowed: web, denied: intruder } = await devMesh('api', 'web', 'intruder'))
  server = api.attach(
    https.createServer(api.tlsServerOptions(), (req, res) => {
      res.setHeader('content-type', 'text/plain')
      res.end(`hello ${req.socket.peer.peer.split('/').at(-1)} via ${req.url}`)
    }),
  )
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  await agent.registerService({ name: 'api', port: port(server), address: '127.0.0.1' })
})
after(() => {
  server.close()
  agent.close()
})

function get(options) {
  return new Promise((resolve, reject) => {
    const req = https.get({ ...options, agent: false }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (d) => (body += d))
      res.on('end', () => resolve({ status: res.statusCode, body }))
    })
    req.on('error', reject)
  })
}

test('https.get with tlsClientOptions reaches the https server', async () => {
  const res = await get({ ...web.tlsClientOptions('api'), host: '127.0.0.1', port: port(server), path: '/x' })
  assert.equal(res.status, 200)
  assert.equal(res.body, 'hello web via /x')
})

test('connect() by name speaks HTTP/1.1 to the https server', async () => {
  let socket
  for (let i = 0; i < 100 && !socket; i++) {
    socket = await web.connect('api').catch(() => new Promise((r) => setTimeout(r, 50)))
  }
  assert.ok(socket)
  socket.setEncoding('utf8')
  let text = ''
  socket.on('data', (d) => (text += d))
  socket.end('GET /raw HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n')
  await new Promise((resolve) => socket.on('close', resolve))
  assert.match(text, /^HTTP\/1\.1 200 OK/)
  assert.match(text, /hello web via \/raw$/)
})

test('an https client of the wrong target is refused by its own check', async () => {
  await assert.rejects(get({ ...web.tlsClientOptions('db'), host: '127.0.0.1', port: port(server) }), {
    code: 'PEER_IDENTITY_MISMATCH',
  })
})

test('a denied peer never reaches the request handler', async () => {
  // Earlier clients that gave up mid-handshake report here too; wait for the denial.
  const denied = new Promise((resolve) => {
    const onError = (err) => {
      if (err.code !== 'AUTHORIZATION_DENIED') return
      server.off('tlsClientError', onError)
      resolve(err)
    }
    server.on('tlsClientError', onError)
  })
  const res = get({ ...intruder.tlsClientOptions('api'), host: '127.0.0.1', port: port(server) })
  await assert.rejects(res)
  const err = await denied
  assert.equal(err.code, 'AUTHORIZATION_DENIED')
})
