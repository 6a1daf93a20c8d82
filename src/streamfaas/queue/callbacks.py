"""Where a job's callback may go: public unicast addresses, and the networks the operator allows.

A callback URL comes from an anonymous caller, and the worker POSTs the function's output to it:
without a rule, anyone could make the platform talk to what only it reaches (services on its
loopback, the cloud metadata address, the private network). The rule is checked twice: at submit
on an address written in the URL (400), and when the worker connects, on every address a name
resolves to then, so a name that resolves differently later (DNS rebinding) gains nothing.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from ..config import IPNetwork
from ..errors import BadRequest

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_FLAG = "--callback-allow CIDR"
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT


class CallbackRefused(BadRequest):
    """A callback URL whose address the callback policy does not allow."""


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, 6to4, NAT64), which is where it leads."""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)
    return None


def _kind(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public unicast address (None: it is one)."""
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip in _SHARED:
        return "shared (carrier-grade NAT)"
    if ip.is_private:
        return "private"
    if ip.is_reserved:
        return "reserved"
    if isinstance(ip, ipaddress.IPv6Address) and (ip.is_site_local or ip.teredo is not None):
        return "reserved"
    if not ip.is_global:
        return "non-public"
    return None


def refusal_kind(ip: IPAddress) -> str | None:
    """Why a callback may not go to ``ip`` by default: "loopback", "private" … (None: it may)."""
    embedded = _embedded_ipv4(ip)
    if embedded is not None:
        return _kind(embedded)
    return _kind(ip.__class__(int(ip)))  # without an IPv6 scope id


def _literal(host: str) -> IPAddress | None:
    """The address ``host`` is written as, None for a name. A host made only of digits and dots,
    or holding a ":", is an address to the HTTP client (which connects to it without resolving),
    so one that is not a canonical address is refused rather than taken for a name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if ":" in host or host.replace(".", "").isdigit():
        raise CallbackRefused(f"X-Callback-Url: {host!r} is not an IP address in canonical form (such as 203.0.113.7)")
    return None


class CallbackPolicy:
    """Public unicast addresses, plus the networks in ``allow``."""

    def __init__(self, allow: Sequence[IPNetwork] = ()) -> None:
        self.allow = tuple(allow)

    def allows(self, ip: IPAddress) -> bool:
        if refusal_kind(ip) is None:
            return True
        candidates = {ip.__class__(int(ip))}
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            candidates.add(embedded)
        return any(a.version == net.version and a in net for a in candidates for net in self.allow)

    def refused(self, host: str, ip: IPAddress) -> CallbackRefused:
        kind = refusal_kind(ip) or "non-public"
        shown = host if host == str(ip) else f"{host} ({ip})"
        return CallbackRefused(
            f"X-Callback-Url: {shown} is a {kind} address; callbacks go only to public addresses "
            f"unless the operator allows its network with {_FLAG}"
        )

    def check_url(self, url: str) -> None:
        """Raise CallbackRefused if ``url``'s host is an address this policy refuses. A name is
        checked when the worker connects (``PolicyResolver``), on the addresses it has then."""
        try:
            host = URL(url).raw_host or ""
        except ValueError:
            raise CallbackRefused(f"X-Callback-Url: not a URL: {url!r}") from None
        ip = _literal(host)
        if ip is not None and not self.allows(ip):
            raise self.refused(host, ip)

    def describe(self) -> str:
        allowed = ", ".join(str(n) for n in self.allow)
        return "public addresses" + (f" and {allowed}" if allowed else " only")


def shown_callback(url: str) -> str:
    """A callback URL as errors and logs name it: its origin only. The caller chose the rest, and
    a receiver's credentials often live there (``https://user:password@…``, a token in the path
    or the query, as webhook URLs have)."""
    try:
        origin = URL(url).origin()
    except ValueError:
        return "(not a URL)"
    return str(origin)


def listed_callback(url: str | None) -> str | None:
    """A callback URL as `queue list` shows it: whole, for the admin to tell receivers apart, but
    for a password in it, which is the receiver's, not the admin's."""
    if not url:
        return url
    try:
        parsed = URL(url)
        return str(parsed.with_password("***")) if parsed.password else url
    except ValueError:
        return "(not a URL)"


def scrub_callback(text: str, url: str) -> str:
    """``text`` (an exception's) with the callback URL, as given or as yarl prints it, shown by
    its origin only, and its password (where one could be told from other words) put out of sight."""
    shown = shown_callback(url)
    try:
        parsed = URL(url)
    except ValueError:
        return text.replace(url, shown)
    for form in {url, str(parsed), parsed.human_repr()}:
        text = text.replace(form, shown)
    for secret in {parsed.raw_password, parsed.password}:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


class PolicyResolver(AbstractResolver):
    """Resolves callback hosts and keeps only the addresses ``policy`` allows: the connection can
    go nowhere else. Raises CallbackRefused when none is left."""

    def __init__(self, policy: CallbackPolicy, resolver: AbstractResolver | None = None) -> None:
        self._policy = policy
        self._resolver = resolver or DefaultResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._resolver.resolve(host, port, family)
        kept: list[ResolveResult] = []
        first_refused: IPAddress | None = None
        for result in results:
            try:
                ip = ipaddress.ip_address(result["host"])
            except ValueError:
                continue
            if self._policy.allows(ip):
                kept.append(result)
            elif first_refused is None:
                first_refused = ip
        if not kept:
            if first_refused is None:
                raise CallbackRefused(f"X-Callback-Url: {host} resolves to no usable address")
            raise self._policy.refused(host, first_refused)
        return kept

    async def close(self) -> None:
        await self._resolver.close()
