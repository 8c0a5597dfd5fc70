"""The one parameters model: every run, every flow and the Prefect UI form read it.

A params file (`params/<name>.toml`) is validated into `Params`; per-run overrides
(`--set section.key=value`, UI form, Buildkite env) go through `apply_overrides`, so a
bad key or value is refused the same way wherever it comes from.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from trainkite.errors import UserInputError

PARAMS_DIR = Path(__file__).resolve().parent
# With the loss a per-example mean, no model type wants a rate near this; above it a run only diverges.
LR_MAX = 50.0
GIB = 2**30
# The test split's share when no separate evaluation set is given.
DEFAULT_TEST_FRACTION = 0.1
DEFAULT_PARAMS_FILE = PARAMS_DIR / "sentiment.toml"


class ParamsError(UserInputError, ValueError):
    """A params file or override is wrong; the message names the key and what is allowed."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataParams(_Section):
    source: Literal["local", "athena"] = Field(
        "local", description="Where `query` runs: DuckDB over files in `path` (local) or Athena."
    )
    path: str = Field(
        "data/demo",
        description="Local source: folder whose *.csv, *.tsv, *.parquet and *.jsonl files (.gz too) are tables named "
        "after the file, and each subfolder of such part files one table named after it; or one such file, the only "
        "table (relative paths are resolved against the current directory, then the repo).",
    )
    query: str = Field("SELECT text, sentiment AS label FROM comments", description="SQL that returns the rows.")
    text_column: str = Field("text", description="Column holding the text.")
    label_column: str = Field("label", description="Column holding the label.")
    labels: list[str] | None = Field(
        None, description="Allowed labels, in output order. Rows with other labels are refused."
    )
    split_seed: int = Field(17, description="Seed of the stable hash split (train/validation/test).")
    validation_fraction: float = Field(0.1, gt=0, lt=0.5, description="Share of rows for validation.")
    test_fraction: float | None = Field(
        None,
        ge=0,
        lt=0.5,
        description="Share of rows for the test split. Unset: 0 when evaluation.query names a human-labelled "
        f"set (that set is the test, and every other row trains), else {DEFAULT_TEST_FRACTION}.",
    )
    snapshot_max_rows: int = Field(
        2_000_000, ge=0, description="Store the exact rows (Parquet) with the model up to this many rows."
    )
    # Athena (production twin of the local source)
    athena_database: str = Field("trainkite", description="Athena/Glue database.")
    athena_workgroup: str = Field("primary", description="Athena workgroup.")
    athena_s3_output: str | None = Field(None, description="S3 folder for Athena query results.")
    athena_ctas_approach: bool = Field(
        False, description="awswrangler ctas_approach (fast; needs Glue create/delete table rights)."
    )
    athena_unload_approach: bool = Field(False, description="awswrangler unload_approach (Parquet, no Glue).")

    @field_validator("labels")
    @classmethod
    def _labels_not_empty(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            if len(v) < 2:
                raise ValueError("needs at least two labels, e.g. ['negative', 'positive'], or leave it unset")
            if len(set(v)) != len(v):
                raise ValueError("labels must be unique")
        return v

    @model_validator(mode="after")
    def _fractions(self) -> DataParams:
        test = DEFAULT_TEST_FRACTION if self.test_fraction is None else self.test_fraction
        if self.validation_fraction + test >= 0.8:
            raise ValueError("validation_fraction + test_fraction must leave at least 20% for training")
        if self.text_column.lower() == self.label_column.lower():  # SQL names ignore case
            raise ValueError(
                f"data.text_column and data.label_column are both {self.text_column!r}; "
                "they must name two different columns"
            )
        return self


class PreprocessParams(_Section):
    lowercase: bool = Field(True, description="Lowercase text before tokenising.")
    unicode_form: Literal["NFC", "NFKC", "NFD", "NFKD", "none"] = Field(
        "NFKC", description="Unicode normalisation form."
    )
    ngram_max: int = Field(2, ge=1, le=5, description="Word n-grams from 1 up to this length.")
    buckets: int | None = Field(
        None,
        ge=2**8,
        le=2**24,
        description="Number of hash buckets for n-gram features (embedding rows). "
        "Unset = chosen from the data (vocabulary size) after fetch.",
    )
    max_tokens: int = Field(256, ge=1, le=100_000, description="Words kept per text (longer texts are cut).")


class ModelParams(_Section):
    name: str = Field(
        "sentiment",
        pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$",
        description="Model name: the artifact folder `<root>/<name>/<model-id>/`.",
    )
    type: Literal["linear", "bow", "encoder"] | None = Field(
        None,
        description="linear: logistic regression on the hashed n-grams' TF-IDF, fitted to its optimum. bow: "
        "fastText-style EmbeddingBag + linear, trained by SGD in streamed batches (any size). encoder: pretrained "
        "sentence encoder (all-MiniLM-L6-v2) + linear head; needs `pip install 'trainkite[encoder]'`. "
        "Unset = from the data's size: linear while its whole n-gram matrix is small, bow above.",
    )
    embedding_dim: int | None = Field(
        None, ge=2, le=1024, description="Embedding size (bow). Unset = chosen from the data (label count)."
    )
    encoder_mode: Literal["frozen", "finetune"] = Field(
        "frozen",
        description="encoder: train only the head on the mean of every encoder layer (frozen) or the "
        "whole encoder on its sentence embedding (finetune).",
    )
    encoder_max_length: int = Field(
        128, ge=8, le=512, description="encoder: word pieces kept per text (longer texts are cut)."
    )


class TrainParams(_Section):
    # Unset (None) keys are resolved once after fetch from the data's statistics (tasks/defaults.py); a value
    # set here, in a params file, with --set, in the UI form or in --params-json passes through unchanged.
    epochs: int | None = Field(None, ge=1, le=1000, description="Maximum epochs. Unset = from the row count.")
    batch_size: int | None = Field(None, ge=1, le=65_536, description="Examples per step. Unset = from the row count.")
    learning_rate: float | None = Field(
        None,
        gt=0,
        le=LR_MAX,
        allow_inf_nan=False,
        description=(
            "Initial learning rate (linear decay to 0). bow: each embedding row's per-example rate (the linear "
            "layer's is this x sqrt(batch_size)); encoder: AdamW's. Unset = per model type."
        ),
    )
    warmup_fraction: float | None = Field(
        None,
        ge=0,
        lt=1,
        allow_inf_nan=False,
        description="Share of all steps over which the rate rises linearly from 0 to learning_rate "
        "before it decays (fine-tuning a pretrained encoder wants ~0.06). Unset = per model type.",
    )
    weight_decay: float = Field(0.0, ge=0, le=1, allow_inf_nan=False, description="L2 on the dense layer.")
    c: float = Field(
        4.0,
        gt=0,
        le=1e6,
        allow_inf_nan=False,
        description="linear: inverse L2 strength (scikit-learn's LogisticRegression C) over l2-normalised rows.",
    )
    patience: int | None = Field(
        None,
        ge=0,
        le=1000,
        description="Early stopping: epochs without validation improvement (0 = off). Unset = from the epochs.",
    )
    refit: bool | None = Field(
        None,
        description=(
            "After early stopping has picked the epoch on the validation split, train again from the same seed "
            "on train + validation for that many epochs and publish those weights (the test split stays out). "
            "Unset = from the row count (small data, where a tenth more rows is worth a second short fit)."
        ),
    )
    shuffle: Literal["rows", "blocks"] = Field(
        "blocks",
        description=(
            "Each epoch's order: windows of 1,024 random blocks of 1,024 consecutive rows, shuffled within each "
            "window (the snapshot stores each split in a hashed order, so a block is a random sample), which "
            "keeps the memory-mapped features resident at once to one window's; or rows, a permutation of all "
            "rows (the same thing up to one window, 1,048,576 rows; every page of the features resident above)."
        ),
    )
    kernel: Literal["native", "torch"] = Field(
        "native",
        description=(
            "bow's update on the CPU: native, one compiled loop per batch (numba, one thread; several times "
            "faster), or torch, the same update in torch ops (models made before native existed). They round "
            "differently, so each model's weights are reproduced with its own. CUDA and the encoder use torch."
        ),
    )
    seed: int = Field(1234, ge=0, le=2**32 - 1, description="Seed for weights and shuffling (0 to 2**32-1).")
    threads: int = Field(
        1,
        ge=1,
        le=256,
        description=(
            "torch CPU threads (fixed for bit-identical weights): the encoder, scoring, and bow under "
            "kernel = torch; bow's native kernel runs on one."
        ),
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = cuda when present.")
    amp: bool = Field(True, description="Mixed precision on CUDA.")
    checkpoint_every: int = Field(1, ge=1, le=1000, description="Write a checkpoint every N epochs.")
    checkpoint_interval_s: float = Field(
        30.0,
        ge=0,
        le=86_400,
        allow_inf_nan=False,
        description=(
            "At most one checkpoint per this many seconds of training (the last epoch's is always written): a "
            "crash loses at most this and an epoch, and a run of many short epochs does not write its weights "
            "after each one. A resumed run ends with the same weights whichever epoch it resumes from."
        ),
    )
    memory_limit_gib: float = Field(
        8.0,
        gt=0,
        le=1024,
        allow_inf_nan=False,
        description="Refuse parameters whose weights and training state are estimated to need more than this.",
    )


class EvaluationParams(_Section):
    query: str | None = Field(
        None, description="SQL for a separate human-labelled evaluation set (same source as data)."
    )
    primary_metric: Literal["accuracy", "macro_f1"] = Field(
        "macro_f1", description="Metric used for early stopping, champion comparison and sweeps."
    )


class ArtifactsParams(_Section):
    root: str | None = Field(
        None,
        description="Artifact store: a folder or s3://bucket/prefix. Default $TRAINKITE_HOME/artifacts.",
    )


class TrackingParams(_Section):
    backend: Literal["wandb", "none"] = Field("wandb", description="Experiment tracking.")
    project: str = Field(
        "trainkite",
        min_length=1,
        max_length=128,
        pattern=r"^[^/\\#?%:]+$",
        description="W&B project (at most 128 characters, none of / \\ # ? % :).",
    )
    entity: str | None = Field(None, description="W&B entity (team).")


class DeployParams(_Section):
    endpoint_name: str | None = Field(None, description="SageMaker endpoint (default: trainkite-<model name>).")
    instance_type: str = Field("ml.m5.large", description="SageMaker instance type.")
    instance_count: int = Field(1, ge=1, le=100, description="SageMaker instance count.")
    production_root: str | None = Field(None, description="Production artifact root (s3://bucket/prefix).")
    execution_role_arn: str | None = Field(None, description="SageMaker execution role ARN.")
    image: str | None = Field(None, description="Serving image URI; default the model manifest's lineage.docker_image.")
    wait_delay_s: float = Field(
        30, ge=0, le=600, description="Seconds between endpoint status polls while it is Creating/Updating."
    )
    wait_timeout_s: int = Field(
        3600, ge=1, le=4 * 3600, description="Give up waiting for the endpoint to be InService after this long."
    )


class Params(BaseModel):
    """Resolved training parameters (stored with every model)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    data: DataParams = Field(default_factory=DataParams, description="Which rows to train on.")
    preprocess: PreprocessParams = Field(default_factory=PreprocessParams, description="Text to features.")
    model: ModelParams = Field(default_factory=ModelParams, description="Architecture.")
    train: TrainParams = Field(default_factory=TrainParams, description="Optimisation.")
    evaluation: EvaluationParams = Field(default_factory=EvaluationParams, description="Scoring.")
    artifacts: ArtifactsParams = Field(default_factory=ArtifactsParams, description="Where models go.")
    tracking: TrackingParams = Field(default_factory=TrackingParams, description="W&B.")
    deploy: DeployParams = Field(default_factory=DeployParams, description="Serving target.")

    @model_validator(mode="after")
    def _test_split(self) -> Params:
        # Resolved at load, not after fetch: the split is drawn in the fetch. A separate evaluation set judges
        # the model, so a test split carved from the training rows would only take rows from the fit.
        if self.data.test_fraction is None:
            self.data.test_fraction = 0.0 if self.evaluation.query else DEFAULT_TEST_FRACTION
        return self

    @model_validator(mode="after")
    def _fits_in_memory(self) -> Params:
        need = estimated_memory_bytes(self)
        limit = self.train.memory_limit_gib * GIB
        if need > limit:
            raise ValueError(
                f"preprocess.buckets x model.embedding_dim = {self.preprocess.buckets} x {self.model.embedding_dim} "
                f"is a {need / 3 / GIB:.1f} GiB table, about {need / GIB:.1f} GiB with its training state (more than "
                f"train.memory_limit_gib = {self.train.memory_limit_gib:g}); lower preprocess.buckets or "
                "model.embedding_dim, or raise train.memory_limit_gib"
            )
        return self

    def unresolved(self) -> list[str]:
        """The keys still unset (None), to be resolved from the data after fetch."""
        return [f"{section}.{key}" for section, key in AUTO_KEYS if getattr(getattr(self, section), key) is None]

    def require_resolved(self) -> None:
        """Trainers and featurizers need every key: a `Params` straight from a file must be resolved first."""
        missing = self.unresolved()
        if missing:
            raise ParamsError(
                f"parameters {', '.join(missing)} are unset: resolve them from the data first "
                "(tasks.defaults.resolve_params), or set them"
            )

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def params_hash(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    def preprocess_key(self) -> dict[str, Any]:
        """What decides the features besides the data (the preprocess cache key is built from this)."""
        if self.model.type == "encoder":
            # The encoder tokenizes for itself: the n-gram settings play no part in its features.
            return {"type": "encoder", "mode": self.model.encoder_mode, "max_length": self.model.encoder_max_length}
        return self.preprocess.model_dump(mode="json")


AUTO_KEYS: tuple[tuple[str, str], ...] = (
    ("model", "type"),  # first: the other keys' rules depend on it
    ("preprocess", "buckets"),
    ("model", "embedding_dim"),
    ("train", "epochs"),
    ("train", "batch_size"),
    ("train", "learning_rate"),
    ("train", "warmup_fraction"),
    ("train", "patience"),
    ("train", "refit"),
)


def estimated_memory_bytes(params: Params) -> int:
    """Bytes the bow table needs while training: the weights, the best epoch's copy and the checkpoint's copy
    (float32 each), plus a sparse gradient of at most one batch's rows. 0 when unknown yet (unset keys), for
    the encoder (its size is fixed by the packaged model) and for linear (a weight per class and seen n-gram)."""
    # Unset, the type is bow wherever an embedding size is set (tasks/defaults.py: model_type).
    if (
        params.model.type not in ("bow", None)
        or params.preprocess.buckets is None
        or params.model.embedding_dim is None
    ):
        return 0
    return 3 * params.preprocess.buckets * params.model.embedding_dim * 4


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid parameters in {source}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            parent = _section_for(e["loc"][:-1])
            allowed = ", ".join(sorted(parent.model_fields)) if parent else ""
            msg = f"unknown key; allowed keys here: {allowed}"
        elif e["type"] == "literal_error" and e.get("ctx", {}).get("expected"):
            msg = f"{msg}"
        got = e.get("input")
        got_s = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  {key}: {msg}{got_s}")
    return "\n".join(lines)


def _section_for(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] = Params
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            return None
        model = field.annotation
    return model


def validate_params(data: dict[str, Any], source: str = "parameters") -> Params:
    try:
        return Params.model_validate(data)
    except ValidationError as err:
        raise ParamsError(_format_validation_error(err, source)) from None


def read_params_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():  # "not found" would mislead for a folder that exists
        raise ParamsError(f"params file {str(p)!r} is a folder, not a TOML file (e.g. params/sentiment.toml)")
    if not p.is_file():
        raise ParamsError(f"params file {str(p)!r} not found (try params/sentiment.toml or params/topic.toml)")
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise ParamsError(f"params file {str(p)!r} cannot be read: {err}") from None
    except tomllib.TOMLDecodeError as err:
        raise ParamsError(f"params file {str(p)!r} is not valid TOML: {err}") from None


def _parse_value(raw: str) -> Any:
    """`--set` values are TOML literals (42, 0.1, true, "x", [..]); a bare `null` unsets the key (TOML has no null:
    a key the params file sets, such as data.labels or train.epochs, is then left to the data); anything else is a
    plain string."""
    if raw == "null":
        return None
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ParamsError(f"override {pair!r} must look like section.key=value (e.g. train.epochs=5)")
        out[key] = _parse_value(raw.strip())
    return out


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = json.loads(json.dumps(data))
    for key, value in overrides.items():
        parts = key.split(".")
        if len(parts) != 2:
            sections = ", ".join(Params.model_fields)
            raise ParamsError(f"override key {key!r} must be section.key; sections: {sections}")
        section, name = parts
        if section not in Params.model_fields:
            sections = ", ".join(Params.model_fields)
            raise ParamsError(f"override key {key!r}: unknown section {section!r}; allowed: {sections}")
        merged.setdefault(section, {})[name] = value
    return merged


def load_params(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None) -> Params:
    """Read a params file, apply `section.key=value` overrides, validate."""
    path = Path(path) if path else DEFAULT_PARAMS_FILE
    data = read_params_file(path)
    if overrides:
        ov = parse_overrides(overrides) if isinstance(overrides, list) else overrides
        data = apply_overrides(data, ov)
    return validate_params(data, source=str(path))
