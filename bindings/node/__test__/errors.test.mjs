import assert from 'node:assert/strict'
import { after, before, test } from 'node:test'

import { createRequire } from 'node:module'

import { Agent, errorCodes } from 'libconnect'

import { aclArgs, putJson, startDevAgent } from './agent_process.mjs'

let agent, web

before(async () => {
  agent = await Agent.dev()
  web = await agent.service('web').ready()
})
after(() => agent.close())

const codes = new Set(errorCodes())

// Every error carries a code of the table; each case names the one it must be.
function is(code) {
  return (e) => {
    assert.ok(e instanceof Error, 'an Error')
    assert.ok(codes.has(e.code), `${e.code} is in the table`)
    assert.equal(e.code, code, e.message)
    assert.ok(e.message.length > 0)
    return true
  }
}

test('bad intention inputs', async () => {
  await assert.rejects(agent.intentions.upsert('web', 'db', 'maybe'), is('INVALID_PARAMETER'))
  await assert.rejects(agent.intentions.upsert('', 'db', 'allow'), is('INVALID_PARAMETER'))
  await assert.rejects(agent.intentions.upsert('web', 'db', 42), is('INVALID_PARAMETER'))
  await assert.rejects(agent.intentions.check(undefined, 'db'), is('INVALID_PARAMETER'))
})

test('bad CA configurations', async () => {
  await assert.rejects(agent.ca.setConfig('vault-ish', {}), is('INVALID_CA_CONFIG'))
  await assert.rejects(agent.ca.setConfig('consul', { PrivateKeyType: 'dsa' }), is('INVALID_CA_CONFIG'))
  await assert.rejects(agent.ca.setConfig('consul', { PrivateKeyType: 'ec', PrivateKeyBits: 123 }), is('INVALID_CA_CONFIG'))
})

test('bad service names and registrations', async () => {
  assert.throws(() => agent.service(''), is('INVALID_PARAMETER'))
  // One name rule in every language: the characters of a SPIFFE path segment, 256 at most.
  for (const bad of ['a/b', '..', 'web\0', 'web\n', 'x'.repeat(10000)]) {
    assert.throws(() => agent.service(bad), is('INVALID_PARAMETER'))
  }
  await assert.rejects(agent.registerService({ name: 'a/b', port: 80 }), is('INVALID_PARAMETER'))
  assert.throws(() => agent.service(7), is('INVALID_PARAMETER'))
  await assert.rejects(agent.registerService({ name: 'x', port: 70000 }), is('INVALID_PARAMETER'))
  await assert.rejects(agent.registerService({ port: 80 }), is('INVALID_PARAMETER'))
})

test('bad peers given to authorize', () => {
  assert.throws(() => web.authorize('spiffe://not a service'), is('INVALID_SPIFFE_ID'))
  assert.throws(() => web.authorize('https://example/svc/web'), is('INVALID_SPIFFE_ID'))
  assert.throws(() => web.authorize(Buffer.from('not DER')), is('INVALID_CERTIFICATE'))
  assert.throws(() => web.authorize('-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n'), is('INVALID_CERTIFICATE'))
  assert.throws(() => web.authorize(12), is('INVALID_PARAMETER'))
})

test('a certificate from another CA fails verification', async () => {
  const other = await Agent.dev()
  const stranger = await other.service('web').ready()
  assert.throws(() => web.authorize(stranger.leafPem()), is('CERTIFICATE_VERIFICATION'))
  other.close()
})

test('dialing what is not there', async () => {
  await assert.rejects(web.connect('nothing-here'), is('CONNECTION_REFUSED'))
  // A port nobody listens on (bound, then closed).
  const net = await import('node:net')
  const srv = net.createServer().listen(0, '127.0.0.1')
  await new Promise((r) => srv.once('listening', r))
  const { port } = srv.address()
  await new Promise((r) => srv.close(r))
  await assert.rejects(web.connect('db', { port }), is('CONNECTION_REFUSED'))
})

test('dials to another datacenter: names checked, typed errors, the datacenter verified', async () => {
  for (const bad of ['', 'DC2', 'dc/2', 'dc2.evil', 'd'.repeat(64)]) {
    await assert.rejects(web.connect('db', { datacenter: bad }), (e) => {
      is('INVALID_PARAMETER')(e)
      assert.match(e.message, /datacenter name must be/)
      return true
    })
  }
  await assert.rejects(web.connect('db', { datacenter: 'dc2' }), (e) => {
    is('INVALID_PARAMETER')(e)
    assert.equal(e.message, 'No path to datacenter: dc2')
    return true
  })
  await assert.rejects(web.connect('db', { datacenter: 'dc2', meshGateway: 'local' }), (e) => {
    is('CONNECTION_REFUSED')(e)
    assert.match(e.message, /mesh gateway in dc1/)
    return true
  })
  await assert.rejects(web.connect('db', { datacenter: 'dc2', meshGateway: 'Local' }), is('INVALID_PARAMETER'))
  await assert.rejects(web.connect('db', { meshGateway: 'local' }), is('INVALID_PARAMETER'))

  // A db in dc1: a dial that names dc1 gets it, one that names dc2 refuses its certificate.
  const db = await agent.service('db').ready()
  const server = await db.listen(0, '127.0.0.1', (socket) => socket.end('hi'))
  const { port } = server.address()
  const socket = await web.connect('db', { port, datacenter: 'dc1' })
  assert.equal(socket.servername, `db.default.dc1.internal.${web.material().trustDomain}`)
  socket.destroy()
  await assert.rejects(web.connect('db', { port, datacenter: 'dc2' }), is('PEER_IDENTITY_MISMATCH'))
  server.close()
})

test('material of a service that has no certificate yet', async () => {
  const remote = new Agent({ address: '127.0.0.1:1' })
  // The agent learns in the background that nothing listens there; once it knows, `service`
  // reports that synchronously (the native `service` surfaces known start errors at once),
  // before it knows the service is created and its calls report it.
  let svc
  try {
    svc = remote.service('late')
  } catch (e) {
    assert.equal(e.code, 'CONNECTION_REFUSED')
  }
  if (svc) {
    assert.throws(() => svc.leafPem(), (e) => ['NOT_READY', 'CONNECTION_REFUSED'].includes(e.code))
    await assert.rejects(svc.ready(), is('CONNECTION_REFUSED'))
  }
  remote.close()
})

test('everything after close is CLOSED', async () => {
  const a = await Agent.dev()
  const svc = await a.service('gone').ready()
  a.close()
  await assert.rejects(a.intentions.check('a', 'b'), is('CLOSED'))
  await assert.rejects(a.ca.rootsPem(), is('CLOSED'))
  assert.throws(() => a.service('again'), is('CLOSED'))
  await assert.rejects(svc.connect('db', { port: 1 }), (e) => codes.has(e.code))
})

test('documented codes of intentions and registrations: NOT_FOUND, INVALID_PARAMETER', async () => {
  await assert.rejects(agent.intentions.check('web', 'a/b'), is('INVALID_PARAMETER'))
  await assert.rejects(agent.intentions.delete('', 'db'), is('INVALID_PARAMETER'))
  await assert.rejects(agent.intentions.delete('nobody', 'nothing'), is('NOT_FOUND'))
  await assert.rejects(agent.deregisterService('never-registered'), is('NOT_FOUND'))
})

test('documented PERMISSION_DENIED: a token without write rights, against connect agent with ACLs', async () => {
  const ROOT = 'root-secret-for-permission-tests'
  const { child, httpAddr } = await startDevAgent(aclArgs(ROOT), 20_000)
  let reader
  try {
    const put = (path, body) => putJson(httpAddr, ROOT, path, body)
    // May read the agent and the services, may write nothing.
    const rules = 'agent_prefix "" { policy = "read" }\nnode_prefix "" { policy = "read" }\nservice_prefix "" { policy = "read" }'
    const policy = await put('acl/policy', { Name: 'read-only', Rules: rules })
    const token = (await put('acl/token', { Policies: [{ ID: policy.ID }] })).SecretID
    reader = await new Agent({ address: httpAddr, token }).ready()
    await assert.rejects(reader.intentions.upsert('web', 'db', 'deny'), is('PERMISSION_DENIED'))
    await assert.rejects(reader.intentions.delete('web', 'db'), is('PERMISSION_DENIED'))
    await assert.rejects(reader.ca.setConfig('consul', { PrivateKeyType: 'ec', PrivateKeyBits: 384 }), is('PERMISSION_DENIED'))
    await assert.rejects(reader.registerService({ name: 'db', port: 5432 }), is('PERMISSION_DENIED'))
    // Deregistering needs service:write on the instance's service (an unknown ID is
    // NOT_FOUND first, as in Consul, which needs the service's name to check the token).
    const registered = await fetch(`http://${httpAddr}/v1/agent/service/register`, {
      method: 'PUT',
      headers: { 'X-Consul-Token': ROOT },
      body: JSON.stringify({ ID: 'db-5432', Name: 'db', Port: 5432 }),
    })
    assert.equal(registered.status, 200)
    await assert.rejects(reader.deregisterService('db-5432'), is('PERMISSION_DENIED'))
    // Reading an intention decision needs service:read on the destination.
    const agentOnly = await put('acl/policy', { Name: 'agent-only', Rules: 'agent_prefix "" { policy = "read" }' })
    const blind = (await put('acl/token', { Policies: [{ ID: agentOnly.ID }] })).SecretID
    const blindAgent = await new Agent({ address: httpAddr, token: blind }).ready()
    try {
      await assert.rejects(blindAgent.intentions.check('web', 'db'), is('PERMISSION_DENIED'))
    } finally {
      blindAgent.close()
    }
  } finally {
    reader?.close()
    child.kill('SIGKILL')
  }
})

test('documented HTTP and TIMEOUT of Agent.ready and the calls that wait for it', async () => {
  const http = await import('node:http')
  const net = await import('node:net')
  const listening = (srv) => new Promise((r) => srv.listen(0, '127.0.0.1', () => r(srv.address().port)))
  // Something that is not a Consul agent answers every request with 500.
  const broken = http.createServer((_, res) => { res.statusCode = 500; res.end('boom') })
  const brokenPort = await listening(broken)
  const wrong = new Agent({ address: `127.0.0.1:${brokenPort}` })
  await assert.rejects(wrong.ready(), (e) => is('HTTP')(e) && /boom/.test(e.message))
  await assert.rejects(wrong.ca.rootsPem(), is('HTTP'))
  await assert.rejects(wrong.intentions.upsert('web', 'db', 'allow'), is('HTTP'))
  wrong.close()
  broken.close()
  // Something that accepts connections and never answers.
  const sockets = []
  const silent = net.createServer((s) => sockets.push(s))
  const silentPort = await listening(silent)
  const mute = new Agent({ address: `127.0.0.1:${silentPort}` })
  const started = Date.now()
  await assert.rejects(mute.ready(300), is('TIMEOUT'))
  assert.ok(Date.now() - started < 10_000, 'ready(300) gave up long before the HTTP timeout')
  mute.close()
  for (const s of sockets) s.destroy()
  silent.close()
})

test('documented CROSS_SIGNING_UNSUPPORTED: a root change the current provider cannot cross-sign', async () => {
  const a = await Agent.dev()
  try {
    // The built-in provider's switch for providers that cannot cross-sign (Consul's test hook).
    await a.ca.setConfig('consul', { DisableCrossSigning: true })
    await assert.rejects(
      a.ca.setConfig('consul', { PrivateKeyType: 'ec', PrivateKeyBits: 384 }),
      (e) => is('CROSS_SIGNING_UNSUPPORTED')(e) && /ForceWithoutCrossSigning/.test(e.message),
    )
  } finally {
    a.close()
  }
})

test('documented nodeError mapping: errno, OpenSSL codes, and IO for anything else', () => {
  const native = createRequire(import.meta.url)('../index.js')
  const mapped = (errno, code) => native.nodeError(errno, code, 'detail')
  assert.equal(mapped(-111, 'ECONNREFUSED').code, 'CONNECTION_REFUSED')
  assert.equal(mapped(-110, 'ETIMEDOUT').code, 'TIMEOUT')
  assert.equal(mapped(undefined, 'ERR_SSL_WRONG_VERSION_NUMBER').code, 'TLS')
  assert.equal(mapped(undefined, 'UNABLE_TO_VERIFY_LEAF_SIGNATURE').code, 'CERTIFICATE_VERIFICATION')
  assert.equal(mapped(undefined, 'CERT_HAS_EXPIRED').code, 'CERTIFICATE_VERIFICATION')
  assert.equal(mapped(undefined, 'SOMETHING_ELSE').code, 'IO')
  assert.equal(mapped(undefined, undefined).code, 'IO')
  for (const e of [mapped(-111, 'ECONNREFUSED'), mapped(undefined, undefined)]) {
    assert.ok(e instanceof Error)
    assert.equal(e.message, 'detail')
  }
})
