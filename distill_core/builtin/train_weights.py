"""Train the built-in teacher and the digits classifier, and write their weights.

    python -m distill_core.builtin.train_weights --out distill_core/builtin/weights

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

from .digits import NULL_LABEL, load_split
from .networks import TEACHER_CONFIG, DigitsClassifier, build_teacher_network

TEACHER_FILE = "digits_teacher.safetensors"
CLASSIFIER_FILE = "digits_classifier.safetensors"
SUMS_FILE = "SHA256SUMS"


def train_teacher(iterations: int, batch_size: int = 128, lr: float = 1e-3, seed: int = 0,
                  ema_decay: float = 0.999, label_dropout: float = 0.1) -> tuple[dict, list[float]]:
    """Flow-matching training; returns the EMA weights and the loss history."""
    split = load_split()
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = build_teacher_network().eval()  # eval: label dropout is done here, with our generator
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / 100) * 0.5 * (1 + math.cos(math.pi * i / iterations)))
    images, labels = split.train_images, split.train_labels
    losses = []
    for _ in tqdm(range(iterations), desc="teacher", unit="it"):
        idx = torch.randint(0, len(images), (batch_size,), generator=gen)
        x0, y = images[idx], labels[idx].clone()
        y[torch.rand(batch_size, generator=gen) < label_dropout] = NULL_LABEL
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
    split = load_split()
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="output folder (default: the shipped weights/; with --check a "
                        "temporary folder, so the shipped files are never overwritten)")
    parser.add_argument("--iterations", type=int, default=6000, help="the shipped teacher used 6000")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check", action="store_true",
                        help="compare the rebuilt files' sha256 with the shipped SHA256SUMS")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="dpdmd-weights-")) if args.check else Path(__file__).parent / "weights"
    args.out.mkdir(parents=True, exist_ok=True)
    provenance = {"torch": torch.__version__, "threads": str(torch.get_num_threads()),
                  "machine": platform.machine(), "seed": str(args.seed)}

    teacher, losses = train_teacher(args.iterations, seed=args.seed)
    tail = sum(losses[-100:]) / min(100, len(losses))
    save_file(teacher, str(args.out / TEACHER_FILE), metadata={
        **provenance, "dpdmd.builtin": "teacher", "config": json.dumps(TEACHER_CONFIG),
        "iterations": str(args.iterations), "final_loss": f"{tail:.4f}",
        "command": f"python -m distill_core.builtin.train_weights --iterations {args.iterations} --seed {args.seed}",
    })
    classifier, acc = train_classifier(seed=args.seed)
    save_file(classifier, str(args.out / CLASSIFIER_FILE), metadata={
        **provenance, "dpdmd.builtin": "classifier", "test_accuracy": f"{acc:.4f}"})
    print(f"teacher: final loss {tail:.4f}; classifier: held-out accuracy {acc:.4f}")

    names = (TEACHER_FILE, CLASSIFIER_FILE)
    shipped = Path(__file__).parent / "weights"
    if args.check:
        expected = dict(line.split()[::-1] for line in (shipped / SUMS_FILE).read_text().splitlines() if line.strip())
        for name in names:
            intact = expected.get(name) == sha256(shipped / name)
            print(f"{name}: shipped file {'matches' if intact else 'DOES NOT MATCH'} {SUMS_FILE}; rebuild "
                  f"{'reproduced it' if same_content(shipped / name, args.out / name) else 'DIFFERS'}")
    else:
        (args.out / SUMS_FILE).write_text("".join(f"{sha256(args.out / n)}  {n}\n" for n in names))


if __name__ == "__main__":
    main()
