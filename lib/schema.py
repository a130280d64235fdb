"""The configuration schema: every key of a training config (``config/<dataset>-<model>.yaml``
plus ``key=value`` overrides) and of ``test.py``'s arguments, with its type, default and meaning.

The sections are dataclasses that OmegaConf turns into typed configs (``lib.config`` loads and
checks them), so code reads ``conf.training.batchsize`` as an ``int`` without casting it.
``MISSING`` marks a required key. Each model declares its own ``model`` section as
``Model.Config`` in ``models/<name>.py``, built from the pieces defined here. Help texts come from
the ``help`` of each field (``python train.py --help`` lists them).
"""

import dataclasses
import difflib
import re
import typing
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Union

from omegaconf import MISSING

from lib import reductions


@dataclass(frozen=True)
class Valid:
    """The values a key accepts beyond its type, checked by ``lib.config`` with the types: one of
    ``choices``, within [``low``, ``high``] (open ends with ``low_open`` / ``high_open``), or
    text that ``grammar`` accepts (it returns what is wrong, or None). A list value is checked
    item by item."""

    choices: tuple = ()
    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False
    grammar: Optional[Callable[[str], Optional[str]]] = None

    def problem(self, value):
        """What is wrong with ``value`` ("is not one of a, b", "must be > 0"), or None."""
        if isinstance(value, (list, tuple)):
            return next((p for p in map(self.problem, value) if p is not None), None)
        if self.choices and value not in self.choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in self.choices], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            return f"is not one of {', '.join(map(str, self.choices))}{hint}"
        if self.grammar is not None:
            return self.grammar(value)
        if self.low is not None and (value < self.low or self.low_open and value == self.low):
            return f"must be {self._low_bound()}"
        if self.high is not None and (value > self.high or self.high_open and value == self.high):
            return f"must be {self._high_bound()}"
        return None

    def _low_bound(self):
        return f"{'>' if self.low_open else '>='} {self.low:g}"

    def _high_bound(self):
        return f"{'<' if self.high_open else '<='} {self.high:g}"

    def bounds(self):
        """'>= 1', '> 0, <= 1', ... for ``--help`` ('' without bounds)."""
        parts = [self._low_bound()] if self.low is not None else []
        parts += [self._high_bound()] if self.high is not None else []
        return ", ".join(parts)


def one_of(*choices):
    return Valid(choices=tuple(choices))


def at_least(low):
    return Valid(low=low)


POSITIVE = Valid(low=0, low_open=True)
NON_NEGATIVE = Valid(low=0)
PROBABILITY = Valid(low=0, high=1)

# training.optim.sched: a name and its numbers, joined by "_" (lib.optim's schedules)
SCHEDULE_ARGUMENTS = {
    "flat": (0, 0),
    "plateau": (1, 1),
    "poly": (1, 1),
    "warmpoly": (2, 2),
    "sd": (1, 1),
    "wsd": (2, 2),
    "cosine": (0, 1),
    "step": (2, None),
}
SCHEDULES = ("flat", "plateau_N", "poly_P", "warmpoly_W_P", "sd_D", "wsd_W_D", "cosine_W")
SCHEDULES += ("step_F_E1_E2...",)
_NUMBER = re.compile(r"^\d+(\.\d*)?(e-?\d+)?$")


def schedule_problem(spec):
    """What is wrong with a schedule name (None: nothing)."""
    name, *numbers = str(spec).split("_")
    fewest, most = SCHEDULE_ARGUMENTS.get(name, (None, None))
    valid = fewest is not None and all(_NUMBER.match(n) for n in numbers)
    valid = valid and fewest <= len(numbers) and (most is None or len(numbers) <= most)
    if valid:
        return None
    close = difflib.get_close_matches(name, list(SCHEDULE_ARGUMENTS), n=1)
    hint = f"; did you mean {close[0]}_...?" if close and close[0] != name else ""
    return f"is not a schedule ({', '.join(SCHEDULES)}; N, P, W, D, F, E: numbers){hint}"


SCHEDULE = Valid(grammar=schedule_problem)


def redux_problem(name):
    """What is wrong with a segment-distance reduction's name (None: nothing)."""
    try:
        reductions.parse_redux(name)
    except ValueError as err:
        head, dash, rest = str(name).partition("-")
        close = difflib.get_close_matches(head, list(reductions.REDUCTIONS), n=1)
        hint = f"; did you mean {close[0]}{dash}{rest}?" if close and close[0] != head else ""
        return f"is not a reduction ({str(err).split('valid: ')[-1]}){hint}"
    return None


REDUCTION = Valid(grammar=redux_problem)
SPLITS = ("train", "valid", "test")


def key(default, help_text, valid=None):
    """A schema field: ``default`` (``MISSING`` = required; a list or dataclass is copied per
    config), the text ``--help`` shows for it and, if it has one, its ``Valid`` values."""
    meta = {"help": help_text, "valid": valid}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    if dataclasses.is_dataclass(default) and isinstance(default, type):
        return dataclasses.field(default_factory=default, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# choices of string keys (checked by lib.config when a config is loaded)
ACCELERATORS = ("auto", "cpu", "cuda", "gpu", "mps")
LOGGERS = ("tensorboard", "csv", "wandb")  # training logs; the fork's configs said "wandb"
PAD_MODES = ("repeat", "zeros", "crazy")
MONITOR_MODES = ("max", "min")
MONITOR_QUANTITIES = ("m_MAP", "m_MR1", "m_ARP", "m_COMP")
OPTIMIZERS = ("adam", "adamw", "sgd")
SSL_VIEWS = ("same-passage", "different-time")
SSL_METHODS = ("none", "contrastive", "byol", "barlow", "vicreg", "dino", "clews")  # lib.ssl's
FREEZE = ("none", "encoder")
POSITIVE_MINING = ("random", "easy", "hard")
NEGATIVE_MINING = ("random", "semihard", "hard", "move_legacy_semihard")
# segment pairs per distance block of the retrieval engine: 32 MiB of fp32 distances
DEFAULT_MAX_ELEMENTS = 2**23


###################################################################################################
# training config sections


@dataclass
class PathConfig:
    cache: str = key("cache/", "folder for caches (training: data.decoded_cache)")
    logs: str = key("logs/", "logs root: checkpoints and logs go to <logs>/<jobname>/")
    audio: str = key(MISSING, "audio root folder; metadata paths are relative to it")
    meta: str = key(MISSING, "metadata file written by data_preproc.py")


@dataclass
class FabricConfig:
    nnodes: int = key(1, "machines (Lightning Fabric num_nodes)", at_least(1))
    ngpus: int = key(
        1, "processes per machine: GPUs, or CPU processes with accelerator=cpu", at_least(1)
    )
    accelerator: str = key("auto", "one of auto, cpu, cuda, gpu, mps", one_of(*ACCELERATORS))
    precision: str = key("32", "32; bf16-mixed (a GPU or a CPU with native bf16) or 16-mixed "
                               "(a GPU)")


@dataclass
class DataConfig:
    nworkers: int = key(0, "audio decoding processes (DataLoader workers)", at_least(0))
    samplerate: int = key(
        16000, "sample rate (Hz) the audio is decoded and resampled to", at_least(1)
    )
    audiolen: float = key(MISSING, "seconds of audio per training / validation excerpt", POSITIVE)
    maxlen: Optional[float] = key(
        None, "seconds of a track an excerpt may start in (null: all)", POSITIVE
    )
    pad_mode: str = key(
        "repeat", "padding of short excerpts: repeat, zeros or crazy", one_of(*PAD_MODES)
    )
    n_per_class: int = key(
        MISSING, "versions per item: the anchor and n - 1 other versions", at_least(2)
    )
    p_samesong: float = key(
        0.0, "probability that the anchor may be its own other version", PROBABILITY
    )
    decoded_cache: bool = key(False, "keep decoded audio (float16) in <path.cache>/decoded-"
                                     "<samplerate>hz/: each file is decoded once, not per epoch")
    label_fraction: float = key(1.0, "fraction of the training cliques kept, every version of "
                                     "each (label budgets; valid and test are never cut)",
                                Valid(low=0, low_open=True, high=1))
    label_seed: int = key(0, "seed of the cliques data.label_fraction keeps")
    path: Optional[PathConfig] = key(None, "copy of the top-level path section (as the original)")


@dataclass
class Augmentation:
    p: float = key(MISSING, "probability per example (0: inactive)", PROBABILITY)


@dataclass
class RangeAugmentation(Augmentation):
    r: List[float] = key(MISSING, "[low, high] range of the random factor")


@dataclass
class SpecAugment(Augmentation):
    n: int = key(1, "up to n masks", at_least(0))
    full: bool = key(True, "mask the union of frequency and time bands (false: intersection)")
    f_pc: float = key(MISSING, "largest frequency band, fraction of the bins", PROBABILITY)
    t_pc: float = key(MISSING, "largest time band, fraction of the frames", PROBABILITY)


@dataclass
class Stretch(RangeAugmentation):
    pad_mode: str = key("repeat", "padding back to the length")
    cut_mode: str = key("random", "cutting back to the length")


@dataclass
class PitchTranspose(Augmentation):
    r: List[int] = key(MISSING, "[low, high] semitones")


@dataclass
class Noise(Augmentation):
    snr: List[float] = key(MISSING, "[low, high] signal-to-noise ratio (dB)")


@dataclass
class ReqTime(Augmentation):
    nfreqs: List[int] = key(MISSING, "[low, high] number of peaking filters")
    gains: List[float] = key(MISSING, "[low, high] filter gain (dB)")
    qrange: List[float] = key(MISSING, "[low, high] filter Q")


@dataclass
class Clipping(Augmentation):
    max_qtl: float = key(
        MISSING, "largest fraction of the peak that is clipped off", PROBABILITY
    )
    p_soft: float = key(
        MISSING, "probability of soft (tanh) rather than hard clipping", PROBABILITY
    )


@dataclass
class Length(Augmentation):
    rmin: float = key(
        MISSING, "shortest kept fraction of the excerpt", Valid(low=0, low_open=True, high=1)
    )


@dataclass
class ReqCqt(RangeAugmentation):
    lpf: float = key(MISSING, "low-pass cut-off of the random gain walk over bins")


@dataclass
class AugmentationsConfig:
    """Only the blocks present are active (those with p > 0); their order is random."""

    polarity: Optional[Augmentation] = key(None, "flip the waveform's sign")
    gain: Optional[RangeAugmentation] = key(None, "scale the waveform to a random peak")
    noise: Optional[Noise] = key(None, "mix in noise at a random SNR")
    reqtime: Optional[ReqTime] = key(None, "random peaking equalisation of the waveform")
    clipping: Optional[Clipping] = key(None, "clip the waveform")
    length: Optional[Length] = key(None, "keep a random-length part of the excerpt")
    compexp: Optional[RangeAugmentation] = key(None, "compress / expand amplitudes")
    specaugment: Optional[SpecAugment] = key(None, "mask CQT frequency and time bands")
    timestretch: Optional[Stretch] = key(None, "stretch the CQT in time")
    pitchstretch: Optional[Stretch] = key(None, "stretch the CQT over bins")
    pitchtranspose: Optional[PitchTranspose] = key(None, "shift the CQT by semitones")
    reqcqt: Optional[ReqCqt] = key(None, "random smooth gains over CQT bins")


@dataclass
class OptimConfig:
    name: str = key("adam", "optimiser: adam, adamw or sgd", one_of(*OPTIMIZERS))
    lr: float = key(MISSING, "learning rate", POSITIVE)
    wd: float = key(0.0, "weight decay (adamw only)", NON_NEGATIVE)
    sched: Optional[str] = key("flat", "schedule: flat (or null), plateau_N, poly_P, warmpoly_W_P, "
                                       "sd_D, wsd_W_D, cosine_W, step_F_E1_E2...", SCHEDULE)
    min_lr: float = key(0.0, "stop when the learning rate falls below it", NON_NEGATIVE)


@dataclass
class MonitorConfig:
    quantity: str = key("m_MAP", "validation value for the best checkpoint and plateaus "
                                 "(m_MAP, m_MR1, m_ARP, m_COMP)", one_of(*MONITOR_QUANTITIES))
    mode: str = key("max", "max or min: which direction is better", one_of(*MONITOR_MODES))


@dataclass
class TrainingConfig:
    batchsize: int = key(
        MISSING, "anchors per process and step (x n_per_class versions)", at_least(1)
    )
    numepochs: int = key(MISSING, "epochs (0: only the starting model is evaluated)", at_least(0))
    save_freq: Optional[int] = key(
        None, "also keep checkpoint_epochN.ckpt every N epochs", at_least(1)
    )
    optim: OptimConfig = key(OptimConfig, "optimiser and learning-rate schedule")
    monitor: MonitorConfig = key(MonitorConfig, "what picks the best checkpoint")
    freeze: str = key("none", "none (train everything) or encoder (train only the model's "
                              "projection, the encoder frozen in eval mode: a linear probe)",
                      one_of(*FREEZE))


@dataclass
class SslConfig:
    method: str = key("none", "self-supervised pre-training (no labels read): none, "
                              "contrastive, byol, barlow, vicreg, dino or clews",
                      one_of(*SSL_METHODS))
    views: str = key("same-passage", "same-passage (two cuts of one excerpt, augmented apart) "
                                     "or different-time (two excerpts of one track)",
                     one_of(*SSL_VIEWS))
    view_offset: float = key(
        2.0, "same-passage: seconds at most between the views' starts", NON_NEGATIVE
    )
    hidden: int = key(2048, "width of the projector's hidden layers", at_least(1))
    out: int = key(2048, "projector output (contrastive, byol, barlow, vicreg)", at_least(1))


###################################################################################################
# model sections: the pieces each models/<name>.py puts together as its Model.Config


@dataclass
class Shingling:
    len: float = key(MISSING, "training shingle (segment) length, seconds", POSITIVE)
    hop: float = key(MISSING, "training shingle hop, seconds", POSITIVE)


@dataclass
class Cqt:
    hoplen: float = key(MISSING, "CQT hop, seconds", POSITIVE)
    noctaves: int = key(MISSING, "octaves", at_least(1))
    nbinsoct: int = key(12, "bins per octave", at_least(1))
    fscale: float = key(1.0, "filter scale (kernel length factor)", POSITIVE)


@dataclass
class Pool:
    len: int = key(MISSING, "average pooling width over CQT frames", at_least(1))
    hop: int = key(MISSING, "average pooling stride over CQT frames", at_least(1))


@dataclass
class PooledCqt(Cqt):
    pool: Pool = key(Pool, "average pooling over CQT frames")


@dataclass
class Mining:
    positive: str = key(
        "hard", "triplet positive mining: hard, easy or random", one_of(*POSITIVE_MINING)
    )
    negative: str = key(
        "hard",
        "triplet negative mining: hard, semihard, random or move_legacy_semihard",
        one_of(*NEGATIVE_MINING),
    )


@dataclass
class ModelConfig:
    name: str = key(MISSING, "model: the module models/<name>.py")
    shingling: Shingling = key(Shingling, "training shingles")


@dataclass
class CqtNetStackConfig(ModelConfig):
    """The keys of the CQTNet stack's models (CQTNet, DVINet+: ``lib.model_base.CqtNetModel``);
    each adds its width under its own name."""

    cqt: PooledCqt = key(PooledCqt, "CQT front end")
    zdim: int = key(MISSING, "embedding width", at_least(1))


@dataclass
class ByteCoverConfig(ModelConfig):
    cqt: PooledCqt = key(PooledCqt, "CQT front end")
    ncha: int = key(MISSING, "CNN width", at_least(1))
    zdim: int = key(MISSING, "embedding width", at_least(1))
    maxcliques: int = key(MISSING, "classifier rows: must exceed every clique id", at_least(1))
    smooth: float = key(
        MISSING, "label smoothing of the cross-entropy", Valid(low=0, high=1, high_open=True)
    )
    margin: float = key(MISSING, "triplet margin", NON_NEGATIVE)
    lamb: float = key(
        MISSING, "weight of the positive-distance / sub-centre regulariser", NON_NEGATIVE
    )
    mining: Mining = key(Mining, "triplet mining")


###################################################################################################


@dataclass
class TrainConfig:
    jobname: Optional[str] = key(None, "run name: logs go to <path.logs>/<jobname>/ (required)")
    conf: Optional[str] = key(None, "the YAML config file (required)")
    seed: int = key(43, "random seed")
    checkpoint: Optional[str] = key(None, "checkpoint to resume from (default: the run's last)")
    limit_batches: Optional[int] = key(None, "training batches per epoch at most", at_least(1))
    limit_num: Optional[int] = key(None, "first N cliques of every partition", at_least(1))
    logger: str = key("tensorboard", "training logs: tensorboard, csv or wandb", one_of(*LOGGERS))
    path: PathConfig = key(PathConfig, "files")
    fabric: FabricConfig = key(FabricConfig, "devices and processes")
    data: DataConfig = key(DataConfig, "training data")
    augmentations: AugmentationsConfig = key(AugmentationsConfig, "training augmentations")
    model: Any = key(MISSING, "the model; its keys are those of models/<model.name>.py")
    training: TrainingConfig = key(TrainingConfig, "optimisation")
    ssl: SslConfig = key(SslConfig, "self-supervised pre-training")


@dataclass
class TestFabric:
    nnodes: int = key(1, "machines", at_least(1))
    ngpus: int = key(1, "processes per machine", at_least(1))
    accelerator: str = key("auto", "one of auto, cpu, cuda, gpu, mps", one_of(*ACCELERATORS))


Seconds = Optional[float]


@dataclass
class TestArgs:
    checkpoint: Optional[str] = key(None, "the checkpoint to evaluate (required)")
    conf: Optional[str] = key(None, "YAML of the model (default: configuration.yaml beside the "
                                    "checkpoint, else the stored config)")
    jobname: Optional[str] = key(None, "names the results folder (default test)")
    fabric: TestFabric = key(TestFabric, "devices and processes")
    path_audio: Optional[str] = key(None, "audio root (default: the config's path.audio)")
    path_meta: Optional[str] = key(None, "metadata file (default: the config's path.meta)")
    partition: str = key("test", "train, valid or test", one_of(*SPLITS))
    limit_num: Optional[int] = key(None, "first N cliques of the partition", at_least(1))
    maxlen: float = key(600.0, "seconds of each track used", POSITIVE)
    redux: Optional[str] = key(None, "segment-distance reduction, e.g. bpwr-10 (null: the "
                                     "model's)", REDUCTION)
    qslen: Union[Seconds, List[float]] = key(None, "query window length (s) or a list of "
                                                   "lengths; null: training shingle; <= 0: "
                                                   "whole track")
    qshop: Union[Seconds, List[float]] = key(5.0, "query window hop (s), or one per qslen; "
                                                  "null: training hop")
    cslen: Seconds = key(None, "candidate window length (s); null: training shingle; <= 0: "
                               "whole track")
    cshop: Seconds = key(5.0, "candidate window hop (s); null: training hop")
    qfilter: Optional[str] = key(None, "which tracks query, e.g. \"release_genres:Rock\"")
    cfilter: Optional[str] = key(None, "which tracks are candidates")
    cache_dir: str = key("cache/embeddings", "embedding cache folder")
    out: Optional[str] = key(None, "results folder (default <checkpoint folder>/results/...)")
    nworkers: Optional[int] = key(
        None, "audio decoding processes (default data.nworkers)", at_least(0)
    )
    max_elements: int = key(
        DEFAULT_MAX_ELEMENTS, "segment pairs per distance block (memory bound)", at_least(1)
    )
    precision: str = key("32", "32; bf16 (a GPU or a CPU with native bf16) or 16 (a GPU): "
                               "mixed precision")
    music_only: bool = key(False, "leave out the query and candidate windows that lie mostly in "
                                  "the segments the metadata's noise_inds_sparse marks non-music "
                                  "(DiVers); needs noise_segment_seconds")
    noise_segment_seconds: Optional[float] = key(None, "length (s) of the segments that "
                                                       "noise_inds_sparse counts (DiVers does not "
                                                       "document it: no default)",
                                                POSITIVE)
    sweep_cfilters: Optional[str] = key(None, "fork_tags or a file of candidate filters: one "
                                              "table of all")
    sweep_metas: Union[Optional[str], List[str]] = key(None, "a glob or list of metadata "
                                                             "files: one table of all")


def fields(schema):
    """[(name, type, default or MISSING, help)] of a schema dataclass."""
    hints = typing.get_type_hints(schema)
    out = []
    for item in dataclasses.fields(schema):
        if item.default is not dataclasses.MISSING:
            default = item.default
        elif item.default_factory is not dataclasses.MISSING:
            default = item.default_factory()
        else:
            default = MISSING
        out.append((item.name, hints[item.name], default, item.metadata.get("help", "")))
    return out


def section_schema(annotation):
    """The dataclass of a field type (also inside Optional[...]), else None."""
    if dataclasses.is_dataclass(annotation):
        return annotation
    if typing.get_origin(annotation) is Union:
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(inner) == 1 and dataclasses.is_dataclass(inner[0]):
            return inner[0]
    return None


def type_name(annotation):
    """'int', 'float or null', 'list of float', ... for messages and --help."""
    if annotation is Any:
        return "any"
    origin = typing.get_origin(annotation)
    if origin is Union:
        args = typing.get_args(annotation)
        names = [type_name(a) for a in args if a is not type(None)]
        text = " or ".join(dict.fromkeys(names))
        return text + " or null" if type(None) in args else text
    if origin in (list, List):
        (inner,) = typing.get_args(annotation)
        return f"list of {type_name(inner)}"
    if dataclasses.is_dataclass(annotation):
        return "section"
    return annotation.__name__


def help_rows(schema, prefix=""):
    """[(dotted key, type name, default text, help)] of every key of ``schema``, depth first."""
    rows = []
    valid = {item.name: item.metadata.get("valid") for item in dataclasses.fields(schema)}
    for name, annotation, default, text in fields(schema):
        if valid[name] is not None and valid[name].bounds():
            text = f"{text} ({valid[name].bounds()})"
        sub = section_schema(annotation)
        if sub is not None:
            if default is None:
                rows.append((prefix + name, "section or null", "null", text))
            rows += help_rows(sub, f"{prefix}{name}.")
            continue
        rows.append((prefix + name, type_name(annotation), default_text(default), text))
    return rows


def default_text(value):
    if value is MISSING or value == MISSING:
        return "required"
    if value is None:
        return "null"
    if isinstance(value, str):
        return repr(value)
    return str(value)
