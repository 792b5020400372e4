"""Rewrites of an ONNX step graph (engine/model/onnx_format.py) that keep its contract: the same
inputs, outputs and states, float32 at the edges. Needs the ``onnx`` package, never torch.

- ``fp16_step_graph``: every Gemm in binary16 (the tensorrt-fp16 backend's graph);
- ``head_mask_graph``: the prediction head's input scaled by a per-row mask, a new graph input
  ``drop_mask`` (MC dropout for the zoo's models on the onnxruntime backend).
"""

from __future__ import annotations

import numpy as np

from engine.model.onnx_format import OUTPUT

INPUT_DROP_MASK = "drop_mask"


def fp16_step_graph(onnx_bytes: bytes) -> bytes:
    """The step graph with every Gemm in binary16: its weight and bias stored as float16, its
    activation cast to float16 before and its result cast back to float32 after. Inputs, outputs,
    states and every other op stay float32 (the recurrence, the norms and the exponentials need the
    range), which is the CUDA fp16 backend's split."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load_from_string(onnx_bytes)
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    nodes = []
    for node in g.node:
        if node.op_type != "Gemm" or any(name not in inits for name in node.input[1:]):
            nodes.append(node)
            continue
        a, *weights = node.input
        half_inputs = [f"{a}__fp16_{node.name}"]
        nodes.append(helper.make_node("Cast", [a], half_inputs[:1], name=f"{node.name}__cast_in", to=TensorProto.FLOAT16))
        for w in weights:
            half = numpy_helper.from_array(numpy_helper.to_array(inits[w]).astype(np.float16), f"{w}__fp16")
            g.initializer.append(half)
            half_inputs.append(half.name)
        y = node.output[0]
        gemm = helper.make_node("Gemm", half_inputs, [f"{y}__fp16"], name=f"{node.name}__fp16")
        gemm.attribute.extend(node.attribute)
        nodes.append(gemm)
        nodes.append(helper.make_node("Cast", [f"{y}__fp16"], [y], name=f"{node.name}__cast_out", to=TensorProto.FLOAT))
    del g.node[:]
    g.node.extend(nodes)
    used = {name for n in g.node for name in n.input}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    model.metadata_props.add(key="precision", value="fp16")
    onnx.checker.check_model(model)
    return model.SerializeToString()


def head_mask_graph(onnx_bytes: bytes) -> tuple[bytes, int]:
    """The graph with its head's input multiplied by a new input ``drop_mask`` float32[batch, width]
    before the head's Gemm (the node that writes ``out``); returns the graph and ``width``. An
    all-ones mask gives the original outputs bit for bit (x * 1 is x)."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load_from_string(onnx_bytes)
    g = model.graph
    head = next((n for n in g.node if OUTPUT in n.output), None)
    inits = {t.name: t for t in g.initializer}
    if head is None or head.op_type != "Gemm" or len(head.input) < 2 or head.input[1] not in inits:
        raise ValueError(f"MC dropout on this graph needs its output '{OUTPUT}' written by a Gemm with a weight "
                         f"initializer (the zoo's head); it is written by {head.op_type if head else 'nothing'}")
    trans_b = next((a.i for a in head.attribute if a.name == "transB"), 0)
    dims = list(inits[head.input[1]].dims)
    width = dims[1] if trans_b else dims[0]
    masked = f"{head.input[0]}__masked"
    mul = helper.make_node("Mul", [head.input[0], INPUT_DROP_MASK], [masked], name=f"{head.name}__drop_mask")
    head.input[0] = masked
    nodes = list(g.node)
    at = nodes.index(head)
    g.node.insert(at, mul)
    batch = g.input[0].type.tensor_type.shape.dim[0]
    mask_input = helper.make_tensor_value_info(INPUT_DROP_MASK, TensorProto.FLOAT, [None, width])
    mask_input.type.tensor_type.shape.dim[0].CopyFrom(batch)
    g.input.append(mask_input)
    onnx.checker.check_model(model)
    return model.SerializeToString(), int(width)
