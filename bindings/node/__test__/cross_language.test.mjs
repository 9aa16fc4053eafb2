// Node against the other languages, over one `connect agent -dev` process (one CA, one set of
// intentions): Node with the C examples (examples/c echo_server / echo_client, built by the C
// lane into $CARGO_TARGET_DIR/c-test, or LIBCONNECT_C_EXAMPLES) and with a Python peer
// (__test__/fixtures/py_peer.py under bindings/python/.venv, made by the Python lane), in both
// directions, intentions allow and deny. Every process is killed in `after`, also on failure.
import assert from 'node:assert/strict'
import { spawn, spawnSync } from 'node:child_process'
import { accessSync, constants } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { after, before, describe, test } from 'node:test'
import tls from 'node:tls'

import { Agent } from 'libconnect'

import { connectBin, startDevAgent } from './agent_process.mjs'
import { closed, echo, port, roundTrip } from './helpers.mjs'

const T = 10_000
const here = dirname(fileURLToPath(import.meta.url))
const root = resolve(here, '../../..')
const target = process.env.CARGO_TARGET_DIR || join(root, 'target')
const cExamples = process.env.LIBCONNECT_C_EXAMPLES || join(target, 'c-test')
const python = join(root, 'bindings', 'python', '.venv', 'bin', 'python')
const pyPeer = join(here, 'fixtures', 'py_peer.py')

function executable(path) {
  try {
    accessSync(path, constants.X_OK)
    return true
  } catch {
    return false
  }
}

const cSkip = executable(join(cExamples, 'echo_server')) && executable(join(cExamples, 'echo_client'))
  ? false
  : `the C examples are not built in ${cExamples} (scripts/test-c.sh builds them)`
const pySkip = (() => {
  if (!executable(python)) return `no Python venv at ${python} (scripts/test-python.sh makes it)`
  const r = spawnSync(python, ['-c', 'import libconnect'], { timeout: T })
  return r.status === 0 ? false : `libconnect is not installed in ${python} (scripts/test-python.sh)`
})()

const children = []

// Spawns a process and resolves with it and the first stdout line matching `re` (bounded).
function spawnUntil(cmd, args, env, re) {
  const child = spawn(cmd, args, { env, stdio: ['pipe', 'pipe', 'pipe'] })
  children.push(child)
  let err = ''
  child.stderr.on('data', (d) => (err += d))
  const lines = createInterface({ input: child.stdout })
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${cmd}: no ${re} in ${T} ms; stderr: ${err}`)), T)
    const fail = (why) => {
      clearTimeout(timer)
      reject(new Error(`${cmd} ${why}; stderr: ${err}`))
    }
    child.once('error', (e) => fail(String(e)))
    child.once('exit', (code) => fail(`exited with ${code}`))
    const onLine = (line) => {
      const m = re.exec(line)
      if (!m) return
      clearTimeout(timer)
      child.removeAllListeners('exit')
      lines.off('line', onLine)
      resolve({ child, match: m, stderr: () => err })
    }
    lines.on('line', onLine)
    child.stdout.on('error', () => {})
  })
}

// Runs a client to completion (bounded): { status, stdout, stderr }.
function run(cmd, args, env) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env, stdio: ['ignore', 'pipe', 'pipe'] })
    children.push(child)
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d) => (stdout += d))
    child.stderr.on('data', (d) => (stderr += d))
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(`${cmd} did not finish in ${2 * T} ms; stderr: ${stderr}`))
    }, 2 * T)
    child.once('error', reject)
    child.once('close', (status) => {
      clearTimeout(timer)
      resolve({ status, stdout, stderr })
    })
  })
}

// Whether `svc` is refused by `target` at host:port: the handshake fails or the socket closes with
// no echo. Plain `tls.connect` with the service's options, so that the error listener is there
// before the server's alert can arrive.
async function refused(svc, target, { host, port }) {
  const socket = tls.connect({ ...svc.tlsClientOptions(target), host, port })
  let got = ''
  socket.on('data', (d) => (got += d))
  socket.on('error', () => {})
  socket.write('secret')
  // Not `closed()`: its `once(socket, 'close')` rejects on the handshake's 'error'.
  const timer = setTimeout(() => socket.destroy(new Error('neither echoed nor closed')), T)
  await new Promise((resolve) => (socket.destroyed ? resolve() : socket.once('close', resolve)))
  clearTimeout(timer)
  return got === ''
}

// Waits until `svc` denies `name` (intentions arrive through a blocking query over HTTP).
async function waitDenied(svc, name) {
  const id = svc.spiffeId.replace(/[^/]+$/, name)
  const deadline = Date.now() + T
  while (svc.authorize(id).allowed) {
    assert.ok(Date.now() < deadline, `the deny intention for ${name} never arrived`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

// A Node client against an echo server `name` in another language that allows `node-client`
// only (`spawnServer()` starts it and resolves with the match of its `listening on host:port`
// line): node-client gets its message back from `name`'s identity, node-intruder is refused,
// and the server still serves after the refusal.
async function nodeClientForeignServer(name, spawnServer) {
  const { match } = await spawnServer()
  const opts = { host: match[1], port: Number(match[2]), timeoutMs: T }
  const client = await agent.service('node-client').ready(T)
  const socket = await client.connect(name, opts)
  assert.equal(await roundTrip(socket, 'hello from node'), 'hello from node')
  assert.match(socket.getPeerCertificate().subjectaltname, new RegExp(`svc/${name}$`))
  socket.end()
  await closed(socket)

  const intruder = await agent.service('node-intruder').ready(T)
  assert.equal(await agent.intentions.check('node-intruder', name), false)
  assert.ok(await refused(intruder, name, opts))

  const again = await client.connect(name, opts)
  assert.equal(await roundTrip(again, 'again'), 'again')
  again.destroy()
  client.close()
  intruder.close()
}

// A Node echo server `name` that intentions open to `allowed` only, dialed by a program in
// another language (`dial(service, addr, message)` runs it): the allowed client gets its
// message back with the server's identity, the intruder fails with `errorPrefix` on stderr.
async function nodeServerForeignClients({ name, allowed, intruder, message, dial, errorPrefix }) {
  await agent.intentions.upsert('*', name, 'deny')
  await agent.intentions.upsert(allowed, name, 'allow')
  const svc = await agent.service(name).ready(T)
  await waitDenied(svc, intruder)
  const seen = []
  const server = await svc.listen(0, '127.0.0.1', echo(seen))
  const addr = `127.0.0.1:${port(server)}`

  const ok = await dial(allowed, addr, message)
  assert.equal(ok.status, 0, ok.stderr)
  // `message` and `name` hold no regular-expression metacharacters.
  assert.match(ok.stdout, new RegExp(`^${message}\\n\\(from spiffe://\\S+/svc/${name}\\)`))

  const denied = await dial(intruder, addr, 'secret')
  assert.equal(denied.status, 1, denied.stdout + denied.stderr)
  assert.match(denied.stderr, errorPrefix)

  assert.equal(seen.length, 1)
  assert.ok(seen[0].peer.endsWith(`svc/${allowed}`), seen[0].peer)
  server.close()
  svc.close()
}

let agent, httpAddr, env

before(async () => {
  assert.ok(executable(connectBin), `no connect binary at ${connectBin} (cargo build -p connect-core --features cli --bin connect)`)
  const started = await startDevAgent()
  children.push(started.child)
  httpAddr = started.httpAddr
  env = { ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('CONSUL_'))) }
  env.CONSUL_HTTP_ADDR = `http://${httpAddr}`
  agent = new Agent({ address: httpAddr, rootChangeJitterMs: 0 })
  await agent.ready()
})

after(() => {
  agent?.close()
  for (const c of children) {
    if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL')
  }
})

describe('with C', { skip: cSkip }, () => {
  test('a Node client and the C echo_server: allowed and denied', async () => {
    await nodeClientForeignServer('echo-c', () =>
      spawnUntil(
        join(cExamples, 'echo_server'),
        ['-listen', '127.0.0.1:0', '-service', 'echo-c', '-allow', 'node-client'],
        env,
        /listening on (\S+):(\d+)$/,
      ),
    )
  })

  test('the C echo_client and a Node server: allowed and denied', async () => {
    const client = join(cExamples, 'echo_client')
    await nodeServerForeignClients({
      name: 'echo-node',
      allowed: 'c-client',
      intruder: 'c-intruder',
      message: 'hello from C',
      dial: (service, addr, msg) => run(client, ['-service', service, '-target', 'echo-node', addr, msg], env),
      errorPrefix: /echo_client: /,
    })
  })
})

describe('with Python', { skip: pySkip }, () => {
  test('a Node client and a Python server: allowed and denied', async () => {
    await nodeClientForeignServer('echo-py', () =>
      spawnUntil(python, [pyPeer, 'serve', 'echo-py', 'node-client'], env, /^listening on (\S+):(\d+)$/),
    )
  })

  test('a Python client and a Node server: allowed and denied', async () => {
    await nodeServerForeignClients({
      name: 'echo-node2',
      allowed: 'py-client',
      intruder: 'py-intruder',
      message: 'hello from python',
      dial: (service, addr, msg) => run(python, [pyPeer, 'dial', service, 'echo-node2', addr, msg], env),
      errorPrefix: /py_peer: /,
    })
  })
})
