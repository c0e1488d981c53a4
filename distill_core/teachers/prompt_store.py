"""Text embeddings computed once and looked up by prompt, in memory or paged from disk.

Real teachers condition on large text-encoder outputs (SD3: 333 x 4096 values
per prompt, 2.7 MB in bf16), so a DiffusionDB-sized prompt list does not fit in
memory. The store writes embeddings in safetensors shards inside the run folder
and reads single rows through memory maps; a resumed run finds them there and
never loads the text encoders again. Shards are named by a hash of their
prompts and written atomically, so processes encoding the same prompts at once
write identical files.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from ..errors import CheckpointError
from ..export.student_file import check_complete
from ..progress import phase
from ..runfolder import atomic_write_text
from ..training.checkpoint import save_tensors
from .base import Cond, PromptBank, pad_cat

INDEX = "index.json"
SHARD_ROWS = 256  # prompts per shard file


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def _note(text: str) -> None:
    print(f"note: {text}", file=sys.stderr)


def _holds_rows(path: Path, rows: int) -> bool:
    """Whether a shard is whole (its size is what its header says) and every tensor has ``rows`` rows."""
    try:
        check_complete(path)
        with safe_open(str(path), framework="pt") as f:
            return all(f.get_slice(k).get_shape()[:1] == [rows] for k in f.keys())
    except (CheckpointError, SafetensorError, OSError):
        return False


class EmbeddingStore:
    """Prompt -> conditioning rows; ``folder=None`` keeps everything in memory."""

    def __init__(self, fingerprint: dict, folder: Path | None = None) -> None:
        self.fingerprint = fingerprint
        self.folder = Path(folder) if folder is not None else None
        self.rows: dict[str, tuple[str, int]] = {}  # prompt -> (shard name, row)
        self._memory: dict[str, Cond] = {}  # shard name -> tensors (memory mode)
        if self.folder is not None:
            self._read_index()

    def _read_index(self) -> None:
        """The stored rows; a damaged index or shard is noted and its prompts are encoded again (a cache)."""
        path = self.folder / INDEX
        if not path.is_file():
            return
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            fingerprint, shards = data.get("fingerprint"), dict(data["shards"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            _note(f"the prompt cache index {path} is damaged; the prompts are encoded again")
            return
        if fingerprint != self.fingerprint:
            return  # embeddings of another teacher or format: ignore them
        for shard, prompts in shards.items():
            if not (self.folder / shard).is_file():
                continue
            if _holds_rows(self.folder / shard, len(prompts)):
                self.rows.update({p: (shard, i) for i, p in enumerate(prompts)})
            else:
                _note(f"the prompt cache shard {self.folder / shard} is damaged; its {len(prompts)} prompts are "
                      "encoded again")

    def _write_index(self) -> None:
        shards: dict[str, list[str]] = {}
        for prompt, (shard, row) in sorted(self.rows.items(), key=lambda kv: kv[1]):
            shards.setdefault(shard, []).append(prompt)
        atomic_write_text(self.folder / INDEX, json.dumps({"fingerprint": self.fingerprint, "shards": shards}))

    def missing(self, prompts: Sequence[str]) -> list[str]:
        return list(dict.fromkeys(p for p in prompts if p not in self.rows))

    def ensure(self, prompts: Sequence[str], encode: Callable[[list[str]], Cond]) -> int:
        """Encode (in shards) every prompt not stored yet; returns how many were encoded."""
        todo = self.missing(prompts)
        if not todo:
            return 0
        with phase("encoding the prompts", len(todo), "prompt") as p:
            for start in range(0, len(todo), SHARD_ROWS):
                chunk = todo[start:start + SHARD_ROWS]
                self._add(chunk, encode(chunk))
                p.advance(len(chunk))
        if self.folder is not None:
            self._write_index()
        return len(todo)

    def _add(self, prompts: list[str], cond: Cond) -> None:
        name = f"shard_{_digest([self.fingerprint, prompts])}.safetensors"
        if self.folder is None:
            self._memory[name] = {k: v.detach().cpu() for k, v in cond.items()}
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = self.folder / f".{name}.{os.getpid()}.tmp"  # processes encoding at once never share a file
            save_tensors(tmp, cond)
            tmp.replace(self.folder / name)
        self.rows.update({p: (name, i) for i, p in enumerate(prompts)})

    def get(self, prompts: Sequence[str]) -> Cond:
        """Conditioning rows of ``prompts`` (all stored), batch-first in the given order."""
        by_shard: dict[str, list[tuple[int, int]]] = {}
        for pos, p in enumerate(prompts):
            shard, row = self.rows[p]
            by_shard.setdefault(shard, []).append((pos, row))
        parts: list[tuple[int, Cond]] = []
        for shard, picks in by_shard.items():
            if self.folder is None:
                tensors = self._memory[shard]
                parts += [(pos, {k: v[row:row + 1] for k, v in tensors.items()}) for pos, row in picks]
                continue
            with safe_open(str(self.folder / shard), framework="pt") as f:
                keys = list(f.keys())
                for pos, row in picks:
                    parts.append((pos, {k: f.get_slice(k)[row:row + 1] for k in keys}))
        parts.sort(key=lambda pc: pc[0])
        return {k: pad_cat([c[k] for _, c in parts]) for k in parts[0][1]}


class StoredPromptBank(PromptBank):
    """The training prompts, looked up in an EmbeddingStore by index."""

    def __init__(self, prompts: Sequence[str], store: EmbeddingStore, null: Cond) -> None:
        super().__init__(prompts, {}, null)
        self.store = store

    def get(self, indices: torch.Tensor) -> Cond:
        return self.store.get([self.prompts[int(i)] for i in indices])
