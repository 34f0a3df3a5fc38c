"""The Hugging Face side of a saved Keye model: config.json, remote code, and the LLM as a plain Qwen3 folder.

``KeyeForConditionalGeneration.save_pretrained`` calls ``write_hf_files``, which adds beside
``keye_config.json`` + ``model.safetensors``:

- ``config.json``: ``model_type`` "keye_vl", the whole KeyeConfig under "keye", and an ``auto_map`` naming
  the remote code, so ``AutoConfig`` / ``AutoModel`` / ``AutoModelForImageTextToText`` / ``AutoProcessor``
  load the folder with ``trust_remote_code=True`` and no import of this project;
- the remote code: ``configuration_keye.py``, ``modeling_keye.py``, ``processing_keye.py`` (small
  generated wrappers) and a copy of every keye_model module they reach, with ``from keye_model.x import``
  rewritten to ``from .x import`` (transformers copies a remote module together with its relative
  imports, so the folder is self-contained: the copied code IS the code that trained the model);
- ``processor_config.json``: the ProcessorConfig (default unless given);
- ``language_model/``: the decoder as a standard Qwen3 checkpoint (config.json + model.safetensors, the
  ``language_model.`` tensors without that prefix) that plain ``AutoModelForCausalLM`` loads. It
  duplicates the LLM weights on disk: that is the price of a folder any Qwen3 tool opens as is.

The wrapper model shares its three children (``vision``, ``projector``, ``language_model``) with a
KeyeForConditionalGeneration, so its parameter names are exactly those of ``model.safetensors``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from keye_model.model import KeyeForConditionalGeneration
    from keye_model.processor import ProcessorConfig

#: ``model_type`` in config.json.
MODEL_TYPE = "keye_vl"
#: Sub-folder holding the language model as a plain Qwen3 checkpoint.
LANGUAGE_MODEL_DIR = "language_model"
#: Where the remote code comes from: the keye_model package itself.
PACKAGE_DIR = Path(__file__).resolve().parent

AUTO_MAP = {
    "AutoConfig": "configuration_keye.KeyeVLConfig",
    "AutoModel": "modeling_keye.KeyeVLForConditionalGeneration",
    "AutoModelForImageTextToText": "modeling_keye.KeyeVLForConditionalGeneration",
    "AutoProcessor": "processing_keye.KeyeVLProcessor",
}

_IMPORT_FROM = re.compile(r"^(\s*)from keye_model\.(\w+) import ", re.MULTILINE)
_IMPORT_MODULE = re.compile(r"^(\s*)from keye_model import (\w+)", re.MULTILINE)


def module_closure(roots: tuple[str, ...]) -> list[str]:
    """keye_model module names reachable from ``roots`` through keye_model imports (sorted).

    Example: ("projector",) -> ["config", "projector"] (projector imports keye_model.config only).
    """
    seen, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        source = PACKAGE_DIR / f"{name}.py"
        if not source.is_file():
            raise FileNotFoundError(f"remote code: keye_model module {name!r} has no file {source}")
        seen.add(name)
        text = source.read_text(encoding="utf-8")
        todo += [m.group(2) for m in _IMPORT_FROM.finditer(text)]
        todo += [m.group(2) for m in _IMPORT_MODULE.finditer(text)]
    return sorted(seen)


def relative_source(name: str) -> str:
    """keye_model/<name>.py with its keye_model imports made relative (it runs as part of the folder)."""
    text = (PACKAGE_DIR / f"{name}.py").read_text(encoding="utf-8")
    text = _IMPORT_FROM.sub(r"\1from .\2 import ", text)
    return _IMPORT_MODULE.sub(r"\1from . import \2", text)


def _entry(docstring: str, modules: list[str], body: str) -> str:
    # transformers copies a remote module's "from .x import" targets into its cache, recursively; a module
    # reached only as "from . import x" would be left behind, so the entry file names every one.
    names = "\n".join(f"from .{m} import __name__ as _{m}_module  # noqa: F401" for m in modules)
    return f'"""{docstring}"""\n\n{names}\n{body}'


_CONFIGURATION = '''
from transformers import PretrainedConfig

from .config import KeyeConfig


class KeyeVLConfig(PretrainedConfig):
    """transformers view of a KeyeConfig, kept whole as the dict ``keye``."""

    model_type = "keye_vl"

    def __init__(self, keye: dict | None = None, **kwargs):
        self.keye = keye if keye is not None else KeyeConfig().to_dict()
        text = self.keye_config().text
        kwargs.setdefault("tie_word_embeddings", text.tie_word_embeddings)
        self.vocab_size, self.hidden_size = text.vocab_size, text.hidden_size
        super().__init__(**kwargs)

    def keye_config(self) -> KeyeConfig:
        return KeyeConfig.from_dict(self.keye)
'''

_MODELING = '''
from transformers import PreTrainedModel

from .configuration_keye import KeyeVLConfig
from .model import KeyeForConditionalGeneration


class KeyeVLForConditionalGeneration(PreTrainedModel):
    """KeyeForConditionalGeneration behind the transformers loading API.

    It owns the same three children (vision, projector, language_model), so its parameter names are those
    of model.safetensors; forward and generate are the Keye model's.
    """

    config_class = KeyeVLConfig
    base_model_prefix = ""
    _no_split_modules = ["Qwen3DecoderLayer"]

    def __init__(self, config: KeyeVLConfig):
        super().__init__(config)
        keye = KeyeForConditionalGeneration(config.keye_config(), init=False)
        self.vision, self.projector, self.language_model = keye.vision, keye.projector, keye.language_model
        self.__dict__["keye"] = keye  # not registered: its parameters are already ours
        self.post_init()

    def forward(self, *args, **kwargs):
        return self.keye(*args, **kwargs)

    def generate(self, *args, **kwargs):
        return self.keye.generate(*args, **kwargs)
'''

_PROCESSING = '''
from transformers import AutoTokenizer

from .processor import KeyeProcessor, ProcessorConfig


class KeyeVLProcessor(KeyeProcessor):
    """KeyeProcessor loaded from a model folder: its tokenizer and processor_config.json."""

    @classmethod
    def register_for_auto_class(cls, auto_class="AutoProcessor"):
        """Called by AutoProcessor on remote classes; the folder's auto_map already names this one."""

    @classmethod
    def from_pretrained(cls, directory, **kwargs):
        # config.json names remote code, so the tokenizer lookup asks too: pass the caller's answer on.
        tokenizer = AutoTokenizer.from_pretrained(str(directory), trust_remote_code=kwargs.get("trust_remote_code"))
        return cls(tokenizer, ProcessorConfig.load(directory))
'''


def write_remote_code(directory: Path) -> list[str]:
    """Write the generated entry files and the copied keye_model modules; returns the file names."""
    model_modules = module_closure(("model",))
    processor_modules = module_closure(("processor",))
    files = {
        "configuration_keye.py": _entry("Remote code: the Keye config for AutoConfig.", ["config"], _CONFIGURATION),
        "modeling_keye.py": _entry("Remote code: the Keye model for AutoModel.", model_modules, _MODELING),
        "processing_keye.py": _entry(
            "Remote code: the Keye processor for AutoProcessor.", processor_modules, _PROCESSING
        ),
    }
    for name in sorted(set(model_modules) | set(processor_modules)):
        files[f"{name}.py"] = relative_source(name)
    for name, text in files.items():
        (directory / name).write_text(text, encoding="utf-8")
    return sorted(files)


def hf_config_dict(model: KeyeForConditionalGeneration) -> dict:
    import transformers

    return {
        "model_type": MODEL_TYPE,
        "architectures": ["KeyeVLForConditionalGeneration"],
        "auto_map": AUTO_MAP,
        "keye": model.config.to_dict(),
        "tie_word_embeddings": model.config.text.tie_word_embeddings,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "transformers_version": transformers.__version__,
    }


def write_hf_files(
    model: KeyeForConditionalGeneration, directory: str | Path, processor_config: ProcessorConfig | None = None
) -> None:
    """Add config.json, processor_config.json, the remote code and language_model/ to a saved model folder."""
    from keye_model.processor import PROCESSOR_FILE, ProcessorConfig

    path = Path(directory)
    (path / "config.json").write_text(json.dumps(hf_config_dict(model), indent=2) + "\n", encoding="ascii")
    processor = {
        "processor_class": "KeyeVLProcessor",
        "auto_map": {"AutoProcessor": AUTO_MAP["AutoProcessor"]},
        "keye": dataclasses.asdict(processor_config or ProcessorConfig()),
    }
    (path / PROCESSOR_FILE).write_text(json.dumps(processor, indent=2) + "\n", encoding="ascii")
    write_remote_code(path)
    model.language_model.save_pretrained(path / LANGUAGE_MODEL_DIR)
