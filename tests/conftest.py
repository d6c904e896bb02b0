"""Shared fixtures: one tiny random BERT + word-level tokenizer per session, built in-process.

Nothing is downloaded. Each test gets a deep copy so training in one test cannot
leak into another.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("METRIC_SIM_DATA", REPO_ROOT.parent / "shared" / "data")).resolve()
DEMO_FILE = REPO_ROOT / "metric_sim" / "demo_data" / "demo_pairs.tsv"

requires_data = pytest.mark.skipif(
    not DATA_DIR.is_dir(), reason=f"real benchmark data not found at {DATA_DIR} (set METRIC_SIM_DATA)"
)

# One OpenMP thread per rank (waiting passively): the ranks share 2 cores, and 1-thread ranks run the same
# kernels as an in-process run under ``one_torch_thread``.
TORCHRUN_ENV = {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(REPO_ROOT),
                "TOKENIZERS_PARALLELISM": "false"}


def torchrun(*args: str, nproc: int = 2, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc_per_node NPROC ARGS`` on CPU from the repository root (standalone
    picks a free port); the test fails with the tail of the output unless the launcher exits 0."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *args]
    with subprocess.Popen(command, cwd=REPO_ROOT, env={**os.environ, **TORCHRUN_ENV}, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as launcher:
        try:
            stdout, stderr = launcher.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            # SIGTERM first: the launcher then stops its ranks, which run in sessions of their own, so
            # killing the launcher alone (what subprocess.run does) would leave them busy on the cores.
            launcher.terminate()
            try:
                stdout, stderr = launcher.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                launcher.kill()
                stdout, stderr = launcher.communicate()
            pytest.fail(f"torchrun did not finish in {timeout} s\n" + stdout[-3000:] + stderr[-3000:])
    done = subprocess.CompletedProcess(command, launcher.returncode, stdout, stderr)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def logged_losses(run_dir: Path) -> list[dict[str, Any]]:
    """The log entries with a training loss, from trainer_state.json of the run's (one) saved checkpoint."""
    state = json.loads(next((run_dir / "checkpoints").glob("checkpoint-*/trainer_state.json")).read_text())
    return [h for h in state["log_history"] if "loss" in h]


BASE_WORDS = (
    "how what why when where which who is are do does can i you my the a an to of in on for and or "
    "with best way learn python java code list sort reverse capital city country population good bad "
    "make cook bake rice bread money save invest buy sell car phone battery dog cat train travel visit"
).split()


class MemoryRowStore:
    """quality.py's row store in memory (``has`` / ``load`` / ``save``), for run_tuned tests:
    ``rows`` maps a row name to its saved meta (put rows there to make them cached)."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}

    def has(self, row: str) -> bool:
        return row in self.rows

    def load(self, row: str) -> tuple[dict[str, Any], dict[str, Any]]:
        return {}, self.rows[row]

    def save(self, row: str, arrays: dict[str, Any], meta: dict[str, Any]) -> None:
        self.rows[row] = meta


def pair_dataset(rows: list[tuple[str, str, int, str, str]], source: str = "test"):
    """A ``PairDataset`` from ``(text_a, text_b, label, id_a, id_b)`` rows, pair ids ``"0"``, ``"1"``, ..."""
    from metric_sim.data.loader import pairs_from_columns
    from metric_sim.data.pairs import COLUMNS
    from metric_sim.data.report import LoadReport

    columns: dict[str, list] = {name: [] for name in COLUMNS}
    for k, row in enumerate(rows):
        for name, value in zip(columns, (*row, str(k)), strict=True):
            columns[name].append(value)
    return pairs_from_columns(columns, LoadReport(source=source, rows_read=len(rows), pairs=len(rows)))


def build_tiny_tokenizer(extra_texts: list[str] | None = None):
    """A word-level BERT-style tokenizer over a small fixed vocabulary (+ words of extra_texts)."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = list(dict.fromkeys(BASE_WORDS))
    for text in extra_texts or []:
        for word in re.findall(r"\w+|[^\w\s]", text.lower()):
            if word not in words:
                words.append(word)
    vocab = {token: i for i, token in enumerate(specials + words)}
    backend = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def build_tiny_encoder(*, pooling: str = "mean", normalize: bool = False, seed: int = 0):
    from transformers import BertConfig, BertModel

    from metric_sim.encoder import Encoder

    demo_texts: list[str] = []
    if DEMO_FILE.is_file():
        demo_texts = DEMO_FILE.read_text(encoding="utf-8").split("\n")
    tokenizer = build_tiny_tokenizer(demo_texts)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = BertModel(config, add_pooling_layer=False)
    return Encoder(model, tokenizer, pooling=pooling, normalize=normalize, max_length=32, source="tiny-random-bert")


@pytest.fixture(scope="session")
def tiny_encoder_session():
    return build_tiny_encoder()


@pytest.fixture()
def tiny_encoder(tiny_encoder_session):
    """A fresh deep copy per test of the session's tiny random BERT encoder."""
    return copy.deepcopy(tiny_encoder_session)


@pytest.fixture(scope="module")
def demo():
    """The bundled demo pairs (372 pairs over 313 questions), loaded once per test module."""
    from metric_sim.data import load_pairs

    return load_pairs(DEMO_FILE, text_a="question1", text_b="question2", label="is_duplicate")


@pytest.fixture()
def trainers(monkeypatch):
    """Every MetricTrainer a run makes, in order (to look at its optimiser, penalty or counters afterwards)."""
    import metric_sim.training.run as run_module

    made = []

    class Recording(run_module.MetricTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(run_module, "MetricTrainer", Recording)
    return made


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: the tiny model gains nothing from threads (two spinning
    OpenMP threads on a busy shared CPU make each step several times slower), and one thread
    runs the same kernels as the 1-thread torchrun workers, so vectors are bit-identical."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session", autouse=True)
def _few_threads():
    # Tests share 2 cores; more threads only add contention on tiny models.
    torch.set_num_threads(min(2, torch.get_num_threads()))
    yield
