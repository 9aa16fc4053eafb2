// A `connect agent -dev` process for the suites that talk to it over HTTP; imports nothing of
// libconnect, so that the tests of independent Consul clients run without the addon.
import { spawn } from 'node:child_process'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
const root = resolve(here, '../../..')
const target = process.env.CARGO_TARGET_DIR || join(root, 'target')

/** The `connect` binary: `$LIBCONNECT_CONNECT_BIN`, else the debug build. */
export const connectBin = process.env.LIBCONNECT_CONNECT_BIN || join(target, 'debug', 'connect')

/**
 * Starts `connect agent -dev` (with `args`) on a free port; resolves with the child and its
 * HTTP address (`host:port`) once it listens, and rejects if it exits first or takes longer
 * than `timeoutMs`. The caller kills the child.
 */
export function startDevAgent(args = [], timeoutMs = 10_000) {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(connectBin, ['agent', '-dev', '-http-port', '0', ...args], {
      stdio: ['ignore', 'ignore', 'pipe'],
    })
    const lines = createInterface({ input: child.stderr })
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error('connect agent -dev did not start'))
    }, timeoutMs)
    child.once('exit', (code) => {
      clearTimeout(timer)
      reject(new Error(`connect agent exited with ${code}`))
    })
    lines.on('line', (line) => {
      const m = /==> HTTP API listening on http:\/\/(\S+)/.exec(line)
      if (m) {
        clearTimeout(timer)
        child.removeAllListeners('exit')
        resolvePromise({ child, httpAddr: m[1] })
      }
    })
  })
}

/**
 * The `-config-file` arguments of an agent with ACLs on (default deny) whose management token is
 * `rootToken`, for `startDevAgent`.
 */
export function aclArgs(rootToken) {
  const cfg = join(mkdtempSync(join(tmpdir(), 'connect-acl-')), 'acl.hcl')
  writeFileSync(cfg, `acl {\n  enabled = true\n  default_policy = "deny"\n  tokens {\n    initial_management = "${rootToken}"\n  }\n}\n`)
  return ['-config-file', cfg]
}

/** `PUT /v1/<path>` with `body` as JSON under `token`; the answer's JSON, or a rejection unless 200. */
export async function putJson(httpAddr, token, path, body) {
  const r = await fetch(`http://${httpAddr}/v1/${path}`, {
    method: 'PUT',
    headers: { 'X-Consul-Token': token },
    body: JSON.stringify(body),
  })
  if (r.status !== 200) throw new Error(`PUT /v1/${path}: ${r.status} ${await r.text()}`)
  return r.json()
}
