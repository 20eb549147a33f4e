"""The chain encoding and the header text, against tiny independent implementations."""

from __future__ import annotations

import hashlib
import json

from hypothesis import given
from hypothesis import strategies as st

from ledger import chain

# --- an independent reading of SPEC 4.2, written from the text alone ---------


def spec_frame(x):
    if x is None:
        return bytes([0xFF, 0xFF, 0xFF, 0xFF])
    b = x.encode("utf-8") if isinstance(x, str) else x
    return len(b).to_bytes(4, "big") + b


def spec_hash(prev, position, received_at_us, source, event_id, event_type, query, headers, body):
    rec = (
        b"HL1"
        + position.to_bytes(8, "big")
        + received_at_us.to_bytes(8, "big")
        + spec_frame(source)
        + spec_frame(event_id)
        + spec_frame(event_type)
        + spec_frame(query)
        + spec_frame(headers)
        + spec_frame(hashlib.sha256(body).digest())
    )
    return hashlib.sha256(prev + rec).digest()


text = st.text(max_size=40)
maybe_text = st.none() | text
u64 = st.integers(min_value=0, max_value=2**64 - 1)


@given(
    prev=st.binary(min_size=32, max_size=32),
    position=u64,
    received=u64,
    source=text,
    event_id=maybe_text,
    event_type=maybe_text,
    query=text,
    headers=text,
    body=st.binary(max_size=200),
)
def test_link_matches_an_independent_implementation(
    prev, position, received, source, event_id, event_type, query, headers, body
):
    ours = chain.link(
        prev,
        chain.record(
            position,
            received,
            source,
            event_id,
            event_type,
            query,
            headers,
            hashlib.sha256(body).digest(),
        ),
    )
    assert ours == spec_hash(
        prev, position, received, source, event_id, event_type, query, headers, body
    )


def test_null_and_empty_frame_differently():
    assert chain.frame(None) != chain.frame("")
    assert chain.frame("") == b"\x00\x00\x00\x00"
    assert chain.frame("é") == b"\x00\x00\x00\x02\xc3\xa9"


# Header names are tokens; values are any bytes a server accepts (no CR/LF/NUL).
TOKEN = [c for c in range(33, 127) if c != ord(":")]
VALUE = [c for c in range(256) if c not in b"\r\n\x00"]
header_name = st.lists(st.sampled_from(TOKEN), min_size=1, max_size=20).map(bytes)
header_value = st.lists(st.sampled_from(VALUE), max_size=40).map(bytes)


@given(st.lists(st.tuples(header_name, header_value), max_size=12))
def test_header_text_is_the_spec_json(pairs):
    expected = json.dumps(
        [[n.decode("latin-1").lower(), v.decode("latin-1")] for n, v in pairs],
        ensure_ascii=False,
        separators=(",", ":"),
    )
    assert chain.canonical_headers(pairs) == expected


@given(st.lists(st.tuples(header_name, header_value), min_size=1, max_size=8))
def test_redacted_headers_keep_name_and_order(pairs):
    redact = frozenset({pairs[0][0].decode("latin-1").lower()})
    stored = json.loads(chain.canonical_headers(pairs, redact))
    assert [n for n, _ in stored] == [n.decode("latin-1").lower() for n, _ in pairs]
    for (name, value), (_raw_name, raw_value) in zip(stored, pairs, strict=True):
        if name in redact:
            assert value == "[redacted]"
        else:
            assert value == raw_value.decode("latin-1")


def test_non_ascii_values_are_kept_not_escaped():
    text = chain.canonical_headers([(b"X-Name", "Zoë".encode("latin-1"))])
    assert text == '[["x-name","Zoë"]]'
