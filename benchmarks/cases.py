"""The sweep: which (loss, mode, dtype, shape, feature) cases run, how their inputs are made, and how many
bytes each case must move at least (the traffic that the GB/s columns divide by)."""

from dataclasses import asdict, dataclass, replace

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}
LOSSES = ("ce", "bce")
MODES = ("forward", "backward", "full")
FEATURES = {
    "ce": ("none", "weight", "smoothing", "ignore", "soft", "softcap_zloss"),
    "bce": ("none", "weight", "soft", "pos_weight"),
}
# The language-model options of the softcap_zloss feature (Gemma 2's final-logit cap, PaLM's z-loss weight).
LM_OPTIONS = {"softcap": 30.0, "lse_square_scale": 1e-4}
# Value of a feature given without one: label-smoothing epsilon, share of ignored targets.
FEATURE_DEFAULTS = {"smoothing": 0.1, "ignore": 0.3}
IGNORE_INDEX = -100
# Share of positive labels in the multilabel BCE targets.
BCE_POSITIVE_SHARE = 0.1


@dataclass(frozen=True)
class Case:
    loss: str
    mode: str
    dtype: str
    N: int
    C: int
    feature: str = "none"
    value: float = 0.0
    repeats: int = 5
    series: str = ""  # cases sharing a series (and loss/mode/dtype/options) make one line in the plots

    @property
    def options(self):
        return f"{self.feature}={self.value:g}" if self.feature in FEATURE_DEFAULTS else self.feature

    @property
    def input_key(self):
        """Cases with the same key share inputs, the correctness check and the compiled function."""
        return (self.loss, self.dtype, self.N, self.C, self.feature, self.value)

    @property
    def shape(self):
        return f"{self.N}x{self.C}"

    @property
    def label(self):
        opt = "" if self.feature == "none" else f" {self.options}"
        return f"{self.loss} {self.dtype} {self.mode} {self.shape}{opt}"

    def to_dict(self):
        return asdict(self)


def parse_feature(text):
    name, _, value = text.partition("=")
    name = name.strip()
    if name not in FEATURES["ce"] + FEATURES["bce"]:
        raise ValueError(
            f"unknown feature {name!r}; choose from none, weight, smoothing[=eps], ignore[=share], "
            "soft, softcap_zloss, pos_weight"
        )
    if name in FEATURE_DEFAULTS:
        return name, float(value) if value else FEATURE_DEFAULTS[name]
    if value:
        raise ValueError(f"feature {name!r} takes no value")
    return name, 0.0


def parse_shapes(text):
    shapes = []
    for item in text.split(","):
        n, _, c = item.strip().lower().partition("x")
        shapes.append((int(n), int(c)))
    return shapes


def _csv(text):
    return [t.strip() for t in text.split(",") if t.strip()]


def default_cases(device, quick):
    """The embedded sweeps. The CPU one is sized to run in a few minutes on a 2-core machine."""
    if quick:
        return [
            Case("ce", "full", "fp32", 512, 1000, repeats=3, series="N·C = 512K"),
            Case("ce", "full", "fp32", 64, 8000, repeats=3, series="N·C = 512K"),
            Case("ce", "forward", "fp32", 64, 8000, repeats=3),
            Case("ce", "backward", "bf16", 256, 1000, feature="ignore", value=0.3, repeats=3),
            Case("bce", "full", "fp32", 128, 512, repeats=3),
        ]
    if device == "cuda":
        cases = []
        for dtype in ("bf16", "fp32"):
            for n, c in ((8192, 128256), (16384, 32000)):
                cases.append(Case("ce", "full", dtype, n, c, repeats=20))
        cases += [Case("ce", mode, "bf16", 8192, 128256, repeats=20) for mode in ("forward", "backward")]
        series = "N·C ≈ 256M"
        for c in (1000, 8000, 32000, 128000, 256000):
            cases.append(Case("ce", "full", "bf16", (256 << 20) // c, c, repeats=10, series=series))
        for feature in ("weight", "smoothing", "ignore", "soft", "softcap_zloss"):
            cases.append(
                Case(
                    "ce",
                    "full",
                    "bf16",
                    16384,
                    32000,
                    feature=feature,
                    value=FEATURE_DEFAULTS.get(feature, 0.0),
                    repeats=10,
                )
            )
        cases += [Case("bce", "full", dtype, 16384, 8192, repeats=20) for dtype in ("bf16", "fp32")]
        return cases
    # Each input group costs a torch.compile in the THP worker (seconds), so the C sweep has three points, not
    # more, and bf16 shares the large fp32 shape (where the byte floor matters most) instead of adding one.
    series = "N·C ≈ 16M"
    return [
        Case("ce", "full", "fp32", 4096, 32000, repeats=5),
        Case("ce", "full", "bf16", 4096, 32000, repeats=5),
        # The language-model options against the plain loss of the same shape, in both dtypes. Few rounds:
        # torch's composite of them (the eager-thp baseline) takes seconds per call here.
        Case("ce", "full", "fp32", 4096, 32000, feature="softcap_zloss", repeats=3),
        Case("ce", "full", "bf16", 4096, 32000, feature="softcap_zloss", repeats=3),
        Case("ce", "full", "fp32", 16384, 1000, repeats=7, series=series),
        Case("ce", "full", "fp32", 2048, 8000, repeats=7, series=series),
        Case("ce", "full", "fp32", 128, 128000, repeats=7, series=series),
        Case("ce", "forward", "fp32", 2048, 8000, repeats=7),
        Case("ce", "backward", "fp32", 2048, 8000, repeats=7),
        Case("ce", "full", "fp32", 2048, 8000, feature="ignore", value=0.3, repeats=7),
        Case("bce", "full", "fp32", 4096, 4096, repeats=7),
        Case("bce", "full", "bf16", 4096, 4096, repeats=7),
    ]


def build_cases(device, quick, losses=None, dtypes=None, shapes=None, features=None, modes=None, repeats=None):
    """The embedded sweep, or, when any of losses/dtypes/shapes/features/modes is given, their cross product
    (unset ones default to ce / fp32 / full / none and the embedded sweep's shapes). Returns (cases, notes)."""
    notes = []
    if not any((losses, dtypes, shapes, features, modes)):
        cases = default_cases(device, quick)
    else:
        losses = _csv(losses) if losses else ["ce"]
        for loss in losses:
            if loss not in LOSSES:
                raise ValueError(f"unknown loss {loss!r}; choose from {', '.join(LOSSES)}")
        dtypes = _csv(dtypes) if dtypes else ["fp32"]
        for dtype in dtypes:
            if dtype not in DTYPES:
                raise ValueError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
        modes = _csv(modes) if modes else ["full"]
        for mode in modes:
            if mode not in MODES:
                raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
        feats = [parse_feature(f) for f in _csv(features)] if features else [("none", 0.0)]
        if shapes:
            shape_list = parse_shapes(shapes)
        else:
            shape_list = list(dict.fromkeys((c.N, c.C) for c in default_cases(device, quick) if c.loss == "ce"))
        series = "--shapes" if len({c for _, c in shape_list}) > 1 else ""
        cases = []
        for loss in losses:
            for name, value in feats:
                if name not in FEATURES[loss]:
                    notes.append(f"feature {name} does not apply to {loss}: skipped")
                    continue
                for dtype in dtypes:
                    for n, c in shape_list:
                        for mode in modes:
                            cases.append(
                                Case(loss, mode, dtype, n, c, name, value, repeats=3 if quick else 5, series=series)
                            )
    if repeats:
        cases = [replace(c, repeats=repeats) for c in cases]
    # Same-input cases next to each other: inputs and compiled functions are built once per group.
    order = list(dict.fromkeys(c.input_key for c in cases))
    cases.sort(key=lambda c: order.index(c.input_key))
    return cases, notes


@dataclass
class Inputs:
    x: torch.Tensor  # leaf logits, requires_grad
    target: torch.Tensor
    kwargs: dict  # keyword arguments shared by every provider's loss call


def make_inputs(case, device, seed=0):
    gen = torch.Generator(device=device).manual_seed(seed)
    dtype = DTYPES[case.dtype]
    n, c = case.N, case.C
    x = torch.randn(n, c, device=device, dtype=dtype, generator=gen).requires_grad_()
    kwargs = {}
    if case.loss == "ce":
        if case.feature == "soft":
            target = torch.softmax(torch.randn(n, c, device=device, generator=gen), dim=1).to(dtype)
        else:
            target = torch.randint(0, c, (n,), device=device, generator=gen)
        if case.feature == "ignore":  # exactly ignored_rows(case) rows, so that the byte floor is exact
            target[torch.randperm(n, device=device, generator=gen)[: ignored_rows(case)]] = IGNORE_INDEX
        if case.feature == "weight":
            kwargs["weight"] = (torch.rand(c, device=device, generator=gen) + 0.5).to(dtype)
        if case.feature == "smoothing":
            kwargs["label_smoothing"] = case.value
        if case.feature == "softcap_zloss":
            kwargs.update(LM_OPTIONS)
    else:
        if case.feature == "soft":
            target = torch.rand(n, c, device=device, generator=gen).to(dtype)
        else:
            target = (torch.rand(n, c, device=device, generator=gen) < BCE_POSITIVE_SHARE).to(dtype)
        if case.feature == "weight":
            kwargs["weight"] = (torch.rand(c, device=device, generator=gen) + 0.5).to(dtype)
        if case.feature == "pos_weight":
            kwargs["pos_weight"] = (torch.rand(c, device=device, generator=gen) + 0.5).to(dtype)
    return Inputs(x, target, kwargs)


BYTES_MODEL = (
    "forward reads every N×C input once (the logits, and the target when it is N×C: "
    "soft CE, BCE); backward reads them once more and writes the N×C gradient once; full is both "
    "(N×C inputs read twice, gradient written once); the logits of ignored rows are never read (their "
    "gradient rows are zeros, still written); per-row and per-class vectors not counted"
)


def ignored_rows(case):
    return round(case.N * case.value) if case.feature == "ignore" else 0


def min_bytes(case):
    """The fewest bytes a forward / backward / forward+backward call must move through memory.

    Autograd calls backward separately, with grad_output known only then, so backward must read the logits
    (and an N×C target) again to form the gradient: a forward that wrote the gradient ahead would move more,
    since backward would then read and rewrite it to scale it, and a forward without backward would pay for
    it too."""
    elem = torch.empty((), dtype=DTYPES[case.dtype]).element_size()
    nc = case.N * case.C
    full_target = case.loss == "bce" or case.feature == "soft"
    read = (case.N - ignored_rows(case)) * case.C * elem * (2 if full_target else 1)
    write = nc * elem
    return {"forward": read, "backward": read + write, "full": 2 * read + write}[case.mode]


def floor_seconds(case, copy_bandwidth):
    """The byte floor's time at the measured copy bandwidth (bytes/s, read + write bytes counted)."""
    return min_bytes(case) / copy_bandwidth
