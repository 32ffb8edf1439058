"""Prompt templates with embedding slots, built token segment by token segment.

A :class:`PromptTemplate` is an instruction with ``<Placeholders>`` (the paper's notation).
A placeholder is either an embedding *slot* (declared in ``slots`` with its number of tokens,
e.g. ``<Image>``, ``<HistoryInteractions>``, ``<UserID>``) or *text* taken from the sample
(``<TargetItemTitle>``, ``<ItemDescription>``, a BinLLM bit string ...). ``<HistoryList>``
expands to the user's history, one ``history_item`` sub-template per item (oldest first), whose
placeholders are written ``<Item_iTitle>``, ``<Item_iDesc>``, ``<Item_iImage>`` (Fig. 1/7/12).

:class:`PromptBuilder` renders a batch: the text between slots is tokenized run by run and slot
tokens are appended in between, so every injection position is known from construction and is
returned as a :class:`SlotIndex` (no token ids are searched afterwards). Rows are left padded so
the answer position of every row is the last one. ``max_prompt_tokens`` only ever drops history
items (oldest first); the question, the target fields and the answer slot are never cut.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache

import torch
from transformers import PreTrainedTokenizerBase

PLACEHOLDER = re.compile(r"<([A-Za-z_][A-Za-z0-9_]*)>")
HISTORY_LIST = "HistoryList"
ITEM_PREFIX = "Item_i"
_SENTINEL = "\x00PROMPT\x00"


@dataclass(frozen=True)
class PromptTemplate:
    """An instruction with placeholders.

    ``instruction``: text with ``<Name>`` placeholders, at most one ``<HistoryList>``.
    ``slots``: placeholder name -> number of embedding tokens it expands to (k >= 1); names
    starting with ``Item_i`` are per history item. Every other placeholder is text from the sample.
    Plain format: ``question_prefix + instruction + answer_prefix`` (the paper's
    ``#Question: ... \\n#Answer:``); chat format: the instruction is the user message and the
    assistant turn starts with ``chat_answer_prefix``.
    """

    instruction: str
    slots: Mapping[str, int] = field(default_factory=dict)
    history_item: str = '"<Item_iTitle>"'
    history_sep: str = ", "
    empty_history: str = "none"
    question_prefix: str = "#Question: "
    answer_prefix: str = " \n#Answer:"  # the appendix's `"No". \n#Answer:` (a space before the newline)
    chat_answer_prefix: str = "#Answer:"

    def placeholders(self) -> set[str]:
        """All placeholder names used by the instruction and the history item template."""
        return set(PLACEHOLDER.findall(self.instruction)) | set(PLACEHOLDER.findall(self.history_item))

    def text_fields(self) -> set[str]:
        """Placeholder names filled with text from the sample (top level and per item)."""
        return {p for p in self.placeholders() if p not in self.slots and p != HISTORY_LIST}


@dataclass
class PromptSample:
    """One row: top-level text fields and the history (oldest first) as per-item text fields.

    History dict keys drop the ``Item_i`` prefix: ``<Item_iTitle>`` reads ``item["Title"]``.
    """

    fields: Mapping[str, str] = field(default_factory=dict)
    history: Sequence[Mapping[str, str]] = ()


@dataclass
class SlotIndex:
    """Where one slot kind sits in a batch: ``inputs_embeds[batch_idx, pos] = vector``.

    ``item_idx``: index into the sample's ORIGINAL history list (per-item slots; -1 otherwise);
    ``slot_idx``: 0..k-1 for a slot that expands to k tokens.
    """

    name: str
    k: int
    per_item: bool
    batch_idx: torch.Tensor
    pos: torch.Tensor
    item_idx: torch.Tensor
    slot_idx: torch.Tensor

    def __len__(self) -> int:
        return int(self.pos.numel())

    def to(self, device: torch.device | str) -> SlotIndex:
        return replace(
            self,
            batch_idx=self.batch_idx.to(device),
            pos=self.pos.to(device),
            item_idx=self.item_idx.to(device),
            slot_idx=self.slot_idx.to(device),
        )


@dataclass
class PromptBatch:
    """A left-padded batch. ``slots`` maps each slot name to its :class:`SlotIndex`;
    ``history_kept[b]`` = number of newest history items kept, ``truncated[b]`` = items dropped."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    slots: dict[str, SlotIndex]
    lengths: torch.Tensor
    history_kept: torch.Tensor
    truncated: torch.Tensor
    overflow: torch.Tensor
    prefix_len: int = 0  # every row starts with the builder's first prefix_len prefix_ids (0: none shared)

    def to(self, device: torch.device | str) -> PromptBatch:
        return replace(
            self,
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            slots={k: v.to(device) for k, v in self.slots.items()},
        )

    def without_prefix(self, n: int) -> PromptBatch:
        """The batch with every row's first ``n`` real tokens (the shared prefix) cut out, still left
        padded; slot positions move with their tokens. Score it after the prefix's key/value states."""
        if n <= 0:
            return self
        if n > self.prefix_len:
            raise ValueError(f"only {self.prefix_len} leading tokens are shared by every row, not {n}")
        width = self.input_ids.shape[1]
        offset = width - self.attention_mask.sum(1)  # left padding per row
        col = torch.arange(width - n, device=self.input_ids.device)[None, :]
        src = col + n * (col >= offset[:, None])  # pads stay, real tokens shift left by n
        return replace(
            self,
            input_ids=self.input_ids.gather(1, src),
            attention_mask=self.attention_mask.gather(1, src),
            slots={k: replace(v, pos=v.pos - n) for k, v in self.slots.items()},
            lengths=self.lengths - n,
            prefix_len=0,
        )


@dataclass
class AnswerTokens:
    """Token ids read at the answer position (resolved from the tokenizer, never hard-coded)."""

    yes: int
    no: int
    yes_text: str
    no_text: str


def resolve_answer_tokens(
    tokenizer: PreTrainedTokenizerBase, context: str = " \n#Answer:", yes: str = "Yes", no: str = "No"
) -> AnswerTokens:
    """Ids of the first token the model would write for ``yes``/``no`` right after ``context``.

    After a prefix ending in a non-space (``#Answer:``) the answer is written with a leading
    space (``" Yes"``); after whitespace (a chat turn header) without. The id is the first token
    that ``tokenizer(context + answer)`` adds beyond ``tokenizer(context)``.
    """
    sep = "" if (context == "" or context[-1].isspace()) else " "

    def first_new(word: str) -> tuple[int, str]:
        ctx = tokenizer.encode(context, add_special_tokens=False) if context else []
        full = tokenizer.encode(context + sep + word, add_special_tokens=False)
        if full[: len(ctx)] == ctx and len(full) > len(ctx):
            tid = full[len(ctx)]
        else:  # the answer merged with the context's last token: tokenize it on its own
            tid = tokenizer.encode(sep + word, add_special_tokens=False)[0]
        return tid, tokenizer.decode([tid])

    y, yt = first_new(yes)
    n, nt = first_new(no)
    if y == n:
        raise ValueError(f"{yes!r} and {no!r} start with the same token ({y}) for this tokenizer")
    return AnswerTokens(yes=y, no=n, yes_text=yt, no_text=nt)


@dataclass
class Slot:
    """One slot of a filled template: ``item_idx`` indexes the sample's history (-1: top level)."""

    name: str
    k: int
    item_idx: int


@lru_cache(maxsize=256)
def _parse(text: str) -> tuple[tuple[bool, str], ...]:
    """Split a template string into ``(is_placeholder, text_or_name)`` pieces."""
    out: list[tuple[bool, str]] = []
    last = 0
    for m in PLACEHOLDER.finditer(text):
        if m.start() > last:
            out.append((False, text[last : m.start()]))
        out.append((True, m.group(1)))
        last = m.end()
    if last < len(text):
        out.append((False, text[last:]))
    return tuple(out)


def _text(values: Mapping[str, str], name: str, where: str) -> str:
    try:
        value = values[name]
    except KeyError:
        raise KeyError(f"prompt placeholder <{name}> needs a text value in {where}") from None
    return "" if value is None else str(value)


def fill_template(template: PromptTemplate, sample: PromptSample, first_item: int = 0) -> list[str | Slot]:
    """``template.instruction`` filled from ``sample``: text pieces and :class:`Slot` s in prompt order.

    ``<HistoryList>`` lists the history from index ``first_item`` on (``empty_history`` when none).
    """
    segs: list[str | Slot] = []
    history = list(sample.history)
    for is_ph, v in _parse(template.instruction):
        if not is_ph:
            segs.append(v)
        elif v == HISTORY_LIST:
            kept = range(first_item, len(history))
            if len(kept) == 0:
                segs.append(template.empty_history)
            for n, i in enumerate(kept):
                if n:
                    segs.append(template.history_sep)
                for is_ph2, w in _parse(template.history_item):
                    if not is_ph2:
                        segs.append(w)
                    elif w in template.slots:
                        segs.append(Slot(w, int(template.slots[w]), i))
                    else:
                        key = w[len(ITEM_PREFIX) :] if w.startswith(ITEM_PREFIX) else w
                        segs.append(_text(history[i], key, f"history item {i}"))
        elif v in template.slots:
            segs.append(Slot(v, int(template.slots[v]), -1))
        else:
            segs.append(_text(sample.fields, v, "the sample's fields"))
    return segs


class PromptBuilder:
    """Render and tokenize :class:`PromptSample` rows of one :class:`PromptTemplate`.

    ``use_chat_template`` (default False): wrap the instruction as the user turn of the
    tokenizer's chat template and start the assistant turn with ``chat_answer_prefix``. Off by
    default because the paper's prompts are plain ``#Question/#Answer`` text (as CoLLM/TALLRec),
    the fine-tuned models do not need it, and SmolLM2's template adds ~30 tokens per row (a
    system line); turn it on for zero-shot scoring with an instruct model.
    ``max_prompt_tokens``: drop the oldest history items until the row fits; rows that do not fit
    even without history are kept whole and counted in ``stats["overflow_rows"]``.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        template: PromptTemplate,
        max_prompt_tokens: int | None = None,
        use_chat_template: bool = False,
        system_prompt: str | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.template = template
        self.max_prompt_tokens = max_prompt_tokens
        self.use_chat_template = bool(use_chat_template and getattr(tokenizer, "chat_template", None))
        if use_chat_template and not self.use_chat_template:
            raise ValueError("use_chat_template=True but the tokenizer has no chat template")
        for name, k in template.slots.items():
            if int(k) < 1:
                raise ValueError(f"slot <{name}> must expand to at least one token, got {k}")
        self._main = _parse(template.instruction)
        self._item = _parse(template.history_item)
        if sum(1 for is_ph, v in self._main if is_ph and v == HISTORY_LIST) > 1:
            raise ValueError("<HistoryList> may appear at most once in a template")
        if any(is_ph and v == HISTORY_LIST for is_ph, v in self._item):
            raise ValueError("<HistoryList> cannot appear inside history_item")
        if self.use_chat_template:
            messages = []
            if system_prompt is not None:
                messages.append({"role": "system", "content": system_prompt})
            messages.append({"role": "user", "content": _SENTINEL})
            rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            head, tail = rendered.split(_SENTINEL)
            self._head, self._tail = head, tail + template.chat_answer_prefix
        else:
            self._head, self._tail = template.question_prefix, template.answer_prefix
        self.answer_tokens = resolve_answer_tokens(tokenizer, self._tail)
        self.filler_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._anchor = self._detect_anchor()
        self.prefix_ids = self._fixed_prefix()
        self.stats: dict[str, int] = {"rows": 0, "truncated_rows": 0, "dropped_items": 0, "overflow_rows": 0}

    # ---- tokenization of text runs ------------------------------------------------------------
    def _detect_anchor(self) -> list[int] | None:
        """SentencePiece-style tokenizers prepend a word marker to every separately encoded
        string; non-first runs are then encoded after an anchor ("\\n") that is cut off again."""
        enc = self.tokenizer.encode
        a = enc("\n", add_special_tokens=False)
        b = enc("\nx", add_special_tokens=False)
        if b[: len(a)] == a and enc("x", add_special_tokens=False) != b[len(a) :]:
            return a
        return None

    def _fixed_prefix(self) -> list[int]:
        """Token ids every row of this template starts with: the head (``question_prefix`` or the chat
        template's opening) and the instruction's text before its first placeholder, known from the
        template alone. When a text placeholder follows (``<HistoryList>``: "movies: " + '"Heat"'),
        the last token is left out, since a tokenizer may merge it with the row's text; rows are still
        checked against these ids in :meth:`__call__` (``PromptBatch.prefix_len``)."""
        text, ends_at_slot = self._head, False
        for is_ph, v in self._main:
            if is_ph:
                ends_at_slot = v in self.template.slots
                break
            text += v
        if not text:  # no text before the first slot: nothing shared (an empty run adds no tokens)
            return []
        ids = self._encode_run(text, first=True)
        return ids if ends_at_slot else ids[:-1]

    def _encode_run(self, text: str, first: bool) -> list[int]:
        if first:
            return self.tokenizer.encode(text, add_special_tokens=not self.use_chat_template)
        if self._anchor is not None:
            ids = self.tokenizer.encode("\n" + text, add_special_tokens=False)
            if ids[: len(self._anchor)] == self._anchor:
                return ids[len(self._anchor) :]
        return self.tokenizer.encode(text, add_special_tokens=False)

    # ---- rendering ----------------------------------------------------------------------------
    def _segments(self, sample: PromptSample, first_item: int) -> list[str | Slot]:
        return [self._head, *fill_template(self.template, sample, first_item), self._tail]

    def _tokenize(self, segs: list[str | Slot]) -> tuple[list[int], list[tuple[str, int, int, int]]]:
        """Token ids and (slot name, pos, item_idx, slot_idx) for a segment list."""
        runs: list[str | Slot] = []
        buf: list[str] = []
        for s in segs:
            if isinstance(s, Slot):
                runs.append("".join(buf))
                buf = []
                runs.append(s)
            else:
                buf.append(s)
        runs.append("".join(buf))
        ids: list[int] = []
        slots: list[tuple[str, int, int, int]] = []
        for j, r in enumerate(runs):
            if isinstance(r, Slot):
                for t in range(r.k):
                    slots.append((r.name, len(ids), r.item_idx, t))
                    ids.append(self.filler_id)
            elif r:
                ids.extend(self._encode_run(r, first=(j == 0)))
        return ids, slots

    def encode(self, sample: PromptSample) -> tuple[list[int], list[tuple[str, int, int, int]], int, bool]:
        """One row: ``(ids, slots, first_kept_history_index, overflow)`` honouring ``max_prompt_tokens``."""
        n = len(sample.history)
        ids, slots = self._tokenize(self._segments(sample, 0))
        limit = self.max_prompt_tokens
        if limit is None or len(ids) <= limit:
            return ids, slots, 0, False
        has_list = any(is_ph and v == HISTORY_LIST for is_ph, v in self._main)
        if not has_list or n == 0:
            return ids, slots, 0, True
        # largest number of newest items that fits: binary search on the first kept index
        lo, hi = 1, n  # first kept index; n = no history
        best: tuple[list[int], list[tuple[str, int, int, int]], int] | None = None
        while lo <= hi:
            mid = (lo + hi) // 2
            cand = self._tokenize(self._segments(sample, mid))
            if len(cand[0]) <= limit:
                best, hi = (cand[0], cand[1], mid), mid - 1
            else:
                lo = mid + 1
        if best is None:
            ids, slots = self._tokenize(self._segments(sample, n))
            return ids, slots, n, True
        return best[0], best[1], best[2], False

    def render_text(self, sample: PromptSample, slot_text: str | None = None) -> str:
        """The prompt as text (debugging, tests): slots shown as ``<Name>`` or ``slot_text``."""
        out = []
        for s in self._segments(sample, 0):
            if isinstance(s, Slot):
                out.append((slot_text if slot_text is not None else f"<{s.name}>") * s.k)
            else:
                out.append(s)
        return "".join(out)

    def __call__(self, samples: Sequence[PromptSample]) -> PromptBatch:
        """Tokenize, left pad and index a batch of samples."""
        rows = [self.encode(s) for s in samples]
        bsz = len(rows)
        width = max((len(r[0]) for r in rows), default=0)
        input_ids = torch.full((bsz, width), self.filler_id, dtype=torch.long)
        attention_mask = torch.zeros((bsz, width), dtype=torch.long)
        per_slot: dict[str, list[tuple[int, int, int, int]]] = {name: [] for name in self.template.slots}
        kept, dropped, overflow, lengths = [], [], [], []
        for b, ((ids, slots, first, over), sample) in enumerate(zip(rows, samples, strict=True)):
            off = width - len(ids)
            input_ids[b, off:] = torch.tensor(ids, dtype=torch.long)
            attention_mask[b, off:] = 1
            for name, pos, item, t in slots:
                per_slot[name].append((b, off + pos, item, t))
            n = len(sample.history)
            kept.append(n - first)
            dropped.append(first)
            overflow.append(over)
            lengths.append(len(ids))
        prefix = self.prefix_ids
        shared = len(prefix) if rows and all(r[0][: len(prefix)] == prefix for r in rows) else 0
        self.stats["rows"] += bsz
        self.stats["truncated_rows"] += sum(1 for d in dropped if d > 0)
        self.stats["dropped_items"] += sum(dropped)
        self.stats["overflow_rows"] += sum(overflow)
        index = {}
        for name, entries in per_slot.items():
            t = torch.tensor(entries, dtype=torch.long).reshape(-1, 4)
            index[name] = SlotIndex(
                name=name,
                k=int(self.template.slots[name]),
                per_item=name.startswith(ITEM_PREFIX),
                batch_idx=t[:, 0],
                pos=t[:, 1],
                item_idx=t[:, 2],
                slot_idx=t[:, 3],
            )
        return PromptBatch(
            input_ids=input_ids,
            attention_mask=attention_mask,
            slots=index,
            lengths=torch.tensor(lengths, dtype=torch.long),
            history_kept=torch.tensor(kept, dtype=torch.long),
            truncated=torch.tensor(dropped, dtype=torch.long),
            overflow=torch.tensor(overflow, dtype=torch.bool),
            prefix_len=shared,
        )

    def reset_stats(self) -> dict[str, int]:
        """Return the truncation counters and zero them (call once per epoch for logging)."""
        out = dict(self.stats)
        for k in self.stats:
            self.stats[k] = 0
        return out


def inject_embeddings(inputs_embeds: torch.Tensor, index: SlotIndex, vectors: torch.Tensor) -> torch.Tensor:
    """Return ``inputs_embeds`` with the slot positions of ``index`` replaced by ``vectors``.

    ``vectors``: top-level slot -> ``(B, d)`` (k = 1) or ``(B, k, d)``; per-item slot ->
    ``(B, H, d)`` or ``(B, H, k, d)`` indexed by the ORIGINAL history position. Out of place,
    so gradients flow into ``vectors`` (and into ``inputs_embeds`` at the other positions).
    """
    if len(index) == 0:
        return inputs_embeds
    bsz, d = vectors.shape[0], vectors.shape[-1]
    if index.per_item:
        v = vectors.reshape(bsz, -1, index.k, d)
        values = v[index.batch_idx, index.item_idx, index.slot_idx]
    else:
        v = vectors.reshape(bsz, index.k, d)
        values = v[index.batch_idx, index.slot_idx]
    return inputs_embeds.index_put((index.batch_idx, index.pos), values.to(inputs_embeds.dtype))


def encode_item_texts(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_tokens: int = 32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenize item texts (UHEM's s_k = Tokenizer(D_k), Eq. 4) into a RIGHT-padded id table.

    Returns ``(ids (N, L), mask (N, L))`` with ``L = min(max_tokens, longest)``, no special
    tokens; embed with the backbone's input embedding table for Eq. 5. Empty texts get one pad
    token with mask 0.
    """
    rows = [tokenizer.encode(t or "", add_special_tokens=False)[:max_tokens] for t in texts]
    width = max([len(r) for r in rows] + [1])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
    return ids, mask
