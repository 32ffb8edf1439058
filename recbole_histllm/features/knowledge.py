"""Knowledge Enhancement (Sec. 3.2.1, Eq. 1): a ~20-word description per item, D_k = LLM(prompt(T_k)).

    python -m recbole_histllm.features.knowledge --dataset=movie [--data_path=dataset] [--llm=PATH]
        [--batch_size 16] [--max_new_tokens 40] [--domain movie|news] [--limit N]
        [--source overview|abstract|llm]

Reads ``<data_path>/<dataset>/<dataset>.text`` (TSV: ``item_id  title  description`` + optional
columns), fills every EMPTY ``description`` and writes the file back with all other columns
untouched. Generation is batched greedy decoding with left padding (the paper's appendix A.2
prompt, or a news variant for MIND). The file is rewritten atomically after every
``--flush_every`` batches, so a killed run resumes where it stopped (filled rows are skipped).
``--source=overview|abstract`` copies the first sentence(s) (<= ~40 words) of an existing column
instead of generating; on news (``--domain``, inferred from the dataset name: MIND) it defaults to
``abstract`` when the side file has that column (MIND's own summary of the article, written by its
editors, where an LLM could only guess from the headline); ``--source=llm`` generates anyway.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dataset_converters.cli import existing_dir, int_at_least, number_in, run_main
from dataset_converters.core import clean_text, read_text_rows
from recbole_histllm.features.files import atomic_write, feature_parser
from recbole_histllm.utils import InputError, UsageError

logger = logging.getLogger(__name__)

#: Appendix A.2, Fig. 9 (movie) and its news variant (MIND).
KE_PROMPTS = {
    "movie": (
        "Generate a concise movie description for the title {title} with around 20 words, "
        "highlighting the main theme and unique elements."
    ),
    "news": (
        "Generate a concise news description for the headline {title} with around 20 words, "
        "highlighting the main topic and key facts."
    ),
}
QUESTION_PREFIX = "#Question: "
ANSWER_PREFIX = " \n#Answer:"  # Fig. 9: "unique elements. \n#Answer:"

Generator = Callable[[Sequence[str]], list[str]]


# ---- the .text side file ---------------------------------------------------------------------
@dataclass
class TextTable:
    """The ``.text`` TSV as raw strings: other columns are written back byte for byte."""

    header: list[str]
    rows: list[list[str]] = field(default_factory=list)

    def col(self, name: str) -> int:
        return self.header.index(name)

    @classmethod
    def read(cls, path: str | os.PathLike) -> TextTable:
        """The side file as parsed by :func:`dataset_converters.core.read_text_rows`; needs ``item_id`` and
        ``title`` columns and adds an empty ``description`` column if absent."""
        header, rows = read_text_rows(path)
        for required in ("item_id", "title"):
            if required not in header:
                raise InputError(f"{path}: header has no {required!r} column: {header}")
        if "description" not in header:
            header.append("description")
            rows = [row + [""] for row in rows]
        return cls(header, rows)


def write_text_table(path: str | os.PathLike, table: TextTable) -> None:
    """Write atomically (temp file in the same folder, then rename): a kill never leaves half a file."""
    with atomic_write(path) as f:
        f.write("\t".join(table.header) + "\n")
        for r in table.rows:
            f.write("\t".join(r) + "\n")


# ---- text cleaning -----------------------------------------------------------------------------
_SENT_END = re.compile(r"(?<=[.!?])[\"')\]]?\s+")


def one_line(text: str | None) -> str:
    """The converters' TSV-safe text (:func:`dataset_converters.core.clean_text`) with every run of whitespace
    made one space: what goes into a prompt or a one-line description."""
    return " ".join(clean_text(text).split())


def _split_sentences(text: str) -> list[str]:
    return [s for s in _SENT_END.split(text) if s]


def first_sentences(text: str, max_words: int = 40) -> str:
    """Leading whole sentences totalling at most ``max_words`` words (at least the first
    sentence, itself cut to ``max_words`` words)."""
    text = one_line(text)
    if not text:
        return ""
    out: list[str] = []
    n = 0
    for s in _split_sentences(text):
        w = len(s.split())
        if out and n + w > max_words:
            break
        out.append(s)
        n += w
    words = " ".join(out).split()
    return " ".join(words[:max_words])


def postprocess_generation(text: str, max_words: int = 40, min_words: int = 8) -> str:
    """Turn a raw generation into one clean description.

    Stops at a new ``#Question``/``#Answer`` turn or a blank line, drops an echoed ``Answer:``
    prefix and wrapping quotes, removes tabs/newlines, keeps at most ``max_words`` words and cuts
    a dangling half sentence (from ``max_new_tokens``) when a full one of ``min_words`` exists.
    """
    text = (text or "").strip()
    text = re.split(r"#\s*(?:Question|Answer)\b|\n\s*\n", text, maxsplit=1)[0] if text else ""
    text = one_line(text)
    text = re.sub(r"^(?:#?\s*Answer\s*:\s*)", "", text, flags=re.I)
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    words = text.split()
    if len(words) > max_words:
        text = " ".join(words[:max_words])
    if text and not re.search(r"[.!?][\"')\]]?$", text):
        sents = _split_sentences(text)
        if len(sents) > 1:
            complete = " ".join(sents[:-1])
            if len(complete.split()) >= min_words:
                text = complete
    return text


# ---- the generator -----------------------------------------------------------------------------
def infer_domain(dataset: str) -> str:
    """``news`` for MIND-like dataset names, else ``movie``."""
    name = dataset.lower()
    return "news" if ("mind" in name or "news" in name) else "movie"


class LLMDescriber:
    """Batched greedy generation of descriptions with a causal LM (left padding).

    ``chat_template``: "auto" (default) wraps the appendix A.2 question as a user turn when the
    tokenizer has a chat template (instruct models follow it far better: SmolLM2-135M-Instruct
    otherwise echoes the title or starts new #Question turns), "off" uses the paper's plain
    ``#Question: ... \\n#Answer:`` text.
    """

    def __init__(
        self,
        model,
        tokenizer,
        domain: str = "movie",
        max_new_tokens: int = 40,
        chat_template: str = "auto",
        repetition_penalty: float = 1.0,
        device: str | None = None,
        use_bf16: bool = True,
    ) -> None:
        if domain not in KE_PROMPTS:
            raise ValueError(f"unknown domain {domain!r}: choose from {sorted(KE_PROMPTS)}")
        self.model = model
        self.tokenizer = tokenizer
        self.domain = domain
        self.max_new_tokens = max_new_tokens
        has_chat = bool(getattr(tokenizer, "chat_template", None))
        if chat_template == "on" and not has_chat:
            raise ValueError("--chat_template on, but the tokenizer has no chat template")
        self.use_chat = chat_template == "on" or (chat_template == "auto" and has_chat)
        self.repetition_penalty = repetition_penalty
        self.device = device or str(next(model.parameters()).device)
        self.use_bf16 = use_bf16

    def prompt(self, title: str) -> str:
        """The KE prompt for one title (Fig. 9), plain or chat-wrapped."""
        question = KE_PROMPTS[self.domain].format(title=one_line(title))
        if self.use_chat:
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
            )
        return QUESTION_PREFIX + question + ANSWER_PREFIX

    def __call__(self, titles: Sequence[str]) -> list[str]:
        import torch

        from recbole_histllm.llm import autocast

        tok = self.tokenizer
        tok.padding_side = "left"
        enc = tok(
            [self.prompt(t) for t in titles],
            return_tensors="pt",
            padding=True,
            add_special_tokens=not self.use_chat,
        ).to(self.device)
        with torch.no_grad(), autocast(self.device, enabled=self.use_bf16):
            out = self.model.generate(
                **enc,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                repetition_penalty=self.repetition_penalty,
                pad_token_id=tok.pad_token_id,
                use_cache=True,
            )
        new = out[:, enc["input_ids"].shape[1] :]
        return tok.batch_decode(new, skip_special_tokens=True)


# ---- the two fill modes ------------------------------------------------------------------------
def enhance_table(
    path: str | os.PathLike,
    generate: Generator,
    batch_size: int = 16,
    limit: int | None = None,
    flush_every: int = 1,
    progress: bool = True,
    max_words: int = 40,
) -> dict[str, float]:
    """Fill empty descriptions of the ``.text`` file at ``path`` with ``generate(titles)``.

    Resumable: rows already described are skipped; the file is rewritten atomically every
    ``flush_every`` batches and on interruption. An empty generation falls back to the title
    (so the row counts as done). Returns counters (generated, skipped, fallback, seconds, items/min).
    """
    from tqdm.auto import tqdm

    table = TextTable.read(path)
    c_title, c_desc = table.col("title"), table.col("description")
    todo = [i for i, r in enumerate(table.rows) if not r[c_desc].strip() and r[c_title].strip()]
    no_title = sum(1 for r in table.rows if not r[c_desc].strip() and not r[c_title].strip())
    skipped = len(table.rows) - len(todo) - no_title
    if limit is not None:
        todo = todo[:limit]
    stats = {"generated": 0, "skipped_filled": skipped, "no_title": no_title, "fallback_title": 0}
    t0 = time.time()
    pending = 0
    bar = tqdm(total=len(todo), desc="Knowledge Enhancement", unit="item", disable=not progress)
    try:
        for start in range(0, len(todo), batch_size):
            idx = todo[start : start + batch_size]
            titles = [table.rows[i][c_title] for i in idx]
            outs = generate(titles)
            if len(outs) != len(idx):
                raise RuntimeError(f"generator returned {len(outs)} texts for {len(idx)} titles")
            for i, title, raw in zip(idx, titles, outs, strict=True):
                desc = postprocess_generation(raw, max_words=max_words)
                if not desc:
                    desc = one_line(title)
                    stats["fallback_title"] += 1
                table.rows[i][c_desc] = desc
            stats["generated"] += len(idx)
            pending += 1
            bar.update(len(idx))
            if pending >= flush_every:
                write_text_table(path, table)
                pending = 0
    finally:
        bar.close()
        if pending:
            write_text_table(path, table)
    dt = time.time() - t0
    stats["seconds"] = round(dt, 2)
    stats["items_per_min"] = round(60 * stats["generated"] / dt, 1) if dt > 0 and stats["generated"] else 0.0
    return stats


def copy_source_column(
    path: str | os.PathLike, source: str, max_words: int = 40, limit: int | None = None
) -> dict[str, int]:
    """Fill empty descriptions from column ``source`` (first sentence(s), <= ``max_words`` words)."""
    table = TextTable.read(path)
    if source not in table.header:
        raise ValueError(f"{path}: no {source!r} column to copy descriptions from (columns: {table.header})")
    c_src, c_desc = table.col(source), table.col("description")
    stats = {"copied": 0, "skipped_filled": 0, "empty_source": 0}
    for r in table.rows:
        if r[c_desc].strip():
            stats["skipped_filled"] += 1
            continue
        if limit is not None and stats["copied"] >= limit:
            break
        text = first_sentences(r[c_src], max_words=max_words)
        if text:
            r[c_desc] = text
            stats["copied"] += 1
        else:
            stats["empty_source"] += 1
    write_text_table(path, table)
    return stats


# ---- CLI ---------------------------------------------------------------------------------------
def default_source(path: str | os.PathLike, domain: str) -> str:
    """``abstract`` for news whose side file has an abstract column (MIND), else ``llm`` (generate)."""
    return "abstract" if domain == "news" and "abstract" in TextTable.read(path).header else "llm"


def build_parser() -> argparse.ArgumentParser:
    p = feature_parser("recbole_histllm.features.knowledge", __doc__.split("\n")[0])
    p.add_argument("--llm", type=existing_dir, default=None, help="local Hugging Face causal LM folder (config key "
                   "llm_path)")
    p.add_argument("--batch_size", type=int_at_least(1), default=16)
    p.add_argument("--max_new_tokens", type=int_at_least(1), default=40)
    p.add_argument("--max_words", type=int_at_least(1), default=40)
    p.add_argument("--source", choices=["overview", "abstract", "llm"], default=None,
                   help="copy a column instead of generating (default: abstract on news when present, else llm)")
    p.add_argument("--domain", choices=["movie", "news"], default=None, help="default: inferred from --dataset")
    p.add_argument("--limit", type=int_at_least(1), default=None, help="process at most N items (smoke runs, timing)")
    p.add_argument("--flush_every", type=int_at_least(1), default=1, help="rewrite the file every N batches")
    p.add_argument("--chat_template", choices=["auto", "on", "off"], default="auto")
    p.add_argument("--repetition_penalty", type=number_in(0, low_open=True), default=1.0)
    p.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    p.add_argument("--dtype", default="float32", help="weights dtype; bf16 autocast is used where supported")
    p.add_argument("--no_bf16", action="store_true", help="disable bf16 autocast")
    p.add_argument("--cache_dir", default=None, help="cache for the dequantized default LLM")
    return p


def main(argv: Sequence[str] | None = None, generator: Generator | None = None) -> dict:
    """CLI entry point; ``generator`` replaces the LLM (tests)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    path = Path(args.data_path) / args.dataset / f"{args.dataset}.text"
    if not path.is_file():
        raise UsageError(f"no side file {path} (run the dataset converter first)")
    source = args.source or default_source(path, args.domain or infer_domain(args.dataset))
    if source != "llm":
        stats = copy_source_column(path, source, max_words=args.max_words, limit=args.limit)
        logger.info("descriptions from column %r: %s", source, stats)
        return stats
    if generator is None:
        table = TextTable.read(path)
        c_title, c_desc = table.col("title"), table.col("description")
        if not any(not r[c_desc].strip() and r[c_title].strip() for r in table.rows):
            logger.info("every item of %s already has a description: nothing to generate", path)
            return {"generated": 0, "skipped_filled": len(table.rows)}
        import torch

        from recbole_histllm.llm import load_backbone

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        model, tok = load_backbone(args.llm, cache_dir=args.cache_dir, dtype=args.dtype, device=device)
        domain = args.domain or infer_domain(args.dataset)
        generator = LLMDescriber(
            model,
            tok,
            domain=domain,
            max_new_tokens=args.max_new_tokens,
            chat_template=args.chat_template,
            repetition_penalty=args.repetition_penalty,
            device=device,
            use_bf16=not args.no_bf16,
        )
        logger.info(
            "KE with %s, domain %s, chat template %s", args.llm or "the default LLM", domain, generator.use_chat
        )
    stats = enhance_table(
        path,
        generator,
        batch_size=args.batch_size,
        limit=args.limit,
        flush_every=args.flush_every,
        max_words=args.max_words,
    )
    logger.info("Knowledge Enhancement done: %s", stats)
    return stats


if __name__ == "__main__":
    sys.exit(run_main(main, errors=()))
