"""The trainer's inputs and outputs: datasets, checkpoints, the `train` command, and bad input."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import struct

import numpy as np
import pytest

from bnncost import cli
from bnncost.costmodel.strategy import load_strategy
from bnncost.trainer import TrainerError, TrainingDiverged, run_steps, train
from bnncost.trainer.checkpoint import load_checkpoint
from bnncost.trainer.network import Network
from bnncost.layers.graph import graph_of
from bnncost.trainer.datasets import load_dataset, read_idx

# ---------------------------------------------------------------- files the tests write


def write_idx(path, array: np.ndarray, gz: bool = False, truncate: int = 0) -> None:
    head = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = head + array.astype(np.uint8).tobytes()
    if truncate:
        data = data[:-truncate]
    with (gzip.open(path, "wb") if gz else open(path, "wb")) as f:
        f.write(data)


def make_mnist(folder, n_train=40, n_test=20, gz=False):
    rng = np.random.default_rng(0)
    sfx = ".gz" if gz else ""
    write_idx(folder / f"train-images-idx3-ubyte{sfx}", rng.integers(0, 256, (n_train, 28, 28)), gz)
    write_idx(folder / f"train-labels-idx1-ubyte{sfx}", rng.integers(0, 10, n_train), gz)
    write_idx(folder / f"t10k-images-idx3-ubyte{sfx}", rng.integers(0, 256, (n_test, 28, 28)), gz)
    write_idx(folder / f"t10k-labels-idx1-ubyte{sfx}", rng.integers(0, 10, n_test), gz)
    return folder


def make_cifar(folder, n=6):
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        doc = {b"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8),
               b"labels": [int(v) for v in rng.integers(0, 10, n)]}
        with open(folder / name, "wb") as f:
            pickle.dump(doc, f)
    return folder


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        cli.main(list(args))
    got = capsys.readouterr()
    return exc.value.code, got.out, got.err


# ---------------------------------------------------------------- datasets


def test_digits_split_is_fixed_and_scaled():
    a = load_dataset("digits", (64,), 10, seed=0)
    b = load_dataset("digits", (8, 8, 1), 10, seed=5)
    assert a.x_train.shape == (1437, 64) and a.x_test.shape == (360, 64)
    assert b.x_train.shape == (1437, 8, 8, 1)
    assert np.array_equal(a.y_train, b.y_train)  # the split does not depend on the training seed
    assert a.x_train.min() == -1.0 and a.x_train.max() == 1.0
    assert np.array_equal(a.x_train.astype(np.float16).astype(np.float32), a.x_train)  # exact in float16


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_from_idx_files(tmp_path, gz):
    make_mnist(tmp_path, gz=gz)
    ds = load_dataset(f"mnist:{tmp_path}", (784,), 10)
    assert ds.x_train.shape == (40, 784) and ds.x_test.shape == (20, 784)
    assert -1.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    r = train("mlp", "proposed", dataset=f"mnist:{tmp_path}", epochs=1, batch=16)
    assert 0.0 <= r.test_accuracy <= 1.0 and r.steps == 3


def test_cifar10_from_python_batches(tmp_path):
    make_cifar(tmp_path)
    ds = load_dataset(f"cifar10:{tmp_path}", (32, 32, 3), 10)
    assert ds.x_train.shape == (30, 32, 32, 3) and ds.x_test.shape == (6, 32, 32, 3)
    m = run_steps("cnv", "proposed", dataset=f"cifar10:{tmp_path}", batch=2, steps=1)
    assert m.ledger_peak_bytes > 0


def test_synthetic_fits_any_model():
    ds = load_dataset("synthetic", (32, 32, 3), 10, seed=3)
    assert ds.x_train.shape[1:] == (32, 32, 3) and ds.y_train.max() < 10


def test_missing_and_truncated_files_are_one_clear_error(tmp_path):
    with pytest.raises(TrainerError, match="missing MNIST file train-images-idx3-ubyte"):
        load_dataset(f"mnist:{tmp_path}", (784,), 10)
    make_mnist(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((40, 28, 28)), truncate=100)
    with pytest.raises(TrainerError, match="truncated IDX file"):
        load_dataset(f"mnist:{tmp_path}", (784,), 10)
    (tmp_path / "x.idx").write_bytes(b"\x00")
    with pytest.raises(TrainerError, match="not an IDX file"):
        read_idx(tmp_path / "x.idx")
    cifar = tmp_path / "c"
    cifar.mkdir()
    make_cifar(cifar)
    raw = (cifar / "data_batch_3").read_bytes()
    (cifar / "data_batch_3").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(TrainerError, match="data_batch_3: truncated or not a CIFAR-10 python batch"):
        load_dataset(f"cifar10:{cifar}", (32, 32, 3), 10)
    os.remove(cifar / "test_batch")
    (cifar / "data_batch_3").write_bytes(raw)
    with pytest.raises(TrainerError, match="test_batch: missing CIFAR-10 batch"):
        load_dataset(f"cifar10:{cifar}", (32, 32, 3), 10)


def test_a_crafted_cifar_pickle_cannot_run_code(tmp_path):
    make_cifar(tmp_path)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(tmp_path / "data_batch_1", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(TrainerError, match="refusing to load"):
        load_dataset(f"cifar10:{tmp_path}", (32, 32, 3), 10)


def test_dataset_shape_mismatch_is_refused():
    with pytest.raises(TrainerError, match="dataset digits has 8x8x1 samples .64 values. but the model takes input .784."):
        train("mlp", "proposed", epochs=1)
    with pytest.raises(TrainerError, match="unknown dataset"):
        train("digits-mlp", "proposed", dataset="imagenet", epochs=1)


# ---------------------------------------------------------------- checkpoints


def test_resume_gives_the_same_next_steps_as_an_uninterrupted_run(tmp_path):
    ckpt = tmp_path / "run.npz"
    whole = train("digits-mlp", "proposed", epochs=2, batch=64, save=str(tmp_path / "whole.npz"))
    first = train("digits-mlp", "proposed", epochs=1, batch=64, save=str(ckpt))
    rest = train("digits-mlp", "proposed", epochs=2, batch=64, resume=str(ckpt), save=str(ckpt))
    assert rest.resumed_from_epoch == 1
    assert first.train_loss == whole.train_loss[:1]
    assert rest.train_loss == whole.train_loss and rest.test_accuracy == whole.test_accuracy
    state = Network(graph_of("digits-mlp"), load_strategy("proposed")).state()  # what the model holds
    _, a = load_checkpoint(tmp_path / "whole.npz", state)
    _, b = load_checkpoint(ckpt, state)
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]  # nothing left from atomic writes


def test_truncated_foreign_and_mismatched_checkpoints_are_refused(tmp_path):
    ckpt = tmp_path / "c.npz"
    train("digits-mlp", "proposed", epochs=1, save=str(ckpt))
    raw = ckpt.read_bytes()
    (tmp_path / "cut.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(TrainerError, match="truncated or not a bnncost checkpoint"):
        train("digits-mlp", "proposed", epochs=2, resume=str(tmp_path / "cut.npz"))
    np.savez(tmp_path / "other.npz", weights=np.zeros(3))
    with pytest.raises(TrainerError, match="not a bnncost checkpoint"):
        train("digits-mlp", "proposed", epochs=2, resume=str(tmp_path / "other.npz"))
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(TrainerError, match="not a bnncost checkpoint"):
        train("digits-mlp", "proposed", epochs=2, resume=str(tmp_path / "text.npz"))
    with pytest.raises(TrainerError, match="written for strategy 'proposed'"):
        train("digits-mlp", "standard", epochs=2, resume=str(ckpt))
    with pytest.raises(TrainerError, match="written for model 'digits-mlp'"):
        train("digits-cnn", "proposed", epochs=2, resume=str(ckpt))
    with pytest.raises(TrainerError, match="already done 1 epochs"):
        train("digits-mlp", "proposed", epochs=1, resume=str(ckpt))


def test_nan_loss_stops_says_where_and_keeps_the_last_good_checkpoint(tmp_path):
    ckpt = tmp_path / "good.npz"
    train("digits-mlp", "standard", epochs=1, save=str(ckpt))
    before = ckpt.read_bytes()
    with pytest.raises(TrainingDiverged) as exc:
        train("digits-mlp", "standard", epochs=3, resume=str(ckpt), save=str(ckpt), lr=float("nan"))
    assert exc.value.step == 25 and exc.value.epoch == 2  # 23 steps per epoch; the first NaN update is step 24's
    assert "step 25" in str(exc.value) and str(ckpt) in str(exc.value)
    assert ckpt.read_bytes() == before


# ---------------------------------------------------------------- the command line


def test_train_json_is_one_document(capsys):
    code, out, err = run_cli(capsys, "train", "digits-mlp", "--epochs", "2", "--json")
    assert code == 0 and err == ""
    doc = json.loads(out)
    assert doc["schema"] == "bnncost.training/2"
    assert doc["strategy"] == "proposed" and len(doc["train_loss"]) == 2 and doc["batch"] == 64
    assert "test_accuracy" in doc and "seconds_per_step" in doc
    m = doc["measured"]
    assert isinstance(m["peak_bytes"], int) and m["peak_event"].startswith("backward:") and m["process_peak_bytes"] > 0
    assert set(m["variables"][0]) >= {"name", "role", "format", "bytes"}
    assert set(m["ops"][0]) == {"layer", "phase", "kind", "format", "count"}


def test_train_table_and_progress(capsys):
    code, out, _ = run_cli(capsys, "train", "digits-cnn", "--epochs", "1", "--strategy", "standard")
    assert code == 0
    assert "test accuracy" in out and "ledger peak" in out and "tracemalloc peak" in out and "time per step" in out
    assert "samples/s" in out


@pytest.mark.parametrize("args, message", [
    (["train", "mlp", "--epochs", "1"], "but the model takes input [784]"),
    (["train", "digits-mlp", "--dataset", "mnist:/nowhere"], "MNIST directory not found"),
    (["train", "digits-mlp", "--resume", "/nowhere.npz"], "checkpoint not found"),
    (["train", "digits-mlp", "--retention", "later"], "--retention must be step or backward"),
    (["train", "digits-mlp", "--lr", "-1"], "--lr must be a positive finite number"),
    (["train", "digits-mlp", "--lr", "inf"], "--lr must be a positive finite number"),
    (["train", "digits-mlp", "--seed", "-1"], "--seed must be a non-negative integer"),
    (["verify", "digits-mlp", "--steps", "1000000000000"], "--steps must be an integer from 1 to 10,000"),
])
def test_train_bad_input_is_one_line_exit_2(capsys, args, message):
    code, out, err = run_cli(capsys, *args)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and message in err


def test_train_unholdable_format_exit_2(capsys, tmp_path):
    path = tmp_path / "bf16.yaml"
    path.write_text("name: bf16\nextends: proposed\nformats:\n  activation_grad: bfloat16\n")
    code, out, err = run_cli(capsys, "train", "digits-mlp", "--strategy", str(path), "--epochs", "1")
    assert code == 2 and "bfloat16, a format numpy cannot hold" in err and err.count("\n") == 1


def test_train_nan_exit_1(capsys, tmp_path):
    code, out, err = run_cli(capsys, "train", "digits-mlp", "--strategy", "standard", "--lr", "1e38",
                             "--epochs", "2", "--json")
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "loss became nan at step" in err


def test_a_strategy_with_bfloat16_is_named_in_the_error():
    s = load_strategy("proposed")
    with pytest.raises(TrainerError, match="role activation_grad"):
        from bnncost.costmodel.strategy import Strategy
        bad = Strategy(**{**s.model_dump(), "formats": {**s.formats, "activation_grad": "bfloat16"}})
        run_steps("digits-mlp", bad, batch=4, steps=1)
