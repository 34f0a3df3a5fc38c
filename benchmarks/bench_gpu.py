"""GPU section: tokens/s and model FLOPs utilization of the runner's DeepSpeed engine in bf16, for the
tiny preset and a ~0.5B configuration. Skipped (last line ``skipped: ...``) without CUDA.

MFU = 6 * N_params * tokens/s / peak bf16 FLOP/s (``--peak-tflops``, default an H100 SXM's 989).
Last line: ``ratio: X`` (MFU of the ~0.5B configuration).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch


def config_05b():
    from keye_model.config import KeyeConfig, TextConfig

    base = KeyeConfig.preset("tiny")
    text = dataclasses.replace(
        base.text,
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=64,
        intermediate_size=3072,
        mrope_section=(8, 12, 12),  # 32 rotary frequencies at head_dim 64, split as 8B's [16, 24, 24]
    )
    assert isinstance(text, TextConfig)
    return dataclasses.replace(base, text=text)


def measure(name: str, model_config, batch_tokens: int, steps: int, peak_tflops: float) -> float:
    import deepspeed

    from data_specs.presets import get_stage
    from keye_model.model import KeyeForConditionalGeneration
    from keye_model.training.runner import deepspeed_config

    model_config = dataclasses.replace(model_config, image_token_id=5, video_token_id=6)
    model = KeyeForConditionalGeneration(model_config).cuda()
    n_params = sum(p.numel() for p in model.language_model.parameters())
    stage = dataclasses.replace(get_stage("tiny", "stage2"), micro_batch_size=1, grad_accum_steps=1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=deepspeed_config(stage))
    seq = 2048
    rows = max(1, batch_tokens // seq)
    ids = torch.randint(16, model_config.text.vocab_size, (rows, seq), device="cuda")
    for i in range(steps + 3):
        if i == 3:
            torch.cuda.synchronize()
            start = time.perf_counter()
        loss = engine(input_ids=ids, labels=ids).loss
        engine.backward(loss)
        engine.step()
    torch.cuda.synchronize()
    tps = rows * seq * steps / (time.perf_counter() - start)
    mfu = 6 * n_params * tps / (peak_tflops * 1e12)
    print(f"{name}: {n_params / 1e6:.1f}M LLM params, {tps:,.0f} tokens/s, MFU {100 * mfu:.1f}%")
    return mfu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("skipped: no CUDA device")
        return
    from keye_model.config import KeyeConfig
    from keye_model.training.runner import init_distributed

    init_distributed()
    measure("tiny", KeyeConfig.preset("tiny"), 16384, args.steps, args.peak_tflops)
    mfu = measure("~0.5B", config_05b(), 16384, args.steps, args.peak_tflops)
    print(f"ratio: {mfu:.3f}")


if __name__ == "__main__":
    main()
