"""mindpet_lite.infer: predict mode, prompts in, JSON lines out (``run_mode: predict``)."""
from mindpet_lite.infer.held_out import answer_held_out, check_held_out_run, held_out_examples, predict_held_out
from mindpet_lite.infer.predict import (PREDICTIONS_FILE, TextStreamer, generation_settings, load_predictor, predict,
                                        predict_prompts, read_prompts, stream_generate)

__all__ = ["predict", "predict_prompts", "load_predictor", "read_prompts", "generation_settings", "TextStreamer", "stream_generate",
           "PREDICTIONS_FILE", "answer_held_out", "check_held_out_run", "held_out_examples", "predict_held_out"]
