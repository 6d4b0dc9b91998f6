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
        cls, dense = crop_aligned_targets(
            scores, indices, box, torch.tensor([flip]), classes, size, smoothing=0.0
        )
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
    cls, dense = crop_aligned_targets(
        scores,
        indices,
        torch.tensor([[0.0, 0.0, 1.0, 1.0]]),
        torch.tensor([False]),
        classes,
        6,
        smoothing=0.0,
    )
    assert torch.equal(dense[0].argmax(-1), torch.arange(36))


def test_smoothing_keeps_targets_normalised():
    scores, indices, classes = coordinate_store(7, 7)
    cls, dense = crop_aligned_targets(
        scores, indices, torch.tensor([[0.1, 0.2, 0.9, 0.8]]), torch.tensor([True]), classes, 7, smoothing=0.1
    )
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
    expected = -(mixed * cls_logits.log_softmax(-1)).sum(-1).mean() + 0.5 * (
        -(dense_t * aux.log_softmax(-1)).sum(-1).mean()
    )
    assert torch.allclose(loss((cls_logits, aux, box), cls_t, dense_t), expected)
    with pytest.raises(ValueError, match="tokenlabel.size"):
        loss((cls_logits, aux, None), cls_t, dense_t[:, :16])


def test_ground_truth_mixing_leans_on_the_label_where_the_teacher_disagrees():
    cls = torch.tensor([[0.7, 0.2, 0.1], [0.7, 0.2, 0.1]])
    out = mix_ground_truth(cls, torch.tensor([0, 1]), smoothing=0.0)
    assert torch.allclose(out[0], 0.5 * cls[0] + 0.5 * torch.tensor([1.0, 0, 0]))
    assert torch.allclose(out[1], 0.9 * cls[1] + 0.1 * torch.tensor([0, 1.0, 0]))


@pytest.mark.parametrize("name, token_label", [("resnet10t", False), ("rmt_test", False), ("rmt_test", True)])
def test_per_location_logits_pool_to_the_models_own_logits(name, token_label):
    """Applying the head per location then averaging equals the model's pooled output for
    heads that are pointwise then pooled (BN in eval mode is pointwise)."""
    import timm

    import rmt_dist.models  # noqa: F401  (registers the RMT models with timm)
    from rmt_dist.tokenlabel.teacher import per_location_logits

    kwargs = {"token_label": True} if token_label else {}
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=7, **kwargs).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        dense = per_location_logits(model, x)
        assert dense.shape == (2, 2, 3, 7)
        if token_label:
            feats = model.forward_features(x)
            assert torch.allclose(dense.flatten(1, 2), model.forward_aux(feats), atol=1e-5)
        elif name == "resnet10t":  # linear head after average pooling: mean of per-location logits
            assert torch.allclose(dense.mean((1, 2)), model(x), atol=1e-4)
        else:  # RMT: Swish between the projection and the pool, so compare one location
            feats = model.forward_features(x)
            assert torch.allclose(dense[:, 1, 2], model.forward_head(feats[:, 1:2, 2:3]), atol=1e-5)


def test_teacher_accepts_a_released_rmt_checkpoint(tmp_path):
    """Released RMT .pth files (DDP prefix, Relpos buffers, nested under "model") load as teachers."""
    import timm
    from test_models_official import _release_style_checkpoint

    from rmt_dist.tokenlabel.teacher import build_teacher

    torch.manual_seed(0)
    source = timm.create_model("rmt_test", num_classes=10).eval()
    path = tmp_path / "release.pth"
    torch.save(_release_style_checkpoint(source), path)
    teacher = build_teacher("rmt_test", str(path), num_classes=10)
    for key, value in source.state_dict().items():
        assert torch.equal(teacher.state_dict()[key], value), key


def _adaptive_cls_reference(maps: torch.Tensor, box: list[float]) -> torch.Tensor:
    """A direct transcription of roi_align's adaptive 1x1 bin (aligned=True): the mean of
    ceil(roi_h) x ceil(roi_w) bilinear samples at the bin's sub-cell centres, in map cells."""
    _, h, w = maps.shape
    x1, y1, x2, y2 = (v - 0.5 for v in box)
    gh, gw = int(torch.tensor(y2 - y1).ceil()), int(torch.tensor(x2 - x1).ceil())
    total = torch.zeros(maps.shape[0], dtype=torch.float64)
    for iy in range(gh):
        y = min(max(y1 + (iy + 0.5) * (y2 - y1) / gh, 0.0), h - 1)
        for ix in range(gw):
            x = min(max(x1 + (ix + 0.5) * (x2 - x1) / gw, 0.0), w - 1)
            y0, x0 = int(y), int(x)
            ya, xa = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            ly, lx = y - y0, x - x0
            m = maps.double()
            total += (
                (1 - ly) * (1 - lx) * m[:, y0, x0]
                + (1 - ly) * lx * m[:, y0, xa]
                + ly * (1 - lx) * m[:, ya, x0]
                + ly * lx * m[:, ya, xa]
            )
    return total / (gh * gw)


def test_cls_target_uses_roi_aligns_adaptive_sampling():
    """The whole-crop target averages ceil(box) samples per axis (tlt's roi_align default,
    sampling_ratio=-1/0), not a fixed 2x2."""
    from torchvision.ops import roi_align

    from rmt_dist.tokenlabel.targets import dense_score_maps

    g = torch.Generator().manual_seed(0)
    b, h, w, k, classes = 16, 12, 12, 5, 40
    scores = torch.randn(b, h, w, k, generator=g) * 3
    indices = torch.stack([torch.randperm(classes, generator=g)[:k] for _ in range(b * h * w)]).view(
        b, h, w, k
    )
    lo = torch.rand(b, 2, generator=g) * 0.4
    boxes = torch.cat([lo, lo + 0.3 + torch.rand(b, 2, generator=g) * 0.3], 1)
    cls, _ = crop_aligned_targets(
        scores, indices, boxes, torch.zeros(b, dtype=torch.bool), classes, 7, smoothing=0.0
    )
    maps = dense_score_maps(scores, indices, classes)
    rois = torch.cat([torch.arange(b, dtype=torch.float32)[:, None], boxes * torch.tensor([w, h, w, h])], 1)
    default = roi_align(maps, rois, output_size=(1, 1), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    torch.testing.assert_close(cls, torch.softmax(default.flatten(1), 1), atol=1e-6, rtol=0)
    for i in range(b):
        ref = torch.softmax(_adaptive_cls_reference(maps[i], rois[i, 1:].tolist()), 0).float()
        torch.testing.assert_close(cls[i], ref, atol=1e-5, rtol=0)
    fixed = roi_align(maps, rois, output_size=(1, 1), spatial_scale=1.0, sampling_ratio=2, aligned=True)
    assert (
        cls - torch.softmax(fixed.flatten(1), 1)
    ).abs().max() > 1e-2  # the old 2x2 is measurably different


def test_crop_reaching_past_the_map_takes_the_nearest_cell():
    """Border clamp: token bins beyond the map's edge get the edge cells' targets (a teacher view
    smaller than the image), not the uniform target of zero logits."""
    scores, indices, classes = coordinate_store(3, 4)  # 3 rows: one per token row
    box = torch.tensor([[-1.0, 0.0, 2.0, 1.0]])  # x from one map width left to one right of it
    cls, dense = crop_aligned_targets(scores, indices, box, torch.tensor([False]), classes, 3, smoothing=0.0)
    top = dense[0].argmax(-1).view(3, 3)
    probs = dense[0].view(3, 3, -1)
    for i in range(3):
        assert top[i].tolist() == [
            i * 4 + 0,
            int(top[i, 1]),
            i * 4 + 3,
        ]  # left bins: column 0, right: column 3
        assert float(probs[i, 0].max()) > 0.9 and float(probs[i, 2].max()) > 0.9  # the edge cell's target


def _edge_replicated_roi_align(maps: torch.Tensor, cells: torch.Tensor, size: int) -> torch.Tensor:
    """The border clamp as first built (float64): replicate-pad the map past the box's reach,
    then torchvision's roi_align (sampling_ratio=0, aligned=True). Memory grows with the reach."""
    import math

    import torch.nn.functional as F
    from torchvision.ops import roi_align

    maps, cells = maps.double(), cells.double()
    _, _, h, w = maps.shape
    over = float(torch.cat([-cells[:, :2], cells[:, 2:3] - w, cells[:, 3:4] - h], 1).max())
    pad = math.ceil(over) + 1 if over > 0 else 0
    if pad:
        maps, cells = F.pad(maps, (pad,) * 4, mode="replicate"), cells + pad
    rois = torch.cat([torch.arange(len(cells), dtype=cells.dtype)[:, None], cells], 1)
    return roi_align(maps, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=0, aligned=True)


def _random_maps(g, b: int, h: int, w: int, classes: int = 30, k: int = 4):
    scores = torch.randn(b, h, w, k, generator=g) * 4
    indices = torch.stack([torch.randperm(classes, generator=g)[:k] for _ in range(b * h * w)]).view(
        b, h, w, k
    )
    return scores, indices, classes


@pytest.mark.parametrize("inside", [True, False])
def test_border_clamp_equals_roi_align_on_the_edge_replicated_map(inside):
    """The clamped sampling is roi_align: on boxes inside the map equal to plain roi_align (as
    the targets were before the clamp), on boxes reaching up to 1.5 maps past an edge equal
    to roi_align on a replicate-padded map; for the token grid and the adaptive 1x1 cls bin."""
    from torchvision.ops import roi_align

    from rmt_dist.tokenlabel.targets import _roi_align_clamped, dense_score_maps

    g = torch.Generator().manual_seed(int(inside))
    for h, w in [(7, 7), (18, 18), (5, 13), (16, 3)]:
        scores, indices, classes = _random_maps(g, 6, h, w)
        maps = dense_score_maps(scores, indices, classes)
        if inside:
            lo = torch.rand(6, 2, generator=g) * 0.6
            boxes = torch.cat([lo, lo + 0.05 + torch.rand(6, 2, generator=g) * (1 - lo - 0.05)], 1).clamp(
                max=1
            )
        else:
            lo = torch.rand(6, 2, generator=g) * 3 - 1.5
            boxes = torch.cat([lo, lo + 0.01 + torch.rand(6, 2, generator=g) * 2], 1)
        cells = boxes * torch.tensor([w, h, w, h], dtype=torch.float32)
        rois = torch.cat([torch.arange(6, dtype=torch.float32)[:, None], cells], 1)
        for size in (1, 3, 7, 14):
            ours = _roi_align_clamped(maps, cells, size)
            ref = _edge_replicated_roi_align(maps, cells, size).float()
            torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-5)
            if inside:
                plain = roi_align(maps, rois, (size, size), spatial_scale=1.0, sampling_ratio=0, aligned=True)
                torch.testing.assert_close(ours, plain, atol=2e-5, rtol=1e-5)
        cls, dense = crop_aligned_targets(
            scores, indices, boxes, torch.zeros(6, dtype=torch.bool), classes, 7
        )
        assert torch.isfinite(dense).all() and torch.allclose(cls.sum(-1), torch.ones(6))
    if inside:  # boxes on a 1/20 grid: bin lengths at integers, where float32 and float64 disagree
        import itertools  # on ceil(); roi_align's sample counts are float32's

        h, w = 14, 14
        maps = torch.randn(1, 5, h, w, generator=g).expand(380, -1, -1, -1).contiguous() * 4
        fractions = [i / 20 for i in range(21)]
        boxes = [(a, b, c, b + 0.5) for a, c in itertools.combinations(fractions, 2) for b in (0.1, 0.5)]
        cells = torch.tensor(boxes[:380]) * torch.tensor([w, h, w, h], dtype=torch.float32)
        rois = torch.cat([torch.arange(len(cells), dtype=torch.float32)[:, None], cells], 1)
        for size in (1, 7, 14):
            plain = roi_align(maps, rois, (size, size), spatial_scale=1.0, sampling_ratio=0, aligned=True)
            torch.testing.assert_close(_roi_align_clamped(maps, cells, size), plain, atol=1e-4, rtol=1e-5)


def _allocated_bytes(fn) -> int:
    """Bytes torch allocates on the CPU while `fn` runs (the profiler's per-op memory record)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return sum(max(e.cpu_memory_usage, 0) for e in prof.events())


def test_a_box_far_past_the_map_costs_no_more_memory_than_one_inside():
    """A crop 50 map widths past each edge (a wide image's crop mapped into a small teacher view,
    or moved off the map by the label ops) allocates what an in-map crop does, and still takes
    the nearest cells: the corner bins are the corner cells."""
    g = torch.Generator().manual_seed(3)
    scores, indices, classes = _random_maps(g, 2, 8, 8)
    flips = torch.zeros(2, dtype=torch.bool)

    def targets(reach: float):
        box = torch.tensor([[-reach, -reach, 1 + reach, 1 + reach], [0.1, 0.2, 0.8, 0.9]])
        return crop_aligned_targets(scores, indices, box, flips, classes, 14, smoothing=0.0)

    inside = _allocated_bytes(lambda: targets(0.0))
    far = _allocated_bytes(lambda: targets(50.0))
    assert far < 1.5 * inside, (far, inside)  # replicate-padding the map: ~300x
    from rmt_dist.tokenlabel.targets import dense_score_maps

    _, dense = targets(50.0)
    corner = torch.softmax(dense_score_maps(scores, indices, classes)[0, :, 0, 0], 0)
    torch.testing.assert_close(dense[0, 0], corner, atol=1e-6, rtol=0)
