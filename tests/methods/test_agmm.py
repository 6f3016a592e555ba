"""AGMM losses (agmm.md §5) against the test checklist of agmm.md §10 (items 1-12)."""

import math

import pytest
import torch
import torch.nn.functional as F

from sparseg.config import ConfigError
from sparseg.labels import IGNORE, UNLABELED
from sparseg.methods.agmm import (
    AGMM,
    AGMMConfig,
    GaussianMaps,
    _bandwidth,
    absent_loss,
    agmm_terms,
    g2p_loss,
    gaussian_maps,
    gmm_resize,
    proto_loss,
    resize_transpose,
    y2g_loss,
)
from sparseg.methods.base import MethodContext
from sparseg.methods.partial_ce import partial_cross_entropy

K, C, S = 4, 6, 32  # classes, channels, crop (h = S / 4)
EPS = 1e-6


def tags_of(mask, k=K):
    return torch.stack([torch.bincount(m[m < k], minlength=k).clamp(max=1) for m in mask]).double()


def random_inputs(seed=0, b=2, s=S, labeled=0.1, pad=0):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(b, C, s // 4, s // 4, generator=g, dtype=torch.float64).abs()
    mask = torch.randint(0, K, (b, s, s), generator=g)
    mask[torch.rand(b, s, s, generator=g) > labeled] = UNLABELED
    if pad:
        mask[:, :, -pad:] = IGNORE
        mask[:, -pad:] = IGNORE
    logits = torch.randn(b, K, s, s, generator=g, dtype=torch.float64)
    return features, mask, logits


def perfect_scene():
    """Three vertical regions aligned to the 4-px cells, features 0 / 5 / 10 in every channel; classes 0
    and 1 labeled deep inside their regions, class 2 (right region) present but unlabeled, class 3 absent."""
    region = torch.zeros(S, S, dtype=torch.long)
    region[:, 12:24], region[:, 24:] = 1, 2
    mask = torch.full((1, S, S), UNLABELED)
    mask[0, 14:18, 4:8], mask[0, 10:14, 16:20] = 0, 1
    cell_region = region[::4, ::4]
    features = (5.0 * cell_region).double()[None, None].expand(1, C, -1, -1).clone()
    probs = F.one_hot(region, K).permute(2, 0, 1)[None].double()
    interior = torch.zeros(1, S, S, dtype=torch.bool)
    interior[0, :, 4:8], interior[0, :, 16:20], interior[0, :, 28:] = True, True, True  # >= 4 px inside
    return features, mask, probs, region, interior


def test_perfect_features_give_one_hot_maps():  # §10.1
    features, mask, probs, region, interior = perfect_scene()
    gmm = gaussian_maps(features, mask, K)
    assert gmm.present.tolist() == [[1, 1, 0, 0]]
    expected = F.one_hot(region, K).permute(2, 0, 1).double()
    expected[2:] = 0  # classes 2 and 3 are not labeled in the crop
    inside_labeled = interior[0] & (region < 2)
    assert torch.allclose(gmm.maps[0][:, inside_labeled], expected[:, inside_labeled], atol=1e-4)
    assert (gmm.maps[0, 2:] == 0).all()
    assert abs(y2g_loss(gmm, mask)) < 1e-4
    assert abs(g2p_loss(probs, gmm, interior)) < 1e-4


def test_closed_form_half():  # §10.2
    mask = torch.full((3, 8, 8), UNLABELED)
    mask[0, 0, 0], mask[1, :2, :2], mask[2, 0, :3] = 0, 1, torch.tensor([0, 1, 2])
    present = tags_of(mask)
    assert present.sum(1).tolist() == [1, 1, 3]
    gmm = GaussianMaps(None, present, None, None, torch.full((3, K, 8, 8), 0.5, dtype=torch.float64))
    half = torch.full((3, K, 8, 8), 0.5, dtype=torch.float64)
    assert g2p_loss(half, gmm, mask != IGNORE).item() == pytest.approx(0.5 * math.log(2), abs=1e-5)
    assert y2g_loss(gmm, mask).item() == pytest.approx(0.5 * math.log(2), abs=1e-5)


def test_pce_is_ce_over_labeled_pixels_only():  # §10.3
    _, mask, logits = random_inputs(pad=4)
    labeled = mask < K
    expected = F.cross_entropy(logits.permute(0, 2, 3, 1)[labeled], mask[labeled]).float()  # pCE runs in fp32
    assert torch.allclose(partial_cross_entropy(logits, mask), expected)
    changed = torch.where((~labeled)[:, None], torch.randn_like(logits), logits)
    assert torch.allclose(partial_cross_entropy(changed, mask), expected)


def naive_centroid(features, mask, b, k):
    upsampled = F.interpolate(features, size=mask.shape[-2:], mode="bilinear", align_corners=False)[b]
    pixels = mask[b] == k
    return upsampled[:, pixels].mean(1) if pixels.any() else torch.zeros(features.shape[1], dtype=features.dtype)


def test_centroids_use_labeled_pixels_only():  # §10.4
    features, mask, _ = random_inputs(labeled=0.05)
    mask[1][mask[1] == 3] = UNLABELED  # class 3 absent from image 1
    gmm = gaussian_maps(features, mask, K)
    for b in range(2):
        for k in range(K):
            assert torch.allclose(gmm.centroids[b, k], naive_centroid(features, mask, b, k), atol=1e-10)
    assert (gmm.centroids[1, 3] == 0).all()
    relabeled = gaussian_maps(features, mask.masked_fill(mask == UNLABELED, IGNORE), K)
    assert torch.allclose(relabeled.centroids, gmm.centroids, atol=1e-12)


def test_resize_transpose_is_the_adjoint_of_the_resize():
    x = torch.randn(2, 3, 30, 22, dtype=torch.float64)
    f = torch.randn(2, 3, 8, 6, dtype=torch.float64)
    lhs = (x * gmm_resize(f, (30, 22))).sum()
    assert torch.allclose(lhs, (resize_transpose(x, (8, 6)) * f).sum())


def test_absent_term_only_hits_untagged_classes():  # §10.5
    _, mask, logits = random_inputs()
    probs = torch.softmax(logits, 1).requires_grad_()
    tags = torch.tensor([[1, 0, 1, 1], [1, 1, 1, 1]], dtype=torch.float64)
    loss = absent_loss(probs, tags, mask != IGNORE)
    loss.backward()
    assert loss > 0
    assert (probs.grad[0, 1] != 0).any() and (probs.grad[0, [0, 2, 3]] == 0).all() and (probs.grad[1] == 0).all()
    assert absent_loss(probs, torch.ones_like(tags), mask != IGNORE) == 0
    no_mass = probs.detach().clone()
    no_mass[0, 1] = 0
    assert absent_loss(no_mass, tags, mask != IGNORE).abs() < 1e-5
    # labeled in the image but cropped out (t = 1, c = 0): not suppressed, not in G
    features, crop, _ = random_inputs()
    crop[crop == 2] = UNLABELED
    gmm = gaussian_maps(features, crop, K)
    assert (gmm.present[:, 2] == 0).all() and (gmm.maps[:, 2] == 0).all()
    assert absent_loss(probs, torch.ones(2, K, dtype=torch.float64), crop != IGNORE) == 0


@pytest.mark.parametrize("pad_mode", ["soft", "masked"])
def test_logits_at_padding_change_no_term(pad_mode):  # §10.6, first part
    features, mask, logits = random_inputs(pad=8)
    cfg = AGMMConfig(pad_mode=pad_mode)
    padded = (mask == IGNORE)[:, None]
    other = torch.where(padded, 10 * torch.randn_like(logits), logits)
    for a, b in zip(all_terms(logits, features, mask, cfg).values(), all_terms(other, features, mask, cfg).values()):
        assert torch.allclose(a, b, atol=1e-12)


def all_terms(logits, features, mask, cfg):
    return {"pce": partial_cross_entropy(logits, mask),
            **agmm_terms(logits, features, mask, tags_of(mask), cfg)}


@pytest.mark.parametrize("variance", ["fixed", "adaptive"])
def test_masked_mode_is_invariant_to_appended_padding(variance):  # §10.6
    features, mask, logits = random_inputs(s=24, labeled=0.2)
    mask[0, :, 5] = IGNORE  # some void inside the image too
    b, pad = 2, 8
    big_features = torch.cat([features, 50 * torch.randn(b, C, 6, pad // 4, dtype=torch.float64)], 3)
    big_features = torch.cat([big_features, 50 * torch.randn(b, C, pad // 4, 8, dtype=torch.float64)], 2)
    big_mask = F.pad(mask, (0, pad, 0, pad), value=IGNORE)
    big_logits = F.pad(logits, (0, pad, 0, pad))
    big_logits[:, :, 24:] = 30 * torch.randn_like(big_logits[:, :, 24:])
    cfg = AGMMConfig(pad_mode="masked", variance=variance)
    small = all_terms(logits, features, mask, cfg)
    big = all_terms(big_logits, big_features, big_mask, cfg)
    for name in small:
        assert torch.allclose(small[name], big[name], atol=1e-6), name


def test_absent_classes_have_exactly_zero_maps_padding_included():  # §10.7
    features, mask, _ = random_inputs(pad=8)
    mask[mask == 1] = UNLABELED
    gmm = gaussian_maps(features, mask, K)
    assert (gmm.maps[:, 1] == 0).all()
    assert (gmm.maps[:, 0][mask == IGNORE] != 0).any()  # soft mode: present classes bleed into padding


def test_proto_loss():  # §10.8
    mu = torch.randn(2, K, C, dtype=torch.float64)
    one_class = torch.tensor([[1, 0, 0, 0], [1, 0, 0, 0]], dtype=torch.float64)
    assert proto_loss(mu * one_class[:, :, None], one_class) == 0
    same = torch.zeros(1, K, C, dtype=torch.float64)
    same[0, :2] = 3.0
    assert proto_loss(same, torch.tensor([[1, 1, 0, 0]], dtype=torch.float64)).item() == pytest.approx(1, abs=1e-5)
    # two images: image 0 has classes 0 and 1, image 1 class 0 only
    present = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.float64)
    mu = torch.zeros(2, K, C, dtype=torch.float64)
    mu[0, 0], mu[0, 1], mu[1, 0] = 0.2, 0.5, 0.4
    total = mu[0, 0] + mu[1, 0]  # 0.6 in every channel
    summed = (total * 2 / (2 + EPS) - mu[0, 1] / (1 + EPS)).abs().mean()
    assert proto_loss(mu, present, "sum").item() == pytest.approx(math.exp(-summed.item() ** 2) / (1 + EPS))
    assert proto_loss(mu, present, "mean").item() == pytest.approx(math.exp(-(0.3 - 0.5) ** 2) / (1 + EPS))


def test_no_labeled_pixel_gives_finite_terms_and_a_backward():  # §10.9
    features, mask, logits = random_inputs()
    mask[mask < K] = UNLABELED
    features.requires_grad_(), logits.requires_grad_()
    terms = all_terms(logits, features, mask, AGMMConfig(variance="adaptive"))
    assert all(torch.isfinite(v) for v in terms.values())
    sum(terms.values()).backward()
    assert torch.isfinite(logits.grad).all()


def test_flip_equivariance():  # §10.10
    features, mask, logits = random_inputs(labeled=0.2, pad=4)
    cfg = AGMMConfig()
    flipped = all_terms(logits.flip(-1), features.flip(-1), mask.flip(-1), cfg)
    for name, value in all_terms(logits, features, mask, cfg).items():
        assert torch.allclose(value, flipped[name], atol=1e-10), name
    gmm, gmm_flipped = gaussian_maps(features, mask, K), gaussian_maps(features.flip(-1), mask.flip(-1), K)
    assert torch.allclose(gmm.maps.flip(-1), gmm_flipped.maps, atol=1e-10)


def naive_terms(logits, features, mask, tags):
    """agmm.md §5 written as loops over images and classes, with the upsampled F̃ materialised."""
    b, k, s = logits.shape[0], logits.shape[1], mask.shape[-1]
    probs = torch.softmax(logits, 1)
    upsampled = F.interpolate(features, size=(s, s), mode="bilinear", align_corners=False)
    m = F.interpolate((mask != IGNORE).double()[:, None], size=features.shape[-2:], mode="bilinear",
                      align_corners=False)[:, 0]
    g2p, y2g, vectors, count = [], [], [torch.zeros(features.shape[1], dtype=features.dtype)] * k, [0] * k
    for i in range(b):
        maps, present = [], []
        for c in range(k):
            pixels = mask[i] == c
            if not pixels.any():
                continue
            mu = upsampled[i][:, pixels].mean(1)
            vectors[c], count[c] = vectors[c] + mu, count[c] + 1
            d = m[i] * (features[i] - mu[:, None, None]).abs().mean(0)
            g = torch.exp(-d**2)
            maps.append(F.interpolate(g[None, None], size=(s, s), mode="bilinear", align_corners=False)[0, 0])
            present.append(c)
        n = len(present)
        bce_p = sum(0.5 * -(G * torch.log(probs[i, c] + EPS) + (1 - G) * torch.log(1 - probs[i, c] + EPS))
                    for G, c in zip(maps, present)) / (n + EPS) if n else torch.zeros(s, s, dtype=probs.dtype)
        bce_y = sum(0.5 * -((mask[i] == c) * torch.log(G + EPS) + (mask[i] != c) * torch.log(1 - G + EPS))
                    for G, c in zip(maps, present)) / (n + EPS) if n else torch.zeros(s, s, dtype=probs.dtype)
        g2p.append(bce_p[mask[i] != IGNORE])
        y2g.append(bce_y[mask[i] < k])
    classes = [c for c in range(k) if count[c]]
    pairs = [(i, j) for i in classes for j in classes if i < j]
    v = {c: vectors[c] * count[c] / (count[c] + EPS) for c in classes}
    proto = sum(torch.exp(-((v[i] - v[j]).abs().mean()) ** 2) for i, j in pairs) / (len(pairs) + EPS)
    absent = sum((1 - tags[:, c, None, None]) * -torch.log(1 - probs[:, c] + EPS) for c in range(k))
    return {"g2p": torch.cat(g2p).mean(), "y2g": torch.cat(y2g).mean(), "proto": proto,
            "absent": absent[mask != IGNORE].mean()}


def test_vectorised_terms_equal_a_naive_loop_in_values_and_gradients():  # §10.11
    features, mask, logits = random_inputs(seed=3, b=3, labeled=0.1, pad=4)
    mask[2][mask[2] == 1] = UNLABELED
    tags = tags_of(mask)
    tags[0, 3] = 0  # a class in the crop may still be untagged in a synthetic test
    results = []
    for fn in (lambda *a: agmm_terms(*a, AGMMConfig()), naive_terms):
        f, lg = features.clone().requires_grad_(), logits.clone().requires_grad_()
        terms = fn(lg, f, mask, tags)
        sum(terms.values()).backward()
        results.append((terms, f.grad, lg.grad))
    (fast, f_grad, l_grad), (slow, f_grad_naive, l_grad_naive) = results
    for name in slow:
        assert torch.allclose(fast[name], slow[name], atol=1e-5), name
    assert torch.allclose(f_grad, f_grad_naive, atol=1e-5)
    assert torch.allclose(l_grad, l_grad_naive, atol=1e-5)


def test_adaptive_variance_is_detached_and_keeps_perfect_maps_one_hot():  # §10.12
    features, mask, probs, region, interior = perfect_scene()
    tags = tags_of(mask)
    gmm = gaussian_maps(features, mask, K, variance="adaptive", probs=probs, tags=tags)
    inside_labeled = interior[0] & (region < 2)
    expected = F.one_hot(region, K).permute(2, 0, 1).double()
    expected[2:] = 0
    assert torch.allclose(gmm.maps[0][:, inside_labeled], expected[:, inside_labeled], atol=1e-4)
    distance = torch.rand(1, K, 8, 8, dtype=torch.float64, requires_grad=True)
    probs = probs.clone().requires_grad_()
    scale = _bandwidth(distance, "adaptive", 0.0, torch.ones(1, 1, 8, 8, dtype=torch.float64), None, probs, tags)
    assert not scale.requires_grad
    floor = _bandwidth(distance, "adaptive_uniform", 0.5, torch.ones(1, 1, 8, 8, dtype=torch.float64), None, None, None)
    assert (floor >= 1.0).all()


def test_adaptive_uniform_variance_is_the_reference_formula():
    """s = 2σ² + ε with σ² = Σ_u d² / Σ_u m + 1e-6 per (image, class): the reference's commented-out uniform
    variant, where d is already masked by the soft valid mask m (not Σ m·d² / (Σ m + ε))."""
    m = torch.tensor([[[[1.0, 1.0], [0.5, 0.0]]]], dtype=torch.float64)  # a soft mask next to crop padding
    d = torch.tensor([[[[0.2, 0.4], [0.6, 0.0]], [[0.0, 0.0], [0.0, 0.0]]]], dtype=torch.float64) * m
    sigma2 = torch.tensor([(0.2**2 + 0.4**2 + 0.3**2) / 2.5 + 1e-6, 1e-6], dtype=torch.float64)
    scale = _bandwidth(d, "adaptive_uniform", 0.0, m, None, None, None)
    assert scale.shape == (1, 2, 1, 1)
    assert torch.allclose(scale.flatten(), 2 * sigma2 + EPS, rtol=0, atol=1e-12)
    # the m-weighted mean sparseg used before differs next to padding: Σ m d² / (Σ m + ε) = 0.245 / 2.5, not 0.29 / 2.5
    weighted = (m * d.square())[0, 0].sum() / (m.sum() + EPS)
    assert abs(float(scale.flatten()[0]) - float(2 * weighted + EPS)) > 1e-2


class Probe(torch.nn.Module):
    """A 'model' returning fixed stride-4 logits and features from the image it is given."""

    def forward(self, x):
        return {"pred": x[:, :K, ::4, ::4], "fts": x[:, K:, ::4, ::4]}


def test_method_weights_terms_and_needs_tags():
    features, mask, logits = random_inputs(labeled=0.2)
    image = torch.cat([F.interpolate(logits, scale_factor=0.25), features], 1).float()
    image = F.interpolate(image, size=(S, S), mode="nearest")
    cfg = AGMMConfig(weights={"proto": 0.0, "absent": 2.0})
    method = AGMM(Probe(), cfg, MethodContext(num_classes=K))
    out = method({"labeled": {"image": image, "mask": mask, "tags": tags_of(mask).float()}}, None)
    assert set(out) == {"loss", "pce", "g2p", "y2g", "proto", "absent"}
    expected = out["pce"] + out["g2p"] + out["y2g"] + 2 * out["absent"]
    assert torch.allclose(out["loss"], expected)
    with pytest.raises(ConfigError, match="label_format: sparse"):
        method({"labeled": {"image": image, "mask": mask}}, None)
