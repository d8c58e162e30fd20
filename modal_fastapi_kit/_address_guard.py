"""Which hosts the service may reach for a client: a file URL now, a webhook later.

``AddressGuard.resolve(scheme, host, port)`` resolves the name once and checks every address
it resolves to; the caller then connects to one of those addresses, never to the name again,
so a second DNS answer cannot point the connection somewhere that was not checked.

Refused by default (``address_refusal`` says which and why): loopback, private, link-local,
multicast, reserved, unspecified and shared (100.64.0.0/10) addresses, any address that is
not globally routable, the IPv4-mapped, 6to4 and NAT64 forms of those, and the cloud metadata
addresses. ``allow_private=True`` (tests, internal networks) lets every address through but
the metadata ones, and also allows ``http``; a name in ``trusted_hosts`` is treated the same
way, alone.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

__all__ = [
    "METADATA_ADDRESSES",
    "Address",
    "AddressGuard",
    "Destination",
    "Refused",
    "Resolver",
    "Unresolvable",
    "address_refusal",
    "system_resolver",
]

Address = IPv4Address | IPv6Address
# (host, port) -> the addresses the name resolves to, as strings, in the order to try them.
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

# Where clouds answer instance metadata (credentials included): never reached, whatever the
# options. 169.254.169.254: AWS, GCP, Azure, OpenStack, DigitalOcean; 169.254.170.2: AWS ECS
# task credentials; fd00:ec2::254: AWS over IPv6; 100.100.100.200: Alibaba Cloud;
# 168.63.129.16: Azure's wire server; 192.0.0.192: Oracle Cloud.
METADATA_ADDRESSES: frozenset[Address] = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",
        "169.254.170.2",
        "fd00:ec2::254",
        "100.100.100.200",
        "168.63.129.16",
        "192.0.0.192",
    )
)
_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT (RFC 6598)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # well-known NAT64 prefix (RFC 6052)
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # local-use NAT64 (RFC 8215)
_SCHEMES = ("https", "http")


class Refused(Exception):
    """The guard does not let the service reach this URL or address; the message says why
    (it names the host, never an address the host resolved to)."""


class Unresolvable(Exception):
    """The host name resolves to no address."""


@dataclass(frozen=True, slots=True)
class Destination:
    """A host and port, with every address it resolved to, all checked, in the order to try."""

    host: str
    port: int
    addresses: tuple[Address, ...]


def address_refusal(address: Address) -> str | None:
    """Why ``address`` is not one to reach (``"a loopback address"``, ...), or ``None`` for a
    public address."""
    if address in METADATA_ADDRESSES:
        return "the cloud metadata address"
    if isinstance(address, IPv6Address):
        if address in _NAT64_LOCAL:
            return "a local-use NAT64 address"
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return address_refusal(embedded)
    return _plain_refusal(address)


def _plain_refusal(address: Address) -> str | None:
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if address in _SHARED:
        return "a shared (carrier-grade NAT) address"
    if address.is_reserved:
        return "a reserved address"
    if address.is_private:
        return "a private address"
    if not address.is_global:
        return "an address that is not public"
    return None


def _is_metadata(address: Address) -> bool:
    """A cloud metadata address, written plainly or in an IPv6 form that reaches it."""
    if address in METADATA_ADDRESSES:
        return True
    embedded = _embedded_ipv4(address) if isinstance(address, IPv6Address) else None
    return embedded is not None and embedded in METADATA_ADDRESSES


def _embedded_ipv4(address: IPv6Address) -> IPv4Address | None:
    """The IPv4 address an IPv4-mapped, 6to4 or NAT64 address stands for."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return IPv4Address(int(address) & 0xFFFFFFFF)
    return None


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses the system resolver gives for ``host`` (TCP), in its order."""
    loop = asyncio.get_running_loop()
    answers = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(sockaddr[0]) for *_, sockaddr in answers]


class AddressGuard:
    """The rules for reaching hosts, and the resolver they are checked against.

    - ``allow_private``: also reach private, loopback and other non-public addresses, and
      allow ``http`` (for tests and internal networks); never the metadata addresses.
    - ``trusted_hosts``: names reached as if ``allow_private`` were on for them alone (an
      internal file store, say), compared without case or a trailing dot.
    - ``resolver``: ``async (host, port) -> [address, ...]``; the system's by default.
    """

    def __init__(
        self,
        *,
        allow_private: bool = False,
        trusted_hosts: Iterable[str] = (),
        resolver: Resolver | None = None,
    ) -> None:
        if isinstance(trusted_hosts, str):
            raise ValueError(
                f"AddressGuard(trusted_hosts={trusted_hosts!r}) is a string; pass a list: "
                f"trusted_hosts=[{trusted_hosts!r}]"
            )
        self.allow_private = allow_private
        self.trusted_hosts = frozenset(_normal(h) for h in trusted_hosts)
        self.resolver: Resolver = resolver or system_resolver

    def __repr__(self) -> str:
        trusted = f", trusted_hosts={sorted(self.trusted_hosts)!r}" if self.trusted_hosts else ""
        return f"AddressGuard(allow_private={self.allow_private!r}{trusted})"

    def trusts(self, host: str) -> bool:
        """Whether ``host`` may be any address and use ``http``."""
        return self.allow_private or _normal(host) in self.trusted_hosts

    def check_target(self, scheme: str, host: str, port: int) -> None:
        """Raise ``Refused`` for a scheme, host or port the service does not reach."""
        if scheme not in _SCHEMES:
            raise Refused(f"the scheme {scheme or '(none)'!r} is not fetched; give an https URL")
        if not host:
            raise Refused("the URL has no host; give https://<host>/<path>")
        if scheme == "http" and not self.trusts(host):
            raise Refused("plain http is refused; give an https URL")
        if not 1 <= port <= 65535:
            raise Refused(f"the port {port} is outside 1-65535")

    async def resolve(self, scheme: str, host: str, port: int) -> Destination:
        """Check the target, resolve ``host`` once and check every address it gives.

        Raises ``Refused`` when the target, or any one of the addresses, may not be reached,
        and ``Unresolvable`` when the name gives no address.
        """
        self.check_target(scheme, host, port)
        try:
            answers = await self.resolver(host, port)
        except (OSError, UnicodeError) as exc:
            raise Unresolvable(f"{host} does not resolve") from exc
        addresses: list[Address] = []
        for answer in answers:
            address = ipaddress.ip_address(answer)
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise Unresolvable(f"{host} resolves to no address")
        trusted = self.trusts(host)
        for address in addresses:
            reason = address_refusal(address)
            if reason is None or (trusted and not _is_metadata(address)):
                continue
            if _is_literal(host):
                raise Refused(f"{host} is {reason}")
            raise Refused(f"{host} resolves to {reason}")
        return Destination(host, port, tuple(addresses))


def _normal(host: str) -> str:
    return host.strip().rstrip(".").lower()


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
