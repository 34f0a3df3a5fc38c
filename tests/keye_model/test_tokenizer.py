"""The tiny tokenizer (trained offline on packaged text), the loader, and the Keye chat template."""

from __future__ import annotations

import json
import logging

import easy_vqa
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from keye_model import special_tokens as st
from keye_model.answers import split_thinking
from keye_model.chat import CHAT_TEMPLATE, stop_token_ids
from keye_model.tokenizer import (
    RECIPE_FILE,
    TINY_MAX_VOCAB,
    load_tokenizer,
    tiny_tokenizer,
    train_tiny_tokenizer,
)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_tokenizer")
    train_tiny_tokenizer(path)
    return path


@pytest.fixture(scope="module")
def tok(tiny_dir):
    return AutoTokenizer.from_pretrained(tiny_dir)


def test_trained_tokenizer_loads_with_autotokenizer(tiny_dir, tok):
    assert len(tok) == 4000 <= TINY_MAX_VOCAB
    assert tok.eos_token == st.IM_END and tok.pad_token == st.END_OF_TEXT
    assert tok.chat_template == CHAT_TEMPLATE
    assert json.loads((tiny_dir / RECIPE_FILE).read_text())["vocab_size"] == 4000
    # The corpus shaped the merges: frequent easy-vqa words are single tokens.
    assert len(tok.tokenize("what color is the triangle?")) == 6


def test_special_tokens_are_single_tokens(tok):
    for token in st.ALL:
        ids = tok.encode(f"left{token}right", add_special_tokens=False)
        token_id = tok.convert_tokens_to_ids(token)
        assert ids.count(token_id) == 1, token
        assert tok.convert_ids_to_tokens(token_id) == token
        assert tok.decode(ids) == f"left{token}right"
    assert len({tok.convert_tokens_to_ids(t) for t in st.ALL}) == len(st.ALL)
    assert stop_token_ids(tok) == [tok.convert_tokens_to_ids(st.IM_END), tok.convert_tokens_to_ids(st.END_OF_TEXT)]


def test_round_trip_encode_decode(tok):
    questions, answers, _ = easy_vqa.get_test_questions()
    texts = (
        questions[:200]
        + answers[:50]
        + [
            "The clip shows a cat from 12.5 to 17.0 s; box <|box_start|>[102, 388, 644, 999]<|box_end|>.",
            "caf\u00e9 na\u00efve \u4e2d\u6587 \U0001f600 tabs\tand\nnewlines\r\n  spaces  ",  # bytes never unknown
            "def f(x):\n    return {'a': x ** 2}  # code",
        ]
    )
    for text in texts:
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    assert tok.unk_token_id is None


def test_training_is_deterministic(tmp_path, tiny_dir):
    train_tiny_tokenizer(tmp_path)
    assert (tmp_path / "tokenizer.json").read_bytes() == (tiny_dir / "tokenizer.json").read_bytes()


def test_tiny_tokenizer_reuses_a_matching_dir_and_retrains_a_stale_one(tmp_path):
    first = tiny_tokenizer(tmp_path, vocab_size=1000)
    stamp = (tmp_path / "tokenizer.json").stat().st_mtime_ns
    again = tiny_tokenizer(tmp_path, vocab_size=1000)
    assert (tmp_path / "tokenizer.json").stat().st_mtime_ns == stamp
    assert again.get_vocab() == first.get_vocab() and len(again) == 1000
    bigger = tiny_tokenizer(tmp_path, vocab_size=1200)  # recipe differs: retrained in place
    assert len(bigger) == 1200


def test_vocab_size_is_checked(tmp_path):
    with pytest.raises(ValueError, match="vocab_size"):
        train_tiny_tokenizer(tmp_path, vocab_size=TINY_MAX_VOCAB + 1)


def test_load_tokenizer_adds_missing_keye_tokens(tmp_path, caplog):
    # A foreign tokenizer: its own BPE with only the Qwen text tokens, no pad, no chat template.
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    base_specials = [st.END_OF_TEXT, st.IM_START, st.IM_END]
    bpe.train_from_iterator(
        easy_vqa.get_answers(),
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=base_specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=st.END_OF_TEXT).save_pretrained(tmp_path)
    size_before = len(AutoTokenizer.from_pretrained(tmp_path))
    with caplog.at_level(logging.WARNING, logger="keye_model.tokenizer"):
        tok = load_tokenizer(tmp_path)
    assert st.FRAME in caplog.text and st.FAST_START in caplog.text
    assert len(tok) == size_before + len(st.ALL) - len(base_specials)
    for token in st.ALL:
        assert tok.encode(f"x{token}y", add_special_tokens=False).count(tok.convert_tokens_to_ids(token)) == 1
    assert tok.pad_token == st.END_OF_TEXT and tok.chat_template == CHAT_TEMPLATE


def test_load_tokenizer_names_a_missing_dir(tmp_path):
    with pytest.raises(ValueError, match="nowhere"):
        load_tokenizer(tmp_path / "nowhere")


# ----- chat template ------------------------------------------------------------------------------


def render(tok, messages, **kwargs):
    return tok.apply_chat_template(messages, tokenize=False, **kwargs)


def test_template_renders_turns_media_and_no_think_prefill(tok):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what shape? /no_think"}]},
        {"role": "assistant", "content": "circle"},
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "why? /think"}]},
        {"role": "assistant", "content": "it is round", "reasoning_content": " no corners "},
    ]
    assert render(tok, messages) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>what shape? /no_think<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\ncircle<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>why? /think<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nno corners\n</think>\n\nit is round<|im_end|>\n"
    )


def test_generation_prompt_follows_the_last_user_suffix_or_enable_thinking(tok):
    no_think = [{"role": "user", "content": "is it blue? /no_think"}]
    think = [{"role": "user", "content": "is it blue? /think"}]
    plain = [{"role": "user", "content": "is it blue?"}]
    header = "<|im_start|>user\nis it blue?"
    assert render(tok, no_think, add_generation_prompt=True) == (
        header + " /no_think<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    assert render(tok, think, add_generation_prompt=True).endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert render(tok, plain, add_generation_prompt=True, enable_thinking=False).endswith(
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    assert render(tok, no_think, add_generation_prompt=True, enable_thinking=True).endswith("<|im_start|>assistant\n")


def test_assistant_mask_covers_response_and_im_end_only(tok):
    messages = [{"role": "user", "content": "color? /no_think"}, {"role": "assistant", "content": "blue"}]
    out = tok.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
    masked = [i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tok.decode(masked) == "blue<|im_end|>"


def test_split_thinking():
    assert split_thinking("<think>\nbecause\n</think>\n\nblue") == ("because", "blue")
    assert split_thinking("<think>\n\n</think>\n\nblue") == ("", "blue")
    assert split_thinking(" blue ") == (None, "blue")
    assert split_thinking("<think>\nstill going") == ("still going", "")
