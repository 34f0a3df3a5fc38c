"""The generative "judge" reward of alignment RL (SPEC.md section 4): a response graded against its reference.

It is a separate path from the ``reward_model`` reward (our trained pairwise judge, ``training/judge.py``):
- ``OpenAIJudge``: any OpenAI-compatible server (vLLM, SGLang, a hosted model; ``keye_model.openai_http``) grades the
  answer against the reference on a 0-10 scale; the score is that grade / 10. Only text is sent (the
  question, the reference, the answer after its think block): the judge grades agreement, not the image.
- ``rule_judge``: where no server is configured, the answer matcher (``keye_model.answers.judge_answer``)
  against the reference, 1.0 or 0.0. It is not a model, and ``reference_judge`` says so in the log.

Both return None for a sample without a reference (the source then does not apply to it).
The server is configured by environment variables (read when the stage builds its rewards, never at
import), so the runner's subprocesses see what the launching process saw: ``KEYE_JUDGE_URL`` (server
root, ``/v1`` is appended), ``KEYE_JUDGE_MODEL`` (served model name) and optionally
``KEYE_JUDGE_API_KEY_ENV`` (the NAME of the variable holding the key; keys stay out of configs).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable

from keye_model.answers import judge_answer, split_thinking
from keye_model.openai_http import endpoint_url, post_json
from keye_model.rewards import RewardSample

log = logging.getLogger(__name__)

#: Environment variables that configure the judge server.
URL_ENV, MODEL_ENV, API_KEY_ENV_ENV = "KEYE_JUDGE_URL", "KEYE_JUDGE_MODEL", "KEYE_JUDGE_API_KEY_ENV"
#: The grade scale the server is asked for.
MAX_GRADE = 10

JUDGE_PROMPT = (
    "You grade an assistant's answer against a reference answer.\n"
    "Question: {question}\n"
    "Reference answer: {reference}\n"
    "Assistant's answer: {answer}\n"
    "Does the answer agree with the reference and follow every instruction in the question? "
    f"Grade from 0 (wrong) to {MAX_GRADE} (fully right). Reply with one line: Score: N"
)
_SCORE = re.compile(r"score\s*[:=]\s*(\d+(?:\.\d+)?)", re.IGNORECASE)

Judge = Callable[[RewardSample], float | None]


def rule_judge(sample: RewardSample) -> float | None:
    """1.0 when the response's answer matches the reference (the one answer matcher), else 0.0."""
    if sample.reference is None:
        return None
    return float(judge_answer(sample.response, sample.reference).match)


def parse_grade(reply: str) -> float | None:
    """``"Score: 7"`` -> 0.7 (grades above ``MAX_GRADE`` clipped); None when the reply holds no score."""
    found = _SCORE.search(reply)
    if found is None:
        return None
    return min(float(found.group(1)), MAX_GRADE) / MAX_GRADE


class OpenAIJudge:
    """Grades a sample through ``/v1/chat/completions`` of an OpenAI-compatible server (greedy)."""

    def __init__(
        self, base_url: str, model: str, *, api_key: str | None = None, timeout_s: float = 60.0, max_retries: int = 3
    ) -> None:
        self.url = endpoint_url(base_url)
        self.model = model
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.name = f"openai-judge:{model}@{base_url}"

    def _post(self, payload: dict, sample_id: str) -> dict:
        try:
            return post_json(
                self.url, payload, api_key=self.api_key, timeout_s=self.timeout_s, max_retries=self.max_retries
            )
        except (RuntimeError, ConnectionError) as error:
            raise RuntimeError(f"{self.name}: sample {sample_id}: {error}") from error

    def __call__(self, sample: RewardSample) -> float | None:
        if sample.reference is None:
            return None
        _, answer = split_thinking(sample.response)
        prompt = JUDGE_PROMPT.format(question=sample.query, reference=sample.reference, answer=answer)
        payload = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0.0,
            "max_tokens": 16,
        }
        reply = self._post(payload, sample.id)["choices"][0]["message"]["content"] or ""
        grade = parse_grade(reply)
        if grade is None:
            # One unparseable reply leaves this sample to the other sources rather than failing the stage.
            log.warning("%s: sample %s: no 'Score: N' in reply %r; judge skipped", self.name, sample.id, reply[:80])
        return grade


def reference_judge(base_url: str | None = None, model: str = "", api_key: str | None = None) -> Judge:
    """The judge reward: an ``OpenAIJudge`` when ``base_url`` is given, else ``rule_judge`` (logged as such)."""
    if base_url:
        judge = OpenAIJudge(base_url, model, api_key=api_key)
        log.info("judge reward: %s", judge.name)
        return judge
    log.warning(
        "judge reward: no OpenAI-compatible server configured (%s unset): using the RULE judge (the answer "
        "matcher against the reference), not a model",
        URL_ENV,
    )
    return rule_judge


def judge_from_env() -> Judge:
    """``reference_judge`` configured by ``KEYE_JUDGE_URL`` / ``KEYE_JUDGE_MODEL`` / ``KEYE_JUDGE_API_KEY_ENV``."""
    key_env = os.environ.get(API_KEY_ENV_ENV)
    api_key = os.environ.get(key_env) if key_env else None
    if key_env and api_key is None:
        raise ValueError(f"{API_KEY_ENV_ENV} names {key_env!r}, which is not set")
    return reference_judge(os.environ.get(URL_ENV) or None, os.environ.get(MODEL_ENV, ""), api_key)
