"""scaling_report: sampler configs per method, the Table-1 layout, and one end-to-end report with an 'ar' scorer."""

import csv
import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from md4_jax.training import experiment
from md4_jax.evaluation import quality, tables
from md4_jax import sampling, scaling_report
from test_sample_binaries import TINY, cached_checkpoint, resolve_config
from train_configs import ROOT, tiny_config


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
  model = cached_checkpoint(tmp_path_factory, "sample_tiny", tiny_config())
  scorer = cached_checkpoint(tmp_path_factory, "scorer_ar", tiny_config(**{"diffusion.objective": "ar"}))
  return model, scorer


def test_method_configs():
  demo = os.path.join(ROOT, "experiments", "demo.py")
  bases = {name: resolve_config(demo, {"sampler.remdm.eta": 0.04}, name).sampler
           for name in ("ancestral", "remdm")}
  remdm = sampling.default_config("remdm")
  remdm.remdm.eta = 0.04
  for method, name, strategy in [("mdlm", "ancestral", "loop"), ("fb", "fb", "loop"), ("dfm", "dfm", "loop"),
                                 ("cap", "remdm", "cap"), ("rescale", "remdm", "rescale"), ("loop", "remdm", "loop")]:
    config = scaling_report.method_config(method, 16, bases["ancestral"], bases["remdm"]).to_dict()
    expected = remdm.to_dict()
    expected.update(name=name, num_steps=16)
    expected["remdm"]["strategy"] = strategy
    assert config == expected, method
  ancestral = scaling_report.method_config("ancestral", 16, bases["ancestral"], bases["remdm"])
  assert ancestral.to_dict() == dict(bases["ancestral"].to_dict(), num_steps=16)  # demo.py's own, cosine grid
  assert bases["remdm"].num_steps == 1024  # the bases are not modified
  with pytest.raises(ValueError, match="unknown method 'ddim'"):
    scaling_report.method_config("ddim", 16, bases["ancestral"], bases["remdm"])


def test_table_has_table_1_layout():
  rows = [{"method": "data", "num_steps": None, "nfe": None, "wall_s": None, "warmup_s": None, "entropy": 5.44,
           "gen_ppl": 14.8, "mauve": None}]
  for method, entropy in (("mdlm", 5.5), ("loop", 5.3)):
    for t in (128, 1024):
      rows.append({"method": method, "num_steps": t, "nfe": float(t), "wall_s": t / 1000, "warmup_s": 1.0,
                   "entropy": entropy + t / 1024, "gen_ppl": 50.0, "mauve": 0.25})
  assert scaling_report.markdown_table(rows, "title") == (
      "# title\n\n"
      "| method | MAUVE T=128 / 1024 | Gen PPL T=128 / 1024 | Entropy T=128 / 1024 | NFE T=128 / 1024 | "
      "wall s T=128 / 1024 |\n"
      "|---|---|---|---|---|---|\n"
      "| data | - | 14.800 | 5.440 | - | - |\n"
      "| mdlm | 0.250 / 0.250 | 50 / 50 | 5.625 / 6.500 | 128 / 1024 | 0.128 / 1.024 |\n"
      "| loop | 0.250 / 0.250 | 50 / 50 | 5.425 / 6.300 | 128 / 1024 | 0.128 / 1.024 |\n")
  lines = tables.csv_text(rows, scaling_report.COLUMNS).splitlines()
  assert lines[0] == "method,num_steps,nfe,wall_s,warmup_s,entropy,gen_ppl,mauve"
  assert lines[1] == "data,,,,,5.44,14.8," and lines[2] == "mdlm,128,128.0,0.128,1.0,5.625,50.0,0.25"


def test_report_end_to_end_with_an_ar_scorer(workdirs, tmp_path):
  model, scorer = workdirs
  out = tmp_path / "report"
  code = scaling_report.main(["prog", f"--config={TINY}", f"--workdir={model}", "--steps=4,8",
                              "--methods=ancestral,loop", "--num_samples=8", "--batch_size=8", f"--output_dir={out}",
                              f"--scorer_config={TINY}", "--scorer_config.diffusion.objective=ar",
                              f"--scorer_workdir={scorer}"])
  assert code == 0
  rows = list(csv.DictReader(open(out / "report.csv")))
  assert [(r["method"], r["num_steps"]) for r in rows] == [("data", ""), ("ancestral", "4"), ("ancestral", "8"),
                                                           ("loop", "4"), ("loop", "8")]
  # Gen PPL: exp(-mean log p(x_n | x_<n)) over all tokens, recomputed in float64 from the scorer on one device.
  restored = experiment.restore_ema(tiny_config(**{"diffusion.objective": "ar"}), str(scorer))
  log_probs = jax.jit(lambda p, x: nnx.merge(restored.exp.graphdef, p).ar_token_log_probs(x))
  for row in rows[1:]:
    # T steps, plus one call at t = 0 when masks are left for the final argmax
    assert 0 < float(row["nfe"]) <= int(row["num_steps"]) + 1 and float(row["wall_s"]) > 0
    records = [json.loads(line) for line in open(out / "samples" / f"{row['method']}_T{row['num_steps']}.jsonl")]
    tokens = np.array([r["tokens"] for r in records])
    assert tokens.shape == (8, 32)
    assert float(row["entropy"]) == pytest.approx(quality.entropy(tokens).mean(), rel=1e-12)
    nll = -np.asarray(log_probs(restored.params, tokens), np.float64).mean()
    assert float(row["gen_ppl"]) == pytest.approx(np.exp(nll), rel=1e-5)  # float32 log-probs, other batch layout
    assert 0 < float(row["mauve"]) <= 1
  reference = scaling_report.reference_tokens(tiny_config(), 8, 0)
  assert float(rows[0]["entropy"]) == pytest.approx(quality.entropy(reference).mean(), rel=1e-12)
  table = (out / "report.md").read_text()
  assert "| method | MAUVE T=4 / 8 | Gen PPL T=4 / 8 | Entropy T=4 / 8 | NFE T=4 / 8 | wall s T=4 / 8 |" in table
  try:
    import matplotlib  # noqa: F401
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  except ImportError:
    assert not (out / "report.png").exists()
  assert not [name for name in os.listdir(out) if ".tmp" in name]


@pytest.mark.parametrize("extra, message", [
    (["--methods=mdlm,ddim"], "unknown method 'ddim' in --methods"),
    (["--steps=4,x"], "--steps='4,x' must be a comma-separated list of ints"),
    (["--steps=0"], "must list ints >= 1"),
    (["--scorer_config={tiny}", "--scorer_workdir={model}"], "needs a checkpoint of diffusion.objective='ar'"),
    (["--scorer_config={tiny}"], "give both --scorer_config and --scorer_workdir"),
    (["--config.sampler.remdm.eta=0.5"], "loop needs remdm.eta <= (1 - alpha_on) / alpha_on"),
])
def test_bad_input_fails_clearly(workdirs, tmp_path, capsys, extra, message):
  model, _ = workdirs
  extra = [e.format(tiny=TINY, model=model) for e in extra]
  out = tmp_path / "report"
  assert scaling_report.main(["prog", f"--config={TINY}", f"--workdir={model}", f"--output_dir={out}", *extra]) == 1
  assert message in capsys.readouterr().err
  assert not out.exists()
