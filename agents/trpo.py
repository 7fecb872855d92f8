"""Trust-region machinery shared by the agents: conjugate gradient and the TRPO step (Schulman et al. 2015)."""

from __future__ import annotations

from collections.abc import Callable

import torch

Params = dict[str, torch.Tensor]


def flat(tensors: Params | list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
    values = tensors.values() if isinstance(tensors, dict) else tensors
    return torch.cat([t.reshape(-1) for t in values])


def unflat(vector: torch.Tensor, like: Params) -> Params:
    out, offset = {}, 0
    for name, t in like.items():
        out[name] = vector[offset : offset + t.numel()].view_as(t)
        offset += t.numel()
    return out


def conjugate_gradient(
    matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, iters: int, tol: float = 1e-10
) -> torch.Tensor:
    """Approximately solve ``A x = b`` for symmetric positive-definite ``A`` given only ``A v``."""
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
    return x


def trpo_step(
    params: Params,
    loss_fn: Callable[[Params], torch.Tensor],
    outputs_fn: Callable[[Params], torch.Tensor],
    kl_fn: Callable[[torch.Tensor], torch.Tensor],
    max_kl: float,
    cg_iters: int = 10,
    cg_damping: float = 1e-5,
    ls_max_steps: int = 15,
    ls_backtrack: float = 0.8,
    fisher: tuple[Callable[[Params], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]] | None = None,
) -> dict[str, float]:
    """One TRPO update of ``params`` (leaf tensors, changed in place).

    Args:
        loss_fn: the surrogate loss to minimise, differentiable in ``params``.
        outputs_fn: the policy's distribution parameters on the update's
            samples, as a pure function of ``params`` (``torch.func``-transformable:
            it may use ``torch.func.grad`` inside, e.g. MAML's adaptation).
        kl_fn: mean KL from the sampling policy to the given outputs.
        fisher: ``(outputs_fn, kl_fn)`` on a subsample of the samples, used
            only for the Fisher-vector products (OpenAI Baselines' TRPO uses
            every 5th sample); the line search still checks the full KL.

    The Fisher-vector products use the Gauss-Newton form ``J^T H J v``: ``J``
    is the Jacobian of ``outputs_fn`` (a ``torch.func.jvp``, and a
    ``torch.func.vjp`` linearised once and reused by every CG iteration), ``H``
    the KL's Hessian in the outputs. At the sampling parameters the KL's
    gradient in the outputs is zero, so this *is* the KL's Hessian in
    ``params``, through whatever ``outputs_fn`` computes, without a double
    backward through it. Conjugate gradient gives the natural-gradient
    direction, scaled to the KL bound; a backtracking line search accepts the
    first step that lowers the loss and keeps the KL within ``max_kl``.
    """
    names = list(params)
    leaves = [params[n] for n in names]
    loss = loss_fn(params)
    grads = flat(torch.autograd.grad(loss, leaves))
    fisher_outputs_fn, fisher_kl_fn = fisher or (outputs_fn, kl_fn)
    point = {n: p.detach() for n, p in params.items()}
    outputs, pullback = torch.func.vjp(fisher_outputs_fn, point)
    outputs = outputs.detach().requires_grad_()
    kl_grad = torch.autograd.grad(fisher_kl_fn(outputs), outputs, create_graph=True)[0]

    def fisher_vector(v: torch.Tensor) -> torch.Tensor:
        _, jv = torch.func.jvp(fisher_outputs_fn, (point,), (unflat(v, point),))
        hjv = torch.autograd.grad(kl_grad, outputs, jv, retain_graph=True)[0]
        return flat(pullback(hjv)[0]) + cg_damping * v

    direction = conjugate_gradient(fisher_vector, -grads, cg_iters)
    curvature = 0.5 * direction @ fisher_vector(direction)
    step = torch.sqrt(max_kl / curvature.clamp_min(1e-12)) * direction
    old = flat(leaves).detach()
    old_loss = loss.detach()
    stats = {"surrogate_before": float(old_loss), "kl": 0.0, "line_search_steps": float(ls_max_steps), "improvement": 0.0}
    with torch.no_grad():
        for i in range(ls_max_steps):
            _assign(leaves, old + ls_backtrack**i * step)
            new_loss, new_kl = loss_fn(params), kl_fn(outputs_fn(params))
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
