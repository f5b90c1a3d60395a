"""gradchain: composable gradient transformations for JAX.

Optax's API, so ``import gradchain as optax`` runs an everyday Optax program,
with hyperparameters kept as readable, settable state, errors that name the
transform and the tree path, and dtypes that stay put.
"""

from gradchain._base import EmptyState as EmptyState
from gradchain._base import GradientTransformation as GradientTransformation
from gradchain._base import GradientTransformationExtraArgs as GradientTransformationExtraArgs
from gradchain._base import OptState as OptState
from gradchain._base import Params as Params
from gradchain._base import ScalarOrSchedule as ScalarOrSchedule
from gradchain._base import Schedule as Schedule
from gradchain._base import Updates as Updates
from gradchain._base import apply_updates as apply_updates
from gradchain._base import identity as identity
from gradchain._base import set_to_zero as set_to_zero
from gradchain._base import stateless as stateless
from gradchain._base import stateless_with_tree_map as stateless_with_tree_map
from gradchain._base import with_extra_args_support as with_extra_args_support
from gradchain._clipping import ClipState as ClipState
from gradchain._clipping import clip as clip
from gradchain._clipping import clip_by_global_norm as clip_by_global_norm
from gradchain._combine import chain as chain
from gradchain._combine import named_chain as named_chain
from gradchain._composite_schedules import join_schedules as join_schedules
from gradchain._composite_schedules import (
    piecewise_constant_schedule as piecewise_constant_schedule,
)
from gradchain._composite_schedules import warmup_constant_schedule as warmup_constant_schedule
from gradchain._composite_schedules import (
    warmup_cosine_decay_schedule as warmup_cosine_decay_schedule,
)
from gradchain._hyperparams import Hyperparams as Hyperparams
from gradchain._hyperparams import get_hyperparams as get_hyperparams
from gradchain._hyperparams import set_hyperparams as set_hyperparams
from gradchain._moments import ScaleByAdamState as ScaleByAdamState
from gradchain._moments import ScaleByRmsState as ScaleByRmsState
from gradchain._moments import ScaleByRssState as ScaleByRssState
from gradchain._moments import ScaleByStddevState as ScaleByStddevState
from gradchain._moments import scale_by_adam as scale_by_adam
from gradchain._moments import scale_by_rms as scale_by_rms
from gradchain._moments import scale_by_rss as scale_by_rss
from gradchain._moments import scale_by_stddev as scale_by_stddev
from gradchain._momentum import EmaState as EmaState
from gradchain._momentum import TraceState as TraceState
from gradchain._momentum import ema as ema
from gradchain._momentum import trace as trace
from gradchain._optimizers import adagrad as adagrad
from gradchain._optimizers import adam as adam
from gradchain._optimizers import adamw as adamw
from gradchain._optimizers import nadam as nadam
from gradchain._optimizers import nadamw as nadamw
from gradchain._optimizers import rmsprop as rmsprop
from gradchain._optimizers import sgd as sgd
from gradchain._regularizing import DecayState as DecayState
from gradchain._regularizing import add_decayed_weights as add_decayed_weights
from gradchain._regularizing import add_l1_penalty as add_l1_penalty
from gradchain._scaling import ScaleState as ScaleState
from gradchain._scaling import scale as scale
from gradchain._scaling import scale_by_learning_rate as scale_by_learning_rate
from gradchain._scaling import scale_by_schedule as scale_by_schedule
from gradchain._schedules import constant_schedule as constant_schedule
from gradchain._schedules import cosine_decay_schedule as cosine_decay_schedule
from gradchain._schedules import exponential_decay as exponential_decay
from gradchain._schedules import inverse_sqrt_decay_schedule as inverse_sqrt_decay_schedule
from gradchain._schedules import inverse_time_decay_schedule as inverse_time_decay_schedule
from gradchain._schedules import linear_schedule as linear_schedule
from gradchain._schedules import polynomial_schedule as polynomial_schedule
from gradchain._tree import global_norm as global_norm
from gradchain._wrappers import InjectHyperparamsState as InjectHyperparamsState
from gradchain._wrappers import MaskedNode as MaskedNode
from gradchain._wrappers import MaskedState as MaskedState
from gradchain._wrappers import inject_hyperparams as inject_hyperparams
from gradchain._wrappers import masked as masked

__version__ = "0.1.0"

__all__ = [
    "ClipState",
    "DecayState",
    "EmaState",
    "EmptyState",
    "GradientTransformation",
    "GradientTransformationExtraArgs",
    "Hyperparams",
    "InjectHyperparamsState",
    "MaskedNode",
    "MaskedState",
    "OptState",
    "Params",
    "ScalarOrSchedule",
    "ScaleByAdamState",
    "ScaleByRmsState",
    "ScaleByRssState",
    "ScaleByStddevState",
    "ScaleState",
    "Schedule",
    "TraceState",
    "Updates",
    "adagrad",
    "adam",
    "adamw",
    "add_decayed_weights",
    "add_l1_penalty",
    "apply_updates",
    "chain",
    "clip",
    "clip_by_global_norm",
    "constant_schedule",
    "cosine_decay_schedule",
    "ema",
    "exponential_decay",
    "get_hyperparams",
    "global_norm",
    "identity",
    "inject_hyperparams",
    "inverse_sqrt_decay_schedule",
    "inverse_time_decay_schedule",
    "join_schedules",
    "linear_schedule",
    "masked",
    "nadam",
    "nadamw",
    "named_chain",
    "piecewise_constant_schedule",
    "polynomial_schedule",
    "rmsprop",
    "scale",
    "scale_by_adam",
    "scale_by_learning_rate",
    "scale_by_rms",
    "scale_by_rss",
    "scale_by_schedule",
    "scale_by_stddev",
    "set_hyperparams",
    "set_to_zero",
    "sgd",
    "stateless",
    "stateless_with_tree_map",
    "trace",
    "warmup_constant_schedule",
    "warmup_cosine_decay_schedule",
    "with_extra_args_support",
]
