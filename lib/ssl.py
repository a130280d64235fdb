"""Self-supervised pre-training of an encoder of ``models/`` (CLEWS by default) with the methods
of the multi-view benchmark (``../shared/reference/multiview_ssl.md``, sections 3 and 7):
one ``Pretext`` class per method (``PRETEXTS``, the table ``ssl.method`` picks from) holds what
the method adds on the encoder (projector, BYOL's predictor, the EMA teacher of BYOL and DINO,
DINO's centre) and computes its loss from V views of N tracks.

The encoder's track embedding is the mean over segments of ``model.embed`` (B, S, D) -> (B, D);
the heads sit on it (the reference's 2048 -> 2048 (BN, ReLU) -> 2048 (BN, ReLU) -> out layout,
sized from the encoder's D). ``clews`` uses no head: the encoder's own loss with every track its
own pseudo-clique and every view its own item, so the views are each other's only positives.
Nothing here reads a label. The heads are not part of the encoder's state dict: a checkpoint
keeps them apart (``state_dict`` of ``Pretext``) and ``encoder.pt`` leaves them out.
"""

import copy

import torch
import torch.distributed as dist
from torch import nn

from lib import ssl_losses as L
from lib.schema import SSL_METHODS

DINO_BOTTLENECK = 256
DINO_CLASSES = 4096
BYOL_PREDICTOR_HIDDEN = 256


def mlp_head(dims):
    """The reference's ``Head``: Linear (no bias), BatchNorm1d, ReLU for every width but the
    last, then a plain Linear without bias: dims = [in, hidden..., out]."""
    layers = []
    for i in range(len(dims) - 2):
        layers += [nn.Linear(dims[i], dims[i + 1], bias=False), nn.BatchNorm1d(dims[i + 1])]
        layers.append(nn.ReLU(inplace=True))
    layers.append(nn.Linear(dims[-2], dims[-1], bias=False))
    return nn.Sequential(*layers)


def gather_batch(x):
    """Rows of every process, in rank order, with gradients flowing back to each process's own
    rows (the negatives of the global batch); ``x`` itself with one process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()))


def track_embeddings(model, h):
    """Segment inputs (B, S, ...) -> (segment embeddings (B, S, D), track embeddings (B, D))."""
    z, _ = model.embed(h)
    return z, z.mean(dim=1)


class Pretext(nn.Module):
    """What every method provides: its trainable heads and state on ``encoder`` (a
    ``SegmentModel``), and ``objective``, the loss of the views' embeddings. ``loss`` adds the
    logs every method shares.

    ``total_steps``: the optimisation steps of the whole run, over which the EMA momentum of a
    teacher rises from 0.996 to 1 (the reference's fix of a schedule sized to 999 epochs).
    """

    name: str  # the method's ssl.method

    def __init__(self, encoder, total_steps, hidden=2048, out=2048):
        super().__init__()
        self.total_steps = total_steps
        dims = self.projector_dims(encoder.embedding_dim, hidden, out)
        self.projector = None if dims is None else mlp_head(dims)
        self.teacher = None

    def projector_dims(self, dim, hidden, out):
        """Widths [in, hidden..., out] of the projector on D = ``dim`` (None: no projector)."""
        return [dim, hidden, hidden, out]

    def head_parameters(self):
        """What the optimiser trains besides the encoder (not the teacher)."""
        return [
            p for name, p in self.named_parameters() if not name.startswith("teacher.")
        ]

    def loss(self, model, encoder, h, nviews, epoch):
        """(loss, logs) for inputs ``h`` (V N, S, ...) of V = ``nviews`` views of N tracks,
        view-major (rows v N .. v N + N - 1 are view v). ``model`` is the encoder as the
        training wrapper runs it, ``encoder`` the bare module."""
        z, e = track_embeddings(model, h)
        count = e.shape[0] // nviews
        logs = {"s_std": L.dimension_std(e), "s_rank": L.effective_rank(e)}
        logs["s_agree"] = L.view_agreement(list(e.split(count)))
        loss = self.objective(encoder, h, z, e, count, epoch, logs)
        logs["l_main"] = loss.detach()
        return loss, {k: torch.as_tensor(v).detach().float() for k, v in logs.items()}

    def objective(self, encoder, h, z, e, count, epoch, logs):
        """The method's loss of segment embeddings ``z`` (V N, S, D) and track embeddings ``e``
        (V N, D) of inputs ``h``; ``count`` = N tracks; may add entries to ``logs``."""
        raise NotImplementedError

    def projected_views(self, e, count):
        """The projections of every view, (N, out) each, gathered over the processes."""
        return [gather_batch(v) for v in self.projector(e).split(count)]

    def after_step(self, encoder, step):
        """After optimisation step ``step`` (from 0); nothing without a teacher."""


class Contrastive(Pretext):
    name = "contrastive"

    def objective(self, encoder, h, z, e, count, epoch, logs):
        return L.nt_xent(self.projected_views(e, count))


class Barlow(Pretext):
    name = "barlow"

    def objective(self, encoder, h, z, e, count, epoch, logs):
        return L.barlow_twins_loss(self.projected_views(e, count))


class Vicreg(Pretext):
    name = "vicreg"

    def objective(self, encoder, h, z, e, count, epoch, logs):
        pairs = L.vicreg_pair_terms(self.projected_views(e, count))  # once: loss and logs
        inv, var, _ = zip(*pairs)
        logs.update({"l_inv": sum(inv) / len(inv), "l_var": sum(var) / len(var)})
        return L.vicreg_from_terms(pairs)


class Clews(Pretext):
    """No head: the encoder's own loss with every track its own pseudo-clique and every view its
    own item."""

    name = "clews"

    def projector_dims(self, dim, hidden, out):
        return None

    def objective(self, encoder, h, z, e, count, epoch, logs):
        nviews = e.shape[0] // count
        tracks = torch.arange(count, device=e.device).repeat(nviews)
        items = torch.arange(nviews * count, device=e.device)
        loss, inner = encoder.loss(tracks, items, z)
        logs.update({k: v for k, v in inner.items() if k != "l_main"})
        return loss


class WithTeacher(Pretext):
    """A method whose targets come from an exact copy of the student (encoder and projector)
    that only an exponential moving average moves, kept out of the optimiser."""

    def add_teacher(self, encoder):
        teacher = nn.ModuleDict(
            {"encoder": copy.deepcopy(encoder), "projector": copy.deepcopy(self.projector)}
        )
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.teacher = teacher

    @torch.no_grad()
    def teacher_outputs(self, h, count):
        """The teacher's projections of every view (gathered), without gradients."""
        _, e = track_embeddings(self.teacher["encoder"], h)
        return [gather_batch(v) for v in self.teacher["projector"](e).split(count)]

    @torch.no_grad()
    def after_step(self, encoder, step):
        """Move the teacher towards the student."""
        momentum = L.ema_momentum(step + 1, self.total_steps)
        L.ema_update(self.teacher["encoder"], encoder, momentum)
        L.ema_update(self.teacher["projector"], self.projector, momentum)


class Byol(WithTeacher):
    name = "byol"

    def __init__(self, encoder, total_steps, hidden=2048, out=2048):
        super().__init__(encoder, total_steps, hidden, out)
        self.predictor = mlp_head([out, BYOL_PREDICTOR_HIDDEN, out])
        self.add_teacher(encoder)

    def objective(self, encoder, h, z, e, count, epoch, logs):
        targets = self.teacher_outputs(h, count)
        predictions = self.predictor(self.projector(e)).split(count)
        return L.byol_loss([gather_batch(v) for v in predictions], targets)


class Dino(WithTeacher):
    """The projector ends in DINO's bottleneck and prototype layer (``out`` does not apply)."""

    name = "dino"

    def __init__(self, encoder, total_steps, hidden=2048, out=2048):
        super().__init__(encoder, total_steps, hidden, out)
        self.dino = L.DinoLoss(DINO_CLASSES)
        self.add_teacher(encoder)

    def projector_dims(self, dim, hidden, out):
        return [dim, hidden, hidden, DINO_BOTTLENECK, DINO_CLASSES]

    def objective(self, encoder, h, z, e, count, epoch, logs):
        targets = self.teacher_outputs(h, count)
        loss = self.dino(self.projected_views(e, count), targets, epoch)
        temperature = L.dino_teacher_temperature(epoch)
        centre = self.dino.centre
        logs["s_tentropy"] = L.mean_entropy(torch.cat(targets), temperature, centre)
        logs["s_centre"] = centre.norm()
        return loss


PRETEXTS = {cls.name: cls for cls in (Contrastive, Byol, Barlow, Vicreg, Dino, Clews)}
METHODS = tuple(PRETEXTS)
TEACHER_METHODS = tuple(n for n, cls in PRETEXTS.items() if issubclass(cls, WithTeacher))
assert METHODS == SSL_METHODS[1:], "lib.schema.SSL_METHODS lists the methods of this table"


def make_pretext(method, encoder, total_steps, hidden=2048, out=2048):
    """The ``Pretext`` of ``method`` (a name of ``PRETEXTS``) on ``encoder``."""
    if method not in PRETEXTS:
        raise ValueError(f"ssl.method={method!r}: one of {', '.join(METHODS)}")
    return PRETEXTS[method](encoder, total_steps, hidden=hidden, out=out)


class EncoderWithPretext(nn.Module):
    """The encoder and its pretext as one module, so that the training wrapper (DDP) sees every
    trainable parameter: ``forward(h, nviews, epoch)`` is ``Pretext.loss``."""

    def __init__(self, encoder, pretext):
        super().__init__()
        self.encoder = encoder
        self.pretext = pretext

    def forward(self, h, nviews, epoch):
        return self.pretext.loss(self.encoder, self.encoder, h, nviews, epoch)
