"""A loopback server in the Hugging Face Hub's URL layout, for tests/hub.rs (there is no real Hub).

Serves local model folders as repos:
  GET /api/models/ORG/NAME[/revision/REV]   -> {"id", "sha", "siblings": [{"rfilename"}]}
  GET /api/models/ORG/NAME/tree/REV         -> [{"type": "file", "path", "size", "oid"}]
  GET|HEAD /ORG/NAME/resolve/REV/FILE       -> the file, with Range support, ETag (sha256 of the
                                               file), X-Repo-Commit, Content-Range, Content-Length
Options: --repo ORG/NAME=FOLDER (repeatable); --token T (every request needs "Authorization:
Bearer T", else 401, as a gated repo); --cut FILE:BYTES (the first full GET of FILE sends BYTES of
it and drops the connection, as a broken download); --log PATH (one JSON line per request:
method, path, range, authorised). Prints the port it listens on, then serves until killed.
"""
import argparse
import hashlib
import http.server
import json
import os
import sys
import threading

SHA = "0123456789abcdef0123456789abcdef01234567"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", action="append", default=[])
    ap.add_argument("--token")
    ap.add_argument("--cut")
    ap.add_argument("--log")
    args = ap.parse_args()
    repos = dict(r.split("=", 1) for r in args.repo)
    cut = dict([args.cut.split(":", 1)]) if args.cut else {}
    cut = {k: int(v) for k, v in cut.items()}
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def record(self, authorised):
            if args.log:
                with lock, open(args.log, "a") as f:
                    f.write(json.dumps({"method": self.command, "path": self.path,
                                        "range": self.headers.get("Range"),
                                        "authorised": authorised}) + "\n")

        def send(self, code, body=b"", headers=()):
            self.send_response(code)
            for k, v in headers:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def repo(self, parts):
            name = "/".join(parts[:2])
            return name, repos.get(name)

        def handle_any(self):
            authorised = args.token is None or self.headers.get("Authorization") == f"Bearer {args.token}"
            self.record(authorised)
            if not authorised:
                return self.send(401, b'{"error": "Access to this model is restricted."}')
            path = self.path.split("?")[0].strip("/").split("/")
            if path[:2] == ["api", "models"]:
                name, folder = self.repo(path[2:])
                if folder is None:
                    return self.send(404, b'{"error": "Repository not found"}')
                files = sorted(f for f in os.listdir(folder) if os.path.isfile(os.path.join(folder, f)))
                if path[4:5] == ["tree"]:  # huggingface_hub's file listing
                    tree = [{"type": "file", "path": f, "oid": SHA,
                             "size": os.path.getsize(os.path.join(folder, f))} for f in files]
                    return self.send(200, json.dumps(tree).encode(), [("Content-Type", "application/json")])
                body = json.dumps({"id": name, "sha": SHA,
                                   "siblings": [{"rfilename": f} for f in files]}).encode()
                return self.send(200, body, [("Content-Type", "application/json")])
            if len(path) >= 5 and path[2] == "resolve":
                name, folder = self.repo(path)
                file = "/".join(path[4:])
                full = os.path.join(folder or "", file)
                if folder is None or not os.path.isfile(full):
                    return self.send(404, b'{"error": "Entry not found"}',
                                     [("X-Error-Code", "EntryNotFound")])
                data = open(full, "rb").read()
                etag = hashlib.sha256(data).hexdigest()
                headers = [("ETag", f'"{etag}"'), ("X-Repo-Commit", SHA), ("Accept-Ranges", "bytes")]
                rng = self.headers.get("Range")
                start, end = 0, len(data) - 1
                if rng and rng.startswith("bytes="):
                    a, _, b = rng[6:].partition("-")
                    start = int(a or 0)
                    end = int(b) if b else len(data) - 1
                    headers.append(("Content-Range", f"bytes {start}-{end}/{len(data)}"))
                body = data[start:end + 1]
                full_get = self.command == "GET" and len(body) > 1
                with lock:
                    drop = full_get and file in cut
                    keep = cut.pop(file, None) if drop else None
                if drop:
                    # Promise the whole body, send part of it, and drop the connection.
                    self.send_response(206 if rng else 200)
                    for k, v in headers:
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[:keep])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                return self.send(206 if rng else 200, body, headers)
            return self.send(404, b"{}")

        do_GET = handle_any
        do_HEAD = handle_any

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.handle_error = lambda *a: None  # the dropped connection of --cut is on purpose
    print(server.server_address[1], flush=True)
    sys.stdout.close()
    server.serve_forever()


if __name__ == "__main__":
    main()
