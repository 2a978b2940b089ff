"""Fuzzing the decoder: any bytes decode to what was sent or raise PayloadError, fast, for every codec chain.

Two kinds of damage. Corruption in transit (bit flips, truncation, inserted bytes) must be caught: the payload
decodes to exactly the original values or raises. Forged payloads with a recomputed checksum (edited header
fields, bodies) reach the parser; a forged but consistent payload (say, another quantizer offset) is a valid
different update, so there the promise is PayloadError or finite values of the model's shapes, quickly.
"""

import json
import math
import struct
import time

import numpy as np
import pytest
import torch

from pocketlearn.federated.codecs import PayloadError, decode_dense, encode_dense, make_codec
from pocketlearn.federated.codecs.format import HEAD, seal
from pocketlearn.federated.codecs.seeds import decode_history, encode_history

_g = torch.Generator().manual_seed(0)
SMALL = {"w": torch.randn(16, 8, generator=_g) * (torch.arange(16) % 4 == 0).unsqueeze(1),  # rows: 4 of 16 change
         "b": torch.randn(8, generator=_g), "v": torch.randn(128, generator=_g)}
SHAPES = {n: t.shape for n, t in SMALL.items()}
CHAINS = [None, "fp16", "bf16", "q8", "q4", "q2", "q1", "topk0.01", "topk0.3", "topk0.01+q8", "topk0.3+q4", "sign",
          "rot", "rand0.3", "rot+rand0.2+q2", "rows", "rows+q8", "DENSE", "SEEDS"]
HISTORY = [(int(s), float(g)) for s, g in zip(range(7, 700, 97), np.linspace(-1, 1, 8), strict=True)]
ODD_VALUES = [None, True, False, -1, 0, 1, 3, 2**31, 2**32, 2**64, -(2**63), 10**30, 1e8, 1e308, -1e308, 0.5, 1e-45,
              "", "x", "q8", [], {}, [0], [-1], [2**64], [0, 2**64], [10**8], [1e8], [[]], [None], {"a": 1}]


def _encode(spec):
    if spec == "DENSE":
        return encode_dense(SMALL)
    if spec == "SEEDS":
        return encode_history(HISTORY)
    return make_codec(spec).encode(SMALL, np.random.default_rng(3))


def _decode(spec, payload, expected=SHAPES):
    if spec == "DENSE":
        return decode_dense(payload, expected)
    if spec == "SEEDS":
        return decode_history(payload)
    return make_codec(spec).decode(payload, expected)


def _same(a, b):
    if isinstance(a, list):
        return a == b
    return a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


def _split(payload):
    """(header dict, body bytes) of a genuine payload."""
    (size,) = struct.unpack_from("<I", payload, 4)
    return json.loads(payload[HEAD:HEAD + size]), payload[HEAD + size:]


def _forge(header, body):
    """A payload with this header and body and a correct checksum: what a forger (or a buggy client) sends."""
    raw = json.dumps(header, separators=(",", ":")).encode()
    out = bytearray(payload_prefix(len(raw)) + raw + body)
    seal(out)
    return bytes(out)


def payload_prefix(header_len):
    genuine = _encode("q8")
    return genuine[:4] + struct.pack("<I", header_len) + bytes(HEAD - 8)


def _corrupt(payload, rng):
    data = bytearray(payload)
    kind = rng.integers(5)
    if kind == 0:  # bit flips, anywhere
        for _ in range(rng.integers(1, 4)):
            data[rng.integers(len(data))] ^= 1 << int(rng.integers(8))
    elif kind == 1:  # bytes overwritten, in the header or in the body
        where = rng.integers(HEAD, len(data)) if rng.random() < 0.5 else rng.integers(len(data))
        data[where] = rng.integers(256)
    elif kind == 2:
        del data[rng.integers(len(data)):]
    elif kind == 3:
        where = rng.integers(len(data) + 1)
        data[where:where] = rng.integers(0, 256, rng.integers(1, 5), dtype=np.uint8).tobytes()
    else:
        where = rng.integers(len(data))
        del data[where:where + rng.integers(1, 5)]
    return bytes(data)


def _paths(node, prefix=()):
    """Every position in a JSON tree, as a path of keys and indices."""
    yield prefix
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        yield from _paths(child, (*prefix, key))


def _edit(header, rng):
    """The header with one field replaced by an odd value, scaled, or removed (a deep copy)."""
    header = json.loads(json.dumps(header))
    paths = list(_paths(header))[1:]
    path = paths[rng.integers(len(paths))]
    parent = header
    for key in path[:-1]:
        parent = parent[key]
    old, action = parent[path[-1]], rng.integers(4)
    if action == 0 and isinstance(parent, list):
        del parent[path[-1]]
    elif action == 1 and isinstance(old, int | float) and not isinstance(old, bool):
        parent[path[-1]] = type(old)(old * [0, -1, 2, 1000, 10**6][rng.integers(5)])
    else:
        parent[path[-1]] = ODD_VALUES[rng.integers(len(ODD_VALUES))]
    return header


def _check_forged(spec, payload, expected):
    t0 = time.perf_counter()
    try:
        out = _decode(spec, payload, expected)
    except PayloadError:
        out = None
    limit = 0.5 if expected else 3.0  # without the model's shapes only MAX_DECODED_VALUES bounds "rows"
    assert time.perf_counter() - t0 < limit, f"{spec}: a forged payload took {time.perf_counter() - t0:.2f} s"
    if out is None or spec == "SEEDS":
        return
    for n, t in out.items():
        assert t.dtype == torch.float32 and torch.isfinite(t).all()
        assert expected is None or t.shape == expected[n]
        assert t.numel() <= (1 << 28)


def _sweep(spec, corruptions, forgeries, seed):
    rng = np.random.default_rng(seed)
    payload = _encode(spec)
    original = _decode(spec, payload)
    silent = 0
    for _ in range(corruptions):
        damaged = _corrupt(payload, rng)
        try:
            out = _decode(spec, damaged)
        except PayloadError:
            continue
        silent += not _same(out, original)
        assert damaged == payload or _same(out, original), f"{spec}: corruption decoded to other values"
    assert silent == 0
    header, body = _split(payload)
    for i in range(forgeries):
        expected = SHAPES if i % 2 == 0 else None
        if i % 4 == 3 and body:  # the body rewritten, the checksum made to fit
            forged = bytearray(body)
            forged[rng.integers(len(forged))] = rng.integers(256)
            _check_forged(spec, _forge(header, bytes(forged)), expected)
        else:
            _check_forged(spec, _forge(_edit(header, rng), body), expected)


@pytest.mark.parametrize("spec", CHAINS)
def test_corrupted_payloads_decode_to_the_original_or_raise_and_forged_ones_stay_bounded(spec):
    _sweep(spec, corruptions=300, forgeries=300, seed=CHAINS.index(spec))


@pytest.mark.slow
@pytest.mark.parametrize("spec", CHAINS)
def test_many_more_mutations(spec):
    _sweep(spec, corruptions=3000, forgeries=3000, seed=1000 + CHAINS.index(spec))


def test_the_forge_helper_reaches_the_parser():
    header, body = _split(_encode("q8"))
    assert _same(_decode("q8", _forge(header, body)), _decode("q8", _encode("q8")))
    header["meta"]["q8:b"][0] += 1.0  # another offset: a different, valid update
    assert torch.allclose(_decode("q8", _forge(header, body))["b"], _decode("q8", _encode("q8"))["b"] + 1.0)


@pytest.mark.parametrize("edit", [
    lambda h: h.update(arrays=None), lambda h: h.update(chain=None), lambda h: h.update(meta=[1]),
    lambda h: h.update(meta=None), lambda h: h.pop("meta"), lambda h: h.update(extra=1),
    lambda h: h["arrays"][0].__setitem__(2, [2**64]), lambda h: h["arrays"][0].__setitem__(2, 8),
    lambda h: h["arrays"][0].__setitem__(2, [-1, -8]), lambda h: h["arrays"][0].__setitem__(2, [0, 2**64]),
    lambda h: h["arrays"][0].__setitem__(2, [0, 2**40, 2**40]), lambda h: h["arrays"][0].__setitem__(3, -5),
    lambda h: h["arrays"][0].__setitem__(3, None), lambda h: h["arrays"][0].__setitem__(1, None),
    lambda h: h["arrays"][0].__setitem__(0, 7), lambda h: h["arrays"].__setitem__(0, None),
    lambda h: h["arrays"].append(h["arrays"][0]), lambda h: h["chain"].append(None),
    lambda h: h["meta"].__setitem__("q8:b", None), lambda h: h["meta"].__setitem__("q8:b", [0, 1, None]),
    lambda h: h["meta"].__setitem__("q8:b", [0, 1, "8"]), lambda h: h["meta"].__setitem__("q8:b", [None, 1, [8]]),
    lambda h: h["meta"].__setitem__("q8:b", [0, 1e300, [8]]), lambda h: h["meta"].__setitem__("q8:b", [0, 1, [2**64]]),
    lambda h: h["meta"].__setitem__("q8:zz", [0, 1, [8]]), lambda h: h["meta"].__setitem__("junk", 1),
])
def test_every_malformed_header_is_a_payload_error(edit):
    header, body = _split(_encode("q8"))
    edit(header)
    for expected in (SHAPES, None):
        with pytest.raises(PayloadError):
            _decode("q8", _forge(header, body), expected)


@pytest.mark.parametrize("raw", [b"[" * 100_000, b"\xff\xfe", b"null", b"[1,2]", b'{"chain":NaN}', b"1" * 5000])
def test_a_header_that_is_not_our_json_is_a_payload_error(raw):
    out = bytearray(payload_prefix(len(raw)) + raw)
    seal(out)
    with pytest.raises(PayloadError, match="header"):
        make_codec(None).decode(bytes(out))


def _huge(spec, key, edit):
    header, body = _split(_encode(spec))
    header["meta"][key] = edit(header["meta"][key])
    return _forge(header, body)


@pytest.mark.parametrize("spec,key,edit", [
    ("rand0.2", "rand:v", lambda e: [e[0], [10**8]]),  # issue #13: 6 s and 900 MiB before the fix
    ("rand0.2", "rand:v", lambda e: [e[0], [10**4, 10**4, 10**4]]),
    ("topk0.01", "topk:v", lambda e: [10**9]),
    ("topk0.01", "topk:v", lambda e: [12_800]),  # still one value kept: consistent with the payload, not the model
    ("q8", "q8:v", lambda e: [e[0], e[1], [10**9]]),
    ("sign", "sign:v", lambda e: [e[0], [10**9]]),
    ("rows", "rows:w", lambda e: [10**9, 8]),
    ("rot", "rot", lambda e: [e[0], [["w", [10**9]]]]),
])
def test_a_small_payload_declaring_a_huge_size_is_refused_fast(spec, key, edit):
    forged = _huge(spec, key, edit)
    assert len(forged) < 2000
    for expected in (SHAPES, None):
        t0 = time.perf_counter()
        with pytest.raises(PayloadError):
            make_codec(spec).decode(forged, expected)
        assert time.perf_counter() - t0 < 0.5


def test_without_the_models_shapes_a_decode_is_bounded_by_the_payloads_length():
    codec = make_codec("rot+rand0.2+q2")
    assert codec.max_values(100) == 100 * 1 * 5 * 4  # q2 packs 4 values a byte, rand0.2 scales them by 5
    assert codec.max_values(10, SHAPES) == 10 * 20  # a 10-byte payload cannot carry more than the model
    assert codec.max_values(10**6, SHAPES) == sum(math.prod(s) for s in SHAPES.values())
    assert make_codec("rows").max_values(10) == 1 << 28  # rows: only an absolute cap without the model


def test_every_byte_is_covered_by_the_checksum():
    for spec in ("q2", "DENSE", "SEEDS"):
        payload = _encode(spec)
        for i in range(len(payload)):
            damaged = bytearray(payload)
            damaged[i] ^= 0x10
            with pytest.raises(PayloadError):
                _decode(spec, bytes(damaged))


def test_an_old_format_payload_names_the_version():
    payload = _encode("q8")
    with pytest.raises(PayloadError, match="version 1, this pocketlearn reads 2"):
        make_codec("q8").decode(payload[:3] + b"\x01" + payload[4:])
