"""Tokenizers for Keye: a tiny byte-level BPE trained offline, and a loader for real tokenizer dirs.

The tiny tokenizer exists so that tests and the ``tiny`` preset run with a vocabulary of a few
thousand instead of Qwen3's 151,936. It copies Qwen's recipe at small scale: NFC normalization, the
Qwen2 pre-tokenizer regex (digits split one by one, so timestamps like "12.5" and box coordinates
tokenize the same way everywhere), byte-level BPE over all 256 bytes (any text encodes, nothing is
unknown), and every Keye special token (special_tokens.ALL) as a single special token.

Corpus (deterministic: a fixed recipe over files shipped inside installed packages, never the repo's
changing docs): the unique questions and answers of the easy-vqa package, then the docstrings of a
fixed list of standard-library modules for general English and code words. The corpus's SHA-256 is
written next to the tokenizer, and ``tiny_tokenizer`` reuses a directory only when it matches.

Special tokens: eos = ``<|im_end|>`` (our choice, as in Qwen3 chat models: generation must stop at the
end of the assistant turn, which is what the SFT labels teach); pad = ``<|endoftext|>``; no bos.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import warnings
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from keye_model import special_tokens as st
from keye_model.chat import CHAT_TEMPLATE

logger = logging.getLogger(__name__)

#: Largest vocabulary the tiny model's embedding holds.
TINY_MAX_VOCAB = 4096
#: Bump when the training recipe changes, so cached tiny tokenizers are retrained.
RECIPE_VERSION = 1
#: File in a tiny tokenizer dir recording how it was made (recipe, vocab size, corpus hash).
RECIPE_FILE = "keye_tiny_recipe.json"

# Qwen2's pre-tokenizer split: contractions, words with one leading non-letter, single digits,
# punctuation runs, newlines, spaces.
QWEN_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Standard-library modules whose docstrings give the corpus general English and code vocabulary.
_DOC_MODULES = (
    "argparse",
    "calendar",
    "collections",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "fractions",
    "functools",
    "heapq",
    "inspect",
    "itertools",
    "json",
    "logging",
    "math",
    "os",
    "pathlib",
    "random",
    "re",
    "shutil",
    "sqlite3",
    "statistics",
    "string",
    "subprocess",
    "tarfile",
    "textwrap",
    "unittest",
    "zipfile",
)


def tiny_corpus() -> list[str]:
    """The tiny tokenizer's training texts, in a fixed order (see the module docstring)."""
    import easy_vqa  # the dataset package; imported here so loading a real tokenizer never needs it

    texts: list[str] = []
    for get_questions in (easy_vqa.get_train_questions, easy_vqa.get_test_questions):
        questions, answers, _ = get_questions()
        texts += sorted(set(questions))
    texts += sorted(set(easy_vqa.get_answers()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # some members warn when touched
        for module_name in _DOC_MODULES:
            module = importlib.import_module(module_name)
            texts.append(module.__doc__ or "")
            for name in sorted(dir(module)):
                doc = getattr(getattr(module, name, None), "__doc__", None)
                if not name.startswith("_") and isinstance(doc, str):
                    texts.append(doc)
    return [text for text in texts if text]


def corpus_sha256(texts: list[str]) -> str:
    """Fingerprint of a corpus (order matters: BPE ties are broken by it)."""
    return hashlib.sha256("\x00".join(texts).encode("utf-8")).hexdigest()


def train_tiny_tokenizer(out_dir: str | Path, vocab_size: int = 4000) -> PreTrainedTokenizerFast:
    """Train the tiny byte-level BPE, save it in transformers format to ``out_dir`` and return it.

    ``vocab_size`` counts everything: the 16 special tokens (ids 0..15, ``<|endoftext|>`` = 0), the 256
    byte symbols and the merges. Training takes well under a second; the result is identical on every
    run. ``AutoTokenizer.from_pretrained(out_dir)`` loads it back, chat template included.
    """
    if not len(st.ALL) + 256 < vocab_size <= TINY_MAX_VOCAB:
        raise ValueError(
            f"tiny tokenizer vocab_size must be in ({len(st.ALL) + 256}, {TINY_MAX_VOCAB}], got {vocab_size}"
        )
    texts = tiny_corpus()
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(st.ALL),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token=st.IM_END,
        pad_token=st.END_OF_TEXT,
        extra_special_tokens=[t for t in st.ALL if t not in (st.IM_END, st.END_OF_TEXT)],
        chat_template=CHAT_TEMPLATE,
        model_max_length=131_072,
        clean_up_tokenization_spaces=False,
    )
    assert len(tokenizer) <= vocab_size, (len(tokenizer), vocab_size)
    out_dir = Path(out_dir)
    tokenizer.save_pretrained(out_dir)
    recipe = {"recipe_version": RECIPE_VERSION, "vocab_size": vocab_size, "corpus_sha256": corpus_sha256(texts)}
    (out_dir / RECIPE_FILE).write_text(json.dumps(recipe, indent=2) + "\n")
    logger.info("trained tiny tokenizer: %d tokens from %d texts -> %s", len(tokenizer), len(texts), out_dir)
    return tokenizer


def tiny_tokenizer(cache_dir: str | Path, vocab_size: int = 4000) -> PreTrainedTokenizerBase:
    """The tiny tokenizer from ``cache_dir`` if it was made by this recipe and corpus, else trained there."""
    cache_dir = Path(cache_dir)
    recipe_path = cache_dir / RECIPE_FILE
    if recipe_path.is_file():
        wanted = {
            "recipe_version": RECIPE_VERSION,
            "vocab_size": vocab_size,
            "corpus_sha256": corpus_sha256(tiny_corpus()),
        }
        if json.loads(recipe_path.read_text()) == wanted:
            return load_tokenizer(cache_dir)
        logger.info("tiny tokenizer in %s is stale; retraining", cache_dir)
    return train_tiny_tokenizer(cache_dir, vocab_size)


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """Load a local tokenizer directory (the tiny one, or e.g. a Qwen3 one) ready for the Keye format.

    - Keye special tokens the tokenizer lacks are added as special tokens, with a warning naming them:
      a Qwen3 tokenizer has the ``<|vision_*|>`` and pad tokens but not ``<|frame|>``,
      ``<|fast_start|>``, ``<|fast_end|>``, ``<|clip_time_*|>``. The new ids come after the existing
      ones, so the model's embedding must be resized to ``len(tokenizer)``.
    - The Keye chat template (keye_model.chat) replaces whatever template the directory had, because
      the processor's label and placeholder logic relies on it.
    - With no pad token, ``<|endoftext|>`` becomes the pad token.
    Never downloads: ``path`` must be a directory on disk.
    """
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"tokenizer directory {path} does not exist")
    try:
        # A checkpoint folder's config.json names our remote code for AutoModel; the tokenizer needs none
        # of it, so an empty config keeps transformers from asking whether to run that code.
        tokenizer = AutoTokenizer.from_pretrained(
            path, local_files_only=True, trust_remote_code=False, config=PretrainedConfig()
        )
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot load a tokenizer from {path}: {error}") from error
    vocab = tokenizer.get_vocab()
    missing = [token for token in st.ALL if token not in vocab]
    if missing:
        logger.warning(
            "tokenizer %s lacks Keye special tokens %s; adding them (resize the model's embedding to %d)",
            path,
            missing,
            len(tokenizer) + len(missing),
        )
        tokenizer.add_special_tokens({"extra_special_tokens": missing}, replace_extra_special_tokens=False)
    if tokenizer.chat_template not in (None, CHAT_TEMPLATE):
        logger.info("tokenizer %s: replacing its chat template with the Keye template", path)
    tokenizer.chat_template = CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = st.END_OF_TEXT
    return tokenizer
