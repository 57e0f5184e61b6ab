"""Read and write checkpoints in the layout of the authors' ``cellplm`` package.

A checkpoint is a pair of files sharing a prefix: ``{prefix}.config.json`` (the model settings and
the gene vocabulary ``gene_list``) and ``{prefix}.best.ckpt`` (``{"model_state_dict": ...}``). The
state dict is read with ``torch.load(weights_only=True)`` (a file that needs more, which could run
code, is refused as invalid); every parameter that has no counterpart
(or the wrong shape) is reported rather than silently dropped, as the authors' loader does.
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import TYPE_CHECKING, Any

import torch

from scfound._validate import check_anndata

from ..base._save import ModelFileError, ModelFileNotFoundError, load_tensors, read_json_file

if TYPE_CHECKING:
    from anndata import AnnData

    from ._model import CellPLM

logger = logging.getLogger(__name__)

CONFIG_SUFFIX = ".config.json"
WEIGHTS_SUFFIX = ".best.ckpt"

#: (authors' name, scfound name) templates of every parameter that carries over; ``{x}`` fields
#: stand for one name component (letters and digits)
KEY_MAP: list[tuple[str, str]] = [
    ("embedder.feat_enc.emb", "embedder.gene_embedding"),
    ("embedder.extra_linear.{i}.{p}", "embedder.projection.{i}.{p}"),
    ("embedder.pe_enc.missing_pe", "embedder.missing_pe"),
    ("embedder.pe_enc.pe_enc.weight", "embedder.position_table"),
    (
        "encoder.layers.{l}.self_attn.{qkv}_projection.{p}",
        "encoder.layers.{l}.attention.{qkv}.{p}",
    ),
    ("encoder.layers.{l}._ff_block.{i}.{p}", "encoder.layers.{l}.feed_forward.{i}.{p}"),
    ("encoder.layers.{l}.{norm}.{p}", "encoder.layers.{l}.{norm}.{p}"),
    ("pre_latent_norm.norm.{p}", "encoder_norm.{p}"),
    ("latent.layers.1.inference.inference_qyx.0.logits.{p}", "latent.cluster_logits.{p}"),
    ("latent.layers.1.inference.inference_qzyx.0.{p}", "latent.posterior.0.{p}"),
    ("latent.layers.1.inference.inference_qzyx.2.mu.{p}", "latent.z_mean.{p}"),
    ("latent.layers.1.inference.inference_qzyx.2.var.{p}", "latent.z_var.{p}"),
    ("latent.layers.1.inference.y_mu.{p}", "latent.prior_mean.{p}"),
    ("latent.layers.1.inference.y_var.{p}", "latent.prior_var.{p}"),
    ("decoder.layers.{l}.{i}.{p}", "decoder.layers.{l}.{i}.{p}"),
    ("decoder.covariate_layers.{l}.{cov}.{i}.{p}", "decoder.covariates.{l}.{cov}.{i}.{p}"),
    ("decoder.out_layer.dec_disp", "decoder.log_dispersion"),
    ("decoder.out_layer.dec_1.{p}", "decoder.bottleneck.{p}"),
    ("decoder.out_layer.dec_mean.0.{p}", "decoder.output.{p}"),
]

#: authors' parameters that their forward pass never uses (their ``norm0`` is commented out)
UNUSED = ("embedder.norm0.{p}",)


def _pattern(template: str) -> re.Pattern:
    parts = re.split(r"\{(\w+)\}", template)
    regex = "".join(
        re.escape(part) if i % 2 == 0 else f"(?P<{part}>[A-Za-z0-9]+)"
        for i, part in enumerate(parts)
    )
    return re.compile(regex)


def _translate(key: str, direction: int) -> str | None:
    for pair in KEY_MAP:
        match = _pattern(pair[direction]).fullmatch(key)
        if match:
            return pair[1 - direction].format(**match.groupdict())
    return None


def to_scfound_key(key: str) -> str | None:
    """Name in scfound of an authors' parameter (``None`` when it has none)."""
    return _translate(key, 0)


def to_authors_key(key: str) -> str | None:
    """Name in the authors' layout of a scfound parameter (``None`` when it has none)."""
    return _translate(key, 1)


def config_to_params(config: dict[str, Any]) -> dict[str, Any]:
    """Settings of a :class:`CellPLM` for an authors' config; unsupported settings raise."""
    unsupported = {
        "enc_mod": ("flowformer",),
        "latent_mod": ("gmvae",),
        "dec_mod": ("nbmlp", "mlp"),
        "cat_pe": (False,),
        "dsbn": (False,),
        "dar": (False,),
        "ecs": (False,),
        "input_covariate": (False,),
        "mask_type": ("input",),
    }
    for key, allowed in unsupported.items():
        if key in config and config[key] not in allowed:
            raise ValueError(
                f"checkpoint config has {key}={config[key]!r}; scfound reads {key} in {allowed}."
            )
    if config.get("platform_num", 0):
        raise ValueError("checkpoint config has platform_num > 0, which scfound does not read.")
    if "gene_list" not in config:
        raise ValueError("checkpoint config has no `gene_list` (the gene vocabulary).")
    return {
        "vocabulary": [str(g) for g in config["gene_list"]],
        "n_hidden": int(config["enc_hid"]),
        "n_layers": int(config["enc_layers"]),
        "n_heads": int(config.get("enc_head", 8)),
        "n_latent": int(config["post_latent_dim"]),
        "n_clusters": int(config.get("num_clusters", 16)),
        "n_decoder_hidden": int(config["dec_hid"]),
        "n_decoder_layers": int(config["dec_layers"]),
        "n_batch": int(config.get("batch_num", 0)),
        "n_dataset": int(config.get("dataset_num", 0)),
        "likelihood": "nb" if config.get("dec_mod", "nbmlp") == "nbmlp" else "mse",
        "dropout": float(config.get("model_dropout", 0.1)),
        "norm": config.get("norm", "layernorm"),
        "cell_mask_rate": float(config.get("mask_node_rate", 0.5)),
        "gene_mask_rate": float(config.get("mask_feature_rate", 0.8)),
        "mask_beta": bool(config.get("mask_beta", False)),
        "drop_node_rate": float(config.get("drop_node_rate", 0.0)),
        # the released model: log1p of raw counts, no positional encoding, summed covariates
        "input_transform": "log1p",
        "spatial_pe": False,
        "covariate_mixture": "sum",
        "use_covariates": False,
    }


def checkpoint_paths(path: str) -> tuple[str, str]:
    """``(config, weights)`` file names for a prefix or either file's path."""
    path = os.fspath(path)
    for suffix in (CONFIG_SUFFIX, WEIGHTS_SUFFIX):
        if path.endswith(suffix):
            path = path[: -len(suffix)]
    config, weights = path + CONFIG_SUFFIX, path + WEIGHTS_SUFFIX
    for file in (config, weights):
        if not os.path.exists(file):
            raise ModelFileNotFoundError(
                f"{file} not found: a checkpoint is the pair {{prefix}}{CONFIG_SUFFIX} + "
                f"{{prefix}}{WEIGHTS_SUFFIX}."
            )
    return config, weights


def load_authors_checkpoint(
    cls: type[CellPLM],
    path: str,
    adata: AnnData,
    *,
    gene_key: str | None = None,
    drop_unknown_genes: bool = True,
    **overrides,
) -> CellPLM:
    """Build a :class:`CellPLM` from an authors' checkpoint (:meth:`CellPLM.load_pretrained`)."""
    check_anndata(adata)
    config_file, weights_file = checkpoint_paths(path)
    config = read_json_file(config_file, "checkpoint config")
    if not isinstance(config, dict):
        raise ModelFileError(
            f"checkpoint config {config_file} holds a JSON {type(config).__name__}, not an object."
        )
    try:
        params = {**config_to_params(config), **overrides}
    except (KeyError, TypeError, ValueError) as err:
        if isinstance(err, ValueError) and str(err).startswith("checkpoint config has"):
            raise ModelFileError(f"{config_file}: {err}") from None
        what = f"no `{err.args[0]}`" if isinstance(err, KeyError) else f"a malformed value ({err})"
        raise ModelFileError(
            f"checkpoint config {config_file} has {what}; it is not a CellPLM config."
        ) from None
    payload = load_tensors(weights_file, "CellPLM checkpoint")
    state = payload.get("model_state_dict", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ModelFileError(
            f"{weights_file} is not a valid CellPLM checkpoint: it holds no state dict "
            "(parameter names and tensors, optionally under `model_state_dict`)."
        )

    model = cls(adata, gene_key=gene_key, drop_unknown_genes=drop_unknown_genes, **params)
    ours = model.module.state_dict()
    mapped, unmatched, mismatched = {}, [], []
    for key, value in state.items():
        target = to_scfound_key(key)
        if target is None or target not in ours:
            if not any(_pattern(p).fullmatch(key) for p in UNUSED):
                unmatched.append(key)
            continue
        if tuple(value.shape) != tuple(ours[target].shape):
            mismatched.append(f"{key}: {tuple(value.shape)} vs {tuple(ours[target].shape)}")
            continue
        mapped[target] = value
    if mismatched:
        raise ValueError(
            f"checkpoint {weights_file} does not match its config {config_file}: "
            f"{len(mismatched)} parameter shapes differ ({'; '.join(mismatched[:5])})."
        )
    missing = [k for k in ours if k not in mapped]
    model.module.load_state_dict(mapped, strict=False)
    genes = cls._gene_names(adata, gene_key)
    known = set(model.vocabulary)
    report = {
        "unmatched_checkpoint_parameters": unmatched,
        "parameters_not_in_checkpoint": missing,
        "genes_not_in_vocabulary": [g for g in genes if g not in known],
        "n_genes_matched": int(sum(g in known for g in genes)),
    }
    for name, items in report.items():
        if isinstance(items, list) and items:
            logger.warning("%s: %d (e.g. %s)", name, len(items), items[:5])
    model.pretrained_report_ = report
    model.pretrained_ = True
    model.module.eval()
    return model


def export_authors_checkpoint(model: CellPLM, prefix: str) -> None:
    """Write ``model`` in the authors' layout (readable by ``cellplm``'s ``load_pretrain``).

    Parameters
    ----------
    model
        The model to write.
    prefix
        Path prefix of the two files, ``{prefix}.config.json`` and ``{prefix}.best.ckpt``; a
        missing parent folder is created.
    """
    module = model.module
    if module.classifier is not None:
        logger.warning("the annotation head is not part of the authors' layout; it is not written.")
    state = {}
    for key, value in module.state_dict().items():
        source = to_authors_key(key)
        if source is not None:
            state[source] = value
    dec = module.decoder
    config = {
        "enc_mod": "flowformer",
        "enc_hid": module.encoder_norm.normalized_shape[0],
        "enc_layers": len(module.encoder.layers),
        "enc_head": module.encoder.layers[0].attention.n_heads,
        "post_latent_dim": module.latent.z_mean.out_features,
        "num_clusters": module.latent.n_clusters,
        "dec_mod": "nbmlp" if module.likelihood == "nb" else "mlp",
        "dec_hid": dec.bottleneck.in_features,
        "dec_layers": len(dec.layers) + 1,
        "out_dim": len(model.vocabulary),
        "batch_num": dec.n_covariates["batch"],
        "dataset_num": dec.n_covariates["dataset"],
        "latent_mod": "gmvae",
        "pe_type": "sin",
        "cat_pe": False,
        "gene_list": list(model.vocabulary),
        "mask_node_rate": module.cell_mask_rate,
        "mask_feature_rate": module.gene_mask_rate,
        "mask_beta": module.mask_beta,
        "drop_node_rate": module.drop_node_rate,
    }
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    with open(prefix + CONFIG_SUFFIX, "w") as fh:
        json.dump(config, fh)
    torch.save({"model_state_dict": state}, prefix + WEIGHTS_SUFFIX)
