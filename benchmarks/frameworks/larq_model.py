"""Any bnncost model (zoo name or user YAML) as a Larq/Keras functional model.

The model is built from the `bnncost.layers` graph, node by node, the way a
Larq user writes a BNN:
- a binary dense/conv2d is `lq.layers.QuantDense` / `QuantConv2D` with
  `kernel_quantizer="ste_sign"` and `kernel_constraint="weight_clip"`; its
  `input_quantizer` is `"ste_sign"`, except for the first layer (it reads the
  real data, METHOD 2.1) and a layer whose input is already +-1;
- a `sign` whose every consumer is a binary dense/conv2d is that layer's input
  quantizer (one `ste_sign` op, as in Larq's own examples); any other `sign`
  is a standalone `lq.quantizers.SteSign()` layer;
- `binary: false` layers are plain `Dense` / `Conv2D`, with a bias only where
  the model says `bias: true` (binary layers never: batchnorm follows them);
  dropout is `Dropout(rate)`;
- a depthwise conv (groups = input channels) is `QuantDepthwiseConv2D` /
  `DepthwiseConv2D` (depth_multiplier = filters / groups), other `groups` are
  Conv2D's / QuantConv2D's `groups` (TensorFlow runs those XLA-compiled on CPU);
  prelu is `PReLU` with one slope per channel (`shared_axes=[1, 2]` on images);
- batchnorm is Keras' `BatchNormalization` (defaults: gamma and beta, fused
  kernel), relu `ReLU`, pools `MaxPooling2D` / `AveragePooling2D` /
  `GlobalAveragePooling2D`, flatten `Flatten`, a residual join `Add`;
- softmax_ce is `Activation("softmax")`, trained with
  `SparseCategoricalCrossentropy` (int32 labels).

Imports TensorFlow and Larq: only for `benchmarks/frameworks`, never the package.
"""

from __future__ import annotations

import larq as lq
import tensorflow as tf

from bnncost.layers.graph import Graph, Node

_PM1_KEEPERS = ("maxpool", "flatten")  # a +-1 input stays +-1 through these


def _consumers(graph: Graph) -> dict[int, list[Node]]:
    """Tensor id -> the nodes that read it, looking through flatten (an alias)."""
    out: dict[int, list[Node]] = {}
    for node in graph.nodes:
        for i in node.inputs:
            out.setdefault(i, []).append(node)
    return out


def _binary_weighted(node: Node) -> bool:
    return node.kind in ("dense", "conv2d") and node.binary and not node.first


def _depthwise(node: Node) -> bool:
    """A conv with one group per input channel: Keras' DepthwiseConv2D (what Larq users write)."""
    return node.kind == "conv2d" and node.spec.groups > 1 and node.spec.groups == node.in_shape[-1]


def absorbed_signs(graph: Graph) -> set[str]:
    """Names of the `sign` nodes that become the input quantizer of every layer reading them."""
    readers = _consumers(graph)

    def ends(tensor: int) -> list[Node]:
        found = []
        for n in readers.get(tensor, []):
            found.extend(ends(n.output) if n.kind == "flatten" else [n])
        return found

    out = set()
    for node in graph.nodes:
        if node.kind == "sign":
            users = ends(node.output)
            if users and all(_binary_weighted(u) for u in users):
                out.add(node.name)
    return out


def build_larq_model(graph: Graph) -> tf.keras.Model:
    """The Keras model of `graph`: one Keras layer per bnncost layer (absorbed signs excepted)."""
    absorbed = absorbed_signs(graph)
    inputs = tf.keras.Input(shape=graph.model.input, name="data")
    held: dict[int, tf.Tensor] = {0: inputs}
    plus_minus_one: dict[int, bool] = {0: False}  # values known to be +-1 already
    signed_by_quantizer: set[int] = set()  # tensors an absorbed sign stands for

    for node in graph.nodes:
        x = held[node.inputs[0]]
        pm1_in = plus_minus_one[node.inputs[0]]
        k, spec, name = node.kind, node.spec, node.name
        pm1_out = False
        if k in ("dense", "conv2d"):
            if node.binary:
                quantize_input = not node.first and (node.inputs[0] in signed_by_quantizer or not pm1_in)
                common = dict(
                    input_quantizer="ste_sign" if quantize_input else None,
                    kernel_quantizer="ste_sign", kernel_constraint="weight_clip",
                    use_bias=False, name=name,
                )
                if k == "dense":
                    y = lq.layers.QuantDense(spec.units, **common)(x)
                elif _depthwise(node):
                    common["depthwise_quantizer"] = common.pop("kernel_quantizer")
                    common["depthwise_constraint"] = common.pop("kernel_constraint")
                    y = lq.layers.QuantDepthwiseConv2D(spec.kernel, strides=spec.stride, padding=spec.padding,
                                                       depth_multiplier=spec.filters // spec.groups, **common)(x)
                else:
                    y = lq.layers.QuantConv2D(spec.filters, spec.kernel, strides=spec.stride,
                                              padding=spec.padding, groups=spec.groups, **common)(x)
            elif k == "dense":
                y = tf.keras.layers.Dense(spec.units, use_bias=spec.bias, name=name)(x)
            elif _depthwise(node):
                y = tf.keras.layers.DepthwiseConv2D(spec.kernel, strides=spec.stride, padding=spec.padding,
                                                    depth_multiplier=spec.filters // spec.groups, use_bias=spec.bias,
                                                    name=name)(x)
            else:
                y = tf.keras.layers.Conv2D(spec.filters, spec.kernel, strides=spec.stride, groups=spec.groups,
                                           padding=spec.padding, use_bias=spec.bias, name=name)(x)
        elif k == "batchnorm":
            y = tf.keras.layers.BatchNormalization(name=name)(x)
        elif k == "sign":
            if name in absorbed:
                y = x
                signed_by_quantizer.add(node.output)
            else:
                y = lq.quantizers.SteSign(name=name)(x)
            pm1_out = True
        elif k == "relu":
            y = tf.keras.layers.ReLU(name=name)(x)
        elif k == "dropout":
            y = tf.keras.layers.Dropout(spec.rate, name=name)(x)
            pm1_out = False  # scaled by 1 / (1 - rate) while training
        elif k == "prelu":  # one slope per channel: shared over height and width
            shared = [1, 2] if len(node.in_shape) == 3 else None
            y = tf.keras.layers.PReLU(shared_axes=shared, name=name)(x)
        elif k in ("maxpool", "avgpool"):
            cls = tf.keras.layers.MaxPooling2D if k == "maxpool" else tf.keras.layers.AveragePooling2D
            y = cls(pool_size=spec.size, strides=spec.stride or spec.size, padding=spec.padding, name=name)(x)
            pm1_out = k == "maxpool" and pm1_in
        elif k == "global_avgpool":
            y = tf.keras.layers.GlobalAveragePooling2D(name=name)(x)
        elif k == "flatten":
            y = tf.keras.layers.Flatten(name=name)(x)
            pm1_out = pm1_in
            if node.inputs[0] in signed_by_quantizer:
                signed_by_quantizer.add(node.output)
        elif k == "add":
            y = tf.keras.layers.Add(name=name)([held[i] for i in node.inputs])
        elif k == "softmax_ce":
            y = tf.keras.layers.Activation("softmax", name=name)(x)
        else:  # pragma: no cover - the graph only holds the kinds above
            raise ValueError(f"layer {name}: kind {k} has no Larq counterpart")
        held[node.output] = y
        plus_minus_one[node.output] = pm1_out
    return tf.keras.Model(inputs, held[graph.nodes[-1].output], name=graph.model.name)


def compile_standard(model: tf.keras.Model, learning_rate: float = 1e-3) -> None:
    """METHOD's `standard` strategy in Keras terms: float32, Adam, cross-entropy on int labels."""
    model.compile(
        optimizer=tf.keras.optimizers.Adam(learning_rate),
        loss=tf.keras.losses.SparseCategoricalCrossentropy(),
    )


def train_step_function(model: tf.keras.Model):
    """Keras' own `Model.train_step` (the step `model.fit` runs) as one traced tf.function on a batch.

    Taking the batch as tensors instead of through `fit`'s tf.data iterator
    keeps its prefetch buffer out of the measured step.
    """

    @tf.function
    def step(x, y):
        return model.train_step((x, y))

    return step
