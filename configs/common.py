"""Settings shared by every method's config: run length, logging, mesh, data, evaluation, and
the per-dataset presets (backbone, augmentation, run length) the method configs start from."""

import math

import ml_collections

from sslx.models.backbone import backbone_config

DATASETS = ("fashion_mnist", "cifar10", "imagenet")
# Training-split sizes, to turn the papers' epochs into steps.
TRAIN_EXAMPLES = {"fashion_mnist": 60_000, "mnist": 60_000, "cifar10": 50_000,
                  "imagenet": 1_281_167}


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.experiment = ""  # module experiments/<experiment>.py
  c.seed = 0
  c.batch_size = 256  # global, over all devices and processes
  c.total_steps = 1000
  c.log_every = 50
  c.checkpoint_every = 500
  c.max_checkpoints = 3
  # An unreadable newest checkpoint stops the resume with an error naming it; True moves it to
  # checkpoints_unreadable/ and resumes from the newest earlier one that restores.
  c.checkpoint_fallback = False
  # A step with a NaN / inf loss or gradient is never applied; "stop" ends the run there (the
  # last good checkpoint kept), "skip" goes on and counts it (train/nonfinite_steps).
  c.nonfinite_policy = "stop"
  c.progress_bar = True
  # True: a run whose JAX backend is the CPU stops at start with the accelerator install command
  # (the cifar10 / imagenet presets: they would take days on a CPU).
  c.require_accelerator = False

  c.data = ml_collections.ConfigDict()
  c.data.name = "fashion_mnist"
  c.data.data_dir = ""  # prepared TFDS datasets; default $SSLX_DATA_DIR or ~/tensorflow_datasets
  c.data.source_dir = ""  # raw files to prepare from (Fashion-MNIST idx files)
  c.data.allow_download = True  # only used when no local copy of the raw files is found
  # A tfds split to pre-train on instead of the dataset's train split, e.g. "train[500:]"
  # (sources.pretraining_split); evaluation keeps the dataset's splits.
  c.data.train_split = ""
  # > 1: train on a long-tailed subset of the train split, the last class 1/ratio the size of
  # the first (sources.long_tailed_subset; CIFAR-10-LT's ratios are 10-200); evaluation stays
  # on the whole splits.
  c.data.imbalance_ratio = 1.0
  # grain worker processes decoding on the host; -1: one per core for datasets of encoded images
  # (JPEG), none for in-memory arrays (Fashion-MNIST, which is fastest without workers).
  c.data.worker_count = -1
  # Decode each JPEG on the host and take the train crops from the full image there, as the
  # papers (sslx.data.decode); the rest of the augmentation stays on device. For two-view and
  # multi-crop methods (experiment.two_views, augment_views, _multicrop.crop_views) on datasets
  # of encoded images.
  c.data.crop_on_host = False
  c.data.decoder = "pil"  # pil | simplejpeg | opencv (benchmarks/input_pipeline.py compares)
  c.data.resizer = "pil"  # pil (antialiased, torchvision's) | opencv (bilinear, TF's; faster)
  c.data.skip_corrupt = False  # True: an undecodable record is logged, counted and replaced

  c.mesh = ml_collections.ConfigDict()
  c.mesh.num_devices = -1  # -1: every device of every process
  c.mesh.shape = (-1,)
  c.mesh.axes = ("data",)  # add "fsdp" / "model" axes for sharded parameters
  # How parameters with logical axis names (ViT) are sharded: a preset of
  # sslx.sharding.RULE_PRESETS (replicated | fsdp | tensor | fsdp_tensor), or custom_rules,
  # ((logical_name, mesh_axis), ...), which override the preset when not empty.
  c.mesh.rules = "replicated"
  c.mesh.custom_rules = ()
  # Multi-slice TPU / multi-node GPU: how many slices (TPU) or processes (GPU, CPU) lie along
  # each mesh axis, over the slow data-centre network; mesh.shape stays the whole mesh's shape.
  # () : one slice, every axis over the fast interconnect. E.g. shape (-1, 8), dcn_shape (2, 1).
  c.mesh.dcn_shape = ()

  # Multi-process start-up: explicit (coordinator_address, num_processes, process_id), or
  # auto_detect=True to let jax.distributed find SLURM / Open MPI / TPU pod settings.
  c.distributed = ml_collections.ConfigDict()
  c.distributed.coordinator_address = ""
  c.distributed.num_processes = 1
  c.distributed.process_id = 0
  c.distributed.auto_detect = False
  c.distributed.timeout_s = 300

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "lars"  # lars | sgd | adamw
  c.optim.lr = 0.3  # peak learning rate per 256 examples, scaled by optim.lr_scaling
  c.optim.lr_scaling = "linear"  # linear | sqrt | none
  c.optim.weight_decay = 1e-6
  c.optim.momentum = 0.9
  c.optim.nesterov = False
  c.optim.trust_coefficient = 0.001
  # Top-level parameter names (e.g. "head") that LARS updates without its trust ratio, as plain
  # momentum SGD: SimCLRv2's new classifier head (its released code's exclusion), which starts
  # near zero, where a trust ratio proportional to |w| would barely move it.
  c.optim.trust_ratio_exclude = ()
  # Top-level parameter names kept out of weight decay besides biases, norms and tokens (which
  # never decay): MSN's prototypes.
  c.optim.weight_decay_exclude = ()
  # Weight decay constant, or by a cosine from weight_decay to weight_decay_end (AdamW only).
  c.optim.weight_decay_schedule = "constant"  # constant | cosine
  c.optim.weight_decay_end = 0.0
  # Layer-wise learning-rate decay of a ViT (1.0: off): block i of L learns at
  # layer_decay ** (L - i) times the rate, the embeddings at layer_decay ** (L + 1), and the
  # patch embedding at patch_embed_lr_multiplier times that (sslx.train.optim).
  c.optim.layer_decay = 1.0
  c.optim.patch_embed_lr_multiplier = 1.0
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.warmup_steps = 100
  c.optim.end_lr_fraction = 0.0
  c.optim.grad_clip_norm = 0.0
  # Gradient caching (Gao et al. 2021; sslx.train.grad_cache): the loss's gradient in this many
  # micro-batches of batch_size / grad_cache_chunks images, exactly the full batch's loss and
  # gradient with one micro-batch's activations in memory. 1: off. For SimCLR, DCL, SupCon and
  # NNCLR with a BatchNorm-free encoder and projector (model.name=vit, projector.norm=layer or
  # none); anything else is refused. No plain gradient accumulation: it would change a
  # contrastive loss (fewer negatives) and BatchNorm's statistics.
  c.optim.grad_cache_chunks = 1

  c.eval = ml_collections.ConfigDict()
  c.eval.enabled = True
  c.eval.batch_size = 1000
  c.eval.knn_k = 20  # DINO's main setting; InstDisc used k=200
  c.eval.knn_temperature = 0.07
  c.eval.linear_probe = True
  c.eval.baselines = ("random_encoder", "raw_pixels")
  c.eval.train_examples = 0  # 0: the whole split; smaller for quick runs
  c.eval.test_examples = 0
  # kNN bank and probe fitted on a class-balanced, seeded (config.seed) fraction of the train
  # split (of its first train_examples): each class keeps round(n_c * train_fraction) examples.
  # In (0, 1]; 1: all of it. The test split stays whole. The imagenet presets take 10%.
  c.eval.train_fraction = 1.0
  # A linear classifier on stop-gradient encoder features of the augmented training views,
  # trained beside the method (sslx.evaluate.online_probe), logged as train/online_probe_top1.
  c.eval.online_probe = False
  # Extra offline protocols on the same frozen features: big_vision's few-shot ridge probes
  # (fewshot_top1@Nshot) and linear probes on class-balanced label fractions (SimCLRv2), e.g.
  # (0.01, 0.1) for linear_top1@1% and linear_top1@10%.
  c.eval.fewshot = False
  c.eval.label_fractions = ()
  # Label-free metrics (sslx.evaluate.monitor: RankMe, LiDAR, alpha-ReQ, alignment, uniformity,
  # embedding std) logged as monitor/* every `every` steps (0: off) on the first
  # monitor_examples test images, each augmented monitor_views times with the run's augmentation.
  c.eval.every = 0
  c.eval.monitor_examples = 512
  c.eval.monitor_views = 4
  # curves.png, spectrum.png and embedding_map.png written into the workdir after training.
  c.eval.plots = True
  return c


def epochs_to_steps(epochs: float, dataset: str, batch_size: int) -> int:
  return math.ceil(epochs * TRAIN_EXAMPLES[dataset] / batch_size)


def parse_variant(arg: str | None, extra: tuple[str, ...] = ()) -> tuple[str, dict]:
  """'cifar10,smoke' -> ('cifar10', {'smoke': True}); the dataset defaults to fashion_mnist.

  Known keys: the DATASETS, 'smoke', and the method's `extra` ones; anything else is an error.
  """
  args = parse_arg(arg)
  datasets = [k for k in args if k in DATASETS]
  unknown = sorted(set(args) - set(DATASETS) - {"smoke", *extra})
  if unknown or len(datasets) > 1:
    raise ValueError(f"config variant {arg!r}: unknown {unknown} or more than one dataset "
                     f"{datasets}; known: one of {list(DATASETS)}, 'smoke', {list(extra)}")
  return (datasets[0] if datasets else "fashion_mnist"), args


def method_config(experiment: str, dataset: str) -> ml_collections.ConfigDict:
  """`base_config` with the dataset preset: data, backbone, augmentation, batch and run length.

  fashion_mnist: what trains in minutes on a 2-core CPU (a 3-stage ResNet of width 32 with a
  stride-2 stem, or a 4-block ViT with 4-pixel patches; 300 steps of 256). cifar10: ResNet-18
  with the CIFAR stem, batch 512 (solo-learn's recipes). imagenet: ResNet-50, 224-pixel views,
  batch 4096. Method configs then set their heads, loss, optimizer and epochs from the papers.
  """
  if dataset not in DATASETS:
    raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
  c = base_config()
  c.experiment = experiment
  c.model = backbone_config("resnet")
  c.augment = ml_collections.ConfigDict()
  if dataset == "fashion_mnist":
    c.batch_size = 256
    c.total_steps = 300
    c.log_every = 20
    c.checkpoint_every = 100
    # The monitor (512 images x 4 views) compiles once (~17 s on a 2-core CPU) and then costs
    # ~2-5 s, 1-2 train steps, per evaluation: every 100 steps is ~4% of the 300-step run.
    c.eval.every = 100
    c.model.resnet.stage_sizes = (1, 1, 1)
    c.model.resnet.width = 32
    # Stride 2 in the stem: 14x14 feature maps cost a quarter of 28x28 on this CPU, which buys
    # a wider network; at equal CPU time it beat width 16 at full resolution by ~3 kNN points.
    c.model.resnet.stem_stride = 2
    # A ViT for 28x28 images: 7x7 patches of 4 px, width 128, 4 blocks, 4 heads.
    c.model.vit.variant = ""
    c.model.vit.patch_size = 4
    c.model.vit.width = 128
    c.model.vit.depth = 4
    c.model.vit.num_heads = 4
    c.augment.update(crop_size=28, crop_scale=(0.2, 1.0), flip_prob=0.5, brightness=0.4,
                     contrast=0.4, saturation=0.0, hue=0.0, jitter_prob=0.8,  # grayscale images
                     grayscale_prob=0.0, blur_prob=0.0, solarize_prob=0.0)
  elif dataset == "cifar10":
    c.require_accelerator = True
    c.data.name = "cifar10"
    c.batch_size = 512
    c.total_steps = epochs_to_steps(1000, dataset, c.batch_size)
    c.log_every = 100
    c.checkpoint_every = 5000
    c.model.dtype = "bfloat16"  # accelerator precision policy (sslx.models.set_compute_dtype)
    c.model.resnet.depth = 18
    c.model.resnet.stem = "cifar"
    c.model.vit.variant = ""  # ViT-S with 4-pixel patches on 32x32 (MoCo v3 / DINO CIFAR runs)
    c.model.vit.patch_size = 4
    c.model.vit.width = 384
    c.model.vit.depth = 12
    c.model.vit.num_heads = 6
    # SimCLR's CIFAR-10 augmentation: no blur at 32 pixels (Chen et al. 2020, App. B.9).
    c.augment.update(crop_size=32, crop_scale=(0.08, 1.0), flip_prob=0.5, brightness=0.4,
                     contrast=0.4, saturation=0.4, hue=0.1, jitter_prob=0.8, grayscale_prob=0.2,
                     blur_prob=0.0, solarize_prob=0.0)
    c.eval.batch_size = 1000
  else:
    c.require_accelerator = True
    c.data.name = "imagenet2012"
    # The train crops from the full JPEG, decoded on the host as the papers do; simplejpeg +
    # OpenCV decode and crop ~2.9x faster than Pillow (benchmarks/input_pipeline.py; they come
    # with `pip install sslx[jpeg]`).
    c.data.crop_on_host = True
    c.data.decoder = "simplejpeg"
    c.data.resizer = "opencv"
    c.batch_size = 4096
    c.total_steps = epochs_to_steps(100, dataset, c.batch_size)
    c.log_every = 100
    c.checkpoint_every = 2000
    c.model.dtype = "bfloat16"
    c.model.resnet.depth = 50
    c.model.resnet.stem = "imagenet"
    c.model.vit.variant = "S/16"
    c.augment.update(crop_size=224, crop_scale=(0.08, 1.0), flip_prob=0.5, brightness=0.4,
                     contrast=0.4, saturation=0.4, hue=0.1, jitter_prob=0.8, grayscale_prob=0.2,
                     blur_prob=0.5, solarize_prob=0.0)
    c.eval.batch_size = 1024
    c.eval.baselines = ("random_encoder",)  # raw 224x224x3 pixels: 150k-d features
    # ~128k of the 1.28M train images for kNN and the probe: feature extraction, the kNN bank
    # and the L-BFGS probe all scale with it (docs/evaluation.md, "Evaluation at ImageNet scale").
    c.eval.train_fraction = 0.1
  return c


def byol_views(c: ml_collections.ConfigDict) -> None:
  """BYOL's ImageNet views (Grill et al. 2020, Table 6), which MoCo v3, NNCLR, MoBY, DINO's
  global crops and others reuse: saturation 0.2, the first view always blurred and never
  solarised, the second blurred with p 0.1 and solarised with p 0.2."""
  c.augment.saturation = 0.2
  c.augment_view1 = ml_collections.ConfigDict({"blur_prob": 1.0, "solarize_prob": 0.0})
  c.augment_view2 = ml_collections.ConfigDict({"blur_prob": 0.1, "solarize_prob": 0.2})


def ema_config(base: float, reference_batch_size: int, *, final: float = 1.0,
               schedule: str = "cosine") -> ml_collections.ConfigDict:
  """The EMA teacher's momentum: `base` as tuned at `reference_batch_size` (the paper's batch),
  rising to `final` by `schedule` (see sslx.train.ema). With scaling_rule (default on), running
  at another batch_size raises it to the power batch_size / reference_batch_size, the EMA
  scaling rule; optim.lr_scaling scales the learning rate alongside."""
  c = ml_collections.ConfigDict()
  c.base = base
  c.final = final
  c.schedule = schedule
  c.reference_batch_size = reference_batch_size
  c.scaling_rule = True
  return c


def shrink_for_smoke(c: ml_collections.ConfigDict) -> None:
  """A few steps of a tiny model on a small batch, for the tests (seconds on a CPU)."""
  c.batch_size = 32
  c.total_steps = 6
  c.log_every = 1
  c.checkpoint_every = 3
  c.progress_bar = False
  c.require_accelerator = False  # smoke variants of the GPU presets run on a CPU too
  c.model.resnet.depth = 0
  c.model.resnet.stage_sizes = (1, 1)
  c.model.resnet.width = 8
  c.model.resnet.stem_stride = 0
  c.model.vit.variant = ""
  c.model.vit.patch_size = 4
  c.model.vit.width = 16
  c.model.vit.depth = 1
  c.model.vit.num_heads = 2
  c.optim.warmup_steps = 2
  c.eval.batch_size = 200
  c.eval.knn_k = 20
  c.eval.train_examples = 2000
  c.eval.train_fraction = 1.0  # 10% of 2000 leaves ImageNet's 1000 classes mostly empty
  c.eval.test_examples = 400
  c.eval.every = 0  # the monitor and plots have their own tests
  c.eval.monitor_examples = 64
  c.eval.plots = False
  if "ema" in c:
    c.ema.reference_batch_size = c.batch_size


def parse_arg(arg: str | None) -> dict:
  """'smoke,width=16' -> {'smoke': True, 'width': '16'}."""
  out = {}
  for part in (arg or "").split(","):
    if part:
      key, _, value = part.partition("=")
      out[key.strip()] = value.strip() if value else True
  return out
