"""Train the built-in teacher and the digits classifier, and write their weights.

    python -m distill_core.builtin.train_weights --out distill_core/builtin/weights
    python -m distill_core.builtin.train_weights --builtin shapes --iterations 5000

Deterministic on CPU for a given torch version and thread count (both are
recorded in the files' metadata); the shipped files' sha256 are in
weights/SHA256SUMS; ``--check`` rebuilds into a temporary folder and compares tensors and metadata
with the shipped files (and the shipped files with SHA256SUMS).
The teacher is an SD3-style flow model: x_t = (1 - t) x0 + t eps, velocity
target eps - x0, logit-normal t, labels dropped to the null class for CFG.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import platform
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from . import digits, shapes
from .kinds import KINDS
from .networks import TEACHER_CONFIGS, DigitsClassifier, build_teacher_network

CLASSIFIER_FILE = "digits_classifier.safetensors"
SUMS_FILE = "SHA256SUMS"
NULL_LABELS = {"digits": digits.NULL_LABEL, "shapes": shapes.NULL_LABEL}


def digits_batches(gen: torch.Generator, batch_size: int):
    """Draws from the fixed train split of the real digits."""
    split = digits.load_split()
    images, labels = split.train_images, split.train_labels
    while True:
        idx = torch.randint(0, len(images), (batch_size,), generator=gen)
        yield images[idx], labels[idx].clone()


def shapes_batches(gen: torch.Generator, batch_size: int):
    """Fresh generated shapes every step (the data distribution itself, no finite train set)."""
    while True:
        labels = torch.randint(0, shapes.NUM_CLASSES, (batch_size,), generator=gen)
        yield shapes.generate(labels, gen)[0], labels


BATCHES = {"digits": digits_batches, "shapes": shapes_batches}


def train_teacher(iterations: int, batch_size: int = 128, lr: float = 1e-3, seed: int = 0,
                  ema_decay: float = 0.999, label_dropout: float = 0.1,
                  kind: str = "digits") -> tuple[dict, list[float]]:
    """Flow-matching training; returns the EMA weights and the loss history."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = build_teacher_network(TEACHER_CONFIGS[kind]).eval()  # eval: label dropout is done here, with our generator
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / 100) * 0.5 * (1 + math.cos(math.pi * i / iterations)))
    batches = BATCHES[kind](gen, batch_size)
    losses = []
    for _ in tqdm(range(iterations), desc=f"{kind} teacher", unit="it"):
        x0, y = next(batches)
        y[torch.rand(batch_size, generator=gen) < label_dropout] = NULL_LABELS[kind]
        eps = torch.randn(x0.shape, generator=gen)
        t = torch.sigmoid(torch.randn(batch_size, generator=gen))  # logit-normal, as in SD3
        xt = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * eps
        v = net(xt, timestep=t * 1000, class_labels=y).sample
        loss = F.mse_loss(v, eps - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), net.parameters()):
                pe.lerp_(p, 1 - ema_decay)
        losses.append(loss.item())
    return {k: v.contiguous() for k, v in ema.state_dict().items()}, losses


def train_classifier(epochs: int = 15, batch_size: int = 64, seed: int = 0) -> tuple[dict, float]:
    """Train the metric CNN on the train split; returns weights and held-out accuracy."""
    split = digits.load_split()
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = DigitsClassifier()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    n = len(split.train_labels)
    for _ in tqdm(range(epochs), desc="classifier", unit="epoch"):
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            b = order[i:i + batch_size]
            loss = F.cross_entropy(net(split.train_images[b]), split.train_labels[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        acc = (net(split.test_images).argmax(1) == split.test_labels).float().mean().item()
    return {k: v.contiguous() for k, v in net.state_dict().items()}, acc


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def same_content(a: Path, b: Path) -> bool:
    """Equal tensors (bit for bit) and metadata: the file bytes may still differ, since safetensors writes the
    metadata keys in hash-map order, so a rebuild is compared by content, the shipped file by its sha256."""
    with safe_open(str(a), "pt") as fa, safe_open(str(b), "pt") as fb:
        if fa.metadata() != fb.metadata() or sorted(fa.keys()) != sorted(fb.keys()):
            return False
        return all(torch.equal(fa.get_tensor(k), fb.get_tensor(k)) for k in fa.keys())


SHIPPED_ITERATIONS = {"digits": 6000, "shapes": 5000}


def read_sums(path: Path) -> dict[str, str]:
    """file name -> sha256, from a SHA256SUMS file (empty when there is none)."""
    if not path.is_file():
        return {}
    return dict(line.split()[::-1] for line in path.read_text().splitlines() if line.strip())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="output folder (default: the shipped weights/; with --check a "
                        "temporary folder, so the shipped files are never overwritten)")
    parser.add_argument("--builtin", choices=tuple(KINDS), default="digits",
                        help="which built-in teacher (digits also trains the digits classifier)")
    parser.add_argument("--iterations", type=int, help=f"the shipped teachers used {SHIPPED_ITERATIONS}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check", action="store_true",
                        help="compare the rebuilt files' sha256 with the shipped SHA256SUMS")
    args = parser.parse_args(argv)
    kind = args.builtin
    iterations = SHIPPED_ITERATIONS[kind] if args.iterations is None else args.iterations
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="dpdmd-weights-")) if args.check else Path(__file__).parent / "weights"
    args.out.mkdir(parents=True, exist_ok=True)
    provenance = {"torch": torch.__version__, "threads": str(torch.get_num_threads()),
                  "machine": platform.machine(), "seed": str(args.seed)}

    teacher_file = KINDS[kind].teacher_file
    teacher, losses = train_teacher(iterations, seed=args.seed, kind=kind)
    tail = sum(losses[-100:]) / min(100, len(losses))
    flag = "" if kind == "digits" else f" --builtin {kind}"
    save_file(teacher, str(args.out / teacher_file), metadata={
        **provenance, "dpdmd.builtin": "teacher", "config": json.dumps(TEACHER_CONFIGS[kind]),
        "iterations": str(iterations), "final_loss": f"{tail:.4f}",
        "command": f"python -m distill_core.builtin.train_weights{flag} --iterations {iterations} --seed {args.seed}",
    })
    names = [teacher_file]
    if kind == "digits":
        classifier, acc = train_classifier(seed=args.seed)
        save_file(classifier, str(args.out / CLASSIFIER_FILE), metadata={
            **provenance, "dpdmd.builtin": "classifier", "test_accuracy": f"{acc:.4f}"})
        names.append(CLASSIFIER_FILE)
        print(f"classifier: held-out accuracy {acc:.4f}")
    print(f"{kind} teacher: final loss {tail:.4f}")

    shipped = Path(__file__).parent / "weights"
    if args.check:
        expected = read_sums(shipped / SUMS_FILE)
        for name in names:
            intact = expected.get(name) == sha256(shipped / name)
            print(f"{name}: shipped file {'matches' if intact else 'DOES NOT MATCH'} {SUMS_FILE}; rebuild "
                  f"{'reproduced it' if same_content(shipped / name, args.out / name) else 'DIFFERS'}")
    else:  # the other teacher's lines stay
        sums = {**read_sums(args.out / SUMS_FILE), **{n: sha256(args.out / n) for n in names}}
        (args.out / SUMS_FILE).write_text("".join(f"{h}  {n}\n" for n, h in sums.items()))


if __name__ == "__main__":
    main()
