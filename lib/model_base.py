"""The interface every model provides (``SegmentModel``: the original code's ``prepare``,
``embed``, ``forward``, ``loss``, ``distances``, ``get_shingle_params``, plus the embedding width,
segment metric, default reduction and classifier size that callers read), what the baselines
share (training shingles, the CQT front end, the ByteCover CNN), and ``build_model``.

Adding a model is one file ``models/<name>.py`` with a ``Model(SegmentModel)`` and a config."""

import abc
import dataclasses

import torch
from torch import nn

from lib import config, registry, schema, tensor_ops
from lib.layers import (
    bytecover_frontend,
    bytecover_resblocks,
    cqtnet_blocks,
    make_cqt,
    max_abs_normalise,
)


class SegmentModel(nn.Module, abc.ABC):
    """What every model provides. Subclasses set ``segment_metric`` / ``default_redux`` /
    padding modes, set ``embedding_dim`` (and ``maxcliques`` if they classify) in ``__init__``
    and define ``embed`` and ``loss``. ``conf`` is the config's ``model`` section, typed by the
    model's ``Config`` (a ``lib.schema.ModelConfig`` dataclass: the keys of its config section).

    Module attribute names are the original code's, so that its checkpoints load with
    ``strict=True`` and checkpoints written here load into it; ``legacy_key`` maps the names that
    this project used before (see ``lib.checkpoint.load_model_state``)."""

    # distance between segment embeddings, one of SEGMENT_METRICS (the retrieval engine computes
    # it with matrix products)
    segment_metric = "cos"
    default_redux = "min"  # reduction of segment distances to a track distance
    frame_pad = "zeros"  # completes the last shingle of a waveform
    min_pad = "zeros"  # completes a shingle shorter than the training length
    # CLEWS keeps its CQT and time pooling in one Sequential (state-dict names ``cqt.0.*``), the
    # baselines the CQT alone (``cqt.*``) with a parameter-free pooling beside it
    cqt_with_pooling = False
    # what ``prepare`` takes: "audio" waveforms (B, T) at ``sr`` Hz, or "pcp" pitch-class
    # features (B, 12, frames) of a feature dataset at ``sr`` frames per second
    input_kind = "audio"
    # "cqt": ``__init__`` builds ``cqt`` / ``cqtpool`` from the config's ``cqt`` section and
    # ``prepare`` applies them; "own": the model builds its own front end and ``prepare``
    front_end = "cqt"
    # False: a frozen, pre-trained embedding that train.py refuses (its ``loss`` is never called)
    trainable = True
    # the submodule that maps pooled features to the embedding (None: not declared); with
    # training.freeze=encoder only it trains
    projection_module = None
    # seconds: the only window length the model embeds (None: any length)
    fixed_window = None
    embedding_dim: int  # width D of the (B, S, D) embeddings that ``embed`` returns
    maxcliques = None  # rows of the clique classifier (None: the model has none)
    Config: type  # the schema of the model's config section (a schema.ModelConfig dataclass)

    def __init__(self, conf, sr=16000):
        super().__init__()
        self.conf = config.typed(self.Config, conf, prefix="model.")
        config.check_values(self.conf, self.Config, prefix="model.")
        self.sr = sr
        self.minlen = self.conf.shingling.len
        if self.front_end == "cqt":
            self.cqt, self.cqtpool = self.cqt_front_end()

    def cqt_front_end(self):
        """(CQT, pooling) of the config's ``cqt`` section; CLEWS keeps both in ``cqt``."""
        cqt = self.conf.cqt
        transform = make_cqt(self.sr, cqt.hoplen, cqt.noctaves, cqt.nbinsoct, cqt.fscale)
        # CLEWS configs give one pooling width (= stride), the baselines' {len, hop}
        pool = cqt.pool
        if isinstance(pool, int):
            pooling = nn.AvgPool1d(pool, stride=pool)
        else:
            pooling = nn.AvgPool1d(pool.len, stride=pool.hop)
        if self.cqt_with_pooling:
            return nn.Sequential(transform, pooling), nn.Identity()
        return transform, pooling

    def select_weights(self, weights):
        """The entries of a weights file (a state dict, names as saved) that are this model's,
        under this model's names: the file of another codebase may hold more (heads, a teacher)
        under prefixes of its own. Identity here; ``lib.checkpoint.load_model_state`` calls it
        before checking the names."""
        return weights

    @staticmethod
    def legacy_key(key):
        """The current name of a state-dict entry saved under ``key`` by an earlier version of
        this project (identity where nothing was renamed)."""
        return key

    @abc.abstractmethod
    def embed(self, h):
        """CQT shingles (B, S, F, T') -> (embeddings (B, S, embedding_dim), extra or None): what
        ``loss`` needs besides the embeddings (e.g. pre-normalisation features)."""

    @abc.abstractmethod
    def loss(self, labels, ids, z, extra=None):
        """(scalar loss, dict of detached scalars to log) for embeddings ``z`` (B, S, D) of B
        tracks with clique ``labels`` (B,) and song ``ids`` (B,)."""

    def get_shingle_params(self):
        """Training shingle (length, hop) in seconds."""
        return self.conf.shingling.len, self.conf.shingling.hop

    def shingles(self, h, shingle_len=None, shingle_hop=None):
        """Signals (..., T) at ``sr`` -> shingles (..., S, L): the length every hop (seconds;
        None = training), the last one completed with ``frame_pad``, each at least the training
        length (completed with ``min_pad``)."""
        slen, shop = self.get_shingle_params()
        slen = slen if shingle_len is None else shingle_len
        shop = shop if shingle_hop is None else shingle_hop
        sr = self.sr
        h = tensor_ops.get_frames(h, int(sr * slen), int(sr * shop), pad_mode=self.frame_pad)
        return tensor_ops.force_length(
            h, int(sr * self.minlen), dim=-1, pad_mode=self.min_pad, allow_longer=True
        )

    def window_features(self, x):
        """Windows (N, L) samples at ``sr`` -> front-end features (N, F, T'): the CQT and its
        pooling. What ``prepare`` does after framing, and where an exported model starts
        (``lib.export``: the runtime frames the waveform itself)."""
        return self.cqtpool(self.cqt(x))

    def prepare(self, h, shingle_len=None, shingle_hop=None):
        """Waveforms (B, T) -> feature shingles (B, S, F, T'). Lengths in seconds; None =
        training: ``shingles``, then ``window_features``."""
        h = self.shingles(h, shingle_len, shingle_hop)
        nb, ns, nt = h.shape
        h = self.window_features(h.reshape(nb * ns, nt))
        return h.view(nb, ns, h.size(-2), h.size(-1))

    def forward(self, h, shingle_len=None, shingle_hop=None):
        """Waveforms (B, T) -> embeddings (B, S, D)."""
        with torch.inference_mode():
            h = self.prepare(h, shingle_len=shingle_len, shingle_hop=shingle_hop)
        return self.embed(h.clone())[0]

    def distances(self, q, c, qmask=None, cmask=None, redux_strategy=None):
        """Track distances (Bq, Bc) between query (Bq, Sq, D) and candidate (Bc, Sc, D) segment
        embeddings; masks (Bq, Sq) / (Bc, Sc) are True for invalid segments."""
        bq, sq, dim = q.shape
        bc, sc, _ = c.shape
        dist = tensor_ops.pairwise_distance_matrix(
            q.float().reshape(bq * sq, dim), c.float().reshape(bc * sc, dim), self.segment_metric
        )
        dist = dist.view(bq, sq, bc, sc).permute(0, 2, 1, 3)
        mask = None
        if qmask is not None or cmask is not None:
            qmask = (
                torch.zeros(bq, sq, dtype=torch.bool, device=q.device) if qmask is None else qmask
            )
            cmask = (
                torch.zeros(bc, sc, dtype=torch.bool, device=c.device) if cmask is None else cmask
            )
            mask = qmask[:, None, :, None] | cmask[None, :, None, :]
        redux = self.default_redux if redux_strategy is None else redux_strategy
        return tensor_ops.distance_tensor_redux(dist, redux, mask=mask)


class CqtNetModel(SegmentModel):
    """What CQTNet and DVINet+ share: the CQTNet stack (``block1`` .. ``block5``) at a width of
    the config on max-abs normalised CQT shingles, flattened; a ``zdim`` embedding; cosine
    retrieval with the ``min`` reduction (the defaults). Each adds its own linear map and loss."""

    def __init__(self, conf, sr=16000):
        super().__init__(conf, sr)
        width = self.stack_width()
        self.block1, self.block2, self.block3, self.block4, self.block5 = cqtnet_blocks(width)
        self.embedding_dim = self.conf.zdim

    @abc.abstractmethod
    def stack_width(self):
        """Channels of the first convolution, from the config (the models name the key apart)."""

    def features(self, h):
        """CQT shingles (B, S, F, T') -> flattened CNN features (B * S, 16 * width)."""
        nb, ns, nf, nt = h.shape
        h = max_abs_normalise(h.reshape(nb * ns, 1, nf, nt))
        for block in (self.block1, self.block2, self.block3, self.block4, self.block5):
            h = block(h)
        return h.flatten(1)


class ByteCoverModel(SegmentModel):
    """What ByteCover2x and ByteCover3x share: the ResNet50-IBN CNN at width ``ncha`` on
    max-abs normalised CQT shingles (``frontend``, ``resblocks``), cosine retrieval, zero-padded
    framing with repeat-padded short shingles, and a classifier over ``maxcliques`` cliques.
    Each subclass adds its own GeM pooling and head (their names differ in the original)."""

    segment_metric = "cos"
    frame_pad = "zeros"
    min_pad = "repeat"

    def __init__(self, conf, sr=16000):
        super().__init__(conf, sr)
        self.frontend = bytecover_frontend(self.conf.ncha)
        self.resblocks = bytecover_resblocks(self.conf.ncha)
        self.maxcliques = self.conf.maxcliques

    def features(self, h):
        """CQT shingles (B, S, F, T') -> CNN feature maps (B * S, ncha, F'', T'')."""
        nb, ns, nf, nt = h.shape
        return self.resblocks(self.frontend(max_abs_normalise(h.reshape(nb * ns, nf, nt))))

    @staticmethod
    def legacy_key(key):
        """Before the original names: ``body.0/1`` stem conv/BN, ``body.<4+i>`` block i with
        ``skip``."""
        parts = key.split(".")
        if parts[0] != "body":
            return key
        index = int(parts[1])
        if index < 4:
            return ".".join(["frontend", str(index + 1)] + parts[2:])
        rest = ["residual" if p == "skip" else p for p in parts[2:]]
        return ".".join(["resblocks", str(index - 4)] + rest)


def build_model(conf, sr=16000):
    """``models/<conf.name>.py``'s ``Model(conf, sr)``; ``conf`` is a config's ``model`` section
    (typed or not). An unknown name is a ``registry.UnknownModel`` (a ValueError) listing the
    available ones, a config that does not fit the model's schema a ``config.ConfigError``."""
    model = registry.model_class(conf.get("name"))(conf, sr=sr)
    check_interface(model)
    return model


SEGMENT_METRICS = ("cos", "sqeuc", "nsqeuc")


def check_interface(model):
    """A ``TypeError`` naming what a model leaves undeclared: an error of the model's code,
    found when it is built rather than deep inside an evaluation."""
    name = type(model).__module__
    if not isinstance(model, SegmentModel):
        raise TypeError(f"{name}.Model is not a lib.model_base.SegmentModel")
    declared = type(model).Config
    if not (dataclasses.is_dataclass(declared) and issubclass(declared, schema.ModelConfig)):
        raise TypeError(f"{name}.Model.Config is not a lib.schema.ModelConfig dataclass")
    if not isinstance(model.__dict__.get("embedding_dim"), int):
        raise TypeError(f"{name}.Model sets no integer embedding_dim in __init__")
    if model.segment_metric not in SEGMENT_METRICS:
        raise TypeError(
            f"{name}.Model.segment_metric {model.segment_metric!r}: not one of "
            f"{', '.join(SEGMENT_METRICS)}"
        )
    tensor_ops.parse_redux(model.default_redux)
