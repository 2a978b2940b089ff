import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pocketlearn.errors import ConfigError
from pocketlearn.federated.codecs import ErrorFeedback, Frame, PayloadError, make_codec

UPDATE = {"w": torch.randn(256, 256, generator=torch.Generator().manual_seed(0)), "b": torch.randn(256)}
SHAPES = {n: t.shape for n, t in UPDATE.items()}
DENSE_BYTES = len(make_codec(None).encode(UPDATE))


def _decoded(spec, seed=0):
    codec = make_codec(spec)
    payload = codec.encode(UPDATE, np.random.default_rng(seed))
    return payload, codec.decode(payload, SHAPES)


def test_uncompressed_round_trip_is_exact():
    _, out = _decoded(None)
    assert all(torch.equal(out[n], UPDATE[n]) for n in UPDATE)


@pytest.mark.parametrize("spec,ratio,levels", [("fp16", 2, None), ("bf16", 2, None), ("q8", 4, 255), ("q4", 8, 15),
                                               ("q2", 16, 3)])
def test_quantized_codecs_shrink_payloads_and_stay_within_one_step(spec, ratio, levels):
    payload, out = _decoded(spec)
    assert len(payload) < DENSE_BYTES / ratio * 1.03  # the header is a few hundred bytes
    for n, t in UPDATE.items():
        step = (t.max() - t.min()).item() / levels if levels else 1e-2 * t.abs().max().item()
        assert (out[n] - t).abs().max().item() <= step * 1.0001


@pytest.mark.parametrize("spec", ["q8", "q2"])
def test_stochastic_quantization_is_unbiased(spec):
    mean = sum(_decoded(spec, seed)[1]["w"] for seed in range(300)) / 300
    err = (mean - UPDATE["w"]).abs().mean().item()
    one = (_decoded(spec, 0)[1]["w"] - UPDATE["w"]).abs().mean().item()
    assert err < one / 5  # averaging many decodes converges on the input


def test_top_k_keeps_the_largest_entries_and_chains_with_quantization():
    payload, out = _decoded("topk0.05")
    kept = out["w"] != 0
    assert kept.sum() == round(0.05 * 256 * 256)
    assert UPDATE["w"].abs()[kept].min() >= UPDATE["w"].abs()[~kept].max()
    chained, _ = _decoded("topk0.05+q8")
    assert len(payload) < DENSE_BYTES / 9.7 and len(chained) < DENSE_BYTES / 15.5


def test_sign_sends_one_bit_per_value():
    payload, out = _decoded("sign")
    assert len(payload) < DENSE_BYTES / 31
    assert torch.equal(out["w"].sign(), UPDATE["w"].sign())


def test_error_feedback_sends_what_was_left_out_later():
    codec, feedback = make_codec("topk0.01"), ErrorFeedback()
    rng = np.random.default_rng(0)
    total_sent = torch.zeros(256, 256)
    for _ in range(200):
        _, sent = feedback.encode(codec, 7, {"w": UPDATE["w"] / 100}, rng)
        total_sent += sent["w"]
    # after 200 rounds almost all of 200 x (update / 100) has gone out; only the residual is missing
    residual = feedback.residuals[7]["w"]
    torch.testing.assert_close(total_sent + residual, 2 * UPDATE["w"], rtol=1e-4, atol=1e-4)
    assert residual.abs().max() < UPDATE["w"].abs().max() / 2


def test_wrong_codec_shape_or_version_is_a_clear_error():
    payload = make_codec("q8").encode(UPDATE)
    with pytest.raises(PayloadError, match="expects 'q4'"):
        make_codec("q4").decode(payload)
    with pytest.raises(PayloadError, match="shape"):
        make_codec("q8").decode(payload, {"w": torch.Size([128, 512]), "b": torch.Size([256])})
    with pytest.raises(PayloadError, match="version"):
        make_codec("q8").decode(payload[:3] + bytes([9]) + payload[4:])
    with pytest.raises(ConfigError, match="unknown codec stage"):
        make_codec("zip")


@settings(max_examples=300, deadline=None)
@given(spec=st.sampled_from([None, "fp16", "bf16", "q4", "topk0.1+q8", "sign", "rot+rand0.3+q2", "rows+q8"]),
       data=st.data())
def test_damaged_payloads_never_get_past_the_decoder(spec, data):
    codec = make_codec(spec)
    small = {"w": UPDATE["w"][:16, :8] * (torch.arange(16) % 4 == 0).unsqueeze(1), "b": UPDATE["b"][:8]}  # rows
    original = bytes(codec.encode(small))
    payload = bytearray(original)
    if data.draw(st.booleans()):
        payload = payload[: data.draw(st.integers(0, len(payload) - 1))]
    else:
        for _ in range(data.draw(st.integers(1, 8))):
            payload[data.draw(st.integers(0, len(payload) - 1))] = data.draw(st.integers(0, 255))
    try:
        out = codec.decode(bytes(payload), {"w": torch.Size([16, 8]), "b": torch.Size([8])})
    except PayloadError:
        return
    sent = codec.decode(original)  # the checksum lets nothing else through
    assert out.keys() == sent.keys() and all(torch.equal(out[n], sent[n]) for n in out)


def test_rotation_is_lossless_and_spreads_outliers():
    spiky = {"w": torch.zeros(9610), "b": torch.zeros(3)}
    spiky["w"][7] = 100.0
    codec = make_codec("rot")
    out = codec.decode(codec.encode(spiky, np.random.default_rng(1)))
    assert torch.allclose(out["w"], spiky["w"], atol=1e-4) and torch.equal(out["b"], spiky["b"])
    frame = Frame({n: t.numpy() for n, t in spiky.items()})
    rotated = codec.stages[0].forward(frame, np.random.default_rng(1)).arrays["rot"]
    assert np.abs(rotated).max() < 10.0  # the one spike is spread over its block


def test_rotated_random_subset_in_two_bits_is_unbiased_and_tiny():
    payload, _ = _decoded("rot+rand0.3+q2")
    assert len(payload) < DENSE_BYTES / 50  # 0.3 x 2 bits per value, positions from the seed
    mean = sum(_decoded("rot+rand0.3+q2", seed)[1]["w"] for seed in range(200)) / 200
    one = (_decoded("rot+rand0.3+q2", 0)[1]["w"] - UPDATE["w"]).abs().mean().item()
    assert (mean - UPDATE["w"]).abs().mean().item() < one / 8  # 200 draws: error shrinks ~sqrt(200)


def test_error_feedback_is_kept_only_for_biased_codecs():
    assert make_codec("topk0.1+q8").biased and make_codec("sign").biased
    assert not make_codec("rot+rand0.3+q2").biased and not make_codec("q2").biased



def test_rows_sends_only_changed_rows_losslessly():
    table = torch.zeros(10_000, 64)
    table[[3, 7, 4000]] = torch.randn(3, 64)
    update = {"emb": table, "w": torch.randn(32, 32)}
    codec = make_codec("rows")
    payload = codec.encode(update)
    out = codec.decode(payload, {n: t.shape for n, t in update.items()})
    assert all(torch.equal(out[n], update[n]) for n in update)
    assert len(payload) < (3 * 64 + 32 * 32) * 4 + 1000  # not the 2.5 MB of the dense table
