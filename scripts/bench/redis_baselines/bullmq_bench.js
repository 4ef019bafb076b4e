// bullmq_bench.js: BullMQ on Redis, the Node.js job queue luapool's broker
// benchmarks are compared against.
//
//   node bullmq_bench.js REDIS_URL MODES [N]
//
// MODES is a comma-separated list of add, tree, latency (or all). Starts two
// worker processes (this file again, mode "worker", each a Worker of high
// concurrency) against REDIS_URL, runs each mode and prints one JSON line:
//   add      N trivial jobs by addBulk (batches of 1,000), every result
//            gathered from the queue's events: jobs/s
//   tree     1,101 jobs by FlowProducer: a root with 100 children of 10
//            children each; BullMQ runs a parent once its children are
//            done, and the parent sums their values: wall seconds
//   latency  enqueue-to-start of one job on an idle worker: the median of
//            50, in ms (CLOCK_MONOTONIC in both processes, same machine)
// then stops the workers. Needs `npm install` in this directory.
'use strict';
const { fork } = require('node:child_process');
const { Queue, Worker, FlowProducer, QueueEvents } = require('bullmq');

const QUEUE = 'bench';
const WORKER_PROCESSES = 2;
const CONCURRENCY = 100;
const BATCH = 1000;
const LATENCY_SAMPLES = 50;
const LATENCY_PAUSE_MS = 20;
const TREE_CHILDREN = 100;
const TREE_GRANDCHILDREN = 10;

function connectionOf(url) {
  const u = new URL(url);
  const db = u.pathname.length > 1 ? Number(u.pathname.slice(1)) : 0;
  return {
    host: u.hostname,
    port: Number(u.port || 6379),
    db,
    username: u.username || undefined,
    password: u.password ? decodeURIComponent(u.password) : undefined,
  };
}

const now = () => Number(process.hrtime.bigint()); // CLOCK_MONOTONIC, ns
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// The worker processes: every job kind the modes enqueue.
async function processJob(job) {
  switch (job.name) {
    case 'started':
      return now();
    case 'echo':
      return job.data.x;
    case 'leaf':
      return 1;
    case 'parent': {
      // Every parent adds 1 to its children's sum, so the root's value
      // counts the jobs that ran.
      const values = Object.values(await job.getChildrenValues());
      return values.reduce((a, b) => a + b, 0) + 1;
    }
    default:
      throw new Error(`unknown job ${job.name}`);
  }
}

async function runWorker(url) {
  const worker = new Worker(QUEUE, processJob, { connection: connectionOf(url), concurrency: CONCURRENCY });
  worker.on('error', (err) => console.error('bullmq worker:', err.message));
  await worker.waitUntilReady();
  process.on('message', async (msg) => {
    if (msg === 'stop') {
      await worker.close();
      process.exit(0);
    }
  });
  process.on('disconnect', () => process.exit(0));
  process.send('ready');
}

function startWorkers(url) {
  return Promise.all(
    Array.from({ length: WORKER_PROCESSES }, () => {
      const child = fork(__filename, [url, 'worker']);
      return new Promise((resolve, reject) => {
        child.once('message', () => resolve(child));
        child.once('exit', (code) => reject(new Error(`bullmq worker exited with ${code}`)));
      });
    }),
  );
}

async function stopWorkers(children) {
  await Promise.all(
    children.map(
      (child) =>
        new Promise((resolve) => {
          const timer = setTimeout(() => child.kill('SIGKILL'), 15000);
          child.once('exit', () => {
            clearTimeout(timer);
            resolve();
          });
          child.send('stop');
        }),
    ),
  );
}

// Resolves once `count` jobs have completed, as the queue's events tell.
function completions(events, count) {
  let done = 0;
  let sum = 0;
  return new Promise((resolve) => {
    const onCompleted = ({ returnvalue }) => {
      sum += Number(returnvalue);
      if (++done === count) {
        events.off('completed', onCompleted);
        resolve(sum);
      }
    };
    events.on('completed', onCompleted);
  });
}

async function benchAdd(queue, events, n) {
  const t0 = now();
  const gathered = completions(events, n);
  for (let i = 0; i < n; i += BATCH) {
    const jobs = [];
    for (let j = i; j < Math.min(n, i + BATCH); j++) jobs.push({ name: 'echo', data: { x: j } });
    await queue.addBulk(jobs);
  }
  const sum = await gathered;
  const seconds = (now() - t0) / 1e9;
  if (sum !== (n * (n - 1)) / 2) throw new Error(`add: results sum to ${sum}`);
  return { add_n: n, add_jobs_per_s: n / seconds, add_s: seconds };
}

async function benchTree(flows, events) {
  const child = () => ({
    name: 'parent',
    queueName: QUEUE,
    children: Array.from({ length: TREE_GRANDCHILDREN }, () => ({ name: 'leaf', queueName: QUEUE })),
  });
  const t0 = now();
  const tree = await flows.add({
    name: 'parent',
    queueName: QUEUE,
    children: Array.from({ length: TREE_CHILDREN }, child),
  });
  const jobs = await tree.job.waitUntilFinished(events, 600000);
  const seconds = (now() - t0) / 1e9;
  if (jobs !== 1 + TREE_CHILDREN * (1 + TREE_GRANDCHILDREN)) throw new Error(`tree: ${jobs} jobs`);
  return { tree_jobs: jobs, tree_s: seconds };
}

async function benchLatency(queue, events) {
  const samples = [];
  for (let i = 0; i < LATENCY_SAMPLES; i++) {
    await sleep(LATENCY_PAUSE_MS); // the workers back to waiting on Redis
    const enqueued = now();
    const job = await queue.add('started', {});
    const begun = await job.waitUntilFinished(events, 60000);
    samples.push((begun - enqueued) / 1e6);
  }
  samples.sort((a, b) => a - b);
  const mid = samples.length >> 1;
  const median = samples.length % 2 ? samples[mid] : (samples[mid - 1] + samples[mid]) / 2;
  return {
    latency_ms: median,
    latency_min_ms: samples[0],
    latency_samples: samples.length,
    latency_pause_ms: LATENCY_PAUSE_MS,
  };
}

async function main() {
  const [url, modeArg, nArg] = process.argv.slice(2);
  if (!url || !modeArg) {
    console.error('usage: node bullmq_bench.js REDIS_URL MODES [N]');
    process.exit(2);
  }
  if (modeArg === 'worker') return runWorker(url);
  const n = Number(nArg || 20000);
  const modes = modeArg === 'all' ? ['add', 'tree', 'latency'] : modeArg.split(',');
  const connection = connectionOf(url);
  // The events stream keeps every completion of a run, so that none is
  // trimmed before it is read.
  const queue = new Queue(QUEUE, { connection, streams: { events: { maxLen: Math.max(10000, 2 * n) } } });
  const events = new QueueEvents(QUEUE, { connection });
  const flows = new FlowProducer({ connection });
  await Promise.all([queue.waitUntilReady(), events.waitUntilReady(), flows.waitUntilReady()]);
  const figures = { tool: 'bullmq', version: require('bullmq/package.json').version };
  const workers = await startWorkers(url);
  try {
    for (const mode of modes) {
      if (mode === 'add') Object.assign(figures, await benchAdd(queue, events, n));
      else if (mode === 'tree') Object.assign(figures, await benchTree(flows, events));
      else if (mode === 'latency') Object.assign(figures, await benchLatency(queue, events));
      else throw new Error(`unknown mode ${mode}`);
    }
  } finally {
    await stopWorkers(workers);
    await Promise.all([queue.close(), events.close(), flows.close()]);
  }
  console.log(JSON.stringify(figures));
}

main().catch((err) => {
  console.error('bullmq_bench.js:', err);
  process.exit(1);
});
