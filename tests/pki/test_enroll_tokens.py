"""The enrollment token's one parser (a trust boundary: the service reads whatever a client sends) and the
CA's token records, without a service."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pki.enroll_tokens import PREFIX, Token, TokenRefused, TokenStore, decode, encode
from tests.plugins.pki import TestPKI

HOSTS = st.lists(st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z]{2,5})?", fullmatch=True), max_size=4)


def _token(ca_pem: bytes, name: str = "web1", hosts: tuple[str, ...] = ("localhost",)) -> Token:
    return Token("0123456789abcdef", "s" * 43, name, "agent", hosts, 1_900_000_000.0, "https://ca:8443", ca_pem)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=3000) | st.builds(lambda s: PREFIX + s, st.text(max_size=3000)))
def test_decode_refuses_anything_that_is_not_a_token_in_one_way(text: str) -> None:
    try:
        decode(text)
    except TokenRefused as exc:
        assert exc.reason == "malformed"


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["v", "id", "secret", "name", "role", "hosts", "expires", "url", "ca"]),
                       st.none() | st.integers() | st.text(max_size=20) | st.lists(st.integers(), max_size=3)))
def test_decode_refuses_json_of_the_wrong_shape(fields: dict[str, object]) -> None:
    body = base64.urlsafe_b64encode(json.dumps(fields).encode()).decode().rstrip("=")
    with pytest.raises(TokenRefused):
        decode(PREFIX + body)


@settings(max_examples=50, deadline=None)
@given(name=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True), hosts=HOSTS)
def test_encode_and_decode_round_trip(test_pki: TestPKI, name: str, hosts: list[str]) -> None:
    token = _token(test_pki.ca.read_bytes(), name, tuple(hosts))
    assert decode(encode(token)) == token
    assert decode("  " + encode(token) + "\n") == token  # as read from a file


def test_the_ca_keeps_only_a_hash_of_the_secret(test_pki: TestPKI, tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "enroll")
    token = store.issue("web1", "agent", ("localhost",), 3600, "https://ca:8443", test_pki.ca.read_bytes())
    records = (tmp_path / "enroll" / "tokens.json").read_text()
    assert token.secret not in records and token.id in records
    assert (tmp_path / "enroll" / "tokens.json").stat().st_mode & 0o777 == 0o600
    with pytest.raises(TokenRefused) as refused:
        store.consume(encode(token._replace(secret=token.secret[:-1] + "x")))
    assert refused.value.reason == "wrong_secret"
    assert store.consume(encode(token)).state == "used"
