"""The EVAD torch reference: token flow, placement, forced decisions, precision, batching."""

from __future__ import annotations

import copy

import pytest
import torch

from evad.models import build_model, get_preset
from evad.models.evad import clip_boxes, extend_boxes
from evad.models.flops import token_counts
from evad.models.vit import keyframe_first, sinusoid_table


def test_token_counts_vit_b_ktp_288x512() -> None:
    counts = token_counts(get_preset("vit_b_ktp"), 288, 512)
    assert [counts[0], counts[4], counts[7], counts[10]] == [4608, 3226, 2259, 1582]
    assert counts[-1] == 1582


def test_tiny_forward_at_288x512_prunes_like_vit_b_ktp(tiny_model) -> None:
    clip = torch.randn(1, 3, 16, 288, 512, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = tiny_model(clip)
    assert [k.shape[1] + 576 for k in out.kept_indices] == [3226, 2259, 1582]
    for k in out.kept_indices:  # valid, distinct original non-keyframe positions
        assert int(k.min()) >= 0 and int(k.max()) < 7 * 576 and k.unique().numel() == k.numel()
    # each block keeps a subset of the previous block's tokens
    for prev, nxt in zip(out.kept_indices, out.kept_indices[1:], strict=False):
        assert bool(torch.isin(nxt, prev).all())
    n = get_preset("tiny").num_proposals
    assert out.boxes.shape == (1, n, 4) and out.action_logits.shape == (1, n, 80)


def test_keyframe_slice_moves_to_front() -> None:
    t, s = 8, 3
    x = torch.arange(t * s).float()[None, :, None]
    got = keyframe_first(x, t, s).flatten().long().tolist()
    assert got == [12, 13, 14] + list(range(12)) + list(range(15, 24))


def test_sinusoid_table_matches_videomae_formula() -> None:
    table = sinusoid_table((2, 3, 3), 6, (3, 3))
    pos, j = 7, torch.arange(6)
    angle = pos / 10000 ** (2 * (j // 2) / 6)
    want = torch.where(j % 2 == 0, torch.sin(angle), torch.cos(angle)).float()
    torch.testing.assert_close(table[pos], want)
    resized = sinusoid_table((2, 3, 3), 6, (4, 5))
    assert resized.shape == (2 * 4 * 5, 6)


def test_dense_map_mask_token_and_placement_quirk() -> None:
    torch.manual_seed(0)
    head = build_model("tiny").det_head
    t, h, w = 8, 2, 2
    s, dim = h * w, head.preset.decoder_dim
    x = torch.randn(1, s + 3, dim)
    idx = torch.tensor([[9, 2, 5]])  # kept non-keyframe tokens, in top-k order
    dense, tokens = head.dense_map(x, idx, (t, h, w))
    pos = head.pos_embed(h, w, x)
    dense = dense - pos  # strip positions to see what was placed
    key = t // 2
    torch.testing.assert_close(dense[0, key * s:(key + 1) * s], x[0, :s])
    nonkey = [p for p in range(t * s) if not key * s <= p < (key + 1) * s]
    placed = {nonkey[2]: x[0, s], nonkey[5]: x[0, s + 1], nonkey[9]: x[0, s + 2]}  # ascending
    for j, p in enumerate(nonkey):
        want = placed.get(p, head.mask_token[0, 0])
        torch.testing.assert_close(dense[0, p], want, msg=f"non-keyframe slot {j}")
    # token j carries the position of the j-th smallest kept slot (same quirk)
    torch.testing.assert_close(tokens[0, s:] - x[0, s:], pos[[nonkey[2], nonkey[5], nonkey[9]]])
    torch.testing.assert_close(tokens[0, :s] - x[0, :s], pos[key * s:(key + 1) * s])


def test_forced_decisions_reproduce_outputs(tiny_model, clip_small) -> None:
    with torch.no_grad():
        ref = tiny_model(clip_small)
        again = tiny_model(clip_small, kept_indices=ref.kept_indices)
        assert all(torch.equal(a, b) for a, b in zip(ref.kept_indices, again.kept_indices,
                                                      strict=True))
        torch.testing.assert_close(again.action_logits, ref.action_logits, rtol=0, atol=0)
        # a different, valid decision changes the outputs
        other = [k.flip(1) for k in ref.kept_indices]
        moved = tiny_model(clip_small, kept_indices=other)
        assert not torch.allclose(moved.action_logits, ref.action_logits)
        with pytest.raises(ValueError, match="forced"):
            tiny_model(clip_small, kept_indices=[k[:, :-1] for k in ref.kept_indices])
        with pytest.raises(ValueError, match="forced kept-index tensors"):
            tiny_model(clip_small, kept_indices=ref.kept_indices[:2])


def test_fp64_and_fp32_agree(tiny_model, clip_small) -> None:
    m64 = copy.deepcopy(tiny_model).double()
    with torch.no_grad():
        ref = m64(clip_small.double())
        got = tiny_model(clip_small)
        # (1) the same decisions at every pruning block (calmed weights: no near-ties here)
        for a, b in zip(ref.kept_indices, got.kept_indices, strict=True):
            assert torch.equal(a, b)
        # (2) the continuous outputs agree
        assert (got.boxes.double() - ref.boxes).abs().max() < 1e-2
        assert (got.person_scores.double() - ref.person_scores).abs().max() < 1e-4
        probs = torch.sigmoid(got.action_logits.double())
        assert (probs - torch.sigmoid(ref.action_logits)).abs().max() < 1e-4


def test_batch_equals_single_clips(tiny_model) -> None:
    g = torch.Generator().manual_seed(2)
    clips = torch.randn(2, 3, 16, 96, 160, generator=g)
    sizes = torch.tensor([[96, 160], [80, 130]])
    with torch.no_grad():
        both = tiny_model(clips, sizes)
        for i in range(2):
            one = tiny_model(clips[i:i + 1], sizes[i:i + 1])
            assert all(torch.equal(a[i:i + 1], b) for a, b in
                       zip(both.kept_indices, one.kept_indices, strict=True))
            torch.testing.assert_close(both.boxes[i:i + 1], one.boxes, rtol=1e-5, atol=1e-3)
            torch.testing.assert_close(both.action_logits[i:i + 1], one.action_logits,
                                       rtol=1e-4, atol=1e-4)
    assert float(both.boxes[1, :, 0::2].max()) <= 129 and float(both.boxes[1, :, 1::2].max()) <= 79
    assert float(both.boxes.min()) >= 0
    assert bool(((both.person_scores >= 0) & (both.person_scores <= 1)).all())


def test_input_size_must_be_multiple_of_32(tiny_model) -> None:
    with pytest.raises(ValueError, match="multiples of 32"):
        tiny_model(torch.zeros(1, 3, 16, 100, 160))


def test_no_pruning_preset_keeps_everything() -> None:
    torch.manual_seed(0)
    model = build_model("tiny", keep_rate=1.0).eval()
    assert model.pruning_blocks == []
    with torch.no_grad():
        out = model(torch.randn(1, 3, 16, 64, 64))
    assert out.kept_indices == []


def test_keep_rate_override_changes_counts() -> None:
    torch.manual_seed(0)
    model = build_model("tiny", keep_rate=0.6).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 16, 96, 160))
    s = 6 * 10
    n, want = 8 * s, []
    for _ in range(3):
        n = -(-3 * n // 5)
        want.append(n - s)
    assert [k.shape[1] for k in out.kept_indices] == want


def test_box_extension_and_clipping() -> None:
    boxes = torch.tensor([[[10.0, 20.0, 29.0, 59.0], [-5.0, -5.0, 300.0, 300.0]]])
    size = torch.tensor([[100.0, 200.0]])
    ext = extend_boxes(boxes, (0.4, 0.2), size)
    # w' = 20, h' = 40: x +- 4, y +- 4
    torch.testing.assert_close(ext[0, 0], torch.tensor([6.0, 16.0, 33.0, 63.0]))
    torch.testing.assert_close(ext[0, 1], torch.tensor([0.0, 0.0, 199.0, 99.0]))
    torch.testing.assert_close(clip_boxes(boxes, size)[0, 0], boxes[0, 0])
