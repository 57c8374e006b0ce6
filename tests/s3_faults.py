"""An HTTP proxy on 127.0.0.1 in front of the S3 server that fails some requests (503)."""

import http.client
import itertools
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
             b"<Message>injected by the test proxy</Message></Error>")


class FaultyProxy:
    """Forwards to `upstream_port`; answers every `every`-th request with 503 SlowDown, and
    the next `n` requests whose path holds a given text with 503 too (`fail_next`)."""

    def __init__(self, upstream_port: int, every: int = 7) -> None:
        counter = itertools.count(1)
        lock = threading.Lock()
        self.failed = 0
        self.forwarded = 0
        self.targeted: dict[str, int] = {}  # path text -> failures still to answer
        self.targeted_failed: dict[str, int] = {}
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # headers and body go out in two writes: with Nagle's algorithm on, the second
            # waits for the client's delayed ACK (~40 ms a request)
            disable_nagle_algorithm = True

            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes | None:
                if "chunked" in self.headers.get("Transfer-Encoding", ""):
                    out = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            self.rfile.readline()
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                n = int(self.headers.get("Content-Length", 0))
                return self.rfile.read(n) if n else None

            def _handle(self) -> None:
                body = self._body()
                with lock:
                    n = next(counter)
                    hit = next((t for t, left in proxy.targeted.items()
                                if left > 0 and t in self.path), None)
                    if hit is not None:
                        proxy.targeted[hit] -= 1
                        proxy.targeted_failed[hit] = proxy.targeted_failed.get(hit, 0) + 1
                if hit is not None or n % every == 0:
                    with lock:
                        proxy.failed += 1
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOW_DOWN)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(SLOW_DOWN)
                    return
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("transfer-encoding", "connection")}
                if body is not None:
                    headers["Content-Length"] = str(len(body))
                conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=60)
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                with lock:
                    proxy.forwarded += 1
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() in ("transfer-encoding", "connection", "date", "server"):
                        continue
                    if k.lower() == "content-length" and self.command != "HEAD":
                        continue
                    self.send_header(k, v)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def fail_next(self, path_text: str, n: int) -> None:
        """The next `n` requests whose path holds `path_text` get 503 SlowDown."""
        self.targeted[path_text] = n
        self.targeted_failed[path_text] = 0

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
