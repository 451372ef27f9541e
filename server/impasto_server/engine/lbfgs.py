"""L-BFGS for one image, in the compact form, with no host synchronisation in a step.

The steps are those of ``torch.optim.LBFGS(lr=lr, max_iter=1, tolerance_grad=-1,
tolerance_change=-1)`` (no line search): a first step of -g * min(1, 1/|g|_1) * lr, then
-lr * H g, where H is the inverse-Hessian estimate from the last ``history`` pairs
(s = step taken, y = change of gradient) whose curvature y.s exceeds 1e-10, with H0 = gamma I
and gamma = y.s / y.y of the newest pair. Only the arithmetic differs:

- torch computes H g by the two-loop recursion: 4 small vector operations per stored pair, and
  a host read of each pair's coefficient (``add_(alpha=tensor)``), plus a few more reads per step
  (2 * history + 4 in all). On a GPU each read waits for the device's queue to drain and each
  operation is a kernel launch, against a forward and backward pass of a few milliseconds.
- Here the pairs live in one preallocated (history, 2, n) buffer and H g comes from the compact
  representation (Byrd, Nocedal and Schnabel 1994): one matrix-vector product of the stored
  pairs with the gradient (S g, Y g), two triangular solves of history x history, and one
  product back, about twenty kernels whatever the history. Each pair (s_i, y_i) is one
  contiguous block of 2n values, so every product reads the buffer as a matrix whose rows are
  n apart: cuBLAS takes that distance as a 32-bit int (n stays below 2^31 up to about 26700 x
  26700 px), and the layout (s_1..s_m, y_1..y_m) put rows history * n apart, past 2^31 from
  about 2700 x 2700 px at 100 pairs (4096 x 4096 failed so on an H200). The new pair's
  products with the stored ones follow from S g, Y g and the last step's, so the pairs are read
  twice a step, as torch's are. The one host value a step needs, the new pair's curvature,
  comes from ``curvature()``: the engine reads it back together with the loss terms, in the
  read it makes anyway.

The history is allocated when the optimiser is made, so an image too large for the device fails
at the start of its stage rather than after a hundred iterations. The image may be in any dense
memory layout (channels_last on a GPU); it is flattened in memory order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# torch's curvature threshold: a pair with y.s at or below it is not stored.
CURVATURE_EPS = 1e-10


class LBFGS:
    def __init__(self, x: torch.Tensor, history: int, lr: float = 1.0) -> None:
        if history < 1:
            raise ValueError(f"history must be >= 1, got {history}")
        if not x.is_leaf or not x.requires_grad:
            raise ValueError("x must be a leaf tensor that requires grad")
        self.x = x
        self.lr = float(lr)
        self.history = history
        self._order = x.dim_order()
        self._flat_x = x.detach().permute(self._order).view(-1)  # a view: steps move x itself
        n = self._flat_x.numel()
        kw = {"device": x.device, "dtype": x.dtype}
        self._pairs = torch.empty((history, 2, n), **kw)  # [i, 0]: step s_i, [i, 1]: change y_i
        self._sy = torch.zeros((history, history), **kw)  # s_i . y_j, in slot order
        self._yy = torch.zeros((history, history), **kw)  # y_i . y_j
        self._count = 0  # pairs stored
        self._head = 0  # slot of the oldest pair once the buffer is full
        self._gamma = 1.0
        self._prev_grad = torch.empty(n, **kw)
        self._step: torch.Tensor | None = None  # the last step taken, s
        self._y = torch.empty(n, **kw)
        self._y_ready = False
        # From the last step: (S g, Y g) and the coefficients of H g over the stored pairs.
        self._uw = torch.zeros((2, 0), **kw)
        self._coefficients = torch.zeros((2, 0), **kw)

    @property
    def stored(self) -> int:
        """How many (s, y) pairs the estimate uses now."""
        return self._count

    def _grad(self) -> torch.Tensor:
        grad = self.x.grad
        if grad is None:
            raise RuntimeError("x has no gradient: run the backward pass before step()")
        return grad.permute(self._order).reshape(-1)

    def curvature(self) -> torch.Tensor | None:
        """On the device, after the backward pass: (y.s, y.y) of the pair this step would store,
        or None before the first step. Read it back and pass it to ``step``."""
        if self._step is None:
            return None
        torch.sub(self._grad(), self._prev_grad, out=self._y)
        self._y_ready = True
        return torch.stack([self._y.dot(self._step), self._y.dot(self._y)])

    def step(self, curvature: Sequence[float] | None = None) -> None:
        """One step from the gradient in ``x.grad``. ``curvature``: the values that
        ``curvature()`` returned, read back; without them the step reads them itself (one
        device synchronisation)."""
        grad = self._grad()
        if self._step is None:
            # torch's first step: steepest descent, at most lr / |g|_1 long.
            t = (1.0 / grad.abs().sum()).clamp(max=1.0) * self.lr
            step = grad.neg().mul_(t)
        else:
            if curvature is None:
                pending = self.curvature()
                assert pending is not None
                curvature = pending.tolist()
            elif not self._y_ready:
                raise RuntimeError("curvature values given, but curvature() was not called")
            uw = self._update(grad, float(curvature[0]), float(curvature[1]))
            step = self._direction(grad, uw).mul_(-self.lr)
            self._uw = uw
        self._flat_x.add_(step)
        self._step = step
        self._prev_grad.copy_(grad)
        self._y_ready = False

    def _update(self, grad: torch.Tensor, ys: float, yy: float) -> torch.Tensor:
        """Store the new pair if its curvature is positive; returns (S g, Y g) over the stored
        pairs, in slot order.

        The new pair's products with the stored ones come without another pass over them:
        S y = S g - S g_prev and Y y = Y g - Y g_prev (the last step's S g_prev, Y g_prev are
        kept), and Y s = -lr Y H g_prev from the last step's coefficients and the kept
        products of the stored pairs. So a step reads the history twice, as torch's does."""
        k = self._count
        uw = self._products(k, grad)  # (2, k): S g, Y g
        if ys <= CURVATURE_EPS:
            return uw
        sy_new = uw - self._uw  # (2, k): s_i . y_new, y_i . y_new
        c = self._coefficients
        ys_new = (
            self._gamma * self._uw[1] + self._sy[:k, :k].t() @ c[0] + self._yy[:k, :k] @ c[1]
        ).mul_(-self.lr)  # y_i . s_new
        if k < self.history:
            slot = k
            self._count = k + 1
        else:  # the oldest pair makes way
            slot = self._head
            self._head = (self._head + 1) % self.history
        assert self._step is not None
        self._pairs[slot, 0].copy_(self._step)
        self._pairs[slot, 1].copy_(self._y)
        self._sy[slot, :k] = ys_new  # s_new . y_j
        self._sy[:k, slot] = sy_new[0]  # s_i . y_new
        self._yy[slot, :k] = sy_new[1]
        self._yy[:k, slot] = sy_new[1]
        self._sy[slot, slot] = ys
        self._yy[slot, slot] = yy
        self._gamma = ys / yy
        out = grad.new_empty((2, self._count))
        out[:, :k] = uw
        out[:, slot] = torch.mv(self._pairs[slot], grad)  # the new pair's s.g, y.g
        return out

    def _products(self, k: int, grad: torch.Tensor) -> torch.Tensor:
        """(2, k): the first k slots' s_i . g and y_i . g, in one pass over them."""
        rows = self._pairs[:k].view(2 * k, self._pairs.shape[2])  # s_0, y_0, s_1, y_1, ...
        return torch.mv(rows, grad).view(k, 2).t()

    def _direction(self, grad: torch.Tensor, uw: torch.Tensor) -> torch.Tensor:
        """H g by the compact representation, from uw = (S g, Y g):
        H g = gamma g + S^T p - gamma Y^T a, with a = R^-1 S g and
        p = R^-T ((D + gamma Y Y^T) a - gamma Y g), R the upper triangle of S Y^T (pairs in
        chronological order) and D its diagonal. Keeps (p, -gamma a) for the next update."""
        k, head, gamma = self._count, self._head, self._gamma
        if k == 0:
            self._coefficients = grad.new_zeros((2, 0))
            return grad.mul(gamma)
        sy, yy = self._sy[:k, :k], self._yy[:k, :k]
        if head:  # slots -> chronological order
            uw = uw.roll(-head, dims=1)
            sy = sy.roll((-head, -head), dims=(0, 1))
            yy = yy.roll((-head, -head), dims=(0, 1))
        r = sy.triu()
        a = torch.linalg.solve_triangular(r, uw[0].unsqueeze(1), upper=True)
        rhs = sy.diagonal().unsqueeze(1) * a + gamma * (yy @ a) - gamma * uw[1].unsqueeze(1)
        p = torch.linalg.solve_triangular(r.t(), rhs, upper=False)
        coefficients = torch.cat([p, a.mul(-gamma)], dim=1).t()  # (2, k): for S, for Y
        if head:
            coefficients = coefficients.roll(head, dims=1)
        self._coefficients = coefficients
        # S^T p + Y^T (-gamma a) as one product: the coefficients in the buffer's row order.
        rows = self._pairs[:k].view(2 * k, self._pairs.shape[2])
        return torch.mv(rows.t(), coefficients.t().reshape(-1)).add_(grad, alpha=gamma)
