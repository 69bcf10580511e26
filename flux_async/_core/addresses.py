"""Which network addresses a download may reach: the download guard's rules, without I/O.

An image URL is not always the service's: a callback body (whose only proof is a
token in a URL), an ``on_unclaimed`` hook's task, a URL a user typed. Fetching
whatever such a URL names would let its author make a server that uses this
library send requests into its own network (SSRF): the loopback's admin pages,
a database's HTTP port, the cloud's metadata service and the credentials it
hands out. So downloads refuse addresses that are not on the public internet:

==================  ====================================================================
cloud metadata      169.254.169.254 (AWS, GCP, Azure, OpenStack...), 169.254.170.2 and
                    .23 (AWS ECS, EKS), 100.100.100.200 (Alibaba Cloud), fd00:ec2::254
                    and ::23 (AWS over IPv6)
unspecified         0.0.0.0/8 and ``::`` (Linux connects 0.0.0.0 to the machine itself)
loopback            127.0.0.0/8, ``::1``
link-local          169.254.0.0/16, fe80::/10
multicast           224.0.0.0/4, ff00::/8
private             10/8, 172.16/12, 192.168/16, 100.64/10 (carrier-grade NAT),
                    fc00::/7 (unique local), fec0::/10 (site-local)
reserved            anything else that is not globally routable (240/4, documentation
                    and benchmarking ranges, ...)
==================  ====================================================================

An IPv6 address that stands for an IPv4 one (``::ffff:127.0.0.1``, NAT64's
``64:ff9b::/96``, 6to4's ``2002::/16``) is judged by the IPv4 address it carries.

What is checked is an *address*, the one a connection is made to, after DNS has
answered: a host name proves nothing (``localhost``, a name whose DNS answer
changes between a check and a connect). ``_edge.guard`` applies these rules where
the connection is made; this module only decides.

``download_allow`` lets named exceptions through, each an address or a network
(``10.0.0.0/8``), optionally with a port (``127.0.0.1:8080``, ``[::1]:8080``,
or a URL's address and port: ``http://127.0.0.1:8080``). A cloud metadata
address passes only when an entry names that very address: an allowed network
that merely contains it (``169.254.0.0/16``) does not open it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

import attrs

__all__ = [
    "Allowed",
    "DownloadGuard",
    "IPAddress",
    "address_refusal",
    "allowed",
    "literal_address",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_METADATA = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, Oracle, DigitalOcean, Huawei...
        "169.254.170.2",  # AWS ECS task metadata and credentials
        "169.254.170.23",  # AWS EKS pod identity
        "100.100.100.200",  # Alibaba Cloud
        "fd00:ec2::254",  # AWS instance metadata over IPv6
        "fd00:ec2::23",  # AWS EKS pod identity over IPv6
    )
)
_PRIVATE = tuple(
    ipaddress.ip_network(n)
    for n in (
        "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
        "100.64.0.0/10",  # shared address space (RFC 6598): a provider's internal network
        "fc00::/7",  # unique local
        "fec0::/10",  # site-local (deprecated, still routed by some)
    )
)
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for, when it stands for one."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def address_refusal(address: IPAddress) -> str | None:
    """Why a download may not reach ``address`` (one of the table's names), or None."""
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        return address_refusal(embedded)
    if address in _METADATA:
        return "cloud metadata"
    if address.is_unspecified or address in _THIS_NETWORK:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if any(address in network for network in _PRIVATE):
        return "private"
    if not address.is_global:
        return "reserved"
    return None


def literal_address(host: str) -> IPAddress | None:
    """``host`` as an address when it is one (``[::1]``'s brackets and a zone allowed)."""
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


@attrs.frozen
class Allowed:
    """One ``download_allow`` entry: a network (one address is a /32 or /128), maybe a port."""

    network: IPNetwork
    port: int | None = None

    def admits(self, address: IPAddress, port: int, *, exactly: bool) -> bool:
        """Whether this entry lets ``address:port`` through; ``exactly``: only if it
        names this one address (how a metadata address is opened)."""
        if self.port is not None and self.port != port:
            return False
        if exactly and self.network.num_addresses != 1:
            return False
        embedded = _embedded_ipv4(address)
        return address in self.network or (embedded is not None and embedded in self.network)

    def __str__(self) -> str:
        if self.port is None:
            return str(self.network)
        host = self.network.network_address
        return f"[{host}]:{self.port}" if host.version == 6 else f"{host}:{self.port}"


_NOT_AN_ENTRY = (
    "is not an address, a network or address:port (a host name is not accepted: "
    "the guard checks the addresses DNS answers, and a name's answer may change)"
)


def allowed(entry: object) -> Allowed | str:
    """``entry`` as an ``Allowed``, or why it is not one (a sentence)."""
    if not isinstance(entry, str):
        return f"must be a string, got {type(entry).__name__}"
    text = entry.strip()
    port: int | None = None
    host = text
    if "://" in text:
        try:
            parts = urlsplit(text)
            port = parts.port
        except ValueError:
            return f"{entry!r} {_NOT_AN_ENTRY}"
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return f"{entry!r} {_NOT_AN_ENTRY}"
        host = parts.hostname
        port = port if port is not None else (443 if parts.scheme == "https" else 80)
    elif text.startswith("[") and "]:" in text:
        host, _, number = text[1:].partition("]:")
        port = _port(number)
        if port is None:
            return f"{entry!r}: the port must be a number from 1 to 65535"
    elif text.count(":") == 1:
        host, _, number = text.partition(":")
        port = _port(number)
        if port is None:
            return f"{entry!r}: the port must be a number from 1 to 65535"
    try:
        network = ipaddress.ip_network(host, strict=True)
    except ValueError as exc:
        if "/" in host and literal_address(host.split("/")[0]) is not None:
            return f"{entry!r}: {exc}"  # e.g. host bits set: 10.1.2.3/8
        return f"{entry!r} {_NOT_AN_ENTRY}"
    if port is not None and network.num_addresses != 1:
        return f"{entry!r}: a port goes with one address, not a network"
    return Allowed(network, port)


def _port(text: str) -> int | None:
    return int(text) if text.isdigit() and 1 <= int(text) <= 65535 else None


@attrs.frozen
class DownloadGuard:
    """The download guard's settings: on or off, and the addresses let through."""

    enabled: bool = True
    allow: tuple[Allowed, ...] = ()

    @classmethod
    def from_settings(cls, enabled: bool, entries: Iterable[str]) -> DownloadGuard:
        """From the client's settings, whose entries were checked already."""
        parsed = [allowed(entry) for entry in entries]
        return cls(enabled, tuple(a for a in parsed if isinstance(a, Allowed)))

    def refusal(self, address: IPAddress | str, port: int) -> str | None:
        """Why a download may not connect to ``address:port``, or None when it may."""
        if not self.enabled:
            return None
        if isinstance(address, str):
            parsed = literal_address(address)
            if parsed is None:  # not an address at all: nothing to connect to safely
                return "not an address"
            address = parsed
        why = address_refusal(address)
        if why is None:
            return None
        exactly = why == "cloud metadata"
        if any(entry.admits(address, port, exactly=exactly) for entry in self.allow):
            return None
        return why
