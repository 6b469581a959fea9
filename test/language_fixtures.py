"""Shared by the language tests: a map of real street photos with addresses written for it, and a local HTTP
server on 127.0.0.1 that speaks the OpenAI chat-completions API. No model server runs on these machines: the
server answers with the coordinates the test gives it, so what is tested is the client (prompt, image, parsing,
timeouts, retries, refusals), not a model."""

from __future__ import annotations

from contextlib import contextmanager
import http.server
import json
import threading
import time

# The first 6 toy_streets photos geotagged 50 m apart northwards from (45.0, 7.0) (read_sequence), with addresses
# and captions made up for these tests.
ADDRESSES = ["12 Market Street", "14 Market Street", "3 Harbour Road", "5 Harbour Road", "1 Castle Hill",
             "9 Castle Hill"]
CAPTIONS = ["red brick church with a clock tower", "bakery on the corner", "fish market by the quay",
            "boats moored at the pier", "stone gate of the old castle", "narrow lane under the castle wall"]


def address_csv(folder, records, path):
    """An image CSV (image,lat,lon,address,caption) of `records` with ADDRESSES / CAPTIONS."""
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "lat", "lon", "address", "caption"])
        for r, a, c in zip(records, ADDRESSES, CAPTIONS):
            w.writerow([str(r.path), f"{r.lat:.8f}", f"{r.lon:.8f}", a, c])
    return path


class ChatServer:
    """`answers`: a list of (delay_s, assistant text) served in turn (the last one repeats); every request body
    is kept in `requests`."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.requests = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "body": body})
                delay, text = server.answers[min(len(server.requests) - 1, len(server.answers) - 1)]
                time.sleep(delay)
                reply = {"id": "test", "object": "chat.completion", "model": body.get("model", "test"),
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": text}}]}
                data = json.dumps(reply).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"


@contextmanager
def chat_server(answers):
    s = ChatServer(answers)
    thread = threading.Thread(target=s.httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield s
    finally:
        s.httpd.shutdown()
        s.httpd.server_close()
