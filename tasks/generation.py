"""Text generation backends for LongCoT step 2 (paths) and step 3 (the level-2 judge).

A ``Generator`` turns prompts into K sampled responses with token log-probabilities. Two backends,
chosen by ``GeneratorConfig.kind``:

- ``openai``: any OpenAI-compatible server (vLLM, SGLang) through ``/v1/chat/completions`` or
  ``/v1/completions`` with ``n``, ``temperature`` and ``logprobs``; retries on connection errors.
- ``transformers``: a local causal-LM directory (``AutoModelForCausalLM`` + ``AutoTokenizer``), sampled
  in-process; log-probabilities come from the raw logits (temperature 1), as vLLM reports them.

A ``Judge`` scores a path on ``JUDGE_RUBRIC`` (1-5 per dimension): ``LLMJudge`` prompts any Generator
and parses its reply; ``RuleJudge`` is the deterministic fallback for unattended tiny runs -- it is not
a model, it maps the level-1 rule features to rubric scores.
"""

from __future__ import annotations

import base64
import json
import logging
import mimetypes
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from data_specs.longcot import JUDGE_DIMENSIONS, JUDGE_RUBRIC, CoTPath, CoTProblem, JudgeVerdict, RuleReport
from keye_model.openai_http import endpoint_url, post_json
from keye_model.special_tokens import END_OF_TEXT, IM_END, IM_START, THINK_END, THINK_START

log = logging.getLogger(__name__)

GENERATOR_KINDS = ("transformers", "openai")
#: Directories holding this file are Keye checkpoints (see keye_model.config.CONFIG_FILE).
KEYE_CONFIG_FILE = "keye_config.json"
#: Requests a Keye checkpoint samples in one ``generate`` call (x paths each: rows of one batch). One
#: request at a time, the demo's 96 LongCoT problems x 4 paths took 13.5 s on 2 CPU cores.
KEYE_BATCH_REQUESTS = 16


@dataclass(frozen=True, kw_only=True)
class GenerationRequest:
    """One prompt."""

    prompt: str
    """The user turn."""
    image_path: str | None = None
    """Image shown with the prompt; text-only backends ignore it (that is how blind probes are run)."""
    system: str | None = None
    """Optional system turn."""


@dataclass(frozen=True, kw_only=True)
class Generation:
    """One sampled response."""

    text: str
    """Decoded response, special tokens removed."""
    token_logprobs: list[float]
    """Log-probability of each generated token; empty when the backend gave none."""
    finish_reason: str
    """``stop`` (end of sequence) or ``length`` (hit max_new_tokens)."""
    tokens: list[str] = field(default_factory=list)
    """The generated tokens as text, aligned with token_logprobs (used to split steps)."""


class Generator(Protocol):
    name: str

    def generate(
        self,
        prompts: list[GenerationRequest],
        num_paths: int,
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.8,
        seed: int = 0,
    ) -> list[list[Generation]]:
        """``num_paths`` generations for each prompt, in prompt order."""


@dataclass(frozen=True, kw_only=True)
class GeneratorConfig:
    """Which backend generates; a flow parameter, so plain JSON types only."""

    kind: str = "transformers"
    """``transformers`` (local directory) or ``openai`` (OpenAI-compatible HTTP server)."""
    model_dir: str | None = None
    """For ``transformers``: the model directory."""
    base_url: str | None = None
    """For ``openai``: the server root, e.g. ``http://127.0.0.1:8000`` (``/v1`` is appended)."""
    model: str = ""
    """For ``openai``: the served model name."""
    api: str = "chat"
    """For ``openai``: ``chat`` (/v1/chat/completions) or ``completions`` (/v1/completions)."""
    api_key_env: str | None = None
    """For ``openai``: name of the environment variable holding the key (keys stay out of configs)."""
    timeout_s: float = 120.0
    """For ``openai``: per-request timeout."""
    max_retries: int = 3
    """For ``openai``: retries on connection errors and 5xx/429 answers."""

    def __post_init__(self) -> None:
        if self.kind not in GENERATOR_KINDS:
            raise ValueError(f"GeneratorConfig: kind {self.kind!r} not in {GENERATOR_KINDS}")
        if self.kind == "transformers" and not self.model_dir:
            raise ValueError("GeneratorConfig: kind 'transformers' needs model_dir")
        if self.kind == "openai" and not self.base_url:
            raise ValueError("GeneratorConfig: kind 'openai' needs base_url")
        if self.api not in ("chat", "completions"):
            raise ValueError(f"GeneratorConfig: api {self.api!r} not in ('chat', 'completions')")


def build_generator(config: GeneratorConfig) -> Generator:
    if config.kind == "openai":
        import os

        api_key = os.environ.get(config.api_key_env) if config.api_key_env else None
        return OpenAICompatibleGenerator(
            config.base_url,
            config.model,
            api_key=api_key,
            timeout_s=config.timeout_s,
            max_retries=config.max_retries,
            api=config.api,
        )
    return TransformersGenerator(config.model_dir)


# ---- OpenAI-compatible HTTP -----------------------------------------------------------------------
class OpenAICompatibleGenerator:
    """vLLM / SGLang / any server speaking the OpenAI completions API."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        max_retries: int = 3,
        api: str = "chat",
        backoff_s: float = 0.5,
    ) -> None:
        self.endpoint = endpoint_url(base_url, api)
        self.model, self.api, self.timeout_s, self.api_key = model, api, timeout_s, api_key
        self.max_retries, self.backoff_s = max_retries, backoff_s
        self.name = f"openai:{model}@{base_url.rstrip('/')}"

    def generate(
        self,
        prompts: list[GenerationRequest],
        num_paths: int,
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.8,
        seed: int = 0,
    ) -> list[list[Generation]]:
        return [self._one(r, num_paths, max_new_tokens, temperature, seed + i) for i, r in enumerate(prompts)]

    def _one(self, request: GenerationRequest, n: int, max_new_tokens: int, temperature: float, seed: int):
        body = {"model": self.model, "n": n, "temperature": temperature, "max_tokens": max_new_tokens, "seed": seed}
        if self.api == "chat":
            body["messages"] = _chat_messages(request, inline_images=True)
            body["logprobs"] = True
        else:
            body["prompt"] = _format_chat(_chat_messages(request, inline_images=False))
            body["logprobs"] = 1
        payload = self._post(body)
        try:
            choices = sorted(payload["choices"], key=lambda c: c.get("index", 0))
            return [self._parse_choice(c) for c in choices]
        except (KeyError, TypeError) as exc:
            raise RuntimeError(
                f"generator endpoint {self.endpoint}: malformed response ({exc!r}): {str(payload)[:300]}"
            ) from exc

    def _parse_choice(self, choice: dict) -> Generation:
        lp = choice.get("logprobs") or {}
        if self.api == "chat":
            items = lp.get("content") or []
            text = choice["message"]["content"] or ""
            tokens, logprobs = [c["token"] for c in items], [float(c["logprob"]) for c in items]
        else:
            text = choice["text"]
            tokens, logprobs = list(lp.get("tokens") or []), [float(x) for x in lp.get("token_logprobs") or []]
        return Generation(
            text=text, token_logprobs=logprobs, tokens=tokens, finish_reason=choice.get("finish_reason") or "stop"
        )

    def _post(self, body: dict) -> dict:
        return post_json(
            self.endpoint,
            body,
            api_key=self.api_key,
            timeout_s=self.timeout_s,
            max_retries=self.max_retries,
            backoff_s=self.backoff_s,
        )


def _chat_messages(request: GenerationRequest, *, inline_images: bool) -> list[dict]:
    messages = [{"role": "system", "content": request.system}] if request.system else []
    if request.image_path and inline_images:
        mime = mimetypes.guess_type(request.image_path)[0] or "image/png"
        data = base64.b64encode(Path(request.image_path).read_bytes()).decode("ascii")
        content = [
            {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}},
            {"type": "text", "text": request.prompt},
        ]
        messages.append({"role": "user", "content": content})
    else:
        messages.append({"role": "user", "content": request.prompt})
    return messages


def _format_chat(messages: list[dict]) -> str:
    """ChatML, used when a tokenizer carries no chat template."""
    turns = [f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages]
    return "".join(turns) + f"{IM_START}assistant\n"


# ---- local transformers -----------------------------------------------------------------------
class TransformersGenerator:
    """A local model sampled in-process (CPU or one GPU).

    A directory holding ``keye_config.json`` is a Keye checkpoint (as the stage runner saves it, tokenizer
    included): ``KeyeForConditionalGeneration`` with ``KeyeProcessor``, so images are seen. Any other
    directory is a plain ``AutoModelForCausalLM``, which ignores images (that is how blind probes run).
    """

    def __init__(self, model_dir: str | Path, *, device: str | None = None) -> None:
        import torch

        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise FileNotFoundError(f"generator model directory {self.model_dir} does not exist")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.is_keye = (self.model_dir / KEYE_CONFIG_FILE).is_file()
        if self.is_keye:
            from keye_model.model import KeyeForConditionalGeneration
            from keye_model.processor import KeyeProcessor, ProcessorConfig
            from keye_model.tokenizer import load_tokenizer

            self.tokenizer = load_tokenizer(self.model_dir)
            self.processor = KeyeProcessor(self.tokenizer, ProcessorConfig.load(self.model_dir))
            self.model = KeyeForConditionalGeneration.from_pretrained(self.model_dir).to(self.device).eval()
            self.eos_ids = sorted({self.tokenizer.convert_tokens_to_ids(t) for t in (IM_END, END_OF_TEXT)})
        else:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
            self.model = AutoModelForCausalLM.from_pretrained(self.model_dir).to(self.device).eval()
            self.eos_ids = _eos_ids(self.tokenizer, self.model)
        self.name = f"{'keye' if self.is_keye else 'transformers'}:{self.model_dir.name}"
        self._warned_images = False

    def generate(
        self,
        prompts: list[GenerationRequest],
        num_paths: int,
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.8,
        seed: int = 0,
    ) -> list[list[Generation]]:
        if not self.is_keye and any(r.image_path for r in prompts) and not self._warned_images:
            log.warning("%s is text-only: image inputs are ignored", self.name)
            self._warned_images = True
        if not self.is_keye:
            return [
                self._sample(*self._text_inputs(r, num_paths), max_new_tokens, temperature, seed + i)
                for i, r in enumerate(prompts)
            ]
        out: list[list[Generation]] = []
        for start in range(0, len(prompts), KEYE_BATCH_REQUESTS):
            chunk = prompts[start : start + KEYE_BATCH_REQUESTS]
            inputs, opened = self._keye_inputs(chunk, num_paths)
            generations = self._sample(inputs, opened, max_new_tokens, temperature, seed + start)
            out += [generations[i * num_paths : (i + 1) * num_paths] for i in range(len(chunk))]
        return out

    def _keye_inputs(self, requests: list[GenerationRequest], n: int) -> tuple[dict, list[str]]:
        """Generate kwargs for n copies of each request's prompt (``KeyeProcessor.build_prompts``: left-padded,
        each row's answer starts in the same column), and per row the text the template already opened the
        response with."""
        conversations = []
        for request in requests:
            content = ([{"type": "image", "image": request.image_path}] if request.image_path else []) + [
                {"type": "text", "text": request.prompt}
            ]
            conversations.append(
                ([{"role": "system", "content": request.system}] if request.system else [])
                + [{"role": "user", "content": content}]
            )
        batch = self.processor.build_prompts(conversations, repeat=n)
        rendered = [self.processor.render(c, add_generation_prompt=True) for c in conversations]
        opened = [_opened(text) for text in rendered for _ in range(n)]
        media = batch["grid_hw"].numel() > 0
        inputs = {
            "input_ids": batch["input_ids"],
            "attention_mask": batch["attention_mask"],
            "pixel_values": batch["pixel_values"] if media else None,
            "grid_hw": batch["grid_hw"] if media else None,
        }
        return {k: v.to(self.device) if v is not None else None for k, v in inputs.items()}, opened

    def _text_inputs(self, request: GenerationRequest, n: int) -> tuple[dict, list[str]]:
        """Generate kwargs for n copies of the prompt of a plain causal LM, and the text the template already
        opened each response with (a ``<think>`` that the response must carry)."""
        messages = _chat_messages(request, inline_images=False)
        if getattr(self.tokenizer, "chat_template", None):
            rendered = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        else:
            rendered = _format_chat(messages)
        ids = self.tokenizer(rendered, return_tensors="pt")
        return {k: v.expand(n, -1).to(self.device) for k, v in ids.items()}, [_opened(rendered)] * n

    def _sample(self, inputs: dict, opened: list[str], max_new_tokens: int, temperature: float, seed: int):
        """One ``generate`` call over the rows of ``inputs``; a Generation per row, in row order."""
        import torch

        sample = temperature > 0
        with torch.random.fork_rng(devices=[self.device] if str(self.device).startswith("cuda") else []):
            torch.manual_seed(seed)
            with torch.no_grad():
                out = self.model.generate(
                    **inputs,
                    do_sample=sample,
                    temperature=temperature if sample else None,
                    top_k=0 if sample else None,
                    max_new_tokens=max_new_tokens,
                    output_logits=True,
                    return_dict_in_generate=True,
                    eos_token_id=self.eos_ids,
                    pad_token_id=self.eos_ids[0],
                )
        new_ids = out.sequences[:, inputs["input_ids"].shape[1] :]
        # logits[t] is (rows, vocab) for step t; raw, so this is the temperature-1 logprob (as vLLM reports).
        logprobs = torch.stack([torch.log_softmax(step.float(), dim=-1) for step in out.logits], dim=1)
        picked = logprobs.gather(-1, new_ids[:, : logprobs.shape[1], None]).squeeze(-1)
        results = []
        for row, row_lp, prefix in zip(new_ids.tolist(), picked.tolist(), opened, strict=True):
            stop = next((i for i, t in enumerate(row) if t in self.eos_ids), None)
            ids = row if stop is None else row[:stop]
            # special tokens kept: <think> is one in some tokenizers; the cut above removed end/pad tokens
            results.append(
                Generation(
                    text=prefix + self.tokenizer.decode(ids, skip_special_tokens=False),
                    token_logprobs=row_lp[: len(ids)],
                    tokens=[self.tokenizer.decode([t], skip_special_tokens=False) for t in ids],
                    finish_reason="length" if stop is None else "stop",
                )
            )
        return results


def _opened(rendered: str) -> str:
    """The text a rendered prompt already opened the response with: ``<think>\\n`` or nothing."""
    return THINK_START + "\n" if rendered.rstrip(" ").endswith(THINK_START + "\n") else ""


def _eos_ids(tokenizer, model) -> list[int]:
    ids = {tokenizer.convert_tokens_to_ids(t) for t in (IM_END, END_OF_TEXT)} | {tokenizer.eos_token_id}
    configured = model.generation_config.eos_token_id
    ids |= set(configured if isinstance(configured, list) else [configured])
    ids.discard(None)
    ids.discard(getattr(tokenizer, "unk_token_id", None))
    assert ids, "tokenizer and model define no end-of-sequence token"
    return sorted(ids)


def write_tiny_causal_lm(directory: str | Path, corpus: list[str], *, vocab_size: int = 400, seed: int = 0) -> Path:
    """The ``tiny`` generator: a byte-level BPE trained on ``corpus`` and a random 2-layer Qwen3 decoder.

    Its samples are noise, but it exercises every code path (sampling, logprobs, serving) in seconds.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    directory = Path(directory)
    specials = [END_OF_TEXT, IM_START, IM_END, THINK_START, THINK_END]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=IM_END, pad_token=END_OF_TEXT)
    tokenizer.save_pretrained(directory)
    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=1024,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    Qwen3ForCausalLM(config).save_pretrained(directory)
    return directory


# ---- judges -----------------------------------------------------------------------------------------
class Judge(Protocol):
    name: str

    def judge(self, items: list[tuple[CoTProblem, CoTPath, RuleReport]]) -> list[JudgeVerdict]:
        """One verdict per (problem, path, level-1 report), in order."""


JUDGE_PROMPT = """You are grading a step-by-step answer to a question about an image.
Score each criterion from 1 (worst) to 5 (best):
{rubric}

Question: {question}
Reference answer: {reference}
Response to grade:
{response}

Reply with exactly these lines and nothing else:
{format}
rationale: <one short sentence>"""


class LLMJudge:
    """Level-2 judge: prompts a Generator with the rubric and parses one score per dimension."""

    def __init__(self, generator: Generator, *, max_new_tokens: int = 160, seed: int = 0) -> None:
        self.generator, self.max_new_tokens, self.seed = generator, max_new_tokens, seed
        self.name = f"llm-judge:{generator.name}"

    def judge(self, items: list[tuple[CoTProblem, CoTPath, RuleReport]]) -> list[JudgeVerdict]:
        rubric = "\n".join(f"- {k}: {v}" for k, v in JUDGE_RUBRIC.items())
        fmt = "\n".join(f"{k}: <1-5>" for k in JUDGE_DIMENSIONS)
        requests = [
            GenerationRequest(
                prompt=JUDGE_PROMPT.format(
                    rubric=rubric,
                    question=p.question,
                    reference=p.reference or "(none)",
                    response=path.text,
                    format=fmt,
                ),
                image_path=p.media_path,
            )
            for p, path, _ in items
        ]
        outputs = self.generator.generate(
            requests, 1, max_new_tokens=self.max_new_tokens, temperature=0.0, seed=self.seed
        )
        return [self._verdict(path.id, gens[0].text) for (_, path, _), gens in zip(items, outputs)]

    def _verdict(self, path_id: str, reply: str) -> JudgeVerdict:
        scores, rationale = parse_judge_reply(reply)
        if scores is None:
            log.info("judge reply for %s unparseable: %s", path_id, rationale)
        return JudgeVerdict(judge=self.name, scores=scores, rationale=rationale)


def parse_judge_reply(reply: str) -> tuple[dict[str, int] | None, str]:
    """Scores and rationale from a judge reply; ``(None, reason)`` when a dimension has no 1-5 score.

    Tolerates case, ``_``/space/``-`` in names, markdown bold, ``=`` or ``:``, ``4/5`` and JSON replies.
    """
    text = reply.replace("*", "")
    scores: dict[str, int] = {}
    for dim in JUDGE_DIMENSIONS:
        name = r"[\s_-]*".join(map(re.escape, dim.split("_")))
        match = re.search(rf'"?{name}"?\s*[:=]\s*"?([1-5])(?:\s*/\s*5)?(?![\d.])', text, flags=re.IGNORECASE)
        if match:
            scores[dim] = int(match.group(1))
    missing = [d for d in JUDGE_DIMENSIONS if d not in scores]
    found = re.search(r'rationale"?\s*[:=]\s*"?(.+)', text, flags=re.IGNORECASE)
    rationale = found.group(1).strip().strip('"}').strip() if found else ""
    if missing:
        snippet = json.dumps(reply[:80])
        return None, f"unparseable judge reply (no 1-5 score for {', '.join(missing)}): {snippet}"
    return scores, rationale[:300]


_STOPWORDS = frozenset(
    "the a an is are was were what which who how many much does do did there this that of in on at to and or".split()
)


class RuleJudge:
    """Deterministic fallback judge for unattended tiny runs -- NOT a model.

    It maps level-1 rule features to the rubric: logical consistency from well-formedness, step count
    and repetition; factual accuracy from the reference match; relevance from the share of the
    question's content words that the reasoning mentions.
    """

    name = "rule-judge"

    def judge(self, items: list[tuple[CoTProblem, CoTPath, RuleReport]]) -> list[JudgeVerdict]:
        return [self._one(problem, path, rules) for problem, path, rules in items]

    def _one(self, problem: CoTProblem, path: CoTPath, rules: RuleReport) -> JudgeVerdict:
        if not rules.well_formed:
            logic = 1
        else:
            logic = 5 if rules.num_steps >= 3 else 4 if rules.num_steps == 2 else 3
            logic -= 2 if rules.repetitive else 0
        factual = {True: 5, None: 3, False: 1}[rules.answer_correct]
        words = {w for w in re.findall(r"[a-z]+", problem.question.lower()) if len(w) > 2 and w not in _STOPWORDS}
        thinking = (path.thinking or "").lower()
        share = sum(w in thinking for w in words) / len(words) if words else 1.0
        relevance = 5 if share >= 0.5 else 4 if share >= 0.25 else 3 if share > 0 else 2
        scores = {"logical_consistency": logic, "factual_accuracy": factual, "relevance": relevance}
        rationale = (
            f"rules: steps={rules.num_steps}, repetitive={rules.repetitive}, "
            f"answer_correct={rules.answer_correct}, question words mentioned={share:.2f}"
        )
        return JudgeVerdict(judge=self.name, scores=scores, rationale=rationale)
