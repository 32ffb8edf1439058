"""Zero-shot P(Yes) with a vision-language model over titles and posters (ZeroShot's ``vlm_path``).

The paper's Fig. 7 (TALLRec-image) becomes ONE user chat message whose content interleaves text
and image entries: a poster after every liked history title and after the target title (an item
without a poster keeps its title; its image entry is left out). The processor's own chat template
renders it (``add_generation_prompt=True``), the assistant turn starts with ``#Answer:`` as in the
text ZeroShot, and the processor tokenizes the batch with its images, left padded. P(Yes) is read
at the last position with the Yes/No token ids of :func:`.prompt.resolve_answer_tokens` (the
processor's tokenizer) through :func:`.scoring.yes_no_logits`, as for the text backbone.
Nothing is ever downloaded: every ``from_pretrained`` call runs with ``local_files_only=True``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import PreTrainedModel, ProcessorMixin

from dataset_converters.core import image_files
from recbole_histllm.utils import UsageError, config_value

from .backbone import DTypeLike, _to_dtype, prepare_tokenizer
from .prompt import _SENTINEL, AnswerTokens, PromptSample, PromptTemplate, fill_template, resolve_answer_tokens
from .scoring import yes_no_logits

logger = logging.getLogger(__name__)

_UNSET = (None, "", "~", "None", "null")  # ("~" stays a string on the command line)


def vlm_settings(config) -> tuple[Path, Path] | None:
    """``(vlm_path, poster_dir)`` from the config keys, or None when ``vlm_path`` is unset.

    Raises :class:`UsageError` naming the key when a folder does not exist or ``poster_dir`` is unset.
    """
    vlm = config_value(config, "vlm_path")
    if vlm in _UNSET:
        return None
    path = Path(str(vlm)).expanduser()
    if not path.is_dir():
        raise UsageError(f"config key `vlm_path` points to {str(path)!r}, which is not a folder "
                         "(a local Hugging Face model folder; nothing is downloaded)")
    posters = config_value(config, "poster_dir")
    if posters in _UNSET:
        raise UsageError(f"config key `poster_dir` is not set: vlm_path={vlm} needs the poster folder "
                         "(<raw item id>.jpg|.png, e.g. ../shared/data/movie/posters)")
    poster_dir = Path(str(posters)).expanduser()
    if not poster_dir.is_dir():
        raise UsageError(f"config key `poster_dir` points to {str(poster_dir)!r}, which is not a folder")
    return path, poster_dir


def load_vlm(
    path: str | os.PathLike,
    dtype: DTypeLike = torch.float32,
    device: str | torch.device | None = None,
    quantization=None,
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """``(model, processor)`` of a local image-text-to-text folder (LLaVA-1.5, Qwen2-VL, SmolVLM ...),
    the model in eval mode with ``use_cache`` off, the processor's tokenizer left padded."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    prepare_tokenizer(processor.tokenizer)
    kwargs = {"dtype": _to_dtype(dtype), "local_files_only": True}
    if quantization is not None:  # bitsandbytes places the quantized weights itself
        kwargs.update(quantization_config=quantization, device_map={"": torch.device(device or "cuda")})
        device = None
    model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
    model.config.use_cache = False
    if device is not None:
        model.to(device)
    return model.eval(), processor


def find_posters(poster_dir: str | os.PathLike, raw_ids: Sequence[str]) -> list[Path | None]:
    """``<poster_dir>/<raw id>.jpg`` (or ``.png``) per item id, None where there is none; the number
    of items without a poster is logged once. ``raw_ids[0]`` is RecBole's padding token (always None)."""
    files, _ = image_files(poster_dir)
    posters: list[Path | None] = [None] + [files.get(raw) for raw in list(raw_ids)[1:]]
    missing = sum(p is None for p in posters[1:])
    if missing:
        logger.warning(f"poster_dir {poster_dir}: {missing} of {len(posters) - 1} items have no poster "
                       "(<raw item id>.jpg|.png|...); their images are left out of the prompt, their titles stay")
    return posters


def _open_image(path: str | os.PathLike):
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")


class VLMPromptBuilder:
    """Render and process :class:`PromptSample` rows of ``template`` (Fig. 7) for a VLM processor.

    The template's slots are the image positions: a per-item slot reads the history item's
    ``Image`` value, a top-level slot the sample's field of its name (``TargetItemImage``); a
    value is a poster path, None (no poster) leaves the image entry out.
    """

    def __init__(self, processor: ProcessorMixin, template: PromptTemplate) -> None:
        self.processor = processor
        self.template = template
        probe = [{"role": "user", "content": [{"type": "text", "text": _SENTINEL}]}]
        tail = self.processor.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
        tail = tail.split(_SENTINEL)[1]
        self._answer = ("" if not tail or tail[-1].isspace() else " ") + template.chat_answer_prefix
        self.answer_tokens: AnswerTokens = resolve_answer_tokens(processor.tokenizer, tail + self._answer)

    def messages(self, sample: PromptSample) -> tuple[list[dict], list]:
        """The user message (text and image entries in prompt order) and its images' paths."""
        content: list[dict] = []
        images = []
        for seg in fill_template(self.template, sample):
            if isinstance(seg, str):
                if content and content[-1]["type"] == "text":
                    content[-1]["text"] += seg
                elif seg:
                    content.append({"type": "text", "text": seg})
                continue
            values = sample.history[seg.item_idx] if seg.item_idx >= 0 else sample.fields
            path = values.get(seg.name.removeprefix("Item_i"))
            if path is not None:
                content.append({"type": "image"})
                images.append(path)
        return [{"role": "user", "content": content}], images

    def render(self, sample: PromptSample) -> tuple[str, list]:
        """The chat text of one row up to the answer position (the processor expands its image
        tokens) and its images' paths in prompt order."""
        messages, images = self.messages(sample)
        text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text + self._answer, images

    def __call__(self, samples: Sequence[PromptSample]):
        """The processor's left-padded batch (``input_ids``, ``attention_mask``, pixel inputs)."""
        rows = [self.render(s) for s in samples]
        texts = [text for text, _ in rows]
        images = [[_open_image(p) for p in paths] for _, paths in rows]
        bos = self.processor.tokenizer.bos_token
        kwargs = {"add_special_tokens": not (bos and texts and texts[0].startswith(bos))}  # as apply_chat_template
        if any(images):
            kwargs["images"] = images
        return self.processor(text=texts, padding=True, return_tensors="pt", **kwargs)


def _own_positions(model: torch.nn.Module) -> bool:
    """Whether the model derives its positions from the images itself (Qwen2-VL's M-RoPE)."""
    return any(hasattr(m, "get_rope_index") for m in (model, getattr(model, "model", None)))


def vlm_yes_no_logits(model: torch.nn.Module, inputs, answer: AnswerTokens) -> torch.Tensor:
    """``(B, 2)`` Yes/No logits at the last position of a :class:`VLMPromptBuilder` batch."""
    inputs = dict(inputs)
    input_ids, attention_mask = inputs.pop("input_ids"), inputs.pop("attention_mask")
    extra = {k: v.to(model.dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in inputs.items()}
    if _own_positions(model):
        extra["position_ids"] = None
    return yes_no_logits(model, answer, attention_mask, input_ids=input_ids, **extra)


__all__ = ["VLMPromptBuilder", "find_posters", "load_vlm", "vlm_settings", "vlm_yes_no_logits"]
