"""Base policies shipped inside the package: one per built-in domain, trained with the
`base_policy` asset's trainer and defaults, so that a run starts where a real user starts (from
a pretrained policy) instead of spending its first minutes on pretraining. Beside them, verifier
backbones (`role: verifier`): the same model trained longer, which the PRM reads steps with
(a verifier must compute better than the policy it checks: README, "A PRM that verifies").

A shipped policy is a directory under `qstar_dagster/policies/<domain>/`: the model and its
tokenizer as `save_pretrained` writes them, the trainer's summary (`training.json`, with its
curves) and `shipped.json`, the manifest: the training prompt set and its version, the
config that trained it, its figures, and the sha256 of every file. Loading checks every file
against the manifest, and the training set's version against the store's.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from qstar_dagster.lineage.files import file_sha256
from qstar_dagster.training.checkpoints import SUMMARY, read_summary

SHIPPED_ROOT = Path(__file__).resolve().parent.parent / "policies"
MANIFEST = "shipped.json"
REBUILD = "qstar ship-policy --domain {domain}"
REBUILD_VERIFIER = ("{command}, then bench/ship_trained.py --role verifier (its manifest's trained_by says how; "
                    "README, \"A PRM that verifies\")")
ROLES = ("policy", "verifier")


class ShippedPolicyError(RuntimeError):
    """A shipped policy's files do not match its manifest, or it does not fit the store."""


@dataclass(frozen=True)
class ShippedPolicy:
    path: Path
    manifest: dict

    @property
    def domain(self) -> str:
        return self.manifest["domain"]

    @property
    def train_prompt_set(self) -> str:
        return self.manifest["train_prompt_set"]

    @property
    def train_version(self) -> str:
        return self.manifest["train_prompt_set_version"]

    @property
    def config(self) -> dict:
        """What trained it: the `base_policy` config, template and architecture included."""
        return self.manifest["config"]

    @property
    def files(self) -> dict[str, str]:
        return self.manifest["files"]

    @property
    def role(self) -> str:
        """policy (a base policy) or verifier (a PRM's backbone); manifests from before roles are policies."""
        return self.manifest.get("role", "policy")

    def rebuild_hint(self) -> str:
        if self.role != "verifier":
            return REBUILD.format(domain=self.domain)
        # a verifier is made by a bench, which its manifest names: trained_by is "<command>: <what it did>"
        command = self.manifest.get("trained_by", "").split(": ", 1)[0]
        return REBUILD_VERIFIER.format(command=f"python {command}" if command else "the bench that trained it")


def shipped_policies(root: Path | None = None, role: str = "policy") -> dict[str, ShippedPolicy]:
    """Every shipped model of `role` under `root` (default: the package's), keyed by the prompt
    set it was trained on."""
    root, found = root or SHIPPED_ROOT, {}
    for manifest in sorted(root.glob(f"*/{MANIFEST}")) if root.is_dir() else []:
        policy = ShippedPolicy(manifest.parent, json.loads(manifest.read_text()))
        if policy.role == role:
            found[policy.train_prompt_set] = policy
    return found


def shipped_verifier(train_prompt_set: str, root: Path | None = None) -> ShippedPolicy | None:
    """The verifier backbone shipped for `train_prompt_set`, its files checked; None if none is."""
    verifier = shipped_policies(root, role="verifier").get(train_prompt_set)
    if verifier is not None:
        verify(verifier)
    return verifier


def shipped_policy(train_prompt_set: str, root: Path | None = None) -> ShippedPolicy:
    """The shipped policy trained on `train_prompt_set`, its files checked against its manifest."""
    available = shipped_policies(root)
    if train_prompt_set not in available:
        raise LookupError(
            f"no policy shipped with the package was trained on prompt set {train_prompt_set!r} (shipped: "
            f"{', '.join(f'{s} ({p.domain})' for s, p in available.items()) or 'none'}); set the base_policy "
            f"config `shipped: false` to train one from scratch, or `model_path` to use your own")
    policy = available[train_prompt_set]
    verify(policy)
    return policy


def verify(policy: ShippedPolicy) -> None:
    """Every file the manifest lists is there with its sha256; nothing else is loaded."""
    manifest = policy.path / MANIFEST
    for name, want in policy.files.items():
        f = policy.path / name
        if not f.is_file():
            raise ShippedPolicyError(f"{f}: missing, but {manifest} lists it; reinstall the package "
                                     f"(`make install`) or rebuild the policy with `{policy.rebuild_hint()}`")
        got = file_sha256(f)
        if got != want:
            raise ShippedPolicyError(f"{f}: sha256 {got[:16]}… is not the {want[:16]}… that {manifest} records "
                                     f"(the file was changed or truncated); reinstall the package (`make install`) "
                                     f"or rebuild the policy with `{policy.rebuild_hint()}`")


def check_fits(policy: ShippedPolicy, store_version: str) -> None:
    """The store's version of the training set is the one the policy was trained on."""
    if store_version != policy.train_version:
        raise ShippedPolicyError(
            f"the shipped {policy.domain} {policy.role} was trained on {policy.train_prompt_set}@{policy.train_version}, "
            f"but the store has {policy.train_prompt_set}@{store_version} (the domain's generator or its "
            f"defaults changed); rebuild it with `{policy.rebuild_hint()}`, or set `shipped: false`")


def prm_backbone(choice: str, train_prompt_set: str, store_version: str,
                 root: Path | None = None) -> tuple[ShippedPolicy | None, str]:
    """Which LM a PRM reads steps with: (the shipped verifier, or None for the starting
    policy's own LM or a model directory, and why). `choice`: `auto` (the verifier shipped for
    the training prompt set when there is one and it learned on this version of the set, else
    the policy), `verifier` (that verifier, or an error), `policy`, or a model directory."""
    if choice == "policy" or choice not in ("auto", "verifier"):
        return None, "asked for"
    verifier = shipped_verifier(train_prompt_set, root)
    if verifier is None or verifier.train_version != store_version:
        if choice == "verifier":
            if verifier is None:
                raise LookupError(f"prm_model backbone=verifier: no verifier is shipped with the package for "
                                  f"prompt set {train_prompt_set!r}; set backbone to auto or policy, or to a model "
                                  f"directory")
            check_fits(verifier, store_version)
        return None, (f"no verifier is shipped for {train_prompt_set}" if verifier is None else
                      f"the shipped verifier learned on {train_prompt_set}@{verifier.train_version}, the store has "
                      f"@{store_version}")
    return verifier, f"the {verifier.domain} verifier shipped with the package"


def copy_files(policy: ShippedPolicy, out_dir: Path) -> dict:
    """The policy's files into `out_dir` (a checkpoint directory); returns its training summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in policy.files:
        shutil.copy2(policy.path / name, out_dir / name)
    return read_summary(policy.path) or {}


def write_shipped(model_dir: Path, dest: Path, *, domain: str, train_prompt_set: str, train_version: str,
                  config: dict, metrics: dict, trained_by: str, role: str = "policy",
                  half: bool = False) -> ShippedPolicy:
    """Ship the checkpoint in `model_dir` as `dest` (replacing what is there): its files, and
    a manifest with their sha256, what trained it and its figures. `half`: store the weights
    in float16 (half the bytes, for the package's 10 MB) while its config still says float32,
    so every loader computes in float32 as the model was trained."""
    scratch = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    if half:
        _save_half(model_dir, scratch)
    for f in sorted(model_dir.iterdir()):
        if f.is_file() and f.name != MANIFEST and not (half and (scratch / f.name).exists()):
            shutil.copy2(f, scratch / f.name)
    files = {f.name: file_sha256(f) for f in sorted(scratch.iterdir())
             if f.name != SUMMARY}  # the summary is documentation, not the model
    if role not in ROLES:
        raise ValueError(f"a shipped model's role is one of {', '.join(ROLES)}, not {role!r}")
    manifest = {"domain": domain, "train_prompt_set": train_prompt_set, "train_prompt_set_version": train_version,
                "config": config, "metrics": metrics, "trained_by": trained_by, "files": files,
                **({"role": role} if role != "policy" else {})}
    (scratch / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    scratch.rename(dest)
    return ShippedPolicy(dest, manifest)


def _save_half(model_dir: Path, out: Path) -> None:
    """The model's weights in float16 and its config, which keeps float32 as the dtype it loads in."""
    import torch
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(model_dir).to(torch.float16).save_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "dtype": "float32"}, indent=2, sort_keys=True) + "\n")
