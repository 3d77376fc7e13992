"""mindpet_lite.models: a compact MindSpore Llama with MindFormers' parameter names."""
from mindpet_lite.models.llama import (LlamaConfig, LlamaForCausalLM, count_params, llama_param_shapes,
                                      recompute_layers)

__all__ = ["LlamaConfig", "LlamaForCausalLM", "llama_param_shapes", "count_params", "recompute_layers"]
