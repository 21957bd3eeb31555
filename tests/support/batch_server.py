"""BatchServer: a project-written OpenAI-style Batch API server for tests (no real server here speaks the
files and batches endpoints; vLLM's `run-batch` reads and writes the same line formats offline, and a
slow test checks our input file with it).

Loopback only. Endpoints: GET /v1/models; POST /v1/files (multipart, purpose "batch"), GET /v1/files
(list), GET /v1/files/{id}, GET /v1/files/{id}/content; POST /v1/batches, GET /v1/batches (list, newest
first), GET /v1/batches/{id}, POST /v1/batches/{id}/cancel; POST /v1/chat/completions (the online
request, logged, to compare bodies with batch lines).

Lifecycle, one step per GET /v1/batches/{id}: validating -> in_progress (`lines_per_poll` lines
answered per poll) -> finalizing -> completed, with the output file (200 lines) and the error file
(per-line errors). Or: failed (validation: a line that is not JSON, no/duplicate custom_id, method not
POST, url not the batch's endpoint, body not an object, a model it does not serve), expired (after `expire_after` lines: the rest
are `batch_expired` lines of the error file), cancelled (cancel -> cancelling -> cancelled, the rest
`batch_cancelled`). `line_errors` {line position: HTTP status} spoils lines of the first
`faulty_batches` batches. Answers are deterministic (fault_server.fake_completion of the messages,
sample seed and max_tokens). `hold` {"upload", "create", "poll", "download"} pauses that answer (poll: of a
batch in progress) after the server acted, until `release()`: where a test kills its client. `answered` counts 200 answers per custom_id.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from support.fault_server import fake_completion

TERMINAL = ("completed", "failed", "expired", "cancelled")


class BatchServer:
    """Context manager serving on a background thread; `.base_url` ends in /v1."""

    def __init__(
        self,
        *,
        model: str = "batch-teacher",
        lines_per_poll: int = 1000,
        api_key: str | None = None,
        list_models: bool = True,
    ):
        self.model, self.lines_per_poll, self.api_key, self.list_models = model, lines_per_poll, api_key, list_models
        self.expire_after: int | None = None  # lines answered before a batch expires (first expire_batches)
        self.expire_batches = 1
        self.line_errors: dict[int, int] = {}  # line position -> HTTP status, in the first faulty_batches
        self.faulty_batches = 1
        self.hold: set[str] = set()
        self.reached = {k: threading.Event() for k in ("upload", "create", "poll", "download")}
        self._release = threading.Event()
        self.files: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.answered: Counter = Counter()  # custom_id -> 200 answers given (what would be paid)
        self.chat_bodies: list[dict] = []  # bodies of POST /v1/chat/completions
        self.polls = 0
        self._lock = threading.RLock()
        self._ids = 0
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.httpd.daemon_threads = True

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> "BatchServer":
        threading.Thread(target=self.httpd.serve_forever, name="BatchServer", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
        self.httpd.shutdown()
        self.httpd.server_close()

    def release(self) -> None:
        """Lets held answers go (to a client that may be gone) and holds nothing more."""
        self.hold = set()
        self._release.set()

    def _wait_if_held(self, point: str) -> None:
        if point in self.hold:
            self.reached[point].set()
            self._release.wait(60)

    def _id(self, prefix: str) -> str:
        with self._lock:
            self._ids += 1
            return f"{prefix}-{self._ids}"

    # -- files -----------------------------------------------------------------------------

    def add_file(self, filename: str, data: bytes, purpose: str) -> dict:
        f = {
            "id": self._id("file"),
            "object": "file",
            "bytes": len(data),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
        }
        self.files[f["id"]] = {**f, "content": data}
        return f

    @staticmethod
    def file_object(f: dict) -> dict:
        return {k: v for k, v in f.items() if k != "content"}

    # -- batches ---------------------------------------------------------------------------

    def create_batch(self, req: dict) -> tuple[int, dict]:
        if req.get("input_file_id") not in self.files:
            return 400, _err(f"input file {req.get('input_file_id')!r} not found")
        if req.get("endpoint") not in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
            return 400, _err(f"endpoint {req.get('endpoint')!r} is not supported")
        b = {
            "id": self._id("batch"),
            "object": "batch",
            "endpoint": req["endpoint"],
            "input_file_id": req["input_file_id"],
            "completion_window": req.get("completion_window", "24h"),
            "status": "validating",
            "created_at": int(time.time()),
            "metadata": req.get("metadata"),
            "output_file_id": None,
            "error_file_id": None,
            "errors": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "_n": len(self.batches),  # creation order
            "_done": [],  # output lines
            "_errs": [],  # error file lines
            "_lines": [],
        }
        self.batches[b["id"]] = b
        return 200, b

    def advance(self, b: dict) -> None:
        """One lifecycle step (called on each GET of the batch)."""
        st = b["status"]
        if st == "validating":
            lines, errors = self._validate(b)
            if errors:
                b.update(status="failed", failed_at=int(time.time()), errors={"object": "list", "data": errors})
            else:
                b.update(status="in_progress", in_progress_at=int(time.time()), _lines=lines)
                b["request_counts"]["total"] = len(lines)
        elif st == "in_progress":
            self._answer_some(b)
        elif st == "finalizing":
            self._finish(b, "completed", None)
        elif st == "cancelling":
            self._finish(b, "cancelled", "batch_cancelled")

    def _validate(self, b: dict) -> tuple[list[dict], list[dict]]:
        lines, errors, seen = [], [], set()
        for n, raw in enumerate(self.files[b["input_file_id"]]["content"].splitlines(), 1):
            try:
                d = json.loads(raw)
            except ValueError:
                errors.append(_line_err(n, "invalid_json", "this line is not JSON"))
                continue
            cid = d.get("custom_id") if isinstance(d, dict) else None
            if not isinstance(cid, str) or cid in seen:
                errors.append(_line_err(n, "invalid_custom_id", f"custom_id {cid!r} is missing or repeated"))
            elif d.get("method") != "POST" or d.get("url") != b["endpoint"]:
                errors.append(_line_err(n, "invalid_url", f"method/url must be POST {b['endpoint']}"))
            elif not isinstance(d.get("body"), dict):
                errors.append(_line_err(n, "invalid_body", "body must be an object"))
            elif d["body"].get("model") != self.model:
                errors.append(_line_err(n, "model_not_found", f"The model {d['body'].get('model')!r} does not exist"))
            else:
                seen.add(cid)
                lines.append(d)
        return lines, errors

    def _answer_some(self, b: dict) -> None:
        total, done = len(b["_lines"]), len(b["_done"]) + len(b["_errs"])
        expiring = self.expire_after is not None and b["_n"] < self.expire_batches
        for pos in range(done, min(total, done + self.lines_per_poll)):
            if expiring and pos >= self.expire_after:
                return self._finish(b, "expired", "batch_expired")
            self._answer_line(b, pos)
        if len(b["_done"]) + len(b["_errs"]) >= total:
            b["status"] = "finalizing"

    def _answer_line(self, b: dict, pos: int) -> None:
        line = b["_lines"][pos]
        body, cid = line["body"], line["custom_id"]
        status = self.line_errors.get(pos) if b["_n"] < self.faulty_batches else None
        rid = f"req-{b['id']}-{pos}"
        if status is not None:
            resp = {"status_code": status, "request_id": rid, "body": _err(f"error {status} (fault injection)")}
            b["_errs"].append({"id": f"batch_req_{pos}", "custom_id": cid, "response": resp, "error": None})
            b["request_counts"]["failed"] += 1
            return
        resp = {"status_code": 200, "request_id": rid, "body": self.completion(body)}
        b["_done"].append({"id": f"batch_req_{pos}", "custom_id": cid, "response": resp, "error": None})
        b["request_counts"]["completed"] += 1
        with self._lock:
            self.answered[cid] += 1

    def _finish(self, b: dict, status: str, rest_code: str | None) -> None:
        done = len(b["_done"]) + len(b["_errs"])
        for line in b["_lines"][done:]:
            msg = "not run: the batch " + ("expired" if status == "expired" else "was cancelled")
            b["_errs"].append(
                {
                    "id": None,
                    "custom_id": line["custom_id"],
                    "response": None,
                    "error": {"code": rest_code, "message": msg},
                }
            )
            b["request_counts"]["failed"] += 1
        if b["_done"]:
            b["output_file_id"] = self.add_file("output.jsonl", _jsonl(b["_done"]), "batch_output")["id"]
        if b["_errs"]:
            b["error_file_id"] = self.add_file("errors.jsonl", _jsonl(b["_errs"]), "batch_output")["id"]
        b["status"] = status
        b[{"completed": "completed_at", "expired": "expired_at", "cancelled": "cancelled_at"}[status]] = int(
            time.time()
        )

    def completion(self, body: dict) -> dict:
        """The deterministic chat completion of a request body (one choice per n)."""
        msgs = body["messages"]
        choices, ctoks = [], 0
        for i in range(int(body.get("n") or 1)):
            text, finish = fake_completion(msgs, i, body.get("max_tokens"), int(body.get("seed") or 0))
            ctoks += len(text.split())
            choices.append({"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": finish})
        ptoks = sum(len(str(m.get("content") or "").split()) + 4 for m in msgs)
        usage = {"prompt_tokens": ptoks, "completion_tokens": ctoks, "total_tokens": ptoks + ctoks}
        return {
            "id": self._id("chatcmpl"),
            "object": "chat.completion",
            "model": self.model,
            "choices": choices,
            "usage": usage,
        }

    @staticmethod
    def batch_object(b: dict) -> dict:
        return {k: v for k, v in b.items() if not k.startswith("_")}


def _handler(srv: BatchServer):
    class H(BaseHTTPRequestHandler):
        def log_message(self, *a) -> None:  # quiet
            pass

        def _send(self, status: int, payload: Any = None, raw: bytes | None = None) -> None:
            data = raw if raw is not None else json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream" if raw is not None else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except OSError:  # the client is gone (killed while the answer was held)
                pass

        def _authorized(self) -> bool:
            if srv.api_key is None or self.headers.get("authorization") == f"Bearer {srv.api_key}":
                return True
            self._send(401, _err("Incorrect API key provided.", "invalid_api_key"))
            return False

        def do_GET(self) -> None:
            if not self._authorized():
                return
            path, _, query = self.path.partition("?")
            if path == "/v1/models" and srv.list_models:
                return self._send(200, {"object": "list", "data": [{"id": srv.model, "object": "model"}]})
            if path == "/v1/files":
                data = [
                    srv.file_object(f)
                    for f in srv.files.values()
                    if "purpose=batch" not in query or f["purpose"] == "batch"
                ]
                return self._send(200, {"object": "list", "data": data, "has_more": False})
            if path == "/v1/batches":
                data = sorted(srv.batches.values(), key=lambda b: -b["_n"])
                return self._send(
                    200, {"object": "list", "data": [srv.batch_object(b) for b in data], "has_more": False}
                )
            m = re.fullmatch(r"/v1/files/([\w-]+)(/content)?", path)
            if m and m.group(1) in srv.files:
                f = srv.files[m.group(1)]
                if m.group(2):
                    if f["purpose"] == "batch_output":
                        srv._wait_if_held("download")
                    return self._send(200, raw=f["content"])
                return self._send(200, srv.file_object(f))
            m = re.fullmatch(r"/v1/batches/([\w-]+)", path)
            if m and m.group(1) in srv.batches:
                b = srv.batches[m.group(1)]
                with srv._lock:
                    srv.polls += 1
                    srv.advance(b)
                if b["status"] == "in_progress":
                    srv._wait_if_held("poll")
                return self._send(200, srv.batch_object(b))
            self._send(404, _err(f"no route GET {path}"))

        def do_POST(self) -> None:
            if not self._authorized():
                return
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            path = self.path.partition("?")[0]
            if path == "/v1/files":
                fields = _multipart(body, self.headers.get("content-type", ""))
                if fields.get("purpose", (None, b""))[1] != b"batch" or "file" not in fields:
                    return self._send(400, _err("purpose must be 'batch' and a file must be given"))
                f = srv.add_file(fields["file"][0] or "upload.jsonl", fields["file"][1], "batch")
                srv._wait_if_held("upload")
                return self._send(200, f)
            if path == "/v1/batches":
                status, b = srv.create_batch(json.loads(body))
                srv._wait_if_held("create")
                return self._send(status, srv.batch_object(b) if status == 200 else b)
            m = re.fullmatch(r"/v1/batches/([\w-]+)/cancel", path)
            if m and m.group(1) in srv.batches:
                b = srv.batches[m.group(1)]
                if b["status"] not in TERMINAL:
                    b["status"] = "cancelling"
                return self._send(200, srv.batch_object(b))
            if path == "/v1/chat/completions":
                req = json.loads(body)
                srv.chat_bodies.append(req)
                return self._send(200, srv.completion(req))
            self._send(404, _err(f"no route POST {path}"))

    return H


def _multipart(body: bytes, content_type: str) -> dict[str, tuple[str | None, bytes]]:
    """name -> (filename, value) of a multipart/form-data body."""
    m = re.search(r"boundary=\"?([^\";]+)\"?", content_type)
    if not m:
        return {}
    out = {}
    for part in body.split(b"--" + m.group(1).encode())[1:]:
        head, sep, value = part.partition(b"\r\n\r\n")
        if not sep:
            continue
        disp = head.decode("latin-1")
        name = re.search(r'name="([^"]*)"', disp)
        fname = re.search(r'filename="([^"]*)"', disp)
        if name:
            out[name.group(1)] = (fname.group(1) if fname else None, value[:-2] if value.endswith(b"\r\n") else value)
    return out


def _jsonl(lines: list[dict]) -> bytes:
    return b"".join(json.dumps(x).encode() + b"\n" for x in lines)


def _line_err(line: int, code: str, message: str) -> dict:
    return {"code": code, "message": message, "line": line, "param": None}


def _err(message: str, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error", "code": code}}
