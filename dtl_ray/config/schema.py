"""The configuration schema: one frozen dataclass per section, every field documented.

`dtl_ray.config.load` reads YAML into these classes and checks it; configs/demo.yaml shows
every section in use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from dtl_ray.config.finetune import FinetuneConfig  # the longest section: a module of its own


@dataclass(frozen=True)
class DomainConfig:
    uri: str = ""
    """Dataset root: a local folder or `s3://bucket/prefix` in the layout of docs/method.md."""


@dataclass(frozen=True)
class S3Config:
    endpoint_url: str | None = None
    """S3-compatible endpoint (e.g. http://127.0.0.1:9000); else AWS_ENDPOINT_URL or AWS's own."""
    region: str | None = None
    """Region; else AWS_REGION. Credentials always come from the AWS chain, never the config."""


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "resnet18"
    """`smallcnn` (for tiny images) or any torchvision classification model name."""
    image_size: int = 224
    """The model's input: image_size x image_size pixels."""
    resize_size: int | None = None
    """The shorter side is resized to resize_size, then the centre image_size x image_size is
    cropped (torchvision's eval transform, e.g. 256 -> 224). null: resized straight to
    image_size x image_size, or, with `weights` given by name, the weights' own ratio."""
    weights: str | None = None
    """What pretraining starts from: a torchvision weights name for the backbone
    (`IMAGENET1K_V1`, `DEFAULT`, `ResNet18_Weights.IMAGENET1K_V1`; downloaded once by the
    driver into the run's folder) or a file (a torchvision state_dict or ours)."""

    @property
    def frame(self) -> int | tuple[int, int]:
        """How every stage decodes an image (`samples.Size`)."""
        return self.image_size if self.resize_size is None else (self.image_size,
                                                                 self.resize_size)


@dataclass(frozen=True)
class ScalingConfig:
    num_workers: int | Literal["auto"] = 1
    """Ray Train workers for pretrain and discriminate (data parallel); `auto`: every GPU the
    cluster and its autoscaler offer with `use_gpu`, else the CPUs but one (left for reading),
    over `cpus_per_worker`."""
    use_gpu: bool = False
    """Train, score and fine-tune on GPUs."""
    cpus_per_worker: int = 1
    """CPUs reserved by each training worker, scoring actor and tuning trial."""
    max_failures: int = 3
    """Restarts of a Train worker group or a Tune trial after a worker dies (each resumes
    from its last checkpoint)."""


@dataclass(frozen=True)
class DataConfig:
    batch_size: int = 64
    """Training batch size per worker."""
    cache: Literal["auto", "always", "never"] = "auto"
    """Keep decoded training images in Ray's object store: `auto` does when they fit in 1/4."""
    shuffle_buffer: int = 8
    """Local shuffle buffer of the training stages, in batches (0: none). Training rows are
    also permuted with the run's seed before blocks are cut, and the block order is re-drawn
    every epoch, so no batch sees the manifest's class-sorted order."""
    max_rejected_fraction: float = 0.01
    """A run stops when more images than this cannot be decoded: checked before training
    (every image is decoded once) and again by the score stage; a training or fine-tuning
    pass stops at any image that fails although an earlier pass read it."""
    max_image_pixels: int = 64_000_000
    """Images with more pixels (width x height) are rejected before they are decoded, with
    the reason "too many pixels" (decompression bombs: a small file that decodes to GBs)."""
    extensions: list[str] = field(
        default_factory=lambda: [".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"])
    """File name endings treated as images."""


@dataclass(frozen=True)
class PretrainConfig:
    epochs: int = 10
    """Epochs over source train."""
    lr: float = 1e-3
    """AdamW learning rate."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    rotation: float = 15.0
    """Random rotation, degrees (augmentation)."""
    crop: float = 0.125
    """Random translation as a fraction of the image side (random-crop augmentation)."""
    flip: bool = True
    """Random horizontal flip (augmentation)."""
    brightness: float = 0.2
    """Random brightness factor range +- (augmentation)."""
    contrast: float = 0.2
    """Random contrast factor range +- (augmentation)."""


@dataclass(frozen=True)
class DiscriminateConfig:
    layer: str | None = "styles"
    """What D reads: `styles`, several depths (each stage's per-channel mean and std, and the
    pooled penultimate: rendering and content); null, the pooled penultimate alone; or one
    backbone node (a torchvision feature-extraction name, e.g. `layer3`)."""
    hidden: int = 256
    """Hidden width of the MLP discriminator."""
    epochs: int = 30
    """Epochs over the (precomputed) features."""
    lr: float = 1e-3
    """Adam learning rate of the discriminator."""
    batch_size: int = 0
    """Rows per step of D's MLP (0: `data.batch_size`). Its features are computed once, so a
    large batch (thousands) keeps a GPU busy where 64 waits on every step."""
    heldout_fraction: float = 0.2
    """Part of both domains held out to report accuracy, AUC and proxy A-distance."""
    folds: int = 5
    """Cross-fitting: D is trained `folds` times, each time without one fold of its training
    rows, and every training row is scored by the D that did not see it (out-of-fold scores);
    each D is calibrated (Platt) on its own fold. 1: one D, calibrated on the held-out part."""
    clusters: int = 6
    """Source train is cut into this many kinds by k-means on D's features, so that the
    report shows which kinds D ranks target-like (0: none)."""
    balanced: bool = True
    """Class-balanced loss (each domain weighs half). Then N_s/N_t in the weights is 1."""
    mode: Literal["standard", "adversarial"] = "standard"
    """`adversarial`: first adapt g with a gradient reversal layer against a domain head while
    keeping the source classification loss (DANN); D is then trained on the adapted features,
    scoring uses the adapted model, and it is evaluated as the `dann` row."""
    dann_baseline: bool = False
    """Also adapt g with DANN in standard mode, only to evaluate it as the `dann` row and report
    the domain gap before and after (scoring keeps the pretrained features)."""
    dann_epochs: int = 8
    """Adversarial mode: epochs over source train."""
    dann_lr: float = 1e-3
    """Adversarial mode: AdamW learning rate of g, h and the domain head."""
    dann_weight: float = 1.0
    """Adversarial mode: the most the reversed domain loss counts (DANN's schedule ramps it)."""

    @property
    def adapts(self) -> bool:
        """Whether the stage trains a DANN-adapted backbone (adversarial mode or the baseline)."""
        return self.mode == "adversarial" or self.dann_baseline


@dataclass(frozen=True)
class ScoreConfig:
    weighting: Literal["density_ratio", "iwan", "iwc"] = "density_ratio"
    """Importance weights from p = P(target|x): `density_ratio` p/(1-p)*N_s/N_t (Bickel et
    al.), `iwan` 1 - P(source|x) normalised to mean 1 over source train (Zhang et al.), `iwc`
    1/P(source|x) - 1 (ADAPT's IWC; equals density_ratio with a balanced discriminator)."""
    batch_size: int = 256
    """Images per scoring batch."""
    actors: int = 0
    """Scoring actors, a fixed pool; 0: a pool that starts at one actor and grows to the most
    the cluster can hold (its nodes and the nodes its autoscaler can add)."""
    clip: float = 0.01
    """p_target is clipped to [clip, 1 - clip] before forming weights."""
    max_weight: float = 20.0
    """Importance weights are capped here; the report counts how many were."""


@dataclass(frozen=True)
class SelectConfig:
    rule: Literal["top_fraction", "threshold", "per_class"] = "top_fraction"
    """How source candidates are chosen by weight."""
    fraction: float = 0.25
    """`top_fraction`: part of source train (in shared classes) to take."""
    threshold: float = 1.0
    """`threshold`: take source samples with weight at least this."""
    per_class: int = 100
    """`per_class`: at most this many source samples per target class."""
    balance_classes: bool = True
    """`top_fraction` (and the search's source fractions) take the top fraction of each class,
    not of the whole pool, so the candidates keep the source's class mix."""
    target_fraction: float = 0.3
    """Part of the unlabeled target pool to pseudo-label."""
    confidence_floor: float = 0.6
    """Target candidates need at least this model confidence."""


@dataclass(frozen=True)
class TrackingConfig:
    mlflow: bool = False
    """Log the run to MLflow: one parent run, a nested run per stage and per fine-tuning
    trial (params, per-epoch metrics), the report and its plots as artifacts."""
    mlflow_uri: str | None = None
    """The MLflow tracking server; else MLFLOW_TRACKING_URI."""
    experiment: str = "dtl-ray"
    """The MLflow experiment the runs go to (made when missing)."""
    tensorboard: bool = True
    """TensorBoard event files under <run>/tensorboard/ (per stage, and per trial)."""


@dataclass(frozen=True)
class PipelineConfig:
    name: str = "run"
    """Run name: outputs go to <storage>/<name>/."""
    seed: int = 0
    """Seed for every random choice (data order, init, random subsets, demo data)."""
    storage: str = "runs"
    """Output root: a local folder or s3://bucket/prefix."""
    s3: S3Config = field(default_factory=S3Config)
    """S3 endpoint and region (no secrets)."""
    source: DomainConfig = field(default_factory=DomainConfig)
    """The labeled source domain."""
    target: DomainConfig = field(default_factory=DomainConfig)
    """The target domain."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Backbone and input size."""
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    """Workers and devices."""
    data: DataConfig = field(default_factory=DataConfig)
    """Reading and batching."""
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    """Stage 1."""
    discriminate: DiscriminateConfig = field(default_factory=DiscriminateConfig)
    """Stage 2."""
    score: ScoreConfig = field(default_factory=ScoreConfig)
    """Stage 3."""
    select: SelectConfig = field(default_factory=SelectConfig)
    """Stage 4."""
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    """Stage 5."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """Experiment tracking (MLflow, TensorBoard); changes no stage's outputs."""
