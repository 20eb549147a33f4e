"""Verify a `hookledger export` file without hookledger: only the standard library.

    python3 examples/verify_export.py backup.jsonl

It re-computes every link of the hash chain as docs/ledger.md describes it, and every
present body against its digest. It prints `chain intact: N events` and exits 0, or names
the first bad position and exits 1. (It does not check `duplicate_of` or `verification`,
which lie outside the chain; `hookledger import` and `hookledger verify` do.)
"""

import base64
import hashlib
import json
import struct
import sys


def frame(value):
    """uint32_be(len) || bytes; text as UTF-8; null as 0xFFFFFFFF."""
    if value is None:
        return b"\xff\xff\xff\xff"
    data = value.encode("utf-8") if isinstance(value, str) else value
    return struct.pack(">I", len(data)) + data


def record(e):
    return (
        b"HL1"
        + struct.pack(">QQ", e["position"], e["received_at_us"])
        + frame(e["source"])
        + frame(e["event_id"])
        + frame(e["event_type"])
        + frame(e["query"])
        + frame(e["headers"])
        + frame(bytes.fromhex(e["body_sha256"]))
    )


def main(path):
    previous = bytes(32)  # hash(0): 32 zero bytes
    count = 0
    with open(path, "rb") as lines:
        for line in lines:
            if not line.strip():
                continue
            e = json.loads(line)
            expected = count + 1
            if e["position"] != expected:
                return broken(expected, f"found position {e['position']}")
            if e["body_base64"] is not None:
                body = base64.b64decode(e["body_base64"])
                if hashlib.sha256(body).hexdigest() != e["body_sha256"]:
                    return broken(expected, "body does not match body_sha256")
            link = hashlib.sha256(previous + record(e)).digest()
            if link.hex() != e["hash"]:
                return broken(expected, "hash does not match the chain")
            previous, count = link, expected
    print(f"chain intact: {count} event{'' if count == 1 else 's'}")
    return 0


def broken(position, reason):
    print(f"chain broken at position {position}: {reason}")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
