"""Adaptive projected guidance (core.guidance) against an independent reading of the paper's formula."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from core.guidance import APGSettings, ProjectedGuidance


def _reference(cond: np.ndarray, null: np.ndarray, w: float, eta: float, r: float) -> np.ndarray:
    """Eq. (APG) per image, in numpy: cap the difference's norm at r, split it along the conditional."""
    out = np.empty_like(cond)
    for i in range(len(cond)):
        d = (cond[i] - null[i]).ravel()
        if r > 0:
            d = d * min(1.0, r / np.linalg.norm(d))
        u = cond[i].ravel() / np.linalg.norm(cond[i].ravel())
        par = d.dot(u) * u
        out[i] = (cond[i].ravel() + (w - 1) * (d - par + eta * par)).reshape(cond[i].shape)
    return out


@pytest.mark.parametrize("eta,r", [(0.0, 0.0), (0.0, 1.5), (0.5, 0.7), (1.0, 0.0)])
def test_apg_matches_the_formula(eta: float, r: float) -> None:
    g = torch.Generator().manual_seed(0)
    cond, null = torch.randn(3, 3, 4, 4, generator=g), torch.randn(3, 3, 4, 4, generator=g)
    got = ProjectedGuidance(APGSettings(eta=eta, norm_threshold=r, momentum=0.0))(cond, null, 4.0)
    np.testing.assert_allclose(got.numpy(), _reference(cond.numpy(), null.numpy(), 4.0, eta, r), rtol=1e-5, atol=1e-5)


def test_apg_with_eta_one_and_no_cap_is_cfg() -> None:
    g = torch.Generator().manual_seed(1)
    cond, null = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    got = ProjectedGuidance(APGSettings(eta=1.0, momentum=0.0))(cond, null, 6.0)
    torch.testing.assert_close(got, null + 6.0 * (cond - null), rtol=1e-5, atol=1e-5)


def test_apg_momentum_is_a_running_sum_across_steps() -> None:
    g = torch.Generator().manual_seed(2)
    pg = ProjectedGuidance(APGSettings(eta=1.0, momentum=-0.5))
    c1, n1, c2, n2 = (torch.randn(1, 3, 4, 4, generator=g) for _ in range(4))
    pg(c1, n1, 3.0)
    got = pg(c2, n2, 3.0)
    torch.testing.assert_close(got, c2 + 2.0 * ((c2 - n2) - 0.5 * (c1 - n1)), rtol=1e-5, atol=1e-5)


def test_apg_settings_refuse_bad_values() -> None:
    with pytest.raises(ValueError, match="momentum"):
        APGSettings(momentum=1.0)
    with pytest.raises(ValueError, match="norm_threshold"):
        APGSettings(norm_threshold=-1)


def test_denoiser_with_apg_at_eta_one_equals_plain_cfg() -> None:
    """Through the sampler's denoiser: x_0 is linear in the network output, so APG with eta 1, no cap
    and no momentum is classifier-free guidance exactly (up to rounding), and a step outside the
    guidance interval runs the conditional branch alone either way."""
    from core.sampling import GuidedDenoiser
    from core.schedules import DiffusionConfig

    g = torch.Generator().manual_seed(3)
    weight = torch.randn(3, 3, generator=g)

    def net(x, t, cond, drop=None):  # a stand-in network: its output depends on x, t and the null flag
        out = torch.einsum("oc,bchw->bohw", weight, x) * (1 + t[:, None, None, None] / 1000)
        return out if drop is None else out + drop[:, None, None, None].float() * 0.3

    terms = DiffusionConfig().terms()
    x, cond = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 8, generator=g)
    for pred in ("epsilon", "v_prediction"):
        plain = GuidedDenoiser(net, terms, cond, pred, 5.0, clip_denoised=False)
        apg = GuidedDenoiser(net, terms, cond, pred, 5.0, clip_denoised=False,
                             apg=APGSettings(eta=1.0, momentum=0.0))
        for t in (900, 400, 20):
            for a, b in zip(plain(x, t), apg(x, t)):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # eta 0 removes the parallel part: a different x_0
    apg0 = GuidedDenoiser(net, terms, cond, "epsilon", 5.0, clip_denoised=False, apg=APGSettings(momentum=0.0))
    assert not torch.allclose(apg0(x, 400)[0], GuidedDenoiser(net, terms, cond, "epsilon", 5.0, clip_denoised=False)(x, 400)[0])


def test_evaluate_parses_apg_and_refuses_bad_text() -> None:
    import evaluate

    assert evaluate.parse_apg(None) is None and evaluate.parse_apg("") is None
    assert evaluate.parse_apg("0,2.5,-0.5") == APGSettings(eta=0.0, norm_threshold=2.5, momentum=-0.5)
    for bad in ("0,1", "a,b,c", "0,0,1.5"):
        with pytest.raises(ValueError):
            evaluate.parse_apg(bad)
