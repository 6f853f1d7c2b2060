import Fastify from 'fastify'
import pgPool from '/work/main/dist/esm/index.js'
const app = Fastify()
await app.register(pgPool, { connectionString: process.env.URL, max: 10 })
app.get('/', async (req) => (await req.db.query('select 1 as x')).rows[0])
await app.listen({ port: 3999, host: '127.0.0.1' })
console.log('up')
process.on('SIGINT', async () => { await app.close(); process.exit(0) })
