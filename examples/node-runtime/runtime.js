#!/usr/bin/env node
// An Exosphere runtime in Node.js: hosts one node, `Greet`, over RuntimeService.Connect.
//
// The protocol (see protos/exosphere/v1/runtime.proto):
//   1. open ONE bidirectional Connect stream, with the API key in the "x-api-key" metadata;
//   2. send Register (namespace, nodes and their schemas, max_concurrency = our credit);
//   3. the scheduler answers Registered (or ends the stream with a status naming the problem);
//   4. it then pushes ExecuteBatch messages, never more states than our free credit; we answer each state with
//      one Result inside a ResultBatch, which frees its credit;
//   5. we send a Heartbeat every heartbeat_interval_ms so the scheduler keeps our leases alive.
//
// Environment: EXOSPHERE_SCHEDULER_ADDRESS (default localhost:50051), EXOSPHERE_API_KEY (optional),
// EXOSPHERE_NAMESPACE (default NodeExample).
'use strict';

const crypto = require('node:crypto');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const ADDRESS = process.env.EXOSPHERE_SCHEDULER_ADDRESS || 'localhost:50051';
const API_KEY = process.env.EXOSPHERE_API_KEY || '';
const NAMESPACE = process.env.EXOSPHERE_NAMESPACE || 'NodeExample';
const MAX_CONCURRENCY = 8;

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

// --- The nodes ----------------------------------------------------------------------------------------------------

// A node schema is three google.protobuf.DescriptorProto messages (Inputs, Outputs, Secrets) whose fields are all
// strings, numbered in declaration order: LABEL_REQUIRED without a default, LABEL_OPTIONAL with default_value.
// Careful: proto-loader serves the google/protobuf types from protobufjs's prebuilt JSON, whose field names are
// camelCase whatever keepCase says, so default_value is spelled `defaultValue` here (snake_case is silently dropped).
function descriptor(name, fields) {
  return {
    name,
    field: fields.map((f, i) => {
      const fd = { name: f.name, number: i + 1, type: 'TYPE_STRING', label: 'LABEL_REQUIRED' };
      if (f.default !== undefined) {
        fd.label = 'LABEL_OPTIONAL';
        fd.defaultValue = String(f.default);
      }
      return fd;
    }),
  };
}

// Each node: its schema and a function from (inputs, secrets) to a list of outputs (several fan out).
const NODES = {
  Greet: {
    inputs: descriptor('Inputs', [{ name: 'name' }]),
    outputs: descriptor('Outputs', [{ name: 'greeting' }]),
    secrets: descriptor('Secrets', []),
    run(inputs) {
      return [{ greeting: `Hello, ${inputs.name}!` }];
    },
  },
};

// Runs one Execute item and builds its Result. Every value in and out is a string.
function execute(item) {
  // state_id, attempt and dispatch_id are echoed so the scheduler can match (and ignore stale) results.
  const result = { state_id: item.state_id, attempt: item.attempt, dispatch_id: item.dispatch_id };
  try {
    const node = NODES[item.node_name];
    if (!node) {
      throw Object.assign(new Error(`node ${item.node_name} is not hosted here`), { name: 'UnknownNode' });
    }
    const outputs = node.run(item.inputs, item.secrets);
    // Setting one field of a oneof selects it: here Result.outcome = executed.
    result.executed = { outputs: outputs.map((fields) => ({ fields })) };
  } catch (err) {
    // Result.outcome = errored: the state fails (and is retried if its graph allows).
    result.errored = { message: String(err.message), type: err.name || 'Error', traceback: err.stack || '' };
  }
  return result;
}

// --- The stream ---------------------------------------------------------------------------------------------------

const client = new RuntimeService(ADDRESS, grpc.credentials.createInsecure());
const metadata = new grpc.Metadata();
if (API_KEY) metadata.set('x-api-key', API_KEY);

const call = client.Connect(metadata);
let heartbeat = null;
let stopping = false; // we cancelled the call ourselves (SIGTERM/SIGINT)
let draining = false; // the scheduler asked us to drain

// The first message, and only the first: Register.
call.write({
  register: {
    namespace: NAMESPACE,
    runtime_name: 'node-runtime',
    runtime_id: crypto.randomUUID(), // a runtime that reconnects would reuse it
    sdk_version: 'exosphere-node-example/0.1.0',
    max_concurrency: MAX_CONCURRENCY,
    nodes: Object.entries(NODES).map(([name, node]) => ({
      name,
      inputs: node.inputs,
      outputs: node.outputs,
      secrets: node.secrets,
      timeout_ms: 0, // the scheduler's default deadline
    })),
  },
});

call.on('data', (msg) => {
  switch (msg.kind) {
    case 'registered': {
      const { session_id, heartbeat_interval_ms } = msg.registered;
      console.log(`registered session=${session_id}`);
      // Any message keeps our lease alive; a heartbeat covers the idle times. Execution here is synchronous, so
      // nothing is ever in flight between two events.
      const interval = Number(heartbeat_interval_ms) || 5000;
      heartbeat = setInterval(() => call.write({ heartbeat: { in_flight: 0 } }), interval);
      break;
    }
    case 'execute':
      // One Result per item, all in one ResultBatch; each frees one credit.
      call.write({ results: { results: msg.execute.items.map(execute) } });
      break;
    case 'drain':
      // Stop taking work. Nothing is in flight, so say so and close our side; the scheduler ends the stream.
      draining = true;
      clearInterval(heartbeat);
      call.write({ draining: {} });
      call.end();
      break;
    case 'cancel':
      // Cancelled states would be stopped here; ours finish synchronously, so there is never one to stop.
      break;
    default:
      break;
  }
});

// grpc-js emits 'error' for every non-OK status, then 'status' for every status; we act on 'status' alone but an
// 'error' event without a listener would crash the process.
call.on('error', () => {});
call.on('status', (status) => {
  clearInterval(heartbeat);
  client.close();
  if (stopping) {
    process.exit(0);
  } else if (status.code === grpc.status.OK) {
    console.error(draining ? 'drained; stream closed' : 'stream closed by the scheduler');
    process.exit(draining ? 0 : 1);
  } else {
    // The scheduler names the problem in the status message (e.g. a bad API key or an invalid Register).
    console.error(`stream error: ${grpc.status[status.code]}: ${status.details}`);
    process.exit(1);
  }
});

function shutdown() {
  if (stopping) return;
  stopping = true;
  clearInterval(heartbeat);
  call.cancel(); // ends the stream; the 'status' handler then exits 0
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
