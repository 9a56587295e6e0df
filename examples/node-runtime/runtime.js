#!/usr/bin/env node
// An Exosphere runtime in Node.js. Run directly, it hosts one node, `Greet`; `conformance.js` reuses it to host the
// conformance nodes. docs/protocol.md is the full protocol; in short:
//   1. open ONE bidirectional Connect stream, with the API key in the "x-api-key" metadata;
//   2. send Register (namespace, a runtime_id kept across reconnects, nodes and their schemas, max_concurrency =
//      our credit);
//   3. the scheduler answers Registered (or ends the stream with a status naming the problem);
//   4. it then pushes ExecuteBatch messages, never more states than our free credit; we answer each state with
//      one Result (batched with whatever else is ready), which frees its credit;
//   5. we send a Heartbeat every heartbeat_interval_ms so the scheduler keeps our lease;
//   6. CancelBatch: we stop those states and answer each (the answer returns its credit);
//   7. Drain (the scheduler is stopping): we send Draining, take no more work, send the results of what we hold,
//      half-close the stream, and reconnect with backoff, as after any lost stream.
//
// Environment: EXOSPHERE_SCHEDULER_ADDRESS (default localhost:50051), EXOSPHERE_API_KEY (optional),
// EXOSPHERE_NAMESPACE (default NodeExample).
'use strict';

const crypto = require('node:crypto');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

// --- Loading the protos -------------------------------------------------------------------------------------------

const PROTOS_DIR = path.resolve(__dirname, '..', '..', 'protos');
// common.proto imports google/protobuf/descriptor.proto; protobufjs (proto-loader's parser) ships it.
const GOOGLE_PROTOS_DIR = path.dirname(
  require.resolve('protobufjs/package.json', { paths: [require.resolve('@grpc/proto-loader')] }),
);

const packageDefinition = protoLoader.loadSync(path.join(PROTOS_DIR, 'exosphere', 'v1', 'runtime.proto'), {
  includeDirs: [PROTOS_DIR, GOOGLE_PROTOS_DIR],
  keepCase: true, // field names are exactly the proto names: state_id, dispatch_id, ...
  longs: String, // uint64 fields (dispatch_id, heartbeat_interval_ms, ...) arrive as decimal strings
  enums: String, // enums by name: 'LABEL_REQUIRED', 'TYPE_STRING'
  defaults: true, // unset fields decode to their default ('' / 0 / {} / [])
  oneofs: true, // a decoded message also says which oneof field is set, e.g. msg.kind === 'execute'
});
const { RuntimeService } = grpc.loadPackageDefinition(packageDefinition).exosphere.v1;

// Registration errors no retry can fix: the runtime exits instead of reconnecting.
const FATAL = new Set([grpc.status.INVALID_ARGUMENT, grpc.status.UNAUTHENTICATED, grpc.status.PERMISSION_DENIED]);
// Reconnect backoff: capped, exponential, jittered; reset once registered.
const BACKOFF_INITIAL_MS = 100;
const BACKOFF_MAX_MS = 5000;
// On SIGTERM, how long states in flight may finish before we go.
const SHUTDOWN_GRACE_MS = 5000;

// --- Node schemas -------------------------------------------------------------------------------------------------

// A node schema is three google.protobuf.DescriptorProto messages (Inputs, Outputs, Secrets) whose fields are all
// strings, numbered in declaration order: LABEL_REQUIRED without a default, LABEL_OPTIONAL with default_value.
// Careful: proto-loader serves the google/protobuf types from protobufjs's prebuilt JSON, whose field names are
// camelCase whatever keepCase says, so default_value is spelled `defaultValue` here (snake_case is silently dropped).
// A field is a name, or {name, default}.
function descriptor(name, fields) {
  return {
    name,
    field: fields.map((f, i) => {
      const spec = typeof f === 'string' ? { name: f } : f;
      const fd = { name: spec.name, number: i + 1, type: 'TYPE_STRING', label: 'LABEL_REQUIRED' };
      if (spec.default !== undefined) {
        fd.label = 'LABEL_OPTIONAL';
        fd.defaultValue = String(spec.default);
      }
      return fd;
    }),
  };
}

// --- The runtime --------------------------------------------------------------------------------------------------

// Starts a runtime hosting `nodes`: {Name: {inputs: [fields], outputs: [fields], secrets: [fields], run}}, where
// run(inputs, {secrets, store, signal}) returns (or resolves to) a list of outputs objects (several fan out). It may
// set keys on `store` (written back with the result) and should stop when `signal` aborts (a cancel). Throwing fails
// the state: the error's name is its type. Returns {stop()}.
function startRuntime({
  nodes,
  runtimeName,
  sdkVersion = 'exosphere-node-example/0.2.0',
  maxConcurrency = 8,
  address = process.env.EXOSPHERE_SCHEDULER_ADDRESS || 'localhost:50051',
  apiKey = process.env.EXOSPHERE_API_KEY || '',
  namespace = process.env.EXOSPHERE_NAMESPACE || 'NodeExample',
}) {
  const runtimeId = crypto.randomUUID(); // the same on every reconnect: the scheduler knows us by it
  const schemas = Object.entries(nodes).map(([name, node]) => ({
    name,
    inputs: descriptor('Inputs', node.inputs),
    outputs: descriptor('Outputs', node.outputs),
    secrets: descriptor('Secrets', node.secrets || []),
    timeout_ms: 0, // the scheduler's default deadline
  }));
  const client = new RuntimeService(address, grpc.credentials.createInsecure());
  let stopping = false;
  let session = null; // the live stream
  let attempt = 0; // reconnects since the last registration

  function connect() {
    const metadata = new grpc.Metadata();
    if (apiKey) metadata.set('x-api-key', apiKey);
    const s = {
      call: client.Connect(metadata),
      registered: false,
      draining: false,
      closed: false, // we half-closed
      heartbeat: null,
      inFlight: new Map(), // dispatch_id -> {item, controller}
      outbox: [],
      flushing: false,
    };
    session = s;
    s.call.write({
      register: {
        namespace,
        runtime_name: runtimeName,
        runtime_id: runtimeId,
        sdk_version: sdkVersion,
        max_concurrency: maxConcurrency,
        nodes: schemas,
      },
    });
    s.call.on('data', (msg) => onMessage(s, msg));
    // grpc-js emits 'error' for every non-OK status, then 'status'; we act on 'status' alone, but an 'error' event
    // without a listener would crash the process.
    s.call.on('error', () => {});
    s.call.on('status', (status) => onEnd(s, status));
  }

  function onMessage(s, msg) {
    switch (msg.kind) {
      case 'registered': {
        s.registered = true;
        attempt = 0;
        console.log(`registered session=${msg.registered.session_id}`);
        // Any message keeps the lease; a heartbeat covers the idle times.
        const interval = Number(msg.registered.heartbeat_interval_ms) || 5000;
        s.heartbeat = setInterval(() => write(s, { heartbeat: { in_flight: s.inFlight.size } }), interval);
        if (stopping) drain(s);
        break;
      }
      case 'execute':
        for (const item of msg.execute.items) execute(s, item);
        break;
      case 'cancel':
        cancel(s, new Set(msg.cancel.state_ids));
        break;
      case 'drain':
        console.error(`scheduler asked us to drain (grace ${msg.drain.grace_ms} ms)`);
        drain(s);
        break;
      case 'results_rejected':
        // A correct runtime never sees this: results the scheduler could not match (wrong ids, sent twice...).
        for (const r of msg.results_rejected.results) {
          console.error(`result rejected: state=${r.state_id} dispatch=${r.dispatch_id} ${r.reason}: ${r.message}`);
        }
        break;
      default:
        break; // replicas (cluster mode) and kinds newer than this file
    }
  }

  function write(s, message) {
    if (!s.closed) s.call.write(message);
  }

  // Runs one Execute item; its Result goes out with the next batch.
  function execute(s, item) {
    if (s.draining) return; // no new work once draining: the scheduler requeues it when the stream ends
    const node = nodes[item.node_name];
    const controller = new AbortController();
    s.inFlight.set(item.dispatch_id, { item, controller });
    const store = { ...item.store };
    Promise.resolve()
      .then(() => {
        if (!node) {
          throw Object.assign(new Error(`node ${item.node_name} is not hosted here`), { name: 'UnknownNodeError' });
        }
        return node.run(item.inputs, { secrets: item.secrets, store, signal: controller.signal });
      })
      .then(
        (outputs) => {
          const writes = {};
          for (const [k, v] of Object.entries(store)) if (item.store[k] !== v) writes[k] = String(v);
          return { executed: { outputs: (outputs || []).map((fields) => ({ fields })) }, store_writes: writes };
        },
        (err) => ({ errored: errored(err) }),
      )
      .then((outcome) => {
        if (s.inFlight.get(item.dispatch_id)?.item !== item) return; // cancelled and answered already
        s.inFlight.delete(item.dispatch_id);
        // state_id, attempt and dispatch_id are echoed so the scheduler can match the result.
        answer(s, { state_id: item.state_id, attempt: item.attempt, dispatch_id: item.dispatch_id, ...outcome });
      });
  }

  function errored(err) {
    const e = err instanceof Error ? err : new Error(String(err));
    return { message: String(e.message), type: e.name || 'Error', traceback: e.stack || '' };
  }

  // Stops the cancelled states and answers each at once: the answer returns its credit.
  function cancel(s, stateIds) {
    for (const [dispatchId, { item, controller }] of s.inFlight) {
      if (!stateIds.has(item.state_id)) continue;
      s.inFlight.delete(dispatchId);
      controller.abort();
      answer(s, {
        state_id: item.state_id,
        attempt: item.attempt,
        dispatch_id: dispatchId,
        errored: { message: 'cancelled by the scheduler', type: 'CancelledError', traceback: '' },
      });
    }
  }

  // Queues a result; everything queued by the end of this turn of the event loop goes out in one ResultBatch.
  function answer(s, result) {
    s.outbox.push(result);
    if (s.flushing) return;
    s.flushing = true;
    setImmediate(() => {
      s.flushing = false;
      const results = s.outbox.splice(0);
      if (results.length) write(s, { results: { results } });
      if (s.draining) finishDrain(s);
    });
  }

  // Drain: say so, take nothing new, report what we hold, then half-close. The scheduler ends the stream, and we
  // reconnect (unless we are stopping).
  function drain(s) {
    if (s.draining) return;
    s.draining = true;
    write(s, { draining: {} });
    finishDrain(s);
  }

  function finishDrain(s) {
    if (s.closed || s.inFlight.size || s.outbox.length) return;
    clearInterval(s.heartbeat);
    s.closed = true;
    s.call.end();
  }

  function onEnd(s, status) {
    clearInterval(s.heartbeat);
    for (const { controller } of s.inFlight.values()) controller.abort(); // their results would be refused
    s.inFlight.clear();
    if (session === s) session = null;
    if (stopping) {
      client.close();
      process.exit(0);
    }
    if (!s.registered && FATAL.has(status.code)) {
      // The scheduler names the problem in the status message (a bad API key, an invalid Register).
      console.error(`registration refused: ${grpc.status[status.code]}: ${status.details}`);
      client.close();
      process.exit(1);
    }
    const cap = Math.min(BACKOFF_MAX_MS, BACKOFF_INITIAL_MS * 2 ** attempt);
    attempt += 1;
    const delay = cap / 2 + Math.random() * (cap / 2);
    const why = status.code === grpc.status.OK ? 'closed' : `${grpc.status[status.code]}: ${status.details}`;
    console.error(`stream ended (${why}); reconnecting in ${Math.round(delay)} ms`);
    setTimeout(connect, delay);
  }

  function stop() {
    if (stopping) return;
    stopping = true;
    setTimeout(() => process.exit(0), SHUTDOWN_GRACE_MS).unref();
    if (session && session.registered) {
      drain(session); // finish what we hold; onEnd exits once the scheduler closes the stream
    } else {
      client.close();
      process.exit(0);
    }
  }

  connect();
  return { stop };
}

// Stops cleanly on SIGTERM / SIGINT: finishes the states in flight (within a grace), then exits 0.
function runUntilSignalled(options) {
  const runtime = startRuntime(options);
  process.on('SIGTERM', runtime.stop);
  process.on('SIGINT', runtime.stop);
  return runtime;
}

module.exports = { descriptor, startRuntime, runUntilSignalled };

// --- Run directly: the Greet example ------------------------------------------------------------------------------

if (require.main === module) {
  runUntilSignalled({
    runtimeName: 'node-runtime',
    nodes: {
      Greet: {
        inputs: ['name'],
        outputs: ['greeting'],
        run(inputs) {
          return [{ greeting: `Hello, ${inputs.name}!` }];
        },
      },
    },
  });
}
