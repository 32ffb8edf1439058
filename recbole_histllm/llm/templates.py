"""The paper's prompts (appendix A.1, A.3; Fig. 3 reconstructed) as :class:`PromptTemplate` objects.

Target-side text placeholders: ``<TargetItemTitle>``, ``<TargetItemDesc>``, ``<ItemDescription>``;
history items: ``<Item_iTitle>``, ``<Item_iDesc>`` (text) and ``<Item_iImage>`` (slot).
The movie wording is the paper's; :func:`for_domain` rewrites it for news (MIND).
"""

from __future__ import annotations

from dataclasses import replace

from .prompt import PromptTemplate

_ANSWER = 'Answer with "Yes" or "No".'
_LIKED = "A user has given high ratings to the following movies: <HistoryList>."
_CF = "Additionally, we have information about the user's preferences encoded in the feature <UserID>."

#: Fig. 6 (TALLRec); also HistLLM's stage-1 prompt (Sec. 3.3).
TALLREC = PromptTemplate(
    f"{_LIKED} Leverage the information to predict whether the user would enjoy the movie titled "
    f"<TargetItemTitle> {_ANSWER}"
)
#: Fig. 7 (TALLRec-image): a projected image token after each title and after the target title.
TALLREC_IMAGE = PromptTemplate(
    f"{_LIKED} Leverage the information to predict whether the user would enjoy the movie titled "
    f"<TargetItemTitle><TargetItemImage> {_ANSWER}",
    slots={"Item_iImage": 1, "TargetItemImage": 1},
    history_item='"<Item_iTitle>"<Item_iImage>',
)
#: Fig. 8 (TALLRec-desc).
TALLREC_DESC = PromptTemplate(
    f"{_LIKED} Leverage the information to predict whether the user would enjoy the movie with the "
    f"description as follows: <TargetItemDesc> {_ANSWER}",
    history_item='"<Item_iDesc>"',
)
#: Fig. 11 (CoLLM): MF embeddings mapped into the <UserID>/<TargetItemID> slots.
COLLM = PromptTemplate(
    f"{_LIKED} {_CF} Using all available information, make a prediction about whether the user would "
    f"enjoy the movie titled <TargetItemTitle> with the feature <TargetItemID>? {_ANSWER}",
    slots={"UserID": 1, "TargetItemID": 1},
)
#: Fig. 12 (CoLLM-image).
COLLM_IMAGE = replace(
    COLLM,
    instruction=COLLM.instruction.replace("<TargetItemTitle>", "<TargetItemTitle><TargetItemImage>"),
    slots={"UserID": 1, "TargetItemID": 1, "Item_iImage": 1, "TargetItemImage": 1},
    history_item='"<Item_iTitle>"<Item_iImage>',
)
#: Fig. 11 for BinLLM: the same words, but <UserID>/<TargetItemID> are TEXT (binary codes).
BINLLM = replace(COLLM, slots={})
#: Fig. 12 for BinLLM-image.
BINLLM_IMAGE = replace(COLLM_IMAGE, slots={"Item_iImage": 1, "TargetItemImage": 1})


def histllm_template(
    history_encoder: bool = True,
    visual: bool = True,
    collaborative: bool = True,
    domain: str = "movie",
) -> PromptTemplate:
    """HistLLM's prompt (Fig. 3, reconstructed from Sec. 3.2 and Fig. 11's wording).

    ``history_encoder``: the history is ONE ``<HistoryInteractions>`` slot (UHEM, Eq. 8); False is
    the paper's "w/o UHEM": descriptions (and image tokens when ``visual``) inline, as Fig. 1.
    ``visual``: ``<Image>`` slot after the target description (VMA, Eq. 3); ``collaborative``:
    ``<UserID>``/``<ItemID>`` slots (CIA, Eq. 11-12).
    """
    slots: dict[str, int] = {}
    if history_encoder:
        liked = "A user has given high ratings to the following movies: <HistoryInteractions>."
        slots["HistoryInteractions"] = 1
        item = '"<Item_iDesc>"'
    else:
        liked = _LIKED
        item = '"<Item_iDesc>"<Item_iImage>' if visual else '"<Item_iDesc>"'
        if visual:
            slots["Item_iImage"] = 1
    target = "<ItemDescription>"
    if visual:
        target += "<Image>"
        slots["Image"] = 1
    if collaborative:
        slots.update({"UserID": 1, "ItemID": 1})
        text = (
            f"{liked} {_CF} Using all available information, make a prediction about whether the user would "
            f"enjoy the movie with the description as follows: {target} with the feature <ItemID>? {_ANSWER}"
        )
    else:
        text = (
            f"{liked} Leverage the information to predict whether the user would enjoy the movie with the "
            f"description as follows: {target} {_ANSWER}"
        )
    return for_domain(PromptTemplate(text, slots=slots, history_item=item), domain)


_NEWS_WORDS = (
    ("has given high ratings to the following movies", "has clicked the following news articles"),
    ("enjoy the movie", "click the news article"),
    ("the movie", "the news article"),
)


def for_domain(template: PromptTemplate, domain: str) -> PromptTemplate:
    """Rewrite the paper's movie wording for ``domain`` ("movie"/"netflix" unchanged, "news"/"mind")."""
    d = domain.lower()
    if d in ("movie", "movies", "netflix", "ml-100k", "ml-1m"):
        return template
    if d not in ("news", "mind"):
        raise ValueError(f"unknown prompt domain {domain!r}: use 'movie' or 'news'")
    text = template.instruction
    for old, new in _NEWS_WORDS:
        text = text.replace(old, new)
    return replace(template, instruction=text)
