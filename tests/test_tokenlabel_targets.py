"""Crop-aligned token-label targets and the token-label loss (pure tensor maths)."""

from __future__ import annotations

import pytest
import torch

from rmt_dist.tokenlabel import TokenLabelLoss, crop_aligned_targets, mix_ground_truth, mixtoken_lam


def coordinate_store(h: int, w: int, topk: int = 3):
    """A score map whose top class at (r, c) is the location's own id r*w + c."""
    ids = torch.arange(h * w).view(1, h, w, 1)
    indices = torch.cat([ids, (ids + 1) % (h * w), (ids + 2) % (h * w)], dim=-1)[..., :topk]
    scores = torch.tensor([12.0, 2.0, 1.0])[:topk].expand(1, h, w, topk).clone()
    return scores, indices, h * w


@pytest.mark.parametrize("h, w", [(12, 12), (8, 14), (15, 6)])
@pytest.mark.parametrize("flip", [False, True])
def test_dense_targets_point_at_the_crop(h, w, flip):
    scores, indices, classes = coordinate_store(h, w)
    g = torch.Generator().manual_seed(h * 100 + w + flip)
    size = 4
    for _ in range(20):
        x1, y1 = torch.rand(2, generator=g) * 0.5
        bw, bh = 0.3 + torch.rand(2, generator=g) * 0.2
        box = torch.tensor([[x1, y1, x1 + bw, y1 + bh]])
        cls, dense = crop_aligned_targets(scores, indices, box, torch.tensor([flip]), classes, size, smoothing=0.0)
        assert torch.allclose(dense.sum(-1), torch.ones(1, size * size))
        assert torch.allclose(cls.sum(-1), torch.ones(1))
        top = dense[0].argmax(-1).view(size, size)
        for i in range(size):
            for j in range(size):
                r, c = divmod(int(top[i, j]), w)
                jj = size - 1 - j if flip else j
                # the token's centre, in source fractions
                cx = float(x1 + (jj + 0.5) / size * bw)
                cy = float(y1 + (i + 0.5) / size * bh)
                # the winning map cell must contain that centre, within one cell
                assert abs((c + 0.5) / w - cx) <= 1.0 / w + 1e-6, (i, j, r, c, cx)
                assert abs((r + 0.5) / h - cy) <= 1.0 / h + 1e-6, (i, j, r, c, cy)


def test_whole_image_box_reproduces_the_map_on_the_same_grid():
    scores, indices, classes = coordinate_store(6, 6)
    cls, dense = crop_aligned_targets(scores, indices, torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([False]),
                                      classes, 6, smoothing=0.0)
    assert torch.equal(dense[0].argmax(-1), torch.arange(36))


def test_smoothing_keeps_targets_normalised():
    scores, indices, classes = coordinate_store(7, 7)
    cls, dense = crop_aligned_targets(scores, indices, torch.tensor([[0.1, 0.2, 0.9, 0.8]]), torch.tensor([True]),
                                      classes, 7, smoothing=0.1)
    assert torch.allclose(dense.sum(-1), torch.ones(1, 49), atol=1e-6)
    assert float(dense.min()) >= 0.1 / classes - 1e-7


def test_mixtoken_lam_and_loss_mix_the_cls_target():
    assert mixtoken_lam(None, 49) == 1.0
    assert mixtoken_lam((1, 2, 4, 5), 49) == pytest.approx(1 - 9 / 49)
    torch.manual_seed(0)
    b, n, c = 4, 49, 10
    cls_logits, aux = torch.randn(b, c), torch.randn(b, n, c)
    cls_t = torch.softmax(torch.randn(b, c), -1)
    dense_t = torch.softmax(torch.randn(b, n, c), -1)
    loss = TokenLabelLoss(cls_weight=1.0, dense_weight=0.5)
    box = (1, 2, 4, 5)
    lam = 1 - 9 / 49
    mixed = lam * cls_t + (1 - lam) * cls_t.flip(0)
    expected = (-(mixed * cls_logits.log_softmax(-1)).sum(-1).mean()
                + 0.5 * (-(dense_t * aux.log_softmax(-1)).sum(-1).mean()))
    assert torch.allclose(loss((cls_logits, aux, box), cls_t, dense_t), expected)
    with pytest.raises(ValueError, match="tokenlabel.size"):
        loss((cls_logits, aux, None), cls_t, dense_t[:, :16])


def test_ground_truth_mixing_leans_on_the_label_where_the_teacher_disagrees():
    cls = torch.tensor([[0.7, 0.2, 0.1], [0.7, 0.2, 0.1]])
    out = mix_ground_truth(cls, torch.tensor([0, 1]), smoothing=0.0)
    assert torch.allclose(out[0], 0.5 * cls[0] + 0.5 * torch.tensor([1.0, 0, 0]))
    assert torch.allclose(out[1], 0.9 * cls[1] + 0.1 * torch.tensor([0, 1.0, 0]))
