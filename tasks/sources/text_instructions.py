"""text-instructions: text-only instruction data made from the documentation Python itself ships.

Each record asks what a standard-library function does and answers with the first paragraph of its
docstring (``json.dumps`` -> "Serialize ``obj`` to a JSON formatted ``str``."). Real, offline, stable text;
only functions whose docstring has a summary of 8 words or more are kept.
"""

from __future__ import annotations

import importlib
import inspect
import random
from pathlib import Path

from data_specs.schemas import Record
from tasks.sources.spec import Collected, SourceSpec

NAME = "text-instructions"
MODULES = (
    "bisect",
    "base64",
    "calendar",
    "collections",
    "colorsys",
    "csv",
    "difflib",
    "fnmatch",
    "fractions",
    "functools",
    "glob",
    "gzip",
    "hashlib",
    "heapq",
    "itertools",
    "json",
    "math",
    "os.path",
    "pathlib",
    "random",
    "re",
    "shlex",
    "shutil",
    "statistics",
    "string",
    "tarfile",
    "textwrap",
    "zlib",
)
PROMPTS = (
    "What does the Python function `{name}` do?",
    "Explain briefly what `{name}` is for in Python.",
    "In one or two sentences, describe the standard-library function `{name}`.",
)
MIN_WORDS = 8


def _summaries() -> list[tuple[str, str]]:
    """(qualified name, first docstring paragraph) for documented public functions, sorted by name."""
    found = {}
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for attr in sorted(dir(module)):
            obj = getattr(module, attr)
            if attr.startswith("_") or not callable(obj) or inspect.isclass(obj):
                continue
            doc = inspect.getdoc(obj) or ""
            summary = " ".join(doc.split("\n\n")[0].split())
            if len(summary.split()) >= MIN_WORDS and "(" not in summary.split()[0]:
                found.setdefault(f"{module_name}.{attr}", summary)
    return sorted(found.items())


def collect(spec: SourceSpec, work_dir: Path) -> Collected:
    """``spec.limit`` question/answer pairs picked by ``spec.seed``."""
    rng = random.Random(spec.seed)
    summaries = _summaries()
    picked = sorted(rng.sample(range(len(summaries)), min(spec.limit, len(summaries))))
    records = []
    for index in picked:
        name, summary = summaries[index]
        records.append(
            Record(
                id=f"{NAME}-{name.replace('.', '-').replace('_', '-').lower()}",
                source=NAME,
                modality="text",
                task="instruction",
                question=rng.choice(PROMPTS).format(name=name),
                answer=summary,
                meta={"function": name},
            )
        )
    return Collected(records=records)
