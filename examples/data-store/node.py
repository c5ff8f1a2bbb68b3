#!/usr/bin/env python3
"""A data-store node: an HTTP key-value store that keeps every value as a file on its volume.

PUT /kv/<key> stores the body, GET /kv/<key> returns it, GET /ready answers 200 once the data
directory is usable. Standard library only, so a fresh machine runs it.
"""
import argparse
import http.server
import os
import re

KEY = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--role", required=True)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    objects = os.path.join(args.data_dir, "objects")
    os.makedirs(objects, exist_ok=True)

    class Handler(http.server.BaseHTTPRequestHandler):
        def _send(self, code, body=b""):
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/ready":
                return self._send(200, f"{args.role} ready\n".encode())
            if self.path.startswith("/kv/"):
                key = self.path[4:]
                if not KEY.match(key):
                    return self._send(400, b"bad key\n")
                try:
                    with open(os.path.join(objects, key), "rb") as f:
                        return self._send(200, f.read())
                except FileNotFoundError:
                    return self._send(404, b"not found\n")
            return self._send(404, b"not found\n")

        def do_PUT(self):
            if not self.path.startswith("/kv/") or not KEY.match(self.path[4:]):
                return self._send(400, b"bad key\n")
            n = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(n)
            tmp = os.path.join(objects, ".tmp-" + self.path[4:])
            with open(tmp, "wb") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, os.path.join(objects, self.path[4:]))
            return self._send(204)

        def log_message(self, fmt, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"{args.role} listening on 127.0.0.1:{args.port}, data in {args.data_dir}", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
