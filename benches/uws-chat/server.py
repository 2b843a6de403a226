"""uws-chat: the uWebSockets baseline for wschat's benchmarks, on socketify (uWS's Python binding).

The same protocol subset as tokio-chat (benches/loadgen/src/bin/tokio_chat.rs) and node-ws
(benches/node-ws/server.mjs), written the way a uWS developer would: one event loop, every room a
uWS pub/sub topic, each broadcast serialized and encoded once and handed to uWS's `publish`, which
copies it to every subscriber's buffer in C and flushes them corked at the end of the iteration.

Implemented: the upgrade on any path with `?name=&room=`, the `welcome` frame (with the full user
list, the room's epoch and seq, like wschat, and always an empty history: run wschat with
`--history 0`), `joined` and `left`, `message` (JSON or a bare text frame, with the room's next
seq) to every other member, `{"type":"ping"}` -> `{"type":"pong"}`, `{"type":"who"}`, and the
error events for bad JSON, unknown types, missing fields and invalid or taken names and rooms. A
client with more than --max-send-buffer bytes waiting is dropped by uWS itself
(`maxBackpressure` with `closeOnBackpressureLimit`), like wschat's slow readers. Not implemented:
`nick`, `join`, heartbeat pings, plain-HTTP pages (404), origins.

    python server.py --bind 127.0.0.1:0 [--max-connections 10000] [--max-send-buffer 1048576]

Needs `pip install -r requirements.txt` and libuv (Debian's `libuv1`), which socketify's shared
library links against.
"""

import argparse
import json
import platform
import resource
import secrets
import signal
import sys
import time
import unicodedata
from importlib.metadata import version
from urllib.parse import parse_qs

from socketify import App, AppListenOptions, OpCode
from socketify.native import lib


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", default="127.0.0.1:9004", help="HOST:PORT; port 0 picks a free one")
    parser.add_argument("--max-connections", type=int, default=10_000)
    parser.add_argument("--max-send-buffer", type=int, default=1 << 20)
    parser.add_argument("--max-message-bytes", type=int, default=65_536)
    return parser.parse_args()


def event(fields):
    """One event as JSON text, compact and in the dict's order, as JSON.stringify writes it.

    The order is part of the protocol: the load generator's fast path reads frames by prefix.
    """
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False)


def error_event(code, message):
    return event({"type": "error", "code": code, "message": message})


def valid_text(text, max_chars):
    """1 to max_chars code points, not only whitespace, no control characters (as node-ws)."""
    return (
        1 <= len(text) <= max_chars
        and text.strip() != ""
        and not any(unicodedata.category(char) == "Cc" for char in text)
    )


def is_guest_name(name):
    return name.startswith("guest-") and name[6:].isascii() and name[6:].isdigit()


class Member:
    """One connection's part in the chat; uWS keeps it as the socket's user data."""

    def __init__(self, requested_name, requested_room):
        # What the upgrade asked for (None when absent); settled in `on_open`.
        self.requested_name = requested_name
        self.requested_room = requested_room
        self.id = 0
        self.name = ""
        self.room = ""
        # The room's topic, the room's name in UTF-8.
        self.topic = b""


class Room:
    """A room's members (id -> name, in order of arrival) and its sequence, as wschat's epoch/seq."""

    def __init__(self):
        self.members = {}
        self.epoch = secrets.token_hex(4)
        self.seq = 0

    def users(self):
        return [{"id": id, "name": name} for id, name in self.members.items()]


class Chat:
    """The chat's state and uWS's handlers. Single-threaded: every handler runs on uWS's loop."""

    def __init__(self, app, options):
        self.app = app
        self.options = options
        self.next_id = 0
        self.names = set()
        self.rooms = {}
        self.open = 0

    def publish_to_others(self, ws, topic, json_text):
        """Sends one event to every subscriber of `topic` but `ws`: uWS's `WebSocket::publish`.

        socketify 0.0.31's `WebSocket.publish` calls `App.publish`, which reaches the sender too;
        the binding still declares uWS's own sender-excluding publish, so it is called directly.
        """
        payload = json_text.encode()
        lib.uws_ws_publish_with_options(
            self.app.SSL, ws.ws, topic, len(topic), payload, len(payload), int(OpCode.TEXT), False
        )

    def publish_to_all(self, topic, json_text):
        self.app.publish(topic, json_text.encode(), OpCode.TEXT)

    def on_upgrade(self, res, req, context):
        if self.open >= self.options.max_connections:
            res.write_status(503).write_header("Content-Type", "text/plain").end(
                "too many connections\n", end_connection=True
            )
            return
        # `+` and %XX decoded, invalid UTF-8 replaced, `name=` kept as "", as URLSearchParams does.
        url = req.get_full_url() or ""
        query = parse_qs(url.partition("?")[2], keep_blank_values=True)
        member = Member(query.get("name", [None])[0], query.get("room", [None])[0])
        res.upgrade(
            req.get_header("sec-websocket-key"),
            req.get_header("sec-websocket-protocol"),
            req.get_header("sec-websocket-extensions"),
            context,
            member,
        )

    def on_open(self, ws):
        me = ws.get_user_data()
        self.open += 1
        self.next_id += 1
        me.id = self.next_id
        complaints = []
        name = me.requested_name
        if name is not None and (not valid_text(name, 32) or is_guest_name(name)):
            complaints.append(error_event("invalid_name", "a name has 1 to 32 characters and no control characters"))
            name = None
        elif name is not None and name in self.names:
            complaints.append(error_event("name_taken", "that name is taken"))
            name = None
        me.name = name if name is not None else f"guest-{me.id}"
        room_name = me.requested_room
        if room_name is not None and not valid_text(room_name, 64):
            complaints.append(error_event("invalid_room", "a room has 1 to 64 characters and no control characters"))
            room_name = None
        me.room = room_name if room_name is not None else "lobby"
        me.topic = me.room.encode()
        self.names.add(me.name)
        room = self.rooms.setdefault(me.room, Room())
        # The others hear of the newcomer before it subscribes, so it does not hear of itself.
        self.publish_to_all(me.topic, event({"type": "joined", "room": me.room, "user": {"id": me.id, "name": me.name}}))
        room.members[me.id] = me.name
        ws.subscribe(me.topic)
        welcome = {
            "type": "welcome",
            "id": me.id,
            "name": me.name,
            "room": me.room,
            "epoch": room.epoch,
            "seq": room.seq,
            "users": room.users(),
            "history": [],
        }
        ws.send(event(welcome), OpCode.TEXT)
        for complaint in complaints:
            ws.send(complaint, OpCode.TEXT)

    def on_message(self, ws, data, opcode):
        if opcode != OpCode.TEXT:
            ws.end(1003, "binary frames are not supported")
            return
        me = ws.get_user_data()
        reply = self.on_text(ws, me, data)
        if reply is not None:
            ws.send(reply, OpCode.TEXT)

    def on_text(self, ws, me, frame):
        """Handles one text frame; returns the reply to its sender, if any."""
        text = frame
        if frame.lstrip().startswith("{"):
            try:
                request = json.loads(frame)
            except ValueError as error:
                return error_event("bad_json", f"invalid JSON: {error}")
            if not isinstance(request, dict):
                return error_event("bad_json", "a request is a JSON object")
            if "type" not in request:
                return error_event("missing_field", "missing field `type`")
            kind = request["type"]
            if kind == "message":
                if not isinstance(request.get("text"), str):
                    return error_event("missing_field", "missing field `text`")
                text = request["text"]
            elif kind == "ping":
                return event({"type": "pong"})
            elif kind == "who":
                return event({"type": "users", "room": me.room, "users": self.rooms[me.room].users()})
            else:
                # Spelled as JavaScript's template string would (null, true, 3), like node-ws.
                spelled = kind if isinstance(kind, str) else json.dumps(kind)
                return error_event("unknown_type", f"unknown type `{spelled}`; expected message, who or ping")
        room = self.rooms[me.room]
        room.seq += 1
        message = {
            "type": "message",
            "room": me.room,
            "seq": room.seq,
            "from": {"id": me.id, "name": me.name},
            "text": text,
            "ts": time.time_ns() // 1_000_000,
        }
        self.publish_to_others(ws, me.topic, event(message))
        return None

    def on_close(self, ws, code, reason):
        # uWS has already unsubscribed the socket from its topics when this runs, so a publish to
        # the room reaches the others only.
        me = ws.get_user_data()
        self.open -= 1
        room = self.rooms.get(me.room)
        if room is None or room.members.pop(me.id, None) is None:
            return
        self.names.discard(me.name)
        if not room.members:
            del self.rooms[me.room]
            return
        self.publish_to_all(me.topic, event({"type": "left", "room": me.room, "user": {"id": me.id, "name": me.name}}))


def not_found(res, req):
    res.write_status(404).write_header("Content-Type", "text/plain").end("not found\n", end_connection=True)


def main():
    options = parse_args()
    host, _, port = options.bind.rpartition(":")
    # Python leaves the open-files limit where the shell had it; 10,000 idle clients need more.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    app = App()
    chat = Chat(app, options)
    app.ws(
        "/*",
        {
            "upgrade": chat.on_upgrade,
            "open": chat.on_open,
            "message": chat.on_message,
            "close": chat.on_close,
            "max_payload_length": options.max_message_bytes,
            # Drop a reader with more than this waiting, as wschat and node-ws do.
            "max_backpressure": options.max_send_buffer,
            "close_on_backpressure_limit": True,
            # No idle timeout and no automatic pings, like the other baselines during a run.
            "idle_timeout": 0,
            "send_pings_automatically": False,
            "compression": 0,
        },
    )
    # A plain HTTP request falls through the WebSocket route to this one.
    app.any("/*", not_found)

    def on_listen(config):
        # socketify reports the port the socket really has (us_socket_local_port), so port 0 works.
        print(
            f"uws-chat socketify {version('socketify')} (uWebSockets), Python {platform.python_version()}, "
            f"listening on {host}:{config.port}",
            file=sys.stderr,
            flush=True,
        )

    # uSockets listens with its own fixed backlog (512); unlike the other servers it cannot be deepened.
    app.listen(AppListenOptions(port=int(port), host=host), on_listen)

    # socketify's `app.run()` drives libuv from an asyncio loop that polls it without blocking
    # (`uv_run(NOWAIT)` on every turn, then every 1 and 10 ms once idle): it spins a core while
    # busy and adds up to 10 ms of latency when idle, which would measure socketify's glue, not
    # uWS. No handler here is async, so libuv runs on its own, blocking in epoll as uWS's
    # `us_loop_run` does. SIGINT and SIGTERM end the process at once (no Python code runs while
    # libuv waits).
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    app.loop.uv_loop.run()


if __name__ == "__main__":
    main()
