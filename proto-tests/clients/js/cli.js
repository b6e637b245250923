#!/usr/bin/env node
// The kafkajs test client of proto-tests/kafka/test_ecosystems.py: an
// independent JavaScript implementation of the Kafka protocol, driven
// through idemgate and straight to the broker.
//
//   node cli.js produce --bootstrap B --topic T --prefix P --count N [--codec C] [--marker M --partitions P] [--idempotent]
//   node cli.js produce --bootstrap B --topic T --values FILE [--idempotent]   (FILE's lines, one send, partition 0)
//   node cli.js consume --bootstrap B --topic T --group G --end M --partitions P [--timeout S] [--max-partition-bytes B]
//
// JSON lines on stdout: one object per delivered or consumed record, a
// "brokers" line with the client's own view of the cluster, and a final
// "done" line. kafkajs' log goes to stderr.
'use strict'

const { Kafka, CompressionTypes, CompressionCodecs, Partitioners, logLevel } = require('kafkajs')
const SnappyCodec = require('kafkajs-snappy')
const LZ4Codec = require('kafkajs-lz4')

CompressionCodecs[CompressionTypes.Snappy] = SnappyCodec
CompressionCodecs[CompressionTypes.LZ4] = new LZ4Codec().codec
// zstd: kafkajs' own codec package (@kafkajs/zstd) needs the native cppzst
// 2.0.6, which no longer compiles against Node 20's headers; this codec is
// the same few lines over zstd-napi (zstd's sources, built by node-gyp).
const zstd = require('zstd-napi')
CompressionCodecs[CompressionTypes.ZSTD] = () => ({
  async compress (encoder) { return zstd.compress(encoder.buffer) },
  async decompress (buffer) { return zstd.decompress(buffer) },
})

const CODECS = {
  none: CompressionTypes.None,
  gzip: CompressionTypes.GZIP,
  snappy: CompressionTypes.Snappy,
  lz4: CompressionTypes.LZ4,
  zstd: CompressionTypes.ZSTD,
}

function args (argv) {
  const out = {}
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    if (!a.startsWith('--')) fail(`unexpected argument ${a}`)
    const next = argv[i + 1]
    if (next === undefined || next.startsWith('--')) out[a.slice(2)] = true
    else { out[a.slice(2)] = next; i++ }
  }
  return out
}

function emit (obj) { process.stdout.write(JSON.stringify(obj) + '\n') }
function fail (msg) { process.stderr.write(`kafkajs-cli: ${msg}\n`); process.exit(1) }

const logCreator = () => ({ namespace, level, label, log }) => {
  process.stderr.write(`[${label}] ${namespace}: ${log.message} ${JSON.stringify(log)}\n`)
}

function kafka (bootstrap) {
  return new Kafka({
    clientId: 'kafkajs-cli',
    brokers: [bootstrap],
    logLevel: logLevel.WARN,
    logCreator,
    retry: { retries: 8 },
  })
}

// The brokers the client's own metadata names: the addresses it connects to.
async function brokers (k) {
  const admin = k.admin()
  await admin.connect()
  const cluster = await admin.describeCluster()
  await admin.disconnect()
  emit({ brokers: cluster.brokers.map(b => `${b.host}:${b.port}`) })
}

// Record i of a run: odd ones keyed, even ones with a null key.
function record (prefix, i) {
  return { key: i % 2 === 1 ? `k${i}` : null, value: `${prefix}-${String(i).padStart(6, '0')}` }
}

async function produce (o) {
  const codec = CODECS[o.codec || 'none']
  if (codec === undefined) fail(`codec ${o.codec} is not supported by this kafkajs install`)
  const k = kafka(o.bootstrap)
  // kafkajs answers a send with one base offset per partition; remember the
  // partition its own partitioner chose for each message (called in order).
  let assigned = []
  const base = Partitioners.DefaultPartitioner()
  const partitioner = () => (args) => { const p = base(args); assigned.push(p); return p }
  const idempotent = o.idempotent === true
  const producer = k.producer({
    createPartitioner: partitioner,
    idempotent,
    maxInFlightRequests: idempotent ? 1 : undefined,
  })
  await producer.connect()
  const send = async (messages) => {
    assigned = []
    const res = await producer.send({ topic: o.topic, acks: -1, compression: codec, timeout: 30000, messages })
    const baseOf = {}
    for (const r of res) {
      if (r.errorCode !== 0) fail(`partition ${r.partition}: error ${r.errorCode}`)
      baseOf[r.partition] = Number(r.baseOffset)
    }
    const idx = {}
    const parts = assigned.slice(-messages.length) // the partitioner's last pass (a retry calls it again)
    return messages.map((m, i) => {
      const p = m.partition !== undefined ? m.partition : parts[i]
      const n = idx[p] || 0
      idx[p] = n + 1
      const b = baseOf[p]
      return { value: m.value, partition: p, offset: b >= 0 ? b + n : -1, base_offset: b }
    })
  }
  if (o.values) { // the file's lines, in one send, all to partition 0
    const vals = require('fs').readFileSync(o.values, 'utf8').split('\n').filter(v => v !== '')
    const results = await send(vals.map(v => ({ key: null, value: v, partition: 0 })))
    await producer.disconnect()
    results.forEach(emit)
    emit({ done: results.length })
    return
  }
  const count = Number(o.count)
  const msgs = []
  for (let i = 0; i < count; i++) msgs.push(record(o.prefix, i))
  const results = await send(msgs)
  if (o.marker) { // one end marker per partition: "M-p0", "M-p1", ...
    for (let p = 0; p < Number(o.partitions || 1); p++) {
      const [m] = await send([{ key: null, value: `${o.marker}-p${p}`, partition: p }])
      results.push({ ...m, marker: true })
    }
  }
  await producer.disconnect()
  results.forEach(emit)
  await brokers(k)
  emit({ done: results.length })
}

async function consume (o) {
  const k = kafka(o.bootstrap)
  const limits = o['max-partition-bytes']
    ? { maxBytesPerPartition: Number(o['max-partition-bytes']), maxBytes: Number(o['max-partition-bytes']) }
    : {}
  const consumer = k.consumer({ groupId: o.group, maxWaitTimeInMs: 500, retry: { retries: 8 }, ...limits })
  await consumer.connect()
  await consumer.subscribe({ topic: o.topic, fromBeginning: true })
  let n = 0
  const pending = new Set() // end markers still to see
  for (let p = 0; p < Number(o.partitions || 1); p++) pending.add(`${o.end}-p${p}`)
  let finish
  const ended = new Promise(resolve => { finish = resolve })
  const timer = setTimeout(() => fail(`end markers ${[...pending]} missing after ${o.timeout || 60} s (${n} records)`),
    Number(o.timeout || 60) * 1000)
  consumer.on(consumer.events.CRASH, e => fail(`consumer crashed: ${e.payload.error}`))
  await consumer.run({
    eachMessage: async ({ partition, message }) => {
      const value = message.value === null ? null : message.value.toString()
      emit({
        partition,
        offset: Number(message.offset),
        key: message.key === null ? null : message.key.toString(),
        value,
      })
      n++
      pending.delete(value)
      if (pending.size === 0) finish()
    },
  })
  await ended
  clearTimeout(timer)
  await consumer.disconnect()
  await brokers(k)
  emit({ done: n })
}

async function main () {
  const [cmd, ...rest] = process.argv.slice(2)
  const o = args(rest)
  if (cmd === 'produce') await produce(o)
  else if (cmd === 'consume') await consume(o)
  else fail('usage: cli.js produce|consume ...')
}

main().then(() => process.exit(0), e => fail(e && e.stack ? e.stack : String(e)))
