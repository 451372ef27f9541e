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
  product back (which also scales, adds gamma g and writes the step), about 25 kernels a step
  whatever the history, the new pair's curvature included. Products of the stored pairs with
  each other (S^T Y, Y^T Y) are one (2, history, history) matrix, updated by a row, a column
  and a diagonal a step. Each pair (s_i, y_i) is one
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

``capturable=True`` (the name torch's optimisers give the same idea) takes even that one value
off the host, so that a step can be recorded in a CUDA graph with the pass before it (see
graphs.py): which slots hold pairs, the oldest slot, gamma and whether the first step was taken
are device tensors; a pair's curvature decides on the device whether it is stored; and every
step works on the whole history, the slots without a pair masked out (they hold zeros, and the
triangular factor holds 1 on their diagonal, so their coefficients come out 0). The steps are
the same to rounding (``tests/engine/test_lbfgs.py``); the price is reading all ``history``
slots every step, not only the stored ones, and no host read of the curvature: nothing waits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# torch's curvature threshold: a pair with y.s at or below it is not stored.
CURVATURE_EPS = 1e-10


class LBFGS:
    def __init__(
        self, x: torch.Tensor, history: int, lr: float = 1.0, capturable: bool = False
    ) -> None:
        if history < 1:
            raise ValueError(f"history must be >= 1, got {history}")
        if not x.is_leaf or not x.requires_grad:
            raise ValueError("x must be a leaf tensor that requires grad")
        self.x = x
        self.lr = float(lr)
        self.history = history
        self.capturable = capturable
        self._order = x.dim_order()
        self._flat_x = x.detach().permute(self._order).view(-1)  # a view: steps move x itself
        n = self._flat_x.numel()
        kw = {"device": x.device, "dtype": x.dtype}
        # [i, 0]: step s_i, [i, 1]: change y_i (zeros where capturable: empty slots take part)
        self._pairs = (torch.zeros if capturable else torch.empty)((history, 2, n), **kw)
        # [0]: s_i . y_j, [1]: y_i . y_j (symmetric), in slot order.
        self._products_sy = torch.zeros((2, history, history), **kw)
        self._count = 0  # pairs stored
        self._head = 0  # slot of the oldest pair once the buffer is full
        self._gamma = 1.0
        self._prev_grad = torch.empty(n, **kw)
        # The pair this step may store, in the layout of a slot: [0] the last step taken (s),
        # [1] the change of gradient since (y), so its curvature is one product and storing
        # it one copy.
        self._new = torch.empty((2, n), **kw)
        self._stepped = False
        self._curvature: torch.Tensor | None = None  # (y.s, y.y) of _new, on the device
        # From the last step: (S g, Y g) and the coefficients of H g over the stored pairs,
        # (k, 2) in the buffer's row order (s_0, y_0, s_1, y_1, ...).
        self._uw = torch.zeros((2, 0), **kw)
        self._coefficients = torch.zeros((0, 2), **kw)
        if capturable:
            self._on_device(kw)

    def _on_device(self, kw: dict) -> None:
        """The state of a capturable step: fixed shapes, every value that changes on the
        device, updated in place (a recorded step reads and writes the same memory on every
        replay)."""
        m = self.history
        index = {"device": self.x.device, "dtype": torch.long}
        self._slots = torch.arange(m, **index)
        self._count_t = torch.zeros((), **index)  # pairs stored (slots 0.. until full)
        self._head_t = torch.zeros((), **index)  # slot of the oldest pair once full
        self._gamma_t = torch.ones((), **kw)
        self._stepped_t = torch.zeros((), device=self.x.device, dtype=torch.bool)
        self._uw = torch.zeros((2, m), **kw)  # (S g, Y g) of the last step, all slots
        self._coefficients = torch.zeros((m, 2), **kw)  # slot order
        self._new.zero_()  # read (and masked out) by the first step
        self._prev_grad.zero_()

    @property
    def stored(self) -> int:
        """How many (s, y) pairs the estimate uses now (where capturable, a read of the
        device)."""
        return int(self._count_t.item()) if self.capturable else self._count

    def _grad(self) -> torch.Tensor:
        grad = self.x.grad
        if grad is None:
            raise RuntimeError("x has no gradient: run the backward pass before step()")
        return grad.permute(self._order).reshape(-1)

    def curvature(self) -> torch.Tensor | None:
        """On the device, after the backward pass: (y.s, y.y) of the pair this step would store,
        or None before the first step. Read it back and pass it to ``step``. None always
        where capturable (the step decides on the device)."""
        if not self._stepped or self.capturable:
            return None
        self._curvature = self._new_pair(self._grad())
        return self._curvature

    def _new_pair(self, grad: torch.Tensor) -> torch.Tensor:
        """The change of gradient since the last step into ``_new[1]`` (beside that step in
        ``_new[0]``); returns the pair's (y.s, y.y), on the device."""
        torch.sub(grad, self._prev_grad, out=self._new[1])
        return torch.mv(self._new, self._new[1])

    def step(self, curvature: Sequence[float] | None = None) -> None:
        """One step from the gradient in ``x.grad``. ``curvature``: the values that
        ``curvature()`` returned, read back; without them the step reads them itself (one
        device synchronisation)."""
        grad = self._grad()
        if self.capturable:
            if curvature is not None:
                raise ValueError("a capturable step reads its curvature on the device")
            self._device_step(grad)
            return
        step = self._new[0]
        if not self._stepped:
            # torch's first step: steepest descent, at most lr / |g|_1 long.
            t = (1.0 / grad.abs().sum()).clamp(max=1.0) * self.lr
            torch.mul(grad, t.neg(), out=step)
        else:
            if curvature is None:
                pending = self.curvature()
                assert pending is not None
                curvature = pending.tolist()
            elif self._curvature is None:
                raise RuntimeError("curvature values given, but curvature() was not called")
            uw = self._update(grad, float(curvature[0]), float(curvature[1]))
            self._direction(grad, uw, out=step)
            self._uw = uw
        self._flat_x.add_(step)
        self._stepped = True
        self._prev_grad.copy_(grad)
        self._curvature = None

    def _update(self, grad: torch.Tensor, ys: float, yy: float) -> torch.Tensor:
        """Store the new pair if its curvature is positive; returns (S g, Y g) over the stored
        pairs, in slot order.

        The new pair's products with the stored ones come without another pass over them:
        S y = S g - S g_prev and Y y = Y g - Y g_prev (the last step's S g_prev, Y g_prev are
        kept), and Y s = -lr Y H g_prev from the last step's coefficients and the kept
        products of the stored pairs. So a step reads the history twice, as torch's does."""
        k = self._count
        if ys <= CURVATURE_EPS:
            return self._products(k, grad)
        if k < self.history:
            slot = k
            self._count = k + 1
        else:  # the oldest pair makes way
            slot = self._head
            self._head = (self._head + 1) % self.history
        self._pairs[slot].copy_(self._new)
        uw = self._products(self._count, grad)  # the new pair's s.g, y.g in its slot
        # Over the k slots stored before (the one the new pair took, when full, comes out
        # wrong and is overwritten below by the new pair's own products):
        sy_new = uw[:, :k] - self._uw  # s_i . y_new, y_i . y_new
        m = self._products_sy
        # y_i . s_new = -lr (gamma y_i . g_prev + sum_j (s_j . y_i) c_j + (y_j . y_i) d_j),
        # (c, d) the last step's coefficients: one batched product over [S Y^T, Y Y^T].
        c = self._coefficients.t().unsqueeze(1)  # (2, 1, k)
        ys_new = torch.bmm(c, m[:, :k, :k]).sum(dim=(0, 1))
        ys_new = ys_new.add_(self._uw[1], alpha=self._gamma).mul_(-self.lr)
        m[:, slot, :k] = torch.stack([ys_new, sy_new[1]])  # s_new . y_j, y_new . y_j
        m[:, :k, slot] = sy_new  # s_i . y_new, y_i . y_new
        assert self._curvature is not None
        m[:, slot, slot] = self._curvature  # s_new . y_new, y_new . y_new
        self._gamma = ys / yy
        return uw

    def _products(self, k: int, grad: torch.Tensor) -> torch.Tensor:
        """(2, k): the first k slots' s_i . g and y_i . g, in one pass over them."""
        rows = self._pairs[:k].view(2 * k, self._pairs.shape[2])  # s_0, y_0, s_1, y_1, ...
        return torch.mv(rows, grad).view(k, 2).t()

    def _direction(self, grad: torch.Tensor, uw: torch.Tensor, out: torch.Tensor) -> None:
        """-lr H g into ``out``, H g by the compact representation from uw = (S g, Y g):
        H g = gamma g + S^T p - gamma Y^T a, with a = R^-1 S g and
        p = R^-T ((D + gamma Y Y^T) a - gamma Y g), R the upper triangle of S Y^T (pairs in
        chronological order) and D its diagonal. Keeps (p, -gamma a) for the next update."""
        k, head, gamma, lr = self._count, self._head, self._gamma, self.lr
        if k == 0:
            self._coefficients = grad.new_zeros((0, 2))
            torch.mul(grad, -lr * gamma, out=out)
            return
        m = self._products_sy[:, :k, :k]
        if head:  # slots -> chronological order
            uw = uw.roll(-head, dims=1)
            m = m.roll((-head, -head), dims=(1, 2))
        sy, yy = m[0], m[1]
        # (triangular solves read only the triangle they are told: no copy of it)
        a = torch.linalg.solve_triangular(sy, uw[0].unsqueeze(1), upper=True)
        rhs = torch.addmm(uw[1].unsqueeze(1), yy, a, beta=-gamma, alpha=gamma)
        rhs.addcmul_(sy.diagonal().unsqueeze(1), a)
        p = torch.linalg.solve_triangular(sy.t(), rhs, upper=False)
        coefficients = torch.cat([p, a.mul_(-gamma)], dim=1)  # (k, 2): for s_i, for y_i
        if head:
            coefficients = coefficients.roll(head, dims=0)
        self._coefficients = coefficients
        # S^T p + Y^T (-gamma a) as one product: the coefficients in the buffer's row order.
        rows = self._pairs[:k].view(2 * k, self._pairs.shape[2])
        torch.addmv(grad, rows.t(), coefficients.view(-1), beta=-lr * gamma, alpha=-lr, out=out)

    # ------------------------------------------------------------------ capturable

    def _device_step(self, grad: torch.Tensor) -> None:
        """``step`` with every decision on the device: the same arithmetic as ``_update`` and
        ``_direction`` over all ``history`` slots, the empty ones masked out, and the first
        step's scale chosen by a device flag (no Python value changes from one step to the
        next: a CUDA graph of it replays it exactly)."""
        m, lr, new, pairs = self.history, self.lr, self._new, self._pairs
        count, head, gamma, stepped = self._count_t, self._head_t, self._gamma_t, self._stepped_t
        # The pair from the last step to this one, and whether it is stored.
        curvature = self._new_pair(grad)  # (y.s, y.y)
        accept = stepped & (curvature[0] > CURVATURE_EPS)
        full = count >= m
        slot = torch.where(full, head, count).view(1)
        kept = pairs.index_select(0, slot)
        pairs.index_copy_(0, slot, torch.where(accept, new.unsqueeze(0), kept))
        uw = self._products(m, grad)  # all slots; the empty ones give 0
        # The new pair's products with the stored ones, as _update computes them; written into
        # its row and column (then its own, on the diagonal) only where it is stored.
        sy_new = uw - self._uw
        products = self._products_sy
        c = self._coefficients.t().unsqueeze(1)  # (2, 1, m)
        ys_new = torch.bmm(c, products).sum(dim=(0, 1))
        ys_new = ys_new.addcmul_(self._uw[1], gamma).mul_(-lr)
        chosen = (self._slots == slot) & accept  # (m,)
        row, col = chosen.view(1, m, 1), chosen.view(1, 1, m)
        updated = torch.where(row, torch.stack([ys_new, sy_new[1]]).unsqueeze(1), products)
        updated = torch.where(col, sy_new.unsqueeze(2), updated)
        products.copy_(torch.where(row & col, curvature.view(2, 1, 1), updated))
        count.add_(accept & ~full)
        head.copy_(torch.where(accept & full, (head + 1) % m, head))
        gamma.copy_(torch.where(accept, curvature[0] / curvature[1], gamma))
        # -lr H g (H g by the compact form, as _direction), pairs in chronological order.
        order = (head + self._slots) % m
        u, w = uw.index_select(1, order)
        ordered = products.index_select(1, order).index_select(2, order)
        sy, yy = ordered[0], ordered[1]
        empty = (self._slots >= count).to(sy.dtype)  # chronological: the stored come first
        factor = sy + torch.diag(empty)  # 1 on the empty slots' diagonal: their a, p are 0
        a = torch.linalg.solve_triangular(factor, u.unsqueeze(1), upper=True)
        rhs = torch.mm(yy, a).sub_(w.unsqueeze(1)).mul_(gamma)
        rhs.addcmul_(sy.diagonal().unsqueeze(1), a)
        p = torch.linalg.solve_triangular(factor.t(), rhs, upper=False)
        self._coefficients.index_copy_(0, order, torch.cat([p, a.mul_(-gamma)], dim=1))
        step = new[0]
        rows = pairs.view(2 * m, pairs.shape[2])
        torch.mv(rows.t(), self._coefficients.view(-1), out=step)
        step.addcmul_(grad, gamma)
        # The first step: steepest descent, at most lr / |g|_1 long (gamma is 1, no pairs).
        first = torch.linalg.vector_norm(grad, 1).reciprocal_().clamp_(max=1.0)
        step.mul_(torch.where(stepped, 1.0, first).mul_(-lr))
        self._uw.copy_(uw)
        self._flat_x.add_(step)
        stepped.fill_(True)
        self._prev_grad.copy_(grad)
