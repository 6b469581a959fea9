"""A client of an OpenAI-compatible chat-completions endpoint (vLLM, Ollama, llama.cpp server, ...), for the
Img2Loc prompt (language/geolocate.py): JSON over HTTP with the standard library, a timeout per attempt, retries
on timeouts / connection errors / HTTP 429 and 5xx, and thread-safe counters for /diagnostics.

`lmm_url` is the endpoint (`http://host:8000/v1/chat/completions`) or its base (`http://host:8000` or
`http://host:8000/v1`), to which the standard path is appended. An API key, when the server needs one, is read
from the environment variable OPENAI_API_KEY (never from a parameter, which would show it in `ros2 param`).
"""

from __future__ import annotations

from collections import Counter
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request


class LmmError(RuntimeError):
    """The endpoint gave no usable answer (after the retries); the message says why."""


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

    def chat(self, messages: list) -> str:
        """The assistant message's text for `messages` (OpenAI chat format); LmmError after the last attempt."""
        body = {"messages": messages, "max_tokens": self.max_tokens, "temperature": 0.0}
        if self.model:
            body["model"] = self.model
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if os.environ.get("OPENAI_API_KEY"):
            headers["Authorization"] = f"Bearer {os.environ['OPENAI_API_KEY']}"
        last = "no attempt"
        for attempt in range(self.retries + 1):
            if attempt:
                self.count("retries")
                time.sleep(min(0.2 * attempt, 2.0))
            self.count("requests")
            try:
                request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout_s) as reply:
                    answer = json.loads(reply.read().decode("utf-8"))
                text = answer["choices"][0]["message"]["content"]
                self.count("answers")
                return text if isinstance(text, str) else json.dumps(text)
            except urllib.error.HTTPError as e:
                self.count("errors")
                last = f"HTTP {e.code} {e.reason}"
                if e.code != 429 and e.code < 500:
                    break  # the request itself is wrong: asking again gives the same answer
            except (TimeoutError, socket.timeout):
                self.count("timeouts")
                last = f"no answer within {self.timeout_s:g} s"
            except urllib.error.URLError as e:
                if isinstance(e.reason, (TimeoutError, socket.timeout)):
                    self.count("timeouts")
                    last = f"no answer within {self.timeout_s:g} s"
                else:
                    self.count("errors")
                    last = f"cannot reach {self.url} ({e.reason})"
            except (ValueError, KeyError, IndexError, TypeError) as e:
                self.count("errors")
                last = f"not a chat-completions answer ({type(e).__name__}: {e})"
                break
        raise LmmError(f"{self.url}: {last}")
