"""Export bnncost models from PyTorch and Larq to ONNX the way users do, import them back, compare.

Checks issue 11's importer on real exports rather than hand-made graphs: every model (zoo name or
YAML) is built in the framework (`torch_model.py`, `larq_model.py`), given random but
trained-looking values (binary latent weights uniform in [-1, 1], batchnorm statistics and
gamma/beta random, so a fused batchnorm leaves a different scale per channel), exported with each
exporter variant, then `import_onnx`ed and compared with the source model: the same layers
(kinds and fields, residual blocks nested), the same input, the same shape after every layer, the
same parameter counts (l2 and l1 batchnorm), and `bnncost predict --json` of the .onnx equal to that
of the source model to the byte. An export the importer refuses is reported with its one line.

Exporter variants (`--exporters`, comma-separated):
  torchscript13   torch.onnx.export(dynamo=False, opset_version=13), batch fixed at 1
  torchscript17   torch.onnx.export(dynamo=False, opset_version=17), dynamic batch
  torchscript17-train  the same with model.train() and training=TrainingMode.TRAINING (no constant
                  folding): training-mode BatchNormalization with its extra outputs, Dropout kept
  dynamo          torch.onnx.export(dynamo=True, optimize=False, opset_version=18), dynamic batch
  dynamo-opt      torch.onnx.export(dynamo=True, optimize=True, opset_version=18): folds Sign(W) of
                  small layers into +-c per channel and fuses batchnorms into conv/gemm
  larq            Larq/Keras model -> tf2onnx.convert.from_keras (opset 13): channels-last
                  Transposes, batchnorm as Mul + Add, Larq's Sign(Sign(x) + 0.1)
  larq-noscale    the same with BatchNormalization(scale=False) (batchnorm as Add, or Mul + Add)
The PyTorch variants binarise weights and activations with `--idiom` (comma-separated; default
`function,ste`): `function` (torch_model's autograd Function, which the exporters inline to Sign),
`ste` (`x + (x.sign() - x).detach()`), `where` (`torch.where(x >= 0, 1, -1)`), `clip` (hardtanh
STE: `c + (x.sign() - c).detach()` with `c = x.clamp(-1, 1)`) or `bireal` (Bi-Real's ApproxSign).
The torch variants need torch, onnx and onnxscript; the larq ones tensorflow-cpu, tf-keras, larq
and tf2onnx (two venvs: TensorFlow 2.15 pins an older numpy/protobuf than torch wants).

    python benchmarks/frameworks/export_onnx.py --exporters torchscript13,torchscript17,dynamo,dynamo-opt
    python benchmarks/frameworks/export_onnx.py --exporters larq,larq-noscale --out /tmp/onnx-larq
    python benchmarks/frameworks/export_onnx.py cnv models/torch-resnet-a.yaml --exporters dynamo-opt

Prints one row per (model, exporter, idiom): `exact`, `refused: <the importer's line>` or
`differs: <first difference>`; `--json FILE` writes the same rows. Exit status 1 when any differs.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import traceback
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

TORCH_EXPORTERS = ("torchscript13", "torchscript17", "torchscript17-train", "dynamo", "dynamo-opt")
LARQ_EXPORTERS = ("larq", "larq-noscale")
# Every zoo model and every measured model; the ImageNet ones export in a minute each.
# export-models/ holds the layer kinds real BNNs add (grouped/depthwise conv, PReLU, ...).
DEFAULT_MODELS = ("mlp", "digits-mlp", "digits-cnn", "cnv", "binarynet", "resnete18", "bireal18",
                  *sorted(str(p) for p in (HERE / "models").glob("*.yaml")),
                  *sorted(str(p) for p in (HERE / "export-models").glob("*.yaml")))


# ------------------------------------------------------------------ PyTorch

_SAVED: dict = {}  # torch_model.SignSTE.apply as shipped (the autograd Function)

def _ste(x):
    """The straight-through trick as users write it inline."""
    import torch
    return x + (torch.sign(x) - x).detach()


def _where(x):
    import torch
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


def _clip_ste(x):
    """BinaryNet's hardtanh STE written inline: the gradient is that of clamp(x, -1, 1)."""
    import torch
    c = torch.clamp(x, -1, 1)
    return c + (torch.sign(x) - c).detach()


def _bireal(x):
    """Bi-Real Net's ApproxSign (Liu et al. 2018, its reference code): sign forward, the gradient of
    a piecewise quadratic backward."""
    import torch
    out_forward = torch.sign(x)
    mask1, mask2, mask3 = x < -1, x < 0, x < 1
    out1 = (-1) * mask1.type(torch.float32) + (x * x + 2 * x) * (1 - mask1.type(torch.float32))
    out2 = out1 * mask2.type(torch.float32) + (-x * x + 2 * x) * (1 - mask2.type(torch.float32))
    out3 = out2 * mask3.type(torch.float32) + 1 * (1 - mask3.type(torch.float32))
    return out_forward.detach() - out3.detach() + out3


SIGN_IDIOMS = {"ste": _ste, "where": _where, "clip": _clip_ste, "bireal": _bireal}


def _torch_module(graph, idiom: str, seed: int, zero_weights: bool = False):
    import torch
    import torch_model

    _SAVED.setdefault("function", torch_model.SignSTE.apply)
    torch_model.SignSTE.apply = staticmethod(_SAVED["function"] if idiom == "function" else SIGN_IDIOMS[idiom])
    torch.manual_seed(seed)
    model = torch_model.build_torch_model(graph)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch_model.BinaryLinear, torch_model.BinaryConv2d)):
                m.weight.uniform_(-1, 1)
                if zero_weights:  # a latent weight exactly 0: its sign is 0 (torch.sign, ONNX Sign)
                    m.weight.view(-1)[0] = 0.0
            elif isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
            elif isinstance(m, torch.nn.PReLU):
                m.weight.uniform_(0.05, 0.4)
    return model.eval()


def export_torch(graph, exporter: str, idiom: str, path: Path, seed: int = 0, zero_weights: bool = False) -> None:
    import torch
    import torch_model

    model = _torch_module(graph, idiom, seed, zero_weights)
    x = torch.randn((1 if exporter == "torchscript13" else 2, *torch_model.input_shape(graph)))
    names = dict(input_names=["input"], output_names=["logits"])
    if exporter.startswith("torchscript"):
        opset = 13 if exporter == "torchscript13" else 17
        dynamic = None if opset == 13 else {"input": {0: "batch"}, "logits": {0: "batch"}}
        train = exporter.endswith("-train")
        mode = torch.onnx.TrainingMode.TRAINING if train else torch.onnx.TrainingMode.EVAL
        torch.onnx.export(model.train(train), (x,), str(path), dynamo=False, opset_version=opset,
                          do_constant_folding=not train, training=mode, dynamic_axes=dynamic, **names)
    else:
        batch = torch.export.Dim("batch", min=1)
        torch.onnx.export(model, (x,), str(path), dynamo=True, optimize=exporter == "dynamo-opt",
                          opset_version=18, external_data=False, dynamic_shapes=({0: batch},), **names)


# ------------------------------------------------------------------ Larq

def export_larq(graph, exporter: str, path: Path, seed: int = 0) -> None:
    import larq_model
    import tensorflow as tf
    import tf2onnx

    tf.keras.utils.set_random_seed(seed)
    original = tf.keras.layers.BatchNormalization
    if exporter == "larq-noscale":
        tf.keras.layers.BatchNormalization = lambda **kw: original(scale=False, **kw)
    try:
        model = larq_model.build_larq_model(graph)
    finally:
        tf.keras.layers.BatchNormalization = original
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, original):
            values = []
            for w in layer.weights:
                n = w.shape[0]
                part = w.name.split("/")[-1]
                values.append(rng.uniform(0.5, 1.5, n) if part.startswith("gamma") else
                              rng.normal(0, 0.2, n) if part.startswith("beta") else
                              rng.normal(0, 0.5, n) if part.startswith("moving_mean") else
                              rng.uniform(0.5, 2.0, n))
            layer.set_weights([v.astype(np.float32) for v in values])
        elif isinstance(layer, tf.keras.layers.PReLU):
            layer.set_weights([rng.uniform(0.05, 0.4, w.shape).astype(np.float32) for w in layer.weights])
    spec = (tf.TensorSpec((None, *graph.model.input), tf.float32, name="input"),)
    tf2onnx.convert.from_keras(model, input_signature=spec, opset=13, output_path=str(path))


# ------------------------------------------------------------------ comparing

def _layers(specs) -> list:
    out = []
    for spec in specs:
        d = spec.model_dump(exclude={"name"}, exclude_defaults=True)
        if spec.kind == "residual":
            d = {"body": _layers(spec.body), "shortcut": _layers(spec.shortcut)}
        out.append((spec.kind, d))
    return out


def _predict(ref: str) -> str:
    """`bnncost predict REF --batch 16 --json`, in this process."""
    from bnncost import cli

    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        try:
            cli.main(["predict", ref, "--batch", "16", "--json"])
        except SystemExit as exc:
            if exc.code:
                raise RuntimeError(f"bnncost predict {ref} exited {exc.code}") from None
    return text.getvalue()


def _without_dropout(items: list) -> list:
    out = []
    for item in items:
        (kind, fields), = item.items()
        if kind == "residual":
            fields = {part: _without_dropout(fields[part]) for part in ("body", "shortcut") if fields.get(part)}
        if kind != "dropout":
            out.append({kind: fields})
    return out


def compare(onnx_path: Path, source: str, keep_bias: bool = False) -> str:
    """'exact', 'refused: ...' or 'differs: ...' for one export against its source model. An inference
    graph holds no Dropout: when the source's only difference is its dropout layers, that is said."""
    import yaml

    from bnncost.layers.model import load_model, parse_model

    result = _compare(onnx_path, load_model(source), source, keep_bias)
    text = yaml.safe_load(Path(source).read_text()) if Path(source).is_file() else None
    if result.startswith("differs") and text is not None and "dropout" in Path(source).read_text():
        text["layers"] = _without_dropout(text["layers"])
        plain = Path(onnx_path).with_suffix(".nodropout.yaml")
        plain.write_text(yaml.safe_dump(text, sort_keys=False))
        if _compare(onnx_path, parse_model(text, str(plain)), str(plain), keep_bias) == "exact":
            return "exact but dropout (an inference graph has none)"
    return result


def _compare(onnx_path: Path, want, source: str, keep_bias: bool) -> str:
    from bnncost.layers.graph import build_graph
    from bnncost.layers.importers import import_onnx
    from bnncost.layers.model import ModelError

    try:
        imported = import_onnx(str(onnx_path), keep_bias=keep_bias)
    except ModelError as exc:
        return f"refused: {str(exc).replace(str(onnx_path) + ': ', '')}"
    got = imported.model
    if got.input != want.input:
        return f"differs: input {got.input} != {want.input}"
    a, b = _layers(got.layers), _layers(want.layers)
    if a != b:
        first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        return f"differs: layer {first}: {a[first] if first < len(a) else '-'} != {b[first] if first < len(b) else '-'}"
    g, w = build_graph(got), build_graph(want)
    if [n.out_shape for n in g.nodes] != [n.out_shape for n in w.nodes]:
        return "differs: shapes"
    for bn in ("l2", "l1"):
        if g.parameter_count(bn) != w.parameter_count(bn):
            return f"differs: {bn} parameters {g.parameter_count(bn)} != {w.parameter_count(bn)}"
    predicted = onnx_path
    if keep_bias:  # `predict X.onnx` imports without --keep-bias: predict what `import --keep-bias` writes
        from bnncost.layers.importers.writer import model_yaml
        predicted = Path(onnx_path).with_suffix(".keep-bias.yaml")
        predicted.write_text(model_yaml(imported.document, []))
    if _predict(str(predicted)) != _predict(source):
        return "differs: predict --json"
    return "exact"


def _write_expected(path: Path, ref: str, exporter: str, idiom: str, argv: list[str]) -> None:
    """The source model as the fixture's expected import, headed by the exporter and the command."""
    from importlib.metadata import version

    from bnncost.layers.graph import graph_of
    from bnncost.layers.model import zoo_names

    source = Path(ref) if ref not in zoo_names() else HERE.parent.parent / "layers" / "zoo" / f"{ref}.yaml"
    frameworks = ("torch", "onnx", "onnxscript") if exporter in TORCH_EXPORTERS else \
        ("tensorflow", "tf-keras", "larq", "tf2onnx", "onnx")
    versions = []
    for package in frameworks:
        try:
            versions.append(f"{package} {version(package)}")
        except Exception:  # noqa: BLE001 - not installed under that name
            continue
    graph = graph_of(ref)
    header = [f"# Expected import of {path.name}: exported from {source.name} by",
              f"#   python benchmarks/frameworks/export_onnx.py {' '.join(argv)}",
              f"# exporter {exporter}" + (f", sign idiom {idiom}" if exporter in TORCH_EXPORTERS else "")
              + f" ({', '.join(versions)}); weights random.",
              f"# {graph.parameter_count('l2')} parameters as bnncost counts them with l2 batchnorm, "
              f"{graph.parameter_count('l1')} with l1."]
    body = [line for line in source.read_text().splitlines() if not line.startswith("#")]
    path.with_name(path.name[: -len(".onnx")] + ".expected.yaml").write_text("\n".join(header + body) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="*", default=list(DEFAULT_MODELS), help="zoo names or model YAMLs")
    ap.add_argument("--exporters", default=",".join(TORCH_EXPORTERS))
    ap.add_argument("--idiom", default="function,ste", help="PyTorch sign idioms: function, ste")
    ap.add_argument("--out", default="/tmp/bnncost-onnx-exports", help="folder for the .onnx files")
    ap.add_argument("--json", help="write the rows as JSON here too")
    ap.add_argument("--keep-bias", action="store_true",
                    help="import with keep_bias (bnncost import --keep-bias): a full-precision bias stays a bias")
    ap.add_argument("--zero-weights", action="store_true",
                    help="PyTorch: make one latent weight of every binary layer exactly 0 (its sign is 0)")
    ap.add_argument("--expected", action="store_true",
                    help="write NAME.TAG.expected.yaml beside each .onnx (the source model, headed by how the "
                         "file was made): a fixture for tests/data/onnx/")
    args = ap.parse_args(argv)
    from bnncost.layers.graph import graph_of

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for ref in args.models:
        graph = graph_of(ref)
        name = graph.model.name
        for exporter in args.exporters.split(","):
            idioms = args.idiom.split(",") if exporter in TORCH_EXPORTERS else ["larq"]
            for idiom in idioms:
                tag = exporter if exporter in LARQ_EXPORTERS else f"{exporter}-{idiom}"
                path = out / f"{name}.{tag}.onnx"  # the import's name is the file name up to its first dot
                try:
                    with contextlib.redirect_stdout(sys.stderr):  # the exporters' progress lines
                        if exporter in TORCH_EXPORTERS:
                            export_torch(graph, exporter, idiom, path, zero_weights=args.zero_weights)
                        elif exporter in LARQ_EXPORTERS:
                            export_larq(graph, exporter, path)
                        else:
                            raise SystemExit(f"unknown exporter {exporter}")
                    result = compare(path, ref, args.keep_bias)
                except Exception as exc:  # noqa: BLE001 - the exporter failed: report it, go on
                    traceback.print_exc(file=sys.stderr)
                    result = f"export failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
                if args.expected and path.is_file():
                    _write_expected(path, ref, exporter, idiom, argv if argv is not None else sys.argv[1:])
                rows.append({"model": name, "exporter": exporter, "idiom": idiom, "file": str(path),
                             "result": result})
                print(f"{name:16} {tag:26} {result}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 1 if any(r["result"].startswith("differs") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
