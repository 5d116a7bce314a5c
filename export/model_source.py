"""Build a user's network from a source name: `torchvision:<name>`, `timm:<name>`,
`hf:<model_type>` (a Hugging Face language model, export/hf_models.py) or
`package.module:function` (the user's own factory), adapted to the data's classes and input
channels, optionally with weights from a checkpoint. Used both to start a pruning search and to
rebuild an exported pruned model, so the same source always gives the same module structure.

A source is a name, never a path: the user's factory is imported from the Python path.
Rebuilding a record someone else made imports whatever module its source names, so records are
built from torchvision, timm and hf sources only, unless the caller trusts the source
(`check_trusted`), as Hugging Face's `trust_remote_code` is off by default.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

_MODULE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_USER_SOURCE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
LIBRARIES = ("torchvision", "timm", "hf")


class ModelSourceError(ValueError):
    """A model source, checkpoint or adaptation that cannot be used, with what is allowed."""


class UntrustedSourceError(ModelSourceError):
    """A record names a user factory and the caller did not opt in to running it."""


def check_trusted(source: str, trust_source: bool | str | Sequence[str], where: str) -> None:
    """Fail, before anything is imported, unless `source` is a torchvision or timm name or the
    caller trusts it: `trust_source=True` trusts every source, a module prefix (or several)
    trusts the sources whose module is that package or inside it."""
    prefixes = trusted_prefixes(trust_source)
    check_source(source)
    module = source.split(":", 1)[0]
    if module in LIBRARIES or prefixes is None:
        return
    if any(module == p or module.startswith(p + ".") for p in prefixes):
        return
    top = module.split(".")[0]
    raise UntrustedSourceError(
        f"{where} names the network source {source!r}: building it imports {module} (running "
        f"its top-level code) and calls its function, so nothing was imported. If you trust "
        f"whoever made it, pass trust_source=True or trust_source=[{top!r}] (command line: "
        f"--trust-source or --trust-package {top}); torchvision: and timm: sources need no opt-in")


def trusted_prefixes(trust_source) -> tuple[str, ...] | None:
    """The module prefixes `trust_source` trusts (None: every source), or a refusal."""
    if trust_source is True:
        return None
    if trust_source is False or trust_source is None:
        return ()
    prefixes = (trust_source,) if isinstance(trust_source, str) else trust_source
    if (not isinstance(prefixes, (list, tuple))
            or any(not isinstance(p, str) or not _MODULE.fullmatch(p) for p in prefixes)):
        raise ModelSourceError(f"trust_source must be True, False or module prefixes such as "
                               f"'mypkg' or ['mypkg', 'other.models'], got {trust_source!r}")
    return tuple(prefixes)


def check_source(source: str) -> None:
    """Fail with what is allowed unless `source` has one of the three forms."""
    if not isinstance(source, str) or ":" not in source:
        raise ModelSourceError(f"model.source must be torchvision:<name>, timm:<name>, "
                               f"hf:<model_type> or package.module:function, got {source!r}")
    lib, name = source.split(":", 1)
    if lib == "hf":
        from maskednas.export.hf_models import check_model_type
        check_model_type(name)
    elif lib in LIBRARIES:
        if not re.fullmatch(r"[A-Za-z0-9_.]+", name):
            raise ModelSourceError(f"{source!r}: a {lib} model name has letters, digits, '_' "
                                   f"and '.' only")
    elif not _USER_SOURCE.fullmatch(source):
        raise ModelSourceError(f"model.source {source!r} is neither torchvision:<name>, "
                               f"timm:<name> nor package.module:function (a Python name "
                               f"importable from the path, never a file path)")


def _unknown(lib: str, name: str, known: list[str]) -> ModelSourceError:
    close = difflib.get_close_matches(name, known, n=5)
    return ModelSourceError(f"{lib} has no model {name!r}" +
                            (f"; close names: {', '.join(close)}" if close else ""))


def _factory_kwargs(fn, num_classes: int, in_channels: int) -> dict:
    """The class and input-channel arguments a user's factory takes, by name."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return {}
    kwargs = {}
    if "num_classes" in params:
        kwargs["num_classes"] = num_classes
    for key in ("in_chans", "in_channels"):
        if key in params:
            kwargs[key] = in_channels
            break
    return kwargs


# torchvision builders taking aux_logits: auxiliary heads return extra logits in training mode
_AUXILIARY_HEADS = {"googlenet", "inception_v3"}


def drop_auxiliary_heads(model: nn.Module) -> nn.Module:
    """GoogLeNet's and Inception v3's auxiliary classifiers removed, as their builders do when
    asked for no auxiliary logits."""
    if getattr(model, "aux_logits", False):
        model.aux_logits = False
        for head in ("aux1", "aux2", "AuxLogits"):
            if hasattr(model, head):
                setattr(model, head, None)
    return model


def build_source(source: str, num_classes: int, in_channels: int,
                 pretrained: bool = False, hf_config: dict | None = None) -> nn.Module:
    """The network of `source` for `num_classes` classes and `in_channels` input channels (a
    language model: `num_classes` tokens, its architecture's fields in `hf_config`)."""
    check_source(source)
    lib, name = source.split(":", 1)
    if hf_config and lib != "hf":
        raise ModelSourceError(f"model.hf_config configures hf: sources only; {source} takes none")
    if lib == "hf":
        from maskednas.export.hf_models import build_hf
        if pretrained:
            raise ModelSourceError(f"{source}: model.pretrained downloads nothing for hf: sources; "
                                   f"give trained weights as model.checkpoint")
        return build_hf(name, num_classes, hf_config)
    if lib == "timm":
        import timm
        if name not in timm.list_models():
            raise _unknown("timm", name, timm.list_models())
        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes,
                                 in_chans=in_channels)
    if lib == "torchvision":
        import torchvision
        if name not in torchvision.models.list_models():
            raise _unknown("torchvision", name, torchvision.models.list_models())
        if pretrained:  # the builders refuse aux_logits=False with weights: drop the heads after
            model = drop_auxiliary_heads(torchvision.models.get_model(name, weights="DEFAULT"))
            adapt_head(model, num_classes, source)
        else:
            aux = {"aux_logits": False} if name in _AUXILIARY_HEADS else {}
            model = torchvision.models.get_model(name, num_classes=num_classes, **aux)
        adapt_input(model, in_channels, source)
        return model
    module_name, fn_name = source.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ModelSourceError(f"cannot import {module_name!r} for model.source {source!r}: {e} "
                               f"(the package must be importable from the Python path)") from e
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise ModelSourceError(f"{module_name} has no callable {fn_name!r} (model.source {source!r})")
    kwargs = _factory_kwargs(fn, num_classes, in_channels)
    model = fn(**kwargs)
    if not isinstance(model, nn.Module):
        raise ModelSourceError(f"{source} returned {type(model).__name__}, not a torch.nn.Module")
    if "num_classes" not in kwargs:
        adapt_head(model, num_classes, source)
    if not {"in_chans", "in_channels"} & kwargs.keys():
        adapt_input(model, in_channels, source)
    return model


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put `new` where the submodule called `name` (dotted) is."""
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def adapt_head(model: nn.Module, num_classes: int, source: str) -> None:
    """Give the last `nn.Linear` `num_classes` outputs (a fresh layer) when it has another count."""
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ModelSourceError(f"{source}: no nn.Linear classifier to resize to {num_classes} "
                               f"classes; make the factory take num_classes")
    name, last = linears[-1]
    if last.out_features != num_classes:
        replace_module(model, name, nn.Linear(last.in_features, num_classes, bias=last.bias is not None))


def adapt_input(model: nn.Module, in_channels: int, source: str) -> None:
    """Give the first convolution `in_channels` inputs, its weights summed or repeated over the
    new channels as timm adapts pretrained stems (`timm.models.adapt_input_conv`)."""
    from timm.models import adapt_input_conv

    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ModelSourceError(f"{source} has no nn.Conv2d to take {in_channels} input channels")
    name, first = convs[0]
    if first.in_channels == in_channels:
        return
    if first.groups != 1:
        raise ModelSourceError(f"{source}: the first convolution {name} is grouped; cannot adapt "
                               f"it to {in_channels} input channels")
    conv = nn.Conv2d(in_channels, first.out_channels, first.kernel_size, first.stride,
                     first.padding, first.dilation, bias=first.bias is not None,
                     padding_mode=first.padding_mode)
    with torch.no_grad():
        conv.weight.copy_(adapt_input_conv(in_channels, first.weight))
        if first.bias is not None:
            conv.bias.copy_(first.bias)
    replace_module(model, name, conv)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors or a torch file (weights only, never unpickling code);
    a `state_dict`/`model` entry holding the tensors is unwrapped."""
    path = Path(path)
    if not path.is_file():
        raise ModelSourceError(f"model.checkpoint {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelSourceError(f"{path} is not a safetensors file nor a torch state dict that "
                               f"loads with weights_only=True: {e}") from e
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelSourceError(f"{path} does not hold a state dict of tensors")
    return state


def load_checkpoint_into(model: nn.Module, path: str | Path, classifiers: tuple[str, ...]) -> list[str]:
    """Load a checkpoint into `model`; the `classifiers` (the layers whose outputs are the class
    logits) may have another class count and are then left fresh. Returns the names of the tensors
    left out that way; any other mismatch is an error naming them."""
    state, own = read_state_dict(path), model.state_dict()
    missing, unexpected = own.keys() - state.keys(), state.keys() - own.keys()
    reshaped = sorted(k for k in own.keys() & state.keys() if own[k].shape != state[k].shape)
    head = {f"{c}.{p}" for c in classifiers for p in ("weight", "bias")}
    if missing or unexpected or any(k not in head for k in reshaped):
        raise ModelSourceError(
            f"{path} does not fit the model: missing {sorted(missing)[:5]}, unexpected "
            f"{sorted(unexpected)[:5]}, other shapes {[k for k in reshaped if k not in head][:5]}")
    model.load_state_dict({k: v for k, v in state.items() if k not in reshaped}, strict=False)
    return reshaped
