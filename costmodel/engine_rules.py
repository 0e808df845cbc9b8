"""An engine's rules applied to the variables of a step (METHOD 4.2).

`memory_plan` builds METHOD's variables with their formats; this module
changes them the way an engine holds a step, in this order:
0. `in_place_grads` regroup the activation-gradient buffers (layers.storage);
1. `lifetimes` move the alloc or free event of METHOD variables of a role,
   and `formats` change their storage format (bytes follow);
2. `drop` removes METHOD variables of a role;
3. `variables` add what the engine keeps per layer;
4. `shares` fold a saved variable into the layer's input or output tensor
   when both have the same format (their bytes must then agree): the tensor
   is held once, alive from the earlier alloc to the later free;
5. `temporaries` and `optimizer_temporaries` add buffers alive at one event
   (a staged temporary at one stage of it: the event is split into the
   stages its rules name, `<event>#<stage>`, and after_backward moments are
   inserted, before any rule is applied);
6. `runtime` adds bytes that are not tensors, once or per layer of some
   kinds, alive the whole step (role `runtime`), some only from or below a
   batch size;
7. `constants` add the traced graph's constants, one per distinct format and
   shape (role `runtime` too: the measured runtime is all that is not a
   variable or the batch);
8. `blas_buffers` adds the BLAS library's cached packing buffers for the
   step's `gemms` (role `runtime`), a step function of the batch size;
9. `gemm_scratch` adds the buffer a gemm call of the step's `gemms` allocates
   and frees while it runs (role `workspace`, at the gemm's event), a step
   function of the batch size too; the event's ops run one at a time, so a
   call's buffer does not add to the event's other temporaries, nor to dW
   unless the call makes dW;
10. `jit_conv_kernels` adds oneDNN's cached JIT code for the step's convs
   (role `runtime`), which depends on the batch where 1x1 convs change path.

Every other byte count stays affine in the batch size, so the peak keeps its
a + b x B form between the steps of 8 and the thresholds of 6 (where the
peak may drop), and the largest batch that fits is still found by evaluating
the peak, segment by segment.
"""

from __future__ import annotations

import math
from dataclasses import replace

from bnncost.costmodel.engine import (
    STRATEGY_FORMAT, BlasBuffers, Engine, EngineError, Gemm, JitConvKernels, Lifetime, onednn_smalln_tn,
)
from bnncost.costmodel.variable import Variable, sized
from bnncost.costmodel.strategy import Strategy
from bnncost.layers.graph import Graph, Node
from bnncost.layers.relative import (
    is_depthwise, is_grouped, is_pointwise, matching_nodes, parameter_tensors, relative_event, relative_shape,
    sole_reader,
)
from bnncost.layers.storage import gradient_buffers

RUNTIME_ROLE = "runtime"


AFTER_BACKWARD = "after_backward"
STAGE_MARK = "#"  # backward:dense_1#3: the third stage of dense_1's backward op


def apply_engine(graph: Graph, strategy: Strategy, engine: Engine, variables: list[Variable], events: list[str],
                 retention: str) -> tuple[list[Variable], list[str]]:
    """The variables of the step as this engine holds them, and the step's events (with any stages, after_backward)."""
    gemm_calls = step_gemms(graph, engine, strategy) if engine.gemms else []
    events, variables, spans = _with_sub_events(graph, strategy, engine, events, variables, retention, gemm_calls)
    index = {e: i for i, e in enumerate(events)}
    out = list(variables)

    def where(key: str, i: int) -> str:
        return f"{engine.file}: {key}[{i}]"

    def nodes(rule) -> list[Node]:
        return rule_nodes(graph, rule, engine.jit_conv_kernels) if rule.applies_to(strategy) else []

    def event(node: Node, word: str, end: bool = False, stage: int | None = None) -> int:
        """The event a word names; for an event split into stages, its first (an alloc) or last (`end`), or the
        one `stage` names."""
        if word == AFTER_BACKWARD:
            return index[f"{AFTER_BACKWARD}:{node.name}"]
        if stage is not None:
            return index[staged_event(relative_event(node, word, retention), stage)]
        return spans[relative_event(node, word, retention)][end]

    def fmt(rule) -> str:
        f = rule.resolved_format()
        return strategy.format_of(f[len(STRATEGY_FORMAT):]) if f.startswith(STRATEGY_FORMAT) else f

    def check_order(v: Variable, at: str) -> Variable:
        if v.alloc > v.free:
            raise EngineError(f"{at}: {v.name} would be freed at {events[v.free]}, before it is allocated at "
                              f"{events[v.alloc]}")
        return v

    def buffer(name: str, layer: str, role: str, form: str, shape: tuple, batched: bool, count: int,
               alloc: int, free: int) -> Variable:
        return sized(name, layer, role, form, (count, *shape) if count > 1 else tuple(shape), batched, alloc, free)

    # 0. in-place gradients: the activation-gradient buffers are regrouped
    in_place = frozenset(n.name for rule in engine.in_place_grads for n in nodes(rule))
    if in_place:
        grad_format = strategy.format_of("activation_grad")
        out = [v for v in out if v.role != "activation_grad"] + [
            sized(g.name, g.layer, g.role, grad_format, g.shape, g.batched, spans[g.alloc][0], spans[g.free][1])
            for g in gradient_buffers(graph, in_place)]
    # 1. lifetimes
    for i, rule in enumerate(engine.lifetimes):
        for node in nodes(rule):
            op = event(node, rule.alloc) if rule.stage is not None else None
            for j, v in enumerate(out):
                # a staged rule: what the layer's op makes (its output, the dX of its input, its dW); else the layer's
                if v.role != rule.role or (v.alloc != op if op is not None else v.layer != node.name):
                    continue
                alloc = event(node, rule.alloc, stage=rule.stage) if rule.alloc else v.alloc
                free = event(node, rule.free, end=True, stage=rule.free_stage) if rule.free else v.free
                moved = replace(v, alloc=alloc, free=free)
                out[j] = check_order(moved, f"{where('lifetimes', i)}.{'free' if rule.free else 'alloc'}")
    for rule in engine.formats:
        names = {n.name for n in nodes(rule)}
        out = [_reformatted(v, rule.format)
               if v.layer in names and v.role == rule.role and not v.slope and v.by_batch is None else v
               for v in out]
    # 2. drop
    for rule in engine.drop:
        names = {n.name for n in nodes(rule)}
        out = [v for v in out if not (v.layer in names and v.role == rule.role)]
    # 3. variables
    taken = {v.name for v in out}

    def add(v: Variable, at: str) -> None:
        if v.name in taken:
            raise EngineError(f"{at}.name: {v.name} is already a variable of the step; choose another name")
        taken.add(v.name)
        out.append(v)

    for i, rule in enumerate(engine.variables):
        for node in nodes(rule):
            shape, batched = sized_shape(node, rule)
            v = buffer(f"{node.name}.{rule.name}", node.name, rule.role, fmt(rule), shape, batched, rule.count,
                       event(node, rule.alloc), event(node, rule.free, end=True))
            add(check_order(v, f"{where('variables', i)}.free"), where("variables", i))
    # 4. shares
    holder = _tensor_holders(graph, out)
    for i, rule in enumerate(engine.shares):
        for node in nodes(rule):
            tensor = node.inputs[0] if rule.tensor == "input" else node.output
            mine = [v for v in out if v.layer == node.name and v.role == rule.role]
            if not mine:
                continue
            held = holder.get(tensor)
            if held is None:
                raise EngineError(f"{where('shares', i)}.tensor: {node.name}'s {rule.tensor} is not held as a tensor "
                                  f"of the step (a flatten's or the loss's output), nothing to share with")
            for v in mine:
                h = out[held]
                if v.name == h.name or v.format != h.format:
                    continue
                if (v.fixed, v.per_sample) != (h.fixed, h.per_sample):
                    raise EngineError(
                        f"{where('shares', i)}.tensor: {v.name} ({v.format} {list(v.shape)}) is not the size of "
                        f"{node.name}'s {rule.tensor} {h.name} ({h.format} {list(h.shape)})")
                out[held] = replace(h, alloc=min(h.alloc, v.alloc), free=max(h.free, v.free))
                out.remove(v)
                holder = _tensor_holders(graph, out)
                held = holder[tensor]
    # 5. temporaries
    temporary: set[str] = set()
    for i, rule in enumerate(engine.temporaries):
        for node in nodes(rule):
            shape, batched = sized_shape(node, rule)
            if rule.channel_block is not None:
                shape = channel_padded(shape, rule.shape, min(rule.channel_block, _channel_block(node)), node.groups)
            if rule.stage is not None:
                alloc, free = (event(node, rule.during, stage=k) for k in rule.stage)
            else:  # the whole event, every stage of it included
                alloc, free = event(node, rule.during), event(node, rule.during, end=True)
            v = buffer(f"{node.name}.{rule.name}", node.name, rule.role, fmt(rule), shape, batched, rule.count,
                       alloc, free)
            min_batch, batch_below = (rule.min_batch, rule.batch_below) if rule.when.onednn is None else \
                onednn_batches(node, rule.when.onednn, engine.jit_conv_kernels)
            add(replace(v, min_batch=min_batch, batch_below=batch_below), where("temporaries", i))
            temporary.add(f"{node.name}.{rule.name}")
    update_first, update = spans["update"]
    params = parameter_tensors(graph, strategy.batchnorm, strategy.optimizer)
    for i, rule in enumerate(engine.optimizer_temporaries):
        if not rule.applies_to(strategy):
            continue
        mine = [(layer, name, shape) for layer, name, shape, opt in params if opt in rule.optimizers]
        if rule.shape == "largest_parameter" and mine:
            mine = [max(mine, key=lambda p: math.prod(p[2]))]  # first of the largest, in forward order
        for layer, name, shape in mine:
            add(buffer(f"{layer}.{name}.{rule.name}", layer, rule.role, fmt(rule), shape, False, rule.count,
                       update_first, update), where("optimizer_temporaries", i))
    # 6. runtime
    last = len(events) - 1
    held_groups: set[str] = set()  # once_group: held by the first rule of the group that applies
    for i, r in enumerate(engine.runtime):
        if not r.applies_to(strategy):
            continue
        n = 1 if r.kinds is None else len({_configuration(v, graph, r.fused_with) for v in nodes(r)}
                                          if r.distinct else nodes(r))
        n = min(n, 1) if r.once else n
        if r.once_group is not None and n:
            if r.once_group in held_groups:
                n = 0
            held_groups.add(r.once_group)
        add(Variable(f"runtime.{r.name}", RUNTIME_ROLE, RUNTIME_ROLE, "uint8", (n * r.bytes,), n * r.bytes, 0,
                     0, last, batch_below=r.batch_below, min_batch=r.min_batch), where("runtime", i))
    # 7. constants: equal ones are held once
    held_constants: set[tuple] = set()
    for i, rule in enumerate(engine.constants):
        for node in nodes(rule):
            shape, batched = relative_shape(node, rule.shape)
            key = (rule.format, batched, tuple(shape))
            if key in held_constants:
                continue
            held_constants.add(key)
            add(sized(f"runtime.{rule.name}.{node.name}", RUNTIME_ROLE, RUNTIME_ROLE, rule.format, shape, batched,
                      0, last), where("constants", i))
    # 8. the BLAS library's packing buffers
    pool = engine.blas_buffers
    if pool is not None and gemm_calls:
        add(Variable(f"runtime.{pool.name}", RUNTIME_ROLE, RUNTIME_ROLE, "uint8", ("bytes",), 0, 0, 0,
                     last, by_batch=lambda batch: sum(kept_buffers(pool, gemm_calls, batch))),
            "blas_buffers")
    # 9. the scratch a BLAS library allocates inside a gemm call. The ops of one event run one at a time: a
    # product's scratch does not coexist with another product's, nor with the event's other temporaries
    # (buffers of the update), nor with dW unless it is dW's own product. The event holds the largest excess
    # of a product's scratch over what it does not coexist with. A staged call runs in its stage: its buffer
    # is alive with all that stage holds (the largest of the stage's calls)
    scratch = engine.gemm_scratch
    if scratch is not None and gemm_calls:
        by_event: dict[tuple[str, int | None], list[tuple[Node, Gemm]]] = {}
        for at, node, rule in gemm_calls:
            by_event.setdefault((at, rule.stage), []).append((node, rule))

        def call_bytes(node: Node, rule: Gemm, batch: int) -> int:
            return scratch.scratch_bytes(rule.trans, *gemm_shape(node, rule, batch))

        for (at, stage), calls in by_event.items():
            layer = calls[0][0].name
            name = f"{layer}.{scratch.name}.{at.split(':', 1)[0]}"
            if stage is not None:
                k = index[staged_event(at, stage)]

                def largest(batch: int, calls=calls) -> int:
                    return max((call_bytes(node, rule, batch) for node, rule in calls if rule.runs_at(batch)),
                               default=0)

                add(Variable(f"{name}{STAGE_MARK}{stage}", layer, "workspace", "uint8", ("bytes",), 0, 0, k, k,
                             by_batch=largest), "gemm_scratch")
                continue
            i, j = spans[at]  # the whole event, every stage of it included, as an unstaged temporary
            here = [v for v in out if v.layer == layer and i <= v.alloc and v.free <= j]
            temps = [v for v in here if v.name in temporary]
            grads = [v for v in here if v.role == "weight_grad"]

            def excess(batch: int, calls=calls, temps=temps, grads=grads) -> int:
                apart = sum(v.bytes_at(batch) for v in temps)
                return max(0, max((call_bytes(node, rule, batch) - apart
                                   - (0 if rule.makes_weight_grad else sum(v.bytes_at(batch) for v in grads))
                                   for node, rule in calls if rule.runs_at(batch)), default=0))

            add(Variable(name, layer, "workspace", "uint8", ("bytes",), 0, 0, i, j, by_batch=excess), "gemm_scratch")
    # 10. oneDNN's JIT code for convolutions
    jit = engine.jit_conv_kernels
    if jit is not None and any(n.kind == "conv2d" for n in graph.nodes):
        add(Variable(f"runtime.{jit.name}", RUNTIME_ROLE, RUNTIME_ROLE, "uint8", ("bytes",), 0, 0, 0,
                     len(events) - 1,
                     by_batch=lambda batch: conv_kernels(graph, jit, batch) * (jit.kernel_bytes + jit.state_bytes)),
            "jit_conv_kernels")
        code = sgemm_code_bytes(graph, jit)
        if code:
            add(Variable(f"runtime.{jit.name}_sgemm", RUNTIME_ROLE, RUNTIME_ROLE, "uint8", (code,), code, 0, 0,
                         len(events) - 1), "jit_conv_kernels")
    return out, events


def sized_shape(node: Node, rule) -> tuple[tuple, bool]:
    """(shape, batched) of a per-layer buffer: its shape relative to the layer, or its fixed bytes."""
    return relative_shape(node, rule.shape) if rule.bytes is None else ((rule.bytes,), False)


def channel_padded(shape: tuple, word: str, block: int, groups: int = 1) -> tuple:
    """A buffer's shape in a layout that blocks channels by `block`, rounded up to a multiple of it: a tensor's
    channels (its last dimension); a kernel's output channels and, ungrouped, its input channels (a grouped
    kernel's blocks hold its groups: oneDNN's Goihw16g keeps a depthwise kernel's one input channel a group)."""
    def up(n: int) -> int:
        return -(-n // block) * block
    if word == "weight":
        *rest, cin, cout = shape
        return (*rest, up(cin) if groups == 1 else cin, up(cout))
    return (*shape[:-1], up(shape[-1]))


def rule_nodes(graph: Graph, rule, jit: JitConvKernels | None = None) -> list[Node]:
    """The layers a per-layer rule picks: its `kinds`, narrowed by its `when` (`gemm_weight_grad` by the
    engine's JIT rule: the convs whose dW is im2col + sgemm)."""
    when = rule.when.model_dump()
    gemm, onednn = when.pop("gemm_weight_grad"), when.pop("onednn")
    picked = matching_nodes(graph, rule.kinds, **when)
    if gemm is not None:
        gemm_dw = {n.name for n in gemm_weight_grad_convs(graph, jit)} if jit is not None else set()
        picked = [n for n in picked if (n.name in gemm_dw) == gemm]
    if onednn is not None:
        picked = [n for n in picked if onednn_batches(n, onednn, jit) is not None]
    return picked


def onednn_min_batch(node: Node, jit: JitConvKernels | None) -> int | None:
    """The batch size from which the engine's oneDNN runs this conv (None: from 1): a 1x1 stride-1 conv from
    jit.pointwise_min_batch, a small one-group conv from 2 (PyTorch's ConvParams::use_mkldnn, one thread)."""
    if jit is None or node.kind != "conv2d":
        return None
    if is_pointwise(node):
        return jit.pointwise_min_batch
    small_input = math.prod(node.in_shape) <= jit.single_sample_max_input
    small_kernel = min(node.window) <= jit.single_sample_max_kernel
    return 2 if node.groups == 1 and small_input and small_kernel else None


def onednn_batches(node: Node, onednn: bool, jit: JitConvKernels | None) -> tuple[int | None, int | None] | None:
    """(min_batch, batch_below) over which the engine's oneDNN runs this conv (onednn) or does not (not onednn);
    None: at no batch size."""
    slow_below = onednn_min_batch(node, jit)
    if onednn:
        return (slow_below, None)
    return (None, slow_below) if slow_below is not None else None


def staged_event(event: str, stage: int) -> str:
    """The sub-event of one stage of an event (an op that makes its temporaries one after another)."""
    return f"{event}{STAGE_MARK}{stage}"


def event_span(events: list[str], event: str) -> tuple[int, int]:
    """(first, last) index of an event and the stages it is split into."""
    first = events.index(event)
    last = first
    while last + 1 < len(events) and events[last + 1].startswith(f"{event}{STAGE_MARK}"):
        last += 1
    return first, last


def _with_sub_events(graph: Graph, strategy: Strategy, engine: Engine, events: list[str], variables: list[Variable],
                     retention: str, gemm_calls: list[tuple[str, Node, Gemm]]
                     ) -> tuple[list[str], list[Variable], dict[str, tuple[int, int]]]:
    """Split events into the stages temporaries name, and insert `after_backward:<layer>` after backward:<layer>.

    An event's stages follow it, in ascending order: a variable alive at the
    event is alive at each (an op frees what it was given, and hands back
    what it made, only when it returns). A variable freed at backward:<layer>
    (the layer's saved tensors, its dY) is not alive at after_backward; one
    that outlives backward:<layer> (dX, dW) is. Returns the events, the
    variables re-indexed to them, and each old event's (first, last) index.
    """
    stages: dict[str, set[int]] = {}
    after: set[str] = set()
    for rule in (*engine.temporaries, *engine.lifetimes):
        if not rule.applies_to(strategy):
            continue
        for n in rule_nodes(graph, rule, engine.jit_conv_kernels):
            if isinstance(rule, Lifetime):
                if rule.stage is not None:
                    stages.setdefault(relative_event(n, rule.alloc, retention), set()).add(rule.stage)
                if rule.free_stage is not None:
                    stages.setdefault(relative_event(n, rule.free, retention), set()).add(rule.free_stage)
            elif rule.during == AFTER_BACKWARD:
                after.add(n.name)
            elif rule.stage is not None:
                stages.setdefault(relative_event(n, rule.during, retention), set()).update(rule.stage)
    for at, _, gemm in gemm_calls:
        if gemm.stage is not None:
            stages.setdefault(at, set()).add(gemm.stage)
    out: list[str] = []
    spans: dict[str, tuple[int, int]] = {}
    for e in events:
        first = len(out)
        out.append(e)
        out.extend(staged_event(e, k) for k in sorted(stages.get(e, ())))
        spans[e] = (first, len(out) - 1)
        if e.startswith("backward:") and e.split(":", 1)[1] in after:
            out.append(f"{AFTER_BACKWARD}:{e.split(':', 1)[1]}")
    if len(out) == len(events):
        return events, variables, spans
    return out, [replace(v, alloc=spans[events[v.alloc]][0], free=spans[events[v.free]][1])
                 for v in variables], spans


def gemm_weight_grad_convs(graph: Graph, rule: JitConvKernels) -> list[Node]:
    """Grouped (not depthwise) convs whose dW is im2col + the library's sgemm: input channels per group off the
    JIT kernels' channel blocking."""
    if not rule.gemm_weight_grad_channel_multiple:
        return []
    return [n for n in graph.nodes
            if is_grouped(n) and (n.in_shape[-1] // n.groups) % rule.gemm_weight_grad_channel_multiple]


def sgemm_code_bytes(graph: Graph, rule: JitConvKernels) -> int:
    """The sgemm code those convs' dW products JIT-compile, once per process.

    The product is dW_g[ic/g x kh x kw, oc/g] = col^T dY_g, a TN gemm with n = oc/g,
    which oneDNN sends to its small-n TN kernels or to its general ones.
    """
    convs = gemm_weight_grad_convs(graph, rule)
    if not convs:
        return 0
    small = [onednn_smalln_tn("TN", n.out_shape[-1] // n.groups) for n in convs]
    return (rule.sgemm_code_bytes + (rule.sgemm_smalln_code_bytes if any(small) else 0)
            + (rule.sgemm_general_code_bytes if not all(small) else 0))


def conv_kernels(graph: Graph, rule: JitConvKernels, batch: int) -> int:
    """oneDNN JIT kernels the step's convs leave cached: convolution kernels and reorders."""
    return sum(conv_kernel_counts(graph, rule, batch))


def conv_kernel_counts(graph: Graph, rule: JitConvKernels, batch: int) -> tuple[int, int]:
    """(convolution kernels, reorder kernels) the step's convs leave cached: per distinct conv configuration one
    per direction, and one per distinct reorder (oneDNN's primitive cache: equal convs share their primitives)."""
    gemm_dw = {n.name for n in gemm_weight_grad_convs(graph, rule)}  # their dW is a gemm, not a JIT conv kernel
    directions: dict[tuple, int] = {}  # (configuration, direction) -> its kernels
    to_blocked: set = set()  # per-sample shapes reordered plain -> blocked (input, dY)
    to_plain: set = set()  # blocked -> plain (output, dX)
    weights: set = set()  # (weight shape, which reorder)
    strided_copies: set = set()  # configurations whose strided backward-data copies with a reorder of its own
    for node in graph.nodes:
        if node.kind != "conv2d" or batch < (onednn_min_batch(node, rule) or 1):
            continue
        dx = graph.tensors[node.inputs[0]].requires_grad
        # a 1x1 kernel's backward-weights is oneDNN's 1x1 implementation at any stride (holdout-odd's strided 1x1)
        one_by_one = node.window == (1, 1) and node.groups == 1
        weight_grad = 0 if node.name in gemm_dw else rule.pointwise_weight_grad_kernels if one_by_one else 1
        config = _configuration(node)
        directions[config, "forward"] = 1
        directions[config, "weight_grad"] = weight_grad
        if dx:  # a grouped or depthwise conv's strided backward-data is its own JIT kernel, not brgemm's
            strided = node.strides != (1, 1) and node.groups == 1
            directions[config, "input_grad"] = _strided_input_grad_kernels(node, rule) if strided else 1
            if strided:
                strided_copies.add(config)
        layout = _channel_block(node)
        if node.in_shape[-1] >= rule.plain_input_below_channels:
            to_blocked.add((tuple(node.in_shape), layout))
        to_blocked.add((tuple(node.out_shape), layout))
        to_plain.add((tuple(node.out_shape), layout))
        weights |= {(tuple(node.weight_shape), "forward"), (tuple(node.weight_shape), "weight_grad")}
        if dx:
            to_plain.add((tuple(node.in_shape), layout))
            # a depthwise kernel is Goihw16g forward and backward-data alike: one reorder, cached once
            weights.add((tuple(node.weight_shape), "forward" if is_depthwise(node) else "backward_data"))
    reorders = len(to_blocked) + len(to_plain) + len(weights) + rule.strided_input_grad_reorders * len(strided_copies)
    return sum(directions.values()), reorders


def _strided_input_grad_kernels(node: Node, rule: JitConvKernels) -> int:
    """Kernels of a one-group strided conv's backward-data (oneDNN's brgemm strided implementation)."""
    if node.window == (1, 1) and rule.strided_1x1_input_grad_kernels:
        return rule.strided_1x1_input_grad_kernels * (2 if node.in_shape[-1] % 16 else 1)
    return rule.strided_input_grad_kernels


def _channel_block(node: Node) -> int:
    """The channel block of the layout oneDNN reorders a conv's activations to: 16 (nChw16c on AVX-512), or for
    a grouped conv whose channels per group are no multiple of 16 a block of them (8 per group: jit_avx2 kernels,
    nChw8c). Reorders of one shape to different blocks are different primitives, and a blocked copy pads its
    channels to the block (holdout-res proposed B=128, 24 channels in 3 groups of 8: the blocked dY and input
    of its backward-weights 7,077,888 B each, 24 channels, not 32)."""
    per_group = node.in_shape[-1] // node.groups
    return 16 if node.groups == 1 or is_depthwise(node) else math.gcd(per_group, 16)


def step_gemms(graph: Graph, engine: Engine, strategy: Strategy) -> list[tuple[str, Node, Gemm]]:
    """(event, node, gemm) of every gemm of a step in the order they run: forward, then backward in reverse, a
    layer's in the order of the engine's rules that apply to the strategy. A rule `when: {onednn: false}` comes
    with the conv's own batch bound (below the batch oneDNN runs it from)."""
    jit = engine.jit_conv_kernels
    rules = [rule for rule in engine.gemms if rule.applies_to(strategy)]
    matched = {id(rule): rule_nodes(graph, rule, jit) for rule in rules}
    out = []
    for during, order in (("forward", graph.nodes), ("backward", list(reversed(graph.nodes)))):
        for node in order:
            for rule in rules:
                if rule.during == during and node in matched[id(rule)]:
                    if rule.when.onednn is not None:
                        rule = rule.model_copy(update={"batch_below": onednn_batches(node, False, jit)[1]})
                    out.append((f"{during}:{node.name}", node, rule))
    return out


def gemm_shape(node: Node, rule: Gemm, batch: int) -> tuple[int, int, int]:
    """(m, n, k) of a gemm rule for this layer at this batch size."""
    words = {"batch": batch, "inputs": node.fan_in, "outputs": node.units, "positions": node.positions}
    return words[rule.m], words[rule.n], words[rule.k]


def kept_buffers(pool: BlasBuffers, calls: list[tuple[str, Node, Gemm]], batch: int) -> list[int]:
    """The buffers the library holds after a step: each gemm that needs more than every buffer it has adds one.

    Warm-up steps run the same gemms, so a measured step starts with these and adds none.
    """
    kept: list[int] = []
    for _, node, rule in calls:
        if not rule.runs_at(batch):
            continue
        need = pool.buffer_bytes(rule.trans, *gemm_shape(node, rule, batch))
        if need and (not kept or need > max(kept)):
            kept.append(need)
    return kept


def _configuration(node: Node, graph: Graph | None = None, fused_with: tuple[str, ...] | None = None) -> tuple:
    """What a library that caches per shape tells layers apart by (binary or not is the same float op); with
    fused_with, also whether the op is fused with the layer of those kinds that alone reads its output."""
    fused = None
    if fused_with:
        reader = sole_reader(graph, node)
        fused = reader.kind if reader is not None and reader.kind in fused_with else None
    return (node.kind, tuple(node.in_shape), tuple(node.out_shape), tuple(node.weight_shape), node.window,
            node.strides, node.padding, node.groups, fused)


def _reformatted(v: Variable, fmt: str) -> Variable:
    batched = bool(v.shape) and v.shape[0] == "B"
    return sized(v.name, v.layer, v.role, fmt, v.shape[1:] if batched else v.shape, batched, v.alloc, v.free)


def _tensor_holders(graph: Graph, variables: list[Variable]) -> dict[int, int]:
    """Graph tensor id -> index of the variable holding it (the data batch, or a layer's output)."""
    by_name = {v.name: j for j, v in enumerate(variables)}
    out: dict[int, int] = {}
    for t in graph.tensors:
        base = graph.tensors[t.alias_of] if t.alias_of is not None else t
        name = "data" if base.producer is None else f"{base.producer}.output"
        if name in by_name:
            out[t.id] = by_name[name]
    return out
