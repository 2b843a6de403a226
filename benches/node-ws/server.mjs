// node-ws: the Node.js baseline for wschat's benchmarks, on the `ws` package. The same protocol
// subset as tokio-chat (benches/loadgen/src/bin/tokio_chat.rs), written the way a Node developer
// would: one event loop, a `ws` WebSocketServer on a plain http server, each broadcast serialized
// and encoded once and handed to every recipient's `send`.
//
// Implemented: the upgrade on any path with `?name=&room=`, the `welcome` frame (with the full
// user list, the room's epoch and seq, like wschat, and always an empty history: run wschat with
// `--history 0`), `joined` and `left`, `message` (JSON or a bare text frame, with the room's next
// seq) to every other member,
// `{"type":"ping"}` -> `{"type":"pong"}`, `{"type":"who"}`, and the error events for bad JSON,
// unknown types, missing fields and invalid or taken names and rooms. A client with more than
// --max-send-buffer bytes waiting (`bufferedAmount`) is closed with 1008, like wschat's slow
// readers. Not implemented: `nick`, `join`, heartbeat pings, plain-HTTP pages, origins.
//
//   node server.mjs --bind 127.0.0.1:0 [--max-connections 10000] [--max-send-buffer 1048576]

import { randomBytes } from "node:crypto";
import http from "node:http";
import { WebSocketServer } from "ws";

const options = { bind: "127.0.0.1:9003", maxConnections: 10_000, maxSendBuffer: 1 << 20, maxMessageBytes: 65_536 };
for (let index = 2; index < process.argv.length; index += 2) {
  const [flag, value] = [process.argv[index], process.argv[index + 1]];
  if (value === undefined) throw new Error(`${flag} needs a value`);
  switch (flag) {
    case "--bind": options.bind = value; break;
    case "--max-connections": options.maxConnections = Number(value); break;
    case "--max-send-buffer": options.maxSendBuffer = Number(value); break;
    case "--max-message-bytes": options.maxMessageBytes = Number(value); break;
    default: throw new Error(`unknown flag ${flag}`);
  }
}
const separator = options.bind.lastIndexOf(":");
const host = options.bind.slice(0, separator);
const port = Number(options.bind.slice(separator + 1));

let nextId = 0;
const names = new Set();
/** Room name -> Map of member id -> { name, socket }, in order of arrival. */
const rooms = new Map();
/** Room name -> { epoch, seq }: the room's sequence, as wschat's `epoch` and `seq`. */
const sequences = new Map();
let open = 0;

const event = (fields) => JSON.stringify(fields);
const TEXT = { binary: false };
const errorEvent = (code, message) => event({ type: "error", code, message });

function validText(text, maxChars) {
  const chars = [...text];
  return chars.length >= 1 && chars.length <= maxChars && text.trim() !== "" && !/\p{Cc}/u.test(text);
}

const isGuestName = (name) => /^guest-[0-9]+$/.test(name);

const usersOf = (members) => [...members].map(([id, member]) => ({ id, name: member.name }));

/** Sends one serialized event to every member but `except`; drops slow readers. */
function broadcast(roomName, except, json) {
  const members = rooms.get(roomName);
  if (!members) return;
  // Encoded to UTF-8 once, not once per recipient; `binary: false` keeps it a text frame.
  const payload = Buffer.from(json);
  for (const [id, member] of members) {
    if (id === except) continue;
    if (member.socket.bufferedAmount > options.maxSendBuffer) {
      member.socket.close(1008, "too slow");
      continue;
    }
    member.socket.send(payload, TEXT);
  }
}

function leave(me) {
  const members = rooms.get(me.room);
  if (!members || !members.delete(me.id)) return;
  names.delete(me.name);
  if (members.size === 0) {
    rooms.delete(me.room);
    sequences.delete(me.room);
    return;
  }
  broadcast(me.room, null, event({ type: "left", room: me.room, user: { id: me.id, name: me.name } }));
}

function onText(me, frame) {
  let text = frame;
  if (frame.trimStart().startsWith("{")) {
    let request;
    try {
      request = JSON.parse(frame);
    } catch (error) {
      return errorEvent("bad_json", `invalid JSON: ${error.message}`);
    }
    if (request === null || typeof request !== "object" || Array.isArray(request)) {
      return errorEvent("bad_json", "a request is a JSON object");
    }
    switch (request.type) {
      case undefined:
        return errorEvent("missing_field", "missing field `type`");
      case "message":
        if (typeof request.text !== "string") return errorEvent("missing_field", "missing field `text`");
        text = request.text;
        break;
      case "ping":
        return event({ type: "pong" });
      case "who":
        return event({ type: "users", room: me.room, users: usersOf(rooms.get(me.room) ?? []) });
      default:
        return errorEvent("unknown_type", `unknown type \`${request.type}\`; expected message, who or ping`);
    }
  }
  const sequence = sequences.get(me.room);
  sequence.seq += 1;
  const message = { type: "message", room: me.room, seq: sequence.seq, from: { id: me.id, name: me.name }, text, ts: Date.now() };
  broadcast(me.room, me.id, event(message));
  return null;
}

const wss = new WebSocketServer({ noServer: true, maxPayload: options.maxMessageBytes, perMessageDeflate: false });

wss.on("connection", (socket, request) => {
  const query = new URL(request.url, "http://localhost").searchParams;
  const complaints = [];
  const id = ++nextId;
  let name = query.get("name");
  if (name !== null && (!validText(name, 32) || isGuestName(name))) {
    complaints.push(errorEvent("invalid_name", "a name has 1 to 32 characters and no control characters"));
    name = null;
  } else if (name !== null && names.has(name)) {
    complaints.push(errorEvent("name_taken", "that name is taken"));
    name = null;
  }
  name ??= `guest-${id}`;
  let room = query.get("room");
  if (room !== null && !validText(room, 64)) {
    complaints.push(errorEvent("invalid_room", "a room has 1 to 64 characters and no control characters"));
    room = null;
  }
  room ??= "lobby";
  const me = { id, name, room };
  names.add(name);
  if (!rooms.has(room)) {
    rooms.set(room, new Map());
    sequences.set(room, { epoch: randomBytes(4).toString("hex"), seq: 0 });
  }
  broadcast(room, null, event({ type: "joined", room, user: { id, name } }));
  const members = rooms.get(room);
  members.set(id, { name, socket });
  const { epoch, seq } = sequences.get(room);
  socket.send(event({ type: "welcome", id, name, room, epoch, seq, users: usersOf(members), history: [] }));
  for (const complaint of complaints) socket.send(complaint);

  socket.on("message", (data, isBinary) => {
    if (isBinary) {
      socket.close(1003, "binary frames are not supported");
      return;
    }
    const reply = onText(me, data.toString());
    if (reply !== null) socket.send(reply);
  });
  socket.on("close", () => leave(me));
  socket.on("error", () => {});
});

const server = http.createServer((request, response) => {
  response.writeHead(404, { "Content-Type": "text/plain", Connection: "close" });
  response.end("not found\n");
});

server.on("upgrade", (request, socket, head) => {
  if (open >= options.maxConnections) {
    socket.end("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 21\r\nConnection: close\r\n\r\ntoo many connections\n");
    return;
  }
  open += 1;
  socket.once("close", () => {
    open -= 1;
  });
  socket.setNoDelay(true);
  wss.handleUpgrade(request, socket, head, (websocket) => wss.emit("connection", websocket, request));
});

// A deep accept queue, as wschat and tokio-chat have.
server.listen({ host, port, backlog: 4096 }, () => {
  const address = server.address();
  process.stderr.write(`node-ws ${process.version}, ws listening on ${address.address}:${address.port}\n`);
});
