"""gradchain: composable gradient transformations for JAX.

Optax's API, so ``import gradchain as optax`` runs an everyday Optax program,
with hyperparameters kept as readable, settable state, errors that name the
transform and the tree path, and dtypes that stay put.
"""

from gradchain._accumulate import ApplyEvery as ApplyEvery
from gradchain._accumulate import MultiSteps as MultiSteps
from gradchain._accumulate import MultiStepsState as MultiStepsState
from gradchain._accumulate import ShouldSkipUpdateFunction as ShouldSkipUpdateFunction
from gradchain._accumulate import apply_every as apply_every
from gradchain._accumulate import multi_steps as multi_steps
from gradchain._accumulate import skip_large_updates as skip_large_updates
from gradchain._accumulate import skip_not_finite as skip_not_finite
from gradchain._adam_mini import AdamMiniBlockRow as AdamMiniBlockRow
from gradchain._adam_mini import AdamMiniBlocks as AdamMiniBlocks
from gradchain._adam_mini import ScaleByAdamMiniState as ScaleByAdamMiniState
from gradchain._adam_mini import adam_mini as adam_mini
from gradchain._adam_mini import adam_mini_blocks as adam_mini_blocks
from gradchain._adam_mini import scale_by_adam_mini as scale_by_adam_mini
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
from gradchain._ademamix import ScaleByAdemamixState as ScaleByAdemamixState
from gradchain._ademamix import ScaleBySimplifiedAdemamixState as ScaleBySimplifiedAdemamixState
from gradchain._ademamix import ademamix as ademamix
from gradchain._ademamix import scale_by_ademamix as scale_by_ademamix
from gradchain._ademamix import scale_by_simplified_ademamix as scale_by_simplified_ademamix
from gradchain._ademamix import simplified_ademamix as simplified_ademamix
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
from gradchain._base import TransformInitFn as TransformInitFn
from gradchain._base import TransformUpdateExtraArgsFn as TransformUpdateExtraArgsFn
from gradchain._base import TransformUpdateFn as TransformUpdateFn
from gradchain._base import Updates as Updates
from gradchain._base import apply_updates as apply_updates
from gradchain._base import identity as identity
from gradchain._base import set_to_zero as set_to_zero
from gradchain._base import stateless as stateless
from gradchain._base import stateless_with_tree_map as stateless_with_tree_map
from gradchain._base import with_extra_args_support as with_extra_args_support
from gradchain._cautious import CautiousState as CautiousState
from gradchain._cautious import cautious as cautious
from gradchain._cautious import cautious_adamw as cautious_adamw
from gradchain._cautious import cautious_lion as cautious_lion
from gradchain._clipping import ClipByGlobalNormState as ClipByGlobalNormState
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
from gradchain._cocob import ScaleByCocobState as ScaleByCocobState
from gradchain._cocob import cocob as cocob
from gradchain._cocob import scale_by_cocob as scale_by_cocob
from gradchain._combine import chain as chain
from gradchain._combine import named_chain as named_chain
from gradchain._complex import RealAndImaginary as RealAndImaginary
from gradchain._complex import SplitRealAndImaginaryState as SplitRealAndImaginaryState
from gradchain._complex import split_real_and_imaginary as split_real_and_imaginary
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
from gradchain._contrib_moments import ScaleByAcpropState as ScaleByAcpropState
from gradchain._contrib_moments import ScaleByAdoptState as ScaleByAdoptState
from gradchain._contrib_moments import acprop as acprop
from gradchain._contrib_moments import adopt as adopt
from gradchain._contrib_moments import scale_by_acprop as scale_by_acprop
from gradchain._contrib_moments import scale_by_adopt as scale_by_adopt
from gradchain._cyclic_schedules import cosine_onecycle_schedule as cosine_onecycle_schedule
from gradchain._cyclic_schedules import cyclic_schedule as cyclic_schedule
from gradchain._cyclic_schedules import linear_onecycle_schedule as linear_onecycle_schedule
from gradchain._cyclic_schedules import (
    piecewise_interpolate_schedule as piecewise_interpolate_schedule,
)
from gradchain._cyclic_schedules import sgdr_schedule as sgdr_schedule
from gradchain._dog import ScaleByDistanceOverGradientsState as ScaleByDistanceOverGradientsState
from gradchain._dog import ScaleByDogState as ScaleByDogState
from gradchain._dog import ScaleByDowgState as ScaleByDowgState
from gradchain._dog import scale_by_distance_over_gradients as scale_by_distance_over_gradients
from gradchain._dog import scale_by_dog as scale_by_dog
from gradchain._dog import scale_by_dowg as scale_by_dowg
from gradchain._elementwise import AddNoiseState as AddNoiseState
from gradchain._elementwise import NonNegativeParamsState as NonNegativeParamsState
from gradchain._elementwise import ZeroNansState as ZeroNansState
from gradchain._elementwise import add_noise as add_noise
from gradchain._elementwise import centralize as centralize
from gradchain._elementwise import keep_params_nonnegative as keep_params_nonnegative
from gradchain._elementwise import scale_gradient as scale_gradient
from gradchain._elementwise import zero_nans as zero_nans
from gradchain._explain import Explanation as Explanation
from gradchain._explain import explain as explain
from gradchain._factored import FactoredState as FactoredState
from gradchain._factored import scale_by_factored_rms as scale_by_factored_rms
from gradchain._flat_params import FlatLayout as FlatLayout
from gradchain._flat_params import FlatParams as FlatParams
from gradchain._flat_params import flatten_params as flatten_params
from gradchain._flatten import flatten as flatten
from gradchain._galore import GaLoreDimensionNumbers as GaLoreDimensionNumbers
from gradchain._galore import GaLoreState as GaLoreState
from gradchain._galore import galore as galore
from gradchain._galore import scale_by_galore as scale_by_galore
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
from gradchain._kron import ScaleByKronState as ScaleByKronState
from gradchain._kron import kron as kron
from gradchain._kron import scale_by_kron as scale_by_kron
from gradchain._lbfgs import ScaleByLBFGSState as ScaleByLBFGSState
from gradchain._lbfgs import lbfgs as lbfgs
from gradchain._lbfgs import scale_by_lbfgs as scale_by_lbfgs
from gradchain._linalg import matrix_inverse_pth_root as matrix_inverse_pth_root
from gradchain._linalg import power_iteration as power_iteration
from gradchain._linesearch import BacktrackingLinesearchInfo as BacktrackingLinesearchInfo
from gradchain._linesearch import (
    ScaleByBacktrackingLinesearchState as ScaleByBacktrackingLinesearchState,
)
from gradchain._linesearch import (
    scale_by_backtracking_linesearch as scale_by_backtracking_linesearch,
)
from gradchain._linesearch import value_and_grad_from_state as value_and_grad_from_state
from gradchain._lr_finder import LRFinderResult as LRFinderResult
from gradchain._lr_finder import find_learning_rate as find_learning_rate
from gradchain._lr_free import DAdaptAdamWState as DAdaptAdamWState
from gradchain._lr_free import ProdigyState as ProdigyState
from gradchain._lr_free import dadapt_adamw as dadapt_adamw
from gradchain._lr_free import prodigy as prodigy
from gradchain._madgrad import ScaleByMadgradState as ScaleByMadgradState
from gradchain._madgrad import madgrad as madgrad
from gradchain._madgrad import scale_by_madgrad as scale_by_madgrad
from gradchain._mars import ScaleByMarsState as ScaleByMarsState
from gradchain._mars import mars as mars
from gradchain._mars import scale_by_mars as scale_by_mars
from gradchain._matrices import MatrixView as MatrixView
from gradchain._matrices import MuonDimensionNumbers as MuonDimensionNumbers
from gradchain._mechanic import MechanicState as MechanicState
from gradchain._mechanic import mechanize as mechanize
from gradchain._microbatch import AccumulationType as AccumulationType
from gradchain._microbatch import microbatch as microbatch
from gradchain._moments import ScaleByAdamState as ScaleByAdamState
from gradchain._moments import ScaleByRmsState as ScaleByRmsState
from gradchain._moments import ScaleByRssState as ScaleByRssState
from gradchain._moments import ScaleByRStdDevState as ScaleByRStdDevState
from gradchain._moments import scale_by_adam as scale_by_adam
from gradchain._moments import scale_by_rms as scale_by_rms
from gradchain._moments import scale_by_rss as scale_by_rss
from gradchain._moments import scale_by_stddev as scale_by_stddev
from gradchain._momentum import EmaState as EmaState
from gradchain._momentum import TraceState as TraceState
from gradchain._momentum import ema as ema
from gradchain._momentum import trace as trace
from gradchain._momo import MomoAdamState as MomoAdamState
from gradchain._momo import MomoState as MomoState
from gradchain._momo import momo as momo
from gradchain._momo import momo_adam as momo_adam
from gradchain._monitoring import MeasureWithEmaState as MeasureWithEmaState
from gradchain._monitoring import MonitorState as MonitorState
from gradchain._monitoring import SnapshotState as SnapshotState
from gradchain._monitoring import TelemetryState as TelemetryState
from gradchain._monitoring import get_telemetry as get_telemetry
from gradchain._monitoring import measure_with_ema as measure_with_ema
from gradchain._monitoring import monitor as monitor
from gradchain._monitoring import snapshot as snapshot
from gradchain._monitoring import telemetry as telemetry
from gradchain._muon import MuonRoute as MuonRoute
from gradchain._muon import MuonState as MuonState
from gradchain._muon import muon as muon
from gradchain._muon import muon_routing as muon_routing
from gradchain._muon import scale_by_muon as scale_by_muon
from gradchain._optimistic import ScaleByOptimisticGradientState as ScaleByOptimisticGradientState
from gradchain._optimistic import scale_by_optimistic_gradient as scale_by_optimistic_gradient
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
from gradchain._optimizers_factored import adafactor as adafactor
from gradchain._optimizers_factored import sm3 as sm3
from gradchain._optimizers_trust import fromage as fromage
from gradchain._optimizers_trust import lamb as lamb
from gradchain._optimizers_trust import lars as lars
from gradchain._optimizers_trust import noisy_sgd as noisy_sgd
from gradchain._optimizers_trust import signum as signum
from gradchain._optimizers_value import dog as dog
from gradchain._optimizers_value import dowg as dowg
from gradchain._optimizers_value import optimistic_adam_v2 as optimistic_adam_v2
from gradchain._optimizers_value import optimistic_gradient_descent as optimistic_gradient_descent
from gradchain._optimizers_value import polyak_sgd as polyak_sgd
from gradchain._partition import MultiTransformState as MultiTransformState
from gradchain._partition import PartitionState as PartitionState
from gradchain._partition import freeze as freeze
from gradchain._partition import multi_transform as multi_transform
from gradchain._partition import partition as partition
from gradchain._partition import selective_transform as selective_transform
from gradchain._plateau import ReduceOnPlateauState as ReduceOnPlateauState
from gradchain._plateau import reduce_on_plateau as reduce_on_plateau
from gradchain._polyak import ScaleByPolyakState as ScaleByPolyakState
from gradchain._polyak import scale_by_polyak as scale_by_polyak
from gradchain._privacy import (
    DifferentiallyPrivateAggregateState as DifferentiallyPrivateAggregateState,
)
from gradchain._privacy import differentially_private_aggregate as differentially_private_aggregate
from gradchain._privacy import dpsgd as dpsgd
from gradchain._quantize import QuantizedArray as QuantizedArray
from gradchain._quantize import QuantizeStateState as QuantizeStateState
from gradchain._quantize import quantize_state as quantize_state
from gradchain._quantize import state_bytes_per_param as state_bytes_per_param
from gradchain._radam import ScaleByRadamState as ScaleByRadamState
from gradchain._radam import scale_by_radam as scale_by_radam
from gradchain._regularizing import AddDecayedWeightsState as AddDecayedWeightsState
from gradchain._regularizing import add_decayed_weights as add_decayed_weights
from gradchain._regularizing import add_l1_penalty as add_l1_penalty
from gradchain._restore import RestoreReport as RestoreReport
from gradchain._restore import restore_state as restore_state
from gradchain._rounding import apply_updates_stochastic as apply_updates_stochastic
from gradchain._routing import MatrixRoute as MatrixRoute
from gradchain._routing import MatrixRouting as MatrixRouting
from gradchain._routing import matrix_partition as matrix_partition
from gradchain._routing import matrix_routing as matrix_routing
from gradchain._rules import Rule as Rule
from gradchain._rules import param_groups as param_groups
from gradchain._sam import SAMState as SAMState
from gradchain._sam import sam as sam
from gradchain._scaling import ScaleByScheduleState as ScaleByScheduleState
from gradchain._scaling import ScaleState as ScaleState
from gradchain._scaling import scale as scale
from gradchain._scaling import scale_by_learning_rate as scale_by_learning_rate
from gradchain._scaling import scale_by_schedule as scale_by_schedule
from gradchain._schedule_free import ScheduleFreeState as ScheduleFreeState
from gradchain._schedule_free import schedule_free as schedule_free
from gradchain._schedule_free import schedule_free_adamw as schedule_free_adamw
from gradchain._schedule_free import schedule_free_eval_params as schedule_free_eval_params
from gradchain._schedule_free import schedule_free_sgd as schedule_free_sgd
from gradchain._schedules import constant_schedule as constant_schedule
from gradchain._schedules import cosine_decay_schedule as cosine_decay_schedule
from gradchain._schedules import exponential_decay as exponential_decay
from gradchain._schedules import inverse_sqrt_decay_schedule as inverse_sqrt_decay_schedule
from gradchain._schedules import inverse_time_decay_schedule as inverse_time_decay_schedule
from gradchain._schedules import linear_schedule as linear_schedule
from gradchain._schedules import polynomial_schedule as polynomial_schedule
from gradchain._scion import ScaleByScionState as ScaleByScionState
from gradchain._scion import ScionNorm as ScionNorm
from gradchain._scion import scale_by_scion as scale_by_scion
from gradchain._scion import scion as scion
from gradchain._shampoo import ScaleByShampooState as ScaleByShampooState
from gradchain._shampoo import scale_by_shampoo as scale_by_shampoo
from gradchain._shampoo import shampoo as shampoo
from gradchain._sharding import register_state_sharding_rule as register_state_sharding_rule
from gradchain._sharding import state_shardings as state_shardings
from gradchain._sign_methods import ScaleByLionState as ScaleByLionState
from gradchain._sign_methods import ScaleByRpropState as ScaleByRpropState
from gradchain._sign_methods import scale_by_lion as scale_by_lion
from gradchain._sign_methods import scale_by_rprop as scale_by_rprop
from gradchain._sign_methods import scale_by_sign as scale_by_sign
from gradchain._sm3 import ScaleBySM3State as ScaleBySM3State
from gradchain._sm3 import scale_by_sm3 as scale_by_sm3
from gradchain._soap import ScaleBySoapState as ScaleBySoapState
from gradchain._soap import SoapFactors as SoapFactors
from gradchain._soap import scale_by_soap as scale_by_soap
from gradchain._soap import soap as soap
from gradchain._sophia import HutchinsonState as HutchinsonState
from gradchain._sophia import SophiaState as SophiaState
from gradchain._sophia import (
    hutchinson_estimator_diag_hessian as hutchinson_estimator_diag_hessian,
)
from gradchain._sophia import sophia as sophia
from gradchain._sweeps import SweepResult as SweepResult
from gradchain._sweeps import sweep as sweep
from gradchain._tree import global_norm as global_norm
from gradchain._trust import NormalizeByUpdateNormState as NormalizeByUpdateNormState
from gradchain._trust import ScaleByParamBlockNormState as ScaleByParamBlockNormState
from gradchain._trust import ScaleByParamBlockRmsState as ScaleByParamBlockRmsState
from gradchain._trust import ScaleByTrustRatioState as ScaleByTrustRatioState
from gradchain._trust import normalize as normalize
from gradchain._trust import normalize_by_update_norm as normalize_by_update_norm
from gradchain._trust import scale_by_param_block_norm as scale_by_param_block_norm
from gradchain._trust import scale_by_param_block_rms as scale_by_param_block_rms
from gradchain._trust import scale_by_trust_ratio as scale_by_trust_ratio
from gradchain._utilities import bias_correction as bias_correction
from gradchain._utilities import incremental_update as incremental_update
from gradchain._utilities import init_empty_state as init_empty_state
from gradchain._utilities import periodic_update as periodic_update
from gradchain._utilities import safe_increment as safe_increment
from gradchain._utilities import safe_int32_increment as safe_int32_increment
from gradchain._utilities import safe_norm as safe_norm
from gradchain._utilities import safe_root_mean_squares as safe_root_mean_squares
from gradchain._utilities import tree_map_params as tree_map_params
from gradchain._utilities import update_infinity_moment as update_infinity_moment
from gradchain._utilities import update_moment as update_moment
from gradchain._utilities import update_moment_per_elem_norm as update_moment_per_elem_norm
from gradchain._warmup_schedules import (
    warmup_exponential_decay_schedule as warmup_exponential_decay_schedule,
)
from gradchain._warmup_schedules import (
    warmup_stable_decay_schedule as warmup_stable_decay_schedule,
)
from gradchain._wrappers import InjectHyperparamsState as InjectHyperparamsState
from gradchain._wrappers import MaskedNode as MaskedNode
from gradchain._wrappers import MaskedState as MaskedState
from gradchain._wrappers import MaskOrFn as MaskOrFn
from gradchain._wrappers import inject_hyperparams as inject_hyperparams
from gradchain._wrappers import masked as masked
from gradchain._zero import Zero1Shardings as Zero1Shardings
from gradchain._zero import zero1_shardings as zero1_shardings
from gradchain._zoom import ScaleByZoomLinesearchState as ScaleByZoomLinesearchState
from gradchain._zoom import ZoomLinesearchInfo as ZoomLinesearchInfo
from gradchain._zoom import scale_by_zoom_linesearch as scale_by_zoom_linesearch

__version__ = "0.1.0"

__all__ = [
    "AccumulationType",
    "AdamMiniBlockRow",
    "AdamMiniBlocks",
    "AdaptiveGradClipState",
    "AddDecayedWeightsState",
    "AddNoiseState",
    "ApplyEvery",
    "ApplyIfFiniteState",
    "BacktrackingLinesearchInfo",
    "CautiousState",
    "ClipByBlockRmsState",
    "ClipByGlobalNormState",
    "ClipState",
    "ConditionallyMaskState",
    "ConditionallyTransformState",
    "DAdaptAdamWState",
    "DifferentiallyPrivateAggregateState",
    "EmaParamsState",
    "EmaState",
    "EmptyState",
    "Explanation",
    "FactoredState",
    "FlatLayout",
    "FlatParams",
    "GaLoreDimensionNumbers",
    "GaLoreState",
    "GradientTransformation",
    "GradientTransformationExtraArgs",
    "HutchinsonState",
    "Hyperparams",
    "InjectHyperparamsState",
    "InjectStatefulHyperparamsState",
    "LRFinderResult",
    "LookaheadParams",
    "LookaheadState",
    "MaskOrFn",
    "MaskedNode",
    "MaskedState",
    "MatrixRoute",
    "MatrixRouting",
    "MatrixView",
    "MeasureWithEmaState",
    "MechanicState",
    "MomoAdamState",
    "MomoState",
    "MonitorState",
    "MultiSteps",
    "MultiStepsState",
    "MultiTransformState",
    "MuonDimensionNumbers",
    "MuonRoute",
    "MuonState",
    "NonNegativeParamsState",
    "NormalizeByUpdateNormState",
    "OptState",
    "Params",
    "PartitionState",
    "ProdigyState",
    "QuantizeStateState",
    "QuantizedArray",
    "RealAndImaginary",
    "ReduceOnPlateauState",
    "RestoreReport",
    "Rule",
    "SAMState",
    "ScalarOrSchedule",
    "ScaleByAcpropState",
    "ScaleByAdaDeltaState",
    "ScaleByAdamMiniState",
    "ScaleByAdamState",
    "ScaleByAdamaxState",
    "ScaleByAdanState",
    "ScaleByAdemamixState",
    "ScaleByAdoptState",
    "ScaleByAmsgradState",
    "ScaleByBacktrackingLinesearchState",
    "ScaleByBeliefState",
    "ScaleByCocobState",
    "ScaleByDistanceOverGradientsState",
    "ScaleByDogState",
    "ScaleByDowgState",
    "ScaleByKronState",
    "ScaleByLBFGSState",
    "ScaleByLionState",
    "ScaleByMadgradState",
    "ScaleByMarsState",
    "ScaleByNovogradState",
    "ScaleByOptimisticGradientState",
    "ScaleByParamBlockNormState",
    "ScaleByParamBlockRmsState",
    "ScaleByPolyakState",
    "ScaleByRStdDevState",
    "ScaleByRadamState",
    "ScaleByRmsState",
    "ScaleByRpropState",
    "ScaleByRssState",
    "ScaleBySM3State",
    "ScaleByScheduleState",
    "ScaleByScionState",
    "ScaleByShampooState",
    "ScaleBySimplifiedAdemamixState",
    "ScaleBySoapState",
    "ScaleByTrustRatioState",
    "ScaleByYogiState",
    "ScaleByZoomLinesearchState",
    "ScaleState",
    "Schedule",
    "ScheduleFreeState",
    "ScionNorm",
    "ShouldSkipUpdateFunction",
    "SkipSpikesState",
    "SnapshotState",
    "SoapFactors",
    "SophiaState",
    "SplitRealAndImaginaryState",
    "SweepResult",
    "TelemetryState",
    "TraceState",
    "TransformInitFn",
    "TransformUpdateExtraArgsFn",
    "TransformUpdateFn",
    "Updates",
    "WrappedSchedule",
    "WrappedScheduleState",
    "Zero1Shardings",
    "ZeroNansState",
    "ZoomLinesearchInfo",
    "acprop",
    "adabelief",
    "adadelta",
    "adafactor",
    "adagrad",
    "adam",
    "adam_mini",
    "adam_mini_blocks",
    "adamax",
    "adamaxw",
    "adamw",
    "adan",
    "adaptive_grad_clip",
    "add_decayed_weights",
    "add_l1_penalty",
    "add_noise",
    "ademamix",
    "adopt",
    "amsgrad",
    "apply_every",
    "apply_if_finite",
    "apply_updates",
    "apply_updates_stochastic",
    "bias_correction",
    "cautious",
    "cautious_adamw",
    "cautious_lion",
    "centralize",
    "chain",
    "clip",
    "clip_by_block_rms",
    "clip_by_global_norm",
    "cocob",
    "conditionally_mask",
    "conditionally_transform",
    "constant_schedule",
    "cosine_decay_schedule",
    "cosine_onecycle_schedule",
    "cyclic_schedule",
    "dadapt_adamw",
    "differentially_private_aggregate",
    "dog",
    "dowg",
    "dpsgd",
    "ema",
    "ema_params",
    "eval_params",
    "explain",
    "exponential_decay",
    "find_learning_rate",
    "flatten",
    "flatten_params",
    "freeze",
    "fromage",
    "galore",
    "get_hyperparams",
    "get_telemetry",
    "global_norm",
    "hutchinson_estimator_diag_hessian",
    "identity",
    "incremental_update",
    "init_empty_state",
    "inject_hyperparams",
    "inject_stateful_hyperparams",
    "inverse_sqrt_decay_schedule",
    "inverse_time_decay_schedule",
    "join_schedules",
    "keep_params_nonnegative",
    "kron",
    "lamb",
    "lars",
    "lbfgs",
    "linear_onecycle_schedule",
    "linear_schedule",
    "lion",
    "lookahead",
    "madgrad",
    "mars",
    "masked",
    "matrix_inverse_pth_root",
    "matrix_partition",
    "matrix_routing",
    "maximize",
    "measure_with_ema",
    "mechanize",
    "microbatch",
    "momo",
    "momo_adam",
    "monitor",
    "multi_steps",
    "multi_transform",
    "muon",
    "muon_routing",
    "nadam",
    "nadamw",
    "named_chain",
    "noisy_sgd",
    "normalize",
    "normalize_by_update_norm",
    "novograd",
    "optimistic_adam_v2",
    "optimistic_gradient_descent",
    "param_groups",
    "partition",
    "per_example_global_norm_clip",
    "per_example_layer_norm_clip",
    "periodic_update",
    "piecewise_constant_schedule",
    "piecewise_interpolate_schedule",
    "polyak_sgd",
    "polynomial_schedule",
    "power_iteration",
    "prodigy",
    "quantize_state",
    "radam",
    "reduce_on_plateau",
    "register_state_sharding_rule",
    "restore_state",
    "rmsprop",
    "rprop",
    "safe_increment",
    "safe_int32_increment",
    "safe_norm",
    "safe_root_mean_squares",
    "sam",
    "scale",
    "scale_by_acprop",
    "scale_by_adadelta",
    "scale_by_adam",
    "scale_by_adam_mini",
    "scale_by_adamax",
    "scale_by_adan",
    "scale_by_ademamix",
    "scale_by_adopt",
    "scale_by_amsgrad",
    "scale_by_backtracking_linesearch",
    "scale_by_belief",
    "scale_by_cocob",
    "scale_by_distance_over_gradients",
    "scale_by_dog",
    "scale_by_dowg",
    "scale_by_factored_rms",
    "scale_by_galore",
    "scale_by_kron",
    "scale_by_lbfgs",
    "scale_by_learning_rate",
    "scale_by_lion",
    "scale_by_madgrad",
    "scale_by_mars",
    "scale_by_muon",
    "scale_by_novograd",
    "scale_by_optimistic_gradient",
    "scale_by_param_block_norm",
    "scale_by_param_block_rms",
    "scale_by_polyak",
    "scale_by_radam",
    "scale_by_rms",
    "scale_by_rprop",
    "scale_by_rss",
    "scale_by_schedule",
    "scale_by_scion",
    "scale_by_shampoo",
    "scale_by_sign",
    "scale_by_simplified_ademamix",
    "scale_by_sm3",
    "scale_by_soap",
    "scale_by_stddev",
    "scale_by_trust_ratio",
    "scale_by_yogi",
    "scale_by_zoom_linesearch",
    "scale_gradient",
    "schedule_free",
    "schedule_free_adamw",
    "schedule_free_eval_params",
    "schedule_free_sgd",
    "scion",
    "selective_transform",
    "set_hyperparams",
    "set_to_zero",
    "sgd",
    "sgdr_schedule",
    "shampoo",
    "sign_sgd",
    "signum",
    "simplified_ademamix",
    "skip_large_updates",
    "skip_not_finite",
    "skip_spikes",
    "sm3",
    "snapshot",
    "soap",
    "sophia",
    "split_real_and_imaginary",
    "state_bytes_per_param",
    "state_shardings",
    "stateless",
    "stateless_with_tree_map",
    "sweep",
    "telemetry",
    "trace",
    "tree_map_params",
    "update_infinity_moment",
    "update_moment",
    "update_moment_per_elem_norm",
    "value_and_grad_from_state",
    "warmup_constant_schedule",
    "warmup_cosine_decay_schedule",
    "warmup_exponential_decay_schedule",
    "warmup_stable_decay_schedule",
    "with_extra_args_support",
    "yogi",
    "zero1_shardings",
    "zero_nans",
]
