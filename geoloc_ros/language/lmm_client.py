"""A client of an OpenAI-compatible chat-completions endpoint (vLLM, Ollama, llama.cpp server, ...), for the
Img2Loc prompt (language/geolocate.py): JSON over HTTP with the standard library, retries on timeouts /
connection errors / answers cut short / HTTP 429 and 5xx, and thread-safe counters for /diagnostics.

Every call is bounded: each attempt has `timeout_s` in total (connecting, sending, the status line, the headers
and the whole body together, not per read: a server that drips one byte a second is cut off at the deadline), so
a call as a whole takes at most (retries + 1) x `timeout_s` plus the pauses between attempts (0.2 s, 0.4 s, ...,
at most 2 s each; `call_limit_s`), and an answer body over MAX_ANSWER_BYTES is refused without reading the rest.
A server that closes the connection mid-answer (RemoteDisconnected, IncompleteRead) counts as an error and is
asked again like a refused connection.

`lmm_url` is the endpoint (`http://host:8000/v1/chat/completions`) or its base (`http://host:8000` or
`http://host:8000/v1`), to which the standard path is appended. An API key, when the server needs one, is read
from the environment variable OPENAI_API_KEY (never from a parameter, which would show it in `ros2 param`).
"""

from __future__ import annotations

from collections import Counter
import http.client
import json
import os
import socket
import threading
import time
import urllib.parse

MAX_ANSWER_BYTES = 1 << 20  # a chat answer of a few hundred tokens is a few KiB
_READ_CHUNK = 1 << 16


class LmmError(RuntimeError):
    """The endpoint gave no usable answer (after the retries); the message says why."""


class _Final(Exception):
    """An answer that asking again would not change (HTTP 4xx, not a chat-completions answer, too large)."""


class _Timeout(Exception):
    pass


def retry_pause_s(attempt: int) -> float:
    return min(0.2 * attempt, 2.0)


def endpoint_of(url: str) -> str:
    url = url.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    return url + ("/chat/completions" if url.endswith("/v1") else "/v1/chat/completions")


class LmmClient:
    def __init__(self, url: str, model: str = "", timeout_s: float = 30.0, retries: int = 1,
                 max_tokens: int = 200):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"lmm_url {url!r}: expected an http:// or https:// URL")
        self.url = endpoint_of(url)
        parts = urllib.parse.urlsplit(self.url)
        if not parts.hostname:
            raise ValueError(f"lmm_url {url!r}: no host name")
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname, parts.port
        self._path = parts.path + (f"?{parts.query}" if parts.query else "")
        self.model = model
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)
        self.max_tokens = int(max_tokens)
        self._lock = threading.Lock()
        self.counts = Counter()  # requests, answers, timeouts, errors, retries (+ refusals, counted by the caller)

    def count(self, what: str, n: int = 1):
        with self._lock:
            self.counts[what] += n

    def snapshot(self) -> dict:
        with self._lock:
            return {f"lmm_{k}": v for k, v in sorted(self.counts.items())}

    def call_limit_s(self) -> float:
        """The longest a `chat` call can take: every attempt's deadline and the pauses between them."""
        return (self.retries + 1) * self.timeout_s + sum(retry_pause_s(a) for a in range(1, self.retries + 1))

    def chat(self, messages: list) -> str:
        """The assistant message's text for `messages` (OpenAI chat format); LmmError after the last attempt.
        Never longer than `call_limit_s()`."""
        body = {"messages": messages, "max_tokens": self.max_tokens, "temperature": 0.0}
        if self.model:
            body["model"] = self.model
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if os.environ.get("OPENAI_API_KEY"):
            headers["Authorization"] = f"Bearer {os.environ['OPENAI_API_KEY']}"
        last = "no attempt"
        for attempt in range(self.retries + 1):
            if attempt:
                self.count("retries")
                time.sleep(retry_pause_s(attempt))
            self.count("requests")
            try:
                text = _content(self._post(data, headers, self.timeout_s))
                self.count("answers")
                return text
            except _Timeout:
                self.count("timeouts")
                last = f"no complete answer within {self.timeout_s:g} s"
            except _Final as e:
                self.count("errors")
                last = str(e)
                break
            except (OSError, http.client.HTTPException) as e:  # refused, reset, closed mid-answer, bad status line
                self.count("errors")
                last = f"cannot reach {self.url} or the answer was cut short ({type(e).__name__}: {e})"
        raise LmmError(f"{self.url}: {last}")

    def _post(self, data: bytes, headers: dict, budget_s: float) -> bytes:
        """The body of a 200 answer to one POST, all of it within `budget_s` seconds (a timer shuts the socket
        down at the deadline, which wakes any read blocked on it)."""
        deadline = time.monotonic() + max(budget_s, 0.0)
        kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = kind(self._host, self._port, timeout=max(budget_s, 0.001))
        expired = threading.Event()
        opened = []  # the socket, kept: http.client lets go of it once an answer says "Connection: close"

        def cut_off():
            expired.set()
            for sock in opened:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        timer = threading.Timer(max(budget_s, 0.0), cut_off)
        timer.daemon = True
        timer.start()
        try:
            conn.connect()
            opened.append(conn.sock)
            if expired.is_set():
                raise _Timeout()
            conn.request("POST", self._path, body=data, headers=headers)
            reply = conn.getresponse()
            if reply.status != 200:
                message = f"HTTP {reply.status} {reply.reason}"
                if reply.status == 429 or reply.status >= 500:
                    raise http.client.HTTPException(message)
                raise _Final(message)  # the request itself is wrong: asking again gives the same answer
            length = reply.getheader("Content-Length")
            if length is not None and length.strip().isdigit() and int(length) > MAX_ANSWER_BYTES:
                raise _Final(f"answer of {int(length)} bytes refused (at most {MAX_ANSWER_BYTES})")
            chunks, size = [], 0
            while size <= MAX_ANSWER_BYTES and not reply.isclosed():  # closed: the whole body has been read
                opened[0].settimeout(max(deadline - time.monotonic(), 0.001))
                chunk = reply.read(min(_READ_CHUNK, MAX_ANSWER_BYTES + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            if size > MAX_ANSWER_BYTES:
                raise _Final(f"answer over {MAX_ANSWER_BYTES} bytes refused")
            if expired.is_set():
                raise _Timeout()
            if length is not None and length.strip().isdigit() and size < int(length):
                raise http.client.IncompleteRead(b"", int(length) - size)  # the server closed mid-answer
            return b"".join(chunks)
        except (OSError, http.client.HTTPException) as e:
            if expired.is_set() or isinstance(e, TimeoutError) or time.monotonic() >= deadline:
                raise _Timeout() from None
            raise
        finally:
            timer.cancel()
            conn.close()


def _content(body: bytes) -> str:
    """The assistant message's text of a chat-completions answer; _Final saying why it is not one."""
    try:
        answer = json.loads(body.decode("utf-8"))
        text = answer["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError, RecursionError) as e:
        raise _Final(f"not a chat-completions answer ({type(e).__name__}: {str(e)[:200]})") from None
    return text if isinstance(text, str) else json.dumps(text)
