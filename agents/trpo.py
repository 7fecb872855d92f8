"""Trust-region machinery shared by the agents: conjugate gradient and the TRPO step (Schulman et al. 2015)."""

from __future__ import annotations

from collections.abc import Callable

import torch

Params = dict[str, torch.Tensor]


def flat(tensors: Params | list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
    values = tensors.values() if isinstance(tensors, dict) else tensors
    return torch.cat([t.reshape(-1) for t in values])


def conjugate_gradient(
    matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, iters: int, tol: float = 1e-10
) -> tuple[torch.Tensor, torch.Tensor]:
    """Approximately solve ``A x = b`` for symmetric positive-definite ``A`` given only ``A v``.

    Returns ``x`` and ``x^T A x``. The latter comes from the residual ``r = b - A x`` that
    CG maintains anyway, as ``x^T (b - r)``: TRPO's step scaling needs it, and this saves a product.
    """
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = r @ r
    for _ in range(iters):
        ap = matvec(p)
        alpha = rr / (p @ ap)
        x += alpha * p
        r -= alpha * ap
        rr_new = r @ r
        if rr_new < tol:
            break
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x, x @ (b - r)


def fisher_vector_product(
    params: Params,
    outputs_fn: Callable[[Params], torch.Tensor],
    kl_fn: Callable[[torch.Tensor], torch.Tensor],
    damping: float = 0.0,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``v -> (J^T H J + damping I) v`` at ``params``, for flat ``v``.

    ``J`` is the Jacobian of ``outputs_fn`` (the policy's distribution
    parameters) in ``params``, ``H`` the Hessian of ``kl_fn`` in the outputs.
    At the sampling parameters the KL's gradient in the outputs is zero, so
    this Gauss-Newton form *is* the KL's Hessian in ``params``, through
    whatever ``outputs_fn`` computes (MAML's adaptation included), without
    differentiating through it three times.

    ``outputs_fn`` is evaluated once. Every product is then two backward
    passes through graphs kept from that evaluation: ``J v`` as the vector-
    Jacobian product of the linear map ``u -> J^T u`` (the "double-vjp"
    trick), and ``J^T (H J v)``. Nothing is recomputed per product, which
    ``torch.func.jvp`` would do (it re-runs ``outputs_fn`` with its tangents).
    """
    point = {name: p.detach().requires_grad_() for name, p in params.items()}
    leaves = list(point.values())
    outputs = outputs_fn(point)
    probe = torch.zeros_like(outputs, requires_grad=True)
    transposed = flat(torch.autograd.grad(outputs, leaves, probe, create_graph=True, materialize_grads=True))
    at = outputs.detach().requires_grad_()
    kl_grad = torch.autograd.grad(kl_fn(at), at, create_graph=True)[0]

    def product(v: torch.Tensor) -> torch.Tensor:
        jv = torch.autograd.grad(transposed, probe, v, retain_graph=True)[0]
        hjv = torch.autograd.grad(kl_grad, at, jv, retain_graph=True)[0]
        jthjv = torch.autograd.grad(outputs, leaves, hjv, retain_graph=True, materialize_grads=True)
        return flat(jthjv) + damping * v

    return product


def trpo_step(
    params: Params,
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    outputs_fn: Callable[[Params], torch.Tensor],
    kl_fn: Callable[[torch.Tensor], torch.Tensor],
    max_kl: float,
    cg_iters: int = 10,
    cg_damping: float = 1e-5,
    ls_max_steps: int = 15,
    ls_backtrack: float = 0.8,
    fisher: tuple[Callable[[Params], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]] | None = None,
    outputs: torch.Tensor | None = None,
) -> dict[str, float]:
    """One TRPO update of ``params`` (leaf tensors, changed in place).

    Args:
        loss_fn: the surrogate loss to minimise, as a function of the policy's outputs.
        outputs_fn: the policy's distribution parameters on the update's
            samples, differentiable in ``params`` (twice over: the
            Fisher-vector products differentiate its backward pass; it may
            itself take gradients, e.g. MAML's adaptation).
        kl_fn: mean KL from the sampling policy to the given outputs.
        fisher: ``(outputs_fn, kl_fn)`` on a subsample of the samples, used
            only for the Fisher-vector products (OpenAI Baselines' TRPO uses
            every 5th sample); the line search still checks the full KL.
        outputs: ``outputs_fn(params)`` with its graph, if the caller already
            has it (MAML keeps the adaptation it sampled with); else computed here.

    Conjugate gradient on :func:`fisher_vector_product` gives the
    natural-gradient direction, scaled to the KL bound; a backtracking line
    search accepts the first step that lowers the loss and keeps the KL
    within ``max_kl``. Each line-search step evaluates ``outputs_fn`` once,
    for both checks.
    """
    leaves = list(params.values())
    loss = loss_fn(outputs_fn(params) if outputs is None else outputs)
    grads = flat(torch.autograd.grad(loss, leaves))
    fisher_outputs_fn, fisher_kl_fn = fisher or (outputs_fn, kl_fn)
    fisher_vector = fisher_vector_product(params, fisher_outputs_fn, fisher_kl_fn, cg_damping)
    direction, quadratic = conjugate_gradient(fisher_vector, -grads, cg_iters)
    step = torch.sqrt(2 * max_kl / quadratic.clamp_min(1e-12)) * direction  # 0.5 step^T F step = max_kl
    old = flat(leaves).detach()
    old_loss = loss.detach()
    stats = {"surrogate_before": float(old_loss), "kl": 0.0, "line_search_steps": float(ls_max_steps), "improvement": 0.0}
    with torch.no_grad():
        for i in range(ls_max_steps):
            _assign(leaves, old + ls_backtrack**i * step)
            new_outputs = outputs_fn(params)
            new_loss, new_kl = loss_fn(new_outputs), kl_fn(new_outputs)
            if new_loss < old_loss and new_kl <= max_kl:
                stats.update(kl=float(new_kl), line_search_steps=float(i), improvement=float(old_loss - new_loss))
                return stats
        _assign(leaves, old)  # no acceptable step: keep the parameters
    return stats


def _assign(leaves: list[torch.Tensor], vector: torch.Tensor) -> None:
    offset = 0
    for t in leaves:
        t.copy_(vector[offset : offset + t.numel()].view_as(t))
        offset += t.numel()
