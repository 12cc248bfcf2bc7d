"""ASGI middleware that checks uploads before BentoML parses them.

BentoML 1.4 has no request-size setting, spools every upload to disk first, answers 500 to a
misnamed file field that is not UTF-8 text, and tries to download a URL when a file field holds
text. So each upload is read here (at most the size limit), its form fields are checked against
what the API takes, and only then is it handed on.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from python_multipart.multipart import MultipartParser, parse_options_header

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MULTIPART_SLACK = 64 * 1024  # form boundaries and part headers around the files themselves
DRAIN_LIMIT = 256 * 1024 * 1024  # past this, stop reading a refused body and drop the connection


@dataclass(frozen=True)
class FormSpec:
    """The multipart fields an API route takes."""

    file_field: str
    text_fields: frozenset[str]


class UploadProblem(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def form_fields(body: bytes, boundary: bytes) -> list[tuple[str, bool]]:
    """(name, is_file) of each part of a multipart/form-data body, in order."""
    parts: list[tuple[str, bool]] = []
    header: dict[str, bytes] = {"field": b"", "value": b""}
    disposition: list[bytes] = []

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header["value"] += data[start:end]

    def on_header_end() -> None:
        if header["field"].lower() == b"content-disposition":
            disposition.append(header["value"])
        header["field"], header["value"] = b"", b""

    def on_headers_finished() -> None:
        _, options = parse_options_header(disposition.pop() if disposition else b"")
        parts.append((options.get(b"name", b"").decode("utf-8", "replace"),
                      b"filename" in options))

    parser = MultipartParser(boundary, {
        "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished})
    try:
        parser.write(body)
        parser.finalize()
    except Exception as exc:  # python-multipart raises several error types for bad input
        raise UploadProblem(400, f"the multipart body is malformed ({exc})") from None
    return parts


def check_fields(parts: list[tuple[str, bool]], spec: FormSpec, hint: str) -> None:
    allowed = [spec.file_field, *sorted(spec.text_fields)]
    for name, is_file in parts:
        if name == spec.file_field and not is_file:
            raise UploadProblem(400, f"field '{name}' must be a file upload, not text: {hint} "
                                "(note the @ before the file name)")
        if name in spec.text_fields and is_file:
            raise UploadProblem(400, f"field '{name}' must be a plain value, not a file")
        if name != spec.file_field and name not in spec.text_fields:
            kind = "file field" if is_file else "field"
            raise UploadProblem(400, f"unexpected {kind} '{name}' (this endpoint takes "
                                f"{allowed}): send the photo as file field "
                                f"'{spec.file_field}', {hint}")


class UploadGuard:
    def __init__(self, app: ASGIApp, max_bytes: int, forms: dict[str, FormSpec],
                 hint: str) -> None:
        self.app, self.max_bytes, self.forms, self.hint = app, max_bytes, forms, hint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        spec = self.forms.get(scope.get("path", "")) if scope["type"] == "http" else None
        if spec is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        try:
            body = await self._read_checked(scope, receive, spec)
        except UploadProblem as problem:
            await _refuse(send, receive, problem)
            return
        if body is not None:
            await self.app(scope, _replay(body, receive), send)

    async def _read_checked(self, scope: Scope, receive: Receive, spec: FormSpec) -> bytes | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        content_type, options = parse_options_header(headers.get("content-type", ""))
        if content_type != b"multipart/form-data" or not options.get(b"boundary"):
            shown = content_type.decode("latin-1") or "no content type"
            raise UploadProblem(415, f"expected a multipart/form-data upload, got '{shown}': "
                                f"{self.hint}")
        limit = self.max_bytes + MULTIPART_SLACK
        declared = headers.get("content-length")
        if declared is not None and not declared.isdigit():
            raise UploadProblem(400, f"invalid Content-Length '{declared}'")
        if declared is not None and int(declared) > limit:
            raise UploadProblem(413, self._too_large(int(declared)))
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                raise UploadProblem(413, self._too_large(size, at_least=True))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        check_fields(form_fields(body, options[b"boundary"]), spec, self.hint)
        return body

    def _too_large(self, size: int, at_least: bool = False) -> str:
        return (f"upload is {'over ' if at_least else ''}{size / 2**20:.1f} MB; the limit is "
                f"{self.max_bytes / 2**20:g} MB per request: send a smaller JPEG or PNG "
                "(a few hundred KB is plenty: the model sees a small center crop)")


async def _refuse(send: Send, receive: Receive, problem: UploadProblem) -> None:
    body = json.dumps({"error": str(problem)}).encode()
    await send({"type": "http.response.start", "status": problem.status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
    # Read (and drop) what the client is still sending, so that it reads this answer instead of
    # a reset connection; give up on absurd sizes.
    drained = 0
    while drained < DRAIN_LIMIT:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return
        drained += len(message.get("body", b""))


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
