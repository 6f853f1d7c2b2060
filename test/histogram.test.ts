/** The fixed-bucket latency histogram behind stats(): precision, window, edge values. */
import t from 'tap'
import { WindowHistogram } from '../src/metrics.js'

t.test('percentiles within 6.25 % of the exact ones, never above the maximum', async (t) => {
  const h = new WindowHistogram()
  const values = Array.from({ length: 1000 }, (_, i) => 0.05 + i * 0.731) // 0.05 .. 730 ms
  for (const v of values) h.record(v, 1_000)
  const s = h.summary(1_000)
  t.equal(s.count, 1000)
  const exact = (q: number): number => values[Math.ceil(values.length * q) - 1]!
  for (const [name, q] of [['p50', 0.5], ['p90', 0.9], ['p99', 0.99]] as const) {
    const error = Math.abs(s[name] - exact(q)) / exact(q)
    t.ok(error <= 0.0625, `${name} ${s[name]} vs ${exact(q)} (${(error * 100).toFixed(2)} %)`)
  }
  t.equal(s.max, Math.round(values.at(-1)! * 1000) / 1000)
})

t.test('small and huge values, empty windows', async (t) => {
  const h = new WindowHistogram()
  t.same(h.summary(0), { count: 0, p50: 0, p90: 0, p99: 0, max: 0 })
  h.record(0, 0)
  h.record(0.004, 0) // 4 µs: the exact buckets below 16 µs
  h.record(-1, 0) // clock skew: counted as 0
  h.record(3_600_000, 0) // an hour: past the last bucket, still counted
  const s = h.summary(0)
  t.equal(s.count, 4)
  t.equal(s.p50, 0)
  t.equal(s.max, 3_600_000)
  t.ok(s.p99 >= 2 ** 31 / 1000 * 0.9 && s.p99 <= s.max, `the top bucket: ${s.p99}`)
})

t.test('the window is the last minute: older slices drop out, a reused slot is cleared', async (t) => {
  const h = new WindowHistogram()
  h.record(100, 5_000) // slice 0
  h.record(1, 15_000) // slice 1
  t.equal(h.summary(15_000).count, 2)
  t.equal(h.summary(65_000).count, 1, 'at 65 s the slice of 0-10 s is out of the window')
  h.record(2, 61_000) // slice 6 reuses slot 0
  const s = h.summary(61_000)
  t.equal(s.count, 2)
  t.equal(s.max, 2, 'the 100 ms of the old slice is gone')
  t.equal(h.summary(200_000).count, 0)
})
