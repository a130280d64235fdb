"""What every baseline model shares: training shingles, the CQT front end, ``forward`` and the
retrieval distances (the common interface of spec section 9.1)."""

import importlib
import os
import re

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from lib import tensor_ops
from lib.layers import ByteCoverBody, GeMPool, cqt_shingles, make_cqt, max_abs_normalise


class SegmentModel(nn.Module):
    """Subclasses set ``segment_metric`` / ``default_redux`` / padding modes and define ``embed``
    and ``loss``. ``conf`` is the config's ``model`` section."""

    segment_metric = "cos"  # distance between segment embeddings ("cos", "sqeuc" or "nsqeuc")
    default_redux = "min"  # reduction of segment distances to a track distance
    frame_pad = "zeros"  # completes the last shingle of a waveform
    min_pad = "zeros"  # completes a shingle shorter than the training length

    def __init__(self, conf, sr=16000):
        super().__init__()
        self.conf = conf if isinstance(conf, DictConfig) else OmegaConf.create(conf)
        self.sr = sr
        self.minlen = float(self.conf.shingling.len)
        cqt = self.conf.cqt
        self.cqt = make_cqt(
            sr, cqt.hoplen, cqt.noctaves, cqt.get("nbinsoct", 12), cqt.get("fscale", 1.0)
        )
        # CLEWS configs give one pooling width (= stride), the baselines' {len, hop}
        pool = cqt.pool
        if isinstance(pool, int):
            self.cqtpool = nn.AvgPool1d(pool, stride=pool)
        else:
            self.cqtpool = nn.AvgPool1d(pool.len, stride=pool.hop)

    def get_shingle_params(self):
        """Training shingle (length, hop) in seconds."""
        return float(self.conf.shingling.len), float(self.conf.shingling.hop)

    def prepare(self, h, shingle_len=None, shingle_hop=None):
        """Waveforms (B, T) -> CQT shingles (B, S, F, T'). Lengths in seconds; None = training."""
        slen, shop = self.get_shingle_params()
        slen = slen if shingle_len is None else float(shingle_len)
        shop = shop if shingle_hop is None else float(shingle_hop)
        return cqt_shingles(
            h,
            self.sr,
            slen,
            shop,
            self.minlen,
            self.cqt,
            self.cqtpool,
            self.frame_pad,
            self.min_pad,
        )

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


class ByteCoverModel(SegmentModel):
    """What ByteCover2x and ByteCover3x share: the ResNet50-IBN CNN at width ``ncha`` on
    max-abs normalised CQT shingles, GeM pooling, cosine retrieval, zero-padded framing with
    repeat-padded short shingles, and a classifier over ``maxcliques`` cliques."""

    segment_metric = "cos"
    frame_pad = "zeros"
    min_pad = "repeat"

    def __init__(self, conf, sr=16000):
        super().__init__(conf, sr)
        self.body = ByteCoverBody(int(self.conf.ncha))
        self.pool = GeMPool()
        self.maxcliques = int(self.conf.maxcliques)

    def pooled(self, h):
        """CQT shingles (B, S, F, T') -> pooled CNN features (B * S, ncha)."""
        nb, ns, nf, nt = h.shape
        return self.pool(self.body(max_abs_normalise(h.reshape(nb * ns, 1, nf, nt))))


def available_models():
    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models")
    return sorted(
        name[:-3] for name in os.listdir(folder) if name.endswith(".py") and name != "__init__.py"
    )


def build_model(conf, sr=16000):
    """``models/<conf.name>.py``'s ``Model(conf, sr)``; ``conf`` is a config's ``model`` section.
    An unknown name is a ``ValueError`` listing the available ones."""
    name = str(conf.get("name"))
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or name not in available_models():
        raise ValueError(
            f"model.name={name!r}: unknown model; available: {', '.join(available_models())}"
        )
    module = importlib.import_module(f"models.{name}")
    return module.Model(conf, sr=sr)
