"""What a cluster gives the chart's pods that a Docker network does not (container tier, tests only).

``forward PORT HOST:PORT [PORT HOST:PORT ...]``: TCP forwarders, one per Service port (a KServe Service maps 80 to
the pod's 8080; the tier gives this container the Service's DNS names). ``router PORT URL``: a stand-in for the
InferenceGraph router's single Sequence step: a POST to / is sent on to URL and its answer returned as is.
"""

import asyncio
import sys
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


async def _forward(pairs: list[tuple[int, str, int]]) -> None:
    def handler(host: str, port: int):
        async def handle(reader, writer):
            try:
                up_reader, up_writer = await asyncio.open_connection(host, port)
            except OSError:
                writer.close()
                return
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer), return_exceptions=True)

        return handle

    servers = [await asyncio.start_server(handler(host, port), "0.0.0.0", listen) for listen, host, port in pairs]
    print(f"forwarding {pairs}", flush=True)
    await asyncio.gather(*(server.serve_forever() for server in servers))


def _router(port: int, url: str) -> None:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=60) as answer:
                    status, payload = answer.status, answer.read()
            except urllib.error.HTTPError as err:
                status, payload = err.code, err.read()
            except (urllib.error.URLError, OSError) as err:  # nothing answers behind: what the router says then
                status, payload = 502, f'{{"error": "{type(err).__name__}: {url}"}}'.encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    print(f"router :{port} -> {url}", flush=True)
    ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()


if __name__ == "__main__":
    role, *rest = sys.argv[1:]
    if role == "router":
        _router(int(rest[0]), rest[1])
    else:
        pairs = []
        for listen, target in zip(rest[::2], rest[1::2], strict=True):
            host, _, port = target.rpartition(":")
            pairs.append((int(listen), host, int(port)))
        asyncio.run(_forward(pairs))
