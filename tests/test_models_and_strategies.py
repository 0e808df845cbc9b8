"""The zoo, model and strategy loading, and the errors a user sees."""

import pytest

from bnncost.costmodel import StrategyError, load_strategy, predict, strategy_names
from bnncost.layers import ModelError, build_graph, load_model, parse_model, zoo_names


def params(name):
    return build_graph(load_model(name)).parameter_count()


def bn(c):  # gamma and beta
    return 2 * c


def test_zoo_parameter_counts_by_hand():
    assert params("mlp") == 784 * 256 + 3 * 256 * 256 + 256 * 10 + 4 * bn(256) + bn(10)
    assert params("digits-mlp") == 64 * 256 + 256 * 256 + 256 * 10 + 2 * bn(256) + bn(10)
    assert params("digits-cnn") == 9 * 1 * 32 + 9 * 32 * 64 + 2 * 2 * 64 * 10 + bn(32) + bn(64) + bn(10)
    cnv = (9 * 3 * 64 + 9 * 64 * 64 + 9 * 64 * 128 + 9 * 128 * 128 + 9 * 128 * 256 + 9 * 256 * 256
           + 256 * 512 + 512 * 512 + 512 * 10
           + bn(64) * 2 + bn(128) * 2 + bn(256) * 2 + bn(512) * 2 + bn(10))
    assert params("cnv") == cnv
    binarynet = (9 * 3 * 128 + 9 * 128 * 128 + 9 * 128 * 256 + 9 * 256 * 256 + 9 * 256 * 512 + 9 * 512 * 512
                 + 8192 * 1024 + 1024 * 1024 + 1024 * 10
                 + bn(128) * 2 + bn(256) * 2 + bn(512) * 2 + bn(1024) * 2 + bn(10))
    assert params("binarynet") == binarynet
    stem = 7 * 7 * 3 * 64 + bn(64) * 2
    stages = 0
    cin = 64
    for f in (64, 128, 256, 512):
        for b in range(4):
            stages += 9 * (cin if b == 0 else f) * f + bn(f)
            if b == 0 and f != 64:
                stages += cin * f + bn(f)  # 1x1 shortcut conv + bn
        cin = f
    head = 512 * 1000
    assert params("resnete18") == stem + stages + head == params("bireal18")
    assert 11_000_000 < params("resnete18") < 12_000_000  # ResNet-18 has 11.7 M


def test_zoo_shapes():
    g = build_graph(load_model("cnv"))
    convs = [n.out_shape for n in g.nodes if n.kind == "conv2d"]
    assert [s[0] for s in convs] == [30, 28, 12, 10, 3, 1]
    g = build_graph(load_model("resnete18"))
    assert g.nodes[0].out_shape == (112, 112, 64)
    assert [n.out_shape for n in g.nodes if n.kind == "add"][-1] == (7, 7, 512)
    assert sum(1 for n in g.nodes if n.kind == "conv2d" and n.binary) == 16


@pytest.mark.parametrize("model", zoo_names())
@pytest.mark.parametrize("strategy", strategy_names())
def test_every_zoo_model_predicts_under_every_strategy(model, strategy):
    p = predict(model, strategy, 8)
    assert p.memory.peak_bytes > 0
    assert p.memory.peak_bytes == sum(p.memory.by_role.values())


def test_ladder_descends():
    peaks = [predict("binarynet", s, 100).memory.peak_bytes for s in
             ["standard", "ladder-1-binary-activations", "ladder-2-l1-batchnorm", "ladder-3-binary-dw", "proposed"]]
    assert peaks == sorted(peaks, reverse=True) and len(set(peaks)) == 5


def test_extends_inherits_and_overrides(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("extends: proposed\nformats:\n  activation_grad: bfloat16\n")
    s = load_strategy(str(f))
    assert s.name == "mine" and s.formats["activation_grad"] == "bfloat16" and s.batchnorm == "l1"
    assert load_strategy("proposed-po2").formats["activation_grad"] == "po2"


@pytest.mark.parametrize("text, needle", [
    ("extends: proposed\nformats:\n  activations: bool\n", "unknown role 'activations'"),
    ("extends: proposed\nformats:\n  input: float8\n", "unknown format 'float8'"),
    ("extends: proposed\nbatchnorm: l3\n", "batchnorm: 'l3'"),
    ("extends: nosuch\n", "unknown strategy 'nosuch'"),
    ("name: x\nbatchnorm: l1\nweight_grad: sign\noptimizer: adam\nformats: {input: float16}\n", "no format for role"),
    ("extends: proposed\nformats: [1, 2\n", "malformed YAML"),
    ("extends: proposed\nweight_grad: full\n", "needs a real format"),
    ("extends: proposed\nformats:\n  workspace: bool\n", "workspace takes its operands' format"),
    ("extends: proposed\ncolour: red\n", "unknown field"),
])
def test_bad_strategies(tmp_path, text, needle):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(StrategyError, match=needle.replace("(", r"\(").replace("[", r"\[")) as exc:
        load_strategy(str(f))
    assert "\n" not in str(exc.value)


def test_strategy_cycle(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(StrategyError, match="cycle"):
        load_strategy(str(tmp_path / "a.yaml"))


def model(layers, shape=(8, 8, 1)):
    return {"input": list(shape), "layers": layers}


@pytest.mark.parametrize("doc, needle", [
    (model([{"conv2d": {"filters": 4, "kernel": 3}}, {"conv2d": {"filters": 4, "kernel": 3}},
            {"conv2d": {"filters": 4, "kernel": 3}}, {"conv2d": {"filters": 4, "kernel": 3}},
            {"softmax_ce": {}}]), r"layer 3 \(conv2d_4\): 3x3 valid conv on a 2x2 map"),
    (model([{"conv2d": {"filters": 4, "kernel": 3}}, {"softmax_ce": {}}], shape=(10,)),
     r"layer 0 \(conv2d_1\): conv2d needs an \[H, W, C\] input"),
    (model([{"residual": {"body": [{"conv2d": {"filters": 5, "kernel": 3, "padding": "same"}}]}},
            {"flatten": {}}, {"dense": {"units": 3}}, {"softmax_ce": {}}]),
     r"layer 0 \(residual_1\): body output \[8, 8, 5\] differs from shortcut output \[8, 8, 1\]"),
    (model([{"dense": {"units": 3}}, {"softmax_ce": {}}]), r"dense needs a flat input"),
    (model([{"dense": {"unit": 3}}, {"softmax_ce": {}}], shape=(4,)), r"layer 0 \(dense_1\): unit: unknown field"),
    (model([{"dense": {"units": -3}}, {"softmax_ce": {}}], shape=(4,)), r"layer 0 \(dense_1\): units"),
    (model([{"densely": {"units": 3}}, {"softmax_ce": {}}], shape=(4,)), r"unknown layer kind 'densely'"),
    (model([{"dense": {"units": 3}}], shape=(4,)), r"the last layer must be softmax_ce"),
    ({"input": [0], "layers": [{"softmax_ce": {}}]}, r"input must be"),
    ({"layers": [{"softmax_ce": {}}]}, r"missing 'input'"),
])
def test_bad_models_name_the_layer_and_problem(doc, needle):
    with pytest.raises(ModelError, match=needle) as exc:
        build_graph(parse_model(doc, "user.yaml"))
    assert str(exc.value).startswith("user.yaml") and "\n" not in str(exc.value)


def test_missing_and_unknown_models(tmp_path):
    with pytest.raises(ModelError, match="model file not found"):
        load_model(str(tmp_path / "none.yaml"))
    with pytest.raises(ModelError, match="unknown model 'vgg'.*mlp"):
        load_model("vgg")
    bad = tmp_path / "bad.yaml"
    bad.write_text("input: [4\nlayers: x")
    with pytest.raises(ModelError, match="malformed YAML"):
        load_model(str(bad))


def test_user_model_file_loads(tmp_path):
    f = tmp_path / "smallconv.yaml"
    f.write_text(
        "name: smallconv\ninput: [28, 28, 1]\nlayers:\n"
        "  - conv2d: {filters: 32, kernel: 3, padding: same}\n  - batchnorm: {}\n  - sign: {}\n"
        "  - maxpool: {size: 2}\n  - flatten: {}\n  - dense: {units: 10, name: head}\n  - batchnorm: {}\n"
        "  - softmax_ce: {}\n"
    )
    g = build_graph(load_model(str(f)))
    assert g.model.name == "smallconv" and g.by_name["head"].fan_in == 14 * 14 * 32
