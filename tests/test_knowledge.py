"""Knowledge Enhancement: resumable fill of the .text description column."""

from __future__ import annotations

from pathlib import Path

import pytest

from recbole_histllm.features import knowledge as ke

HEADER = "item_id\ttitle\tdescription\toverview\n"
ROWS = [
    ("1", "Toy Story (1995)", "", "A cowboy doll is threatened by a new spaceman toy. Led by Woody, toys live."),
    ("2", "Heat (1995)", "Already described.", "Obsessive master thief."),
    ("3", "Jumanji (1995)", "", "When siblings find a magical board game, they open a door to a magic world."),
    ("4", "GoldenEye (1995)", "", ""),
    ("5", "Casino (1995)", "", "Greed, deception, money, power and murder occur between two best friends."),
    ("6", "Babe (1995)", "", "Babe is a little pig who doesn't quite know his place in the world."),
]


def _write(root: Path, name: str = "movie") -> Path:
    d = root / name
    d.mkdir(parents=True)
    p = d / f"{name}.text"
    p.write_text(HEADER + "".join("\t".join(r) + "\n" for r in ROWS), encoding="utf-8")
    return p


class FakeGen:
    """Returns messy text (tabs, newlines, a new #Question turn); can fail on a given call."""

    def __init__(self, fail_on_call: int | None = None) -> None:
        self.calls: list[list[str]] = []
        self.fail_on_call = fail_on_call

    def __call__(self, titles):
        self.calls.append(list(titles))
        if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
            raise KeyboardInterrupt
        return [f' "{t} is\ta film\nabout things."\n#Question: more' for t in titles]


def _cells(p: Path) -> list[list[str]]:
    return [ln.split("\t") for ln in p.read_text(encoding="utf-8").splitlines()]


def test_resume_after_interruption_and_columns_untouched(tmp_path):
    p = _write(tmp_path)
    argv = ["--dataset=movie", f"--data_path={tmp_path}", "--batch_size=2"]
    gen = FakeGen(fail_on_call=2)
    with pytest.raises(KeyboardInterrupt):
        ke.main(argv, generator=gen)
    cells = _cells(p)
    assert (
        cells[1][2] == "Toy Story (1995) is a film about things."
        and cells[3][2] == "Jumanji (1995) is a film about things."
    )
    assert cells[4][2] == ""  # the interrupted batch left nothing half written
    gen2 = FakeGen()
    stats = ke.main(argv, generator=gen2)
    assert [t for c in gen2.calls for t in c] == ["GoldenEye (1995)", "Casino (1995)", "Babe (1995)"]
    assert stats["generated"] == 3 and stats["skipped_filled"] == 3
    cells = _cells(p)
    assert all(len(r) == 4 for r in cells)
    for row, orig in zip(cells[1:], ROWS, strict=True):
        assert row[0] == orig[0] and row[1] == orig[1] and row[3] == orig[3]
        assert row[2] and "\t" not in row[2] and "#" not in row[2]
    assert cells[2][2] == "Already described."
    assert not list(p.parent.glob(".*tmp"))  # no temp files left behind
    # a third run has nothing to do
    gen3 = FakeGen()
    assert ke.main(argv, generator=gen3)["generated"] == 0 and gen3.calls == []


def test_source_column_copy(tmp_path):
    p = _write(tmp_path)
    stats = ke.main(["--dataset=movie", f"--data_path={tmp_path}", "--source=overview"])
    assert stats == {"copied": 4, "skipped_filled": 1, "empty_source": 1}
    cells = _cells(p)
    assert cells[1][2] == "A cowboy doll is threatened by a new spaceman toy. Led by Woody, toys live."
    assert cells[2][2] == "Already described." and cells[4][2] == ""
    assert ke.first_sentences("One two three. Four five six seven.", max_words=5) == "One two three."
    assert ke.first_sentences("word " * 100, max_words=40) == " ".join(["word"] * 40)


def test_postprocess_and_domain():
    raw = '\n"Heat is a\tcrime thriller about a thief and a detective. The film is set in Los"\n\n#Answer: x'
    assert ke.postprocess_generation(raw) == "Heat is a crime thriller about a thief and a detective."
    assert ke.postprocess_generation("Answer: Short one") == "Short one"
    assert ke.infer_domain("mind") == "news" and ke.infer_domain("ml-100k") == "movie"
    assert "Generate a concise movie description for the title" in ke.KE_PROMPTS["movie"]


def test_text_table_is_the_converters_parse(tmp_path):
    """TextTable reads through the converters' one ``.text`` parser (the same cells as their frame)."""
    from dataset_converters.core import read_text_table

    p = _write(tmp_path)
    table = ke.TextTable.read(p)
    frame = read_text_table(p)
    assert table.header == HEADER.rstrip("\n").split("\t") and table.rows == [list(row) for row in ROWS]
    assert table.header == list(frame.columns) and table.rows == frame.values.tolist()


def test_missing_description_column_is_added(tmp_path):
    d = tmp_path / "mind"
    d.mkdir()
    p = d / "mind.text"
    p.write_text("item_id\ttitle\tabstract\nN1\tStocks rise\tMarkets rallied today. More text.\n", encoding="utf-8")
    ke.main(["--dataset=mind", f"--data_path={tmp_path}", "--source=abstract"])
    assert _cells(p) == [
        ["item_id", "title", "abstract", "description"],
        ["N1", "Stocks rise", "Markets rallied today. More text.", "Markets rallied today. More text."],
    ]


def test_llm_describer_with_tiny_model(tmp_path):
    from recbole_histllm.llm import load_tokenizer, tiny_llm

    tok = load_tokenizer()
    model = tiny_llm(tok, seed=0)
    gen = ke.LLMDescriber(model, tok, domain="news", max_new_tokens=6, device="cpu")
    assert gen.use_chat and "headline Stocks rise" in gen.prompt("Stocks\trise")
    plain = ke.LLMDescriber(model, tok, chat_template="off", device="cpu")
    assert plain.prompt("Heat (1995)") == (
        "#Question: Generate a concise movie description for the title Heat (1995) with around 20 words, "
        "highlighting the main theme and unique elements. \n#Answer:"  # Fig. 9, character for character
    )
    p = _write(tmp_path)
    stats = ke.enhance_table(p, gen, batch_size=3, progress=False)
    assert stats["generated"] == 5
    for row in _cells(p)[1:]:
        assert row[2].strip() and "\n" not in row[2]


def test_news_descriptions_default_to_the_abstract(tmp_path):
    """MIND (news): no --source copies the abstract; --source=llm generates; movies still generate."""
    d = tmp_path / "mind"
    d.mkdir()
    p = d / "mind.text"
    p.write_text("item_id\ttitle\tdescription\tabstract\nN1\tStocks rise\t\tMarkets rallied today. More.\n"
                 "N2\tRain ahead\t\t\n", encoding="utf-8")
    calls: list[list[str]] = []

    def generator(titles):
        calls.append(list(titles))
        return ["A generated description of this news headline for the test."] * len(titles)

    stats = ke.main(["--dataset=mind", f"--data_path={tmp_path}"], generator=generator)
    assert stats == {"copied": 1, "skipped_filled": 0, "empty_source": 1} and calls == []
    assert _cells(p)[1][2] == "Markets rallied today. More."
    ke.main(["--dataset=mind", f"--data_path={tmp_path}", "--source=llm"], generator=generator)
    assert calls == [["Rain ahead"]]  # only the empty description is generated
    assert ke.default_source(_write(tmp_path), "movie") == "llm"


def test_news_prompts_change_only_the_domain_words_of_the_papers_prompts():
    """The appendix gives movie prompts only; the news wording swaps the domain words and keeps the rest."""
    from recbole_histllm.llm import templates as t

    movie = [t.TALLREC, t.TALLREC_IMAGE, t.TALLREC_DESC, t.COLLM, t.COLLM_IMAGE, t.BINLLM, t.BINLLM_IMAGE]
    movie += [t.histllm_template(h, v, c) for h in (True, False) for v in (True, False) for c in (True, False)]
    for template in movie:
        news = t.for_domain(template, "news")
        assert "movie" not in news.instruction and "high ratings" not in news.instruction
        assert "A user has clicked the following news articles:" in news.instruction
        assert "click the news article" in news.instruction and news.slots == template.slots
        back = news.instruction.replace("has clicked the following news articles",
                                        "has given high ratings to the following movies")
        assert back.replace("click the news article", "enjoy the movie") == template.instruction
    assert "news description for the headline" in ke.KE_PROMPTS["news"]


def test_malformed_side_file_is_one_line_naming_file_and_line(tmp_path, capsys):
    """A row with more cells than the header: exit 2 and one line with file:line, no traceback."""
    from dataset_converters.cli import run_main

    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "bad.text").write_text("item_id\ttitle\tdescription\n1\tA\tx\n2\tB\tx\textra\n", encoding="utf-8")
    code = run_main(ke.main, ["--dataset=bad", f"--data_path={tmp_path}", "--source=overview"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"error: {folder / 'bad.text'}:3: 4 tab-separated cells, the header has 3"]
