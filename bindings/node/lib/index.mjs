// ESM entry: the same objects as the CommonJS entry.
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
const lib = require('./index.js')

export const { Agent, Ca, Intentions, Service, errorCodes, coreVersion } = lib
export default lib
