"""Prompt construction, slot positions and truncation on a tiny LLM with the real SmolLM2 tokenizer."""

from __future__ import annotations

import pytest
import torch

from recbole_histllm.llm import (
    BINLLM,
    COLLM,
    COLLM_IMAGE,
    TALLREC,
    TALLREC_IMAGE,
    PromptBuilder,
    PromptSample,
    PromptTemplate,
    build_inputs_embeds,
    histllm_template,
    inject_embeddings,
    load_tokenizer,
    resolve_answer_tokens,
    tiny_llm,
)

PAPER_FIG6 = (
    "#Question: A user has given high ratings to the following movies: <Item_1Title...<Item_nTitle>. Leverage the "
    'information to predict whether the user would enjoy the movie titled <TargetItemTitle> Answer with "Yes" or '
    '"No". \\n#Answer:'
)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def _sample(n: int, target: str = "Toy Story (1995)") -> PromptSample:
    hist = [{"Title": f"Old Movie {i} (19{60 + i})", "Desc": f"desc {i}"} for i in range(n)]
    return PromptSample({"TargetItemTitle": target, "ItemDescription": "A toy cowboy.", "UserID": "0110"}, hist)


def test_tokenizer_left_padding_and_answer_ids(tok):
    assert tok.padding_side == "left" and tok.pad_token_id is not None
    ans = resolve_answer_tokens(tok, "\n#Answer:")
    assert tok.decode([ans.yes]).strip() == "Yes" and tok.decode([ans.no]).strip() == "No"
    # what "#Answer: Yes" actually tokenizes to at the answer position
    assert tok.encode("\n#Answer: Yes", add_special_tokens=False)[-1] == ans.yes
    # after whitespace (chat turn header) the answer has no leading space
    ans2 = resolve_answer_tokens(tok, "assistant\n")
    assert tok.decode([ans2.yes]) == "Yes"


def test_tallrec_matches_paper_text(tok):
    b = PromptBuilder(tok, TALLREC)
    text = b.render_text(_sample(2))
    paper = PAPER_FIG6.replace("<Item_1Title...<Item_nTitle>", '"Old Movie 0 (1960)", "Old Movie 1 (1961)"')
    paper = paper.replace("<TargetItemTitle>", "Toy Story (1995)").replace("\\n", "\n")  # space kept
    assert text == paper
    # a text-only prompt is one run: identical to tokenizing the whole text
    batch = b([_sample(2)])
    assert batch.input_ids[0].tolist() == tok.encode(text)
    assert batch.slots == {}


def test_slot_positions_known_from_construction(tok):
    b = PromptBuilder(tok, COLLM_IMAGE)
    samples = [_sample(3), _sample(0, target="Heat"), _sample(1)]
    batch = b(samples)
    ids, mask = batch.input_ids, batch.attention_mask
    assert ids.shape[0] == 3 and (mask.sum(1) == batch.lengths).all()
    # left padded: the last position is real in every row
    assert mask[:, -1].all()
    assert set(batch.slots) == {"UserID", "TargetItemID", "Item_iImage", "TargetItemImage"}
    for name in ("UserID", "TargetItemID", "TargetItemImage"):
        idx = batch.slots[name]
        assert idx.batch_idx.tolist() == [0, 1, 2] and not idx.per_item
    img = batch.slots["Item_iImage"]
    assert img.per_item and img.batch_idx.tolist() == [0, 0, 0, 2]
    assert img.item_idx.tolist() == [0, 1, 2, 0]
    # the slot positions hold the filler id and are real tokens, and text around them is intact
    for idx in batch.slots.values():
        assert (ids[idx.batch_idx, idx.pos] == b.filler_id).all()
        assert mask[idx.batch_idx, idx.pos].all()
    row0 = ids[0, mask[0].bool()].tolist()
    p_user = int(batch.slots["UserID"].pos[0]) - (ids.shape[1] - int(batch.lengths[0]))
    assert tok.decode(row0[:p_user]).endswith("encoded in the feature ")
    assert tok.decode(row0[p_user + 1 :]).startswith(". Using all available information")
    # order of slots in row 0: 3 history images < user < target image < target item id
    pos = [int(p) for p in img.pos[:3]]
    assert pos == sorted(pos)
    assert pos[-1] < batch.slots["UserID"].pos[0] < batch.slots["TargetItemImage"].pos[0]
    assert batch.slots["TargetItemImage"].pos[0] < batch.slots["TargetItemID"].pos[0]


def test_multi_token_slot_and_inject(tok):
    model = tiny_llm(tok)
    tmpl = PromptTemplate("User <UserID> likes <HistoryList>; item <ItemID>?", slots={"UserID": 3, "ItemID": 1})
    b = PromptBuilder(tok, tmpl)
    batch = b([_sample(1), _sample(4)])
    u = batch.slots["UserID"]
    assert len(u) == 6 and u.slot_idx.tolist() == [0, 1, 2, 0, 1, 2]
    assert (u.pos.view(2, 3).diff(dim=1) == 1).all()  # k slots are consecutive
    d = model.config.hidden_size
    user_vecs = torch.randn(2, 3, d, requires_grad=True)
    item_vecs = torch.randn(2, d)
    emb = build_inputs_embeds(model, batch, {"UserID": user_vecs, "ItemID": item_vecs})
    assert torch.equal(emb[u.batch_idx, u.pos], user_vecs.detach()[u.batch_idx, u.slot_idx])
    i = batch.slots["ItemID"]
    assert torch.equal(emb[i.batch_idx, i.pos], item_vecs)
    emb.sum().backward()
    assert user_vecs.grad is not None and (user_vecs.grad == 1).all()
    with pytest.raises(KeyError, match="UserID"):
        build_inputs_embeds(model, batch, {"ItemID": item_vecs})
    # per-item injection indexes by the original history position
    b2 = PromptBuilder(tok, TALLREC_IMAGE)
    batch2 = b2([_sample(2)])
    hv = torch.arange(2 * 5 * d, dtype=torch.float).view(1, 5, 2, d)[:, :, 0]  # (B=1, H=5, d)
    emb2 = inject_embeddings(torch.zeros(1, batch2.input_ids.shape[1], d), batch2.slots["Item_iImage"], hv)
    assert torch.equal(emb2[0, batch2.slots["Item_iImage"].pos], hv[0, :2])


def test_truncation_drops_oldest_history_only(tok):
    full = PromptBuilder(tok, TALLREC_IMAGE)
    long = _sample(12, target="The Target Film (2001)")
    n_full = int(full([long]).lengths[0])
    n_none = int(full([_sample(0, target="The Target Film (2001)")]).lengths[0])
    limit = (n_full + n_none) // 2
    b = PromptBuilder(tok, TALLREC_IMAGE, max_prompt_tokens=limit)
    batch = b([long, _sample(1)])
    assert int(batch.lengths[0]) <= limit and int(batch.lengths[1]) == int(full([_sample(1)]).lengths[0])
    kept = int(batch.history_kept[0])
    assert 0 < kept < 12 and int(batch.truncated[0]) == 12 - kept
    # the newest items survive, in order; the image slots point at their original indices
    img = batch.slots["Item_iImage"]
    assert img.item_idx[img.batch_idx == 0].tolist() == list(range(12 - kept, 12))
    text = tok.decode(batch.input_ids[0, batch.attention_mask[0].bool()])
    assert "Old Movie 11 (1971)" in text and "Old Movie 0 (1960)" not in text
    # one more item would not have fit
    one_more = PromptSample(long.fields, long.history[12 - kept - 1 :])
    assert int(full([one_more]).lengths[0]) > limit
    assert b.stats == {"rows": 2, "truncated_rows": 1, "dropped_items": 12 - kept, "overflow_rows": 0}
    # question and answer slot untouched, even when nothing fits
    tiny = PromptBuilder(tok, TALLREC_IMAGE, max_prompt_tokens=5)
    batch = tiny([long])
    text = tok.decode(batch.input_ids[0])
    assert text.endswith('movie titled The Target Film (2001)<|im_end|> Answer with "Yes" or "No". \n#Answer:')
    assert "following movies: none." in text and int(batch.history_kept[0]) == 0
    assert tiny.reset_stats()["overflow_rows"] == 1 and tiny.stats["rows"] == 0


def test_chat_template_wrap(tok):
    b = PromptBuilder(tok, TALLREC, use_chat_template=True)
    text = b.render_text(_sample(1))
    assert text.startswith("<|im_start|>")
    assert text.endswith('"No".<|im_end|>\n<|im_start|>assistant\n#Answer:')
    batch = b([_sample(1)])
    assert batch.input_ids[0].tolist() == tok.encode(text, add_special_tokens=False)
    assert tok.decode([b.answer_tokens.yes]) == " Yes"


def test_templates_cover_paper_variants(tok):
    s = _sample(2)
    # BinLLM: the same words as CoLLM, the ids are text
    assert "feature 0110." in PromptBuilder(tok, BINLLM).render_text(
        PromptSample({**s.fields, "TargetItemID": "1001"}, s.history)
    )
    assert PromptBuilder(tok, COLLM).render_text(s).count("<UserID>") == 1
    h = histllm_template()
    assert set(h.slots) == {"HistoryInteractions", "Image", "UserID", "ItemID"}
    batch = PromptBuilder(tok, h)([s, _sample(7)])
    assert all(len(batch.slots[k]) == 2 for k in h.slots)  # one token per sample, any history length
    no_uhem = histllm_template(history_encoder=False)
    text = PromptBuilder(tok, no_uhem).render_text(s)
    assert '"desc 0"<Item_iImage>, "desc 1"<Item_iImage>' in text
    news = histllm_template(domain="news", visual=False, collaborative=False)
    assert "clicked the following news articles" in news.instruction and "movie" not in news.instruction
    with pytest.raises(KeyError, match="TargetItemTitle"):
        PromptBuilder(tok, TALLREC)([PromptSample({}, [])])


def test_sentencepiece_style_tokenizer_runs_match_whole_text():
    """Metaspace tokenizers (Llama/Vicuna) mark the start of every separately encoded string;
    the builder's anchoring keeps the text around slots tokenized as in the whole prompt."""
    from tokenizers import SentencePieceBPETokenizer
    from transformers import PreTrainedTokenizerFast

    from recbole_histllm.llm import prepare_tokenizer

    corpus = ["A user has given high ratings to the following movies: Heat, Casino. Leverage the movie Yes No."] * 20
    sp = SentencePieceBPETokenizer()
    sp.train_from_iterator(corpus, vocab_size=120, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    tok = prepare_tokenizer(
        PreTrainedTokenizerFast(tokenizer_object=sp, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    )
    b = PromptBuilder(tok, TALLREC_IMAGE)
    assert b._anchor is not None
    s = PromptSample({"TargetItemTitle": "Toy Story"}, [{"Title": "Heat"}, {"Title": "Casino"}])
    batch = b([s])
    slot_pos = torch.cat([i.pos for i in batch.slots.values()])
    keep = torch.ones(batch.input_ids.shape[1], dtype=torch.bool)
    keep[slot_pos] = False
    assert batch.input_ids[0, keep].tolist() == tok.encode(b.render_text(s, slot_text=""))


def test_encode_item_texts(tok):
    from recbole_histllm.llm import encode_item_texts

    ids, mask = encode_item_texts(tok, ["A toy cowboy comes to life.", "", "word " * 100], max_tokens=16)
    assert ids.shape == (3, 16) and mask[1].sum() == 0 and mask[2].sum() == 16
    n = int(mask[0].sum())
    assert tok.decode(ids[0, :n]) == "A toy cowboy comes to life." and not mask[0, n:].any()
