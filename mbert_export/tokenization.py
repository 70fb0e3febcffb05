"""BERT WordPiece tokenization for MegatronBERT, without torch or transformers.

`Tokenizer` wraps a Hugging Face `tokenizers` WordPiece pipeline (BertNormalizer, BertPreTokenizer,
`[CLS] A [SEP] B [SEP]` template, WordPiece decoder) and returns numpy int64 arrays ready for an
ONNX / TensorRT session. It reads and writes the same folder layout as `transformers.BertTokenizer`
(tokenizer.json, vocab.txt, tokenizer_config.json, special_tokens_map.json), so a folder saved
here loads in transformers and gives the same ids. Only numpy, `tokenizers` and the standard
library are imported, because the deployment runtime has neither torch nor transformers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from tokenizers import Encoding
from tokenizers import Tokenizer as _Backend
from tokenizers import decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

from .fileio import atomic_write_text

__all__ = ["Tokenizer", "TokenizerError"]

TOKENIZER_FILE = "tokenizer.json"
VOCAB_FILE = "vocab.txt"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"

#: Used when neither the caller nor tokenizer_config.json gives a limit: BERT's 512 positions.
DEFAULT_MODEL_MAX_LENGTH = 512
#: transformers writes int(1e30) for "no limit"; anything this large is treated as unset.
_UNSET_MAX_LENGTH = int(1e20)
#: Words longer than this become [UNK], as in the original BERT.
MAX_INPUT_CHARS_PER_WORD = 100

#: Special-token roles, in the order transformers writes them, with their BERT defaults.
_SPECIAL_DEFAULTS = {
    "unk_token": "[UNK]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
}
_FROM_VOCAB_OPTIONS = ("tokenize_chinese_chars", "strip_accents", "model_max_length", *_SPECIAL_DEFAULTS)
_NORMALIZER_CONFIG_KEYS = ("do_lower_case", "tokenize_chinese_chars", "strip_accents")
_TRUNCATION_STRATEGIES = ("longest_first", "only_first", "only_second")


class TokenizerError(ValueError):
    """A tokenizer folder, vocab file or argument that cannot be used; the message says what to fix."""


def _clean_up_tokenization(text: str) -> str:
    """transformers' `clean_up_tokenization`: glue punctuation and English contractions back on."""
    return (
        text.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
    )


def _read_vocab_lines(path: Path) -> list[str]:
    """The tokens of a vocab.txt, one per line (trailing whitespace dropped as `tokenizers` does)."""
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise TokenizerError(f"vocab file {path} is a directory; pass the vocab.txt inside it") from None
    except OSError as exc:
        raise TokenizerError(f"cannot read vocab file {path}: {exc.strerror or exc}; "
                             "check that it exists and is readable") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TokenizerError(f"vocab file {path} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                             "a BERT vocab.txt holds one UTF-8 token per line") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    tokens = [line.rstrip() for line in lines]
    if not any(tokens):
        raise TokenizerError(f"vocab file {path} is empty; a BERT vocab.txt holds one token per line, "
                             "including [PAD], [UNK], [CLS], [SEP] and [MASK]")
    return tokens


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenizerError(f"cannot read {what} {path}: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TokenizerError(f"{what} {path} is not valid JSON ({exc}); is the file truncated?") from None
    if not isinstance(data, dict):
        raise TokenizerError(f"{what} {path} must hold a JSON object, got {type(data).__name__}")
    return data


def _token_content(value: Any, role: str) -> str:
    """A special token from tokenizer_config.json: a string or a serialized AddedToken dict."""
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    if isinstance(value, str) and value:
        return value
    raise TokenizerError(f"tokenizer_config.json: {role} must be a non-empty string, got {value!r}")


def _find_bert_normalizer(spec: Any) -> dict[str, Any] | None:
    """The BertNormalizer entry of a tokenizer.json normalizer (possibly inside a Sequence)."""
    if not isinstance(spec, dict):
        return None
    if spec.get("type") == "BertNormalizer":
        return spec
    if spec.get("type") == "Sequence":
        for child in spec.get("normalizers", []):
            found = _find_bert_normalizer(child)
            if found is not None:
                return found
    return None


def _check_text(value: Any, name: str) -> list[str]:
    """`value` as a list of strings, or a TypeError/ValueError saying what was wrong."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, (bytes, bytearray)):
        raise TypeError(f"{name} must be str, got {type(value).__name__}; decode it first, "
                        "e.g. text.decode('utf-8')")
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"{name} is an empty list; pass at least one string")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                hint = " (decode bytes first)" if isinstance(item, (bytes, bytearray)) else ""
                raise TypeError(f"{name}[{i}] must be str, got {type(item).__name__}{hint}")
        return list(value)
    raise TypeError(f"{name} must be a str or a list of str, got {type(value).__name__}")


class Tokenizer:
    """BERT WordPiece tokenizer returning numpy model inputs; same ids as transformers' BertTokenizer.

    Build one with `from_pretrained` (a model folder or a tokenizer.json / vocab.txt file) or
    `from_vocab`; the constructor takes an already configured `tokenizers.Tokenizer`.
    """

    def __init__(
        self,
        backend: _Backend,
        *,
        model_max_length: int | None = None,
        unk_token: str = "[UNK]",
        sep_token: str = "[SEP]",
        pad_token: str = "[PAD]",
        cls_token: str = "[CLS]",
        mask_token: str = "[MASK]",
        vocab_lines: Sequence[str] | None = None,
    ) -> None:
        """Wrap `backend` (a WordPiece `tokenizers.Tokenizer`); checks the special tokens exist."""
        if not isinstance(backend, _Backend):
            raise TypeError(f"backend must be a tokenizers.Tokenizer, got {type(backend).__name__}; "
                            "use Tokenizer.from_pretrained(path) or Tokenizer.from_vocab(vocab_file, lowercase)")
        spec = json.loads(backend.to_str())
        model_spec = spec.get("model") or {}
        if model_spec.get("type") != "WordPiece":
            raise TokenizerError(f"expected a WordPiece (BERT) tokenizer, got a {model_spec.get('type')} model; "
                                 "MegatronBERT uses a BERT WordPiece vocabulary")
        self._special = {"unk_token": unk_token, "sep_token": sep_token, "pad_token": pad_token,
                         "cls_token": cls_token, "mask_token": mask_token}
        missing = [tok for tok in self._special.values() if backend.token_to_id(tok) is None]
        if missing:
            raise TokenizerError(
                f"the vocabulary lacks the special token(s) {', '.join(missing)}; a BERT vocab needs "
                f"{', '.join(self._special.values())} (name different ones with unk_token=..., "
                "cls_token=... etc. or in tokenizer_config.json)")
        # Our own truncation/padding below; a tokenizer.json may carry settings that would interfere.
        backend.no_truncation()
        backend.no_padding()
        # Special tokens written in the text (e.g. "[MASK]") map to their ids, as in transformers.
        backend.add_special_tokens(list(self._special.values()))
        if backend.post_processor is None:
            backend.post_processor = _template(cls_token, backend.token_to_id(cls_token),
                                               sep_token, backend.token_to_id(sep_token))
        self._backend = backend

        normalizer = _find_bert_normalizer(spec.get("normalizer")) or {}
        self._do_lower_case = bool(normalizer.get("lowercase", False))
        self._tokenize_chinese_chars = bool(normalizer.get("handle_chinese_chars", True))
        self._strip_accents = normalizer.get("strip_accents")

        if model_max_length is None or model_max_length >= _UNSET_MAX_LENGTH:
            model_max_length = DEFAULT_MODEL_MAX_LENGTH
        if isinstance(model_max_length, bool) or not isinstance(model_max_length, int) or model_max_length < 2:
            raise TokenizerError(f"model_max_length must be an integer >= 2, got {model_max_length!r}")
        self._model_max_length = model_max_length

        vocab = backend.get_vocab(with_added_tokens=True)
        size = max(vocab.values()) + 1
        id_to_token: list[str | None] = [None] * size
        for token, index in vocab.items():
            id_to_token[index] = token
        self._id_to_token = id_to_token
        self._vocab_lines = list(vocab_lines) if vocab_lines is not None and len(vocab_lines) == size else None
        self._special_ids = {backend.token_to_id(tok) for tok in self._special.values()}

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_vocab(cls, vocab_file: str | os.PathLike, lowercase: bool, **options: Any) -> "Tokenizer":
        """A BERT tokenizer from a vocab.txt (one token per line, line number = id).

        `lowercase` must match how the model was trained (uncased vs cased vocab). Options:
        tokenize_chinese_chars (True), strip_accents (None = follow `lowercase`), model_max_length
        (512), and unk_token / sep_token / pad_token / cls_token / mask_token.
        """
        unknown = sorted(set(options) - set(_FROM_VOCAB_OPTIONS))
        if unknown:
            raise TypeError(f"from_vocab() got unknown option(s) {', '.join(unknown)}; "
                            f"valid options: {', '.join(_FROM_VOCAB_OPTIONS)}")
        if not isinstance(lowercase, bool):
            raise TypeError(f"lowercase must be True or False, got {lowercase!r}")
        strip_accents = options.get("strip_accents")
        if strip_accents is not None and not isinstance(strip_accents, bool):
            raise TypeError(f"strip_accents must be True, False or None, got {strip_accents!r}")
        chinese = options.get("tokenize_chinese_chars", True)
        if not isinstance(chinese, bool):
            raise TypeError(f"tokenize_chinese_chars must be True or False, got {chinese!r}")
        special = {role: options.get(role, default) for role, default in _SPECIAL_DEFAULTS.items()}
        for role, token in special.items():
            if not isinstance(token, str) or not token:
                raise TypeError(f"{role} must be a non-empty string, got {token!r}")

        path = Path(vocab_file)
        lines = _read_vocab_lines(path)
        vocab: dict[str, int] = {}
        for index, token in enumerate(lines):
            vocab[token] = index  # a repeated line keeps its last id, as transformers does
        missing = [tok for tok in special.values() if tok not in vocab]
        if missing:
            raise TokenizerError(
                f"vocab file {path} lacks the special token(s) {', '.join(missing)}; a BERT vocab needs "
                f"{', '.join(special.values())} (or name yours with unk_token=..., cls_token=..., etc.)")

        backend = _Backend(WordPiece(vocab, unk_token=special["unk_token"],
                                     max_input_chars_per_word=MAX_INPUT_CHARS_PER_WORD))
        backend.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=chinese, strip_accents=strip_accents, lowercase=lowercase)
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        backend.post_processor = _template(special["cls_token"], vocab[special["cls_token"]],
                                           special["sep_token"], vocab[special["sep_token"]])
        backend.decoder = decoders.WordPiece(prefix="##")
        return cls(backend, model_max_length=options.get("model_max_length"), vocab_lines=lines, **special)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, model_max_length: int | None = None) -> "Tokenizer":
        """Load a model folder (tokenizer.json preferred, else vocab.txt) or one of those files.

        tokenizer_config.json beside it, if any, supplies model_max_length, the special tokens and
        do_lower_case / tokenize_chinese_chars / strip_accents; like transformers' BertTokenizer,
        these config keys win over tokenizer.json's normalizer when both are present (keys the
        config omits keep tokenizer.json's values). `model_max_length` overrides the file's value.
        """
        path = Path(path)
        if path.is_dir():
            folder = path
            if (path / TOKENIZER_FILE).is_file():
                path = path / TOKENIZER_FILE
            elif (path / VOCAB_FILE).is_file():
                path = path / VOCAB_FILE
            else:
                raise TokenizerError(f"{folder} has neither {TOKENIZER_FILE} nor {VOCAB_FILE}; point to the "
                                     "model folder holding the tokenizer files (or save them there with "
                                     "save_pretrained / transformers' tokenizer.save_pretrained)")
        elif path.is_file():
            folder = path.parent
        else:
            raise TokenizerError(f"{path} does not exist; pass a folder holding {TOKENIZER_FILE} or "
                                 f"{VOCAB_FILE}, or the path of one of those files")

        config: dict[str, Any] = {}
        if (folder / TOKENIZER_CONFIG_FILE).is_file():
            config = _read_json(folder / TOKENIZER_CONFIG_FILE, TOKENIZER_CONFIG_FILE)
        special = {role: _token_content(config[role], role) if config.get(role) is not None else default
                   for role, default in _SPECIAL_DEFAULTS.items()}
        if model_max_length is None:
            model_max_length = config.get("model_max_length")
            if isinstance(model_max_length, float) and model_max_length.is_integer():
                model_max_length = int(model_max_length)

        if path.suffix == ".json":
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise TokenizerError(f"cannot read {path}: {exc}") from None
            try:
                backend = _Backend.from_str(text)
            except Exception as exc:  # tokenizers raises a bare Exception on a bad file
                raise TokenizerError(f"{path} is not a valid tokenizers tokenizer.json ({exc}); "
                                     "re-save it with tokenizer.save_pretrained") from None
            overrides = [key for key in _NORMALIZER_CONFIG_KEYS if key in config]
            if overrides:
                # transformers' BertTokenizer rebuilds the normalizer from these config keys and
                # ignores tokenizer.json's; do the same so both give the same ids.
                current = _find_bert_normalizer(json.loads(backend.to_str()).get("normalizer")) or {}
                strip_accents = config.get("strip_accents", current.get("strip_accents"))
                backend.normalizer = normalizers.BertNormalizer(
                    clean_text=True,
                    handle_chinese_chars=bool(config.get("tokenize_chinese_chars",
                                                         current.get("handle_chinese_chars", True))),
                    strip_accents=None if strip_accents is None else bool(strip_accents),
                    lowercase=bool(config.get("do_lower_case", current.get("lowercase", True))),
                )
            return cls(backend, model_max_length=model_max_length, **special)

        options = {"tokenize_chinese_chars": bool(config.get("tokenize_chinese_chars", True)),
                   "strip_accents": config.get("strip_accents"),
                   "model_max_length": model_max_length, **special}
        return cls.from_vocab(path, bool(config.get("do_lower_case", True)), **options)

    def save_pretrained(self, folder: str | os.PathLike) -> list[Path]:
        """Write tokenizer.json, vocab.txt, tokenizer_config.json and special_tokens_map.json.

        transformers' AutoTokenizer / BertTokenizer(Fast) load the folder and give the same ids.
        Each file is written atomically (temp file beside it, then renamed). Returns the paths.
        """
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise TokenizerError(f"{folder} is a file; save_pretrained needs a folder path")
        folder.mkdir(parents=True, exist_ok=True)
        config = {
            "tokenizer_class": "BertTokenizer",
            "do_lower_case": self._do_lower_case,
            "do_basic_tokenize": True,
            "never_split": None,
            "tokenize_chinese_chars": self._tokenize_chinese_chars,
            "strip_accents": self._strip_accents,
            "model_max_length": self._model_max_length,
            "clean_up_tokenization_spaces": True,
            **self._special,
        }
        files = {
            TOKENIZER_FILE: self._backend.to_str(pretty=True),
            VOCAB_FILE: "".join(token + "\n" for token in self._vocab_file_lines()),
            TOKENIZER_CONFIG_FILE: json.dumps(config, indent=2, ensure_ascii=False) + "\n",
            SPECIAL_TOKENS_MAP_FILE: json.dumps(self._special, indent=2, ensure_ascii=False) + "\n",
        }
        written = []
        for name, text in files.items():
            atomic_write_text(folder / name, text)
            written.append(folder / name)
        return written

    def _vocab_file_lines(self) -> list[str]:
        """vocab.txt lines by id; an id with no token gets a placeholder that matches no text."""
        if self._vocab_lines is not None:
            return self._vocab_lines
        present = set(t for t in self._id_to_token if t is not None)
        lines = []
        for index, token in enumerate(self._id_to_token):
            if token is None:
                token = f"[unused_id_{index}]"
                while token in present:
                    token = "#" + token
            lines.append(token)
        return lines

    # ------------------------------------------------------------------ properties

    @property
    def backend(self) -> _Backend:
        """The underlying `tokenizers.Tokenizer` (do not enable truncation/padding on it)."""
        return self._backend

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can produce (largest id + 1), not the model's padded vocab."""
        return len(self._id_to_token)

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def do_lower_case(self) -> bool:
        return self._do_lower_case

    @property
    def tokenize_chinese_chars(self) -> bool:
        return self._tokenize_chinese_chars

    @property
    def strip_accents(self) -> bool | None:
        return self._strip_accents

    @property
    def model_max_length(self) -> int:
        """Default `max_length`: the longest sequence (special tokens included) the model accepts."""
        return self._model_max_length

    @property
    def unk_token(self) -> str:
        return self._special["unk_token"]

    @property
    def sep_token(self) -> str:
        return self._special["sep_token"]

    @property
    def pad_token(self) -> str:
        return self._special["pad_token"]

    @property
    def cls_token(self) -> str:
        return self._special["cls_token"]

    @property
    def mask_token(self) -> str:
        return self._special["mask_token"]

    @property
    def unk_token_id(self) -> int:
        return self._backend.token_to_id(self.unk_token)

    @property
    def sep_token_id(self) -> int:
        return self._backend.token_to_id(self.sep_token)

    @property
    def pad_token_id(self) -> int:
        return self._backend.token_to_id(self.pad_token)

    @property
    def cls_token_id(self) -> int:
        return self._backend.token_to_id(self.cls_token)

    @property
    def mask_token_id(self) -> int:
        return self._backend.token_to_id(self.mask_token)

    @property
    def all_special_ids(self) -> list[int]:
        return sorted(self._special_ids)

    def get_vocab(self) -> dict[str, int]:
        return self._backend.get_vocab(with_added_tokens=True)

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return self._backend.num_special_tokens_to_add(pair)

    def __repr__(self) -> str:
        return (f"Tokenizer(vocab_size={self.vocab_size}, do_lower_case={self._do_lower_case}, "
                f"model_max_length={self._model_max_length})")

    # ------------------------------------------------------------------ encoding

    def __call__(
        self,
        text: str | Sequence[str],
        text_pair: str | Sequence[str] | None = None,
        *,
        max_length: int | None = None,
        truncation: bool | str = False,
        padding: bool | str = "longest",
        return_offsets: bool = False,
    ) -> dict[str, np.ndarray]:
        """Tokenize a text (or a batch, optionally with second segments) into int64 model inputs.

        Returns `input_ids`, `attention_mask`, `token_type_ids`, `special_tokens_mask` of shape
        (batch, seq) and, with `return_offsets`, `offset_mapping` (batch, seq, 2) of character
        spans in each row's own text (special and pad tokens get (0, 0)). `max_length` defaults to
        `model_max_length`; a longer input raises ValueError unless `truncation` is True (pairs
        are cut longest-first, as transformers does; "only_first"/"only_second" also accepted).
        `padding`: "longest" (or True) pads to the longest row, "max_length" to `max_length`,
        False leaves rows unpadded (they must then all have the same length).
        """
        texts = _check_text(text, "text")
        pairs = None
        if text_pair is not None:
            if isinstance(text, str) != isinstance(text_pair, str):
                raise TypeError("text and text_pair must both be str or both be lists of str, got "
                                f"{type(text).__name__} and {type(text_pair).__name__}")
            pairs = _check_text(text_pair, "text_pair")
            if len(pairs) != len(texts):
                raise ValueError(f"text has {len(texts)} items but text_pair has {len(pairs)}; "
                                 "pass one second segment per text")
        limit_name = "max_length"
        if max_length is None:
            max_length, limit_name = self._model_max_length, "model_max_length"
        num_special = self._backend.num_special_tokens_to_add(pairs is not None)
        if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)):
            raise TypeError(f"max_length must be an int or None, got {type(max_length).__name__}")
        max_length = int(max_length)
        if max_length < num_special:
            raise ValueError(f"max_length={max_length} leaves no room for the {num_special} special tokens; "
                             f"use max_length >= {num_special}")
        strategy = _truncation_strategy(truncation)
        if padding is True:
            padding = "longest"
        if padding not in ("longest", "max_length", False):
            raise ValueError(f"padding must be 'longest', 'max_length' or False, got {padding!r}")

        first = self._backend.encode_batch(texts, add_special_tokens=False)
        second = self._backend.encode_batch(pairs, add_special_tokens=False) if pairs is not None else None
        encodings: list[Encoding] = []
        for row, enc_a in enumerate(first):
            enc_b = second[row] if second is not None else None
            total = len(enc_a) + (len(enc_b) if enc_b is not None else 0) + num_special
            if total > max_length:
                if strategy is None:
                    where = f"input {row} " if len(texts) > 1 else "the input "
                    raise ValueError(
                        f"{where}is {total} tokens long (special tokens included) but {limit_name} is "
                        f"{max_length}; pass truncation=True to cut it to {max_length} tokens, "
                        "or shorten the text")
                _truncate(enc_a, enc_b, max_length - num_special, strategy, row)
            encodings.append(self._backend.post_process(enc_a, enc_b, add_special_tokens=True))

        lengths = [len(enc) for enc in encodings]
        if padding == "max_length":
            seq = max_length
        elif padding == "longest":
            seq = max(lengths)
        else:
            if len(set(lengths)) > 1:
                raise ValueError(f"rows have different lengths {lengths} and padding=False; "
                                 "pass padding='longest' (or 'max_length') to batch them")
            seq = lengths[0]

        batch = len(encodings)
        input_ids = np.full((batch, seq), self.pad_token_id, dtype=np.int64)
        attention_mask = np.zeros((batch, seq), dtype=np.int64)
        token_type_ids = np.zeros((batch, seq), dtype=np.int64)
        special_tokens_mask = np.ones((batch, seq), dtype=np.int64)
        offsets = np.zeros((batch, seq, 2), dtype=np.int64) if return_offsets else None
        for row, enc in enumerate(encodings):
            n = lengths[row]
            input_ids[row, :n] = enc.ids
            attention_mask[row, :n] = 1
            token_type_ids[row, :n] = enc.type_ids
            special_tokens_mask[row, :n] = enc.special_tokens_mask
            if offsets is not None and n:
                offsets[row, :n] = enc.offsets
        result = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": token_type_ids,
            "special_tokens_mask": special_tokens_mask,
        }
        if offsets is not None:
            result["offset_mapping"] = offsets
        return result

    def encode(
        self,
        text: str,
        text_pair: str | None = None,
        *,
        max_length: int | None = None,
        truncation: bool | str = False,
    ) -> list[int]:
        """The ids of one text (or text pair), special tokens included, unpadded."""
        if not isinstance(text, str):
            _check_text(text, "text")  # raises the specific TypeError for None / bytes / ints
            raise TypeError(f"encode() takes one str, got {type(text).__name__}; call the tokenizer "
                            "itself for a batch")
        if text_pair is not None and not isinstance(text_pair, str):
            raise TypeError(f"text_pair must be a str or None, got {type(text_pair).__name__}")
        out = self(text, text_pair, max_length=max_length, truncation=truncation, padding=False)
        return out["input_ids"][0].tolist()

    def tokenize(self, text: str) -> list[str]:
        """The WordPiece tokens of `text`, without special tokens."""
        if not isinstance(text, str):
            _check_text(text, "text")  # raises the specific TypeError for None / bytes / ints
            raise TypeError(f"tokenize() takes one str, got {type(text).__name__}")
        return self._backend.encode(text, add_special_tokens=False).tokens

    # ------------------------------------------------------------------ decoding

    def convert_ids_to_tokens(self, ids: int | Iterable[int]) -> str | list[str]:
        """Token string(s) for id(s); raises ValueError for an id outside 0..vocab_size-1."""
        if isinstance(ids, (int, np.integer)) and not isinstance(ids, bool):
            return self._id_token(int(ids))
        return [self._id_token(i) for i in _as_id_list(ids)]

    def convert_tokens_to_ids(self, tokens: str | Iterable[str]) -> int | list[int]:
        """Id(s) for token string(s); a token not in the vocabulary maps to the [UNK] id."""
        if isinstance(tokens, str):
            return self._token_id(tokens)
        if tokens is None or isinstance(tokens, (bytes, bytearray)):
            raise TypeError(f"tokens must be a str or a list of str, got {type(tokens).__name__}")
        result = []
        for i, token in enumerate(tokens):
            if not isinstance(token, str):
                raise TypeError(f"tokens[{i}] must be str, got {type(token).__name__}")
            result.append(self._token_id(token))
        return result

    def decode(
        self,
        ids: int | Iterable[int],
        skip_special_tokens: bool = True,
        clean_up_tokenization_spaces: bool = True,
    ) -> str:
        """Text of a sequence of ids, as transformers' (slow) BertTokenizer.decode produces it.

        Word pieces are joined ("##" continuations glued on); with `clean_up_tokenization_spaces`,
        spaces before . , ! ? and inside contractions are removed. Lowercasing and stripped
        accents are not undone. Skipped special tokens: [CLS], [SEP], [PAD], [MASK], [UNK].
        """
        if isinstance(ids, (int, np.integer)) and not isinstance(ids, bool):
            ids = [int(ids)]
        tokens = []
        for index in _as_id_list(ids):
            if skip_special_tokens and index in self._special_ids:
                continue
            tokens.append(self._id_token(index))
        text = " ".join(tokens).replace(" ##", "").strip()
        if clean_up_tokenization_spaces:
            text = _clean_up_tokenization(text)
        return text

    def batch_decode(self, sequences: Iterable[Iterable[int]], skip_special_tokens: bool = True,
                     clean_up_tokenization_spaces: bool = True) -> list[str]:
        """`decode` of each row (e.g. of a (batch, seq) id array)."""
        return [self.decode(row, skip_special_tokens, clean_up_tokenization_spaces) for row in sequences]

    def _id_token(self, index: int) -> str:
        if not 0 <= index < len(self._id_to_token):
            raise ValueError(f"token id {index} is outside the tokenizer vocabulary (0..{self.vocab_size - 1}); "
                             "if the model's vocab is padded beyond the tokenizer's, mask those logits "
                             "before taking the argmax")
        token = self._id_to_token[index]
        return token if token is not None else self.unk_token

    def _token_id(self, token: str) -> int:
        index = self._backend.token_to_id(token)
        return self.unk_token_id if index is None else index


def _template(cls_token: str, cls_id: int, sep_token: str, sep_id: int) -> processors.TemplateProcessing:
    """[CLS] A [SEP] (types 0) and [CLS] A [SEP] B [SEP] (B and its [SEP] type 1)."""
    return processors.TemplateProcessing(
        single=f"{cls_token}:0 $A:0 {sep_token}:0",
        pair=f"{cls_token}:0 $A:0 {sep_token}:0 $B:1 {sep_token}:1",
        special_tokens=[(cls_token, cls_id), (sep_token, sep_id)],
    )


def _truncation_strategy(truncation: bool | str) -> str | None:
    if truncation is True:
        return "longest_first"
    if truncation is False or truncation is None or truncation == "do_not_truncate":
        return None
    if truncation in _TRUNCATION_STRATEGIES:
        return truncation
    raise ValueError(f"truncation must be True, False or one of {', '.join(_TRUNCATION_STRATEGIES)}, "
                     f"got {truncation!r}")


def _truncate(enc_a: Encoding, enc_b: Encoding | None, budget: int, strategy: str, row: int) -> None:
    """Cut the encodings in place so they hold at most `budget` tokens together.

    longest_first follows `tokenizers` (what transformers' fast BertTokenizer runs): the shorter
    segment keeps its length if the longer still gets as much; otherwise each keeps budget // 2
    and the second segment gets the odd token.
    """
    n_a = len(enc_a)
    n_b = len(enc_b) if enc_b is not None else 0
    if enc_b is None and strategy == "only_second":
        raise ValueError(f"input {row} needs truncating, but truncation='only_second' cuts the second text of a "
                         "pair and there is none; use truncation=True")
    if enc_b is None or strategy == "only_first":
        keep = budget - n_b
        if keep < 0:
            raise ValueError(f"input {row}: the second segment alone ({n_b} tokens) exceeds the "
                             f"{budget}-token budget, so truncation='only_first' cannot fit it; "
                             "use truncation=True (longest_first) or a larger max_length")
        enc_a.truncate(keep)
        return
    if strategy == "only_second":
        keep = budget - n_a
        if keep < 0:
            raise ValueError(f"input {row}: the first segment alone ({n_a} tokens) exceeds the "
                             f"{budget}-token budget, so truncation='only_second' cannot fit it; "
                             "use truncation=True (longest_first) or a larger max_length")
        enc_b.truncate(keep)
        return
    short, long_ = sorted((n_a, n_b))
    long_ = short if short > budget else max(short, budget - short)
    if short + long_ > budget:
        short = budget // 2
        long_ = short + budget % 2
    keep_a, keep_b = (long_, short) if n_a > n_b else (short, long_)
    enc_a.truncate(keep_a)
    enc_b.truncate(keep_b)


def _as_id_list(ids: Any) -> list[int]:
    """Ids from a list/tuple/1-D array of integers, or a TypeError/ValueError."""
    if ids is None or isinstance(ids, (str, bytes, bytearray, dict)):
        raise TypeError(f"ids must be a sequence of ints, got {type(ids).__name__}")
    array = np.asarray(ids)
    if array.size == 0:
        return []
    if array.ndim != 1:
        raise ValueError(f"ids must be one sequence (1-D), got shape {array.shape}; "
                         "use batch_decode for a batch")
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"ids must be integers, got {array.dtype}")
    return [int(i) for i in array.tolist()]
