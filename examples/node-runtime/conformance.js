#!/usr/bin/env node
// The conformance nodes (docs/protocol.md, "Conformance") on the Node.js runtime in runtime.js, for
//   exosphere conformance -- node examples/node-runtime/conformance.js
// The kit sets EXOSPHERE_SCHEDULER_ADDRESS, EXOSPHERE_API_KEY and EXOSPHERE_NAMESPACE.
'use strict';

const { runUntilSignalled } = require('./runtime');

// Resolves after `ms`, or rejects as soon as `signal` aborts (the scheduler cancelled the state).
function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener('abort', () => {
      clearTimeout(timer);
      reject(Object.assign(new Error('cancelled'), { name: 'CancelledError' }));
    });
  });
}

const NODES = {
  Echo: {
    inputs: ['text'],
    outputs: ['text'],
    run: (inputs) => [{ text: inputs.text }],
  },
  Fail: {
    inputs: ['message'],
    outputs: ['message'],
    run(inputs) {
      throw Object.assign(new Error(inputs.message), { name: 'ConformanceError' });
    },
  },
  Sleep: {
    inputs: ['ms'],
    outputs: ['ms'],
    async run(inputs, { signal }) {
      await sleep(Number(inputs.ms), signal);
      return [{ ms: inputs.ms }];
    },
  },
  FanOut: {
    inputs: ['count'],
    outputs: ['item'],
    run: (inputs) => Array.from({ length: Number(inputs.count) }, (_, i) => ({ item: String(i) })),
  },
  StoreWrite: {
    inputs: ['key', 'value'],
    outputs: ['key'],
    run(inputs, { store }) {
      store[inputs.key] = inputs.value;
      return [{ key: inputs.key }];
    },
  },
};

runUntilSignalled({ runtimeName: 'node-conformance', nodes: NODES, maxConcurrency: 4 });
