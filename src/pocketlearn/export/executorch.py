"""Export a method's training step — forward, loss and backward in one graph — as an ExecuTorch program.

``torch.export`` captures model + loss; ``_export_forward_backward`` adds the backward pass, with a gradient
output for every parameter that requires one (a method's frozen weights get none and stay constants of the
program); ``to_edge(...).to_executorch()`` lowers it. A second method, ``frozen_state``, returns the tensors
that do not train, so the device can write a complete checkpoint with nothing but the ``.pte``; it shares the
forward method's constants (ExecuTorch stores equal constants once) and plans no memory of its own.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pocketlearn.errors import ConfigError, UnsupportedModelError, raise_problems
from pocketlearn.export.program import FORWARD_METHOD, STATE_METHOD, ProgramInfo, write_program
from pocketlearn.methods import TrainingMethod, make_method, methods_where
from pocketlearn.methods.base import GradientConfig, cross_entropy, logits_of
from pocketlearn.models import ModelSpec, get_model_spec


def exportable_methods() -> list[str]:
    """The registered methods whose step exports as a device program (their class's ``exportable``)."""
    return methods_where(lambda m: m.exportable)


class TrainingStep(nn.Module):
    """(inputs, targets) → mean cross-entropy: the function whose graph, with its backward, is exported."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs: Tensor, targets: Tensor) -> Tensor:
        return cross_entropy(logits_of(self.model(inputs)), targets)


class FrozenState(nn.Module):
    """() → the state-dict tensors of ``model`` that do not train, in ``state_dict()`` order.

    The trainable ones stay out: the runtime keeps those in a mutable segment that a second method cannot
    share, so returning them too would store every trained weight twice in the ``.pte``.
    """

    def __init__(self, model: nn.Module, trainable: set[str]):
        super().__init__()
        self.model = model
        self.trainable = trainable

    def forward(self) -> tuple[Tensor, ...]:
        return tuple(v for k, v in self.model.state_dict().items() if k not in self.trainable)


def export_training(model: str | ModelSpec, output: str | Path, *, method: str = "backprop",
                    options: dict[str, Any] | None = None, batch_size: int = 32, seq_len: int | None = None,
                    init: str | Path | None = None) -> ProgramInfo:
    """Export ``method``'s training step on ``model`` to ``output`` (a ``.pte``) and its JSON sidecar.

    ``model`` is a registered name (or a :class:`ModelSpec`); ``options`` are the method's config fields,
    whose ``lr``/``momentum``/``weight_decay`` become the device's SGD defaults; ``init`` is a checkpoint
    for the plain model or for the model wrapped by ``method`` (e.g. a previous ``device-train`` output).
    """
    spec = model if isinstance(model, ModelSpec) else get_model_spec(model)
    options = dict(options or {})
    if batch_size < 1:
        raise ConfigError(f"batch size should be >= 1, got {batch_size}")
    trainer = prepare_method(spec, method, options, init)
    config = trainer.config
    assert isinstance(config, GradientConfig)  # checked by prepare_method
    net = plain_layers(trainer.model)
    example = spec.example_batch(batch_size, seq_len)
    state = net.state_dict(keep_vars=True)
    trainable = [k for k, v in state.items() if isinstance(v, nn.Parameter) and v.requires_grad]
    if len({id(state[k]) for k in trainable}) < len(trainable):
        raise UnsupportedModelError("this model ties trainable weights (one tensor under two names), which the "
                                    "exported program reports under one name only; untie them, or freeze them "
                                    "(e.g. --method lora)")
    program, planned = lower(net, example, set(trainable))
    info = ProgramInfo(
        model=spec.name, method=method, options=options, batch_size=batch_size,
        input_shape=list(example[0].shape[1:]), input_dtype=str(example[0].dtype).removeprefix("torch."),
        target_shape=list(example[1].shape[1:]), num_classes=spec.num_classes, lr=config.lr,
        momentum=config.momentum, weight_decay=config.weight_decay,
        trainable=trainable, state_keys=list(state),
        extra={"summary": trainer.summary(), "planned_bytes": planned, "seq_len": seq_len or spec.seq_len or None,
               "init": str(init) if init else None,
               "torch": torch.__version__, "executorch": _executorch_version()})
    return write_program(output, program, info)


def prepare_method(spec: ModelSpec, method: str, options: dict[str, Any], init: str | Path | None
                   ) -> TrainingMethod:
    """Build ``spec``'s model wrapped by ``method``, from ``init`` if given; reject what the runtime cannot run."""
    from pocketlearn.checkpoint import load_checkpoint, load_weights
    from pocketlearn.methods import get_method_class

    if not get_method_class(method).exportable:  # an unknown name fails first, with the list of methods
        raise ConfigError(f"method {method!r} cannot be exported for device training; ExecuTorch runs autograd "
                          f"steps, so choose one of {exportable_methods()}")
    net = spec.build()
    if init is not None and Path(init).exists() and set(load_checkpoint(init).get("model", {})) == set(
            net.state_dict()):
        load_weights(net, init)  # the plain model's weights (pretrained, or from `pocketlearn train --method backprop`)
        init = None
    trainer = make_method(method, net, **options)
    if init is not None:
        load_weights(trainer.model, init)  # the wrapped model's (LoRA adapters, sliced rows: a device-train output)
    assert isinstance(trainer.config, GradientConfig)  # every exportable method's
    check_exportable(trainer.config)
    return trainer


def check_exportable(config: GradientConfig) -> None:
    """Every setting the exported SGD step cannot reproduce, reported at once."""
    problems = []
    if config.optimizer != "sgd":
        problems.append(f"optimizer={config.optimizer!r}: the ExecuTorch runtime has SGD only; use optimizer=sgd")
    if getattr(config, "checkpointing", False):
        problems.append("checkpointing=true: the exported graph plans its own memory; drop the option")
    if getattr(config, "embedding_rows", "all") != "all":
        problems.append("embedding_rows='seen' masks gradients per batch; use embedding_rows=all")
    dropout = getattr(config, "dropout", 0.0)
    if dropout:
        problems.append(f"dropout={dropout}: random per step, so device and eager training would differ; "
                        "use dropout=0")
    raise_problems("cannot export this training step", problems)


def plain_layers(model: nn.Module) -> nn.Module:
    """Undo :func:`pocketlearn.methods.lean.make_lean`: its custom autograd functions do not export.

    The exported backward is ATen's, which takes a conv's input even for a frozen weight (and a ReLU's full
    output), so on the device frozen layers keep what eager PyTorch would keep without the lean swap.
    """
    from pocketlearn.methods.lean import make_plain

    return make_plain(model)


def lower(model: nn.Module, example: tuple[Tensor, Tensor], trainable: set[str]) -> tuple[bytes, int]:
    """The ``.pte`` bytes (joint training step + frozen-state method) and the step's planned memory in bytes.

    Planned memory is the arena the runtime allocates for the step: trainable weights, gradients, activations
    and temporaries; the program's constants (frozen weights) come on top.
    """
    from torch.export import export
    from torch.export.experimental import _export_forward_backward
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model.train()
    example = (example[0].contiguous(), example[1].contiguous())
    try:
        # attention as plain matmuls + softmax: the fused CPU kernel's backward is not in the Core ATen opset
        with warnings.catch_warnings(), sdpa_kernel(SDPBackend.MATH):
            warnings.simplefilter("ignore")  # import, tracing and memory-planning notes, none the user's to act on
            from executorch.exir import to_edge

            joint = _export_forward_backward(export(TrainingStep(model), example, strict=False))
            joint = _fix_max_pool_backward(joint)
            methods = {FORWARD_METHOD: joint}
            if set(model.state_dict()) - trainable:  # a program with no outputs does not lower
                methods[STATE_METHOD] = _constant_outputs(export(FrozenState(model, trainable), (), strict=False))
            program = to_edge(methods).to_executorch()
    except Exception as err:  # torch.export and ExecuTorch raise many kinds; all mean the same to the user
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise UnsupportedModelError(f"this model's training step does not export to ExecuTorch "
                                    f"({type(err).__name__}: {first}); try another method or model") from err
    check_kernels(program.executorch_program)
    plan = next(p for p in program.executorch_program.execution_plan if p.name == FORWARD_METHOD)
    return bytes(program.buffer), sum(plan.non_const_buffer_sizes)


def _fix_max_pool_backward(joint: Any) -> Any:
    """Swap ``max_pool2d_with_indices_backward`` for PyTorch's scatter-add decomposition.

    ExecuTorch 1.5's portable kernel adds into ``grad_input`` without zeroing it first, so every conv before
    a max-pool gets garbage gradients (pytorch/executorch#21686, fixed upstream after 1.5.1).
    """
    from torch._decomp import decomposition_table

    op = torch.ops.aten.max_pool2d_with_indices_backward.default
    if not any(n.target is op for n in joint.graph.nodes):
        return joint
    return joint.run_decompositions({op: decomposition_table[op]})


def _constant_outputs(program: Any) -> Any:
    """Return the state tensors themselves, not copies: no planned memory, nothing to run."""
    graph = program.graph
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target in (torch.ops.aten.detach.default, torch.ops.aten.alias.default):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    program.graph_module.recompile()
    return program


def check_kernels(program: Any) -> None:
    """Fail at export, not on the device, when the runtime lacks a kernel the program calls."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "experimental API"
        from executorch.extension.pybindings.portable_lib import _get_operator_names

    have = set(_get_operator_names())
    used = {f"{op.name}.{op.overload}" if op.overload else op.name
            for plan in program.execution_plan for op in plan.operators}
    missing = sorted(used - have)
    if missing:
        raise UnsupportedModelError(f"the ExecuTorch runtime has no kernel for {missing}, which this model's "
                                    "training step needs; choose another model or method (e.g. bias, which "
                                    "needs fewer backward kernels)")


def _executorch_version() -> str:
    from importlib.metadata import version

    return version("executorch")
