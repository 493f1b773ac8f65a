"""HTTP/1.1 on the wire, as cheaply as the load generator needs it: requests pre-encoded from a
template split at a counter mark, and responses parsed only as far as the status line,
Content-Length (or chunked framing), Connection: close and Location."""

from __future__ import annotations

from dataclasses import dataclass

COUNTER_MARK = b"@N@"
COUNTER_WIDTH = 12


class ProtocolError(ValueError):
    """The server's bytes are not an HTTP/1.1 response this parser understands."""


@dataclass(frozen=True, slots=True)
class RequestTemplate:
    """One request as bytes, split at every counter mark: `render(n)` joins the parts with n."""

    parts: tuple[bytes, ...]
    width: int = COUNTER_WIDTH

    @classmethod
    def build(
        cls,
        method: str,
        path: str,
        host: str,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        *,
        width: int = COUNTER_WIDTH,
    ) -> RequestTemplate:
        # every mark becomes exactly `width` digits, so the length is known before rendering
        body_len = len(body) + body.count(COUNTER_MARK) * (width - len(COUNTER_MARK))
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {body_len}")
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
        return cls(tuple(raw.split(COUNTER_MARK)), width)

    def render(self, n: int) -> bytes:
        if len(self.parts) == 1:
            return self.parts[0]
        digits = b"%0*d" % (self.width, n)
        if len(digits) != self.width:
            raise OverflowError(f"counter {n} does not fit in {self.width} digits")
        return digits.join(self.parts)


# (status, Location header value or None, body, the server closes the connection)
Response = tuple[int, bytes | None, bytes, bool]


class ResponseParser:
    """Incremental: feed it what the socket gave, get back the responses completed so far."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Response]:
        buf = self._buf
        buf += data
        out: list[Response] = []
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return out
            head = bytes(buf[:end])
            if not head.startswith(b"HTTP/1.") or len(head) < 12:
                raise ProtocolError(f"not an HTTP/1.x status line: {head[:40]!r}")
            try:
                status = int(head[9:12])
            except ValueError:
                raise ProtocolError(f"bad status line: {head[:40]!r}") from None
            lower = head.lower()
            location = _header(head, lower, b"\r\nlocation:")
            close = _header(head, lower, b"\r\nconnection:") == b"close"
            start = end + 4
            length = _header(head, lower, b"\r\ncontent-length:")
            if length is not None:
                try:
                    stop = start + int(length)
                except ValueError:
                    raise ProtocolError(f"bad Content-Length {length!r}") from None
                if len(buf) < stop:
                    return out
                body = bytes(buf[start:stop])
            elif (_header(head, lower, b"\r\ntransfer-encoding:") or b"").lower().endswith(b"chunked"):
                chunked = _dechunk(buf, start)
                if chunked is None:
                    return out
                body, stop = chunked
            elif status in (204, 304) or 100 <= status < 200:
                body, stop = b"", start
            else:
                raise ProtocolError("a response without Content-Length or chunked framing")
            del buf[:stop]
            out.append((status, location, body, close))


def _header(head: bytes, lower: bytes, name: bytes) -> bytes | None:
    """The value of the first header `name` (lower case, with its leading CRLF), case kept."""
    i = lower.find(name)
    if i < 0:
        return None
    i += len(name)
    j = head.find(b"\r\n", i)
    return head[i : j if j >= 0 else len(head)].strip()


def _dechunk(buf: bytearray, pos: int) -> tuple[bytes, int] | None:
    """(body, end offset) of a complete chunked body starting at pos, None while incomplete."""
    parts: list[bytes] = []
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        try:
            size = int(bytes(buf[pos:eol]).split(b";", 1)[0], 16)
        except ValueError:
            raise ProtocolError("bad chunk size") from None
        pos = eol + 2
        if size == 0:
            # no trailers: an empty line; trailers: up to the first empty line
            if buf[pos : pos + 2] == b"\r\n":
                return b"".join(parts), pos + 2
            end = buf.find(b"\r\n\r\n", pos)
            return None if end < 0 else (b"".join(parts), end + 4)
        if len(buf) < pos + size + 2:
            return None
        parts.append(bytes(buf[pos : pos + size]))
        pos += size + 2
