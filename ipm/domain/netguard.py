"""The SSRF guard for webhook endpoints: which URLs and addresses ipm may call.

Theory of operation. A webhook endpoint URL is checked twice:

1. When a subscription is created or changed, :func:`check_url` checks the
   text: scheme, no userinfo, a sane host and port, and, when the host is an
   IP literal, the address itself. Host names are not resolved here, since
   the answer may change before the first delivery anyway.
2. When the transport opens a connection, :func:`resolve_and_check` resolves
   the host and checks *every* address in the answer, and the transport then
   connects to one of those checked addresses, never to the name again. A
   name that pointed at a public address at creation time and at 127.0.0.1
   now (DNS rebinding) is refused at that moment.

An IP literal is read the way the C library would read it, so that a
notation cannot smuggle a private address past the check: ``2130706433``,
``0x7f000001``, ``0177.0.0.1`` and ``127.1`` all mean 127.0.0.1. An IPv6
address that embeds an IPv4 address (mapped, compatible, NAT64, 6to4) is
judged by the IPv4 address it leads to.

An address is refused when it is not publicly routable (see
:data:`REFUSED_IPV4` and :data:`REFUSED_IPV6`) or is a cloud metadata
service, unless the :class:`NetworkPolicy` allows a network that holds it.
Metadata addresses need their own single-address entry: allowing
``169.254.0.0/16`` for a lab network does not open ``169.254.169.254``.

Nothing here does I/O; name resolution comes in as a callable shaped like
:func:`socket.getaddrinfo`.
"""

from __future__ import annotations

import errno
import ipaddress
import re
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs

from ipm.domain.errors import InvalidRequest, Problem

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

Resolver = Callable[[str, int], Iterable[Sequence[Any]]]
"""Resolves ``(host, port)`` like :func:`socket.getaddrinfo`.

Only the address in each entry's sockaddr (``entry[4][0]``) is used.
"""

MAX_URL_LENGTH = 2048
DEFAULT_POINTER = "/endpoint_url"

_v4 = ipaddress.IPv4Network
_v6 = ipaddress.IPv6Network

# Most specific first: the first match names the reason in the error.
REFUSED_IPV4: tuple[tuple[IPNetwork, str], ...] = (
    (_v4("0.0.0.0/32"), "unspecified"),
    (_v4("0.0.0.0/8"), "'this network'"),
    (_v4("10.0.0.0/8"), "private"),
    (_v4("100.64.0.0/10"), "shared (carrier-grade NAT)"),
    (_v4("127.0.0.0/8"), "loopback"),
    (_v4("169.254.0.0/16"), "link-local"),
    (_v4("172.16.0.0/12"), "private"),
    (_v4("192.0.0.0/24"), "IETF protocol assignment"),
    (_v4("192.0.2.0/24"), "documentation"),
    (_v4("192.88.99.0/24"), "reserved (6to4 relay)"),
    (_v4("192.168.0.0/16"), "private"),
    (_v4("198.18.0.0/15"), "benchmarking"),
    (_v4("198.51.100.0/24"), "documentation"),
    (_v4("203.0.113.0/24"), "documentation"),
    (_v4("224.0.0.0/4"), "multicast"),
    (_v4("255.255.255.255/32"), "broadcast"),
    (_v4("240.0.0.0/4"), "reserved"),
)

REFUSED_IPV6: tuple[tuple[IPNetwork, str], ...] = (
    (_v6("::/128"), "unspecified"),
    (_v6("::1/128"), "loopback"),
    (_v6("64:ff9b:1::/48"), "local-use NAT64"),
    (_v6("100::/64"), "discard-only"),
    (_v6("2001::/32"), "Teredo tunnel"),
    (_v6("2001:2::/48"), "benchmarking"),
    (_v6("2001:db8::/32"), "documentation"),
    (_v6("2001::/23"), "IETF protocol assignment"),
    (_v6("3fff::/20"), "documentation"),
    (_v6("fc00::/7"), "unique-local"),
    (_v6("fe80::/10"), "link-local"),
    (_v6("fec0::/10"), "site-local"),
    (_v6("ff00::/8"), "multicast"),
)

METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(text)
    for text in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, Oracle
        "169.254.0.23",  # Tencent Cloud
        "fd20:ce::254",  # GCP metadata over IPv6
        "169.254.170.2",  # AWS ECS task metadata
        "169.254.170.23",  # AWS EKS pod identity
        "fd00:ec2::254",  # AWS instance metadata over IPv6
        "fd00:ec2::23",  # AWS EKS pod identity over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud (classic)
        "168.63.129.16",  # Azure platform endpoint (WireServer)
    )
)

_GLOBAL_UNICAST_V6 = _v6("2000::/3")
_SIXTOFOUR = _v6("2002::/16")
_NAT64 = _v6("64:ff9b::/96")
_LOCAL_NAT64 = _v6("64:ff9b:1::/48")
_TRANSLATED = _v6("::ffff:0:0:0/96")  # SIIT's IPv4-translated addresses
_COMPATIBLE = _v6("::/96")

_DEFAULT_PORTS = {"http": 80, "https": 443}
_FORBIDDEN_CHARS = re.compile(r"[\x00-\x20\x7f\\]")
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_NUMERIC_LABEL = re.compile(r"0x[0-9a-f]*|[0-9]+")


class UnsafeUrl(InvalidRequest):
    """A webhook endpoint URL, or the address it leads to, that ipm refuses."""

    def __init__(self, reason: str, *, pointer: str = DEFAULT_POINTER) -> None:
        super().__init__(f"endpoint URL refused: {reason}", [Problem(pointer, reason)])
        self.reason = reason


class UnresolvedHost(UnsafeUrl):
    """A host name with no usable address (unknown, or the lookup failed)."""


def _to_networks(values: Iterable[str | IPNetwork]) -> tuple[IPNetwork, ...]:
    return tuple(_to_network(value) for value in values)


def _to_network(value: str | IPNetwork) -> IPNetwork:
    if not isinstance(value, str):
        network = value
    else:
        try:
            # strict: "10.0.0.1/8" is more likely a typo than a wish for 10/8.
            network = ipaddress.ip_network(value.strip(), strict=True)
        except ValueError as exc:
            raise ValueError(f"not a network in CIDR notation: {value!r}") from exc
    if getattr(network.network_address, "scope_id", None):
        # fe80::1%eth0: endpoint URLs with a zone id are refused, so such an
        # entry would open nothing while it seemed to.
        raise ValueError(f"a network with a zone id opens nothing: {value!r}")

    return network


@attrs.frozen
class NetworkPolicy:
    """What a deployment lets webhook endpoints reach beyond the public internet.

    ``allow_networks`` opens ranges the guard refuses by default (a test's
    127.0.0.1, a company's 10.0.0.0/8). ``require_https`` is separate on
    purpose: allowing loopback for local development does not, by itself,
    permit plain http.
    """

    allow_networks: tuple[IPNetwork, ...] = attrs.field(
        default=(), converter=_to_networks
    )
    require_https: bool = True

    @classmethod
    def from_strings(
        cls, networks: Iterable[str], *, require_https: bool = True
    ) -> NetworkPolicy:
        """Build a policy from CIDR text such as ``"10.0.0.0/8"`` or ``"::1"``.

        A bare address means that address alone. Host bits set after the
        prefix (``"10.0.0.1/8"``) raise :class:`ValueError`.
        """
        return cls(allow_networks=_to_networks(networks), require_https=require_https)

    def allows(self, address: IPAddress) -> bool:
        """Whether an allowed network holds this address (or the IPv4 it wraps)."""
        address = normalise_address(address)
        metadata = _metadata_behind(address)
        if metadata is not None:
            # Metadata services hand out credentials: only an entry for that
            # very address opens one, never a wider range that covers it
            # (nor one covering a 6to4 address whose relay it is).
            return any(
                net.num_addresses == 1 and net.network_address in (address, metadata)
                for net in self.allow_networks
            )

        return any(
            net.version == address.version and address in net
            for net in self.allow_networks
        )


@attrs.frozen
class ParsedUrl:
    """An endpoint URL that passed :func:`check_url`, in normalised parts."""

    scheme: str
    host: str
    """Lower-case name without a trailing dot, or an IP in canonical text."""
    port: int
    target: str
    """Path and query as sent on the request line; ``/`` when empty."""
    address: IPAddress | None
    """The IP when the host is a literal; ``None`` for a name."""

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.port == _DEFAULT_PORTS[self.scheme]:
            return host

        return f"{host}:{self.port}"

    @property
    def origin(self) -> str:
        """Scheme, host and port: safe for logs, unlike a query string."""
        return f"{self.scheme}://{self.host_header}"

    @property
    def url(self) -> str:
        return f"{self.origin}{self.target}"


def check_url(
    url: str, policy: NetworkPolicy, *, pointer: str = DEFAULT_POINTER
) -> ParsedUrl:
    """Check an endpoint URL's text; raise :class:`UnsafeUrl` if it is refused.

    A host name is not resolved here (see :func:`resolve_and_check`), except
    that ``localhost`` and its sub-domains count as loopback.
    """

    def refuse(reason: str) -> UnsafeUrl:
        return UnsafeUrl(reason, pointer=pointer)

    if len(url) > MAX_URL_LENGTH:
        raise refuse(f"the URL is longer than {MAX_URL_LENGTH} characters")
    if not url.isascii() or _FORBIDDEN_CHARS.search(url):
        raise refuse(
            "the URL contains whitespace, a control character, a backslash or "
            "non-ASCII text; percent-encode the path and use the "
            "punycode (xn--) form of an international host name"
        )

    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        raise refuse("the URL is not valid") from None

    _check_scheme(parts.scheme, policy, refuse)
    # A fragment never reaches the receiver; refusing it keeps the stored
    # URL equal to what is called.
    if "#" in url:
        raise refuse("a fragment (#...) is never sent; remove it")

    host, port = _split_netloc(parts.netloc, parts.scheme, refuse)
    address = _read_host(host, refuse)

    if address is None:
        host = host.rstrip(".")
        _loopback_of_name(host, policy, pointer)  # refuses if none is allowed
    else:
        host = str(address)
        check_address(address, policy, pointer=pointer)

    target = parts.path or "/"
    if parts.query:
        target = f"{target}?{parts.query}"

    return ParsedUrl(parts.scheme, host, port, target, address)


_Refuse = Callable[[str], UnsafeUrl]


def _check_scheme(scheme: str, policy: NetworkPolicy, refuse: _Refuse) -> None:
    if scheme not in _DEFAULT_PORTS:
        raise refuse("the scheme must be https (or http where allowed)")
    if scheme == "http" and policy.require_https:
        raise refuse("the scheme must be https")


def _split_netloc(netloc: str, scheme: str, refuse: _Refuse) -> tuple[str, int]:
    if not netloc:
        raise refuse("the URL has no host")
    if "@" in netloc:
        raise refuse("a user name or password is not allowed in the URL")

    if netloc.startswith("["):
        host, bracket, rest = netloc[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise refuse("the bracketed IPv6 host is malformed")
        host = f"[{host}]"
        port_text = rest[1:] if rest else None
    else:
        host, colon, port_text_ = netloc.partition(":")
        port_text = port_text_ if colon else None

    if not host:
        raise refuse("the URL has no host")

    return host.lower(), _read_port(port_text, scheme, refuse)


def _read_port(text: str | None, scheme: str, refuse: _Refuse) -> int:
    if text is None or text == "":
        return _DEFAULT_PORTS[scheme]

    # int() alone would accept "+80", " 80" and non-ASCII digits.
    if not text.isascii() or not text.isdigit() or len(text) > 5:
        raise refuse("the port is invalid")
    port = int(text)
    if not 1 <= port <= 65535:
        raise refuse("the port is outside 1-65535")

    return port


def _read_host(host: str, refuse: _Refuse) -> IPAddress | None:
    """The IP a literal host means, or ``None`` for a valid host name."""
    if host.startswith("["):
        return _read_bracketed(host[1:-1], refuse)

    labels = host.split(".")
    if len(labels) > 1 and labels[-1] == "":
        labels.pop()  # one trailing dot: a fully qualified name

    # As in the WHATWG URL standard: a numeric last label makes the whole
    # host an IPv4 literal, so it cannot be a name that inet_aton reads as IP.
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        address = read_ipv4(".".join(labels))
        if address is None:
            raise refuse("the numeric (IPv4) host is malformed")
        return address

    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise refuse("the host name is invalid")

    return None


def _read_bracketed(text: str, refuse: _Refuse) -> IPAddress:
    if "%" in text:
        raise refuse("an IPv6 zone is not allowed in the URL")

    try:
        return ipaddress.IPv6Address(text)
    except ValueError:
        raise refuse("the IPv6 host is malformed") from None


def read_ipv4(text: str) -> ipaddress.IPv4Address | None:
    """Read an IPv4 address as C's ``inet_aton`` does, or ``None``.

    One to four dot-separated parts, each decimal, hex (``0x``) or octal
    (leading ``0``); the last part fills the bytes that remain, so ``127.1``
    is 127.0.0.1 and ``2130706433`` is too.
    """
    parts = text.split(".")
    if len(parts) > 4:
        return None

    numbers = [_read_ipv4_part(part) for part in parts]
    if any(number is None for number in numbers):
        return None

    *head, last = [n for n in numbers if n is not None]
    if any(n > 255 for n in head) or last >= 256 ** (4 - len(head)):
        return None

    value = last
    for index, number in enumerate(head):
        value += number << (8 * (3 - index))

    return ipaddress.IPv4Address(value)


def _read_ipv4_part(part: str) -> int | None:
    if part.startswith(("0x", "0X")):
        digits, base = part[2:], 16
        if digits == "":
            return 0  # inet_aton and WHATWG both read a bare "0x" as 0
    elif len(part) > 1 and part.startswith("0"):
        digits, base = part[1:], 8
    else:
        digits, base = part, 10

    if not digits or len(digits) > 32 or not digits.isascii():
        return None
    try:
        return int(digits, base) if digits.isalnum() else None
    except ValueError:
        return None


_LOOPBACK: tuple[IPAddress, ...] = (
    ipaddress.IPv4Address("127.0.0.1"),
    ipaddress.IPv6Address("::1"),
)


def _loopback_of_name(
    host: str, policy: NetworkPolicy, pointer: str
) -> list[IPAddress] | None:
    """The loopback addresses a ``localhost`` name may use; None for other names.

    RFC 6761: localhost names are loopback whatever DNS says, and never go
    to a resolver (which may not know ``hooks.localhost``, or may answer
    ``::1`` where only 127.0.0.1 is allowed). So the name means exactly the
    loopback addresses the policy allows, at create and at connect alike.
    """
    if host != "localhost" and not host.endswith(".localhost"):
        return None
    allowed = [address for address in _LOOPBACK if policy.allows(address)]
    if not allowed:
        raise UnsafeUrl(f"localhost is a loopback name{_ALLOW_HINT}", pointer=pointer)

    return allowed


def normalise_address(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 wrapper leads to, or the address itself.

    Mapped (``::ffff:a.b.c.d``), compatible (``::a.b.c.d``) and NAT64
    (``64:ff9b::a.b.c.d``) addresses all end up at their IPv4 address.
    """
    if isinstance(address, ipaddress.IPv4Address):
        return address

    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64 or (address in _COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)

    return address


def _metadata_behind(address: IPAddress) -> IPAddress | None:
    """The cloud metadata address that ``address`` (normalised) is, or that
    an IPv6 address may lead to by a translation or tunnel, or None."""
    if address in METADATA_ADDRESSES:
        return address
    if isinstance(address, ipaddress.IPv6Address):
        for inner in _embedded_ipv4(address):
            if inner in METADATA_ADDRESSES:
                return inner

    return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address may carry to: a 6to4 relay,
    Teredo's server and client, SIIT's translated address, an ISATAP
    interface's, and a local-use
    NAT64 prefix (RFC 8215) in each of RFC 6052's layouts (/48, /56, /64,
    /96), since which one a site uses cannot be told from the address."""
    value = int(address)
    found: list[int] = []
    if address in _LOCAL_NAT64:
        found += [
            (value >> 64 & 0xFFFF) << 16 | value >> 40 & 0xFFFF,  # /48
            (value >> 64 & 0xFF) << 24 | value >> 32 & 0xFFFFFF,  # /56
            value >> 24 & 0xFFFFFFFF,  # /64
            value & 0xFFFFFFFF,  # /96
        ]
    if address in _TRANSLATED:
        found.append(value & 0xFFFFFFFF)
    if (value >> 32) & 0xFCFFFFFF == 0x00005EFE:
        # An ISATAP interface id (::0:5efe:a.b.c.d, its u and g bits in
        # any state: 100, 200, 300) in any /64: the IPv4 it tunnels to.
        found.append(value & 0xFFFFFFFF)
    carried = [ipaddress.IPv4Address(each) for each in found]
    if address.sixtofour is not None:
        carried.append(address.sixtofour)
    if address.teredo is not None:
        carried += address.teredo

    return carried


def classify_address(address: IPAddress) -> str | None:
    """Why the guard refuses this address by default, or ``None`` if public."""
    address = normalise_address(address)
    if address in METADATA_ADDRESSES:
        return "cloud metadata"

    table = REFUSED_IPV4 if address.version == 4 else REFUSED_IPV6
    for network, reason in table:
        if address in network:
            return reason

    if isinstance(address, ipaddress.IPv6Address):
        if _metadata_behind(address) is not None:
            return "tunnel to a cloud metadata"  # ISATAP in a public prefix
        return _classify_global_ipv6(address)

    return None


def _classify_global_ipv6(address: ipaddress.IPv6Address) -> str | None:
    if address not in _GLOBAL_UNICAST_V6:
        return "reserved"

    # 6to4 traffic goes to a relay at the embedded IPv4 address.
    if address in _SIXTOFOUR and address.sixtofour is not None:
        inner = classify_address(address.sixtofour)
        if inner is not None:
            return f"6to4 over a {inner}"

    return None


def check_address(
    address: IPAddress, policy: NetworkPolicy, *, pointer: str = DEFAULT_POINTER
) -> None:
    """Raise :class:`UnsafeUrl` unless ipm may connect to this address."""
    reason = _refusal(address, policy)
    if reason is None:
        return

    if "metadata" not in reason and _metadata_behind(normalise_address(address)):
        reason = f"{reason} leading to a cloud metadata"
    shown = str(address)
    if normalise_address(address) != address:
        shown = f"{address} (= {normalise_address(address)})"
    hint = "" if reason.endswith("cloud metadata") else _ALLOW_HINT
    raise UnsafeUrl(f"{shown} is refused ({reason} address){hint}", pointer=pointer)


_ALLOW_HINT = "; the host may allow its network (allow_networks, --allow-network)"


def _refusal(address: IPAddress, policy: NetworkPolicy) -> str | None:
    if policy.allows(address):
        return None

    return classify_address(address)


def resolve_and_check(
    host: str,
    port: int,
    policy: NetworkPolicy,
    resolver: Resolver,
    *,
    pointer: str = DEFAULT_POINTER,
) -> list[IPAddress]:
    """Resolve a host and return its addresses, all checked, in answer order.

    One unsafe address refuses the whole answer: a resolver that returns a
    public and a private address must not get to pick which one is used.
    An IP literal (any notation :func:`check_url` accepts) is not resolved.
    IPv4-mapped answers come back as plain IPv4.
    """
    literal = _read_any_host(host, pointer)
    if literal is not None:
        check_address(literal, policy, pointer=pointer)
        return [_connectable(literal)]
    loopback = _loopback_of_name(host, policy, pointer)
    if loopback is not None:
        return loopback

    addresses = _resolve(host, port, resolver, pointer)
    for address in addresses:
        reason = _refusal(address, policy)
        if reason is not None:
            # The address itself stays out of the message: the API must not
            # become a way to read an internal DNS zone.
            raise UnsafeUrl(
                f"{host} resolves to a refused address ({reason})", pointer=pointer
            )

    return addresses


def _read_any_host(host: str, pointer: str) -> IPAddress | None:
    def refuse(reason: str) -> UnsafeUrl:
        return UnsafeUrl(reason, pointer=pointer)

    host = host.lower()
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # ParsedUrl.host holds IPv6 without brackets

    return _read_host(host, refuse)


SHORT_HERE = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))
"""What a machine runs out of (descriptors, buffers, memory): a lookup or a
connection failing for one of these says nothing of the endpoint. Not
EADDRNOTAVAIL: it also means no route to the address family (an IPv6
endpoint from an IPv4-only host), which lasts."""


def _resolve(host: str, port: int, resolver: Resolver, pointer: str) -> list[IPAddress]:
    try:
        answer = list(resolver(host, port))
    except OSError as exc:
        if exc.errno in SHORT_HERE:
            raise  # this machine's shortage, not the name's: said as such
        raise UnresolvedHost(f"{host} does not resolve", pointer=pointer) from None
    except UnicodeError:
        raise UnresolvedHost(f"{host} does not resolve", pointer=pointer) from None

    addresses: list[IPAddress] = []
    for entry in answer:
        address = _answer_address(entry)
        if address is not None and address not in addresses:
            addresses.append(address)

    if not addresses:
        raise UnresolvedHost(f"{host} has no usable address", pointer=pointer)

    return addresses


def _answer_address(entry: Sequence[Any]) -> IPAddress | None:
    try:
        text = entry[4][0]
    except (IndexError, TypeError):
        return None
    if not isinstance(text, str):
        return None  # e.g. an (int, bytes) sockaddr from a build without IPv6

    try:
        # A link-local answer may carry a zone ("fe80::1%eth0"); the zone
        # does not change how the address is classified.
        address = ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return None

    return _connectable(address)


def _connectable(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped

    return address
