"""Synchronous data-parallel training: the trainer of ``gpumlp.trainer`` on the ranks of a
``gpumlp.distributed`` communicator, with the numbers of one process.

    comm = distributed.init("mpi")
    model.fit(X, y, batch_size=256, comm=comm)                           # the same X, y on every rank
    model.fit(X_part, y_part, batch_size=256, comm=comm, sharded=True)   # each rank its own part

``batch_size`` is the global batch.

Replicated data (the default). Every rank draws the epoch's permutation from the model's RNG (rank
0's, broadcast at the start) exactly as one process does, so the global batches are those of the
single-process fit. Global batch k (b_k rows) is cut into contiguous shards, rank r taking
b_k // P rows plus one when r < b_k mod P: shards of different sizes when P does not divide b_k,
empty ones when b_k < P; no example is repeated or dropped, nothing is padded.

The step: the seam of ``gpumlp.step``, between ``Step.gradients`` and ``Step.apply``. A batch's L is
the mean of its rows' losses, Σ wᵢ lᵢ / Σ wᵢ with weights (sample times class weights). A rank's
gradient phase gives ∂L_r/∂θ of its shard, the mean over the shard's rows. Scaled by the rank's
share c_r = W_r / W (W_r the shard's weight sum, or its row count; W the global batch's), it is the
rank's partial sum Σ_{i∈r} wᵢ ∂lᵢ/∂θ divided by the global W, and the all-reduce's sum over ranks
is the single-process ∂L/∂θ. One all-reduce of the flat gradient buffer per step, then every rank
applies the same update to the same θ. The regulariser's gradient λθ is not in ``model.grad`` at
the seam (the update adds it, inside its pass), so it is counted once, not P times. An empty shard
contributes zeros. J likewise: J = Σ_r c_r J_r (J_r = L_r + s on a non-empty shard, Σ_r c_r = 1);
a global batch whose weights are all zero gives c = 1 to its first non-empty shard, so that its J is
s, as in one process. The shares come from the permutation on the host before the epoch: they cost
no collective; each step's J stays on the device, and the epoch's Js are exchanged once at its end.

Sharded data (``sharded=True``): each rank holds its own part (n_r rows). Each epoch every rank draws
one seed from the shared RNG and shuffles its part with ``numpy.random.default_rng([seed, rank])``.
A step's share of rank r is the split of ``batch_size`` above (s_r rows; batch_size >= P, so that
every rank has a share); step k takes the k-th chunk of s_r rows of every rank's shuffled part. The
epoch has max_r ⌈n_r / s_r⌉ steps: a rank whose part is exhausted contributes an empty shard, so the
last batches are smaller, and every example is used exactly once per epoch. The equivalent single
process holds the concatenation of the parts and takes, as batch k, the union over ranks of every
rank's k-th chunk. The weight sums per step (for the shares) are exchanged once per epoch. The
training score, validation loss and score are those over all parts (each rank passes its part of the
validation data); "balanced" class weights come from the global label counts; early stopping's
split holds out the fraction of each part, seeded from the shared seed and the rank. A streamed source
(``gpumlp.data.stream``) is sharded by its chunks: rank r reads every P-th chunk from chunk r and
never the rest of the file; its epoch order is a seed from the shared one and the rank.

Agreement. Before training: the model's settings (all but the seed) and the call's arguments are
compared across ranks, then the data by digest (replicated) or layout (sharded); a failure on any
rank raises on every rank. Then rank 0's whole state (parameters, optimizer state, schedule,
progress, monitor, RNG) is broadcast, so replicas start identical whatever they were seeded with.
After every epoch the ranks compare a digest of θ (a RuntimeError on every rank if the replicas are
not bit-identical) and take rank 0's record (loss, scores), so early stopping, the adaptive schedule
and divergence decide the same everywhere; a callback that asks to stop on any rank stops all, one
that raises on a rank raises on all. A rank failing inside an epoch ends the job (MPI_Abort).

Rounding. With P ranks a step's arithmetic differs from one process's only in how the sums over the
batch are split (partial sums on each rank, scaled by c_r, summed across ranks): float64 results
agree to about 1e-12 relative after several epochs, float32 ones to about 1e-5 (the tests hold them
to 1e-10 and 1e-4). Plain SGD runs as gradients() then apply(), θ ← θ − η(g + λθ), since the
all-reduce must sit between the two; a single-process plain-SGD fit folds the update into the
weight-gradient GEMM, W ← (1 − ηλ)W − η dᵀa, which rounds differently by a few ulp per step. On one
rank this trainer is bit-identical to ``Trainer`` for every optimizer but plain SGD, where it is
the two-phase arithmetic.

Checkpoints: the state is the same on every rank, so rank 0 saves it (``distributed.save(model,
path, comm)``, or ``if comm.rank == 0: model.save(path)`` in a callback). Every rank loading the file
and calling fit with the same number of ranks continues bit for bit; one process loads it as any
model file.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import functions as F
from . import streamed
from .data.statistics import rank_chunks
from .data.streaming import View, as_stream
from .distributed import Communicator, describe_array, digest, is_collective, mark_collective
from .state import ModelState
from .trainer import DivergenceError, Trainer, TrainingData, _EpochStart
from .validation import check_sample_weight

__all__ = ["DataParallelTrainer", "make_trainer", "parallel_step", "split_sizes", "replicated_plan",
           "sharded_plan", "global_objective", "global_score"]


def make_trainer(model, comm=None, sharded=False, **kw):
    """``Trainer(model, **kw)``, or with ``comm`` a ``DataParallelTrainer`` over its ranks."""
    if comm is None:
        if sharded:
            raise ValueError("sharded=True needs comm= (a communicator from gpumlp.distributed.init)")
        return Trainer(model, **kw)
    return DataParallelTrainer(model, comm, sharded=sharded, **kw)


# ---------------------------------------------------------------------------------- the step
def parallel_step(step, comm, batch, share, optimizer, lr):
    """One data-parallel update: this rank's ∂L/∂θ on its shard ``batch`` (x, y, w), or zeros for an
    empty shard (None), times its ``share``; summed over the ranks in place; then the update, the
    same on every rank. Returns this rank's J (a 0-d backend array), or None for an empty shard."""
    m = step.model
    if batch is None:
        m.grad.fill(0)
        J = None
    else:
        J = step.gradients(*batch)
        if share != 1.0:
            m.grad *= share
    comm.allreduce(m.grad)
    step.apply(optimizer, lr)
    return J


# ---------------------------------------------------------------------------------- epoch plans
def split_sizes(b, size):
    """The shard sizes of a batch of ``b`` rows over ``size`` ranks: b // size, plus one for the
    first b % size ranks."""
    return b // size + (np.arange(size) < b % size).astype(np.int64)


@dataclass
class EpochPlan:
    """What every rank knows of an epoch before it starts."""

    sizes: np.ndarray  # (steps, P): rows of each rank's shard in each step
    shares: np.ndarray  # (steps, P): c_r of each shard (float64; a row sums to 1)
    order: object  # this rank's rows, in the order its shards take them (None: its rows in their order)
    chunk: int  # this rank's largest shard: the batch size of its batch source

    @property
    def batches(self):
        """The global batch size of each step."""
        return self.sizes.sum(axis=1)


def _shares(weights, sizes):
    """c = W_r / W per step; a step of zero weight gives 1 to its first non-empty shard (J = s)."""
    total = weights.sum(axis=1)
    shares = np.zeros(weights.shape, np.float64)
    positive = total > 0
    shares[positive] = weights[positive] / total[positive, None]
    for k in np.flatnonzero(~positive):
        shares[k, np.flatnonzero(sizes[k])[0]] = 1.0
    return shares


def replicated_plan(order, batch_size, size, rank, weights=None):
    """The plan of an epoch over the same data on every rank: ``order`` (the epoch's permutation,
    every rank's the same), global batches of ``batch_size`` cut into ``size`` shards; ``weights``
    the per-example weights (host, float64) or None."""
    order = np.asarray(order)
    n, B = order.shape[0], batch_size
    n_full, last = divmod(n, B)
    full_sizes, last_sizes = split_sizes(B, size), split_sizes(last, size)
    fb, lb = np.concatenate(([0], np.cumsum(full_sizes))), np.concatenate(([0], np.cumsum(last_sizes)))
    sizes = np.repeat(full_sizes[None], n_full, axis=0)
    if last:
        sizes = np.vstack([sizes, last_sizes[None]])
    full, tail = order[:n_full * B].reshape(n_full, B), order[n_full * B:]
    local = np.concatenate([full[:, fb[rank]:fb[rank + 1]].ravel(), tail[lb[rank]:lb[rank + 1]]])
    if weights is None:
        sums = sizes.astype(np.float64)
    else:
        w = np.asarray(weights, np.float64)[order]
        wf, wt = w[:n_full * B].reshape(n_full, B), w[n_full * B:]
        sums = np.stack([wf[:, fb[r]:fb[r + 1]].sum(axis=1) for r in range(size)], axis=1)
        if last:
            sums = np.vstack([sums, [[wt[lb[r]:lb[r + 1]].sum() for r in range(size)]]])
    return EpochPlan(sizes, _shares(sums, sizes), local, int(sizes[0, rank]))


def sharded_plan(counts, batch_size, rank, order=None, weight_sums=None):
    """The plan of an epoch over parts of ``counts[r]`` rows on rank r: step k takes the k-th chunk of
    ``split_sizes(batch_size, P)[r]`` rows of rank r's part (in ``order``, its shuffled rows, or in
    their own order); ``weight_sums[r]`` the weight sum of each of rank r's chunks (None: row counts)."""
    counts = np.asarray(counts, np.int64)
    share = split_sizes(batch_size, counts.size)
    if (share < 1).any():
        raise ValueError(f"sharded training needs batch_size >= the number of ranks ({counts.size}), "
                         f"got {batch_size}: every rank takes a share of each batch")
    steps = int(max(-(-counts // share)))
    sizes = np.clip(counts[None] - np.arange(steps)[:, None] * share[None], 0, share[None])
    if weight_sums is None:
        sums = sizes.astype(np.float64)
    else:
        sums = np.zeros(sizes.shape, np.float64)
        for r, s in enumerate(weight_sums):
            sums[:len(s), r] = s
    return EpochPlan(sizes, _shares(sums, sizes), order, int(share[rank]))


@dataclass
class ParallelData(TrainingData):
    """Training data with what the plans need: every rank's row count and the weights on the host."""

    counts: np.ndarray = None  # rows of every rank's part (sharded), else (n,)
    w_host: np.ndarray = None  # float64 weights, or None


# ---------------------------------------------------------------------------------- global measures
def global_objective(model, comm, x, y, w=None):
    """J = L + s with L the weighted mean loss over every rank's (x, y, w): the trainer's validated
    arrays, w on one scale across ranks (``DataParallelTrainer._device_weights``). Collective."""
    yy, ww = model.targets_to_device(y, x.shape[0])[0], w
    L = float(F.LOSSES[model.loss].forward(model.outputs(x), yy, ww))
    W = float(x.shape[0] if ww is None else ww.sum())
    parts = comm.exchange((L, W))
    total = sum(p[1] for p in parts)
    L = sum(p[0] * p[1] for p in parts) / total if total > 0 else 0.0
    return L + F.regulariser(model.weights, model.weight_decay)


def global_score(model, comm, x, y, w=None):
    """``MLP.score`` over every rank's (x, y, w): accuracy or R² (uniform over outputs); the arrays as
    for ``global_objective``. Collective."""
    if isinstance(x, View):
        return streamed.score(model, x, y, w, comm=comm)
    to_host = model.array_backend.to_host
    yy, ww = model.targets_to_device(y, x.shape[0])[0], w
    o = model.outputs(x)
    if model.loss == "cross_entropy":
        hit = o.argmax(axis=1) == yy
        part = (float(hit.sum() if ww is None else (ww * hit).sum()), float(x.shape[0] if ww is None else ww.sum()))
        parts = comm.exchange(part)
        return sum(p[0] for p in parts) / sum(p[1] for p in parts)
    xp = model.array_backend.xp
    wc = xp.ones((yy.shape[0], 1), yy.dtype) if ww is None else ww[:, None]
    parts = comm.exchange((float(wc.sum()), np.asarray(to_host((wc * yy).sum(axis=0)), np.float64)))
    mean = xp.asarray(sum(p[1] for p in parts) / sum(p[0] for p in parts), dtype=yy.dtype)
    parts = comm.exchange((np.asarray(to_host((wc * (yy - o) ** 2).sum(axis=0)), np.float64),
                           np.asarray(to_host((wc * (yy - mean) ** 2).sum(axis=0)), np.float64)))
    ss_res, ss_tot = sum(p[0] for p in parts), sum(p[1] for p in parts)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(ss_tot > 0, 1 - ss_res / np.where(ss_tot > 0, ss_tot, 1), np.where(ss_res > 0, 0.0, 1.0))
    return float(r2.mean())


def _plain(value):
    """A comparable stand-in for a call argument: arrays and data count as given or not."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, dict):
        return tuple(sorted((str(k), _plain(v)) for k, v in value.items()))
    if isinstance(value, (tuple, list)):
        return tuple(_plain(v) for v in value)
    if hasattr(value, "config") and hasattr(value, "name"):  # a learning-rate schedule
        return repr(value)
    return "given"


# ---------------------------------------------------------------------------------- the trainer
class DataParallelTrainer(Trainer):
    """``Trainer`` over the ranks of ``comm`` (see the module docstring): the same arguments, plus
    ``sharded`` (each rank passes its own part of the data). Only rank 0 prints (``verbose``)."""

    def __init__(self, model, comm, *, sharded=False, **kw):
        if not isinstance(comm, Communicator):
            raise TypeError(f"comm must be a communicator from gpumlp.distributed.init(...), got {comm!r}")
        super().__init__(model, **kw)
        self.comm, self.sharded = comm, bool(sharded)
        self._in_setup = False
        if comm.rank != 0:
            self.verbose = False

    # ------------------------------------------------------------------ entry points
    def fit(self, X, y, epochs=10, *, sample_weight=None, class_weight=None, validation_data=None,
            early_stopping=False, validation_fraction=0.1, n_iter_no_change=None, tol=1e-4):
        """``Trainer.fit`` on every rank (collective: every rank calls it, with its data)."""
        kw = dict(sample_weight=sample_weight, class_weight=class_weight, validation_data=validation_data,
                  early_stopping=early_stopping, validation_fraction=validation_fraction,
                  n_iter_no_change=n_iter_no_change, tol=tol)
        return self._collectively("fit", super().fit, (X, y, epochs), kw)

    def partial_fit(self, X, y, *, sample_weight=None, class_weight=None, n_iter_no_change=10, tol=1e-4):
        """``Trainer.partial_fit`` on every rank (collective)."""
        kw = dict(sample_weight=sample_weight, class_weight=class_weight, n_iter_no_change=n_iter_no_change, tol=tol)
        return self._collectively("partial_fit", super().partial_fit, (X, y), kw)

    def _collectively(self, call, method, args, kw):
        """Run ``method``: its checks agreed across ranks, then training; an exception that only this
        rank raises is passed to the others in the checks, and ends the job once training has begun."""
        self._in_setup = True
        try:
            self._agree(call, args[2:], kw)
            return method(*args, **kw)
        except BaseException as exc:
            if not is_collective(exc):
                if self._in_setup and isinstance(exc, Exception):
                    self.comm.exchange(error=exc)  # re-raises exc here, and a RankError on the others
                elif self.comm.size > 1:  # the others wait in a collective that this rank will not join
                    interrupted = f"gpumlp: rank {self.comm.rank} of {self.comm.size} interrupted"
                    self.comm.abort(None if isinstance(exc, KeyboardInterrupt) else exc,
                                    message=interrupted if isinstance(exc, KeyboardInterrupt) else None)
            raise
        finally:
            self._in_setup = False

    def _agree(self, call, args, kw):
        m, comm = self.model, self.comm
        problem = comm.model_problem(m)
        if problem:
            raise ValueError(problem)
        settings = {f"model.{k}": _plain(v) for k, v in m.get_params().items() if k != "seed"}
        settings.update({"call": call, "engine": comm.engine, "sharded": self.sharded, "batch_size": self.batch_size,
                         "lr": self.lr, "shuffle": self.shuffle, "train_score": self.train_score})
        settings.update({f"{call}({k})": _plain(v) for k, v in zip(("epochs",), args)})
        settings.update({f"{call}({k})": _plain(v) for k, v in sorted(kw.items())})
        comm.require_identical("the model settings and training arguments", settings,
                               hint="Every rank must build the same model and make the same call (the data aside)")
        if self.sharded and self.batch_size < comm.size:
            raise mark_collective(ValueError(
                f"sharded training needs batch_size >= the number of ranks ({comm.size}), got {self.batch_size}: "
                f"every rank takes a share of each batch"))

    # ------------------------------------------------------------------ data
    def prepare(self, X, y, sample_weight=None, class_weight=None):
        m = self.model
        source = as_stream(X)  # a StreamSource or View, or a re-iterable of (X_chunk, y_chunk) pairs
        if source is not None:
            return self._stream_prepare(source, y, sample_weight, class_weight)
        if self.sharded and isinstance(class_weight, str) and class_weight == "balanced" and m.loss == "cross_entropy":
            class_weight = self._balanced(y)
        data = super().prepare(X, y, sample_weight, class_weight)
        if self.sharded:
            self.comm.require_identical("the training data's layouts", (data.x.shape[1:], str(data.x.dtype),
                                        data.y.shape[1:], str(data.y.dtype), data.w is None),
                                        hint="Sample weights are given on every rank or on none")
        else:
            self.comm.require_identical("the training data", {"X": describe_array(data.x), "y": describe_array(data.y),
                                                               "w": describe_array(data.w)},
                                        hint="With comm=, every rank passes the same X, y and weights; "
                                             "with sharded=True each rank passes its own part")
        return data

    def _stream_prepare(self, X, y, sample_weight, class_weight):
        """A streamed source: sharded only, each rank reading its own chunks (every P-th, ``rank_chunks``)."""
        if not self.sharded:
            raise ValueError("a streamed source under comm= needs sharded=True: each rank reads its own chunks of "
                             "the file (replicated data would have every rank read all of it)")
        data = super().prepare(X, y, sample_weight, class_weight)
        self.comm.require_identical("the training data's layouts", (data.x.n_features, str(data.x.transform.dtype)),
                                    hint="Every rank streams the same file (or files of the same columns)")
        return data

    def _stream_data(self, X, y, sample_weight, class_weight, chunks=None):
        if not isinstance(X, View) and X.source.format != "chunks":  # a file: this rank's chunks (a View
            chunks = rank_chunks(X.source, self.comm)                 # brings its own; pairs are the rank's part)
        return super()._stream_data(X, y, sample_weight, class_weight, chunks=chunks)

    def _balanced(self, y):
        """class_weight="balanced" from the label counts of all parts, as a {label: weight} dict."""
        m, q = self.model, self.model.sizes[-1]
        labels = m.array_backend.to_host(m.targets_to_device(y, np.shape(y)[0])[0])
        counts = np.sum(self.comm.exchange(np.bincount(np.asarray(labels), minlength=q)), axis=0)
        present = counts > 0
        per_class = np.ones(q)
        per_class[present] = counts.sum() / (present.sum() * counts[present])
        return {c: float(per_class[c]) for c in range(q)}

    def _device_weights(self, w):
        if not self.sharded or w is None:
            return super()._device_weights(w)
        # The parts' weights on one scale: rescaled by the power of two of the largest weight of all
        # parts (each part's own would weigh the ranks' shares wrongly against each other).
        # (validation.rescaled_weights' rule, with the largest weight of all parts.)
        top = max(self.comm.exchange(float(np.max(w))))
        w = np.ldexp(np.asarray(w, np.float64), 1 - int(np.frexp(top)[1]))
        return self.model.array_backend.asarray(w, dtype=self.model.dtype)

    def _data(self, x, y, w):
        data = super()._data(x, y, w)
        counts = np.asarray(self.comm.exchange(data.n) if self.sharded else [data.n], np.int64)
        w_host = None if w is None else np.asarray(self.model.array_backend.to_host(w), np.float64)
        return ParallelData(data.x, data.y, data.w, data.source, counts=counts, w_host=w_host)

    def _validation(self, validation_data):
        val = super()._validation(validation_data)
        if val is not None and not self.sharded:
            self.comm.require_identical("the validation data", dict(zip(("X", "y", "w"),
                                                                         map(describe_array, val))),
                                        hint="With comm=, every rank passes the same validation_data")
        elif val is not None and val[2] is not None:  # the parts' validation weights on one scale, as above
            w = check_sample_weight(validation_data[2], val[0].shape[0], "validation_data[2]")
            val = (*val[:2], self._device_weights(w))  # (given on every rank: the settings check says so)
        return val

    def _hold_out(self, data, fraction, seed):
        if self.sharded:  # each part its own held-out fraction
            seed = int(np.random.default_rng([seed, self.comm.rank]).integers(2**63))
        return super()._hold_out(data, fraction, seed)

    def _open_monitor(self, monitor):
        if self._in_setup:  # every check has passed on this rank: wait for the others, then start alike
            self.comm.exchange()
            self._in_setup = False
            self._broadcast_state()
        super()._open_monitor(monitor)

    def _broadcast_state(self):
        """Rank 0's whole state (``MLP.state_dict``) onto every rank."""
        comm, m = self.comm, self.model
        if comm.size == 1:
            return
        s = m.state_dict() if comm.rank == 0 else None
        numeric = None if s is None else {k: v for k, v in s.arrays.items() if v.dtype.kind in "biuf"}
        head = None if s is None else (s.meta, {k: v for k, v in s.arrays.items() if k not in numeric},
                                       {k: (v.shape, v.dtype.str) for k, v in numeric.items()})
        meta, arrays, layout = comm.bcast_object(head)
        for name in sorted(layout):
            shape, dtype = layout[name]
            buf = np.ascontiguousarray(numeric[name]) if comm.rank == 0 else np.empty(shape, dtype)
            arrays[name] = comm.bcast(buf)
        if comm.rank != 0:
            m.load_state_dict(ModelState(meta, arrays))

    # ------------------------------------------------------------------ the epoch
    def _plan(self, data):
        m, comm, B = self.model, self.comm, self.batch_size
        if not self.sharded:  # the single process's permutation, from the same RNG state
            order = m.rng.permutation(data.n) if self.shuffle else None
            plan = replicated_plan(np.arange(data.n) if order is None else order, B, comm.size, comm.rank,
                                   data.w_host)
            if order is None and comm.size == 1:
                plan.order = None  # the rows in their own order: slices, as one process takes them
            return plan
        seed = int(m.rng.integers(2**63)) if self.shuffle else None
        rank_rng = None if seed is None else np.random.default_rng([seed, comm.rank])
        if isinstance(data.x, View):  # a stream's epoch order is a seed (its chunks' order, its buffer's draws)
            return sharded_plan(data.counts, B, comm.rank, None if seed is None else int(rank_rng.integers(2**63)))
        order = None if seed is None else rank_rng.permutation(data.n)
        sums = None
        if data.w_host is not None:
            w = data.w_host if order is None else data.w_host[order]
            share = int(split_sizes(B, comm.size)[comm.rank])
            sums = comm.exchange(np.add.reduceat(w, np.arange(0, data.n, share)))
        return sharded_plan(data.counts, B, comm.rank, order, sums)

    def _run_epoch(self, data, lr):
        """One epoch over this rank's shards, every step's gradient summed over the ranks; the mean J
        over the epoch's global batches, weighted by their sizes (each J taken before its update)."""
        m, comm = self.model, self.comm
        backend, xp = m.array_backend, m.array_backend.xp
        plan = self._plan(data)
        steps, mine, shares = plan.sizes.shape[0], plan.sizes[:, comm.rank], plan.shares[:, comm.rank]
        step = m.training_step(max(plan.chunk, 1))
        batches = data.source.epoch(plan.order, plan.chunk) if plan.chunk else iter(())
        start = _EpochStart(m)
        Js = xp.zeros(steps + 1, m.dtype)  # this rank's J of each step (0 for an empty shard), then θ finite
        on_step, every = self.on_step, self.step_interval or max(1, steps // 100)
        for k in range(steps):
            batch = next(batches) if mine[k] else None
            if batch is not None and batch[0].shape[0] != mine[k]:
                raise RuntimeError(f"internal error: step {k} got {batch[0].shape[0]} rows, the plan says {mine[k]}")
            J = parallel_step(step, comm, batch, float(shares[k]), m.optimizer, lr)
            if J is not None:
                Js[k] = J
            if on_step is not None and (k + 1) % every == 0:
                on_step(k + 1, steps)  # host integers only, as in one process
        Js[-1] = xp.isfinite(m.theta).all()
        local = backend.to_host(Js).astype(np.float64)  # the epoch's one read-back
        J = np.sum(comm.exchange(local[:-1] * shares), axis=0)  # the global J of each step, in rank order
        try:
            bad = np.flatnonzero(~np.isfinite(J))
            if bad.size:
                self._diverged(start, int(bad[0]), f"the objective J became {float(J[bad[0]])}")
            if local[-1] != 1:
                self._diverged(start, steps - 1, "the weights became NaN or infinite in the update")
        except DivergenceError as exc:  # decided from global values: every rank raises it
            raise mark_collective(exc) from None
        return float(J @ plan.batches) / int(plan.batches.sum())

    # ------------------------------------------------------------------ the end of an epoch
    def _epoch_samples(self, data):
        return int(data.counts.sum())

    def _evaluate(self, record, data, val):
        m, comm = self.model, self.comm
        if not self.sharded:
            super()._evaluate(record, data, val)
        else:
            if self.train_score:
                record["score"] = global_score(m, comm, data.x, data.y, data.w)
            if val is not None:
                record["val_loss"] = global_objective(m, comm, *val)
                record["val_score"] = global_score(m, comm, *val)
        measured = {k: record[k] for k in ("loss", "score", "val_loss", "val_score")}
        theirs = comm.exchange((digest(m.theta), measured))
        differ = [r for r, (d, _) in enumerate(theirs) if d != theirs[0][0]]
        if differ:
            raise mark_collective(RuntimeError(
                f"after epoch {m.epochs_} the parameters of rank(s) {differ} differ from rank 0's: the replicas "
                f"are no longer bit-identical (an all-reduce that does not give every rank the same sum?)"))
        record.update(theirs[0][1])  # rank 0's measurements decide on every rank

    def _callbacks(self, record):
        asked, error = False, None
        try:
            asked = super()._callbacks(record)
        except Exception as exc:  # noqa: BLE001 - every rank must learn of it
            error = exc
        return any(self.comm.exchange(bool(asked), error=error))
