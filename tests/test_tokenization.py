"""`mbert_export.tokenization.Tokenizer` gives the same ids, types, masks, offsets and decodes as transformers.

Oracles: the pure-Python BERT tokenizer (`BertTokenizerLegacy` in transformers 5, `BertTokenizer`
in 4) and the Rust-backed one (`BertTokenizerFast`, which transformers 5 also calls `BertTokenizer`).
The vocabulary is built here, so the tests need no download.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")

from mbert_export.tokenization import Tokenizer, TokenizerError  # noqa: E402

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = [
    "hello", "world", "Hello", "World", "the", "The", "and", "English", "units", "here", "chars", "control",
    "tabs", "newlines", "emoji", "Mixed", "mixed", "wait", "what", "yes", "ok", "tag", "user",
    "cafe", "café", "Café", "naive", "naïve", "resume", "résumé", "angstrom", "ÅNGSTRÖM", "ANGSTROM",
    "don", "won", "they", "I", "i", "m", "t", "re", "s", "un", "play", "a", "b",
    "##aff", "##able", "##ing", "##ed", "##s", "##e", "##é", "##ly", "##mé",
]
#: CJK characters in the vocabulary; 门 is left out so it becomes [UNK].
CHINESE = ["我", "爱", "北", "京", "天", "安", "中", "文"]
TEXTS = [
    "Hello, world!",
    "Café naïve résumé",
    "ÅNGSTRÖM units",
    "我爱北京天安门",
    "Mixed 中文 and English",
    "Wait... what?!?! (yes) -- [ok] #tag @user $5.00 100%",
    "don't won't I'm they're",
    "unaffable playing played",
    "x" * 101 + " hello",        # a word over 100 characters is a single [UNK]
    "y" * 100,                   # exactly 100 characters is still split into pieces
    "",
    "   ",
    "\t\n \u3000 ",
    "control\x00chars\ufffd here\u200b",
    "tabs\tand\nnewlines",
    "emoji 🙂 here",
    "Hello [MASK] world [SEP] and [UNK]",
    "ANGSTROM angstrom",
]
PAIRS = [
    ("Hello, world!", "Café naïve résumé"),
    ("", "我爱北京"),
    ("don't", ""),
    ("unaffable playing", "Wait... what?!"),
]


def _vocab_tokens() -> list[str]:
    """Specials, words, and every character (alone and as ##piece) of the test texts' normal forms."""
    chars: set[str] = set()
    for text in TEXTS + [a + b for a, b in PAIRS]:
        for form in (text, text.lower(), "".join(c for c in unicodedata.normalize("NFD", text.lower())
                                                 if unicodedata.category(c) != "Mn")):
            chars.update(c for c in form if not c.isspace() and c not in "门🙂x\x00\ufffd\u200b")
    chars.update(CHINESE)
    tokens = SPECIALS + [f"[unused{i}]" for i in range(50)] + WORDS
    for c in sorted(chars):
        tokens += [c, "##" + c]
    seen: set[str] = set()
    return [t for t in tokens if not (t in seen or seen.add(t))]


VOCAB = _vocab_tokens()


def _slow_class():
    return getattr(transformers, "BertTokenizerLegacy", None) or transformers.BertTokenizer


@pytest.fixture(scope="module")
def vocab_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module", params=[True, False], ids=["uncased", "cased"])
def trio(request, tmp_path_factory, vocab_file):
    """(ours, slow oracle, fast oracle) for do_lower_case = the param."""
    lowercase = request.param
    folder = tmp_path_factory.mktemp("uncased" if lowercase else "cased")
    (folder / "vocab.txt").write_bytes(vocab_file.read_bytes())
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "BertTokenizer", "do_lower_case": lowercase, "model_max_length": 512}))
    ours = Tokenizer.from_vocab(vocab_file, lowercase=lowercase)
    slow = _slow_class().from_pretrained(folder)
    fast = transformers.BertTokenizerFast.from_pretrained(folder)
    return ours, slow, fast


def _hf(tok, *args, **kwargs):
    """transformers output as plain lists (no tensors), token types always included."""
    return dict(tok(*args, return_token_type_ids=True, return_attention_mask=True, **kwargs).items())


# --------------------------------------------------------------------------- single texts


def test_vocab_covers_test_texts():
    assert 200 <= len(VOCAB) <= 600


@pytest.mark.parametrize("text", TEXTS, ids=range(len(TEXTS)))
def test_single_text_matches_slow_and_fast(trio, text):
    ours, slow, fast = trio
    out = ours(text, return_offsets=True)
    assert set(out) == {"input_ids", "attention_mask", "token_type_ids", "special_tokens_mask", "offset_mapping"}
    for key in ("input_ids", "attention_mask", "token_type_ids", "special_tokens_mask"):
        assert out[key].dtype == np.int64 and out[key].shape == (1, out["input_ids"].shape[1])
    ids = out["input_ids"][0].tolist()
    for oracle in (slow, fast):
        expected = _hf(oracle, text)
        assert ids == expected["input_ids"], type(oracle).__name__
        assert out["token_type_ids"][0].tolist() == expected["token_type_ids"]
        assert out["attention_mask"][0].tolist() == expected["attention_mask"]
    expected = _hf(fast, text, return_offsets_mapping=True, return_special_tokens_mask=True)
    assert [tuple(o) for o in out["offset_mapping"][0].tolist()] == [tuple(o) for o in expected["offset_mapping"]]
    assert out["special_tokens_mask"][0].tolist() == expected["special_tokens_mask"]
    assert ours.encode(text) == ids
    assert ours.convert_ids_to_tokens(ids) == slow.convert_ids_to_tokens(ids)
    assert ours.convert_tokens_to_ids(ours.convert_ids_to_tokens(ids)) == ids


def test_expected_tokens(trio):
    ours, _, _ = trio
    assert ours.encode("") == [ours.cls_token_id, ours.sep_token_id]
    assert ours.encode(" \t\n ") == [ours.cls_token_id, ours.sep_token_id]
    long_word = ours.convert_ids_to_tokens(ours.encode("x" * 101))
    assert long_word == ["[CLS]", "[UNK]", "[SEP]"]
    assert len(ours.encode("y" * 100)) == 102
    assert ours.convert_ids_to_tokens(ours.encode("unaffable")) == ["[CLS]", "un", "##aff", "##able", "[SEP]"]
    assert ours.encode("a [MASK] b")[2] == ours.mask_token_id
    chinese = ours.convert_ids_to_tokens(ours.encode("我爱北京天安门"))
    assert chinese == ["[CLS]", "我", "爱", "北", "京", "天", "安", "[UNK]", "[SEP]"]
    accents = ours.convert_ids_to_tokens(ours.encode("Café ÅNGSTRÖM"))
    if ours.do_lower_case:
        assert accents == ["[CLS]", "cafe", "angstrom", "[SEP]"]
    else:
        assert accents == ["[CLS]", "Café", "ÅNGSTRÖM", "[SEP]"]


def test_decomposed_accents_follow_fast_tokenizer(trio):
    """Known difference: the slow tokenizer NFC-composes its input, BertNormalizer does not.

    Lowercase vocabularies strip accents, so both agree; a cased vocabulary sees "e" + U+0301 as a
    different word from "é". We follow the fast tokenizer (what transformers 5 and the saved
    tokenizer.json run); NFC-normalizing the text first gives the slow tokenizer's ids.
    """
    ours, slow, fast = trio
    text = "Cafe\u0301 re\u0301sume\u0301"
    assert ours.encode(text) == _hf(fast, text)["input_ids"]
    assert ours.encode(unicodedata.normalize("NFC", text)) == _hf(slow, text)["input_ids"]
    if ours.do_lower_case:
        assert ours.encode(text) == _hf(slow, text)["input_ids"]
    else:
        assert ours.encode(text) != _hf(slow, text)["input_ids"]


def test_properties(trio):
    ours, slow, fast = trio
    assert ours.mask_token == "[MASK]"
    for name in ("cls_token_id", "sep_token_id", "pad_token_id", "mask_token_id", "unk_token_id"):
        assert getattr(ours, name) == getattr(fast, name) == getattr(slow, name), name
    assert ours.vocab_size == len(fast) == len(slow) == len(VOCAB)
    assert ours.do_lower_case == fast.do_lower_case
    assert ours.model_max_length == 512


# --------------------------------------------------------------------------- pairs, batches, truncation


@pytest.mark.parametrize("pair", PAIRS, ids=range(len(PAIRS)))
def test_text_pair_matches(trio, pair):
    ours, slow, fast = trio
    out = ours(*pair, return_offsets=True)
    # Oracles are called with batches of one: for a single str pair, the fast tokenizer drops an
    # empty second segment ("" is falsy) and returns [CLS] A [SEP]; we, the slow tokenizer and the
    # fast one on batches all give [CLS] A [SEP] [SEP].
    a, b = [pair[0]], [pair[1]]
    for oracle in (slow, fast):
        expected = _hf(oracle, a, b)
        assert out["input_ids"].tolist() == expected["input_ids"]
        assert out["token_type_ids"].tolist() == expected["token_type_ids"]
    assert out["input_ids"][0].tolist() == _hf(slow, *pair)["input_ids"]
    assert out["input_ids"][0].tolist().count(ours.sep_token_id) == 2
    assert out["token_type_ids"][0, -1] == 1  # the second [SEP] has token type 1
    expected = _hf(fast, a, b, return_offsets_mapping=True, return_special_tokens_mask=True)
    assert out["offset_mapping"].tolist() == [[list(o) for o in row] for row in expected["offset_mapping"]]
    assert out["special_tokens_mask"].tolist() == expected["special_tokens_mask"]


def test_batch_padding_longest_and_max_length(trio):
    ours, slow, fast = trio
    batch = TEXTS[:6] + [""]
    out = ours(batch, return_offsets=True)
    expected = _hf(fast, batch, padding=True, return_offsets_mapping=True, return_special_tokens_mask=True)
    assert out["input_ids"].shape == (len(batch), max(len(r) for r in expected["input_ids"]))
    for key in ("input_ids", "attention_mask", "token_type_ids", "special_tokens_mask"):
        assert out[key].tolist() == expected[key], key
    assert out["offset_mapping"].tolist() == [[list(o) for o in row] for row in expected["offset_mapping"]]
    assert out["input_ids"].tolist() == _hf(slow, batch, padding=True)["input_ids"]

    out = ours(batch, [t[::-1] for t in batch], padding="max_length", max_length=128)
    expected = _hf(fast, batch, [t[::-1] for t in batch], padding="max_length", max_length=128)
    assert out["input_ids"].shape == (len(batch), 128)
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert out[key].tolist() == expected[key], key


def test_padding_false_needs_equal_rows(trio):
    ours, _, _ = trio
    assert ours(["hello", "world"], padding=False)["input_ids"].shape == (2, 3)
    with pytest.raises(ValueError, match="padding='longest'"):
        ours(["hello", "hello world"], padding=False)


@pytest.mark.parametrize("max_length", [3, 4, 9, 10, 11, 12, 15])
@pytest.mark.parametrize("pair", [("a b c d e f g h", "I i m"), ("a b", "hello world the and a b t s"),
                                  ("a b c d e", "t s m i re"), ("a b c d e f", "t s m i re")])
def test_pair_truncation_longest_first(trio, pair, max_length):
    ours, slow, fast = trio
    out = ours(*pair, truncation=True, max_length=max_length, padding=False)
    expected = _hf(fast, *pair, truncation=True, max_length=max_length)
    assert out["input_ids"][0].tolist() == expected["input_ids"]
    assert out["token_type_ids"][0].tolist() == expected["token_type_ids"]
    assert len(expected["input_ids"]) <= max_length
    n_a, n_b = (len(ours.encode(t)) - 2 for t in pair)
    budget = max_length - 3
    if n_a + n_b <= budget or 2 * min(n_a, n_b) <= budget or budget % 2 == 0:
        # The pure-Python tokenizer agrees except when both segments must be cut and the budget is
        # odd: it gives the odd token to the first segment, `tokenizers` (and we) to the second.
        assert out["input_ids"][0].tolist() == _hf(slow, *pair, truncation=True, max_length=max_length)["input_ids"]


def test_single_truncation_and_only_strategies(trio):
    ours, slow, fast = trio
    text = TEXTS[5]
    for max_length in (2, 5, 8):
        out = ours(text, truncation=True, max_length=max_length)
        assert out["input_ids"][0].tolist() == _hf(slow, text, truncation=True, max_length=max_length)["input_ids"]
        assert out["input_ids"][0].tolist() == _hf(fast, text, truncation=True, max_length=max_length)["input_ids"]
    pair = ("a b c d e f g h", "I i m")
    for strategy in ("only_first", "only_second"):
        try:
            expected = _hf(fast, *pair, truncation=strategy, max_length=9)["input_ids"]
        except Exception:
            expected = None
        if strategy == "only_second":  # the first segment alone is over budget
            with pytest.raises(ValueError, match="only_second"):
                ours(*pair, truncation=strategy, max_length=9)
        else:
            assert ours(*pair, truncation=strategy, max_length=9)["input_ids"][0].tolist() == expected


def test_too_long_without_truncation_raises(trio):
    ours, _, _ = trio
    with pytest.raises(ValueError, match=r"is 9 tokens long .* max_length is 5; pass truncation=True"):
        ours("a b c d e f g", max_length=5)
    with pytest.raises(ValueError, match="input 1 is"):
        ours(["a", "a b c d e f g"], max_length=5)
    long_text = " ".join(["hello"] * 600)
    with pytest.raises(ValueError, match="model_max_length is 512"):
        ours(long_text)
    assert ours(long_text, truncation=True)["input_ids"].shape == (1, 512)
    with pytest.raises(ValueError, match="special tokens"):
        ours("a", "b", max_length=2, truncation=True)


# --------------------------------------------------------------------------- decode


DECODE_TEXTS = TEXTS + ["hello , world . don ' t wait ! what ? they ' re I ' m", "a [MASK] b [UNK] c"]


@pytest.mark.parametrize("text", DECODE_TEXTS, ids=range(len(DECODE_TEXTS)))
def test_decode_matches_slow(trio, text):
    ours, slow, fast = trio
    ids = ours.encode(text)
    for skip in (True, False):
        for clean in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip, clean_up_tokenization_spaces=clean) == slow.decode(
                ids, skip_special_tokens=skip, clean_up_tokenization_spaces=clean), (skip, clean)
    assert ours.decode(ids) == fast.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True)
    assert ours.decode(np.asarray(ids, dtype=np.int64)) == ours.decode(ids)


def test_decode_cleanup_and_batch(trio):
    ours, _, _ = trio
    ids = ours.encode("hello , world . don ' t")
    assert ours.decode(ids) == "hello, world. don't"
    assert ours.decode(ids, clean_up_tokenization_spaces=False) == "hello , world . don ' t"
    batch = ours(["hello world", "unaffable"])["input_ids"]
    assert ours.batch_decode(batch) == ["hello world", "unaffable"]
    with pytest.raises(ValueError, match="outside the tokenizer vocabulary"):
        ours.decode([ours.vocab_size])
    with pytest.raises(ValueError, match="batch_decode"):
        ours.decode(batch)


# --------------------------------------------------------------------------- save / load


def test_save_pretrained_loads_in_transformers(trio, tmp_path):
    ours, slow, _ = trio
    written = ours.save_pretrained(tmp_path)
    assert sorted(p.name for p in written) == sorted(os.listdir(tmp_path)) == sorted(
        ["tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"])
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "BertTokenizer"
    assert config["do_lower_case"] is ours.do_lower_case and config["model_max_length"] == 512
    assert json.loads((tmp_path / "special_tokens_map.json").read_text())["mask_token"] == "[MASK]"
    assert (tmp_path / "vocab.txt").read_text(encoding="utf-8").split("\n")[:-1] == VOCAB

    loaded = [transformers.AutoTokenizer.from_pretrained(tmp_path),
              transformers.BertTokenizerFast.from_pretrained(tmp_path),
              transformers.BertTokenizer.from_pretrained(tmp_path),
              _slow_class().from_pretrained(tmp_path)]
    reloaded = Tokenizer.from_pretrained(tmp_path)
    batch = TEXTS[:8]
    for hf in loaded:
        assert hf.model_max_length == 512
        assert ours(batch)["input_ids"].tolist() == _hf(hf, batch, padding=True)["input_ids"], type(hf).__name__
        ids = ours.encode(DECODE_TEXTS[-2])
        assert hf.decode(ids, skip_special_tokens=True) == ours.decode(ids)
    assert reloaded(batch)["input_ids"].tolist() == ours(batch)["input_ids"].tolist()
    assert reloaded.do_lower_case == ours.do_lower_case and reloaded.vocab_size == ours.vocab_size


def test_from_pretrained_forms(trio, tmp_path, vocab_file):
    ours, _, fast = trio
    expected = ours(TEXTS)["input_ids"].tolist()
    # A folder saved by transformers (tokenizer.json + vocab.txt + config).
    fast.save_pretrained(tmp_path / "hf")
    assert Tokenizer.from_pretrained(tmp_path / "hf")(TEXTS)["input_ids"].tolist() == expected
    # Direct file paths; a lone tokenizer.json carries its own normalizer settings.
    ours.save_pretrained(tmp_path / "ours")
    (tmp_path / "lone").mkdir()
    (tmp_path / "lone" / "tokenizer.json").write_bytes((tmp_path / "ours" / "tokenizer.json").read_bytes())
    direct = Tokenizer.from_pretrained(tmp_path / "lone" / "tokenizer.json")
    assert direct(TEXTS)["input_ids"].tolist() == expected and direct.do_lower_case == ours.do_lower_case
    # tokenizer.json is preferred over vocab.txt in a folder.
    (tmp_path / "ours" / "vocab.txt").write_text("garbage\n")
    assert Tokenizer.from_pretrained(tmp_path / "ours")(TEXTS)["input_ids"].tolist() == expected
    # A folder with vocab.txt only defaults to lowercase, as transformers does.
    (tmp_path / "vocab_only").mkdir()
    (tmp_path / "vocab_only" / "vocab.txt").write_bytes(vocab_file.read_bytes())
    assert Tokenizer.from_pretrained(tmp_path / "vocab_only").do_lower_case is True
    assert Tokenizer.from_pretrained(tmp_path / "vocab_only" / "vocab.txt", model_max_length=64).model_max_length == 64


def test_save_is_atomic_and_overwrites(tmp_path, vocab_file):
    ours = Tokenizer.from_vocab(vocab_file, lowercase=True, model_max_length=128)
    ours.save_pretrained(tmp_path)
    ours.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["special_tokens_map.json", "tokenizer.json", "tokenizer_config.json",
                                            "vocab.txt"]  # no temp files left behind
    assert Tokenizer.from_pretrained(tmp_path).model_max_length == 128


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("bad, message", [
    (None, "text must be a str or a list of str, got NoneType"),
    (5, "got int"),
    (b"bytes", "decode it first"),
    (["ok", None], r"text\[1\] must be str, got NoneType"),
    (["ok", b"x"], "decode bytes first"),
])
def test_non_string_input_raises_type_error(vocab_file, bad, message):
    ours = Tokenizer.from_vocab(vocab_file, lowercase=True)
    with pytest.raises(TypeError, match=message):
        ours(bad)
    with pytest.raises(TypeError):
        ours.encode(bad)


def test_bad_call_arguments(vocab_file):
    ours = Tokenizer.from_vocab(vocab_file, lowercase=True)
    with pytest.raises(ValueError, match="empty list"):
        ours([])
    with pytest.raises(ValueError, match="text has 2 items but text_pair has 1"):
        ours(["a", "b"], ["c"])
    with pytest.raises(TypeError, match="both be str"):
        ours("a", ["b"])
    with pytest.raises(ValueError, match="padding must be"):
        ours("a", padding="max")
    with pytest.raises(ValueError, match="truncation must be"):
        ours("a", truncation="longest")
    with pytest.raises(TypeError, match="unknown option"):
        Tokenizer.from_vocab(vocab_file, lowercase=True, do_lower_case=True)


def test_bad_files_raise_clear_errors(tmp_path):
    with pytest.raises(TokenizerError, match="neither tokenizer.json nor vocab.txt"):
        Tokenizer.from_pretrained(tmp_path)
    with pytest.raises(TokenizerError, match="does not exist"):
        Tokenizer.from_pretrained(tmp_path / "missing")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(TokenizerError, match="is empty"):
        Tokenizer.from_vocab(empty, lowercase=True)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"[PAD]\n\xff\xfe\n")
    with pytest.raises(TokenizerError, match="not UTF-8"):
        Tokenizer.from_vocab(binary, lowercase=True)
    with pytest.raises(TokenizerError, match="cannot read vocab file"):
        Tokenizer.from_vocab(tmp_path / "nope.txt", lowercase=True)
    no_mask = tmp_path / "no_mask" / "vocab.txt"
    no_mask.parent.mkdir()
    no_mask.write_text("\n".join(t for t in VOCAB if t not in ("[MASK]", "[PAD]")) + "\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match=r"lacks the special token\(s\) \[PAD\], \[MASK\]"):
        Tokenizer.from_pretrained(no_mask.parent)
    bad_json = tmp_path / "bad" / "tokenizer.json"
    bad_json.parent.mkdir()
    bad_json.write_text("{not json")
    with pytest.raises(TokenizerError, match="not a valid tokenizers tokenizer.json"):
        Tokenizer.from_pretrained(bad_json.parent)
    assert issubclass(TokenizerError, ValueError)


def test_module_imports_neither_torch_nor_transformers():
    code = ("import sys, mbert_export.tokenization; "
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; "
            "assert not bad, bad")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]))
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
