"""The demo's training stages through the stage runner vs a bare PyTorch loop on the same samples (P4).

Data: real easy-vqa records (questions, reasoning and caption records, as ``tasks.sources.easy_vqa``
makes them for the demo), written once at start-up to WebDataset shards the way the pipeline writes them
(``tasks.shards.shard_stage``, image-only mix, the demo's ``image_min_tokens``).

Runner side: ``runner.run_stage`` itself, at the demo preset's settings for ``stage2`` and ``sft``
(micro batch 32, seq_len 1024, lr, ZeRO stage, ``image_min_tokens`` 16), only with fewer steps. A runner
step is the time between two ``on_step`` calls: the objective's ``train_step`` (shard stream, balancer,
decode, one processor call per sample, packing, forward, ``engine.backward``, ``engine.step`` with its
gradient clipping) plus the runner's per-step logging.

Bare side: inside each ``on_step`` call, a plain loop takes the same 32 samples the runner just trained
on (its ``samples.jsonl``), opens their images from the easy_vqa package with PIL, makes one padded
batch with ``KeyeProcessor``, and does forward, backward, ``clip_grad_norm_`` (the stage clips too) and an
AdamW step on its own copy of the same initial model. So the sides alternate step by step and load changes
hit both alike; each side's step time is the median of the timed steps.

Split (what each side spends outside the model): runner data = ``Batches.my_examples`` + ``encode`` +
``pack`` (timed by wrapping those methods for this run), runner compute = the rest of the step; bare data =
image open + processor call, bare compute = the rest. The processor's padded batch and the runner's packed
rows cost the model differently (on CPU, one masked SDPA over the padded batch vs one causal SDPA per packed
sample), so a third side isolates the engine: a plain loop on its own copy of the model steps on the very
packed tensors the runner's ``pack`` just made; runner compute / that is DeepSpeed's overhead on identical
batches.

The combined ratio weighs each stage's median step by its step count in the demo (``DEMO_STEPS``): the
demo's training time for these stages through the runner over a bare loop's.

The balancer part assigns windows of a long-tailed cost mix (text, images, videos) at keye-8b's stage 2
settings (micro batch 1, 8 accumulation steps) over ``--ranks`` ranks, and prints max/mean: of the
ranks' step totals (what ZeRO-1 waits for) and of each micro batch's slowest rank summed over the step
(what ZeRO-2/3 wait for, meeting in every micro batch), for balancing each micro batch alone (the old
windows), over the global batch, and the lower bound.

Last line: ``ratio: X`` (combined runner / bare, whole steps).

    python benchmarks/bench_train.py [--steps 10] [--warmup 2] [--threads N] [--ranks 8]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import random
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from data_specs.mixes import DataMix
from data_specs.presets import DEMO_STEPS, get_preset, get_stage
from keye_model.processor import KeyeProcessor
from keye_model.tokenizer import tiny_tokenizer
from keye_model.training import balance
from keye_model.training.batches import Batches
from keye_model.training.loader import open_image
from keye_model.training.runner import RunConfig, build_model, lr_lambda, processor_config, run_stage
from tasks.shards import ShardConfig, shard_stage
from tasks.sources import SourceSpec, collect_records

STAGES = ("stage2", "sft")


def write_shards(work: Path, num_records: int, image_min_tokens: int):
    """easy-vqa records and the shards the pipeline would write for them (one image-only mix)."""
    records = collect_records(SourceSpec(name="easy-vqa", limit=num_records), work / "sources").records
    mix = DataMix(name="bench", modality_ratios={"image": 1.0})
    config = ShardConfig(mix="bench", out_dir=str(work / "shards"), slow_fast="tiny", image_min_tokens=image_min_tokens)
    return records, shard_stage(records, mix, config)


class DataTimer:
    """Seconds spent in ``Batches``' data methods since the last ``take``, and the last micro batch ``pack``
    made: wraps those methods (calling through) for this run only."""

    METHODS = ("my_examples", "encode", "pack")

    def __init__(self) -> None:
        self.seconds = 0.0
        self.packed = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        originals = {name: getattr(Batches, name) for name in self.METHODS}

        def timed(name, method):
            def wrapper(*args, **kwargs):
                start = time.perf_counter()
                try:
                    result = method(*args, **kwargs)
                finally:
                    self.seconds += time.perf_counter() - start
                if name == "pack":
                    self.packed = result
                return result

            return wrapper

        for name, method in originals.items():
            setattr(Batches, name, timed(name, method))
        try:
            yield
        finally:
            for name, method in originals.items():
                setattr(Batches, name, method)

    def take(self) -> float:
        seconds, self.seconds = self.seconds, 0.0
        return seconds


class BareLoop:
    """A plain PyTorch loop over the same samples: PIL, one processor call, forward/backward/AdamW."""

    def __init__(self, config: RunConfig, tokenizer, records_by_key: dict) -> None:
        self.stage = config.stage
        self.processor = KeyeProcessor(tokenizer, processor_config(config))
        self.model = build_model(config, tokenizer)  # same seed: the runner's initial weights
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        opt = self.stage.optimizer
        self.optimizer = torch.optim.AdamW(self.params, lr=opt.lr, betas=opt.betas, weight_decay=opt.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(self.stage))
        self.records_by_key = records_by_key

    def step(self, keys: list[str]) -> tuple[float, float]:
        """(data seconds, compute seconds) of one step on the samples ``keys``."""
        start = time.perf_counter()
        conversations = []
        for key in keys:
            record = self.records_by_key[key.split("__r")[0]]
            image = open_image(Path(record.media_path).read_bytes(), key)
            user = [{"type": "image", "image": image}, {"type": "text", "text": record.question}]
            conversations.append([{"role": "user", "content": user}, {"role": "assistant", "content": record.answer}])
        batch = self.processor(conversations)
        prepared = time.perf_counter()
        return prepared - start, self.compute(batch)

    def compute(self, inputs: dict[str, torch.Tensor]) -> float:
        """Seconds of forward, backward, gradient clipping and the AdamW step on ``inputs``."""
        start = time.perf_counter()
        loss = self.model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.stage.optimizer.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start


def time_stage(name: str, work: Path, tok_dir: str, shards, records_by_key: dict, args) -> dict[str, list[float]]:
    """Run the demo's stage ``name`` for warm-up + timed steps, a bare step after each runner step."""
    preset = get_preset("demo")
    spec = get_stage("demo", name)
    num_steps = args.warmup + args.steps
    spec = dataclasses.replace(spec, num_steps=num_steps, checkpoint_every=num_steps)  # one save, after timing
    out = work / "runs" / name
    config = RunConfig(
        stage=spec,
        output_dir=str(out),
        tokenizer_dir=tok_dir,
        model_preset=preset.model,
        image_min_tokens=preset.image_min_tokens,
        shards=tuple(s.path for s in shards.shards),
        shard_sha256s=tuple(s.sha256 for s in shards.shards),
        shard_num_bytes=tuple(s.num_bytes for s in shards.shards),
    )
    tokenizer = tiny_tokenizer(tok_dir)
    bare = BareLoop(config, tokenizer, records_by_key)
    bare_on_packed = BareLoop(config, tokenizer, records_by_key)  # its own weights and optimizer state
    data_timer = DataTimer()
    times: dict[str, list[float]] = {k: [] for k in ("runner", "runner_data", "bare", "bare_data", "bare_packed")}
    last = time.perf_counter()

    def on_step(record: dict) -> None:
        nonlocal last
        runner_s, runner_data_s = time.perf_counter() - last, data_timer.take()
        lines = (out / "samples.jsonl").read_text().splitlines()
        keys = json.loads(lines[-1])["samples"]
        bare_data_s, bare_compute_s = bare.step(keys)
        bare_packed_s = bare_on_packed.compute(data_timer.packed.model_inputs())
        if record["step"] > args.warmup:
            times["runner"].append(runner_s)
            times["runner_data"].append(runner_data_s)
            times["bare"].append(bare_data_s + bare_compute_s)
            times["bare_data"].append(bare_data_s)
            times["bare_packed"].append(bare_packed_s)
        last = time.perf_counter()

    with data_timer.installed():
        run_stage(config, on_step=on_step)
    return times


def load_average() -> str:
    """The machine's load (other processes share it), as ``uptime`` prints it."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} (1/5/15 min, {os.cpu_count()} CPUs)"


def measure(work: Path, args: argparse.Namespace) -> tuple[float, float]:
    """(runner, bare) seconds of the demo's stages at their step counts, from each side's median step."""
    tok_dir = str(work / "tokenizer")
    tiny_tokenizer(tok_dir)
    preset = get_preset("demo")
    records, shards = write_shards(work, args.records, preset.image_min_tokens)
    records_by_key = {r.id: r for r in records}
    print(
        f"data: {len(records)} easy-vqa records in {len(shards.shards)} shards; demo preset: micro batch "
        f"{get_stage('demo', 'sft').micro_batch_size}, image_min_tokens {preset.image_min_tokens}, model "
        f"{preset.model}, CPU fp32, torch threads {torch.get_num_threads()}"
    )
    runner_total = bare_total = 0.0
    for name in STAGES:
        times = time_stage(name, work, tok_dir, shards, records_by_key, args)
        med = {k: statistics.median(v) for k, v in times.items()}
        runner_ms, bare_ms = 1000 * med["runner"], 1000 * med["bare"]
        r_data_ms, b_data_ms = 1000 * med["runner_data"], 1000 * med["bare_data"]
        print(f"stage {name} (demo: {DEMO_STEPS[name]} steps), median of {args.steps} steps each side:")
        print(f"  runner step {runner_ms:.0f} ms = data {r_data_ms:.0f} + compute {runner_ms - r_data_ms:.0f}")
        print(f"  bare step   {bare_ms:.0f} ms = data {b_data_ms:.0f} + compute {bare_ms - b_data_ms:.0f}")
        packed_ms = 1000 * med["bare_packed"]
        print(f"  bare compute on the runner's packed tensors {packed_ms:.0f} ms")
        print(
            f"  ratios: whole step {runner_ms / bare_ms:.3f}, data {r_data_ms / b_data_ms:.3f}, "
            f"compute {(runner_ms - r_data_ms) / (bare_ms - b_data_ms):.3f}, "
            f"compute on identical packed tensors {(runner_ms - r_data_ms) / packed_ms:.3f}"
        )
        runner_total += DEMO_STEPS[name] * med["runner"]
        bare_total += DEMO_STEPS[name] * med["bare"]
    return runner_total, bare_total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=10, help="timed steps per stage (each side)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per stage first")
    parser.add_argument("--records", type=int, default=2000, help="easy-vqa records written to the shards")
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's own)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    print(f"load before: {load_average()}")
    with tempfile.TemporaryDirectory(prefix="bench-train-") as work:
        runner_total, bare_total = measure(Path(work), args)
    print(f"load after: {load_average()}")

    for line in balancer_report(args.ranks):
        print(line)
    print(
        f"demo {' + '.join(STAGES)} by demo step counts: runner {runner_total:.0f} s vs bare {bare_total:.0f} s "
        "(whole steps; target P4 <= 1.15)"
    )
    print(f"ratio: {runner_total / bare_total:.3f}")


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
