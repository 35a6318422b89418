"""The app's controls against the engine's one resolver (``engine.request``): what a tab's sampler,
steps, guidance and band start at for a model (the CLI's settings for the same model, not a table
of the app's own), and the engine request a checked Generate/Live request becomes (one mapping of
their fields). Imports torch through ``engine``: ``webui.validation`` stays light for ``web.py --help``."""
from __future__ import annotations

from typing import Any

from core.samplers import SAMPLER_DEFAULTS
from engine.request import GenerationRequest, resolve_settings
from engine.store import LoadedModel
from webui.validation import GUIDANCE_RANGE, GenerateRequest, interval_text, parse_sampler, steps_range


def model_defaults(lm: LoadedModel) -> dict[str, Any]:
    """What every tab's controls start at for ``lm``: ``engine.request.resolve_settings`` of a request
    that leaves everything to the model (what ``diffusion.py sample`` runs), as the controls show it:
    the sampler's label, its steps and the guidance within the controls' ranges (a model's own value
    beyond a slider's end shows as that end), the band as text ("" = every step)."""
    T = lm.diffusion.num_train_timesteps
    s = resolve_settings(lm, GenerationRequest())
    label = SAMPLER_DEFAULTS[s.sampler].label
    lo, hi, _ = steps_range(label, T)
    g_lo, g_hi = GUIDANCE_RANGE
    return {"sampler": label, "steps": min(max(s.steps, lo), hi), "guidance_scale": min(max(s.guidance, g_lo), g_hi),
            "guidance_interval": interval_text(s.guidance_interval)}


def sampler_steps(lm: LoadedModel, sampler: str) -> int:
    """The steps the slider shows on switching to ``sampler`` (a label or a name): the model's own for
    its own sampler, else the sampler's app default (``SamplerSpec.app_steps``: DDPM's T steps are a
    long first wait on a CPU)."""
    label = parse_sampler(sampler)
    d = model_defaults(lm)
    return d["steps"] if d["sampler"] == label else steps_range(label, lm.diffusion.num_train_timesteps)[2]


def generation_request(req: GenerateRequest, seed: int, variation_seed: int | None, **engine_only: Any
                       ) -> GenerationRequest:
    """The engine's request for a checked app request: the one mapping of their fields (the Generate
    tab and Live). ``seed``, ``variation_seed``: the ones used (drawn at random for an empty one);
    ``engine_only``: what the app passes beside the form (init image and its name, guide, upscaler).
    An empty band is "none" (guidance at every step), not "the model's band": the box showed it."""
    return GenerationRequest(
        prompts=[req.prompt], num_images=req.num_images, seed=seed, sampler=req.sampler, steps=req.steps,
        guidance=req.guidance, guidance_interval=req.guidance_interval or "none", precision=req.precision,
        variation_seed=variation_seed, variation_strength=req.variation_strength, strength=req.strength,
        snap=req.snap, **engine_only)
