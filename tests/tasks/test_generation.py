"""Generation backends against a tiny random Qwen3 (local, and served over real loopback HTTP) and the judges."""

from __future__ import annotations

import json
import math
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import easy_vqa
import pytest

from data_specs.longcot import CoTPath, CoTProblem, RuleReport
from tasks.generation import (
    GenerationRequest,
    GeneratorConfig,
    LLMJudge,
    OpenAICompatibleGenerator,
    RuleJudge,
    TransformersGenerator,
    build_generator,
    parse_judge_reply,
    write_tiny_causal_lm,
)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    questions, answers, _ = easy_vqa.get_train_questions()
    return write_tiny_causal_lm(
        tmp_path_factory.mktemp("tiny-lm"), sorted(set(questions))[:300] + easy_vqa.get_answers()
    )


@pytest.fixture(scope="module")
def local(tiny_dir):
    return TransformersGenerator(tiny_dir, device="cpu")


class _OpenAIHandler(BaseHTTPRequestHandler):
    """The OpenAI completions API over a TransformersGenerator, as vLLM would serve it."""

    generator: TransformersGenerator
    failures_left = 0
    bodies: list[dict] = []

    def do_POST(self):  # noqa: N802 (http.server naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).bodies.append(body)
        if type(self).failures_left > 0:
            type(self).failures_left -= 1
            return self._send(503, {"error": "warming up"})
        chat = self.path == "/v1/chat/completions"
        if chat:
            content = body["messages"][-1]["content"]
            prompt = content if isinstance(content, str) else next(c["text"] for c in content if c["type"] == "text")
        else:
            prompt = body["prompt"]
        gens = self.generator.generate(
            [GenerationRequest(prompt=prompt)],
            body["n"],
            max_new_tokens=body["max_tokens"],
            temperature=body["temperature"],
            seed=body.get("seed", 0),
        )[0]
        choices = []
        for i, g in enumerate(gens):
            if chat:
                lp = {"content": [{"token": t, "logprob": p} for t, p in zip(g.tokens, g.token_logprobs)]}
                choices.append(
                    {
                        "index": i,
                        "message": {"role": "assistant", "content": g.text},
                        "logprobs": lp,
                        "finish_reason": g.finish_reason,
                    }
                )
            else:
                lp = {"tokens": g.tokens, "token_logprobs": g.token_logprobs}
                choices.append({"index": i, "text": g.text, "logprobs": lp, "finish_reason": g.finish_reason})
        self._send(200, {"object": "chat.completion" if chat else "text_completion", "choices": choices})

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(local):
    handler = type("Handler", (_OpenAIHandler,), {"generator": local, "bodies": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    httpd.shutdown()
    httpd.server_close()


def test_transformers_generator_samples_k_paths_with_logprobs(local):
    out = local.generate(
        [GenerationRequest(prompt="What color is the shape?"), GenerationRequest(prompt="Is there a circle?")],
        3,
        max_new_tokens=12,
        temperature=1.0,
        seed=3,
    )
    assert [len(paths) for paths in out] == [3, 3]
    for g in out[0]:
        assert 0 < len(g.token_logprobs) <= 12 and len(g.tokens) == len(g.token_logprobs)
        assert all(p <= 0 and math.isfinite(p) for p in g.token_logprobs)
        assert g.finish_reason in ("stop", "length")
        assert g.finish_reason == "stop" or len(g.token_logprobs) == 12
    assert len({g.text for g in out[0]}) > 1, "sampled paths should differ"
    again = local.generate(
        [GenerationRequest(prompt="What color is the shape?")], 3, max_new_tokens=12, temperature=1.0, seed=3
    )
    assert [g.text for g in again[0]] == [g.text for g in out[0]], "same seed, same paths"


def test_keye_checkpoint_generates_with_the_image(tmp_path):
    import dataclasses

    import torch

    from keye_model.config import KeyeConfig
    from keye_model.model import KeyeForConditionalGeneration
    from keye_model.tokenizer import tiny_tokenizer

    tokenizer = tiny_tokenizer(tmp_path)
    config = dataclasses.replace(
        KeyeConfig.preset("tiny"),
        image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
    )
    torch.manual_seed(0)
    KeyeForConditionalGeneration(config).save_pretrained(tmp_path)  # as the stage runner saves a checkpoint
    tokenizer.save_pretrained(tmp_path)
    keye = TransformersGenerator(tmp_path, device="cpu")
    assert keye.is_keye and keye.name == f"keye:{tmp_path.name}"
    image = easy_vqa.get_train_image_paths()[0]
    seeing = GenerationRequest(prompt="What shape is in the image?", image_path=image)
    [with_image] = keye.generate([seeing], 2, max_new_tokens=6, seed=5)
    [blind] = keye.generate([dataclasses.replace(seeing, image_path=None)], 2, max_new_tokens=6, seed=5)
    assert all(len(g.token_logprobs) == len(g.tokens) > 0 for g in with_image)
    assert with_image[0].token_logprobs[0] != blind[0].token_logprobs[0], "the image reaches the model"

    # Requests are sampled KEYE_BATCH_REQUESTS at a time, left-padded: greedy paths of a batch of prompts
    # of different lengths, with and without an image, are each what the request gets alone.
    requests = [
        seeing,
        GenerationRequest(prompt="Is there a red shape in this picture, yes or no?", image_path=image),
        GenerationRequest(prompt="Say hi."),
    ]
    batched = keye.generate(requests, 2, max_new_tokens=6, temperature=0.0)
    alone = [keye.generate([r], 2, max_new_tokens=6, temperature=0.0)[0] for r in requests]
    assert [[g.text for g in gs] for gs in batched] == [[g.text for g in gs] for gs in alone]
    for got, want in zip(batched, alone):
        assert got[0].token_logprobs == pytest.approx(want[0].token_logprobs, abs=1e-4)


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_openai_generator_against_a_loopback_server(server, tmp_path, api):
    url, handler = server
    image = easy_vqa.get_train_image_paths()[0]
    gen = build_generator(GeneratorConfig(kind="openai", base_url=url, model="tiny", api=api, timeout_s=30))
    out = gen.generate(
        [GenerationRequest(prompt="What shape is in the image?", image_path=image)],
        2,
        max_new_tokens=8,
        temperature=0.9,
        seed=1,
    )
    assert len(out) == 1 and len(out[0]) == 2
    for g in out[0]:
        assert len(g.token_logprobs) == len(g.tokens) > 0 and all(p <= 0 for p in g.token_logprobs)
    body = handler.bodies[-1]
    assert body["n"] == 2 and body["temperature"] == 0.9 and body["max_tokens"] == 8
    if api == "chat":
        assert body["logprobs"] is True
        assert body["messages"][-1]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")


def test_openai_generator_retries_server_errors(server):
    url, handler = server
    handler.failures_left = 2
    gen = OpenAICompatibleGenerator(url, "tiny", max_retries=2, backoff_s=0.01)
    out = gen.generate([GenerationRequest(prompt="Is there a red shape?")], 1, max_new_tokens=4)
    assert len(out[0]) == 1 and handler.failures_left == 0


def test_openai_generator_names_an_unreachable_endpoint():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the request: nothing listens there
    gen = OpenAICompatibleGenerator(f"http://127.0.0.1:{port}/v1", "tiny", max_retries=1, backoff_s=0.01, timeout_s=2)
    with pytest.raises(ConnectionError, match=rf"127\.0\.0\.1:{port}/v1/chat/completions.*2 attempts"):
        gen.generate([GenerationRequest(prompt="hi")], 1, max_new_tokens=2)


@pytest.mark.parametrize(
    "reply",
    [
        "logical_consistency: 4\nfactual_accuracy: 5\nrelevance: 3\nrationale: counts the sides correctly",
        "**Logical consistency**: 4/5\n**Factual accuracy** = 5\nRelevance: 3\nRationale: counts the sides correctly",
        '{"logical_consistency": 4, "factual_accuracy": 5, "relevance": 3, "rationale": "counts the sides correctly"}',
    ],
)
def test_parse_judge_reply_tolerates_formats(reply):
    scores, rationale = parse_judge_reply(reply)
    assert scores == {"logical_consistency": 4, "factual_accuracy": 5, "relevance": 3}
    assert rationale == "counts the sides correctly"


@pytest.mark.parametrize(
    "reply", ["great answer, 10/10", "logical_consistency: 7\nfactual_accuracy: 5\nrelevance: 3", ""]
)
def test_parse_judge_reply_unparseable_is_none_with_reason(reply):
    scores, reason = parse_judge_reply(reply)
    assert scores is None and "no 1-5 score for" in reason


def _problem_and_path(thinking: str, answer: str) -> tuple[CoTProblem, CoTPath]:
    problem = CoTProblem(
        id="easy-vqa-0",
        record_id="easy-vqa-0",
        source="easy-vqa",
        task="vqa",
        category="vqa",
        question="What color is the shape?",
        reference="blue",
    )
    path = CoTPath(
        id="easy-vqa-0-p0",
        problem_id=problem.id,
        text=f"<think>{thinking}</think>{answer}",
        thinking=thinking,
        answer=answer,
        finish_reason="stop",
        num_tokens=10,
        mean_logprob=-1.0,
        step_min_logprob=-2.0,
        agreement=1.0,
    )
    return problem, path


def test_llm_judge_over_the_tiny_model_reports_unparseable(local):
    problem, path = _problem_and_path("The shape is filled with blue.", "blue")
    rules = RuleReport(well_formed=True, answer_correct=True, length_ok=True, repetitive=False, num_steps=1)
    judge = LLMJudge(local, max_new_tokens=8)
    [verdict] = judge.judge([(problem, path, rules)])
    assert verdict.judge.startswith("llm-judge:transformers:")
    assert verdict.scores is None and "unparseable" in verdict.rationale  # random weights cannot follow the format


def test_rule_judge_scores_from_rule_features():
    problem, path = _problem_and_path("I look at the shape.\nIts color is blue.\nSo the color is blue.", "blue")
    good = RuleReport(well_formed=True, answer_correct=True, length_ok=True, repetitive=False, num_steps=3)
    wrong = RuleReport(well_formed=True, answer_correct=False, length_ok=True, repetitive=True, num_steps=1)
    [v_good, v_wrong] = RuleJudge().judge([(problem, path, good), (problem, path, wrong)])
    assert v_good.scores == {"logical_consistency": 5, "factual_accuracy": 5, "relevance": 5}
    assert v_wrong.scores == {"logical_consistency": 1, "factual_accuracy": 1, "relevance": 5}
    assert v_good.judge == "rule-judge" and "steps=3" in v_good.rationale
