"""The training loop every stage shares: a wall-clock budget, checkpoints, resumption.

The learning rate warms up, then follows a cosine down to a tenth of its peak as the
elapsed training time approaches the budget (--minutes, and/or --end-utc HH:MM), so a run
stopped by its budget has fully decayed. Elapsed time is kept in the checkpoint, so the
same command resumes an interrupted run where it stopped; a run paused with SIGSTOP (and
resumed with SIGCONT) does not count the pause.
"""
import collections
import datetime as dt
import math
import os
import time

import torch

import model as M

PAUSED_S = 60.0  # a step longer than this, and 20 times the recent ones, was paused


def add_budget_args(ap, minutes, lr):
    ap.add_argument("--minutes", type=float, default=minutes, help="training time budget")
    ap.add_argument("--end-utc", default=None,
                    help="HH:MM (UTC, today): stop by then even if --minutes is not spent")
    ap.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    ap.add_argument("--lr", type=float, default=lr)
    ap.add_argument("--warmup", type=int, default=100, help="warm-up steps")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--ckpt-minutes", type=float, default=4.0)
    ap.add_argument("--eval-minutes", type=float, default=10.0)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--bf16", action="store_true",
                    help="the forward's matrix products in bfloat16 (torch.autocast): about "
                         "twice the speed where the CPU has AVX512-BF16; weights, optimizer, "
                         "softmax and losses stay float32")


def end_time_utc(end_utc, now=None):
    """The next time the clock reads HH:MM (UTC) after now, or None for no end time: a run
    started at 23:50 with --end-utc 01:30 ends tomorrow at 01:30. Resolved once per run, so
    the end does not move on a day while the run approaches it."""
    if not end_utc:
        return None
    now = now or dt.datetime.now(dt.timezone.utc)
    hh, mm = (int(v) for v in end_utc.split(":"))
    end = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
    return end if end > now else end + dt.timedelta(days=1)


def seconds_left(end):
    if end is None:
        return math.inf
    return (end - dt.datetime.now(dt.timezone.utc)).total_seconds()


def lr_at(step, elapsed, total, a):
    if step < a.warmup:
        return a.lr * (step + 1) / a.warmup
    frac = min(1.0, elapsed / max(total, 1e-9))
    return a.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def make_optimizer(params, lr, weight_decay=0.1):
    params = [p for p in params if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    other = [p for p in params if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": other, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.95), eps=1e-8)


class StepClock:
    """A step's seconds against the budget: a step far longer than the recent ones was paused
    (SIGSTOP while the machine measures something else), and counts as their median."""

    def __init__(self, window=50):
        self.recent = collections.deque(maxlen=window)

    def counted(self, secs):
        usual = sorted(self.recent)[len(self.recent) // 2] if len(self.recent) >= 10 else None
        self.recent.append(secs)
        if usual is not None and secs > max(PAUSED_S, 20 * usual):
            print(f"# a step took {secs:.0f} s (paused?): counted as {usual:.1f} s", flush=True)
            self.recent[-1] = usual
            return usual
        return secs


def train_loop(a, model, opt, step_fn, eval_fn, ckpt_path, state, extra_state=None):
    """Runs step_fn(step) -> (loss, n_tokens) until the budget is spent.
    state: {"step", "elapsed", "tokens"} restored from a checkpoint (or zeros).
    eval_fn() -> dict of figures, printed now and then and at the end."""
    extra_state = extra_state or {}
    step, elapsed, tokens = state["step"], state["elapsed"], state["tokens"]
    end = end_time_utc(a.end_utc)
    total = min(a.minutes * 60.0, elapsed + seconds_left(end))
    print(f"# budget {total / 60:.1f} min, {elapsed / 60:.1f} already spent, step {step}",
          flush=True)
    last_ckpt = last_eval = time.time()
    t_log, tok_log, loss_sum, loss_n = time.time(), 0, 0.0, 0

    def save():
        M.save_checkpoint(ckpt_path, model, opt, step=step, elapsed=elapsed, tokens=tokens,
                          **extra_state)

    clock = StepClock()

    while elapsed < total and (a.max_steps is None or step < a.max_steps):
        t0 = time.time()
        lr = lr_at(step, elapsed, total, a)
        for g in opt.param_groups:
            g["lr"] = lr
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=getattr(a, "bf16", False)):
            loss, ntok = step_fn(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
        opt.step()
        step += 1
        tokens += ntok
        tok_log += ntok
        loss_sum += float(loss)
        loss_n += 1
        now = time.time()
        elapsed += clock.counted(now - t0)
        if step % a.log_every == 0:
            print(f"step {step} loss {loss_sum / loss_n:.4f} lr {lr:.2e} "
                  f"{tok_log / (now - t_log):.0f} tok/s elapsed {elapsed / 60:.1f}/"
                  f"{total / 60:.1f} min tokens {tokens}", flush=True)
            t_log, tok_log, loss_sum, loss_n = now, 0, 0.0, 0
        if now - last_ckpt > a.ckpt_minutes * 60:
            save()
            last_ckpt = time.time()
        if now - last_eval > a.eval_minutes * 60:
            print("eval", eval_fn(), flush=True)
            last_eval = time.time()
        total = min(a.minutes * 60.0, elapsed + seconds_left(end))
    save()
    figures = eval_fn()
    print("final eval", figures, f"steps {step} tokens {tokens} "
          f"minutes {elapsed / 60:.1f}", flush=True)
    return figures
