// Types of the public API, require('libconnect') / import 'libconnect' (hand-written over the
// generated ../index.d.ts, whose option and result shapes it re-exports).

import { EventEmitter } from 'node:events'
import type * as tls from 'node:tls'

import type {
  Address,
  AgentOptions,
  DevOptions,
  Material,
  PeerAuthorization,
  ServiceRegistrationOptions,
} from '../index'

export type {
  Address,
  AgentOptions,
  DevOptions,
  Material,
  PeerAuthorization,
  ServiceRegistrationOptions,
}

/**
 * Every error thrown or rejected by libconnect: `code` is the stable kind string shared with the
 * C and Python APIs (see `errorCodes()`), `message` the detail.
 */
export interface ConnectError extends Error {
  code: string
}

/** Every code a `ConnectError` can carry, in numeric order. */
export declare function errorCodes(): string[]

/** The version of libconnect's core. */
export declare function coreVersion(): string

/** An intention's action. */
export type IntentionAction = 'allow' | 'deny'

/** What a peer must be to be accepted by `Service.authorize`. */
export type PeerInput =
  /** A SPIFFE URI already verified by the caller's TLS stack. */
  | string
  /** The peer's leaf, DER. */
  | Buffer
  /** The peer's chain, DER, leaf first. */
  | Buffer[]
  /** What `socket.getPeerCertificate(true)` returns. */
  | tls.PeerCertificate
  /** A connected socket: its peer's chain. */
  | tls.TLSSocket

/** The intentions of the agent's datacenter. */
export declare class Intentions {
  private constructor()
  /**
   * Creates or replaces the intention `source → destination`.
   * @throws `INVALID_PARAMETER` (action or a name), `PERMISSION_DENIED`, `CLOSED`, `HTTP`
   */
  upsert(source: string, destination: string, action: IntentionAction): Promise<void>
  /**
   * Deletes the intention `source → destination`; rejects with `NOT_FOUND` when there is
   * none (Consul's HTTP endpoint itself answers success either way).
   * @throws `NOT_FOUND`, `INVALID_PARAMETER` (a name), `PERMISSION_DENIED`, `CLOSED`, `HTTP`
   */
  delete(source: string, destination: string): Promise<void>
  /**
   * Whether `source` may connect to `destination`.
   * @throws `INVALID_PARAMETER` (a name), `PERMISSION_DENIED`, `CLOSED`, `HTTP`
   */
  check(source: string, destination: string): Promise<boolean>
}

/** The Connect CA. */
export declare class Ca {
  private constructor()
  /**
   * Every trusted root, PEM.
   * @throws `CONNECTION_REFUSED`, `TIMEOUT`, `CLOSED`, `HTTP`
   */
  rootsPem(): Promise<string>
  /**
   * Applies a CA configuration; a key change rotates the root with cross-signing, and every
   * service's certificate follows.
   * @throws `INVALID_CA_CONFIG`, `CROSS_SIGNING_UNSUPPORTED`, `PERMISSION_DENIED`, `CLOSED`, `HTTP`
   */
  setConfig(provider: string, config?: Record<string, unknown>): Promise<void>
}

/** The agent: an in-process `-dev` server, or a `connect agent` / Consul agent over HTTP. */
export declare class Agent {
  /**
   * An agent over HTTP; options default to `CONSUL_HTTP_ADDR`, `CONSUL_HTTP_TOKEN`,
   * `CONSUL_CACERT` and `CONSUL_HTTP_SSL`. Returns at once; `ready()` tells whether the agent
   * answered, and every call waits for it.
   */
  constructor(options?: AgentOptions)
  /** An agent with an in-process `-dev` server, once its CA is initialized. */
  static dev(options?: DevOptions): Promise<Agent>
  /**
   * Resolves when the agent is up: with an HTTP backend, when the agent has answered. Rejects
   * with `TIMEOUT` after `timeoutMs` when given (the start goes on, so a later `ready()` can
   * still resolve), or after the HTTP client's 60 s when an agent accepts the connection but
   * never answers.
   * @throws `CONNECTION_REFUSED` (nothing listens), `TIMEOUT`, `HTTP` (the agent answered an
   * error status, e.g. a server that is not a Consul agent), `INVALID_PARAMETER` (options)
   */
  ready(timeoutMs?: number): Promise<this>
  /**
   * The datacenter.
   * @throws `NOT_READY` before `ready()`
   */
  readonly datacenter: string
  readonly intentions: Intentions
  readonly ca: Ca
  /**
   * A Connect service named `name`; its certificate follows the agent's leaf and roots.
   * @throws `INVALID_PARAMETER`, `CLOSED`
   */
  service(name: string): Service
  /**
   * Checks a JWT-SVID (from `Service.jwtSvid`, a SPIFFE Workload API, or any issuer of this
   * trust domain's JWT keys) for `audience`: signature, expiry and audience. Resolves with its
   * claims (`sub` is the SPIFFE ID).
   * @throws `INVALID_PARAMETER` (the check that failed), `CLOSED`, `HTTP`
   */
  validateJwtSvid(token: string, audience: string): Promise<Record<string, unknown>>
  /**
   * Registers a service instance on the agent's node, so that `connect(name)` finds it.
   * @throws `INVALID_PARAMETER`, `PERMISSION_DENIED`, `CLOSED`, `HTTP`
   */
  registerService(registration: ServiceRegistrationOptions): Promise<void>
  /**
   * Deregisters the instance `id`.
   * @throws `NOT_FOUND` (an unknown ID; checked before the token, as Consul does, since the
   * token is judged by the instance's service name), `PERMISSION_DENIED`, `CLOSED`, `HTTP`
   */
  deregisterService(id: string): Promise<void>
  /** Closes every service and stops the agent. Idempotent; later calls fail with `CLOSED`. */
  close(): void
}

/**
 * A `tls.Server` whose connections are authorized by intentions before the handler sees them
 * and whose certificate follows rotations.
 *
 * - `'authorizedConnection'`: an allowed peer, with its decision (`socket.peer` too);
 * - `'tlsClientError'`: a failed handshake, or a peer denied by intentions (the error's code
 *   is `AUTHORIZATION_DENIED`; the socket is already destroyed).
 */
export interface MtlsServer extends tls.Server {
  on(event: 'authorizedConnection', listener: (socket: MtlsSocket, peer: PeerAuthorization) => void): this
  on(event: 'tlsClientError', listener: (err: ConnectError | Error, socket: tls.TLSSocket) => void): this
  on(event: string | symbol, listener: (...args: any[]) => void): this
  once(event: 'authorizedConnection', listener: (socket: MtlsSocket, peer: PeerAuthorization) => void): this
  once(event: string | symbol, listener: (...args: any[]) => void): this
}

/** A server-side socket of an authorized peer. */
export interface MtlsSocket extends tls.TLSSocket {
  /** Who the peer is and why it was let in. */
  peer: PeerAuthorization
}

/** Options of `Service.connect`. */
export interface ConnectOptions {
  /** Dial this port instead of resolving `target` through the catalog. */
  port?: number
  /** With `port`: the host to dial (default `127.0.0.1`). */
  host?: string
  /** TCP connect and handshake together, per instance (default 10 000). */
  timeoutMs?: number
  /**
   * The destination's datacenter (Consul's upstream `Datacenter`; default the agent's own):
   * `target` is looked up there and its server must present `target`'s SPIFFE ID in that
   * datacenter of our trust domain. The dial sends the SNI mesh gateways route by.
   */
  datacenter?: string
  /**
   * How a dial to another datacenter uses mesh gateways (Consul's `MeshGateway.Mode`):
   * `'none'` (default) dials the instance, `'local'` a gateway of our datacenter, `'remote'`
   * one of the target's. Needs `datacenter`.
   */
  meshGateway?: MeshGatewayMode
}

/** Consul's mesh gateway modes. */
export type MeshGatewayMode = 'none' | 'local' | 'remote'

/** Options for `tls.createServer` / `https.createServer`. */
export interface ServerTlsOptions extends tls.TlsOptions {
  cert: string
  key: string
  ca: string
  requestCert: true
  rejectUnauthorized: true
}

/** Options for `tls.connect` / `https.request`. */
export interface ClientTlsOptions extends tls.ConnectionOptions {
  cert: string
  key: string
  ca: string
  rejectUnauthorized: true
  checkServerIdentity: (host: string, cert: tls.PeerCertificate) => Error | undefined
}

/** One Connect service: its identity, its servers and its clients. */
export declare class Service extends EventEmitter {
  private constructor()
  /** The service name. */
  readonly name: string
  /**
   * Our SPIFFE ID.
   * @throws `NOT_READY`
   */
  readonly spiffeId: string
  /** Whether the service has a leaf that verifies against the current roots. */
  readonly isReady: boolean
  /**
   * Resolves once the service has its certificate (default timeout 10 s).
   * @throws `TIMEOUT`, `CLOSED`, and the agent's start errors
   */
  ready(timeoutMs?: number): Promise<this>
  /**
   * A JWT-SVID (ES256, valid 5 minutes) for this service with `audience` (one string or up
   * to 32), signed by the datacenter's JWT key; the agent's token needs `service:write`.
   * @throws `INVALID_PARAMETER`, `PERMISSION_DENIED`, `CLOSED`, `HTTP`
   */
  jwtSvid(audience: string | string[]): Promise<string>
  /**
   * The current chain, key and roots.
   * @throws `NOT_READY`
   */
  material(): Material
  /**
   * The current certificate chain (leaf first), PEM.
   * @throws `NOT_READY`
   */
  leafPem(): string
  /**
   * The current private key, PEM.
   * @throws `NOT_READY`
   */
  keyPem(): string
  /**
   * Every trusted root, PEM.
   * @throws `NOT_READY`
   */
  rootsPem(): string
  /**
   * Whether a peer may connect to this service, and why. Certificates are verified against
   * the current roots first.
   * @throws `INVALID_SPIFFE_ID`, `INVALID_CERTIFICATE`, `CERTIFICATE_VERIFICATION`, `NOT_READY`
   */
  authorize(peer: PeerInput): PeerAuthorization
  /**
   * Options that make a Node TLS server present this service's certificate and require a client
   * certificate from its roots. Pass the server to `attach()` for intentions and rotation.
   * @throws `NOT_READY`
   */
  tlsServerOptions(): ServerTlsOptions
  /**
   * Options that make a Node TLS client present this service's certificate and accept only an
   * instance of `target` (checked as libconnect's own client does).
   * @throws `NOT_READY`, `INVALID_PARAMETER`
   */
  tlsClientOptions(target: string): ClientTlsOptions
  /**
   * Wires an existing `tls.Server` (an `https.Server` from `tlsServerOptions()`, say): every
   * connection is authorized right after its handshake and denied sockets are destroyed before
   * other listeners run; the certificate follows rotations.
   */
  attach<S extends tls.Server>(server: S): S & MtlsServer
  /** A `tls.Server` for this service; `onConnection` sees only authorized peers. */
  createServer(onConnection?: (socket: MtlsSocket, peer: PeerAuthorization) => void): MtlsServer
  createServer(
    options: tls.TlsOptions,
    onConnection?: (socket: MtlsSocket, peer: PeerAuthorization) => void,
  ): MtlsServer
  /**
   * Waits for the certificate, then listens (default `127.0.0.1`, any port).
   * @throws `NOT_READY`, `TIMEOUT`, `IO`
   */
  listen(
    port?: number,
    host?: string,
    onConnection?: (socket: MtlsSocket, peer: PeerAuthorization) => void,
  ): Promise<MtlsServer>
  /**
   * A TLS connection to a healthy instance of `target` (found through the catalog, tried in
   * random order) whose certificate names `target` — in `options.datacenter` when given,
   * directly or through mesh gateways.
   * @throws `CONNECTION_REFUSED` (no healthy instance or gateway), `INVALID_PARAMETER` (a bad
   *   target or datacenter name, an unknown mode, `No path to datacenter: …`),
   *   `PEER_IDENTITY_MISMATCH`, `CERTIFICATE_VERIFICATION`, `TIMEOUT`, `TLS`, `IO`, `NOT_READY`
   */
  connect(target: string, options?: ConnectOptions): Promise<tls.TLSSocket>
  /** Stops the watchers and closes the servers made here (open connections stay). */
  close(): void

  on(event: 'change', listener: (generation: number) => void): this
  on(event: 'rotationError', listener: (err: ConnectError, server: tls.Server) => void): this
  on(event: 'close', listener: () => void): this
  on(event: string | symbol, listener: (...args: any[]) => void): this
  once(event: 'change', listener: (generation: number) => void): this
  once(event: 'close', listener: () => void): this
  once(event: string | symbol, listener: (...args: any[]) => void): this
}
