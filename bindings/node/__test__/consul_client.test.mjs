// An independent Consul client (npm `consul`, not written here) against a real
// `connect agent -dev`: catalog and health with tag and passing filters, a TTL check turned
// passing through the client, ACL filtering answering empty lists, and a watch (blocking
// queries) firing on change. Imports nothing of libconnect: it tests the agent's HTTP API as any
// Consul user meets it.
import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'

import Consul from 'consul'

import { aclArgs, putJson, startDevAgent } from './agent_process.mjs'

const T = 10_000
const ROOT = 'root-secret-for-npm-consul'
const children = []

function client(httpAddr, token) {
  const [host, port] = httpAddr.split(':')
  return new Consul({ host, port: Number(port), defaults: token ? { token } : undefined })
}

const ids = (entries) => entries.map((e) => e.Service.ID).sort()

async function start(args) {
  const started = await startDevAgent(args, T)
  children.push(started.child)
  return started.httpAddr
}

after(() => {
  for (const c of children) {
    if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL')
  }
})

describe('npm consul against connect agent -dev', () => {
  let consul

  before(async () => {
    consul = client(await start())
  })

  test('catalog and health with tag and passing, a TTL check turned passing', async () => {
    await consul.agent.service.register({ name: 'web', id: 'web-1', port: 8080, tags: ['v1', 'primary'], check: { ttl: '30s' } })
    await consul.agent.service.register({ name: 'web', id: 'web-2', port: 8081, tags: ['v2'], check: { ttl: '30s' } })

    const rows = await consul.catalog.service.nodes({ service: 'web', tag: 'v1' })
    assert.deepEqual(rows.map((r) => r.ServiceID), ['web-1'])
    assert.deepEqual(ids(await consul.health.service({ service: 'web', tag: 'v2' })), ['web-2'])
    const all = await consul.health.service('web')
    assert.deepEqual(ids(all), ['web-1', 'web-2'])
    assert.ok(all[0].Node.ID, 'the node has a UUID')
    assert.deepEqual(all[0].Checks.map((c) => c.CheckID).sort(), ['serfHealth', 'service:web-1'])

    // New TTL checks start critical.
    assert.deepEqual(await consul.health.service({ service: 'web', passing: true }), [])
    await consul.agent.check.pass({ id: 'service:web-1', note: 'ready' })
    assert.deepEqual(ids(await consul.health.service({ service: 'web', passing: true })), ['web-1'])
    const checks = await consul.health.checks('web')
    const web1 = checks.find((c) => c.CheckID === 'service:web-1')
    assert.equal(web1.Status, 'passing')
    assert.equal(web1.Output, 'ready')
    await consul.agent.check.warn({ id: 'service:web-1', note: 'slow' })
    assert.deepEqual(await consul.health.service({ service: 'web', passing: true }), [])
    await consul.agent.check.pass('service:web-1')
    const passing = await consul.health.state('passing')
    assert.deepEqual(passing.map((c) => c.CheckID).sort(), ['serfHealth', 'service:web-1'])

    await consul.agent.check.register({ name: 'disk', id: 'disk', ttl: '1m', notes: 'root fs' })
    assert.equal((await consul.agent.checks()).disk.Notes, 'root fs')
    await consul.agent.check.deregister('disk')
    assert.equal((await consul.agent.checks()).disk, undefined)

    await consul.agent.service.maintenance({ id: 'web-1', enable: true, reason: 'upgrade' })
    assert.deepEqual(await consul.health.service({ service: 'web', passing: true }), [])
    await consul.agent.service.maintenance({ id: 'web-1', enable: false })
    assert.deepEqual(ids(await consul.health.service({ service: 'web', passing: true })), ['web-1'])
    await consul.agent.check.fail({ id: 'service:web-1', note: 'down' })
    assert.deepEqual(await consul.health.service({ service: 'web', passing: true }), [])
  })

  test('nodes, members, status and connect endpoints', async () => {
    const nodes = await consul.catalog.node.list()
    assert.equal(nodes.length, 1)
    const name = nodes[0].Node
    const node = await consul.catalog.node.services(name)
    assert.equal(node.Node.Node, name)
    const checks = await consul.health.node(name)
    assert.ok(checks.some((c) => c.CheckID === 'serfHealth'))
    assert.deepEqual((await consul.agent.members()).map((m) => m.Name), [name])
    assert.deepEqual(await consul.status.peers(), ['127.0.0.1:8300'])
    assert.deepEqual(await consul.catalog.datacenters(), ['dc1'])
    await consul.agent.service.register({ name: 'native', id: 'native-1', port: 1, connect: { native: true } })
    const connect = await consul.catalog.connect.nodes('native')
    assert.deepEqual(connect.map((r) => r.ServiceID), ['native-1'])
    await assert.rejects(consul.health.service({ service: 'native', filter: 'Bogus == 1' }), /Selector "Bogus" is not valid/)
  })

  test('a watch fires on change', async () => {
    await consul.agent.service.register({ name: 'cache', id: 'cache-1', port: 1, check: { ttl: '30s' } })
    const watch = consul.watch({ method: consul.health.service, options: { service: 'cache', passing: true, wait: '20s' } })
    const seen = []
    const changed = new Promise((resolve, reject) => {
      watch.on('error', reject)
      watch.on('change', (data) => {
        seen.push(data)
        if (seen.length === 2) resolve()
      })
    })
    try {
      // The first answer, then one only after the check turns passing.
      while (seen.length === 0) await new Promise((r) => setTimeout(r, 20))
      assert.deepEqual(seen[0], [])
      const started = Date.now()
      await consul.agent.check.pass('service:cache-1')
      let timer
      const late = new Promise((_, r) => {
        timer = setTimeout(() => r(new Error('no change in time')), T)
      })
      await Promise.race([changed, late]).finally(() => clearTimeout(timer))
      assert.deepEqual(ids(seen[1]), ['cache-1'])
      assert.ok(Date.now() - started < T)
    } finally {
      watch.end()
    }
  })
})

describe('npm consul with ACLs on (default deny)', () => {
  let root, anonymous, httpAddr

  before(async () => {
    httpAddr = await start(aclArgs(ROOT))
    root = client(httpAddr, ROOT)
    anonymous = client(httpAddr)
  })

  test('a token that may not read a service gets empty lists, not errors', async () => {
    await root.agent.service.register({ name: 'db', id: 'db-1', port: 5432, check: { ttl: '30s' } })
    await root.agent.service.register({ name: 'web', id: 'web-1', port: 8080 })
    assert.deepEqual(await anonymous.health.service('db'), [])
    assert.deepEqual(await anonymous.catalog.service.nodes('db'), [])
    assert.deepEqual(await anonymous.catalog.connect.nodes('db'), [])
    assert.deepEqual(await anonymous.catalog.service.list(), {})

    // A token with service:read on web only, and node:read, without which Consul shows no
    // instance (made over plain HTTP: the client has no ACL API).
    const put = (path, body) => putJson(httpAddr, ROOT, path, body)
    const policy = await put('acl/policy', { Name: 'web-read', Rules: 'service "web" { policy = "read" }\nnode_prefix "" { policy = "read" }' })
    const token = (await put('acl/token', { Policies: [{ ID: policy.ID }] })).SecretID
    const webReader = client(httpAddr, token)
    assert.deepEqual(await webReader.health.service('db'), [])
    assert.deepEqual(ids(await webReader.health.service('web')), ['web-1'])
    assert.deepEqual(Object.keys(await webReader.catalog.service.list()), ['web'])
    // And it is told that something was hidden.
    const r = await fetch(`http://${httpAddr}/v1/health/service/db`, { headers: { 'X-Consul-Token': token } })
    assert.equal(r.headers.get('x-consul-results-filtered-by-acls'), 'true')

    // TTL updates need service:write on the check's service.
    await assert.rejects(webReader.agent.check.pass('service:db-1'), (err) => err.response?.statusCode === 403)
    await root.agent.check.pass('service:db-1')
    assert.deepEqual(ids(await root.health.service({ service: 'db', passing: true })), ['db-1'])
  })
})
