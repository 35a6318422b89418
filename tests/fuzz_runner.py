"""Running the fuzz's cases and judging what came back (used by tests/test_web_fuzz.py).

A case goes to the app through ``gradio_client`` (a job lost to the client's event-stream race is
submitted once more, and counted), through the REST API (``/gradio_api/call/<name>``: raw JSON or a
malformed body, its event stream read by hand) or as a bare upload. ``judge`` holds the oracle's rules:
the tables' verdicts (tests/fuzz_studio_cases.py), the declared outcomes, and what makes an error clear.
"""
from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable

import fuzz_studio_cases

CASE_TIMEOUT_S = 60.0
GENERIC = "has not enabled verbose error reporting"  # gradio_client's text for {"error": null}

# Expected outcomes
OK = "ok"            # a valid result
ERROR = "error"      # a clear error (exact text when Case.message is set)
ANY = "any"          # a valid result or a clear error (types whose handling is gradio's choice)
SCHEMA = "schema"    # refused by gradio before web.py runs (its generic message is accepted)
CLIENT = "client"    # refused by gradio_client before sending (e.g. over the upload size limit)
HTTP_4XX = "http4xx"  # a malformed request: a 4xx status (or gradio's own error event, before web.py)


@dataclass
class Case:
    endpoint: str                  # "/generate"
    args: list
    category: str
    expect: str
    message: str | None = None     # the exact error text expected (ERROR)
    via: str = "client"            # "client" | "raw" (JSON through /gradio_api/call) | "body" | "upload"
    body: bytes | None = None
    check: Callable[[Any], None] | None = None  # validates a result
    words: list[str] | None = None  # studio endpoints: the hand-written oracle's words (tests/fuzz_studio_cases.py)

    def short(self) -> str:
        return f"{self.endpoint} [{self.category}] via {self.via}: {repr(self.args)[:160]}"


# =============================================================== running a case
@dataclass
class Result:
    case: Case
    outcome: str          # OK / ERROR / SCHEMA / CLIENT / HTTP_4XX / "bad_result" / "unclear" / "hung" / ...
    message: str
    seconds: float
    problem: str | None = None
    retried: bool = False  # the client's event stream closed under it once (see run_case)


TRACE_MARKERS = ("Traceback", 'File "', "Exception:", "pydantic", "errors.pydantic.dev")


def is_clear(msg: str) -> bool:
    """A sentence for a person: no traceback, not an exception's repr, not gradio's 'no details' text."""
    msg = (msg or "").strip()
    return (len(msg) >= 12 and " " in msg and GENERIC not in msg and not any(m in msg for m in TRACE_MARKERS)
            and not re.match(r"^[A-Za-z_.]*(Error|Exception)\b", msg))


def raw_call(url: str, name: str, body: bytes, timeout: float) -> tuple[str, Any]:
    """POST /gradio_api/call/<name>, then read its event stream: ("complete", data) / ("error", message) /
    ("http", status)."""
    req = urllib.request.Request(url + "gradio_api/call/" + name.lstrip("/"), data=body,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            event_id = json.loads(r.read())["event_id"]
    except urllib.error.HTTPError as e:
        return "http", e.code
    with urllib.request.urlopen(f"{url}gradio_api/call/{name.lstrip('/')}/{event_id}", timeout=timeout) as r:
        stream = r.read().decode("utf-8", errors="replace")
    event, data = None, None
    for line in stream.splitlines():
        if line.startswith("event:"):
            event = line.split(":", 1)[1].strip()
        elif line.startswith("data:"):
            data = line.split(":", 1)[1].strip()
    if event == "complete":
        return "complete", json.loads(data)
    if event == "error":
        try:
            payload = json.loads(data) if data else None
        except json.JSONDecodeError:
            payload = data
        return "error", (payload or {}).get("error") if isinstance(payload, dict) else payload
    return "stream", stream[-300:]


def as_client_value(data: list) -> Any:
    """A REST result (the event stream's JSON list) as gradio_client returns it: file payloads as their
    paths (the server is on this machine), one output as itself, several as a tuple."""
    def files_to_paths(v: Any) -> Any:
        if isinstance(v, dict) and isinstance(v.get("path"), str) and ("url" in v or "meta" in v):
            return v["path"]
        if isinstance(v, dict):
            return {k: files_to_paths(x) for k, x in v.items()}
        if isinstance(v, list):
            return [files_to_paths(x) for x in v]
        return v
    out = files_to_paths(data)
    return out[0] if len(out) == 1 else tuple(out)


def submit_once_more_if_the_stream_closed(client, case: Case) -> tuple[Any, bool]:
    """(the result, whether it took a second try). gradio_client shares one event stream per client,
    and the server closes a session's stream once nothing is pending: a job submitted as that close
    is on its way is cancelled on the client's side (CancelledError, or RemoteProtocolError from the
    cut stream) though the server ran it. That race is the client's, not the app's, so such a job is
    submitted once more; the test counts these and fails if they are more than a rare few."""
    import concurrent.futures

    import httpx

    try:
        return client.submit(*case.args, api_name=case.endpoint).result(timeout=CASE_TIMEOUT_S), False
    except (concurrent.futures.CancelledError, httpx.RemoteProtocolError):
        return client.submit(*case.args, api_name=case.endpoint).result(timeout=CASE_TIMEOUT_S), True


def run_case(case: Case, client, url: str) -> Result:
    from gradio_client.exceptions import AppError

    t0 = time.monotonic()
    outcome, message, value, retried = None, "", None, False
    try:
        if case.via == "client":
            try:
                value, retried = submit_once_more_if_the_stream_closed(client, case)
                outcome = OK
            except AppError as e:
                outcome, message = ERROR, str(e)
            except TimeoutError:
                outcome, message = "hung", f"no answer in {CASE_TIMEOUT_S:.0f} s"
            except ValueError as e:  # refused by gradio_client before sending
                if "maximum file size" in str(e):
                    outcome, message = CLIENT, str(e)
                else:
                    raise
        elif case.via in ("raw", "body"):
            body = case.body if case.via == "body" else json.dumps({"data": case.args}).encode()
            kind, payload = raw_call(url, case.endpoint, body, CASE_TIMEOUT_S)
            if kind == "http":
                outcome, message = (HTTP_4XX if 400 <= payload < 500 else "http5xx"), f"HTTP {payload}"
            elif kind == "error":
                outcome, message = ERROR, payload or ""
            elif kind == "complete":
                outcome, value = OK, payload
            else:
                outcome, message = "no_result", str(payload)
        elif case.via == "upload":
            import httpx

            r = httpx.post(url + "gradio_api/upload", files={"files": ("big.png", case.body, "image/png")},
                           timeout=CASE_TIMEOUT_S)
            outcome, message = (HTTP_4XX if 400 <= r.status_code < 500 else f"http{r.status_code}"), \
                f"HTTP {r.status_code}"
    except Exception as e:  # noqa: BLE001 - anything else is a finding
        outcome, message = "exception", f"{type(e).__name__}: {str(e)[:300]}"
    if outcome == ERROR and (not message or GENERIC in message):
        outcome = SCHEMA  # {"error": null}: no message for the user
    seconds = time.monotonic() - t0
    return Result(case, outcome, message, seconds, judge(case, outcome, message, value), retried)


def judge(case: Case, outcome: str, message: str, value: Any) -> str | None:
    """None if the outcome is acceptable for this case, else what is wrong."""
    if case.words is not None:  # a table case: the table's verdict, a clear sentence, a result that holds up
        if outcome == ERROR and not is_clear(message):
            return f"unclear error message: {message[:200]!r}"
        problem = fuzz_studio_cases.judge(SimpleNamespace(expect=case.expect, words=case.words), outcome, message)
        if problem is None and outcome == OK:
            try:
                (case.check or fuzz_studio_cases.check_result(case.endpoint, case.args))(value)
            except Exception as e:  # noqa: BLE001
                return f"invalid result ({type(e).__name__}: {str(e)[:200]}): {repr(value)[:200]}"
        return problem
    if outcome == SCHEMA:  # gradio's generic refusal, before web.py: only where gradio itself must refuse
        if case.expect in (SCHEMA, HTTP_4XX):
            return None
        return f"gradio's generic error instead of a clear one: {message!r}"
    if outcome == ERROR and case.expect in (ERROR, ANY, SCHEMA):
        if not is_clear(message):
            return f"unclear error message: {message[:200]!r}"
        if case.message is not None and case.expect == ERROR:
            if case.message != message and case.message not in message:
                return f"expected error {case.message[:150]!r}, got {message[:150]!r}"
        return None
    if outcome == OK and case.expect in (OK, ANY):
        if case.check is not None:
            try:
                case.check(value if case.via == "client" else as_client_value(value))
            except Exception as e:  # noqa: BLE001
                return f"invalid result ({type(e).__name__}: {str(e)[:200]}): {repr(value)[:200]}"
        return None
    if outcome == CLIENT and case.expect == CLIENT:
        return None if (case.message or "") in message else f"client refusal without {case.message!r}: {message}"
    if outcome == HTTP_4XX and case.expect == HTTP_4XX:
        return None
    if outcome == ERROR and case.expect == HTTP_4XX:  # the request was accepted, then refused as an error event
        return None
    return f"expected {case.expect}, got {outcome}: {message[:200]!r}"
