// PTY through the official TypeScript SDK (@daytonaio/sdk) under Node.
//
// Node's `ws` aborts a connection that offered subprotocols when the server selects none, so this
// fails unless the daemon echoes one of the offered tokens (and it must never be the envs token).
// Usage: DAYTONA_API_URL=... DAYTONA_API_KEY=... SANDBOX_ID=... node pty-subprotocol.cjs
// Prints one JSON line: {"exitCode", "output", "protocol"}.
'use strict';

const { Daytona } = require('@daytonaio/sdk');
const WebSocket = require('ws');

async function main() {
  const daytona = new Daytona({ apiUrl: process.env.DAYTONA_API_URL, apiKey: process.env.DAYTONA_API_KEY });
  const sandbox = await daytona.get(process.env.SANDBOX_ID);
  console.error('step: got sandbox');

  // Record the subprotocol the server selected on every socket the SDK opens.
  const selected = [];
  const originalEmit = WebSocket.prototype.emit;
  WebSocket.prototype.emit = function (event, ...args) {
    if (event === 'open') selected.push(this.protocol);
    return originalEmit.call(this, event, ...args);
  };

  const decoder = new TextDecoder();
  let output = '';
  const handle = await sandbox.process.createPty({
    id: `ts-pty-${Date.now()}`,
    envs: { TS_GREETING: 'hello-from-node' },
    cols: 80,
    rows: 24,
    onData: (data) => {
      output += decoder.decode(data, { stream: true });
    },
  });
  console.error('step: connected');
  await handle.resize(110, 33);
  console.error('step: resized');
  await handle.sendInput('echo "g=$TS_GREETING"; stty size; exit 5\n');
  console.error('step: input sent');
  const result = await handle.wait();
  console.log(JSON.stringify({ exitCode: result.exitCode, output, protocol: selected[0] ?? null }));
  await handle.disconnect();
  await daytona[Symbol.asyncDispose]();
  // Keep-alive sockets of the HTTP client would hold the event loop open for a while.
  process.exit(0);
}

main().catch((error) => {
  console.error(error && error.stack ? error.stack : String(error));
  process.exit(1);
});
