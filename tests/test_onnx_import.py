"""ONNX import: the shared real exports import exactly, every idiom is recognised by structure,
and every bad file is refused with one line naming the node and its op (issue 11)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from bnncost import cli  # noqa: E402
from bnncost.layers.graph import build_graph, graph_of  # noqa: E402
from bnncost.layers.importers import import_onnx  # noqa: E402
from bnncost.layers.importers.onnx_interpret import supports  # noqa: E402
from bnncost.layers.model import ModelError, load_model, parse_model  # noqa: E402

DATA = Path(__file__).parent / "data" / "onnx"
FIXTURES = sorted(p.name[: -len(".onnx")] for p in DATA.glob("*.onnx"))
RNG = np.random.default_rng(0)


def run(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        cli.main([str(a) for a in args])
    got = capsys.readouterr()
    return exc.value.code, got.out, got.err


def kinds(model) -> list:
    """The layer list as plain data (names dropped), residual blocks nested."""
    out = []
    for spec in model.layers if hasattr(model, "layers") else model:
        d = spec.model_dump(exclude={"name"}, exclude_defaults=True)
        if spec.kind == "residual":
            d = {"body": kinds(spec.body), "shortcut": kinds(spec.shortcut)}
        out.append((spec.kind, d))
    return out


def expected(text: str, shape: list) -> list:
    """The layers of a model YAML body (`- dense: {units: 4}` lines)."""
    import yaml
    return kinds(parse_model({"input": shape, "layers": yaml.safe_load(text)}))


# ------------------------------------------------------------------ the shared real exports

@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_imports_exactly(name):
    want = load_model(str(DATA / f"{name}.expected.yaml"))
    got = import_onnx(str(DATA / f"{name}.onnx"))
    assert got.model.input == want.input
    assert kinds(got.model) == kinds(want)
    g, w = build_graph(got.model), build_graph(want)
    assert [n.out_shape for n in g.nodes] == [n.out_shape for n in w.nodes]
    for bn in ("l2", "l1"):
        assert g.parameter_count(bn) == w.parameter_count(bn)
    assert got.notes[-1].startswith("appended softmax_ce")


def test_fixture_parameter_counts_are_the_readmes():
    counts = {n: (build_graph(load_model(str(DATA / f"{n}.onnx"))).parameter_count("l2"),
                  build_graph(load_model(str(DATA / f"{n}.onnx"))).parameter_count("l1")) for n in FIXTURES}
    assert counts == {"digits-cnn.torchscript-opset13": (21492, 21386), "mlp.torchscript-opset17": (401940, 400906),
                      "resnete-small.dynamo": (20004, 19850),
                      # exports made by benchmarks/frameworks/export_onnx.py (the command heads each expected YAML)
                      "tiny-bireal.larq-noscale": (1848, 1800), "tiny-head.larq": (1088, 1066),
                      "tiny-head.torchscript17-ste": (1088, 1066), "tiny-reactnet.dynamo-opt-function": (472, 448),
                      "tiny-reactnet.torchscript13-function": (472, 448),
                      "tiny-dropout.torchscript17-train-ste": (4348, 4328)}


@pytest.mark.parametrize("name", FIXTURES)
def test_predicting_the_onnx_equals_predicting_the_yaml(capsys, name):
    outs = []
    for path in (DATA / f"{name}.onnx", DATA / f"{name}.expected.yaml"):
        code, out, err = run(capsys, "predict", path, "--batch", "16", "--json")
        assert code == 0, err
        outs.append(out)
    assert outs[0] == outs[1]  # to the byte: the name is the file name up to its first dot


def test_predicting_on_a_device_matches_but_for_the_epoch_the_onnx_cannot_know(capsys):
    """An ONNX file has no data set size (the YAML's train_samples): per-epoch figures need --epoch-samples."""
    docs = []
    for path in (DATA / "resnete-small.dynamo.onnx", DATA / "resnete-small.dynamo.expected.yaml"):
        code, out, err = run(capsys, "predict", path, "--batch", "16", "--device", "raspberry-pi-4b", "--json")
        assert code == 0, err
        docs.append(_without_epoch(json.loads(out)))
    assert docs[0] == docs[1]


def _without_epoch(doc):
    if isinstance(doc, dict):
        return {k: _without_epoch(v) for k, v in doc.items() if "epoch" not in k}
    return [_without_epoch(v) for v in doc] if isinstance(doc, list) else doc


def test_import_writes_a_yaml_that_loads_to_the_same_model(capsys, tmp_path):
    target = tmp_path / "resnet.yaml"
    code, out, err = run(capsys, "import", DATA / "resnete-small.dynamo.onnx", "-o", target, "--name", "mine")
    assert code == 0 and out == ""
    assert "softmax_ce" in err and "restored the batchnorm" in err and "node_Conv_104" in err
    written = load_model(str(target))
    assert written.name == "mine"
    assert kinds(written) == kinds(load_model(str(DATA / "resnete-small.dynamo.expected.yaml")))
    assert "20,004 parameters" in target.read_text()


def test_import_prints_the_yaml_without_output_file(capsys):
    code, out, err = run(capsys, "import", DATA / "mlp.torchscript-opset17.onnx")
    assert code == 0
    assert out.splitlines()[-1] == "  - softmax_ce: {}" and 'name: "mlp"' in out
    assert "appended softmax_ce" in err


@pytest.mark.parametrize("command", [
    ["predict"], ["compare"], ["fit", "--device", "raspberry-pi-4b"], ["sweep", "--batch", "8,16"], ["summary"],
])
def test_every_model_command_takes_an_onnx_path(capsys, command):
    if command[0] not in {c.name for c in cli.app.registered_commands}:
        pytest.skip(f"no {command[0]} command on this branch")
    code, out, err = run(capsys, command[0], DATA / "digits-cnn.torchscript-opset13.onnx", *command[1:])
    assert code == 0, err
    assert "digits-cnn" in out


def test_verify_and_train_take_an_onnx_path(capsys):
    model = DATA / "digits-cnn.torchscript-opset13.onnx"
    code, out, err = run(capsys, "verify", model, "--batch", "8", "--steps", "1", "--json")
    assert code == 0, err
    assert json.loads(out)["model"] == "digits-cnn"
    code, out, err = run(capsys, "train", model, "--batch", "64", "--epochs", "1", "--json")
    assert code == 0, err
    assert json.loads(out)["model"] == "digits-cnn"


# ------------------------------------------------------------------ small graphs, one idiom each

F = TensorProto.FLOAT


def const(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32 if np.asarray(value).dtype.kind == "f"
                                              else np.int64), name)


def save(tmp_path, nodes, inits, shape, *, outputs=("y",), opset=17, name="m.onnx", value_info=()) -> str:
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, list(shape))],
                          [helper.make_tensor_value_info(o, F, None) for o in outputs],
                          initializer=list(inits), value_info=list(value_info))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    path = tmp_path / name
    onnx.save(m, str(path))
    return str(path)


def bn(x: str, out: str, c: int, prefix: str, **attrs):
    names = [f"{prefix}.{p}" for p in ("g", "b", "m", "v")]
    inits = [const(n, RNG.uniform(0.5, 1.5, c)) for n in names]
    return [helper.make_node("BatchNormalization", [x, *names], [out], name=f"{prefix}_bn", **attrs)], inits


def sign_idiom(kind: str, x: str, out: str, p: str) -> tuple[list, list]:
    """x binarised the way one exporter or framework writes it."""
    n = helper.make_node
    if kind == "sign":
        return [n("Sign", [x], [out], name=f"{p}s")], []
    if kind == "ste":
        return [n("Sign", [x], [f"{p}s"]), n("Sub", [f"{p}s", x], [f"{p}d"]), n("Add", [x, f"{p}d"], [out])], []
    if kind == "ste-identity":  # dynamo optimize=False keeps the detach as Identity
        return [n("Sign", [x], [f"{p}s"]), n("Sub", [f"{p}s", x], [f"{p}d"]), n("Identity", [f"{p}d"], [f"{p}i"]),
                n("Add", [f"{p}i", x], [out])], []
    if kind == "ste-sum-first":  # x + sign(x).detach() - x.detach()
        return [n("Sign", [x], [f"{p}s"]), n("Identity", [x], [f"{p}x"]), n("Add", [x, f"{p}s"], [f"{p}a"]),
                n("Sub", [f"{p}a", f"{p}x"], [out])], []
    if kind == "ste-clipped":  # hardtanh(x) + (sign(x) - hardtanh(x)).detach()
        return [n("Clip", [x, f"{p}lo", f"{p}hi"], [f"{p}c"]), n("Sign", [x], [f"{p}s"]),
                n("Sub", [f"{p}s", f"{p}c"], [f"{p}d"]), n("Add", [f"{p}c", f"{p}d"], [out])], \
            [const(f"{p}lo", -1.0), const(f"{p}hi", 1.0)]
    if kind == "where":
        return [n("GreaterOrEqual", [x, f"{p}0"], [f"{p}c"]), n("Where", [f"{p}c", f"{p}1", f"{p}m1"], [out])], \
            [const(f"{p}0", 0.0), const(f"{p}1", 1.0), const(f"{p}m1", -1.0)]
    if kind == "where-less":
        return [n("Less", [x, f"{p}0"], [f"{p}c"]), n("Where", [f"{p}c", f"{p}m1", f"{p}1"], [out])], \
            [const(f"{p}0", 0.0), const(f"{p}1", 1.0), const(f"{p}m1", -1.0)]
    if kind == "larq":  # sign(sign(x) + 0.1): zero goes to +1
        return [n("Sign", [x], [f"{p}s"]), n("Add", [f"{p}s", f"{p}e"], [f"{p}a"]), n("Sign", [f"{p}a"], [out])], \
            [const(f"{p}e", 0.1)]
    if kind == "bireal":  # sign(x).detach() - p(x).detach() + p(x), p piecewise polynomial (Bi-Real Net)
        return [n("Sign", [x], [f"{p}s"]), n("Less", [x, f"{p}m1"], [f"{p}lt"]),
                n("Cast", [f"{p}lt"], [f"{p}f"], to=TensorProto.FLOAT), n("Mul", [x, x], [f"{p}xx"]),
                n("Mul", [x, f"{p}2"], [f"{p}x2"]), n("Add", [f"{p}xx", f"{p}x2"], [f"{p}poly"]),
                n("Sub", [f"{p}1", f"{p}f"], [f"{p}not"]), n("Mul", [f"{p}m1", f"{p}f"], [f"{p}lo"]),
                n("Mul", [f"{p}poly", f"{p}not"], [f"{p}hi"]), n("Add", [f"{p}lo", f"{p}hi"], [f"{p}approx"]),
                n("Identity", [f"{p}approx"], [f"{p}detached"]), n("Sub", [f"{p}s", f"{p}detached"], [f"{p}d"]),
                n("Add", [f"{p}d", f"{p}approx"], [out])], \
            [const(f"{p}m1", -1.0), const(f"{p}1", 1.0), const(f"{p}2", 2.0)]
    raise AssertionError(kind)


IDIOMS = ["sign", "ste", "ste-identity", "ste-sum-first", "ste-clipped", "where", "where-less", "larq", "bireal"]


def binary_mlp(idiom: str, opset: int = 17) -> tuple[list, list]:
    """dense(784->32, binary weight) -> BN -> sign -> dense(32->10, binary weight) -> BN, in one idiom."""
    nodes, inits = [], []
    for i, (k, m, x) in enumerate(((784, 32, "x"), (32, 10, "a1"))):
        inits.append(const(f"w{i}", RNG.uniform(-1, 1, (m, k))))
        wn, wi = sign_idiom(idiom, f"w{i}", f"wb{i}", f"w{i}_")
        nodes += wn + [helper.make_node("Transpose", [f"wb{i}"], [f"wt{i}"], perm=[1, 0]),
                       helper.make_node("MatMul", [x, f"wt{i}"], [f"z{i}"], name=f"mm{i}")]
        inits += wi
        bnn, bni = bn(f"z{i}", "y" if i else "h0", m, f"bn{i}")
        nodes += bnn
        inits += bni
        if i == 0:
            sn, si = sign_idiom(idiom, "h0", "a1", "act_")
            nodes += sn
            inits += si
    return nodes, inits


MLP = """
- dense: {units: 32}
- batchnorm: {}
- sign: {}
- dense: {units: 10}
- batchnorm: {}
- softmax_ce: {}
"""


@pytest.mark.parametrize("idiom", IDIOMS)
def test_sign_idioms_on_weights_and_activations(tmp_path, idiom):
    nodes, inits = binary_mlp(idiom)
    got = import_onnx(save(tmp_path, nodes, inits, ["batch", 784]))
    assert kinds(got.model) == expected(MLP, [784])


def test_a_real_weight_or_a_real_input_makes_a_full_precision_layer(tmp_path):
    nodes, inits = binary_mlp("sign")
    nodes = [n for n in nodes if n.name != "act_s"] + [helper.make_node("Relu", ["h0"], ["a1"])]
    got = import_onnx(save(tmp_path, nodes, inits, ["batch", 784]))
    assert kinds(got.model) == expected(MLP.replace("sign: {}", "relu: {}").replace(
        "units: 10}", "units: 10, binary: false}"), [784])


@pytest.mark.parametrize("zeros, binary", [(1, True), (40, False)])
def test_a_rare_exact_zero_latent_weight_keeps_a_layer_binary(tmp_path, zeros, binary):
    """Sign(0) = 0: one latent weight exactly 0 in a big binary layer (torch's uniform_ makes about one
    in 2^24, as in BinaryNet's 8192 x 1024 dense) is still a binary layer; a ternary weight is not."""
    nodes, inits = binary_mlp("sign")
    w = numpy_helper.to_array(inits[0]).copy()
    w.reshape(-1)[RNG.choice(w.size, zeros, replace=False)] = 0.0
    inits[0] = const("w0", w)
    got = import_onnx(save(tmp_path, nodes, inits, ["batch", 784]))
    want = MLP if binary else MLP.replace("units: 32}", "units: 32, binary: false}")
    assert kinds(got.model) == expected(want, [784])


def gemm_head(x: str, k: int, classes: int, *, bias: bool = True, softmax: bool = False):
    inits = [const("fc.w", RNG.normal(size=(classes, k)))] + ([const("fc.b", RNG.normal(size=classes))] if bias else [])
    out = "logits" if softmax else "y"
    nodes = [helper.make_node("Gemm", [x, "fc.w"] + (["fc.b"] if bias else []), [out], name="fc", transB=1)]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["y"], name="prob", axis=1))
    return nodes, inits


def conv(x: str, out: str, w: np.ndarray, name: str, *, bias=None, **attrs):
    inits = [const(f"{name}.w", w)] + ([const(f"{name}.b", bias)] if bias is not None else [])
    return [helper.make_node("Conv", [x, f"{name}.w"] + ([f"{name}.b"] if bias is not None else []), [out],
                             name=name, **attrs)], inits


def folded(filters: int, cin: int, k: int) -> np.ndarray:
    """sign(W) times a per-output-channel scale: what a fused binary conv's weight looks like."""
    signs = np.where(RNG.uniform(-1, 1, (filters, cin, k, k)) >= 0, 1.0, -1.0)
    return signs * RNG.uniform(0.1, 2.0, (filters, 1, 1, 1))


def test_fused_batchnorms_residual_blocks_and_pooling(tmp_path):
    """Dynamo-style: fused BNs (biases), STE signs, identity and downsampling shortcuts, ReduceMean + Reshape."""
    n = helper.make_node
    nodes, inits = conv("x", "c0", RNG.normal(size=(8, 3, 3, 3)), "stem", bias=RNG.normal(size=8), pads=[1, 1, 1, 1])
    nodes += [n("Relu", ["c0"], ["r0"], name="relu0"),
              n("MaxPool", ["r0"], ["p0"], name="pool0", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])]
    s, _ = sign_idiom("ste", "p0", "s1", "b1_")
    c, ci = conv("s1", "c1", folded(8, 8, 3), "b1conv", bias=RNG.normal(size=8), pads=[1, 1, 1, 1])
    nodes += s + c + [n("Add", ["c1", "p0"], ["j1"], name="join1")]
    s, _ = sign_idiom("ste", "j1", "s2", "b2_")
    c2, c2i = conv("s2", "c2", folded(16, 8, 3), "b2conv", bias=RNG.normal(size=16), pads=[1, 1, 1, 1],
                   strides=[2, 2])
    sc, sci = conv("a2", "c3", RNG.normal(size=(16, 8, 1, 1)), "short", bias=RNG.normal(size=16))
    nodes += s + c2 + [n("AveragePool", ["j1"], ["a2"], name="avg", kernel_shape=[2, 2], strides=[2, 2])] + sc
    nodes += [n("Add", ["c3", "c2"], ["j2"], name="join2"), n("Relu", ["j2"], ["r2"]),
              n("ReduceMean", ["r2", "axes"], ["m"], keepdims=1), n("Reshape", ["m", "shape"], ["v"])]
    head, hi = gemm_head("v", 16, 10)
    inits += ci + c2i + sci + hi + [const("axes", np.array([-1, -2])), const("shape", np.array([-1, 16]))]
    got = import_onnx(save(tmp_path, nodes + head, inits, ["batch", 3, 16, 16], opset=18))
    assert kinds(got.model) == expected("""
- conv2d: {filters: 8, kernel: 3, padding: same, binary: false}
- batchnorm: {}
- relu: {}
- maxpool: {size: 3, stride: 2, padding: same}
- residual:
    body: [{sign: {}}, {conv2d: {filters: 8, kernel: 3, padding: same}}, {batchnorm: {}}]
- residual:
    body: [{sign: {}}, {conv2d: {filters: 16, kernel: 3, stride: 2, padding: same}}, {batchnorm: {}}]
    shortcut: [{avgpool: {size: 2}}, {conv2d: {filters: 16, kernel: 1, binary: false}}, {batchnorm: {}}]
- relu: {}
- global_avgpool: {}
- dense: {units: 10, binary: false}
- batchnorm: {}
- softmax_ce: {}
""", [16, 16, 3])
    assert sum("restored the batchnorm" in note for note in got.notes) == 5


def test_bias_before_a_batchnorm_is_absorbed_and_keep_bias(tmp_path):
    nodes, inits = conv("x", "c0", RNG.normal(size=(4, 1, 3, 3)), "c", bias=RNG.normal(size=4))
    b, bi = bn("c0", "b0", 4, "bn0")
    nodes += b + [helper.make_node("Flatten", ["b0"], ["f"])]
    head, hi = gemm_head("f", 4 * 6 * 6, 10)
    path = save(tmp_path, nodes + head, inits + bi + hi, [1, 1, 8, 8], opset=13)
    got = import_onnx(path)
    assert kinds(got.model) == expected("""
- conv2d: {filters: 4, kernel: 3, binary: false}
- batchnorm: {}
- flatten: {}
- dense: {units: 10, binary: false}
- batchnorm: {}
- softmax_ce: {}
""", [8, 8, 1])
    assert any("absorbed by the batchnorm" in note for note in got.notes)
    if supports("dense", "bias"):
        kept = import_onnx(path, keep_bias=True)
        assert kinds(kept.model)[-2] == ("dense", {"units": 10, "binary": False, "bias": True})
    else:
        with pytest.raises(ModelError, match=r"node 'fc' \(Gemm\): a bias on a full-precision layer"):
            import_onnx(path, keep_bias=True)


def test_channels_last_keras_larq_export(tmp_path):
    """tf2onnx of a Larq model: NHWC input, Transposes around the convs, BN as Mul + Add, Larq's
    sign(sign(x) + 0.1), a folded binary kernel, Flatten as Reshape, MatMul + Add."""
    n = helper.make_node
    nodes = [n("Transpose", ["x"], ["t0"], perm=[0, 3, 1, 2])]
    c, inits = conv("t0", "c0", np.sign(RNG.uniform(-1, 1, (8, 1, 3, 3))), "qconv0", auto_pad="SAME_UPPER")
    nodes += c + [n("Transpose", ["c0"], ["h0"], perm=[0, 2, 3, 1]),
                  n("Mul", ["h0", "bn.scale"], ["m0"], name="bn_mul"), n("Add", ["m0", "bn.shift"], ["a0"])]
    s, si = sign_idiom("larq", "a0", "s0", "q1_")
    nodes += s + [n("Transpose", ["s0"], ["t1"], perm=[0, 3, 1, 2])]
    c1, c1i = conv("t1", "c1", np.sign(RNG.uniform(-1, 1, (8, 8, 3, 3))), "qconv1", strides=[2, 2],
                   auto_pad="VALID")
    nodes += c1 + [n("Transpose", ["c1"], ["h1"], perm=[0, 2, 3, 1]),
                   n("Shape", ["h1"], ["shp"]), n("Gather", ["shp", "zero"], ["b"], axis=0),
                   n("Unsqueeze", ["b", "zero1"], ["b1"]), n("Concat", ["b1", "minus1"], ["tgt"], axis=0),
                   n("Reshape", ["h1", "tgt"], ["flat"]),
                   n("MatMul", ["flat", "fc.w"], ["mm"], name="dense"), n("Add", ["mm", "fc.b"], ["y"])]
    inits += si + c1i + [const("bn.scale", RNG.uniform(0.5, 2, 8)), const("bn.shift", RNG.normal(size=8)),
                         const("zero", np.array(0)), const("zero1", np.array([0])), const("minus1", np.array([-1])),
                         const("fc.w", RNG.normal(size=(3 * 3 * 8, 10))), const("fc.b", RNG.normal(size=10))]
    got = import_onnx(save(tmp_path, nodes, inits, ["N", 8, 8, 1], opset=13))
    assert got.model.input == (8, 8, 1)
    assert kinds(got.model) == expected("""
- conv2d: {filters: 8, kernel: 3, padding: same}
- batchnorm: {}
- sign: {}
- conv2d: {filters: 8, kernel: 3, stride: 2}
- flatten: {}
- dense: {units: 10, binary: false}
- batchnorm: {}
- softmax_ce: {}
""", [8, 8, 1])


@pytest.mark.parametrize("idiom", ["larq", "sign"])
def test_a_sign_after_a_flatten_is_written_before_it(tmp_path, idiom):
    """Larq's QuantDense quantizes its input after Flatten (and a PyTorch BinaryLinear after view(B, -1)):
    bn -> flatten -> sign -> binary dense imports as bnncost's models write it, sign -> flatten."""
    n = helper.make_node
    nodes, inits = conv("x", "c0", RNG.normal(size=(4, 1, 3, 3)), "stem", pads=[1, 1, 1, 1])
    b, bi = bn("c0", "b0", 4, "bn0")
    s, si = sign_idiom(idiom, "f", "s", "q_")
    nodes += b + [n("Flatten", ["b0"], ["f"])] + s + [n("MatMul", ["s", "fc.w"], ["y"], name="qdense")]
    inits += bi + si + [const("fc.w", np.sign(RNG.uniform(-1, 1, (4 * 8 * 8, 10))))]
    got = import_onnx(save(tmp_path, nodes, inits, [1, 1, 8, 8], opset=13))
    assert kinds(got.model) == expected("""
- conv2d: {filters: 4, kernel: 3, padding: same, binary: false}
- batchnorm: {}
- sign: {}
- flatten: {}
- dense: {units: 10}
- softmax_ce: {}
""", [8, 8, 1])


def test_training_mode_export_identity_dropout_and_final_softmax(tmp_path):
    """TorchScript training export: BN with training_mode=1 and its extra outputs; Identity on the path."""
    nodes, inits = binary_mlp("ste", opset=15)
    for node in nodes:
        if node.op_type == "BatchNormalization":
            node.attribute.append(helper.make_attribute("training_mode", 1))
            node.output.extend([f"{node.name}_rm", f"{node.name}_rv"])
        if node.name == "mm1":
            node.input[0] = "a1i"
    nodes.insert(0, helper.make_node("Identity", ["a1"], ["a1i"]))
    for node in nodes:
        if node.output[0] == "y":
            node.output[0] = "z"
    nodes.append(helper.make_node("LogSoftmax", ["z"], ["y"], name="logprob", axis=1))
    got = import_onnx(save(tmp_path, nodes, inits, ["batch", 784], opset=15))
    assert kinds(got.model) == expected(MLP, [784])
    assert any("dropped the final node 'logprob' (LogSoftmax)" in note for note in got.notes)


def test_prelu_with_per_channel_slopes_bireal_style(tmp_path):
    """Bi-Real Net / ReActNet: real stem -> BN -> PReLU, a binary block, PReLU on the residual stream."""
    n = helper.make_node
    nodes, inits = conv("x", "c0", RNG.normal(size=(8, 3, 3, 3)), "stem", pads=[1, 1, 1, 1])
    b0, b0i = bn("c0", "h0", 8, "bn0")
    nodes += b0 + [n("PRelu", ["h0", "slope0"], ["p0"], name="prelu0")]
    s, _ = sign_idiom("ste", "p0", "s1", "b1_")
    c, ci = conv("s1", "c1", folded(8, 8, 3), "b1conv", pads=[1, 1, 1, 1])
    b1, b1i = bn("c1", "h1", 8, "bn1")
    nodes += s + c + b1 + [n("Add", ["h1", "p0"], ["j1"], name="join1"),
                           n("PRelu", ["j1", "slope1"], ["p1"], name="prelu1"),
                           n("GlobalAveragePool", ["p1"], ["g"]), n("Flatten", ["g"], ["f"]),
                           n("PRelu", ["f", "slope2"], ["pf"], name="prelu2")]  # [batch, C]: a slope of shape [C]
    head, hi = gemm_head("pf", 8, 10, bias=False)
    inits += b0i + ci + b1i + hi + [const("slope0", np.full((8, 1, 1), 0.25)),
                                    const("slope1", RNG.uniform(0, 1, (8, 1, 1))), const("slope2", RNG.uniform(0, 1, 8))]
    path = save(tmp_path, nodes + head, inits, ["batch", 3, 8, 8])
    got = import_onnx(path)
    assert kinds(got.model) == expected("""
- conv2d: {filters: 8, kernel: 3, padding: same, binary: false}
- batchnorm: {}
- prelu: {}
- residual:
    body: [{sign: {}}, {conv2d: {filters: 8, kernel: 3, padding: same}}, {batchnorm: {}}]
- prelu: {}
- global_avgpool: {}
- prelu: {}
- dense: {units: 10, binary: false}
- softmax_ce: {}
""", [8, 8, 3])
    assert [node.parameters() for node in graph_of(got.model).nodes if node.kind == "prelu"] == [8, 8, 8]


def keras_prelu(x: str, out: str, slope: np.ndarray, p: str) -> tuple[list, list]:
    """Keras' PReLU as tf2onnx writes it: relu(x) + (-alpha) * relu(-x)."""
    n = helper.make_node
    return [n("Relu", [x], [f"{p}pos"]), n("Neg", [x], [f"{p}negx"], name=f"{p}neg"),
            n("Relu", [f"{p}negx"], [f"{p}rn"]), n("Mul", [f"{p}rn", f"{p}alpha"], [f"{p}m"]),
            n("Add", [f"{p}pos", f"{p}m"], [out], name=f"{p}add")], [const(f"{p}alpha", -slope)]


def test_keras_prelu_written_out_by_tf2onnx_is_a_prelu(tmp_path):
    n = helper.make_node
    nodes, inits = conv("x", "c0", RNG.normal(size=(8, 3, 3, 3)), "stem", pads=[1, 1, 1, 1])
    b0, b0i = bn("c0", "h0", 8, "bn0")
    p0, p0i = keras_prelu("h0", "p0", RNG.uniform(0, 1, (1, 8, 1, 1)), "pr0_")
    s, _ = sign_idiom("ste", "p0", "s1", "b1_")
    c, ci = conv("s1", "c1", folded(8, 8, 3), "b1conv", pads=[1, 1, 1, 1])
    b1, b1i = bn("c1", "h1", 8, "bn1")
    p1, p1i = keras_prelu("j1", "p1", RNG.uniform(0, 1, (1, 8, 1, 1)), "pr1_")
    nodes += b0 + p0 + s + c + b1 + [n("Add", ["h1", "p0"], ["j1"], name="join1")] + p1
    nodes += [n("GlobalAveragePool", ["p1"], ["g"]), n("Flatten", ["g"], ["f"])]
    head, hi = gemm_head("f", 8, 10, bias=False)
    got = import_onnx(save(tmp_path, nodes + head, inits + b0i + p0i + ci + b1i + p1i + hi, ["batch", 3, 8, 8]))
    assert kinds(got.model) == expected("""
- conv2d: {filters: 8, kernel: 3, padding: same, binary: false}
- batchnorm: {}
- prelu: {}
- residual:
    body: [{sign: {}}, {conv2d: {filters: 8, kernel: 3, padding: same}}, {batchnorm: {}}]
- prelu: {}
- global_avgpool: {}
- dense: {units: 10, binary: false}
- softmax_ce: {}
""", [8, 8, 3])


@pytest.mark.parametrize("broken, needles", [
    ("other", ["node 'pr_add' (Add)", "not a PReLU"]),  # relu(-x) added to something else
    ("alone", ["(Relu)", "relu(-x) that is not the negative half of a PReLU"]),
])
def test_a_written_out_prelu_that_is_not_one_is_refused(capsys, tmp_path, broken, needles):
    n = helper.make_node
    nodes, inits = keras_prelu("x", "p", RNG.uniform(0, 1, (1, 4, 1, 1)), "pr_")
    if broken == "other":
        nodes[-1] = n("Add", ["x", "pr_m"], ["p"], name="pr_add")
    if broken == "alone":
        nodes = [nodes[1], n("Relu", ["pr_negx"], ["p"])]
    nodes += [n("GlobalAveragePool", ["p"], ["g"]), n("Flatten", ["g"], ["f"])]
    head, hi = gemm_head("f", 4, 10, bias=False)
    refused(capsys, tmp_path, save(tmp_path, nodes + head, inits + hi, [1, 4, 8, 8]), *needles)


def test_a_tensorflow_function_call_left_by_tf2onnx_is_refused_by_node(capsys, tmp_path):
    """Keras' grouped Conv2D runs as an XLA function on CPU; tf2onnx leaves a PartitionedCall node."""
    n = helper.make_node
    nodes = [n("PartitionedCall", ["x", "w"], ["c"], name="qconv/PartitionedCall"),
             n("GlobalAveragePool", ["c"], ["g"]), n("Flatten", ["g"], ["f"])]
    head, hi = gemm_head("f", 4, 10, bias=False)
    refused(capsys, tmp_path, save(tmp_path, nodes + head, [const("w", RNG.normal(size=(4, 1, 3, 3)))] + hi,
                                   [1, 4, 8, 8]), "node 'qconv/PartitionedCall' (PartitionedCall)", "groups=1")


def test_a_prelu_slope_shared_by_all_channels_is_a_shared_prelu(tmp_path):
    """torch.nn.PReLU()'s default exports one slope for every channel: one parameter, not C."""
    n = helper.make_node
    nodes = [n("PRelu", ["x", "slope"], ["p"], name="act"), n("GlobalAveragePool", ["p"], ["g"]),
             n("Flatten", ["g"], ["f"])]
    head, hi = gemm_head("f", 4, 10, bias=False)
    path = save(tmp_path, nodes + head, [const("slope", [0.25])] + hi, [1, 4, 8, 8])
    got = import_onnx(path).model
    assert kinds(got)[0] == ("prelu", {"shared": True})
    assert graph_of(got).nodes[0].parameters() == 1
    # Keras' PReLU(shared_axes=[1, 2, 3]) written out by tf2onnx: one alpha
    keras, ki = keras_prelu("x", "p", np.array(0.25), "pr_")
    got = import_onnx(save(tmp_path, keras + nodes[1:] + head, ki + hi, [1, 4, 8, 8], name="k.onnx")).model
    assert kinds(got)[0] == ("prelu", {"shared": True})


def dropout_mlp(tmp_path, dropout: list, inits: list, opset: int, name: str) -> str:
    """Gemm(784 -> 32) -> Relu -> [the Dropout node(s) reading r, writing d] -> Gemm(32 -> 10)."""
    n = helper.make_node
    nodes = [n("Gemm", ["x", "w0"], ["h"], name="fc0", transB=1), n("Relu", ["h"], ["r"], name="relu0")]
    head, hi = gemm_head("d", 32, 10, bias=False)
    return save(tmp_path, nodes + dropout + head, [const("w0", RNG.normal(size=(32, 784)))] + inits + hi,
                ["batch", 784], opset=opset, name=name)


DROPOUT_MLP = """
- dense: {units: 32, binary: false}
- relu: {}
- dropout: {rate: %s}
- dense: {units: 10, binary: false}
- softmax_ce: {}
"""


def test_dropout_in_training_mode_and_inference_exports(tmp_path):
    """The model trains with its dropout, whichever mode the graph was exported in; the rate is the ratio."""
    n = helper.make_node
    true = numpy_helper.from_array(np.array(True), "train")
    cases = {  # opset 12+: ratio (and training_mode) are inputs; before: an attribute
        "training": ([n("Dropout", ["r", "ratio", "train"], ["d", "dmask"], name="drop")],
                     [const("ratio", 0.2), true], 13, "0.2"),
        "inference": ([n("Dropout", ["r", "ratio"], ["d"], name="drop")], [const("ratio", 0.35)], 13, "0.35"),
        "opset-10": ([n("Dropout", ["r"], ["d"], name="drop", ratio=0.25)], [], 10, "0.25"),
        "default-ratio": ([n("Dropout", ["r"], ["d"], name="drop")], [], 13, "0.5"),
    }
    for case, (nodes, inits, opset, rate) in cases.items():
        got = import_onnx(dropout_mlp(tmp_path, nodes, inits, opset, f"{case}.onnx"))
        assert kinds(got.model) == expected(DROPOUT_MLP % rate, [784]), case
    path = dropout_mlp(tmp_path, *cases["training"][:3], "verify.onnx")
    assert cli.run_verification(path, "proposed", 8, steps=1, retention="backward").ok


def test_a_dropout_ratio_of_one_is_refused_by_node(capsys, tmp_path):
    path = dropout_mlp(tmp_path, [helper.make_node("Dropout", ["r", "ratio"], ["d"], name="drop")],
                       [const("ratio", 1.0)], 13, "m.onnx")
    refused(capsys, tmp_path, path, "node 'drop' (Dropout)", "dropout ratio of 1.0", "0 <= rate < 1")


# ------------------------------------------------------------------ kinds bnncost may not model yet

def test_kinds_beyond_the_layer_set_are_refused_or_mapped(tmp_path):
    n = helper.make_node
    cases = {
        "grouped": (conv("x", "c", folded(4, 2, 3), "gconv", group=2), ("conv2d", "groups"), "gconv", "Conv"),
        "non-square": (conv("x", "c", RNG.normal(size=(4, 4, 3, 1)), "rect", pads=[1, 0, 1, 0]),
                       None, "rect", "Conv"),
        "prelu": (([n("PRelu", ["x", "slope"], ["c"], name="act")], [const("slope", np.ones((4, 1, 1)))]),
                  ("prelu", None), "act", "PRelu"),
        "dropout": (([n("Dropout", ["x"], ["c"], name="drop", ratio=0.2)], []), ("dropout", None), "drop",
                    "Dropout"),
    }
    for case, ((nodes, inits), support, node, op) in cases.items():
        nodes = nodes + [n("GlobalAveragePool", ["c"], ["g"]), n("Flatten", ["g"], ["f"])]
        head, hi = gemm_head("f", 4, 10, bias=False)
        path = save(tmp_path, nodes + head, inits + hi, [1, 4, 8, 8], name=f"{case}.onnx")
        supported = supports(*support) if support else supports("conv2d") and _pair_kernels()
        if supported:
            assert kinds(import_onnx(path).model)[0][0] in ("conv2d", "prelu", "dropout")
        else:
            with pytest.raises(ModelError, match=rf"node '{node}' \({op}\): .*not a bnncost layer"):
                import_onnx(path)


def _pair_kernels() -> bool:
    from bnncost.layers.importers.onnx_interpret import _accepts_pair
    from bnncost.layers.spec import Conv2D
    return _accepts_pair(Conv2D, "kernel")


# ------------------------------------------------------------------ bad files: one line, node and op, exit 2

def refused(capsys, tmp_path, path: str, *needles: str) -> str:
    target = tmp_path / "out.yaml"
    code, out, err = run(capsys, "import", path, "-o", target)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("bnncost: error: ") and "Traceback" not in err
    for needle in needles:
        assert needle in err
    assert not target.exists() and not list(tmp_path.glob(".out.yaml.*"))  # nothing half-written
    return err


def test_not_onnx_and_truncated(capsys, tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_text("name: not a model\n")
    refused(capsys, tmp_path, str(junk), "not an ONNX model")
    data = (DATA / "resnete-small.dynamo.onnx").read_bytes()
    for cut in (len(data) // 2, len(data) - 5, 40):
        part = tmp_path / "part.onnx"
        part.write_bytes(data[:cut])
        refused(capsys, tmp_path, str(part), "part.onnx")


def test_unsupported_op(capsys, tmp_path):
    nodes = [helper.make_node("Tanh", ["x"], ["t"], name="squash")]
    head, hi = gemm_head("t", 784, 10)
    refused(capsys, tmp_path, save(tmp_path, nodes + head, hi, ["batch", 784]), "node 'squash' (Tanh)",
            "unsupported op")


def test_dynamic_spatial_shape(capsys, tmp_path):
    nodes, inits = conv("x", "c", RNG.normal(size=(4, 3, 3, 3)), "stem")
    nodes += [helper.make_node("GlobalAveragePool", ["c"], ["g"]), helper.make_node("Flatten", ["g"], ["f"])]
    head, hi = gemm_head("f", 4, 10)
    path = save(tmp_path, nodes + head, inits + hi, ["batch", 3, "height", 32])
    refused(capsys, tmp_path, path, "dynamic dimension 'height'", "node 'stem' (Conv)")


def test_missing_external_data(capsys, tmp_path):
    nodes, inits = binary_mlp("sign")
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, ["batch", 784])],
                          [helper.make_tensor_value_info("y", F, None)], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "ext.onnx"
    onnx.save(m, str(path), save_as_external_data=True, location="ext.weights", size_threshold=1024)
    assert import_onnx(str(path)).model.layers  # with its data it imports
    (tmp_path / "ext.weights").unlink()
    refused(capsys, tmp_path, str(path), "initializer 'w0'", "(Sign)", "'ext.weights' is missing")


def test_two_outputs(capsys, tmp_path):
    nodes, inits = binary_mlp("sign")
    path = save(tmp_path, nodes, inits, ["batch", 784], outputs=("y", "h0"))
    refused(capsys, tmp_path, path, "2 outputs", "'h0' from node 'bn0_bn' (BatchNormalization)")


def test_cycle(capsys, tmp_path):
    n = helper.make_node
    nodes = [n("Add", ["x", "b"], ["a"], name="loop_add"), n("Relu", ["a"], ["b"], name="loop_relu")]
    head, hi = gemm_head("b", 784, 10)
    refused(capsys, tmp_path, save(tmp_path, nodes + head, hi, ["batch", 784]), "cycle", "(Add)")


@pytest.mark.parametrize("case, needle", [
    ("where-not-sign", "node 'pick' (Where)"),
    ("reshape-3d", "node 'shape3' (Reshape)"),
    ("ends-in-map", "not class scores"),
])
def test_other_refusals_name_the_node(capsys, tmp_path, case, needle):
    n = helper.make_node
    if case == "where-not-sign":
        nodes = [n("Greater", ["x", "zero"], ["c"]), n("Where", ["c", "one", "two"], ["w"], name="pick")]
        inits = [const("zero", 0.0), const("one", 1.0), const("two", 2.0)]
        head, hi = gemm_head("w", 784, 10)
    elif case == "reshape-3d":
        nodes = [n("Reshape", ["x", "s"], ["r"], name="shape3")]
        inits = [const("s", np.array([-1, 28, 28]))]
        head, hi = gemm_head("r", 784, 10)
    else:
        nodes, inits = conv("x", "y", RNG.normal(size=(4, 3, 3, 3)), "last")
        head, hi = [], []
    shape = ["batch", 3, 8, 8] if case == "ends-in-map" else ["batch", 784]
    refused(capsys, tmp_path, save(tmp_path, nodes + head, inits + hi, shape), needle)


def test_without_the_onnx_package(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(__import__("sys").modules, "onnx", None)
    load_model.__wrapped__ if hasattr(load_model, "__wrapped__") else None
    err = refused(capsys, tmp_path, str(DATA / "mlp.torchscript-opset17.onnx"), "pip install 'bnncost[onnx]'")
    code, _, err2 = run(capsys, "predict", tmp_path / "copy.onnx")
    assert code == 2
    (tmp_path / "copy.onnx").write_bytes((DATA / "mlp.torchscript-opset17.onnx").read_bytes())
    code, _, err2 = run(capsys, "predict", tmp_path / "copy.onnx")
    assert code == 2 and "pip install 'bnncost[onnx]'" in err2 and err2.count("\n") == 1
    assert err


def test_graph_of_accepts_an_onnx_path():
    g = graph_of(str(DATA / "digits-cnn.torchscript-opset13.onnx"))
    assert g.model.name == "digits-cnn" and g.output_shape == (10,)


def test_tf2onnx_and_dynamo_details(tmp_path):
    """One-channel NHWC input made NCHW by a Reshape (tf2onnx); Where on ones_like/-ones_like constants with
    CastLike (dynamo optimize=False); an all-zero bias is no bias; a lone per-channel Mul is a batchnorm."""
    n = helper.make_node
    nodes = [n("Reshape", ["x", "nchw"], ["t0"], name="to_nchw")]
    c, inits = conv("t0", "c0", RNG.normal(size=(4, 1, 3, 3)), "stem", bias=np.zeros(4), pads=[1, 1, 1, 1])
    nodes += c + [n("Mul", ["c0", "bn.scale"], ["m0"], name="bn_mul"),
                  n("Shape", ["m0"], ["shp"]), n("ConstantOfShape", ["shp"], ["ones"],
                                                 value=numpy_helper.from_array(np.array([1.0], np.float32))),
                  n("Neg", ["ones"], ["mones"]), n("CastLike", ["zero", "m0"], ["zero_like"]),
                  n("GreaterOrEqual", ["m0", "zero_like"], ["ge"]), n("Where", ["ge", "ones", "mones"], ["s0"]),
                  n("MaxPool", ["s0"], ["p0"], kernel_shape=[2, 2], strides=[2, 2])]
    c1, c1i = conv("p0", "c1", np.sign(RNG.uniform(-1, 1, (8, 4, 3, 3))), "bconv", bias=RNG.normal(size=8))
    nodes += c1 + [n("Flatten", ["c1"], ["f"])]
    head, hi = gemm_head("f", 8 * 2 * 2, 10, bias=False)
    inits += c1i + hi + [const("nchw", np.array([-1, 1, 8, 8])), const("bn.scale", RNG.uniform(0.5, 2, (4, 1, 1))),
                         const("zero", 0.0)]
    got = import_onnx(save(tmp_path, nodes + head, inits, ["N", 8, 8, 1], opset=18))
    assert got.model.input == (8, 8, 1)
    assert kinds(got.model) == expected("""
- conv2d: {filters: 4, kernel: 3, padding: same, binary: false}
- batchnorm: {}
- sign: {}
- maxpool: {size: 2}
- conv2d: {filters: 8, kernel: 3}
- batchnorm: {}
- flatten: {}
- dense: {units: 10, binary: false}
- softmax_ce: {}
""", [8, 8, 1])
    assert any("node 'bn_mul' (Mul): a per-channel scale" in note for note in got.notes)
    assert not any("stem" in note for note in got.notes)  # its zero bias is no bias: nothing restored


def test_explicit_pad_is_folded_into_the_conv_or_pool_after_it(tmp_path):
    """Larq's pad_values=1 and Keras ZeroPadding2D arrive as a Pad before a 'valid' conv or pool."""
    n = helper.make_node

    def graph(dangling: bool) -> str:
        nodes = [n("Sign", ["x"], ["s"]), n("Pad", ["s", "pads", "one"], ["p"], name="pad_ones")]
        c, inits = conv("p", "c", np.sign(RNG.uniform(-1, 1, (4, 3, 3, 3))), "qconv")
        nodes += c + [n("Pad", ["c", "pads"], ["q"]), n("MaxPool", ["q"], ["m"], kernel_shape=[3, 3], strides=[2, 2]),
                      n("Pad", ["m", "pads"], ["d"], name="pad_alone") if dangling else n("Identity", ["m"], ["d"]),
                      n("Flatten", ["d"], ["f"])]
        head, hi = gemm_head("f", 4 * (6 * 6 if dangling else 4 * 4), 10, bias=False)
        inits += hi + [const("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1])), const("one", 1.0)]
        return save(tmp_path, nodes + head, inits, ["batch", 3, 8, 8], name=f"pad{int(dangling)}.onnx")

    with pytest.raises(ModelError, match=r"node 'pad_alone' \(Pad\): explicit padding"):
        import_onnx(graph(dangling=True))
    assert kinds(import_onnx(graph(dangling=False)).model) == expected("""
- sign: {}
- conv2d: {filters: 4, kernel: 3, padding: same}
- maxpool: {size: 3, stride: 2, padding: same}
- flatten: {}
- dense: {units: 10, binary: false}
- softmax_ce: {}
""", [8, 8, 3])


# ------------------------------------------------------------------ grouped and depthwise convs (issue 11 item 3)

def grouped_graph(tmp_path) -> str:
    """Binary depthwise stem (group = channels), sign, binary grouped conv (group 2), FP depthwise conv, head."""
    n = helper.make_node
    nodes, inits = conv("x", "c0", folded(4, 1, 3), "dw", group=4, pads=[1, 1, 1, 1])
    b0, b0i = bn("c0", "n0", 4, "bn0")
    s1, _ = sign_idiom("ste", "n0", "s1", "a1_")
    c1, c1i = conv("s1", "c1", folded(8, 2, 3), "gconv", group=2)
    b1, b1i = bn("c1", "n1", 8, "bn1")
    c2, c2i = conv("r1", "c2", RNG.normal(size=(8, 1, 3, 3)), "fpdw", group=8, pads=[1, 1, 1, 1], strides=[2, 2])
    nodes += b0 + s1 + c1 + b1 + [n("Relu", ["n1"], ["r1"])] + c2
    nodes += [n("GlobalAveragePool", ["c2"], ["g"]), n("Flatten", ["g"], ["f"])]
    head, hi = gemm_head("f", 8, 10, bias=False)
    return save(tmp_path, nodes + head, inits + b0i + c1i + b1i + c2i + hi, ["batch", 4, 8, 8], name="grouped.onnx")


GROUPED_LAYERS = """
- conv2d: {filters: 4, kernel: 3, padding: same, groups: 4}
- batchnorm: {}
- sign: {}
- conv2d: {filters: 8, kernel: 3, groups: 2}
- batchnorm: {}
- relu: {}
- conv2d: {filters: 8, kernel: 3, stride: 2, padding: same, groups: 8, binary: false}
- global_avgpool: {}
- dense: {units: 10, binary: false}
- softmax_ce: {}
"""


def test_grouped_and_depthwise_convs_import_and_run_end_to_end(capsys, tmp_path):
    path = grouped_graph(tmp_path)
    got = import_onnx(path)
    assert kinds(got.model) == expected(GROUPED_LAYERS, [8, 8, 4])
    g = build_graph(got.model)
    assert [n.weight_shape for n in g.nodes if n.kind == "conv2d"] == [(3, 3, 1, 4), (3, 3, 2, 8), (3, 3, 1, 8)]
    yaml_path = tmp_path / "grouped.yaml"
    code, _, err = run(capsys, "import", path, "-o", yaml_path)
    assert code == 0, err
    outs = []
    for p in (path, yaml_path):
        code, out, err = run(capsys, "predict", p, "--batch", "8", "--json")
        assert code == 0, err
        outs.append(out)
    assert outs[0] == outs[1]
    code, out, err = run(capsys, "verify", path, "--batch", "4", "--steps", "1", "--json")
    assert code == 0, err
    assert json.loads(out)["model"] == "grouped"


# ------------------------------------------------------------------ a full-precision bias, kept or restored

def test_a_full_precision_bias_is_a_batchnorm_by_default_and_a_bias_with_keep_bias(capsys, tmp_path):
    """Gemm + bias feeding the loss (no batchnorm after it), and a full-precision conv with a bias before a relu."""
    n = helper.make_node
    nodes, inits = conv("x", "c0", RNG.normal(size=(4, 2, 3, 3)), "stem", bias=RNG.normal(size=4), pads=[1, 1, 1, 1])
    nodes += [n("Relu", ["c0"], ["r0"]), n("Flatten", ["r0"], ["f"])]
    head, hi = gemm_head("f", 4 * 6 * 6, 10, bias=True)
    path = save(tmp_path, nodes + head, inits + hi, ["batch", 2, 6, 6], name="biased.onnx")
    restored = import_onnx(path)
    assert kinds(restored.model) == expected("""
- conv2d: {filters: 4, kernel: 3, padding: same, binary: false}
- batchnorm: {}
- relu: {}
- flatten: {}
- dense: {units: 10, binary: false}
- batchnorm: {}
- softmax_ce: {}
""", [6, 6, 2])
    kept = import_onnx(path, keep_bias=True)
    assert kinds(kept.model) == expected("""
- conv2d: {filters: 4, kernel: 3, padding: same, binary: false, bias: true}
- relu: {}
- flatten: {}
- dense: {units: 10, binary: false, bias: true}
- softmax_ce: {}
""", [6, 6, 2])
    g = build_graph(kept.model)
    assert g.parameter_count() == (3 * 3 * 2 * 4 + 4) + (144 * 10 + 10)  # the ONNX initializers' sizes
    target = tmp_path / "biased.yaml"
    code, out, err = run(capsys, "import", path, "-o", target, "--keep-bias")
    assert code == 0, err
    assert kinds(load_model(str(target))) == kinds(kept.model)
    code, out, err = run(capsys, "verify", target, "--batch", "4", "--steps", "1", "--json")
    assert code == 0, err


def test_a_bias_on_a_binary_layer_is_always_a_batchnorm(tmp_path):
    """--keep-bias keeps full-precision biases only: a binary layer's bias is a fused batchnorm."""
    s, si = sign_idiom("sign", "x", "s0", "a0_")
    nodes, inits = conv("s0", "c0", folded(4, 2, 3), "bconv", bias=RNG.normal(size=4))
    nodes = s + nodes + [helper.make_node("Flatten", ["c0"], ["f"])]
    head, hi = gemm_head("f", 4 * 4 * 4, 10, bias=False)
    kept = import_onnx(save(tmp_path, nodes + head, si + inits + hi, ["batch", 2, 6, 6]), keep_bias=True)
    assert kinds(kept.model)[:3] == [("sign", {}), ("conv2d", {"filters": 4, "kernel": 3}), ("batchnorm", {})]


def test_a_zero_stride_is_refused(capsys, tmp_path):
    nodes, inits = conv("x", "c", RNG.normal(size=(4, 3, 3, 3)), "stem", strides=[0, 0])
    nodes += [helper.make_node("GlobalAveragePool", ["c"], ["g"]), helper.make_node("Flatten", ["g"], ["f"])]
    head, hi = gemm_head("f", 4, 10)
    refused(capsys, tmp_path, save(tmp_path, nodes + head, inits + hi, ["batch", 3, 8, 8]), "node 'stem' (Conv)",
            "strides [0, 0]")


def test_external_data_outside_the_model_folder_is_refused(capsys, tmp_path):
    """ONNX reads external data beside the model only: a location that climbs out of its folder is named, not
    followed (and onnx's own checker traceback never reaches the user)."""
    nodes, inits = binary_mlp("sign")
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, ["batch", 784])],
                          [helper.make_tensor_value_info("y", F, None)], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    (tmp_path / "in").mkdir()
    path = tmp_path / "in" / "ext.onnx"
    onnx.save(m, str(path), save_as_external_data=True, location="ext.weights", size_threshold=1024)
    (tmp_path / "in" / "ext.weights").rename(tmp_path / "ext.weights")
    m = onnx.load(str(path), load_external_data=False)
    for t in m.graph.initializer:  # onnx.save refuses such a location; a file made by hand has it
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = "../ext.weights"
    path.write_bytes(m.SerializeToString())
    refused(capsys, tmp_path, str(path), "initializer 'w0'", "'../ext.weights' is outside the model's folder")
