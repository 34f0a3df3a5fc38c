"""Keye-VL-1.5 model: vision encoder, projector, Qwen3 decoder, Slow-Fast video encoding, losses."""
