"""The local AWS: moto's server, plus CloudWatch's RPC v2 CBOR protocol in front of it.

    .venv/bin/python scripts/local_aws.py -H 127.0.0.1 -p PORT

The Rust SDK (aws-sdk-cloudwatch 1.1xx) speaks only Smithy RPC v2 CBOR to CloudWatch;
moto 5.2.5 serves CloudWatch over its JSON and Query protocols and answers a CBOR call
with 404. This wraps moto's WSGI application: a CloudWatch call in CBOR
(`POST /service/GraniteServiceVersion20100801/operation/<Op>`) is handed to moto as the
same document in JSON (`X-Amz-Target: GraniteServiceVersion20100801.<Op>`), and moto's
JSON answer goes back in CBOR, members named `...Timestamp` as CBOR epoch timestamps
(tag 1). Only the encoding changes: what is stored and answered is moto's. Every other
call goes to moto untouched. `scripts/local-aws run` and the test fixtures start this.
"""

import io
import json
import struct
import sys

from moto import server

CBOR_PATH = "/service/GraniteServiceVersion20100801/operation/"


def decode(b, i=0):
    """One CBOR item at b[i:], as JSON-able Python, and where it ends."""
    major, info = b[i] >> 5, b[i] & 0x1F
    i += 1

    def arg(i):
        if info < 24:
            return info, i
        size = {24: 1, 25: 2, 26: 4, 27: 8}.get(info)
        if size is None:
            return None, i
        return int.from_bytes(b[i : i + size], "big"), i + size

    if major == 0:
        n, i = arg(i)
        return n, i
    if major == 1:
        n, i = arg(i)
        return -1 - n, i
    if major in (2, 3):
        n, i = arg(i)
        if n is None:
            parts = []
            while b[i] != 0xFF:
                part, i = decode(b, i)
                parts.append(part)
            return "".join(parts), i + 1
        return b[i : i + n].decode("utf-8", "replace"), i + n
    if major == 4:
        n, i = arg(i)
        items = []
        while (len(items) < n) if n is not None else b[i] != 0xFF:
            item, i = decode(b, i)
            items.append(item)
        return items, (i if n is not None else i + 1)
    if major == 5:
        n, i = arg(i)
        out = {}
        while (len(out) < n) if n is not None else b[i] != 0xFF:
            k, i = decode(b, i)
            v, i = decode(b, i)
            out[k] = v
        return out, (i if n is not None else i + 1)
    if major == 6:
        _, i = arg(i)
        return decode(b, i)
    if info == 20:
        return False, i
    if info == 21:
        return True, i
    if info == 25:
        return struct.unpack(">e", b[i : i + 2])[0], i + 2
    if info == 26:
        return struct.unpack(">f", b[i : i + 4])[0], i + 4
    if info == 27:
        return struct.unpack(">d", b[i : i + 8])[0], i + 8
    return None, i


def head(major, n):
    m = major << 5
    if n < 24:
        return bytes([m | n])
    for code, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size):
            return bytes([m | code]) + n.to_bytes(size, "big")
    raise ValueError(n)


def encode(v, timestamp=False):
    """`v` in CBOR; `timestamp` when it is the value of a `...Timestamp` member."""
    if v is None:
        return b"\xf6"
    if isinstance(v, bool):
        return b"\xf5" if v else b"\xf4"
    if isinstance(v, (int, float)) and timestamp:
        return b"\xc1\xfb" + struct.pack(">d", float(v))
    if isinstance(v, int):
        return head(0, v) if v >= 0 else head(1, -1 - v)
    if isinstance(v, float):
        return b"\xfb" + struct.pack(">d", v)
    if isinstance(v, str):
        data = v.encode()
        return head(3, len(data)) + data
    if isinstance(v, list):
        return head(4, len(v)) + b"".join(encode(x) for x in v)
    if isinstance(v, dict):
        return head(5, len(v)) + b"".join(encode(k) + encode(x, k.endswith("Timestamp")) for k, x in v.items())
    return encode(str(v))


class CborCloudWatch:
    """WSGI middleware: CloudWatch's CBOR calls to moto's JSON protocol and back."""

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if not path.startswith(CBOR_PATH):
            return self.app(environ, start_response)
        operation = path[len(CBOR_PATH) :]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        raw = environ["wsgi.input"].read(length) if length else b""
        document = decode(raw)[0] if raw else {}
        body = json.dumps(document).encode()
        environ = dict(environ)
        environ.update(
            {
                "PATH_INFO": "/",
                "RAW_URI": "/",
                "REQUEST_URI": "/",
                "CONTENT_TYPE": "application/x-amz-json-1.0",
                "HTTP_X_AMZ_TARGET": "GraniteServiceVersion20100801." + operation,
                "CONTENT_LENGTH": str(len(body)),
                "wsgi.input": io.BytesIO(body),
            }
        )
        answer = {}

        def capture(status, headers, exc_info=None):
            answer["status"], answer["headers"] = status, headers
            return lambda data: None

        chunks = self.app(environ, capture)
        try:
            data = b"".join(chunks)
        finally:
            if hasattr(chunks, "close"):
                chunks.close()
        try:
            out, content_type = encode(json.loads(data) if data.strip() else {}), "application/cbor"
        except ValueError:
            # Not JSON: moto's HTML page for an operation it lacks; passed on as it is.
            out, content_type = data, "text/html"
        start_response(
            answer["status"],
            [("Content-Type", content_type), ("smithy-protocol", "rpc-v2-cbor"), ("Content-Length", str(len(out)))],
        )
        return [out]


def main(argv):
    # moto's own entry point, with its application wrapped.
    dispatcher = server.DomainDispatcherApplication

    class Wrapped(dispatcher):
        def __call__(self, environ, start_response):
            return CborCloudWatch(super().__call__)(environ, start_response)

    server.DomainDispatcherApplication = Wrapped
    server.main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
