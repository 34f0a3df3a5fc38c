"""Runner step vs a bare PyTorch loop on the same tiny model and batch; the balancer at keye-8b's settings.

The runner step is the DeepSpeed engine the stage runner builds (``runner.build_model``,
``deepspeed_config``, ``lr_lambda``): forward, ``engine.backward``, ``engine.step``. The bare loop is
the same model and packed batch with plain ``loss.backward(); optimizer.step()``. Both are timed in
this run, alternating, median of the steps after warm-up. Last line: ``ratio: X`` (runner / bare).

The balancer part assigns windows of a long-tailed cost mix (text, images, videos) at keye-8b's stage 2
settings (micro batch 1, 8 accumulation steps) over ``--ranks`` ranks, and prints max/mean: of the
ranks' step totals (what ZeRO-1 waits for) and of each micro batch's slowest rank summed over the step
(what ZeRO-2/3 wait for, meeting in every micro batch), for balancing each micro batch alone (the old
windows), over the global batch, and the lower bound.

    python benchmarks/bench_train.py [--steps 20] [--ranks 8]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import random
import statistics
import tempfile
import time

import numpy as np
import torch
from skimage import data

from data_specs.presets import get_stage
from keye_model.processor import KeyeProcessor
from keye_model.tokenizer import tiny_tokenizer
from keye_model.training import balance
from keye_model.training.packing import Encoded, pack
from keye_model.training.runner import RunConfig, build_model, deepspeed_config, init_distributed, lr_lambda


def packed_batch(processor: KeyeProcessor, seq_len: int, num_samples: int):
    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()] * (num_samples // 4)
    encoded = []
    for i, photo in enumerate(photos):
        small = photo[:: max(1, photo.shape[0] // 112), :: max(1, photo.shape[1] // 112)]
        conv = [
            {
                "role": "user",
                "content": [
                    {"type": "image", "image": np.ascontiguousarray(small)},
                    {"type": "text", "text": "What is in the picture?"},
                ],
            },
            {"role": "assistant", "content": f"A photograph, number {i}."},
        ]
        encoded.append(Encoded.from_batch(f"s{i}", processor([conv])))
    return pack(encoded, seq_len, processor.tokenizer.pad_token_id)


def time_steps(step, steps: int) -> list[float]:
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def realistic_costs(n: int, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    costs = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.3:
            costs.append(balance.sample_cost([], rng.randint(64, 1024)))
        elif kind < 0.85:
            patches = rng.choice([64, 256, 1024, 4096])
            costs.append(balance.sample_cost([patches], patches // 4 + rng.randint(32, 512)))
        else:
            frames = [rng.choice([192, 768]) for _ in range(rng.randint(16, 64))]
            costs.append(balance.sample_cost(frames, sum(frames) // 4 + 256))
    return costs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--samples", type=int, default=16, help="image+text samples packed in the batch")
    args = parser.parse_args()
    import deepspeed

    torch.manual_seed(0)
    tok_dir = tempfile.mkdtemp()
    tokenizer = tiny_tokenizer(tok_dir)
    stage = dataclasses.replace(get_stage("tiny", "sft"), micro_batch_size=1, grad_accum_steps=1)
    config = RunConfig(stage=stage, output_dir=tempfile.mkdtemp(), tokenizer_dir=tok_dir, shards=("unused",))
    processor = KeyeProcessor(tokenizer)
    batch = packed_batch(processor, stage.seq_len, args.samples).model_inputs()

    init_distributed()
    model = build_model(config, tokenizer)
    bare_model = copy.deepcopy(model)
    bare_opt = torch.optim.AdamW([p for p in bare_model.parameters() if p.requires_grad], lr=stage.optimizer.lr)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=stage.optimizer.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(stage))
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=deepspeed_config(stage)
    )

    def bare_step() -> None:
        loss = bare_model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(bare_model.parameters(), stage.optimizer.grad_clip)
        bare_opt.step()
        bare_opt.zero_grad(set_to_none=True)

    def runner_step() -> None:
        loss = engine(**batch).loss
        engine.backward(loss)
        engine.step()

    for _ in range(3):  # warm-up both
        bare_step()
        runner_step()
    bare, runner = [], []
    for _ in range(args.steps):  # alternate so load changes hit both alike
        bare += time_steps(bare_step, 1)
        runner += time_steps(runner_step, 1)
    bare_ms, runner_ms = 1000 * statistics.median(bare), 1000 * statistics.median(runner)
    tokens = int(batch["input_ids"].numel())
    print(f"batch: {tokens} tokens, {int(batch['grid_hw'].shape[0])} images, ZeRO-{stage.zero_stage}, CPU fp32")
    print(f"bare PyTorch step (median of {args.steps}): {bare_ms:.1f} ms")
    print(f"runner DeepSpeed step (median of {args.steps}): {runner_ms:.1f} ms")

    for line in balancer_report(args.ranks):
        print(line)
    print(f"ratio: {runner_ms / bare_ms:.3f}")


def balancer_report(ranks: int, num_windows: int = 200) -> list[str]:
    """max/mean of the global-batch balancer vs balancing each micro batch alone, at keye-8b's stage 2."""
    spec = get_stage("keye-8b", "stage2")
    micro, accum = spec.micro_batch_size, spec.grad_accum_steps
    size = ranks * micro * accum
    costs = realistic_costs(size * num_windows)
    rows: dict[str, list[tuple[float, float]]] = {}
    for start in range(0, len(costs), size):
        window = costs[start : start + size]
        for name, plan in plan_variants(window, ranks, micro, accum).items():
            step = balance.imbalance([[i for part in rank for i in part] for rank in plan], window)
            rows.setdefault(name, []).append((step, balance.micro_batch_imbalance(plan, window)))
        bound = balance.lower_bound(window, ranks) / (sum(window) / ranks)
        rows.setdefault("lower bound", []).append((bound, float("nan")))
    lines = [
        f"balancer at keye-8b stage2 settings: {ranks} ranks x micro batch {micro} x {accum} micro batches, "
        f"mean max/mean over {num_windows} global batches",
        f"  {'assignment':<42} {'step totals (ZeRO-1)':>21} {'per micro batch (ZeRO-2/3)':>27}",
    ]
    for name, values in rows.items():
        step = statistics.mean(v[0] for v in values)
        micro_mean = statistics.mean(v[1] for v in values)
        micro_cell = "-" if math.isnan(micro_mean) else f"{micro_mean:.3f}"
        lines.append(f"  {name:<42} {step:>21.3f} {micro_cell:>27}")
    return lines


def plan_variants(window: list[float], ranks: int, micro: int, accum: int) -> dict[str, list[list[list[int]]]]:
    """plan[rank][micro] of each assignment compared."""
    slice_size = ranks * micro
    alone: list[list[list[int]]] = [[] for _ in range(ranks)]
    for m in range(accum):  # the old windows: each micro batch's ranks x micro batch samples balanced alone
        part = balance.assign_global_batch(window[m * slice_size : (m + 1) * slice_size], ranks, micro, 1)
        for rank in range(ranks):
            alone[rank].append([m * slice_size + i for i in part[rank][0]])
    return {
        "each micro batch alone (old windows)": alone,
        "global batch, meet every micro batch": balance.assign_global_batch(window, ranks, micro, accum),
        "global batch, meet once per step": balance.assign_global_batch(
            window, ranks, micro, accum, meet_every_micro_batch=False
        ),
    }


if __name__ == "__main__":
    main()
