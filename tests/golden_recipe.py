"""The weight recipe of the golden data (tests/golden/README.md) and access to that data."""

import json
import math
import pathlib
import zlib

import torch
from omegaconf import OmegaConf

GOLDEN = pathlib.Path(__file__).parent / "golden"
MODELS = ("clews", "cqtnet", "dvinetp", "bytecover2x", "bytecover3x", "coverhunterc")
OUTPUT_MAXCLIQUES = 1000  # the classifier size of the models behind original_outputs.pt


def state_dicts():
    """{config ("dvi-clews", ...): {"parameters": int, "state_dict": [[name, shape, dtype]]}}"""
    return json.loads((GOLDEN / "original_state_dicts.json").read_text())


def outputs():
    return torch.load(GOLDEN / "original_outputs.pt", weights_only=True)


def golden_conf(model_name):
    """The ``config/dvi-<model>.yaml`` the golden outputs were made with (maxcliques 1,000)."""
    conf = OmegaConf.load(f"config/dvi-{model_name}.yaml")
    if "maxcliques" in conf.model:
        conf.model.maxcliques = OUTPUT_MAXCLIQUES
    return conf


def recipe_value(name, tensor):
    """The recipe's value of the entry ``name`` (None where the recipe keeps the built value)."""
    if not tensor.is_floating_point() or tensor.numel() <= 1 or "cqt" in name:
        return None
    gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    shape = tensor.shape
    if name.endswith("running_var"):
        return 0.5 + torch.rand(shape, generator=gen)
    if name.endswith("running_mean"):
        return 0.1 * torch.randn(shape, generator=gen)
    if tensor.ndim >= 2:
        return torch.randn(shape, generator=gen) / math.sqrt(tensor.numel() / shape[0])
    if name.endswith(("weight", "gain")):
        return 1 + 0.1 * torch.randn(shape, generator=gen)
    return 0.1 * torch.randn(shape, generator=gen)


def recipe_state_dict(state_dict):
    """A copy of ``state_dict`` with the recipe's values (the names must be the original's)."""
    out = {}
    for name, tensor in state_dict.items():
        value = recipe_value(name, tensor)
        out[name] = tensor.clone() if value is None else value.to(tensor.dtype)
    return out


def declared_only(model_conf):
    """A model section (dict or DictConfig) without the keys its model does not declare: the
    test models of tests/legacy were made from one shared section with keys of other models."""
    from omegaconf import OmegaConf

    from lib import registry
    from lib.config import schema_keys

    tree = OmegaConf.to_container(OmegaConf.create(model_conf))
    keys = schema_keys(registry.model_class(tree["name"]).Config)

    def keep(branch, prefix=""):
        return {
            k: keep(v, f"{prefix}{k}.") if isinstance(v, dict) else v
            for k, v in branch.items()
            if prefix + k in keys
        }

    return keep(tree)
