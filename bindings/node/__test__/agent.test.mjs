import assert from 'node:assert/strict'
import { createRequire } from 'node:module'
import { after, before, test } from 'node:test'

import libconnect, { Agent, Service, errorCodes } from 'libconnect'

const require = createRequire(import.meta.url)

let agent
before(async () => {
  agent = await Agent.dev()
})
after(() => agent.close())

test('require and import give the same objects', () => {
  const cjs = require('libconnect')
  assert.equal(cjs.Agent, Agent)
  assert.equal(cjs.Service, Service)
  assert.equal(libconnect.Agent, Agent)
  assert.equal(typeof cjs.coreVersion(), 'string')
})

test('error codes come from the shared ErrorKind table', () => {
  const codes = errorCodes()
  for (const c of ['INVALID_PARAMETER', 'INVALID_SPIFFE_ID', 'AUTHORIZATION_DENIED', 'NOT_READY', 'CLOSED']) {
    assert.ok(codes.includes(c), c)
  }
  assert.equal(new Set(codes).size, codes.length)
})

test('a dev agent knows its datacenter and its roots', async () => {
  assert.equal(agent.datacenter, 'dc1')
  const pem = await agent.ca.rootsPem()
  assert.match(pem, /^-----BEGIN CERTIFICATE-----/)
})

test('JWT-SVIDs: a service signs one, the agent validates it', async () => {
  const web = await agent.service('web').ready()
  try {
    const token = await web.jwtSvid(['db', 'api'])
    for (const aud of ['db', 'api']) {
      const claims = await agent.validateJwtSvid(token, aud)
      assert.equal(claims.sub, web.spiffeId)
    }
    assert.equal((await agent.validateJwtSvid(await web.jwtSvid('db'), 'db')).aud, 'db')
    await assert.rejects(agent.validateJwtSvid(token, 'other'), { code: 'INVALID_PARAMETER' })
    await assert.rejects(web.jwtSvid([]), { code: 'INVALID_PARAMETER' })
  } finally {
    web.close()
  }
})

test('intentions: upsert, check, delete', async () => {
  await agent.intentions.upsert('web', 'db', 'deny')
  assert.equal(await agent.intentions.check('web', 'db'), false)
  await agent.intentions.upsert('web', 'db', 'allow')
  assert.equal(await agent.intentions.check('web', 'db'), true)
  await agent.intentions.delete('web', 'db')
  await assert.rejects(agent.intentions.delete('web', 'db'), (e) => {
    assert.equal(e.code, 'NOT_FOUND')
    assert.match(e.message, /web => db/)
    return true
  })
  await assert.rejects(agent.intentions.delete('a/b', 'db'), { code: 'INVALID_PARAMETER' })
})

test('a service has PEM material naming it', async () => {
  const svc = await agent.service('web').ready()
  assert.ok(svc.isReady)
  assert.match(svc.spiffeId, /^spiffe:\/\/[^/]+\.consul\/ns\/default\/dc\/dc1\/svc\/web$/)
  assert.match(svc.leafPem(), /BEGIN CERTIFICATE/)
  assert.match(svc.keyPem(), /PRIVATE KEY/)
  assert.equal(svc.rootsPem(), await agent.ca.rootsPem())
  const m = svc.material()
  assert.ok(m.notAfterMs > Date.now())
  assert.equal(typeof m.generation, 'number')
  svc.close()
})

test('an agent over HTTP that is not there rejects ready() and calls', async () => {
  const remote = new Agent({ address: '127.0.0.1:1' })
  await assert.rejects(remote.ready(), { code: 'CONNECTION_REFUSED' })
  await assert.rejects(remote.intentions.check('a', 'b'), { code: 'CONNECTION_REFUSED' })
  assert.throws(() => remote.datacenter, { code: 'CONNECTION_REFUSED' })
  remote.close()
})
