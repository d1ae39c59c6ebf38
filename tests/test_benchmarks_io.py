"""Where the benchmark scripts write, the README report and its check, and the scripts'
entry points. No training: every test here runs in seconds."""
import json
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from benchmarks import common, publish, report

REPO = Path(__file__).resolve().parents[1]
CLEAN = ("abc1234", [])
DIRTY = ("abc1234", ["recsys_jax/train.py"])


# --- the output rule ---------------------------------------------------------------------

def test_full_run_from_a_clean_commit_publishes():
    out = common.output_paths("accuracy", quick=False, state=CLEAN)
    assert out == common.Outputs(common.RESULTS / "accuracy.json", common.RESULTS / "accuracy.md",
                                 common.RESULTS / "accuracy.png", None)


@pytest.mark.parametrize("quick, state, why", [
    (True, CLEAN, "--quick"),
    (True, DIRTY, "--quick"),
    (False, DIRTY, "recsys_jax/train.py"),
    (False, (None, []), "no git commit"),
])
def test_quick_or_dirty_runs_go_to_runs(quick, state, why):
    out = common.output_paths("scaling-cpu", quick=quick, state=state)
    assert out.json == common.RUNS / "scaling-cpu.json"
    assert out.md == common.RUNS / "scaling-cpu.md"
    assert out.png == common.RUNS / "scaling-cpu.png"
    assert common.RUNS.parent.name == "runs" and common.RUNS.parent.parent == REPO
    assert why in out.reason


@pytest.mark.parametrize("quick, state", [(True, CLEAN), (False, DIRTY), (False, CLEAN)])
def test_explicit_json_is_honoured_with_md_and_png_beside_it(tmp_path, quick, state):
    out = common.output_paths("scaling-cpu", quick=quick, state=state, json=tmp_path / "a" / "x.json")
    assert (out.json, out.md, out.png, out.reason) == (tmp_path / "a/x.json", tmp_path / "a/x.md",
                                                      tmp_path / "a/x.png", None)


def test_explicit_md_and_png_are_honoured(tmp_path):
    out = common.output_paths("s", quick=True, state=CLEAN, json=tmp_path / "x.json", md=tmp_path / "m/y.md",
                              png=tmp_path / "p.png")
    assert (out.json, out.md, out.png) == (tmp_path / "x.json", tmp_path / "m/y.md", tmp_path / "p.png")
    out = common.output_paths("s", quick=False, state=DIRTY, md=tmp_path / "y.md")
    assert (out.json, out.md, out.png) == (common.RUNS / "s.json", tmp_path / "y.md", tmp_path / "y.png")


def test_resolve_outputs_says_why_a_full_run_is_not_published(capsys, monkeypatch):
    monkeypatch.setattr(common, "_repo_state", lambda: ("abc1234", ("recsys_jax/train.py",)))
    args = types.SimpleNamespace(quick=False, json=None, md=None)
    out = common.resolve_outputs("many", "many-cpu", args)
    assert out.json == common.RUNS / "many-cpu.json"
    common.print_written("many", out, out.json)
    captured = capsys.readouterr()
    assert "runs/benchmarks/many-cpu.json" in captured.out
    assert "dirty" in captured.err and "recsys_jax/train.py" in captured.err


def _git(cwd, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                   capture_output=True)


def test_git_state_ignores_the_files_the_benchmarks_write(tmp_path):
    (tmp_path / "benchmarks/results").mkdir(parents=True)
    (tmp_path / "benchmarks/results/a.json").write_text("[]")
    (tmp_path / "README.md").write_text("r")
    (tmp_path / "code.py").write_text("x = 1")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "c")
    commit, dirty = common.git_state(tmp_path)
    assert commit and dirty == []
    (tmp_path / "benchmarks/results/a.json").write_text("[1]")
    (tmp_path / "README.md").write_text("r2")
    (tmp_path / "untracked.py").write_text("")
    assert common.git_state(tmp_path) == (commit, [])
    (tmp_path / "code.py").write_text("x = 2")
    assert common.git_state(tmp_path) == (commit, ["code.py"])


def test_git_state_outside_a_repository(tmp_path):
    assert common.git_state(tmp_path) == (None, [])


@pytest.mark.parametrize("spec, argv0, expected", [
    ("benchmarks.throughput", "-m", "python -m benchmarks.throughput --quick"),
    (None, str(REPO / "benchmarks/throughput.py"), "python benchmarks/throughput.py --quick"),
])
def test_recorded_command(monkeypatch, spec, argv0, expected):
    main = types.ModuleType("__main__")
    main.__spec__ = types.SimpleNamespace(name=spec) if spec else None
    monkeypatch.setitem(sys.modules, "__main__", main)
    monkeypatch.setattr(sys, "argv", [argv0, "--quick"])
    assert common.command_line() == expected


# --- report --------------------------------------------------------------------------------

@pytest.fixture
def published(tmp_path):
    """Copies of README.md and benchmarks/results/ laid out as in the repository."""
    shutil.copy(REPO / "README.md", tmp_path / "README.md")
    shutil.copytree(common.RESULTS, tmp_path / "benchmarks/results")
    return tmp_path / "README.md", tmp_path / "benchmarks/results"


def check(readme, results, *extra):
    return report.main(["--check", "--readme", str(readme), "--results", str(results), *extra])


def test_report_check_passes_on_the_current_readme(published):
    readme, results = published
    assert check(readme, results, "--allow-mixed-commits") == 0


def test_report_check_fails_on_a_stale_readme_then_report_fixes_it(published, capsys):
    readme, results = published
    text = readme.read_text()
    assert "| bias |" in text.split(report.START)[1]
    readme.write_text(text.replace("| bias |", "| bias? |", 1))
    before = readme.read_text()
    assert check(readme, results, "--allow-mixed-commits") == 1
    out = capsys.readouterr().out
    assert "-| bias? |" in out and "+| bias |" in out  # a unified diff
    assert readme.read_text() == before  # --check writes nothing
    assert report.main(["--readme", str(readme), "--results", str(results)]) == 0
    assert readme.read_text() == text
    assert check(readme, results, "--allow-mixed-commits") == 0


def test_report_check_fails_when_a_result_changes(published):
    readme, results = published
    md = results / "many-cpu.md"
    md.write_text(md.read_text().replace("Wall time", "Wall-clock time"))
    assert check(readme, results, "--allow-mixed-commits") == 1


def _records(results, name, *commits, nested=False):
    rs = [{"env": {"git_commit": c}} if nested else {"git_commit": c, "x": 1} for c in commits]
    (results / name).write_text(json.dumps(rs))


def test_report_check_fails_on_mixed_or_dirty_commits(published, capsys):
    readme, results = published
    for f in results.glob("*.json"):
        f.unlink()
    _records(results, "a.json", "1111111", "1111111")
    _records(results, "tuned.json", "1111111", nested=True)
    assert check(readme, results) == 0
    _records(results, "b.json", "2222222")
    assert check(readme, results) == 1
    err = capsys.readouterr().err
    assert "2 git commit" in err and "2222222: b.json" in err and "1111111: a.json, tuned.json" in err
    assert check(readme, results, "--allow-mixed-commits") == 0
    _records(results, "b.json", "1111111+dirty")
    assert check(readme, results) == 1
    assert "1111111+dirty: b.json" in capsys.readouterr().err


# --- entry points --------------------------------------------------------------------------

def run(*args):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("script", ["report", "throughput", "publish"])
def test_scripts_run_as_files(script):
    out = run(f"benchmarks/{script}.py", "--help")
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout


def test_script_help_describes_the_output_rule():
    out = run("benchmarks/time_to_accuracy.py", "--help")
    assert out.returncode == 0, out.stderr
    assert "runs/benchmarks/" in out.stdout


def test_publish_dry_run_lists_the_commands_in_order():
    out = run("-m", "benchmarks.publish", "--dry-run")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    modules = [line.split()[2] for line in lines]
    peers = ["benchmarks.peers"] if publish.peers_installed() else []  # only with the peers extra
    assert modules == ["benchmarks.tune", "benchmarks.accuracy", *peers, "benchmarks.accuracy", "benchmarks.accuracy",
                       "benchmarks.time_to_accuracy", "benchmarks.load", "benchmarks.throughput", "benchmarks.scaling",
                       "benchmarks.many", "benchmarks.many", "benchmarks.travel", "benchmarks.report",
                       "benchmarks.report"]
    assert "--presets default notebook" in lines[1] and "--presets tuned" in lines[2 + len(peers)]
    assert lines[-1].endswith("--check")
    assert all("--quick" not in line for line in lines)


def test_publish_only_and_refusal(monkeypatch, capsys):
    assert [name for name, _ in publish.commands(["many", "tune"])] == ["tune", "many", "report", "report --check"]
    monkeypatch.setattr(publish, "git_state", lambda: ("abc1234", ["recsys_jax/train.py"]))
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("a dirty tree must run nothing"))
    assert publish.main(["--only", "many"]) == 1
    assert "dirty" in capsys.readouterr().err


def test_tuned_choices_give_train_and_model_settings(tmp_path):
    """The nested ``tuned`` preset reads both halves of a tune record: training fields into
    the preset, model options (BPMF's K) into the model config, per split seed only."""
    from benchmarks import accuracy
    from recsys_jax.models import make_config
    from recsys_jax.training.presets import get_preset

    path = tmp_path / "tuned.json"
    path.write_text(json.dumps([{"models": {
        "bias": {"per_seed": {"0": {"best": {"lr": 0.03, "l2": 0.3}, "best_model": {}}}},
        "bpmf": {"per_seed": {"1": {"best": {}, "best_model": {"embedding_dim": 32}}}},
    }}]))
    assert accuracy.train_config("tuned", "bias", 0, path) == get_preset("default", "bias")._replace(lr=0.03, l2=0.3)
    assert accuracy.model_config("tuned", "bias", 0, path) == make_config("bias")
    assert accuracy.train_config("tuned", "bpmf", 1, path) == get_preset("default", "bpmf")
    assert accuracy.model_config("tuned", "bpmf", 1, path).embedding_dim == 32
    assert make_config("bpmf").embedding_dim == 10
    assert accuracy.train_config("tuned", "bpmf", 0, path) is None  # never borrowed from another seed
    assert accuracy.model_config("default", "bpmf") == make_config("bpmf")


def test_accuracy_summary_names_each_rows_optimizer():
    from benchmarks import accuracy

    def rec(model, seed, optimizer="adam", rmse=0.9):
        r = {"dataset": "d", "protocol": "p", "model": model, "preset": "default", "loss": "mse", "seed": seed,
             "test_rmse": rmse + seed / 100, "test_mae": 0.7, "fit_seconds": 1.0, "epochs": 5}
        if model != "blend":
            r["train_config"] = {"optimizer": optimizer}
        return r

    records = [rec("bias", s, "lazy_adam") for s in (0, 1)] + [rec("dot", s) for s in (0, 1)]
    records += [rec("bpmf", s) for s in (0, 1)] + [rec("blend", s, rmse=0.8) for s in (0, 1)]
    rows = {r["model"]: r for r in accuracy.summarise(records)}
    assert {m: r["optimizer"] for m, r in rows.items()} == {"bias": "lazy_adam", "dot": "adam", "bpmf": "own",
                                                            "blend": "-"}
    assert rows["blend"]["rmse_mean"] == pytest.approx(0.805) and rows["bias"]["runs"] == 2
    env = {"device": "cpu", "cpu": "x", "cpu_count": 2, "jax": "j", "optax": "o", "git_commit": "c", "command": "cmd"}
    md = accuracy.markdown(accuracy.summarise(records), env, records)
    assert "| blend | default | mse | - | 0.8050 ± 0.0071 |" in md


class _Resolved(Exception):
    """Raised by the patched resolve_outputs: the run stops before any benchmark work."""


def _where_it_writes(monkeypatch, module_name: str, argv: list[str]):
    import importlib

    module = importlib.import_module(module_name)
    real = module.resolve_outputs

    def resolve(*a, **k):
        raise _Resolved(real(*a, **k))

    monkeypatch.setattr(common, "_repo_state", lambda: CLEAN)
    monkeypatch.setattr(module, "resolve_outputs", resolve)
    with pytest.raises(_Resolved) as stopped:
        module.main(argv)
    return stopped.value.args[0]


@pytest.mark.parametrize("name", [s[0] for s in publish.STEPS if s[0] != "peers"])  # peers: the extra
def test_the_published_steps_write_the_published_results(monkeypatch, name):
    _, module, argv = next(s for s in publish.STEPS if s[0] == name)
    out = _where_it_writes(monkeypatch, module, argv)
    assert out.reason is None
    assert out.json.parent == common.RESULTS or "--json" in argv


@pytest.mark.parametrize("module, argv", [
    ("benchmarks.accuracy", ["--datasets", "ml-latest-small", "--presets", "default", "notebook", "--seeds", "0"]),
    ("benchmarks.accuracy", ["--datasets", "ml-latest-small", "--models", "bias", "--presets", "default"]),
    ("benchmarks.throughput", ["--models", "bias"]),
    ("benchmarks.scaling", ["--sizes", "5000000", "--optimizers", "sgd"]),
    ("benchmarks.many", ["--seeds", "0", "1"]),
])
def test_a_narrowed_run_from_a_clean_commit_leaves_the_published_results_alone(monkeypatch, capsys, module, argv):
    out = _where_it_writes(monkeypatch, module, argv)
    assert out.json.parent == common.RUNS
    assert "not the published run's arguments" in out.reason and module in out.reason
    assert "runs/benchmarks" in capsys.readouterr().err


def test_accuracy_runs_a_sampler_as_the_cli_does_and_names_its_features():
    from benchmarks import accuracy

    assert accuracy.run_val_frac("default", "bfm") == 0.0  # keeps its last sweep, as `recsys-jax train`
    assert accuracy.run_val_frac("default", "bias") == 0.1
    assert accuracy.run_val_frac("tuned", "bias") == 0.1
    assert accuracy.run_val_frac("notebook", "dot") == 0.0
    note = accuracy.feature_notes({"embedding_dim": 10, "day": False, "implicit": True}, "bfm")
    assert "rank 10" in note and "day" not in note and "users who rated the movie" in note
    assert "day" in accuracy.feature_notes({"embedding_dim": 10, "day": True, "implicit": False}, "bfm")
    assert "genres" not in note
    assert "the movie's genres" in accuracy.feature_notes({"embedding_dim": 10, "genres": "auto", "num_genres": 20}, "bfm")
    assert accuracy.feature_notes({}, "bias") is None


def test_travel_table_states_means_differences_and_choices():
    from benchmarks import travel

    env = {"device": "cpu", "cpu": "x", "cpu_count": 2, "jax": "0", "git_commit": "abc", "command": "c"}
    recs = [{"shape": "synthetic", "model": "bias", "seed": s, "num_ratings": 1000, "budget": 60.0,
             "default_rmse": d, "tuned_rmse": t, "choice": c, "trials": 4, "candidates": 18, "tune_seconds": 60.0}
            for s, d, t, c in [(0, 0.90, 0.88, {"lr": 0.03}), (1, 0.92, 0.93, {})]]
    row = next(line for line in travel.markdown(recs, env).splitlines() if line.startswith("| synthetic"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3:7] == ["0.9100", "0.9050", "-0.0050", "1 of 2"]
    assert cells[-1] == "lr=0.03; preset"
