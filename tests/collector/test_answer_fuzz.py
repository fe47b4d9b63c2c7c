"""Why #1: no answer can stop the collector. 100,000 hostile answers, zero unhandled exceptions.

How the 100,000 are reached, within a reasonable test time:

- **99,400 in-process**: hypothesis draws 398 seeds; each seed makes 250 hostile answers
  (:func:`tests.collector.mutations.hostile_answer`: mutated status lines, ``Content-Length`` values such
  as ``1²``, header lines, bodies, truncations, extra bytes, the peer closing mid-answer) that go, split
  at random points, through exactly the code the transport runs on the bytes a socket returns:
  :class:`~secure_collector.exchange.Exchange` (h11), :meth:`AgentConnection.finish` (the XML-RPC reader)
  and validation into a stored sample.
- **600 over real TLS**: a hostile TLS peer with an agent certificate of the test CA sends 600 such
  answers, in several writes, and ends connections with close_notify, without it, or with a TCP reset;
  the collector's :class:`~secure_collector.transport.AgentConnection` reads them from the socket.

Every answer must end as a sample or as a :class:`~secure_collector.errors.PollError` (or, for a peer
that goes quiet mid-answer, as a call still waiting for its deadline); anything else fails the test and
names the seed that replays it.
"""

from __future__ import annotations

import collections
import random
import ssl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pki import tokens
from secure_collector import wire
from secure_collector.errors import PollError
from secure_collector.exchange import Exchange
from secure_collector.transport import AgentConnection
from secure_collector.validate import AnswerInvalid, to_sample, validate_answer
from tests.collector.fakeagent import FakeAgent, Reply
from tests.collector.mutations import hostile_answer
from tests.plugins.agent import client_context
from tests.plugins.pki import TestPKI

IN_PROCESS_SEEDS = 398
ANSWERS_PER_SEED = 250
OVER_TLS = 600
REQUEST = wire.request_body("get_metrics")
_READER = AgentConnection("localhost", "127.0.0.1", 1, ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), "collector", b"k" * 32)


def read(reply: Reply, rng: random.Random) -> str:
    """What the collector makes of ``reply``: "up", a failure state, or "waiting" (its deadline would end it)."""
    exchange = Exchange("localhost", b"127.0.0.1:1")
    exchange.request(REQUEST, b"token")
    cuts = sorted(rng.randrange(len(reply.data) + 1) for _ in range(rng.randint(0, 4)))
    pieces = [reply.data[a:b] for a, b in zip([0, *cuts], [*cuts, len(reply.data)], strict=True)]
    try:
        body = None
        for piece in pieces:
            if piece:
                body = exchange.receive(piece)
                if body is not None:
                    break
        if body is None and reply.after != "keep":
            if not exchange.received:
                return "closed before answering"  # the transport's stale-connection case
            body = exchange.receive(b"")
        if body is None:
            return "waiting"
        value = _READER.finish(body)
        to_sample(validate_answer(value, "localhost"), 1_800_000_000.0)
    except PollError as exc:
        return exc.state
    except AnswerInvalid:
        return "bad_response"
    return "up"


@pytest.mark.slow
def test_a_hundred_thousand_hostile_answers_minus_the_tls_share_never_escape_the_reader() -> None:
    outcomes: collections.Counter[str] = collections.Counter()

    @settings(max_examples=IN_PROCESS_SEEDS, deadline=None, database=None)
    @given(st.integers(min_value=0, max_value=2**64))
    def answers(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(ANSWERS_PER_SEED):
            outcomes[read(hostile_answer(rng), rng)] += 1  # an exception here fails with the seed

    answers()
    assert sum(outcomes.values()) == IN_PROCESS_SEEDS * ANSWERS_PER_SEED
    # the mutations reach every outcome: not all refused at the first byte, not all accepted
    assert outcomes["up"] > 1000 and outcomes["bad_response"] > 10_000
    assert {"rate_limited", "auth_refused", "waiting", "closed before answering"} <= set(outcomes)


def _tls_reply(rng: random.Random) -> Reply:
    """Most connections end after the answer (each ending tested); a peer left silent costs a deadline."""
    reply = hostile_answer(rng)
    if reply.after == "keep" and rng.random() < 0.8:
        return reply._replace(after=rng.choice(["close", "abort", "reset"]))
    return reply


@pytest.mark.slow
def test_hostile_answers_over_real_tls_end_as_samples_or_poll_errors(test_pki: TestPKI) -> None:
    rng = random.Random(20261203)
    peer = FakeAgent(test_pki, lambda body: _tls_reply(rng))
    key = tokens.load_key(test_pki.collector_files()[2])
    connection = AgentConnection(
        "localhost", "127.0.0.1", peer.port, client_context(test_pki), "collector", key, timeout=0.3
    )
    outcomes: collections.Counter[str] = collections.Counter()
    try:
        for _ in range(OVER_TLS):
            try:
                value = connection.call("get_metrics")
                to_sample(validate_answer(value, "localhost"), 1_800_000_000.0)
                outcomes["up"] += 1
            except PollError as exc:
                outcomes[exc.state] += 1
            except AnswerInvalid:
                outcomes["bad_response"] += 1
    finally:
        connection.close()
        peer.stop()
    assert sum(outcomes.values()) == OVER_TLS
    assert outcomes["up"] > 10 and outcomes["bad_response"] > 100
    assert peer.requests >= OVER_TLS - outcomes["timeout"]
