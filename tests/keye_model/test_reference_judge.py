"""The judge reward: the rule judge (answer matcher) and an OpenAI-compatible server on loopback, and that
the alignment reward keeps judge and reward model as separate sources."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from keye_model import reference_judge as rj
from keye_model.rewards import RewardFunction, RewardSample


def sample(response: str, reference: str | None = "circle") -> RewardSample:
    return RewardSample(id="p1", query="what shape is this?", response=response, reference=reference)


def test_rule_judge_matches_the_answer_against_the_reference():
    assert rj.rule_judge(sample("<think>\nround\n</think>\n\nThe answer is circle.")) == 1.0
    assert rj.rule_judge(sample("triangle")) == 0.0
    assert rj.rule_judge(sample("circle", reference=None)) is None


@pytest.mark.parametrize(("reply", "grade"), [("Score: 7", 0.7), ("score=10", 1.0), ("Score: 12", 1.0), ("good", None)])
def test_parse_grade(reply, grade):
    assert rj.parse_grade(reply) == grade


@pytest.fixture
def server():
    """A real OpenAI-compatible endpoint on loopback: grades 9 when the answer says circle, else 2."""
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server naming)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
            prompt = body["messages"][0]["content"]
            answer = prompt.split("Assistant's answer:")[1].split("\n")[0]
            content = "Score: 9" if "circle" in answer else "Score: 2"
            payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
    httpd.shutdown()
    httpd.server_close()


def test_openai_judge_grades_through_the_server(server, monkeypatch):
    url, seen = server
    monkeypatch.setenv(rj.URL_ENV, url)
    monkeypatch.setenv(rj.MODEL_ENV, "grader")
    monkeypatch.setenv(rj.API_KEY_ENV_ENV, "MY_JUDGE_KEY")
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-test")
    judge = rj.judge_from_env()
    assert isinstance(judge, rj.OpenAIJudge)
    assert judge(sample("<think>\nround, no corners\n</think>\n\ncircle")) == pytest.approx(0.9)
    assert judge(sample("triangle")) == pytest.approx(0.2)
    assert judge(sample("circle", reference=None)) is None
    assert len(seen) == 2 and seen[0]["path"] == "/v1/chat/completions"
    assert seen[0]["body"]["model"] == "grader" and seen[0]["auth"] == "Bearer sk-test"
    # Only the answer after the think block is graded, against the reference.
    content = seen[0]["body"]["messages"][0]["content"]
    assert "round, no corners" not in content and "Reference answer: circle" in content


def test_unreachable_server_names_the_sample():
    judge = rj.OpenAIJudge("http://127.0.0.1:9", "grader", timeout_s=1.0, max_retries=0)
    with pytest.raises(RuntimeError, match="sample p1"):
        judge(sample("circle"))


def test_without_a_server_the_rule_judge_is_used_and_says_so(monkeypatch, caplog):
    monkeypatch.delenv(rj.URL_ENV, raising=False)
    monkeypatch.delenv(rj.API_KEY_ENV_ENV, raising=False)
    with caplog.at_level(logging.WARNING, logger="keye_model.reference_judge"):
        judge = rj.judge_from_env()
    assert judge is rj.rule_judge
    assert "RULE judge" in caplog.text


def test_judge_and_reward_model_are_separate_sources():
    """Alignment weights: a reward model that prefers long answers and the rule judge disagree, and the
    total shows each with its own weight."""

    def long_answers_preferred(s: RewardSample) -> float | None:
        return 1.0 if len(s.response) > 10 else 0.0

    reward = RewardFunction(
        weights=(("rule", 0.5), ("judge", 0.25), ("reward_model", 0.25)),
        judge=rj.rule_judge,
        reward_model=long_answers_preferred,
    )
    short = reward(sample("circle"))
    assert short.parts == {"rule": 1.0, "judge": 1.0, "reward_model": 0.0} and short.total == 0.75
    wrong_long = reward(sample("a long wrong triangle"))
    assert wrong_long.parts == {"rule": 0.0, "judge": 0.0, "reward_model": 1.0} and wrong_long.total == 0.25


def test_the_alignment_stage_builds_judge_and_reward_model_as_separate_callables(tmp_path, monkeypatch):
    """``build_reward_fn`` on the alignment stage: the judge is the rule judge (no server configured), the
    reward model our trained pairwise judge (here a tiny random checkpoint): two different callables."""
    import dataclasses

    import torch

    from data_specs.presets import get_stage
    from keye_model.config import KeyeConfig
    from keye_model.model import KeyeForConditionalGeneration
    from keye_model.processor import KeyeProcessor
    from keye_model.tokenizer import tiny_tokenizer
    from keye_model.training.objectives import build_reward_fn
    from keye_model.training.run_config import RunConfig

    monkeypatch.delenv(rj.URL_ENV, raising=False)
    tokenizer = tiny_tokenizer(tmp_path / "tokenizer")
    config = dataclasses.replace(
        KeyeConfig.preset("tiny"),
        image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
    )
    torch.manual_seed(0)
    KeyeForConditionalGeneration(config).save_pretrained(tmp_path / "rm")
    spec = get_stage("tiny", "alignment")
    assert {name for name, _ in spec.rl.reward_weights} == {"rule", "judge", "reward_model"}
    run = RunConfig(
        stage=spec,
        output_dir=str(tmp_path / "out"),
        tokenizer_dir=str(tmp_path / "tokenizer"),
        reward_model_checkpoint=str(tmp_path / "rm"),
    )
    reward = build_reward_fn(run, KeyeProcessor(tokenizer), torch.device("cpu"))
    assert reward.judge is rj.rule_judge and reward.reward_model is not rj.rule_judge
    result = reward(sample("circle"))
    assert result.parts["judge"] == 1.0 and result.parts["rule"] == 1.0
    assert 0.0 <= result.parts["reward_model"] <= 1.0
    # Without reward-model weight no checkpoint is needed, and the judge still applies.
    rule_and_judge = dataclasses.replace(spec, rl=dataclasses.replace(spec.rl, reward_weights=(("judge", 1.0),)))
    alone = build_reward_fn(
        dataclasses.replace(run, stage=rule_and_judge, reward_model_checkpoint=None),
        KeyeProcessor(tokenizer),
        torch.device("cpu"),
    )
    assert alone.reward_model is None and alone(sample("triangle")).total == 0.0
