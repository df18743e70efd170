"""The study's training loop (section 4): epochs over seeded batches, keep the lowest-val-loss weights.

Both phases use the same loop. Phase 1 can run on cached backbone features (the backbone is
frozen and there is no augmentation, so the head sees exactly the same inputs); phase 2 runs on
images read batch by batch from the memory-mapped dataset. Batch order is a function of
(seed, phase, epoch) alone, so a resumed run and the cached/naive phase-1 paths see the same batches.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np


def epoch_order(seed: int, phase: int, epoch: int, n: int) -> np.ndarray:
    """The sample order of one epoch: the same on a resumed run and on both phase-1 paths."""
    return np.random.default_rng([seed, phase, epoch]).permutation(n)


def image_batches(images, rows: np.ndarray, labels: np.ndarray, batch_size: int):
    """A keras PyDataset over dataset rows in the given order: int16 HU memmap rows → float32
    (b,S,S,1) batches with their labels (b,1). ``labels[i]`` belongs to ``rows[i]``."""
    import keras

    rows = np.asarray(rows)
    labels = np.asarray(labels, np.float32)

    class _Batches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=1, use_multiprocessing=False)

        def __len__(self):
            return math.ceil(len(rows) / batch_size)

        def __getitem__(self, i):
            take = rows[i * batch_size : (i + 1) * batch_size]
            idx = np.sort(take)
            # Read sorted rows from the memmap (fast), then restore the epoch's order.
            block = np.asarray(images[idx], dtype=np.float32)[np.searchsorted(idx, take)]
            return block[..., None], labels[i * batch_size : (i + 1) * batch_size, None]

    return _Batches()


def array_batches(x: np.ndarray, y: np.ndarray, batch_size: int):
    """Arrays (the phase-1 feature cache) and labels as a PyDataset of batches in the given order:
    ``fit`` must not reshuffle, so the cached and naive phase-1 paths see the same batches."""
    import keras

    class _Ordered(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()

        def __len__(self):
            return -(-len(x) // batch_size)

        def __getitem__(self, i):
            return x[i * batch_size : (i + 1) * batch_size], y[i * batch_size : (i + 1) * batch_size, None]

    return _Ordered()


def predict_images(model, images, batch_size: int) -> np.ndarray:
    """Model outputs for all rows of an int16 image array, batch by batch (no big copies)."""
    outputs = []
    for start in range(0, len(images), batch_size):
        block = np.asarray(images[start : start + batch_size], dtype=np.float32)[..., None]
        outputs.append(np.asarray(model.predict_on_batch(block), dtype=np.float32))
    return np.concatenate(outputs) if outputs else np.zeros((0, 1), np.float32)


def bce(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(np.asarray(p, np.float64).reshape(-1), 1e-7, 1 - 1e-7)
    y = np.asarray(y, np.float64).reshape(-1)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


@dataclass
class PhaseState:
    """Where a phase stands: what a checkpoint records so a run can resume."""

    phase: int
    epochs_done: int = 0
    best_val_loss: float = math.inf
    best_epoch: int = -1
    history: list[dict] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> "PhaseState":
        return cls(**json.loads(text))


@dataclass
class Checkpoints:
    """Per-epoch checkpoint files of one run: current and best weights plus the phase state."""

    folder: Path

    def paths(self, phase: int) -> tuple[Path, Path, Path]:
        return (
            self.folder / f"phase{phase}.last.weights.h5",
            self.folder / f"phase{phase}.best.weights.h5",
            self.folder / f"phase{phase}.state.json",
        )

    def load_state(self, phase: int) -> PhaseState | None:
        state = self.paths(phase)[2]
        return PhaseState.from_json(state.read_text()) if state.is_file() else None

    def save_best(self, model, phase: int) -> None:
        self._write(model, self.paths(phase)[1])

    def save(self, model, state: PhaseState) -> None:
        """The current weights and the phase state (the best weights were saved before)."""
        last, _, state_file = self.paths(state.phase)
        self._write(model, last)
        tmp_state = state_file.with_suffix(".tmp")
        tmp_state.write_text(state.to_json())
        tmp_state.replace(state_file)

    def _write(self, model, path: Path) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name("tmp." + path.name)
        model.save_weights(tmp)
        tmp.replace(path)


@contextlib.contextmanager
def averaged_weights(model):
    """Inside: the model's trainable weights are its optimizer's moving average; after: as before."""
    import keras

    variables = model.trainable_variables
    current = [keras.ops.convert_to_numpy(v) for v in variables]
    model.optimizer.finalize_variable_values(variables)
    try:
        yield
    finally:
        for variable, value in zip(variables, current):
            variable.assign(value)


def train_epoch(model, x, y=None) -> float:
    """One epoch in the given batch order; returns the epoch's loss (mean over samples).

    Batches from :func:`image_batches` (a PyDataset) go through ``train_on_batch`` one by one: Keras 3's
    ``fit`` over a PyDataset (TensorFlow backend) measured 3.9 s against 1.9 s a step for
    Xception at 96², batch 16, on 2 cores, with ~750k page faults a step (reports/benchmarks/train-loop.md).
    The same train step runs either way (same maths, not the same bits: ``fit`` runs it inside a graph
    over a tf.data iterator, which rounds differently; for Xception at 72² the first epoch's loss agreed
    to 5e-6 relative). Arrays (the phase-1 feature cache) still use ``fit``.
    """
    import keras

    if not isinstance(x, keras.utils.PyDataset):
        # shuffle=False: the order is ours (epoch_order)
        return float(model.fit(x, y, epochs=1, verbose=0, shuffle=False).history["loss"][-1])
    total, count = 0.0, 0
    for i in range(len(x)):
        xb, yb = x[i]
        total += float(model.train_on_batch(xb, yb, return_dict=True)["loss"]) * len(xb)
        count += len(xb)
    return total / max(count, 1)


def run_phase(
    model,
    phase: int,
    epochs: int,
    train_data: Callable[[int], tuple],
    val_scores: Callable[[], np.ndarray],
    y_val: np.ndarray,
    on_epoch: Callable[[int, dict], None] | None = None,
    checkpoints: Checkpoints | None = None,
    progress: bool = True,
    average: bool = False,
) -> PhaseState:
    """Train ``epochs`` epochs; afterwards the model holds its lowest-val-loss weights.

    ``train_data(epoch)`` returns ``fit`` arguments for one epoch (x, y) or (dataset, None).
    ``average``: validate (and keep) the optimizer's moving average of the weights, not the last step's
    (the model must be compiled with an optimizer built with ``use_ema``); training goes on from the
    last step's weights.
    """
    from sklearn.metrics import roc_auc_score
    from tqdm import tqdm

    state = PhaseState(phase=phase)
    best_weights = None
    if checkpoints is not None:
        saved = checkpoints.load_state(phase)
        if saved is not None:
            state = saved
            last, best, _ = checkpoints.paths(phase)
            if best.is_file():
                model.load_weights(best)
                best_weights = model.get_weights()
            if last.is_file():
                model.load_weights(last)
    bar = tqdm(total=epochs, initial=state.epochs_done, desc=f"phase {phase}", unit="epoch", disable=not progress)
    for epoch in range(state.epochs_done, epochs):
        x, y = train_data(epoch)
        loss = train_epoch(model, x, y)
        with averaged_weights(model) if average else contextlib.nullcontext():
            scores = np.asarray(val_scores()).reshape(-1)
            val_loss = bce(y_val, scores)
            improved = val_loss < state.best_val_loss
            if improved:  # what the phase keeps: the weights just validated (the average, with average)
                state.best_val_loss, state.best_epoch = val_loss, epoch
                best_weights = model.get_weights()
                if checkpoints is not None:
                    checkpoints.save_best(model, phase)
        val_auc = float(roc_auc_score(y_val, scores)) if len(set(np.asarray(y_val).tolist())) == 2 else float("nan")
        logs = {"loss": loss, "val_loss": val_loss, "val_auc": val_auc}
        state.epochs_done = epoch + 1
        state.history.append({"epoch": epoch, **logs})
        bar.update(1)
        bar.set_postfix(loss=f"{logs['loss']:.4f}", val_loss=f"{val_loss:.4f}", val_auc=f"{val_auc:.3f}")
        if on_epoch is not None:  # log first: a resumed run never misses a logged epoch
            on_epoch(epoch, logs)
        if checkpoints is not None:
            checkpoints.save(model, state)
    bar.close()
    if best_weights is not None:
        model.set_weights(best_weights)
    return state
