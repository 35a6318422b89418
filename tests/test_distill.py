"""Few-step students (core/distill.py, `diffusion.py distill`).

The pieces are checked against code that does not share their arithmetic: the teacher's guided
estimate against ``GuidedDenoiser``, the DDIM step inside a target against ``ddim_sample``, the
multistep consistency sampler against diffusers' ``LCMScheduler``. End to end: a student is
distilled from a tiny teacher, resumes bit-exactly, exports with its own sampler defaults, samples
from the CLI, and its PNG regenerates the same pixels.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core import distill as D
from core.generation import generate_images
from core.sampling import GuidedDenoiser, consistency_sample, ddim_sample
from core.schedules import DiffusionConfig
from engine import store
from models import ConditionalUNet, UNetConfig
from tests.test_training import (
    ROOT,
    TINY_NET,
    assert_bit_identical,
    ckpt_tensors,
    make_tiny_dataset,
    one_thread,  # noqa: F401 - the module-wide one-thread fixture (autouse), shared with the training tests
    options,
    subprocess_env,
)
from training import loop as T

DISTILL_STEPS = 30  # enough for the student to move measurably towards its teacher (tiny net, one thread)
NET = dict(image_size=16, base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(8,),
           head_channels=8, dropout=0.0)


def random_net(seed: int, **kw) -> ConditionalUNet:
    """A network whose every weight is random (zero-initialised layers too), so each input matters."""
    torch.manual_seed(seed)
    net = ConditionalUNet(UNetConfig(**NET, **kw)).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.05)
    return net


def batch(seed: int = 0, b: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand((b, 3, 16, 16), generator=g) * 2 - 1
    cond = torch.nn.functional.normalize(torch.randn((b, 384), generator=g), dim=1)
    return x0, cond


# --------------------------------------------------------------------------- the student network
def test_a_fresh_student_is_its_teachers_conditional_branch_at_every_guidance():
    teacher = random_net(0)
    student = ConditionalUNet(replace_cfg(teacher.config, guidance_embed=True)).eval()
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("guidance_embed.") for k in missing)
    x, cond = batch()
    t = torch.tensor([10, 500, 999])
    want = teacher(x, t, cond, None)
    for w in (1.0, 4.0, 8.0):
        torch.testing.assert_close(student(x, t, cond, None, guidance=torch.full((3,), w)), want)
    # ...and the guidance input is live: once its embedder has weights, w changes the output
    with torch.no_grad():
        student.guidance_embed.mlp[-1].weight.normal_(0, 0.1)
    assert not torch.allclose(student(x, t, cond, None, guidance=torch.full((3,), 1.0)),
                              student(x, t, cond, None, guidance=torch.full((3,), 8.0)))
    with pytest.raises(ValueError, match="guidance .* is required"):
        student(x, t, cond, None)
    with pytest.raises(ValueError, match="without a guidance input"):
        teacher(x, t, cond, None, guidance=torch.ones(3))


def replace_cfg(cfg: UNetConfig, **kw) -> UNetConfig:
    return UNetConfig.from_dict({**cfg.to_dict(), **kw})


# --------------------------------------------------------------------------- the teacher and the targets
@pytest.mark.parametrize("interval", [None, (0.0, 5.0)])
def test_the_teachers_guided_estimate_is_what_its_sampler_uses(interval):
    teacher = random_net(1)
    terms = DiffusionConfig().terms()
    x, cond = batch(1)
    for t_val in (50, 600, 990):  # sigma ~0.08, ~1.4, ~60: inside and outside (0, 5]
        t = torch.full((3,), t_val)
        w = torch.tensor([1.0, 3.0, 7.5])
        x0, eps = D.guided_teacher(teacher, terms, x, t, cond, w, "v_prediction", interval)
        for i in range(3):
            ref = GuidedDenoiser(teacher, terms, cond[i:i + 1], "v_prediction", float(w[i]), guidance_interval=interval)
            rx0, reps = ref(x[i:i + 1], t_val)
            torch.testing.assert_close(x0[i:i + 1], rx0, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(eps[i:i + 1], reps, atol=1e-4, rtol=1e-4)


def test_the_trajectory_target_is_the_teachers_estimate_when_one_teacher_step_spans_the_students():
    """With one teacher step per student step, the x_0 whose DDIM step lands where the teacher's
    does is the teacher's own (clipped) x_0: the algebra that inverts the step, checked."""
    teacher = random_net(2)
    student = ConditionalUNet(replace_cfg(teacher.config, guidance_embed=True))
    student.load_state_dict(teacher.state_dict(), strict=False)
    terms = DiffusionConfig().terms()
    x0, cond = batch(2, b=8)
    w = torch.full((8,), 3.0)
    cfg = D.DistillConfig(method="trajectory", teacher_substeps=1, student_steps=4)
    seen = {}

    def spy(net, terms_, x, t, cond_, guidance, prediction_type):
        seen["x_t"], seen["t"] = x, t
        return torch.zeros_like(x)

    orig = D.student_x0
    D.student_x0 = spy
    try:
        g = torch.Generator().manual_seed(0)
        loss = D.trajectory_loss(student, teacher, terms, x0, cond, w, cfg, prediction_type="v_prediction",
                                 teacher_prediction_type="v_prediction", generator=g)
    finally:
        D.student_x0 = orig
    want, _ = D.guided_teacher(teacher, terms, seen["x_t"], seen["t"], cond, w, "v_prediction")
    # the loss against a zero prediction is the pseudo-Huber norm of the target itself
    torch.testing.assert_close(loss, D.pseudo_huber(torch.zeros_like(want), want), atol=2e-4, rtol=1e-4)
    assert set(seen["t"].tolist()) <= {999, 749, 499, 249}


def test_the_consistency_target_is_the_student_one_teacher_ddim_step_down():
    teacher = random_net(3)
    student = random_net(4, guidance_embed=True)
    terms = DiffusionConfig().terms()
    x0, cond = batch(3, b=16)
    w = torch.linspace(1, 8, 16)
    cfg = D.DistillConfig(method="consistency", skip=250)  # grid 249, 499, 749, 999
    captured = {}
    orig = D.pseudo_huber
    D.pseudo_huber = lambda pred, target: (captured.update(pred=pred, target=target), torch.zeros(len(pred)))[1]
    try:
        g = torch.Generator().manual_seed(5)
        D.consistency_loss(student, student, teacher, terms, x0, cond, w, cfg, prediction_type="v_prediction",
                           teacher_prediction_type="v_prediction", generator=g)
    finally:
        D.pseudo_huber = orig
    # the same draws again, to know each row's t and x_t
    g = torch.Generator().manual_seed(5)
    grid = D.consistency_grid(1000, 250)
    j = torch.randint(0, len(grid), (16,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    t = grid[j]
    assert len(set(t.tolist())) > 2  # the draw covers the grid's ends and middle
    for i in range(16):
        ti = int(t[i])
        x_t = (terms.sqrt_alphas_cumprod[ti] * x0[i:i + 1] + terms.sqrt_one_minus_alphas_cumprod[ti] * noise[i:i + 1]).float()
        ref = GuidedDenoiser(teacher, terms, cond[i:i + 1], "v_prediction", float(w[i]))
        steps = []
        ddim_sample(ref, x_t, timesteps=[ti, ti - 250] if ti > 249 else [ti], callback=steps.append)
        if ti == 249:  # the lowest grid point: the teacher's clean estimate
            want = steps[0].x
        else:
            s = ti - 250
            out = student(steps[0].x, torch.tensor([s]), cond[i:i + 1], None, guidance=w[i:i + 1])
            want = terms.sqrt_alphas_cumprod[s].float() * steps[0].x - terms.sqrt_one_minus_alphas_cumprod[s].float() * out
        torch.testing.assert_close(captured["target"][i:i + 1], want, atol=2e-4, rtol=1e-4)


def test_distill_config_refuses_bad_values():
    with pytest.raises(ValueError, match="method"):
        D.DistillConfig(method="magic")
    with pytest.raises(ValueError, match="guidance_min"):
        D.DistillConfig(guidance_min=5, guidance_max=2)
    with pytest.raises(ValueError, match="divide"):
        D.consistency_grid(1000, 30)


# --------------------------------------------------------------------------- the sampler
def test_consistency_sampling_matches_diffusers_lcm_scheduler():
    diffusers = pytest.importorskip("diffusers")
    student = random_net(6, guidance_embed=True)
    diffusion = DiffusionConfig()
    terms = diffusion.terms()
    x0, cond = batch(6, b=1)
    timesteps = [999, 749, 499, 249]
    x_T = torch.randn((1, 3, 16, 16), generator=torch.Generator().manual_seed(11))
    ours = consistency_sample(GuidedDenoiser(student, terms, cond, "v_prediction", 4.0), x_T.clone(),
                              timesteps=timesteps, generator=torch.Generator().manual_seed(12))

    sched = diffusers.LCMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                                   prediction_type="v_prediction", clip_sample=True, clip_sample_range=1.0,
                                   timestep_scaling=1e6)  # c_skip ~ 0 at these t: the boundary blend is off
    sched.set_timesteps(timesteps=timesteps)
    x, gen = x_T.clone(), torch.Generator().manual_seed(12)
    for t in sched.timesteps:
        out = student(x, torch.tensor([int(t)]), cond, None, guidance=torch.tensor([4.0]))
        x = sched.step(out, t, x, generator=gen).prev_sample
    torch.testing.assert_close(ours, x, atol=1e-5, rtol=1e-4)


def test_a_student_is_one_forward_per_step_and_cannot_be_autoguided():
    student = random_net(7, guidance_embed=True)
    calls = []
    orig_forward = student.forward

    def counting(*a, **k):
        calls.append(a[0].shape[0])
        return orig_forward(*a, **k)

    student.forward = counting
    res = generate_images(student, DiffusionConfig(), ["x"] * 2, num_images=2, sampler="lcm", num_steps=4,
                          guidance_scale=6.0, encode_fn=lambda p: np.ones((len(p), 384), np.float32) / 384 ** 0.5,
                          guidance_interval=(0.0, 100.0))
    assert calls == [2, 2, 2, 2]  # four steps, batch 2, no null branch
    assert res.recipe["sampler"] == "lcm" and "guidance_interval" not in res.recipe
    with pytest.raises(ValueError, match="cannot be autoguided"):
        generate_images(student, DiffusionConfig(), ["x"], guide_model=random_net(8),
                        encode_fn=lambda p: np.ones((len(p), 384), np.float32))


# --------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("data") / "tiny")


@pytest.fixture(scope="module")
def teacher_store(tiny_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("teacher")
    cfg = T.make_config("smoke", **options(tiny_data, out, "teach", **TINY_NET, dropout=0.0, batch_size=16,
                                           lr=2e-3, warmup_steps=5, max_steps=30, sample_every=0, ckpt_every=30))
    T.train(cfg)
    import diffusion as cli
    root = out / "store"
    assert cli.main(["export", str(cfg.run_dir), "--name", "teach", "--store", str(root), "--sampler_defaults",
                     '{"sampler": "dpm++", "steps": 20, "guidance_scale": 5.0, "guidance_interval": "0,100"}']) == 0
    return root


# both methods in the full run (30 s each): the fast set trains a student through the same loop in
# test_distilling_brings_the_students_four_steps_closer_to_the_teachers_twenty, which also checks it learnt
@pytest.mark.parametrize("method", [pytest.param("consistency", marks=pytest.mark.slow),
                                    pytest.param("trajectory", marks=pytest.mark.slow)])
def test_distil_resume_export_and_sample(teacher_store, tiny_data, tmp_path, method):
    teacher = str(teacher_store / "teach")
    kw = dict(teacher=teacher, distill_method=method, batch_size=8, log_every=1, ckpt_every=3, sample_every=0,
              keep_checkpoints=5, guidance_min=1.0, guidance_max=8.0, distill_skip=250, teacher_substeps=2)
    ref = T.make_config("distill", **options(tiny_data, tmp_path, "ref", max_steps=6, **kw))
    T.train(ref)
    part = T.make_config("distill", **options(tiny_data, tmp_path, "part", max_steps=6, stop_at_step=3, **kw))
    T.train(part)
    T.train(T.make_config("distill", **options(tiny_data, tmp_path, "part", max_steps=6, **kw)))
    assert_bit_identical(ckpt_tensors(ref.run_dir / "checkpoints" / "ckpt-0000006"),
                         ckpt_tensors(part.run_dir / "checkpoints" / "ckpt-0000006"))
    # the student moved away from its teacher, in the guidance embedder too
    t_w = store.load_model(teacher).model.state_dict()
    s_w = store.load_tensors(ref.run_dir / "checkpoints" / "ckpt-0000006" / store.WEIGHTS_FILE)
    assert s_w["model.guidance_embed.mlp.2.weight"].abs().sum() > 0
    assert not torch.equal(s_w["model.input_conv.weight"], t_w["input_conv.weight"])

    import diffusion as cli
    root = tmp_path / "store"
    assert cli.main(["export", str(ref.run_dir), "--name", "teach-live", "--store", str(root)]) == 0
    config = json.loads((root / "teach-live" / store.CONFIG_FILE).read_text())
    sampler = D.STUDENT_SAMPLER[method]
    assert config["sampler_defaults"] == {"sampler": sampler, "steps": 4, "guidance_scale": 5.0}
    assert config["distill"]["method"] == method and config["distill"]["guidance_interval"] == [0.0, 100.0]
    assert config["unet"]["guidance_embed"] is True

    out = tmp_path / "png"
    run = [sys.executable, str(ROOT / "diffusion.py"), "sample", "--model", "teach-live", "--store", str(root),
           "--device", "cpu"]
    p = subprocess.run(run + ["--class", "goldfish", "--n", "2", "--seed", "4", "--out", str(out)],
                       cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    from engine.recipe import read_png_recipe
    pngs = sorted(q for q in out.glob("*.png") if not q.name.endswith("_grid.png"))
    recipe = read_png_recipe(pngs[1])
    assert recipe["sampler"] == sampler and recipe["steps"] == 4 and recipe["seed"] == 5
    again = tmp_path / "again"
    p = subprocess.run(run + ["--from-png", str(pngs[1]), "--out", str(again)], cwd=ROOT, env=subprocess_env(),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    redo = next(q for q in again.glob("*.png") if not q.name.endswith("_grid.png"))
    np.testing.assert_array_equal(np.asarray(Image.open(redo)), np.asarray(Image.open(pngs[1])))


def test_distill_refuses_a_student_teacher_and_foreign_data(teacher_store, tiny_data, tmp_path, capsys):
    import diffusion as cli
    other = make_tiny_dataset(tmp_path / "other", seed=9)  # other class embeddings: other prompts? same names
    classes = json.loads((other / "classes.json").read_text())
    for c in classes["classes"]:
        c["prompt"] = "a drawing of a " + c["name"]
    (other / "classes.json").write_text(json.dumps(classes))
    flags = ["--out_dir", str(tmp_path), "--max_steps", "1", "--device", "cpu", "--report_to", "none"]
    assert cli.main(["distill", str(teacher_store / "teach"), "--data_dir", str(other), *flags]) == 2
    assert "classes are not those of the data" in capsys.readouterr().err
    assert cli.main(["distill", str(teacher_store / "teach"), "--data_dir", str(tiny_data), "--run_name", "s",
                     "--sample_every", "0", *flags]) == 0
    assert cli.main(["export", str(tmp_path / "s"), "--name", "s", "--store", str(tmp_path / "st")]) == 0
    assert cli.main(["distill", str(tmp_path / "st" / "s"), "--data_dir", str(tiny_data), *flags]) == 2
    assert "itself a few-step student" in capsys.readouterr().err
    assert cli.main(["distill", str(teacher_store / "teach"), "--distill_method", "magic", *flags]) == 2


def test_distilling_brings_the_students_four_steps_closer_to_the_teachers_twenty(teacher_store, tiny_data,
                                                                                  tmp_path):
    """What distillation is for: the student's 4 steps land nearer the teacher's own 20-step images
    (its sampler defaults: DPM-Solver++, guidance 5, interval 0-100) from the same noise and condition
    than the student it started as. The untrained student is the same run at learning rate 0 (its
    starting weights, saved); both are trained through the public entry point ``training.loop.train``."""
    teacher = store.load_model(teacher_store / "teach")
    defaults = teacher.config["sampler_defaults"]
    kw = dict(teacher=str(teacher_store / "teach"), distill_method="trajectory", batch_size=16, log_every=10,
              sample_every=0, guidance_min=1.0, guidance_max=8.0, teacher_substeps=2, warmup_steps=2, lr=2e-3)
    untrained = T.train(T.make_config("distill", **options(tiny_data, tmp_path, "untrained", max_steps=1,
                                                           ckpt_every=1, **{**kw, "lr": 0.0})))
    trained = T.train(T.make_config("distill", **options(tiny_data, tmp_path, "trained", max_steps=DISTILL_STEPS,
                                                         ckpt_every=DISTILL_STEPS, **kw)))
    # the conditions the teacher and student trained on: the data's class embeddings, every class from two seeds
    embedding = dict(zip(map(str, range(4)), np.load(tiny_data / "class_embeddings.npy")))
    prompts = [str(i) for i in range(4) for _ in range(2)]
    common = dict(num_images=len(prompts), encode_fn=lambda ps: np.stack([embedding[p] for p in ps]), seed=100,
                  guidance_scale=defaults["guidance_scale"], device="cpu", precision="fp32")
    target = generate_images(teacher.model, teacher.diffusion, prompts, sampler=defaults["sampler"], num_steps=defaults["steps"],
                             guidance_interval=(0.0, 100.0), **common).images.astype(np.float64)

    def distance_to_teacher(ckpt: Path) -> float:
        student = store.load_model(ckpt)
        assert student.config["sampler_defaults"]["steps"] == 4
        images = generate_images(student.model, student.diffusion, prompts, sampler=D.STUDENT_SAMPLER["trajectory"],
                                 num_steps=4, **common).images.astype(np.float64)
        return float(np.sqrt(((images - target) ** 2).mean()))

    before, after = distance_to_teacher(untrained), distance_to_teacher(trained)
    print(f"\n[distill] RMS distance to the teacher's 20 steps (0-255): untrained {before:.2f}, "
          f"after {DISTILL_STEPS} steps {after:.2f}")
    assert after < 0.8 * before, (before, after)
