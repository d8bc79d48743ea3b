"""Models. `RevMLP` is the reversible coupling-layer MLP of Buffelli et al. (2024), eq-block of the GN chapter.

Shapes follow PyTorch: a batch is a matrix with one row per example. In the paper's column convention
X is d x n; here it is n x d, and every product below is the transpose of the paper's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import vjp, vmap

ACTIVATIONS = ("relu", "identity")


def _act(name: str, z: torch.Tensor) -> torch.Tensor:
    return torch.relu(z) if name == "relu" else z


@dataclass
class HalfLayerCache:
    """What one half-layer keeps from the forward pass for the GN step.

    features: A = sigma(Z), n x h (n x (h+1) with a trailing column of ones when the block has biases).
    activation: "relu" or "identity". For ReLU the slope sigma'(Z) is (A > 0) (sigma'(0) = 0, as autograd
    has it), so it need not be stored.
    """

    features: torch.Tensor
    activation: str
    hidden: int


class RevBlock(nn.Module):
    """One coupling block (eq-block):

        X1' = X1  + sigma(X2  V2^T) W1^T [+ b1]
        X2' = X2  + sigma(X1' V1^T) W2^T [+ b2]

    X1, X2: n x d/2 halves. Trained: W1, W2 (d/2 x h) and the optional biases (d/2). Fixed: V1, V2 (h x d/2),
    entries N(0, 1/h): the random inverted bottleneck.
    """

    def __init__(self, half: int, hidden: int, *, bias: bool, init_std: float, activations: tuple[str, str],
                 generator: torch.Generator, dtype: torch.dtype, bottleneck: bool = True):
        super().__init__()
        self.half, self.hidden, self.activations = half, hidden, activations
        draw = lambda *shape: torch.randn(*shape, generator=generator, dtype=torch.float64).to(dtype)
        if bottleneck:
            self.register_buffer("V2", draw(hidden, half) / math.sqrt(hidden))
            self.register_buffer("V1", draw(hidden, half) / math.sqrt(hidden))
        else:  # no inverted bottleneck: sigma acts on the half-stream itself (h = d/2, V = I)
            self.register_buffer("V2", torch.eye(half, dtype=dtype))
            self.register_buffer("V1", torch.eye(half, dtype=dtype))
        self.W1 = nn.Parameter(draw(half, hidden) * init_std)
        self.W2 = nn.Parameter(draw(half, hidden) * init_std)
        self.b1 = nn.Parameter(torch.zeros(half, dtype=dtype)) if bias else None
        self.b2 = nn.Parameter(torch.zeros(half, dtype=dtype)) if bias else None

    def _half_layer(self, which: int, x_in: torch.Tensor, keep: bool):
        V, W, b = (self.V2, self.W1, self.b1) if which == 1 else (self.V1, self.W2, self.b2)
        act = self.activations[which - 1]
        z = x_in @ V.T
        a = _act(act, z)
        out = a @ W.T if b is None else torch.addmm(b, a, W.T)
        cache = None
        if keep:
            feats = a if b is None else torch.cat([a, torch.ones_like(a[:, :1])], dim=1)
            cache = HalfLayerCache(feats.detach(), act, self.hidden)
        return out, cache

    def forward(self, x: torch.Tensor, keep: bool = False, shifts: tuple[torch.Tensor, torch.Tensor] | None = None):
        """shifts (s1, s2), n x d/2 each: added to the two half-layers' outputs, so that the output's derivative
        in them is its derivative in those outputs (`RevMLP.ntk_factors`); None: no shift."""
        x1, x2 = x.split(self.half, dim=1)
        d1, c1 = self._half_layer(1, x2, keep)
        y1 = x1 + d1 if shifts is None else x1 + d1 + shifts[0]
        d2, c2 = self._half_layer(2, y1, keep)
        y2 = x2 + d2 if shifts is None else x2 + d2 + shifts[1]
        y = torch.cat([y1, y2], dim=1)
        return (y, (c1, c2)) if keep else y

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """The exact inverse: undo the second half-layer, then the first."""
        y1, y2 = y.split(self.half, dim=1)
        x2 = y2 - self._half_layer(2, y1, False)[0]
        x1 = y1 - self._half_layer(1, x2, False)[0]
        return torch.cat([x1, x2], dim=1)


class RevMLP(nn.Module):
    """Reversible MLP: input embedding, L coupling blocks, a fixed readout to class logits.

    Args:
        in_features: input dimension D (784 for MNIST, 3072 for CIFAR-10).
        num_classes: C.
        depth: number of coupling blocks L.
        hidden: bottleneck width h of every half-layer.
        width: the stream width d (even). Default: D rounded up to even. If d >= D the input is zero-padded to
            d (the padding coordinates start at 0 and are then written by the blocks); if d < D it is projected by
            a fixed random matrix with orthonormal rows (D x d, stored as `embedding`).
        bias: add trained biases b1, b2 to every half-layer.
        init_std: standard deviation of the trained W entries at init (the paper: 1e-3).
        first_activation: activation of the first half-layer of the first block, "relu" (the paper's text)
            or "identity" (the public code). Every other half-layer uses ReLU.
        seed: seeds all random draws (W, V, readout, projection): the same seed gives the same network.
        bottleneck: False removes the inverted bottleneck: V = I and h = d/2 (`hidden` is then ignored), the
            paper's ablation. Exactness then needs n <= d/2.

    Readout: logits = x_L R with R a fixed random d x C matrix with orthonormal columns (R^T R = I), drawn
    from the QR factorisation of a Gaussian matrix. It is not trained. Because R^T R = I, a desired change e of
    the logits is met by the change e R^T of x_L, the smallest one that does so.
    """

    def __init__(self, in_features: int, num_classes: int, *, depth: int = 2, hidden: int = 1024,
                 width: int | None = None, bias: bool = False, init_std: float = 1e-3,
                 first_activation: str = "relu", seed: int = 0, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu", bottleneck: bool = True):
        super().__init__()
        if depth < 1 or hidden < 1 or in_features < 1 or num_classes < 1:
            raise ValueError("depth, hidden, in_features and num_classes must be positive")
        if first_activation not in ACTIVATIONS:
            raise ValueError(f"first_activation must be one of {ACTIVATIONS}, got {first_activation!r}")
        if init_std < 0:
            raise ValueError(f"init_std must be >= 0, got {init_std}")
        width = width if width is not None else in_features + in_features % 2
        if width % 2:
            raise ValueError(f"width d={width} must be even: the coupling layers split it into two halves")
        if num_classes > width:
            raise ValueError(f"the readout needs num_classes <= width, got {num_classes} > {width}")
        hidden = hidden if bottleneck else width // 2
        self.in_features, self.num_classes, self.width, self.hidden = in_features, num_classes, width, hidden
        self.depth, self.first_activation, self.seed = depth, first_activation, seed
        g = torch.Generator().manual_seed(seed)
        if width < in_features:
            q, _ = torch.linalg.qr(torch.randn(in_features, width, generator=g, dtype=torch.float64))
            self.register_buffer("embedding", q.to(dtype))
        else:
            self.embedding = None
        self.blocks = nn.ModuleList(
            RevBlock(width // 2, hidden, bias=bias, init_std=init_std, generator=g, dtype=dtype, bottleneck=bottleneck,
                     activations=(first_activation if i == 0 else "relu", "relu"))
            for i in range(depth))
        r, _ = torch.linalg.qr(torch.randn(width, num_classes, generator=g, dtype=torch.float64))
        self.register_buffer("readout", r.to(dtype))
        self.to(device)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Map inputs (n x D) to the stream (n x d): zero-padding or the fixed projection."""
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"RevMLP expects inputs of shape (n, {self.in_features}), got {tuple(x.shape)}")
        if self.embedding is not None:
            return x @ self.embedding
        return nn.functional.pad(x, (0, self.width - self.in_features))

    def body(self, u: torch.Tensor) -> torch.Tensor:
        """The invertible part: stream in (n x d) to x_L (n x d)."""
        for block in self.blocks:
            u = block(u)
        return u

    def inverse_body(self, x_last: torch.Tensor) -> torch.Tensor:
        for block in reversed(self.blocks):
            x_last = block.inverse(x_last)
        return x_last

    def forward(self, x: torch.Tensor, output: str = "logits") -> torch.Tensor:
        """Logits (n x C); with output="body", x_L (n x d), the reversible network's own output."""
        x_last = self.body(self.embed(x))
        if output == "body":
            return x_last
        if output != "logits":
            raise ValueError(f"output must be 'logits' or 'body', got {output!r}")
        return x_last @ self.readout

    def forward_with_features(self, x: torch.Tensor):
        """Logits (n x C), x_L (n x d) and each block's two `HalfLayerCache` objects, for the GN step."""
        u = self.embed(x)
        caches = []
        for block in self.blocks:
            u, c = block(u, keep=True)
            caches.append(c)
        return u @ self.readout, u, caches

    def ntk_factors(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The factors of the logits' tangent kernel, one pair per half-layer in parameter order (eq-ntk-factors).

        A trained half-layer adds A W^T (+ b) to the stream, A = sigma(Z) its n x h features (n x (h+1) with a
        column of ones when it has a bias), and each example's logits depend on that example's row only. So
        d logit_{ic} / dW = g_{ic} a_i^T, with g_{ic} (d/2) the logits' derivative in the half-layer's output
        at example i, and J J^T = sum over half-layers of (A A^T)_{ij} (g_{ic} . g_{jc'}). Returns [(A, G)],
        A: n x h(+1), G: n x C x d/2 (G[i, c] = g_{ic}): C backward passes, where the Jacobian needs n C.
        """
        u, n = self.embed(x), x.shape[0]
        shifts = [torch.zeros(n, self.width // 2, dtype=u.dtype, device=u.device) for _ in range(2 * self.depth)]
        features = []

        def logits(shifts):
            v = u
            features.clear()
            for k, block in enumerate(self.blocks):
                v, caches = block(v, keep=True, shifts=shifts[2 * k: 2 * k + 2])
                features.extend(c.features for c in caches)
            return v @ self.readout

        out, pullback = vjp(logits, shifts)
        n_out = out.shape[1]
        # cotangent e_c at every example at once: example i's row of the pullback is then g_{ic}
        (grads,) = vmap(lambda e: pullback(e.expand(n, n_out)))(torch.eye(n_out, dtype=out.dtype, device=out.device))
        return [(A, G.transpose(0, 1)) for A, G in zip(features, grads)]

    def extra_repr(self) -> str:
        p = sum(p.numel() for p in self.parameters())
        return (f"in={self.in_features}, d={self.width}, h={self.hidden}, L={self.depth}, C={self.num_classes}, "
                f"first_activation={self.first_activation}, params={p:,}")


# ------------------------------------------------------------------------------------------------ lazy-training models
class TwoLayerReLU(nn.Module):
    """f(x) = scale * sum_j b_j relu(a_j . x), the two-layer net of Chizat et al. (2019).

    Args:
        in_features: d. width: m hidden units (with symmetric=True, m is even and the second half mirrors the first).
        init_scale: tau; a_j ~ N(0, tau^2 / d) and b_j ~ N(0, tau^2) (a 2-homogeneous model: scaling tau is
            like an output scale alpha = tau^2).
        output_scaling: "none" (scale 1), "ntk" (1/sqrt(m)) or "mean-field" (1/m).
        symmetric: duplicate the hidden units and negate the copies' output weights, so f(w0) = 0
            (centering (b)) while the tangent kernel is that of the full width.
    Parameters: `a` (m x d) and `b` (m,), so `b[:, None] * a` are the units' positions plotted in the chapter.
    """

    def __init__(self, in_features: int, width: int, *, init_scale: float = 1.0, output_scaling: str = "none",
                 symmetric: bool = True, bias: bool = False, seed: int = 0, dtype: torch.dtype = torch.float64):
        super().__init__()
        if output_scaling not in ("none", "ntk", "mean-field"):
            raise ValueError(f"output_scaling must be 'none', 'ntk' or 'mean-field', got {output_scaling!r}")
        if symmetric and width % 2:
            raise ValueError(f"symmetric init needs an even width, got {width}")
        g = torch.Generator().manual_seed(seed)
        half = width // 2 if symmetric else width
        a = torch.randn(half, in_features, generator=g, dtype=torch.float64) * init_scale / math.sqrt(in_features)
        b = torch.randn(half, generator=g, dtype=torch.float64) * init_scale
        if symmetric:
            a, b = torch.cat([a, a]), torch.cat([b, -b])
        self.a = nn.Parameter(a.to(dtype))
        self.b = nn.Parameter(b.to(dtype))
        self.scale = {"none": 1.0, "ntk": 1 / math.sqrt(width), "mean-field": 1 / width}[output_scaling]
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * (self.relu(x @ self.a.T) @ self.b)[:, None]


class ConvNet(nn.Module):
    """A VGG-style CNN without batch norm (BatchNorm's running statistics break torch.func transforms).

    config: channels per 3x3 conv layer, "M" for 2x2 max-pooling, e.g. VGG11 = [64, "M", 128, "M", 256, 256,
    "M", 512, 512, "M", 512, 512, "M"]. The feature map is averaged over space, then a linear layer gives the
    logits. All nonlinearities are nn.ReLU modules, so `revgn.kernels.relu_patterns` sees them.
    """

    VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")

    def __init__(self, config=(32, "M", 64, "M", 128, "M"), in_channels: int = 3, num_classes: int = 10,
                 seed: int = 0, dtype: torch.dtype = torch.float32):
        super().__init__()
        torch.manual_seed(seed)  # nn's default initialisers draw from the global generator
        layers: list[nn.Module] = []
        ch = in_channels
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(ch, int(item), 3, padding=1), nn.ReLU()]
                ch = int(item)
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(ch, num_classes)
        self.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"ConvNet expects images (n, C, H, W), got shape {tuple(x.shape)}")
        return self.head(self.features(x).mean(dim=(2, 3)))


class MLP(nn.Module):
    """A plain ReLU MLP (nn.ReLU modules, no normalisation): in_features -> hidden... -> num_classes."""

    def __init__(self, in_features: int, num_classes: int, hidden=(128, 128), seed: int = 0,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        torch.manual_seed(seed)
        layers, width = [], in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
