"""A loopback server in the Hugging Face Hub's URL layout, for tests/hub.rs (there is no real Hub).

Serves local model folders (flat: the folder's files) as model repos:
  GET /api/models/ORG/NAME[/revision/REV]   -> {"id", "sha", "siblings": [{"rfilename"}]}
  GET /api/models/ORG/NAME/tree/REV         -> [{"type": "file", "path", "size", "oid"}]
  GET|HEAD /ORG/NAME/resolve/REV/FILE       -> the file, with Range support, ETag (sha256 of the
                                               file), X-Repo-Commit, Content-Range, Content-Length
and local dataset folders (recursive: files in subfolders too, as "data/x.parquet"; hidden files
and folders skipped) as dataset repos, answering what huggingface_hub's snapshot_download,
hf_hub_download, dataset_info, list_repo_tree, get_paths_info and HfFileSystem ask:
  GET /api/datasets/ORG/NAME[/revision/REV] -> {"id", "sha", "siblings": [{"rfilename"}]}
  GET /api/datasets/ORG/NAME/tree/REV[/PATH][?recursive=true]
        -> [{"type": "directory", "path", "oid"}, {"type": "file", "path", "size", "oid"
            [, "lfs": {"oid", "size", "pointerSize"}] }]: the direct children of PATH (default the
            repo root), or with recursive=true|1 everything below it (folders included, as the
            Hub does); sorted by path; files' oid is their git blob sha1, parquet files also
            carry "lfs" (oid = sha256), as on the Hub. PATH may be %2F-encoded; 404
            (X-Error-Code: EntryNotFound) when it is not a folder.
  POST /api/{models,datasets}/ORG/NAME/paths-info/REV  (form or JSON body: paths=P&paths=Q)
        -> the tree entries of those paths that exist
  GET|HEAD /datasets/ORG/NAME/resolve/REV/FILE (FILE may contain "/") -> the file, as for models
Any revision is accepted; every repo is at commit SHA. Unknown dataset repos answer 404 with
X-Error-Code: RepoNotFound.
Options: --repo ORG/NAME=FOLDER (repeatable, model repos); --dataset ORG/NAME=FOLDER (repeatable,
dataset repos); --token T (every request needs "Authorization: Bearer T", else 401, as a gated
repo); --cut FILE:BYTES (the first full GET of FILE, a repo-relative path such as
model.safetensors or data/train_sft-00001-of-00003-....parquet, sends BYTES of it and drops the
connection, as a broken download); --log PATH (one JSON line per request: method, path, range,
authorised). Prints the port it listens on, then serves until killed.
"""
import argparse
import hashlib
import http.server
import json
import os
import sys
import threading
import urllib.parse

SHA = "0123456789abcdef0123456789abcdef01234567"
JSON = [("Content-Type", "application/json")]


def dataset_files(folder):
    """Repo-relative paths ("/"-separated, sorted) of the files under folder, hidden ones skipped."""
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for f in files:
            if not f.startswith("."):
                rel = os.path.relpath(os.path.join(root, f), folder)
                out.append(rel.replace(os.sep, "/"))
    return sorted(out)


def git_blob_oid(data):
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def dataset_tree(folder):
    """Every entry of a dataset repo, {path: tree entry}, folders included."""
    entries = {}
    for rel in dataset_files(folder):
        data = open(os.path.join(folder, rel), "rb").read()
        entry = {"type": "file", "path": rel, "size": len(data), "oid": git_blob_oid(data)}
        if rel.endswith(".parquet"):
            entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        entries[rel] = entry
        parts = rel.split("/")
        for i in range(1, len(parts)):
            d = "/".join(parts[:i])
            if d not in entries:
                entries[d] = {"type": "directory", "path": d,
                              "oid": hashlib.sha1(f"tree {folder}/{d}".encode()).hexdigest()}
    return entries


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", action="append", default=[])
    ap.add_argument("--dataset", action="append", default=[])
    ap.add_argument("--token")
    ap.add_argument("--cut")
    ap.add_argument("--log")
    args = ap.parse_args()
    repos = dict(r.split("=", 1) for r in args.repo)
    datasets = dict(r.split("=", 1) for r in args.dataset)
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

        def send_json(self, value, code=200, headers=()):
            return self.send(code, json.dumps(value).encode(), JSON + list(headers))

        def repo(self, parts):
            name = "/".join(parts[:2])
            return name, repos.get(name)

        def handle_any(self):
            # Read a request body (paths-info) first, so that the connection stays usable.
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            authorised = args.token is None or self.headers.get("Authorization") == f"Bearer {args.token}"
            self.record(authorised)
            url = urllib.parse.urlsplit(self.path)
            path = url.path.strip("/").split("/")
            if not authorised:
                kind = "dataset" if path[:1] == ["datasets"] or path[:2] == ["api", "datasets"] else "model"
                return self.send(401, f'{{"error": "Access to this {kind} is restricted."}}'.encode())
            if path[:2] == ["api", "datasets"] or (path[:1] == ["datasets"] and path[3:4] == ["resolve"]):
                return self.handle_dataset(path, url.query, body)
            if self.command == "POST":
                if path[:2] == ["api", "models"] and path[4:5] == ["paths-info"]:
                    name, folder = self.repo(path[2:])
                    if folder is None:
                        return self.send(404, b'{"error": "Repository not found"}')
                    files = sorted(f for f in os.listdir(folder) if os.path.isfile(os.path.join(folder, f)))
                    tree = {f: {"type": "file", "path": f, "oid": SHA,
                                "size": os.path.getsize(os.path.join(folder, f))} for f in files}
                    return self.send_json([tree[p] for p in self.paths_of(body) if p in tree])
                return self.send(404, b"{}")
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
                return self.serve_file(folder, "/".join(urllib.parse.unquote(p) for p in path[4:]))
            return self.send(404, b"{}")

        def paths_of(self, body):
            if self.headers.get("Content-Type", "").startswith("application/json"):
                paths = json.loads(body or b"{}").get("paths", [])
                return [paths] if isinstance(paths, str) else paths
            return urllib.parse.parse_qs(body.decode()).get("paths", [])

        def handle_dataset(self, path, query, body):
            api = path[0] == "api"
            parts = path[2:] if api else path[1:]
            name = "/".join(parts[:2])
            folder = datasets.get(name)
            if folder is None:
                return self.send(404, b'{"error": "Repository not found"}', [("X-Error-Code", "RepoNotFound")])
            rest = [urllib.parse.unquote(p) for p in parts[2:]]
            if not api:  # resolve/REV/FILE; only listed files (hidden ones are not in the repo)
                file = "/".join(rest[2:])
                return self.serve_file(folder if file in dataset_files(folder) else None, file)
            if self.command == "POST" and rest[:1] == ["paths-info"]:
                tree = dataset_tree(folder)
                return self.send_json([tree[p.strip("/")] for p in self.paths_of(body) if p.strip("/") in tree])
            if self.command == "POST":
                return self.send(404, b"{}")
            if rest[:1] == ["tree"] and len(rest) >= 2:
                # tree/REV[/PATH]; PATH may arrive %2F-encoded ("data%2Fsub") or with plain slashes.
                under = "/".join(rest[2:]).strip("/")
                tree = dataset_tree(folder)
                if under and tree.get(under, {}).get("type") != "directory":
                    return self.send(404, b'{"error": "Entry not found"}', [("X-Error-Code", "EntryNotFound")])
                recursive = urllib.parse.parse_qs(query).get("recursive", ["false"])[-1].lower() in ("true", "1")
                prefix = under + "/" if under else ""
                out = []
                for p in sorted(tree):
                    if p.startswith(prefix) and (recursive or "/" not in p[len(prefix):]):
                        out.append(tree[p])
                return self.send_json(out)
            if rest == [] or (rest[:1] == ["revision"] and len(rest) >= 2):
                return self.send_json({"id": name, "sha": SHA,
                                       "siblings": [{"rfilename": f} for f in dataset_files(folder)]})
            return self.send(404, b"{}")

        def serve_file(self, folder, file):
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

        do_GET = handle_any
        do_HEAD = handle_any
        do_POST = handle_any

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.handle_error = lambda *a: None  # the dropped connection of --cut is on purpose
    print(server.server_address[1], flush=True)
    sys.stdout.close()
    server.serve_forever()


if __name__ == "__main__":
    main()
