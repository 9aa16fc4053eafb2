// A typed usage file: `tsc --noEmit` keeps lib/index.d.ts (and through it the generated
// index.d.ts) honest. It is type-checked only, never run.

import https from 'node:https'
import type * as tls from 'node:tls'

import {
  Agent,
  Service,
  errorCodes,
  type ConnectError,
  type Material,
  type MtlsServer,
  type PeerAuthorization,
} from 'libconnect'

async function main(): Promise<void> {
  const dev: Agent = await Agent.dev({ rootChangeJitterMs: 0 })
  const remote = new Agent({ address: '127.0.0.1:8500', token: 't', datacenter: 'dc1', caFile: '/ca.pem' })
  await remote.ready()
  await remote.ready(5_000)
  const fromEnv = new Agent()
  fromEnv.close()

  await dev.intentions.upsert('web', 'db', 'allow')
  await dev.intentions.upsert('web', 'db', 'deny')
  // @ts-expect-error: an action is 'allow' or 'deny'
  await dev.intentions.upsert('web', 'db', 'maybe')
  const allowed: boolean = await dev.intentions.check('web', 'db')
  await dev.intentions.delete('web', 'db')
  const roots: string = await dev.ca.rootsPem()
  await dev.ca.setConfig('consul', { PrivateKeyType: 'ec', PrivateKeyBits: 384 })
  await dev.registerService({ name: 'db', port: 8080, address: '127.0.0.1' })
  await dev.deregisterService('db')
  const dc: string = dev.datacenter

  const db: Service = await dev.service('db').ready(5_000)
  const web = dev.service('web')
  const m: Material = db.material()
  const pems: string[] = [db.leafPem(), db.keyPem(), db.rootsPem(), m.chainPem, m.spiffeId]
  const id: string = db.spiffeId
  const ready: boolean = db.isReady
  const jwt: string = await web.jwtSvid(['db', 'api'])
  const claims: Record<string, unknown> = await dev.validateJwtSvid(await web.jwtSvid('db'), 'db')
  void jwt
  void claims

  const server: MtlsServer = db.createServer((socket, peer) => {
    const who: string = peer.peer
    const reason: string = socket.peer.reason
    socket.pipe(socket)
    void who
    void reason
  })
  server.listen(0, '127.0.0.1')
  server.on('tlsClientError', (err) => console.error(err.message))
  const listening: MtlsServer = await db.listen(0, '127.0.0.1', (socket) => socket.end())

  const socket: tls.TLSSocket = await web.connect('db')
  const direct: tls.TLSSocket = await web.connect('db', { port: 8080, host: '127.0.0.1', timeoutMs: 1000 })
  const remoteDc: tls.TLSSocket = await web.connect('db', { datacenter: 'dc2', meshGateway: 'local' })
  // @ts-expect-error: a mesh gateway mode is 'none', 'local' or 'remote'
  await web.connect('db', { datacenter: 'dc2', meshGateway: 'nearest' })
  void remoteDc
  socket.write('hello')

  const api = db.attach(https.createServer(db.tlsServerOptions(), (_req, res) => res.end('ok')))
  api.on('authorizedConnection', (s, p: PeerAuthorization) => console.log(s.remoteAddress, p.allowed))
  https.get({ ...web.tlsClientOptions('db'), host: '127.0.0.1', port: 8443, path: '/' })

  const decision: PeerAuthorization = db.authorize('spiffe://x.consul/ns/default/dc/dc1/svc/web')
  db.authorize(Buffer.from([]))
  db.authorize([Buffer.from([])])
  db.authorize(socket)
  db.authorize(socket.getPeerCertificate(true))

  db.on('change', (generation: number) => console.log(generation))
  db.on('close', () => {})

  try {
    dev.service('')
  } catch (e) {
    const code: string = (e as ConnectError).code
    void code
  }
  const codes: string[] = errorCodes()

  db.close()
  dev.close()
  void [allowed, roots, dc, pems, id, ready, listening, direct, decision, codes]
}

void main
