"""Load: many sequential calls keep memory flat (the deployment runtime must not leak)."""

from __future__ import annotations

import gc
import os

import pytest

from mbert_export.build import DEFAULT_CHECKPOINT

ort = pytest.importorskip("onnxruntime")


def _rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture(scope="module")
def demo_artifact(tmp_path_factory):
    from mbert_export.export import export_onnx
    from mbert_export.modeling import MegatronBertForMaskedLM

    folder = tmp_path_factory.mktemp("demo-mlm")
    export_onnx(MegatronBertForMaskedLM.from_pretrained(DEFAULT_CHECKPOINT), "mlm", folder / "model.onnx",
                tokenizer_dir=DEFAULT_CHECKPOINT, max_seq_len=64, verify=False)
    return folder


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc for RSS")
def test_ten_thousand_sequential_calls_keep_rss_flat(demo_artifact):
    from mbert_export.runtime import OrtMegatronBert

    texts = ["The [MASK] statement is used to import a module.", "A [MASK] returns a new list."]
    with OrtMegatronBert(demo_artifact) as runtime:
        for i in range(500):  # warm-up: arenas, caches and tokenizer state settle
            runtime.fill_mask(texts[i % 2], top_k=3)
        gc.collect()
        before = _rss_bytes()
        for i in range(10_000):
            result = runtime.fill_mask(texts[i % 2], top_k=3)
        gc.collect()
        after = _rss_bytes()
    assert result and result[0]["token_str"]
    growth = (after - before) / before
    print(f"RSS before {before / 2**20:.1f} MiB, after 10000 calls {after / 2**20:.1f} MiB ({growth:+.2%})")
    assert growth < 0.05, f"RSS grew {growth:.1%} over 10 000 calls"
