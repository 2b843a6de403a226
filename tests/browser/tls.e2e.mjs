// The browser over TLS: headless Chromium loads the page from wschat over https:// (the server
// started with --tls-cert/--tls-key and a throwaway certificate for 127.0.0.1), so the page opens
// its WebSocket with wss://, and two pages chat. chat.e2e.mjs tests the page's behaviour; this
// file shows that the page, the upgrade and the frames work through TLS.
// Chromium does not know the test CA (Linux Chromium reads trust from an NSS database), so it runs
// with --ignore-certificate-errors; tests/tls.rs checks the certificate chain with real clients.
//
//   WSCHAT_BIN=target/release/wschat TLS_DIR=DIR node --test tests/browser/tls.e2e.mjs
//
// TLS_DIR holds cert.pem and key.pem (scripts/browser-test.sh makes them with examples/tls_cert.rs).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const BIN = path.resolve(process.env.WSCHAT_BIN || path.join(ROOT, 'target', 'release', 'wschat'));
const TLS_DIR = process.env.TLS_DIR;
const WAIT_MS = 15_000;

let server = null;
let browser = null;
let origin = '';
const log = [];

const killServer = () => { try { server?.kill('SIGKILL'); } catch { /* gone */ } };
process.on('exit', killServer);
setTimeout(() => { console.error(`# tls e2e: deadline exceeded\n${log.slice(-20).join('\n')}`); killServer(); process.exit(1); }, 90_000).unref();

function startServer() {
  return new Promise((resolve, reject) => {
    const args = ['--bind', '127.0.0.1:0', '--tls-cert', path.join(TLS_DIR, 'cert.pem'), '--tls-key', path.join(TLS_DIR, 'key.pem')];
    server = spawn(BIN, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    const timer = setTimeout(() => reject(new Error(`no "listening on" within 10 s:\n${log.join('\n')}`)), 10_000);
    let buf = '';
    server.stderr.setEncoding('utf8');
    server.stderr.on('data', (chunk) => {
      buf += chunk;
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i).replace(/\x1b\[[0-9;]*m/g, '');
        buf = buf.slice(i + 1);
        log.push(line);
        const m = /listening on 127\.0\.0\.1:(\d+)/.exec(line);
        if (m) { clearTimeout(timer); resolve(Number(m[1])); }
      }
    });
    server.on('exit', (code) => { clearTimeout(timer); reject(new Error(`server exited (code ${code}):\n${log.join('\n')}`)); });
  });
}

before(async () => {
  assert.ok(TLS_DIR, 'TLS_DIR must name a directory with cert.pem and key.pem');
  origin = `https://127.0.0.1:${await startServer()}`;
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync', '--ignore-certificate-errors'],
    timeout: 30_000,
  });
});

after(async () => {
  await Promise.race([browser?.close(), new Promise((r) => setTimeout(r, 10_000).unref())]).catch(() => {});
  server?.kill('SIGTERM');
});

async function open(name) {
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await context.newPage();
  const sockets = [];
  page.on('websocket', (socket) => sockets.push(socket.url()));
  await page.goto(`${origin}/?name=${name}&room=tls`);
  await page.locator('[data-testid="status"][data-state="online"]').waitFor({ timeout: WAIT_MS });
  return { page, sockets };
}

test('two pages loaded over https:// chat over wss://', { timeout: 60_000 }, async () => {
  const alice = await open('alice');
  const bob = await open('bob');
  assert.match(alice.sockets[0], /^wss:\/\/127\.0\.0\.1:\d+\/chat\?/, 'the page picked wss:// itself');
  await alice.page.getByTestId('message-input').fill('hello over TLS');
  await alice.page.getByTestId('send-button').click();
  await bob.page.getByTestId('messages').locator('[data-kind="message"] .text')
    .getByText('hello over TLS', { exact: true }).waitFor({ timeout: WAIT_MS });
  await bob.page.getByTestId('message-input').fill('and back');
  await bob.page.getByTestId('send-button').click();
  await alice.page.getByTestId('messages').locator('[data-kind="message"] .text')
    .getByText('and back', { exact: true }).waitFor({ timeout: WAIT_MS });
});
