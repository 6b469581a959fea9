"""Misbehaving chat-completions servers on 127.0.0.1 for the language tests: each accepts HTTP POSTs and answers
in one bad way. Every handler loop is bounded in count and in time (HANDLER_LIMIT_S), so a test that fails
never leaves a thread running for long; nothing listens beyond the loopback interface."""

from __future__ import annotations

from contextlib import contextmanager
import json
import socket
import socketserver
import threading
import time

HANDLER_LIMIT_S = 30.0  # no handler runs longer than this, whatever the client does


def chat_answer(text: str) -> bytes:
    return json.dumps({"id": "test", "object": "chat.completion", "choices": [
        {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}]}).encode()


def _head(status: str = "200 OK", length: int | None = None, extra: str = "") -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nConnection: close\r\n{extra}"
    if length is not None:
        head += f"Content-Length: {length}\r\n"
    return (head + "\r\n").encode()


class HostileServer:
    """`behaviour`: one of BEHAVIOURS. `sent` counts the answer bytes written over all requests, `requests` the
    requests read, `hung_up` the times the client closed the connection before the answer was complete."""

    BEHAVIOURS = ("stall", "drip", "lie", "close", "enormous", "enormous_declared", "not_text")

    def __init__(self, behaviour: str, drip_interval_s: float = 0.05):
        assert behaviour in self.BEHAVIOURS
        self.behaviour, self.drip_interval_s = behaviour, drip_interval_s
        self.sent = self.requests = self.hung_up = 0
        self.stop = threading.Event()
        self._lock = threading.Lock()
        server = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                self.request.settimeout(5.0)
                if not _read_request(self.request):
                    return
                with server._lock:
                    server.requests += 1
                try:
                    server._answer(self.request, time.monotonic() + HANDLER_LIMIT_S)
                except OSError:  # the client hung up: what a bounded client does with a bad answer
                    with server._lock:
                        server.hung_up += 1

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.tcp = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.tcp.server_address[1]}/v1"

    def _count(self, n: int):
        with self._lock:
            self.sent += n

    def _answer(self, sock: socket.socket, until: float):
        body = chat_answer('{"latitude": 45.001, "longitude": 7.0}')
        if self.behaviour == "stall":  # reads the request, says nothing
            self.stop.wait(max(until - time.monotonic(), 0.0))
        elif self.behaviour == "drip":  # a correct answer, one byte at a time
            data = _head(length=len(body)) + body
            for i in range(len(data)):
                if self.stop.is_set() or time.monotonic() > until:
                    return
                sock.sendall(data[i:i + 1])
                self._count(1)
                time.sleep(self.drip_interval_s)
        elif self.behaviour == "lie":  # promises 1000 bytes, sends 10, closes
            sock.sendall(_head(length=1000) + body[:10])
            self._count(10)
        elif self.behaviour == "close":  # closes before the status line
            pass
        elif self.behaviour in ("enormous", "enormous_declared"):  # streams until the client hangs up
            declared = 10 * 1024 ** 3 if self.behaviour == "enormous_declared" else None
            sock.sendall(_head(length=declared) + b'{"choices": [{"message": {"content": "')
            chunk = b"4" * 65536
            for _ in range(1024):  # at most 64 MiB, and HANDLER_LIMIT_S
                if self.stop.is_set() or time.monotonic() > until:
                    return
                sock.sendall(chunk)
                self._count(len(chunk))
        elif self.behaviour == "not_text":
            junk = bytes(range(256)) * 8
            sock.sendall(_head(length=len(junk)) + junk)
            self._count(len(junk))


def _read_request(sock: socket.socket) -> bool:
    """Read one HTTP request (headers and a Content-Length body), at most 64 MiB; False when there is none."""
    data = b""
    try:
        while b"\r\n\r\n" not in data and len(data) < 1 << 16:
            chunk = sock.recv(65536)
            if not chunk:
                return False
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = min(int(value), 1 << 26)
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                return False
            body += chunk
    except (OSError, ValueError):
        return False
    return True


@contextmanager
def hostile_server(behaviour: str, **options):
    s = HostileServer(behaviour, **options)
    thread = threading.Thread(target=s.tcp.serve_forever, daemon=True)
    thread.start()
    try:
        yield s
    finally:
        s.stop.set()
        s.tcp.shutdown()
        s.tcp.server_close()
