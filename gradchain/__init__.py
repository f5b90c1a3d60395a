"""gradchain: composable gradient transformations for JAX.

Optax's API, so ``import gradchain as optax`` runs an everyday Optax program,
with hyperparameters kept as readable, settable state, errors that name the
transform and the tree path, and dtypes that stay put.
"""

from gradchain._accumulate import ApplyEveryState as ApplyEveryState
from gradchain._accumulate import MultiSteps as MultiSteps
from gradchain._accumulate import MultiStepsState as MultiStepsState
from gradchain._accumulate import ShouldSkipUpdateFunction as ShouldSkipUpdateFunction
from gradchain._accumulate import apply_every as apply_every
from gradchain._accumulate import multi_steps as multi_steps
from gradchain._accumulate import skip_large_updates as skip_large_updates
from gradchain._accumulate import skip_not_finite as skip_not_finite
from gradchain._adaptive import ScaleByAdamaxState as ScaleByAdamaxState
from gradchain._adaptive import ScaleByAmsgradState as ScaleByAmsgradState
from gradchain._adaptive import ScaleByBeliefState as ScaleByBeliefState
from gradchain._adaptive import ScaleByYogiState as ScaleByYogiState
from gradchain._adaptive import scale_by_adamax as scale_by_adamax
from gradchain._adaptive import scale_by_amsgrad as scale_by_amsgrad
from gradchain._adaptive import scale_by_belief as scale_by_belief
from gradchain._adaptive import scale_by_yogi as scale_by_yogi
from gradchain._adaptive_other import ScaleByAdaDeltaState as ScaleByAdaDeltaState
from gradchain._adaptive_other import ScaleByAdanState as ScaleByAdanState
from gradchain._adaptive_other import ScaleByNovogradState as ScaleByNovogradState
from gradchain._adaptive_other import scale_by_adadelta as scale_by_adadelta
from gradchain._adaptive_other import scale_by_adan as scale_by_adan
from gradchain._adaptive_other import scale_by_novograd as scale_by_novograd
from gradchain._averaging import EmaParamsState as EmaParamsState
from gradchain._averaging import LookaheadParams as LookaheadParams
from gradchain._averaging import LookaheadState as LookaheadState
from gradchain._averaging import ema_params as ema_params
from gradchain._averaging import eval_params as eval_params
from gradchain._averaging import lookahead as lookahead
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
from gradchain._clipping_more import AdaptiveGradClipState as AdaptiveGradClipState
from gradchain._clipping_more import ClipByBlockRmsState as ClipByBlockRmsState
from gradchain._clipping_more import adaptive_grad_clip as adaptive_grad_clip
from gradchain._clipping_more import clip_by_block_rms as clip_by_block_rms
from gradchain._clipping_more import (
    per_example_global_norm_clip as per_example_global_norm_clip,
)
from gradchain._clipping_more import per_example_layer_norm_clip as per_example_layer_norm_clip
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
from gradchain._conditional import ConditionallyMaskState as ConditionallyMaskState
from gradchain._conditional import ConditionallyTransformState as ConditionallyTransformState
from gradchain._conditional import conditionally_mask as conditionally_mask
from gradchain._conditional import conditionally_transform as conditionally_transform
from gradchain._conditional import maximize as maximize
from gradchain._cyclic_schedules import cosine_onecycle_schedule as cosine_onecycle_schedule
from gradchain._cyclic_schedules import cyclic_schedule as cyclic_schedule
from gradchain._cyclic_schedules import linear_onecycle_schedule as linear_onecycle_schedule
from gradchain._cyclic_schedules import (
    piecewise_interpolate_schedule as piecewise_interpolate_schedule,
)
from gradchain._cyclic_schedules import sgdr_schedule as sgdr_schedule
from gradchain._explain import Explanation as Explanation
from gradchain._explain import explain as explain
from gradchain._flatten import flatten as flatten
from gradchain._guards import ApplyIfFiniteState as ApplyIfFiniteState
from gradchain._guards import SkipSpikesState as SkipSpikesState
from gradchain._guards import apply_if_finite as apply_if_finite
from gradchain._guards import skip_spikes as skip_spikes
from gradchain._hyperparams import Hyperparams as Hyperparams
from gradchain._hyperparams import get_hyperparams as get_hyperparams
from gradchain._hyperparams import set_hyperparams as set_hyperparams
from gradchain._inject_stateful import (
    InjectStatefulHyperparamsState as InjectStatefulHyperparamsState,
)
from gradchain._inject_stateful import WrappedSchedule as WrappedSchedule
from gradchain._inject_stateful import WrappedScheduleState as WrappedScheduleState
from gradchain._inject_stateful import inject_stateful_hyperparams as inject_stateful_hyperparams
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
from gradchain._monitoring import MeasureWithEmaState as MeasureWithEmaState
from gradchain._monitoring import MonitorState as MonitorState
from gradchain._monitoring import SnapshotState as SnapshotState
from gradchain._monitoring import TelemetryState as TelemetryState
from gradchain._monitoring import get_telemetry as get_telemetry
from gradchain._monitoring import measure_with_ema as measure_with_ema
from gradchain._monitoring import monitor as monitor
from gradchain._monitoring import snapshot as snapshot
from gradchain._monitoring import telemetry as telemetry
from gradchain._optimizers import adagrad as adagrad
from gradchain._optimizers import adam as adam
from gradchain._optimizers import adamw as adamw
from gradchain._optimizers import nadam as nadam
from gradchain._optimizers import nadamw as nadamw
from gradchain._optimizers import rmsprop as rmsprop
from gradchain._optimizers import sgd as sgd
from gradchain._optimizers_adaptive import adabelief as adabelief
from gradchain._optimizers_adaptive import adadelta as adadelta
from gradchain._optimizers_adaptive import adamax as adamax
from gradchain._optimizers_adaptive import adamaxw as adamaxw
from gradchain._optimizers_adaptive import adan as adan
from gradchain._optimizers_adaptive import amsgrad as amsgrad
from gradchain._optimizers_adaptive import lion as lion
from gradchain._optimizers_adaptive import novograd as novograd
from gradchain._optimizers_adaptive import radam as radam
from gradchain._optimizers_adaptive import rprop as rprop
from gradchain._optimizers_adaptive import sign_sgd as sign_sgd
from gradchain._optimizers_adaptive import yogi as yogi
from gradchain._partition import PartitionState as PartitionState
from gradchain._partition import freeze as freeze
from gradchain._partition import multi_transform as multi_transform
from gradchain._partition import partition as partition
from gradchain._partition import selective_transform as selective_transform
from gradchain._radam import ScaleByRadamState as ScaleByRadamState
from gradchain._radam import scale_by_radam as scale_by_radam
from gradchain._regularizing import DecayState as DecayState
from gradchain._regularizing import add_decayed_weights as add_decayed_weights
from gradchain._regularizing import add_l1_penalty as add_l1_penalty
from gradchain._rules import Rule as Rule
from gradchain._rules import param_groups as param_groups
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
from gradchain._sign_methods import ScaleByLionState as ScaleByLionState
from gradchain._sign_methods import ScaleByRpropState as ScaleByRpropState
from gradchain._sign_methods import scale_by_lion as scale_by_lion
from gradchain._sign_methods import scale_by_rprop as scale_by_rprop
from gradchain._sign_methods import scale_by_sign as scale_by_sign
from gradchain._tree import global_norm as global_norm
from gradchain._warmup_schedules import (
    warmup_exponential_decay_schedule as warmup_exponential_decay_schedule,
)
from gradchain._warmup_schedules import (
    warmup_stable_decay_schedule as warmup_stable_decay_schedule,
)
from gradchain._wrappers import InjectHyperparamsState as InjectHyperparamsState
from gradchain._wrappers import MaskedNode as MaskedNode
from gradchain._wrappers import MaskedState as MaskedState
from gradchain._wrappers import inject_hyperparams as inject_hyperparams
from gradchain._wrappers import masked as masked

__version__ = "0.1.0"

__all__ = [
    "AdaptiveGradClipState",
    "ApplyEveryState",
    "ApplyIfFiniteState",
    "ClipByBlockRmsState",
    "ClipState",
    "ConditionallyMaskState",
    "ConditionallyTransformState",
    "DecayState",
    "EmaParamsState",
    "EmaState",
    "EmptyState",
    "Explanation",
    "GradientTransformation",
    "GradientTransformationExtraArgs",
    "Hyperparams",
    "InjectHyperparamsState",
    "InjectStatefulHyperparamsState",
    "LookaheadParams",
    "LookaheadState",
    "MaskedNode",
    "MaskedState",
    "MeasureWithEmaState",
    "MonitorState",
    "MultiSteps",
    "MultiStepsState",
    "OptState",
    "Params",
    "PartitionState",
    "Rule",
    "ScalarOrSchedule",
    "ScaleByAdaDeltaState",
    "ScaleByAdamState",
    "ScaleByAdamaxState",
    "ScaleByAdanState",
    "ScaleByAmsgradState",
    "ScaleByBeliefState",
    "ScaleByLionState",
    "ScaleByNovogradState",
    "ScaleByRadamState",
    "ScaleByRmsState",
    "ScaleByRpropState",
    "ScaleByRssState",
    "ScaleByStddevState",
    "ScaleByYogiState",
    "ScaleState",
    "Schedule",
    "ShouldSkipUpdateFunction",
    "SkipSpikesState",
    "SnapshotState",
    "TelemetryState",
    "TraceState",
    "Updates",
    "WrappedSchedule",
    "WrappedScheduleState",
    "adabelief",
    "adadelta",
    "adagrad",
    "adam",
    "adamax",
    "adamaxw",
    "adamw",
    "adan",
    "adaptive_grad_clip",
    "add_decayed_weights",
    "add_l1_penalty",
    "amsgrad",
    "apply_every",
    "apply_if_finite",
    "apply_updates",
    "chain",
    "clip",
    "clip_by_block_rms",
    "clip_by_global_norm",
    "conditionally_mask",
    "conditionally_transform",
    "constant_schedule",
    "cosine_decay_schedule",
    "cosine_onecycle_schedule",
    "cyclic_schedule",
    "ema",
    "ema_params",
    "eval_params",
    "explain",
    "exponential_decay",
    "flatten",
    "freeze",
    "get_hyperparams",
    "get_telemetry",
    "global_norm",
    "identity",
    "inject_hyperparams",
    "inject_stateful_hyperparams",
    "inverse_sqrt_decay_schedule",
    "inverse_time_decay_schedule",
    "join_schedules",
    "linear_onecycle_schedule",
    "linear_schedule",
    "lion",
    "lookahead",
    "masked",
    "maximize",
    "measure_with_ema",
    "monitor",
    "multi_steps",
    "multi_transform",
    "nadam",
    "nadamw",
    "named_chain",
    "novograd",
    "param_groups",
    "partition",
    "per_example_global_norm_clip",
    "per_example_layer_norm_clip",
    "piecewise_constant_schedule",
    "piecewise_interpolate_schedule",
    "polynomial_schedule",
    "radam",
    "rmsprop",
    "rprop",
    "scale",
    "scale_by_adadelta",
    "scale_by_adam",
    "scale_by_adamax",
    "scale_by_adan",
    "scale_by_amsgrad",
    "scale_by_belief",
    "scale_by_learning_rate",
    "scale_by_lion",
    "scale_by_novograd",
    "scale_by_radam",
    "scale_by_rms",
    "scale_by_rprop",
    "scale_by_rss",
    "scale_by_schedule",
    "scale_by_sign",
    "scale_by_stddev",
    "scale_by_yogi",
    "selective_transform",
    "set_hyperparams",
    "set_to_zero",
    "sgd",
    "sgdr_schedule",
    "sign_sgd",
    "skip_large_updates",
    "skip_not_finite",
    "skip_spikes",
    "snapshot",
    "stateless",
    "stateless_with_tree_map",
    "telemetry",
    "trace",
    "warmup_constant_schedule",
    "warmup_cosine_decay_schedule",
    "warmup_exponential_decay_schedule",
    "warmup_stable_decay_schedule",
    "with_extra_args_support",
    "yogi",
]
