import assert from 'node:assert/strict'
import { X509Certificate } from 'node:crypto'
import { after, before, test } from 'node:test'

import { Agent } from 'libconnect'

import { echo, port, roundTrip } from './helpers.mjs'

let agent, db, web, server
const seen = []

before(async () => {
  // No jitter before leaves follow a new root (Consul waits up to 30 s).
  agent = await Agent.dev({ rootChangeJitterMs: 0 })
  db = await agent.service('db').ready()
  web = await agent.service('web').ready()
  server = await db.listen(0, '127.0.0.1', echo(seen))
})
after(() => agent.close())

function certs(pem) {
  return pem.split(/(?<=-----END CERTIFICATE-----\n?)/).filter((s) => s.includes('BEGIN'))
}

async function until(cond, what) {
  for (let i = 0; i < 400; i++) {
    if (cond()) return
    await new Promise((r) => setTimeout(r, 20))
  }
  assert.fail(`timed out waiting until ${what}`)
}

test('rotation while connected: the open connection keeps working, a new one gets the new leaf', async () => {
  const open = await web.connect('db', { port: port(server) })
  assert.equal(await roundTrip(open, 'before'), 'before')
  const oldRoots = certs(await agent.ca.rootsPem())
  const oldDbLeaf = db.leafPem()
  const oldWebLeaf = web.leafPem()
  let changes = 0
  db.on('change', () => changes++)

  await agent.ca.setConfig('consul', { PrivateKeyType: 'ec', PrivateKeyBits: 384 })
  await until(() => certs(db.rootsPem()).length > oldRoots.length, 'db trusts the new root')
  await until(() => db.leafPem() !== oldDbLeaf && web.leafPem() !== oldWebLeaf, 'both leaves are re-issued')
  // 'change' events reach JS through a threadsafe function, after the state they announce is
  // already readable: wait for their delivery rather than racing it.
  await until(() => changes >= 2, `'change' fired for the roots and the leaf (${changes})`)

  const newRoot = certs(db.rootsPem())
    .map((p) => new X509Certificate(p))
    .find((c) => !oldRoots.some((o) => new X509Certificate(o).fingerprint256 === c.fingerprint256))
  assert.ok(newRoot, 'a new root')
  assert.equal(newRoot.publicKey.asymmetricKeyDetails.namedCurve, 'secp384r1')
  const dbLeaf = new X509Certificate(certs(db.leafPem())[0])
  assert.ok(dbLeaf.checkIssued(newRoot) && dbLeaf.verify(newRoot.publicKey), 'the new leaf is from the new root')

  // The open connection is unaffected.
  assert.equal(await roundTrip(open, 'during'), 'during')

  // A new connection: the server presents its new leaf (setSecureContext), the client its own.
  const fresh = await web.connect('db', { port: port(server) })
  assert.equal(await roundTrip(fresh, 'after'), 'after')
  assert.equal(new X509Certificate(fresh.getPeerCertificate().raw).fingerprint256, dbLeaf.fingerprint256)
  const clientLeaf = new X509Certificate(certs(web.leafPem())[0])
  assert.match(seen.at(-1).peer, /svc\/web$/)
  assert.ok(clientLeaf.checkIssued(newRoot))

  assert.equal(await roundTrip(open, 'still'), 'still')
  open.destroy()
  fresh.destroy()
})
