"""mindpet_lite.models: a compact MindSpore Llama with MindFormers' parameter names."""
from mindpet_lite.models.llama import LlamaForCausalLM, recompute_layers
from mindpet_lite.models.llama_config import LlamaConfig, count_params, llama_param_shapes

__all__ = ["LlamaConfig", "LlamaForCausalLM", "llama_param_shapes", "count_params", "recompute_layers"]
