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
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from data_specs.stages import StageSpec
from keye_model import losses
from keye_model.config import KeyeConfig
from keye_model.fusion import FusionConfig, merge
from keye_model.model import KeyeForConditionalGeneration
from keye_model.processor import KeyeProcessor
from keye_model.tokenizer import load_tokenizer
from keye_model.training import balance, examples
from keye_model.training.loader import ShardStream, assign_window, media_of
from keye_model.training.packing import Encoded, Packed, pack

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Everything one stage run needs; JSON round-trips so launchers can pass it to each rank."""

    stage: StageSpec
    """What to train (data_specs.stages)."""
    output_dir: str
    """Where checkpoints, metrics and the result go."""
    tokenizer_dir: str
    """A local tokenizer directory (the tiny one the pipeline trains, or a real one)."""
    init_checkpoint: str | None = None
    """HF-format Keye checkpoint to start from; None builds ``preset``'s model from scratch."""
    preset: str = "tiny"
    """Model preset used when there is no init checkpoint."""
    shards: tuple[str, ...] = ()
    """WebDataset shards of the stage's data."""
    expert_checkpoints: tuple[str, ...] = ()
    """Fusion: the expert checkpoints merged into ``init_checkpoint``."""
    fusion: FusionConfig = field(default_factory=FusionConfig)
    """Fusion: method and weights."""
    reward_model_checkpoint: str | None = None
    """GSPO stages weighing judge / reward-model rewards: the trained reward model (a pairwise judge)."""
    seed: int = 0
    """Seeds the model init, the shard order and sampling."""
    stop_after_steps: int | None = None
    """Stop (without the final checkpoint) after this many steps: how tests simulate a crash."""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "RunConfig":
        data = json.loads(text)
        data["stage"] = StageSpec.from_json(json.dumps(data["stage"]))
        data["fusion"] = FusionConfig(**{**data["fusion"], "weights": tuple(data["fusion"]["weights"])})
        for key in ("shards", "expert_checkpoints"):
            data[key] = tuple(data[key])
        return cls(**data)


@dataclass(frozen=True)
class StageResult:
    stage: str
    checkpoint_dir: str
    steps: int
    samples_seen: int
    tokens_seen: int
    final_loss: float | None
    wall_s: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------ distributed set-up

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_distributed() -> tuple[int, int]:
    """(rank, world size); a process not started by deepspeed/torchrun becomes a world of one."""
    import deepspeed

    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(_free_port()))
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


def lr_lambda(stage: StageSpec) -> Callable[[int], float]:
    """Linear warm-up to 1, then cosine to ``min_lr_ratio`` at the last step."""
    opt = stage.optimizer

    def factor(step: int) -> float:
        if step < opt.warmup_steps:
            return (step + 1) / (opt.warmup_steps + 1)
        span = max(1, stage.num_steps - opt.warmup_steps)
        progress = min(1.0, (step - opt.warmup_steps) / span)
        return opt.min_lr_ratio + (1 - opt.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


# ------------------------------------------------------------------ model

def build_model(config: RunConfig, tokenizer) -> KeyeForConditionalGeneration:
    if config.init_checkpoint:
        model = KeyeForConditionalGeneration.from_pretrained(config.init_checkpoint)
    else:
        torch.manual_seed(config.seed)
        base = KeyeConfig.preset(config.preset)
        model_config = dataclasses.replace(
            base, image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
            video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"))
        if len(tokenizer) > model_config.text.vocab_size:
            raise ValueError(f"tokenizer has {len(tokenizer)} tokens, more than preset {config.preset!r}'s "
                             f"vocabulary of {model_config.text.vocab_size}")
        model = KeyeForConditionalGeneration(model_config)
    if config.stage.rope_theta is not None:
        model.set_rope_theta(config.stage.rope_theta)
    model.set_trainable(config.stage.trainable)
    return model


# ------------------------------------------------------------------ batches

class Batches:
    """The rank's micro batches: balanced windows of the shard stream, encoded and packed."""

    def __init__(self, config: RunConfig, processor: KeyeProcessor, rank: int, world_size: int) -> None:
        self.config = config
        self.stage = config.stage
        self.processor = processor
        self.rank, self.world_size = rank, world_size
        self.stream = ShardStream(config.shards, seed=config.seed)
        self.media_cache = Path(config.output_dir) / "media-cache"
        self._iter: Iterator[dict[str, Any]] | None = None

    def state_dict(self) -> dict[str, int]:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.stream.load_state_dict(state)
        self._iter = None

    def next_window(self) -> list[dict[str, Any]]:
        if self._iter is None:
            self._iter = iter(self.stream)
        return [next(self._iter) for _ in range(self.world_size * self.stage.micro_batch_size)]

    def my_examples(self) -> list[examples.Example]:
        window = self.next_window()
        costs = [estimate_cost(sample) for sample in window]
        return [examples.to_example(window[i], self.media_cache) for i in assign_window(costs, self.world_size, self.rank)]

    def encode(self, conversation: examples.Conversation, sample_id: str, weight: float = 1.0) -> Encoded:
        return Encoded.from_batch(sample_id, self.processor([conversation], sample_ids=[sample_id]), weight)

    def next_packed(self) -> Packed:
        """Micro batch for lm / weighted_lm / reward objectives."""
        encoded = []
        for ex in self.my_examples():
            if self.stage.objective == "reward":
                for i, conv in enumerate(examples.judge_conversations(ex)):
                    encoded.append(self.encode(conv, f"{ex.sample_id}-judge{i}"))
            else:
                encoded.append(self.encode(examples.sft_conversation(ex), ex.sample_id, ex.weight))
        return pack(encoded, self.stage.seq_len, self.processor.tokenizer.pad_token_id)

    def next_pairs(self) -> tuple[dict[str, torch.Tensor], list[str]]:
        """Micro batch for MPO: chosen rows then rejected rows, padded (no packing: log-probs per row)."""
        exs = self.my_examples()
        pairs = [examples.preference_conversations(ex) for ex in exs]
        convs = [c for c, _ in pairs] + [r for _, r in pairs]
        ids = [ex.sample_id for ex in exs]
        return self.processor(convs, sample_ids=[f"{i}-chosen" for i in ids] + [f"{i}-rejected" for i in ids]), ids


def estimate_cost(sample: dict[str, Any], model: balance.CostModel = balance.CostModel()) -> float:
    """Cheap pre-decode cost estimate of a raw sample (SPEC.md section 5), from sizes alone.

    The LLM term uses the token estimate the sharder stored (``tokens``); the ViT term counts 4 patches
    per visual token: per frame for a video (from its plan), and for an image all of the sample's tokens
    (its text is short next to its visual tokens).
    """
    record = json.loads(sample.get("json", b"{}"))
    tokens = int(record.get("tokens", len(sample.get("json", b"")) // 4))
    if "plan.json" in sample:
        patches = [4 * frame["tokens"] for frame in json.loads(sample["plan.json"])["frames"]]
    elif media_of(sample) is not None:
        patches = [4 * tokens]
    else:
        patches = []
    return balance.sample_cost(patches, tokens, model)


# ------------------------------------------------------------------ objectives

@dataclass
class StepOutput:
    loss: float
    metrics: dict[str, float]
    sample_ids: list[str]
    tokens: int


class Objective:
    """One optimizer step of the stage's objective (backward and engine steps included)."""

    def __init__(self, config: RunConfig, engine, batches: Batches) -> None:
        self.config, self.engine, self.batches = config, engine, batches
        self.stage = config.stage
        self.reward_mean = losses.RunningRewardMean()
        self.reference: KeyeForConditionalGeneration | None = None
        self.reward_fn = None
        if self.stage.objective == "mpo":
            self.reference = copy.deepcopy(engine.module).eval().requires_grad_(False)
        if self.stage.objective == "gspo":
            if self.stage.grad_accum_steps != 1:
                raise ValueError(f"stage {self.stage.name}: GSPO steps once per mini-batch; set grad_accum_steps=1")
            self.reward_fn = build_reward_fn(config, batches.processor, engine.device)

    def state_dict(self) -> dict[str, Any]:
        return {"reward_mean": self.reward_mean.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reward_mean.load_state_dict(state["reward_mean"])

    def train_step(self, step: int) -> StepOutput:
        if self.stage.objective == "gspo":
            return self._gspo(step)
        micro = self._mpo if self.stage.objective == "mpo" else self._lm
        outs = []
        for _ in range(self.stage.grad_accum_steps):
            loss, metrics, ids, tokens = micro()
            self.engine.backward(loss)
            self.engine.step()
            outs.append((loss.item(), metrics, ids, tokens))
        merged: dict[str, float] = {}
        for _, metrics, _, _ in outs:
            merged.update(metrics)
        return StepOutput(loss=sum(o[0] for o in outs) / len(outs), metrics=merged,
                          sample_ids=[i for o in outs for i in o[2]], tokens=sum(o[3] for o in outs))

    def _lm(self) -> tuple[torch.Tensor, dict[str, float], list[str], int]:
        packed = self.batches.next_packed()
        inputs = {k: v.to(self.engine.device) for k, v in packed.model_inputs().items()}
        if self.stage.objective == "weighted_lm":
            labels = inputs.pop("labels")
            logp, _ = losses.token_logprobs(self.engine(**inputs).logits, labels)
            weights = packed.token_weights[:, 1:].to(logp.device)
            loss = -(logp * weights).sum() / weights.sum().clamp_min(1e-12)
        else:
            loss = self.engine(**inputs).loss
        return loss, {"packing_efficiency": packed.efficiency}, packed.sample_ids, packed.num_real_tokens

    def _mpo(self) -> tuple[torch.Tensor, dict[str, float], list[str], int]:
        batch, ids = self.batches.next_pairs()
        batch = {k: v.to(self.engine.device) for k, v in batch.items()}
        n = len(ids)
        labels = batch.pop("labels")
        logits = self.engine(**batch).logits
        seq_logp = losses.sequence_logprobs(logits, labels)
        with torch.no_grad():
            ref_logp = losses.sequence_logprobs(self.reference(**batch).logits, labels)
        chosen_logp, chosen_mask = losses.token_logprobs(logits[:n], labels[:n])
        generation = -chosen_logp.sum() / chosen_mask.sum().clamp_min(1)
        out = losses.mpo_loss(policy_chosen_B=seq_logp[:n], policy_rejected_B=seq_logp[n:],
                              ref_chosen_B=ref_logp[:n], ref_rejected_B=ref_logp[n:], generation=generation,
                              reward_mean=self.reward_mean)
        metrics = {"preference_loss": out.preference.item(), "quality_loss": out.quality.item(),
                   "generation_loss": out.generation.item(), "bco_delta": out.delta}
        return out.total, metrics, ids, int(batch["attention_mask"].sum())

    def _gspo(self, step: int) -> StepOutput:
        from keye_model.training.rl import gspo_update, progressive_hint_rollout

        spec = self.stage.rl
        prompts = [examples.rl_prompt(ex) for ex in self.batches.my_examples()]
        model = self.engine.module
        groups = [progressive_hint_rollout(model, self.batches.processor, prompt, spec, self.reward_fn,
                                           generator_seed=self.config.seed + 1000 * step + j)
                  for j, prompt in enumerate(prompts)]
        m = gspo_update(self.engine, model, self.batches.processor, groups, spec)
        metrics = {"mean_reward": m.mean_reward, "ratio_mean": m.ratio_mean, "clipped_fraction": m.clipped_fraction,
                   **{f"hint_level_{k}": float(v) for k, v in m.hint_levels.items()}}
        tokens = sum(int(g.response_mask.sum()) for g in groups)
        return StepOutput(loss=m.loss, metrics=metrics, sample_ids=[p.id for p in prompts], tokens=tokens)


def build_reward_fn(config: RunConfig, processor: KeyeProcessor, device: torch.device):
    """The stage's RewardFunction: rule rewards, plus judge / reward-model scores from a trained judge."""
    from keye_model.rewards import RewardFunction, versus_reference
    from keye_model.training.judge import PairwiseJudge

    weights = config.stage.rl.reward_weights
    needs_judge = any(name in ("judge", "reward_model") for name, _ in weights)
    if not needs_judge:
        return RewardFunction(weights=weights)
    if not config.reward_model_checkpoint:
        raise ValueError(f"stage {config.stage.name} weighs judge/reward-model rewards but has no "
                         "reward_model_checkpoint")
    judge_model = KeyeForConditionalGeneration.from_pretrained(config.reward_model_checkpoint).to(device)
    score = versus_reference(PairwiseJudge(judge_model, processor))
    return RewardFunction(weights=weights, judge=score, reward_model=score)


# ------------------------------------------------------------------ the run

def run_stage(config: RunConfig, on_step: Callable[[dict[str, Any]], None] | None = None) -> StageResult:
    """Run (or resume) one stage; returns where its final checkpoint is."""
    started = time.monotonic()
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(config.tokenizer_dir)
    if config.stage.objective == "fusion":
        return _run_fusion(config, tokenizer, started)
    if not config.shards:
        raise ValueError(f"stage {config.stage.name} has no shards")

    import deepspeed

    rank, world_size = init_distributed()
    model = build_model(config, tokenizer)
    params = [p for p in model.parameters() if p.requires_grad]
    opt_spec = config.stage.optimizer
    optimizer = torch.optim.AdamW(params, lr=opt_spec.lr, betas=opt_spec.betas,
                                  weight_decay=opt_spec.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config.stage))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=deepspeed_config(config.stage))
    processor = KeyeProcessor(tokenizer)
    batches = Batches(config, processor, rank, world_size)
    objective = Objective(config, engine, batches)

    ds_dir = out / "deepspeed"
    step = _resume(engine, ds_dir, batches, objective, out)
    tokens_seen = 0
    loss_value = None
    while step < config.stage.num_steps:
        if config.stop_after_steps is not None and step >= config.stop_after_steps:
            log.warning("stage %s stopping after %d steps as asked (no final checkpoint)", config.stage.name, step)
            return StageResult(config.stage.name, "", step, batches.stream.state.samples_seen, tokens_seen,
                               loss_value, time.monotonic() - started)
        output = objective.train_step(step)
        step += 1
        tokens_seen += output.tokens
        loss_value = output.loss
        record = {"stage": config.stage.name, "step": step, "loss": loss_value, "lr": engine.get_lr()[0],
                  "tokens": tokens_seen, **output.metrics}
        if rank == 0:
            _append_jsonl(out / "metrics.jsonl", record)
        _append_jsonl(out / ("samples.jsonl" if rank == 0 else f"samples-rank{rank}.jsonl"),
                      {"step": step, "samples": output.sample_ids})
        log.info("stage %s step %d/%d loss %.4f", config.stage.name, step, config.stage.num_steps, loss_value)
        if on_step is not None:
            on_step(record)
        if step % config.stage.checkpoint_every == 0 or step == config.stage.num_steps:
            engine.save_checkpoint(str(ds_dir), tag=f"step{step}", client_state={
                "step": step, "stream": batches.state_dict(), "objective": objective.state_dict()})

    checkpoint_dir = out / "checkpoint"
    _save_final(engine, model, tokenizer, checkpoint_dir, config.stage.zero_stage, rank)
    result = StageResult(config.stage.name, str(checkpoint_dir), step, batches.stream.state.samples_seen,
                         tokens_seen, loss_value, time.monotonic() - started)
    if rank == 0:
        (out / "result.json").write_text(json.dumps(result.to_dict(), indent=2))
    return result


def _resume(engine, ds_dir: Path, batches: Batches, objective: Objective, out: Path) -> int:
    """Load the latest DeepSpeed checkpoint if there is one; drop log lines past it."""
    if not (ds_dir / "latest").exists():
        for name in ("metrics.jsonl", "samples.jsonl"):
            (out / name).unlink(missing_ok=True)
        return 0
    _, client = engine.load_checkpoint(str(ds_dir))
    step = int(client["step"])
    batches.load_state_dict(client["stream"])
    objective.load_state_dict(client["objective"])
    for name in ("metrics.jsonl", "samples.jsonl"):
        path = out / name
        if path.exists():
            kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
            path.write_text("".join(line + "\n" for line in kept))
    log.info("resumed stage at step %d from %s", step, ds_dir)
    return step


def _save_final(engine, model: KeyeForConditionalGeneration, tokenizer, directory: Path, zero_stage: int,
                rank: int) -> None:
    """HF-format checkpoint on rank 0, through a fresh model: ZeRO leaves parameters as views into flat
    buffers (stage 1-2) or partitioned (stage 3, gathered here), which safetensors will not write."""
    if zero_stage == 3:
        state = engine._zero3_consolidated_16bit_state_dict()
    else:
        state = model.state_dict()
    if rank == 0:
        full = KeyeForConditionalGeneration(model.config, init=False)
        full.load_state_dict({k: v.detach().float() for k, v in state.items()})
        full.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def _run_fusion(config: RunConfig, tokenizer, started: float) -> StageResult:
    if not config.init_checkpoint or not config.expert_checkpoints:
        raise ValueError(f"fusion stage {config.stage.name} needs init_checkpoint (the base) and expert_checkpoints")
    base = KeyeForConditionalGeneration.from_pretrained(config.init_checkpoint)
    experts = [KeyeForConditionalGeneration.from_pretrained(p).state_dict() for p in config.expert_checkpoints]
    base.load_state_dict(merge(base.state_dict(), experts, config.fusion))
    directory = Path(config.output_dir) / "checkpoint"
    base.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    result = StageResult(config.stage.name, str(directory), 1, 0, 0, None, time.monotonic() - started)
    (Path(config.output_dir) / "result.json").write_text(json.dumps(
        {**result.to_dict(), "fusion": dataclasses.asdict(config.fusion),
         "experts": list(config.expert_checkpoints)}, indent=2))
    return result


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
