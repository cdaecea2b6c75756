"""Protocol core: dial URL, upgrade token, NDJSON splitter, frames (PROTOCOL.md sections 1-4)."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.errors import ConfigError, FrameTooLarge, ProtocolError, TokenError
from relay.protocol import frames as F
from relay.protocol.framing import LogLimiter, NdjsonSplitter, decode_line, encode_frame
from relay.protocol.token import bearer_of, mint_token, validate_gateway_id, verify_token
from relay.protocol.urls import normalise_relay_url

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("https://relay.example.com", "wss://relay.example.com/relay"),
        ("http://127.0.0.1:8765/", "ws://127.0.0.1:8765/relay"),
        ("  wss://x.io/base/  ", "wss://x.io/base/relay"),
        ("ws://x.io/relay", "ws://x.io/relay"),
        ("ws://x.io/relay/", "ws://x.io/relay"),
        ("HTTPS://x.io/a/relay", "wss://x.io/a/relay"),
    ],
    ids=["https", "http-slash", "spaces-path", "already", "trailing", "upper-scheme"],
)
def test_normalise_relay_url_maps_scheme_and_path(raw: str, expected: str) -> None:
    """Scheme mapping, trailing slash and /relay suffix follow PROTOCOL.md section 1."""
    assert normalise_relay_url(raw) == expected
    assert normalise_relay_url(expected) == expected  # idempotent


@pytest.mark.parametrize(
    "raw",
    ["https://x.io/?a=1", "https://x.io/#frag", "ftp://x.io", "", "https://", "x.io"],
    ids=["query", "fragment", "ftp-scheme", "empty", "no-host", "no-scheme"],
)
def test_normalise_relay_url_rejects_query_fragment_and_bad_scheme(raw: str) -> None:
    """A query, fragment, foreign scheme or missing host is a config error naming the URL."""
    with pytest.raises(ConfigError):
        normalise_relay_url(raw)


def test_token_round_trips_and_has_no_padding() -> None:
    """A minted token verifies to its gateway id and is unpadded base64url of id:exp:sig."""
    tok = mint_token("gw1", "s3cret", NOW)
    assert "=" not in tok
    raw = base64.urlsafe_b64decode(tok + "=" * (-len(tok) % 4)).decode()
    gid, exp, sig = raw.split(":")
    assert (gid, int(exp)) == ("gw1", int(NOW) + 300)
    assert len(sig) == 64
    assert sig == sig.lower()
    assert verify_token(tok, {"gw1": "s3cret"}, NOW) == "gw1"


def test_token_matches_reference_vector() -> None:
    """The signature is lowercase hex HMAC-SHA256(secret, "<id>:<exp>")."""
    import hashlib
    import hmac

    tok = mint_token("gw", "k", 1000.0)
    expected_sig = hmac.new(b"k", b"gw:1300", hashlib.sha256).hexdigest()
    expected = base64.urlsafe_b64encode(f"gw:1300:{expected_sig}".encode()).decode().rstrip("=")
    assert tok == expected


@pytest.mark.parametrize(
    ("age", "reason"),
    [(300 + 29, None), (300 + 31, "expired"), (10_000, "expired")],
    ids=["within-leeway", "past-leeway", "long-past"],
)
def test_token_expiry_uses_30s_leeway(age: float, reason: str | None) -> None:
    """A token is accepted up to exp + 30 s; after that it is 'expired', not 'unauthorized'."""
    tok = mint_token("gw1", "s", NOW)
    if reason is None:
        assert verify_token(tok, {"gw1": "s"}, NOW + age) == "gw1"
    else:
        with pytest.raises(TokenError) as err:
            verify_token(tok, {"gw1": "s"}, NOW + age)
        assert err.value.reason == reason


def _forge(gid: str, exp: int, secret: str) -> str:
    import hashlib
    import hmac

    sig = hmac.new(secret.encode(), f"{gid}:{exp}".encode(), hashlib.sha256).hexdigest()
    return base64.urlsafe_b64encode(f"{gid}:{exp}:{sig}".encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "token",
    [
        _forge("gw1", 0, "s"),
        _forge("gw1", int(NOW) + 300, "wrong"),
        _forge("other", int(NOW) + 300, "s"),
        _forge("gw1", int(NOW) + 10_000, "s"),
        "not-base64!!",
        base64.urlsafe_b64encode(b"a:b").decode(),
        "",
    ],
    ids=["exp-zero", "bad-sig", "unknown-id", "exp-far-ahead", "garbage", "two-parts", "empty"],
)
def test_token_refusals_are_unauthorized(token: str) -> None:
    """Bad signature, unknown id, exp 0 and malformed tokens are 'unauthorized'."""
    with pytest.raises(TokenError) as err:
        verify_token(token, {"gw1": "s"}, NOW)
    assert err.value.reason == "unauthorized"


@pytest.mark.parametrize("gid", ["a:b", "a=b", "", "  "], ids=["colon", "equals", "empty", "blank"])
def test_gateway_id_with_colon_or_equals_is_config_error(gid: str) -> None:
    """A gateway id containing ':' or '=' (or empty) cannot be put in a token."""
    with pytest.raises(ConfigError):
        validate_gateway_id(gid)


def test_bearer_of_parses_header() -> None:
    """Only 'Bearer <token>' yields a token."""
    assert bearer_of("Bearer abc") == "abc"
    assert bearer_of("bearer  abc ") == "abc"
    assert bearer_of("Basic abc") is None
    assert bearer_of(None) is None


@given(st.text(max_size=300), st.integers(min_value=0, max_value=10**10))
def test_verify_token_never_crashes_on_any_text(token: str, now: int) -> None:
    """Any string gives a gateway id or a TokenError, never another exception."""
    try:
        verify_token(token, {"gw1": "s"}, float(now))
    except TokenError:
        pass


def test_splitter_joins_split_frames_and_splits_joined_ones() -> None:
    """Several frames in one message and one frame across messages both come out whole."""
    sp = NdjsonSplitter(1024)
    assert sp.feed('{"type":"a"}\n{"ty') == ['{"type":"a"}']
    assert sp.feed('pe":"b"}\n\n  \n{"type":"c"}') == ['{"type":"b"}']
    assert sp.partial == '{"type":"c"}'
    assert sp.feed("\n") == ['{"type":"c"}']


def test_splitter_raises_frame_too_large_for_long_line_and_partial() -> None:
    """A line or a kept partial over the limit raises FrameTooLarge (close 1009)."""
    sp = NdjsonSplitter(16)
    with pytest.raises(FrameTooLarge):
        sp.feed("x" * 17 + "\n")
    with pytest.raises(FrameTooLarge):
        NdjsonSplitter(16).feed("y" * 17)
    # multi-byte characters count as UTF-8 bytes
    with pytest.raises(FrameTooLarge):
        NdjsonSplitter(16).feed("é" * 9 + "\n")


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        ("not json", "not_json"),
        ("[1,2]", "not_object"),
        ('{"a":1}', "no_type"),
        ('{"type":5}', "no_type"),
        ('"str"', "not_object"),
        ("[" * 5000, "not_json"),
    ],
    ids=["garbage", "array", "no-type", "int-type", "string", "deep"],
)
def test_decode_line_classifies_bad_frames(line: str, kind: str) -> None:
    """Each kind of bad line raises ProtocolError with its kind."""
    with pytest.raises(ProtocolError) as err:
        decode_line(line)
    assert err.value.kind == kind


@given(st.lists(st.text(max_size=50), max_size=20), st.integers(min_value=8, max_value=200))
def test_splitter_and_decoder_never_crash(chunks: list[str], limit: int) -> None:
    """No chunk sequence crashes the splitter or decoder with anything but our errors."""
    sp = NdjsonSplitter(limit)
    for chunk in chunks:
        try:
            lines = sp.feed(chunk)
        except FrameTooLarge:
            continue
        for line in lines:
            try:
                decode_line(line)
            except ProtocolError:
                pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)


@given(
    st.text(min_size=1),
    st.dictionaries(st.text(), json_values, max_size=6),
    st.integers(min_value=1, max_value=7),
)
def test_encode_decode_round_trips_through_any_chunking(type_: str, extra: dict, cut: int) -> None:
    """encode -> split at any point -> splitter -> decode gives the frame back."""
    frame = {**extra, "type": type_}
    line = encode_frame(frame)
    assert line.endswith("\n")
    assert line.count("\n") == 1
    sp = NdjsonSplitter(10**7)
    out = []
    for i in range(0, len(line), cut):
        out += sp.feed(line[i : i + cut])
    assert [decode_line(x) for x in out] == [json.loads(json.dumps(frame))]


def test_descriptor_requires_keys_and_coerces_length() -> None:
    """Missing required keys fail the handshake; a bad max_message_length becomes 4096."""
    good = F.descriptor("relay", max_message_length=-5)
    d = F.parse_descriptor(good)
    assert d.max_message_length == 4096
    assert d.supports_wake_at is True
    bad = F.descriptor("relay")
    del bad["descriptor"]["len_unit"]
    with pytest.raises(ProtocolError, match="len_unit"):
        F.parse_descriptor(bad)
    assert F.parse_descriptor(F.descriptor("x", max_message_length="abc")).max_message_length == 4096


@pytest.mark.parametrize(
    ("length", "expected"),
    [
        (float("inf"), 4096),
        (float("-inf"), 4096),
        (float("nan"), 4096),
        (0.5, 4096),
        (0, 4096),
        (7.9, 7),
        (1, 1),
    ],
    ids=["inf", "-inf", "nan", "half", "zero", "fraction", "one"],
)
def test_descriptor_length_that_is_not_a_positive_int_becomes_4096(length: float, expected: int) -> None:
    """``max_message_length`` Infinity (JSON ``1e999``) was an OverflowError in the handshake
    and 0.5 truncated to 0 (one-character chunks); both now become 4096 (found by
    ``python -m sim --fuzz``, issue #13)."""
    d = F.parse_descriptor(F.descriptor("relay", max_message_length=length))
    assert d.max_message_length == expected


def test_normalise_relay_url_that_does_not_parse_is_config_error() -> None:
    """An unclosed IPv6 bracket was urllib's ValueError, which ``GATEWAY_RELAY_URL`` let
    through ``load_config`` as a crash (found by ``python -m sim --fuzz``, issue #13)."""
    with pytest.raises(ConfigError, match="does not parse"):
        normalise_relay_url("http://[::1")


def test_going_idle_wake_at_is_rfc3339_utc() -> None:
    """wakeAt is RFC 3339 UTC and parses back to the same instant."""
    frame = F.going_idle(NOW + 0.5)
    assert frame["wakeAt"].endswith("Z")
    assert F.parse_rfc3339(frame["wakeAt"]) == NOW + 0.5
    assert "wakeAt" not in F.going_idle(None)
    with pytest.raises(ValueError, match="offset"):
        F.parse_rfc3339("2026-01-01T00:00:00")


def test_request_ids_are_32_hex() -> None:
    """requestId is 32 lowercase hex chars."""
    rid = F.new_request_id()
    assert len(rid) == 32
    assert int(rid, 16) >= 0
    assert rid == rid.lower()


def test_log_limiter_once_per_kind_per_minute() -> None:
    """A dropped-frame kind is logged once per 60 s."""
    lim = LogLimiter()
    assert lim.allow("not_json", 0.0)
    assert not lim.allow("not_json", 59.9)
    assert lim.allow("no_type", 1.0)
    assert lim.allow("not_json", 60.0)


@given(st.text())
def test_encoded_inbound_ack_matches_generic_encoder(buffer_id: str) -> None:
    """The hand-built ack line decodes to the same frame as the generic encoder's."""
    assert json.loads(F.encode_inbound_ack(buffer_id)) == F.inbound_ack(buffer_id)
    assert F.encode_inbound_ack(buffer_id).endswith("\n")
