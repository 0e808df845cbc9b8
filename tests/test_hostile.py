"""Hostile input, the way it was found: every case ends in one line on stderr and exit code 2 (1 for a
divergence), with no traceback, within seconds and bounded memory, and leaves nothing half-written.

Most cases run in-process under an alarm; the ones that could exhaust memory or hang (YAML bombs, huge
ranges, huge allocations) run in a subprocess with an address-space limit and a timeout.
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import re
import resource
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bnncost import cli

ROOT = Path(__file__).resolve().parents[1]
SECONDS = 20


def _alarm(signum, frame):
    raise TimeoutError(f"hostile case still running after {SECONDS} s")


def run(capsys, *args: str) -> tuple[int, str, str]:
    """The CLI in-process, under an alarm."""
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(SECONDS)
    try:
        with pytest.raises(SystemExit) as exc:
            cli.main([str(a) for a in args])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    got = capsys.readouterr()
    return exc.value.code, got.out, got.err


def run_bounded(*args: str, memory_gib: float = 2.0, timeout: float = SECONDS, cwd=None,
                columns: str = "100") -> tuple[int, str, str, float]:
    """The CLI in a subprocess limited to `memory_gib` of address space and `timeout` seconds."""
    limit = int(memory_gib * (1 << 30))

    def limits():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    boot = ("import runpy, sys; runpy.run_path(sys.argv.pop(1)); "
            "from bnncost import cli; cli.main(sys.argv[1:])")
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", boot, str(ROOT / "tests" / "conftest.py"), *map(str, args)],
                       capture_output=True, text=True, timeout=timeout, preexec_fn=limits, cwd=cwd,
                       env={**os.environ, "COLUMNS": columns, "OPENBLAS_NUM_THREADS": "1"})
    return p.returncode, p.stdout, p.stderr, time.perf_counter() - t


def one_line_error(code: int, err: str, expect: int = 2, *words: str) -> None:
    assert code == expect, f"exit {code}, stderr: {err!r}"
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, f"stderr has {len(lines)} lines: {err!r}"
    assert lines[0].startswith("bnncost: error: ")
    for w in words:
        assert w.lower() in lines[0].lower(), f"{w!r} not in {lines[0]!r}"


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


MLP_LAYERS = "  - dense: {units: 8}\n  - batchnorm: {}\n  - softmax_ce: {}\n"


# ---------------------------------------------------------------- numbers too large

@pytest.mark.parametrize("args", [
    ["predict", "mlp", "--batch", "1" + "0" * 400],
    ["predict", "mlp", "--batch", "-5"],
    ["predict", "mlp", "--batch", "0"],
    ["predict", "mlp", "--batch", "many"],
    ["compare", "mlp", "--batch", "1" + "0" * 400],
    ["fit", "mlp", "--device", "raspberry-pi-4b", "--batch", "1" + "0" * 400],
    ["sweep", "mlp", "--batch", "1:1" + "0" * 400],
    ["sweep", "mlp", "--batch", "1:1" + "0" * 400 + ":7"],
    ["sweep", "mlp", "--batch", "1,1" + "0" * 400],
    ["predict", "mlp", "--workspace", "-1"],
    ["predict", "mlp", "--workspace", "1" + "0" * 400],
    ["predict", "mlp", "--device", "raspberry-pi-4b", "--epoch-samples", "-3"],
    ["train", "digits-mlp", "--epochs", "0"],
    ["train", "digits-mlp", "--lr", "nan"],
    ["train", "digits-mlp", "--lr", "-1"],
])
def test_numbers_out_of_range(capsys, args):
    code, out, err = run(capsys, *args)
    one_line_error(code, err)
    assert out == ""


def test_a_huge_linear_sweep_is_refused_from_its_arithmetic():
    code, out, err, seconds = run_bounded("sweep", "mlp", "--batch", "1:1000000000000", "--linear", memory_gib=1.5)
    one_line_error(code, err, 2, "1,000,000,000,000 points")
    assert seconds < SECONDS


def test_bytes_are_exact_integers_at_any_batch(capsys):
    batch = 10 ** 20 + 1
    code, out, err = run(capsys, "predict", "mlp", "--batch", str(batch), "--json")
    assert code == 0, err
    doc = json.loads(out)
    m = doc["memory"]
    assert isinstance(m["peak_bytes"], int)
    fixed, per = m["fixed_bytes"], m["per_sample_bytes"]
    assert isinstance(fixed, int) and isinstance(per, int)
    assert m["peak_bytes"] == fixed + per * batch  # the fixed term does not round away


# ---------------------------------------------------------------- wrong YAML types in a model

BAD_MODELS = {
    "dense-int": ("- dense: 5", "layer 0"),
    "dense-bool": ("- dense: true", "layer 0"),
    "dense-word": ("- dense: units", "layer 0"),
    "residual-int": ("- residual: 5", "layer 0"),
    "name-list": ("- dense: {units: 4, name: [a, b]}", "name"),
    "units-float": ("- dense: {units: 1.5}", "units"),
    "units-list": ("- dense: {units: [3]}", "units"),
    "units-huge-float": ("- dense: {units: 1e400}", "units"),
    "kernel-str": ("- conv2d: {filters: 4, kernel: big}", "kernel"),
    "padding": ("- conv2d: {filters: 4, kernel: 3, padding: full}", "padding"),
    "unknown-kind": ("- attention: {heads: 4}", "attention"),
    "unknown-field": ("- dense: {units: 4, dropout: 0.5}", "dropout"),
    "two-keys": ("- {dense: {units: 4}, sign: {}}", "layer 0"),
    "residual-body-int": ("- residual: {body: 5}", "body"),
    "residual-bad-inner": ("- residual: {body: [{dense: {units: -1}}]}", "units"),
    "residual-extra": ("- residual: {body: [{sign: {}}], gate: 1}", "gate"),
    "residual-shortcut-str": ("- residual: {body: [{sign: {}}], shortcut: x}", "shortcut"),
    "layer-is-list": ("- [dense, 4]", "layer 0"),
    "layer-null": ("- null", "layer 0"),
}


@pytest.mark.parametrize("key", sorted(BAD_MODELS))
def test_model_yaml_with_wrong_types(capsys, tmp_path, key):
    layer, word = BAD_MODELS[key]
    path = write(tmp_path, "m.yaml", f"name: m\ninput: [16]\nlayers:\n  {layer}\n" + MLP_LAYERS)
    code, out, err = run(capsys, "predict", path)
    one_line_error(code, err, 2, "m.yaml", word)
    assert "pydantic" not in err and "https://" not in err and "dictionary update" not in err


@pytest.mark.parametrize("text,word", [
    ("name: m\ninput: [0]\nlayers:\n" + MLP_LAYERS, "input"),
    ("name: m\ninput: big\nlayers:\n" + MLP_LAYERS, "input"),
    ("name: m\ninput: [4, 4]\nlayers:\n" + MLP_LAYERS, "input"),
    ("name: m\ninput: [16]\nlayers: {dense: 4}\n", "layers"),
    ("name: m\ninput: [16]\nlayers: []\n", "layers"),
    ("- just\n- a list\n", "mapping"),
    ("", "mapping"),
    ("name: m\ninput: [16]\nlayers:\n" + MLP_LAYERS + "input: [32]\n", "duplicate"),
    ("name: m\ninput: [16]\ntrain_samples: -4\nlayers:\n" + MLP_LAYERS, "train_samples"),
    ("name: m\ninput: [4, 4, 1]\nlayers:\n  - conv2d: {filters: 4, kernel: 9}\n" + MLP_LAYERS, "conv2d_1"),
    ("name: m\ninput: [16]\nlayers:\n  - conv2d: {filters: 4, kernel: 3}\n" + MLP_LAYERS, "conv2d_1"),
    ("name: m\ninput: [16]\nlayers:\n  - dense: {units: 4}\n  - dense: {units: 4}\n", "softmax_ce"),
    ("name: m\ninput: [4, 4, 6]\nlayers:\n  - conv2d: {filters: 8, kernel: 1, groups: 4}\n" + MLP_LAYERS,
     "conv2d_1): groups: 4 does not divide the 6 input channels"),
    ("name: m\ninput: [4, 4, 6]\nlayers:\n  - conv2d: {filters: 8, kernel: 1, groups: 3}\n" + MLP_LAYERS,
     "conv2d_1): groups: 3 does not divide the 8 filters"),
    ("name: m\ninput: [4, 4, 6]\nlayers:\n  - conv2d: {filters: 6, kernel: 1, groups: -6}\n" + MLP_LAYERS,
     "conv2d_1): groups: input should be greater than 0"),
    ("name: m\ninput: [4, 4, 6]\nlayers:\n  - conv2d: {filters: 6, kernel: 1, bias: true}\n" + MLP_LAYERS,
     "conv2d_1): bias: a binary layer has no bias; batchnorm follows it"),
    ("name: m\ninput: [16]\nlayers:\n  - dense: {units: 4, binary: false, bias: 1}\n" + MLP_LAYERS,
     "dense_1): bias: input should be a valid boolean"),
    ("name: m\ninput: [16]\nlayers: [\n", "malformed YAML"),
    ("name: m\ninput: [16]\nlayers:\n  - dense: {units: 4}\n\t- sign: {}\n", "malformed YAML"),
])
def test_model_documents_that_cannot_be_used(capsys, tmp_path, text, word):
    path = write(tmp_path, "m.yaml", text)
    code, out, err = run(capsys, "predict", path)
    one_line_error(code, err, 2, "m.yaml", word)


def test_encodings_and_binary_files(capsys, tmp_path):
    text = "name: m\ninput: [16]\nlayers:\n" + MLP_LAYERS
    for name, data in {"u16.yaml": text.encode("utf-16"), "bin.yaml": bytes(range(256)) * 4,
                       "latin.yaml": "name: caf\xe9\ninput: [16]\n".encode("latin-1")}.items():
        path = write(tmp_path, name, data)
        code, out, err = run(capsys, "predict", path)
        one_line_error(code, err, 2, name)
        assert "codec" not in err


@pytest.mark.parametrize("args,word", [
    (["predict", "no/such/model.yaml"], "not found"),
    (["predict", "mlp", "--strategy", "no/such.yaml"], "not found"),
    (["predict", "mlp", "--device", "no/such.yaml"], "not found"),
    (["predict", "nosuchmodel"], "unknown model"),
    (["predict", "mlp", "--strategy", "nosuch"], "unknown strategy"),
    (["predict", "mlp", "--device", "nosuch"], "nosuch"),
    (["predict", "mlp", "--retention", "forever"], "retention"),
])
def test_missing_and_unknown_names(capsys, args, word):
    code, out, err = run(capsys, *args)
    one_line_error(code, err, 2, word)


def test_a_directory_given_as_a_file(capsys, tmp_path):
    d = tmp_path / "dir.yaml"
    d.mkdir()
    for args in (["predict", d], ["predict", "mlp", "--strategy", d], ["predict", "mlp", "--device", d]):
        code, out, err = run(capsys, *args)
        one_line_error(code, err, 2, "dir.yaml")


# ---------------------------------------------------------------- strategies

BASE_STRATEGY = "batchnorm: l1\nweight_grad: sign\noptimizer: adam\n"


@pytest.mark.parametrize("text,word", [
    ("extends: proposed\nformats: {binary_input: [bool]}\n", "binary_input"),
    ("extends: proposed\nformats: {binary_input: {a: 1}}\n", "binary_input"),
    ("extends: proposed\nformats: [bool]\n", "formats"),
    ("extends: proposed\nformats: {nosuchrole: bool}\n", "nosuchrole"),
    ("extends: proposed\nformats: {binary_input: float8}\n", "float8"),
    ("extends: proposed\noptimizer: [adam]\n", "optimizer"),
    ("extends: [proposed]\n", "extends"),
    ("extends: proposed\nname: [a]\n", "name"),
    ("extends: proposed\nbatchnorm: l3\n", "batchnorm"),
    ("extends: proposed\nextends: standard\n", "duplicate"),
    ("extends: s.yaml\n", "cycle"),
    ("- a\n", "mapping"),
])
def test_strategy_files_that_cannot_be_used(capsys, tmp_path, text, word):
    path = write(tmp_path, "s.yaml", text)
    code, out, err = run(capsys, "predict", "mlp", "--strategy", path)
    one_line_error(code, err, 2, "s.yaml", word)


def test_an_extends_cycle_through_relative_paths(capsys, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write(tmp_path / "a", "x.yaml", "extends: ../b/y.yaml\n")
    write(tmp_path / "b", "y.yaml", "extends: ../a/x.yaml\n")
    code, out, err = run(capsys, "predict", "mlp", "--strategy", tmp_path / "a" / "x.yaml")
    one_line_error(code, err, 2, "cycle")
    assert len(err) < 600


# ---------------------------------------------------------------- devices

TOY_DEVICE = (ROOT / "tests" / "data" / "toy-device.yaml").read_text()


@pytest.mark.parametrize("old,new,word", [
    ("name: toy\n", "name: toy\nprocess_nm: .nan\n", "process_nm"),
    ("name: toy\n", "name: toy\nprocess_nm: .inf\n", "process_nm"),
    ('idle_w: "2 W"', "idle_w: .nan", "idle_w"),
    ('"10 GB/s"', '"1e400 B/s"', "bandwidth"),
    ('"4 pJ"', '"nan pJ"', "pj"),
    ("name: toy\n", "name: toy\ncpu: {arch: sparc, source: t}\n", "cpu.arch"),
    ("name: toy\n", "name: toy\ncpu: {arch: arm64}\n", "cpu.source"),
])
def test_device_values_that_are_not_finite(capsys, tmp_path, old, new, word):
    text = TOY_DEVICE.replace(old, new, 1)
    path = write(tmp_path, "d.yaml", text)
    code, out, err = run(capsys, "predict", "mlp", "--device", path)
    one_line_error(code, err, 2, "d.yaml", word)


def test_device_nested_deep_is_one_line(capsys, tmp_path):
    path = write(tmp_path, "deep.yaml", "name: x\nmemory: " + "[" * 3000 + "]" * 3000 + "\n")
    code, out, err = run(capsys, "predict", "mlp", "--device", path)
    one_line_error(code, err, 2, "deep.yaml")


# ---------------------------------------------------------------- markup in names

@pytest.mark.parametrize("name", ["[/bold]", "[red]x[/red]", "[link=x]y", "a[/]b"])
def test_markup_in_user_names_is_printed_literally(capsys, tmp_path, name):
    model = write(tmp_path, "m.yaml", f"name: '{name}'\ninput: [16]\nlayers:\n"
                  f"  - dense: {{units: 8, name: '{name}'}}\n  - batchnorm: {{}}\n  - softmax_ce: {{}}\n")
    strat = write(tmp_path, "s.yaml", f"extends: proposed\nname: '{name}'\ndescription: '{name}'\n")
    for args in (["predict", model, "--strategy", strat, "--by", "variable"],
                 ["compare", model, "--strategies", f"standard,{strat}"],
                 ["fit", model, "--device", "raspberry-pi-4b"],
                 ["sweep", model, "--batch", "1:8", "--strategies", f"standard,{strat}"],
                 ["strategies"]):
        code, out, err = run(capsys, *args)
        assert code == 0, (args, err)
        assert "Traceback" not in err
        if args[0] != "strategies":
            assert name in out, (args, out)


def test_markup_in_a_device_name(capsys, tmp_path):
    path = write(tmp_path, "d.yaml", TOY_DEVICE.replace("name: toy", "name: '[/bold]'", 1))
    code, out, err = run(capsys, "predict", "mlp", "--device", path)
    assert code == 0, err
    assert "[/bold]" in out


# ---------------------------------------------------------------- YAML bombs and size (bounded subprocess)

def _laughs(depth: int = 12) -> str:
    """An inline billion-laughs list: 9**depth strings once expanded."""
    items = ['&a0 "lol"']
    for i in range(1, depth):
        items.append(f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "[" + ", ".join(items) + "]"


@pytest.mark.parametrize("where", ["model-description", "model-name", "residual-bodies", "strategy-description",
                                   "device-description"])
def test_yaml_bombs_are_refused_quickly(tmp_path, where):
    bomb = _laughs()
    if where == "model-description":
        path = write(tmp_path, "m.yaml", f"name: m\ndescription: {bomb}\ninput: [16]\nlayers:\n" + MLP_LAYERS)
        args = ["predict", path]
    elif where == "model-name":
        path = write(tmp_path, "m.yaml", f"name: {bomb}\ninput: [16]\nlayers:\n" + MLP_LAYERS)
        args = ["predict", path]
    elif where == "residual-bodies":
        body = "&b0 [{sign: {}}]"
        for i in range(1, 30):
            body = f"&b{i} [{{residual: {{body: {body}}}}}, {{residual: {{body: *b{i - 1}}}}}]"
        path = write(tmp_path, "m.yaml", f"name: m\ninput: [16]\nlayers:\n  - residual: {{body: {body}}}\n" + MLP_LAYERS)
        args = ["predict", path]
    elif where == "strategy-description":
        path = write(tmp_path, "s.yaml", f"extends: proposed\ndescription: {bomb}\n")
        args = ["predict", "mlp", "--strategy", path]
    else:
        path = write(tmp_path, "d.yaml", TOY_DEVICE.replace("description: toy device with round numbers for tests",
                                                            f"description: {bomb}"))
        args = ["predict", "mlp", "--device", path]
    code, out, err, seconds = run_bounded(*args)
    one_line_error(code, err, 2, path.name)
    assert seconds < SECONDS


def _indent(text: str) -> str:
    return "\n".join("  " + ln for ln in text.splitlines())


def test_a_huge_model_file_is_refused_before_parsing(tmp_path):
    path = tmp_path / "big.yaml"
    with open(path, "w") as f:
        f.write("name: big\ninput: [16]\nlayers:\n")
        line = "  - sign: {}\n"
        f.write(line * (50 * (1 << 20) // len(line)))
    code, out, err, seconds = run_bounded("predict", path)
    one_line_error(code, err, 2, "big.yaml", "MiB")
    assert seconds < 10


def test_too_many_layers_are_refused(tmp_path):
    path = write(tmp_path, "many.yaml", "name: many\ninput: [16]\nlayers:\n" + "  - sign: {}\n" * 25000 + MLP_LAYERS)
    code, out, err, seconds = run_bounded("predict", path)
    one_line_error(code, err, 2, "many.yaml", "layers")


def test_deep_nesting_is_refused(tmp_path):
    deep = "name: m\ninput: [16]\nlayers:\n  - residual: " + "{body: [" * 200 + "{sign: {}}" + "]}" * 200 + "\n" + MLP_LAYERS
    path = write(tmp_path, "deep.yaml", deep)
    code, out, err, seconds = run_bounded("predict", path)
    one_line_error(code, err, 2, "deep.yaml", "deep")


# ---------------------------------------------------------------- models too big to train

@pytest.mark.parametrize("command", ["train", "verify"])
@pytest.mark.parametrize("text", [
    "name: huge\ninput: [16]\nlayers:\n  - dense: {units: 10000000000}\n  - batchnorm: {}\n  - softmax_ce: {}\n",
    "name: huge\ninput: [100000000000]\nlayers:\n" + MLP_LAYERS,
])
def test_models_too_big_to_train_are_refused_with_numbers(tmp_path, command, text):
    path = write(tmp_path, "huge.yaml", text)
    args = [command, path, "--dataset", "synthetic"] + (["--epochs", "1"] if command == "train" else [])
    code, out, err, seconds = run_bounded(*args, memory_gib=3)
    one_line_error(code, err, 2, "memory")
    assert seconds < SECONDS


# ---------------------------------------------------------------- datasets

def _idx(path: Path, arr: np.ndarray) -> None:
    head = struct.pack(">BBBB", 0, 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    path.write_bytes(head + arr.astype(np.uint8).tobytes())


def _mnist(folder: Path, n_train=20, n_test=10, labels=None) -> Path:
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    _idx(folder / "train-images-idx3-ubyte", rng.integers(0, 255, (n_train, 28, 28)))
    _idx(folder / "train-labels-idx1-ubyte", rng.integers(0, 10, n_train) if labels is None else labels)
    _idx(folder / "t10k-images-idx3-ubyte", rng.integers(0, 255, (n_test, 28, 28)))
    _idx(folder / "t10k-labels-idx1-ubyte", rng.integers(0, 10, n_test))
    return folder


def test_mnist_with_no_images(capsys, tmp_path):
    d = _mnist(tmp_path / "mnist", n_train=0)
    code, out, err = run(capsys, "train", "mlp", "--dataset", f"mnist:{d}", "--epochs", "1")
    one_line_error(code, err, 2, "train-images")


def test_mnist_with_no_test_images_gives_null_accuracy_in_strict_json(capsys, tmp_path):
    d = _mnist(tmp_path / "mnist", n_train=16, n_test=0)
    code, out, err = run(capsys, "train", "mlp", "--dataset", f"mnist:{d}", "--epochs", "1", "--batch", "8",
                         "--json")
    assert code == 0, err
    doc = json.loads(out, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert doc["test_accuracy"] is None


def test_mnist_label_out_of_range(capsys, tmp_path):
    d = _mnist(tmp_path / "mnist", labels=np.full(20, 200))
    code, out, err = run(capsys, "train", "mlp", "--dataset", f"mnist:{d}", "--epochs", "1")
    one_line_error(code, err, 2, "classes")


def _cifar(folder: Path, batch: dict | None = None, raw: bytes | None = None) -> Path:
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    good = {b"data": rng.integers(0, 255, (10, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, 10))}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps(good))
    if raw is not None:
        (folder / "data_batch_1").write_bytes(raw)
    elif batch is not None:
        (folder / "data_batch_1").write_bytes(pickle.dumps(batch))
    return folder


CIFAR_BAD = {
    "labels-dict": {b"data": np.zeros((10, 3072), np.uint8), b"labels": {"a": 1}},
    "labels-int": {b"data": np.zeros((10, 3072), np.uint8), b"labels": 7},
    "labels-huge": {b"data": np.zeros((10, 3072), np.uint8), b"labels": [10 ** 30] * 10},
    "labels-negative": {b"data": np.zeros((10, 3072), np.uint8), b"labels": [-3] * 10},
    "labels-float": {b"data": np.zeros((10, 3072), np.uint8), b"labels": [0.5] * 10},
    "data-nan": {b"data": np.full((10, 3072), np.nan), b"labels": [1] * 10},
    "data-float": {b"data": np.full((10, 3072), 3.5), b"labels": [1] * 10},
    "data-negative": {b"data": np.full((10, 3072), -4, dtype=np.int64), b"labels": [1] * 10},
    "data-shape": {b"data": np.zeros((10, 100), np.uint8), b"labels": [1] * 10},
}


@pytest.mark.parametrize("key", sorted(CIFAR_BAD))
def test_cifar_batches_that_cannot_be_used(capsys, tmp_path, key):
    d = _cifar(tmp_path / "cifar", CIFAR_BAD[key])
    code, out, err = run(capsys, "train", "cnv", "--dataset", f"cifar10:{d}", "--epochs", "1")
    one_line_error(code, err, 2, "data_batch_1")


def test_cifar_pickle_declaring_a_huge_field(tmp_path):
    # BINBYTES8 with a length of 2**40 and a few bytes behind it
    raw = b"\x80\x04" + b"\x8e" + struct.pack("<Q", 1 << 40) + b"x" * 64
    d = _cifar(tmp_path / "cifar", raw=raw)
    code, out, err, seconds = run_bounded("train", "cnv", "--dataset", f"cifar10:{d}", "--epochs", "1", memory_gib=2)
    one_line_error(code, err, 2, "data_batch_1")


def test_a_mnist_file_declaring_huge_dimensions(capsys, tmp_path):
    d = _mnist(tmp_path / "mnist")
    (d / "train-images-idx3-ubyte").write_bytes(struct.pack(">BBBB", 0, 0, 8, 3) + struct.pack(">3I", 2**31, 2**31, 2**31))
    code, out, err = run(capsys, "train", "mlp", "--dataset", f"mnist:{d}", "--epochs", "1")
    one_line_error(code, err, 2, "train-images")


def test_a_gzip_bomb_is_not_read_in_full(tmp_path):
    d = _mnist(tmp_path / "mnist")
    os.unlink(d / "train-images-idx3-ubyte")
    zeros = gzip.compress(bytes(1 << 20))  # one member inflating to 1 MiB; gzip files may chain members
    head = gzip.compress(struct.pack(">BBBB", 0, 0, 8, 3) + struct.pack(">3I", 20, 28, 28))
    (d / "train-images-idx3-ubyte.gz").write_bytes(head + zeros * 3000)  # 3 GiB behind a 20-image header
    code, out, err, seconds = run_bounded("train", "mlp", "--dataset", f"mnist:{d}", "--epochs", "1", memory_gib=2)
    assert code in (0, 1), err  # 20 blank images train (or diverge: constant pixels give batchnorm nothing)
    assert "Traceback" not in err


# ---------------------------------------------------------------- checkpoints given to --resume

def _trained(tmp_path: Path) -> Path:
    ck = tmp_path / "ck.npz"
    code = subprocess.run([sys.executable, "-c", "import runpy, sys; runpy.run_path(sys.argv.pop(1)); "
                           "from bnncost import cli; cli.main(sys.argv[1:])", str(ROOT / "tests" / "conftest.py"),
                           "train", "digits-mlp", "--epochs", "1", "--batch", "256", "--save", str(ck), "--json"],
                          capture_output=True, timeout=120).returncode
    assert code == 0
    return ck


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return _trained(tmp_path_factory.mktemp("ck"))


def _rewrite(src: Path, dst: Path, meta_edit=None, extra: dict | None = None, drop: str | None = None) -> Path:
    with np.load(src) as z:
        members = {k: z[k] for k in z.files}
    meta = json.loads(bytes(members["__header__"]).decode())
    if meta_edit:
        meta_edit(meta)
    members["__header__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    if drop:
        members = {k: v for k, v in members.items() if not k.endswith(drop)}
    members.update(extra or {})
    with open(dst, "wb") as f:
        np.savez(f, **members)
    return dst


CHECKPOINT_BAD = {
    "no-adam_t": dict(meta_edit=lambda m: m.pop("adam_t")),
    "adam_t-str": dict(meta_edit=lambda m: m.update(adam_t="many")),
    "adam_t-negative": dict(meta_edit=lambda m: m.update(adam_t=-4)),
    "history-int": dict(meta_edit=lambda m: m.update(history=5)),
    "history-short": dict(meta_edit=lambda m: m.update(history={"train_loss": []})),
    "rng-junk": dict(meta_edit=lambda m: m.update(rng_state={"bit_generator": "nope"})),
    "rng-missing": dict(meta_edit=lambda m: m.pop("rng_state")),
    "epoch-float": dict(meta_edit=lambda m: m.update(epoch=1.5)),
    "steps-missing": dict(meta_edit=lambda m: m.pop("steps")),
    "extra-member": dict(extra={"p:evil": np.zeros(4, np.float32)}),
    "unknown-member": dict(extra={"surprise": np.zeros(4, np.float32)}),
    "missing-member": dict(drop="dense_1.weight"),
}


@pytest.mark.parametrize("key", sorted(CHECKPOINT_BAD))
def test_checkpoints_that_cannot_be_resumed(capsys, tmp_path, checkpoint, key):
    bad = _rewrite(checkpoint, tmp_path / "bad.npz", **CHECKPOINT_BAD[key])
    code, out, err = run(capsys, "train", "digits-mlp", "--epochs", "2", "--batch", "256", "--resume", bad)
    one_line_error(code, err, 2, "bad.npz")


def test_a_member_claiming_a_huge_shape_is_refused_before_loading(tmp_path, checkpoint):
    bad = _rewrite(checkpoint, tmp_path / "bad.npz")
    # rewrite one member's .npy header to claim 2**40 elements
    import zipfile
    src = zipfile.ZipFile(bad)
    names = src.namelist()
    target = next(n for n in names if n.startswith("p:"))
    data = {n: src.read(n) for n in names}
    src.close()
    raw = data[target]
    hlen = struct.unpack("<H", raw[8:10])[0]
    header = raw[10:10 + hlen].decode("latin-1")
    start = header.index("'shape': (") + len("'shape': (")
    end = header.index(")", start)
    new = header[:start] + str(1 << 40) + "," + header[end:]
    new = new.rstrip() .ljust(hlen - 1) + "\n"
    data[target] = raw[:8] + struct.pack("<H", len(new)) + new.encode("latin-1") + raw[10 + hlen:]
    with zipfile.ZipFile(bad, "w") as z:
        for n, b in data.items():
            z.writestr(n, b)
    code, out, err, seconds = run_bounded("train", "digits-mlp", "--epochs", "2", "--batch", "256", "--resume", bad,
                                          memory_gib=2)
    one_line_error(code, err, 2, "bad.npz")


# ---------------------------------------------------------------- divergence that is not NaN

@pytest.mark.parametrize("strategy", ["standard", "bop", "proposed"])
def test_an_exploding_run_stops_with_exit_1_and_writes_no_bad_checkpoint(capsys, tmp_path, strategy):
    ck = tmp_path / "ck.npz"
    code, out, err = run(capsys, "train", "digits-mlp", "--strategy", strategy, "--lr", "1e30", "--epochs", "3",
                         "--batch", "128", "--save", ck)
    one_line_error(code, err, 1, "diverged")
    if ck.exists():
        with np.load(ck) as z:
            for k in z.files:
                if k.startswith("p:") and z[k].dtype.kind == "f":
                    assert np.isfinite(z[k]).all(), k


def test_sgd_at_a_huge_rate_diverges(capsys, tmp_path):
    strat = write(tmp_path, "sgd.yaml", "extends: standard\nname: sgd\noptimizer: sgd\n")
    code, out, err = run(capsys, "train", "digits-mlp", "--strategy", strat, "--lr", "1e30", "--epochs", "3",
                         "--batch", "128")
    one_line_error(code, err, 1, "diverged")


# ---------------------------------------------------------------- refused early, nothing left behind

def test_an_unwritable_save_path_is_refused_before_training(capsys, tmp_path):
    code, out, err = run(capsys, "train", "digits-mlp", "--epochs", "50", "--save", "/nonexistent/dir/x.npz")
    one_line_error(code, err, 2, "/nonexistent/dir")
    assert out == ""


@pytest.mark.parametrize("args", [
    ["import", str(ROOT / "tests/data/onnx/mlp.torchscript-opset17.onnx"), "-o", "{target}"],
    ["sweep", "mlp", "--batch", "1:8", "--plot", "{target}.png"],
    ["compare", "mlp", "--plot", "{target}.svg"],
    ["train", "digits-mlp", "--epochs", "1", "--save", "{target}.npz"],
    ["calibrate", "--quick", "--out", "{target}.yaml"],
])
@pytest.mark.parametrize("where", ["folder", "proc", "missing"])
def test_every_output_path_is_checked_before_work_in_one_line(capsys, tmp_path, args, where):
    """A directory, a place where no file can be created (/proc: permission bits say yes to root) or a missing
    folder: one line naming the option and the path, never an errno with a temporary file's name."""
    if where == "proc" and not os.path.isdir("/proc/self"):
        pytest.skip("no /proc")
    if args[0] == "import":
        pytest.importorskip("onnx")
    target = {"folder": str(tmp_path), "proc": "/proc/bnncost-x", "missing": str(tmp_path / "no" / "x")}[where]
    if where == "folder" and args[0] != "import":
        (tmp_path / "d.png").mkdir(), (tmp_path / "d.svg").mkdir(), (tmp_path / "d.npz").mkdir()
        (tmp_path / "d.yaml").mkdir()
        target = str(tmp_path / "d")
    argv = [a.replace("{target}", target) for a in args]
    code, out, err = run(capsys, *argv)
    one_line_error(code, err, 2, argv[-1] if args[-1].startswith("{target}") else target)
    assert ".tmp" not in err and "Errno" not in err


def test_written_files_get_the_usual_mode_and_replace_whole(tmp_path):
    from bnncost.layers.outfile import atomic_output

    mask = os.umask(0o022)
    try:
        with atomic_output(tmp_path / "m.yaml", "--output") as fh:
            fh.write("a: 1\n")
        assert (tmp_path / "m.yaml").stat().st_mode & 0o777 == 0o644
        with pytest.raises(RuntimeError):
            with atomic_output(tmp_path / "m.yaml", "--output") as fh:
                fh.write("half")
                raise RuntimeError("interrupted")
        assert (tmp_path / "m.yaml").read_text() == "a: 1\n" and len(list(tmp_path.iterdir())) == 1
    finally:
        os.umask(mask)


def test_stale_temporary_checkpoints_are_cleaned_on_start(capsys, tmp_path):
    ck = tmp_path / "ck.npz"
    for i in range(3):
        (tmp_path / f".ck.npz.abc{i}.tmp").write_bytes(b"x" * 1000)
    (tmp_path / ".other.npz.zz.tmp").write_bytes(b"keep")
    code, out, err = run(capsys, "train", "digits-mlp", "--epochs", "1", "--batch", "256", "--save", ck, "--json")
    assert code == 0, err
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == [".other.npz.zz.tmp", "ck.npz"]


def test_a_kill_during_checkpoint_writes_keeps_the_last_good_one(tmp_path):
    """SIGKILL the trainer repeatedly while it writes checkpoints: the file under the real name always
    loads, and the next start leaves no temporary files behind."""
    ck = tmp_path / "ck.npz"
    boot = ("import runpy, sys; runpy.run_path(sys.argv.pop(1)); from bnncost import cli; cli.main(sys.argv[1:])")
    base = [sys.executable, "-c", boot, str(ROOT / "tests" / "conftest.py"), "train", "digits-mlp", "--batch", "512",
            "--save", str(ck), "--json"]
    subprocess.run(base + ["--epochs", "1"], check=True, capture_output=True, timeout=120)
    rng = np.random.default_rng(0)
    for i in range(4):
        p = subprocess.Popen(base + ["--epochs", "400"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0 + rng.uniform(0, 1.5))
        p.kill()
        p.wait()
        with np.load(ck) as z:  # the real name is always a whole checkpoint
            assert "__header__" in z.files
    subprocess.run(base + ["--epochs", "1"], capture_output=True, timeout=120)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


# ---------------------------------------------------------------- strict JSON

def test_a_device_that_would_print_infinity_is_refused(capsys, tmp_path):
    text = TOY_DEVICE
    import re
    text = re.sub(r"bandwidth_bytes_per_s: [^,}\n]+", "bandwidth_bytes_per_s: 1e-300", text, count=1)
    path = write(tmp_path, "d.yaml", text)
    code, out, err = run(capsys, "predict", "mlp", "--device", path, "--json")
    if code == 0:
        json.loads(out, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    else:
        one_line_error(code, err, 2, "d.yaml")


# ---------------------------------------------------------------- exit codes are documented

def test_exit_codes_are_documented(capsys):
    readme = (ROOT / "README.md").read_text()
    assert "Exit codes" in readme or "exit codes" in readme
    code, out, err = run(capsys, "--help")
    assert code == 0
    assert "exit" in out.lower() and "2" in out


# ---------------------------------------------------------------- found by a hostile sweep (session 23)

@pytest.mark.parametrize("text,words", [
    # 1.25e9 x 1.25e9 weights: the int64 sums of the step wrapped to a negative peak before
    ("name: t\ninput: [1250000000]\nlayers:\n  - dense: {units: 1250000000}\n  - softmax_ce: {}\n",
     ["layer 0 (dense_1)", "weight", "2^40"]),
    ("name: t\ninput: [8, 8, 3]\nlayers:\n  - conv2d: {filters: 1000000000000000000000000000000, kernel: 3}\n"
     "  - flatten: {}\n  - softmax_ce: {}\n", ["layer 0 (conv2d_1)", "output"]),
    ("name: t\ninput: [1000000000000000000000000000000]\nlayers:\n" + MLP_LAYERS, ["input:", "2^40"]),
    ("name: t\ninput: [4, 4, 3]\nlayers:\n  - conv2d: {filters: 4, kernel: 1, stride: 1000000000000}\n"
     "  - flatten: {}\n" + MLP_LAYERS, ["layer 0 (conv2d_1)", "stride 1000000000000 is larger than the map's 4 rows"]),
    ("name: t\ninput: [4, 4, 3]\nlayers:\n  - maxpool: {size: 100000, stride: 1, padding: same}\n  - flatten: {}\n" + MLP_LAYERS,
     ["layer 0 (maxpool_1)", "window of 100000 rows"]),
])
def test_sizes_beyond_any_device_are_refused_not_wrapped(capsys, tmp_path, text, words):
    path = write(tmp_path, "big.yaml", text)
    for command in ("predict", "verify"):
        code, out, err = run(capsys, command, path, "-b", "4")
        one_line_error(code, err, 2, "big.yaml", *words)
        assert out == ""


def test_engine_byte_counts_beyond_any_implementation_are_refused(capsys, tmp_path):
    path = write(tmp_path, "e.yaml", "name: e\nextends: larq\nruntime:\n"
                                     "  - {name: fw, bytes: 100000000000000000000000000, source: x}\n")
    code, out, err = run(capsys, "predict", "mlp", "--engine", path)
    one_line_error(code, err, 2, "e.yaml", "runtime[0].bytes", "2^50")


def test_a_model_that_starts_with_a_residual_block_trains_and_evaluates(capsys, tmp_path):
    """Evaluation (no ledger) kept the data only until its first reader: the residual's add found it gone."""
    path = write(tmp_path, "r.yaml", "name: r\ninput: [8]\nlayers:\n  - residual: {body: [{dense: {units: 8}}]}\n"
                                     "  - dense: {units: 10}\n  - softmax_ce: {}\n")
    code, out, err = run(capsys, "train", path, "--dataset", "synthetic", "--epochs", "1", "-b", "4")
    assert code == 0, err
    assert "test accuracy" in out.lower() or "accuracy" in out.lower()


@pytest.mark.parametrize("option", [["--engine", ""], ["--plot", ""]])
def test_an_empty_option_value_is_refused_not_ignored(capsys, option):
    code, out, err = run(capsys, "compare", "mlp", *option)
    one_line_error(code, err, 2)
    assert out == ""


def test_an_output_path_that_is_a_link_is_written_through_it_and_a_pipe_is_refused(capsys, tmp_path):
    (tmp_path / "real.png").write_bytes(b"old")
    (tmp_path / "link.png").symlink_to(tmp_path / "real.png")
    code, out, err = run(capsys, "sweep", "mlp", "--batch", "1:4", "--plot", str(tmp_path / "link.png"))
    assert code == 0, err
    assert (tmp_path / "link.png").is_symlink() and (tmp_path / "real.png").read_bytes()[:4] == b"\x89PNG"
    os.mkfifo(tmp_path / "pipe.png")
    code, out, err = run(capsys, "sweep", "mlp", "--batch", "1:4", "--plot", str(tmp_path / "pipe.png"))
    one_line_error(code, err, 2, "pipe.png", "not a regular file")
    assert (tmp_path / "pipe.png").is_fifo() and out == ""


def test_import_never_writes_over_the_onnx_file_it_reads(capsys, tmp_path):
    pytest.importorskip("onnx")
    src = tmp_path / "m.onnx"
    src.write_bytes((ROOT / "tests/data/onnx/mlp.torchscript-opset17.onnx").read_bytes())
    code, out, err = run(capsys, "import", str(src), "-o", str(src))
    one_line_error(code, err, 2, "is the ONNX file being imported")
    assert src.read_bytes() == (ROOT / "tests/data/onnx/mlp.torchscript-opset17.onnx").read_bytes()


@pytest.mark.parametrize("columns", ["0", "20"])
def test_a_narrow_terminal_wraps_lines_and_never_crops_a_figure(columns):
    code, wide, err, _ = run_bounded("fit", "digits-cnn", "--device", "jetson-nano")
    assert code == 0
    code, narrow, err, _ = run_bounded("fit", "digits-cnn", "--device", "jetson-nano", columns=columns)
    assert code == 0 and narrow.strip()
    for figure in ("44,782", "264,590", "336.34 KiB", "55.33 KiB"):
        assert figure in wide and figure in narrow, figure


def test_a_device_figure_no_device_has_is_refused(capsys, tmp_path):
    """1e308 pJ per op printed an energy of inf; 1e-300 B/s a time of 1e296 s."""
    text = (ROOT / "hardware_profiles" / "jetson-nano.yaml").read_text()
    bad = re.sub(r"mac: \{pj: \"[^\"]*\"", "mac: {pj: 1e308", text, count=1)
    assert bad != text
    code, out, err = run(capsys, "predict", "mlp", "--device", write(tmp_path, "dev.yaml", bad))
    one_line_error(code, err, 2, "dev.yaml", "pj", "outside what any device has")
    assert out == ""


def test_an_engine_that_extends_a_missing_file_names_its_extends_field(capsys, tmp_path):
    code, out, err = run(capsys, "predict", "mlp", "--engine", write(tmp_path, "e.yaml", "name: e\nextends: gone.yaml\n"))
    one_line_error(code, err, 2, "e.yaml: extends:", "gone.yaml", "not found")


@pytest.mark.parametrize("field", ["name: \"a\\e[31mred\"", "name: \"two\\nlines\""])
def test_a_model_name_with_control_characters_is_refused(capsys, tmp_path, field):
    code, out, err = run(capsys, "predict", write(tmp_path, "m.yaml", f"{field}\ninput: [8]\nlayers:\n" + MLP_LAYERS))
    one_line_error(code, err, 2, "m.yaml", "name: must be printable")


@pytest.mark.parametrize("layer,field", [('dense: {units: "10"}', "units"), ("dense: {units: true}", "units"),
                                         ('dense: {units: 10, binary: "no"}', "binary")])
def test_layer_fields_are_not_coerced(capsys, tmp_path, layer, field):
    """A string, a boolean for a count or a word for a flag is a mistake in the file, not 10, 1 or False."""
    path = write(tmp_path, "m.yaml", f"name: m\ninput: [8]\nlayers:\n  - {layer}\n" + MLP_LAYERS)
    code, out, err = run(capsys, "predict", path)
    one_line_error(code, err, 2, "m.yaml", f"layer 0 (dense_1): {field}")


def test_a_device_larger_than_any_is_refused_and_fit_is_exact_up_to_it(capsys, tmp_path):
    """RAM beyond 1 EiB is refused; below it the largest batch is exact (it was capped at 2^40 without a word)."""
    text = (ROOT / "hardware_profiles" / "jetson-nano.yaml").read_text()
    huge = re.sub(r"ram_bytes: \{value: \"[^\"]*\"", "ram_bytes: {value: 1e300", text, count=1)
    assert huge != text
    code, out, err = run(capsys, "fit", "mlp", "--device", write(tmp_path, "huge.yaml", huge))
    one_line_error(code, err, 2, "huge.yaml", "ram_bytes")
    from bnncost.costmodel.memory import memory_plan
    from bnncost.costmodel.strategy import load_strategy
    from bnncost.layers.graph import graph_of

    plan = memory_plan(graph_of("mlp"), load_strategy("standard"))
    usable = 2**60
    best = plan.max_batch(usable)
    assert best > 2**40 and plan.peak(best)[0] <= usable < plan.peak(best + 1)[0]


def test_a_yaml_alias_is_refused_at_its_own_line(capsys, tmp_path):
    path = write(tmp_path, "al.yaml", "name: &n t\ninput: [8]\nlayers:\n" + MLP_LAYERS + "description: *n\n")
    code, out, err = run(capsys, "predict", path)
    one_line_error(code, err, 2, "al.yaml", "(line 7)", "aliases")


def test_a_step_beyond_2_to_the_62_bytes_is_refused_not_wrapped(capsys, tmp_path):
    """Every rule is bounded (1 PiB), but 5,000 layers of one are not: the plan refuses the sum in one line."""
    engine = write(tmp_path, "e.yaml", "name: e\nextends: reference\nruntime:\n"
                                       "  - {name: huge, kinds: [sign], bytes: 1125899906842624, source: t}\n")
    model = write(tmp_path, "m.yaml", "name: m\ninput: [8]\nlayers:\n" + "  - sign: {}\n" * 5000 + MLP_LAYERS)
    code, out, err = run(capsys, "predict", model, "--engine", engine)
    one_line_error(code, err, 2, "runtime.huge", "2^62")
    assert out == ""
