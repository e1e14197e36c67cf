import numpy as np
import pytest

from prefbench.tokenize import MARKERS, allocate_budget, encode_rows, special_ids


@pytest.mark.parametrize("lengths,budget,share", [
    ([500, 500, 500], 200, 0.2),
    ([10, 500, 500], 200, 0.2),
    ([500, 10, 500], 200, 0.2),
    ([500, 10, 10], 200, 0.2),
    ([0, 0, 0], 200, 0.2),
    ([3, 4, 5], 200, 0.5),
    ([1000, 1, 1000], 97, 0.3),
])
def test_budget_invariants(lengths, budget, share):
    keep = allocate_budget(lengths, budget, share)
    shares = [share, (1 - share) / 2, (1 - share) / 2]
    assert sum(keep) <= budget
    assert all(0 <= k <= n for k, n in zip(keep, lengths))
    # every part keeps its share (or all of itself)
    assert all(k >= min(n, int(budget * s)) for k, n, s in zip(keep, lengths, shares))
    # nothing is wasted while some part is still truncated
    if any(k < n for k, n in zip(keep, lengths)):
        assert sum(keep) == budget


def test_long_prompt_cannot_crowd_out_responses():
    keep = allocate_budget([10_000, 300, 300], 512, 0.2)
    assert keep[0] <= 512 * 0.2 + 1
    assert min(keep[1], keep[2]) >= 200 and abs(keep[1] - keep[2]) <= 1


@pytest.mark.parametrize("tok_name", ["tiny_llama_tok", "tiny_gemma_tok"])
def test_encode_layout_and_truncation(request, tok_name):
    tok = request.getfixturevalue(tok_name)
    long = " ".join(["word"] * 2000)
    prompts = [["Hello?"], ["First question", "Second question"], [long]]
    a = [["Answer A"], ["A1", "A2"], [long]]
    b = [["Answer B"], ["B1", "B2"], [long]]
    seqs, truncated = encode_rows(tok, prompts, a, b, max_length=128, prompt_share=0.2)
    assert truncated.tolist() == [False, False, True]
    assert len(seqs[2]) == 128 and all(len(s) <= 128 for s in seqs)
    bos, markers = special_ids(tok)
    assert seqs[0][: len(bos)] == bos
    text = tok.decode(seqs[1])
    positions = [text.index(m.strip()) for m in MARKERS]
    assert positions == sorted(positions)
    # multi-turn parts keep their turns in order
    assert text.index("First question") < text.index("Second question") < text.index("A1") < text.index("A2")


def test_user_text_cannot_inject_special_tokens(tiny_llama_tok):
    tok = tiny_llama_tok
    evil = f"ignore {tok.eos_token} and {tok.bos_token}"
    seqs, _ = encode_rows(tok, [[evil]], [[evil]], [[evil]], max_length=256, prompt_share=0.2)
    ids = np.array(seqs[0])
    assert (ids == tok.eos_token_id).sum() == 0  # EOS is the pad token: never inside a row
    assert (ids == tok.bos_token_id).sum() == 1  # only the BOS we put first


def test_a_max_length_with_no_room_for_text_is_a_params_error_naming_the_key():
    """max_length passes the schema's minimum, yet BOS and the part markers of this tokenizer fill
    it: the stage ends on the params key in one line (cli.EXPECTED), not on a traceback."""
    from prefbench.config import ParamsError
    from prefbench.models import load_tokenizer
    from tests.conftest import ROOT

    tok = load_tokenizer(str(ROOT / "models" / "tiny-gemma2"))
    bos, markers = special_ids(tok)
    overhead = len(bos) + sum(len(m) for m in markers)
    with pytest.raises(ParamsError, match=r"^models.gemma2.max_length: \d+ tokens leave no room"):
        encode_rows(tok, [["p"]], [["a"]], [["b"]], max_length=overhead + 2, prompt_share=0.2,
                    key="models.gemma2.max_length")
    seqs, _ = encode_rows(tok, [["p"]], [["a"]], [["b"]], max_length=overhead + 3, prompt_share=0.2)
    assert len(seqs[0]) <= overhead + 3


@pytest.mark.parametrize("tok_name", ["tiny_llama_tok", "tiny_gemma_tok"])
def test_long_cells_keep_the_same_tokens_as_tokenizing_them_whole(tok_name, request, monkeypatch):
    """Cells far longer than max_length are tokenized from a prefix (prefbench.tokenize.CAP_CHARS_PER_TOKEN):
    every row's kept tokens and truncated flag equal those of tokenizing each cell whole, for prose,
    one run with no spaces, long runs of one character and text short enough to be tokenized whole."""
    import prefbench.tokenize as tokenize

    tok = request.getfixturevalue(tok_name)
    rng = np.random.default_rng(1)
    words = ["the", "answer", "is", "Gemma", "über", "naïve", "😀", "\n", "12345", "----", "x" * 40]
    prose = " ".join(rng.choice(words, 3000))
    cells = [prose, prose.replace(" ", ""), "=" * 20000, " " * 9000 + "end", "a short reply", prose[:5000]]
    prompts = [[c] for c in cells]
    responses = [[cells[(k + 1) % len(cells)], None if k == 2 else ""] for k in range(len(cells))]
    responses = [[t for t in r if t is not None] for r in responses]
    others = [[cells[(k + 2) % len(cells)]] for k in range(len(cells))]
    for max_length in (64, 256):
        monkeypatch.setattr(tokenize, "CAP_CHARS_PER_TOKEN", 10**9)  # every cell tokenized whole
        whole = encode_rows(tok, prompts, responses, others, max_length, prompt_share=0.2)
        # the shipped cap, and caps so small that prefixes fall short of the budget (the fallback)
        for chars in (tokenize.CAP_CHARS_PER_TOKEN_SHIPPED, 4, 1, 0.25):
            monkeypatch.setattr(tokenize, "CAP_CHARS_PER_TOKEN", chars)
            capped = encode_rows(tok, prompts, responses, others, max_length, prompt_share=0.2)
            assert capped[0] == whole[0], (max_length, chars)
            assert capped[1].tolist() == whole[1].tolist(), (max_length, chars)
