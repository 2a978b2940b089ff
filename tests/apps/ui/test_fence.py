"""The fence's proxy on its own (no browser): it connects to the crawler's servers only, and reads what it gets."""

import http.server
import socket
import threading

import pytest

from pocketlearn.apps.ui.fence import Fence, FenceProxy


@pytest.fixture
def ours():
    """A server the crawler started: answers every GET with its path."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = f"you asked for {self.path}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _ask(proxy: FenceProxy, request: bytes) -> bytes:
    out = b""
    with socket.create_connection(("127.0.0.1", int(proxy.url.rsplit(":", 1)[1])), timeout=10) as s:
        try:
            s.sendall(request)
            while chunk := s.recv(65536):
                out += chunk
        except ConnectionResetError:  # the proxy hung up on a request it would not read
            pass
    return out


def test_the_proxy_forwards_to_the_crawlers_server_and_refuses_any_other(ours, listener):
    foreign, connections = listener
    with socket.socket() as s:  # admitted, but its server is down
        s.bind(("127.0.0.1", 0))
        down = s.getsockname()[1]
    fence = Fence([], ports=[ours, down])
    proxy = FenceProxy(fence)
    try:
        reply = _ask(proxy, f"GET http://127.0.0.1:{ours}/view?x=1 HTTP/1.1\r\nHost: 127.0.0.1:{ours}\r\n"
                            "Proxy-Connection: keep-alive\r\n\r\n".encode())
        assert reply.startswith(b"HTTP/1.") and b" 200 " in reply.split(b"\r\n")[0]
        assert reply.endswith(b"you asked for /view?x=1")  # origin-form path, and the connection closed after it
        for request in (f"GET http://127.0.0.1:{foreign}/ HTTP/1.1\r\n\r\n",
                        f"CONNECT 127.0.0.1:{foreign} HTTP/1.1\r\n\r\n", "GET http://example.com/ HTTP/1.1\r\n\r\n",
                        f"GET http://localhost:{ours}/ HTTP/1.1\r\n\r\n"):
            assert b" 403 " in _ask(proxy, request.encode()).split(b"\r\n")[0]
        assert b" 400 " in _ask(proxy, b"NONSENSE\r\n\r\n").split(b"\r\n")[0]
        assert b" 502 " in _ask(proxy, f"GET http://127.0.0.1:{down}/ HTTP/1.1\r\n\r\n".encode()).split(b"\r\n")[0]
        assert _ask(proxy, b"GET http://127.0.0.1/ HTTP/1.1\r\n" + b"X: " + b"a" * 70_000 + b"\r\n\r\n") == b""
    finally:
        proxy.close()
    assert connections == []
    assert fence.refused == [f"http://127.0.0.1:{foreign}/", f"CONNECT 127.0.0.1:{foreign}", "http://example.com/",
                             f"http://localhost:{ours}/"]
