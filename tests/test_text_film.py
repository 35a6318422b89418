"""The text-film network option: the text embedding scales and shifts every block through its own
projection, and the blocks' time projection sees the timestep embedding alone."""
from __future__ import annotations

from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F

from models import ConditionalUNet, UNetConfig
from models.modules import ResBlock


def _net(text_film: bool) -> ConditionalUNet:
    torch.manual_seed(0)
    cfg = UNetConfig(image_size=16, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                     attention_resolutions=(8,), text_film=text_film, cond_scale=384 ** 0.5)
    return ConditionalUNet(cfg).eval()


def test_each_block_gets_time_and_text_through_separate_projections() -> None:
    net = _net(True)
    x, t, cond = torch.randn(2, 3, 16, 16), torch.tensor([3, 700]), torch.randn(2, 384)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    blocks = [m for m in net.modules() if isinstance(m, ResBlock)]
    assert blocks and all(hasattr(b, "cond_proj") for b in blocks)
    hooks = [b.emb_proj.register_forward_hook(lambda m, i, o: seen.append(("time", i[0]))) for b in blocks]
    hooks += [b.cond_proj.register_forward_hook(lambda m, i, o: seen.append(("text", i[0]))) for b in blocks]
    with torch.no_grad():
        net(x, t, cond)
    for h in hooks:
        h.remove()
    with torch.no_grad():  # the oracle: each embedder on its own input, nothing summed
        time_in = F.silu(net.time_embed(t))
        text_in = F.silu(net.cond_embed(cond * 384 ** 0.5))
    assert len(seen) == 2 * len(blocks)
    for kind, got in seen:
        torch.testing.assert_close(got, time_in if kind == "time" else text_in)


def test_plain_network_has_no_text_projection_and_config_round_trips() -> None:
    assert not any(hasattr(m, "cond_proj") for m in _net(False).modules() if isinstance(m, ResBlock))
    cfg = _net(True).config
    assert UNetConfig(**asdict(cfg)) == cfg and asdict(cfg)["text_film"] is True
    assert UNetConfig(**{k: v for k, v in asdict(cfg).items() if k != "text_film"}).text_film is False
    with pytest.raises(ValueError, match="text_film"):
        ConditionalUNet(UNetConfig(image_size=16, base_channels=16, channel_mult=(1, 2), cond_dim=0, text_film=True,
                                   attention_resolutions=()))
