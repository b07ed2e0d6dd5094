#!/usr/bin/env node
// A Node.js client of Ebb's public stat protocol (ebb.api.autoscaler.v1), as proof that any
// language can report load to the autoscaler and follow its decisions.
//
// It shares nothing with Ebb but the .proto files, which it loads at run time straight from
// the repository's protos/ directory (no generated code, no copies):
//
//   1. ScalingService.RegisterRevision  — the revision's autoscaling spec (annotations,
//                                         containerConcurrency, reachable, ready instances);
//   2. StatsService.StreamStats         — one Stat per --interval-ms, as a queue would push;
//   3. ScalingService.WatchDecisions    — every decision for the revision, printed as one
//                                         JSON line on stdout.
//
// Exit codes: 0 done (desired scale >= --until-desired seen, or --max-seconds elapsed when
// no --until-desired was given); 2 --max-seconds elapsed before --until-desired was seen;
// 1 a non-retryable RPC error; 64 bad command line; 130/143 interrupted.
'use strict';

const os = require('node:os');
const path = require('node:path');
const { parseArgs } = require('node:util');

const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_FILE = 'ebb/api/autoscaler/v1/autoscaler.proto';
const DEFAULT_PROTOS = path.resolve(__dirname, '..', '..', 'protos');
const RETRY_MIN_MS = 200;
const RETRY_MAX_MS = 5000;
// Codes worth retrying: the autoscaler is (re)starting or briefly unreachable.
const RETRYABLE = new Set([grpc.status.UNAVAILABLE, grpc.status.DEADLINE_EXCEEDED,
  grpc.status.UNKNOWN, grpc.status.INTERNAL, grpc.status.RESOURCE_EXHAUSTED]);

const USAGE = `usage: node stats-client.js --namespace NS --name REVISION [options]

  --address HOST:PORT          autoscaler gRPC address (default 127.0.0.1:8091)
  --stats-address HOST:PORT    where to stream stats: the autoscaler's stats port
                               (e.g. 127.0.0.1:8094); default: --address
  --namespace NS               revision namespace (default "default")
  --name NAME                  revision name, e.g. hello-00001 (required)
  --target N                   annotation autoscaling.knative.dev/target (default 10)
  --annotation KEY=VALUE       any further annotation (repeatable)
  --container-concurrency N    the revision's containerConcurrency (default 0 = unlimited)
  --ready-instances N          instances passing readiness (default 1)
  --unreachable                register with reachable=false (default: reachable)
  --concurrency N              average_concurrency reported in every stat (default 1)
  --rps N                      requests per second reported (default: = --concurrency,
                               i.e. 1 s requests); request_count = rps x period
  --instance ID                reporter id in the stats (default node-<host>-<pid>)
  --interval-ms MS             time between stat batches (default 1000)
  --until-desired N            exit 0 once a decision with desiredScale >= N is seen
  --max-seconds S              give up after S seconds (default 60): exit 2 if
                               --until-desired was given, else exit 0
  --protos DIR                 proto root (default: the repo's protos/)
  -h, --help                   this text
`;

class UsageError extends Error {}

function number(options, key, { min = -Infinity, integer = false } = {}) {
  const raw = options[key];
  const value = Number(raw);
  if (raw === '' || !Number.isFinite(value) || value < min || (integer && !Number.isInteger(value))) {
    const kind = integer ? 'an integer' : 'a number';
    throw new UsageError(`--${key} = ${JSON.stringify(raw)}, must be ${kind} >= ${min}`);
  }
  return value;
}

function parseCommandLine(argv) {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    allowPositionals: false,
    options: {
      address: { type: 'string', default: '127.0.0.1:8091' },
      'stats-address': { type: 'string' },
      namespace: { type: 'string', default: 'default' },
      name: { type: 'string' },
      target: { type: 'string', default: '10' },
      annotation: { type: 'string', multiple: true, default: [] },
      'container-concurrency': { type: 'string', default: '0' },
      'ready-instances': { type: 'string', default: '1' },
      unreachable: { type: 'boolean', default: false },
      concurrency: { type: 'string', default: '1' },
      rps: { type: 'string' },
      instance: { type: 'string', default: `node-${os.hostname()}-${process.pid}` },
      'interval-ms': { type: 'string', default: '1000' },
      'until-desired': { type: 'string' },
      'max-seconds': { type: 'string', default: '60' },
      protos: { type: 'string', default: DEFAULT_PROTOS },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) return { help: true };
  if (!values.name) throw new UsageError('--name is required');
  if (!values.namespace) throw new UsageError('--namespace must not be empty');
  if (!values.instance) throw new UsageError('--instance must not be empty');
  const annotations = { 'autoscaling.knative.dev/target': values.target };
  for (const pair of values.annotation) {
    const eq = pair.indexOf('=');
    if (eq <= 0) throw new UsageError(`--annotation ${JSON.stringify(pair)}, want KEY=VALUE`);
    annotations[pair.slice(0, eq)] = pair.slice(eq + 1);
  }
  const concurrency = number(values, 'concurrency', { min: 0 });
  return {
    address: values.address,
    statsAddress: values['stats-address'] || values.address,
    namespace: values.namespace,
    name: values.name,
    annotations,
    containerConcurrency: number(values, 'container-concurrency', { min: 0, integer: true }),
    readyInstances: number(values, 'ready-instances', { min: 0, integer: true }),
    reachable: !values.unreachable,
    concurrency,
    rps: values.rps === undefined ? concurrency : number(values, 'rps', { min: 0 }),
    instance: values.instance,
    intervalMs: number(values, 'interval-ms', { min: 1, integer: true }),
    untilDesired: values['until-desired'] === undefined
      ? null : number(values, 'until-desired', { integer: true }),
    maxSeconds: number(values, 'max-seconds', { min: 0 }),
    protos: path.resolve(values.protos),
  };
}

function loadApi(protoRoot) {
  const definition = protoLoader.loadSync(PROTO_FILE, {
    includeDirs: [protoRoot],
    keepCase: false,
    longs: Number,
    enums: String,
    defaults: true,
  });
  return grpc.loadPackageDefinition(definition).ebb.api.autoscaler.v1;
}

function log(message, fields = {}) {
  process.stderr.write(`${JSON.stringify({ msg: message, ...fields })}\n`);
}

function timestamp(ms) {
  return { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1e6 };
}

// Resolves after `ms`, or at once when `signal` aborts; leaves no listener behind.
function sleep(ms, signal) {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const onAbort = () => { clearTimeout(timer); resolve(); };
    const timer = setTimeout(() => { signal.removeEventListener('abort', onAbort); resolve(); }, ms);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

function backoff(attempt) {
  return Math.min(RETRY_MAX_MS, RETRY_MIN_MS * 2 ** attempt);
}

class StatsClient {
  constructor(opts, api) {
    this.opts = opts;
    this.revision = { namespace: opts.namespace, name: opts.name };
    this.revisionId = `${opts.namespace}/${opts.name}`;
    this.scaling = new api.ScalingService(opts.address, grpc.credentials.createInsecure());
    this.stats = new api.StatsService(opts.statsAddress, grpc.credentials.createInsecure());
    this.stop = new AbortController();
    this.exitCode = null;
    this.watchCall = null;
    this.statsCall = null;
    this.statsTimer = null;
    this.sent = 0;
  }

  finish(code, reason) {
    if (this.exitCode !== null) return;
    this.exitCode = code;
    log('stopping', { reason, exitCode: code });
    this.stop.abort();
  }

  // RegisterRevision, retried while the autoscaler is unreachable. Identical
  // re-registration is a no-op on the server, so this is also done after every reconnect.
  async register() {
    const request = {
      spec: {
        revision: this.revision,
        annotations: this.opts.annotations,
        containerConcurrency: this.opts.containerConcurrency,
        reachable: this.opts.reachable,
        readyInstances: this.opts.readyInstances,
      },
    };
    for (let attempt = 0; !this.stop.signal.aborted; attempt++) {
      try {
        const response = await new Promise((resolve, reject) => {
          this.scaling.registerRevision(request, { deadline: Date.now() + 5000 },
            (err, res) => (err ? reject(err) : resolve(res)));
        });
        log('registered', { revision: this.revisionId, warnings: response.warnings });
        return true;
      } catch (err) {
        if (!RETRYABLE.has(err.code)) {
          log('RegisterRevision failed', { code: grpc.status[err.code], details: err.details });
          this.finish(1, 'register failed');
          return false;
        }
        log('RegisterRevision unavailable, retrying', { code: grpc.status[err.code], details: err.details });
        await sleep(backoff(attempt), this.stop.signal);
      }
    }
    return false;
  }

  // WatchDecisions for our namespace, reconnecting with backoff; prints our revision's
  // decisions and checks --until-desired.
  async watch() {
    for (let attempt = 0; !this.stop.signal.aborted;) {
      const outcome = await new Promise((resolve) => {
        const call = this.scaling.watchDecisions({ namespace: this.opts.namespace });
        this.watchCall = call;
        call.on('data', (response) => {
          attempt = 0;
          for (const decision of response.decisions) this.onDecision(decision);
        });
        call.on('error', (err) => resolve(err));
        call.on('end', () => resolve(null));
      });
      this.watchCall = null;
      if (this.stop.signal.aborted) return;
      if (outcome && !RETRYABLE.has(outcome.code)) {
        log('WatchDecisions failed', { code: grpc.status[outcome.code], details: outcome.details });
        this.finish(1, 'watch failed');
        return;
      }
      log('WatchDecisions closed, reconnecting', outcome ? { code: grpc.status[outcome.code] } : {});
      await sleep(backoff(attempt++), this.stop.signal);
    }
  }

  onDecision(decision) {
    const rev = decision.revision || {};
    if (rev.namespace !== this.opts.namespace || rev.name !== this.opts.name) return;
    const line = {
      revision: this.revisionId,
      desiredScale: decision.desiredScale,
      panic: decision.panic,
      excessBurstCapacity: decision.excessBurstCapacity,
    };
    process.stdout.write(`${JSON.stringify(line)}\n`);
    if (this.opts.untilDesired !== null && decision.desiredScale >= this.opts.untilDesired) {
      this.finish(0, `desiredScale ${decision.desiredScale} >= ${this.opts.untilDesired}`);
    }
  }

  makeStat(nowMs) {
    const periodS = this.opts.intervalMs / 1000;
    return {
      instance: this.opts.instance,
      revision: this.revision,
      averageConcurrency: this.opts.concurrency,
      averageProxiedConcurrency: 0,
      requestCount: this.opts.rps * periodS,
      proxiedRequestCount: 0,
      processUptimeSeconds: process.uptime(),
      timestamp: timestamp(nowMs),
      periodSeconds: periodS,
    };
  }

  // StreamStats: (re)register, then one StreamStatsRequest every --interval-ms; on a
  // broken stream, back off, re-register (the autoscaler may have restarted) and resume.
  async streamStats() {
    for (let attempt = 0; !this.stop.signal.aborted;) {
      if (!(await this.register())) return;
      this.sent = 0; // per stream, to compare with the server's accepted + dropped
      const outcome = await new Promise((resolve) => {
        let settled = false;
        let call = null;
        const halfClose = () => call.end();
        const done = (value) => {
          if (settled) return;
          settled = true;
          this.stop.signal.removeEventListener('abort', halfClose);
          clearInterval(this.statsTimer);
          this.statsTimer = null;
          resolve(value);
        };
        call = this.stats.streamStats((err, response) => {
          if (err) return done({ err });
          done({ response });
        });
        this.statsCall = call;
        const send = () => {
          if (settled) return;
          call.write({ stats: [this.makeStat(Date.now())] });
          this.sent++;
          attempt = 0;
        };
        send();
        this.statsTimer = setInterval(send, this.opts.intervalMs);
        this.stop.signal.addEventListener('abort', halfClose, { once: true });
      });
      this.statsCall = null;
      if (outcome.response) {
        log('StreamStats closed', { sent: this.sent, accepted: outcome.response.accepted,
          dropped: outcome.response.dropped });
        if (this.stop.signal.aborted) return;
      } else if (this.stop.signal.aborted) {
        return;
      } else if (!RETRYABLE.has(outcome.err.code)) {
        log('StreamStats failed', { code: grpc.status[outcome.err.code], details: outcome.err.details });
        this.finish(1, 'stream failed');
        return;
      } else {
        log('StreamStats broken, reconnecting', { code: grpc.status[outcome.err.code] });
      }
      await sleep(backoff(attempt++), this.stop.signal);
    }
  }

  async run() {
    const deadline = setTimeout(() => {
      if (this.opts.untilDesired === null) this.finish(0, 'max-seconds elapsed');
      else this.finish(2, `no desiredScale >= ${this.opts.untilDesired} within ${this.opts.maxSeconds}s`);
    }, this.opts.maxSeconds * 1000);
    // Watch first so no decision made after registration is missed (the first watch
    // message carries the latest decision of every revision anyway).
    const watching = this.watch();
    const streaming = this.streamStats();
    if (!this.stop.signal.aborted) {
      await new Promise((resolve) => this.stop.signal.addEventListener('abort', resolve, { once: true }));
    }
    clearTimeout(deadline);
    if (this.watchCall) this.watchCall.cancel();
    // Let StreamStats half-close and report accepted/dropped, but never hang on it.
    await Promise.race([Promise.all([watching, streaming]), sleep(2000, new AbortController().signal)]);
    this.scaling.close();
    this.stats.close();
    return this.exitCode;
  }
}

async function main(argv) {
  let opts;
  try {
    opts = parseCommandLine(argv);
  } catch (err) {
    if (err instanceof UsageError || err.code?.startsWith?.('ERR_PARSE_ARGS')) {
      process.stderr.write(`stats-client: ${err.message} (see --help)\n`);
      return 64;
    }
    throw err;
  }
  if (opts.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  const client = new StatsClient(opts, loadApi(opts.protos));
  process.once('SIGINT', () => client.finish(130, 'SIGINT'));
  process.once('SIGTERM', () => client.finish(143, 'SIGTERM'));
  log('starting', { address: opts.address, statsAddress: opts.statsAddress, revision: client.revisionId, instance: opts.instance,
    concurrency: opts.concurrency, intervalMs: opts.intervalMs, untilDesired: opts.untilDesired });
  return client.run();
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    // Flush stdout (decision lines) before exiting.
    (code) => process.stdout.write('', () => process.exit(code)),
    (err) => {
      log('fatal', { error: String(err && err.stack || err) });
      process.exit(1);
    },
  );
}

module.exports = { main, parseCommandLine, loadApi };
