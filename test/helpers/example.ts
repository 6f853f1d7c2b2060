import { spawn } from 'node:child_process'

interface Teardown { teardown (fn: () => unknown): void }

/**
 * `npm start`'s example in a child process (out of the coverage report), with `env` added to the
 * test's environment: resolves with its address once it prints it.
 */
export async function startExample (t: Teardown, env: Record<string, string>): Promise<{ base: string, output: () => string, stop: () => Promise<number | null> }> {
  const child = spawn('env', ['-u', 'NODE_OPTIONS', '-u', 'NODE_V8_COVERAGE', process.execPath, '--import', 'tsx', 'example/server.ts'], {
    env: { ...process.env, PORT: '0', LOG_LEVEL: 'warn', ...env },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  const exited = new Promise<number | null>((resolve) => child.on('exit', resolve))
  t.teardown(() => { child.kill('SIGKILL') })
  let output = ''
  const base = await new Promise<string>((resolve, reject) => {
    child.stdout.on('data', (chunk) => {
      output += chunk
      const match = /Notes API:\s+(\S+)/.exec(output)
      if (match) resolve(match[1]!)
    })
    child.stderr.on('data', (chunk) => { output += chunk })
    child.on('exit', () => reject(new Error(`the example exited:\n${output}`)))
  })
  return {
    base,
    output: () => output,
    /** Ctrl-C; its exit code. */
    stop: async () => {
      child.kill('SIGINT')
      return await exited
    }
  }
}
