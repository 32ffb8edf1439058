"""LLM plumbing shared by HistLLM and the LLM baselines (plain torch / transformers / peft).

- :mod:`.backbone`: ``load_backbone`` (local HF folder or the default SmolLM2 GGUF, dequantized
  once into a cache), ``load_tokenizer``, ``tiny_llm`` for tests.
- :mod:`.prompt`: templates with embedding slots, the batch builder, ``inject_embeddings``.
- :mod:`.templates`: the paper's prompts (Fig. 3, 6-8, 11-12).
- :mod:`.scoring`: P(Yes) at the answer position, BCE.
- :mod:`.lora`: LoRA, trainable-only state dicts, bf16 autocast, gradient checkpointing.
- :mod:`.vlm`: a local vision-language model and its processor for zero-shot P(Yes) over an
  interleaved text and poster prompt (ZeroShot's ``vlm_path``); imported on use.
"""

from .backbone import (
    CACHE_ENV,
    DEFAULT_MODEL_NAME,
    RANDOM_SHAPES,
    BackboneNotFoundError,
    QuantizationUnavailableError,
    default_cache_root,
    dequantize_default,
    find_default_gguf,
    load_backbone,
    load_tokenizer,
    prepare_tokenizer,
    quantization_config,
    random_backbone,
    resolve_llm_path,
    tiny_llm,
)
from .lora import (
    apply_lora,
    autocast,
    bf16_supported,
    count_parameters,
    enable_gradient_checkpointing,
    freeze_lora,
    load_partial_state_dict,
    lora_state_dict,
    set_lora_trainable,
    trainable_state_dict,
    unfreeze_lora,
)
from .prompt import (
    AnswerTokens,
    PromptBatch,
    PromptBuilder,
    PromptSample,
    PromptTemplate,
    SlotIndex,
    encode_item_texts,
    inject_embeddings,
    resolve_answer_tokens,
)
from .scoring import (
    build_inputs_embeds,
    input_embeddings,
    last_token_logits,
    position_ids_from_mask,
    score_batch,
    yes_no_bce,
    yes_no_logits,
    yes_probability,
)
from .templates import (
    BINLLM,
    BINLLM_IMAGE,
    COLLM,
    COLLM_IMAGE,
    TALLREC,
    TALLREC_DESC,
    TALLREC_IMAGE,
    for_domain,
    histllm_template,
)

__all__ = [
    "BINLLM",
    "BINLLM_IMAGE",
    "CACHE_ENV",
    "COLLM",
    "COLLM_IMAGE",
    "DEFAULT_MODEL_NAME",
    "TALLREC",
    "TALLREC_DESC",
    "TALLREC_IMAGE",
    "AnswerTokens",
    "BackboneNotFoundError",
    "PromptBatch",
    "PromptBuilder",
    "PromptSample",
    "PromptTemplate",
    "QuantizationUnavailableError",
    "SlotIndex",
    "apply_lora",
    "autocast",
    "bf16_supported",
    "build_inputs_embeds",
    "count_parameters",
    "default_cache_root",
    "dequantize_default",
    "enable_gradient_checkpointing",
    "encode_item_texts",
    "find_default_gguf",
    "for_domain",
    "freeze_lora",
    "histllm_template",
    "inject_embeddings",
    "input_embeddings",
    "last_token_logits",
    "load_backbone",
    "load_partial_state_dict",
    "load_tokenizer",
    "lora_state_dict",
    "position_ids_from_mask",
    "prepare_tokenizer",
    "quantization_config",
    "resolve_answer_tokens",
    "resolve_llm_path",
    "score_batch",
    "set_lora_trainable",
    "tiny_llm",
    "random_backbone",
    "RANDOM_SHAPES",
    "trainable_state_dict",
    "unfreeze_lora",
    "yes_no_bce",
    "yes_no_logits",
    "yes_probability",
]
