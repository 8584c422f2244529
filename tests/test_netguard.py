"""The SSRF guard: which endpoint URLs and addresses webhooks may reach.

Nothing here opens a socket: public addresses are only classified, and
name resolution is a fake resolver.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipm.domain.errors import InvalidRequest
from ipm.domain.netguard import (
    METADATA_ADDRESSES,
    REFUSED_IPV4,
    NetworkPolicy,
    UnresolvedHost,
    UnsafeUrl,
    check_address,
    check_url,
    classify_address,
    normalise_address,
    read_ipv4,
    resolve_and_check,
)

DEFAULT = NetworkPolicy()
LOOPBACK_DEV = NetworkPolicy.from_strings(["127.0.0.0/8", "::1"], require_https=False)
PUBLIC_V4 = "93.184.216.34"
PUBLIC_V6 = "2606:2800:220:1:248:1893:25c8:1946"


def fake_resolver(answers: dict[str, list[str]]) -> Callable[..., list[Any]]:
    """A getaddrinfo look-alike that answers from a table, no DNS involved."""

    def resolve(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [_entry(address, port) for address in answers[host]]

    return resolve


def _entry(address: str, port: int) -> tuple[Any, ...]:
    if ":" in address:
        return (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, port, 0, 0))
    return (socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))


def refusal(url: str, policy: NetworkPolicy = DEFAULT) -> UnsafeUrl:
    with pytest.raises(UnsafeUrl) as caught:
        check_url(url, policy)
    return caught.value


# --- addresses in every notation ------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.1",
        "127.0.1",
        "2130706433",
        "0x7f000001",
        "0X7F000001",
        "0x7f.0.0.1",
        "0177.0.0.1",
        "127.0.0.1.",
        "[::1]",
        "[0:0:0:0:0:0:0:1]",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
        "[::127.0.0.1]",
        "10.0.0.1",
        "172.16.0.1",
        "192.168.1.1",
        "100.64.0.1",
        "169.254.169.254",
        "169.254.1.1",
        "100.100.100.200",
        "198.18.0.1",
        "192.0.2.1",
        "[fe80::1]",
        "[fc00::1]",
        "[fd00:ec2::254]",
        "0.0.0.0",
        "0",
        "0.1.2.3",
        "[::]",
        "224.0.0.1",
        "[ff02::1]",
        "255.255.255.255",
        "240.0.0.1",
        "[64:ff9b::a00:1]",
        "[64:ff9b::127.0.0.1]",
        "[2002:7f00:1::]",
        "[2002:a00:1::1]",
        "[2001:db8::1]",
        "[2001::1]",
    ],
)
def test_non_public_addresses_are_refused_in_any_notation(host: str) -> None:
    """A URL whose host is a non-public IP, however written, is refused."""
    url = f"https://{host}/hook"

    error = refusal(url)

    assert error.status == 400
    assert error.code == "invalid_request"
    assert isinstance(error, InvalidRequest)
    assert [problem.pointer for problem in error.details] == ["/endpoint_url"]
    assert "is refused" in error.message


def test_the_error_names_the_address_behind_a_notation() -> None:
    """The message shows what an odd notation meant, so the user sees why."""
    error = refusal("https://[::ffff:7f00:1]/")

    assert "127.0.0.1" in error.reason
    assert "loopback" in error.reason


def test_the_pointer_is_the_callers() -> None:
    """The problem points where the caller says the URL came from."""
    with pytest.raises(UnsafeUrl) as caught:
        check_url("https://10.0.0.1/", DEFAULT, pointer="/webhook/endpoint_url")

    assert caught.value.details[0].pointer == "/webhook/endpoint_url"


@pytest.mark.parametrize("address", [PUBLIC_V4, PUBLIC_V6, "2002:5db8:d822::1"])
def test_public_addresses_pass_check_address(address: str) -> None:
    """A public address (only classified, never contacted) passes."""
    ip = ipaddress.ip_address(address)

    check_address(ip, DEFAULT)

    assert classify_address(ip) is None


def test_a_public_literal_url_is_accepted_and_normalised() -> None:
    """A public IP literal in hex comes back in canonical form."""
    parsed = check_url("https://0x5db8d822:8443/in?x=1", DEFAULT)

    assert parsed.host == PUBLIC_V4
    assert parsed.address == ipaddress.IPv4Address(PUBLIC_V4)
    assert parsed.port == 8443
    assert parsed.target == "/in?x=1"
    assert parsed.origin == f"https://{PUBLIC_V4}:8443"


# --- the allow list -------------------------------------------------------


def test_an_allowed_loopback_network_is_accepted() -> None:
    """A policy that allows loopback lets a local receiver through."""
    parsed = check_url("http://127.0.0.1:8080/hook", LOOPBACK_DEV)

    assert parsed.host_header == "127.0.0.1:8080"
    check_address(ipaddress.ip_address("::1"), LOOPBACK_DEV)


def test_an_allowed_network_also_covers_its_mapped_ipv6_form() -> None:
    """Allowing 127.0.0.0/8 also allows ::ffff:127.0.0.1, the same place."""
    parsed = check_url("http://[::ffff:127.0.0.1]:8080/", LOOPBACK_DEV)

    assert parsed.host_header == "[::ffff:7f00:1]:8080"


def test_allowing_one_range_does_not_open_another() -> None:
    """Allowing loopback leaves private networks refused."""
    refusal("http://10.0.0.1/", LOOPBACK_DEV)
    refusal("http://[fc00::1]/", LOOPBACK_DEV)


def test_an_ipv6_allow_entry_never_covers_ipv4() -> None:
    """An IPv6 network in the allow list does not match an IPv4 address."""
    policy = NetworkPolicy.from_strings(["::/0"])

    with pytest.raises(UnsafeUrl):
        check_address(ipaddress.ip_address("10.0.0.1"), policy)


def test_metadata_stays_refused_under_a_wider_allowed_range() -> None:
    """Allowing 169.254.0.0/16 does not open the metadata service."""
    policy = NetworkPolicy.from_strings(["169.254.0.0/16", "fc00::/7"])

    check_address(ipaddress.ip_address("169.254.1.1"), policy)
    for address in METADATA_ADDRESSES:
        with pytest.raises(UnsafeUrl, match="metadata"):
            check_address(address, policy)


@pytest.mark.parametrize("allowed", ["::/0", "2002::/16", "2002:a9fe::/32"])
def test_a_6to4_address_over_metadata_stays_refused_under_a_wider_range(
    allowed: str,
) -> None:
    """Regression: 2002:a9fe:a9fe:: (6to4 whose relay is 169.254.169.254)
    passed an allow list covering it, though the metadata address itself
    needs an entry of its own."""
    policy = NetworkPolicy.from_strings([allowed])

    check_address(ipaddress.ip_address("2002:808:808::"), policy)  # 8.8.8.8
    for address in METADATA_ADDRESSES:
        if address.version != 4:
            continue
        wrapped = ipaddress.IPv6Address((0x2002 << 112) | (int(address) << 80))
        with pytest.raises(UnsafeUrl, match="metadata") as refused:
            check_address(wrapped, policy)
        assert "allow_networks" not in str(refused.value)
    exact = NetworkPolicy.from_strings([allowed, "169.254.169.254/32"])
    check_address(ipaddress.ip_address("2002:a9fe:a9fe::"), exact)


@pytest.mark.parametrize(
    ("carrier", "allowed"),
    [
        ("64:ff9b:1::a9fe:a9fe", "64:ff9b:1::/48"),  # local-use NAT64, /96
        ("64:ff9b:1:fffe::a9fe:a9fe", "64:ff9b:1::/48"),
        ("64:ff9b:1:a9fe:a9:fe00::", "64:ff9b:1::/48"),  # the /48 layout
        ("64:ff9b:1:a9:fe:a9fe::", "::/0"),  # the /56 layout
        ("64:ff9b:1::a9:fea9:fe00:0", "::/0"),  # the /64 layout
        ("2001:0:a9fe:a9fe::5601:5601", "2001::/32"),  # Teredo
        ("::ffff:0:a9fe:a9fe", "::/0"),  # SIIT
        ("2600::5efe:a9fe:a9fe", "::/0"),  # ISATAP
        ("2600::200:5efe:a9fe:a9fe", "2600::/16"),
        ("2600:1f18:1:2:100:5efe:a9fe:a9fe", "::/0"),
    ],
)
def test_an_ipv6_way_to_metadata_stays_refused_under_a_wider_range(
    carrier: str, allowed: str
) -> None:
    """Regression: an allowed local-use NAT64 prefix (what an IPv6-only site
    with its own NAT64 must allow; DNS64 makes such an address of any A
    record), Teredo or SIIT passed an address leading to 169.254.169.254."""
    policy = NetworkPolicy.from_strings([allowed])

    with pytest.raises(UnsafeUrl, match="metadata") as refused:
        check_address(ipaddress.ip_address(carrier), policy)
    assert "allow_networks" not in str(refused.value)
    check_address(
        ipaddress.ip_address(carrier),
        policy.__class__.from_strings([allowed, "169.254.169.254"]),
    )


def test_metadata_opens_only_for_its_exact_address() -> None:
    """An allow entry for exactly 169.254.169.254 lets that address through."""
    policy = NetworkPolicy.from_strings(["169.254.169.254/32"])

    check_address(ipaddress.ip_address("169.254.169.254"), policy)


def test_policy_reads_bare_addresses_and_networks() -> None:
    """Bare addresses mean themselves; CIDR text means the network."""
    policy = NetworkPolicy.from_strings([" 127.0.0.1 ", "::1", "10.0.0.0/8"])

    assert [str(net) for net in policy.allow_networks] == [
        "127.0.0.1/32",
        "::1/128",
        "10.0.0.0/8",
    ]
    assert policy.require_https


@pytest.mark.parametrize("text", ["10.0.0.1/8", "localhost", "10.0.0.0/33", ""])
def test_policy_refuses_malformed_networks(text: str) -> None:
    """A typo in the allow list is an error, not a silently wider range."""
    with pytest.raises(ValueError, match="CIDR"):
        NetworkPolicy.from_strings([text])


# --- the rest of the URL --------------------------------------------------


def test_http_is_refused_when_https_is_required() -> None:
    """Plain http is refused by default."""
    error = refusal(f"http://{PUBLIC_V4}/hook")

    assert "https" in error.reason


def test_allowing_loopback_does_not_by_itself_allow_http() -> None:
    """An allow list leaves the https requirement alone."""
    policy = NetworkPolicy.from_strings(["127.0.0.1"])

    error = refusal("http://127.0.0.1:8080/", policy)

    assert "https" in error.reason


def test_http_is_accepted_when_the_policy_permits_it() -> None:
    """With require_https off, http reaches a public address."""
    policy = NetworkPolicy(require_https=False)

    parsed = check_url(f"http://{PUBLIC_V4}", policy)

    assert (parsed.scheme, parsed.port, parsed.target) == ("http", 80, "/")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        (f"https://user:pw@{PUBLIC_V4}/", "password"),
        (f"https://user@{PUBLIC_V4}/", "password"),
        (f"https://@{PUBLIC_V4}/", "password"),
        ("https://example.com/hook#frag", "fragment"),
        ("https://example.com/hook#", "fragment"),
        ("ftp://example.com/", "scheme"),
        ("file:///etc/passwd", "scheme"),
        ("gopher://example.com/", "scheme"),
        ("example.com/hook", "scheme"),
        ("https:///hook", "no host"),
        ("https://:443/hook", "no host"),
        ("https://example.com:0/", "port"),
        ("https://example.com:65536/", "port"),
        ("https://example.com:+443/", "port"),
        ("https://example.com:44x/", "port"),
        ("https://example.com/a b", "whitespace"),
        ("https://example.com\\@10.0.0.1/", "backslash"),
        ("https://exa\tmple.com/", "whitespace"),
        ("https://\uff11\uff12\uff17.0.0.1/", "ASCII"),
        ("https://bücher.example/", "ASCII"),
        ("https://1.2.3.4.5/", "numeric"),
        ("https://256.0.0.1/", "numeric"),
        ("https://1.16777216/", "numeric"),
        ("https://4294967296/", "numeric"),
        ("https://08.0.0.1/", "numeric"),
        ("https://example.123/", "numeric"),
        ("https://[::1/", "valid"),
        ("https://[::1]x/", "IPv6"),
        ("https://[127.0.0.1]/", "valid|IPv6"),
        ("https://[fe80::1%25eth0]/", "zone"),
        ("https://%31%32%37.0.0.1/", "host"),
        ("https://-bad-.example/", "host name"),
        ("https://a..b/", "host name"),
        ("https://" + "a" * 64 + ".example/", "host name"),
        ("https://example.com/" + "x" * 2048, "2048"),
    ],
)
def test_malformed_or_risky_urls_are_refused(url: str, reason: str) -> None:
    """Each malformed or risky URL is refused with a reason that says why."""
    error = refusal(url, NetworkPolicy(require_https=False))

    assert re.search(reason, error.reason)


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST.", "api.localhost"])
def test_localhost_names_are_loopback(host: str) -> None:
    """localhost names are refused as loopback, or accepted where it is allowed."""
    refusal(f"https://{host}/")

    parsed = check_url(f"http://{host}:8080/", LOOPBACK_DEV)

    assert parsed.address is None
    assert parsed.host == host.lower().rstrip(".")


def test_a_host_name_is_normalised_but_not_resolved() -> None:
    """check_url lower-cases a name and drops its trailing dot."""
    parsed = check_url("https://Hooks.Example.COM./in", DEFAULT)

    assert parsed.host == "hooks.example.com"
    assert parsed.address is None
    assert parsed.url == "https://hooks.example.com/in"


def test_the_longest_allowed_url_passes() -> None:
    """A URL of exactly 2048 characters is accepted."""
    head = "https://example.com/"
    url = head + "x" * (2048 - len(head))

    assert check_url(url, DEFAULT).target.startswith("/x")


# --- resolution at connect time -------------------------------------------


def test_a_name_resolving_to_loopback_is_refused() -> None:
    """A host name that resolves to 127.0.0.1 is refused at connect time."""
    resolver = fake_resolver({"hooks.example.test": ["127.0.0.1"]})

    with pytest.raises(UnsafeUrl) as caught:
        resolve_and_check("hooks.example.test", 443, DEFAULT, resolver)

    assert "loopback" in caught.value.reason
    assert "127.0.0.1" not in caught.value.reason


def test_one_private_answer_refuses_a_mixed_answer() -> None:
    """A public and a private answer together are refused as a whole."""
    resolver = fake_resolver({"mixed.example.test": [PUBLIC_V4, "10.1.2.3"]})

    with pytest.raises(UnsafeUrl, match="private"):
        resolve_and_check("mixed.example.test", 443, DEFAULT, resolver)


def test_mapped_answers_are_judged_by_their_ipv4_address() -> None:
    """An AAAA answer of ::ffff:10.0.0.1 is refused like 10.0.0.1."""
    resolver = fake_resolver({"sneaky.example.test": ["::ffff:10.0.0.1"]})

    with pytest.raises(UnsafeUrl, match="private"):
        resolve_and_check("sneaky.example.test", 443, DEFAULT, resolver)


def test_public_answers_come_back_checked_in_order() -> None:
    """Every address of a public answer is returned once, in answer order."""
    answers = [PUBLIC_V6, PUBLIC_V4, PUBLIC_V4, f"::ffff:{PUBLIC_V4}"]
    resolver = fake_resolver({"hooks.example.com": answers})

    addresses = resolve_and_check("hooks.example.com", 443, DEFAULT, resolver)

    assert [str(a) for a in addresses] == [PUBLIC_V6, PUBLIC_V4]


def test_a_name_resolving_to_an_allowed_network_passes() -> None:
    """Local development resolves a test name to 127.0.0.1 and is let through."""
    resolver = fake_resolver({"hooks.example.test": ["127.0.0.1"]})

    addresses = resolve_and_check("hooks.example.test", 8080, LOOPBACK_DEV, resolver)

    assert addresses == [ipaddress.IPv4Address("127.0.0.1")]


@pytest.mark.parametrize(
    ("allowed", "expected"),
    [
        (["127.0.0.1/32"], ["127.0.0.1"]),
        (["::1/128"], ["::1"]),
        (["127.0.0.0/8", "::1/128"], ["127.0.0.1", "::1"]),
    ],
)
def test_a_localhost_name_is_the_allowed_loopback_unresolved(
    allowed: list[str], expected: list[str]
) -> None:
    """localhost names never reach the resolver: they mean the loopback allowed."""

    def resolver(host: str, port: int) -> Iterable[Sequence[Any]]:
        raise AssertionError("a localhost name must not be resolved")

    policy = NetworkPolicy.from_strings(allowed, require_https=False)

    for host in ("localhost", "hooks.localhost"):
        found = resolve_and_check(host, 8080, policy, resolver)
        assert [str(address) for address in found] == expected
    with pytest.raises(UnsafeUrl, match="loopback"):
        resolve_and_check("localhost", 8080, DEFAULT, resolver)


def test_a_literal_host_is_not_resolved() -> None:
    """An IP literal is checked directly; the resolver is never asked."""

    def resolver(host: str, port: int) -> Iterable[Sequence[Any]]:
        raise AssertionError("a literal must not be resolved")

    assert resolve_and_check("0x7f000001", 80, LOOPBACK_DEV, resolver) == [
        ipaddress.IPv4Address("127.0.0.1")
    ]
    assert resolve_and_check("::1", 80, LOOPBACK_DEV, resolver) == [
        ipaddress.IPv6Address("::1")
    ]
    with pytest.raises(UnsafeUrl):
        resolve_and_check("[::1]", 80, DEFAULT, resolver)


@pytest.mark.parametrize(
    "answers", [{}, {"hooks.example.test": []}, {"hooks.example.test": ["bogus"]}]
)
def test_a_name_without_addresses_is_unresolved(answers: dict[str, list[str]]) -> None:
    """A lookup that fails or yields no usable address is UnresolvedHost."""
    with pytest.raises(UnresolvedHost):
        resolve_and_check("hooks.example.test", 443, DEFAULT, fake_resolver(answers))


# --- the C library's IPv4 reading -----------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("10.65535", "10.0.255.255"),
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0x7F.1", "127.0.0.1"),
        ("0177.0.0.01", "127.0.0.1"),
        ("0x", "0.0.0.0"),
        ("00", "0.0.0.0"),
        ("4294967295", "255.255.255.255"),
        ("08", None),
        ("1.2.3.4.5", None),
        ("256.1", None),
        ("1.2.65536", None),
        ("4294967296", None),
        ("1..1", None),
        ("", None),
        ("+1", None),
        ("1_0", None),
        ("0x1g", None),
        ("\u0661", None),
    ],
)
def test_read_ipv4_reads_like_inet_aton(text: str, expected: str | None) -> None:
    """read_ipv4 gives the address inet_aton would, or None where it refuses."""
    address = read_ipv4(text)

    assert (str(address) if address else None) == expected


# --- properties -----------------------------------------------------------


def _ipv4_notations(a: ipaddress.IPv4Address) -> list[str]:
    """Every way this guard accepts to write one IPv4 address as a URL host."""
    b = a.packed
    n = int(a)
    hi, lo = n >> 16, n & 0xFFFF
    return [
        str(a),
        f"{a}.",
        str(n),
        hex(n),
        hex(n).upper().replace("X", "x", 1),
        ".".join(hex(x) for x in b),
        ".".join(f"0{x:o}" for x in b),
        f"{b[0]}.{b[1]}.{(b[2] << 8) | b[3]}",
        f"{b[0]}.{n & 0xFFFFFF}",
        f"{hex(b[0])}.0{b[1]:o}.{b[2]}.{b[3]}",
        f"[::ffff:{a}]",
        f"[::ffff:{hi:x}:{lo:x}]",
        f"[0:0:0:0:0:ffff:{hi:x}:{lo:x}]",
        f"[::{a}]",
        f"[64:ff9b::{a}]",
        f"[64:ff9b::{hi:x}:{lo:x}]",
    ]


def _in_network(network: Any) -> st.SearchStrategy[ipaddress.IPv4Address]:
    first, last = int(network.network_address), int(network.broadcast_address)
    return st.integers(first, last).map(ipaddress.IPv4Address)


REFUSED_V4 = st.one_of(
    st.sampled_from([net for net, _ in REFUSED_IPV4]).flatmap(_in_network),
    st.sampled_from(sorted(a for a in METADATA_ADDRESSES if a.version == 4)),
)
# Drawn under first octets that are public, so few draws are thrown away
# (plain integers start small, in 0.0.0.0/8, and failed the health check).
PUBLIC = (
    st.tuples(
        st.sampled_from([8, 23, 45, 93, 151, 185, 203]), st.integers(0, 2**24 - 1)
    )
    .map(lambda parts: ipaddress.IPv4Address((parts[0] << 24) | parts[1]))
    .filter(lambda a: classify_address(a) is None)
)


@settings(max_examples=150, deadline=None)
@given(address=REFUSED_V4)
def test_a_refused_ipv4_address_is_refused_in_every_notation(
    address: ipaddress.IPv4Address,
) -> None:
    """No notation smuggles a refused IPv4 address past check_url."""
    hosts = [
        *_ipv4_notations(address),
        f"[2002:{int(address) >> 16:x}:{int(address) & 0xFFFF:x}::1]",
    ]

    for host in hosts:
        with pytest.raises(UnsafeUrl):
            check_url(f"https://{host}/", DEFAULT)


@settings(max_examples=150, deadline=None)
@given(address=PUBLIC)
def test_every_notation_of_a_public_address_reads_back_to_it(
    address: ipaddress.IPv4Address,
) -> None:
    """Each notation of a public IPv4 address is accepted and means that address."""
    for host in _ipv4_notations(address):
        parsed = check_url(f"https://{host}/", DEFAULT)

        assert parsed.address is not None
        assert normalise_address(parsed.address) == address


@pytest.mark.parametrize(
    ("address", "allowed"),
    [("169.254.0.23", "169.254.0.0/16"), ("fd20:ce::254", "fc00::/7")],
)
def test_more_clouds_metadata_stays_refused_under_a_wider_range(
    address: str, allowed: str
) -> None:
    """Tencent Cloud's and GCP's IPv6 metadata addresses passed a broad
    allow list (the docs' own lab example, 169.254.0.0/16)."""
    with pytest.raises(UnsafeUrl, match="metadata"):
        check_address(
            ipaddress.ip_address(address), NetworkPolicy.from_strings([allowed])
        )
