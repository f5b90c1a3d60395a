"""Loads a script from ``examples/`` as a module, the way the tests exercise examples.

The examples folder goes on ``sys.path`` so that a script's own
``import common`` (the data and models the examples share) resolves.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str) -> ModuleType:
    """Imports ``examples/<name>.py`` once and returns the module."""
    if name in sys.modules:
        return sys.modules[name]
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def digits_validation_accuracy(tx: Any, steps: int) -> float:
    """Validation accuracy of the shared digits MLP after `steps` full-batch steps of `tx`.

    The optimizer tests' common yardstick: ``examples/common.py``'s digits split
    and MLP (seed 0), trained in one jitted ``lax.scan``.
    """
    import jax

    import gradchain as gc

    common = load_example("common")
    data = common.digits()

    def loss(p: Any) -> jax.Array:
        return common.cross_entropy(common.mlp_logits(p, data.x_train), data.y_train)

    def body(carry: Any, _: Any) -> tuple[Any, None]:
        p, state = carry
        updates, state = tx.update(jax.grad(loss)(p), state, p)
        return (gc.apply_updates(p, updates), state), None

    def train(p: Any) -> Any:
        return jax.lax.scan(body, (p, tx.init(p)), None, length=steps)[0][0]

    params = jax.jit(train)(common.init_mlp(jax.random.key(0)))
    return float(common.accuracy(common.mlp_logits(params, data.x_val), data.y_val))
