"""Downloading a file given as a URL: the address guard over a table and injected resolvers,
then real downloads from a server on 127.0.0.1 (files, redirects, refusals, limits, timeouts,
the pinned address and TLS checked against the name)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from modal_fastapi_kit import File, FileLimits
from modal_fastapi_kit._address_guard import (
    AddressGuard,
    Refused,
    Resolver,
    Unresolvable,
    address_refusal,
)
from modal_fastapi_kit._fetch import MAX_REDIRECTS, fetch_file, shown_url
from modal_fastapi_kit.exceptions import ErrorCode, InputError

from .._servers import ThreadedServer, certificate, free_port

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
LIMITS = FileLimits(max_bytes=4096, urls=True, url_timeout=10)


# -- the address classifier -------------------------------------------------------------------

REFUSED = [
    ("10.0.0.1", "a private address"),
    ("172.16.0.1", "a private address"),
    ("192.168.1.1", "a private address"),
    ("127.0.0.1", "a loopback address"),
    ("127.8.9.10", "a loopback address"),
    ("169.254.169.254", "the cloud metadata address"),
    ("169.254.1.1", "a link-local address"),
    ("100.64.0.1", "a shared (carrier-grade NAT) address"),
    ("100.100.100.200", "the cloud metadata address"),
    ("0.0.0.0", "an unspecified address"),
    ("224.0.0.1", "a multicast address"),
    ("240.0.0.1", "a reserved address"),
    ("198.18.0.1", "a private address"),
    ("::", "an unspecified address"),
    ("::1", "a loopback address"),
    ("fe80::1", "a link-local address"),
    ("fc00::1", "a private address"),
    ("fd00:ec2::254", "the cloud metadata address"),
    ("ff02::1", "a multicast address"),
    ("::ffff:127.0.0.1", "a loopback address"),
    ("::ffff:10.1.2.3", "a private address"),
    ("::ffff:169.254.169.254", "the cloud metadata address"),
    ("64:ff9b::7f00:1", "a loopback address"),
    ("64:ff9b::a00:1", "a private address"),
    ("64:ff9b:1::1", "a local-use NAT64 address"),
    ("2002:7f00:1::", "a loopback address"),
    ("2002:a9fe:a9fe::", "the cloud metadata address"),
    ("2001::1", "a private address"),  # Teredo
]
PUBLIC = ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]


@pytest.mark.parametrize(("address", "reason"), REFUSED)
def test_a_non_public_address_is_refused_and_says_why(address: str, reason: str) -> None:
    assert address_refusal(ip_address(address)) == reason


@pytest.mark.parametrize("address", PUBLIC)
def test_a_public_address_is_allowed(address: str) -> None:
    assert address_refusal(ip_address(address)) is None


# -- the guard, with an injected resolver -----------------------------------------------------


@dataclass
class FakeDNS:
    """Answers from a table, counting the questions; a name not in it does not resolve."""

    table: dict[str, list[str]]
    asked: list[tuple[str, int]] = field(default_factory=list)

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.asked.append((host, port))
        with contextlib.suppress(ValueError):
            return [str(ip_address(host))]  # an address stands for itself, as in getaddrinfo
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.table[host]


@pytest.mark.parametrize(
    "answers",
    [
        ["93.184.215.14", "10.0.0.1"],  # public first, private second
        ["10.0.0.1", "93.184.215.14"],
        ["2606:4700::1111", "::ffff:127.0.0.1"],
        ["8.8.8.8", "169.254.169.254"],
    ],
)
async def test_a_name_with_any_non_public_address_is_refused(answers: list[str]) -> None:
    guard = AddressGuard(resolver=FakeDNS({"files.example": answers}))
    with pytest.raises(Refused, match=r"^files\.example resolves to (a|the) ") as caught:
        await guard.resolve("https", "files.example", 443)
    assert not any(a in str(caught.value) for a in answers)  # no address is told


async def test_every_address_of_a_public_name_is_kept_in_order_and_once() -> None:
    dns = FakeDNS({"files.example": ["2606:4700::1111", "8.8.8.8", "2606:4700::1111"]})
    destination = await AddressGuard(resolver=dns).resolve("https", "files.example", 8443)
    assert destination.addresses == (ip_address("2606:4700::1111"), ip_address("8.8.8.8"))
    assert (destination.host, destination.port) == ("files.example", 8443)
    assert dns.asked == [("files.example", 8443)]


async def test_allow_private_lets_private_addresses_through_but_never_the_metadata_one() -> None:
    dns = FakeDNS({"inside": ["10.0.0.7", "::1"], "meta": ["10.0.0.7", "169.254.169.254"]})
    guard = AddressGuard(allow_private=True, resolver=dns)
    assert len((await guard.resolve("http", "inside", 80)).addresses) == 2
    with pytest.raises(Refused, match="meta resolves to the cloud metadata address"):
        await guard.resolve("https", "meta", 443)


@pytest.mark.parametrize(
    "form", ["::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe", "2002:a9fe:a9fe::1"]
)
async def test_the_metadata_address_is_refused_in_its_ipv6_forms_too(form: str) -> None:
    dns = FakeDNS({"meta6": [form]})
    for guard in (
        AddressGuard(allow_private=True, resolver=dns),
        AddressGuard(trusted_hosts=("meta6",), resolver=dns),
    ):
        with pytest.raises(Refused, match="meta6 resolves to"):
            await guard.resolve("https", "meta6", 443)


async def test_a_trusted_host_alone_may_be_private_and_use_http() -> None:
    dns = FakeDNS({"store.internal": ["10.0.0.7"], "other.internal": ["10.0.0.8"]})
    guard = AddressGuard(trusted_hosts=["Store.Internal."], resolver=dns)
    assert (await guard.resolve("http", "store.internal", 80)).addresses == (
        ip_address("10.0.0.7"),
    )
    with pytest.raises(Refused, match=r"other\.internal resolves to a private address"):
        await guard.resolve("https", "other.internal", 443)
    with pytest.raises(Refused, match="plain http is refused"):
        await guard.resolve("http", "other.internal", 80)
    with pytest.raises(ValueError, match=r"trusted_hosts=\['store.internal'\]"):
        AddressGuard(trusted_hosts="store.internal")


@pytest.mark.parametrize(
    ("scheme", "host", "port", "said"),
    [
        ("ftp", "files.example", 21, "the scheme 'ftp' is not fetched"),
        ("file", "", 0, "the scheme 'file' is not fetched"),
        ("http", "files.example", 80, "plain http is refused"),
        ("https", "", 443, "the URL has no host"),
        ("https", "files.example", 0, "the port 0 is outside 1-65535"),
        ("https", "files.example", 70000, "the port 70000 is outside 1-65535"),
    ],
)
async def test_a_target_is_refused_before_any_name_is_resolved(
    scheme: str, host: str, port: int, said: str
) -> None:
    dns = FakeDNS({"files.example": ["8.8.8.8"]})
    with pytest.raises(Refused, match=said):
        await AddressGuard(resolver=dns).resolve(scheme, host, port)
    assert dns.asked == []


async def test_the_system_resolver_sees_loopback_through_names_and_odd_spellings() -> None:
    guard = AddressGuard()  # the real resolver; these names never leave the machine
    for host in ("localhost", "127.1", "0x7f.0.0.1"):
        with pytest.raises(Refused, match="a loopback address"):
            await guard.resolve("https", host, 443)
    with pytest.raises(Refused, match=r"^::1 is a loopback address$"):
        await guard.resolve("https", "::1", 443)


async def test_a_name_that_resolves_to_nothing_is_unresolvable() -> None:
    dns = FakeDNS({"empty.example": []})
    with pytest.raises(Unresolvable, match=r"empty\.example resolves to no address"):
        await AddressGuard(resolver=dns).resolve("https", "empty.example", 443)
    with pytest.raises(Unresolvable, match=r"nowhere\.example does not resolve"):
        await AddressGuard(resolver=dns).resolve("https", "nowhere.example", 443)


# -- fetch_file's refusals, before any connection -------------------------------------------


async def fetch_error(url: str, *, dns: Resolver | None = None, **options: Any) -> InputError:
    options.setdefault("limits", LIMITS)
    options.setdefault("allow_private", False)
    if dns is not None:
        options["guard"] = AddressGuard(allow_private=options["allow_private"], resolver=dns)
    with pytest.raises(InputError) as caught:
        await fetch_file(url, **options)
    return caught.value


@pytest.mark.parametrize(
    ("url", "shown", "said"),
    [
        ("ftp://files.example/a.png", "ftp://files.example/a.png", "'ftp' is not fetched"),
        ("http://files.example/a.png", "http://files.example/a.png", "plain http is refused"),
        (
            "https://alice:hunter2@files.example/a.png?token=s3cret",
            "https://files.example/a.png",
            "a user name or password",
        ),
        ("https://files.example:0/a", "https://files.example:0/a", "the port 0 is outside"),
        ("https://files.example:70000/a", "https://files.example:70000/a", "70000 is outside"),
        ("https://[::1/a", "https://[::1/a", "not a valid URL"),
        ("https://10.1.2.3/a.png#x", "https://10.1.2.3/a.png", "10.1.2.3 is a private address"),
        ("https://nowhere.example/a", "https://nowhere.example/a", "does not resolve"),
        (
            "https://mixed.example/a.png?sig=s3cret",
            "https://mixed.example/a.png",
            "mixed.example resolves to a private address",
        ),
    ],
)
async def test_a_refused_url_is_a_422_that_names_it_without_secrets(
    url: str, shown: str, said: str
) -> None:
    # files.example resolves to nothing: each of its URLs is refused before the name is
    # resolved, or the message would say it does not resolve.
    dns = FakeDNS({"mixed.example": ["8.8.8.8", "10.9.9.9"]})
    error = await fetch_error(url, dns=dns)
    assert (error.status_code, error.code) == (422, ErrorCode.FETCH_FAILED)
    assert error.detail.startswith(f"could not fetch the file at {shown}: ")
    assert said in error.detail
    for secret in ("hunter2", "alice", "s3cret", "token", "10.9.9.9", "8.8.8.8"):
        assert secret not in error.detail


async def test_the_metadata_address_is_refused_even_with_private_urls_allowed() -> None:
    dns = FakeDNS({"metadata.google.internal": ["169.254.169.254"]})
    error = await fetch_error(
        "http://metadata.google.internal/computeMetadata/v1/", dns=dns, allow_private=True
    )
    assert "resolves to the cloud metadata address" in error.detail


async def test_resolution_counts_against_the_timeout() -> None:
    async def stuck(host: str, port: int) -> Sequence[str]:
        await asyncio.sleep(60)
        return ["8.8.8.8"]

    limits = FileLimits(urls=True, url_timeout=0.2)
    error = await fetch_error("https://slow-dns.example/a", dns=stuck, limits=limits)
    assert error.code == ErrorCode.FETCH_FAILED
    assert "did not download within 0.2 s" in error.detail


async def test_a_guard_that_disagrees_with_allow_private_is_a_mistake() -> None:
    with pytest.raises(ValueError, match="disagrees"):
        await fetch_file(
            "https://a.example/", limits=LIMITS, allow_private=True, guard=AddressGuard()
        )


def test_a_url_is_shown_without_userinfo_query_or_fragment() -> None:
    assert shown_url("https://u:p@Files.example:8443/a/b.png?x=1#f") == (
        "https://Files.example:8443/a/b.png"
    )
    assert shown_url("https://files.example/" + "a" * 500).endswith("...")
    assert len(shown_url("https://files.example/" + "a" * 500)) == 200
    assert shown_url("https://files.example/a\x1bb") == "https://files.example/a?b"


# -- real downloads from 127.0.0.1 ----------------------------------------------------------


class Site:
    """A small file server on 127.0.0.1 that records each request's path and Host header."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.stop = threading.Event()
        routes = [
            Route("/file.png", self.png),
            Route("/named", self.named),
            Route("/evil", self.evil),
            Route("/untyped/photo.png", self.untyped),
            Route("/text", self.text),
            Route("/host", self.host),
            Route("/hop/{n:int}", self.hop),
            Route("/to", self.to),
            Route("/nowhere", self.nowhere),
            Route("/slow", self.slow),
            Route("/big", self.big),
            Route("/big-stream", self.big_stream),
            Route("/large", self.large),
        ]
        self.app = Starlette(routes=routes)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            self.seen.append((scope["path"], headers.get(b"host", b"").decode()))
        await self.app(scope, receive, send)

    def paths(self) -> list[str]:
        return [path for path, _ in self.seen]

    async def png(self, request: Request) -> Response:
        return Response(PNG, media_type="image/png")

    async def named(self, request: Request) -> Response:
        disposition = "attachment; filename*=UTF-8''caf%C3%A9%20menu.txt"
        return PlainTextResponse("menu", headers={"Content-Disposition": disposition})

    async def evil(self, request: Request) -> Response:
        disposition = 'attachment; filename="../../etc/passwd"'
        return PlainTextResponse("x", headers={"Content-Disposition": disposition})

    async def untyped(self, request: Request) -> Response:
        return Response(PNG)  # no Content-Type at all

    async def text(self, request: Request) -> Response:
        return PlainTextResponse("not a picture")

    async def host(self, request: Request) -> Response:
        return PlainTextResponse(request.headers["host"])

    async def hop(self, request: Request) -> Response:
        n = request.path_params["n"]
        return RedirectResponse("/file.png" if n == 0 else f"/hop/{n - 1}", status_code=302)

    async def to(self, request: Request) -> Response:
        return RedirectResponse(request.query_params["url"], status_code=307)

    async def nowhere(self, request: Request) -> Response:
        return Response(status_code=302)  # a redirect without a Location

    async def slow(self, request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            yield b"x"
            for _ in range(200):  # at most 10 s; the test's teardown ends it at once
                if self.stop.is_set():
                    return
                await asyncio.sleep(0.05)
            yield b"y"

        return StreamingResponse(body(), media_type="image/png")

    async def big(self, request: Request) -> Response:
        return Response(b"b" * 5000, media_type="image/png")  # with a Content-Length

    async def big_stream(self, request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            for _ in range(10):
                yield b"s" * 500

        return StreamingResponse(body(), media_type="image/png")  # chunked, no length

    async def large(self, request: Request) -> Response:
        return Response(bytes(range(256)) * 6144, media_type="image/png")  # 1.5 MiB


@contextlib.contextmanager
def serving(
    site: Site, *, certfile: str | None = None, keyfile: str | None = None
) -> Iterator[int]:
    """``site`` on uvicorn on 127.0.0.1 (over TLS given a certificate and its key)."""
    with ThreadedServer(site, certfile=certfile, keyfile=keyfile) as server:
        try:
            yield server.port
        finally:
            site.stop.set()  # before the server stops: a held answer lets go
    assert not server.thread.is_alive()


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[Site, int]]:
    site = Site()
    with serving(site) as port:
        yield site, port


@pytest.fixture
def site(served: tuple[Site, int]) -> Site:
    served[0].seen.clear()
    return served[0]


@pytest.fixture
def base(served: tuple[Site, int]) -> str:
    return f"http://127.0.0.1:{served[1]}"


def trusted(dns: FakeDNS, *names: str) -> AddressGuard:
    """A guard that keeps its rules for every name but ``names``, which it trusts."""
    return AddressGuard(trusted_hosts=names, resolver=dns)


@contextlib.asynccontextmanager
async def fetched(url: str, **options: Any) -> AsyncIterator[File]:
    options.setdefault("limits", LIMITS)
    options.setdefault("allow_private", True)
    file = await fetch_file(url, **options)
    try:
        yield file
    finally:
        file.close()


@pytest.mark.e2e
async def test_a_file_is_downloaded_with_its_type_and_name(site: Site, base: str) -> None:
    async with fetched(f"{base}/file.png?v=1") as file:
        assert (file.read(), file.content_type, file.filename) == (PNG, "image/png", "file.png")
        assert file.size == len(PNG)
        assert file.url is None
    async with fetched(f"{base}/named") as file:
        assert (file.read(), file.filename) == (b"menu", "café menu.txt")
        assert file.content_type.startswith("text/plain")
    async with fetched(f"{base}/evil") as file:
        assert file.filename == "passwd"  # a base name, never a path
    async with fetched(f"{base}/untyped/photo.png") as file:
        assert (file.content_type, file.filename) == ("image/png", "photo.png")
    assert site.paths() == ["/file.png", "/named", "/evil", "/untyped/photo.png"]


@pytest.mark.e2e
async def test_a_file_over_a_mebibyte_spools_to_disk_and_reads_back(base: str) -> None:
    limits = FileLimits(max_bytes=2 << 20, urls=True)
    async with fetched(f"{base}/large", limits=limits) as file:
        assert file.size == 1536 * 1024
        assert file.read() == bytes(range(256)) * 6144
        assert file.path.stat().st_size == file.size


@pytest.mark.e2e
async def test_five_redirects_are_followed_and_a_sixth_is_refused(site: Site, base: str) -> None:
    async with fetched(f"{base}/hop/{MAX_REDIRECTS - 1}") as file:
        assert file.read() == PNG
    assert len(site.paths()) == MAX_REDIRECTS + 1
    site.seen.clear()
    error = await fetch_error(f"{base}/hop/{MAX_REDIRECTS}", allow_private=True)
    assert (error.status_code, error.code) == (422, ErrorCode.FETCH_FAILED)
    assert error.detail == (
        f"could not fetch the file at {base}/hop/{MAX_REDIRECTS}: it redirects more than "
        f"{MAX_REDIRECTS} times"
    )
    assert len(site.paths()) == MAX_REDIRECTS + 1
    error = await fetch_error(f"{base}/nowhere", allow_private=True)
    assert "it answered 302 with no Location" in error.detail


@pytest.mark.e2e
async def test_a_redirect_inside_is_refused_before_it_is_followed(site: Site, base: str) -> None:
    port = base.rsplit(":", 1)[1]
    dns = FakeDNS({"files.test": ["127.0.0.1"], "localhost": ["127.0.0.1", "::1"]})
    guard = trusted(dns, "files.test")  # the first hop is allowed, by name alone
    start = f"http://files.test:{port}/to?url="
    cases = {
        f"https://127.0.0.1:{port}/secret?k=1": f"https://127.0.0.1:{port}/secret, which is "
        "refused: 127.0.0.1 is a loopback address",
        f"http://127.0.0.1:{port}/secret": "plain http is refused",
        "https://localhost/secret": "localhost resolves to a loopback address",
        "https://[::ffff:127.0.0.1]/secret": "::ffff:127.0.0.1 is a loopback address",
        "https://169.254.169.254/latest/meta-data/": "the cloud metadata address",
    }
    for target, said in cases.items():
        error = await fetch_error(start + quote(target, safe=""), guard=guard)
        assert error.code == ErrorCode.FETCH_FAILED
        assert error.detail.startswith(f"could not fetch the file at http://files.test:{port}/to:")
        assert "it redirects to" in error.detail and said in error.detail
    assert site.paths() == ["/to"] * len(cases)  # never /secret
    # a service that allows private addresses follows the same redirect
    guard = AddressGuard(allow_private=True, resolver=dns)
    target = quote(f"http://127.0.0.1:{port}/file.png", safe="")
    async with fetched(start + target, guard=guard) as file:
        assert file.read() == PNG


@pytest.mark.e2e
async def test_the_request_goes_to_the_checked_address_with_the_name_as_host(
    site: Site, base: str
) -> None:
    port = int(base.rsplit(":", 1)[1])
    # .test names never resolve in real DNS: only the checked address can be reached. The
    # first answer has nothing listening; the second is the server.
    answers = iter([["127.0.0.2", "127.0.0.1"]])

    async def once(host: str, _port: int) -> Sequence[str]:
        return next(answers)  # a second question would raise: the name is resolved once

    guard = AddressGuard(trusted_hosts=["files.test"], resolver=once)
    async with fetched(f"http://files.test:{port}/host", guard=guard, allow_private=False) as f:
        assert f.read() == f"files.test:{port}".encode()
    assert site.seen == [("/host", f"files.test:{port}")]


@pytest.mark.e2e
async def test_nothing_listening_is_a_connection_failure_naming_the_host() -> None:
    port = free_port()
    guard = AddressGuard(allow_private=True, resolver=FakeDNS({"files.test": ["127.0.0.1"]}))
    error = await fetch_error(f"http://files.test:{port}/a", guard=guard, allow_private=True)
    assert error.detail == (
        f"could not fetch the file at http://files.test:{port}/a: could not connect to "
        f"files.test on port {port}"
    )
    assert error.internal is not None and "127.0.0.1" in error.internal  # the log's, only


@pytest.mark.e2e
async def test_a_slow_body_runs_out_of_time(site: Site, base: str) -> None:
    limits = FileLimits(max_bytes=4096, urls=True, url_timeout=0.5)
    error = await fetch_error(f"{base}/slow", allow_private=True, limits=limits)
    assert (error.status_code, error.code) == (422, ErrorCode.FETCH_FAILED)
    assert error.detail == (
        f"could not fetch the file at {base}/slow: it did not download within 0.5 s"
    )
    assert site.paths() == ["/slow"]


@pytest.mark.e2e
async def test_an_oversized_body_is_a_413_with_and_without_a_length(base: str) -> None:
    limits = FileLimits(max_bytes=1000, urls=True)
    error = await fetch_error(f"{base}/big", allow_private=True, limits=limits, field="image")
    assert (error.status_code, error.code) == (413, ErrorCode.FILE_TOO_LARGE)
    assert error.detail == (
        f"the file at {base}/big is 5000 bytes (its Content-Length), over the limit of 1000 "
        "bytes for 'image'"
    )
    error = await fetch_error(f"{base}/big-stream", allow_private=True, limits=limits)
    assert (error.status_code, error.code) == (413, ErrorCode.FILE_TOO_LARGE)
    assert "passed 1000 bytes" in error.detail
    # the caller's cap applies where the field has none
    error = await fetch_error(
        f"{base}/big", allow_private=True, limits=FileLimits(urls=True), max_bytes=4999
    )
    assert error.status_code == 413
    async with fetched(f"{base}/big", limits=FileLimits(urls=True), max_bytes=5000) as file:
        assert file.size == 5000


@pytest.mark.e2e
async def test_a_404_and_a_refused_type(base: str) -> None:
    error = await fetch_error(f"{base}/missing?token=abc", allow_private=True)
    assert (error.status_code, error.code) == (422, ErrorCode.FETCH_FAILED)
    assert error.detail == (
        f"could not fetch the file at {base}/missing: it answered 404 Not Found; check the URL"
    )
    limits = FileLimits(content_types=("image/*",), urls=True)
    error = await fetch_error(f"{base}/text", allow_private=True, limits=limits, field="photo")
    assert (error.status_code, error.code) == (415, ErrorCode.UNSUPPORTED_MEDIA_TYPE)
    assert error.detail == f"the file at {base}/text is text/plain; 'photo' takes image/*"


# -- TLS: the certificate is checked against the name, on a connection to the address ----------


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
async def test_tls_checks_the_certificate_against_the_name_not_the_address(
    tmp_path: Path,
) -> None:
    cert, key = certificate(tmp_path, "files.test")
    other, _ = certificate(tmp_path, "other.test")
    site = Site()
    with serving(site, certfile=str(cert), keyfile=str(key)) as port:
        dns = FakeDNS({"files.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
        guard = trusted(dns, "files.test", "other.test")
        tls = ssl.create_default_context(cafile=str(cert))
        async with fetched(
            f"https://files.test:{port}/host", guard=guard, allow_private=False, tls=tls
        ) as file:
            assert file.read() == f"files.test:{port}".encode()
        # the same server, asked for by another name: its certificate does not cover it
        error = await fetch_error(f"https://other.test:{port}/host", guard=guard, tls=tls)
        assert "the TLS handshake with other.test failed" in error.detail
        # a certificate from an authority this context does not trust
        untrusted = ssl.create_default_context(cafile=str(other))
        error = await fetch_error(f"https://files.test:{port}/host", guard=guard, tls=untrusted)
        assert "the TLS handshake with files.test failed" in error.detail
    assert [path for path, _ in site.seen] == ["/host"]
