"""The models there are: one module ``models/<name>.py`` each, with a ``Model`` class (see
``lib.model_base.SegmentModel``) that declares its config section as ``Model.Config``."""

import importlib
import os
import re

MODELS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models")


class UnknownModel(ValueError):
    """``model.name`` names no module in ``models/``."""


def available_models():
    return sorted(
        name[:-3]
        for name in os.listdir(MODELS_DIR)
        if name.endswith(".py") and name != "__init__.py"
    )


def model_class(name):
    """``models/<name>.py``'s ``Model``; ``UnknownModel`` listing the available ones."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or (
        name not in available_models()
    ):
        raise UnknownModel(
            f"model.name={name!r}: unknown model; available: {', '.join(available_models())}"
        )
    return importlib.import_module(f"models.{name}").Model
