"""mindpet_lite.infer: predict mode, prompts in, JSON lines out (``run_mode: predict``)."""
from mindpet_lite.infer.held_out import answer_held_out, check_held_out_run, held_out_examples, predict_held_out
from mindpet_lite.infer.predict import (PREDICTIONS_FILE, TextStreamer, adapter_rows, generation_settings, load_adapters,
                                        load_predictor, predict, predict_prompts, read_prompt_rows, read_prompts,
                                        stream_generate)

__all__ = ["predict", "predict_prompts", "load_predictor", "load_adapters", "adapter_rows", "read_prompts",
           "read_prompt_rows", "generation_settings", "TextStreamer", "stream_generate",
           "PREDICTIONS_FILE", "answer_held_out", "check_held_out_run", "held_out_examples", "predict_held_out"]
