"""The Keye chat template (SPEC.md section 1): Qwen-style turns, thinking blocks, media placeholders.

A conversation renders as ``<|im_start|>role\\n ... <|im_end|>\\n`` per message. The template is the one
source of truth for the prompt text: it is stored with the tokenizer (``tokenizer.chat_template``) and the
processor renders every sample through it, so training and serving cannot drift apart.

Rendering rules (our choices where the report is silent):
- ``content`` is a string or a list of parts ``{"type": "text" | "image" | "video", ...}``. An image part
  renders as ``<|vision_start|><|image_pad|><|vision_end|>`` and a video part as
  ``<|vision_start|><|video_pad|><|vision_end|>``: one pad each, which the processor expands to the
  image's tokens, or to the video's per-frame markers, timestamps and pads.
- An assistant message with a ``reasoning_content`` (or ``reasoning`` / ``thinking``) field renders as
  ``<think>\\n{reasoning}\\n</think>\\n\\n{content}``; content that already holds ``<think>...</think>`` is kept
  as written. Reasoning is kept in every assistant turn (Qwen3 drops it from earlier turns; for
  training on multi-turn reasoning we keep it).
- ``/think`` and ``/no_think`` are plain text at the end of a user message. After a user message ending in
  ``/no_think`` (or with ``enable_thinking=False``) the assistant turn starts with the empty block
  ``<think>\\n\\n</think>\\n\\n``. That block is part of the prompt, not of the response: the generation
  prompt pre-fills it, and in training it sits outside the ``{% generation %}`` span so it gets no loss.
- The response span (``{% generation %}``) covers the assistant content and its closing ``<|im_end|>``,
  not the newline after it: the loss trains the model to stop.
- A decoded response is split back into (reasoning, answer) by ``keye_model.answers.split_thinking``, the
  one think-tag splitter (shared with the rewards and LongCoT).

Example: [user "what shape? /no_think", assistant "circle"] renders as
``<|im_start|>user\\nwhat shape? /no_think<|im_end|>\\n<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n``
``circle<|im_end|>\\n`` with the response span ``circle<|im_end|>``.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from keye_model import special_tokens as st

#: Suffixes a user may append to a message to ask for or against a reasoning block.
THINK_SUFFIX = "/think"
NO_THINK_SUFFIX = "/no_think"

# The template body names the special tokens through Jinja variables set from special_tokens.py, so the
# strings are written down in one place only.
_TOKEN_VARIABLES = {
    "im_start": st.IM_START,
    "im_end": st.IM_END,
    "vision_start": st.VISION_START,
    "vision_end": st.VISION_END,
    "image_pad": st.IMAGE_PAD,
    "video_pad": st.VIDEO_PAD,
    "think_start": st.THINK_START,
    "think_end": st.THINK_END,
    "no_think_suffix": NO_THINK_SUFFIX,
}

_TEMPLATE_BODY = r"""
{%- macro render_content(content) -%}
{%- if content is string -%}
{{- content -}}
{%- else -%}
{%- for part in content -%}
{%- if part.type == 'text' -%}{{- part.text -}}
{%- elif part.type == 'image' -%}{{- vision_start + image_pad + vision_end -}}
{%- elif part.type == 'video' -%}{{- vision_start + video_pad + vision_end -}}
{%- endif -%}
{%- endfor -%}
{%- endif -%}
{%- endmacro -%}
{%- macro text_of(content) -%}
{%- if content is string -%}{{- content -}}
{%- else -%}{%- for part in content -%}{%- if part.type == 'text' -%}{{- part.text -}}{%- endif -%}{%- endfor -%}
{%- endif -%}
{%- endmacro -%}
{%- set ns = namespace(no_think=false) -%}
{%- set forced = enable_thinking is defined and enable_thinking is not none -%}
{%- if forced -%}{%- set ns.no_think = not enable_thinking -%}{%- endif -%}
{%- for message in messages -%}
{%- if message.role == 'user' and not forced -%}
{%- set ns.no_think = (text_of(message.content) | trim).endswith(no_think_suffix) -%}
{%- endif -%}
{{- im_start + message.role + '\n' -}}
{%- if message.role == 'assistant' -%}
{%- set body = render_content(message.content) -%}
{%- if message.reasoning_content is defined and message.reasoning_content is not none -%}
{%- generation -%}
{{- think_start + '\n' + message.reasoning_content | trim + '\n' + think_end + '\n\n' + body + im_end -}}
{%- endgeneration -%}
{%- else -%}
{%- if ns.no_think and not body.startswith(think_start) -%}
{{- think_start + '\n\n' + think_end + '\n\n' -}}
{%- endif -%}
{%- generation -%}{{- body + im_end -}}{%- endgeneration -%}
{%- endif -%}
{{- '\n' -}}
{%- else -%}
{{- render_content(message.content) + im_end + '\n' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- im_start + 'assistant\n' -}}
{%- if ns.no_think -%}{{- think_start + '\n\n' + think_end + '\n\n' -}}{%- endif -%}
{%- endif -%}
"""

#: The Jinja chat template stored with every Keye tokenizer.
CHAT_TEMPLATE = (
    "".join(f"{{%- set {name} = '{token}' -%}}" for name, token in _TOKEN_VARIABLES.items()) + _TEMPLATE_BODY.strip()
)


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Ids that end a generated response: ``<|im_end|>`` (end of turn) and ``<|endoftext|>``."""
    return [token_id(tokenizer, st.IM_END), token_id(tokenizer, st.END_OF_TEXT)]


def token_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int:
    """The id of one special token, or a ValueError naming it when the tokenizer lacks it."""
    found = tokenizer.convert_tokens_to_ids(token)
    if found is None or found == tokenizer.unk_token_id or tokenizer.convert_ids_to_tokens(found) != token:
        raise ValueError(
            f"tokenizer {tokenizer.name_or_path!r} has no token {token!r}; load it with "
            "keye_model.tokenizer.load_tokenizer, which adds the Keye special tokens"
        )
    return found
