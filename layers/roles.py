"""The roles a stored variable can play (METHOD 3.2).

A layer names the role of everything it keeps; a strategy gives each role a
number format. Keeping the vocabulary here lets `layers/` describe storage
without knowing formats.
"""

ROLES: dict[str, str] = {
    "input": "the data batch, kept for the first layer's dW",
    "binary_input": "saved input of a binary dense/conv (not the first layer)",
    "real_input": "saved input of a full-precision dense/conv (not the first layer), and of a prelu",
    "norm_output": "what batchnorm saves per element",
    "activation_mask": "what sign / relu saves per element",
    "pool_mask": "max-pool mask, one per pool-input element",
    "dropout_mask": "dropout's training-time keep mask, one per dropout-input element",
    "softmax_output": "probabilities",
    "latent_weight": "W (and a full-precision layer's bias b)",
    "weight_grad": "dW (and db)",
    "optimizer_state": "optimizer moments (Adam m and v, SGD or Bop momentum)",
    "bn_param": "per-channel parameters (batchnorm's, a prelu's slopes), batchnorm statistics, their gradients",
    "activation_grad": "dY / dX buffers",
    "activation": ("a layer's forward output, until its last consumer's forward (held in the real_input "
                   "format, or binary_input when its values are +1/-1 by construction, e.g. a sign's)"),
    "workspace": "scratch an operator needs while it runs",
}

# Roles a strategy assigns a format to. Workspace takes its operands' format;
# forward activations are held like a saved real input (a binary one like a
# saved binary input: layers.storage.activation_format_role).
DERIVED_FORMAT: dict[str, str] = {"activation": "real_input"}
FORMATTED_ROLES: tuple[str, ...] = tuple(r for r in ROLES if r != "workspace" and r not in DERIVED_FORMAT)
