"""The trainable rational activation: module, functional op, init fits, backends, model surgery.

Knows nothing of Ray, MLflow or experiments; imports with only torch (and CuPy for the CUDA path).
"""

from .fits import TARGETS, fit_rational
from .functional import BACKENDS, rational, resolve_backend
from .module import VERSIONS, Rational
from .plot import capture_inputs, plot_rational
from .swap import DEFAULT_ACTIVATIONS, activation_calls, count_activations, rational_param_groups, replace_activations

__all__ = [
    "BACKENDS",
    "DEFAULT_ACTIVATIONS",
    "TARGETS",
    "VERSIONS",
    "Rational",
    "activation_calls",
    "capture_inputs",
    "count_activations",
    "fit_rational",
    "plot_rational",
    "rational",
    "rational_param_groups",
    "replace_activations",
    "resolve_backend",
]
