// Builds dist/esm (ES modules) and dist/cjs (CommonJS) from src/.
import { execFileSync } from 'node:child_process'
import { rmSync, writeFileSync } from 'node:fs'

const tsc = (project) => execFileSync(process.execPath, ['node_modules/typescript/bin/tsc', '-p', project], { stdio: 'inherit' })

rmSync('dist', { recursive: true, force: true })
tsc('tsconfig.build.json')
tsc('tsconfig.cjs.json')
// The package is "type": "module"; this marks the CommonJS build as CommonJS.
writeFileSync('dist/cjs/package.json', '{ "type": "commonjs" }\n')
