"""Head initialisations (LIFT §4.1, LIFT+ §5.2): semantic (text features), class mean, random.

All return a (C, F) fp32 CPU tensor of unit-norm rows that `head.set_weight` writes into W.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from lift_dist.errors import ConfigError, DataError, choices
from lift_dist.heads import unit_uniform_rows

PROMPTS = ("default", "classname", "ensemble", "descriptions")
INIT_METHODS = ("semantic", "class_mean", "linear_probe", "random")
# The names the papers and official codes use for the same things.
INIT_ALIASES = {"text_feat": "semantic", "linear_probing": "linear_probe", "none": "random"}
PROMPT_ALIASES = {"descriptor": "descriptions"}
DEFAULT_TEMPLATE = "a photo of a {}."


def _display_name(name: str) -> str:
    # Official prompt builder: only "_" becomes a space (no article fixing, hyphens kept).
    return name.replace("_", " ")


def _name_list(names, limit: int = 10) -> str:
    names = [str(n) for n in names]
    more = f" … and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _no_autocast(device: torch.device):
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except RuntimeError:  # device types without autocast support
        return contextlib.nullcontext()


@torch.no_grad()
def encode_texts(clip_model, tokenizer, texts: Sequence[str], chunk: int = 1000) -> torch.Tensor:
    """Unnormalised joint-space text features (after text_projection), fp32, on CPU, in chunks."""
    if chunk < 1:
        raise ConfigError(f"text encoding chunk size must be >= 1, got {chunk}")
    device = next(clip_model.parameters()).device
    out = []
    with _no_autocast(device):  # the official init runs without autocast
        for start in range(0, len(texts), chunk):
            tokens = tokenizer(list(texts[start : start + chunk])).to(device)
            out.append(clip_model.encode_text(tokens, normalize=False).float().cpu())
    return torch.cat(out)


def _visual_proj(clip_model) -> torch.Tensor:
    proj = getattr(getattr(clip_model, "visual", None), "proj", None)
    if not isinstance(proj, torch.Tensor):
        raise ConfigError(
            "semantic head init needs a CLIP ViT with a visual projection (`model.visual.proj`); "
            "this backbone has none"
        )
    return proj.detach().float().cpu()


def description_groups(class_names: Sequence[str], descriptions: dict) -> list[list[str]]:
    """The sentences of each class (looked up by its '_' -> ' ' name, as LIFT does, else as it is); a
    DataError names the classes without a non-empty list. Checked before the run starts, used by the head init."""
    groups, missing = [], []
    for raw in (str(n) for n in class_names):
        sentences = descriptions.get(_display_name(raw), descriptions.get(raw))
        if not sentences or not isinstance(sentences, (list, tuple)):
            missing.append(raw)
        else:
            groups.append([str(s) for s in sentences])
    if missing:
        raise DataError(f"descriptions lack a non-empty list of sentences for {len(missing)} class(es): {_name_list(missing)}")
    return groups


def semantic_weights(
    clip_model,
    tokenizer,
    class_names: Sequence[str],
    *,
    prompt: str = "default",
    template: str = DEFAULT_TEMPLATE,
    descriptions: dict[str, list[str]] | None = None,
    chunk: int = 1000,
) -> torch.Tensor:
    """Text features per class mapped back to the pre-projection image space: normalize(t · projᵀ).

    default: `template` (LIFT / LIFT+ "a photo of a {}."); classname: "{}"; ensemble: the 80 OpenAI
    ImageNet templates (LIFT uses them for every dataset), each normalised then averaged without
    renormalising; descriptions: the sentences `descriptions[class]`, encoded as they are (LIFT's
    descriptor prompts do not add the class name), each normalised then averaged.
    """
    if prompt not in PROMPTS:
        raise ConfigError(f"unknown prompt '{prompt}'; valid prompts: {choices(PROMPTS)}")
    names = [str(n) for n in class_names]
    if not names:
        raise DataError("semantic head init needs at least one class name")
    shown = [_display_name(n) for n in names]
    C = len(names)

    def per_class_mean(groups: list[list[str]]) -> torch.Tensor:
        # Several sentences per class: normalise each, then average (no renormalisation).
        flat = [s for g in groups for s in g]
        feats = F.normalize(encode_texts(clip_model, tokenizer, flat, chunk), dim=-1)
        owner = torch.repeat_interleave(torch.arange(C), torch.tensor([len(g) for g in groups]))
        sums = torch.zeros(C, feats.shape[1]).index_add_(0, owner, feats)
        return sums / torch.tensor([len(g) for g in groups], dtype=torch.float32)[:, None]

    if prompt in ("default", "classname"):
        tpl = template if prompt == "default" else "{}"
        if "{}" not in tpl:
            raise ConfigError(f"prompt template must contain '{{}}' for the class name, got {tpl!r}")
        t = F.normalize(encode_texts(clip_model, tokenizer, [tpl.format(n) for n in shown], chunk), dim=-1)
    elif prompt == "ensemble":
        import open_clip  # noqa: PLC0415  (~3 s to import; the config, which imports this module, is checked first)

        templates = open_clip.OPENAI_IMAGENET_TEMPLATES
        t = None
        for tpl in templates:  # one template at a time: keeps memory at C features (iNat: 8,142 × 80 prompts)
            f = F.normalize(encode_texts(clip_model, tokenizer, [tpl(n) for n in shown], chunk), dim=-1)
            t = f if t is None else t + f
        t = t / len(templates)
    else:
        if descriptions is None:
            raise ConfigError("prompt 'descriptions' needs a dict of sentences per class name")
        t = per_class_mean(description_groups(names, descriptions))

    proj = _visual_proj(clip_model)  # (D_vision, D_embed)
    if t.shape[1] != proj.shape[1]:
        raise ConfigError(f"text feature dim {t.shape[1]} does not match the visual projection {tuple(proj.shape)}")
    return F.normalize(t @ proj.T, dim=-1)


def class_mean_weights(features: torch.Tensor, labels, num_classes: int, class_names: Sequence[str] | None = None) -> torch.Tensor:
    """Per-class mean of the UNnormalised features, then each row L2-normalised."""
    features = torch.as_tensor(features)
    labels = torch.as_tensor(labels).long().flatten()
    if features.ndim != 2 or features.shape[0] != labels.numel():
        raise DataError(f"class-mean init needs features (N, D) and N labels, got {tuple(features.shape)} and {labels.numel()}")
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"labels must lie in 0..{num_classes - 1}, found {int(labels.min())}..{int(labels.max())}")
    sums = torch.zeros(num_classes, features.shape[1], dtype=torch.float64).index_add_(0, labels, features.double())
    counts = torch.bincount(labels, minlength=num_classes)
    empty = torch.nonzero(counts == 0).flatten().tolist()
    if empty:
        named = [class_names[i] if class_names is not None else i for i in empty]
        raise DataError(f"class-mean init: {len(empty)} class(es) have no sample: {_name_list(named)}")
    return F.normalize((sums / counts[:, None]).float(), dim=-1)


def linear_probe_weights(features: torch.Tensor, labels, num_classes: int,
                         class_names: Sequence[str] | None = None) -> torch.Tensor:
    """LIFT / LIFT+ linear probing: scikit-learn's LogisticRegression(lbfgs, max_iter=100, L2, C=1,
    class_weight="balanced") on the raw features; the rows of coef_ L2-normalised (intercept dropped).
    max_iter=100 usually stops before convergence, as in the official code."""
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415  (optional: lift-dist[linear-probe])

    class_mean_weights(features, labels, num_classes, class_names)  # the same checks: every class present
    clf = LogisticRegression(solver="lbfgs", max_iter=100, class_weight="balanced")  # L2, C=1: the defaults
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: expected at max_iter=100
        clf.fit(torch.as_tensor(features).double().numpy(), torch.as_tensor(labels).long().numpy())
    coef = torch.as_tensor(clf.coef_, dtype=torch.float32)
    if num_classes == 2:  # binary: one row for class 1; class 0 is its negation
        coef = torch.cat([-coef, coef])
    return F.normalize(coef, dim=-1)


def random_weights(num_classes: int, dim: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Rows U(-1, 1) renormalised to unit norm (the heads' default init)."""
    return unit_uniform_rows(num_classes, dim, generator)


def init_head(
    head,
    method: str,
    *,
    clip_model=None,
    tokenizer=None,
    class_names: Sequence[str] | None = None,
    features: torch.Tensor | None = None,
    labels=None,
    generator: torch.Generator | None = None,
    **semantic_options,
) -> torch.Tensor:
    """Compute the init `method` and write it into `head` (W only). Returns the weight written."""
    C, D = head.weight.shape
    if method == "semantic":
        if clip_model is None or tokenizer is None or class_names is None:
            raise ConfigError("semantic head init needs clip_model, tokenizer and class_names")
        if len(class_names) != C:
            raise DataError(f"{len(class_names)} class names for a head with {C} classes")
        w = semantic_weights(clip_model, tokenizer, class_names, **semantic_options)
    elif method in ("class_mean", "linear_probe"):
        if features is None or labels is None:
            raise ConfigError(f"{method} head init needs features and labels")
        w = (class_mean_weights if method == "class_mean" else linear_probe_weights)(features, labels, C, class_names)
    elif method == "random":
        w = random_weights(C, D, generator)
    else:
        raise ConfigError(f"unknown head init '{method}'; valid inits: {choices(INIT_METHODS)}")
    head.set_weight(w)
    return w
