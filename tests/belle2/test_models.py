"""Filter models: each built-in trains a few steps; user plug-ins load (or fail clearly)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mlfastsim.belle2.models import BUILTINS, NNBaseClass, build_model, load_model_class
from mlfastsim.belle2.models.gnn import batch_to_graph
from mlfastsim.belle2.preprocess import Vocabulary
from mlfastsim.core.errors import ConfigError, InputFileError

DTYPES = {"particle": torch.float32}


pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(pre: Path, n: int = 48) -> dict[str, torch.Tensor]:
    out = {}
    for key in ("decay", "particle", "pdg", "mother_pdg", "mother_index", "y"):
        a = np.load(pre / f"{key}.npy")[:n]
        out[key] = torch.from_numpy(a).to(DTYPES.get(key, torch.float32 if key == "y" else torch.long))
    return out


def _sizes() -> dict[str, int]:
    return {"vocab_size": Vocabulary.from_decay_table().size, "n_features": 12, "max_particles": 100,
            "max_tokens": 150}


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_each_builtin_trains_a_few_steps(name: str, preprocessed: Path) -> None:
    torch.manual_seed(0)
    cls, record = load_model_class(name)
    assert record == {"kind": "builtin", "name": name}
    model = build_model(cls, {"dropout": 0.0}, _sizes())
    batch = _batch(preprocessed)
    xs = [batch[k] for k in cls.inputs]
    y = (batch["particle"][:, :, 0].sum(1) > batch["particle"][:, :, 0].sum(1).median()).float()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(*xs), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert model(*xs).shape == (48,)
    assert losses[-1] < losses[0] * 0.9, losses


def test_gnn_graph_follows_mother_links() -> None:
    pdg = torch.tensor([[5, 6, 7, 0], [5, 6, 0, 0]])
    mother = torch.tensor([[-1, 0, 0, -1], [-1, 0, -1, -1]])
    mask, edges, batch = batch_to_graph(pdg, mother)
    assert mask.sum() == 5 and batch.tolist() == [0, 0, 0, 1, 1]
    pairs = set(map(tuple, edges.t().tolist()))
    assert pairs == {(0, 1), (1, 0), (0, 2), (2, 0), (3, 4), (4, 3)}


USER_MODEL = '''
import torch
from torch import nn
from pydantic import Field
from mlfastsim.belle2.models.base import NNBaseClass
from mlfastsim.core.config import StrictModel


class TinyParams(StrictModel):
    hidden: int = Field(8, ge=1)


class MeanPdgModel(NNBaseClass):
    """Mean of the PDG embeddings and the features, then a linear layer."""

    name = "tiny"
    inputs = ("particle", "pdg")
    Params = TinyParams

    def __init__(self, params, **sizes):
        super().__init__(params, **sizes)
        self.emb = nn.Embedding(self.vocab_size, params.hidden, padding_idx=0)
        self.out = nn.Linear(params.hidden + self.n_features, 1)

    def forward(self, particle, pdg):
        m = (pdg != 0).float().unsqueeze(2)
        z = torch.cat([(self.emb(pdg) * m).sum(1), (particle * m).sum(1)], dim=1) / m.sum(1).clamp_min(1)
        return self.out(z).squeeze(1)
'''


def test_user_plugin_file(tmp_path: Path, preprocessed: Path) -> None:
    f = tmp_path / "my_model.py"
    f.write_text(USER_MODEL)
    cls, record = load_model_class(f)
    assert issubclass(cls, NNBaseClass) and record["kind"] == "file" and len(record["sha256"]) == 64
    model = build_model(cls, {"hidden": 4}, _sizes())
    batch = _batch(preprocessed, 8)
    assert model(batch["particle"], batch["pdg"]).shape == (8,)
    with pytest.raises(ConfigError, match="hidden_units"):
        build_model(cls, {"hidden_units": 4}, _sizes())


def test_bad_plugins(tmp_path: Path) -> None:
    plain = tmp_path / "plain.py"
    plain.write_text("import torch\nclass Net(torch.nn.Module):\n    pass\n")
    with pytest.raises(InputFileError, match="no subclass of NNBaseClass"):
        load_model_class(plain)
    broken = tmp_path / "broken.py"
    broken.write_text("import torch\ndef (:\n")
    with pytest.raises(InputFileError, match="SyntaxError"):
        load_model_class(broken)
    two = tmp_path / "two.py"
    two.write_text(USER_MODEL + "\nclass Other(MeanPdgModel):\n    pass\n")
    with pytest.raises(InputFileError, match="MODEL ="):
        load_model_class(two)
    two.write_text(USER_MODEL + "\nclass Other(MeanPdgModel):\n    pass\n\nMODEL = Other\n")
    assert load_model_class(two)[0].__name__ == "Other"
    with pytest.raises(ConfigError, match="unknown model 'transformer'"):
        load_model_class("transformer")
    with pytest.raises(InputFileError, match="does not exist"):
        load_model_class(tmp_path / "missing.py")
    bad_inputs = tmp_path / "bad_inputs.py"
    bad_inputs.write_text(USER_MODEL.replace('inputs = ("particle", "pdg")', 'inputs = ("jets",)'))
    cls, _ = load_model_class(bad_inputs)
    with pytest.raises(ConfigError, match="invalid inputs"):
        build_model(cls, {}, _sizes())


@pytest.mark.parametrize("name", ["resnet", "gnn"])
def test_shipped_configs_build(name: str) -> None:
    from mlfastsim.belle2.config import TrainConfig
    from mlfastsim.core.config import load_config

    root = Path(__file__).resolve().parents[2]
    cfg = load_config(TrainConfig, root / "configs" / "belle2" / f"{name}.yaml")
    cls, _ = load_model_class(cfg.model.name)
    model = build_model(cls, cfg.model.params, _sizes())
    assert sum(p.numel() for p in model.parameters()) > 1000
