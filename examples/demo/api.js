// api: the demo's Node client of db, with native Connect mTLS from require('libconnect').
//
// It tries to talk to db once. The intentions deny api → db, so db refuses it inside the TLS
// handshake: the application behind db never sees the connection, and api gets a TLS alert
// (access denied) instead of an answer. Exits 0 when it was refused as the demo expects, 1 if
// db answered, 2 on any other failure.
//
// Run with CONSUL_HTTP_ADDR pointing at `connect agent -dev` (or a Consul agent).
'use strict'

const { Agent } = require('libconnect')

const say = (text) => console.log(`api: ${text}`)

// OpenSSL's message names the alert among file and line details; the alert is what matters.
const alertOf = (error) => (/alert [a-z ]+/.exec(error.message)?.[0] ?? error.message).trim()

// A refusal in the handshake: the server's alert, or its reset right after sending it. Any
// other failure (no agent, no db instance, a timeout) is not what the demo shows.
const isRefusal = (error) =>
  /alert/.test(error.message) || ['TLS', 'AUTHORIZATION_DENIED', 'ECONNRESET'].includes(error.code)

async function main() {
  const agent = new Agent()
  try {
    await agent.ready()
    const service = await agent.service('api').ready(30_000)
    say(`my identity is ${service.spiffeId}`)
    say(`intention check api → db: ${(await agent.intentions.check('api', 'db')) ? 'allowed' : 'denied'}`)
    let socket
    try {
      socket = await service.connect('db')
    } catch (error) {
      // With TLS 1.2, or when the alert wins the race, the refusal rejects connect() itself.
      if (!isRefusal(error)) throw error
      say(`db refused us during the TLS handshake: ${alertOf(error)} (${error.code})`)
      return 0
    }
    const outcome = await new Promise((resolve) => {
      let answer = ''
      socket.on('data', (d) => {
        answer += d
        if (answer.includes('\n')) resolve({ answer: answer.trim() })
      })
      socket.on('error', (error) => resolve({ error }))
      socket.on('close', () => resolve({ closed: true }))
      socket.write('hello from api\n')
    })
    socket.destroy()
    if (outcome.answer !== undefined) {
      say(`db answered: ${JSON.stringify(outcome.answer)} (it should have refused us)`)
      return 1
    }
    if (outcome.error) {
      if (!isRefusal(outcome.error)) throw outcome.error
      say(`db refused us during the TLS handshake: ${alertOf(outcome.error)} (${outcome.error.code})`)
    } else {
      say('db closed the connection during the handshake without an answer')
    }
    return 0
  } catch (e) {
    say(`failed: ${e.message} (${e.code})`)
    return 2
  } finally {
    agent.close()
  }
}

main().then((code) => process.exit(code))
