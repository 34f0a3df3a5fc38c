"""The one stage runner: any StageSpec, one real DeepSpeed engine, a loadable checkpoint at the end.

A run is ``run_stage(RunConfig)``. It builds (or loads) the model, applies the stage's RoPE base and
frozen groups, wraps it in ``deepspeed.initialize`` (ZeRO stage from the spec; bf16 on CUDA, fp32 and
gloo on CPU), and steps the stage's objective over the balanced, packed shard stream. Every
``checkpoint_every`` steps it saves a DeepSpeed checkpoint whose client state holds the stream
position, so a killed run resumes at exactly the next sample. At the end rank 0 writes an HF-format
checkpoint (``KeyeForConditionalGeneration.from_pretrained`` loads it) and ``result.json``.

Outputs under ``output_dir``: ``deepspeed/`` (resumable), ``checkpoint/`` (final model + tokenizer),
``metrics.jsonl`` (one line per step), ``samples.jsonl`` (the sample ids of each step, for audits),
``result.json`` (written last: its presence means the stage finished).

Every DeepSpeed checkpoint goes through ``checkpoint_manifest``: a resume loads only a tag whose files
match the sha256 manifest this runner wrote. The client state also carries the running token count and
the last loss, so a resumed stage (even one killed during its final save) reports the same totals as an
uninterrupted one. Files a rerun reads are replaced atomically.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from data_specs.stages import OptimizerSpec, StageSpec
from keye_model.atomic_file import write_text_atomically
from keye_model.config import KeyeConfig
from keye_model.model import GROUPS, KeyeForConditionalGeneration
from keye_model.processor import KeyeProcessor, ProcessorConfig
from keye_model.tokenizer import load_tokenizer
from keye_model.training import checkpoint_manifest
from keye_model.training.batches import Batches
from keye_model.training.objectives import Objective, get_objective
from keye_model.training.run_config import RunConfig, StageResult

__all__ = ["RunConfig", "StageResult", "build_model", "deepspeed_config", "init_distributed", "lr_lambda", "run_stage"]

log = logging.getLogger(__name__)

# ------------------------------------------------------------------ distributed set-up


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _CpuAcceleratorNotice(logging.Filter):
    """DeepSpeed warns "Setting accelerator to CPU" once per process; on CPU that is the expected case."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Setting accelerator to CPU" not in record.getMessage()


def init_distributed() -> tuple[int, int]:
    """(rank, world size); a process not started by deepspeed/torchrun becomes a world of one."""
    ds_logger = logging.getLogger("DeepSpeed")
    if not any(isinstance(f, _CpuAcceleratorNotice) for f in ds_logger.filters):
        ds_logger.addFilter(_CpuAcceleratorNotice())
    import deepspeed

    if "RANK" not in os.environ:
        os.environ.update(
            RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port())
        )
    if not torch.cuda.is_available():
        # CPU runs (tests, development) use plain gloo collectives; without this DeepSpeed JIT-compiles
        # its shared-memory collective op (~80 s on 2 cores) before the first step.
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    deepspeed.init_distributed(dist_backend=backend)
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def deepspeed_config(stage: StageSpec) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": stage.micro_batch_size,
        "gradient_accumulation_steps": stage.grad_accum_steps,
        "zero_optimization": {"stage": stage.zero_stage},
        "gradient_clipping": stage.optimizer.grad_clip,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if torch.cuda.is_available():
        cfg["bf16"] = {"enabled": True}
    return cfg


def lr_lambda(stage: StageSpec, updates_per_step: int = 1) -> Callable[[int], float]:
    """Linear warm-up to 1, then cosine to ``min_lr_ratio`` at the last step, over the stage's steps.

    The scheduler counts optimizer updates; a step of an objective that updates several times (GSPO: once
    per mini-batch, ``Objective.updates_per_step``) keeps one rate for all of them, so the schedule spans
    ``num_steps`` steps whatever the objective. Example: warmup_steps 1, 2 updates a step -> updates 0 and
    1 at 1/2 of the rate, update 2 on at the cosine.
    """
    if updates_per_step < 1:
        raise ValueError(f"stage {stage.name}: updates_per_step must be >= 1, got {updates_per_step}")
    opt = stage.optimizer

    def factor(update: int) -> float:
        step = update // updates_per_step
        if step < opt.warmup_steps:
            return (step + 1) / (opt.warmup_steps + 1)
        span = max(1, stage.num_steps - opt.warmup_steps)
        progress = min(1.0, (step - opt.warmup_steps) / span)
        return opt.min_lr_ratio + (1 - opt.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


# ------------------------------------------------------------------ model


def build_model(config: RunConfig, tokenizer) -> KeyeForConditionalGeneration:
    """The stage's starting model: its init checkpoint; else ``model_preset``'s shape, from the SigLIP and
    Qwen3 directories of ``vision_init`` / ``llm_init`` where given (the projector, and any part not
    given, random with ``seed``)."""
    if config.init_checkpoint:
        model = KeyeForConditionalGeneration.from_pretrained(config.init_checkpoint)
    else:
        torch.manual_seed(config.seed)
        base = KeyeConfig.preset(config.model_preset)
        model_config = dataclasses.replace(
            base,
            image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
            video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        )
        if len(tokenizer) > model_config.text.vocab_size:
            raise ValueError(
                f"tokenizer has {len(tokenizer)} tokens, more than model preset "
                f"{config.model_preset!r}'s "
                f"vocabulary of {model_config.text.vocab_size}"
            )
        if config.vision_init or config.llm_init:
            try:
                model = KeyeForConditionalGeneration.from_parts(
                    model_config, vision_dir=config.vision_init, llm_dir=config.llm_init
                )
            except (FileNotFoundError, ValueError) as exc:
                raise type(exc)(f"stage {config.stage.name}: {exc}") from exc
        else:
            model = KeyeForConditionalGeneration(model_config)
    if config.stage.rope_theta is not None:
        model.set_rope_theta(config.stage.rope_theta)
    model.set_trainable(config.stage.trainable)
    return model


def param_groups(model: KeyeForConditionalGeneration, spec: OptimizerSpec) -> list[dict[str, Any]]:
    """AdamW parameter groups: one per module group (``GROUPS`` order) with trainable parameters, at
    ``spec.lr`` times its factor in ``spec.lr_scales``. ValueError when a factor names no module group."""
    scales = dict(spec.lr_scales)
    unknown = set(scales) - set(GROUPS)
    if unknown:
        raise ValueError(f"optimizer lr_scales name unknown groups {sorted(unknown)}; groups: {GROUPS}")
    groups = []
    for name in GROUPS:
        params = [p for p in model.group(name).parameters() if p.requires_grad]
        if params:
            groups.append({"params": params, "lr": spec.lr * scales.get(name, 1.0), "group": name})
    return groups


# ------------------------------------------------------------------ the run


def run_stage(config: RunConfig, on_step: Callable[[dict[str, Any]], None] | None = None) -> StageResult:
    """Run (or resume) one stage; returns where its final checkpoint is."""
    started = time.monotonic()
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(config.tokenizer_dir)
    objective_cls = get_objective(config.stage.objective)
    if not objective_cls.trains:
        return _run_merge(config, objective_cls, tokenizer, started)
    if not config.shards:
        raise ValueError(f"stage {config.stage.name} has no shards")

    import deepspeed

    rank, world_size = init_distributed()
    model = build_model(config, tokenizer)
    opt_spec = config.stage.optimizer
    optimizer = torch.optim.AdamW(
        param_groups(model, opt_spec), lr=opt_spec.lr, betas=opt_spec.betas, weight_decay=opt_spec.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(config.stage, objective_cls.updates_per_step(config.stage))
    )
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=deepspeed_config(config.stage)
    )
    processor = KeyeProcessor(tokenizer, processor_config(config))
    batches = Batches(config, processor, rank, world_size)
    objective = objective_cls(config, engine, batches)

    ds_dir = out / "deepspeed"
    step, tokens_seen, loss_value = _resume(engine, ds_dir, batches, objective, out)
    while step < config.stage.num_steps:
        if config.stop_after_steps is not None and step >= config.stop_after_steps:
            log.warning("stage %s stopping after %d steps as asked (no final checkpoint)", config.stage.name, step)
            return StageResult(
                config.stage.name,
                "",
                step,
                batches.stream.state.samples_seen,
                tokens_seen,
                loss_value,
                time.monotonic() - started,
                time.time(),
            )
        # the rate this step trains at (the stage's; lr_scales apply per group), read before it moves on
        lr = opt_spec.lr * scheduler.lr_lambdas[0](scheduler.last_epoch)
        output = objective.train_step(step)
        step += 1
        tokens_seen += output.tokens
        loss_value = output.loss
        record = {
            "stage": config.stage.name,
            "step": step,
            "loss": loss_value,
            "lr": lr,
            "tokens": tokens_seen,
            **output.metrics,
        }
        if rank == 0:
            _append_jsonl(out / "metrics.jsonl", record)
        _append_jsonl(
            out / ("samples.jsonl" if rank == 0 else f"samples-rank{rank}.jsonl"),
            {"step": step, "samples": output.sample_ids},
        )
        log.info("stage %s step %d/%d loss %.4f", config.stage.name, step, config.stage.num_steps, loss_value)
        if on_step is not None:
            on_step(record)
        if step % config.stage.checkpoint_every == 0 or step == config.stage.num_steps:
            checkpoint_manifest.save(
                engine,
                ds_dir,
                f"step{step}",
                {
                    "step": step,
                    "stream": batches.state_dict(),
                    "objective": objective.state_dict(),
                    "tokens_seen": tokens_seen,
                    "loss": loss_value,
                },
            )

    checkpoint_dir = out / "checkpoint"
    _save_final(engine, model, tokenizer, processor.config, checkpoint_dir, config.stage.zero_stage, rank)
    result = StageResult(
        config.stage.name,
        str(checkpoint_dir),
        step,
        batches.stream.state.samples_seen,
        tokens_seen,
        loss_value,
        time.monotonic() - started,
        time.time(),
    )
    if rank == 0:
        write_text_atomically(out / "result.json", json.dumps(result.to_dict(), indent=2))
    return result


def _resume(engine, ds_dir: Path, batches: Batches, objective: Objective, out: Path) -> tuple[int, int, float | None]:
    """Load the latest verified DeepSpeed checkpoint if there is one; drop log lines past it.

    Returns (step, tokens seen, last loss) at that checkpoint; (0, 0, None) for a fresh start."""
    client = checkpoint_manifest.load(engine, ds_dir)
    if client is None:
        for name in ("metrics.jsonl", "samples.jsonl"):
            (out / name).unlink(missing_ok=True)
        return 0, 0, None
    step = int(client["step"])
    batches.load_state_dict(client["stream"])
    objective.load_state_dict(client["objective"])
    for name in ("metrics.jsonl", "samples.jsonl"):
        path = out / name
        if path.exists():
            kept = [line for line in path.read_text().splitlines() if _step_of(line) <= step]
            write_text_atomically(path, "".join(line + "\n" for line in kept))
    log.info("resumed stage at step %d from %s", step, ds_dir)
    # Checkpoints written before these were kept have no token count: counting restarts there.
    return step, int(client.get("tokens_seen", 0)), client.get("loss")


def _step_of(line: str) -> float:
    """A log line's step; a line cut by a kill (always the last, written after the checkpoint) sorts past all."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


def processor_config(config: RunConfig) -> ProcessorConfig:
    """How the stage reads its samples' images; saved beside the weights (``ProcessorConfig.load``)."""
    return ProcessorConfig(image_min_tokens=config.image_min_tokens)


def _save_final(
    engine,
    model: KeyeForConditionalGeneration,
    tokenizer,
    processor: ProcessorConfig,
    directory: Path,
    zero_stage: int,
    rank: int,
) -> None:
    """HF-format checkpoint on rank 0, through a fresh model: ZeRO leaves parameters as views into flat
    buffers (stage 1-2) or partitioned (stage 3, gathered here), which safetensors will not write."""
    if zero_stage == 3:
        state = engine._zero3_consolidated_16bit_state_dict()
    else:
        state = model.state_dict()
    if rank == 0:
        full = KeyeForConditionalGeneration(model.config, init=False)
        full.load_state_dict({k: v.detach().float() for k, v in state.items()})
        full.save_pretrained(directory, processor_config=processor)
        tokenizer.save_pretrained(directory)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def _run_merge(config: RunConfig, objective_cls, tokenizer, started: float) -> StageResult:
    """A stage that makes its checkpoint without training (fusion): save it and its result."""
    model = objective_cls.merged_model(config)
    directory = Path(config.output_dir) / "checkpoint"
    model.save_pretrained(directory, processor_config=processor_config(config))
    tokenizer.save_pretrained(directory)
    result = StageResult(config.stage.name, str(directory), 1, 0, 0, None, time.monotonic() - started)
    write_text_atomically(
        Path(config.output_dir) / "result.json",
        json.dumps(
            {
                **result.to_dict(),
                "fusion": dataclasses.asdict(config.stage.fusion),
                "experts": list(config.expert_checkpoints),
            },
            indent=2,
        ),
    )
    return result


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
