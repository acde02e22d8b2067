"""Token-level trust-region rules of the CPPO study behind one interface (pure torch).

    >>> from methods import get_method
    >>> cppo = get_method("cppo", delta=0.15, horizon=512)
    >>> out = cppo(batch)            # LossOutput(loss, mask, weight, metrics, details)

The contract is ``docs/methods.md``; every method is a mask rule and a weight rule over the one
loss form −A·M·sg(W)·logp, aggregated with denominators that masking never shrinks.
"""

from .aggregation import aggregate
from .batch import BatchError, LossTotals, PolicyBatch, unpack_packed
from .divergence import (binary_kl, binary_tv, exact_kl, exact_tv, force_sampled_token, insert_sampled, k2,
                         k3, token_divergence, topk_kl, topk_tv)
from .fused import policy_logprobs_from_hidden
from .logits import policy_logprobs_from_logits
from .params import AGGREGATIONS, DIVERGENCES, MethodConfigError
from .registry import METRIC_NAMES, LossOutput, Method, MethodSpec, get_method, list_methods, method_names, register

__all__ = [
    "AGGREGATIONS", "DIVERGENCES", "METRIC_NAMES", "BatchError", "LossOutput", "LossTotals", "Method",
    "MethodConfigError", "MethodSpec", "PolicyBatch", "aggregate", "binary_kl", "binary_tv", "exact_kl",
    "exact_tv", "force_sampled_token", "get_method", "insert_sampled", "k2", "k3", "list_methods", "method_names",
    "policy_logprobs_from_hidden", "policy_logprobs_from_logits", "register", "token_divergence", "topk_kl", "topk_tv", "unpack_packed",
]
