"""DepMatch plug-in: the depmatch.md §9 checklist on hand-built strong views (CPU, small, seeded)."""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from sparseg.config import ConfigError, ModelConfig
from sparseg.data.depth import robust_normalise
from sparseg.data.transforms import cutmix
from sparseg.methods import method_class
from sparseg.methods.base import MethodContext, Step
from sparseg.models import create_model
from sparseg.plugins.depmatch import DepMatch, DepMatchConfig, to_grid
from sparseg.plugins.views import StrongView

STEP = Step(iteration=7, epoch=0, iters_per_epoch=10, total_iters=100)
UNIT = {"unit": 1.0, "lambda_cdp": 1.0, "lambda_ur": 1.0}  # raw loss values, d′ = d̃


def make_view(labels, depth, features=None, logits=None, probs=None, valid=None, source=None, weight=1.0,
              num_classes=3, channels=4, seed=0):
    """A view at input resolution [B,H,W] with model outputs at the same resolution (grids of stride 1)."""
    g = torch.Generator().manual_seed(seed)
    b, h, w = labels.shape
    if features is None:
        features = torch.randn(b, channels, h, w, generator=g)
    if logits is None:
        logits = 0.5 * torch.randn(b, num_classes, h, w, generator=g)
    if probs is None:
        probs = (2 * torch.randn(b, num_classes, h, w, generator=g)).softmax(1)
    return StrongView(
        logits=logits.clone().requires_grad_(), feature=features.clone().requires_grad_(), teacher_probs=probs,
        pseudo_label=labels, valid=torch.ones(b, h, w, dtype=torch.bool) if valid is None else valid,
        source=torch.zeros(b, h, w, dtype=torch.bool) if source is None else source, weight=weight, depth=depth,
    )


def plugin(num_classes=3, seed=0, **cfg):
    cfg = {**UNIT, **cfg}
    for term in ("cddp", "uldr"):
        cfg[term] = {"grid_stride": 1, **cfg.get(term, {})}
    return DepMatch(cfg, num_classes, seed)


def stripes(b=1, h=6, w=6, classes=(0, 1)):
    labels = torch.zeros(b, h, w, dtype=torch.long)
    for i, k in enumerate(classes):
        labels[:, :, i * w // len(classes):] = k
    return labels


# ------------------------------------------------------------------------------------ §9.1, §9.2


def test_constant_depth_selects_pairs_as_specified():
    labels = stripes(2, 6, 6)
    view = make_view(labels, torch.full((2, 6, 6), 0.5))
    off = plugin(uldr={"inter": "off"})([view], STEP)
    # every same-class uncertain pair is near (Δd = 0); no pair is far, so both inter variants add exactly 0
    for inter in ("released", "all_pairs"):
        assert plugin(uldr={"inter": inter})([view], STEP)["uldr"].item() == off["uldr"].item()
    assert plugin(cddp={"inter": "paper"})([view], STEP)["cddp"].item() == off["cddp"].item()
    # released ULDR by hand: Σ over same-class uncertain pairs (1 − σ(z_i z_j)) / (B·N²), averaged over classes
    z = view.logits.detach()
    uncertain = z.softmax(1).gather(1, labels[:, None])[:, 0] < 0.95
    expected = 0.0
    for k in (0, 1):
        total = 0.0
        for b in range(2):
            zk = z[b, k][(labels[b] == k) & uncertain[b]]
            total += (1 - torch.sigmoid(zk[:, None] * zk[None, :])).sum()
        expected += total / (2 * 36**2) / 2
    assert off["uldr"].item() == pytest.approx(float(expected), rel=1e-6)


def simplex_view(target="similarity"):
    """One class, 6 cells whose features sit on a unit-edge regular simplex, constant depth."""
    features = (torch.eye(6) / 2**0.5).T.reshape(1, 6, 2, 3)
    return make_view(torch.zeros(1, 2, 3, dtype=torch.long), torch.full((1, 2, 3), 0.3), features=features)


def test_cddp_zero_when_feature_distances_match_the_target():
    assert plugin()([simplex_view()], STEP)["cddp"].item() < 1e-10  # ΔF = T = 1 off the diagonal
    same = make_view(torch.zeros(1, 2, 3, dtype=torch.long), torch.full((1, 2, 3), 0.3),
                     features=torch.ones(1, 4, 2, 3))
    assert plugin(cddp={"intra_target": "distance"})([same], STEP)["cddp"].item() < 1e-10  # ΔF = T = 0
    flat_entropy = make_view(stripes(), torch.rand(1, 6, 6), probs=torch.full((1, 3, 6, 6), 1 / 3))
    assert plugin()([flat_entropy], STEP)["cddp"].item() == 0.0  # W = |Δe| = 0 for every pair


def test_direction_and_gradients():
    view = simplex_view()
    view.feature = (1.5 * view.feature.detach()).requires_grad_()  # distances 1.5 ≠ T = 1
    view.depth.requires_grad_()
    view.teacher_probs.requires_grad_()
    out = plugin()([view], STEP)
    assert out["cddp"].item() > 1e-3
    (out["cddp"] + out["uldr"]).backward()
    assert view.feature.grad.abs().sum() > 0 and view.logits.grad.abs().sum() > 0
    assert view.depth.grad is None and view.teacher_probs.grad is None  # never through depth or teacher
    duplicated = make_view(torch.zeros(1, 3, 3, dtype=torch.long), torch.rand(1, 3, 3),
                           features=torch.ones(1, 4, 3, 3))
    plugin()([duplicated], STEP)["cddp"].backward()
    assert torch.isfinite(duplicated.feature.grad).all()  # ε-safe distance at ΔF = 0 (§7.6)


# ------------------------------------------------------------------------------------ §9.4


@pytest.mark.parametrize("a", [0.1, 10.0, -1.0])
def test_losses_invariant_to_global_depth_rescale_under_robust(a):
    g = torch.Generator().manual_seed(1)
    raw = torch.rand(2, 12, 12, generator=g) * 3 + torch.linspace(0, 5, 12)[:, None]
    labels = stripes(2, 12, 12, classes=(0, 1, 2))
    switches = {"unit": 7.0, "cddp": {"inter": "paper", "max_pixels": 16},
                "uldr": {"inter": "all_pairs", "max_pixels": 16}}

    def losses(disparity, **cfg):
        view = make_view(labels, disparity, seed=3)
        return {k: v.item() for k, v in plugin(**{**switches, **cfg})([view], STEP).items()}

    def normalised(d):
        return torch.stack([robust_normalise(x)[0] for x in d])

    base = losses(normalised(raw))
    rescaled = losses(normalised(a * raw + 3.0))
    for key in base:
        assert rescaled[key] == pytest.approx(base[key], rel=1e-5, abs=1e-9)
    raw_cfg = {"norm": "raw", "unit": None}
    assert losses(abs(a) * 2 * raw + 3.0, **raw_cfg) != losses(raw, **raw_cfg)  # under raw the scale matters


# ------------------------------------------------------------------------------------ §9.5


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any op creates (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("side", [57, 114])
def test_pair_sampling_bounds_the_largest_tensor(side):
    p = 64
    view = make_view(stripes(1, side, side), torch.rand(1, side, side), num_classes=2, channels=2)
    linear = 4 * side * side * 2  # maps of the view, up to the 4 taps of the strict valid mask
    with LargestTensor() as mode:
        out = plugin(num_classes=2, cddp={"max_pixels": p, "inter": "paper"},
                     uldr={"max_pixels": p, "inter": "all_pairs"})([view], STEP)
        (out["cddp"] + out["uldr"]).backward()
    assert mode.largest <= max(p * p, linear)


def test_largest_tensor_hook_sees_dense_pairs():
    view = make_view(stripes(1, 20, 20), torch.rand(1, 20, 20), num_classes=2, channels=2)
    with LargestTensor() as mode:
        plugin(num_classes=2, cddp={"max_pixels": None}, lambda_ur=0.0)([view], STEP)
    assert mode.largest >= 200**2  # N² for a class of N = 200 cells


def test_p_at_least_n_reproduces_dense_and_sampling_is_unbiased():
    view = make_view(stripes(2, 6, 8), torch.rand(2, 6, 8), seed=5)
    dense = plugin(cddp={"max_pixels": None}, uldr={"max_pixels": None})([view], STEP)
    at_n = plugin(cddp={"max_pixels": 24}, uldr={"max_pixels": 24})([view], STEP)  # 24 = cells per class
    assert all(torch.equal(dense[k], at_n[k]) for k in dense)
    sampled = plugin(cddp={"max_pixels": 8}, uldr={"max_pixels": 8})
    with torch.no_grad():
        runs = [sampled([view], Step(i, 0, 10, 1000)) for i in range(100)]
    for key in dense:
        mean = torch.stack([r[key] for r in runs]).mean()
        assert mean.item() == pytest.approx(dense[key].item(), rel=0.05)


# ------------------------------------------------------------------------------------ §9.6, §7.1-7.3


def test_to_grid_invents_no_ids_and_keeps_no_ignored_pixel():
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 3, 15])[torch.randint(0, 3, (2, 40, 40), generator=g)]
    assert set(to_grid(labels, 7, "label").unique().tolist()) <= {0, 3, 15}
    assert not set(to_grid(labels, 7, "label_bilinear").unique().tolist()) <= {0, 3, 15}  # the release's phantoms
    valid = torch.rand(2, 40, 40, generator=g) > 0.1
    on_grid = to_grid(valid, 7, "mask")
    x = torch.where(valid, 1.0, float("nan"))[:, None]
    assert torch.isfinite(to_grid(x, 7, "continuous")[:, 0][on_grid]).all()  # no valid cell reads an ignored pixel


def test_nan_features_on_ignored_pixels_change_nothing():
    labels = stripes(2, 12, 12)
    valid = torch.ones(2, 12, 12, dtype=torch.bool)
    valid[:, :, -3:] = False
    valid[0, :4] = False
    view = make_view(labels, torch.rand(2, 12, 12), valid=valid, seed=2)
    cfg = {"cddp": {"grid_stride": 2, "inter": "paper"}, "uldr": {"grid_stride": 2}}
    clean = plugin(**cfg)([view], STEP)
    view.feature = view.feature.detach().masked_fill(~valid[:, None], float("nan")).requires_grad_()
    view.logits = view.logits.detach().masked_fill(~valid[:, None], float("nan")).requires_grad_()
    dirty = plugin(**cfg)([view], STEP)
    assert all(torch.isfinite(dirty[k]) and dirty[k].item() == pytest.approx(clean[k].item(), rel=1e-6) for k in clean)


# ------------------------------------------------------------------------------------ §9.7


def dense_reference_cddp(feature, depth, probs, labels, valid, grid):
    """§4.2 written out densely: bilinear (align_corners) resizing, truncated ids, 0/255 ignore."""
    resize = lambda x: F.interpolate(x, grid, mode="bilinear", align_corners=True)
    d, f = resize(depth[:, None])[:, 0], resize(feature)
    ignore = resize((~valid).float()[:, None] * 255)[:, 0]
    y = resize(labels[:, None].float())[:, 0].long()
    p = resize(probs)
    e = -(p * torch.log(p + 1e-10)).sum(1)
    classes = torch.unique(y)
    total = 0.0
    for k in classes:
        for b in range(len(y)):
            omega = (y[b] == k) & (ignore[b] != 255)
            if omega.sum() == 0:
                continue
            fk, dk, ek = f[b][:, omega], d[b][omega], e[b][omega]
            distance = (fk[:, :, None] - fk[:, None, :]).norm(dim=0)
            target = torch.exp(-(dk[:, None] - dk[None, :]) ** 2 / 2)
            weight = (ek[:, None] - ek[None, :]).abs()
            total = total + (weight * (distance - target) ** 2).mean() / len(y)
    return total / len(classes)


def dense_reference_uldr(logits, depth, labels, valid, permutation):
    """§5.2 written out densely: H/10 grid, 1e-6 floor, previous-class inter term, the given class order."""
    h, w = logits.shape[-2:]
    grid = (h // 10, w // 10)
    d = F.interpolate(depth[:, None], grid, mode="bilinear", align_corners=True).flatten(1)
    z = F.interpolate(logits, grid, mode="bilinear", align_corners=True).flatten(2)
    ignore = F.interpolate((~valid).float()[:, None] * 255, grid, mode="bilinear").flatten(1)
    y = F.interpolate(labels[:, None].float(), grid, mode="bilinear").long().flatten(1)
    prob = z.softmax(1)
    delta = (d[:, :, None] - d[:, None, :]).abs()
    total, count, previous = 0.0, 0, None
    for c in torch.unique(y)[permutation]:
        u = ((y == c) & (prob[:, c] < 0.95) & (ignore != 255)).float()
        if u.sum() == 0:
            continue
        zc = z[:, c]
        m = (u[:, :, None] * u[:, None, :] * (delta < 0.2)).clamp(min=1e-6)
        term = (m * (1 - torch.sigmoid(zc[:, :, None] * zc[:, None, :]))).mean()
        if previous is not None:
            up, zp = previous
            m2 = (up[:, :, None] * u[:, None, :] * (delta > 1.5)).clamp(min=1e-6)
            term = term + (m2 * torch.sigmoid(zp[:, :, None] * zc[:, None, :])).mean() / m2.sum()
        total, count, previous = total + term, count + 1, (u, zc)
    return total / count


def test_reference_preset_equals_dense_release_formulas():
    g = torch.Generator().manual_seed(4)
    labels = torch.tensor([0, 3])[torch.randint(0, 2, (2, 56, 56), generator=g)]
    valid = torch.ones(2, 56, 56, dtype=torch.bool)
    valid[:, 44:] = False
    depth = 3 * torch.rand(2, 56, 56, generator=g)  # raw units
    features = torch.randn(2, 5, 32, 32, generator=g)  # 32 // 8 = 4 = 56 // 14
    view = make_view(labels, depth, features=features, valid=valid, num_classes=4, seed=6)
    dm = DepMatch({"preset": "reference", "lambda_cdp": 1.0, "lambda_ur": 1.0}, 4, seed=0)
    out = dm([view], STEP)
    cddp = dense_reference_cddp(features, depth, view.teacher_probs, labels, valid, (4, 4))
    classes = to_grid(labels, 10, "label_bilinear").unique()
    assert len(classes) > 2  # phantom ids are part of the reference
    order = torch.randperm(len(classes), generator=dm.generator(STEP, 0, "uldr"))
    uldr = dense_reference_uldr(view.logits.detach(), depth, labels, valid, order)
    assert out["cddp"].item() == pytest.approx(float(cddp), rel=1e-6)
    assert out["uldr"].item() == pytest.approx(float(uldr), rel=1e-6)


def test_reference_uldr_resizes_crop_size_logits():
    """The release's model returns logits upsampled to the crop (bilinear, align_corners=True) and ULDR resizes
    those: under ``reference`` model-resolution logits give the dense §5.2 value of the crop-size logits."""
    g = torch.Generator().manual_seed(5)
    labels = torch.tensor([0, 2])[torch.randint(0, 2, (2, 63, 63), generator=g)]
    valid = torch.ones(2, 63, 63, dtype=torch.bool)
    valid[:, :, 55:] = False
    depth = 3 * torch.rand(2, 63, 63, generator=g)
    logits = 2 * torch.randn(2, 3, 16, 16, generator=g)  # stride 4 (ceil), as DeepLabV3+ returns them
    view = make_view(labels, depth, logits=logits, valid=valid, seed=3)
    dm = DepMatch({"preset": "reference", "lambda_cdp": 0.0, "lambda_ur": 1.0}, 3, seed=0)
    crop_logits = F.interpolate(logits, (63, 63), mode="bilinear", align_corners=True)
    order = torch.randperm(len(to_grid(labels, 10, "label_bilinear").unique()), generator=dm.generator(STEP, 0, "uldr"))
    expected = dense_reference_uldr(crop_logits, depth, labels, valid, order)
    assert dm([view], STEP)["uldr"].item() == pytest.approx(float(expected), rel=1e-6)
    model_size = DepMatch({"preset": "reference", "lambda_cdp": 0.0, "lambda_ur": 1.0, "uldr": {"logit_size": "model"}},
                          3, seed=0)([view], STEP)["uldr"].item()
    assert model_size != pytest.approx(float(expected), rel=1e-4)  # the switch is live


# ------------------------------------------------------------------------------------ §9.8-§9.11


def test_nothing_to_process_gives_attached_zeros():
    view = make_view(stripes(), torch.rand(1, 6, 6), valid=torch.zeros(1, 6, 6, dtype=torch.bool))
    out = plugin()([view], STEP)
    confident = make_view(stripes(), torch.rand(1, 6, 6), logits=100.0 * F.one_hot(stripes(), 3).permute(0, 3, 1, 2))
    out_confident = plugin()([confident], STEP)
    for result in (out, out_confident):
        assert result["uldr"].dim() == 0 and result["uldr"].item() == 0.0 and result["uldr"].requires_grad
    assert out["cddp"].dim() == 0 and out["cddp"].item() == 0.0
    (out["cddp"] + out["uldr"]).backward()
    assert view.feature.grad is not None and view.logits.grad.abs().sum() == 0  # backward reaches the outputs


def test_same_seed_same_draws():
    view = make_view(stripes(2, 10, 10, classes=(0, 1, 2)), torch.rand(2, 10, 10), seed=8)
    cfg = {"cddp": {"max_pixels": 5}, "uldr": {"max_pixels": 5, "inter": "released"}}
    first, again = plugin(seed=1, **cfg)([view], STEP), plugin(seed=1, **cfg)([view], STEP)
    other = plugin(seed=2, **cfg)([view], STEP)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_cross_source_pairs_switch_drops_seam_pairs():
    labels = torch.zeros(1, 4, 8, dtype=torch.long)
    source = torch.zeros(1, 4, 8, dtype=torch.bool)
    source[..., 4:] = True  # the partner's box: the right half
    probs = torch.where(source[:, None], torch.tensor([0.9, 0.05, 0.05])[:, None, None],
                        torch.tensor([0.5, 0.25, 0.25])[:, None, None])  # entropy differs only across the seam
    view = make_view(labels, torch.rand(1, 4, 8), probs=probs, source=source)
    assert plugin(cross_source_pairs=False)([view], STEP)["cddp"].item() == 0.0
    assert plugin(cross_source_pairs=True)([view], STEP)["cddp"].item() > 0.0
    # ULDR inter: the only far pairs (|Δd′| = 7 · 0.8) straddle the seam
    labels[..., 2:6] = 1
    far = make_view(labels, torch.where(source, 0.9, 0.1), source=source)
    on, off = (plugin(unit=7.0, cross_source_pairs=False, uldr={"inter": inter})([far], STEP)["uldr"].item()
               for inter in ("all_pairs", "off"))
    assert on == off
    assert plugin(unit=7.0, cross_source_pairs=True, uldr={"inter": "all_pairs"})([far], STEP)["uldr"].item() > off


def test_terms_average_the_views_by_their_weights_and_lambda_is_their_loss_weight():
    views = [make_view(stripes(), torch.rand(1, 6, 6), seed=s, weight=w) for s, w in ((0, 0.5), (1, 0.25))]
    raw = [plugin()([replace(v, weight=1.0)], STEP) for v in views]  # C^s and U^s (no sampling at P = 512)
    depmatch = plugin(lambda_cdp=0.03, lambda_ur=0.005)
    averaged = depmatch(views, STEP)
    for key in ("cddp", "uldr"):
        assert averaged[key].item() == pytest.approx((0.5 * raw[0][key].item() + 0.25 * raw[1][key].item()) / 0.75)
    assert depmatch.loss_weights() == {"cddp": 0.03, "uldr": 0.005}


@pytest.mark.parametrize(("name", "per_view"), [("fixmatch", (0.015, 0.0025)), ("unimatch", (0.00375, 0.000625)),
                                                ("unimatch_v2", (0.0075, 0.00125))])
def test_a_consistency_method_weighs_each_view_by_half_its_weight_times_lambda(name, per_view):
    """depmatch.md §6: L = ½ [... + Σ_s w_s (λ_cdp C^s + λ_ur U^s)]; for UniMatch V2 0.0075 and 0.00125 per view."""
    cls = method_class(name)
    model = create_model(ModelConfig(encoder="resnet18", stem="plain", width=8, decoder_channels=16), 3)
    method = cls(model, cls.Config(depmatch={"unit": 1.0}), MethodContext(3))
    weights = method.loss_weights()
    share = 1 / cls.num_views  # each view's part of a term that averages views of equal weight
    assert (weights["cddp"] * share, weights["uldr"] * share) == pytest.approx(per_view, rel=1e-12)


# ------------------------------------------------------------------------------------ online depth (§3)


class RecordingEstimator:
    """Stands in for a depth model: disparity = 3 × the crop's mean colour; records every batch it is given."""

    def __init__(self):
        self.calls = []

    def __call__(self, crops):
        self.calls.append(crops.clone())
        return 3 * crops.mean(1)


def online_views():
    """Two views of 3 weak crops: view 0 pastes a box into image 0, view 1 into images 0 and 1; image 2 has none."""
    g = torch.Generator().manual_seed(9)
    weak = torch.rand(3, 3, 12, 12, generator=g)
    partner = torch.tensor([1, 2, 0])
    views = []
    for pasted in ([0], [0, 1]):
        boxes = torch.zeros(3, 12, 12, dtype=torch.bool)
        for i in pasted:
            boxes[i, 2:7, 3:9] = True
        view = make_view(stripes(3, 12, 12, classes=(0, 1, 2)), None, source=boxes, seed=len(pasted))
        view.weak_image = cutmix(weak, boxes, partner)
        views.append(view)
    return views


@pytest.mark.parametrize("norm", ["raw", "robust"])
def test_online_depth_is_the_estimate_of_each_composited_weak_crop(norm):
    """Reference: the estimator runs on each view's CutMix composite of the weak crop and its output is the
    depth (raw, or robust-normalised over the crop); one batched call per step, each distinct crop once."""
    views = online_views()
    options = {"lambda_cdp": 1.0, "lambda_ur": 1.0, "norm": norm, **({"unit": 1.0} if norm == "robust" else {}),
               "cddp": {"grid_stride": 2}, "uldr": {"grid_stride": 2}}
    estimator = RecordingEstimator()
    online = DepMatch({**options, "depth_source": "online"}, 3, seed=0, estimator=estimator)([*views], STEP)
    assert len(estimator.calls) == 1
    seen = estimator.calls[0]
    # 3 composites with a box + the plain crops of image 1 (no box in view 0) and image 2 (none in either view)
    expected = [views[0].weak_image[0], views[1].weak_image[0], views[1].weak_image[1],
                views[0].weak_image[1], views[0].weak_image[2]]
    assert len(seen) == 5 and all(any(torch.equal(crop, e) for crop in seen) for e in expected)
    for view in views:
        disparity = 3 * view.weak_image.mean(1)
        if norm == "robust":
            disparity = torch.stack([robust_normalise(d)[0] for d in disparity])
        view.depth = disparity
    precomputed = DepMatch(options, 3, seed=0)(views, STEP)
    for term in ("cddp", "uldr"):
        assert online[term].item() == pytest.approx(precomputed[term].item(), rel=1e-5)
        assert online[term].item() > 0


def test_online_depth_needs_an_estimator_and_keeps_it_out_of_the_module():
    with pytest.raises(ConfigError, match="method.depmatch.estimator"):
        DepMatch({"depth_source": "online", "unit": 1.0}, 3)
    plugin_module = DepMatch({"depth_source": "online", "unit": 1.0}, 3, estimator=torch.nn.Conv2d(3, 1, 1))
    assert not list(plugin_module.children()) and not plugin_module.state_dict()


def test_online_estimator_precision_follows_the_preset(tiny_estimator):
    online = {"depth_source": "online", "estimator": str(tiny_estimator)}
    assert DepMatch({**online, "unit": 1.0}, 3).estimator.precision == "fp16"
    assert DepMatch({**online, "preset": "reference"}, 3).estimator.precision == "fp32"  # the release's


def test_online_estimator_runs_a_transformers_depth_model(tiny_estimator):
    """OnlineDepth: crop → nearest multiple of the patch (30 → 28), processor mean/std, model, back to the crop."""
    import transformers

    from sparseg.depth_estimation import OnlineDepth

    crops = torch.rand(2, 3, 30, 30, generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the trainer's autocast does not reach the estimator
        depth = OnlineDepth(str(tiny_estimator))(crops)
    model = transformers.AutoModelForDepthEstimation.from_pretrained(tiny_estimator).eval()
    processor = transformers.AutoImageProcessor.from_pretrained(tiny_estimator)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (processor.image_mean, processor.image_std))
    x = (F.interpolate(crops, (28, 28), mode="bilinear", align_corners=False) - mean) / std
    with torch.no_grad():
        expected = F.interpolate(model(pixel_values=x).predicted_depth[:, None], (30, 30), mode="bilinear")[:, 0]
    assert depth.shape == (2, 30, 30) and depth.dtype == torch.float32 and not depth.requires_grad and depth.std() > 0
    assert torch.allclose(depth, expected, atol=1e-6)


# ------------------------------------------------------------------------------------ config


def test_presets_switches_and_errors():
    ref = DepMatchConfig(preset="reference", uldr={"inter": "off"})
    assert ref.norm == "raw" and ref.cross_source_pairs and ref.cddp.max_pixels is None
    assert ref.uldr.floor and ref.uldr.inter == "off" and ref.cddp.label_resize == "bilinear"
    default = DepMatchConfig()
    assert (default.lambda_cdp, default.lambda_ur, default.cddp.max_pixels, default.uldr.max_pixels) == (0.03, 0.005, 512, 512)
    assert not default.cross_source_pairs and default.cddp.label_resize == default.uldr.label_resize == "nearest"
    with pytest.raises(ConfigError, match=r"method.depmatch.cddp.sigmaa' \(did you mean 'method.depmatch.cddp.sigma'"):
        DepMatch({"cddp": {"sigmaa": 1}}, 3)
    with pytest.raises(ConfigError, match="floor"):
        DepMatch({"uldr": {"floor": True}}, 3)
    with pytest.raises(ConfigError, match="unit"):
        DepMatch({"norm": "raw", "unit": 7.0}, 3)
    with pytest.warns(UserWarning, match="provisional U = 7.0"):
        assert DepMatch({}, 3).unit == 7.0
    with pytest.raises(ValueError, match="depth_norm"):  # robust expects d̃ in [0, 1]
        plugin()([make_view(stripes(), 5 * torch.ones(1, 6, 6))], STEP)
