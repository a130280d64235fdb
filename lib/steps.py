"""The two kinds of training step behind one interface (``Step``): the supervised step (the
model's own loss on versions of labelled works) and the pretext step (a self-supervised method of
``lib/ssl.py`` on unlabelled views of every track). ``lib/training.py``'s loop drives either."""

import torch

from lib import ssl
from lib.config import ConfigError


def stack_versions(batch):
    """Dataset batch [cliques (B,), ids_1 (B,), audio_1 (B, T), ids_2, audio_2, ...] ->
    version-major (cliques (nB,), ids (nB,), audio (nB, T))."""
    nversions = (len(batch) - 1) // 2
    cliques = batch[0].repeat(nversions)
    ids = torch.cat(list(batch[1::2]))
    audio = torch.cat(list(batch[2::2]))
    return cliques, ids, audio


def supervised_batch(model, net, augment, batch, shingle_hop=None):
    """One labelled batch: stack versions, augment (with ``augment``: training), CQT shingles
    (training hop, or ``shingle_hop`` seconds), embed, loss. Returns (cliques, ids, z, loss,
    logs); ``net`` is the bare module, ``model`` its wrapper."""
    cliques, ids, audio = stack_versions(batch)
    with torch.inference_mode():
        if augment is not None:
            audio = augment.waveform(audio)
        h = net.prepare(audio, shingle_hop=shingle_hop)
        if augment is not None:
            h = augment.cqt(h)
    z, extra = model.embed(h.clone())
    loss, logs = net.loss(cliques, ids, z, extra=extra)
    return cliques, ids, z, loss, logs


class Step:
    """What the training loop needs of a kind of step. ``net`` is the bare model (validated,
    saved as ``model``), ``augment`` the training augmentations."""

    forward_methods = ()  # methods of ``module`` that the wrapper must route besides forward

    def __init__(self, net, augment):
        self.net = net
        self.augment = augment

    def module(self):
        """What the optimiser and the process wrapper (DDP) see: every trainable parameter."""
        return self.net

    def parameters(self):
        """What the optimiser trains: every parameter, as the original (its optimiser states
        count CoverHunter-C's frozen bias too)."""
        return list(self.net.parameters())

    def begin(self, total_steps):
        """Before the first step: the optimisation steps of the whole run."""

    def train_mode(self, wrapped):
        wrapped.train()

    def loss(self, wrapped, batch, epoch):
        """(scalar loss, {name: detached scalar}) of a dataset batch; ``wrapped`` is
        ``module()`` as the process wrapper runs it."""
        raise NotImplementedError

    def after_step(self, step):
        """After optimisation step ``step`` of the run (from 0)."""

    def validation_module(self, wrapped):
        """What validation embeds with."""
        return wrapped

    def state(self):
        """What a checkpoint keeps besides the model's weights and the optimiser's state."""
        return {}

    def load_state(self, state, source):
        """Take back ``state()`` from a checkpoint read from ``source`` (a resume)."""

    def side_files(self, state):
        """{file name in the run folder: checkpoint dict} written with every last checkpoint."""
        return {}


class SupervisedStep(Step):
    """The model's loss on the versions of a batch's works; ``freeze``: training.freeze
    (encoder: only the model's projection trains, the encoder in eval mode)."""

    forward_methods = ("embed",)

    def __init__(self, net, augment, freeze="none"):
        super().__init__(net, augment)
        self.freeze = freeze
        if freeze == "encoder":
            prefix = net.projection_module + "."
            for name, param in net.named_parameters():
                param.requires_grad_(name.startswith(prefix))

    def parameters(self):
        params = super().parameters()
        if self.freeze == "encoder":
            params = [p for p in params if p.requires_grad]
        return params

    def train_mode(self, wrapped):
        wrapped.train()
        if self.freeze == "encoder":  # a linear probe: frozen statistics too
            self.net.eval()
            self.net.get_submodule(self.net.projection_module).train()

    def loss(self, wrapped, batch, epoch):
        return supervised_batch(wrapped, self.net, self.augment, batch)[3:]


class PretextStep(Step):
    """A self-supervised method (``ssl.method``) on the views of every track (version-major, as
    the dataset gives them), each augmented on its own; no label is read. Its heads and teacher
    live in the checkpoint under ``ssl``; ``encoder.pt`` keeps the encoder alone."""

    def __init__(self, net, augment, method, hidden, out):
        super().__init__(net, augment)
        self.pretext = ssl.make_pretext(method, net, total_steps=0, hidden=hidden, out=out)
        self.whole = ssl.EncoderWithPretext(net, self.pretext)

    def module(self):
        return self.whole

    def parameters(self):
        return super().parameters() + self.pretext.head_parameters()

    def begin(self, total_steps):
        self.pretext.total_steps = total_steps  # the EMA momentum spans the real run

    def loss(self, wrapped, batch, epoch):
        _, _, audio = stack_versions(batch)
        nviews = (len(batch) - 1) // 2
        with torch.inference_mode():
            h = self.augment.cqt(self.net.prepare(self.augment.waveform(audio)))
        return wrapped(h.clone(), nviews, epoch)

    def after_step(self, step):
        self.pretext.after_step(self.net, step)

    def validation_module(self, wrapped):
        return self.net  # evaluation needs no gradient synchronisation

    def state(self):
        return {"ssl": self.pretext.state_dict()}

    def load_state(self, state, source):
        if "ssl" not in state:
            raise ConfigError(f"{source}: no ssl state to resume a pre-training from")
        self.pretext.load_state_dict(state["ssl"])

    def side_files(self, state):
        return {"encoder.pt": {"model": state["model"]}}  # weights only: a fine-tune's start


def make_step(conf, net, augment):
    """The step of a run's config: a pretext step with ``ssl.method``, else supervised."""
    if conf.ssl.method == "none":
        return SupervisedStep(net, augment, conf.training.freeze)
    return PretextStep(net, augment, conf.ssl.method, conf.ssl.hidden, conf.ssl.out)
