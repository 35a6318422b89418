"""A classifier's training state after an epoch, so an interrupted run resumes where it stopped:
the weights, AdamW's moments, the learning-rate schedule and the generator, as safetensors plus
JSON (nothing pickled), each file written to a temporary name and renamed."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from engine.store import load_tensors


def save_train_state(path: Path, epoch: int, model: nn.Module, opt: torch.optim.Optimizer, sched: Any,
                      g: torch.Generator, extra: dict[str, Any]) -> None:
    """Everything to resume after ``epoch`` (safetensors + JSON, nothing pickled), written atomically."""
    opt_sd = opt.state_dict()
    tensors = {f"model.{k}": v.contiguous().cpu() for k, v in model.state_dict().items()}
    for i, st in opt_sd["state"].items():
        tensors.update({f"opt.{i}.{k}": torch.as_tensor(v).contiguous().cpu() for k, v in st.items()})
    tensors["rng"] = g.get_state()
    tmp = path.with_suffix(".safetensors.part")
    save_file(tensors, str(tmp))
    tmp.replace(path.with_suffix(".safetensors"))
    meta = {"epoch": epoch, "param_groups": opt_sd["param_groups"], "scheduler": sched.state_dict(), **extra}
    tmp = path.with_suffix(".json.part")
    tmp.write_text(json.dumps(meta))
    tmp.replace(path.with_suffix(".json"))


def load_train_state(path: Path, model: nn.Module, opt: torch.optim.Optimizer, sched: Any,
                      g: torch.Generator) -> dict[str, Any]:
    meta = json.loads(path.with_suffix(".json").read_text())
    tensors = load_tensors(path.with_suffix(".safetensors"))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, i, name = k.split(".", 2)
            state.setdefault(int(i), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    sched.load_state_dict(meta["scheduler"])
    g.set_state(tensors["rng"])
    return meta
