"""The prompt-embedding store: shards on disk, rows in any order, reuse only for the same teacher."""
from __future__ import annotations

import re

import pytest
import torch

from distill_core.teachers import prompt_store
from distill_core.teachers.prompt_store import EmbeddingStore


def fake_encode(calls):
    def encode(prompts):
        calls.append(list(prompts))
        codes = torch.tensor([[float(len(p)), float(sum(map(ord, p)))] for p in prompts])
        return {"embeds": codes[:, None, :].repeat(1, 3, 1), "pooled": codes * 2}
    return encode


def test_store_pages_rows_from_shards_and_is_reused(tmp_path, monkeypatch):
    monkeypatch.setattr(prompt_store, "SHARD_ROWS", 2)
    prompts = ["a cat", "a dog", "the sea", "a dog", "", "a painting of a ship"]
    calls = []
    store = EmbeddingStore({"teacher": "x"}, tmp_path)
    assert store.ensure(prompts, fake_encode(calls)) == 5  # the repeated prompt is encoded once
    assert [len(c) for c in calls] == [2, 2, 1] and len(list(tmp_path.glob("shard_*.safetensors"))) == 3

    order = ["a painting of a ship", "", "a cat", "the sea", "a cat"]
    expected = fake_encode([])(order)
    got = EmbeddingStore({"teacher": "x"}, tmp_path).get(order)  # a new process reads the index
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)

    again = EmbeddingStore({"teacher": "x"}, tmp_path)
    assert again.ensure(prompts, fake_encode(calls)) == 0 and len(calls) == 3
    assert EmbeddingStore({"teacher": "y"}, tmp_path).missing(prompts) == list(dict.fromkeys(prompts))

    memory = EmbeddingStore({"teacher": "x"})  # no folder: the same lookups, kept in memory
    memory.ensure(prompts, fake_encode([]))
    assert all(torch.equal(memory.get(order)[k], expected[k]) for k in expected)


@pytest.mark.parametrize("damage", ["cut", "appended", "garbage", "index"])
def test_a_damaged_cache_is_encoded_again(tmp_path, monkeypatch, capsys, damage):
    monkeypatch.setattr(prompt_store, "SHARD_ROWS", 2)
    prompts = ["a cat", "a dog", "the sea"]
    EmbeddingStore({"teacher": "x"}, tmp_path).ensure(prompts, fake_encode([]))
    shard = min(tmp_path.glob("shard_*.safetensors"))
    data = shard.read_bytes()
    if damage == "index":
        (tmp_path / "index.json").write_text('{"fingerprint": {"teacher": "x"}, "shards": [1, 2')
    else:
        shard.write_bytes({"cut": data[:-8], "appended": data + b"\0" * 8, "garbage": b"\xff" * len(data)}[damage])
    calls = []
    store = EmbeddingStore({"teacher": "x"}, tmp_path)
    assert store.ensure(prompts, fake_encode(calls)) == (3 if damage == "index" else 2)
    assert re.search(r"note: the prompt cache (index|shard) .* is damaged", capsys.readouterr().err)
    expected = fake_encode([])(prompts)
    got = EmbeddingStore({"teacher": "x"}, tmp_path).get(prompts)  # the index now names whole shards only
    assert all(torch.equal(got[k], expected[k]) for k in expected)
