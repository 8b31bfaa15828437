"""The webhooks' HTTP side (contacts_streams.webhooks.Requests, libcurl's multi interface) against
real local receivers, without a broker: what a receiver sees, how failures are described, time
limits, kept-alive connections a receiver dropped, and HTTPS with the system's trust store."""

from __future__ import annotations

import datetime
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from contacts_streams.webhooks import Requests


class Server:
    """A keep-alive receiver: `answer(handler, body)` writes the answer; every request is recorded
    with its headers and body."""

    def __init__(self, answer, tls: ssl.SSLContext | None = None):
        self.seen: list[tuple[dict, bytes]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                server.seen.append(({k.lower(): v for k, v in self.headers.items()}, body))
                answer(self, body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, scheme: str = "http", userinfo: str = "") -> str:
        return f"{scheme}://{userinfo}localhost:{self.httpd.server_address[1]}/hook?x=1"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def reply(status: int, body: bytes = b"", close: bool = False):
    def answer(handler: BaseHTTPRequestHandler, _body: bytes) -> None:
        handler.send_response(status)
        handler.send_header("Content-Length", str(len(body)))
        if close:
            handler.send_header("Connection", "close")
            handler.close_connection = True
        handler.end_headers()
        handler.wfile.write(body)

    return answer


def post_all(requests: Requests, bodies: list[bytes], timeout: float = 20) -> list[tuple]:
    """POSTs every body (at most `limit` at once) on this thread; the answers in body order."""
    answers: dict[int, tuple] = {}
    requests.on_answer = lambda item, status, text, error, seconds: answers.__setitem__(item, (status, text, error, seconds))
    todo = list(enumerate(bodies))
    deadline = time.monotonic() + timeout
    while len(answers) < len(bodies):
        assert time.monotonic() < deadline, f"{len(answers)} of {len(bodies)} answered"
        while todo and not requests.full():
            n, body = todo.pop(0)
            requests.post(body, ["Content-Type: application/json", f"X-Contacts-Event-Id: e{n}"], n)
        requests.run(0.2)
    return [answers[n] for n in range(len(bodies))]


@pytest.fixture
def made():
    things: list = []
    yield things
    for thing in things:
        thing.close()


def test_the_receiver_gets_the_body_and_headers_over_kept_alive_connections(made):
    server = Server(reply(200, b'{"ok": true}'))
    requests = Requests(server.url(userinfo="hook%40crm:s3cret@"), 5000, 4, None)
    made += [server, requests]
    bodies = [b'{"n": %d, "name": "J\xc3\xbcrgen"}' % n for n in range(40)]
    answers = post_all(requests, bodies)
    assert [a[:3] for a in answers] == [(200, b'{"ok": true}', None)] * 40
    assert sorted(body for _h, body in server.seen) == sorted(bodies)
    headers = server.seen[0][0]
    assert headers["content-type"] == "application/json" and headers["user-agent"].startswith("contacts-streams-webhooks/")
    assert headers["authorization"] == "Basic aG9va0Bjcm06czNjcmV0"  # hook@crm:s3cret, as curl sends it
    assert "expect" not in headers  # no 100-continue round trip
    assert {h["x-contacts-event-id"] for h, _b in server.seen} == {f"e{n}" for n in range(40)}


def test_an_error_answer_keeps_the_start_of_its_body_and_the_next_request_still_goes(made):
    server = Server(lambda handler, body: reply(503, b"x" * 5000)(handler, body) if b"bad" in body else reply(204)(handler, body))
    requests = Requests(server.url(), 5000, 1, None)
    made += [server, requests]
    (bad, good) = post_all(requests, [b"bad", b"good"])
    assert bad[0] == 503 and bad[1] == b"x" * Requests.MAX_BODY and bad[2] is None
    assert good[:3] == (204, b"", None)


def test_a_receiver_that_closes_kept_alive_connections_is_called_again_on_a_new_one(made):
    server = Server(reply(200, b"ok", close=True))
    requests = Requests(server.url(), 5000, 2, None)
    made += [server, requests]
    assert [a[:3] for a in post_all(requests, [b"%d" % n for n in range(10)])] == [(200, b"ok", None)] * 10


def test_a_request_is_bounded_by_its_timeout_and_says_so(made):
    server = Server(lambda handler, body: time.sleep(3))
    requests = Requests(server.url(), 300, 2, None)
    made += [server, requests]
    started = time.monotonic()
    (answer,) = post_all(requests, [b"{}"])
    assert time.monotonic() - started < 2.5
    assert answer[0] == 0 and answer[2].startswith("timeout: ")


def test_nobody_listening_is_an_error_naming_the_cause(made):
    server = Server(reply(200))
    url = server.url()
    server.close()
    requests = Requests(url, 2000, 2, None)
    made.append(requests)
    (answer,) = post_all(requests, [b"{}"])
    assert answer[0] == 0 and answer[2].startswith("curl error 7:"), answer  # couldn't connect


def self_signed(tmp_path) -> tuple[str, ssl.SSLContext]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return str(cert_file), context


def test_https_trusts_what_python_trusts_and_refuses_an_unknown_certificate(made, tmp_path, monkeypatch):
    cert_file, context = self_signed(tmp_path)
    server = Server(reply(200, b"ok"), tls=context)
    made.append(server)
    untrusting = Requests(server.url("https"), 5000, 1, None)
    made.append(untrusting)
    (refused,) = post_all(untrusting, [b"{}"])
    assert refused[0] == 0 and refused[2].startswith("curl error 60:"), refused  # peer certificate not trusted
    monkeypatch.setenv("SSL_CERT_FILE", cert_file)  # as the system's store would
    trusting = Requests(server.url("https"), 5000, 1, None)
    made.append(trusting)
    assert [a[:3] for a in post_all(trusting, [b"{}"])] == [(200, b"ok", None)]
