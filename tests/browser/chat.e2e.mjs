// End-to-end browser test for the wschat page (web/index.html) against the real server binary.
//
//   WSCHAT_BIN=target/release/wschat node --test tests/browser/chat.e2e.mjs
//
// Env: WSCHAT_BIN (server binary, default target/release/wschat), CHROMIUM (default /usr/bin/chromium),
// SCREENSHOT=1 (write docs/screenshot.png; otherwise screenshots go to a temp dir),
// E2E_DEADLINE_MS (overall deadline, default 120000).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const BIN = path.resolve(process.env.WSCHAT_BIN || path.join(ROOT, 'target', 'release', 'wschat'));
const WAIT_MS = 15_000; // any single UI expectation
const RECONNECT_MS = 30_000; // reconnect after a restart (client backoff is capped at 15 s)
const DEADLINE_MS = Number(process.env.E2E_DEADLINE_MS || 120_000);
const TMP = mkdtempSync(path.join(tmpdir(), 'wschat-e2e-'));
const SHOT = process.env.SCREENSHOT === '1' ? path.join(ROOT, 'docs', 'screenshot.png') : path.join(TMP, 'screenshot.png');
const DESKTOP = { width: 1200, height: 800 };

let server = null; // { child, port, log: string[] }
let browser = null;
let port = 0;
let broken = false; // once a step fails the later ones are skipped (they depend on its state)
const ctx = {}; // alice, bob: BrowserContext
const pages = {}; // alice, bob: Page

// ---------- hard limits: never hang, never leak the server ----------
const killServerNow = () => { try { server?.child.kill('SIGKILL'); } catch { /* gone */ } };
process.on('exit', killServerNow);
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => { killServerNow(); process.exit(130); });
setTimeout(() => {
  console.error(`# e2e: overall deadline of ${DEADLINE_MS} ms exceeded; server log tail:\n${logTail()}`);
  killServerNow();
  process.exit(1);
}, DEADLINE_MS).unref();

function logTail(n = 40) { return server ? server.log.slice(-n).map((l) => '#   ' + l).join('\n') : '#   (no server)'; }

// ---------- server ----------
function startServer(bind) {
  return new Promise((resolve, reject) => {
    const log = [];
    const child = spawn(BIN, ['--bind', bind], { stdio: ['ignore', 'pipe', 'pipe'] });
    const srv = { child, port: 0, log, exited: null };
    server = srv;
    const timer = setTimeout(() => fail(new Error(`server did not log "listening on 127.0.0.1:PORT" within 10 s`)), 10_000);
    function fail(err) { clearTimeout(timer); child.kill('SIGKILL'); reject(new Error(`${err.message}\n${logTail()}`)); }
    const onData = (stream) => {
      let buf = '';
      stream.setEncoding('utf8');
      stream.on('data', (chunk) => {
        buf += chunk;
        let i;
        while ((i = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, i).replace(/\x1b\[[0-9;]*m/g, ''); // strip colours
          buf = buf.slice(i + 1);
          log.push(line);
          if (log.length > 500) log.shift();
          const m = !srv.port && /listening on 127\.0\.0\.1:(\d+)/.exec(line);
          if (m) { srv.port = Number(m[1]); clearTimeout(timer); resolve(srv); }
        }
      });
    };
    onData(child.stdout);
    onData(child.stderr);
    child.on('error', (err) => fail(new Error(`cannot start ${BIN}: ${err.message}`)));
    child.on('exit', (code, sig) => {
      srv.exited = { code, sig };
      if (!srv.port) fail(new Error(`server exited early (code ${code}, signal ${sig})`));
    });
  });
}

async function stopServer() {
  const srv = server;
  if (!srv || srv.exited || srv.child.pid === undefined) return;
  const gone = new Promise((r) => srv.child.once('exit', r));
  srv.child.kill('SIGTERM'); // graceful shutdown (the server should send close 1001)
  const t = setTimeout(() => srv.child.kill('SIGKILL'), 5_000);
  await Promise.race([gone, new Promise((r) => setTimeout(r, 8_000).unref())]);
  clearTimeout(t);
}

// ---------- page helpers (Playwright auto-waiting; no fixed sleeps) ----------
const url = () => `http://127.0.0.1:${port}/`;

async function openChat(who) {
  const page = await ctx[who].newPage();
  page.on('pageerror', (err) => console.error(`# [${who}] page error: ${err.message}`));
  await page.goto(url());
  await waitOnline(page);
  page.__who = who;
  pages[who] = page;
  return page;
}
const waitOnline = (page, timeout = WAIT_MS) => page.locator('[data-testid="status"][data-state="online"]').waitFor({ timeout });

async function setNick(page, name) {
  await page.getByTestId('nick-input').fill(name);
  await page.getByTestId('nick-button').click();
  await page.waitForFunction((n) => document.querySelector('[data-testid="nick-input"]').value === n &&
    [...document.querySelectorAll('[data-testid="member"]')].some((li) => li.firstChild.textContent === n), name, { timeout: WAIT_MS });
}

async function sendMessage(page, text) {
  await page.getByTestId('message-input').fill(text);
  await page.getByTestId('send-button').click();
}

async function waitMessage(page, text) {
  try {
    await page.getByTestId('messages').locator('[data-kind="message"] .text').getByText(text, { exact: true }).first().waitFor({ timeout: WAIT_MS });
  } catch (err) {
    throw new Error(`${page.__who} never showed message ${JSON.stringify(text)}; it shows:\n${await shown(page)}`);
  }
}
const shown = (page) => page.$$eval('[data-testid="messages"] li', (lis) => lis.map((li) => `  [${li.dataset.kind}] ${li.textContent}`).join('\n')).catch(() => '?');

// Waits for the n-th (1-based) inline notice of `kind` whose text starts with `prefix`.
async function waitNotice(page, kind, prefix, n = 1) {
  const re = new RegExp('^' + prefix.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));
  try {
    await page.getByTestId('messages').locator(`[data-kind="${kind}"]`).filter({ hasText: re }).nth(n - 1).waitFor({ timeout: WAIT_MS });
  } catch (err) {
    throw new Error(`${page.__who} never showed ${kind} notice #${n} starting with ${JSON.stringify(prefix)}; it shows:\n${await shown(page)}`);
  }
}

async function waitMembers(page, names) {
  const want = [...names].sort();
  try {
    await page.waitForFunction((w) => {
      const got = [...document.querySelectorAll('[data-testid="members"] [data-testid="member"]')].map((li) => li.firstChild.textContent).sort();
      return JSON.stringify(got) === JSON.stringify(w);
    }, want, { timeout: WAIT_MS });
  } catch (err) {
    const got = await page.$$eval('[data-testid="member"]', (lis) => lis.map((li) => li.firstChild.textContent)).catch(() => '?');
    throw new Error(`${page.__who}'s member list: expected ${JSON.stringify(want)}, got ${JSON.stringify(got)} (${err.message.split('\n')[0]})`);
  }
}

// Each step is a node:test test; a failure records diagnostics and skips the dependent steps after it.
function step(name, fn) {
  test(name, { timeout: 60_000 }, async (t) => {
    if (broken) { t.skip('an earlier step failed'); return; }
    try {
      await fn(t);
    } catch (err) {
      broken = true;
      for (const [who, page] of Object.entries(pages)) {
        const p = path.join(TMP, `failure-${who}.png`);
        if (!page.isClosed()) await page.screenshot({ path: p }).then(() => t.diagnostic(`screenshot: ${p}`), () => {});
      }
      t.diagnostic('server log tail:');
      for (const line of (server?.log || []).slice(-40)) t.diagnostic('  ' + line);
      throw err;
    }
  });
}

// ---------- setup / teardown ----------
before(async () => {
  await startServer('127.0.0.1:0');
  port = server.port;
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    timeout: 30_000,
  });
  ctx.alice = await browser.newContext({ viewport: DESKTOP });
  ctx.bob = await browser.newContext({ viewport: DESKTOP });
});

after(async () => {
  await Promise.race([browser?.close(), new Promise((r) => setTimeout(r, 10_000).unref())]).catch(() => {});
  await stopServer().catch(() => {});
  killServerNow();
});

// ---------- the steps ----------
step('server serves the page at / and ok at /healthz', async () => {
  const res = await fetch(url());
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type') || '', /^text\/html/);
  assert.match(await res.text(), /data-testid="messages"/);
  const health = await fetch(`http://127.0.0.1:${port}/healthz`);
  assert.equal(health.status, 200);
  assert.equal((await health.text()).trim(), 'ok');
});

step('two users pick nicknames and see each other in the member list', async () => {
  const alice = await openChat('alice');
  await setNick(alice, 'alice');
  const bob = await openChat('bob');
  await setNick(bob, 'bob');
  await waitMembers(alice, ['alice', 'bob']);
  await waitMembers(bob, ['alice', 'bob']);
  await waitNotice(alice, 'joined', 'guest-'); // bob arrived under a guest name ...
  await waitNotice(alice, 'nick', 'guest-'); // ... then renamed himself
  await waitNotice(bob, 'nick', 'You are now known as bob');
  assert.equal(await alice.getByTestId('room-name').textContent(), '#lobby');
});

step('messages go both ways, own messages show locally, text is never parsed as HTML', async (t) => {
  const { alice, bob } = pages;
  await sendMessage(alice, 'Hi Bob! The new chat server is up.');
  await waitMessage(bob, 'Hi Bob! The new chat server is up.');
  await alice.locator('[data-kind="message"].own .text').getByText('Hi Bob! The new chat server is up.').waitFor({ timeout: WAIT_MS });
  await sendMessage(bob, 'Nice. Does it survive a restart?');
  await waitMessage(alice, 'Nice. Does it survive a restart?');
  await sendMessage(alice, 'It reconnects with exponential backoff, so it should.');
  await waitMessage(bob, 'It reconnects with exponential backoff, so it should.');
  await sendMessage(bob, 'Let me close my tab and see. Grüße!');
  await waitMessage(alice, 'Let me close my tab and see. Grüße!');
  const ts = await alice.locator('[data-kind="message"]:not(.own) time').last().getAttribute('datetime');
  assert.ok(Math.abs(Date.parse(ts) - Date.now()) < 60_000, `message timestamp ${ts} should come from the server's ts`);

  if (SHOT.startsWith(ROOT)) mkdirSync(path.dirname(SHOT), { recursive: true });
  await alice.screenshot({ path: SHOT });
  t.diagnostic(`desktop screenshot: ${SHOT}`);
  await bob.setViewportSize({ width: 390, height: 844 });
  await bob.screenshot({ path: path.join(TMP, 'screenshot-phone.png') });
  await bob.getByTestId('menu-toggle').click();
  await bob.getByTestId('members').waitFor({ state: 'visible', timeout: WAIT_MS });
  await bob.screenshot({ path: path.join(TMP, 'screenshot-phone-menu.png') });
  await bob.getByTestId('menu-toggle').click();
  await bob.setViewportSize(DESKTOP);
  t.diagnostic(`phone screenshots: ${TMP}/screenshot-phone*.png`);

  const html = '<b>bold?</b> <img src=x onerror="window.__pwned=1"> & done';
  await sendMessage(bob, html);
  await waitMessage(alice, html);
  assert.equal(await alice.locator('[data-testid="messages"] b, [data-testid="messages"] img').count(), 0);
  assert.equal(await alice.evaluate(() => window.__pwned), undefined);
});

step('server errors are shown as a visible notice', async () => {
  const { bob } = pages;
  await bob.getByTestId('nick-input').fill('alice'); // taken
  await bob.getByTestId('nick-button').click();
  const err = bob.getByTestId('messages').locator('[data-kind="error"]').first();
  await err.waitFor({ state: 'visible', timeout: WAIT_MS });
  assert.equal(await bob.getByTestId('nick-input').inputValue(), 'bob');
  await waitMembers(bob, ['alice', 'bob']);
});

step('switching rooms updates the room, the member lists and the notices', async () => {
  const { alice, bob } = pages;
  await alice.getByTestId('room-input').fill('rust');
  await alice.getByTestId('room-button').click();
  await alice.getByTestId('room-name').getByText('#rust', { exact: true }).waitFor({ timeout: WAIT_MS });
  await waitMembers(alice, ['alice']);
  await waitNotice(bob, 'left', 'alice left');
  await waitMembers(bob, ['bob']);
  await alice.getByTestId('room-input').fill('lobby');
  await alice.getByTestId('room-button').click();
  await alice.getByTestId('room-name').getByText('#lobby', { exact: true }).waitFor({ timeout: WAIT_MS });
  await waitMembers(alice, ['alice', 'bob']);
  await waitNotice(bob, 'joined', 'alice joined');
  await waitMembers(bob, ['alice', 'bob']);
});

step('closing a page shows "left"; reopening restores the nickname and shows "joined"', async () => {
  const { alice } = pages;
  await pages.bob.close();
  await waitNotice(alice, 'left', 'bob left');
  await waitMembers(alice, ['alice']);
  const bob = await openChat('bob'); // same context: nickname + room come back from localStorage
  await waitMembers(bob, ['alice', 'bob']);
  assert.equal(await bob.getByTestId('nick-input').inputValue(), 'bob');
  await waitNotice(alice, 'joined', 'bob joined');
  await waitMembers(alice, ['alice', 'bob']);
});

step('both pages reconnect after a server restart on the same port', async () => {
  const { alice, bob } = pages;
  await stopServer();
  for (const page of [alice, bob]) {
    await page.locator('[data-testid="status"][data-state="reconnecting"]').waitFor({ timeout: WAIT_MS });
    assert.match(await page.getByTestId('status').textContent(), /Reconnecting in \d+s/);
  }
  await startServer(`127.0.0.1:${port}`);
  assert.equal(server.port, port);
  await Promise.all([waitOnline(alice, RECONNECT_MS), waitOnline(bob, RECONNECT_MS)]);
  await waitMembers(alice, ['alice', 'bob']);
  await waitMembers(bob, ['alice', 'bob']);
  await sendMessage(alice, 'Still there after the restart?');
  await waitMessage(bob, 'Still there after the restart?');
  await sendMessage(bob, 'Yes, back online.');
  await waitMessage(alice, 'Yes, back online.');
});
