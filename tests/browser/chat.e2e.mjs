// End-to-end browser test for the wschat page (web/index.html) against the real server binary.
//
//   WSCHAT_BIN=target/release/wschat node --test tests/browser/chat.e2e.mjs
//
// The pages load through TCP relays in this file (see "relay"), so the test can cut, stall or
// blackhole a page's connection while the server keeps running.
//
// Env: WSCHAT_BIN (server binary, default target/release/wschat), CHROMIUM (default /usr/bin/chromium),
// SCREENSHOT=1 (write docs/screenshot.png; otherwise screenshots go to a temp dir),
// E2E_DEADLINE_MS (overall deadline, default 120000), PAGE_FILE (development only: the relays
// serve this file for GET / instead of the page compiled into the binary).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
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
const PAGE_FILE = process.env.PAGE_FILE ? path.resolve(process.env.PAGE_FILE) : null;
const GAP = 'Some messages may be missing';
// Tokens are optional on the test's server: the pages are guests, except where a step's link
// carries a token made with `wschat token`.
const SECRET_FILE = path.join(TMP, 'auth-secret');
writeFileSync(SECRET_FILE, 'the browser test\'s token secret, 32 bytes or more\n');
const SERVER_ARGS = ['--auth', 'optional', '--auth-secret-file', SECRET_FILE];
const mintToken = (sub, ttlSecs) =>
  execFileSync(BIN, ['token', '--sub', sub, '--ttl', String(ttlSecs), '--secret-file', SECRET_FILE]).toString().trim();

let server = null; // { child, port, log: string[] }
let browser = null;
let port = 0;
let broken = false; // once a step fails the later ones are skipped (they depend on its state)
const ctx = {}; // alice, bob, carol: BrowserContext
const pages = {}; // alice, bob, carol: Page
const relays = {}; // alice: alice's own relay (the one the test cuts); others: everyone else's

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
    const child = spawn(BIN, ['--bind', bind, ...SERVER_ARGS], { stdio: ['ignore', 'pipe', 'pipe'] });
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

// ---------- relay: a TCP hop between the browser and the server that the test controls ----------
// A page loaded from http://127.0.0.1:RELAY/ opens its WebSocket to location.host, so that goes
// through the relay too. The relay forwards bytes untouched, except when the test asks it to
// hold the server's bytes (acks wait), drop the page's bytes (requests vanish), refuse new
// connections, or sever every connection (the page sees the link die; the server sees a close).
function startRelay(name) {
  const relay = {
    name, port: 0,
    upgrades: [], // request targets of the WebSocket upgrades seen, oldest first
    refusing: false, // new connections are closed at once
    holdingDown: false, // server-to-page bytes are buffered until release()
    droppingUp: false, // page-to-server bytes are discarded
    pairs: new Set(), // {client, upstream, held}
    sever() {
      for (const pair of relay.pairs) { pair.client.destroy(); pair.upstream?.destroy(); }
      relay.pairs.clear();
    },
    release() {
      relay.holdingDown = false;
      for (const pair of relay.pairs) { for (const chunk of pair.held) pair.client.write(chunk); pair.held = []; }
    },
  };
  const listener = net.createServer((client) => accept(relay, client));
  relay.close = () => { relay.sever(); listener.close(); };
  return new Promise((resolve, reject) => {
    listener.once('error', reject);
    listener.listen(0, '127.0.0.1', () => { relay.port = listener.address().port; resolve(relay); });
  });
}

function accept(relay, client) {
  client.on('error', () => {}); // a severed or refused socket is expected here
  if (relay.refusing) { client.destroy(); return; }
  const pair = { client, upstream: null, held: [] };
  relay.pairs.add(pair);
  client.on('close', () => { pair.upstream?.destroy(); relay.pairs.delete(pair); });
  // Read the request head to log upgrades and, with PAGE_FILE, answer GET / here.
  let head = Buffer.alloc(0);
  const onHead = (chunk) => {
    head = Buffer.concat([head, chunk]);
    const end = head.indexOf('\r\n\r\n');
    if (end < 0) { if (head.length > 65_536) client.destroy(); return; }
    client.off('data', onHead);
    const [requestLine, ...headers] = head.subarray(0, end).toString('latin1').split('\r\n');
    const [method, target] = requestLine.split(' ');
    const upgrade = headers.some((h) => /^upgrade:\s*websocket\s*$/i.test(h));
    if (upgrade) relay.upgrades.push(target);
    if (PAGE_FILE && method === 'GET' && !upgrade && new URL(target, 'http://relay').pathname === '/') {
      const body = readFileSync(PAGE_FILE); // re-read on every load, for editing while iterating
      client.write(`HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: ${body.length}\r\n` +
        'Cache-Control: no-cache\r\nConnection: close\r\n\r\n');
      client.end(body);
      return;
    }
    forward(relay, pair, head);
  };
  client.on('data', onHead);
}

function forward(relay, pair, firstBytes) {
  const upstream = net.connect(server.port, '127.0.0.1'); // server.port: the restarted server keeps it
  pair.upstream = upstream;
  upstream.on('error', () => {}); // refused while the server restarts: 'close' follows
  upstream.on('close', () => pair.client.destroy());
  upstream.write(firstBytes);
  pair.client.on('data', (chunk) => { if (!relay.droppingUp) upstream.write(chunk); });
  upstream.on('data', (chunk) => { if (relay.holdingDown) pair.held.push(chunk); else pair.client.write(chunk); });
}

const upgradeParams = (relay) => new URLSearchParams((relay.upgrades.at(-1) || '').split('?')[1] || '');

// ---------- page helpers (Playwright auto-waiting; no fixed sleeps) ----------
const url = () => `http://127.0.0.1:${port}/`;
const relayUrl = (who) => `http://127.0.0.1:${(who === 'alice' ? relays.alice : relays.others).port}/`;

async function openChat(who, query = '') {
  const page = await ctx[who].newPage();
  page.on('pageerror', (err) => console.error(`# [${who}] page error: ${err.message}`));
  page.__who = who;
  pages[who] = page;
  await page.goto(relayUrl(who) + query);
  await waitOnline(page);
  return page;
}
// Like openChat, but waits for the status `state` instead of online.
async function openChatUntil(who, query, state) {
  const page = await ctx[who].newPage();
  page.on('pageerror', (err) => console.error(`# [${who}] page error: ${err.message}`));
  page.__who = who;
  pages[who] = page;
  await page.goto(relayUrl(who) + query);
  await waitStatus(page, state);
  return page;
}
const waitOnline = (page, timeout = WAIT_MS) => page.locator('[data-testid="status"][data-state="online"]').waitFor({ timeout });
const waitStatus = (page, state, timeout = WAIT_MS) => page.locator(`[data-testid="status"][data-state="${state}"]`).waitFor({ timeout });

async function setNick(page, name) {
  await page.getByTestId('nick-input').fill(name);
  await page.getByTestId('nick-button').click();
  await page.waitForFunction((n) => document.querySelector('[data-testid="nick-input"]').value === n &&
    [...document.querySelectorAll('[data-testid="member"]')].some((li) => li.firstChild.textContent === n), name, { timeout: WAIT_MS });
}

async function joinRoom(page, room) {
  await page.getByTestId('room-input').fill(room);
  await page.getByTestId('room-button').click();
  await page.getByTestId('room-name').getByText('#' + room, { exact: true }).waitFor({ timeout: WAIT_MS });
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
const shown = (page, list = 'messages') => page.$$eval(`[data-testid="${list}"] li`, (lis) => lis.map((li) => `  [${li.dataset.kind}${li.dataset.state ? ' ' + li.dataset.state : ''}] ${li.textContent}`).join('\n')).catch(() => '?');

// The item (room message or DM) whose bubble reads exactly `text`, in list `list` ('messages' or 'dms').
const item = (page, text, list = 'messages') =>
  page.getByTestId(list).locator('[data-kind="message"], [data-kind="dm"]').filter({ has: page.locator('.text').getByText(text, { exact: true }) });

// Waits until the own item reading `text` has data-state `state` (pending, sent, failed).
async function waitState(page, text, state, list = 'messages') {
  try {
    await item(page, text, list).and(page.locator(`[data-state="${state}"]`)).waitFor({ timeout: WAIT_MS });
  } catch (err) {
    throw new Error(`${page.__who}: ${JSON.stringify(text)} never became ${state}; ${list} shows:\n${await shown(page, list)}`);
  }
}

// Waits for the n-th (1-based) inline notice of `kind` whose text starts with `prefix`.
const noticesOf = (page, kind, prefix) => {
  const re = new RegExp('^' + prefix.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));
  return page.getByTestId('messages').locator(`[data-kind="${kind}"]`).filter({ hasText: re });
};
async function waitNotice(page, kind, prefix, n = 1) {
  try {
    await noticesOf(page, kind, prefix).nth(n - 1).waitFor({ timeout: WAIT_MS });
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

// The room messages a page shows, in order: [{text, seq}].
const roomMessages = (page) => page.$$eval('[data-testid="messages"] [data-kind="message"]',
  (lis) => lis.map((li) => ({ text: li.querySelector('.text').textContent, seq: li.dataset.seq === undefined ? null : Number(li.dataset.seq) })));

// Each of `texts` is shown exactly once, in this order; no text at all is shown twice; the seqs
// on screen only go up.
async function assertEachOnceInOrder(page, texts) {
  const got = await roomMessages(page);
  const all = got.map((m) => m.text);
  const dump = `\n${page.__who} shows:\n${await shown(page)}`;
  for (const text of texts) assert.equal(all.filter((t) => t === text).length, 1, `${JSON.stringify(text)} should be shown exactly once${dump}`);
  const positions = texts.map((text) => all.indexOf(text));
  assert.deepEqual(positions, [...positions].sort((a, b) => a - b), `messages out of order${dump}`);
  assert.equal(new Set(all).size, all.length, `some message is shown twice${dump}`);
  const seqs = got.map((m) => m.seq).filter((s) => s !== null);
  for (let i = 1; i < seqs.length; i++) assert.ok(seqs[i] > seqs[i - 1], `seq ${seqs[i]} after ${seqs[i - 1]}${dump}`);
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
  relays.alice = await startRelay('alice');
  relays.others = await startRelay('others');
  if (PAGE_FILE) console.log(`# PAGE_FILE: the relays serve ${PAGE_FILE} for GET /, not the binary's page`);
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
  for (const relay of Object.values(relays)) relay.close();
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

step('a sent message shows as pending until the server acks it, then as sent', async () => {
  const { alice, bob } = pages;
  const text = 'This one waits for its ack.';
  relays.alice.holdingDown = true; // the server's reply (the ack) waits in the relay
  try {
    await sendMessage(alice, text);
    await waitState(alice, text, 'pending');
    await item(alice, text).getByText('sending…').waitFor({ state: 'visible', timeout: WAIT_MS });
    await waitMessage(bob, text); // the server has it; only the ack is held back
    assert.equal(await item(alice, text).getAttribute('data-state'), 'pending');
  } finally {
    relays.alice.release();
  }
  await waitState(alice, text, 'sent');
  assert.equal(await item(alice, text).getByText('sending…').count(), 0);
  assert.match(await item(alice, text).getAttribute('data-seq') || '', /^\d+$/, 'the ack\'s seq is recorded on the message');
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
  await joinRoom(alice, 'rust');
  await waitMembers(alice, ['alice']);
  await waitNotice(bob, 'left', 'alice left');
  await waitMembers(bob, ['bob']);
  await joinRoom(alice, 'lobby');
  await waitMembers(alice, ['alice', 'bob']);
  await waitNotice(bob, 'joined', 'alice joined');
  await waitMembers(bob, ['alice', 'bob']);
});

step('a link /?room=rust&name=carol opens the page as carol in #rust, over the saved name and room', async () => {
  const { alice } = pages;
  await joinRoom(alice, 'rust');
  await waitMembers(alice, ['alice']);
  ctx.carol = await browser.newContext({ viewport: DESKTOP });
  // A fresh browser that has been here before as "zoe" in #lobby: the link must win.
  await ctx.carol.addInitScript(() => { localStorage.setItem('wschat.name', 'zoe'); localStorage.setItem('wschat.room', 'lobby'); });
  const carolToken = mintToken('carol', 600);
  const carol = await openChat('carol', `?room=rust&name=carol&token=${carolToken}`);
  await carol.getByTestId('room-name').getByText('#rust', { exact: true }).waitFor({ timeout: WAIT_MS });
  assert.equal(await carol.getByTestId('nick-input').inputValue(), 'carol');
  await waitMembers(carol, ['alice', 'carol']);
  await waitMembers(alice, ['alice', 'carol']);
  await waitNotice(alice, 'joined', 'carol joined');
  const query = upgradeParams(relays.others);
  assert.deepEqual([query.get('name'), query.get('room'), query.get('token')], ['carol', 'rust', carolToken],
    `the upgrade carries the link's name, room and token: ${relays.others.upgrades.at(-1)}`);
  await ctx.carol.close();
  delete pages.carol;
  await waitNotice(alice, 'left', 'carol left');
  await joinRoom(alice, 'lobby');
  await waitMembers(alice, ['alice', 'bob']);
});

step('clicking a member opens a direct message, shown apart from the room on both sides', async () => {
  const { alice, bob } = pages;
  const text = 'Psst, Bob: this one is just for you.';
  await alice.getByTestId('members').getByRole('button', { name: /^bob\b/ }).click();
  await alice.getByTestId('dm-target').getByText('bob').waitFor({ state: 'visible', timeout: WAIT_MS });
  relays.alice.holdingDown = true; // see the DM pending until its ack
  try {
    await sendMessage(alice, text);
    await waitState(alice, text, 'pending', 'dms');
    await item(bob, text, 'dms').waitFor({ timeout: WAIT_MS });
  } finally {
    relays.alice.release();
  }
  await waitState(alice, text, 'sent', 'dms');
  assert.equal(await item(bob, text, 'dms').getAttribute('data-direction'), 'in');
  assert.match(await item(bob, text, 'dms').textContent(), /^alice/);
  for (const page of [alice, bob]) {
    assert.equal(await page.getByTestId('messages').getByText(text).count(), 0, `${page.__who} shows the DM among the room's messages`);
  }
  // bob answers from his DM list; alice sees the answer in hers.
  const reply = 'Got it, thanks.';
  await bob.getByTestId('dms').getByRole('button', { name: 'Reply to alice' }).first().click();
  await bob.getByTestId('dm-target').getByText('alice').waitFor({ state: 'visible', timeout: WAIT_MS });
  await sendMessage(bob, reply);
  await item(alice, reply, 'dms').waitFor({ timeout: WAIT_MS });
  await waitState(bob, reply, 'sent', 'dms');
  for (const page of [alice, bob]) {
    assert.equal(await page.getByTestId('messages').getByText(reply).count(), 0, `${page.__who} shows the DM among the room's messages`);
    await page.getByTestId('dm-close').click(); // back to the room
    await page.getByTestId('dm-target').waitFor({ state: 'hidden', timeout: WAIT_MS });
  }
});

step('after a short break (server still up) the page resumes: every message once, in order, no gap notice', async () => {
  const { alice, bob } = pages;
  const text = (n) => `Resume check ${n}.`;
  await sendMessage(bob, text(1));
  await waitMessage(alice, text(1));
  const since = Number(await item(alice, text(1)).getAttribute('data-seq'));
  assert.ok(since > 0, 'messages carry their seq');

  // alice's message reaches the server but its ack never reaches her.
  relays.alice.holdingDown = true;
  await sendMessage(alice, text(2));
  await waitMessage(bob, text(2));
  await waitState(alice, text(2), 'pending');
  await sendMessage(bob, text(3)); // held back from alice too
  await waitState(bob, text(3), 'sent');

  // Cut alice off and keep her off while bob goes on talking.
  const leftBefore = await noticesOf(bob, 'left', 'alice left').count();
  relays.alice.refusing = true;
  relays.alice.sever(); // drops the held bytes with the connection
  relays.alice.holdingDown = false;
  await waitStatus(alice, 'reconnecting');
  await waitNotice(bob, 'left', 'alice left', leftBefore + 1);
  await sendMessage(bob, text(4));
  await waitState(bob, text(4), 'sent');
  await sendMessage(bob, text(5));
  await waitState(bob, text(5), 'sent');

  relays.alice.refusing = false;
  await waitOnline(alice, RECONNECT_MS);
  const query = upgradeParams(relays.alice);
  assert.equal(query.get('since'), String(since), `resumes from the last seq shown: ${relays.alice.upgrades.at(-1)}`);
  assert.match(query.get('epoch') || '', /^[a-z0-9]{8}$/, `sends the room's epoch: ${relays.alice.upgrades.at(-1)}`);
  for (const n of [3, 4, 5]) await waitMessage(alice, text(n));
  await waitState(alice, text(2), 'sent'); // found in the replayed history, so it did arrive
  await sendMessage(bob, text(6));
  await waitMessage(alice, text(6));
  await assertEachOnceInOrder(alice, [1, 2, 3, 4, 5, 6].map(text));
  assert.equal(await alice.getByTestId('messages').locator('[data-kind="gap"]').count(), 0, 'no "may be missing" notice after a full resume');
});

step('a message that never reached the server is marked not delivered after the reconnect; Retry sends it', async () => {
  const { alice, bob } = pages;
  const text = 'This one is lost on the way.';
  relays.alice.droppingUp = true;
  await sendMessage(alice, text);
  await waitState(alice, text, 'pending');
  relays.alice.sever();
  relays.alice.droppingUp = false;
  await waitStatus(alice, 'reconnecting');
  await waitOnline(alice, RECONNECT_MS);
  await waitState(alice, text, 'failed');
  await item(alice, text).getByText('Not delivered').waitFor({ state: 'visible', timeout: WAIT_MS });
  assert.equal(await bob.getByTestId('messages').getByText(text).count(), 0);
  await item(alice, text).getByRole('button', { name: /^Send again/ }).click();
  await waitState(alice, text, 'sent');
  await waitMessage(bob, text);
  assert.equal(await alice.getByTestId('messages').locator('[data-kind="gap"]').count(), 0);
  await assertEachOnceInOrder(alice, [text]);
});

step('closing a page shows "left"; a DM to the departed shows an error; reopening restores the nickname', async () => {
  const { alice } = pages;
  await pages.bob.close();
  await waitNotice(alice, 'left', 'bob left');
  await waitMembers(alice, ['alice']);
  const text = 'Bob, are you still there?';
  await alice.getByTestId('dms').getByRole('button', { name: 'Reply to bob' }).first().click();
  await sendMessage(alice, text);
  await waitState(alice, text, 'failed', 'dms');
  await noticesOf(alice, 'error', 'Error: ').filter({ hasText: 'direct message to bob' }).waitFor({ timeout: WAIT_MS });
  await alice.getByTestId('dm-close').click();
  const bob = await openChat('bob'); // same context: nickname + room come back from localStorage
  await waitMembers(bob, ['alice', 'bob']);
  assert.equal(await bob.getByTestId('nick-input').inputValue(), 'bob');
  await waitNotice(alice, 'joined', 'bob joined');
  await waitMembers(alice, ['alice', 'bob']);
});

step('a link with a token signs in under its name; when the token runs out the page says so and stops', async () => {
  ctx.dora = await browser.newContext({ viewport: DESKTOP });
  // Runs out in 2-3 s (whole seconds): the server sends `refresh` first, then closes with 4001.
  const dora = await openChat('dora', `?name=someone-else&token=${mintToken('dora', 3)}`);
  assert.equal(await dora.getByTestId('nick-input').inputValue(), 'dora', "the token's name wins");
  await waitNotice(dora, 'info', 'Your session expires soon');
  await waitNotice(dora, 'ended', 'Your session expired');
  await waitStatus(dora, 'ended');
  assert.equal(await dora.getByTestId('send-button').isDisabled(), true);
  const upgrades = relays.others.upgrades.length;
  // An expired token is refused before the upgrade (401); after three tries the page gives up.
  const page = await openChatUntil('dora', `?token=${mintToken('dora', 0)}`, 'ended');
  await waitNotice(page, 'ended', 'Could not sign in');
  assert.ok(relays.others.upgrades.length - upgrades <= 4, 'the page stopped trying');
  await ctx.dora.close();
  delete pages.dora;
});

step('both pages reconnect after a server restart on the same port and say messages may be missing', async () => {
  const { alice, bob } = pages;
  await stopServer();
  for (const page of [alice, bob]) {
    await waitStatus(page, 'reconnecting');
    assert.match(await page.getByTestId('status').textContent(), /Reconnecting in \d+s/);
  }
  await startServer(`127.0.0.1:${port}`);
  assert.equal(server.port, port);
  await Promise.all([waitOnline(alice, RECONNECT_MS), waitOnline(bob, RECONNECT_MS)]);
  for (const page of [alice, bob]) await waitNotice(page, 'gap', GAP); // a new server, a new epoch
  await waitMembers(alice, ['alice', 'bob']);
  await waitMembers(bob, ['alice', 'bob']);
  await sendMessage(alice, 'Still there after the restart?');
  await waitMessage(bob, 'Still there after the restart?');
  await waitState(alice, 'Still there after the restart?', 'sent');
  await sendMessage(bob, 'Yes, back online.');
  await waitMessage(alice, 'Yes, back online.');
});
