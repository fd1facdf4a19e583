"""A small mutation check: plant known bugs one at a time and see whether the tests catch them.

Each mutation replaces one exact snippet of one file (it must occur exactly once, so a
mutation that no longer applies after a refactor fails loudly instead of passing silently).
For each, the tree is copied to a temporary folder, the snippet replaced, and the tests that
guard that code run there in the default mode (what `make test` and CI run, slow tests
deselected). A mutation is *caught* when those tests fail. The unmutated copy must pass the
same tests first, or no verdict means anything.

    python tests/mutations.py            # every mutation: a caught / missed table
    python tests/mutations.py -k loss    # only the mutations whose name contains "loss"

Exit status 0 when every mutation is caught, 1 when one is missed, 2 when the check itself
cannot run (a snippet not found, or the unmutated tests fail).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    """One planted bug: `old` (exactly once in `path`) becomes `new`; `tests` should fail."""

    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]

    def apply(self, root: Path) -> None:
        file = root / self.path
        text = file.read_text()
        found = text.count(self.old)
        if found != 1:
            raise LookupError(f"{self.name}: the snippet occurs {found} times in {self.path}")
        file.write_text(text.replace(self.old, self.new))


TRAINING = ("tests/device/test_sequence_training.py", "tests/shared/test_batching.py")
LOSSES = ("tests/device/test_losses.py", "tests/device/test_sequence_training.py")
AUC = ("tests/simulations/test_auc.py",)
ITEM_LM = ("tests/cloud/test_item_lm.py",)
FEATURES = ("tests/device/test_policies.py", "tests/simulations/test_policy_features.py")
LAYERS = ("tests/test_layers.py",)
GUARDS = ("tests/cloud/test_server.py",)
ONNX = ("tests/device/test_onnx.py",)
EXCLUSION = ("tests/cloud/test_server.py", "tests/simulations/test_replay.py")
FUSION = ("tests/device/test_fusion.py",)
STARTUP = ("tests/cloud/test_startup.py",)
ITEM_TEXT = ("tests/cloud/test_item_text.py",)
COLD = ("tests/shared/test_splits.py",)
DISTRIBUTED = ("tests/device/test_distributed.py",)
TABLES = ("tests/simulations/test_replay.py",)
SWEEP = ("tests/simulations/test_request_rate.py",)

MUTATIONS = (
    Mutation(
        "the batched sweep draws one shared uniform for every user's split tie",
        "simulations/request_rate/decisions.py",
        "            wins = draws[rows, drawn] < tie_prob",
        "            wins = draws[0, drawn[0]] < tie_prob",
        SWEEP,
    ),
    Mutation(
        "each process's loss not weighted by its share of the batch",
        "seqrec/training.py",
        "(loss * share).backward()",
        "loss.backward()",
        DISTRIBUTED,
    ),
    Mutation(
        "batched tables score the held lists with the state after the click",
        "simulations/replay/tables.py",
        "            for j in range(t + 1):\n                logits[:, pair_count(t) + j] = model.score_features",
        "            state, _ = model.step(state, torch.as_tensor([seq[start + t] for seq, start in zip(sequences, starts)]))\n            for j in range(t + 1):\n                logits[:, pair_count(t) + j] = model.score_features",
        TABLES,
    ),
    Mutation(
        "window target = the current click",
        "shared/batching.py",
        "np.where(trained, seq[start + 1 : start + 1 + width], 0)",
        "np.where(trained, seq[start : start + width], 0)",
        TRAINING,
    ),
    Mutation(
        "prefix target = the last click of the history",
        "shared/batching.py",
        "targets = np.array([self.sequences[u][p] for u, p",
        "targets = np.array([self.sequences[u][p - 1] for u, p",
        TRAINING,
    ),
    Mutation(
        "log-Q correction with its sign flipped",
        "seqrec/losses.py",
        "neg = neg - (log_q + math.log(max(neg.shape[-1], 1)))",
        "neg = neg + (log_q + math.log(max(neg.shape[-1], 1)))",
        LOSSES,
    ),
    Mutation(
        "full softmax without the own-item mask",
        "seqrec/losses.py",
        'return F.cross_entropy(logits.masked_fill(exclude, float("-inf")), targets)',
        "return F.cross_entropy(logits, targets)",
        LOSSES,
    ),
    Mutation(
        "topic switch read one click late",
        "simulations/request_rate/auc.py",
        "last = int(data.stream.starts[row]) + step - 1",
        "last = int(data.stream.starts[row]) + step",
        AUC,
    ),
    Mutation(
        "fresh-list label flipped",
        "simulations/request_rate/auc.py",
        "ranks[rows, steps, steps] < ranks[rows, steps, held]",
        "ranks[rows, steps, steps] > ranks[rows, steps, held]",
        AUC,
    ),
    Mutation(
        "measure scores read at the previous step",
        "simulations/request_rate/auc.py",
        "measure_table(data, name)[rows, steps, held]",
        "measure_table(data, name)[rows, steps - 1, held]",
        AUC,
    ),
    Mutation(
        "top-N excludes only the last max_len clicks",
        "cloud/base.py",
        "return [np.unique(h) for h in histories]",
        "return [np.unique(h[-self.config.max_len :]) for h in histories]",
        ITEM_LM,
    ),
    Mutation(
        "a request's exclusion is ignored",
        "cloud/base.py",
        "items = np.union1d(history, extra)",
        "items = np.unique(history)",
        EXCLUSION,
    ),
    Mutation(
        "the age-aware fusion ignores the list's age",
        "device/fusion.py",
        "alpha = self.alpha_of(age)[:, None]  # [U, 1]",
        "alpha = self.alpha_of(np.zeros_like(age))[:, None]  # [U, 1]",
        FUSION,
    ),
    Mutation(
        "a model folder is loaded without checking its manifest",
        "shared/manifest.py",
        "return verify_manifest(folder, kind, (MODEL_FOLDER_VERSION,), unread=UNREAD_FILES)",
        "return None",
        STARTUP,
    ),
    Mutation(
        "top-N from the state before the last click",
        "cloud/item_lm.py",
        "padded = torch.from_numpy(pad_histories(histories, self.config.max_len))",
        "padded = torch.from_numpy(pad_histories([h[:-1] for h in histories], self.config.max_len))",
        ITEM_LM,
    ),
    Mutation(
        "device features swap the last and mean surprise rows",
        "device/policies/learned.py",
        "(last[None], mean[None]),",
        "(mean[None], last[None]),",
        FEATURES,
    ),
    Mutation(
        "device imports the cloud through importlib",
        "device/fusion.py",
        "\nimport numpy as np\n",
        '\nimport importlib\n\nimport numpy as np\n\n_CLOUD = importlib.import_module("cloud.base")\n',
        LAYERS,
    ),
    Mutation(
        "device imports transformers",
        "device/fusion.py",
        "\nimport numpy as np\n",
        "\nimport numpy as np\nimport transformers  # noqa: F401\n",
        LAYERS,
    ),
    Mutation(
        "streamed calls (health Watch) not guarded",
        "cloud/guards.py",
        "unary_stream=_guard_unary_request(handler.unary_stream),",
        "unary_stream=handler.unary_stream,",
        GUARDS,
    ),
    Mutation(
        "ONNX runtime feeds the state in the wrong order",
        "device/onnx_runtime.py",
        "for name, dtype, array in zip(STATE_NAMES, self._dtypes, state.arrays)",
        "for name, dtype, array in zip(STATE_NAMES, self._dtypes, state.arrays[::-1])",
        ONNX,
    ),
    Mutation(
        "text pooling averages the padding tokens too",
        "cloud/item_text.py",
        "pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)",
        "pooled = hidden.mean(1)",
        ITEM_TEXT,
    ),
    Mutation(
        "cold items stay in the training parts",
        "shared/splits.py",
        "train = [part[~np.isin(part, cold)] for part in train]",
        "train = [part for part in train]",
        COLD,
    ),
    Mutation(
        "items never clicked in training keep their id embedding",
        "cloud/item_lm.py",
        "            has_id = self.id_known\n",
        "            has_id = torch.ones_like(self.id_known)\n",
        ITEM_TEXT,
    ),
)


def copy_tree(destination: Path) -> None:
    """The files git knows or would add (tracked and untracked, not ignored) into `destination`."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT, check=True, capture_output=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def run_tests(root: Path, tests: tuple[str, ...]) -> tuple[bool, float, str]:
    """Run `tests` in the copy at `root`, its code first on the path; (passed, seconds, the
    first failing test or "")."""
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1"}
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    began = time.perf_counter()
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    if done.returncode not in (0, 1):  # 2-5: interrupted, internal error, usage, none collected
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
        raise RuntimeError(f"pytest exited {done.returncode} on {' '.join(tests)}:\n{tail}")
    failed = re.search(r"^FAILED (\S+)", done.stdout, re.MULTILINE)
    return done.returncode == 0, time.perf_counter() - began, failed.group(1) if failed else ""


def check_imports_come_from(root: Path) -> None:
    """The copy's own packages, not the editable install's, must be what its tests import."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    code = "import shared, sys; print(shared.__file__)"
    found = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, check=True,
                           capture_output=True, text=True).stdout.strip()  # fmt: skip
    if not Path(found).resolve().is_relative_to(root.resolve()):
        raise RuntimeError(f"the copy imports the project from {found}, not from itself")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", default="", help="run only mutations whose name contains this")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if args.k in m.name]
    if not chosen:
        print(f"no mutation name contains {args.k!r}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="lsc4rec-mutations-") as scratch:
        pristine = Path(scratch) / "pristine"
        copy_tree(pristine)
        check_imports_come_from(pristine)
        every_test = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
        try:
            for mutation in chosen:  # every snippet must still be found
                mutation.apply(Path(shutil.copytree(pristine, Path(scratch) / "probe")))
                shutil.rmtree(Path(scratch) / "probe")
            passed, seconds, _ = run_tests(pristine, every_test)
        except (LookupError, RuntimeError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        if not passed:
            print("error: the guarding tests fail without any mutation", file=sys.stderr)
            return 2
        print(f"unmutated: the guarding tests pass ({seconds:.0f} s)\n")
        print(f"| {'mutation':<55} | verdict | seconds | the test that caught it")
        print(f"| {'-' * 55} | ------- | ------- | -----------------------")
        missed = 0
        for mutation in chosen:
            tree = Path(shutil.copytree(pristine, Path(scratch) / "mutant"))
            mutation.apply(tree)
            passed, seconds, failed = run_tests(tree, mutation.tests)
            shutil.rmtree(tree)
            missed += passed
            verdict = "MISSED" if passed else "caught"
            caught_by = (
                failed.removeprefix("tests/") or "(none of " + ", ".join(mutation.tests) + ")"
            )
            print(
                f"| {mutation.name:<55} | {verdict:<7} | {seconds:7.0f} | {caught_by}", flush=True
            )
    print(f"\n{len(chosen) - missed} of {len(chosen)} caught")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
